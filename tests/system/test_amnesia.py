"""Amnesia with real processes: a node that lost acknowledged writes must not be trusted until it is repaired.

A wiped or damaged data directory, or a crash, can make a node forget writes it acknowledged. It then starts a
new version-vector actor (its old counters may be held elsewhere) and repairs its vnodes from the other
replicas at once; meanwhile its "not found" does not outvote replicas that have the key, and it is not the
source of a joining node's data.
"""
import time

import pytest

from dynafast import Client
from dynafast.testing.cluster import LocalCluster
from test_cluster import replica_copy, wait_for, wait_members

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(240)]


def config(tmp_path, **options):
    path = tmp_path / "node.toml"
    path.write_text("".join(f"{k} = {v!r}\n" for k, v in options.items()))
    return ["--config", str(path)]


def repair_status(client, node):
    return client.status(node.address)["repair"]


def test_a_wiped_node_is_whole_again_within_seconds_with_default_settings(tmp_path):
    # Default settings: anti-entropy alone (one partition every 10 s) would take minutes.
    with LocalCluster(3, base_dir=tmp_path / "c") as c:
        with Client(c.addresses) as client:
            wait_members(client, 3)
            keys = [f"wipe-{i}".encode() for i in range(1000)]
            for key in keys:
                client.put(key, key, w=3)
            victim = c.node("n2")
            victim.stop()
            victim.wipe()
            started = time.monotonic()
            victim.restart()
            wait_members(client, 3)

            def whole():
                return all(replica_copy(victim, k) is not None for k in keys)

            assert wait_for(whole, 10, 0.25), "the wiped node was not whole again within 10 s"
            took = time.monotonic() - started
            status = repair_status(client, victim)
            assert status["vnodes_repairing"] == 0 and status["vnodes_repaired"] > 0, status
            print(f"wiped node whole again {took:.1f} s after its restart; repair: {status}")
            for key in keys[:100]:
                assert replica_copy(victim, key).live_values() == [key]


def test_a_node_that_joins_right_after_a_wipe_gets_every_key(tmp_path):
    # No anti-entropy rounds (the joining node must get complete vnodes by itself); r=2 reads then need two
    # replicas that really hold each key.
    with LocalCluster(3, base_dir=tmp_path / "c", extra_args=config(tmp_path, ae_interval=0.0)) as c:
        with Client(c.addresses, timeout=5.0) as client:
            wait_members(client, 3)
            keys = [f"join-{i}".encode() for i in range(1000)]
            for key in keys:
                client.put(key, key, w=2)
            victim = c.node("n2")  # not n1: a wiped first node has no seeds and would form a cluster of its own
            victim.stop()
            victim.wipe()
            victim.restart()
            c.add_node()
            wait_members(client, 4)

            def settled():
                status = client.status(c.nodes[1].address)
                return status["next_ring_version"] is None and all(
                    m["partitions"] > 0 for m in status["members"])

            assert wait_for(settled, 90, 0.5), "the join did not finish"
            missing = [k for k in keys if client.get(k, r=2).values != [k]]
            assert not missing, f"{len(missing)} of {len(keys)} acknowledged keys do not read back with r=2"


def test_a_node_whose_directory_lost_records_takes_a_new_actor(tmp_path):
    # The data file loses its last records behind the node's back (the node had stopped cleanly, so its
    # incarnation would be kept). Its next blind write must become a sibling, not reuse a counter.
    with LocalCluster(3, base_dir=tmp_path / "c", extra_args=config(tmp_path, ae_interval=0.0)) as c:
        with Client(c.addresses) as client:
            wait_members(client, 3)
        n2 = c.node("n2")
        with Client([n2.address], partition_aware=False) as via_n2:
            via_n2.put(b"k", b"zero-value", w=3)
            ctx = via_n2.get(b"k", r=3).context
            via_n2.put(b"k", b"first-value", context=ctx, w=3)
        n2.stop()
        store = n2.data_dir / "store"
        data_files = sorted(store.glob("*.data"), key=lambda p: p.stat().st_mtime)
        cut = None
        for path in reversed(data_files):
            blob = path.read_bytes()
            at = blob.rfind(b"first-value")
            if at >= 0:
                cut = (path, at)
                break
        assert cut is not None, "the record is not in any data file"
        path, at = cut
        with open(path, "r+b") as f:
            f.truncate(at)  # the record of the second write is gone, the first is intact
        n2.restart()
        with Client(c.addresses) as client:
            wait_members(client, 3)
        with Client([n2.address], partition_aware=False) as via_n2:
            via_n2.put(b"k", b"second-value", w=1)
        with Client(c.addresses) as client:
            both = {b"first-value", b"second-value"}
            assert wait_for(lambda: both <= set(client.get(b"k", r=3).values), 10, 0.2), \
                client.get(b"k", r=3).values
