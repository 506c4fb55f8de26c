"""Merkle trees: the compiled build and the reference, each checked against definitions computed with
mmh3 (an independent MurmurHash3), and against each other."""
import collections
import random
import struct

import mmh3
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import implementations
from dynafast.errors import ProtocolError
from dynafast.testing import builds

impl = implementations("merkle")

ITEM_SEED = 0x4D4B4931
NODE_SEED = 0x4D4B4E31
SHAPES = [(16, 2), (16, 16), (16, 32), (64, 4), (1024, 16), (4096, 8)]
# The impl fixture is a module, not state: reusing it across examples is fine.
FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

keys = st.binary(max_size=24)
digests = st.binary(max_size=16)
pairs = st.lists(st.tuples(keys, digests), max_size=40)
shapes = st.sampled_from(SHAPES)


def compiled_or_skip():
    return builds.compiled_or_skip("merkle")


# -- the definitions, from mmh3 -------------------------------------------------------------------
def expected_leaf(key, leaves):
    return mmh3.hash64(key, 0, signed=False)[1] >> (64 - (leaves.bit_length() - 1))


def expected_item(key, digest):
    return mmh3.hash64(struct.pack("<I", len(key)) + key + digest, ITEM_SEED, signed=False)[0]


def expected_levels(items, leaves, fanout):
    """Every level, root first, as lists of ints, straight from the definitions."""
    level = [0] * leaves
    for key, digest in items:
        leaf = expected_leaf(key, leaves)
        level[leaf] = (level[leaf] + expected_item(key, digest)) % 2**64
    levels = [level]
    while len(level) > 1:
        level = [
            mmh3.hash64(struct.pack(f"<{len(level[i:i + fanout])}Q", *level[i : i + fanout]), NODE_SEED, signed=False)[0]
            for i in range(0, len(level), fanout)
        ]
        levels.append(level)
    return levels[::-1]


def as_bytes(level):
    return [h.to_bytes(8, "little") for h in level]


def expected_diff(a_items, b_items, leaves):
    per_leaf = collections.defaultdict(collections.Counter)
    for key, digest in a_items:
        per_leaf[expected_leaf(key, leaves)][(key, digest)] += 1
    for key, digest in b_items:
        per_leaf[expected_leaf(key, leaves)][(key, digest)] -= 1
    return sorted(leaf for leaf, counts in per_leaf.items() if any(counts.values()))


# -- hashing -------------------------------------------------------------------------------------
@FAST
@given(data=st.binary(max_size=100), seed=st.integers(0, 2**32 - 1))
def test_murmur3_matches_mmh3(impl, data, seed):
    assert impl.murmur3_x64_128(data, seed) == mmh3.hash64(data, seed, signed=False)


@FAST
@given(items=pairs, shape=shapes)
def test_every_level_matches_the_definition(impl, items, shape):
    tree = impl.MerkleTree.build(items, *shape)
    levels = expected_levels(items, *shape)
    assert len(levels) == tree.depth + 1
    for depth, level in enumerate(levels):
        assert tree.hashes(depth) == as_bytes(level)
    assert tree.root() == as_bytes(levels[0])[0]
    for key, _ in items:
        assert tree.leaf_of(key) == expected_leaf(key, shape[0])


def test_long_keys_and_digests(impl):
    # Past the stack buffer of the compiled item hash.
    items = [(bytes([i]) * (300 + 97 * i), bytes([255 - i]) * (200 + 31 * i)) for i in range(12)]
    tree = impl.MerkleTree.build(items, 64, 4)
    assert tree.hashes(tree.depth) == as_bytes(expected_levels(items, 64, 4)[-1])


def test_buffers_hash_like_bytes(impl):
    a = impl.MerkleTree(64, 4)
    b = impl.MerkleTree(64, 4)
    a.insert(b"key", b"v1")
    b.insert(bytearray(b"key"), memoryview(b"v1"))
    assert a == b and a.root() == b.root()
    assert a.leaf_of(b"key") == b.leaf_of(memoryview(b"key"))
    with pytest.raises(TypeError):
        a.insert("key", b"v1")
    with pytest.raises(TypeError):
        a.insert(b"key", None)
    with pytest.raises(TypeError):
        a.leaf_of(5)


# -- shape ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("leaves, fanout, sizes", [
    (16, 2, [1, 2, 4, 8, 16]),
    (16, 16, [1, 16]),
    (16, 32, [1, 16]),
    (1024, 16, [1, 4, 64, 1024]),
    (4096, 8, [1, 8, 64, 512, 4096]),
    (1 << 20, 16, [1, 16, 256, 4096, 65536, 1 << 20]),
])
def test_shape(impl, leaves, fanout, sizes):
    tree = impl.MerkleTree(leaves, fanout)
    assert (tree.leaves, tree.fanout, tree.depth) == (leaves, fanout, len(sizes) - 1)
    assert [tree.level_size(d) for d in range(tree.depth + 1)] == sizes
    for depth in range(tree.depth):
        covered = []
        for index in range(min(sizes[depth], 3)):
            covered.extend(tree.children(depth, index))
        assert covered == list(range(min(sizes[depth + 1], 3 * fanout)))
        last = sizes[depth] - 1
        assert tree.children(depth, last)[-1] == sizes[depth + 1] - 1


