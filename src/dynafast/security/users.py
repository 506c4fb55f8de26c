"""Client users of a node: names, roles and argon2id password hashes kept in one users file.

The file is JSON, ``{"version": 1, "users": {NAME: {"role": ROLE, "hash": ENCODED_ARGON2ID_HASH}}}``, replaced
atomically and readable by its owner only (0600). A node re-reads it when it changes (one stat per check), so
``dynafast user add`` and ``remove`` take effect on running nodes without a restart. A file that cannot be read
or does not parse is an error naming the file, never "no users": that would open the node.
"""
from __future__ import annotations

import fcntl
import json
import os
import re
import threading
from contextlib import contextmanager
from pathlib import Path

import argon2
from argon2.exceptions import InvalidHashError, VerificationError

from dynafast.files import write_atomic

ROLES = ("read", "readwrite", "admin")  # each role may do everything the ones before it may
_RANK = {role: rank for rank, role in enumerate(ROLES)}
_NAME = re.compile(r"[A-Za-z0-9_.@-]{1,64}")
MAX_PASSWORD_BYTES = 1024
_VERSION = 1

# argon2id at OWASP's recommended cost (19 MiB, 2 passes, 1 lane): tens of milliseconds per check, little
# enough memory that a burst of logins cannot exhaust the node. The cost is stored in each hash, so hashes made
# at another cost still verify.
_HASHER = argon2.PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1, type=argon2.Type.ID)


def role_allows(role: str, needed: str) -> bool:
    """Whether ``role`` may do what ``needed`` may (admin covers readwrite, which covers read)."""
    return _RANK[role] >= _RANK[needed]


class UsersFileError(ValueError):
    """The users file is missing, unreadable or malformed."""


def check_name(name: str) -> None:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(f"bad user name {name!r}: 1 to 64 characters of letters, digits, '_', '.', '@', '-'")


def check_role(role: str) -> None:
    if role not in _RANK:
        raise ValueError(f"bad role {role!r}: one of {', '.join(ROLES)}")


def check_password(password: str) -> None:
    if not isinstance(password, str) or not password:
        raise ValueError("the password must not be empty")
    if len(password.encode()) > MAX_PASSWORD_BYTES:
        raise ValueError(f"the password is longer than {MAX_PASSWORD_BYTES} bytes")


class Users:
    """The users file at ``path``. With ``must_exist`` (what a node needs) a missing file is an error;
    without it (the ``dynafast user`` commands) a missing file holds no users and the first ``add`` creates it.

    Thread-safe: a node checks passwords in worker threads.
    """

    def __init__(self, path: str | os.PathLike, *, must_exist: bool = True):
        self.path = Path(path)
        self.must_exist = must_exist
        self.generation = 0  # changes whenever a different file content was loaded
        self._users: dict[str, tuple[str, str]] = {}  # name -> (role, hash)
        self._stamp: tuple | None = None
        self._lock = threading.Lock()
        # Checked instead of a real hash for unknown names, so that the time taken does not tell which exist.
        self._dummy = _HASHER.hash("not a password of anyone")
        self.refresh()

    # -- reading ---------------------------------------------------------------------------------------
    def refresh(self) -> None:
        """Re-read the file if it changed since it was last read (one stat when it did not)."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            if self.must_exist:
                raise UsersFileError(f"users file {self.path} does not exist "
                                     "(create it with: dynafast user add NAME --role ROLE --users-file PATH)") from None
            self._set({}, None)
            return
        except OSError as exc:
            raise UsersFileError(f"users file {self.path}: {exc.strerror or exc}") from None
        if _stamp(st) == self._stamp:
            return
        with self._lock:
            try:
                with open(self.path, "rb") as f:
                    # The stamp of the content actually read, should the file be replaced meanwhile.
                    stamp = _stamp(os.fstat(f.fileno()))
                    data = f.read()
            except OSError as exc:
                raise UsersFileError(f"users file {self.path}: {exc.strerror or exc}") from None
            self._set(_parse(data, self.path), stamp)

    def _set(self, users: dict, stamp) -> None:
        if users != self._users:
            self.generation += 1
        self._users, self._stamp = users, stamp

    @property
    def configured(self) -> bool:
        """True when the file holds at least one user."""
        self.refresh()
        return bool(self._users)

    def list(self) -> list[tuple[str, str]]:
        """(name, role) of every user, by name."""
        self.refresh()
        return sorted((name, role) for name, (role, _) in self._users.items())

    def verify(self, name: str, password: str) -> str | None:
        """The user's role if ``password`` is theirs; None for a wrong password or an unknown user.

        Slow on purpose (an argon2id hash): callers on an event loop run it in a worker thread.
        """
        self.refresh()
        if not isinstance(password, str) or not password or len(password.encode()) > MAX_PASSWORD_BYTES:
            return None
        entry = self._users.get(name) if isinstance(name, str) else None
        role, encoded = entry if entry is not None else (None, self._dummy)
        try:
            _HASHER.verify(encoded, password)
        except (VerificationError, InvalidHashError):
            return None
        return role

    # -- changing --------------------------------------------------------------------------------------
    def add(self, name: str, password: str, role: str) -> None:
        """Add the user, or give an existing one this password and role."""
        check_name(name)
        check_password(password)
        check_role(role)
        encoded = _HASHER.hash(password)
        with self._writing() as users:
            users[name] = (role, encoded)

    def remove(self, name: str) -> bool:
        """Remove the user; False if there was none of that name."""
        with self._writing() as users:
            return users.pop(name, None) is not None

    @contextmanager
    def _writing(self):
        """Read, change and replace the file under an exclusive lock, so that two commands run at once lose
        neither change (and the atomic writer's one-writer-per-file rule holds)."""
        fd = os.open(self.path.with_name(self.path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            self._stamp = None  # read afresh under the lock
            self.refresh()
            users = dict(self._users)
            yield users
            if users != self._users:
                doc = {"version": _VERSION,
                       "users": {name: {"role": role, "hash": encoded}
                                 for name, (role, encoded) in sorted(users.items())}}
                write_atomic(self.path, (json.dumps(doc, indent=1) + "\n").encode(), mode=0o600)
                self.refresh()
        finally:
            os.close(fd)  # releases the lock


def _stamp(st: os.stat_result) -> tuple:
    # The inode changes on every atomic replace; size and mtime catch an edit in place.
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def _parse(data: bytes, path: Path) -> dict[str, tuple[str, str]]:
    def bad(why: str) -> UsersFileError:
        return UsersFileError(f"users file {path} is malformed: {why}")

    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise bad(f"not JSON ({exc})") from None
    if not isinstance(doc, dict) or doc.get("version") != _VERSION or not isinstance(doc.get("users"), dict):
        raise bad(f'expected {{"version": {_VERSION}, "users": {{...}}}}')
    users = {}
    for name, entry in doc["users"].items():
        if not _NAME.fullmatch(name):
            raise bad(f"bad user name {name!r}")
        if not isinstance(entry, dict) or entry.get("role") not in _RANK or not isinstance(entry.get("hash"), str):
            raise bad(f"user {name!r} needs a role ({', '.join(ROLES)}) and a hash")
        try:
            kind = argon2.extract_parameters(entry["hash"]).type
        except InvalidHashError:
            kind = None
        if kind is not argon2.Type.ID:
            raise bad(f"user {name!r} has no valid argon2id hash")
        users[name] = (entry["role"], entry["hash"])
    return users
