"""How long a single node stops answering while it takes a heavy SET load (and merges behind it), A/B of source
trees, made for a shared, noisy machine: the trees take turns round by round, the order alternating.

    python3 benchmarks/loop_stalls.py --rounds 4 BEFORE/src AFTER/src [--requests 2000000]

Each round, for each tree: a fresh node (N=1, ``--sync interval``, the tree first on PYTHONPATH) takes
``redis-benchmark -t set -c 50 -P 16 -d 100 -r 100000`` while a probe on its own connection sends a PING every
millisecond and times the reply. The load writes a 64 MiB segment every second or so, and the node merges them as
they die. Printed: SETs per second, the node's CPU per SET, and every PING that took over 20 ms (when, how long).
Needs redis-benchmark.
"""
from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import resp_vs_redis as rv  # noqa: E402  (its node launcher and process helpers)

SLOW = 0.020  # a PING reply slower than this counts as a stall


def one_round(tree: str, requests: int) -> dict:
    base = tempfile.mkdtemp(prefix="dynafast-stalls-")
    env_path = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = tree  # the node the launcher starts inherits it
    try:
        procs, ports, _ = rv.start_dynafast(base)
    finally:
        if env_path is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = env_path
    stalls: list[tuple[float, float]] = []
    stop = threading.Event()
    t0 = time.monotonic()

    def probe():
        with socket.create_connection(("127.0.0.1", ports[0]), timeout=10) as s:
            while not stop.is_set():
                sent = time.monotonic()
                s.sendall(b"*1\r\n$4\r\nPING\r\n")
                if not s.recv(64):
                    return
                took = time.monotonic() - sent
                if took > SLOW:
                    stalls.append((sent - t0, took))
                time.sleep(0.001)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    cpu0, wall0 = rv.cpu_seconds([p.pid for p in procs]), time.monotonic()
    try:
        subprocess.run(["redis-benchmark", "-p", str(ports[0]), "-t", "set", "-n", str(requests), "-c", "50",
                        "-P", "16", "-d", "100", "-r", "100000", "-q"], check=True, capture_output=True)
        wall, cpu = time.monotonic() - wall0, rv.cpu_seconds([p.pid for p in procs]) - cpu0
    finally:
        stop.set()
        thread.join(timeout=15)
        rv.stop(procs)
        shutil.rmtree(base, ignore_errors=True)
    return {"ops": requests / wall, "cpu_us": cpu / requests * 1e6, "stalls": stalls}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("trees", nargs="+", help="src directories to compare (each put first on PYTHONPATH)")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--requests", type=int, default=2_000_000)
    args = parser.parse_args()
    if shutil.which("redis-benchmark") is None:
        print("needs redis-benchmark", file=sys.stderr)
        return 2
    results: dict[str, list] = {tree: [] for tree in args.trees}
    try:
        for round_ in range(args.rounds):
            for tree in args.trees if round_ % 2 == 0 else args.trees[::-1]:
                r = one_round(tree, args.requests)
                results[tree].append(r)
                stalls = ", ".join(f"{at:.2f}s:{took * 1e3:.0f}ms" for at, took in r["stalls"]) or "none"
                print(f"{tree}: {r['ops']:,.0f} SET/s, {r['cpu_us']:.2f} us CPU/SET, load "
                      f"{os.getloadavg()[0]:.2f}; PINGs over {SLOW * 1e3:.0f} ms: {stalls}", flush=True)
    finally:
        rv.stop(rv.STARTED)
    print("\nper tree: SET/s (range), PINGs over 20 ms per round, the longest")
    for tree, runs in results.items():
        ops = sorted(r["ops"] for r in runs)
        counts = [len(r["stalls"]) for r in runs]
        longest = max((took for r in runs for _, took in r["stalls"]), default=0.0)
        print(f"{tree}: {ops[0]:,.0f}-{ops[-1]:,.0f}, {min(counts)}-{max(counts)}, {longest * 1e3:.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
