"""A damaged record on one node is a missing replica there, not an outage: real processes, a byte flipped in a
node's data file while it runs."""
import os
import time

import pytest

from dynafast import Client
from dynafast._impl import merkle, ring as rings, vclock as versions
from dynafast.errors import DynafastError
from dynafast.net.blocking import BlockingConnection
from dynafast.net.messages import Msg
from dynafast.testing.cluster import LocalCluster
from test_cluster import replica_copy, wait_for, wait_members
from test_cluster_life import fast_config

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(240)]


def _stored_key(node, key: bytes) -> bytes:
    """The key as the node's store holds it (vnode prefix: b"o", then the partition)."""
    return b"o" + _ring(node).partition_of(key).to_bytes(2, "big") + key


def _ring(node):
    host, port = node.address.rsplit(":", 1)
    conn = BlockingConnection(host, int(port), 5.0)
    try:
        _, fields = conn.call(Msg.RING_GET, (), 5.0)
    finally:
        conn.close()
    return rings.Ring.from_bytes(fields[0])


def _live_record(node, stored_key: bytes, value: bytes):
    """(data file, offset of ``value``) in the newest record of ``stored_key`` holding it, or None."""
    found = None
    for path in sorted((node.data_dir / "store").glob("*.data")):
        data = path.read_bytes()
        at = data.rfind(stored_key)
        while at >= 0:
            inside = data.find(value, at + len(stored_key), at + len(stored_key) + 4096)
            if inside >= 0:
                found = (path, inside)
                break
            at = data.rfind(stored_key, 0, at)
    return found


def flip_value_byte(node, key: bytes, value: bytes) -> None:
    """Flip one bit in the middle of ``value`` inside the newest stored record of ``key`` on ``node``."""
    stored_key = _stored_key(node, key)
    # The node hands its writes to the OS every few tens of milliseconds: wait until the record is in the file.
    assert wait_for(lambda: _live_record(node, stored_key, value), 10.0, 0.05), "record never reached the file"
    path, at = _live_record(node, stored_key, value)
    fd = os.open(path, os.O_RDWR)
    try:
        position = at + len(value) // 2
        (byte,) = os.pread(fd, 1, position)
        os.pwrite(fd, bytes([byte ^ 0x10]), position)
    finally:
        os.close(fd)


def copy_or_error(node, key: bytes):
    """What ``node`` stores for ``key`` read straight from it, or the error it answers with."""
    try:
        return replica_copy(node, key)
    except DynafastError as exc:
        return exc


def values_of(copy) -> list[bytes] | None:
    return None if copy is None or isinstance(copy, Exception) else sorted(copy.live_values())


def replica_put(node, partition: int, key: bytes, obj) -> None:
    host, port = node.address.rsplit(":", 1)
    conn = BlockingConnection(host, int(port), 5.0)
    try:
        conn.call(Msg.REPLICA_PUT, (partition, key, obj.to_bytes(), False, None), 5.0)
    finally:
        conn.close()


def test_get_and_put_through_a_node_with_a_damaged_record(tmp_path):
    args = fast_config(tmp_path, ae_interval=0.0)  # no anti-entropy: only the request path may repair
    with LocalCluster(3, base_dir=tmp_path / "c", extra_args=args) as c:
        victim, healthy = c.node("n3"), c.node("n1")
        with Client(c.addresses, timeout=5.0) as client:
            wait_members(client, 3)
            read_value = b"read-me:" + b"r" * 64
            client.put(b"read-me", read_value, w=3)
            # Two blind writes: every replica holds both as siblings (the history a later write must not lose).
            first, second = b"write-me-first:" + b"a" * 64, b"write-me-second:" + b"b" * 64
            client.put(b"write-me", first, w=3)
            client.put(b"write-me", second, w=3)

            flip_value_byte(victim, b"read-me", read_value)
            flip_value_byte(victim, b"write-me", second)
            # The premise: the victim can no longer read either record.
            assert isinstance(copy_or_error(victim, b"read-me"), DynafastError)
            assert isinstance(copy_or_error(victim, b"write-me"), DynafastError)

            with Client([victim.address], partition_aware=False, timeout=5.0) as via_victim:
                # A get coordinated by the damaged node answers from the other replicas ...
                assert via_victim.get(b"read-me").values == [read_value]
                # ... and read repair writes the merged object over the damaged record.
                assert wait_for(lambda: values_of(copy_or_error(victim, b"read-me")) == [read_value], 10.0)
                assert copy_or_error(victim, b"read-me") == replica_copy(healthy, b"read-me")

                third = b"write-me-third"
                via_victim.put(b"write-me", third)  # blind: a third sibling
            assert sorted(client.get(b"write-me", r=3).values) == sorted([first, second, third])
            # The write replaced the damaged record with itself alone; the full history comes back from the others.
            everything = sorted([first, second, third])
            assert wait_for(lambda: values_of(copy_or_error(victim, b"write-me")) == everything, 10.0)
            assert copy_or_error(victim, b"write-me") == replica_copy(healthy, b"write-me")

            status = client.status(victim.address)["corrupt_records"]
            assert status == {"found": 2, "repaired": 2, "unrepaired": 0}


def test_anti_entropy_repairs_a_partition_holding_a_damaged_record(tmp_path):
    leaves = 16  # few Merkle leaves: a key sharing both partition and leaf with the damaged one is quick to find
    args = fast_config(tmp_path, ae_interval=0.1, merkle_leaves=leaves)
    with LocalCluster(3, base_dir=tmp_path / "c", extra_args=args) as c:
        victim, others = c.node("n3"), [c.node("n1"), c.node("n2")]
        with Client(c.addresses, timeout=5.0) as client:
            wait_members(client, 3)
            damaged_value = b"ae-damaged:" + b"d" * 64
            client.put(b"ae-damaged", damaged_value, w=3)
            flip_value_byte(victim, b"ae-damaged", damaged_value)
            assert isinstance(copy_or_error(victim, b"ae-damaged"), DynafastError)

            # Another key of the same partition, in the same Merkle leaf, that the victim never got: only the
            # other two replicas are given it (as a coordinator's replica put would).
            ring = _ring(victim)
            partition = ring.partition_of(b"ae-damaged")
            tree = merkle.MerkleTree.build([], leaves, 16)
            leaf = tree.leaf_of(b"ae-damaged")
            missing = next(key for key in (b"ae-missing-%d" % i for i in range(100_000))
                           if ring.partition_of(key) == partition and tree.leaf_of(key) == leaf)
            obj = versions.Siblings.new(b"missing-value").update(None, b"writer.1", int(time.time()))
            for node in others:
                replica_put(node, partition, missing, obj)
            assert copy_or_error(victim, missing) is None

            # Anti-entropy on that partition goes on despite the damaged record, and repairs both keys there.
            assert wait_for(lambda: values_of(copy_or_error(victim, missing)) == [b"missing-value"], 60.0, 0.2)
            assert wait_for(lambda: values_of(copy_or_error(victim, b"ae-damaged")) == [damaged_value], 30.0, 0.2)
            assert copy_or_error(victim, b"ae-damaged") == replica_copy(others[0], b"ae-damaged")
            status = client.status(victim.address)
            assert status["corrupt_records"]["unrepaired"] == 0
            assert status["corrupt_records"]["repaired"] >= 1
