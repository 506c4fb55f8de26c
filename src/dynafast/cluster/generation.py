"""A node's heartbeat generation: how many times it has started, so that its heartbeats never go backwards.

Peers keep the highest heartbeat they heard of each node and ignore lower ones. A restarted node must therefore
beat above its previous lives, and it must not count on its wall clock for that (one set back an hour would
keep it "down" for as many rounds). Each start takes the next generation, written durably before any heartbeat
of it goes out. Should the file be lost with the data directory, peers still remember a higher heartbeat of
ours: gossip hands it back and the node moves past it (``GossipCore.receive``), then saves that generation.
"""
from __future__ import annotations

import json
import logging

log = logging.getLogger("dynafast.membership")

FILE = "generation.json"


def begin(files) -> int:
    """The generation of this start, saved before it is returned. ``files``: the node's metadata files port."""
    try:
        previous = int(json.loads(files.read(FILE) or b"{}").get("generation", 0))
    except (ValueError, TypeError, AttributeError) as exc:
        log.error("ignoring unreadable %s (peers will tell us how far our heartbeats went): %s", FILE, exc)
        previous = 0
    generation = max(previous, 0) + 1
    save(files, generation)
    return generation


def save(files, generation: int) -> None:
    files.write(FILE, json.dumps({"generation": generation}).encode())
