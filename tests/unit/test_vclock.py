"""Vector clocks and dotted version vector sets, on the compiled build and the reference, and against each other."""
import itertools
import pickle
import random

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from dynafast import _impl
from dynafast.errors import ProtocolError
from dynafast.testing import builds

from conftest import implementations

impl = implementations("vclock")

# The fixture only hands out a module, so sharing it between hypothesis examples is safe.
SETTINGS = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

ACTORS = [b"a", b"b", b"c", b"n1", b"n2", b"\x00", b"\xff\xfe"]
actors = st.sampled_from(ACTORS)
counters = st.one_of(st.integers(0, 6), st.integers(0, 2**64 - 1))
stamps = st.one_of(st.integers(0, 100), st.integers(0, 2**64 - 1))
raw_entries = st.lists(st.tuples(actors, counters, stamps), max_size=8)


def both():
    """(compiled, reference), skipping when the extension is not built."""
    return builds.compiled_or_skip("vclock"), _impl.reference("vclock")


# -- vector clocks ------------------------------------------------------------------------------------------
def test_constants(impl):
    assert (impl.EQUAL, impl.DESCENDS, impl.DOMINATED, impl.CONCURRENT) == (0, 1, 2, 3)


def test_basic_clock(impl):
    v = impl.VClock()
    assert len(v) == 0 and v.entries() == [] and v.get(b"a") == 0
    a = v.increment(b"a", 5)
    assert v.get(b"a") == 0, "increment must return a new clock"
    assert a.get(b"a") == 1 and a.entries() == [(b"a", 1, 5)]
    ab = a.increment(b"b", 7).increment(b"a", 9)
    assert ab.entries() == [(b"a", 2, 9), (b"b", 1, 7)]
    assert ab.compare(a) == impl.DESCENDS and a.compare(ab) == impl.DOMINATED
    assert ab.descends(a) and not a.descends(ab) and a.descends(a)
    c = a.increment(b"c")
    assert c.compare(ab) == impl.CONCURRENT and not c.descends(ab)
    assert ab.merge(c).entries() == [(b"a", 2, 9), (b"b", 1, 7), (b"c", 1, 0)]
    assert repr(a) == "VClock([(b'a', 1, 5)])"


def test_constructor_normalises(impl):
    v = impl.VClock([(b"b", 1, 1), (b"a", 0, 3), (b"b", 3, 2), (b"b", 3, 4), (b"c", 2, 9)])
    # zero counters are absent entries; a repeated actor merges like merge() does
    assert v.entries() == [(b"b", 3, 4), (b"c", 2, 9)]
    with pytest.raises(TypeError):
        impl.VClock([("a", 1, 1)])
    with pytest.raises(ValueError):
        impl.VClock([(b"a", -1, 1)])
    with pytest.raises(ValueError):
        impl.VClock([(b"a", 1, 2**64)])
    with pytest.raises(TypeError):
        impl.VClock().increment("a")
    with pytest.raises(ValueError):
        impl.VClock([(b"a", 2**64 - 1, 0)]).increment(b"a")


def test_merge_timestamps(impl):
    a = impl.VClock([(b"x", 3, 10)])
    b = impl.VClock([(b"x", 2, 50)])
    c = impl.VClock([(b"x", 3, 20)])
    assert a.merge(b).entries() == [(b"x", 3, 10)]  # the timestamp of the larger counter
    assert a.merge(c).entries() == [(b"x", 3, 20)]  # the larger timestamp on a tie


