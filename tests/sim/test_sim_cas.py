"""Compare-and-set in the simulator: clients increment counters by CAS through every fault, and the counter
checker finds the Paxos bugs we plant by switching off one rule at a time."""
from __future__ import annotations

import pytest

from dynafast.cluster import paxos
from dynafast.sim import run
from dynafast.sim.checker import check_counters
from dynafast.sim.workload import History, Op

pytestmark = pytest.mark.timeout(300)


def first_failing_seed(seeds, **options):
    for seed in seeds:
        result = run(seed, cas=True, **options)
        if result.violations:
            return seed, result
    return None, None


def test_cas_seeds_run_clean():
    seed, result = first_failing_seed(range(100), ops=150)
    assert seed is None, f"seed {seed}: {[str(v) for v in result.violations][:5]} after {result.faults}"


def test_a_cas_seed_replays_exactly():
    first, again = run(5, ops=80, cas=True), run(5, ops=80, cas=True)
    assert first.digest == again.digest and first.faults == again.faults


def test_the_counter_checker():
    history = History()
    history.record(Op(0, "cas", b"c", read=0, outcome="ok", start=0.0, end=1.0))
    history.record(Op(1, "cas", b"c", read=1, outcome="ok", start=2.0, end=3.0))
    history.record(Op(2, "cas", b"c", read=1, outcome="unknown", start=2.0, end=3.0))
    assert check_counters(history, {b"c": 2}) == []
    assert check_counters(history, {b"c": 3}) == []
    assert [v.kind for v in check_counters(history, {b"c": 4})] == ["counter"]
    assert [v.kind for v in check_counters(history, {b"c": None})] == ["unreadable"]
    history.record(Op(3, "cas", b"c", read=1, outcome="ok", start=4.0, end=5.0))
    kinds = {v.kind for v in check_counters(history, {b"c": 3})}
    assert kinds == {"lost update", "stale read"}


def test_it_finds_an_acceptor_that_accepts_below_its_promise(monkeypatch):
    monkeypatch.setattr(paxos, "on_propose", lambda state, ballot, value: (
        state._replace(promised=max(ballot, state.promised), accepted=ballot, accepted_value=value), True))
    seed, result = first_failing_seed(range(60), ops=150)
    assert seed is not None


def test_it_finds_a_proposer_that_does_not_finish_earlier_proposals(monkeypatch):
    monkeypatch.setattr(paxos.Promises, "unfinished", lambda self: None)
    seed, result = first_failing_seed(range(60), ops=150)
    assert seed is not None


def test_it_finds_a_failure_reported_while_a_lost_proposal_could_still_be_chosen(monkeypatch):
    async def settled(self, mine, current, *args):
        return True  # "nothing of ours was written", without making sure

    monkeypatch.setattr(paxos.Paxos, "_settle_mine", settled)
    seed, result = first_failing_seed(range(60), ops=150)
    assert seed is not None


def test_a_join_moves_what_a_quorum_decided_not_what_one_stale_replica_holds():
    """Seed 60010 (4 nodes, membership faults, compare-and-set), scripted: two increments were decided by two
    primaries of the counter while the third, the first in its preference list, missed them. A join then moved
    the partition to n5, streamed from that stale primary, and a round on n5 and that primary read the old value
    and decided an increment from it. The partition's Paxos state now moves merged from a quorum of its old
    replicas (``cluster/paxosmove.py``)."""
    read, acknowledged = cas_across_a_join_scenario()
    assert read == acknowledged, f"{acknowledged} acknowledged increments read {read} after the join"


def test_it_finds_a_join_that_moves_only_the_streamed_copy(monkeypatch):
    """Switch the Paxos state's move off: the scenario loses the increments the streaming replica missed."""
    from dynafast.cluster.paxosmove import PaxosMoves

    async def nothing(self, partition, target, state):
        return 0

    monkeypatch.setattr(PaxosMoves, "move", nothing)
    read, acknowledged = cas_across_a_join_scenario()
    assert read < acknowledged


