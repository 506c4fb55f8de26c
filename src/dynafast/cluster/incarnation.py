"""A node's incarnation: the part of its version-vector actor that changes when its memory of writes may not.

A coordinator stamps each write with the next counter of its actor for that key. If a node lost writes it
had stamped (its data directory was wiped, or it was killed before a non-durable write reached the disk), the
same actor would hand out the same counters again, and replicas that still hold the lost writes would take
the new ones for them. So the actor is ``<node id>.<incarnation>``, and the incarnation is kept across clean
restarts only: a start after a crash or with an empty directory begins a new one.
"""
from __future__ import annotations

import json

FILE = "incarnation.json"


def last_clean(files) -> str | None:
    """The incarnation the last run ended cleanly with, or None (a crash, a first start, a lost directory)."""
    try:
        data = json.loads(files.read(FILE) or b"null")
        return data["id"] if data.get("clean") and isinstance(data.get("id"), str) else None
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def begin(files, rng, *, lost: bool = False) -> str:
    """The incarnation to use from now on; marks it in use until ``end_clean``.

    ``files`` is the node's metadata files port, ``rng`` its random source (a new incarnation's id). ``lost``:
    the store's recovery lost records, so even a clean last run's incarnation must not be kept.
    """
    incarnation = None if lost else last_clean(files)
    if incarnation is None:
        incarnation = "%08x" % rng.getrandbits(32)
    files.write(FILE, json.dumps({"id": incarnation, "clean": False}).encode())
    return incarnation


def end_clean(files, incarnation: str) -> None:
    """Everything this incarnation acknowledged is on disk: the next start may keep it."""
    files.write(FILE, json.dumps({"id": incarnation, "clean": True}).encode())
