"""Grow a cluster from 3 to 4 nodes and shrink it back while clients keep working; report what moved.

    python benchmarks/rebalance.py --keys 1000000

Starts 3 node processes on 127.0.0.1 (temporary data directories), loads --keys keys of --value-size bytes,
then runs a closed-loop client load (reads and writes of the loaded keys) while a 4th node joins and, once the
new ring is active, leaves again. For each move it reports: the objects streamed against the ideal (the share
of replica copies that must move: 1/4 of them on 3 -> 4, the leaver's 1/4 on 4 -> 3), how long the move took,
client throughput and errors during it, and finally checks that every key still reads back. Every process it
starts is stopped by PID.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
from pathlib import Path

from dynafast import AsyncClient, Client
from dynafast.errors import DynafastError
from dynafast.net.messages import Msg
from dynafast.testing.cluster import LocalCluster


def key_of(i: int) -> bytes:
    return b"user%010d" % i


async def load_keys(addresses, count, value_size, concurrency=64):
    value = b"x" * value_size
    async with AsyncClient(addresses, timeout=10.0) as client:
        next_index = 0

        async def worker():
            nonlocal next_index
            while next_index < count:
                i = next_index
                next_index += 1
                await client.put(key_of(i), value, dw=0)

        started = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return count / (time.monotonic() - started)


class Traffic:
    """A closed-loop read/update load that counts operations and errors while a move goes on."""

    def __init__(self, addresses, keys, value_size, clients=32):
        self.addresses = addresses
        self.keys = keys
        self.value_size = value_size
        self.clients = clients
        self.ops = 0
        self.errors: dict[str, int] = {}
        self.stop = asyncio.Event()

    async def run(self):
        rng = random.Random(1)
        value = b"y" * self.value_size
        async with AsyncClient(self.addresses, timeout=5.0, ring_refresh=1.0) as client:
            async def worker():
                while not self.stop.is_set():
                    key = key_of(rng.randrange(self.keys))
                    try:
                        if rng.random() < 0.5:
                            await client.get(key)
                        else:
                            ctx = (await client.get(key)).context
                            await client.put(key, value, context=ctx or None, dw=0)
                        self.ops += 1
                    except DynafastError as exc:
                        name = type(exc).__name__
                        self.errors[name] = self.errors.get(name, 0) + 1
            await asyncio.gather(*(worker() for _ in range(self.clients)))


def statuses(cluster):
    out = {}
    for node in cluster.nodes:
        if node.is_running():
            try:
                with Client([node.address], timeout=5.0) as c:
                    out[node.node_id] = c.status(node.address)
            except DynafastError:
                pass
    return out


def objects_received_on(cluster, node_ids) -> int:
    return sum(s["transfers"]["objects_received"] for i, s in statuses(cluster).items() if i in node_ids)


async def wait_move(cluster, condition, timeout):
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        status = statuses(cluster).get("n1")
        if status is not None and condition(status):
            return time.monotonic() - started
        await asyncio.sleep(0.25)
    raise TimeoutError("the move did not finish in time")


async def measured_move(cluster, traffic, start_move, condition, timeout, receivers):
    """Run ``start_move`` (blocking, in a thread) and wait for ``condition``; objects are counted where they
    arrive (on ``receivers``, which stay up)."""
    received_before = objects_received_on(cluster, receivers)
    ops_before = traffic.ops
    errors_before = dict(traffic.errors)
    started = time.monotonic()
    await asyncio.to_thread(start_move)
    await wait_move(cluster, condition, timeout)
    elapsed = time.monotonic() - started
    ops = traffic.ops - ops_before
    errors = {k: v - errors_before.get(k, 0) for k, v in traffic.errors.items() if v - errors_before.get(k, 0)}
    return {
        "seconds": round(elapsed, 2),
        "objects_moved": objects_received_on(cluster, receivers) - received_before,
        "client_ops_per_s": round(ops / elapsed, 1),
        "client_errors": errors,
    }


async def main_async(args):
    base = Path(tempfile.mkdtemp(prefix="dynafast-rebalance-"))
    config = base / "node.toml"
    config.write_text(f"transfer_bytes_per_second = {args.transfer_rate}\nsync = \"none\"\n")
    report = {"keys": args.keys, "value_size": args.value_size}
    with LocalCluster(3, base_dir=base / "c", partitions=args.partitions,
                      extra_args=["--config", str(config)]) as cluster:
        addresses = cluster.addresses
        await wait_move(cluster, lambda st: st["next_ring_version"] is None and len(st["members"]) == 3
                        and all(m["state"] == "up" for m in st["members"]), 60)
        print(f"loading {args.keys:,} keys ...", file=sys.stderr)
        report["load_puts_per_s"] = round(await load_keys(addresses, args.keys, args.value_size), 1)
        copies = args.keys * 3
        traffic = Traffic(addresses, args.keys, args.value_size)
        runner = asyncio.ensure_future(traffic.run())
        await asyncio.sleep(2.0)
        ops_before = traffic.ops
        await asyncio.sleep(5.0)
        report["client_ops_per_s_before"] = round((traffic.ops - ops_before) / 5.0, 1)
        n4 = None

        def join():
            nonlocal n4
            n4 = cluster.add_node(wait=True)

        def joined(status):
            owned = {m["id"]: m["partitions"] for m in status["members"]}
            return owned.get("n4", 0) > 0 and status["next_ring_version"] is None

        print("3 -> 4 ...", file=sys.stderr)
        grow = await measured_move(cluster, traffic, join, joined, args.timeout, {"n4"})
        grow["ideal_objects"] = copies // 4
        grow["moved_vs_ideal"] = round(grow["objects_moved"] / max(1, grow["ideal_objects"]), 3)
        report["3_to_4"] = grow
        await asyncio.sleep(args.drop_wait)

        def leave():
            with Client([addresses[0]], timeout=10.0) as c:
                c._call(addresses[0], Msg.LEAVE, ("n4",), 10.0)

        def left(status):
            owned = {m["id"]: m["partitions"] for m in status["members"]}
            return owned.get("n4", 0) == 0 and status["next_ring_version"] is None

        print("4 -> 3 ...", file=sys.stderr)
        shrink = await measured_move(cluster, traffic, leave, left, args.timeout, {"n1", "n2", "n3"})
        shrink["ideal_objects"] = copies // 4
        shrink["moved_vs_ideal"] = round(shrink["objects_moved"] / max(1, shrink["ideal_objects"]), 3)
        report["4_to_3"] = shrink
        traffic.stop.set()
        await runner

        print("checking every key ...", file=sys.stderr)
        missing = 0
        async with AsyncClient(addresses, timeout=10.0) as client:
            for start in range(0, args.keys, 500):
                results = await asyncio.gather(*(client.get(key_of(i)) for i in range(start, min(args.keys, start + 500))))
                missing += sum(1 for r in results if not r.values)
        report["missing_after"] = missing
    print(json.dumps(report, indent=2))
    return 0 if missing == 0 else 1


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--value-size", type=int, default=100)
    parser.add_argument("--partitions", type=int, default=64)
    parser.add_argument("--transfer-rate", type=int, default=32 << 20, help="bytes/s per node for transfers")
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--drop-wait", type=float, default=8.0, help="seconds between the two moves")
    args = parser.parse_args(argv)
    from dynafast.net.loop import install

    install()
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
