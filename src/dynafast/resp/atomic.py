"""Read-modify-write of one key in one linearizable step: what the RESP commands that Redis makes atomic (INCR,
APPEND, SET NX, GETSET, EXPIRE, ...) run on.

A command is a ``change(seen, now_ms)``: given the key as it is (``Seen``: its value as a RESP read sees it, the
newest sibling, with that value's expiry) it returns ``(write, reply)``: what to write (None: nothing;
``TOMBSTONE``: delete; ``(value, expires_at)``: the value, expiring then or never) and what the command
answers. It runs inside a Paxos round of the node's conditional writes (``cluster.paxos``, the round a native
CAS runs): the state it sees is the round's quorum read and the write is chosen only if no other conditional
write got in between, so two INCRs never both add to the same value. ``change`` must depend only on its
arguments: a round that loses to another proposer calls it again on the newer state.

A plain write (SET, DEL, a native put) that the round did not see stays a sibling of the conditional one, as for
native CAS; the next RESP read picks the newest of them (docs/resp.md).

One thing the round cannot say is whether a proposal of ours that lost to a higher ballot was chosen after all
(another round may finish it). ``_Round`` never proposes twice in one Paxos run: after a lost proposal it reads
the state again, and either finds its proposal there (chosen: its reply stands) or writes nothing, which makes
the Paxos run commit a no-op that rules the lost proposal out; ``update`` then starts a new run.
"""
from __future__ import annotations

import time
from typing import NamedTuple

from dynafast.cluster import expiry
from dynafast.cluster.paxos import stamp
from dynafast.errors import Timeout
from dynafast.resp.protocol import RespError

TOMBSTONE = object()  # a change's write: delete the key
MAX_RUNS = 8  # fresh Paxos runs one command may take after losing proposals to other writers of the key
# A command's budget, in request timeouts. Rounds on a hot key take turns: on one node they queue, across nodes
# they contend and back off. A Redis client waits for its INCR rather than expect it to fail under load, so the
# budget is longer than one request's.
BUDGET = 5


class Seen(NamedTuple):
    """The key as a conditional round read it."""

    value: bytes | None  # the newest live value (None: absent, deleted or expired)
    expires: int | None  # its expiry, ms since the epoch (None: never)
    current: object  # the merged object the round read (None: never written), for conditions on its context


def newest(current, now_ms: int) -> tuple[bytes | None, int | None]:
    """(value, expiry) of the newest sibling of ``current``, as RESP reads choose it: by the coordinators' write
    timestamps (``Siblings.lww``); an expired or deleted newest version is absent."""
    if current is None:
        return None, None
    live = (current if len(current) == 1 else current.lww()).live_values()
    if not live:
        return None, None
    value, at = expiry.unwrap(live[0])
    if at is not None and now_ms >= at:
        return None, None
    return value, at


class _Round:
    """``decide`` of one Paxos run for ``change``; keeps the reply and what was proposed."""

    __slots__ = ("change", "versions", "actor", "clock", "proposal", "reply", "chosen", "again")

    def __init__(self, change, versions, actor, clock):
        self.change = change
        self.versions = versions
        self.actor = actor
        self.clock = clock
        self.proposal = None
        self.reply = None
        self.chosen = False  # our lost proposal turned out chosen (another round finished it)
        self.again = False  # our lost proposal is not in the state: this run writes nothing, start a new one

    def __call__(self, current):
        if self.proposal is not None:
            # Our proposal lost to a higher ballot. Proposing again in this run could give a second proposal the
            # same version (same actor, same counter) as the first, and then which of them was chosen could not
            # be told. So: chosen when the state covers it, else write nothing (the run then commits a no-op
            # that finishes it off) and start a new run.
            if current is not None and current.clock().descends(self.proposal.clock()):
                self.chosen = True
            else:
                self.again = True
            return None
        wall = self.clock.wall()
        now_ms = int(wall * 1000)
        value, at = newest(current, now_ms)
        write, self.reply = self.change(Seen(value, at, current), now_ms)
        if write is None:
            return None
        stored = None if write is TOMBSTONE else expiry.wrap(*write)
        self.proposal = stamp(self.versions, self.actor, int(wall), current, stored)
        return self.proposal


class Outcome(NamedTuple):
    reply: object  # what the change answered
    written: object  # the object written (None: nothing was)


async def update(app, key: bytes, change, timeout: float | None = None) -> Outcome:
    """Run ``change`` on ``key`` atomically (see the module's docstring)."""
    conditional = app.conditional
    config = app.config
    if len(key) > config.max_key_size:
        raise RespError(f"ERR key of {len(key)} bytes is over the limit of {config.max_key_size} (max_key_size)")
    clock = conditional.clock
    deadline = time.monotonic() + (config.request_timeout * BUDGET if timeout is None else timeout)
    for _ in range(MAX_RUNS):
        step = _Round(change, conditional.versions, conditional.actor, clock)
        try:
            obj, written = await conditional.paxos.run(key, step, max(deadline - time.monotonic(), 0.001))
        except Timeout:
            if step.chosen:
                # The run says "unknown" because the state covers a proposal of ours that lost a ballot; it
                # was the only one this run made, so it is the one chosen.
                return Outcome(step.reply, step.proposal)
            raise
        if not step.again:
            return Outcome(step.reply, obj if written else None)
    raise RespError(f"ERR the key's conditional write lost to other writers {MAX_RUNS} times: nothing written "
                    "(try again)")


async def run(app, key: bytes, change):
    """``update``'s reply alone: what most commands answer."""
    return (await update(app, key, change)).reply


async def read(app, key: bytes) -> Seen:
    """The key as a linearizable read sees it (a Paxos round that writes nothing)."""
    return (await update(app, key, _look)).reply


def _look(seen, now_ms):
    return None, seen
