"""Gossip dissemination and failure detection, simulated in-process on a deterministic clock."""
import asyncio
import hashlib
import itertools
import math
import random
import time

import pytest

from dynafast._impl import ring as rings
from dynafast.cluster.failure import FailureDetector
from dynafast.cluster.gossip import GossipCore, exchange
from dynafast.cluster.membership import LEFT, MAX_MEMBERS, VALID, ClusterState, Member
from dynafast.errors import ProtocolError


class Version:
    """The smallest state gossip can carry: a version and its digest."""

    def __init__(self, version, payload=b""):
        self.version = version
        self.payload = payload

    def digest(self):
        return hashlib.blake2b(self.payload + self.version.to_bytes(8, "big"), digest_size=8).digest()


class StateOnlyCore(GossipCore):
    """A member whose gossip messages carry the state but no heartbeat counters.

    How a change spreads depends only on the peers chosen and the states merged, never on the counters: the
    full-protocol test below checks that the rounds come out the same. Merging every member's counter into
    every member (a failure detector per pair) made the state-only claims cost a minute of the suite.
    """

    def message(self):
        return [], [], self.state


def gossip_rounds(n, seed, core=StateOnlyCore):
    """Members gossip push-pull with one random peer per round; yields the members after each round."""
    rng = random.Random(seed)
    ids = [f"m{i}" for i in range(n)]
    cores = [core(i, Version(1), rng=random.Random(rng.random())) for i in ids]
    cores[0].state = Version(2, b"change")
    for round_no in itertools.count(1):
        now = float(round_no)
        for member in cores:
            member.tick()
        order = list(range(n))
        rng.shuffle(order)
        for i in order:
            peer = cores[i].choose_peer(ids)
            exchange(cores[i], cores[int(peer[1:])], now)
        yield cores


def everyone_has_the_change(cores):
    return all(member.state.version == 2 for member in cores)


def simulate(n, seed, rounds_limit=100):
    """Rounds until every member has the change made at one of them (None beyond rounds_limit)."""
    for round_no, cores in enumerate(gossip_rounds(n, seed), 1):
        if everyone_has_the_change(cores):
            return round_no
        if round_no == rounds_limit:
            return None


def test_a_change_reaches_1000_members_in_log_rounds():
    rounds = [simulate(1000, seed) for seed in range(3)]
    assert all(r is not None for r in rounds)
    # push-pull spreads in about log2(n) + ln(ln(n)) rounds; allow a generous constant, still O(log n)
    assert max(rounds) <= 2 * math.ceil(math.log2(1000))
    print(f"rounds to converge over 1,000 members: {rounds}")


def test_rounds_grow_logarithmically():
    small = max(simulate(16, seed) for seed in range(3))
    large = max(simulate(512, seed) for seed in range(3))
    # 32x more members costs a few more rounds, not 32x more
    assert large <= small + 2 * math.log2(512 / 16) + 2


@pytest.mark.parametrize("n", [200, pytest.param(1000, marks=pytest.mark.soak)])
def test_full_messages_spread_the_change_as_fast_and_every_heartbeat(n):
    # The real messages: every member's heartbeat counter, merged into a failure detector per peer.
    ids = {f"m{i}" for i in range(n)}
    spread = None
    for round_no, cores in enumerate(gossip_rounds(n, seed=0, core=GossipCore), 1):
        if spread is None and everyone_has_the_change(cores):
            spread = round_no
        if spread is not None and all(len(member.heartbeats) == n for member in cores):
            break
        assert round_no < 100
    assert spread == simulate(n, seed=0)  # the counters do not steer the state
    # every counter is a change of its own that spreads the same way, so all of them arrive in O(log n) too
    assert round_no <= 2 * math.ceil(math.log2(n)) + 2
    assert all(set(member.detector.peers) == ids - {member.node_id} for member in cores)
    print(f"{n} members: the change in {spread} rounds, every heartbeat in {round_no}")


