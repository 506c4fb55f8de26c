"""Request counters and latency histograms of a node, cheap enough for every request.

The request path only increments integers (a bisect picks the latency bucket); the Prometheus side
(``dynafast.exporter``) reads them when /metrics is scraped.
"""
from __future__ import annotations

import asyncio
import time
from bisect import bisect_left

# Upper bounds of the latency buckets, in seconds (the last, implicit bucket is +Inf).
BOUNDS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Histogram:
    """Observations counted into the ``BOUNDS`` buckets, with their count and sum (a Prometheus histogram)."""

    __slots__ = ("buckets", "count", "total_seconds")

    def __init__(self):
        self.buckets = [0] * (len(BOUNDS) + 1)
        self.count = 0
        self.total_seconds = 0.0

    def observe(self, seconds: float) -> None:
        self.buckets[bisect_left(BOUNDS, seconds)] += 1
        self.count += 1
        self.total_seconds += seconds


class OpStats:
    __slots__ = ("count", "errors", "buckets", "total_seconds")

    def __init__(self):
        self.count = 0
        self.errors: dict[str, int] = {}
        self.buckets = [0] * (len(BOUNDS) + 1)
        self.total_seconds = 0.0


class RequestStats:
    def __init__(self, ops):
        self.ops = {op: OpStats() for op in ops}

    def started(self) -> float:
        return time.perf_counter()

    def finished(self, op: str, started: float, error: BaseException | None = None) -> None:
        stats = self.ops[op]
        elapsed = time.perf_counter() - started
        stats.count += 1
        stats.total_seconds += elapsed
        stats.buckets[bisect_left(BOUNDS, elapsed)] += 1
        if error is not None:
            name = type(error).__name__
            stats.errors[name] = stats.errors.get(name, 0) + 1

    def track(self, op: str, started: float, result):
        """Record ``result`` (a reply, or a future of one) when it is ready; returns it unchanged."""
        if asyncio.iscoroutine(result):
            result = asyncio.ensure_future(result)  # a forwarded request: rare, worth a Task to be counted
        add = getattr(result, "add_done_callback", None)
        if add is None:
            self.finished(op, started)
        else:
            add(lambda future: self.finished(
                op, started, None if future.cancelled() else future.exception()))
        return result

    def snapshot(self) -> dict:
        return {
            op: {
                "count": s.count,
                "errors": dict(s.errors),
                "mean_ms": round(1000 * s.total_seconds / s.count, 3) if s.count else None,
            }
            for op, s in self.ops.items()
        }
