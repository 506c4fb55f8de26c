"""Reading a backup back: every node's copy opened with the storage engine and each key's versions merged by
their clocks, on real store directories (what ``dynafast restore`` writes into the new cluster)."""
import json

import dynafast
from dynafast import _impl
from dynafast.backup import MANIFEST, merged_objects
from dynafast.cluster.backup import NODE_FILE, STORE_DIR
from dynafast.cluster.vnode import hint_key, object_key

S = _impl.vclock.Siblings


def node_copy(directory, node, objects=(), hints=()):
    """A node's copy as BACKUP leaves it: a store taken with copy_into while the node keeps writing."""
    with dynafast.open(directory / f"live-{node}", background_merge=False) as live:
        for key, siblings in objects:
            live.put(object_key(3, key), siblings.to_bytes())
        for owner, key, siblings in hints:
            live.put(hint_key(owner, 3, key), b"r" + b"\0" * 8 + siblings.to_bytes())
        live.copy_into(directory / node / STORE_DIR)
        live.put(object_key(3, b"after"), S.new(b"too late").update(None, b"x", 1).to_bytes())
    (directory / node / NODE_FILE).write_text(json.dumps({"node": node}))
    return {"id": node}


def test_the_newest_version_wins_siblings_stay_and_a_newer_delete_holds(tmp_path):
    old = S.new(b"old").update(None, b"n1.a", 1)
    new = S.new(b"new", old.context()).update(old, b"n2.b", 2)
    deleted = S.new(None, old.context()).update(old, b"n2.b", 3)
    left = S.new(b"left").update(None, b"n1.a", 4)
    right = S.new(b"right").update(None, b"n2.b", 5)  # concurrent with left: siblings
    hinted = S.new(b"only in a hint").update(None, b"n1.a", 6)
    nodes = [
        node_copy(tmp_path, "n1", [(b"upd", old), (b"gone", old), (b"both", left)]),
        node_copy(tmp_path, "n2", [(b"upd", new), (b"gone", deleted), (b"both", right)],
                  hints=[("n3", b"hinted", hinted)]),
    ]
    (tmp_path / MANIFEST).write_text(json.dumps({"nodes": nodes}))
    before = files(tmp_path)
    merged = merged_objects(tmp_path)
    assert merged[b"upd"].live_values() == [b"new"]
    assert merged[b"gone"].is_deleted()  # the delete saw the value n1 still had: it wins
    assert sorted(merged[b"both"].live_values()) == [b"left", b"right"]
    assert merged[b"hinted"].live_values() == [b"only in a hint"]
    assert b"after" not in merged  # written after the copy was taken
    # The backup is read through links: reading leaves it as it was, and it can be read again.
    assert files(tmp_path) == before
    assert merged_objects(tmp_path).keys() == merged.keys()


def files(directory):
    return {str(p.relative_to(directory)): p.read_bytes() for p in directory.rglob("*")
            if p.is_file() and "live-" not in str(p) and p.name != "LOCK"}