def test_heartbeats_spread_and_silence_is_detected():
    ids = [f"m{i}" for i in range(20)]
    rng = random.Random(7)
    cores = {i: GossipCore(i, Version(1), detector=FailureDetector(8.0), rng=random.Random(rng.random()))
             for i in ids}
    dead = "m13"
    for round_no in range(1, 60):
        now = float(round_no)
        for node_id, core in cores.items():
            if node_id == dead and round_no > 30:
                continue  # crashed: no more rounds, no answers
            core.tick()
            peer = core.choose_peer(ids)
            if peer == dead and round_no > 30:
                continue
            exchange(core, cores[peer], now)
    observer = cores["m0"]
    assert not observer.detector.available(dead, 59.0)
    alive = [i for i in ids if i not in (dead, "m0")]
    assert all(observer.detector.available(i, 59.0) for i in alive)


def test_newer_state_wins_and_ties_break_by_digest():
    a = GossipCore("a", Version(3, b"x"))
    b = GossipCore("b", Version(2, b"y"))
    exchange(a, b, 1.0)
    assert a.state.version == b.state.version == 3
    c = GossipCore("c", Version(5, b"p"))
    d = GossipCore("d", Version(5, b"q"))
    exchange(c, d, 1.0)
    assert c.state is d.state


def test_cluster_state_round_trips_and_plans_transfers():
    ring = rings.Ring(64, ["n1", "n2", "n3"], n=3)
    nxt = ring.with_members(["n1", "n2", "n3", "n4"])
    members = {i: Member(i, f"127.0.0.1:{7100 + k}", "", VALID) for k, i in enumerate(["n1", "n2", "n3", "n4"])}
    state = ClusterState(9, members, ring, nxt, {(1, "n4")})
    back = ClusterState.from_fields(state.to_fields(), rings)
    assert back.digest() == state.digest()
    assert back.version == 9 and back.done == {(1, "n4")}
    needed = state.required_transfers()
    # exactly the partitions whose replica set gains n4, each once
    assert {t for _, t in needed} == {"n4"}
    assert len(needed) == sum(1 for p in range(64) if "n4" in nxt.replicas(p) and "n4" not in ring.replicas(p))


def test_a_restarted_member_is_heard_at_once():
    a = GossipCore("a", Version(1), detector=FailureDetector(8.0))
    old = GossipCore("b", Version(1), generation=3)  # a first life that went on for many rounds
    for _ in range(100_000):
        old.tick()
    exchange(a, old, 1.0)
    reborn = GossipCore("b", Version(1), generation=4)  # same id, the next start: no wall clock involved
    reborn.tick()
    before = a.heartbeats["b"]
    exchange(a, reborn, 2.0)
    assert a.heartbeats["b"] > before


def test_heartbeats_of_older_nodes_rank_below_any_generation():
    """Older nodes began their heartbeats at their wall clock in milliseconds: an upgraded node must beat above."""
    a = GossipCore("a", Version(1), detector=FailureDetector(8.0))
    a.receive(["b"], [int(time.time() * 1000) + 86_400_000], None, 1.0)
    upgraded = GossipCore("b", Version(1), generation=1)
    exchange(a, upgraded, 2.0)
    assert a.heartbeats["b"] == upgraded.heartbeat


def test_a_node_that_lost_its_generation_moves_past_what_peers_remember():
    a = GossipCore("a", Version(1), detector=FailureDetector(8.0))
    first = GossipCore("b", Version(1), generation=7)
    first.tick()
    exchange(a, first, 1.0)
    wiped = GossipCore("b", Version(1), generation=1)  # its data directory, generation file included, is gone
    exchange(wiped, a, 2.0)  # a's reply carries b's old heartbeat back
    assert wiped.generation == 8
    before = a.heartbeats["b"]
    wiped.tick()
    exchange(wiped, a, 3.0)
    assert a.heartbeats["b"] > before


