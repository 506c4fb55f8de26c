"""RESP SET on a cluster (N=3 on 3 nodes: every node holds every key) supersedes every SET acknowledged before it,
through whichever node, even one its coordinator's own copy has not received; and every node then reads the new
value. It takes one round of replica puts where the replicas hold nothing its coordinator has not seen, and reads
the key from R replicas first where they do."""
import pytest

from dynafast import Client
from dynafast.testing.cluster import LocalCluster
from test_cluster import replica_copy, wait_for, wait_members
from test_resp import connect

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(120)]


def settled(client, nodes):
    """Every node up, on one ring, with no transfer left: each then holds a replica of every key (N=3)."""
    versions = set()
    for node in nodes:
        status = client.status(node.address)
        if status["transfers"]["pending_cluster_wide"] or \
                [m["state"] for m in status["members"]] != ["up"] * len(nodes):
            return False
        versions.add(status["ring_version"])
    return len(versions) == 1


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with LocalCluster(3, base_dir=tmp_path_factory.mktemp("respset"), resp=True, n=3, r=2, w=2) as c:
        with Client(c.addresses, timeout=5.0) as client:
            wait_members(client, 3, timeout=60)
            assert wait_for(lambda: settled(client, c.nodes), timeout=60), "partitions did not settle"
        yield c


def replica_requests(client, node):
    return client.status(node.address)["replica_requests"]


def test_a_set_supersedes_an_acknowledged_set_its_coordinator_has_not_received(tmp_path):
    """n1's SET is acknowledged by n1 and n2 (W=2) while its copy to n3 is held back; a SET through n3 must then
    supersede it. n3's wall clock runs 30 s behind, so were n3 to write over its own copy alone (which lacks the
    first SET) the two would stand as siblings and every read would answer the older one, by its later timestamp."""
    c = LocalCluster(3, base_dir=tmp_path / "c", resp=True, n=3, r=2, w=2, proxied=True)
    c.nodes[2].env["DYNAFAST_CLOCK_OFFSET"] = "-30"
    with c, Client(c.addresses, timeout=5.0) as client:
        wait_members(client, 3, timeout=60)
        assert wait_for(lambda: settled(client, c.nodes), timeout=60), "partitions did not settle"
        n1, n2, n3 = c.nodes
        first, third = connect(n1, protocol=2), connect(n3, protocol=2)
        before = {n.node_id: replica_requests(client, n) for n in (n1, n2)}
        c.proxy(n1.node_id, n3.node_id).cut()  # n1's replica put to n3 does not arrive
        assert first.set("k", "first")
        assert replica_copy(n3, b"k") is None  # the premise: n3 has not received it
        assert third.set("k", "second")
        for node in c.nodes:
            r = connect(node, protocol=2)
            assert r.get("k") == b"second", node.node_id
            r.close()
        assert client.get(b"k").values == [b"second"]
        # n1 and n2 refused the SET's one round (they hold "first", which n3's copy lacks), and it fell back to
        # reading the key from a peer (R=2: n3's own copy and another's): that is what covered "first".
        assert sum(replica_requests(client, n)["get"] - before[n.node_id]["get"] for n in (n1, n2)) >= 1
        first.close()
        third.close()


def test_set_supersedes_the_siblings_the_coordinator_holds(cluster):
    first = cluster.nodes[0]
    r = connect(first, protocol=2)
    with Client(cluster.addresses, timeout=5.0) as client:
        client.put(b"sib", b"one")
        client.put(b"sib", b"two")  # blind: a sibling of the first
        assert wait_for(lambda: all(sorted(replica_copy(n, b"sib").live_values()) == [b"one", b"two"]
                                    for n in cluster.nodes), timeout=20)
        assert r.set("sib", "three")
        assert client.get(b"sib").values == [b"three"]
        # Every replica ends up with the new value alone: it descends from both siblings.
        assert wait_for(lambda: all(replica_copy(n, b"sib").live_values() == [b"three"] for n in cluster.nodes),
                        timeout=20)
        # A later SET on another node supersedes this one the same way.
        other = connect(cluster.nodes[1], protocol=2)
        assert other.set("sib", "four")
        assert client.get(b"sib").values == [b"four"] and r.get("sib") == b"four"
        other.close()
    r.close()


