"""The RESP fast lane answers exactly what the general path answers: three nodes of one replica each (N=1), run
in this process over real stores, get the same random commands; one answers through the compiled lane, one
through the reference lane, one without a lane. Every reply must be the same, byte for byte, and
every key must end up holding the same versions."""
import asyncio
import contextlib
import errno
import random
import time
from pathlib import Path

import pytest

from dynafast import _impl
from dynafast.cluster import expiry
from dynafast.cluster.ports import Environment
from dynafast.config import NodeConfig
from dynafast.node import Node
from dynafast.resp.server import HIGH_WATER, RespConnection
from dynafast.testing.builds import compiled_or_skip
from dynafast.testing.cluster import free_port
from dynafast.testing.inprocess import NOW, StoppedClock

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


def _config(data_dir, **options) -> NodeConfig:
    """A node of one replica per key (the lane's case) whose writes are answered at once (dw 0)."""
    return NodeConfig(node_id="n1", listen=f"127.0.0.1:{free_port()}", resp=f"127.0.0.1:{free_port()}",
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
    compiled_or_skip("lane")
    ops = _ops(seed, 400)
    now = time.time()
    general, _, held = asyncio.run(_replies(tmp_path, None, ops, now))
    # The compiled lane runs over the compiled store only: the reference build checks its twin alone.
    for kind in ("reference",) if _impl.PURE else ("compiled", "reference"):
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
    if _impl.PURE:
        pytest.skip("the full disk is the compiled store's fault injection")
    core = compiled_or_skip("logstore")

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


class _Transport:
    """What a connection writes, in order: the parts of the event loop's transport that a connection uses."""

    def __init__(self):
        self.sent = bytearray()
        self.closed = False

    def write(self, data):
        self.sent += data

    def get_write_buffer_size(self):
        return 0

    def set_write_buffer_limits(self, high=None, low=None):
        pass

    def get_extra_info(self, name, default=None):
        return ("127.0.0.1", 40000) if name == "peername" else default

    def pause_reading(self):
        pass

    def resume_reading(self):
        pass

    def close(self):
        self.closed = True

    def is_closing(self):
        return self.closed


def _connection_class(read_step):
    """RespConnection with the read step ``read_step`` (a build's LaneConnection), or with none (None): the general
    path's own ``_received`` reads every time."""
    body = {name: value for name, value in vars(RespConnection).items() if name not in ("__dict__", "__weakref__")}
    if read_step is None:
        body["data_received"] = RespConnection._received
        body["_flush"] = _impl.reference("lane").LaneConnection._flush
        return type("RespConnection", (asyncio.Protocol,), body)
    return type("RespConnection", (read_step, asyncio.Protocol), body)


def _reads(seed: int) -> list:
    """Requests as a client sends them, GET and SET mostly, some the lane leaves, ending in a protocol error; in
    reads of whole requests (one or a pipeline), or cut anywhere."""
    rng = random.Random(seed)
    frames = []
    for args in _ops(seed, 300) + [[b"INCR", b"n"], [b"GET", b"n"], [b"MGET", b"k1", b"n"], [b"PING"], [b"GET", b"k1"]]:
        frames.append(b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args))
        if rng.random() < 0.05:
            frames.append(b"PING\r\n")  # inline
    reads, at = [], 0
    while at < len(frames):
        count = rng.choice([1, 1, 2, 16])
        reads.append(b"".join(frames[at:at + count]))
        at += count
    cut = []
    for data in reads:
        if rng.random() < 0.2:
            where = rng.randrange(len(data) + 1)
            cut += [data[:where], data[where:]]
        else:
            cut.append(data)
    return cut + [b"*1\r\n$x\r\n"]


