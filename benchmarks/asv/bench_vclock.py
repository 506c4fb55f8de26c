"""asv suites for vector clocks and sibling sets: compiled build and plain-Python reference side by side.

    asv run --python=same --bench bench_vclock
"""
from dynafast._ref import vclock as _ref

try:
    from dynafast._core import vclock as _compiled
except ImportError:  # not built: asv skips the compiled parameter
    _compiled = None

NOW = 1_700_000_000


def _module(name):
    if name == "compiled":
        if _compiled is None:
            raise NotImplementedError("dynafast._core.vclock is not built")
        return _compiled
    return _ref


def _clocks(m, n):
    a = m.VClock([(b"node-%03d" % i, 1000 + i * 7, NOW + i) for i in range(n)])
    b = m.VClock([(b"node-%03d" % i, 1000 + i * 7 + (1 if i % 3 == 0 else -1), NOW + 2 * i) for i in range(n)])
    return a, a.merge(b)


def _replicas(m):
    nodes = [b"node-%02d" % i for i in range(5)]
    stored = None
    for i in range(12):
        stored = m.Siblings.new(b"x" * 100, stored.context() if stored else None).update(stored, nodes[i % 5], NOW + i)
    base = stored
    sets = []
    for r in range(3):
        s = base
        for c in range(3):
            s = m.Siblings.new(b"%d" % c * 100, base.context()).update(s, nodes[(r + c) % 5], NOW + 100 + r * 3 + c)
        sets.append(s)
    return sets


class Clocks:
    params = (["compiled", "reference"], [3, 10, 50])
    param_names = ["impl", "actors"]

    def setup(self, impl, actors):
        self.m = _module(impl)
        self.a, self.newer = _clocks(self.m, actors)
        self.data = self.newer.to_bytes()

    def time_compare(self, impl, actors):
        self.a.compare(self.newer)

    def time_merge(self, impl, actors):
        self.a.merge(self.newer)

    def time_increment(self, impl, actors):
        self.a.increment(b"node-001", NOW)

    def time_encode(self, impl, actors):
        self.newer.to_bytes()

    def time_decode(self, impl, actors):
        self.m.VClock.from_bytes(self.data)

    def time_prune(self, impl, actors):
        self.newer.prune(NOW + 100_000)


class SiblingSets:
    params = ["compiled", "reference"]
    param_names = ["impl"]

    def setup(self, impl):
        self.m = _module(impl)
        self.sets = _replicas(self.m)
        self.write = self.m.Siblings.new(b"w" * 100, self.sets[1].context())
        self.data = self.sets[0].to_bytes()

    def time_update(self, impl):
        self.write.update(self.sets[0], b"node-02", NOW + 200)

    def time_sync(self, impl):
        self.sets[0].sync(self.sets[1])

    def time_reconcile(self, impl):
        self.m.reconcile(self.sets).context()

    def time_encode(self, impl):
        self.sets[0].to_bytes()

    def time_decode(self, impl):
        self.m.Siblings.from_bytes(self.data)

    def track_siblings_after_reconcile(self, impl):
        return len(self.m.reconcile(self.sets))
