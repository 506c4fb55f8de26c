"""What a merge (compaction) of one sealed segment costs, A/B of source trees, made for a shared, noisy machine: the
trees take turns round by round, the order alternating.

    python3 benchmarks/merge_cost.py --rounds 6 BEFORE/src AFTER/src [--keys 100000] [--value-size 150]

Each round, in a fresh process per tree: a compiled store with 64 MiB segments gets puts of random keys out of
``--keys`` (the key shape a node stores: b"o" + partition + key) until the first segment is sealed with most of its
records overwritten since, as under a steady write load; then ``merge(0.5)`` merges it. Printed: the merge's CPU
time (its thread's) and wall time, and the records it read; then the medians per tree.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

ROUND = r"""
import json, os, random, sys, tempfile, time
from dynafast._core.logstore import LogStore
keys, value_size = int(sys.argv[1]), int(sys.argv[2])
rng = random.Random(1)
value = rng.randbytes(value_size)
with tempfile.TemporaryDirectory() as base:
    store = LogStore(os.path.join(base, "store"), segment_size=64 << 20)
    written = 0
    while written < 3 * keys or store.stats()["segments"] < 2:
        for _ in range(10_000):
            store.put(b"o\x00\x01key:%012d" % rng.randrange(keys), value)
        written += 10_000
    store.flush()
    wall, cpu = time.perf_counter(), time.thread_time()
    merged = store.merge(0.5)
    cpu, wall = time.thread_time() - cpu, time.perf_counter() - wall
    print(json.dumps({"merged": merged, "cpu_ms": cpu * 1e3, "wall_ms": wall * 1e3, "written": written}))
    store.close()
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("trees", nargs="+", help="src directories to compare (each put first on PYTHONPATH)")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--value-size", type=int, default=150)
    args = parser.parse_args()
    results: dict[str, list] = {tree: [] for tree in args.trees}
    for round_ in range(args.rounds):
        for tree in args.trees if round_ % 2 == 0 else args.trees[::-1]:
            out = subprocess.run([sys.executable, "-c", ROUND, str(args.keys), str(args.value_size)], check=True,
                                 capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=tree)).stdout
            r = json.loads(out)
            results[tree].append(r)
            print(f"{tree}: merged {r['merged']} segment(s) after {r['written']:,} puts: {r['cpu_ms']:.1f} ms CPU, "
                  f"{r['wall_ms']:.1f} ms wall, load {os.getloadavg()[0]:.2f}", flush=True)
    print("\nmedians")
    for tree, runs in results.items():
        print(f"{tree}: {statistics.median(r['cpu_ms'] for r in runs):.1f} ms CPU, "
              f"{statistics.median(r['wall_ms'] for r in runs):.1f} ms wall")
    return 0


if __name__ == "__main__":
    sys.exit(main())
