"""`dynafast user add|remove|list` as a user runs them: passwords from the environment or a prompt, exit codes."""
import json
import os
import stat
import subprocess
import sys

import pytest

from dynafast.security.users import Users

pytestmark = pytest.mark.timeout(120)


def user(*args, password=None, stdin=None):
    env = {k: v for k, v in os.environ.items() if k != "DYNAFAST_PASSWORD"}
    if password is not None:
        env["DYNAFAST_PASSWORD"] = password
    # A new session has no controlling terminal, so the password prompt reads stdin as a pipe would feed it.
    return subprocess.run([sys.executable, "-m", "dynafast.cli", "user", *args], capture_output=True, text=True,
                          input=stdin, env=env, timeout=60, start_new_session=True)


def test_add_list_remove(tmp_path):
    path = str(tmp_path / "users.json")
    result = user("add", "alice", "--role", "admin", "--users-file", path, password="a pw")
    assert result.returncode == 0, result.stderr
    assert "alice" in result.stdout
    assert user("add", "bob", "--role", "read", "--users-file", path, password="b pw").returncode == 0
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert "a pw" not in open(path).read()

    result = user("list", "--users-file", path)
    assert result.returncode == 0 and result.stdout.splitlines() == ["alice\tadmin", "bob\tread"]
    assert Users(path).verify("alice", "a pw") == "admin"

    # add again: a new password and role for the same user
    assert user("add", "alice", "--role", "readwrite", "--users-file", path, password="new pw").returncode == 0
    assert Users(path).verify("alice", "a pw") is None
    assert Users(path).verify("alice", "new pw") == "readwrite"

    result = user("remove", "alice", "--users-file", path)
    assert result.returncode == 0, result.stderr
    result = user("remove", "alice", "--users-file", path)
    assert result.returncode == 1 and "alice" in result.stderr
    assert user("list", "--users-file", path).stdout.splitlines() == ["bob\tread"]


def test_password_prompt_asks_twice(tmp_path):
    path = str(tmp_path / "users.json")
    result = user("add", "carol", "--role", "read", "--users-file", path, stdin="c pw\nc pw\n")
    assert result.returncode == 0, result.stderr
    assert Users(path).verify("carol", "c pw") == "read"
    result = user("add", "dave", "--role", "read", "--users-file", path, stdin="one\ntwo\n")
    assert result.returncode == 1 and "differ" in result.stderr
    assert [name for name, _ in Users(path).list()] == ["carol"]


def test_bad_input_gets_a_one_line_error(tmp_path):
    path = tmp_path / "users.json"
    result = user("add", "no spaces", "--role", "read", "--users-file", str(path), password="pw")
    assert result.returncode == 1 and "user name" in result.stderr
    result = user("add", "eve", "--role", "root", "--users-file", str(path), password="pw")
    assert result.returncode == 2 and "role" in result.stderr
    result = user("add", "eve", "--role", "read", "--users-file", str(path), password="x" * 1025)
    assert result.returncode == 1 and "1024" in result.stderr
    assert not path.exists()
    result = user("list", "--users-file", str(path))
    assert result.returncode == 1 and str(path) in result.stderr and "does not exist" in result.stderr
    path.write_text(json.dumps({"version": 1, "users": {"x": {"role": "read", "hash": "nope"}}}))
    result = user("list", "--users-file", str(path))
    assert result.returncode == 1 and str(path) in result.stderr and "malformed" in result.stderr


def test_help_shows_examples():
    result = subprocess.run([sys.executable, "-m", "dynafast.cli", "user", "--help"], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0
    assert "dynafast user add alice --role admin --users-file" in result.stdout
    assert "DYNAFAST_PASSWORD" in result.stdout
