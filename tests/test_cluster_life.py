"""Cluster life with real processes: hinted handoff after a kill, anti-entropy after a lost disk."""
import threading
import time

import pytest

from dynafast import Client
from dynafast.errors import DynafastError
from dynafast.testing.cluster import LocalCluster
from test_cluster import replica_copy, wait_for, wait_members

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(240)]


def fast_config(tmp_path, **extra):
    options = {"ae_interval": 0.1, "handoff_interval": 0.2, "gossip_interval": 0.3, **extra}
    path = tmp_path / "node.toml"
    path.write_text("".join(f"{k} = {v!r}\n" for k, v in options.items()))
    return ["--config", str(path)]


def test_hinted_writes_reach_a_killed_node_after_restart(tmp_path):
    args = fast_config(tmp_path, ae_interval=0.0)  # hints alone must do it
    with LocalCluster(4, base_dir=tmp_path / "c", extra_args=args) as c:
        with Client(c.addresses, timeout=3.0) as client:
            wait_members(client, 4)
            victim = c.node("n4")
            acknowledged: dict[bytes, bytes] = {}
            stop = threading.Event()

            def load():
                i = 0
                while not stop.is_set() and i < 5000:
                    key = f"load-{i}".encode()
                    try:
                        client.put(key, b"v" + key, w=2)
                        acknowledged[key] = b"v" + key
                    except DynafastError:
                        pass
                    i += 1

            writer = threading.Thread(target=load)
            writer.start()
            time.sleep(0.5)
            victim.kill()
            time.sleep(2.0)
            stop.set()
            writer.join(30)
            assert not writer.is_alive()
            assert len(acknowledged) > 50
            victim.restart()
            wait_members(client, 4)

            # Every key n4 is a primary of must reach it through hints, before any read repairs it.
            with Client([victim.address]) as direct:
                ring_client = direct
                ring_client.refresh_ring()
                ring = ring_client._routing.ring
            owned = [k for k in acknowledged if "n4" in ring.replicas(ring.partition_of(k))]
            assert owned

            def delivered():
                return all(replica_copy(victim, k) is not None for k in owned)

            assert wait_for(delivered, 30, 0.5), "hinted writes did not arrive"
            for key, value in acknowledged.items():
                assert client.get(key, r=3).values == [value]


def test_wiped_node_gets_every_key_back_through_anti_entropy(tmp_path):
    with LocalCluster(3, base_dir=tmp_path / "c", extra_args=fast_config(tmp_path)) as c:
        with Client(c.addresses) as client:
            wait_members(client, 3)
            keys = [f"ae-{i}".encode() for i in range(300)]
            for key in keys:
                client.put(key, key, w=3)
            victim = c.node("n2")
            victim.stop()
            victim.wipe()
            victim.restart()
            wait_members(client, 3)

            def restored():
                return all(replica_copy(victim, k) is not None for k in keys)

            assert wait_for(restored, 60, 0.5), "anti-entropy did not restore the wiped node"
            for key in keys:
                assert replica_copy(victim, key).live_values() == [key]
