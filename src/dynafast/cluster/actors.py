"""Fresh actors for writes a coordinator has no local copy of (Riak's fix for kv679).

A coordinator stamps a write with the next counter of its actor in the object it holds. When it holds no copy
of the key (never had one, or a reap or a drop removed it) it would start again at counter 1, and replicas that
still hold an older version or a tombstone carrying that actor's counters would take the new write for one
they have seen and drop it. So such a write is stamped by a fresh actor that no object can hold yet:
``<node actor>.<epoch>``, with epochs handed out once. They are leased in blocks that are written durably
before use, so a crash or a restart never hands out an epoch twice.
"""
from __future__ import annotations

import json

FILE = "actor_epochs.json"


class Actors:
    # A lease is a durable file write (an fsync) on the event loop, so it comes rarely: with blocks of 1,024 a
    # load writing 10,000 new keys a second stalled every request ten times a second. What a restart skips of a
    # block only makes later epoch numbers longer.
    def __init__(self, base: bytes, files, rng, *, block: int = 65536):
        self.base = base
        self.files = files
        self.block = block
        try:
            self._next = int(json.loads(files.read(FILE) or b"{}").get("next", 0))
        except (ValueError, TypeError, AttributeError):
            # The lease is lost: epochs may have been handed out already, so this life's actors get a prefix of
            # their own instead of starting over.
            self.base = b"%s.%08x" % (base, rng.getrandbits(32))
            self._next = 0
        self._limit = self._next
        self.leases = 0

    def issued(self, actor: bytes) -> bool:
        """Whether ``actor`` is one ``fresh`` handed out in this incarnation (``<base>.<epoch>``)."""
        dotted = self.base + b"."
        return actor.startswith(dotted) and actor[len(dotted):].isdigit()

    def fresh(self) -> bytes:
        """An actor no version anywhere carries yet."""
        if self._next >= self._limit:
            self._limit = self._next + self.block
            self.files.write(FILE, json.dumps({"next": self._limit}).encode())  # durable before any use
            self.leases += 1
        epoch = self._next
        self._next += 1
        return b"%s.%d" % (self.base, epoch)