@SETTINGS
@given(x=raw_entries, y=raw_entries, z=raw_entries)
def test_clock_laws(impl, x, y, z):
    a, b, c = impl.VClock(x), impl.VClock(y), impl.VClock(z)
    assert a.merge(b) == b.merge(a)
    assert a.merge(b).merge(c) == a.merge(b.merge(c))
    assert a.merge(a) == a
    m = a.merge(b)
    assert m.descends(a) and m.descends(b)
    flipped = {impl.EQUAL: impl.EQUAL, impl.DESCENDS: impl.DOMINATED,
               impl.DOMINATED: impl.DESCENDS, impl.CONCURRENT: impl.CONCURRENT}
    assert b.compare(a) == flipped[a.compare(b)]
    counts = lambda v: {actor: n for actor, n, _t in v.entries()}  # noqa: E731
    ca, cb = counts(a), counts(b)
    keys = set(ca) | set(cb)
    ge = all(ca.get(k, 0) >= cb.get(k, 0) for k in keys)
    le = all(ca.get(k, 0) <= cb.get(k, 0) for k in keys)
    expected = impl.EQUAL if ge and le else impl.DESCENDS if ge else impl.DOMINATED if le else impl.CONCURRENT
    assert a.compare(b) == expected
    assert a.descends(b) == ge
    # a descends b exactly when merging b in changes no counter
    assert (m.compare(a) == impl.EQUAL) == ge
    for actor in ACTORS:
        assert m.get(actor) == max(a.get(actor), b.get(actor))
    entries = a.entries()
    assert [e[0] for e in entries] == sorted(e[0] for e in entries)
    assert len(a) == len(entries)


@SETTINGS
@given(x=raw_entries)
def test_clock_round_trip(impl, x):
    a = impl.VClock(x)
    data = a.to_bytes()
    assert isinstance(data, bytes)
    back = impl.VClock.from_bytes(data)
    assert back == a and back.entries() == a.entries() and hash(back) == hash(a)
    assert impl.VClock.from_bytes(bytearray(data)) == a
    assert impl.VClock.from_bytes(memoryview(data)) == a


def test_clock_encoding_is_compact(impl):
    v = impl.VClock([(b"n1", 1, 0), (b"n2", 300, 1)])
    assert v.to_bytes() == b"\x02\x02n1\x01\x00\x02n2\xac\x02\x01"
    assert impl.VClock().to_bytes() == b"\x00"


@pytest.mark.parametrize(
    "bad",
    [b"", b"\x01", b"\x01\x01a", b"\x01\x01a\x01", b"\x01\x01a\x00\x00",  # truncated / zero counter
     b"\x02\x01b\x01\x00\x01a\x01\x00",  # actors out of order
     b"\x02\x01a\x01\x00\x01a\x01\x00",  # repeated actor
     b"\x00\x00",  # trailing byte
     b"\x80\x00",  # overlong varint
     b"\x01\x01a" + b"\xff" * 10 + b"\x01",  # varint over 64 bits
     b"\xff\xff\xff\xff\x0f"],  # huge count
)
def test_clock_from_bytes_rejects(impl, bad):
    with pytest.raises(ProtocolError):
        impl.VClock.from_bytes(bad)


def test_clock_prune_rules(impl):
    def clock(n, ts_of):
        return impl.VClock([(b"a%03d" % i, 1, ts_of(i)) for i in range(n)])

    now = 1_000_000
    # not more than `small`: kept whatever the age
    assert len(clock(10, lambda i: 0).prune(now)) == 10
    # over small but the oldest is young: kept
    assert len(clock(60, lambda i: now - 5).prune(now)) == 60
    # over small, older than young but neither over big nor older than old: kept
    assert len(clock(30, lambda i: now - 100 if i else now).prune(now)) == 30
    # over big: oldest dropped down to big
    pruned = clock(60, lambda i: now - 1000 + i if i < 58 else now).prune(now)
    assert len(pruned) == 50
    assert pruned.entries()[0][0] == b"a010"  # the ten oldest went
    # older than old: dropped down to small
    pruned = clock(30, lambda i: now - 100_000 + i if i < 28 else now).prune(now)
    assert len(pruned) == 10 and pruned.entries()[0][0] == b"a020"
    # only the entries past `old` go; the rest are too recent
    pruned = clock(30, lambda i: now - 100_000 if i < 5 else now - 100).prune(now)
    assert len(pruned) == 25
    # custom limits; ties in age are broken by actor
    pruned = clock(5, lambda i: 0).prune(100, small=2, big=3, young=0, old=1000)
    assert [e[0] for e in pruned.entries()] == [b"a002", b"a003", b"a004"]
    # ages count from the second newest timestamp, not from `now` ...
    assert len(clock(30, lambda i: now - 100_000 + i).prune(now)) == 30
    # ... and not from the newest one: a single clock far ahead ages nothing
    assert len(clock(30, lambda i: now + 100_000 if i == 29 else now - 100 + i).prune(now + 100_000)) == 30
    # `now` still caps the ages (a timestamp in the future is younger than anything)
    assert len(clock(30, lambda i: now - 100_000 if i < 5 else now + 10).prune(now - 90_000)) == 30


