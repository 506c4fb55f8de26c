"""Request counters and latency histograms of a node, cheap enough for every request.

The request path only increments integers (a bisect picks the latency bucket); the Prometheus side
(``dynafast.exporter``) reads them when /metrics is scraped, and the console's per-second window (``recent``)
reads them once a second.
"""
from __future__ import annotations

import asyncio
import time
from bisect import bisect_left

# Upper bounds of the latency buckets Prometheus gets, in seconds (the last, implicit bucket is +Inf).
BOUNDS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

# The buckets requests are counted in: ten per decade (the R10 series: steps of 25 to 28%) from 10 us to 10 s,
# fine enough for the console's percentiles. Every bound of BOUNDS is one of them, so the Prometheus buckets are
# exact sums of these. A bisect over 61 bounds costs a request about 0.03 us more than one over 15
# (benchmarks/latency_buckets.py).
_R10 = (1.0, 1.25, 1.6, 2.0, 2.5, 3.15, 4.0, 5.0, 6.3, 8.0)
FINE_BOUNDS = tuple(float(f"{m}e{e}") for e in range(-5, 1) for m in _R10) + (10.0,)
# Index in FINE_BOUNDS of each bound of BOUNDS.
_COARSE = tuple(FINE_BOUNDS.index(b) for b in BOUNDS)


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
        self.buckets = [0] * (len(FINE_BOUNDS) + 1)  # counts per FINE_BOUNDS bucket, the last one +Inf
        self.total_seconds = 0.0

    def cumulative(self) -> list[int]:
        """Cumulative counts at each bound of BOUNDS and then +Inf, as a Prometheus histogram has them."""
        buckets = self.buckets
        out, total, start = [], 0, 0
        for end in _COARSE:
            total += sum(buckets[start:end + 1])
            out.append(total)
            start = end + 1
        out.append(total + sum(buckets[start:]))
        return out


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
        stats.buckets[bisect_left(FINE_BOUNDS, elapsed)] += 1
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
