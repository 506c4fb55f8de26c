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