def test_defaults(impl):
    tree = impl.MerkleTree()
    assert (tree.leaves, tree.fanout, tree.depth) == (1024, 16, 3)
    with pytest.raises(AttributeError):
        tree.leaves = 16


@pytest.mark.parametrize("leaves, fanout", [(8, 16), (1 << 21, 16), (1000, 16), (0, 16), (-16, 16), (1024, 1),
                                            (1024, 3), (1024, 0), (1024, 1 << 21)])
def test_bad_shape(impl, leaves, fanout):
    with pytest.raises(ValueError):
        impl.MerkleTree(leaves, fanout)


def test_bad_shape_types(impl):
    with pytest.raises(TypeError):
        impl.MerkleTree(1024.0, 16)
    with pytest.raises(TypeError):
        impl.MerkleTree("1024", 16)


def test_out_of_range(impl):
    tree = impl.MerkleTree(64, 4)
    for bad in (-1, tree.depth + 1):
        with pytest.raises(ValueError):
            tree.level_size(bad)
        with pytest.raises(ValueError):
            tree.hashes(bad)
    with pytest.raises(ValueError):
        tree.children(tree.depth, 0)  # leaves have no children
    with pytest.raises(IndexError):
        tree.children(1, 4)
    with pytest.raises(IndexError):
        tree.hashes(tree.depth, [0, 64])
    with pytest.raises(IndexError):
        tree.hashes(1, [-1])
    with pytest.raises(IndexError):
        tree.leaf_hash(64)
    with pytest.raises(IndexError):
        tree.leaf_hash(-1)


def test_hashes_at_indices(impl):
    tree = impl.MerkleTree.build([(b"k%d" % i, b"d") for i in range(200)], 64, 4)
    every = tree.hashes(2)
    assert tree.hashes(2, [5, 0, 5, 15]) == [every[5], every[0], every[5], every[15]]
    assert tree.hashes(2, range(3)) == every[:3]
    assert tree.hashes(0, []) == []
    assert [tree.leaf_hash(i) for i in range(64)] == tree.hashes(3)
    assert all(len(h) == 8 for h in every)


# -- the algebra ---------------------------------------------------------------------------------
def test_empty_root_is_fixed(impl):
    a = impl.MerkleTree(1024, 16)
    b = impl.MerkleTree(1024, 16)
    assert a.root() == b.root() == as_bytes(expected_levels([], 1024, 16)[0])[0]
    assert a.hashes(a.depth) == [bytes(8)] * 1024
    a.insert(b"k", b"v")
    assert a.root() != b.root()
    a.clear()
    assert a.root() == b.root() and a == b


@FAST
@given(items=pairs, shape=shapes)
def test_insert_then_remove_is_empty(impl, items, shape):
    tree = impl.MerkleTree(*shape)
    empty = tree.root()
    for key, digest in items:
        tree.insert(key, digest)
    if items:
        tree.root()  # flush midway so removal goes through the incremental path
    for key, digest in reversed(items):
        tree.remove(key, digest)
    assert tree.root() == empty
    assert tree == impl.MerkleTree(*shape)


@FAST
@given(items=pairs, shape=shapes, seed=st.integers(0, 2**32))
def test_order_independent(impl, items, shape, seed):
    shuffled = list(items)
    random.Random(seed).shuffle(shuffled)
    a = impl.MerkleTree.build(items, *shape)
    b = impl.MerkleTree(*shape)
    for key, digest in shuffled:
        b.insert(key, digest)
    assert a == b and a.root() == b.root()


@FAST
@given(items=st.dictionaries(keys, st.tuples(st.none() | digests, st.none() | digests), max_size=30),
       shape=shapes)
def test_update_is_remove_then_insert(impl, items, shape):
    a = impl.MerkleTree(*shape)
    b = impl.MerkleTree(*shape)
    for key, (old, _) in items.items():
        if old is not None:
            a.insert(key, old)
            b.insert(key, old)
    a.root()
    for key, (old, new) in items.items():
        a.update(key, old, new)
        if old is not None:
            b.remove(key, old)
        if new is not None:
            b.insert(key, new)
    assert a == b and a.root() == b.root()
    after = [(key, new) for key, (_, new) in items.items() if new is not None]
    assert a.root() == impl.MerkleTree.build(after, *shape).root()


