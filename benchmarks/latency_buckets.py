"""Per-request cost of counting a request's latency (``RequestStats.finished``) with the console's fine buckets
(61 bounds) against the 15 Prometheus bounds they replaced.

Both run the same method on the same stats object; only the bound tuple the bisect searches differs. Rounds
alternate and the best of each is kept (the machine is shared and noisy).

    python benchmarks/latency_buckets.py [--rounds 15] [--calls 200000]
"""
from __future__ import annotations

import argparse
import time

from dynafast import metrics
from dynafast.metrics import BOUNDS, FINE_BOUNDS, RequestStats

LATENCIES = (0.00012, 0.0004, 0.0009, 0.0021, 0.0047, 0.013, 0.0008, 0.0003)  # a spread, as a load has


def per_call_ns(bounds, calls: int) -> float:
    metrics.FINE_BOUNDS = bounds  # what ``finished`` bisects over
    stats = RequestStats(["get"])
    # Wide enough for either tuple's buckets.
    stats.ops["get"].buckets = [0] * (len(FINE_BOUNDS) + 1)
    finished = stats.finished
    starts = [time.perf_counter() - latency for latency in LATENCIES] * (calls // len(LATENCIES))
    begin = time.perf_counter()
    for started in starts:
        finished("get", started)
    return (time.perf_counter() - begin) / len(starts) * 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--calls", type=int, default=200_000)
    args = parser.parse_args()
    coarse, fine = [], []
    try:
        for _ in range(args.rounds):
            coarse.append(per_call_ns(BOUNDS, args.calls))
            fine.append(per_call_ns(FINE_BOUNDS, args.calls))
    finally:
        metrics.FINE_BOUNDS = FINE_BOUNDS
    print(f"finished() with {len(BOUNDS)} bounds: best {min(coarse):.0f} ns, median {sorted(coarse)[len(coarse) // 2]:.0f} ns")
    print(f"finished() with {len(FINE_BOUNDS)} bounds: best {min(fine):.0f} ns, median {sorted(fine)[len(fine) // 2]:.0f} ns")
    print(f"difference of the best: {min(fine) - min(coarse):+.0f} ns per request")


if __name__ == "__main__":
    main()
