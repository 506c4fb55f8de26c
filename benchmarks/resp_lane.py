"""The RESP fast lane against the general path, in one process, without the network: the cost per request of
answering parsed GET and SET requests (pipelines of 16) on a node of one replica (N=1, dw 0) over a real store.

    PYTHONPATH=src python3 benchmarks/resp_lane.py [--batches 20000] [--trees]

Both sides run on the same node and store, alternately, twice each; keys are random out of 100,000, values 100
bytes. "general" is a RESP connection's dispatch with the lane switched off (what a node without it runs).
``--trees`` builds every vnode's anti-entropy tree first, as a replica of a cluster has them: each write then
updates its tree with the digests of the old and the new object.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import random
import socket
import sys
import tempfile
import time

from dynafast.config import NodeConfig
from dynafast.node import Node
from dynafast.resp.server import HIGH_WATER, RespConnection


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _batches(command: bytes, count: int, rng: random.Random) -> list:
    value = b"v" * 100
    tail = [value] if command == b"SET" else []
    return [[[command, b"key:%012d" % rng.randrange(100_000), *tail] for _ in range(16)] for _ in range(count)]


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batches", type=int, default=20_000, help="pipelines of 16 requests per measurement")
    parser.add_argument("--trees", action="store_true", help="build the anti-entropy trees first")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as base:
        config = NodeConfig(listen=f"127.0.0.1:{_free_port()}", resp=f"127.0.0.1:{_free_port()}", data_dir=base,
                            n=1, r=1, w=1, dw=0)
        node = Node(config)
        await node.start()
        try:
            app = node.resp.app
            lane = app.lane
            if lane is None:
                print("no lane on this build", file=sys.stderr)
                return 1
            rng = random.Random(1)
            fill = _batches(b"SET", 100_000 // 16, rng)  # most keys exist, as in a long run
            for batch in fill:
                lane.serve(batch, 0, bytearray(), 3, False, HIGH_WATER)
            if args.trees:
                for partition in range(config.partitions):
                    node.trees.tree(partition)
            print(f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}, "
                  f"lane {type(lane).__module__}, trees {'built' if args.trees else 'not built'}")
            print(f"{'test':5} {'general us/req':>15} {'lane us/req':>12} {'lane / general':>15}")
            for command in (b"SET", b"GET"):
                figures = {"general": [], "lane": []}
                for _ in range(2):
                    for side in ("general", "lane"):
                        batches = _batches(command, args.batches, rng)
                        app.lane = lane if side == "lane" else None
                        conn = RespConnection(node.resp)  # not connected: replies stay in its buffer
                        out = conn._out
                        started = time.perf_counter()
                        for batch in batches:
                            conn._run(batch)
                            del out[:]
                        figures[side].append((time.perf_counter() - started) / (16 * len(batches)) * 1e6)
                general, ours = min(figures["general"]), min(figures["lane"])
                print(f"{command.decode():5} {general:>15.2f} {ours:>12.2f} {ours / general:>15.2f}")
            app.lane = lane
        finally:
            await node.stop()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