def test_a_set_whose_replicas_hold_nothing_unseen_takes_one_round(cluster):
    """Where every replica holds what the coordinator's copy holds, a SET is one round of replica puts, which each
    replica stores because the write covers all it holds: no replica read first."""
    n1 = cluster.nodes[0]
    r = connect(n1, protocol=2)
    with Client(cluster.addresses, timeout=5.0) as client:
        client.put(b"one-round", b"old")
        assert wait_for(lambda: all(replica_copy(n, b"one-round") is not None for n in cluster.nodes), timeout=20)
        before = {n.node_id: replica_requests(client, n) for n in cluster.nodes}
        for i in range(5):
            assert r.set("one-round", f"new-{i}")
        after = {n.node_id: replica_requests(client, n) for n in cluster.nodes}
        assert sum(after[n]["get"] - before[n]["get"] for n in after) == 0
        assert sum(after[n]["put"] - before[n]["put"] for n in after) >= 5 * 2
        assert client.get(b"one-round").values == [b"new-4"]
        assert wait_for(lambda: all(replica_copy(n, b"one-round").live_values() == [b"new-4"]
                                    for n in cluster.nodes), timeout=20)
    r.close()


def test_a_set_forwarded_by_a_node_without_a_replica_reads_with_the_connections_r(tmp_path):
    """Four nodes, N=3: a SET through a node that holds no replica of its key goes to a primary as a PUT. The
    connection's R (``DF.CONFIG SET r 3``, above W=2) must go with it: the owner then reads the key from three
    replicas first rather than take one round, as it does on a connection with the default R."""
    with LocalCluster(4, base_dir=tmp_path / "c", resp=True, n=3, r=2, w=2) as c, \
            Client(c.addresses, timeout=5.0) as client:
        wait_members(client, 4, timeout=60)
        assert wait_for(lambda: settled(client, c.nodes), timeout=60), "partitions did not settle"
        client.refresh_ring()
        ring = client._routing.ring
        outsider = c.nodes[3]
        keys = [k for k in (f"fwd-{i}".encode() for i in range(200))
                if outsider.node_id not in ring.replicas(ring.partition_of(k))][:5]
        assert len(keys) == 5
        r = connect(outsider, protocol=2)

        def gets_during(sets):
            before = sum(replica_requests(client, n)["get"] for n in c.nodes)
            sets()
            return sum(replica_requests(client, n)["get"] for n in c.nodes) - before

        assert gets_during(lambda: [r.set(k, b"default-r") for k in keys]) == 0  # one round each
        assert r.execute_command("DF.CONFIG", "SET", "r", 3) == b"OK"
        # A read first (R > W: one round would not meet every write quorum): the owner's copy and two others.
        assert gets_during(lambda: [r.set(k, b"r-3") for k in keys]) >= 5 * 2
        assert [client.get(k).values for k in keys] == [[b"r-3"]] * 5
        r.close()


def test_sets_acknowledged_while_a_replica_hangs_and_dies_are_read_back_through_every_node(tmp_path):
    """The coordinator lanes under a hung and then killed replica: pipelined SETs through n1 while n3 is stopped
    (SIGSTOP: its calls go unanswered) and then killed (kill -9: refused), GETs meanwhile, more SETs through n2
    after the kill; n3 comes back with the writes it missed. Every SET acknowledged is what every node reads then,
    n3 included (its stale copy is outvoted and repaired)."""
    keys = [f"hang-{i}" for i in range(40)]
    with LocalCluster(3, base_dir=tmp_path / "c", resp=True, n=3, r=2, w=2) as c:
        with Client(c.addresses, timeout=5.0) as client:
            wait_members(client, 3, timeout=60)
            assert wait_for(lambda: settled(client, c.nodes), timeout=60), "partitions did not settle"
        r1, r2 = connect(c.node("n1")), connect(c.node("n2"))
        expected = {}

        def set_all(r, value):
            """Pipelined SETs of every key: each must be acknowledged (two of the three replicas answer)."""
            pipe = r.pipeline(transaction=False)
            for key in keys:
                pipe.set(key, f"{value}-{key}")
            results = pipe.execute(raise_on_error=False)
            assert results == [True] * len(keys), [result for result in results if result is not True][:3]
            expected.update((key, f"{value}-{key}".encode()) for key in keys)

        set_all(r1, "before")
        hung = c.node("n3")
        hung.pause()
        try:
            set_all(r1, "hung")
            assert r1.mget(keys) == [expected[key] for key in keys]
        finally:
            hung.resume()
        hung.kill()
        set_all(r2, "killed")
        hung.restart()
        r3 = connect(hung)
        for r in (r3, r1, r2):
            assert wait_for(lambda: r.mget(keys) == [expected[key] for key in keys], timeout=30), \
                f"{r}: {r.mget(keys)[:3]} against {[expected[key] for key in keys][:3]}"
