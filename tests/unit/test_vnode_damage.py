"""Vnodes over a real store whose file has a damaged record: it is a missing replica of that key, not an error of
the whole vnode, and the next write of the key repairs it."""
import os

import pytest

import dynafast
from dynafast.cluster.antientropy import VnodeTrees
from dynafast.cluster.vnode import Vnodes, hint_key, object_key
from dynafast.errors import CorruptionError
from conftest import implementations

impl = implementations("vclock")

PARTITION = 7


def flip(store_dir, value: bytes) -> None:
    """Flip one bit in the middle of the one record holding ``value``."""
    (path,) = sorted(store_dir.glob("*.data"))
    data = path.read_bytes()
    position = data.index(value) + len(value) // 2
    assert data.count(value) == 1
    fd = os.open(path, os.O_RDWR)
    try:
        os.pwrite(fd, bytes([data[position] ^ 0x10]), position)
    finally:
        os.close(fd)


@pytest.fixture
def setup(tmp_path, impl):
    store = dynafast.open(tmp_path / "store")
    vnodes = Vnodes(store, impl)
    trees = VnodeTrees(vnodes, leaves=16)
    vnodes.on_write = trees.on_write
    dropped = []
    vnodes.on_damaged = lambda partition: (dropped.append(partition), trees.drop(partition))
    objects = {}
    for i in range(20):
        key = b"key-%02d" % i
        objects[key] = impl.Siblings.new(b"value-%02d:" % i + b"x" * 40).update(None, b"n1.1", 1)
        vnodes.write(PARTITION, key, objects[key])
    trees.tree(PARTITION)  # built while every record was intact, as on a node that ran before the damage
    store.flush()
    yield store, vnodes, trees, objects, dropped
    store.close()


def test_a_damaged_record_reads_as_corrupt_then_as_missing(setup, tmp_path):
    store, vnodes, trees, objects, dropped = setup
    flip(tmp_path / "store", b"value-05:")
    with pytest.raises(CorruptionError):
        vnodes.get(PARTITION, b"key-05")
    assert vnodes.get_intact(PARTITION, b"key-05") is None
    with pytest.raises(CorruptionError):
        vnodes.get_raw(PARTITION, b"key-05")
    # Found once, however often it is read; the tree built from the old contents is dropped then.
    assert vnodes.corrupt_found == 1 and dropped == [PARTITION] and PARTITION not in trees.trees
    assert vnodes.get(PARTITION, b"key-04") == objects[b"key-04"]


def test_the_vnode_still_folds_and_its_tree_leaves_the_damaged_record_out(setup, tmp_path, impl):
    store, vnodes, trees, objects, dropped = setup
    flip(tmp_path / "store", b"value-05:")
    intact = {k: v for k, v in objects.items() if k != b"key-05"}
    assert dict(vnodes.fold(PARTITION)) == intact
    tree = trees.tree(PARTITION)
    expected = trees.merkle.MerkleTree.build(((k, v.digest()) for k, v in intact.items()), 16, 16)
    assert tree.hashes(0, [0]) == expected.hashes(0, [0])
    keys, _ = trees.keys_in_leaves(PARTITION, range(16))
    assert sorted(keys) == sorted(intact)
    assert [key for key, _ in vnodes.handoff_items(PARTITION)] == sorted(intact)


def test_a_merge_replaces_the_damaged_record_and_the_tree_then_holds_it(setup, tmp_path, impl):
    store, vnodes, trees, objects, dropped = setup
    flip(tmp_path / "store", b"value-05:")
    assert vnodes.get_intact(PARTITION, b"key-05") is None
    trees.tree(PARTITION)  # rebuilt without it
    good = objects[b"key-05"]
    assert vnodes.merge_in(PARTITION, b"key-05", good) == good
    assert vnodes.get(PARTITION, b"key-05") == good
    assert (vnodes.corrupt_found, vnodes.corrupt_repaired, vnodes.damaged) == (1, 1, set())
    expected = trees.merkle.MerkleTree.build(((k, v.digest()) for k, v in objects.items()), 16, 16)
    assert trees.tree(PARTITION).hashes(0, [0]) == expected.hashes(0, [0])


def test_bytes_that_do_not_decode_are_a_damaged_record_too(setup):
    store, vnodes, trees, objects, dropped = setup
    store.put(object_key(PARTITION, b"key-03"), b"\xff\xffnot a sibling set")
    with pytest.raises(CorruptionError):
        vnodes.get(PARTITION, b"key-03")
    assert vnodes.corrupt_found == 1


def test_a_damaged_hint_is_dropped(setup, tmp_path, impl):
    store, vnodes, trees, objects, dropped = setup
    hint = impl.Siblings.new(b"hinted-value:" + b"h" * 40).update(None, b"n1.1", 2)
    vnodes.write(3, b"hinted", hint, hint_for="n2")
    vnodes.write(3, b"other", objects[b"key-01"], hint_for="n2")
    store.flush()
    flip(tmp_path / "store", b"hinted-value:")
    assert [hint[:3] for hint in vnodes.hints("n2")] == [(3, b"other", objects[b"key-01"])]
    assert store.get(hint_key("n2", 3, b"hinted")) is None
    assert dropped == []  # a hint is in no Merkle tree
