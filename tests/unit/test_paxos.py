"""The I/O-free parts of conditional writes: the acceptor's rules, the proposer's reading of promises, the CAS
condition and the lock decision."""
import pytest

from dynafast._impl import vclock as versions
from dynafast.cluster.conditional import LockRecord, _Refused, current_record, lock_decision
from dynafast.cluster.paxos import (NOOP, PaxosState, Promises, cas_decision, merged, on_commit, on_prepare,
                                    on_propose, quorum_of, same_state)
from dynafast.cluster.paxosmove import combine
from dynafast.errors import ConditionFailed
from dynafast.net.messages import PaxosPrepareReply, PaxosSnapshotReply


def test_state_round_trips():
    for state in (PaxosState(), PaxosState(5, 4, b"value", 3), PaxosState(7, 7, NOOP, 6)):
        assert PaxosState.from_bytes(state.to_bytes()) == state


def test_an_acceptor_promises_each_ballot_once_and_never_goes_back():
    state, ok = on_prepare(PaxosState(), 10)
    assert ok and state.promised == 10
    assert on_prepare(state, 10) == (None, False)  # the same ballot twice: two proposers cannot share it
    assert on_prepare(state, 9) == (None, False)
    assert on_propose(state, 9, b"x") == (None, False)
    accepted, ok = on_propose(state, 10, b"x")
    assert ok and (accepted.accepted, accepted.accepted_value) == (10, b"x")
    higher, ok = on_propose(accepted, 12, b"y")  # a proposal above the promise is accepted, and promised
    assert ok and higher.promised == 12


def test_a_commit_clears_the_proposal_it_finishes_but_not_a_newer_one():
    state = PaxosState(10, 10, b"x", 0)
    done = on_commit(state, 10)
    assert (done.committed, done.accepted, done.accepted_value) == (10, 0, None)
    assert on_commit(done, 9) is None
    newer = on_commit(PaxosState(12, 12, b"y", 0), 10)
    assert (newer.committed, newer.accepted_value) == (10, b"y")


def test_merged_states_keep_the_highest_promise_and_commit_and_the_last_unfinished_proposal():
    # What a moving partition's new replica takes from a quorum of the old ones.
    a, b = PaxosState(30, 20, b"x", 10), PaxosState(25, 22, b"y", 12)
    assert merged([a, b]) == PaxosState(30, 22, b"y", 12)
    # A commit at or past the last accepted ballot finished it: nothing is left to finish.
    assert merged([a, PaxosState(40, 0, None, 20)]) == PaxosState(40, 0, None, 20)
    # A proposal newer than every commit is kept even where the promise came from elsewhere.
    assert merged([PaxosState(50, 45, NOOP, 44), PaxosState(60, 0, None, 44)]) == PaxosState(60, 45, NOOP, 44)
    assert merged([PaxosState()]) == PaxosState()


def test_snapshot_pages_of_several_replicas_merge_up_to_the_shortest_full_page():
    def page(keys, more):
        return PaxosSnapshotReply(keys, [b"s-" + k for k in keys], [b"o-" + k if k != b"c" else b"" for k in keys],
                                  more)

    # One replica's page stopped at "c" (a size limit): keys past it wait for the next pages.
    entries, end = combine([page([b"a", b"c"], True), page([b"b", b"c", b"d"], False)])
    assert end == b"c"
    assert entries == [(b"a", [b"s-a"], [b"o-a"]), (b"b", [b"s-b"], [b"o-b"]), (b"c", [b"s-c", b"s-c"], [])]
    entries, end = combine([page([b"d"], False), page([], False)])
    assert end is None and [key for key, _, _ in entries] == [b"d"]


def promise(accepted=0, value=None, committed=0, obj=None, ballot=20):
    return PaxosPrepareReply(True, ballot, accepted, value, committed, obj)


