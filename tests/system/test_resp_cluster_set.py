"""RESP SET on a node that holds a replica of the key (N=3 on 3 nodes: every node holds every key) writes over its
own copy, Riak's way: one round of replica puts and no quorum read first. It must still supersede every version
the coordinator's copy holds, and every node must then read the new value."""
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


def test_set_asks_the_peers_for_no_read_and_every_node_reads_it(cluster):
    first, *peers = cluster.nodes
    r = connect(first, protocol=2)
    keys = [f"noread:{i}" for i in range(20)]
    with Client(cluster.addresses, timeout=5.0) as client:
        before = {p.node_id: replica_requests(client, p) for p in peers}
        for i, key in enumerate(keys):
            assert r.set(key, f"v{i}")
        # W=2: a peer may still be taking a replica put when SET answers; every put lands soon after.
        assert wait_for(lambda: all(replica_requests(client, p)["put"] - before[p.node_id]["put"] >= len(keys)
                                    for p in peers), timeout=20)
        for p in peers:
            assert replica_requests(client, p)["get"] == before[p.node_id]["get"], "a SET read from a peer"
    for node in cluster.nodes:
        other = connect(node, protocol=2)
        assert [other.get(key) for key in keys] == [f"v{i}".encode() for i in range(len(keys))]
        other.close()
    r.close()


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
