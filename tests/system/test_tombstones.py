"""Deletes stay deleted with real processes: a late hint must not bring a reaped key back.

A fallback replays the hints it holds for a primary in throttled batches; a delete acknowledged by every replica
in the meantime leaves a tombstone. If the tombstone were removed before the last hint for its key arrived, the
hint would be stored as new and the deleted value would be readable again.
"""
import pytest

from dynafast import Client
from dynafast.testing.cluster import LocalCluster, NodeStartError
from test_cluster import replica_copy, wait_for, wait_members

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]


def config(tmp_path, **options):
    path = tmp_path / "node.toml"
    path.write_text("".join(f"{k} = {v!r}\n" for k, v in options.items()))
    return ["--config", str(path)]


def hints_left(client, nodes):
    return sum(len(client.status(n.address)["hints_for"]) for n in nodes)


def test_deleted_keys_stay_deleted_while_hints_replay_slowly(tmp_path):
    # Tombstone and hint settings are the defaults; only delivery is slowed (small batches) so that hints
    # arrive long after the deletes, as they do with many hints.
    args = config(tmp_path, handoff_batch=2, handoff_interval=1.0)
    with LocalCluster(4, base_dir=tmp_path / "c", extra_args=args) as c:
        with Client(c.addresses, timeout=5.0) as client:
            wait_members(client, 4)
            client.refresh_ring()
            ring = client._routing.ring
            victim = c.node("n4")
            keys = [f"gone-{i}".encode() for i in range(400)]
            keys = [k for k in keys if "n4" in ring.replicas(ring.partition_of(k))][:120]
            others = [n for n in c.nodes if n is not victim]
            victim.pause()

            def seen_down():
                return all(m["state"] == "down" for n in others for m in client.status(n.address)["members"]
                           if m["id"] == "n4")

            assert wait_for(seen_down, 60, 0.5)  # then no coordinator forwards to it
            with Client([n.address for n in others], partition_aware=False, timeout=5.0) as around:
                for key in keys:
                    around.put(key, b"value", w=2)  # n4's copy goes to a fallback as a hint
            victim.resume()
            wait_members(client, 4)
            deleted = keys[:60]
            for key in deleted:
                ctx = client.get(key, r=2).context
                client.delete(key, context=ctx, w=3)
            assert wait_for(lambda: hints_left(client, others) == 0, 120, 0.5), "hints were not delivered"
            back = [k for k in deleted if client.get(k, r=3).values]
            assert not back, f"{len(back)} of {len(deleted)} deleted keys are readable again"
            for key in keys[60:]:
                assert client.get(key, r=3).values == [b"value"]


def seen_down(client, nodes, node_id):
    return all(m["state"] == "down" for n in nodes for m in client.status(n.address)["members"] if m["id"] == node_id)


def test_a_primary_back_from_an_outage_reads_and_deletes_what_it_missed_while_another_primary_is_down(tmp_path):
    """n4 misses the writes of some keys (down; their hints stay on n3, undelivered), then n1, another primary of
    those keys, goes down and n3 stands in for it too. Through n4, a read (R=2) has n4's own "not found" and n3's
    for n1, which answers first (n4 reaches n2 through a delay): these must not make R. Else the read says the key
    is absent, and a delete, which reads first, deletes nothing: the key stays."""
    args = config(tmp_path, handoff_interval=3600.0, ae_interval=3600.0)  # n4 gets no copy but through reads
    with LocalCluster(4, base_dir=tmp_path / "c", extra_args=args, proxied=True) as c:
        with Client(c.addresses, timeout=5.0) as client:
            wait_members(client, 4)
            client.refresh_ring()
            ring = client._routing.ring
            n1, n2, n3, n4 = c.nodes
            keys = [f"k-{i}".encode() for i in range(3000)]
            keys = [k for k in keys if set(ring.replicas(ring.partition_of(k))) == {"n1", "n2", "n4"}][:20]
            assert len(keys) == 20
            n4.pause()
            assert wait_for(lambda: seen_down(client, [n1, n2, n3], "n4"), 60, 0.5)
            with Client([n1.address, n2.address, n3.address], partition_aware=False, timeout=5.0) as around:
                for key in keys:
                    around.put(key, b"value", w=2)  # n4's copy goes to n3 as a hint
            n4.resume()
            wait_members(client, 4)
            n1.pause()
            assert wait_for(lambda: seen_down(client, [n4], "n1"), 60, 0.5)
            c.proxy("n4", "n2").delay(0.1)
            with Client([n4.address], partition_aware=False, timeout=5.0) as through_n4:
                read = [through_n4.get(key, r=2).values for key in keys[:10]]
                for key in keys[10:]:
                    through_n4.delete(key)
            c.proxy("n4", "n2").heal()
            n1.resume()
            wait_members(client, 4)
            back = [k for k in keys[10:] if client.get(k, r=3).values]
            assert not back, f"{len(back)} of 10 deleted keys are readable"
            assert read == [[b"value"]] * 10


def test_tombstones_are_reaped_after_the_hint_window_and_stay_gone(tmp_path):
    args = config(tmp_path, hint_window=1.0, tombstone_delay=6.0, drop_grace=1.0)
    with LocalCluster(3, base_dir=tmp_path / "c", extra_args=args) as c:
        with Client(c.addresses) as client:
            wait_members(client, 3)
            keys = [f"reap-{i}".encode() for i in range(20)]
            for key in keys:
                client.put(key, b"v", w=3)
            for key in keys:
                client.delete(key, context=client.get(key, r=3).context, w=3)
            assert wait_for(lambda: all(replica_copy(n, k) is None for n in c.nodes for k in keys), 90, 0.5)
            assert all(client.get(k, r=3).values == [] for k in keys)


def test_a_tombstone_delay_shorter_than_the_hint_window_is_refused(tmp_path):
    args = config(tmp_path, tombstone_delay=3.0)  # the hint window stays at 3 hours
    with pytest.raises(NodeStartError) as failed:
        with LocalCluster(1, base_dir=tmp_path / "c", extra_args=args):
            pass
    said = str(failed.value) + failed.value.stderr_tail
    assert "tombstone_delay" in said and "hint_window" in said, said