def test_the_newest_accepted_proposal_above_every_commit_must_be_finished():
    promises = Promises(versions)
    promises.add("a", promise(accepted=5, value=b"old", committed=4))
    promises.add("b", promise(accepted=7, value=b"new", committed=4))
    assert promises.unfinished() == (7, b"new")
    promises.add("c", promise(committed=7))  # someone saw 7 committed: nothing is unfinished
    assert promises.unfinished() is None
    refused = Promises(versions)
    assert not refused.add("a", PaxosPrepareReply(False, 99, 0, None, 0, None))
    assert refused.highest_refusal == 99 and not refused.promised


def test_the_current_state_merges_the_promising_copies():
    one = versions.Siblings.new(b"1").update(None, b"a", 1)
    two = versions.Siblings.new(b"2", one.context()).update(one, b"a", 2)
    promises = Promises(versions)
    promises.add("a", promise(obj=one.to_bytes()))
    promises.add("b", promise(obj=two.to_bytes()))
    promises.add("c", promise())
    assert promises.current().live_values() == [b"2"]
    assert Promises(versions).current() is None


def test_the_condition_names_exactly_the_current_versions():
    one = versions.Siblings.new(b"1").update(None, b"a", 1)
    sibling = versions.Siblings.new(b"x").update(one, b"b", 1)
    both = one.sync(sibling)
    assert same_state(versions, None, b"") and same_state(versions, None, None)
    assert not same_state(versions, one, b"")
    assert same_state(versions, one, one.context())
    assert not same_state(versions, both, one.context())  # a sibling the context did not see
    assert not same_state(versions, one, b"\xff")  # undecodable: names nothing
    assert quorum_of(3) == 2 and quorum_of(5) == 3


def test_cas_decision_stamps_over_everything_or_fails_with_the_current_state():
    one = versions.Siblings.new(b"1").update(None, b"a", 1)
    new = cas_decision(versions, b"p", 5, b"2", one.context(), False)(one)
    assert new.live_values() == [b"2"] and new.clock().descends(one.clock())
    with pytest.raises(ConditionFailed) as failed:
        cas_decision(versions, b"p", 5, b"2", b"", False)(one)
    assert failed.value.values == [b"1"] and failed.value.context == one.context()
    with pytest.raises(ConditionFailed):
        cas_decision(versions, b"p", 5, b"2", None, True)(one)
    assert cas_decision(versions, b"p", 5, b"1", None, True)(None).live_values() == [b"1"]
    assert cas_decision(versions, b"p", 5, None, b"", False)(None) is None  # deleting the absent: no write
    tomb = cas_decision(versions, b"p", 5, None, one.context(), False)(one)
    assert tomb.is_deleted()
    assert cas_decision(versions, b"p", 6, b"3", None, True)(tomb).live_values() == [b"3"]


def record_of(obj):
    return current_record(obj)


def test_lock_grants_free_or_expired_leases_with_a_higher_token():
    decide = lock_decision(versions, b"p", 100.0, "h1", 10.0, False, None)
    first = decide(None)
    assert record_of(first) == LockRecord("h1", 1, 110.0)
    with pytest.raises(_Refused):
        lock_decision(versions, b"p", 105.0, "h2", 10.0, False, None)(first)
    renewed = lock_decision(versions, b"p", 105.0, "h1", 10.0, False, None)(first)
    assert record_of(renewed) == LockRecord("h1", 1, 115.0)  # the same holder renews, same token
    taken = lock_decision(versions, b"p", 120.0, "h2", 10.0, False, None)(renewed)
    assert record_of(taken) == LockRecord("h2", 2, 130.0)  # expired on the coordinator's clock
    with pytest.raises(_Refused):
        lock_decision(versions, b"p", 121.0, "h1", 10.0, True, 1)(taken)  # h1's lease is gone: not released
    released = lock_decision(versions, b"p", 121.0, "h2", 10.0, True, 2)(taken)
    assert record_of(released) == LockRecord("", 2, 0.0)  # the token stays: the next grant is 3
    again = lock_decision(versions, b"p", 122.0, "h3", 10.0, False, None)(released)
    assert record_of(again).fencing == 3
