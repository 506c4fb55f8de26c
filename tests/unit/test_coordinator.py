"""The quorum state machines, driven by replies with no sockets."""
import pytest

from dynafast.cluster.coordinator import GetCoordinator, PutCoordinator, Send
from dynafast.errors import CorruptionError, QuorumNotMet, Unavailable
from conftest import implementations

impl = implementations("vclock")

TARGETS = [("a", None), ("b", None), ("c", None)]


def test_put_answers_after_w_acks_with_dw_durable():
    m = PutCoordinator(TARGETS, ["d"], w=2, dw=1)
    sends = m.start()
    assert sends == [Send("a", None, True), Send("b", None, False), Send("c", None, False)]
    m.on_ack("b", False)
    assert not m.done
    m.on_ack("c", False)
    # two acks but none durable yet: wait for the durable one
    assert not m.done
    m.on_ack("a", True)
    assert m.ok and m.acks == 3 and m.durable_acks == 1
    assert m.finished


def test_put_late_acks_are_counted():
    m = PutCoordinator(TARGETS, [], w=1, dw=0)
    m.start()
    m.on_ack("a", False)
    assert m.ok and not m.finished
    m.on_ack("b", False)
    m.on_ack("c", True)
    assert m.finished and m.acks == 3 and m.primary_acks == 3


def test_put_failed_replica_is_replaced_by_hinted_fallback():
    m = PutCoordinator(TARGETS, ["d", "e"], w=3, dw=1)
    m.start()
    m.on_ack("a", True)
    sends = m.on_failure("c")
    assert sends == [Send("d", "c", False)]
    m.on_ack("b", False)
    assert not m.done
    m.on_ack("d", False)
    assert m.ok and m.primary_acks == 2


def test_put_failed_fallback_passes_its_hint_on():
    m = PutCoordinator([("a", None), ("d", "b")], ["e"], w=2, dw=0)
    m.start()
    assert m.on_failure("d") == [Send("e", "b", False)]


def test_durable_duty_moves_to_the_replacement():
    m = PutCoordinator(TARGETS, ["d"], w=2, dw=1)
    m.start()
    sends = m.on_failure("a")
    assert sends == [Send("d", "a", True)]
    m.on_ack("b", False)
    m.on_ack("c", False)
    assert not m.done
    m.on_ack("d", True)
    assert m.ok


def test_put_fails_fast_when_quorum_is_impossible():
    m = PutCoordinator(TARGETS, [], w=3, dw=1)
    m.start()
    m.on_ack("a", True)
    m.on_failure("b")
    assert m.done and not m.ok
    assert isinstance(m.error, QuorumNotMet)
    assert m.error.replied == 1 and m.error.required == 3


def test_put_deadline_reports_how_many_replied():
    m = PutCoordinator(TARGETS, [], w=2, dw=0)
    m.start()
    m.on_ack("a", False)
    m.on_deadline()
    assert isinstance(m.error, QuorumNotMet) and m.error.replied == 1
    # a late ack does not turn a failed request into a success
    m.on_ack("b", False)
    assert not m.ok


def test_put_with_fewer_targets_than_w_uses_spares():
    m = PutCoordinator([("a", None)], ["b", "c"], w=2, dw=0)
    sends = m.start()
    assert [s.node for s in sends] == ["a", "b"]


def test_bad_quorums_are_rejected():
    with pytest.raises(ValueError):
        PutCoordinator(TARGETS, w=0)
    with pytest.raises(ValueError):
        PutCoordinator(TARGETS, w=1, dw=2)
    with pytest.raises(ValueError):
        GetCoordinator(TARGETS, r=0, versions=None)


def test_get_reconciles_and_repairs(impl):
    S = impl.Siblings
    v1 = S.new(b"one").update(None, b"a", 1)
    v2 = S.new(b"two", v1.context()).update(v1, b"a", 2)
    m = GetCoordinator(TARGETS, ["d"], r=2, versions=impl)
    assert m.start() == [Send("a"), Send("b"), Send("c")]
    m.on_reply("a", v1)
    assert not m.done
    m.on_reply("b", v2)
    assert m.done and m.error is None
    assert m.result.live_values() == [b"two"]
    assert not m.finished
    m.on_reply("c", None)
    assert m.finished
    merged, stale = m.repairs()
    assert merged == v2
    assert sorted(stale) == ["a", "c"]


def test_get_returns_concurrent_siblings(impl):
    S = impl.Siblings
    x = S.new(b"x").update(None, b"a", 1)
    y = S.new(b"y").update(None, b"b", 1)
    m = GetCoordinator(TARGETS, [], r=2, versions=impl)
    m.start()
    m.on_reply("a", x)
    m.on_reply("b", y)
    assert sorted(m.result.live_values()) == [b"x", b"y"]


