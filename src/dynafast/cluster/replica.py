"""A node's replicas (vnodes) and hints, inside the node's one log store.

One store per node, as Riak does: every vnode shares the write buffer and the fsync stream, which is what makes
group commit pay off. A vnode is a key prefix inside it:

    b"o" + partition (2 bytes, big-endian) + key        the object (encoded Siblings) of a primary replica
    b"h" + owner id + b"\\0" + partition (2 bytes) + key   a hint held for ``owner`` by a fallback

so that iterating a vnode or one owner's hints is a prefix scan of the keydir.
"""
from __future__ import annotations

import asyncio
import queue
import struct
import threading

OBJECT = b"o"
HINT = b"h"
_PARTITION = struct.Struct(">H")


_object_prefixes: dict[int, bytes] = {}  # partition -> b"o" + partition: packing it per call showed in profiles


def object_key(partition: int, key: bytes) -> bytes:
    prefix = _object_prefixes.get(partition)
    if prefix is None:
        prefix = _object_prefixes[partition] = OBJECT + _PARTITION.pack(partition)
    return prefix + key


def vnode_prefix(partition: int) -> bytes:
    return OBJECT + _PARTITION.pack(partition)


def hint_prefix(owner: str) -> bytes:
    return HINT + owner.encode() + b"\0"


def hint_key(owner: str, partition: int, key: bytes) -> bytes:
    return hint_prefix(owner) + _PARTITION.pack(partition) + key


def split_hint_key(owner: str, stored_key: bytes) -> tuple[int, bytes]:
    rest = stored_key[len(hint_prefix(owner)) :]
    return _PARTITION.unpack_from(rest)[0], bytes(rest[2:])


class ReplicaStore:
    """Versioned objects of the vnodes a node holds, and the hints it keeps for others."""

    def __init__(self, store, versions, on_write=None):
        self.store = store
        self.versions = versions
        self._siblings = versions.Siblings
        # on_write(partition, key, old, new) after each change of a primary object (Merkle trees follow it).
        self.on_write = on_write

    # -- primary replicas --------------------------------------------------------------------------
    def get(self, partition: int, key: bytes, hint_for: str | None = None):
        stored_key = object_key(partition, key) if hint_for is None else hint_key(hint_for, partition, key)
        raw = self.store.get(stored_key)
        return None if raw is None else self._siblings.from_bytes(raw)

    def get_raw(self, partition: int, key: bytes, hint_for: str | None = None) -> bytes | None:
        stored_key = object_key(partition, key) if hint_for is None else hint_key(hint_for, partition, key)
        return self.store.get(stored_key)

    def write(self, partition: int, key: bytes, siblings, hint_for: str | None = None, *, previous=None,
              raw: bytes | None = None) -> None:
        """Store ``siblings`` as they are (the caller merged them with ``previous``, what was stored)."""
        if hint_for is None:
            self.store.put(object_key(partition, key), raw if raw is not None else siblings.to_bytes())
            if self.on_write is not None:
                self.on_write(partition, key, previous, siblings)
        else:
            self.store.put(hint_key(hint_for, partition, key), raw if raw is not None else siblings.to_bytes())

    def merge_in(self, partition: int, key: bytes, incoming, hint_for: str | None = None):
        """Reconcile ``incoming`` with the stored object; write and return the result.

        Nothing newer is ever overwritten: the result descends from both sides.
        """
        existing = self.get(partition, key, hint_for)
        merged = incoming if existing is None else incoming.sync(existing)
        if existing is None or merged != existing:
            self.write(partition, key, merged, hint_for, previous=existing)
        return merged

    def remove_if_equal(self, partition: int, key: bytes, expected) -> bool:
        """Drop a fully replicated tombstone, unless a newer write arrived meanwhile."""
        current = self.get(partition, key)
        if current is None or current != expected:
            return False
        self.store.delete(object_key(partition, key))
        if self.on_write is not None:
            self.on_write(partition, key, current, None)
        return True

    def items(self, partition: int):
        """(key, Siblings) of one vnode."""
        prefix = vnode_prefix(partition)
        cut = len(prefix)
        for stored_key, raw in self.store.items(prefix=prefix):
            yield bytes(stored_key[cut:]), self._siblings.from_bytes(raw)

    def count(self, partition: int) -> int:
        return self.store.count(vnode_prefix(partition))

    def drop_vnode(self, partition: int) -> None:
        self.store.delete_prefix(vnode_prefix(partition))

    # -- hints -------------------------------------------------------------------------------------
    def hints(self, owner: str):
        """(partition, key, Siblings) of every hint held for ``owner``."""
        for stored_key, raw in self.store.items(prefix=hint_prefix(owner)):
            partition, key = split_hint_key(owner, stored_key)
            yield partition, key, self._siblings.from_bytes(raw)

    def hint_owners(self) -> set[str]:
        owners = set()
        for stored_key in self.store.keys(prefix=HINT):
            owners.add(bytes(stored_key[1 : stored_key.index(b"\0")]).decode())
        return owners

    def drop_hint_if_equal(self, owner: str, partition: int, key: bytes, delivered) -> bool:
        stored_key = hint_key(owner, partition, key)
        raw = self.store.get(stored_key)
        if raw is None or self._siblings.from_bytes(raw) != delivered:
            return False
        self.store.delete(stored_key)
        return True