@FAST
@given(items=pairs, shape=shapes)
def test_build_equals_inserts(impl, items, shape):
    tree = impl.MerkleTree(*shape)
    for key, digest in items:
        tree.insert(key, digest)
    built = impl.MerkleTree.build(iter(items), *shape)
    assert built == tree
    for depth in range(tree.depth + 1):
        assert built.hashes(depth) == tree.hashes(depth)


@FAST
@given(ops=st.lists(st.tuples(st.sampled_from(["insert", "remove", "root", "hashes"]), keys, digests),
                    max_size=60), shape=shapes)
def test_lazy_levels_stay_right(impl, ops, shape):
    tree = impl.MerkleTree(*shape)
    live = collections.Counter()
    for op, key, digest in ops:
        if op == "insert":
            tree.insert(key, digest)
            live[(key, digest)] += 1
        elif op == "remove" and live[(key, digest)]:
            tree.remove(key, digest)
            live[(key, digest)] -= 1
        elif op == "root":
            tree.root()
        elif op == "hashes":
            tree.hashes(1)
    levels = expected_levels(list(live.elements()), *shape)
    for depth in range(tree.depth + 1):
        assert tree.hashes(depth) == as_bytes(levels[depth])


def test_remove_of_absent_pair_changes_the_tree(impl):
    tree = impl.MerkleTree(64, 4)
    tree.remove(b"never", b"inserted")
    assert tree.root() != impl.MerkleTree(64, 4).root()
    tree.insert(b"never", b"inserted")
    assert tree == impl.MerkleTree(64, 4)


def test_multiplicity_counts(impl):
    once = impl.MerkleTree.build([(b"k", b"v")], 64, 4)
    twice = impl.MerkleTree.build([(b"k", b"v")] * 2, 64, 4)
    assert once.root() != twice.root() != impl.MerkleTree(64, 4).root()


def test_key_digest_boundary_matters(impl):
    a = impl.MerkleTree.build([(b"ab", b"c")], 16, 16)
    b = impl.MerkleTree.build([(b"a", b"bc")], 16, 16)
    assert a.hashes(1) != b.hashes(1)


def test_equality(impl):
    a = impl.MerkleTree.build([(b"k", b"v")], 64, 4)
    assert a == impl.MerkleTree.build([(b"k", b"v")], 64, 4)
    assert a != impl.MerkleTree.build([(b"k", b"v")], 64, 8)
    assert a != impl.MerkleTree.build([(b"k", b"w")], 64, 4)
    assert a != "tree"
    with pytest.raises(TypeError):
        hash(a)


# -- diff and the exchange ------------------------------------------------------------------------
common = st.lists(st.tuples(keys, digests), max_size=30)


@FAST
@given(shared=common, only_a=common, only_b=common, shape=shapes)
def test_diff_is_the_leaves_whose_multisets_differ(impl, shared, only_a, only_b, shape):
    a_items = shared + only_a
    b_items = only_b + shared
    a = impl.MerkleTree.build(a_items, *shape)
    b = impl.MerkleTree.build(b_items, *shape)
    want = expected_diff(a_items, b_items, shape[0])
    assert impl.diff(a, b) == want
    assert impl.diff(b, a) == want
    assert impl.diff(a, a) == []


@FAST
@given(shared=common, only_a=common, only_b=common, shape=shapes)
def test_exchange_matches_diff(impl, shared, only_a, only_b, shape):
    local = impl.MerkleTree.build(shared + only_a, *shape)
    remote = impl.MerkleTree.build(shared + only_b, *shape)
    exchange = impl.TreeExchange(local)
    requests = 0
    hashes = 0
    last_depth = -1
    while (request := exchange.next_request()) is not None:
        depth, indices = request
        assert depth == last_depth + 1 and depth <= local.depth
        assert exchange.next_request() == request  # asking again repeats the request
        assert indices and all(0 <= i < local.level_size(depth) for i in indices)
        last_depth = depth
        answer = remote.hashes(depth, indices)
        exchange.feed(answer)
        requests += 1
        hashes += len(indices)
    assert exchange.next_request() is None
    assert exchange.result() == impl.diff(local, remote)
    assert exchange.bytes_received == 8 * hashes
    assert exchange.bytes_sent == 8 * requests + 4 * hashes
    if local.root() == remote.root():
        assert requests == 1 and exchange.result() == []
    else:
        assert last_depth == local.depth


def test_exchange_cost_grows_with_differences_not_size(impl):
    items = [(b"key%06d" % i, b"v1") for i in range(3000)]
    local = impl.MerkleTree.build(items, 4096, 16)
    remote = impl.MerkleTree.build(items, 4096, 16)
    remote.update(items[7][0], b"v1", b"v2")
    exchange = impl.TreeExchange(local)
    while (request := exchange.next_request()) is not None:
        exchange.feed(remote.hashes(*request))
    assert exchange.result() == [local.leaf_of(items[7][0])]
    # root, then 16 children at each of the three levels below it
    assert exchange.bytes_received == 8 * (1 + 16 * 3)


