"""The RESP fast lane answers exactly what the general path answers: three nodes of one replica each (N=1), run
in this process over real stores, get the same random commands; one answers through the compiled lane, one
through the reference lane, one without a lane. Every reply must be the same, byte for byte, and
every key must end up holding the same versions."""
import asyncio
import errno
import random
import socket
import time

import pytest

from dynafast import _impl
from dynafast.cluster import expiry
from dynafast.cluster.ports import Environment
from dynafast.config import NodeConfig
from dynafast.node import Node
from dynafast.resp.server import HIGH_WATER, RespConnection

KEYS = [b"k%d" % i for i in range(10)] + [b"", b"\xf5k", b"K" * 65]  # the last: over max_key_size
VALUES = [b"v", b"", b"\xf5plain", b"\xf5\x01" + bytes(8) + b"x", b"y" * 300, bytes(range(256)) * 40]


def _ops(seed: int, count: int) -> list:
    rng = random.Random(seed)
    ops = []
    for _ in range(count):
        key, value = rng.choice(KEYS), rng.choice(VALUES)
        ops.append(rng.choice([
            [b"GET", key], [b"get", key], [b"gEt", key], [b"SET", key, value], [b"set", key, value],
            [b"SET", key, value], [b"GET", key],
            [b"SET", key, value, b"EX", b"1000"],  # an envelope: GET leaves it to the general path
            [b"DF.PUT", key, value],  # a blind write: siblings, which only the general path resolves
            [b"DEL", key], [b"APPEND", key, b"z"], [b"GET"], [b"GET", key, b"extra"], [b"SET", key],
        ]))
    return ops


def _unwrapped(value: bytes) -> tuple:
    value, expires_at = expiry.unwrap(value)
    return value, expires_at is not None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _config(data_dir, **options) -> NodeConfig:
    """A node of one replica per key (the lane's case) whose writes are answered at once (dw 0)."""
    return NodeConfig(node_id="n1", listen=f"127.0.0.1:{_free_port()}", resp=f"127.0.0.1:{_free_port()}",
                      data_dir=str(data_dir), n=1, r=1, w=1, dw=0, **options)


class _StoppedClock:
    """A wall clock that stands still: the three nodes stamp the same times, so the newest of two siblings (by
    time, then actor) is the same one on each, however far apart in time the runs are."""

    monotonic = staticmethod(time.monotonic)

    def __init__(self, now: float):
        self.now = now

    def wall(self) -> float:
        return self.now


async def _replies(base, kind, ops, now):
    """The replies of ``ops`` on a fresh node whose lane is ``kind`` (None: no lane), and how many it served."""
    config = _config(base / str(kind), max_key_size=64)
    node = Node(config, Environment(clock=_StoppedClock(now), rng=random.Random(0)))
    await node.start()
    try:
        app = node.resp.app
        lane = None if kind is None else getattr(_impl, kind)("lane").Lane(node.requests, node.vnodes,
                                                                           node.store._engine, config)
        app.lane = None  # the connection below takes the general path; the lane is driven here
        conn = RespConnection(node.resp)  # not connected: its replies stay in its output buffer
        rights = _impl.lane.READ | _impl.lane.WRITE
        replies, served = [], 0
        for args in ops:
            out = bytearray()
            if lane is not None and lane.serve([args], 0, out, rights, False, HIGH_WATER) == 1:
                served += 1
                replies.append(bytes(out))
                continue
            assert not out, "the lane wrote a reply to a request it left to the general path"
            conn._run([args])
            for _ in range(500):
                if not conn._pending:
                    break
                await asyncio.sleep(0.005)
            assert not conn._pending
            replies.append(bytes(conn._out))
            conn._out.clear()
        # What each key holds in the end, siblings and all: the values, and whether each expires (not when: the
        # runs are apart in time; nor the node's own actors).
        ring = node.requests.membership.state.ring
        stored = {}
        for key in KEYS:
            found = node.vnodes.get_intact(ring.partition_of(key), key)
            stored[key] = None if found is None else sorted(
                (b"", False) if value is None else _unwrapped(value) for value in found.values)
        return replies, served, stored
    finally:
        await node.stop()


@pytest.mark.parametrize("seed", [1, 2])
def test_the_lanes_answer_what_the_general_path_answers(tmp_path, seed):
    try:
        _impl.compiled("lane")
    except ImportError:
        if _impl.REQUIRE_COMPILED:
            raise
        pytest.skip("dynafast._core.lane is not built")
    ops = _ops(seed, 400)
    now = time.time()
    general, _, held = asyncio.run(_replies(tmp_path, None, ops, now))
    for kind in ("compiled", "reference"):
        replies, served, stored = asyncio.run(_replies(tmp_path, kind, ops, now))
        lane_ops = sum(1 for args in ops if args[0].upper() in (b"GET", b"SET"))
        assert served > lane_ops // 4, (kind, served, lane_ops)  # the lane did answer (many GET and SET)
        for args, got, want in zip(ops, replies, general):
            if args[0] == b"DF.PUT":
                continue  # answers a context: the node's own actors
            assert got == want, (kind, args)
        assert stored == held, kind


def test_a_write_the_store_refuses_is_answered_by_the_general_path(tmp_path):
    """A full disk: the lane's SET stores nothing and leaves the request to the general path, which answers the
    error; once there is room again the lane writes."""
    try:
        core = _impl.compiled("logstore")
    except ImportError:
        pytest.skip("dynafast._core.logstore is not built")

    async def run():
        node = Node(_config(tmp_path / "full"))
        await node.start()
        try:
            lane = node.resp.app.lane
            assert lane is not None
            rng = random.Random(0)
            big = [rng.randbytes(600 << 10) for _ in range(2)]  # two fill the 1 MiB write buffer: a flush
            rights = _impl.lane.READ | _impl.lane.WRITE
            out = bytearray()
            core.set_io_fault(errno.ENOSPC)
            try:
                # The first goes into the write buffer; the second has to flush it, and the disk is full.
                assert lane.serve([[b"SET", b"k1", big[0]], [b"SET", b"k2", big[1]]], 0, out, rights, False,
                                  HIGH_WATER) == 1
                assert out == b"+OK\r\n"
                node.resp.app.lane = None
                conn = RespConnection(node.resp)
                conn._run([[b"SET", b"k2", big[1]]])
                assert bytes(conn._out).startswith(b"-"), bytes(conn._out)[:80]
            finally:
                core.clear_io_fault()
            out = bytearray()
            assert lane.serve([[b"SET", b"k2", big[1]], [b"GET", b"k2"]], 0, out, rights, False, 8 << 20) == 2
            assert out == b"+OK\r\n$%d\r\n%s\r\n" % (len(big[1]), big[1])
        finally:
            await node.stop()
    asyncio.run(run())
