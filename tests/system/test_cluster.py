"""End to end: real node processes on 127.0.0.1, real kills."""
import time

import pytest

from dynafast import Client, ValueTooLarge
from dynafast._impl import ring as rings, vclock as versions
from dynafast.errors import QuorumNotMet, Unavailable
from dynafast.net.blocking import BlockingConnection
from dynafast.net.messages import Msg
from dynafast.testing.cluster import LocalCluster

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(180)]


def wait_for(predicate, timeout=20.0, interval=0.1):
    """Poll ``predicate`` until it is true (bounded in time); return its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


def wait_members(client, count, timeout=20.0):
    """Wait until every node sees ``count`` members, all up."""
    def ready():
        for address in client._routing.seeds:
            try:
                status = client.status(address)
            except Unavailable:
                return False
            up = [m for m in status["members"] if m["state"] == "up"]
            if len(status["members"]) != count or len(up) != count:
                return False
        return True
    assert wait_for(ready, timeout), "cluster did not form"


def replica_copy(node, key, partitions=64):
    """What one node stores for ``key`` (as a primary), read straight from it."""
    host, port = node.address.rsplit(":", 1)
    conn = BlockingConnection(host, int(port), 5.0)
    try:
        _, fields = conn.call(Msg.RING_GET, (), 5.0)
        ring = rings.Ring.from_bytes(fields[0])
        _, reply = conn.call(Msg.REPLICA_GET, (ring.partition_of(key), key, None), 5.0)
    finally:
        conn.close()
    return None if reply[0] is None else versions.Siblings.from_bytes(reply[0])


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with LocalCluster(3, base_dir=tmp_path_factory.mktemp("cluster")) as c:
        with Client(c.addresses) as client:
            wait_members(client, 3)
        yield c


@pytest.fixture
def client(cluster):
    with Client(cluster.addresses, timeout=5.0) as c:
        yield c


def test_write_then_read_with_default_quorum(client):
    client.put(b"hello", b"world")
    result = client.get(b"hello")
    assert result.values == [b"world"]
    assert result.context
    assert client.get(b"missing").values == []


def test_overwrite_with_context_and_delete(client):
    client.put(b"k", b"v1")
    r = client.get(b"k")
    client.put(b"k", b"v2", context=r.context)
    r = client.get(b"k")
    assert r.values == [b"v2"]
    client.delete(b"k", context=r.context)
    assert client.get(b"k").values == []
    # a write after the delete, with the delete's context, is seen
    client.put(b"k", b"v3", context=client.get(b"k").context)
    assert client.get(b"k").values == [b"v3"]


def test_blind_writes_make_siblings_that_a_merged_write_resolves(cluster):
    with Client(cluster.addresses) as a, Client(cluster.addresses) as b:
        a.put(b"cart", b"apple")
        b.put(b"cart", b"pear")
        r = a.get(b"cart")
        assert sorted(r.values) == [b"apple", b"pear"]
        a.put(b"cart", b"apple,pear", context=r.context)
        assert b.get(b"cart").values == [b"apple,pear"]


def test_value_over_the_limit_is_refused_and_nothing_stored(client):
    with pytest.raises(ValueTooLarge):
        client.put(b"big", b"x" * (8 * 1024 * 1024 + 1))
    assert client.get(b"big").values == []
    # the node keeps serving
    client.put(b"small", b"ok")
    assert client.get(b"small").values == [b"ok"]


def test_wrong_types_are_refused_by_the_client(client):
    with pytest.raises(TypeError):
        client.put("str-key", b"v")
    with pytest.raises(TypeError):
        client.put(b"k", "str-value")


def test_per_request_quorum(client):
    client.put(b"q", b"v", w=3, dw=1, timeout=2.0)
    assert client.get(b"q", r=1).values == [b"v"]
    assert client.get(b"q", r=3).values == [b"v"]


def test_every_node_coordinates_and_forwards(cluster):
    # A client that only knows one node still reaches every key (that node forwards when it is no replica).
    for address in cluster.addresses:
        with Client([address]) as c:
            for i in range(20):
                key = f"fwd-{address}-{i}".encode()
                c.put(key, b"x")
                assert c.get(key).values == [b"x"]


def test_stale_replica_is_repaired_by_a_read(tmp_path):
    with LocalCluster(3, base_dir=tmp_path) as c:
        with Client(c.addresses) as client:
            wait_members(client, 3)
            n3 = c.node("n3")
            n3.stop()
            keys = [f"repair-{i}".encode() for i in range(20)]
            for key in keys:
                client.put(key, b"new", w=2, dw=1)
            n3.restart()
            wait_members(client, 3)
            for key in keys:
                assert replica_copy(n3, key) is None
            for key in keys:
                assert client.get(key, r=3).values == [b"new"]

            def repaired():
                return all(replica_copy(n3, key) is not None for key in keys)

            assert wait_for(repaired, 10)
            assert all(replica_copy(n3, key).live_values() == [b"new"] for key in keys)


def test_sigkill_one_node_and_keep_reading_and_writing(tmp_path):
    with LocalCluster(3, base_dir=tmp_path) as c:
        with Client(c.addresses, timeout=3.0) as client:
            wait_members(client, 3)
            keys = [f"key-{i}".encode() for i in range(100)]
            for key in keys:
                client.put(key, b"before")
            c.node("n2").kill()
            for key in keys:
                assert client.get(key, r=2).values == [b"before"]
                ctx = client.get(key).context
                client.put(key, b"after", context=ctx, w=2)
            for key in keys:
                assert client.get(key, r=2).values == [b"after"]
            # with one of three down, a quorum of three cannot be met
            with pytest.raises(QuorumNotMet):
                client.put(keys[0], b"x", w=3, timeout=1.0)


def test_durable_writes_survive_sigkill_of_every_node(tmp_path):
    with LocalCluster(3, base_dir=tmp_path) as c:
        with Client(c.addresses) as client:
            wait_members(client, 3)
            keys = [f"durable-{i}".encode() for i in range(200)]
            for key in keys:
                client.put(key, key * 3, w=3, dw=3)
        for node in c.nodes:
            node.kill()
        for node in c.nodes:
            node.restart(wait=False)
        for node in c.nodes:
            node.wait_ready()
        with Client(c.addresses) as client:
            wait_members(client, 3)
            for node in c.nodes:
                for key in keys:
                    copy = replica_copy(node, key)
                    assert copy is not None and copy.live_values() == [key * 3], (node.node_id, key)
            for key in keys:
                assert client.get(key, r=3).values == [key * 3]


def test_tombstones_are_reaped_once_every_replica_has_them(tmp_path):
    config = tmp_path / "node.toml"
    config.write_text("hint_window = 0.5\ntombstone_delay = 4.5\n")
    with LocalCluster(3, base_dir=tmp_path / "c", extra_args=["--config", str(config)]) as c:
        with Client(c.addresses) as client:
            wait_members(client, 3)
            client.put(b"gone", b"v", w=3)
            r = client.get(b"gone", r=3)
            client.delete(b"gone", context=r.context, w=3)
            assert client.get(b"gone").values == []
            assert wait_for(lambda: all(replica_copy(n, b"gone") is None for n in c.nodes), 15)
            # and a later write of the key is unaffected
            client.put(b"gone", b"back")
            assert client.get(b"gone").values == [b"back"]


def test_an_lww_put_reads_with_the_r_it_is_given(cluster):
    """``put(lww=True, r=3)``, above W=2, reads the key from the replicas before it writes; with the default R it
    takes one round of replica puts. R applies to an lww put only."""
    with Client(cluster.addresses, timeout=5.0) as client:
        client.put(b"lww-r", b"old", w=3)

        def replica_gets(put):
            before = sum(client.status(n.address)["replica_requests"]["get"] for n in cluster.nodes)
            put()
            return sum(client.status(n.address)["replica_requests"]["get"] for n in cluster.nodes) - before

        assert replica_gets(lambda: client.put(b"lww-r", b"one round", lww=True)) == 0
        assert replica_gets(lambda: client.put(b"lww-r", b"read first", lww=True, r=3)) >= 2
        assert client.get(b"lww-r").values == [b"read first"]
        with pytest.raises(ValueError):
            client.put(b"lww-r", b"plain", r=2)
