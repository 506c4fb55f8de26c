"""Soak: a proxied 4-node cluster under writes and deletes while nodes are killed, restarted, cut off and wiped.

Runs on demand: `pytest -n 0 -m soak tests/system/test_soak.py` (DYNAFAST_SOAK_SECONDS sets the length, default 120).
At the end every acknowledged write that was not deleted must read back, no acknowledged delete may be undone,
and the replicas of the written keys must converge. Tombstones are reaped during the run (a short hint window).
"""
import os
import random
import threading
import time

import pytest

from dynafast import Client
from dynafast.errors import DynafastError
from dynafast.testing.cluster import LocalCluster
from test_cluster import wait_for, wait_members
from test_cluster_life import fast_config, merkle_roots

SECONDS = float(os.environ.get("DYNAFAST_SOAK_SECONDS", "120"))
pytestmark = [pytest.mark.soak, pytest.mark.cluster, pytest.mark.timeout(SECONDS + 600)]


def test_chaos_soak(tmp_path):
    rng = random.Random(2026)
    args = fast_config(tmp_path, hint_window=2.0, tombstone_delay=8.0)
    with LocalCluster(4, base_dir=tmp_path / "c", proxied=True, extra_args=args) as c:
        with Client(c.addresses) as client:
            wait_members(client, 4)
        acknowledged: dict[bytes, bytes] = {}
        deleted: set[bytes] = set()
        lock = threading.Lock()
        stop = threading.Event()
        events: list[str] = []

        def writer(name):
            draw = random.Random(name).random
            with Client(c.addresses, timeout=3.0, ring_refresh=1.0) as cl:
                i = 0
                while not stop.is_set() and i < 1_000_000:
                    key = f"{name}-{i}".encode()
                    try:
                        cl.put(key, key, w=2, dw=1)
                        with lock:
                            acknowledged[key] = key
                    except DynafastError:
                        pass
                    if draw() < 0.2 and key in acknowledged:
                        with lock:
                            del acknowledged[key]  # until the delete is acknowledged its outcome is unknown
                        try:
                            cl.delete(key, context=cl.get(key, r=2).context, w=2)
                            with lock:
                                deleted.add(key)
                        except DynafastError:
                            pass
                    i += 1

        threads = [threading.Thread(target=writer, args=(f"w{k}",)) for k in range(3)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + SECONDS
        wiped = False
        try:
            while time.monotonic() < deadline:
                victim = rng.choice(c.nodes)
                if not wiped and time.monotonic() > deadline - SECONDS / 2:
                    # Once a run, and alone: a wiped node is whole again before the next fault.
                    wiped = True
                    victim = rng.choice(c.nodes[1:])  # the first node has no seeds to rejoin through
                    events.append(f"wipe {victim.node_id}")
                    victim.stop()
                    victim.wipe()
                    victim.restart()
                    with Client(c.addresses, timeout=5.0) as watcher:
                        assert wait_for(lambda: watcher.status(victim.address)["repair"]["vnodes_repairing"] == 0
                                        and not watcher.status(victim.address)["repair"]["pending_ring"], 120, 1.0)
                elif rng.random() < 0.5:
                    events.append(f"kill {victim.node_id}")
                    victim.kill()
                    time.sleep(rng.uniform(1, 4))
                    victim.restart()
                else:
                    others = [n.node_id for n in c.nodes if n is not victim]
                    events.append(f"cut {victim.node_id}")
                    c.partition([victim.node_id], others)
                    time.sleep(rng.uniform(1, 4))
                    c.heal()
                time.sleep(rng.uniform(1, 3))
        finally:
            stop.set()
            for t in threads:
                t.join(60)
        assert all(not t.is_alive() for t in threads)
        assert len(acknowledged) > 100, events

        with Client(c.addresses, timeout=5.0) as client:
            wait_members(client, 4, timeout=60)
            lost = [k for k, v in acknowledged.items() if v not in client.get(k, r=2).values]
            assert not lost, f"{len(lost)} acknowledged writes lost after {events}: {lost[:5]}"
            back = [k for k in deleted if client.get(k, r=2).values]
            assert not back, f"{len(back)} of {len(deleted)} deleted keys readable again after {events}: {back[:5]}"
            reaped = sum(client.status(n.address)["tombstones_reaped"] for n in c.nodes)
            print(f"soak: {len(acknowledged)} writes kept, {len(deleted)} deletes, {reaped} tombstones reaped; "
                  f"{events}")
            ring = client._routing.ring
            partitions = sorted({ring.partition_of(k) for k in list(acknowledged)[:2000]})

            def converged():
                roots = {}
                for node in c.nodes:
                    # A node answers tree requests only for the partitions it holds (WRONG_NODE otherwise).
                    held = [p for p in partitions if node.node_id in ring.replicas(p)]
                    for p, root in merkle_roots(node, held).items():
                        roots.setdefault(p, set()).add(root)
                return all(len(r) == 1 for r in roots.values())

            assert wait_for(converged, 120, 1.0), "replicas did not converge"