def test_get_not_found_everywhere(impl):
    m = GetCoordinator(TARGETS, [], r=2, versions=impl)
    m.start()
    m.on_reply("a", None)
    m.on_reply("b", None)
    assert m.done and m.result is None
    assert m.repairs() == (None, [])


def test_get_failure_tries_a_fallback_and_fails_when_impossible(impl):
    m = GetCoordinator(TARGETS, ["d"], r=3, versions=impl)
    m.start()
    assert m.on_failure("a") == [Send("d", "a")]
    m.on_failure("b")
    assert m.done and isinstance(m.error, QuorumNotMet)
    assert m.error.required == 3


def test_a_damaged_replica_fails_over_and_is_repaired(impl):
    """A replica whose copy is damaged does not answer "not found" (that would outvote the others): it fails,
    a spare is asked instead, and read repair writes it the merged object, unlike a replica that did not answer."""
    v = impl.Siblings.new(b"v").update(None, b"b", 1)
    m = GetCoordinator(TARGETS, ["d"], r=2, versions=impl)
    m.start()
    assert m.on_failure("a", CorruptionError("record failed its checksum")) == [Send("d", "a")]
    assert m.on_failure("c", Unavailable("gone")) == []
    m.on_reply("b", v)
    m.on_reply("d", None)
    assert m.done and m.error is None and m.result == v
    merged, stale = m.repairs()
    assert merged == v and stale == ["a"]


def test_fallback_replies_are_not_repaired(impl):
    S = impl.Siblings
    v = S.new(b"v").update(None, b"a", 1)
    m = GetCoordinator([("a", None), ("d", "b")], [], r=2, versions=impl)
    m.start()
    m.on_reply("a", v)
    m.on_reply("d", None)
    merged, stale = m.repairs()
    assert stale == []


def test_a_fallbacks_not_found_does_not_outvote_a_primary_that_has_the_key(impl):
    """Primary "c" is down and "d" stands in for it; primary "a" came back from an outage and has not received
    the key's hints yet. Their two "not found" replies make R=2, but only "b" can tell: the read waits for it."""
    v = impl.Siblings.new(b"v").update(None, b"b", 1)
    m = GetCoordinator([("a", None), ("b", None), ("d", "c")], [], r=2, versions=impl)
    m.start()
    m.on_reply("a", None)
    m.on_reply("d", None)
    assert not m.done
    m.on_reply("b", v)
    assert m.done and m.error is None and m.result == v
    merged, stale = m.repairs()
    assert merged == v and stale == ["a"]


def test_not_found_from_a_primary_and_a_fallback_is_final_when_nobody_else_answers(impl):
    m = GetCoordinator([("a", None), ("b", None), ("d", "c")], [], r=2, versions=impl)
    m.start()
    m.on_reply("a", None)
    m.on_reply("d", None)
    m.on_failure("b", Unavailable("gone"))
    assert m.done and m.error is None and m.result is None
    m = GetCoordinator([("a", None), ("b", None), ("d", "c")], [], r=2, versions=impl)
    m.start()
    m.on_reply("d", None)
    m.on_reply("a", None)
    m.on_deadline()  # "b" never answered: not found is all that is known
    assert m.done and m.error is None and m.result is None


# -- a replica the failure detector holds down, with no fallback to stand in for it ---------------------------
def _three_node_ring():
    from dynafast._impl import ring as rings

    return rings.Ring(16, ["n1", "n2", "n3"], n=3)


def test_a_down_replica_with_no_fallback_is_a_spare_not_a_target():
    # Before, it stayed a target: every request was sent to it, and a hung node piled them up unanswered.
    from dynafast.cluster.preflist import targets

    ring = _three_node_ring()
    partition = next(p for p in range(ring.partitions) if ring.replicas(p, 3)[0] == "n1")
    chosen, spares = targets(ring, partition, 3, frozenset({"n3"}), "n1")
    assert sorted(node for node, _ in chosen) == ["n1", "n2"] and spares == ("n3",)
    put = PutCoordinator(chosen, spares, w=2, dw=1)
    assert {send.node for send in put.start()} == {"n1", "n2"}
    get = GetCoordinator(chosen, spares, r=2, versions=None)
    assert {send.node for send in get.start()} == {"n1", "n2"}


def test_a_down_replica_is_asked_when_the_quorum_needs_it():
    from dynafast.cluster.preflist import targets

    ring = _three_node_ring()
    chosen, spares = targets(ring, 0, 3, frozenset({"n3"}), ring.replicas(0, 3)[0])
    put = PutCoordinator(chosen, spares, w=3, dw=0)
    assert Send("n3", None, False) in put.start()
    get = GetCoordinator(chosen, spares, r=3, versions=None)
    assert Send("n3", None) in get.start()
    # and when a live target fails, as a stand-in for it
    get = GetCoordinator(chosen, spares, r=2, versions=None)
    get.start()
    failed = next(node for node, _ in chosen if node != chosen[0][0])
    assert get.on_failure(failed) == [Send("n3", failed)]
