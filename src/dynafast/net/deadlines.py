"""Deadlines in buckets of one tick, one loop timer per bucket.

A loop timer per request costs more than the rest of a local request, so deadlines that fall in the same tick
share one. They fire up to one tick late, never early. An item leaves its bucket when it finishes, so it is
freed then, not seconds later at its deadline.
"""
from __future__ import annotations


class DeadlineWheel:
    """``add(timeout, item)`` calls ``item.on_deadline()`` once the timeout has passed, unless the item was
    taken out first with ``discard(item, bucket)`` (``bucket`` is what ``add`` returned)."""

    TICK = 0.005  # seconds

    def __init__(self, loop, tick: float = TICK):
        self.loop = loop
        self.tick = tick
        # Buckets are dicts used as ordered sets: items expire in the order they were added, the same in every
        # run (a set of objects iterates by address).
        self._buckets: dict[int, dict] = {}

    def add(self, timeout: float, item) -> dict:
        tick = int((self.loop.time() + timeout) / self.tick) + 1
        bucket = self._buckets.get(tick)
        if bucket is None:
            bucket = self._buckets[tick] = {}
            self.loop.call_at(tick * self.tick, self._expire, tick)
        bucket[item] = None
        return bucket

    @staticmethod
    def discard(item, bucket: dict) -> None:
        bucket.pop(item, None)

    def __len__(self) -> int:
        return sum(len(bucket) for bucket in self._buckets.values())

    def _expire(self, tick: int) -> None:
        for item in list(self._buckets.pop(tick, ())):
            item.on_deadline()
