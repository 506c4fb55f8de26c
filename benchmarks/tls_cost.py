"""What TLS costs: the same closed-loop load against a local cluster without TLS and with it, in one run.

A cluster of real node processes on 127.0.0.1 (one node by default; ``--nodes 3`` for N=3 R=2 W=2, where
replica traffic between nodes is encrypted too) is started without TLS, loaded, stopped, then started with
certificates from ``dynafast certs`` and loaded the same way; ``--rounds`` alternates the two that many times
so that a change in the machine's load hits both. The load: ``--clients`` concurrent workers on one
AsyncClient (uvloop), each doing put then get of ``--value-size``-byte values over ``--keys`` keys, for
``--duration`` seconds after a warm-up. Reported per round and in total: ops/s, the nodes' CPU time per
operation (user+system, from /proc), the client process's CPU time per operation (on a small machine the
clients and the nodes share the cores), and the ratios TLS / plain.

    python benchmarks/tls_cost.py --nodes 1 --clients 32 --duration 15 --rounds 2
    python benchmarks/tls_cost.py --nodes 3 --clients 32 --duration 15 --rounds 2
"""
from __future__ import annotations

import argparse
import asyncio
import os
import random
import tempfile
import time
from pathlib import Path

from dynafast import AsyncClient, Client
from dynafast.errors import DynafastError
from dynafast.net.loop import install
from dynafast.security.certs import write_dev_certs
from dynafast.security.tls import client_context
from dynafast.testing.cluster import LocalCluster

WARMUP = 2.0


def cpu_seconds(pids) -> float:
    """User+system CPU seconds the processes have used so far."""
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of the whole line)
    return total / os.sysconf("SC_CLK_TCK")


def wait_formed(cluster, tls, size, timeout=60.0):
    deadline = time.monotonic() + timeout
    with Client(cluster.addresses, tls=tls, timeout=2.0) as client:
        while time.monotonic() < deadline:
            try:
                if all(sum(m["state"] == "up" for m in client.status(a)["members"]) == size
                       and client.status(a).get("next_ring_version") is None for a in cluster.addresses):
                    return
            except DynafastError:
                pass
            time.sleep(0.2)
    raise RuntimeError(f"the cluster did not form within {timeout:.0f}s")


async def closed_loop(addresses, tls, pids, args) -> tuple[int, int, float, float, float]:
    """(operations, errors, seconds measured, CPU seconds the node processes ``pids`` and this process (the
    clients) used meanwhile)."""
    clients, duration, keys, value_size = args.clients, args.duration, args.keys, args.value_size
    value = os.urandom(value_size)
    counts = {"ops": 0, "errors": 0}
    measuring = asyncio.Event()
    stop = asyncio.Event()

    async def worker(client, rng):
        while not stop.is_set():
            key = b"k%06d" % rng.randrange(keys)
            try:
                await client.put(key, value)
                await client.get(key)
            except DynafastError:
                if measuring.is_set():
                    counts["errors"] += 1
                continue
            if measuring.is_set():
                counts["ops"] += 2

    async with AsyncClient(addresses, tls=tls, timeout=5.0) as client:
        tasks = [asyncio.create_task(worker(client, random.Random(i))) for i in range(clients)]
        await asyncio.sleep(WARMUP)
        measuring.set()
        started = time.monotonic()
        cpu_start, client_start = cpu_seconds(pids), time.process_time()
        await asyncio.sleep(duration)
        cpu_used, client_used = cpu_seconds(pids) - cpu_start, time.process_time() - client_start
        elapsed = time.monotonic() - started
        measuring.clear()
        stop.set()
        await asyncio.gather(*tasks)
    return counts["ops"], counts["errors"], elapsed, cpu_used, client_used


def run_once(args, base: Path, certs: Path | None) -> dict:
    extra = []
    tls = None
    if certs is not None:
        # One certificate for every node: its names (127.0.0.1) cover them all.
        extra = ["--tls-cert", str(certs / "n1.pem"), "--tls-key", str(certs / "n1-key.pem"),
                 "--tls-ca", str(certs / "ca.pem")]
        tls = client_context(str(certs / "ca.pem"))
    n = min(3, args.nodes)
    quorum = 2 if n >= 2 else 1
    with LocalCluster(args.nodes, base_dir=base, n=n, r=quorum, w=quorum, extra_args=extra) as cluster:
        wait_formed(cluster, tls, args.nodes)
        pids = [node.pid for node in cluster.nodes]
        ops, errors, elapsed, cpu, client_cpu = asyncio.run(closed_loop(cluster.addresses, tls, pids, args))
    per_op = 1e6 / ops if ops else float("nan")
    return {"ops": ops, "errors": errors, "seconds": elapsed, "cpu": cpu, "client_cpu": client_cpu,
            "ops_per_s": ops / elapsed, "cpu_us_per_op": cpu * per_op, "client_cpu_us_per_op": client_cpu * per_op}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=1)
    parser.add_argument("--clients", type=int, default=32, help="concurrent workers (default %(default)s)")
    parser.add_argument("--duration", type=float, default=15.0, help="seconds measured per run")
    parser.add_argument("--rounds", type=int, default=2, help="plain and TLS runs, alternated (default %(default)s)")
    parser.add_argument("--keys", type=int, default=10_000)
    parser.add_argument("--value-size", type=int, default=100)
    args = parser.parse_args(argv)
    install()
    with tempfile.TemporaryDirectory(prefix="dynafast-tls-cost-") as tmp:
        tmp = Path(tmp)
        certs = tmp / "certs"
        write_dev_certs(certs, hosts=["127.0.0.1", "localhost"], nodes=["n1"])
        results = {"plain": [], "tls": []}
        for round_ in range(args.rounds):
            for mode in ("plain", "tls"):
                result = run_once(args, tmp / f"{mode}-{round_}", certs if mode == "tls" else None)
                results[mode].append(result)
                print(f"round {round_ + 1} {mode:>5}: {result['ops_per_s']:>9,.0f} ops/s  "
                      f"{result['cpu_us_per_op']:>6,.0f} node CPU us/op  "
                      f"{result['client_cpu_us_per_op']:>6,.0f} client CPU us/op  errors {result['errors']}",
                      flush=True)
    total = {mode: {"ops_per_s": sum(r["ops"] for r in rs) / sum(r["seconds"] for r in rs),
                    "cpu_us_per_op": sum(r["cpu"] for r in rs) / max(1, sum(r["ops"] for r in rs)) * 1e6,
                    "client_cpu_us_per_op": sum(r["client_cpu"] for r in rs) / max(1, sum(r["ops"] for r in rs)) * 1e6}
             for mode, rs in results.items()}
    print()
    print(f"{args.nodes} node(s), {args.clients} clients, put+get of {args.value_size}-byte values, "
          f"{args.rounds} x {args.duration:g} s per mode")
    print()
    print("|                     |    plain |      TLS | TLS / plain |")
    print("|---------------------|---------:|---------:|------------:|")
    for name, label in (("ops_per_s", "ops/s"), ("cpu_us_per_op", "node CPU us/op"),
                        ("client_cpu_us_per_op", "client CPU us/op")):
        plain, tls = total["plain"][name], total["tls"][name]
        print(f"| {label:<19} | {plain:>8,.0f} | {tls:>8,.0f} | {tls / plain:>11.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