def _prune_reference(entries, now):
    """Where ages count from: the second newest timestamp, or ``now`` if that is earlier."""
    stamps = sorted(t for _a, _c, t in entries)
    return min(now, stamps[-2] if len(stamps) > 1 else stamps[0]) if stamps else now


@SETTINGS
@given(x=raw_entries, now=st.integers(0, 200), small=st.integers(0, 4), big=st.integers(0, 8),
       young=st.integers(0, 50), old=st.integers(0, 100))
def test_clock_prune_model(impl, x, now, small, big, young, old):
    v = impl.VClock([(a, c, t % 150) for a, c, t in x])
    remaining = sorted(v.entries(), key=lambda e: (e[2], e[0]))
    ref = _prune_reference(remaining, now)
    while len(remaining) > small and ref - remaining[0][2] >= young and (
        len(remaining) > big or ref - remaining[0][2] > old
    ):
        remaining.pop(0)
    assert v.prune(now, small=small, big=big, young=young, old=old).entries() == sorted(remaining)


# -- sibling sets -------------------------------------------------------------------------------------------
def test_siblings_basics(impl):
    S = impl.Siblings
    e = S.empty()
    assert len(e) == 0 and e.values == [] and not e.is_deleted() and e.context() == b"\x00"
    w = S.new(b"v1")
    assert w.values == [b"v1"] and len(w) == 1
    s1 = w.update(None, b"n1", 10)
    assert s1.values == [b"v1"] and s1.clock().entries() == [(b"n1", 1, 10)]
    s2 = S.new(b"v2").update(s1, b"n1", 11)  # blind write: a sibling
    assert sorted(s2.values) == [b"v1", b"v2"]
    s3 = S.new(b"v3", s2.context()).update(s2, b"n2", 12)  # saw both: replaces both
    assert s3.values == [b"v3"] and s3.clock().entries() == [(b"n1", 2, 11), (b"n2", 1, 12)]
    assert s3.compare(s2) == impl.DESCENDS and s2.compare(s3) == impl.DOMINATED
    d = S.new(None, s3.context()).update(s3, b"n1", 13)
    assert d.values == [None] and d.is_deleted() and d.live_values() == [] and len(d) == 1
    both_ = S.new(b"x", s3.context()).update(d, b"n2", 14)
    assert sorted(both_.values, key=lambda v: (v is not None, v or b"")) == [None, b"x"]
    assert both_.live_values() == [b"x"] and not both_.is_deleted()
    assert S.from_bytes(both_.to_bytes()) == both_
    assert impl.VClock.from_bytes(both_.context()) == both_.clock()
    assert repr(s1) == "Siblings(values=[b'v1'], clock=VClock([(b'n1', 1, 10)]))"
    with pytest.raises(ValueError):
        s1.update(None, b"n1")  # a stored set is not a client write
    with pytest.raises(ProtocolError):
        S.new(b"v", b"\x01")
    with pytest.raises(TypeError):
        S.new("text")
    assert S.new(b"v", b"").values == [b"v"] and S.new(b"v", None).context() == b"\x00"


def test_lww(impl):
    S = impl.Siblings
    s = S.new(b"early").update(None, b"n2", 10)
    s = S.new(b"late").update(s, b"n1", 20)
    s = S.new(b"tie-low").update(s, b"n1", 15)
    s = S.new(b"tie-high").update(s, b"n3", 15)
    w = s.lww()
    assert w.values == [b"late"] and w.clock() == s.clock()
    s = S.new(b"same-a").update(None, b"a", 5)
    s = S.new(b"same-b").update(s, b"b", 5)
    assert s.lww().values == [b"same-b"]
    assert S.empty().lww() == S.empty()
    # a later write with the lww context supersedes everything
    assert S.new(b"z", s.lww().context()).update(s, b"a", 6).values == [b"z"]


