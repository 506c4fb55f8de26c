"""The embedded engine (Store over the compiled logstore and over its reference), on real files."""
import errno
import os
import shutil
import subprocess
import sys
import threading
import time

import pytest

import dynafast
from dynafast import CorruptionError, KeyTooLarge, StorageFull, StoreClosed, StoreLocked, ValueTooLarge
from dynafast._ref import logstore as fmt
from dynafast.storage import Store
from dynafast.testing.builds import compiled_or_skip

from conftest import implementations

impl = implementations("logstore")


def open_store(path, impl, **kw):
    kw.setdefault("background_merge", False)
    kw.setdefault("flush_interval", 0)
    return Store(path, engine=impl, **kw)


def segment_files(path):
    return sorted(n for n in os.listdir(path) if n.endswith(".data"))


def records(path, name):
    with open(os.path.join(path, name), "rb") as f:
        data = f.read()
    return fmt.scan_records(data)[0]  # [(offset, size, flags, key)]


def test_put_get_delete_basics(tmp_path, impl):
    with open_store(tmp_path / "db", impl) as db:
        assert db.get(b"a") is None
        db.put(b"a", b"1")
        db[b"b"] = b"2"
        assert db.get(b"a") == b"1" and db[b"b"] == b"2"
        assert b"a" in db and b"zz" not in db and len(db) == 2
        db.put(b"a", b"11")
        assert db[b"a"] == b"11" and len(db) == 2
        db.delete(b"a")
        del db[b"b"]
        db.delete(b"never-there")  # not an error
        assert db.get(b"a") is None and len(db) == 0
        with pytest.raises(KeyError):
            db[b"a"]
        db.put(b"", b"empty key")
        db.put(b"k", b"")
        assert db[b""] == b"empty key" and db[b"k"] == b""


def test_buffers_accepted_str_rejected(tmp_path, impl):
    with open_store(tmp_path / "db", impl) as db:
        db.put(bytearray(b"k1"), memoryview(b"v1"))
        assert db.get(memoryview(b"k1")) == b"v1"
        db.write_batch([(bytearray(b"k2"), bytearray(b"v2"))])
        assert db[b"k2"] == b"v2"
        for bad in ("str", 1, None, 1.5):
            with pytest.raises(TypeError):
                db.put(bad, b"v")
            with pytest.raises(TypeError):
                db.get(bad)
        with pytest.raises(TypeError):
            db.put(b"k", "str value")
        with pytest.raises(TypeError):
            db.write_batch([(b"k3", "v")])
        with pytest.raises(TypeError):
            "x" in db
        assert b"k3" not in db


def test_limits_write_nothing(tmp_path, impl):
    with open_store(tmp_path / "db", impl, max_key_size=8, max_value_size=100) as db:
        db.put(b"ok", b"v")
        seq = db.stats()["seq"]
        with pytest.raises(KeyTooLarge):
            db.put(b"k" * 9, b"v")
        with pytest.raises(ValueTooLarge):
            db.put(b"k", b"v" * 101)
        with pytest.raises(ValueTooLarge):
            db.write_batch([(b"a", b"1"), (b"b", b"v" * 101)])
        with pytest.raises(KeyTooLarge):
            db.delete(b"k" * 9)
        assert db.stats()["seq"] == seq and len(db) == 1 and b"a" not in db
        db.put(b"k" * 8, b"v" * 100)  # exactly at the limits is fine
    with pytest.raises(ValueError):
        open_store(tmp_path / "db2", impl, max_key_size=70000)


def test_reopen_with_and_without_hints(tmp_path, impl):
    path = tmp_path / "db"
    expected = {}
    with open_store(path, impl, segment_size=2000) as db:
        for i in range(300):
            k, v = b"key%d" % (i % 120), b"value-%d" % i
            db.put(k, v)
            expected[k] = v
        for i in range(0, 120, 7):
            db.delete(b"key%d" % i)
            expected.pop(b"key%d" % i)
        assert db.stats()["segments"] > 3
    with open_store(path, impl) as db:
        assert dict(db.items()) == expected
    for name in os.listdir(path):
        if name.endswith(".hint"):
            os.unlink(path / name)
    with open_store(path, impl) as db:
        assert dict(db.items()) == expected and len(db) == len(expected)
    assert any(n.endswith(".hint") for n in os.listdir(path))  # rebuilt


