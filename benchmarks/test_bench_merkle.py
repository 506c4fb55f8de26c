"""Merkle tree micro benchmarks, compiled build vs plain-Python reference.

    pytest -n 0 -m bench benchmarks/test_bench_merkle.py
    pytest -n 0 -m bench benchmarks/test_bench_merkle.py -k bytes_exchanged -s   # the bytes table only

Keys are b"key:%08d" (12 bytes), digests 16 bytes: 28 bytes per pair when every pair is sent.
"""
import random

import pytest

from dynafast._ref import merkle as ref

try:
    from dynafast._core import merkle as compiled
except ImportError:  # not built: only the reference runs
    compiled = None

N_KEYS = 1_000_000
LEAVES = 65536  # ~15 keys per leaf at 1M keys
FANOUT = 16
DIGEST = 16

IMPLS = ["compiled", "reference"]


def module(name):
    if name == "compiled":
        if compiled is None:
            pytest.skip("dynafast._core.merkle is not built")
        return compiled
    return ref


def key(i: int) -> bytes:
    return b"key:%08d" % i


def digest(i: int, version: int = 0) -> bytes:
    return (b"%016d" % (i * 7919 + version * 104729))[-DIGEST:]


def items(n: int):
    return [(key(i), digest(i)) for i in range(n)]


def tree_pair(mod, n_keys: int, differing: int, leaves: int = LEAVES, fanout: int = FANOUT, seed: int = 1):
    """A local tree of n_keys pairs and a remote one with ``differing`` of them at a newer version."""
    built = compiled if compiled is not None else ref
    base = built.MerkleTree.build(items(n_keys), leaves, fanout).to_bytes()
    local = mod.MerkleTree.from_bytes(base)
    remote = mod.MerkleTree.from_bytes(base)
    changed = random.Random(seed).sample(range(n_keys), differing)
    for i in changed:
        remote.update(key(i), digest(i), digest(i, 1))
    local.root()
    remote.root()
    return local, remote, changed


@pytest.fixture(scope="module")
def million_items():
    return items(N_KEYS)


@pytest.mark.bench
@pytest.mark.parametrize("impl", IMPLS)
def test_updates(benchmark, impl):
    """10,000 update(key, old, new) calls on a tree of 100,000 keys (one round = 10,000 updates)."""
    mod = module(impl)
    built = compiled if compiled is not None else ref
    tree = mod.MerkleTree.from_bytes(built.MerkleTree.build(items(100_000), LEAVES, FANOUT).to_bytes())
    batch = [(key(i), digest(i), digest(i, 1)) for i in range(10_000)]
    back = [(k, new, old) for k, old, new in batch]
    state = {"forward": True}

    def run():
        ops = batch if state["forward"] else back
        state["forward"] = not state["forward"]
        update = tree.update
        for k, old, new in ops:
            update(k, old, new)

    benchmark.extra_info["updates_per_round"] = len(batch)
    if impl == "compiled":
        benchmark(run)
    else:
        benchmark.pedantic(run, rounds=5, iterations=1)


@pytest.mark.bench
@pytest.mark.parametrize("impl", IMPLS)
def test_build_1m(benchmark, impl, million_items):
    """MerkleTree.build of 1,000,000 (key, digest) pairs, then root()."""
    mod = module(impl)

    def run():
        tree = mod.MerkleTree.build(million_items, LEAVES, FANOUT)
        return tree.root()

    rounds = 5 if impl == "compiled" else 1
    benchmark.pedantic(run, rounds=rounds, iterations=1)


@pytest.mark.bench
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("updates", [1, 1000])
def test_root_after_updates(benchmark, impl, updates):
    """root() of a 1M-key tree after ``updates`` puts (the lazy rehash of the dirty paths)."""
    mod = module(impl)
    tree, _, _ = tree_pair(mod, N_KEYS, 0)
    rng = random.Random(2)
    version = [0]

    def setup():
        version[0] += 1
        for i in rng.sample(range(N_KEYS), updates):
            tree.insert(key(i), digest(i, version[0]))
        return (), {}

    benchmark.pedantic(tree.root, setup=setup, rounds=20, iterations=1)


@pytest.fixture(scope="module")
def diff_trees():
    cache = {}

    def get(impl, differing):
        if (impl, differing) not in cache:
            cache[(impl, differing)] = tree_pair(module(impl), N_KEYS, differing)
        return cache[(impl, differing)]

    return get


@pytest.mark.bench
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("differing", [0, 10, 1000])
def test_diff_1m(benchmark, impl, differing, diff_trees):
    """diff() of two 1M-key trees (65,536 leaves, fanout 16) that differ in ``differing`` keys."""
    mod = module(impl)
    local, remote, changed = diff_trees(impl, differing)
    result = benchmark(mod.diff, local, remote)
    assert result == sorted({local.leaf_of(key(i)) for i in changed})


def exchange_cost(local, remote):
    exchange = (compiled or ref).TreeExchange(local)
    rounds = 0
    while (request := exchange.next_request()) is not None:
        exchange.feed(remote.hashes(*request))
        rounds += 1
    return exchange, rounds


@pytest.mark.bench
def test_bytes_exchanged(capsys):
    """The table for RESULTS.md: bytes of the tree exchange and of the follow-up pair lists."""
    mod = compiled or ref
    pair_size = len(key(0)) + DIGEST
    everything = N_KEYS * pair_size
    lines = [
        f"| leaves | differing keys | rounds | hashes sent+received | differing leaves | pairs in them "
        f"(both sides) | total | vs all pairs ({everything:,} B) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for leaves in (1024, 65536, 1 << 20):
        leaf_of = mod.MerkleTree(leaves, FANOUT).leaf_of
        keys_per_leaf = {}
        for i in range(N_KEYS):
            leaf = leaf_of(key(i))
            keys_per_leaf[leaf] = keys_per_leaf.get(leaf, 0) + 1
        for differing in (0, 10, 1000):
            local, remote, changed = tree_pair(mod, N_KEYS, differing, leaves, FANOUT)
            exchange, rounds = exchange_cost(local, remote)
            leaves_diff = exchange.result()
            assert leaves_diff == sorted({leaf_of(key(i)) for i in changed})
            tree_bytes = exchange.bytes_sent + exchange.bytes_received
            # Then both sides send their (key, digest) pairs of the differing leaves.
            pair_bytes = 2 * pair_size * sum(keys_per_leaf.get(leaf, 0) for leaf in leaves_diff)
            total = tree_bytes + pair_bytes
            lines.append(
                f"| {leaves:,} | {differing:,} | {rounds} | {tree_bytes:,} | {len(leaves_diff):,} | "
                f"{pair_bytes:,} | {total:,} | {total / everything:.4%} |"
            )
    with capsys.disabled():
        print("\n" + "\n".join(lines))


@pytest.mark.bench
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("differing", [0, 10, 1000])
def test_exchange_1m(benchmark, impl, differing, diff_trees):
    """The same as test_diff_1m through the wire-shaped path: next_request / remote.hashes / feed(bytes)."""
    mod = module(impl)
    local, remote, changed = diff_trees(impl, differing)

    def run():
        exchange = mod.TreeExchange(local)
        while (request := exchange.next_request()) is not None:
            exchange.feed(remote.hashes(*request))
        return exchange.result()

    assert benchmark(run) == sorted({local.leaf_of(key(i)) for i in changed})
