"""redis-benchmark against redis-server and against a dynafast node's RESP listener (N=1), in the same run.

    PYTHONPATH=src python3 benchmarks/resp_vs_redis.py [--requests 200000] [--clients 50]

SET and GET, 100-byte values, random keys out of 100,000 (``-r``), ``--clients`` connections, pipeline 1 and 16.
One server runs at a time (the other is stopped), on 127.0.0.1, with redis-benchmark on the same machine. Per
test: ops/s, p50/p99 latency (redis-benchmark's CSV) and the server's CPU seconds per operation (utime + stime
from /proc/PID/stat around the test).

Durability is made comparable: redis-server without RDB or AOF, the dynafast node with dw=0 (a write is
acknowledged once in the store's write buffer; the store syncs every sync_interval, 0.1 s) and sync=interval.
The 3-node comparison (a dynafast cluster against a Redis Cluster) is not in this script yet.
"""
from __future__ import annotations

import argparse
import csv
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

STARTED: list[subprocess.Popen] = []
TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


def wait_ping(port: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = subprocess.run(["redis-cli", "-p", str(port), "SET", "warmup", "x"], capture_output=True, text=True)
        if done.stdout.strip() == "OK":
            return
        time.sleep(0.2)
    raise RuntimeError(f"nothing answers on port {port}")


def start_redis(base: str) -> tuple[subprocess.Popen, int]:
    port = free_port()
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--save", "", "--appendonly", "no",
                             "--dir", base, "--protected-mode", "no"], stdout=subprocess.DEVNULL)
    STARTED.append(proc)
    wait_ping(port)
    return proc, port


def start_dynafast(base: str) -> tuple[subprocess.Popen, int]:
    port, resp = free_port(), free_port()
    proc = subprocess.Popen([sys.executable, "-m", "dynafast.cli", "node", "--listen", f"127.0.0.1:{port}",
                             "--resp", f"127.0.0.1:{resp}", "--data-dir", os.path.join(base, "node"),
                             "--n", "1", "--r", "1", "--w", "1", "--dw", "0", "--sync", "interval"],
                            stdout=subprocess.DEVNULL, stderr=open(os.path.join(base, "node.log"), "wb"))
    STARTED.append(proc)
    wait_ping(resp)
    return proc, resp


def run(port: int, test: str, requests: int, clients: int, pipeline: int, pid: int) -> dict:
    before = cpu_seconds(pid)
    done = subprocess.run(["redis-benchmark", "-p", str(port), "-t", test, "-n", str(requests), "-c", str(clients),
                           "-P", str(pipeline), "-d", "100", "-r", "100000", "--csv"],
                          capture_output=True, text=True, timeout=900)
    cpu = cpu_seconds(pid) - before
    rows = list(csv.DictReader(io.StringIO(done.stdout)))
    if not rows:
        raise RuntimeError(f"redis-benchmark printed no result: {done.stdout} {done.stderr}")
    row = rows[0]
    return {"ops": float(row["rps"]), "p50": float(row["p50_latency_ms"]), "p99": float(row["p99_latency_ms"]),
            "cpu_us": cpu / requests * 1e6}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=200_000)
    parser.add_argument("--clients", type=int, default=50)
    args = parser.parse_args()
    for tool in ("redis-server", "redis-benchmark", "redis-cli"):
        if shutil.which(tool) is None:
            print(f"{tool} is not installed", file=sys.stderr)
            return 1
    results = {}
    with tempfile.TemporaryDirectory() as base:
        for system, start in (("redis-server", start_redis), ("dynafast", start_dynafast)):
            proc, port = start(tempfile.mkdtemp(dir=base))
            try:
                for pipeline in (1, 16):
                    for test in ("set", "get"):
                        results[(system, test, pipeline)] = run(port, test, args.requests, args.clients, pipeline,
                                                                proc.pid)
            finally:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=30)
    print(f"redis-benchmark -t set|get -n {args.requests} -c {args.clients} -P 1|16 -d 100 -r 100000; "
          f"{time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPUs")
    print(f"{'test':10} {'pipeline':>8} | {'redis ops/s':>12} {'p50':>6} {'p99':>6} {'cpu us/op':>9} | "
          f"{'dynafast ops/s':>14} {'p50':>6} {'p99':>6} {'cpu us/op':>9} | {'ops ratio':>9} {'cpu ratio':>9}")
    for pipeline in (1, 16):
        for test in ("set", "get"):
            r, d = results[("redis-server", test, pipeline)], results[("dynafast", test, pipeline)]
            print(f"{test.upper():10} {pipeline:>8} | {r['ops']:>12,.0f} {r['p50']:>6.2f} {r['p99']:>6.2f} "
                  f"{r['cpu_us']:>9.1f} | {d['ops']:>14,.0f} {d['p50']:>6.2f} {d['p99']:>6.2f} {d['cpu_us']:>9.1f} | "
                  f"{d['ops'] / r['ops']:>9.2f} {d['cpu_us'] / r['cpu_us']:>9.2f}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    finally:
        for proc in STARTED:
            if proc.poll() is None:
                proc.kill()
