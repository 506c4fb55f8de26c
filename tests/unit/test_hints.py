"""Hints keep when their holder received them, and expire by the holder's clock alone (real store, real clock)."""
import time

import dynafast
from dynafast import _impl
from dynafast.cluster import hints
from dynafast.cluster.ports import SystemClock
from dynafast.cluster.vnode import Vnodes, hint_key

HOUR = 3600.0
S = _impl.vclock.Siblings


def vnodes(store, monkeypatch, offset: float) -> Vnodes:
    monkeypatch.setenv("DYNAFAST_CLOCK_OFFSET", str(offset))
    return Vnodes(store, _impl.vclock, clock=SystemClock())


def expired(held, now, **kw):
    plan = hints.plan("owner", held, now=now, window=3 * HOUR, deliverable=True, batch_size=10,
                      unstamped=kw.get("unstamped", now))
    return [key for _, key, _ in plan.expired]


def test_a_hint_stamped_hours_ahead_by_its_coordinator_or_behind_is_held_for_the_window(tmp_path, monkeypatch):
    with dynafast.open(tmp_path / "db", sync="none") as store:
        # The coordinator's clock is 4 h behind the holder's: its version timestamp plays no part.
        write = S.new(b"v").update(None, b"coordinator", int(time.time() - 4 * HOUR))
        holder = vnodes(store, monkeypatch, 0.0)
        holder.merge_in(1, b"k", write, "owner")
        [(partition, key, siblings, received)] = holder.hints("owner")
        assert (partition, key, siblings) == (1, b"k", write)
        assert abs(received - time.time()) < 60
        assert expired(holder.hints("owner"), now=time.time()) == []
        assert expired(holder.hints("owner"), now=received + 3 * HOUR + 1) == [b"k"]
        # The holder's clock set back after it received the hint: the receipt lies ahead, not expired.
        assert expired(holder.hints("owner"), now=received - 10 * HOUR) == []
        assert holder.get(1, b"k", "owner") == write and holder.get_raw(1, b"k", "owner") == write.to_bytes()
        assert holder.drop_hint_if_equal("owner", 1, b"k", write) and list(holder.hints("owner")) == []


def test_a_merged_hint_keeps_its_earliest_receipt(tmp_path, monkeypatch):
    with dynafast.open(tmp_path / "db", sync="none") as store:
        first = S.new(b"a").update(None, b"c1", 1)
        vnodes(store, monkeypatch, -HOUR).merge_in(1, b"k", first, "owner")
        later = S.new(b"b").update(None, b"c2", 2)
        holder = vnodes(store, monkeypatch, 0.0)
        merged = holder.merge_in(1, b"k", later, "owner")
        [(_, _, siblings, received)] = holder.hints("owner")
        assert sorted(siblings.values) == [b"a", b"b"] and siblings == merged
        assert abs(received - (time.time() - HOUR)) < 60


def test_a_hint_stored_without_a_receipt_time_counts_from_the_start(tmp_path, monkeypatch):
    with dynafast.open(tmp_path / "db", sync="none") as store:
        old = S.new(b"v").update(None, b"c", 1)  # a version stamped in 1970
        store.put(hint_key("owner", 2, b"k"), old.to_bytes())  # as older versions stored hints
        holder = vnodes(store, monkeypatch, 0.0)
        assert [(p, k, s, r) for p, k, s, r in holder.hints("owner")] == [(2, b"k", old, None)]
        now = time.time()
        assert expired(holder.hints("owner"), now=now, unstamped=now - HOUR) == []
        assert expired(holder.hints("owner"), now=now, unstamped=now - 4 * HOUR) == [b"k"]
        holder.merge_in(2, b"k", S.new(b"w").update(None, b"d", 2), "owner")  # stamped from now on
        assert next(holder.hints("owner"))[3] is not None


def test_a_wall_clock_set_back_while_running_does_not_lengthen_the_window():
    from dynafast.sim.clock import SimClock
    from dynafast.sim.loop import SimLoop

    loop = SimLoop()
    try:
        clock = SimClock(loop)
        steady = hints.SteadyWall(clock)
        received = steady.now()
        loop.advance(HOUR)
        clock.jump(-10 * HOUR)  # set back 10 h an hour after the hint arrived
        assert clock.wall() < received
        loop.advance(2 * HOUR + 1)
        now = steady.now()
        assert abs(now - received - (3 * HOUR + 1)) < 1e-6  # three real hours: the hint is past its window
        assert expired([(1, b"k", S.empty(), received)], now=now) == [b"k"]
        clock.jump(+HOUR)  # a step forward is not taken back
        assert abs(steady.now() - (now + HOUR)) < 1e-6
    finally:
        loop.close()
