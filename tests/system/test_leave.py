"""Leaving with real processes: a node that leaves hands off everything it accepted, and the hints it holds,
before it drops anything or stops."""
import asyncio

import pytest

from dynafast import AsyncClient, Client
from dynafast.errors import DynafastError
from dynafast.testing.cluster import LocalCluster
from test_cluster import replica_copy, wait_for, wait_members
from test_cluster_life import fast_config

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]


def status_of(client, node):
    try:
        return client.status(node.address)
    except DynafastError:
        return None


def member_states(client, node) -> dict:
    status = status_of(client, node)
    return {} if status is None else {m["id"]: m["state"] for m in status["members"]}


def holds(node, key, value) -> bool:
    copy = replica_copy(node, key)
    return copy is not None and copy.values == [value]


def ring_of(node):
    with Client([node.address]) as direct:
        direct.refresh_ring()
        return direct._routing.ring


def test_a_node_told_to_leave_while_cut_off_hands_off_what_it_acknowledged(tmp_path):
    """n4 is cut off and told to leave through n1 while it keeps acknowledging w=1 writes nobody else sees. The
    others must not complete the leave without it, and once the cut heals n4 must hand those writes to their
    owners before it drops its vnodes and stops."""
    args = fast_config(tmp_path, ae_interval=0.0, drop_grace=1.0)  # no anti-entropy to paper over a loss
    with LocalCluster(4, base_dir=tmp_path / "c", proxied=True, extra_args=args) as c:
        n1, n4 = c.node("n1"), c.node("n4")
        with Client(c.addresses) as client:
            wait_members(client, 4)
        ring = ring_of(n4)
        c.partition(["n4"], ["n1", "n2", "n3"])
        with Client([n1.address], timeout=5.0) as admin:
            assert wait_for(lambda: member_states(admin, n1).get("n4") == "down", 30, 0.2), "n4 not seen down"
            admin.leave("n4")
            assert wait_for(lambda: member_states(admin, n1).get("n4") == "leaving", 30, 0.2)

        # n4 does not know yet: it coordinates writes for the partitions it holds, acknowledged by itself alone.
        keys = [k for k in (f"cut-{i}".encode() for i in range(400))
                if "n4" in ring.replicas(ring.partition_of(k))][:60]
        acknowledged = {}
        with Client([n4.address], timeout=3.0, partition_aware=False) as via_n4:
            for key in keys:
                try:
                    via_n4.put(key, b"v-" + key, w=1)
                    acknowledged[key] = b"v-" + key
                except DynafastError:
                    pass
        assert len(acknowledged) >= 20, f"only {len(acknowledged)} writes were acknowledged by n4"
        with Client([n1.address], timeout=5.0) as admin:
            status = status_of(admin, n1)
            assert status["next_ring_version"] is not None, "the ring moved on without the cut-off leaver"

        c.heal()
        assert wait_for(lambda: not n4.is_running(), 90, 0.3), "n4 did not stop after learning it had left"
        # Read straight from each replica first: a read through a coordinator repairs what it finds missing.
        missing = {k: [n.node_id for n in c.nodes[:3] if not holds(n, k, v)] for k, v in acknowledged.items()}
        missing = {k: nodes for k, nodes in missing.items() if nodes}
        handoff_log = [line for line in n4.stderr_path.read_text().splitlines() if "handoff" in line][-20:]
        assert not missing, (f"{len(missing)} of {len(acknowledged)} acknowledged writes are missing on some primary "
                             f"({list(missing.items())[:5]}); n4 logged:\n" + "\n".join(handoff_log))
        with Client([node.address for node in c.nodes[:3]], timeout=5.0) as client:
            lost = [k for k, v in acknowledged.items() if client.get(k, r=2).values != [v]]
        assert not lost, f"{len(lost)} of {len(acknowledged)} acknowledged writes were lost: {lost[:5]}"


def test_hints_held_by_a_leaving_node_reach_their_owner(tmp_path):
    """n4 holds hints for n3 that it has not delivered yet (its hint rounds are far apart here) when it is told to
    leave: it must deliver them before it stops."""
    args = fast_config(tmp_path, ae_interval=0.0, handoff_interval=3600.0, drop_grace=1.0)
    with LocalCluster(4, base_dir=tmp_path / "c", extra_args=args) as c:
        n1, n3, n4 = c.node("n1"), c.node("n3"), c.node("n4")
        with Client(c.addresses) as client:
            wait_members(client, 4)
        ring = ring_of(n1)
        # Keys n3 holds and n4 does not: with n3 down, n4 is their fallback and keeps a hint for n3.
        keys = [k for k in (f"hint-{i}".encode() for i in range(400))
                if "n3" in ring.replicas(ring.partition_of(k)) and "n4" not in ring.replicas(ring.partition_of(k))]
        keys = keys[:30]
        assert keys
        n3.kill()
        with Client([n1.address, c.node("n2").address], timeout=5.0) as client:
            assert wait_for(lambda: member_states(client, n1).get("n3") == "down", 30, 0.2)
            for key in keys:
                client.put(key, b"h-" + key, w=3)  # both live primaries and n4's hint
        with Client([n4.address]) as direct:
            assert "n3" in direct.status(n4.address)["hints_for"]
        n3.restart()
        with Client(c.addresses) as client:
            wait_members(client, 4)

        async def leave():
            async with AsyncClient(c.addresses) as client:
                await client.leave("n4", address=n1.address)

        asyncio.run(leave())
        assert wait_for(lambda: not n4.is_running(), 120, 0.3), "n4 did not stop after leaving"
        missing = [k for k in keys if replica_copy(n3, k) is None]
        assert not missing, f"{len(missing)} of {len(keys)} hinted writes never reached n3"



def test_dynafast_leave_sent_while_its_node_has_no_majority_goes_through_once_it_has(tmp_path):
    """`dynafast leave` through n1 while n1 is cut off from the other two: n1 cannot change the cluster now, and
    the command sends the leave again until it can (the cut heals 2 s later) rather than give up at once."""
    import os
    import subprocess
    import sys
    import time

    args = fast_config(tmp_path, drop_grace=1.0)
    with LocalCluster(3, base_dir=tmp_path / "c", proxied=True, extra_args=args) as c:
        n1 = c.node("n1")
        with Client(c.addresses) as client:
            wait_members(client, 3)
        c.partition(["n1"], ["n2", "n3"])
        with Client([n1.address], timeout=5.0) as direct:
            assert wait_for(lambda: {member_states(direct, n1).get(i) for i in ("n2", "n3")} == {"down"}, 30, 0.2)
        leave = subprocess.Popen([sys.executable, "-m", "dynafast.cli", "leave", "--node", "n3", "--cluster",
                                  n1.address], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                 env=dict(os.environ))
        try:
            time.sleep(2.0)
            assert leave.poll() is None, leave.communicate()  # still sending it
            c.heal()
            out, err = leave.communicate(timeout=60)
        finally:
            if leave.poll() is None:
                leave.kill()
                leave.wait()
        assert leave.returncode == 0, err
        assert out.startswith("n3 is leaving")
        with Client([n1.address], timeout=5.0) as direct:
            assert wait_for(lambda: member_states(direct, n1).get("n3") in ("leaving", "left", None), 30, 0.2)