def test_exchange_errors(impl):
    local = impl.MerkleTree.build([(b"a", b"1")], 64, 4)
    exchange = impl.TreeExchange(local)
    with pytest.raises(RuntimeError):
        exchange.feed([bytes(8)])  # nothing asked yet
    with pytest.raises(RuntimeError):
        exchange.result()
    assert exchange.next_request() == (0, [0])
    with pytest.raises(ProtocolError):
        exchange.feed([])
    with pytest.raises(ProtocolError):
        exchange.feed([bytes(7)])
    with pytest.raises(ProtocolError):
        exchange.feed(["12345678"])
    exchange.feed([local.root()])
    assert exchange.next_request() is None
    assert exchange.result() == []
    with pytest.raises(RuntimeError):
        exchange.feed([local.root()])
    with pytest.raises(TypeError):
        impl.TreeExchange(None)
    with pytest.raises(ValueError):
        impl.diff(local, impl.MerkleTree(64, 8))


def test_exchange_accepts_buffer_hashes(impl):
    local = impl.MerkleTree.build([(b"a", b"1")], 16, 16)
    remote = impl.MerkleTree.build([(b"a", b"2")], 16, 16)
    exchange = impl.TreeExchange(local)
    while (request := exchange.next_request()) is not None:
        exchange.feed([bytearray(h) for h in remote.hashes(*request)])
    assert exchange.result() == [local.leaf_of(b"a")]


# -- serialization -------------------------------------------------------------------------------
@FAST
@given(items=pairs, shape=shapes)
def test_bytes_round_trip(impl, items, shape):
    tree = impl.MerkleTree.build(items, *shape)
    data = tree.to_bytes()
    assert len(data) == 16 + 8 * shape[0]
    back = impl.MerkleTree.from_bytes(data)
    assert back == tree and (back.leaves, back.fanout) == shape
    assert back.root() == tree.root()
    assert impl.MerkleTree.from_bytes(bytearray(data)) == tree


@FAST
@given(data=st.binary(max_size=200))
def test_garbage_is_rejected(impl, data):
    with pytest.raises(ValueError):
        impl.MerkleTree.from_bytes(data)


@FAST
@given(items=pairs, position=st.integers(0, 10**6), flip=st.integers(1, 255))
def test_damaged_bytes_are_rejected(impl, items, position, flip):
    data = bytearray(impl.MerkleTree.build(items, 16, 4).to_bytes())
    data[position % len(data)] ^= flip
    with pytest.raises(ValueError):
        impl.MerkleTree.from_bytes(bytes(data))


def test_truncated_and_extended_bytes_are_rejected(impl):
    data = impl.MerkleTree.build([(b"k", b"v")], 64, 4).to_bytes()
    for bad in (data[:-1], data + b"\0", data[:8], b"", data[:16]):
        with pytest.raises(ValueError):
            impl.MerkleTree.from_bytes(bad)
    with pytest.raises(TypeError):
        impl.MerkleTree.from_bytes("not bytes")


# -- the two builds against each other ------------------------------------------------------------
@FAST
@given(items=pairs, removed=st.integers(0, 40), shape=shapes)
def test_builds_agree(items, removed, shape):
    from dynafast._ref import merkle as ref

    comp = compiled_or_skip()
    c = comp.MerkleTree(*shape)
    r = ref.MerkleTree(*shape)
    for key, digest in items:
        c.insert(key, digest)
        r.insert(key, digest)
    c.root()
    r.root()
    for key, digest in items[:removed]:
        c.update(key, digest, digest + b"!")
        r.update(key, digest, digest + b"!")
    assert c.to_bytes() == r.to_bytes()
    assert c.root() == r.root()
    for depth in range(c.depth + 1):
        assert c.hashes(depth) == r.hashes(depth)
    assert [c.leaf_of(k) for k, _ in items] == [r.leaf_of(k) for k, _ in items]
    assert comp.MerkleTree.from_bytes(r.to_bytes()) == c
    assert ref.MerkleTree.from_bytes(c.to_bytes()) == r


def test_builds_exchange_with_each_other():
    from dynafast._ref import merkle as ref

    comp = compiled_or_skip()
    items = [(b"key%05d" % i, b"d%d" % (i % 7)) for i in range(2000)]
    changed = items[:1990] + [(k, d + b"x") for k, d in items[1990:]]
    c = comp.MerkleTree.build(items, 1024, 16)
    r = ref.MerkleTree.build(changed, 1024, 16)
    want = expected_diff(items, changed, 1024)
    assert len(want) == 10
    assert comp.diff(c, r) == want
    assert ref.diff(r, c) == want