def test_sibling_explosion_bounded(impl):
    """Riak's sibling explosion: clients write with stale contexts through one coordinator.

    Each client writes with the context it got back from its own previous write, so it never saw the other
    clients' writes made since. With one vector clock per object stamped with the coordinator's id, a write
    whose context does not descend the stored clock cannot tell which siblings it saw: to lose no update it
    keeps them all, and siblings grow with every write. Dotted version vectors know each sibling's dot and
    keep at most one per client.
    """
    S, V = impl.Siblings, impl.VClock
    clients = 4
    rounds = 30
    stored = None
    contexts = [None] * clients
    naive_values, naive_clock, naive_contexts = [], V(), [V()] * clients
    most = 0
    for r in range(rounds):
        for c in range(clients):
            value = b"c%d-r%d" % (c, r)
            stored = S.new(value, contexts[c]).update(stored, b"coordinator", r)
            contexts[c] = stored.context()  # what the client reads back with its write's reply
            most = max(most, len(stored))
            # the plain vector clock scheme: one clock per object, the vnode's single actor
            if naive_contexts[c].descends(naive_clock):
                naive_values = [value]
            else:
                naive_values.append(value)
            naive_clock = naive_clock.merge(naive_contexts[c]).increment(b"coordinator", r)
            naive_contexts[c] = naive_clock
        assert len(stored) <= clients
        # every client's latest write survives: nothing was lost
        assert sorted(stored.values) == sorted(b"c%d-r%d" % (c, r) for c in range(clients))
    assert most <= clients
    # the plain scheme kept every write ever made
    assert len(naive_values) == rounds * clients


def test_siblings_from_bytes_rejects(impl):
    S = impl.Siblings
    good = S.new(b"v2", S.new(b"v1").update(None, b"a", 1).context()).update(None, b"b", 2)
    data = good.to_bytes()
    assert S.from_bytes(data) == good
    for bad in [b"", b"\x02\x00\x00", data + b"\x00", data[:-1],
                b"\x01\x00\x01\x01a\x01\x00\x01\x01\x00\x00",  # dot 0 (gap past the counter)
                b"\x01\x02\x00\x00\x00\x00\x00"]:  # anonymous values repeated
        with pytest.raises(ProtocolError):
            S.from_bytes(bad)


def test_types_and_pickle(impl):
    S, V = impl.Siblings, impl.VClock
    s = S.new(b"v", V([(b"a", 2, 3)])).update(None, b"b", 4)
    assert S.new(b"v", V([(b"a", 2, 3)])).context() == V([(b"a", 2, 3)]).to_bytes()
    assert pickle.loads(pickle.dumps(s)) == s
    assert pickle.loads(pickle.dumps(s.clock())) == s.clock()
    with pytest.raises(TypeError):
        hash(s)
    assert hash(V([(b"a", 1, 1)])) == hash(V([(b"a", 1, 1)]))
    assert V([(b"a", 1, 1)]) != V([(b"a", 1, 2)])  # equality includes timestamps; compare() does not
    assert V([(b"a", 1, 1)]).compare(V([(b"a", 1, 2)])) == impl.EQUAL
    assert (s == 1) is False and (V() == b"") is False
    for call in (lambda: s.sync(s.clock()), lambda: s.compare(None), lambda: V().merge(s),
                 lambda: V().compare(s), lambda: S.new(b"v").update(s.clock(), b"a"),
                 lambda: S.new(b"v").update(None, "a"), lambda: V().prune("1"),
                 lambda: S.new(b"v").update(None, b"a", 1.5)):
        with pytest.raises(TypeError):
            call()
    with pytest.raises(ValueError):
        V().prune(-1)
    with pytest.raises(ValueError):
        S.new(b"v").update(None, b"a", 2**64)


@st.composite
def histories(draw):
    """A random run of client reads, coordinated writes and replica syncs over three replicas."""
    ops = []
    for _ in range(draw(st.integers(1, 40))):
        kind = draw(st.sampled_from(["read", "write", "write", "sync"]))
        if kind == "read":
            ops.append(("read", draw(st.integers(0, 2)), draw(st.integers(0, 2))))  # client, replica
        elif kind == "write":
            ops.append(("write", draw(st.integers(0, 2)), draw(st.integers(0, 2)), draw(st.booleans()),
                        draw(st.integers(0, 3))))  # client, coordinator, tombstone, time step
        else:
            ops.append(("sync", draw(st.integers(0, 2)), draw(st.integers(0, 2))))  # from, to
    return ops


