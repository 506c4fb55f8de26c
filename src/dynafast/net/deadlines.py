"""Deadlines for many short requests on one event loop, with one loop timer per tick instead of one per request.

A loop timer per request (``loop.call_at``) costs more than the rest of a local request. The wheel puts every
deadline that falls in the same tick (5 ms by default) into one bucket with one timer; a deadline fires up to
one tick late, never early. A request that finishes cancels its deadline, which leaves the bucket at once: its
callback (and whatever that holds) is freed then, not seconds later when the bucket's timer runs.
"""
from __future__ import annotations

import asyncio
from typing import Callable


class DeadlineWheel:
    """``add(timeout, callback)`` calls ``callback()`` once ``timeout`` seconds have passed, unless the handle
    it returns is given to ``cancel`` first.

    ``callback`` is any hashable callable (a bound method, or an object with ``__call__``), added at most
    once at a time. The buckets are dicts used as ordered sets: ``cancel`` costs one removal, and a bucket's
    callbacks run in the order they were added, the same in every run (a set of objects iterates by address,
    which would make simulated runs differ).
    """

    __slots__ = ("loop", "tick", "_buckets")

    def __init__(self, loop: asyncio.AbstractEventLoop, tick: float = 0.005):
        if tick <= 0:
            raise ValueError(f"tick must be positive, not {tick}")
        self.loop = loop
        self.tick = tick
        self._buckets: dict[int, dict] = {}  # tick number -> callbacks due at its end

    def add(self, timeout: float, callback: Callable[[], object]) -> dict:
        """Schedule ``callback``; returns the handle to pass to ``cancel``."""
        # The bucket's timer runs at the first tick boundary after the deadline: late by < 1 tick, not early.
        tick = int((self.loop.time() + timeout) / self.tick) + 1
        bucket = self._buckets.get(tick)
        if bucket is None:
            bucket = self._buckets[tick] = {}
            self.loop.call_at(tick * self.tick, self._expire, tick)
        bucket[callback] = None
        return bucket

    @staticmethod
    def cancel(handle: dict, callback) -> None:
        """``callback`` will not be called (a no-op when it was called or cancelled already)."""
        handle.pop(callback, None)

    def clear(self) -> None:
        """Cancel every deadline (the bucket timers still run, and find nothing to do)."""
        for bucket in self._buckets.values():
            bucket.clear()  # callers may still hold the handles
        self._buckets.clear()

    def __len__(self) -> int:
        """The deadlines not yet fired or cancelled."""
        return sum(len(bucket) for bucket in self._buckets.values())

    def _expire(self, tick: int) -> None:
        bucket = self._buckets.pop(tick, None)
        # Pop one at a time: a callback may cancel others of the same bucket, and those must not run.
        while bucket:
            callback = next(iter(bucket))
            del bucket[callback]
            try:
                callback()
            except Exception as exc:  # noqa: BLE001 - one failing callback must not stop the others' deadlines
                self.loop.call_exception_handler({
                    "message": f"deadline callback {callback!r} failed",
                    "exception": exc,
                })
