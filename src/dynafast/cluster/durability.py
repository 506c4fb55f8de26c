"""Durable acknowledgements: futures that are done once what was written before them is on disk."""
from __future__ import annotations

import asyncio
import collections
import time

from dynafast.metrics import Histogram


class DurabilityBatcher:
    """Group commit for the event loop: durable writes share fsyncs.

    The fsync runs in the store engine's own thread, which never takes the GIL; it signals each finished
    fsync on a file descriptor this loop watches. The first writer of a loop turn asks for a sync at the
    end of the turn (every writer of that turn shares that ticket); writers that come while an fsync runs
    are covered by the next one, which the engine starts when the loop collects the finished one. No
    Python thread, no per-batch GIL hand-off.

    ``fsync_seconds`` times each fsync from its start to this loop collecting it (the engine starts one when
    a ticket is asked for while none runs, and the next one as the finished one is collected): what a durable
    write waits for, off the request path (one clock read per fsync, not per write).
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
        self.fsync_seconds = Histogram()
        self._fsync_started: float | None = None  # when the fsync the engine runs now started

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
            if self._fsync_started is None:
                self._fsync_started = time.perf_counter()
            self._waiting.append((ticket, batch))

    def _collect(self) -> None:
        try:
            self.store.sync_poll()
            error = None
        except Exception as exc:  # noqa: BLE001 - handed to the writers the failed fsync covered
            error = exc
        durable = self.store.durable_seq()
        finished = durable > self._durable or error is not None
        if durable > self._durable:
            self._durable = durable
            self.syncs += 1
        waiting = self._waiting
        if finished and self._fsync_started is not None:
            now = time.perf_counter()
            self.fsync_seconds.observe(now - self._fsync_started)
            # Tickets still waiting: the engine started the next fsync as it handed this one over.
            self._fsync_started = now if error is None and waiting and waiting[-1][0] > durable else None
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


def durable_reply(durability, msg_type, fields=(True,)):
    """A future of the reply ``(msg_type, fields)``, set once what was written so far is on disk."""
    waiter = durability.waiter()
    reply = asyncio.get_running_loop().create_future()

    def synced(done):
        if reply.done():
            return
        if done.cancelled():
            reply.cancel()
        elif done.exception() is not None:
            reply.set_exception(done.exception())
        else:
            reply.set_result((msg_type, fields))

    waiter.add_done_callback(synced)
    return reply
