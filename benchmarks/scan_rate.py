"""Scan rate of a cluster scan against an embedded store's iteration over the same keys, in one run.

    python benchmarks/scan_rate.py --keys 100000

Starts 3 node processes on 127.0.0.1 (temporary data directories, n=3), loads --keys keys of --value-size
bytes, and times a full cluster scan with the blocking Client and with the AsyncClient (every key, each with
its siblings and context decoded). The baseline is a single-node embedded store (``dynafast.open(path)``) holding
the same keys and values, iterated with ``items()``. Each figure is the best of --repeat scans. Every process it
starts is stopped by PID.
"""
from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

import dynafast
from dynafast import AsyncClient, Client
from dynafast.testing.cluster import LocalCluster


def key_of(i: int) -> bytes:
    return b"user%010d" % i


async def load(addresses, count: int, value: bytes) -> float:
    started = time.monotonic()
    async with AsyncClient(addresses, timeout=30.0) as client:
        for start in range(0, count, 10_000):
            items = [(key_of(i), value) for i in range(start, min(count, start + 10_000))]
            failed = [k for k, e in (await client.put_many(items, w=3)).items() if e is not None]
            if failed:
                raise SystemExit(f"{len(failed)} puts failed")
    return count / (time.monotonic() - started)


def best_rate(run, repeat: int, expected: int) -> float:
    best = 0.0
    for _ in range(repeat):
        started = time.perf_counter()
        count = run()
        elapsed = time.perf_counter() - started
        if count != expected:
            raise SystemExit(f"scanned {count} keys, expected {expected}")
        best = max(best, count / elapsed)
    return best


def cluster_scan(addresses, page_size: int) -> int:
    with Client(addresses, timeout=30.0) as client:
        return sum(1 for _ in client.scan(page_size=page_size))


def cluster_scan_async(addresses, page_size: int) -> int:
    async def run():
        async with AsyncClient(addresses, timeout=30.0) as client:
            count = 0
            async for _ in client.scan(page_size=page_size):
                count += 1
            return count
    return asyncio.run(run())


def embedded_items(path) -> int:
    with dynafast.open(path) as db:
        return sum(1 for _ in db.items())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--value-size", type=int, default=100)
    parser.add_argument("--page-size", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    value = b"x" * args.value_size
    with tempfile.TemporaryDirectory(prefix="dynafast-scan-") as tmp:
        base = Path(tmp)
        with dynafast.open(base / "embedded") as db:
            for i in range(args.keys):
                db.put(key_of(i), value)
        embedded = best_rate(lambda: embedded_items(base / "embedded"), args.repeat, args.keys)
        with LocalCluster(3, base_dir=base / "cluster") as cluster:
            deadline = time.monotonic() + 60
            with Client(cluster.addresses) as client:
                while len([m for m in client.status()["members"] if m["state"] == "up"]) < 3:
                    if time.monotonic() > deadline:
                        raise SystemExit("the cluster did not form")
                    time.sleep(0.2)
            load_rate = asyncio.run(load(cluster.addresses, args.keys, value))
            blocking = best_rate(lambda: cluster_scan(cluster.addresses, args.page_size), args.repeat, args.keys)
            concurrent = best_rate(lambda: cluster_scan_async(cluster.addresses, args.page_size), args.repeat,
                                   args.keys)
    print(f"keys {args.keys:,}, values {args.value_size} B, page size {args.page_size}, best of {args.repeat}")
    print(f"(load through AsyncClient.put_many, w=3: {load_rate:,.0f} keys/s)")
    print()
    print("| scan | keys/s | vs embedded |")
    print("|---|---:|---:|")
    print(f"| embedded `dynafast.open(path).items()`, one process | {embedded:,.0f} | 1.00 |")
    print(f"| cluster `Client.scan()`, 3 nodes, n=3 | {blocking:,.0f} | {blocking / embedded:.3f} |")
    print(f"| cluster `AsyncClient.scan()`, 3 nodes, n=3 | {concurrent:,.0f} | {concurrent / embedded:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