def test_compression_flagged_per_record(tmp_path, impl):
    path = tmp_path / "db"
    big = b"abc" * 10000
    noise = os.urandom(9000)
    with open_store(path, impl, compress_threshold=4096) as db:
        db.put(b"big", big)
        db.put(b"noise", noise)
        db.put(b"small", b"x" * 4096)
        assert db[b"big"] == big and db[b"noise"] == noise
    with open_store(path, impl) as db:
        assert db[b"big"] == big and db[b"noise"] == noise and db[b"small"] == b"x" * 4096
    flags = {key: f for name in segment_files(path) for _, _, f, key in records(path, name)}
    assert flags[b"big"] & fmt.FLAG_LZ4 and not flags[b"noise"] & fmt.FLAG_LZ4
    assert not flags[b"small"] & fmt.FLAG_LZ4
    assert sum(os.path.getsize(path / n) for n in segment_files(path)) < len(big) // 10 + 20000


def test_write_batch_and_torn_batch(tmp_path, impl):
    path = tmp_path / "db"
    with open_store(path, impl) as db:
        db.put(b"before", b"1")
        db.put(b"gone", b"x")
        db.write_batch([(b"b1", b"v1"), (b"gone", None), (b"b2", b"v2")])
        assert db[b"b1"] == b"v1" and b"gone" not in db and db[b"b2"] == b"v2"
        db.write_batch([])
    with open_store(path, impl) as db:
        assert db[b"b1"] == b"v1" and b"gone" not in db
        db.put(b"pre", b"p")
        db.write_batch([(b"t%d" % i, b"val%d" % i) for i in range(5)])
        db.sync()
        db.close()
    # Cut the newest segment inside the last batch: the whole batch must go, nothing else.
    name = segment_files(path)[-1]
    recs = records(path, name)
    batch = [r for r in recs if r[3].startswith(b"t")]
    assert len(batch) == 5 and all(r[2] & fmt.FLAG_BATCH for r in batch)
    cut = batch[2][0] + 5
    with open(path / name, "r+b") as f:
        f.truncate(cut)
    with open_store(path, impl) as db:
        assert db.count(b"t") == 0
        assert db[b"before"] == b"1" and db[b"b2"] == b"v2" and db[b"pre"] == b"p"
    assert os.path.getsize(path / name) == batch[0][0]  # torn batch truncated away


def test_prefix_operations(tmp_path, impl):
    with open_store(tmp_path / "db", impl) as db:
        for p in (b"a:", b"b:", b"ab"):
            for i in range(20):
                db.put(p + b"%d" % i, p)
        assert db.count(b"a:") == 20 and db.count(b"a") == 40 and db.count() == 60
        assert sorted(db.keys(b"b:")) == sorted(b"b:%d" % i for i in range(20))
        assert all(v == b"b:" for _, v in db.items(b"b:"))
        assert db.delete_prefix(b"a:") == 20
        assert db.count(b"a:") == 0 and db.count() == 40
        assert db.delete_prefix(b"zz") == 0
        db.close()
    with open_store(tmp_path / "db", impl) as db:
        assert db.count(b"a:") == 0 and db.count(b"ab") == 20


def test_iteration_under_concurrent_writes(tmp_path, impl):
    with open_store(tmp_path / "db", impl, segment_size=4000) as db:
        stable = {b"s%04d" % i: b"v%d" % i for i in range(400)}
        for k, v in stable.items():
            db.put(k, v)
        for i in range(200):
            db.put(b"t%04d" % i, b"x")
        seen = []
        for n, (k, v) in enumerate(db.items()):
            seen.append(k)
            if k in stable:
                assert v == stable[k]
            # writes, deletes and merges while iterating
            db.put(b"new%d" % n, b"y")
            db.delete(b"t%04d" % (n % 200))
            db.put(b"s%04d" % (n % 400), stable[b"s%04d" % (n % 400)])
            if n % 150 == 0:
                db.merge()
        assert len(seen) == len(set(seen))
        assert set(stable) <= set(seen)


def test_merge_reclaims_and_keeps_contents(tmp_path, impl):
    path = tmp_path / "db"
    with open_store(path, impl, segment_size=8192) as db:
        for round_ in range(10):
            for i in range(100):
                db.put(b"k%03d" % i, b"round%d-%d" % (round_, i) + b"." * 50)
        for i in range(0, 100, 3):
            db.delete(b"k%03d" % i)
        expected = dict(db.items())
        before = db.stats()
        assert before["dead_bytes"] > before["live_bytes"]
        assert db.merge() > 0
        after = db.stats()
        assert after["dead_bytes"] == 0 and after["live_bytes"] == before["live_bytes"]
        disk = sum(os.path.getsize(path / n) for n in segment_files(path))
        assert disk == after["disk_bytes"] < before["disk_bytes"] // 3
        assert dict(db.items()) == expected
        db.put(b"after", b"merge")
        expected[b"after"] = b"merge"
    with open_store(path, impl) as db:
        assert dict(db.items()) == expected
    assert not [n for n in os.listdir(path) if n.endswith(".tmp")]


