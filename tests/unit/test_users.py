"""The users file: roles, adding and removing users, password checks, reloading, and refusing bad files."""
import json
import os
import stat
import threading

import pytest

from dynafast.security.users import ROLES, Users, UsersFileError, role_allows


def test_roles_are_ordered():
    assert ROLES == ("read", "readwrite", "admin")
    assert role_allows("admin", "read") and role_allows("admin", "readwrite") and role_allows("admin", "admin")
    assert role_allows("readwrite", "read") and role_allows("readwrite", "readwrite")
    assert not role_allows("readwrite", "admin")
    assert role_allows("read", "read") and not role_allows("read", "readwrite")


def test_add_verify_list_remove(tmp_path):
    path = tmp_path / "users.json"
    users = Users(path, must_exist=False)
    assert not users.configured and users.list() == []
    users.add("alice", "correct horse", "admin")
    users.add("bob@example.com", "hunter2", "read")
    assert users.configured
    assert users.list() == [("alice", "admin"), ("bob@example.com", "read")]
    assert users.verify("alice", "correct horse") == "admin"
    assert users.verify("alice", "correct horsE") is None
    assert users.verify("bob@example.com", "hunter2") == "read"
    assert users.verify("carol", "hunter2") is None
    assert users.verify("alice", "") is None
    # add replaces an existing user's password and role
    users.add("alice", "new password", "readwrite")
    assert users.verify("alice", "correct horse") is None
    assert users.verify("alice", "new password") == "readwrite"
    assert users.remove("alice") is True
    assert users.remove("alice") is False
    assert users.verify("alice", "new password") is None
    assert users.list() == [("bob@example.com", "read")]


def test_the_file_is_private_json_of_argon2id_hashes(tmp_path):
    path = tmp_path / "users.json"
    Users(path, must_exist=False).add("alice", "s3cret", "read")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    doc = json.loads(path.read_text())
    assert doc["version"] == 1
    assert doc["users"]["alice"]["role"] == "read"
    encoded = doc["users"]["alice"]["hash"]
    assert encoded.startswith("$argon2id$") and "s3cret" not in path.read_text()
    assert not (tmp_path / "users.json.tmp").exists()


def test_same_password_gets_a_different_salt(tmp_path):
    users = Users(tmp_path / "users.json", must_exist=False)
    users.add("a", "same", "read")
    users.add("b", "same", "read")
    doc = json.loads((tmp_path / "users.json").read_text())
    assert doc["users"]["a"]["hash"] != doc["users"]["b"]["hash"]


@pytest.mark.parametrize("name", ["", "x" * 65, "has space", "semi;colon", "slash/", "ünïcode", "colon:"])
def test_bad_names_are_refused(tmp_path, name):
    with pytest.raises(ValueError, match="user name"):
        Users(tmp_path / "u.json", must_exist=False).add(name, "pw", "read")


def test_bad_passwords_and_roles_are_refused(tmp_path):
    users = Users(tmp_path / "u.json", must_exist=False)
    with pytest.raises(ValueError, match="empty"):
        users.add("alice", "", "read")
    with pytest.raises(ValueError, match="1024"):
        users.add("alice", "x" * 1025, "read")
    with pytest.raises(ValueError, match="role"):
        users.add("alice", "pw", "root")
    users.add("max.len", "é" * 512, "read")  # 1024 bytes exactly
    assert users.verify("max.len", "é" * 512) == "read"
    assert users.verify("max.len", "é" * 513) is None
    assert not (tmp_path / "u.json").exists() or users.list() == [("max.len", "read")]


def test_a_node_needs_the_file_to_exist(tmp_path):
    with pytest.raises(UsersFileError, match=str(tmp_path / "missing.json")):
        Users(tmp_path / "missing.json")


@pytest.mark.parametrize("content", [
    b"",
    b"{not json",
    b"\xff\xfe",
    b"[]",
    b'{"version": 2, "users": {}}',
    b'{"version": 1}',
    b'{"version": 1, "users": {"alice": {"role": "root", "hash": "$argon2id$v=19$m=8,t=1,p=1$c2FsdHNhbHQ$aGFzaA"}}}',
    b'{"version": 1, "users": {"alice": {"role": "read"}}}',
    b'{"version": 1, "users": {"alice": {"role": "read", "hash": "plaintext"}}}',
    b'{"version": 1, "users": {"bad name": {"role": "read", "hash": "x"}}}',
])
def test_a_damaged_file_is_an_error_naming_it(tmp_path, content):
    path = tmp_path / "users.json"
    path.write_bytes(content)
    with pytest.raises(UsersFileError, match=str(path)):
        Users(path)


def test_a_file_damaged_while_in_use_fails_closed(tmp_path):
    path = tmp_path / "users.json"
    Users(path, must_exist=False).add("alice", "pw", "admin")
    users = Users(path)
    assert users.verify("alice", "pw") == "admin"
    path.write_text("{oops")
    with pytest.raises(UsersFileError, match=str(path)):
        users.verify("alice", "pw")
    with pytest.raises(UsersFileError):
        users.configured
    path.unlink()
    with pytest.raises(UsersFileError, match="does not exist"):
        users.verify("alice", "pw")


def test_changes_by_another_writer_are_seen_without_reopening(tmp_path):
    path = tmp_path / "users.json"
    Users(path, must_exist=False).add("alice", "pw", "read")
    running = Users(path)  # as a node holds it
    generation = running.generation
    assert running.verify("bob", "pw2") is None
    other = Users(path, must_exist=False)  # as `dynafast user add` does
    other.add("bob", "pw2", "readwrite")
    assert running.verify("bob", "pw2") == "readwrite"
    assert running.generation != generation
    other.add("alice", "pw", "admin")  # same size as before; a new file all the same
    assert running.verify("alice", "pw") == "admin"
    other.remove("bob")
    assert running.verify("bob", "pw2") is None
    assert running.list() == [("alice", "admin")]


def test_concurrent_writers_lose_no_user(tmp_path):
    path = tmp_path / "users.json"
    errors = []

    def add(i):
        try:
            Users(path, must_exist=False).add(f"user{i}", f"pw{i}", "read")
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=add, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    assert [name for name, _ in Users(path).list()] == [f"user{i}" for i in range(6)]
