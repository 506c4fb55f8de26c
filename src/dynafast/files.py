"""Small state files replaced atomically: after a crash a file holds its old content or its new one, whole.

The steps, each needed for that promise: write a temporary file next to the target, fsync it (its content
is on disk before its name is), rename it over the target (atomic on POSIX), fsync the directory (the rename
itself survives a crash). One writer per file at a time: the temporary file's name is fixed, so a crash leaves
at most one behind, which the next write replaces.
"""
from __future__ import annotations

import json
import os
from pathlib import Path


def write_atomic(path: str | os.PathLike, data: bytes, *, mode: int | None = None) -> None:
    """Replace the file at ``path`` with ``data`` durably and atomically; ``mode``: its permission bits."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            if mode is not None:
                os.fchmod(f.fileno(), mode)  # before the content: a secret is never readable by others
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    fsync_dir(path.parent)


def write_json_atomic(path: str | os.PathLike, obj) -> None:
    """``write_atomic`` of ``obj`` as JSON."""
    write_atomic(path, json.dumps(obj).encode())


def fsync_dir(path: str | os.PathLike) -> None:
    """Make the names created, renamed or removed in the directory ``path`` survive a crash."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
