"""The replica lane (REPLICA_PUT in C) answers what the general path answers: three nodes, run in this process over
real stores, get the same random replica puts (merges and one-round replaces, of objects that descend from, are
concurrent with or are older than what is stored, and malformed ones); one takes them through the compiled lane,
one through the reference lane (the general path, wrapped as the node installs a lane), one through the general
path itself. Every reply must be the same, and every key must
end up holding the same versions, byte for byte."""
import asyncio
import functools
import random
from pathlib import Path

import pytest

from dynafast import _impl
from dynafast.cluster.ports import Environment
from dynafast.cluster.durability import durable_reply
from dynafast.config import NodeConfig
from dynafast.errors import DynafastError
from dynafast.net.messages import Msg, parser
from dynafast.node import Node
from dynafast.testing.builds import compiled_or_skip
from dynafast.testing.cluster import free_port

KEYS = [b"k%d" % i for i in range(8)] + [b""]
VALUES = [b"v", b"", b"w" * 300, None]  # None: a tombstone
ACTORS = [b"n2.a.1", b"n3.b.1", b"n2.a.2"]
NOW = 1_800_000_000


def _objects(rng, versions):
    """Objects the way coordinators make them: stamped by one of a few actors on a copy that lags or not."""
    history: dict[bytes, list] = {key: [] for key in KEYS}
    objects = []
    for _ in range(300):
        key = rng.choice(KEYS)
        seen = history[key]
        copy = rng.choice(seen) if seen and rng.random() < 0.8 else None  # the coordinator's copy
        context = rng.choice(seen).context() if seen and rng.random() < 0.5 else None
        stamped = versions.Siblings.new(rng.choice(VALUES), context).update(copy, rng.choice(ACTORS),
                                                                            NOW + rng.randrange(100))
        if copy is not None and rng.random() < 0.3:
            stamped = stamped.sync(copy)  # a merge of both, as a read repair sends
        seen.append(stamped)
        objects.append((key, stamped))
    return objects


def _requests(seed, ring, versions):
    rng = random.Random(seed)
    requests = []
    for key, stamped in _objects(rng, versions):
        fields = (ring.partition_of(key), key, stamped.to_bytes(), rng.random() < 0.2, None)  # some durable
        roll = rng.random()
        if roll < 0.45:
            fields += (True,)  # a one-round lww put
        elif roll < 0.5:
            fields += (False,)
        elif roll < 0.53:
            fields = (ring.partition_of(key), key, b"\x00not an object", False, None)
        elif roll < 0.56:
            fields = (ring.partition_of(key), key, stamped.to_bytes(), 1, None)  # not a bool
        elif roll < 0.58:
            fields = (ring.partition_of(key) + ring.partitions, key, stamped.to_bytes(), False, None)
        elif roll < 0.6:
            fields = (ring.partition_of(key), key.decode(), stamped.to_bytes(), False, None)
        requests.append(fields)
    return requests


async def _run(base, kind, seed):
    """The replies to the requests on a fresh node taking them through ``kind`` (None: the general path), and what
    each key holds then."""
    config = NodeConfig(node_id="n1", listen=f"127.0.0.1:{free_port()}", data_dir=str(base / str(kind)), n=1, r=1,
                        w=1, dw=0)
    node = Node(config, Environment(rng=random.Random(0)))
    await node.start()
    try:
        for _ in range(200):  # a new node repairs its vnodes first, and refuses one-round puts meanwhile
            if not node.requests.repairing:
                break
            await asyncio.sleep(0.01)
        assert not node.requests.repairing
        check = parser(Msg.REPLICA_PUT)
        general = node.requests.replica_put
        if kind is None:
            def handle(fields):
                return general(check(fields))
        else:
            handle = getattr(_impl, kind)("lane").ReplicaPuts(
                node.requests, node.vnodes, node.store._engine, check, int(Msg.REPLICA_PUT_REPLY),
                functools.partial(durable_reply, node.requests.durability, Msg.REPLICA_PUT_REPLY))
        ring = node.membership.state.ring
        replies = []
        for fields in _requests(seed, ring, node.requests.versions):
            try:
                reply = handle(fields)
                replies.append(await reply if isinstance(reply, asyncio.Future) else reply)
            except DynafastError as exc:
                replies.append(type(exc).__name__)
        stored = {key: node.vnodes.get_raw(ring.partition_of(key), key) for key in KEYS}
        return replies + await _gets(node, kind), stored, node.requests.replica_puts, node.requests.replica_gets
    finally:
        await node.stop()


