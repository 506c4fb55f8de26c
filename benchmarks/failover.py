"""Failover: `dynafast bench` against a 3-node cluster (N=3, R=2, W=2), healthy, then with one node SIGSTOPped.

The paused node keeps its sockets open and answers nothing (a hung process, a long GC or swap storm, a VM
stall): the worst case for a client, which sees no error, only silence. The second run starts with every node
up; the node is stopped about half a second into it (before the cluster has marked it down: the run covers
the onset) and continued --pause seconds later, just after the run ends. A third run starts at once after
that: the recovery, while the continued node works through what queued up for it.

    python benchmarks/failover.py --pause 20 --clients 50 --workload a
    python benchmarks/failover.py --healthy-only --duration 15     # the healthy run alone (A/B of the client)

Prints each run's table and a summary: errors and p99.9 during the pause against the healthy p99.9 (the
target: no errors, at most twice the healthy p99.9). --json-out FILE keeps both reports.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from dynafast import Client
from dynafast.bench.runner import format_table
from dynafast.errors import DynafastError
from dynafast.testing.cluster import LocalCluster


def bench(addresses, args, duration: float, load: bool) -> dict:
    argv = [sys.executable, "-m", "dynafast.cli", "bench", "--cluster", ",".join(addresses),
            "--workload", args.workload, "--clients", str(args.clients), "--duration", str(duration),
            "--records", str(args.records), "--json", "--no-progress", "--seed", "7"]
    if not load:
        argv.append("--no-load")
    done = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 300)
    if done.returncode != 0:
        raise SystemExit(f"dynafast bench failed: {done.stderr.strip()}")
    return json.loads(done.stdout)


def wait_up(addresses, count: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    with Client(addresses, timeout=2.0) as client:
        while time.monotonic() < deadline:
            try:
                if all(sum(m["state"] == "up" for m in client.status(a)["members"]) == count for a in addresses):
                    return
            except DynafastError:
                pass
            time.sleep(0.2)
    raise SystemExit("the cluster did not come up")


def pause_during(node, delay: float, seconds: float) -> threading.Thread:
    def run():
        time.sleep(delay)
        node.pause()
        try:
            time.sleep(seconds)
        finally:
            node.resume()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pause", type=float, default=20.0, help="seconds the node stays stopped (default 20)")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of the healthy run (default 20)")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--workload", default="a")
    parser.add_argument("--records", type=int, default=10000)
    parser.add_argument("--healthy-only", action="store_true", help="run the healthy benchmark alone")
    parser.add_argument("--json-out", type=Path, help="write both reports to this file")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="dynafast-failover-") as tmp, LocalCluster(3, base_dir=tmp) as cluster:
        addresses = cluster.addresses
        wait_up(addresses, 3)
        healthy = bench(addresses, args, args.duration, load=True)
        print(f"healthy, {args.duration:g} s:\n{format_table(healthy)}\n")
        reports = {"healthy": healthy}
        if not args.healthy_only:
            # The bench process needs about a second to start and connect: the pause begins inside its run,
            # and ends just after it.
            run_for = args.pause - 1.0
            thread = pause_during(cluster.node("n3"), 1.5, args.pause)
            paused = bench(addresses, args, run_for, load=False)
            thread.join(timeout=args.pause + 30)
            print(f"n3 SIGSTOPped from about 0.5 s into this {run_for:g} s run until its end:")
            print(f"{format_table(paused)}\n")
            after = bench(addresses, args, 10.0, load=False)
            print(f"right after n3 continued, 10 s:\n{format_table(after)}\n")
            reports.update(paused=paused, after=after)
            for name, report in reports.items():
                o = report["overall"]
                print(f"{name + ':':9} {o['ops_per_s']:>7,.0f} ops/s  p99 {o['p99_us']:>9,} us  "
                      f"p99.9 {o['p999_us']:>9,} us  max {o['max_us']:>9,} us  errors {o['errors']}")
            ratio = paused["overall"]["p999_us"] / healthy["overall"]["p999_us"]
            print(f"p99.9 paused / healthy: {ratio:.2f} (target <= 2, and 0 errors)")
        if args.json_out:
            args.json_out.write_text(json.dumps(reports, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
