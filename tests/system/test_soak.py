"""Soak: a proxied 4-node cluster under write load while nodes are killed, restarted and cut off.

Runs on demand: `pytest -m soak tests/system/test_soak.py` (DYNAFAST_SOAK_SECONDS sets the length, default 120).
At the end every acknowledged write must read back, and the replicas of the written keys must converge.
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
    with LocalCluster(4, base_dir=tmp_path / "c", proxied=True, extra_args=fast_config(tmp_path)) as c:
        with Client(c.addresses) as client:
            wait_members(client, 4)
        acknowledged: dict[bytes, bytes] = {}
        lock = threading.Lock()
        stop = threading.Event()
        events: list[str] = []

        def writer(name):
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
                    i += 1

        threads = [threading.Thread(target=writer, args=(f"w{k}",)) for k in range(3)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + SECONDS
        try:
            while time.monotonic() < deadline:
                victim = rng.choice(c.nodes)
                if rng.random() < 0.5:
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
            ring = client._routing.ring
            partitions = sorted({ring.partition_of(k) for k in list(acknowledged)[:2000]})

            def converged():
                roots = {}
                for node in c.nodes:
                    for p, root in merkle_roots(node, partitions).items():
                        if node.node_id in ring.replicas(p):
                            roots.setdefault(p, set()).add(root)
                return all(len(r) == 1 for r in roots.values())

            assert wait_for(converged, 120, 1.0), "replicas did not converge"