def cas_across_a_join_scenario() -> tuple[int, int]:
    """(the counter as a round on the stale primary and n5 reads it after the join, increments acknowledged)."""
    import asyncio
    import random

    from dynafast.cluster.preflist import primaries
    from dynafast.net.messages import Msg
    from dynafast.sim.cluster import SimNode, run_scenario, start_nodes
    from dynafast.sim.network import SimNetwork
    from dynafast.sim.workload import CasClient

    phases = {Msg.PAXOS_PREPARE, Msg.PAXOS_PROPOSE, Msg.PAXOS_COMMIT}

    async def scenario():
        network = SimNetwork(asyncio.get_running_loop(), random.Random(1))
        options = dict(ae_interval=0)  # no anti-entropy: the stale copy must stay stale until the join
        sims = await start_nodes(network, 4, **options)
        await asyncio.sleep(10)
        ring = sims["n1"].node.membership.ring
        # The ring the join of n5 will make (as the claimant plans it), and a partition whose first primary (the
        # one that streams it) stays a primary beside n5, while another old primary gives its place up.
        joined = type(ring)(ring.partitions, sorted(sims) + ["n5"], n=ring.n, zones={}, previous=ring,
                            version=ring.version + 1)
        for partition in range(ring.partitions):
            old, new = primaries(ring, partition, ring.n), primaries(joined, partition, ring.n)
            if "n5" in new and old[0] in new:
                break
        else:
            raise AssertionError("no partition moves as the scenario needs")
        stale, kept = old[0], next(node for node in old[1:] if node in new)
        gone = next(node for node in old if node not in new)
        key = next(k for k in (b"ctr%d" % i for i in range(10_000)) if ring.partition_of(k) == partition)
        client = CasClient(0, network, History(), random.Random(5))
        acknowledged = 0
        for through in ([sims[kept].address], [sims[kept].address]):
            acknowledged += (await client.increment(through, key)).outcome == "ok"
        # The first primary misses the next two increments entirely.
        network.drop_rules.append(lambda source, target, msg_type: msg_type in phases
                                  and target == sims[stale].address)
        for _ in range(2):
            acknowledged += (await client.increment([sims[kept].address], key)).outcome == "ok"
        network.drop_rules.clear()
        # The old primary that gives its place up hands nothing off: only the move may carry the increments.
        network.drop_rules.append(lambda source, target, msg_type: msg_type == Msg.TRANSFER
                                  and source == sims[gone].address)
        sims["n5"] = SimNode("n5", network, random.Random(6), seeds=[sims["n1"].address], **options)
        await sims["n5"].start()
        for _ in range(120):
            state = sims["n1"].node.membership.state
            if state.next_ring is None and "n5" in state.ring.members:
                break
            await asyncio.sleep(0.5)
        else:
            raise AssertionError("the join did not complete")
        await asyncio.sleep(1)  # every node learns the new ring
        # A round that can only hear from the stale primary and n5.
        network.drop_rules.append(lambda source, target, msg_type: msg_type in phases
                                  and target == sims[kept].address)
        reader = CasClient(1, network, History(), random.Random(7))
        read = await reader.read_counter([sims[stale].address], key)
        for sim in sims.values():
            await sim.stop()
        return (None if read is None else read[0]), acknowledged

    return run_scenario(scenario)


def test_acceptors_take_part_only_in_rounds_made_for_their_ring_view():
    """A round whose proposer has not learned of a ring change (or has learned of one the acceptor has not) is
    refused with WRONG_NODE, so that nothing is chosen behind the Paxos state a moving partition takes along."""
    import asyncio
    import random

    from dynafast.net.messages import Msg, WrongNode
    from dynafast.sim.cluster import run_scenario, start_nodes
    from dynafast.sim.network import SimNetwork

    async def scenario():
        network = SimNetwork(asyncio.get_running_loop(), random.Random(1))
        sims = await start_nodes(network, 3)
        first = sims["n1"]
        await asyncio.sleep(10)
        node = first.node
        view = node.paxos.views.of(node.membership.state)
        transport = network.transport("n9.sim:1")
        outcomes = {}
        for name, msg_type, fields in [
                ("prepare, another view", Msg.PAXOS_PREPARE, (0, b"k", 5 << 16, b"\0" * 8)),
                ("propose, another view", Msg.PAXOS_PROPOSE, (0, b"k", 5 << 16, b"", b"\0" * 8)),
                ("snapshot, another view", Msg.PAXOS_SNAPSHOT, (0, b"\0" * 8, None)),
                ("prepare, its view", Msg.PAXOS_PREPARE, (0, b"k", 6 << 16, view)),
                ("propose, its view", Msg.PAXOS_PROPOSE, (0, b"k", 6 << 16, b"", view)),
                ("prepare, no view", Msg.PAXOS_PREPARE, (0, b"k", 7 << 16)),
                ("snapshot, its view", Msg.PAXOS_SNAPSHOT, (0, view, None))]:
            try:
                _, reply = await transport.call(first.address, msg_type, fields, 1.0)
                outcomes[name] = reply[0] if msg_type != Msg.PAXOS_SNAPSHOT else [bytes(k) for k in reply[0]]
            except WrongNode:
                outcomes[name] = "wrong node"
        for sim in sims.values():
            await sim.stop()
        return outcomes

    outcomes = run_scenario(scenario)
    assert outcomes == {"prepare, another view": "wrong node", "propose, another view": "wrong node",
                        "snapshot, another view": "wrong node", "prepare, its view": True, "propose, its view": True,
                        "prepare, no view": True, "snapshot, its view": [b"k"]}
