"""A node's replicas (vnodes) and hints, inside the node's one log store.

One store per node, as Riak does: every vnode shares the write buffer and the fsync stream, which is what makes
group commit pay off. A vnode is a key prefix inside it:

    b"o" + partition (2 bytes, big-endian) + key        the object (encoded Siblings) of a primary replica
    b"h" + owner id + b"\\0" + partition (2 bytes) + key   a hint held for ``owner`` by a fallback

so that iterating a vnode or one owner's hints is a prefix scan of the keydir.
"""
from __future__ import annotations

import asyncio
import collections
import struct

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

    def keys(self, partition: int):
        """The keys of one vnode (no values read)."""
        prefix = vnode_prefix(partition)
        cut = len(prefix)
        for stored_key in self.store.keys(prefix=prefix):
            yield bytes(stored_key[cut:])

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

    The fsync runs in the store engine's own thread, which never takes the GIL; it signals each finished
    fsync on a file descriptor this loop watches. The first writer of a loop turn asks for a sync at the
    end of the turn (every writer of that turn shares that ticket); writers that come while an fsync runs
    are covered by the next one, which the engine starts when the loop collects the finished one. No
    Python thread, no per-batch GIL hand-off.
    """

    def __init__(self, store, loop: asyncio.AbstractEventLoop | None = None):
        self.store = store
        self._loop = loop
        self._new: list[asyncio.Future] = []  # writers of this loop turn, ticket not asked for yet
        self._waiting: collections.deque = collections.deque()  # (ticket, [future]), tickets ascending
        self._watching: asyncio.AbstractEventLoop | None = None
        self._fd = -1
        self._durable = 0
        self.syncs = 0

    async def wait(self) -> None:
        """Return once everything written before the call is durable."""
        await self.waiter()

    def waiter(self) -> asyncio.Future:
        """A future done once everything written before the call is durable (no coroutine, no Task: the
        write path adds a callback to it)."""
        loop = self._loop or asyncio.get_running_loop()
        future = loop.create_future()
        self._new.append(future)
        if len(self._new) == 1:
            loop.call_soon(self._request, loop)
        return future

    def _watch(self, loop) -> None:
        self._unwatch()
        self._fd = self.store.sync_fd()
        loop.add_reader(self._fd, self._collect)
        self._watching = loop

    def _unwatch(self) -> None:
        if self._watching is not None:
            if not self._watching.is_closed():
                self._watching.remove_reader(self._fd)
            self._watching = None

    def _request(self, loop) -> None:
        batch, self._new = self._new, []
        try:
            if self._watching is not loop:
                self._watch(loop)
            ticket = self.store.sync_request()
        except Exception as exc:  # noqa: BLE001 - handed to the writers of this turn
            _settle(batch, exc)
            return
        if ticket <= self.store.durable_seq():
            _settle(batch, None)
        else:
            self._waiting.append((ticket, batch))

    def _collect(self) -> None:
        try:
            self.store.sync_poll()
            error = None
        except Exception as exc:  # noqa: BLE001 - handed to the writers the failed fsync covered
            error = exc
        durable = self.store.durable_seq()
        if durable > self._durable:
            self._durable = durable
            self.syncs += 1
        waiting = self._waiting
        while waiting and waiting[0][0] <= durable:
            _settle(waiting.popleft()[1], None)
        if error is not None:
            # The engine forgets the tickets of a failed fsync: their writers learn it; later ones ask anew.
            while waiting:
                _settle(waiting.popleft()[1], error)

    def close(self) -> None:
        """Stop watching the store; writers still waiting are settled by one blocking sync."""
        self._unwatch()
        batches = [batch for _, batch in self._waiting]
        if self._new:
            batches.append(self._new)
        self._waiting.clear()
        self._new = []
        if batches:
            try:
                self.store.sync()
                error = None
            except Exception as exc:  # noqa: BLE001
                error = exc
            for batch in batches:
                _settle(batch, error)


def _settle(batch, error) -> None:
    for future in batch:
        if future.done():
            continue
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)
