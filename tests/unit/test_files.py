"""dynafast.files: atomic replacement of small state files, on the real filesystem with injected failures."""
import json
import os
import stat

import pytest

from dynafast.files import write_atomic, write_json_atomic


class Boom(Exception):
    pass


def fail(*_args, **_kwargs):
    raise Boom("injected")


def test_writes_and_replaces_leaving_only_the_target(tmp_path):
    path = tmp_path / "state.json"
    write_atomic(path, b"first")
    assert path.read_bytes() == b"first"
    write_atomic(str(path), b"second, longer than the first")
    assert path.read_bytes() == b"second, longer than the first"
    write_json_atomic(path, {"id": "ab", "n": [1, 2]})
    assert json.loads(path.read_text()) == {"id": "ab", "n": [1, 2]}
    assert os.listdir(tmp_path) == ["state.json"]


@pytest.mark.parametrize("step", ["fsync", "replace"])
def test_a_failure_between_steps_leaves_the_old_file_whole(tmp_path, monkeypatch, step):
    path = tmp_path / "state.json"
    write_atomic(path, b"old content")
    with monkeypatch.context() as m:
        m.setattr(os, step, fail)
        with pytest.raises(Boom):
            write_atomic(path, b"new content")
    assert path.read_bytes() == b"old content"
    assert os.listdir(tmp_path) == ["state.json"]  # the temporary file went with the failure
    write_atomic(path, b"new content")
    assert path.read_bytes() == b"new content"


def test_a_failed_first_write_leaves_no_file(tmp_path, monkeypatch):
    path = tmp_path / "state.json"
    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(Boom):
        write_atomic(path, b"content")
    assert os.listdir(tmp_path) == []


def test_unserialisable_json_touches_nothing(tmp_path):
    path = tmp_path / "state.json"
    write_json_atomic(path, [1])
    with pytest.raises(TypeError):
        write_json_atomic(path, [object()])
    assert json.loads(path.read_text()) == [1]
    assert os.listdir(tmp_path) == ["state.json"]


def test_temporary_files_do_not_accumulate(tmp_path, monkeypatch):
    path = tmp_path / "state.json"
    (tmp_path / "state.json.tmp").write_bytes(b"torn by a crash")  # left behind by a killed process
    for i in range(20):
        write_atomic(path, b"%d" % i)
    assert sorted(os.listdir(tmp_path)) == ["state.json"]
    # A crash after the temporary file is written but before the rename leaves one file, reused next time.
    real_replace = os.replace
    monkeypatch.setattr(os, "unlink", lambda _path: None)  # as if the process died: nothing cleans up
    monkeypatch.setattr(os, "replace", fail)
    for _ in range(3):
        with pytest.raises(Boom):
            write_atomic(path, b"lost")
    assert sorted(os.listdir(tmp_path)) == ["state.json", "state.json.tmp"]
    monkeypatch.setattr(os, "replace", real_replace)
    write_atomic(path, b"after")
    assert sorted(os.listdir(tmp_path)) == ["state.json"]
    assert path.read_bytes() == b"after"


def test_file_then_rename_then_directory_are_made_durable(tmp_path, monkeypatch):
    path = tmp_path / "state.json"
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            events.append(("fsync dir", info.st_ino))
        else:
            events.append(("fsync file", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", os.fspath(src), os.fspath(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    write_atomic(path, b"content")
    tmp = str(tmp_path / "state.json.tmp")
    assert [e[0] for e in events] == ["fsync file", "replace", "fsync dir"]
    assert events[0][1] == tmp
    assert events[1][1:] == (tmp, str(path))
    assert events[2][1] == os.stat(tmp_path).st_ino
