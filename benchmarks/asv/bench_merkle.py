"""asv suite for the Merkle trees of anti-entropy: compiled build vs plain-Python reference.

Keys are b"key:%08d" (12 bytes), digests 16 bytes; trees have 65,536 leaves and fanout 16.
"""
import random

from dynafast._ref import merkle as ref

try:
    from dynafast._core import merkle as compiled
except ImportError:
    compiled = None

LEAVES = 65536
FANOUT = 16
N_KEYS = 1_000_000


def _module(impl):
    if impl == "compiled":
        if compiled is None:
            raise NotImplementedError("dynafast._core.merkle is not built")
        return compiled
    return ref


def _key(i):
    return b"key:%08d" % i


def _digest(i, version=0):
    return (b"%016d" % (i * 7919 + version * 104729))[-16:]


def _items(n):
    return [(_key(i), _digest(i)) for i in range(n)]


def _serialized_pair(n_keys, differing, leaves=LEAVES):
    """to_bytes() of a local tree and of a remote one with ``differing`` keys at a newer version."""
    mod = compiled if compiled is not None else ref
    local = mod.MerkleTree.build(_items(n_keys), leaves, FANOUT)
    remote = mod.MerkleTree.from_bytes(local.to_bytes())
    for i in random.Random(1).sample(range(n_keys), differing):
        remote.update(_key(i), _digest(i), _digest(i, 1))
    return local.to_bytes(), remote.to_bytes()


class Updates:
    """10,000 update(key, old, new) calls on a 100,000-key tree."""

    params = ["compiled", "reference"]
    param_names = ["impl"]

    def setup(self, impl):
        mod = _module(impl)
        base = (compiled or ref).MerkleTree.build(_items(100_000), LEAVES, FANOUT).to_bytes()
        self.tree = mod.MerkleTree.from_bytes(base)
        self.batch = [(_key(i), _digest(i), _digest(i, 1)) for i in range(10_000)]

    def time_updates_10k(self, impl):
        update = self.tree.update
        for key, old, new in self.batch:
            update(key, old, new)


class Build:
    params = (["compiled", "reference"], [100_000, 1_000_000])
    param_names = ["impl", "keys"]
    timeout = 120

    def setup(self, impl, keys):
        self.mod = _module(impl)
        if impl == "reference" and keys > 100_000:
            raise NotImplementedError("the reference takes ~20 s for 1M keys: see benchmarks/RESULTS.md")
        self.items = _items(keys)

    def time_build(self, impl, keys):
        self.mod.MerkleTree.build(self.items, LEAVES, FANOUT).root()


class RootAfterUpdates:
    """root() of a 1M-key tree after 1,000 puts."""

    params = ["compiled", "reference"]
    param_names = ["impl"]
    number = 1
    repeat = 10

    def setup_cache(self):
        return _serialized_pair(N_KEYS, 0)[0]

    def setup(self, data, impl):
        self.tree = _module(impl).MerkleTree.from_bytes(data)
        self.tree.root()
        rng = random.Random(2)
        for i in rng.sample(range(N_KEYS), 1000):
            self.tree.insert(_key(i), _digest(i, 1))

    def time_root(self, data, impl):
        self.tree.root()


class Diff:
    """diff() and the wire-shaped exchange of two 1M-key trees differing in 0, 10 or 1,000 keys."""

    params = (["compiled", "reference"], [0, 10, 1000])
    param_names = ["impl", "differing"]
    timeout = 300

    def setup_cache(self):
        return {d: _serialized_pair(N_KEYS, d) for d in (0, 10, 1000)}

    def setup(self, cache, impl, differing):
        self.mod = _module(impl)
        local, remote = cache[differing]
        self.local = self.mod.MerkleTree.from_bytes(local)
        self.remote = self.mod.MerkleTree.from_bytes(remote)
        self.local.root()
        self.remote.root()

    def time_diff(self, cache, impl, differing):
        self.mod.diff(self.local, self.remote)

    def time_exchange(self, cache, impl, differing):
        exchange = self.mod.TreeExchange(self.local)
        while (request := exchange.next_request()) is not None:
            exchange.feed(self.remote.hashes(*request))


class BytesExchanged:
    """Bytes of the tree exchange (hashes and requests, both ways) for 1M keys, by leaves and differing keys."""

    params = ([1024, 65536, 1 << 20], [0, 10, 1000])
    param_names = ["leaves", "differing"]
    unit = "bytes"
    timeout = 300

    def setup_cache(self):
        out = {}
        for leaves in self.params[0]:
            for differing in self.params[1]:
                local, remote = _serialized_pair(N_KEYS, differing, leaves)
                mod = compiled or ref
                local, remote = mod.MerkleTree.from_bytes(local), mod.MerkleTree.from_bytes(remote)
                exchange = mod.TreeExchange(local)
                while (request := exchange.next_request()) is not None:
                    exchange.feed(remote.hashes(*request))
                out[leaves, differing] = exchange.bytes_sent + exchange.bytes_received
        return out

    def track_tree_bytes(self, cache, leaves, differing):
        return cache[leaves, differing]