class DurabilityBatcher:
    """Group commit for the event loop: durable writes share fsyncs.

    The store's sync() blocks (fsync), so it runs in a thread of its own. The first writer of an idle batcher
    wakes that thread at the end of the loop turn (every writer of that turn shares the first sync); while
    writers keep coming, the thread takes the next batch itself right after each sync, so a busy node pays
    one hand-off back to the loop per fsync and nothing to start one. Writers that arrive while a sync is
    running wait for the next one, which covers them.
    """

    def __init__(self, store, loop: asyncio.AbstractEventLoop | None = None):
        self.store = store
        self._loop = loop
        self._lock = threading.Lock()  # guards _waiting and _running between the loop and the sync thread
        self._waiting: list[asyncio.Future] = []
        self._running = False
        self._jobs: queue.SimpleQueue | None = None
        self._thread: threading.Thread | None = None
        self.syncs = 0

    async def wait(self) -> None:
        """Return once everything written before the call is durable."""
        await self.waiter()

    def waiter(self) -> asyncio.Future:
        """A future done once everything written before the call is durable (no coroutine, no Task: the
        write path adds a callback to it)."""
        loop = self._loop or asyncio.get_running_loop()
        future = loop.create_future()
        with self._lock:
            self._waiting.append(future)
            if self._running:
                return future
            self._running = True
        loop.call_soon(self._start, loop)
        return future

    def _start(self, loop) -> None:
        if self._thread is None:
            self._jobs = queue.SimpleQueue()
            self._thread = threading.Thread(target=self._syncer, name="dynafast-group-commit", daemon=True)
            self._thread.start()
        self._jobs.put(loop)

    def _syncer(self) -> None:
        jobs = self._jobs
        while True:
            loop = jobs.get()
            if loop is None:
                return
            while True:
                with self._lock:
                    batch, self._waiting = self._waiting, []
                    if not batch:
                        self._running = False
                        break
                try:
                    self.store.sync()
                    error = None
                except Exception as exc:  # noqa: BLE001 - handed to the writers waiting for this sync
                    error = exc
                try:
                    loop.call_soon_threadsafe(self._finish, batch, error)
                except RuntimeError:  # the loop is closed: nobody waits any more
                    with self._lock:
                        self._running = False
                    break

    def _finish(self, batch, error) -> None:
        self.syncs += 1
        for future in batch:
            if future.done():
                continue
            if error is None:
                future.set_result(None)
            else:
                future.set_exception(error)

    def close(self) -> None:
        """Stop the sync thread once it has done the syncs already asked for."""
        if self._thread is not None:
            self._jobs.put(None)
            self._thread.join()
            self._thread = None
