"""CPU per request through the server connection and the node's handler (frame decode, permission check,
handler, reply encode), without the network: GET answered locally (n=1), REPLICA_GET, REPLICA_PUT (not
durable). Measures whichever checkout is on PYTHONPATH: run it from two checkouts alternately for an A/B.

    PYTHONPATH=src python3 benchmarks/request_path.py
"""
import asyncio
import tempfile
import time

from dynafast._impl import codec
from dynafast.config import NodeConfig
from dynafast.node import Node
from dynafast.net.messages import Msg
from dynafast.net.server import ServerConnection


async def main():
    tmp = tempfile.mkdtemp()
    cfg = NodeConfig(node_id="a", listen="127.0.0.1:7999", data_dir=tmp, n=1, r=1, w=1, dw=0, partitions=64,
                     ae_interval=0)
    node = Node(cfg)
    await node.start()
    try:
        ring = node.membership.ring
        keys = [b"key%d" % i for i in range(1000)]
        parts = [ring.partition_of(k) for k in keys]
        for k in keys:
            r = node.handle(None, int(Msg.PUT), 1, (k, b"v" * 100, None, 1, 0, 1000))
            if asyncio.isfuture(r) or asyncio.iscoroutine(r):
                await r
        raw = node.handle(None, int(Msg.REPLICA_GET), 1, (parts[0], keys[0], None))[1][0]
        kw = {"access": node.access} if hasattr(node, "access") else {}
        out = {}
        for name, msg, make in [
            ("get", int(Msg.GET), lambda i: (keys[i % 1000], 1, 1000)),
            ("replica_get", int(Msg.REPLICA_GET), lambda i: (parts[i % 1000], keys[i % 1000], None)),
            ("replica_put", int(Msg.REPLICA_PUT), lambda i: (parts[i % 1000], keys[i % 1000], raw, False, None)),
        ]:
            buf = bytearray()
            for i in range(20000):
                codec.encode_into(buf, msg, i + 1, make(i))
            data = bytes(buf)
            best = 1e9
            for rep in range(12):
                conn = ServerConnection(node.handle, max_inflight=10**6, high_water=1 << 40, **kw)
                if kw:
                    conn.allowed = node.access.anonymous(("127.0.0.1", 1))
                t = time.thread_time()
                conn.feed(data)
                conn.take_output()
                best = min(best, (time.thread_time() - t) / 20000 * 1e6)
                await asyncio.sleep(0)
            out[name] = best
        print(" ".join(f"{k}={v:.2f}" for k, v in out.items()))
    finally:
        await node.stop()

asyncio.run(main())
