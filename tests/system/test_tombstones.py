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