def test_generation_is_saved_at_every_start(tmp_path):
    from dynafast.cluster import generation
    from dynafast.cluster.ports import DirectoryFiles

    files = DirectoryFiles(tmp_path)
    assert [generation.begin(files) for _ in range(3)] == [1, 2, 3]
    (tmp_path / generation.FILE).write_bytes(b"garbage")
    assert generation.begin(files) == 1  # unreadable: peers will hand back how far we got
    assert generation.begin(DirectoryFiles(tmp_path)) == 2


def test_leave_before_the_join_finished_ends_in_left(tmp_path):
    import asyncio

    import random

    from dynafast.cluster.membership import LEFT, ClusterMembership
    from dynafast.cluster.ports import DirectoryFiles, SystemClock
    from dynafast.config import NodeConfig

    async def scenario():
        config = NodeConfig(node_id="a", listen="127.0.0.1:7001", data_dir=str(tmp_path))
        m = ClusterMembership(config, None, clock=SystemClock(), rng=random.Random(0), files=DirectoryFiles(tmp_path))
        m._spread = lambda: None  # no peers to tell in this in-process test
        await m.start()
        try:
            m.handle_join(("b", "127.0.0.1:7002", ""))
            assert m.state.next_ring is not None
            m.handle_leave(("b",))
            assert m.state.members["b"].status == LEFT
            assert m.state.next_ring is None and "b" not in m.state.ring.members
            # and it may come back
            m.handle_join(("b", "127.0.0.1:7002", ""))
            assert m.state.members["b"].status != LEFT
        finally:
            await m.stop()

    asyncio.run(scenario())


def test_the_address_of_a_node_that_is_no_member_is_unavailable(tmp_path):
    """A job for a node that a newer cluster state dropped (a transfer towards a joiner that was replaced) must
    fail as a call to a dead peer does, not with a KeyError that kills the job's task unseen (found by the
    simulator)."""
    import asyncio
    import random

    from dynafast.cluster.membership import ClusterMembership
    from dynafast.cluster.ports import DirectoryFiles, SystemClock
    from dynafast.config import NodeConfig
    from dynafast.errors import Unavailable

    async def scenario():
        config = NodeConfig(node_id="a", listen="127.0.0.1:7001", data_dir=str(tmp_path))
        m = ClusterMembership(config, None, clock=SystemClock(), rng=random.Random(0), files=DirectoryFiles(tmp_path))
        await m.start()
        try:
            assert m.address_of("a") == "127.0.0.1:7001"
            with pytest.raises(Unavailable):
                m.address_of("gone")
        finally:
            await m.stop()

    asyncio.run(scenario())


def test_heartbeats_of_ids_that_are_no_members_are_not_taken_in():
    core = GossipCore("a")
    core.receive(["b", "ghost"], [5, 7], None, now=1.0, members={"a", "b"})
    assert set(core.heartbeats) == {"a", "b"}
    assert set(core.message()[0]) == {"a", "b"}  # so never passed on


def test_a_cluster_state_naming_too_many_members_is_refused():
    ids = [f"n{i:05d}" for i in range(MAX_MEMBERS + 1)]
    ring = rings.Ring(64, ids[:3], n=3)
    fields = (ring.to_bytes(), ids, ["127.0.0.1:1"] * len(ids), [""] * len(ids), [VALID] * len(ids), 2, None,
              [], [])
    with pytest.raises(ProtocolError):
        ClusterState.from_fields(fields, rings)
    ok = ClusterState.from_fields((ring.to_bytes(), ids[:3], ["127.0.0.1:1"] * 3, [""] * 3, [VALID] * 3, 2, None,
                                   [], []), rings)
    assert sorted(ok.members) == ids[:3]


class _Clock:
    def __init__(self):
        self.now = 1000.0

    def monotonic(self):
        return self.now


def _membership_of(tmp_path, node_id, state):
    """A ClusterMembership holding ``state`` on a clock of its own (``m.clock.now``), with nobody to push its
    changes to (no transport)."""
    import random

    from dynafast.cluster.membership import ClusterMembership
    from dynafast.cluster.ports import DirectoryFiles
    from dynafast.config import NodeConfig

    tmp_path.mkdir(exist_ok=True)
    config = NodeConfig(node_id=node_id, listen="127.0.0.1:7001", data_dir=str(tmp_path))
    m = ClusterMembership(config, None, clock=_Clock(), rng=random.Random(0), files=DirectoryFiles(tmp_path))
    m._spread = lambda: None
    m._adopt(state, force=True)
    return m