async def _conversation(base, read_step, reads: list, now: float) -> tuple:
    """What a fresh node sends back for ``reads``, whether it closed, the last command it ran, and how many reads it
    took the general way."""
    config = _config(base / str(read_step and read_step.__module__), max_key_size=64)
    node = Node(config, Environment(clock=_StoppedClock(now), rng=random.Random(0)))
    await node.start()
    try:
        cls = _connection_class(read_step)
        general = [0]

        def counted(self, data, received=cls._received):
            general[0] += 1
            received(self, data)

        cls._received = counted
        conn = cls(node.resp)
        transport = _Transport()
        conn.connection_made(transport)
        for data in reads:
            conn.data_received(data)
            # Half a request is counted against the server's budget for them, whichever way the read went.
            assert conn._unfinished == conn.parser.buffered == node.resp.unfinished
            for _ in range(500):  # commands in flight: the next read waits (a client would keep sending)
                if not conn._pending and not conn._held:
                    break
                await asyncio.sleep(0.005)
        for _ in range(500):
            if transport.closed:
                break
            await asyncio.sleep(0.005)
        return bytes(transport.sent), transport.closed, conn.last_command, general[0]
    finally:
        await node.stop()


@pytest.mark.parametrize("seed", [3, 4])
def test_the_read_steps_answer_what_the_general_path_answers(tmp_path, seed):
    """A connection's read step (compiled, and its reference) answers a stream read in pieces of any size as the
    general path does, byte for byte, up to the protocol error at its end, after which the connection closes."""
    compiled = compiled_or_skip("lane").LaneConnection
    reads, now = _reads(seed), time.time()
    want, closed, last, _ = asyncio.run(_conversation(tmp_path, None, reads, now))
    assert closed and want.endswith(b"-ERR Protocol error: invalid bulk length\r\n"), want[-100:]
    assert want.count(b"+OK\r\n") > 50
    # The compiled step serves the compiled lane only: the reference build checks its twin alone.
    for read_step in ((compiled,) if not _impl.PURE else ()) + (_impl.reference("lane").LaneConnection,):
        got, closed, got_last, general = asyncio.run(_conversation(tmp_path, read_step, reads, now))
        assert (got, closed, got_last) == (want, True, last), read_step
        assert general < len(reads) * 2 // 3, (read_step, general, len(reads))  # most reads were the step's own


