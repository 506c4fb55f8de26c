"""A node's disk in the simulation: what was fsync'd survives a crash, the rest is lost.

``SimDisk`` outlives the node processes that use it. Each start opens a ``SimStore`` on it (the log store's
interface as the vnodes use it) and a ``SimFiles`` (metadata files, written atomically and durably as the real
ones are). A crash throws away every write since the last sync and makes the open store unusable; a wipe
throws away everything. ``SimDurability`` is the node's group commit: a sync after a simulated fsync time, shared
by every writer that asked before it started, plus the background sync every ``sync_interval`` that the real
store's ``sync="interval"`` does.
"""
from __future__ import annotations

import asyncio
import bisect

from dynafast.errors import CorruptionError, StoreClosed

_HISTORY = 3   # earlier durable values kept per key: what a truncated log falls back to
_RECENT = 32   # the most recently synced keys: what a truncation loses


class SimDisk:
    def __init__(self):
        self.durable: dict[bytes, bytes] = {}
        self.files: dict[str, bytes] = {}
        self.store: SimStore | None = None
        self.lost_writes = 0
        self.generation = 0  # a crash starts a new one: what the old process still holds can no longer write
        self.history: dict[bytes, list] = {}  # key -> earlier durable values (None: absent), oldest first
        self.recent: list[bytes] = []         # keys in the order their last durable write happened
        self.damaged: set[bytes] = set()      # records that fail their checksum when read
        self.lost = False                     # the next open finds that records it once had are gone

    def open_store(self) -> "SimStore":
        self.store = SimStore(self, lost=self.lost)
        self.lost = False
        return self.store

    def commit(self, key: bytes, value: bytes | None) -> None:
        """One write reaches the platter (None: a delete)."""
        history = self.history.setdefault(key, [])
        history.append(self.durable.get(key))
        del history[:-_HISTORY]
        if value is None:
            self.durable.pop(key, None)
        else:
            self.durable[key] = value
        self.damaged.discard(key)
        if key in self.recent:
            self.recent.remove(key)
        self.recent.append(key)
        del self.recent[:-_RECENT]

    def truncate(self, count: int) -> int:
        """The log loses its last ``count`` durable writes (a truncated or half-copied data file): those keys
        fall back to their earlier values. The node must not be running. Returns how many keys changed."""
        assert self.store is None
        changed = 0
        for key in reversed(self.recent[-count:]):
            earlier = self.history.get(key) or [None]
            value = earlier.pop()
            if value is None:
                self.durable.pop(key, None)
            else:
                self.durable[key] = value
            changed += 1
        self.recent = self.recent[:-count] if count else self.recent
        self.lost = self.lost or changed > 0
        return changed

    def corrupt(self, rng, prefix: bytes = b"o") -> bytes | None:
        """One durable record of an object fails its checksum from now on (until the key is written again)."""
        keys = sorted(k for k in self.durable if k.startswith(prefix) and k not in self.damaged)
        if not keys:
            return None
        key = rng.choice(keys)
        self.damaged.add(key)
        return key

    def crash(self) -> None:
        self.generation += 1
        if self.store is not None:
            self.lost_writes += len(self.store.pending)
            self.store.dead = True
            self.store = None

    def wipe(self) -> None:
        self.crash()
        self.durable = {}
        self.files = {}
        self.history = {}
        self.recent = []
        self.damaged = set()


class SimFiles:
    def __init__(self, disk: SimDisk):
        self.disk = disk
        self.generation = disk.generation

    def read(self, name: str) -> bytes | None:
        return self.disk.files.get(name)

    def write(self, name: str, data: bytes) -> None:
        if self.generation != self.disk.generation:
            raise StoreClosed("the simulated node crashed")
        self.disk.files[name] = bytes(data)

    def remove(self, name: str) -> None:
        self.disk.files.pop(name, None)


_DELETED = None
_MISSING = object()