def _settle(m, seconds=None):
    """Let time pass (by default the claimant's settle grace) and the node look at its peers again."""
    m.clock.now += m.settle_grace if seconds is None else seconds
    m._refresh_liveness()


def _five_valid_members(joining=()):
    ids = ["a", "b", "c", "d", "e"]
    members = {i: Member(i, f"127.0.0.1:{7001 + k}") for k, i in enumerate(ids)}
    for k, i in enumerate(joining):
        members[i] = Member(i, f"127.0.0.1:{7101 + k}", status="joining")
    return ClusterState(5, members, rings.Ring(64, ids, n=3))


def _cut_off(m, *node_ids):
    for node_id in node_ids:
        m.mark_down(node_id, ConnectionRefusedError())


def test_a_claimant_cut_off_from_most_members_refuses_joins_and_leaves(tmp_path):
    """During a partition each side has a claimant of its own. The minority side's must change nothing: after the
    heal the state with the higher version wins, and would silently undo the other side's committed changes (the
    simulator saw a "has left" undone, and the ring change then waited forever for the node that had stopped)."""
    from dynafast.errors import Unavailable

    m = _membership_of(tmp_path, "a", _five_valid_members())
    _cut_off(m, "c", "d", "e")
    assert m.claimant() == "a"
    with pytest.raises(Unavailable, match="no majority of members reachable"):
        m.handle_join(("f", "127.0.0.1:7006", ""))
    with pytest.raises(Unavailable, match="no majority of members reachable"):
        m.handle_leave(("b",))
    assert m.state.version == 5 and "f" not in m.state.members and m.state.members["b"].status == VALID
    m.mark_up("c")  # three of five: a majority, but only just: the join is answered once the claimant settled
    waiting = m.handle_join(("f", "127.0.0.1:7006", ""))
    assert asyncio.iscoroutine(waiting) and m.state.version == 5
    waiting.close()
    _settle(m)
    m.handle_join(("f", "127.0.0.1:7006", ""))
    m.handle_leave(("b",))
    assert m.state.version == 7
    assert m.state.members["f"].status == "joining" and m.state.members["b"].status == "leaving"


def test_a_claimant_cut_off_from_most_members_activates_no_ring_and_records_no_transfer(tmp_path):
    from dynafast.errors import Unavailable

    state = _five_valid_members(joining=("f",))
    m = _membership_of(tmp_path, "a", state)
    new = m.state.copy()
    m._plan(new)
    required = sorted(new.required_transfers())
    new.done = set(required[1:])
    m._adopt(new, force=True)
    _cut_off(m, "c", "d", "e")
    fields = ([required[0][0]], [required[0][1]], new.next_ring.digest())
    with pytest.raises(Unavailable, match="no majority of members reachable"):
        m.handle_transfer_done(fields)
    assert m.state.version == 5 and len(m.state.done) == len(required) - 1
    m.mark_up("d")
    _settle(m)
    assert m.handle_transfer_done(fields) == (True,)  # recorded, and the ring is activated
    assert m.state.next_ring is None and m.state.members["f"].status == VALID and "f" in m.state.ring.members
    version = m.state.version
    m.mark_up("c")
    m.mark_up("e")
    # Another ring change, finished while the claimant is cut off again: activated only once a majority is back.
    m.handle_leave(("e",))
    leave = m.state.copy()
    leave.done = leave.required_transfers()
    m._adopt(leave, force=True)
    _cut_off(m, "b", "c", "d")  # e (leaving) is up, but a, e and f are three of six
    m.check_claimant_duties()
    assert m.state.next_ring is not None and m.state.members["e"].status == "leaving"
    assert m.state.version == version + 1
    m.mark_up("b")
    m.mark_up("c")  # five of six, and four of the five that vote after the change
    m.check_claimant_duties()
    assert m.state.next_ring is not None  # a majority that just came back: first gossip brings newer states
    _settle(m)
    m.check_claimant_duties()
    assert m.state.next_ring is None and m.state.members["e"].status == "left"


