"""Hints keep when their holder received them, and expire by the holder's clock alone (real store, real clock)."""
import time

import pytest

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


@pytest.mark.parametrize("step", [-10 * HOUR, +10 * HOUR])
def test_a_wall_clock_stepped_while_running_neither_lengthens_nor_shortens_the_window(step):
    """Set back, a raw wall clock would keep hints past tombstone_delay; stepped forward, it expired them at once,
    before the halfway hand-over to the key's other primaries (a hint may be one of a write's w copies)."""
    from dynafast.sim.clock import SimClock
    from dynafast.sim.loop import SimLoop

    loop = SimLoop()
    try:
        clock = SimClock(loop)
        steady = hints.SteadyWall(clock)
        held = [(1, b"k", S.empty(), steady.wall())]
        loop.advance(HOUR)
        clock.jump(step)  # an hour after the hint arrived
        now = steady.wall()
        assert abs(now - held[0][3] - HOUR) < 1e-6
        assert expired(held, now=now) == []
        aged = hints.plan("owner", held, now=now + HOUR, window=3 * HOUR, deliverable=False, batch_size=10)
        assert [key for _, key, _, _ in aged.aged] == [b"k"] and aged.expired == []  # first to the other primaries
        loop.advance(2 * HOUR + 1)
        assert expired(held, now=steady.wall()) == [b"k"]  # three real hours: past its window
    finally:
        loop.close()


def test_a_hint_past_half_its_window_is_marked_for_the_other_primaries():
    held = [(1, b"young", S.empty(), 1000.0), (1, b"old", S.empty(), 1000.0 - 2 * HOUR)]
    plan = hints.plan("owner", held, now=1000.0, window=3 * HOUR, deliverable=True, batch_size=10)
    assert [key for _, key, _, _ in plan.aged] == [b"old"]
    assert [key for _, key, _, _ in plan.batch] == [b"young", b"old"]  # the owner may still take it
    # Not for an owner that left (the whole batch goes to the primaries), nor on a leaving node (nothing expires).
    assert hints.plan("owner", held, now=1000.0, window=3 * HOUR, deliverable=True, batch_size=10,
                      redirect=True).aged == []
    assert hints.plan("owner", held, now=1000.0, window=3 * HOUR, deliverable=True, batch_size=10,
                      expire=False).aged == []


class _Ring:
    n = 3

    def replicas(self, partition, n):
        return ("coordinator", "other", "owner")


class _Membership:
    """The hint holder's view: every node up; the owner's calls time out (it takes no hints)."""

    def __init__(self):
        from types import SimpleNamespace

        self.state = SimpleNamespace(ring=_Ring())
        self.members = {name: SimpleNamespace(status="valid") for name in ("coordinator", "other", "owner")}
        self.down = set()

    def is_up(self, node):
        return node not in self.down

    def address_of(self, node):
        return node

    def mark_down(self, node, exc=None):
        pass


class _Transport:
    def __init__(self):
        self.calls = []

    async def call(self, address, msg_type, fields, timeout):
        from dynafast.errors import Timeout
        from dynafast.net.messages import Msg

        self.calls.append((address, msg_type))
        if address == "owner":
            raise Timeout("the owner takes no hints")
        assert msg_type == Msg.TRANSFER
        return (Msg.TRANSFER_REPLY, (len(fields[1]),))


def _handoff(store, clock, membership, transport):
    from types import SimpleNamespace

    config = SimpleNamespace(node_id="fallback", hint_window=4.0, handoff_batch=16, peer_timeout=0.1,
                             handoff_bytes_per_second=1 << 30)
    vnodes = Vnodes(store, _impl.vclock, clock=clock)
    return vnodes, hints.HintedHandoff(config=config, versions=_impl.vclock, membership=membership, vnodes=vnodes,
                                       durability=None, transport=transport, clock=clock)


def test_a_hint_its_owner_does_not_take_goes_to_the_other_primaries_before_it_expires(tmp_path):
    """A write acknowledged with w=2 by one primary and this hint: if the hint expired undelivered, the write would
    rest on that primary's disk alone, and losing it (a truncated log) would lose the write although only one of
    its two copies was lost (found by simulator seed 30018 with 5 nodes)."""
    import asyncio

    from dynafast.net.messages import Msg
    from dynafast.sim.clock import SimClock
    from dynafast.sim.loop import SimLoop

    loop = SimLoop()
    try:
        clock = SimClock(loop)
        membership, transport = _Membership(), _Transport()
        with dynafast.open(tmp_path / "db", sync="none") as store:
            vnodes, handoff = _handoff(store, clock, membership, transport)
            write = S.new(b"v").update(None, b"coordinator", 1)
            vnodes.merge_in(7, b"k", write, "owner")

            async def rounds():
                delivered = []
                for _ in range(11):  # every half second, past the window
                    delivered.append(await handoff.deliver())
                    await asyncio.sleep(0.5)
                return delivered

            membership.down = {"coordinator"}  # down for now: its copy is the one that may be lost
            loop.run_until_complete(rounds())
            others = [address for address, msg in transport.calls if msg == Msg.TRANSFER]
            assert others and set(others) == {"other"}, transport.calls
            assert others.count("other") == 1  # once per version, not every round
            assert handoff.expired == 1 and list(vnodes.hints("owner")) == []  # expired: not every primary took it

            # Every other primary up: once they all took the aged hint it is dropped, before it expires.
            transport.calls.clear()
            membership.down = set()
            vnodes.merge_in(7, b"k2", write, "owner")
            loop.run_until_complete(rounds())
            assert {a for a, m in transport.calls if m == Msg.TRANSFER} == {"coordinator", "other"}
            assert handoff.expired == 1 and list(vnodes.hints("owner")) == []
    finally:
        loop.close()
