"""Wall clocks set wrong on real nodes (``DYNAFAST_CLOCK_OFFSET``): liveness and hints must not depend on them."""
import time

import pytest

from dynafast import Client
from dynafast.errors import QuorumNotMet, Unavailable
from dynafast.testing.cluster import LocalCluster
from test_cluster import replica_copy, wait_for, wait_members
from test_cluster_life import fast_config

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(240)]

HOUR = 3600


def states(client, address) -> dict:
    """node id -> state (up, down, ...) as the node at ``address`` shows its members."""
    try:
        return {m["id"]: m["state"] for m in client.status(address)["members"]}
    except Unavailable:
        return {}


@pytest.mark.parametrize("offset", [-HOUR, HOUR], ids=["back", "ahead"])
def test_a_node_restarted_with_its_clock_an_hour_off_is_seen_up(tmp_path, offset):
    with LocalCluster(3, base_dir=tmp_path / "c", extra_args=fast_config(tmp_path)) as c:
        with Client(c.addresses, timeout=3.0) as client:
            wait_members(client, 3)
            n3 = c.node("n3")
            n3.stop()
            assert wait_for(lambda: states(client, c.node("n1").address).get("n3") == "down", 30), \
                "the stopped node was never seen down"
            time.sleep(3.0)  # long past what the failure detector allows a silent peer (gossip every 0.3 s)
            n3.start(env={"DYNAFAST_CLOCK_OFFSET": str(offset)})
            # Before, set back: its heartbeats restarted from its wall clock in ms, 3.6 million below what the
            # others had heard, so they ignored them and showed it down for that many gossip rounds. (Talking
            # to a peer clears only a refused connection's mark: the failure detector still waits for a beat.)
            wait_members(client, 3, timeout=60)
            for _ in range(6):  # and it stays up: its heartbeats keep counting
                time.sleep(0.5)
                wait_members(client, 3, timeout=10)


def test_a_fallback_hours_ahead_keeps_and_delivers_the_hint_of_a_w3_write(tmp_path):
    # No anti-entropy and the key is never read: only the hint can bring the write to the paused primary.
    with LocalCluster(4, base_dir=tmp_path / "c", extra_args=fast_config(tmp_path, ae_interval=0.0)) as c:
        with Client(c.addresses, timeout=3.0) as client:
            wait_members(client, 4)

            def settled():  # every node on the same ring, no change under way: the preference lists hold still
                statuses = [client.status(n.address) for n in c.nodes]
                return (all(st["next_ring_version"] is None for st in statuses)
                        and len({st["ring_version"] for st in statuses}) == 1)

            assert wait_for(settled, 60, 0.2), "the ring did not settle"
            client.refresh_ring()
            ring = client._routing.ring
            assert sorted(ring.members) == ["n1", "n2", "n3", "n4"]
            # A key n4 does not hold: n4 is the one fallback when one of its primaries is down.
            key = next(k for k in (b"clock-%d" % i for i in range(1000))
                       if "n4" not in ring.replicas(ring.partition_of(k)))
            coordinator, _, paused = ring.replicas(ring.partition_of(key))
            fallback = c.node("n4")
            fallback.stop()
            fallback.start(env={"DYNAFAST_CLOCK_OFFSET": str(4 * HOUR)})  # past the 3 h hint window
            wait_members(client, 4, timeout=60)

            c.node(paused).pause()
            try:
                coordinator_address = c.node(coordinator).address

                def only_paused_down():  # the coordinator's view: the fallback stands in for the paused primary
                    shown = states(client, coordinator_address)
                    return {node for node, state in shown.items() if state != "up"} == {paused}

                hints_for = lambda: client.status(fallback.address)["hints_for"]  # noqa: E731
                held = []
                with Client([coordinator_address], timeout=10.0, partition_aware=False) as direct:
                    for _ in range(5):
                        assert wait_for(only_paused_down, 30, 0.1), \
                            "the coordinator never saw the paused primary, and only it, down"
                        try:
                            direct.put(key, b"hinted", w=3)
                        except QuorumNotMet:
                            continue  # a slow peer under load: the write was not acknowledged, write again
                        held = hints_for()
                        if paused in held or not held:
                            break
                        # The fallback holds hints for another primary only: the coordinator suspected that one
                        # too at the put (a node starved of CPU for seconds), and the hint stood in for it.
                        # Wait until it is seen up again, and write again.
                assert paused in held, f"the fallback holds hints for {held}, not for the paused {paused}"
                # Before: the fallback measured the hint's age from the coordinator's version timestamp on its
                # own clock, found it 4 h old, and dropped it at the next handoff round.
                for _ in range(10):
                    assert paused in hints_for()
                    wait_for(lambda: False, 0.2)  # a few handoff rounds (every 0.2 s)
            finally:
                c.node(paused).resume()

            def delivered():
                copy = replica_copy(c.node(paused), key)
                return copy is not None and copy.live_values() == [b"hinted"]

            assert wait_for(delivered, 60, 0.5), "the hint never reached the primary"
            assert wait_for(lambda: hints_for() == [], 30)