def run_history(mod, ops, check_model=True):
    """Apply ops to three replicas; check each against a model of which writes saw which; return the bytes."""
    S = mod.Siblings
    replicas = [S.empty() for _ in range(3)]
    present = [set() for _ in range(3)]  # writes each replica has received, superseded ones included
    known = [set() for _ in range(3)]  # writes in each replica's causal history
    saw = {}  # write id -> the writes its context covered
    client_ctx = [(b"", frozenset()) for _ in range(3)]
    values = {}
    now = 0
    trace = []
    for n, op in enumerate(ops):
        if op[0] == "read":
            _, c, r = op
            client_ctx[c] = (replicas[r].context(), frozenset(known[r]))
        elif op[0] == "write":
            _, c, r, tomb, step = op
            now += step
            ctx, seen = client_ctx[c]
            value = None if tomb else b"w%d" % n
            values[n] = value
            replicas[r] = S.new(value, ctx).update(replicas[r], b"node-%d" % r, now)
            saw[n] = seen
            present[r].add(n)
            known[r] |= seen | {n}
            client_ctx[c] = (replicas[r].context(), frozenset(known[r]))  # the reply carries the new context
        else:
            _, a, b = op
            replicas[b] = replicas[b].sync(replicas[a])
            present[b] |= present[a]
            known[b] |= known[a]
        if check_model:
            for r in range(3):
                superseded = set().union(*(saw[w] for w in present[r])) if present[r] else set()
                expected = [values[w] for w in present[r] - superseded]
                key = lambda v: (v is not None, v or b"")  # noqa: E731
                assert sorted(replicas[r].values, key=key) == sorted(expected, key=key), (n, r)
        trace.append([s.to_bytes() for s in replicas])
    return replicas, trace


@SETTINGS
@given(ops=histories())
def test_siblings_match_causality_model(impl, ops):
    run_history(impl, ops)


@SETTINGS
@given(ops=histories(), order=st.randoms(use_true_random=False))
def test_reconcile_converges_in_any_order(impl, ops, order):
    replicas, _ = run_history(impl, ops, check_model=False)
    S = impl.Siblings
    merged = impl.reconcile(replicas)
    shuffled = list(replicas) * 2
    order.shuffle(shuffled)
    assert impl.reconcile(shuffled) == merged
    assert merged.digest() == impl.reconcile(shuffled).digest() and len(merged.digest()) == 16
    # sync is commutative, associative and idempotent
    a, b, c = replicas
    assert a.sync(b) == b.sync(a)
    assert a.sync(b).sync(c) == a.sync(b.sync(c))
    assert a.sync(a) == a and merged.sync(a) == merged
    # the merged set descends every replica, and its context covers each of them
    for r in replicas:
        assert merged.compare(r) in (impl.EQUAL, impl.DESCENDS)
        assert impl.VClock.from_bytes(merged.context()).descends(r.clock())
        assert S.from_bytes(r.to_bytes()) == r
    assert impl.reconcile([]) == S.empty()
    # a write that read the merged context supersedes every sibling anywhere
    final = S.new(b"final", merged.context()).update(replicas[0], b"node-0", 999)
    for r in replicas:
        assert final.sync(r).values == [b"final"]


@SETTINGS
@given(ops=histories(), now=st.integers(0, 200), small=st.integers(0, 3), big=st.integers(0, 4))
def test_siblings_prune_keeps_siblings(impl, ops, now, small, big):
    replicas, _ = run_history(impl, ops, check_model=False)
    merged = impl.reconcile(replicas)
    pruned = merged.prune(now, small=small, big=big, young=0, old=10)
    assert pruned.values == merged.values
    assert set(pruned.clock().entries()) <= set(merged.clock().entries())
    assert pruned.compare(merged) in (impl.EQUAL, impl.DOMINATED)
    assert impl.Siblings.from_bytes(pruned.to_bytes()) == pruned


