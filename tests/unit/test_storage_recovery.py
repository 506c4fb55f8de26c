"""What opening a store reports about what recovery lost (``Store.recovery``), on real files, both builds.

A store that lost records it had acknowledged must say so (the node then takes a new actor and pulls its
data back from the other replicas); a crash that only tore writes never fsync'd must not.
"""
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

import dynafast
from dynafast import _impl
from dynafast._ref import logstore as fmt

from conftest import implementations
from test_storage import open_store, segment_files

impl = implementations("logstore")

CHILD = os.path.join(os.path.dirname(os.path.dirname(__file__)), "helpers", "storage_crash_child.py")
COUNTS = ("truncated_bytes", "corrupt_records", "missing_segments", "short_segments", "hint_mismatch")


def records(path, name):
    with open(os.path.join(path, name), "rb") as f:
        return fmt.scan_records(f.read())[0]  # [(offset, size, flags, key)]


def fill(db, n=200):
    for i in range(n):
        db.put(b"key%03d" % i, b"value-%d-" % i + b"x" * 40)


def reopen_report(path, impl):
    with open_store(path, impl) as db:
        return db.recovery


def assert_clean(rec):
    assert not rec["lost"] and not rec["manifest_missing"], rec
    assert all(rec[k] == 0 for k in COUNTS), rec


def crash_copy(db, path, dest):
    """The files of an open store as a crash would leave them (flushed to the OS, never closed)."""
    db.flush()
    shutil.copytree(path, dest)
    os.unlink(dest / "LOCK")
    return dest


def test_empty_directory_is_fresh_then_not(tmp_path, impl):
    path = tmp_path / "db"
    rec = reopen_report(path, impl)
    assert rec["fresh"] and rec["details"] == []
    assert_clean(rec)
    rec = reopen_report(path, impl)  # a store now, though it holds nothing
    assert not rec["fresh"]
    assert_clean(rec)


def test_clean_reopen_loses_nothing(tmp_path, impl):
    path = tmp_path / "db"
    with open_store(path, impl, segment_size=2000) as db:
        fill(db)
        for i in range(0, 200, 3):
            db.delete(b"key%03d" % i)
        assert db.recovery["fresh"]
        db.merge()
        fill(db, 50)
        expected = dict(db.items())
    rec = reopen_report(path, impl)
    assert not rec["fresh"] and rec["details"] == []
    assert_clean(rec)
    for name in os.listdir(path):  # hints are only an accelerator: rebuilding them loses nothing either
        if name.endswith(".hint"):
            os.unlink(path / name)
    with open_store(path, impl) as db:
        assert_clean(db.recovery)
        assert dict(db.items()) == expected


def test_deleted_sealed_segment_is_lost(tmp_path, impl):
    path = tmp_path / "db"
    with open_store(path, impl, segment_size=2000) as db:
        fill(db)
    names = segment_files(path)
    assert len(names) > 3
    os.unlink(path / names[1])
    rec = reopen_report(path, impl)
    assert rec["lost"] and rec["missing_segments"] == 1 and not rec["fresh"]
    assert any(names[1] in line for line in rec["details"])
    assert_clean(reopen_report(path, impl))  # reported once: the store now is what it holds


def test_manifest_without_data_files_is_lost(tmp_path, impl):
    path = tmp_path / "db"
    with open_store(path, impl, segment_size=2000) as db:
        fill(db)
    names = segment_files(path)
    for name in os.listdir(path):
        if name.endswith((".data", ".hint")):
            os.unlink(path / name)
    rec = reopen_report(path, impl)
    assert rec["lost"] and not rec["fresh"] and rec["missing_segments"] == len(names)


def test_missing_manifest_beside_data_is_lost(tmp_path, impl):
    path = tmp_path / "db"
    with open_store(path, impl, segment_size=2000) as db:
        fill(db)
    os.unlink(path / "MANIFEST")
    rec = reopen_report(path, impl)
    assert rec["lost"] and rec["manifest_missing"] and not rec["fresh"]
    (path / "MANIFEST").write_bytes(b"\x00" * 16)
    rec = reopen_report(path, impl)
    assert rec["lost"] and rec["manifest_missing"]