def test_the_smallest_clusters_keep_the_changes_a_majority_allows(tmp_path):
    """One node is its own majority; with three, two up may still remove the third; a joiner that died half-way
    through its join does not count, so the others may still remove it; two members with one down change
    nothing."""
    from dynafast.errors import Unavailable

    one = ClusterState(1, {"a": Member("a", "127.0.0.1:7001")}, rings.Ring(64, ["a"], n=3))
    m = _membership_of(tmp_path / "one", "a", one)
    m.handle_join(("b", "127.0.0.1:7002", ""))
    _cut_off(m, "b")
    m.check_claimant_duties()
    assert m.state.members["b"].status == "joining"  # not activated: b would vote, and is down
    m.handle_leave(("b",))  # but a alone may remove it
    assert m.state.members["b"].status == LEFT and list(m.state.ring.members) == ["a"]

    three = ClusterState(1, {i: Member(i, f"127.0.0.1:{7001 + k}") for k, i in enumerate("abc")},
                         rings.Ring(64, ["a", "b", "c"], n=3))
    m = _membership_of(tmp_path / "three", "a", three)
    _cut_off(m, "c")
    _settle(m)
    m.handle_leave(("c",))
    assert m.state.members["c"].status == "leaving"

    two = ClusterState(1, {i: Member(i, f"127.0.0.1:{7001 + k}") for k, i in enumerate("ab")},
                       rings.Ring(64, ["a", "b"], n=3))
    m = _membership_of(tmp_path / "two", "a", two)
    _cut_off(m, "b")
    with pytest.raises(Unavailable, match="1 of 2"):
        m.handle_leave(("b",))


def test_a_node_taking_over_as_claimant_waits_before_it_changes_anything(tmp_path):
    """When a partition starts, the nodes of each side mark the other side's down one by one. A node that becomes
    the claimant the moment the usual one is marked down could still count the other side's nodes towards its
    majority while the usual claimant, over there, still counts this side's: both would commit. A node that
    took over waits a little first (as does one whose majority just came back, above)."""
    from dynafast.errors import Unavailable

    m = _membership_of(tmp_path, "b", _five_valid_members())
    assert m.claimant() == "a"
    _settle(m)
    _cut_off(m, "a")
    assert m.claimant() == "b"
    waiting = m.handle_join(("f", "127.0.0.1:7006", ""))  # answered once the grace is over
    assert asyncio.iscoroutine(waiting) and "f" not in m.state.members
    waiting.close()
    _settle(m, m.settle_grace / 2)
    with pytest.raises(Unavailable, match="became the claimant with a majority up only now"):
        m._require_majority("change anything")
    _settle(m, m.settle_grace / 2)
    m.handle_leave(("a",))  # four of five up, claimant for long enough: the dead "a" may be removed
    assert m.state.members["a"].status == "leaving"


def test_a_leave_sent_during_the_claimants_wait_is_answered_once_the_wait_is_over(tmp_path, monkeypatch):
    """It was refused (Unavailable), and an operator had to send it again; a join is the same, though a joining
    node retries by itself."""
    from dynafast.cluster import membership

    m = _membership_of(tmp_path, "b", _five_valid_members())
    _settle(m)
    _cut_off(m, "a")
    version = m.state.version
    slept = []

    async def sleep(seconds):  # the claimant's clock, not the test's time
        slept.append(seconds)
        _settle(m, seconds)

    monkeypatch.setattr(membership.asyncio, "sleep", sleep)
    assert asyncio.run(m.handle_leave(("a",))) == (version + 1,)
    assert m.state.members["a"].status == "leaving" and slept == [pytest.approx(m.settle_grace)]
