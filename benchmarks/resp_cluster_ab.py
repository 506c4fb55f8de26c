"""A/B of source trees on the 3-node dynafast cluster of resp_vs_redis.py (N=3, R=2, W=2, DW=0), or with
``--single`` on its single node (N=1), made for a shared, noisy machine: one cluster (or node) per tree, all up at
once, and each test run on them in turn, the order alternating round by round, so that the trees share the
machine's moods.

    python3 benchmarks/resp_cluster_ab.py --rounds 6 --requests 20000 BEFORE/src AFTER/src [--one-node | --single]
        [--pipelines 1,16] [--tests set,get]

Per run: redis-benchmark's ops/s (SET and GET, 100-byte values, 50 connections, pipeline 1 and 16) and the server
CPU per operation (utime + stime from /proc, summed over the 3 nodes). With ``--one-node`` every request goes to
node 1, so node 1's CPU per operation is the coordinator's (with the RESP front end) and the other two nodes'
the cost of serving replica calls. Prints each run, then the medians.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import resp_vs_redis as bench  # noqa: E402 - beside this file


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("trees", nargs="+", help="src directories to compare (each put first on PYTHONPATH)")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--one-node", action="store_true", help="send every request to node 1")
    parser.add_argument("--single", action="store_true", help="one node of one replica per key (N=1) per tree")
    parser.add_argument("--pipelines", default="1,16", help="comma-separated pipeline depths (default 1,16)")
    parser.add_argument("--tests", default="set,get", help="comma-separated redis-benchmark tests (default set,get)")
    args = parser.parse_args()
    clusters, results = {}, {}
    try:
        for tree in args.trees:
            os.environ["PYTHONPATH"] = tree  # the node processes inherit it
            start = bench.start_dynafast if args.single else bench.start_dynafast_cluster
            clusters[tree] = start(tempfile.mkdtemp())
        tests = [(int(p), t) for p in args.pipelines.split(",") for t in args.tests.split(",")]
        for pipeline, test in tests:
            for round_ in range(args.rounds):
                for tree in args.trees if round_ % 2 == 0 else args.trees[::-1]:
                    procs, ports, _ = clusters[tree]
                    before = [bench.cpu_seconds([p.pid]) for p in procs]
                    r = bench.run("redis-benchmark", ports[:1] if args.one_node else ports, test, args.requests, 50,
                                  pipeline, [p.pid for p in procs], False, tempfile.gettempdir())
                    per_node = [(bench.cpu_seconds([p.pid]) - b) / args.requests * 1e6 for p, b in zip(procs, before)]
                    results.setdefault((test, pipeline, tree), []).append((r["ops"], sum(per_node), per_node))
                    print(f"{test.upper()} P{pipeline:<2} {tree}: {r['ops']:,.0f} ops/s, {sum(per_node):.1f} us/op "
                          f"(per node {', '.join(f'{c:.1f}' for c in per_node)}), load {os.getloadavg()[0]:.2f}",
                          flush=True)
    finally:
        for procs, _, _ in clusters.values():
            bench.stop(procs)
    print("\nmedians: ops/s, CPU us/op over the nodes (node 1; nodes 2 and 3)")
    for (test, pipeline, tree), runs in results.items():
        ops = statistics.median(r[0] for r in runs)
        cpu = statistics.median(r[1] for r in runs)
        first = statistics.median(r[2][0] for r in runs)
        others = statistics.median(sum(r[2][1:]) / 2 for r in runs) if len(runs[0][2]) > 1 else 0.0
        print(f"{test.upper()} P{pipeline:<2} {tree}: {ops:,.0f} ops/s, {cpu:.1f} us/op ({first:.1f}; {others:.1f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