class SimStore:
    """Keys in order (prefix scans), writes visible at once, durable at the next ``sync``."""

    def __init__(self, disk: SimDisk, *, lost: bool = False):
        self.disk = disk
        self.data = dict(disk.durable)
        self.order = sorted(self.data)
        self.pending: dict[bytes, bytes | None] = {}
        self.dead = False
        self.syncs = 0
        # As the real store reports it: records it once had are gone, or there was no store at all.
        self.recovery = {"lost": lost, "fresh": not disk.durable and not disk.files}

    def _check(self) -> None:
        if self.dead:
            raise StoreClosed("the simulated node crashed")

    def get(self, key):
        self._check()
        key = bytes(key)
        if key in self.disk.damaged and key not in self.pending:
            raise CorruptionError("record failed its checksum")
        return self.data.get(key)

    def __contains__(self, key):
        return self.get(key) is not None

    def put(self, key, value) -> None:
        self._check()
        key = bytes(key)
        if key not in self.data:
            bisect.insort(self.order, key)
        self.data[key] = bytes(value)
        self.pending[key] = self.data[key]

    def delete(self, key) -> None:
        self._check()
        key = bytes(key)
        if key in self.data:
            del self.data[key]
            del self.order[bisect.bisect_left(self.order, key)]
        self.pending[key] = _DELETED

    def write_batch(self, ops) -> None:
        for key, value in ops:
            if value is None:
                self.delete(key)
            else:
                self.put(key, value)

    def _range(self, prefix: bytes) -> list[bytes]:
        start = bisect.bisect_left(self.order, prefix)
        end = start
        while end < len(self.order) and self.order[end].startswith(prefix):
            end += 1
        return self.order[start:end]

    def keys(self, prefix=b""):
        self._check()
        return list(self._range(bytes(prefix)))

    def items(self, prefix=b""):
        self._check()
        for key in self._range(bytes(prefix)):
            yield key, self.get(key)  # a damaged record fails the iteration there, as on a real disk

    def count(self, prefix=b"") -> int:
        return len(self.keys(prefix))

    def delete_prefix(self, prefix=b"") -> None:
        for key in self.keys(prefix):
            self.delete(key)

    def sync(self) -> None:
        self._check()
        for key, value in self.pending.items():
            self.disk.commit(key, value)
        self.pending = {}
        self.syncs += 1

    def stats(self) -> dict:
        return {"keys": len(self.data), "live_bytes": sum(len(k) + len(v) for k, v in self.data.items()),
                "dead_bytes": 0, "pending_writes": len(self.pending)}

    def close(self) -> None:
        self.dead = True


class SimDurability:
    """Group commit over a ``SimStore``: ``waiter()`` is done after the next simulated fsync."""

    def __init__(self, store: SimStore, *, rng, interval: float, fsync=(0.0002, 0.002)):
        self.store = store
        self.rng = rng
        self.interval = interval
        self.fsync = fsync
        self.syncs = 0
        self._waiting: list[asyncio.Future] = []  # covered by the next fsync
        self._running = False
        self._timer = None
        self._closed = False

    def waiter(self) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._waiting.append(future)
        if not self._running:
            self._start(loop)
        return future

    async def wait(self) -> None:
        await self.waiter()

    def _start(self, loop) -> None:
        # Writers that come while an fsync runs wait for the next one; what it covers is fixed when it starts.
        self._running = True
        batch, self._waiting = self._waiting, []
        pending = dict(self.store.pending)
        loop.call_later(self.rng.uniform(*self.fsync), self._done, loop, batch, pending)

    def _done(self, loop, batch, pending) -> None:
        self._running = False
        if self._closed or self.store.dead:
            error = StoreClosed("the simulated node crashed")
            for future in batch:
                if not future.done():
                    future.set_exception(error)
            return
        self._apply(pending)
        self.syncs += 1
        for future in batch:
            if not future.done():
                future.set_result(None)
        if self._waiting:
            self._start(loop)

    def _apply(self, pending) -> None:
        """Make exactly what was written when the fsync started durable (later writes wait for the next one)."""
        store = self.store
        for key, value in pending.items():
            if store.pending.get(key, _MISSING) is value:
                del store.pending[key]
            store.disk.commit(key, value)

    def start_interval(self) -> None:
        """The background sync of ``sync="interval"``."""
        loop = asyncio.get_running_loop()

        def tick():
            if self._closed or self.store.dead:
                return
            self.store.sync()
            self._timer = loop.call_later(self.interval, tick)

        self._timer = loop.call_later(self.interval, tick)

    def close(self) -> None:
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
