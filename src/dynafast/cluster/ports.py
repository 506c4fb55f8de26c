"""The ports a cluster service is given: what it may use of the world, and nothing else.

A service never reads a clock, draws a random number, opens a socket or a file on its own: it is handed these.
A real node hands it the system's; the simulator (``dynafast.sim``) hands it simulated ones, which is what lets
whole clusters of the real service code run deterministically in one process.

- ``Clock``: ``monotonic()`` for liveness, timeouts and rates; ``wall()`` for version timestamps (pruning
  clocks by age, last-write-wins tie-breaks) and for what this node measures on its own wall clock alone (when it
  received a hint). Nothing compares one node's wall clock with another's to decide what is kept. Timers are the
  event loop's (``asyncio.sleep``, ``call_later``): the simulator runs a loop whose time is simulated.
- ``rng``: a ``random.Random``: peer choice, jitter, incarnation ids.
- ``Transport``: ``request(address, msg_type, fields, timeout) -> Future`` of ``(reply_type, fields)`` and
  ``async call(...)``, raising the typed errors of ``dynafast.errors``; ``close()``. ``PeerPool`` is the real one.
- ``Durability``: ``waiter() -> Future`` done once everything written before the call is on disk; ``wait()``;
  ``syncs``; ``close()``. ``DurabilityBatcher`` is the real one.
- ``Files``: small metadata files that are replaced whole (``read(name)``, ``write(name, data)``: atomic and
  durable when it returns; ``remove(name)``).
"""
from __future__ import annotations

import os
import random
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path

from dynafast.errors import DynafastError, Timeout, Unavailable
from dynafast.files import write_atomic


# Transport errors after which a peer is suspected: it did not answer, as opposed to answering with an error.
_PEER_FAILURES = (Unavailable, Timeout, ConnectionError)


def peer_failed(exc) -> bool:
    """The peer did not answer (as opposed to answering with an error such as StorageFull)."""
    return isinstance(exc, _PEER_FAILURES) or (isinstance(exc, OSError) and not isinstance(exc, DynafastError))



CLOCK_OFFSET_ENV = "DYNAFAST_CLOCK_OFFSET"


class SystemClock:
    """The machine's clocks.

    ``DYNAFAST_CLOCK_OFFSET`` (seconds, may be negative) is added to ``wall()``: a fault-testing knob that starts
    a node as if its wall clock were set that far off, without touching the machine's clock.
    """

    monotonic = staticmethod(time.monotonic)

    def __init__(self):
        offset = float(os.environ.get(CLOCK_OFFSET_ENV) or 0.0)
        if offset:
            self.wall = lambda: time.time() + offset

    @staticmethod
    def wall() -> float:
        return time.time()


class DirectoryFiles:
    """Metadata files in a node's data directory, each replaced atomically and durably."""

    def __init__(self, directory):
        self.directory = Path(directory)

    def read(self, name: str) -> bytes | None:
        try:
            return (self.directory / name).read_bytes()
        except FileNotFoundError:
            return None

    def write(self, name: str, data: bytes) -> None:
        write_atomic(self.directory / name, data)

    def remove(self, name: str) -> None:
        try:
            os.unlink(self.directory / name)
        except FileNotFoundError:
            pass


def _system_rng() -> random.Random:
    return random.Random(secrets.randbits(64))


@dataclass
class Environment:
    """Everything of the world a node's services may use. ``None`` parts are made by the node from its config
    (a real peer pool, the data directory's files, the real store and its fsync batcher)."""

    clock: object = field(default_factory=SystemClock)
    rng: random.Random = field(default_factory=_system_rng)
    transport: object = None
    files: object = None
    open_store: object = None       # (path, **options) -> store
    durability: object = None       # store -> Durability
    serve: object = None            # async (handler, host, port, max_frame) -> server with close()/wait_closed()
    http: bool = True               # whether to serve HTTP when configured (the simulator does not)