def test_siblings_prune_keeps_entries_with_siblings(impl):
    S = impl.Siblings
    chain = None
    for i in range(1, 30):  # 29 actors, each write saw the one before: one sibling, at a29; the last two late
        chain = S.new(b"c%d" % i, chain.context() if chain else None).update(chain, b"a%02d" % i,
                                                                               i if i < 28 else 10**6)
    x = S.new(b"x").update(None, b"actor-x", 0)  # the oldest entry, and it holds a sibling
    merged = chain.sync(x)
    assert sorted(merged.values) == [b"c29", b"x"] and len(merged.clock()) == 30
    pruned = merged.prune(10**6)
    assert [a for a, _c, _t in pruned.clock().entries()] == [b"a%02d" % i for i in range(21, 30)] + [b"actor-x"]
    assert pruned.values == merged.values
    assert merged.prune(10).clock() == merged.clock()  # the oldest entry is younger than `young`
    assert merged.prune(25).clock() == merged.clock()  # old enough, but neither over `big` nor older than `old`


def test_prune_after_a_forward_clock_jump_brings_no_replaced_value_back(impl):
    """A coordinator whose wall clock jumped two days ahead stamps a write: pruning with its `now` would age every
    other entry past `old` and drop the oldest ones, although they are seconds old. A replica that missed the
    later writes still holds the first value under the first actor; with that actor's entry gone from the new
    clock, syncing the two makes the replaced first value a sibling again."""
    S = impl.Siblings
    t0 = 1_800_000_000
    chain = None
    stale = None
    for i in range(12):  # twelve coordinators, one after the other, each write saw the one before
        chain = S.new(b"v%d" % i, chain.context() if chain else None).update(chain, b"node%02d" % i, t0 + i)
        if i == 0:
            stale = chain  # a replica that missed every later write
    jumped = t0 + 12 + 2 * 86400
    stored = S.new(b"new", chain.context()).update(chain, b"jumper", jumped).prune(jumped)
    assert stored.sync(stale).values == [b"new"]  # before: [b"v0", b"new"]
    assert stale.sync(stored).values == [b"new"]
    assert stored.clock().descends(stale.clock())
    # Honest age still prunes: once another coordinator's write is two days newer, the old entries go.
    later = S.new(b"newer", stored.context()).update(stored, b"node00", jumped + 1).prune(jumped + 1)
    assert len(later.clock()) == 10 and later.values == [b"newer"]


# -- the two builds agree -------------------------------------------------------------------------------------
@settings(max_examples=80, deadline=None)
@given(ops=histories())
def test_builds_agree_on_histories(ops):
    compiled, reference = both()
    rc, tc = run_history(compiled, ops, check_model=False)
    rr, tr = run_history(reference, ops, check_model=False)
    assert tc == tr
    assert [repr(s) for s in rc] == [repr(s) for s in rr]
    assert compiled.reconcile(rc).to_bytes() == reference.reconcile(rr).to_bytes()
    assert compiled.reconcile(rc).digest() == reference.reconcile(rr).digest()
    for a, b in zip(rc, rr):
        assert a.lww().to_bytes() == b.lww().to_bytes()
        assert a.prune(50, 1, 2, 0, 5).to_bytes() == b.prune(50, 1, 2, 0, 5).to_bytes()
        assert a.context() == b.context() and a.values == b.values and len(a) == len(b)
        assert a.is_deleted() == b.is_deleted() and a.live_values() == b.live_values()
        for c, d in zip(rc, rr):
            assert a.compare(c) == b.compare(d)
            assert a.sync(c).to_bytes() == b.sync(d).to_bytes()


@settings(max_examples=80, deadline=None)
@given(ops=histories(), actor=st.sampled_from([b"node-0", b"node-1", b"node-2", b"a", b"node-9"]),
       now=st.integers(0, 300), value=st.binary(max_size=8))
def test_supersede_is_a_write_with_the_whole_clock(ops, actor, now, value):
    """supersede() (built in one step where it can be) is new(value, clock).update(self).prune, in both builds."""
    compiled, reference = both()
    rc, _ = run_history(compiled, ops, check_model=False)
    rr, _ = run_history(reference, ops, check_model=False)
    for a, b in zip(rc + [compiled.reconcile(rc)], rr + [reference.reconcile(rr)]):
        slow = compiled.Siblings.new(value, a.clock()).update(a, actor, now).prune(now)
        fast = a.supersede(value, actor, now)
        assert fast == slow and fast.to_bytes() == slow.to_bytes()
        assert b.supersede(value, actor, now).to_bytes() == fast.to_bytes()
        assert fast.values == [value]


