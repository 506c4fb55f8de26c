"""Puts with a TTL against plain puts, side by side in one run: the embedded engine, and one node.

    python benchmarks/ttl.py [--keys 200000] [--value-size 100] [--repeat 3]

Embedded: ``Store.put(k, v)`` against ``Store.put(k, v, ttl=3600)`` (the record carries an 8-byte expiry), and
gets of the keys each wrote. Node: CPU per request through a node's server connection and handler, without
the network (as benchmarks/request_path.py): client PUTs with and without ``ttl_ms`` (n=1, w=1, dw=0, each to
a new key, answered within the handler), and GETs of the keys each wrote (the coordinator unwraps the
envelope and filters expired values). Plain and TTL rounds take turns ``--repeat`` times; each figure is the
best of its rounds (the machine is shared and noisy).
"""
import argparse
import asyncio
import os
import random
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))

from dynafast._impl import codec  # noqa: E402 - after the path setup above
from dynafast.config import NodeConfig  # noqa: E402
from dynafast.net.messages import Msg  # noqa: E402
from dynafast.net.server import ServerConnection  # noqa: E402
from dynafast.node import Node  # noqa: E402
from dynafast.storage import Store  # noqa: E402


def rate(count, fn):
    start = time.perf_counter()
    fn()
    return count / (time.perf_counter() - start)


def embedded_round(keys, value, ttl):
    path = tempfile.mkdtemp(prefix="dynafast-ttl-bench-")
    try:
        db = Store(path, sync="none", background_merge=False)
        put, get = db.put, db.get
        if ttl is None:
            puts = rate(len(keys), lambda: [put(k, value) for k in keys])
        else:
            puts = rate(len(keys), lambda: [put(k, value, ttl) for k in keys])
        shuffled = random.sample(keys, len(keys))
        gets = rate(len(keys), lambda: [get(k) for k in shuffled])
        db.close()
        return puts, gets
    finally:
        shutil.rmtree(path, ignore_errors=True)


async def node_rounds(value, repeat, count=20000):
    """Best microseconds of CPU per request: {(op, plain|ttl): us}."""
    node = Node(NodeConfig(node_id="a", listen="127.0.0.1:7999", data_dir=tempfile.mkdtemp(), n=1, r=1, w=1,
                           dw=0, partitions=64, ae_interval=0))
    await node.start()
    try:
        kw = {"access": node.access} if hasattr(node, "access") else {}
        out = {}

        def run(msg, fields):
            buf = bytearray()
            for i, f in enumerate(fields):
                codec.encode_into(buf, int(msg), i + 1, f)
            conn = ServerConnection(node.handle, max_inflight=10**6, high_water=1 << 40, **kw)
            if kw:
                conn.allowed = node.access.anonymous(("127.0.0.1", 1))
            start = time.thread_time()
            conn.feed(bytes(buf))
            conn.take_output()
            return (time.thread_time() - start) / len(fields) * 1e6

        for rep in range(repeat):
            kinds = (("plain", None), ("ttl", 3_600_000))
            for kind, ttl_ms in kinds if rep % 2 == 0 else kinds[::-1]:  # each goes first every other round
                keys = [b"%s-%d-%d" % (kind.encode(), rep, i) for i in range(count)]
                put = run(Msg.PUT, [(k, value, None, 1, 0, 1000, None, ttl_ms) for k in keys])
                get = run(Msg.GET, [(k, 1, 1000) for k in keys])
                for op, us in (("put", put), ("get", get)):
                    out[op, kind] = min(out.get((op, kind), 1e9), us)
                await asyncio.sleep(0)
        return out
    finally:
        await node.stop()


def best(rounds):
    return tuple(max(r[i] for r in rounds) for i in range(2))


def table(title, plain, ttl):
    print(f"\n{title}\n")
    print("|             | plain ops/s | ttl ops/s | ttl / plain |")
    print("|-------------|------------:|----------:|------------:|")
    for i, what in enumerate(("put", "get")):
        print(f"| {what:<11} | {plain[i]:>11,.0f} | {ttl[i]:>9,.0f} | {ttl[i] / plain[i]:>11.2f} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=200_000)
    parser.add_argument("--value-size", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    value = os.urandom(args.value_size)
    keys = [b"key-%09d" % i for i in random.sample(range(10 * args.keys), args.keys)]

    plain_rounds, ttl_rounds = [], []
    for rep in range(args.repeat):
        if rep % 2:  # each goes first every other round
            ttl_rounds.append(embedded_round(keys, value, 3600))
        plain_rounds.append(embedded_round(keys, value, None))
        if not rep % 2:
            ttl_rounds.append(embedded_round(keys, value, 3600))
    table(f"Embedded engine ({Store.__module__}, {args.keys:,} keys, {args.value_size}-byte values)",
          best(plain_rounds), best(ttl_rounds))

    us = asyncio.run(node_rounds(value, args.repeat))
    print("\nOne node, CPU us per request through the server connection and handler (lower is better)\n")
    print("|     | plain us | ttl us | ttl / plain |")
    print("|-----|---------:|-------:|------------:|")
    for op in ("put", "get"):
        print(f"| {op} | {us[op, 'plain']:>8.2f} | {us[op, 'ttl']:>6.2f} | {us[op, 'ttl'] / us[op, 'plain']:>11.2f} |")


if __name__ == "__main__":
    main()
