"""What timing every group-commit fsync costs (dynafast_fsync_seconds): the node's DurabilityBatcher as it is
against the one of a baseline revision (without the timing), alternated in one run.

Each round opens a fresh store (as a node does: sync "none", the batcher asks for fsyncs), and ``--writers``
asyncio tasks each write a 100-byte value and wait until it is durable, ``--writes`` times in all. Reported:
the process's CPU time per durable write and per fsync (user+system, time.process_time), writes per second,
and the fsync latency the histogram saw (mean of the timed version).

    python benchmarks/fsync_timing.py --rounds 3 --writes 20000 --writers 32
"""
from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import dynafast
from dynafast.cluster import durability as current

ROOT = Path(__file__).resolve().parent.parent


def baseline_module(rev: str) -> types.ModuleType:
    source = subprocess.run(["git", "show", f"{rev}:src/dynafast/cluster/durability.py"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout
    module = types.ModuleType("durability_baseline")
    exec(compile(source, f"{rev}:durability.py", "exec"), module.__dict__)
    return module


async def durable_writes(batcher_class, store, writes: int, writers: int) -> int:
    batcher = batcher_class(store)
    value = b"v" * 100
    left = iter(range(writes))

    async def writer():
        for i in left:  # the shared iterator hands each write to one writer
            store.put(b"k%d" % i, value)
            await batcher.waiter()

    try:
        await asyncio.gather(*(writer() for _ in range(writers)))
    finally:
        batcher.close()
    return batcher.syncs, getattr(batcher, "fsync_seconds", None)


def one_round(batcher_class, args) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        store = dynafast.open(Path(tmp) / "store", sync="none")
        try:
            cpu, wall = time.process_time(), time.perf_counter()
            syncs, timed = asyncio.run(durable_writes(batcher_class, store, args.writes, args.writers))
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        finally:
            store.close()
    return {"cpu": cpu, "wall": wall, "syncs": syncs,
            "fsync_mean_ms": None if timed is None or not timed.count else 1000 * timed.total_seconds / timed.count}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    # ccac80f: the last revision whose batcher did not time its fsyncs.
    parser.add_argument("--baseline-rev", default="ccac80f", help="git revision of the batcher without timing")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--writes", type=int, default=20000)
    parser.add_argument("--writers", type=int, default=32)
    args = parser.parse_args()
    variants = {"baseline": baseline_module(args.baseline_rev).DurabilityBatcher,
                "timed": current.DurabilityBatcher}
    totals = {name: {"cpu": 0.0, "wall": 0.0, "syncs": 0, "writes": 0} for name in variants}
    means = []
    for n in range(args.rounds):
        for name, batcher_class in variants.items():
            result = one_round(batcher_class, args)
            t = totals[name]
            t["cpu"] += result["cpu"]
            t["wall"] += result["wall"]
            t["syncs"] += result["syncs"]
            t["writes"] += args.writes
            if result["fsync_mean_ms"] is not None:
                means.append(result["fsync_mean_ms"])
            print(f"round {n + 1} {name:8}: {args.writes / result['wall']:9,.0f} writes/s, "
                  f"{1e6 * result['cpu'] / args.writes:6.2f} us CPU/write, {result['syncs']:,} fsyncs, "
                  f"{1e6 * result['cpu'] / max(1, result['syncs']):7.1f} us CPU/fsync", flush=True)
    print()
    print(f"{'':22}{'baseline':>10}{'timed':>10}{'timed/baseline':>16}")
    rows = {
        "writes/s": lambda t: t["writes"] / t["wall"],
        "CPU us per write": lambda t: 1e6 * t["cpu"] / t["writes"],
        "CPU us per fsync": lambda t: 1e6 * t["cpu"] / max(1, t["syncs"]),
        "writes per fsync": lambda t: t["writes"] / max(1, t["syncs"]),
    }
    for label, figure in rows.items():
        b, t = figure(totals["baseline"]), figure(totals["timed"])
        print(f"{label:22}{b:10,.2f}{t:10,.2f}{t / b:16.3f}")
    if means:
        print(f"\nfsync latency seen by the histogram: mean {sum(means) / len(means):.3f} ms")


if __name__ == "__main__":
    sys.exit(main())