def test_merge_keeps_tombstone_hiding_an_older_segment(tmp_path, impl):
    path = tmp_path / "db"
    with open_store(path, impl, segment_size=1000) as db:
        db.put(b"victim", b"old value")
        for i in range(20):
            db.put(b"fill%d" % i, b"f" * 40)  # segment 1 stays mostly live
        db.delete(b"victim")
        for i in range(30):
            db.put(b"churn", b"c" * 40)  # the tombstone's segment is mostly dead
        eng = db._engine
        assert eng.merge(0.6) >= 1
        assert db.get(b"victim") is None
        assert eng.merge(0.6) == 0  # the kept tombstone is not rewritten over and over
        assert not eng.needs_merge(0.6)
    with open_store(path, impl) as db:
        assert db.get(b"victim") is None
        assert db[b"churn"] == b"c" * 40 and db.count(b"fill") == 20


def wait_for_held_merge(core):
    """Until a merge is held by ``hold_merge_lookups`` (10 s at most)."""
    for _ in range(1000):
        if core.merge_lookups_waiting():
            break
        time.sleep(0.01)
    assert core.merge_lookups_waiting() == 1


def test_writes_in_the_middle_of_a_merges_lookups_come_out_as_written(tmp_path):
    """A merge looks up which records of a segment are live without the GIL, so writers (a node's event loop)
    go on meanwhile: the lookups used to hold it, and the event loop stalled for up to 150 ms once per merge of
    a full segment. Here the merge is held between two chunks of lookups while keys it has decided on, and keys
    it has not, are overwritten, deleted, put again after their tombstone, and added; everything must read as
    written after the merge, after a full merge, and after a reopen."""
    core = compiled_or_skip("logstore")
    path = str(tmp_path / "db")
    store = core.LogStore(path, segment_size=256 << 10)
    model = {}

    def put(key, value):
        store.put(key, value)
        model[key] = value

    def delete(key):
        store.delete(key)
        model.pop(key, None)

    for i in range(4000):  # the old segments, which stay: their values need the tombstones below
        put(b"a%05d" % i, b"a" * 100)
    for i in range(6000):  # the segments merged: a quarter of these stay live, with tombstones among them
        put(b"t%05d" % i, b"t" * 100)
        if i % 6 == 0:
            delete(b"a%05d" % (i // 6))
    for i in range(6000):
        if i % 4:
            put(b"t%05d" % i, b"u" * 100)
    merged = []
    core.hold_merge_lookups()
    merging = threading.Thread(target=lambda: merged.append(store.merge(0.6)))
    try:
        merging.start()
        wait_for_held_merge(core)
        for i in range(0, 6000, 4):  # the live ones, decided on (the first chunk) and not
            if i % 8 == 0:
                put(b"t%05d" % i, b"w" * 100)
            else:
                delete(b"t%05d" % i)
        for i in range(0, 1000, 2):  # deleted a-keys put again: their tombstones may have been decided on
            put(b"a%05d" % i, b"b" * 100)
        for i in range(1000, 1500):  # a-keys whose tombstones come after the merge's
            delete(b"a%05d" % i)
        for i in range(20000):  # enough new keys for the keydir to grow
            put(b"n%05d" % i, b"n")
    finally:
        core.release_merge_lookups()
        merging.join(timeout=60)
    assert merged and merged[0] >= 2
    assert store._check_keydir() == []
    assert len(store) == len(model) and dict(store.items()) == model
    stats = store.stats()  # no segment's live or dead bytes taken below zero (they are unsigned)
    assert stats["live_bytes"] + stats["dead_bytes"] <= stats["disk_bytes"] + stats["buffer_bytes"]
    store.merge()
    assert store.stats()["dead_bytes"] == 0 and dict(store.items()) == model
    store.close()
    store = core.LogStore(path, segment_size=256 << 10)
    assert len(store) == len(model) and dict(store.items()) == model
    store.close()


def test_a_writer_waits_for_a_merges_chunk_of_lookups(tmp_path):
    """A merge's lookups run without the GIL; a write meanwhile must wait for the chunk of them in hand, since
    the keydir it changes can grow or compact under them (a lookup sent to freed memory, or a live record taken
    for dead and lost). Here the merge holds its chunk until it sees the writer waiting."""
    core = compiled_or_skip("logstore")
    store = core.LogStore(str(tmp_path / "db"), segment_size=256 << 10)
    for i in range(6000):
        store.put(b"k%05d" % i, b"v" * 100)
    for i in range(6000):
        store.put(b"k%05d" % i, b"w" * 100)
    blocked = core.writers_blocked()
    core.hold_merge_lookups(locked=True)
    merging = threading.Thread(target=store.merge, args=(0.6,))
    try:
        merging.start()
        wait_for_held_merge(core)
        store.put(b"during", b"the merge")
        assert core.writers_blocked() == blocked + 1
    finally:
        core.release_merge_lookups()
        merging.join(timeout=60)
    assert store.get(b"during") == b"the merge" and store.get(b"k00007") == b"w" * 100
    store.close()


def test_merges_looking_up_while_the_keydir_grows_and_compacts_keep_every_write(tmp_path, impl):
    """Merges run back to back beside a writer whose keys make the keydir grow (its slots move) and whose deletes
    make it compact (its items move): a merge's GIL-free lookups must never see either half done."""
    path = tmp_path / "db"
    model = {}
    with open_store(path, impl, segment_size=64 << 10) as db:
        stop = threading.Event()
        merges = [0]

        def merging():
            while not stop.is_set():
                merges[0] += db._engine.merge(0.3)

        thread = threading.Thread(target=merging)
        thread.start()
        try:
            for i in range(30000):
                key = b"k%d" % (i * 7919 % 12000)
                if i % 5 == 4:
                    db.delete(key)
                    model.pop(key, None)
                else:
                    db.put(key, b"v%d" % i + b"." * 40)
                    model[key] = b"v%d" % i + b"." * 40
        finally:
            stop.set()
            thread.join(timeout=60)
        assert merges[0] > 0
        assert dict(db.items()) == model
    with open_store(path, impl) as db:
        assert dict(db.items()) == model


def test_interval_syncs_go_on_while_a_merge_runs(tmp_path):
    """sync="interval" promises that at most sync_interval of acknowledged writes is lost; a merge takes from
    tens of ms to seconds. Syncs and merges shared one thread, and no sync ran while a merge did. Here the
    background merge is held in the middle of its lookups while a write waits for the next interval's fsync."""
    core = compiled_or_skip("logstore")
    db = Store(tmp_path / "db", engine=core, sync="interval", sync_interval=0.02, segment_size=256 << 10,
               merge_check_interval=0.02)
    core.hold_merge_lookups()
    try:
        for value in (b"v", b"w"):  # the first round's segments all dead: a merge is due
            for i in range(6000):
                db.put(b"k%05d" % i, value * 100)
        wait_for_held_merge(core)
        fsyncs = db.stats()["fsyncs"]
        db.put(b"during", b"the merge")
        for _ in range(500):
            if db.stats()["fsyncs"] > fsyncs:
                break
            time.sleep(0.01)
        assert db.stats()["fsyncs"] > fsyncs, "no sync while the merge ran"
        assert core.merge_lookups_waiting() == 1
    finally:
        core.release_merge_lookups()
        db.close()
    with open_store(tmp_path / "db", core) as db:
        assert db[b"during"] == b"the merge" and len(db) == 6001


def test_background_merge_runs(tmp_path, impl):
    with open_store(tmp_path / "db", impl, segment_size=4096, background_merge=True,
                    merge_check_interval=0.02, merge_trigger=0.5) as db:
        for i in range(2000):
            db.put(b"k%d" % (i % 10), b"v%d" % i)
        deadline = time.monotonic() + 20
        while db.stats()["merges"] == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert db.stats()["merges"] > 0
        assert db[b"k9"] == b"v1999" and len(db) == 10


def test_flipped_byte_detected_on_read(tmp_path, impl):
    path = tmp_path / "db"
    with open_store(path, impl) as db:
        for i in range(10):
            db.put(b"k%d" % i, b"value%d" % i)
    name = segment_files(path)[-1]
    off, size, _, key = [r for r in records(path, name) if r[3] == b"k4"][0]
    with open(path / name, "r+b") as f:
        f.seek(off + size - 2)
        b = f.read(1)
        f.seek(off + size - 2)
        f.write(bytes([b[0] ^ 0xFF]))
    with open_store(path, impl) as db:  # the hint is intact: the damage is found by get
        with pytest.raises(CorruptionError):
            db.get(b"k4")
        assert db[b"k3"] == b"value3" and db[b"k5"] == b"value5"
        with pytest.raises(CorruptionError):
            dict(db.items())
    for n in os.listdir(path):
        if n.endswith(".hint"):
            os.unlink(path / n)
    with open_store(path, impl) as db:  # rebuilt from data: the damaged record is skipped, not served
        assert db.get(b"k4") is None
        assert db[b"k3"] == b"value3" and db[b"k5"] == b"value5" and len(db) == 9


def test_damaged_record_falls_back_to_older_version(tmp_path, impl):
    path = tmp_path / "db"
    with open_store(path, impl) as db:
        db.put(b"k", b"old")
        db.put(b"other", b"o")
        db.put(b"k", b"new")
        db.put(b"last", b"l")
    name = segment_files(path)[-1]
    off, size, _, _ = [r for r in records(path, name) if r[3] == b"k"][1]
    with open(path / name, "r+b") as f:
        f.seek(off + 1)
        f.write(b"\x00\x00")
    os.unlink(path / name.replace(".data", ".hint"))
    with open_store(path, impl) as db:
        assert db[b"k"] == b"old" and db[b"last"] == b"l"


def test_torn_tail_truncated(tmp_path, impl):
    path = tmp_path / "db"
    with open_store(path, impl) as db:
        for i in range(10):
            db.put(b"k%d" % i, b"v" * 30)
    name = segment_files(path)[-1]
    full = os.path.getsize(path / name)
    last_off = records(path, name)[-1][0]
    with open(path / name, "r+b") as f:
        f.truncate(full - 7)
    with open_store(path, impl) as db:  # hint no longer matches the file size: data is scanned
        assert len(db) == 9 and b"k9" not in db and db[b"k8"] == b"v" * 30
        db.put(b"k9", b"again")
    assert os.path.getsize(path / name) == last_off
    with open_store(path, impl) as db:
        assert db[b"k9"] == b"again" and len(db) == 10


def test_corrupt_hint_is_ignored(tmp_path, impl):
    path = tmp_path / "db"
    with open_store(path, impl, segment_size=500) as db:
        for i in range(50):
            db.put(b"k%d" % i, b"v%d" % i)
        expected = dict(db.items())
    hints = sorted(n for n in os.listdir(path) if n.endswith(".hint"))
    assert len(hints) > 2
    with open(path / hints[0], "r+b") as f:
        f.seek(3)
        f.write(b"\xff\xfe")
    with open(path / hints[1], "r+b") as f:
        f.truncate(10)
    with open_store(path, impl) as db:
        assert dict(db.items()) == expected


def test_locked_in_process_and_across_processes(tmp_path, impl):
    path = tmp_path / "db"
    with open_store(path, impl) as db:
        db.put(b"k", b"v")
        with pytest.raises(StoreLocked):
            open_store(path, impl)
        code = (
            "import sys, dynafast\n"
            "try:\n    dynafast.open(sys.argv[1])\nexcept dynafast.StoreLocked:\n    sys.exit(7)\n"
        )
        proc = subprocess.run([sys.executable, "-c", code, str(path)], timeout=60)
        assert proc.returncode == 7
    with open_store(path, impl) as db:  # released on close
        assert db[b"k"] == b"v"


def test_closed_store_raises(tmp_path, impl):
    db = open_store(tmp_path / "db", impl)
    db.put(b"k", b"v")
    it = db.keys()
    db.close()
    db.close()  # idempotent
    for call in (lambda: db.put(b"k", b"v"), lambda: db.get(b"k"), lambda: db.delete(b"k"),
                 lambda: db.sync(), lambda: db.merge(), lambda: db.stats(), lambda: len(db),
                 lambda: b"k" in db, lambda: list(db.items()), lambda: db.count(),
                 lambda: db.write_batch([(b"a", b"b")]), lambda: next(it)):
        with pytest.raises(StoreClosed):
            call()


def test_disk_full_keeps_acknowledged_and_recovers(tmp_path, impl):
    path = tmp_path / "db"
    db = open_store(path, impl, sync="always")
    try:
        for i in range(20):
            db.put(b"acked%d" % i, b"v%d" % i)
        impl.set_io_fault(errno.ENOSPC, after_bytes=10)  # a partial write, then the disk is full
        with pytest.raises(StorageFull):
            db.put(b"failed", b"x" * 100)
        with pytest.raises(StorageFull):
            db.sync()
        assert db[b"acked3"] == b"v3"
        impl.clear_io_fault()
        db.put(b"later", b"ok")  # usable again once space is back
        assert db[b"later"] == b"ok" and db[b"acked19"] == b"v19"
    finally:
        impl.clear_io_fault()
        db.close()
    with open_store(path, impl) as db:
        assert all(db[b"acked%d" % i] == b"v%d" % i for i in range(20))
        assert db[b"later"] == b"ok"


def test_disk_full_on_buffer_flush_writes_nothing(tmp_path, impl):
    path = tmp_path / "db"
    db = open_store(path, impl, write_buffer_size=256)
    try:
        for i in range(5):
            db.put(b"k%d" % i, b"v" * 40)
        impl.set_io_fault(errno.ENOSPC)
        with pytest.raises(StorageFull):
            for i in range(5, 50):
                db.put(b"k%d" % i, b"v" * 40)
        n = len(db)
        with pytest.raises(StorageFull):
            db.put(b"nope", b"v" * 300)
        assert b"nope" not in db and len(db) == n
        with pytest.raises(StorageFull):
            db.close()
        assert not db.closed
        impl.clear_io_fault()
        db.close()
    finally:
        impl.clear_io_fault()
        db.close()
    with open_store(path, impl) as db:
        assert len(db) == n and all(db[b"k%d" % i] == b"v" * 40 for i in range(n))


@pytest.mark.parametrize("round_", range(3))
def test_threads_share_the_store(tmp_path, impl, round_):
    # Switch threads often: rolls, group-commit flushes and merges interleave with every put.
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-4)
    try:
        _threads_share_the_store(tmp_path, impl)
    finally:
        sys.setswitchinterval(old)


def _threads_share_the_store(tmp_path, impl):
    with open_store(tmp_path / "db", impl, sync="always", segment_size=3000) as db:
        errors = []

        def writer(t):
            try:
                for i in range(120):
                    db.put(b"t%d-%d" % (t, i), b"v%d" % i)
                    assert db.get(b"t%d-%d" % (t, i)) == b"v%d" % i
                    if i % 10 == 0:
                        db.sync()
            except Exception as exc:  # pragma: no cover - reported below
                errors.append(exc)

        def merger():
            for _ in range(15):
                db.merge()

        threads = [threading.Thread(target=writer, args=(t,)) for t in range(8)]
        threads.append(threading.Thread(target=merger))
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        if hasattr(db._engine, "_check_keydir"):  # compiled: every entry points inside a live segment
            assert db._engine._check_keydir() == []
        assert len(db) == 960
        db.close()
    with open_store(tmp_path / "db", impl) as db:
        assert len(db) == 960 and db[b"t7-119"] == b"v119"


def test_sync_modes_and_stats(tmp_path, impl):
    for mode in ("none", "interval", "always"):
        path = tmp_path / mode
        with open_store(path, impl, sync=mode, sync_interval=0.01, flush_interval=0.01) as db:
            db.put(b"k", b"v")
            db.sync()
            s = db.stats()
            assert s["keys"] == 1 and s["sync"] == mode and s["keydir_bytes"] > 0
            assert s["keydir_bytes_per_key"] > 0
    with pytest.raises(ValueError):
        open_store(tmp_path / "bad", impl, sync="sometimes")
    # A background thread's tick: zero would never sync, or spin.
    for bad in ({"sync": "interval", "sync_interval": 0}, {"background_merge": True, "merge_check_interval": 0},
                {"flush_interval": -1}):
        with pytest.raises(ValueError):
            open_store(tmp_path / "bad", impl, **bad)


def test_open_returns_store(tmp_path):
    with dynafast.open(tmp_path / "db", sync="none") as db:
        assert isinstance(db, Store)
        db[b"k"] = b"v"
    with dynafast.open(str(tmp_path / "db")) as db:
        assert db[b"k"] == b"v"


def test_both_builds_read_each_others_files(tmp_path):
    from dynafast import _impl

    try:
        compiled = _impl.compiled("logstore")
    except ImportError:
        pytest.skip("dynafast._core.logstore is not built")
    reference = _impl.reference("logstore")
    big = b"compressible " * 1000
    for writer, reader in ((compiled, reference), (reference, compiled)):
        path = tmp_path / writer.__name__
        with open_store(path, writer, segment_size=3000) as db:
            for i in range(200):
                db.put(b"k%d" % i, b"v%d" % i * (i % 7))
            db.write_batch([(b"b1", big), (b"k3", None)])
            db.delete(b"k5")
            expected = dict(db.items())
        for drop_hints in (False, True):
            if drop_hints:
                for n in os.listdir(path):
                    if n.endswith(".hint"):
                        os.unlink(path / n)
            with open_store(path, reader) as db:
                assert dict(db.items()) == expected
                db.merge()
                assert dict(db.items()) == expected


def test_empty_segment_left_by_a_crash_is_removed(tmp_path, impl):
    path = tmp_path / "db"
    with open_store(path, impl) as db:
        db.put(b"k", b"v")
    (path / ("%016x.data" % (5 << 16))).write_bytes(b"")  # a roll that created its file, then crashed
    with open_store(path, impl) as db:
        assert db[b"k"] == b"v"
    assert "%016x.data" % (5 << 16) not in os.listdir(path)


def test_keydir_compaction_with_and_without_open_iterators(tmp_path, impl):
    with open_store(tmp_path / "db", impl) as db:
        for i in range(20000):
            db.put(b"key-%06d" % i, b"v%d" % i)
        it = db.keys()
        first = [next(it) for _ in range(10)]
        for i in range(0, 20000, 2):  # enough deletes to compact the keydir, but an iterator is open
            db.delete(b"key-%06d" % i)
        rest = list(it)
        seen = first + rest
        assert len(seen) == len(set(seen))
        assert {b"key-%06d" % i for i in range(1, 20000, 2)} <= set(seen)
        for i in range(0, 20000, 4):  # no iterator now: compaction may run
            db.put(b"key-%06d" % i, b"back")
            db.delete(b"key-%06d" % (i + 1))
        expected = {b"key-%06d" % i: b"back" for i in range(0, 20000, 4)}
        expected.update({b"key-%06d" % i: b"v%d" % i for i in range(3, 20000, 4)})
        assert dict(db.items()) == expected and len(db) == len(expected)
        assert db.count(b"key-00") == sum(1 for k in expected if k.startswith(b"key-00"))
        assert all(db[k] == v for k, v in list(expected.items())[::97])


def test_record_larger_than_a_segment(tmp_path, impl):
    path = tmp_path / "db"
    big = os.urandom(3000)
    with open_store(path, impl, segment_size=1000, compress_threshold=10**6) as db:
        db.put(b"a", b"1")
        db.put(b"big", big)
        db.put(b"b", b"2")
        assert db[b"big"] == big and db[b"a"] == b"1" and db[b"b"] == b"2"
        db.write_batch([(b"c%d" % i, big) for i in range(3)])
        assert db[b"c2"] == big
    with open_store(path, impl) as db:
        assert db[b"big"] == big and db[b"c1"] == big and db[b"b"] == b"2"
        db.merge()
        assert db[b"big"] == big and db[b"c0"] == big


def test_dropped_store_is_closed_and_unlocked(tmp_path, impl):
    import gc

    path = tmp_path / "db"
    db = open_store(path, impl, flush_interval=0.01, background_merge=True, merge_check_interval=0.01)
    db.put(b"k", b"v")
    del db
    gc.collect()
    deadline = time.monotonic() + 10
    while True:  # the background thread lets go of it within a tick
        try:
            db = open_store(path, impl)
            break
        except StoreLocked:
            assert time.monotonic() < deadline
            time.sleep(0.01)
    with db:
        assert db[b"k"] == b"v"


def test_fsync_failure_while_sealing_a_segment(tmp_path, impl):
    path = tmp_path / "db"
    db = open_store(path, impl, sync="always", segment_size=200)
    try:
        for i in range(3):
            db.put(b"k%d" % i, b"v" * 40)  # 61-byte records: the 4th does not fit
        impl.set_io_fault(errno.ENOSPC)
        with pytest.raises(StorageFull):
            db.put(b"k3", b"v" * 40)
        impl.clear_io_fault()
        db.put(b"k3", b"v" * 40)
        db.put(b"k4", b"v" * 40)
        assert [db[b"k%d" % i] for i in range(5)] == [b"v" * 40] * 5
    finally:
        impl.clear_io_fault()
        db.close()
    with open_store(path, impl) as db:
        assert [db[b"k%d" % i] for i in range(5)] == [b"v" * 40] * 5


# -- copy_into: a consistent copy while writes go on (what a node's backup is) ---------------------------------
def test_copy_into_holds_everything_written_before_it(tmp_path, impl):
    with open_store(tmp_path / "db", impl, segment_size=4096) as db:
        for i in range(500):
            db.put(b"k%d" % i, b"v%d" % i)
        for i in range(0, 500, 5):
            db.delete(b"k%d" % i)
        figures = db.copy_into(tmp_path / "copy")
        db.put(b"after", b"not in the copy")
        sealed = segment_files(tmp_path / "db")[:-1]
    assert figures["segments"] >= 2 and figures["linked_bytes"] > 0
    # Sealed segments are the same files, hard-linked, not copies.
    for name in sealed[:1]:
        assert os.stat(tmp_path / "db" / name).st_ino == os.stat(tmp_path / "copy" / name).st_ino
    with open_store(tmp_path / "copy", impl) as copy:
        assert not copy.recovery["lost"], copy.recovery
        assert {bytes(k): copy.get(k) for k in copy.keys()} == {b"k%d" % i: b"v%d" % i for i in range(500) if i % 5}


def test_copy_into_refuses_a_directory_holding_a_store(tmp_path, impl):
    with open_store(tmp_path / "db", impl) as db:
        db.put(b"a", b"1")
        db.copy_into(tmp_path / "copy")
        with pytest.raises(FileExistsError):
            db.copy_into(tmp_path / "copy")


def test_copy_into_under_concurrent_writes_and_merges_is_a_prefix(tmp_path, impl):
    with open_store(tmp_path / "db", impl, segment_size=2048) as db:
        for i in range(300):
            db.put(b"base%d" % i, b"x" * 40)
        stop = threading.Event()
        count = [0]

        def churn():  # overwrites (dead bytes for merges) and new keys in order: a copy must hold a prefix
            while not stop.is_set():
                db.put(b"seq%d" % count[0], b"y" * 40)
                db.put(b"base%d" % (count[0] % 300), b"z" * 40)
                count[0] += 1
                if count[0] % 20 == 0:
                    db.merge()

        thread = threading.Thread(target=churn)
        thread.start()
        try:
            wait_until = time.monotonic() + 10
            while count[0] < 400 and time.monotonic() < wait_until:
                time.sleep(0.01)
            for attempt in range(5):  # several copies: each races the merges
                db.copy_into(tmp_path / f"copy{attempt}")
        finally:
            stop.set()
            thread.join()
    for attempt in range(5):
        with open_store(tmp_path / f"copy{attempt}", impl) as copy:
            seq = sorted(int(bytes(k)[3:]) for k in copy.keys(b"seq"))
            assert seq == list(range(len(seq))) and len(seq) >= 400  # no hole: a prefix of the writes
            assert copy.count(b"base") == 300


def test_copy_into_another_filesystem_copies_the_sealed_segments(tmp_path, impl):
    import shutil
    import tempfile

    if not os.path.isdir("/dev/shm") or os.stat("/dev/shm").st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("needs /dev/shm on another filesystem than the test's directory")
    other = tempfile.mkdtemp(dir="/dev/shm")
    try:
        with open_store(tmp_path / "db", impl, segment_size=4096) as db:
            for i in range(300):
                db.put(b"k%d" % i, b"v%d" % i)
            figures = db.copy_into(os.path.join(other, "copy"))
        assert figures["linked_bytes"] == 0 and figures["segments"] >= 2
        with open_store(os.path.join(other, "copy"), impl) as copy:
            assert not copy.recovery["lost"] and copy.count() == 300 and copy.get(b"k7") == b"v7"
    finally:
        shutil.rmtree(other, ignore_errors=True)


def test_a_delete_stays_when_an_earlier_tombstone_is_lost(tmp_path, impl):
    """A key can read as absent because of a tombstone whose record is damaged (the segment's hint still applies
    it). A delete of it then must write a tombstone of its own: when the damaged record goes (the hint is lost
    and the data read instead), the key's older value must not come back, since that delete was acknowledged."""
    path = tmp_path / "db"
    with open_store(path, impl, segment_size=700) as db:
        db.put(b"c", b"older")
        db.merge()  # seals that segment: the tombstone below goes into the next one
        db.delete(b"c")
    name = segment_files(path)[-1]
    data = (path / name).read_bytes()
    offset = next(off for off, _, flags, key in records(path, name) if key == b"c" and flags & fmt.FLAG_TOMBSTONE)
    with open(path / name, "r+b") as f:  # the tombstone's checksum fails now
        f.seek(offset)
        f.write(bytes([data[offset] ^ 1]))
    with open_store(path, impl) as db:
        assert db.get(b"c") is None  # the hint still applies the tombstone
        db.delete(b"c")
    os.unlink(path / name.replace(".data", ".hint"))
    with open_store(path, impl) as db:
        assert db.get(b"c") is None


def test_a_rolls_hint_is_written_off_the_writers_thread(tmp_path):
    """With hints deferred (a Store with its own thread), a roll leaves the sealed segment's hint file to
    ``write_hints()``: writing tens of MB of hint on the writer's thread stopped a node's event loop for 100 ms and
    more. The hint then reads as any other; a crash before it is written loses nothing (the data is read instead);
    the pending hint of a segment merged away meanwhile is dropped, never written beside no data file."""
    core = pytest.importorskip("dynafast._core.logstore")
    path = tmp_path / "db"
    db = core.LogStore(str(path), segment_size=4096, write_buffer_size=1024)
    db.defer_hints(True)
    for i in range(200):
        db.put(b"k%03d" % i, b"v%03d" % i + b"." * 40)
    sealed = segment_files(path)[:-1]
    assert len(sealed) >= 3
    assert not [n for n in os.listdir(path) if n.endswith(".hint")]  # none written by the rolls
    db.write_hints()
    assert sorted(n.replace(".hint", ".data") for n in os.listdir(path) if n.endswith(".hint")) == sealed
    for value in (b"u", b"w"):  # everything rewritten twice: the segments of the first two rounds all dead
        for i in range(200):
            db.put(b"k%03d" % i, value + b"%03d" % i + b"." * 40)
    db.merge(0.5)  # they go, the second round's with its hints still pending
    db.write_hints()
    hints = {n.replace(".hint", ".data") for n in os.listdir(path) if n.endswith(".hint")}
    assert hints <= set(segment_files(path)), hints - set(segment_files(path))
    for i in range(50):
        db.put(b"k%03d" % i, b"x%03d" % i)
    db.flush()
    db.sync()
    # Crashed with hints pending: the next open reads their segments.
    expected = {b"k%03d" % i: (b"x%03d" % i if i < 50 else b"w%03d" % i + b"." * 40) for i in range(200)}
    copy = tmp_path / "crashed"
    shutil.copytree(path, copy)
    db.close()
    with open_store(copy, core) as reopened:
        assert dict(reopened.items()) == expected
    with open_store(path, core) as reopened:
        assert dict(reopened.items()) == expected