def test_a_request_the_lane_leaves_is_offered_to_it_once(tmp_path):
    """A GET of a value with an expiry is the general path's: the read step hands it over without asking the lane a
    second time (each asking reads the stored object)."""
    async def run():
        node = Node(_config(tmp_path), Environment(clock=_StoppedClock(time.time()), rng=random.Random(0)))
        await node.start()
        try:
            asked = []

            class Counting:  # the node's lane, counting what it is offered
                def __init__(self, lane):
                    self.lane = lane

                def serve(self, requests, start, out, rights, resp3, limit):
                    asked.append(requests[start])
                    return self.lane.serve(requests, start, out, rights, resp3, limit)

            node.resp.app.lane = Counting(node.resp.app.lane)
            conn = _connection_class(_impl.reference("lane").LaneConnection)(node.resp)
            transport = _Transport()
            conn.connection_made(transport)
            conn.data_received(b"*5\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n$2\r\nEX\r\n$3\r\n100\r\n")
            for _ in range(500):
                if not conn._pending:
                    break
                await asyncio.sleep(0.005)
            asked.clear()
            conn.data_received(b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n")
            for _ in range(500):
                if transport.sent.endswith(b"$1\r\nv\r\n"):
                    break
                await asyncio.sleep(0.005)
            assert transport.sent.endswith(b"+OK\r\n$1\r\nv\r\n")
            assert asked == [[b"GET", b"k"]]
        finally:
            await node.stop()
    asyncio.run(run())



# -- SET and GET in place: the compiled lane reads and writes the common set without making its objects ----------
SHAPED = [b"theirs", b"siblings", b"anonymous", b"wide", b"deleted", b"damaged", b"plain", b"k1", b"k2"]


def _shaped_ops(seed: int, count: int) -> list:
    rng = random.Random(seed)
    values = [b"v", b"", b"y" * 300, b"\xf5plain", bytes(range(256)) * 40]  # the last is stored compressed
    ops = []
    for _ in range(count):
        key, value = rng.choice(SHAPED), rng.choice(values)
        ops.append(rng.choice([[b"SET", key, value]] * 4 + [[b"GET", key]] * 3 + [
            [b"SET", key, value, b"EX", b"1000"], [b"DEL", key], [b"DF.PUT", key, value]]))
    return ops


def _shape(node, conn) -> None:
    """Store the sets a SET meets: one only another node stamped; ours with a concurrent sibling; an anonymous
    value; nine actors (ten once a SET adds ours: over what the view holds); a tombstone; a record of ours whose
    checksum fails on disk. Then build the Merkle tree of one key's partition: its writes must reach the tree."""
    siblings, ring = node.requests.Siblings, node.membership.state.ring

    def write(key, value):
        node.vnodes.write(ring.partition_of(key), key, value)

    def run(args):
        conn._run([args])
        assert not conn._pending
        conn._out.clear()

    now = int(NOW)
    write(b"theirs", siblings.new(b"t", None).update(None, b"n9", now))
    run([b"SET", b"siblings", b"ours"])
    existing = node.vnodes.get(ring.partition_of(b"siblings"), b"siblings")
    write(b"siblings", siblings.new(b"concurrent", None).update(existing, b"n9", now))
    write(b"anonymous", siblings.new(b"a", None))
    wide = None
    for i in range(9):
        wide = siblings.new(b"w%d" % i, None if wide is None else wide.context()).update(wide, b"a%d" % i, now)
    write(b"wide", wide)
    run([b"SET", b"deleted", b"v"])
    run([b"DEL", b"deleted"])
    value = b"the record whose checksum fails"
    run([b"SET", b"damaged", value])
    node.store.flush()
    for path in Path(node.config.data_dir).rglob("*.data"):
        data = path.read_bytes()
        if value in data:
            with open(path, "r+b") as f:
                f.seek(data.index(value) + 3)
                f.write(bytes([data[data.index(value) + 3] ^ 0x10]))
            break
    else:
        raise AssertionError("the record was not found on disk")
    node.trees.tree(ring.partition_of(b"k1"))


class _SteppingClock(StoppedClock):
    """A wall clock a second later at each reading: both runs read it at the same points (the lanes once a pipeline,
    the general path per request), so their versions carry the same times, and times that differ."""

    def __init__(self):
        self.readings = 0

    def wall(self) -> float:
        self.readings += 1
        return NOW + self.readings


async def _in_place(base, kind, ops) -> tuple:
    """What the lane ``kind`` answers for ``ops`` (the general path the rest) over the shaped sets, in pipelines;
    then every key's stored bytes, whether the followed tree is the one built from the store, and how many SETs
    the lane wrote in place (None: a lane without the count)."""
    config = _config(base / kind, max_key_size=64)
    node = Node(config, Environment(clock=_SteppingClock(), rng=random.Random(0)))
    await node.start()
    try:
        node.resp.app.lane = None
        conn = RespConnection(node.resp)
        _shape(node, conn)
        lane = getattr(_impl, kind)("lane").Lane(node.requests, node.vnodes, node.store._engine, config, node.trees)
        rights = _impl.lane.READ | _impl.lane.WRITE
        rng = random.Random(len(ops))
        transcript, at = bytearray(), 0
        while at < len(ops):
            batch = ops[at:at + rng.choice([1, 4, 16, 32])]
            at += len(batch)
            done = 0
            while done < len(batch):
                done = lane.serve(batch, done, transcript, rights, False, HIGH_WATER)
                if done < len(batch):
                    conn._run([batch[done]])
                    for _ in range(500):
                        if not conn._pending:
                            break
                        await asyncio.sleep(0.005)
                    assert not conn._pending
                    transcript += conn._out
                    conn._out.clear()
                    done += 1
        ring = node.membership.state.ring
        stored = {key: node.store._engine.get(b"o" + ring.partition_of(key).to_bytes(2, "big") + key)
                  if key != b"damaged" else None for key in SHAPED}
        partition = ring.partition_of(b"k1")
        trees = node.trees
        rebuilt = trees.merkle.MerkleTree.build(trees._scan(partition), trees.leaves, trees.fanout)
        return bytes(transcript), stored, trees.trees[partition].root() == rebuilt.root(), \
            getattr(lane, "written_in_place", None)
    finally:
        await node.stop()


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_sets_read_and_written_in_place_are_the_ones_the_objects_make(tmp_path, seed):
    """The compiled lane reads and supersedes the common set where it lies and writes the new one without making
    an object; its twin always goes through the objects. Over sets of every shape (another node's, siblings,
    anonymous values, ten actors, tombstones, a damaged record, compressed values, a partition with a Merkle tree),
    both must answer the same bytes and store the same bytes, and the tree must follow every write."""
    compiled_or_skip("lane")
    if _impl.PURE:
        pytest.skip("the compiled lane runs over the compiled store only")
    ops = _shaped_ops(seed, 600)
    want, held, followed, _ = asyncio.run(_in_place(tmp_path, "reference", ops))
    assert followed
    got, stored, followed, written = asyncio.run(_in_place(tmp_path, "compiled", ops))
    assert followed
    assert written > 50, written
    assert got == want
    assert stored == held


@contextlib.asynccontextmanager
async def _compiled_lane(base):
    """A node of one replica per key and a compiled lane of its own over its store: (node, lane, rights)."""
    if _impl.PURE:
        pytest.skip("the compiled lane runs over the compiled store only")
    core = compiled_or_skip("lane")
    node = Node(_config(base), Environment(clock=StoppedClock(), rng=random.Random(0)))
    await node.start()
    try:
        yield node, core.Lane(node.requests, node.vnodes, node.store._engine, node.config, node.trees), \
            _impl.lane.READ | _impl.lane.WRITE
    finally:
        await node.stop()


def test_a_new_incarnation_does_not_stamp_with_the_old_ones_actor(tmp_path):
    """A damaged record gives the node a new incarnation (kv679): from then on a write of a key our copy holds
    stamped by the old incarnation's actor must not move that actor's counter on (a repair may since have
    brought back versions it stamped that we no longer hold), but take a fresh actor, as the general path does."""
    async def run():
        async with _compiled_lane(tmp_path) as (node, lane, rights):
            ring, old = node.membership.state.ring, node.requests.actor
            planted = node.requests.Siblings.new(b"old", None).update(None, old, int(NOW))
            node.vnodes.write(ring.partition_of(b"k"), b"k", planted)
            out = bytearray()
            assert lane.serve([[b"GET", b"k"]], 0, out, rights, False, HIGH_WATER) == 1
            node._found_damaged(ring.partition_of(b"elsewhere"))
            assert node.requests.actor != old
            assert lane.serve([[b"SET", b"k", b"new"]], 0, out, rights, False, HIGH_WATER) == 1
            stored = node.vnodes.get(ring.partition_of(b"k"), b"k")
            clock = dict((actor, counter) for actor, counter, _ in stored.clock().entries())
            assert stored.values == [b"new"]
            assert clock[old] == 1, clock  # the old incarnation's counter stays where it was
            assert [a for a in clock if node.requests.actors.issued(a)], clock  # a fresh actor stamped it
    asyncio.run(run())


def test_a_fresh_actor_handed_out_stamps_the_write(tmp_path):
    """A SET of a key with nothing stored hands out one fresh actor, and that actor stamps it, whatever the length
    of its epoch (a lease file set far on gives epochs past 20 digits) and the size of the value (up to where the
    new set no longer fits the in-place writer)."""
    async def run():
        async with _compiled_lane(tmp_path) as (node, lane, rights):
            actors, ring = node.requests.actors, node.membership.state.ring
            for digits in (1, 20, 22):
                actors._next = actors._limit = 10 ** (digits - 1)
                for size in range(3950, 4100):
                    key, epoch = b"k%d-%d" % (digits, size), actors._next
                    assert lane.serve([[b"SET", key, b"v" * size]], 0, bytearray(), rights, False, HIGH_WATER) == 1
                    assert actors._next == epoch + 1, (digits, size)
                    stored = node.vnodes.get(ring.partition_of(key), key)
                    assert [actor for actor, _, _ in stored.clock().entries()] == [b"%s.%d" % (actors.base, epoch)]
    asyncio.run(run())