def _result(call):
    """What a call gives, in a form two builds can be compared on: its bytes, or the error it raised."""
    try:
        return "ok", call().to_bytes()
    except (ValueError, TypeError, ProtocolError) as exc:
        return type(exc), str(exc)


@settings(max_examples=120, deadline=None)
@given(x=raw_entries, y=raw_entries, now=st.integers(0, 200))
@example(x=[(b"n1", 2**64 - 1, 7)], y=[(b"n1", 2**64 - 1, 9)], now=3)  # increment overflows in both builds
def test_builds_agree_on_clocks(x, y, now):
    compiled, reference = both()
    a, b = compiled.VClock(x), compiled.VClock(y)
    p, q = reference.VClock(x), reference.VClock(y)
    assert a.to_bytes() == p.to_bytes() and repr(a) == repr(p)
    assert a.merge(b).to_bytes() == p.merge(q).to_bytes()
    assert a.compare(b) == p.compare(q) and a.descends(b) == p.descends(q)
    assert a.prune(now, 1, 3, 5, 60).to_bytes() == p.prune(now, 1, 3, 5, 60).to_bytes()
    # The counters may be drawn up to 2**64 - 1: then both builds must refuse the increment the same way.
    assert _result(lambda: a.increment(b"n1", now)) == _result(lambda: p.increment(b"n1", now))


def _outcome(fn, data):
    try:
        return ("ok", fn(data).to_bytes())
    except ProtocolError:
        return ("error",)


@settings(max_examples=300, deadline=None)
@given(data=st.one_of(st.binary(max_size=40),
                      st.builds(lambda a, b: a + b, st.sampled_from([b"\x01", b"\x02", b"\x01\x00\x01", b"\x01\x01"]),
                                st.binary(max_size=30))))
def test_garbage_never_crashes(data):
    compiled, reference = both()
    for name in ("VClock", "Siblings"):
        got = _outcome(getattr(compiled, name).from_bytes, data)
        assert got == _outcome(getattr(reference, name).from_bytes, data)
        if got[0] == "ok":
            assert got[1] == data  # whatever decodes is canonical: it encodes back to the same bytes