async def _gets(node, kind) -> list:
    """The replies to replica gets of every key and of ones the lane must leave to the general path (hinted,
    malformed, of a partition not held, of a key not stored in a partition being repaired, of a damaged record)
    through ``kind`` (None: the general path)."""
    check = parser(Msg.REPLICA_GET)
    general = node.requests.replica_get
    if kind is None:
        def handle(fields):
            return general(check(fields))
    else:
        handle = getattr(_impl, kind)("lane").ReplicaGets(node.requests, node.store._engine, check,
                                                          int(Msg.REPLICA_GET_REPLY))
    ring = node.membership.state.ring
    requests = [(ring.partition_of(key), key, None) for key in KEYS + [b"absent"]]
    requests += [(ring.partition_of(KEYS[0]), KEYS[0], "n2"), (ring.partitions, KEYS[0], None),
                 (ring.partition_of(KEYS[0]), KEYS[0].decode(), None), (ring.partition_of(KEYS[0]), KEYS[0]),
                 ("0", KEYS[0], None), [0, KEYS[0], None]]
    replies = []
    for fields in requests + ["repairing", "damaged"]:
        if fields == "repairing":
            fields = (ring.partition_of(b"absent"), b"absent", None)
            node.requests.repairing.add(fields[0])
        elif fields == "damaged":
            fields = (ring.partition_of(b"damaged"), b"damaged", None)
            _damage(node, b"damaged")
        try:
            replies.append(handle(fields))
        except (DynafastError, TypeError, ValueError) as exc:
            replies.append(type(exc).__name__)
        node.requests.repairing.discard(ring.partition_of(b"absent"))
    return replies


def _damage(node, key) -> None:
    """Store an object of ``key`` and flip a bit of its record on disk: its checksum fails when it is read."""
    value = b"the record to damage"
    partition = node.membership.state.ring.partition_of(key)
    node.vnodes.write(partition, key, node.requests.Siblings.new(value, None).update(None, b"n9", NOW))
    node.store.flush()
    for path in Path(node.config.data_dir).rglob("*.data"):
        data = path.read_bytes()
        if value in data:
            position = data.index(value) + len(value) // 2
            with open(path, "r+b") as f:
                f.seek(position)
                f.write(bytes([data[position] ^ 0x10]))
            return
    raise AssertionError("the record was not found on disk")


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_replica_lanes_answer_what_the_general_path_answers(tmp_path, seed):
    compiled_or_skip("lane")
    replies, stored, count, gets = asyncio.run(_run(tmp_path, None, seed))
    assert any(r == (int(Msg.REPLICA_PUT_REPLY), (False, False)) for r in replies)  # refusals were among them
    assert any(isinstance(r, str) for r in replies)  # and errors
    assert any(r[1][0] is True for r in replies if isinstance(r, tuple))  # and durable puts
    # The compiled lane runs over the compiled store only: the reference build checks its twin alone.
    for kind in ("reference",) if _impl.PURE else ("compiled", "reference"):
        got_replies, got_stored, got_count, got_gets = asyncio.run(_run(tmp_path, kind, seed))
        assert got_replies == replies, kind
        assert got_stored == stored, kind
        assert (got_count, got_gets) == (count, gets), kind


def test_a_node_takes_replica_puts_and_gets_through_the_compiled_lanes(tmp_path):
    if _impl.BUILD != "compiled":
        pytest.skip("the compiled lane and store are not both chosen")
    from dynafast.node import _replica_lanes

    async def run(base):
        config = NodeConfig(node_id="n1", listen=f"127.0.0.1:{free_port()}", data_dir=str(base), n=1, r=1, w=1)
        node = Node(config, Environment(rng=random.Random(0)))
        await node.start()
        try:
            puts, gets = _replica_lanes(node)
            assert type(puts) is _impl.lane.ReplicaPuts and type(gets) is _impl.lane.ReplicaGets
            assert type(node._dispatch[int(Msg.REPLICA_PUT)][1]) is type(puts)
            assert type(node._dispatch[int(Msg.REPLICA_GET)][1]) is type(gets)
        finally:
            await node.stop()

    asyncio.run(run(tmp_path))
