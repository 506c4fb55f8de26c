"""What happened on this node lately, for the console: requests per second with their latency percentiles over
the last minute, and the last warnings and errors.

Nothing here runs per request: once a second ``RecentActivity.tick`` reads the request counters the node keeps
anyway (``metrics.RequestStats``) and keeps the difference since the last tick as one slot.
"""
from __future__ import annotations

import asyncio
import logging
from collections import deque

from dynafast.metrics import FINE_BOUNDS

SLOTS = 60  # one a second: the last minute
EVENTS = 50  # warnings and errors kept


def percentile(counts, q: float) -> float | None:
    """The ``q`` quantile (0..1) of a histogram over FINE_BOUNDS (the last count is above them), interpolated
    inside its bucket as Prometheus's histogram_quantile does; None for no observation."""
    total = sum(counts)
    if not total:
        return None
    rank = q * total
    seen = 0
    for index, count in enumerate(counts):
        if count and seen + count >= rank:
            if index >= len(FINE_BOUNDS):
                return FINE_BOUNDS[-1]  # above the last bound: all we know
            low = FINE_BOUNDS[index - 1] if index else 0.0
            return low + (FINE_BOUNDS[index] - low) * (rank - seen) / count
        seen += count
    return FINE_BOUNDS[-1]


class RecentEvents(logging.Handler):
    """The last ``size`` warnings and errors logged by the node; a message repeated in a row is kept once, with
    a count, so one failing peer does not push everything else out."""

    def __init__(self, clock, size: int = EVENTS):
        super().__init__(logging.WARNING)
        self.clock = clock
        self.events: deque[dict] = deque(maxlen=size)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.add(record.levelname.lower(), record.name, record.getMessage())
        except Exception:  # noqa: BLE001 - logging must never fail the caller
            self.handleError(record)

    def add(self, level: str, source: str, message: str) -> None:
        now = round(self.clock.wall(), 3)
        last = self.events[-1] if self.events else None
        if last is not None and last["message"] == message and last["level"] == level:
            last["count"] += 1
            last["time"] = now
            return
        self.events.append({"time": now, "level": level, "source": source, "message": message, "count": 1})

    def snapshot(self) -> list[dict]:
        return [dict(event) for event in self.events]


class RecentActivity:
    """Per-second slots of the requests this node coordinated: ``[time, ops, errors, p50_ms, p99_ms, max_ms]``
    (time in wall seconds at the slot's end, latencies None in a second without requests)."""

    def __init__(self, stats, clock, events: RecentEvents, size: int = SLOTS):
        self.stats = stats
        self.clock = clock
        self.events = events
        self.slots: deque[list] = deque(maxlen=size)
        self._last = self._read()
        self._last_time = clock.monotonic()

    def _read(self):
        """(latency counts summed over every kind of request, {(op, error): count})."""
        counts = [0] * (len(FINE_BOUNDS) + 1)
        errors = {}
        for op, stats in self.stats.ops.items():
            counts = [a + b for a, b in zip(counts, stats.buckets)]
            for name, count in stats.errors.items():
                errors[(op, name)] = count
        return counts, errors

    def tick(self) -> None:
        """Close the slot of the time since the last tick."""
        now = self.clock.monotonic()
        elapsed = max(now - self._last_time, 1e-3)
        (counts, errors), (before, errors_before) = self._read(), self._last
        self._last, self._last_time = (counts, errors), now
        window = [a - b for a, b in zip(counts, before)]
        failed = 0
        for (op, name), count in errors.items():
            new = count - errors_before.get((op, name), 0)
            if new:
                failed += new
                # Failed requests are not logged one by one (a flood would drown the log): one event a second.
                self.events.add("error", "requests", f"{new:,} {op} request{'s' if new > 1 else ''} failed: {name}")
        top = max((i for i, c in enumerate(window) if c), default=None)
        self.slots.append([
            round(self.clock.wall(), 3),
            round(sum(window) / elapsed, 1),
            round(failed / elapsed, 1),
            _ms(percentile(window, 0.50)),
            _ms(percentile(window, 0.99)),
            None if top is None else _ms(FINE_BOUNDS[min(top, len(FINE_BOUNDS) - 1)]),
        ])

    async def run(self, interval: float = 1.0) -> None:
        while True:
            await asyncio.sleep(interval)
            self.tick()

    def status(self) -> dict:
        return {"interval": 1.0, "fields": ["time", "ops", "errors", "p50_ms", "p99_ms", "max_ms"],
                "slots": [list(slot) for slot in self.slots], "events": self.events.snapshot()}


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)