def test_mutated_encodings_never_crash():
    compiled, reference = both()
    rng = random.Random(7)
    s = reference.Siblings.new(b"x").update(None, b"n1", 1)
    for i in range(6):
        s = reference.Siblings.new(b"v%d" % i, s.context() if i % 2 else None).update(s, b"n%d" % (i % 3), i)
    seeds = [s.to_bytes(), s.clock().to_bytes()]
    for seed, _ in itertools.product(seeds, range(400)):
        data = bytearray(seed)
        for _ in range(rng.randint(1, 3)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        data = bytes(data[: rng.randint(0, len(data))]) if rng.random() < 0.3 else bytes(data)
        for name in ("VClock", "Siblings"):
            assert _outcome(getattr(compiled, name).from_bytes, data) == _outcome(
                getattr(reference, name).from_bytes, data)


def test_digest_is_murmur3_x64_128_of_the_encoding(impl):
    """Both builds, on every host: nodes of either build compare anti-entropy trees built from these."""
    import mmh3

    s = impl.Siblings.new(b"v" * 100).update(None, b"n1.7", 1_796_000_000)
    s = impl.Siblings.new(b"w", s.context()).update(s, b"n2", 1_796_000_001).sync(s)
    assert s.digest() == mmh3.hash_bytes(s.to_bytes())
    deleted_by = [impl.Siblings.new(None).update(None, actor, 1) for actor in (b"a", b"b")]
    assert deleted_by[0].digest() != deleted_by[1].digest()


def test_only_keeps_one_version_and_the_whole_clock(impl):
    S = impl.Siblings
    first = S.new(b"one").update(None, b"a", 1)
    both = S.new(b"two").update(first, b"b", 2)  # blind: a sibling of "one"
    assert sorted(both.values) == [b"one", b"two"]
    kept = both.only(b"b", 1)
    assert kept.values == [b"two"] and kept.clock() == both.clock()
    assert both.only(b"a", 1).values == [b"one"]
    assert both.only(b"a", 2) is None and both.only(b"c", 1) is None
    # What the kept version is merged with loses the other versions; a later write that saw it replaces it.
    assert kept.sync(first) == kept and kept.sync(both) == kept
    later = S.new(b"three", kept.context()).update(kept, b"a", 3)
    assert later.sync(kept).values == [b"three"]
    assert S.from_bytes(kept.to_bytes()) == kept


# -- a set superseded where it lies (the RESP lane's SET) ---------------------------------------------------------
def _random_set(S, rng):
    """A sibling set of the shapes stores hold: superseding writes, concurrent ones, anonymous values, wide clocks."""
    pick = [b"n1", b"n1.0", b"n1.17", b"n2", b"a", b"zz" * 20, b""]
    if rng.random() < 0.05:
        return S.new(b"anon1", None).sync(S.new(b"anon2", None))
    s = S.new(rng.choice([b"x", None, b"y" * rng.randrange(300)]), None).update(None, rng.choice(pick),
                                                                                  rng.randrange(10**6))
    for _ in range(rng.randrange(6)):
        value, actor, now = rng.choice([b"v%d" % rng.randrange(99), None, b""]), rng.choice(pick), rng.randrange(10**6)
        step = rng.randrange(3)
        if step == 0:
            s = S.new(value, s.context()).update(s, actor, now)  # supersedes
        elif step == 1:
            s = S.new(value, None).update(s, actor, now)  # concurrent: a sibling
        else:
            s = s.sync(S.new(value, None).update(None, actor, now))
    if rng.random() < 0.05:
        for i in range(rng.randrange(8, 13)):
            s = S.new(b"m", s.context()).update(s, b"x%02d" % i, 7)
    return s


def test_a_set_superseded_in_place_is_the_set_supersede_makes():
    """What the in-place writer stores is byte for byte the encoding of ``supersede`` (of a new set's first write
    where nothing is stored); it declines only anonymous values and more than nine entries."""
    compiled = builds.compiled_or_skip("vclock")
    S, rng, declined = compiled.Siblings, random.Random(7), 0
    for _ in range(4000):
        s = _random_set(S, rng) if rng.random() < 0.9 else None
        actor, value, now = rng.choice([b"n1", b"n1.5", b"n2", b"b", b""]), rng.randbytes(rng.randrange(200)), \
            rng.choice([rng.randrange(2**40), 2**64 - 1])
        got = compiled._superseded_in_place(None if s is None else s.to_bytes(), value, actor, now)
        if got is None:
            declined += 1
            anonymous = s is not None and s.to_bytes()[1] != 0  # the encoding's count of anonymous values
            assert anonymous or len(s.clock()) > 9 or now == 2**64 - 1, s
            continue
        want = (S.new(value, None).update(None, actor, now).prune(now) if s is None
                else s.supersede(value, actor, now))
        assert got == want.to_bytes(), (s, actor)
    assert 0 < declined < 800


def test_the_in_place_view_refuses_what_from_bytes_refuses():
    """Damaged encodings: the view takes only what ``from_bytes`` takes (then writes what supersede writes), and
    refuses the rest with the same error, or declines the set's shape before it reaches the fault."""
    compiled = builds.compiled_or_skip("vclock")
    S, rng = compiled.Siblings, random.Random(8)
    for _ in range(6000):
        data = bytearray(_random_set(S, rng).to_bytes())
        for _ in range(rng.randrange(1, 4)):
            where = rng.randrange(len(data) + 1)
            step = rng.randrange(3)
            if step == 0 and where < len(data):
                data[where] = rng.randrange(256)
            elif step == 1:
                del data[where:where + rng.randrange(1, 3)]
            else:
                data.insert(where, rng.randrange(256))
        data = bytes(data)
        try:
            want = S.from_bytes(data)
        except ProtocolError as exc:
            want = str(exc)
        try:
            got = compiled._superseded_in_place(data, b"val", b"n1", 5)
        except ProtocolError as exc:
            got = str(exc)
        if isinstance(want, str):  # refused: the view refuses it too (or declines its shape first)
            assert got is None or got == want, (data, got, want)
        elif got is not None:
            assert not isinstance(got, str), (data, got)
            assert got == want.supersede(b"val", b"n1", 5).to_bytes()
