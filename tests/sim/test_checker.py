"""The simulator's history checker on hand-written histories: what an overwrite (a delete without a context)
may excuse, and what it may not."""
from dynafast.sim.checker import check_history
from dynafast.sim.workload import History, Op


def history(*ops) -> History:
    h = History()
    for op in ops:
        h.record(op)
    return h


def put(value, start, end, outcome="ok"):
    return Op(0, "put", b"k", value, start=start, end=end, outcome=outcome)


def blind_delete(start, end, outcome="ok"):
    return Op(1, "delete", b"k", None, blind=True, overwrite=True, start=start, end=end, outcome=outcome)


def kinds(h, final):
    return [(v.kind, v.detail) for v in check_history(h, {b"k": final}, sibling_bound=10)]


def test_a_value_gone_without_anything_that_could_replace_it_is_a_lost_write():
    assert [k for k, _ in kinds(history(put(b"a", 0.0, 0.1)), [])] == ["lost write"]


def test_an_overwrite_excuses_only_values_written_before_it_answered():
    h = history(put(b"a", 0.0, 0.1), blind_delete(0.2, 0.3), put(b"b", 0.4, 0.5))
    assert kinds(h, [b"b"]) == []
    lost = kinds(h, [])
    assert len(lost) == 1 and lost[0][0] == "lost write" and "b'b'" in lost[0][1]


def test_a_value_sent_while_the_overwrite_was_in_flight_may_be_gone():
    assert kinds(history(blind_delete(0.0, 0.3), put(b"a", 0.1, 0.2)), []) == []


def test_an_unanswered_overwrite_may_still_happen_later():
    assert kinds(history(blind_delete(0.0, 1.0, outcome="unknown"), put(b"a", 2.0, 2.1)), []) == []


def test_an_overwrite_sees_nothing_so_a_value_it_may_have_deleted_may_also_stay():
    assert kinds(history(put(b"a", 0.0, 0.1), blind_delete(0.2, 0.3)), [b"a"]) == []
