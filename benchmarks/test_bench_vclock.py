"""Vector clock and sibling set micro benchmarks, compiled build vs plain-Python reference.

    pytest -n 0 -m bench benchmarks/test_bench_vclock.py

Workload: clocks of 10 actors (b"node-NN", 7 bytes), counters in the thousands, second timestamps; sibling
sets of a 5-node cluster holding 3 concurrent 100-byte siblings, as a key with concurrent writers looks.
"""
import pytest

from dynafast._ref import vclock as ref

try:
    from dynafast._core import vclock as compiled
except ImportError:  # not built: only the reference runs
    compiled = None

IMPLS = ["compiled", "reference"]
NOW = 1_700_000_000


def module(name):
    if name == "compiled":
        if compiled is None:
            pytest.skip("dynafast._core.vclock is not built")
        return compiled
    return ref


def clocks(m):
    """Two concurrent 10-actor clocks."""
    a = m.VClock([(b"node-%02d" % i, 1000 + i * 7, NOW + i) for i in range(10)])
    b = m.VClock([(b"node-%02d" % i, 1000 + i * 7 + (1 if i % 3 == 0 else -1), NOW + 2 * i) for i in range(10)])
    return a, b


def replicas(m):
    """Three replicas' sets of one key: each saw a different part of 3 clients' concurrent writes."""
    nodes = [b"node-%02d" % i for i in range(5)]
    stored = None
    for i in range(12):  # some history on every node
        stored = m.Siblings.new(b"x" * 100, stored.context() if stored else None).update(stored, nodes[i % 5], NOW + i)
    base = stored
    sets = []
    for r in range(3):
        s = base
        for c in range(3):
            s = m.Siblings.new(b"%d" % c * 100, base.context()).update(s, nodes[(r + c) % 5], NOW + 100 + r * 3 + c)
        sets.append(s)
    return sets


@pytest.mark.bench
@pytest.mark.parametrize("impl", IMPLS)
def test_clock_compare(benchmark, impl):
    """The common case: a clock against a newer one (walks every entry)."""
    a, b = clocks(module(impl))
    newer = a.merge(b)
    assert benchmark(a.compare, newer) == 2


@pytest.mark.bench
@pytest.mark.parametrize("impl", IMPLS)
def test_clock_compare_concurrent(benchmark, impl):
    """Concurrent clocks: the walk stops at the second actor."""
    a, b = clocks(module(impl))
    assert benchmark(a.compare, b) == 3


@pytest.mark.bench
@pytest.mark.parametrize("impl", IMPLS)
def test_clock_merge(benchmark, impl):
    a, b = clocks(module(impl))
    assert len(benchmark(a.merge, b)) == 10


@pytest.mark.bench
@pytest.mark.parametrize("impl", IMPLS)
def test_clock_increment(benchmark, impl):
    a, _ = clocks(module(impl))
    assert benchmark(a.increment, b"node-05", NOW).get(b"node-05") == 1036


@pytest.mark.bench
@pytest.mark.parametrize("impl", IMPLS)
def test_clock_encode(benchmark, impl):
    a, _ = clocks(module(impl))
    assert len(benchmark(a.to_bytes)) == 151


@pytest.mark.bench
@pytest.mark.parametrize("impl", IMPLS)
def test_clock_decode(benchmark, impl):
    m = module(impl)
    data = clocks(m)[0].to_bytes()
    assert len(benchmark(m.VClock.from_bytes, data)) == 10


@pytest.mark.bench
@pytest.mark.parametrize("impl", IMPLS)
def test_siblings_update(benchmark, impl):
    """The coordinator's put: a write with a slightly stale context onto a stored set of 3 siblings."""
    m = module(impl)
    stored = replicas(m)[0]
    write = m.Siblings.new(b"w" * 100, replicas(m)[1].context())
    assert len(benchmark(write.update, stored, b"node-02", NOW + 200)) >= 2


@pytest.mark.bench
@pytest.mark.parametrize("impl", IMPLS)
def test_siblings_sync(benchmark, impl):
    m = module(impl)
    a, b, _ = replicas(m)
    assert len(benchmark(a.sync, b)) >= 3


@pytest.mark.bench
@pytest.mark.parametrize("impl", IMPLS)
def test_reconcile_three_replicas(benchmark, impl):
    """The read path: R=3 replies merged into one set and one context."""
    m = module(impl)
    sets = replicas(m)

    def read():
        merged = m.reconcile(sets)
        return merged, merged.context()

    merged, _ = benchmark(read)
    assert len(merged) >= 3


@pytest.mark.bench
@pytest.mark.parametrize("impl", IMPLS)
def test_siblings_encode(benchmark, impl):
    s = replicas(module(impl))[0]
    assert len(benchmark(s.to_bytes)) > 300


@pytest.mark.bench
@pytest.mark.parametrize("impl", IMPLS)
def test_siblings_decode(benchmark, impl):
    m = module(impl)
    data = replicas(m)[0].to_bytes()
    assert len(benchmark(m.Siblings.from_bytes, data)) >= 3