def test_flipped_byte_without_hint_is_lost(tmp_path, impl):
    path = tmp_path / "db"
    with open_store(path, impl, segment_size=4000) as db:
        fill(db)
    name = segment_files(path)[2]
    off, size, _, key = records(path, name)[3]  # a record in the middle of a sealed segment
    with open(path / name, "r+b") as f:
        f.seek(off + size - 2)
        b = f.read(1)
        f.seek(off + size - 2)
        f.write(bytes([b[0] ^ 0xFF]))
    os.unlink(path / name.replace(".data", ".hint"))
    with open_store(path, impl) as db:
        rec = db.recovery
        assert db.get(key) is None  # skipped, never served
    assert rec["lost"] and rec["corrupt_records"] == 1 and rec["truncated_bytes"] == 0, rec


@pytest.mark.parametrize("keep_hint", [True, False])
def test_sealed_segment_truncated_to_half_is_lost(tmp_path, impl, keep_hint):
    path = tmp_path / "db"
    with open_store(path, impl, segment_size=4000) as db:
        fill(db)
    name = segment_files(path)[1]
    full = os.path.getsize(path / name)
    # Cut at a record boundary: the rest of the file is intact, only the recorded size shows the loss.
    half = min((off for off, _, _, _ in records(path, name)), key=lambda off: abs(off - full // 2))
    assert 0 < half < full
    os.truncate(path / name, half)
    if not keep_hint:
        os.unlink(path / name.replace(".data", ".hint"))
    rec = reopen_report(path, impl)
    assert rec["lost"] and rec["short_segments"] == 1 and rec["truncated_bytes"] == 0, rec
    assert rec["hint_mismatch"] == (1 if keep_hint else 0), rec


def test_torn_tail_of_a_sealed_segment_is_lost(tmp_path, impl):
    path = tmp_path / "db"
    with open_store(path, impl, segment_size=4000) as db:
        fill(db)
    name = segment_files(path)[0]
    os.truncate(path / name, os.path.getsize(path / name) - 7)
    os.unlink(path / name.replace(".data", ".hint"))
    rec = reopen_report(path, impl)
    assert rec["lost"] and rec["truncated_bytes"] > 0 and rec["short_segments"] == 1, rec


def test_crash_tearing_the_unsynced_tail_is_not_lost(tmp_path, impl):
    path = tmp_path / "db"
    with open_store(path, impl, segment_size=4000) as db:
        fill(db)
        crashed = crash_copy(db, path, tmp_path / "crashed")
    active = segment_files(crashed)[-1]
    assert os.path.getsize(crashed / active) > 0 and not (crashed / active.replace(".data", ".hint")).exists()
    os.truncate(crashed / active, os.path.getsize(crashed / active) - 7)  # the last write torn
    with open_store(crashed, impl) as db:
        rec = db.recovery
        assert db.get(b"key000") is not None
    assert rec["truncated_bytes"] > 0 and not rec["lost"], rec
    assert rec["corrupt_records"] == rec["missing_segments"] == rec["short_segments"] == 0, rec


def test_deleted_active_segment_after_a_crash_is_lost(tmp_path, impl):
    path = tmp_path / "db"
    with open_store(path, impl, segment_size=4000) as db:
        fill(db)
        crashed = crash_copy(db, path, tmp_path / "crashed")
    os.unlink(crashed / segment_files(crashed)[-1])
    rec = reopen_report(crashed, impl)
    assert rec["lost"] and rec["missing_segments"] == 1, rec


def test_crash_between_merge_and_unlink_loses_nothing(tmp_path, impl):
    """The merge's inputs left on disk beside its outputs (a crash before they were unlinked)."""
    path = tmp_path / "db"
    with open_store(path, impl, segment_size=2000) as db:
        fill(db)
        for i in range(0, 200, 2):
            db.delete(b"key%03d" % i)
        db.flush()
        before = {n: (path / n).read_bytes() for n in segment_files(path)}
        assert db.merge() > 0
        expected = dict(db.items())
    for name, blob in before.items():
        if not (path / name).exists():
            (path / name).write_bytes(blob)
    with open_store(path, impl) as db:
        assert_clean(db.recovery)
        assert dict(db.items()) == expected


def test_merge_keeps_its_inputs_when_the_manifest_cannot_be_written(tmp_path, impl):
    """Disk full just as the merge would unlist its inputs: their files stay (the manifest still lists them)."""
    path = tmp_path / "db"
    with open_store(path, impl, segment_size=2000) as db:
        fill(db)
        for i in range(0, 200, 2):
            db.delete(b"key%03d" % i)
        expected = dict(db.items())
    # The same merge on a copy, without the fault, tells how many bytes it writes before the manifest.
    shutil.copytree(path, tmp_path / "dry")
    with open_store(tmp_path / "dry", impl) as db:
        before = set(os.listdir(tmp_path / "dry"))
        assert db.merge() > 0
        made = set(os.listdir(tmp_path / "dry")) - before
        written = sum(os.path.getsize(tmp_path / "dry" / n) for n in made if n.endswith((".data", ".hint")))
    inputs = segment_files(path)
    db = open_store(path, impl)
    try:
        impl.set_io_fault(after_bytes=written)  # the outputs and their hints fit; the manifest does not
        assert db.merge() > 0
        impl.clear_io_fault()
        assert dict(db.items()) == expected
    finally:
        impl.clear_io_fault()
        db.close()
    assert set(inputs) <= set(segment_files(path))
    with open_store(path, impl) as db:
        assert_clean(db.recovery)
        assert dict(db.items()) == expected


def run_and_kill(path, engine, start, want):
    """Run the writer child, SIGKILL it after ``want`` acknowledged writes; return the acknowledged ones."""
    proc = subprocess.Popen(
        [sys.executable, CHILD, str(path), engine, "write", str(start)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    acked = []
    try:
        deadline = time.monotonic() + 60
        while len(acked) < want and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            key, rnd = line.split()
            acked.append((key.encode(), int(rnd)))
    finally:
        proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate(timeout=30)
    assert acked, f"child produced no output: {err[-2000:]}"
    return acked


def test_killed_writer_loses_nothing(tmp_path, impl):
    engine = "compiled" if impl.__name__.startswith("dynafast._core") else "reference"
    path = tmp_path / "db"
    start = 0
    for want in (30, 300, 120):  # 300 writes roll several 16 KiB segments
        acked = run_and_kill(path, engine, start, want)
        start = max(r for _, r in acked) + 1000
        with open_store(path, impl) as db:
            rec = db.recovery
            for key, _ in acked:
                assert db.get(key) is not None, key
        assert not rec["lost"] and not rec["fresh"] and rec["missing_segments"] == rec["short_segments"] == 0, rec
        assert rec["corrupt_records"] == 0 and not rec["manifest_missing"], rec


def test_both_builds_report_the_same(tmp_path):
    try:
        compiled = _impl.compiled("logstore")
    except ImportError:
        pytest.skip("dynafast._core.logstore is not built")
    reference = _impl.reference("logstore")
    base = tmp_path / "base"
    with open_store(base, reference, segment_size=2000) as db:
        fill(db)
    names = segment_files(base)
    os.unlink(base / names[0])
    os.truncate(base / names[2], os.path.getsize(base / names[2]) // 2)
    os.truncate(base / names[3], os.path.getsize(base / names[3]) - 5)
    os.unlink(base / names[3].replace(".data", ".hint"))
    reports = []
    for mod in (compiled, reference):
        shutil.copytree(base, tmp_path / mod.__name__)
        reports.append(reopen_report(tmp_path / mod.__name__, mod))
    assert reports[0] == reports[1]
    assert reports[0]["lost"] and reports[0]["missing_segments"] == 1 and reports[0]["short_segments"] == 2


def test_open_exposes_recovery(tmp_path):
    with dynafast.open(tmp_path / "db", background_merge=False) as db:
        rec = db.recovery
        rec["lost"] = True  # a copy: the store's own report is not changed by its reader
        assert db.recovery["fresh"] and not db.recovery["lost"]
