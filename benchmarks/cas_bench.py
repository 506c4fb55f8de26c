"""Conditional writes (CAS, one Paxos round) against plain puts, side by side in one run on a local 3-node cluster
(N=3 R=2 W=2, 64 partitions, default sync policy).

Each phase runs ``--clients`` concurrent asyncio tasks on one partition-aware AsyncClient for ``--duration``
seconds, closed loop, 100-byte values:

- ``put``: plain puts, each task to its own keys (the baseline);
- ``cas``: each task its own key, ``put(if_context=...)`` with the context the previous CAS returned
  (uncontended: every round wins at once);
- ``cas-contended``: every task on one key, read-modify-write by CAS, retried on ConditionFailed; each
  successful increment counts as one operation (what an application gets done), failures are counted apart.

    python benchmarks/cas_bench.py --duration 10 --clients 16
"""
from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

from dynafast import AsyncClient, Client, ConditionFailed, DynafastError
from dynafast.testing.cluster import LocalCluster

VALUE = b"v" * 100


def percentile(samples, q):
    if not samples:
        return float("nan")
    samples = sorted(samples)
    return samples[min(len(samples) - 1, int(q * len(samples)))]


async def phase(client, kind, clients, duration):
    latencies, failed, errors = [], 0, 0
    end = time.monotonic() + duration

    async def task(index):
        nonlocal failed, errors
        key = b"bench-%s-%d" % (kind.encode(), index)
        context = None
        serial = 0
        while time.monotonic() < end:
            start = time.perf_counter()
            try:
                if kind == "put":
                    serial += 1
                    await client.put(b"%s-%d" % (key, serial % 1000), VALUE)
                elif kind == "cas":
                    if context is None:
                        context = (await client.get(key)).context
                    context = await client.put(key, VALUE, if_context=context)
                else:
                    got = await client.get(b"bench-contended")
                    value = int(got.values[0]) if got.values else 0
                    while True:
                        try:
                            await client.put(b"bench-contended", b"%d" % (value + 1), if_context=got.context)
                            break
                        except ConditionFailed as exc:
                            failed += 1
                            if time.monotonic() >= end:
                                return
                            value = int(exc.values[0]) if exc.values else 0
                            got.context = exc.context
            except DynafastError:
                errors += 1
                context = None
                continue
            latencies.append(time.perf_counter() - start)

    await asyncio.gather(*(task(i) for i in range(clients)))
    return {"ops": len(latencies), "ops/s": len(latencies) / duration, "p50": percentile(latencies, 0.5),
            "p99": percentile(latencies, 0.99), "failed": failed, "errors": errors}


async def run(addresses, clients, duration):
    async with AsyncClient(addresses, timeout=5.0) as client:
        results = {}
        for kind in ("put", "cas", "cas-contended"):
            await phase(client, kind, clients, min(2.0, duration))  # warm-up: connections, ring, files
            results[kind] = await phase(client, kind, clients, duration)
        return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=16)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as base:
        with LocalCluster(3, base_dir=Path(base)) as cluster:
            with Client(cluster.addresses) as client:
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline:
                    members = client.status()["members"]
                    if len(members) == 3 and all(m["state"] == "up" for m in members):
                        break
                    time.sleep(0.2)
            results = asyncio.run(run(cluster.addresses, args.clients, args.duration))
    base_rate, base_p50, base_p99 = (results["put"][k] for k in ("ops/s", "p50", "p99"))
    print(f"`python benchmarks/cas_bench.py --duration {args.duration:g} --clients {args.clients}`\n")
    print("| phase | ops/s | p50 ms | p99 ms | ops/s vs put | p50 vs put | p99 vs put | condition failed | errors |")
    print("|---|--:|--:|--:|--:|--:|--:|--:|--:|")
    for kind, r in results.items():
        print(f"| {kind} | {r['ops/s']:,.0f} | {r['p50'] * 1000:.2f} | {r['p99'] * 1000:.2f} | "
              f"{r['ops/s'] / base_rate:.2f}x | {r['p50'] / base_p50:.2f}x | {r['p99'] / base_p99:.2f}x | "
              f"{r['failed']} | {r['errors']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
