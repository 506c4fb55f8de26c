"""A node's incarnation: the part of its version-vector actor that changes when its memory of writes may not.

A coordinator stamps each write with the next counter of its actor for that key. If a node lost writes it
had stamped (its data directory was wiped, or it was killed before a non-durable write reached the disk), the
same actor would hand out the same counters again, and replicas that still hold the lost writes would take
the new ones for them. So the actor is ``<node id>.<incarnation>``, and the incarnation is kept across clean
restarts only: a start after a crash or with an empty directory begins a new one.
"""
from __future__ import annotations

import json
import secrets
from pathlib import Path

from dynafast.files import write_json_atomic

FILE = "incarnation.json"


def begin(data_dir) -> str:
    """The incarnation to use from now on; marks it in use until ``end_clean``."""
    path = Path(data_dir) / FILE
    try:
        with open(path) as f:
            data = json.load(f)
        incarnation = data["id"] if data.get("clean") and isinstance(data.get("id"), str) else None
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        incarnation = None
    if incarnation is None:
        incarnation = secrets.token_hex(4)
    write_json_atomic(path, {"id": incarnation, "clean": False})
    return incarnation


def end_clean(data_dir, incarnation: str) -> None:
    """Everything this incarnation acknowledged is on disk: the next start may keep it."""
    write_json_atomic(Path(data_dir) / FILE, {"id": incarnation, "clean": True})
