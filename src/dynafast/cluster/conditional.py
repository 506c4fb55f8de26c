"""Conditional writes and leases: the node's side of CAS and LOCK, both one Paxos round (``paxos``) each.

CAS: a put or delete applied only if the key's current context is the one the client names (or, ``if_absent``,
only if the key has no live value). The state the condition is checked against is the Paxos round's quorum read:
every conditional write before it, and every plain write that reached one of the promising replicas. A plain
write the round did not see stays a sibling of the conditional one (its clock does not cover it), and the next
conditional write sees it and must name it in its context.

LOCK: a lease is a key (``lock_key(name)``) whose value is a lock record: holder, fencing token, expiry. Whether
the lease is free is decided by the coordinating node, inside the round, with its own wall clock: a lease whose
expiry has passed there is free. A grant writes a record with the token one above the last; a release writes
the record back with the expiry cleared (the token stays, so tokens keep growing across grants).
"""
from __future__ import annotations

import struct
from typing import NamedTuple

from dynafast.cluster import expiry
from dynafast.cluster.paxos import cas_decision, stamp
from dynafast.errors import ConditionFailed, KeyTooLarge, ProtocolError, ValueTooLarge
from dynafast.net.messages import Msg

LOCK_PREFIX = b"\x00lock\x00"
_RECORD = struct.Struct(">2sqd")  # magic, fencing token, expiry (seconds on the granting node's wall clock)
_MAGIC = b"L1"
MAX_TTL_MS = 24 * 3600 * 1000


def lock_key(name: bytes) -> bytes:
    return LOCK_PREFIX + name


class LockRecord(NamedTuple):
    holder: str
    fencing: int
    expires: float

    def to_bytes(self) -> bytes:
        return _RECORD.pack(_MAGIC, self.fencing, self.expires) + self.holder.encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> "LockRecord | None":
        if len(raw) < _RECORD.size or raw[:2] != _MAGIC:
            return None  # not a lock record (a plain write of the key): it holds nothing
        _, fencing, expires = _RECORD.unpack_from(raw)
        return cls(raw[_RECORD.size:].decode(errors="replace"), fencing, expires)


def current_record(current) -> LockRecord | None:
    """The lock record of the key's state: with siblings (plain writes beside it), the highest token's."""
    if current is None:
        return None
    records = [r for r in (LockRecord.from_bytes(v) for v in current.live_values()) if r is not None]
    return max(records, key=lambda r: r.fencing, default=None)


class _Refused(Exception):
    """The lock decision wrote nothing; carries the record it saw."""

    def __init__(self, record):
        super().__init__()
        self.record = record


def lock_decision(versions, actor, now: float, holder: str, ttl: float, release: bool, fencing):
    """``decide(current)`` for a LOCK: returns the new object, or raises _Refused (nothing written)."""

    def decide(current):
        record = current_record(current)
        if release:
            if record is None or record.holder != holder or record.fencing != fencing or record.expires <= now:
                raise _Refused(record)  # not ours (any more): someone else's lease is left alone
            new = LockRecord("", record.fencing, 0.0)
        elif record is None or record.expires <= now or record.holder == holder:
            # Free (or expired on this node's clock), or ours already: a renewal keeps the token.
            token = 1 if record is None else record.fencing + (record.holder != holder)
            new = LockRecord(holder, token, now + ttl)
        else:
            raise _Refused(record)
        return stamp(versions, actor, int(now), current, new.to_bytes())

    return decide


def _ttl(ttl_ms) -> int:
    if not 0 < ttl_ms <= expiry.MAX_EXPIRY // 2:
        raise ProtocolError("ttl_ms must be a positive number of milliseconds")
    return ttl_ms


class ConditionalWrites:
    """Handlers of CAS and LOCK. Ports: config, versions, the Paxos driver, a membership view (ring version for
    replies), the clock, and ``actor(current)``: the actor to stamp a conditional version over ``current`` (the
    state the round read) with."""

    def __init__(self, *, config, versions, paxos, membership, clock, actor):
        self.config = config
        self.versions = versions
        self.paxos = paxos
        self.membership = membership
        self.clock = clock
        self.actor = actor
        self.applied = 0
        self.failed = 0

    def _timeout(self, timeout_ms) -> float:
        if timeout_ms is None:
            return self.config.request_timeout
        if timeout_ms <= 0:
            raise ProtocolError("timeout must be a positive number of milliseconds")
        return timeout_ms / 1000.0

    def _version(self) -> int:
        return self.membership.state.ring.version

    async def client_cas(self, cas):
        key, value, context, if_absent, timeout_ms, ttl_ms = cas
        config = self.config
        if len(key) > config.max_key_size:
            raise KeyTooLarge(f"key of {len(key)} bytes is over the limit of {config.max_key_size}")
        if value is not None and len(value) > config.max_value_size:
            raise ValueTooLarge(f"value of {len(value)} bytes is over the limit of {config.max_value_size}")
        wall = self.clock.wall()
        if value is not None:
            # Escaped if it looks like an envelope; with a TTL, the absolute expiry from this node's clock (as a
            # plain put's coordinator stamps it).
            value = expiry.wrap(value, None if ttl_ms is None else int(wall * 1000) + _ttl(ttl_ms))
        decide = cas_decision(self.versions, self.actor, int(wall), value, context, bool(if_absent), int(wall * 1000))
        try:
            obj, _ = await self.paxos.run(key, decide, self._timeout(timeout_ms))
        except ConditionFailed as exc:
            self.failed += 1
            return (Msg.CAS_REPLY, (False, exc.values, exc.context, self._version()))
        self.applied += 1
        values = [] if obj is None else expiry.visible(obj.live_values(), int(wall * 1000))[0]
        return (Msg.CAS_REPLY, (True, values, b"" if obj is None else obj.context(), self._version()))

    async def client_lock(self, lock):
        name, holder, ttl_ms, release, fencing, timeout_ms = lock
        if not 0 < ttl_ms <= MAX_TTL_MS:
            raise ProtocolError(f"ttl must be 1 ms to {MAX_TTL_MS // 1000} s")
        if not holder or (release and fencing is None):
            raise ProtocolError("a lock request names its holder, and a release its token")
        key = lock_key(name)
        if len(key) > self.config.max_key_size:
            raise KeyTooLarge(f"lock name of {len(name)} bytes is over the key size limit")
        now = self.clock.wall()  # this node's clock decides expiry; see docs/operations.md on skew
        decide = lock_decision(self.versions, self.actor, now, holder, ttl_ms / 1000.0, bool(release), fencing)
        try:
            obj, _ = await self.paxos.run(key, decide, self._timeout(timeout_ms))
        except _Refused as refused:
            record = refused.record
            if record is None or record.expires <= now:
                return (Msg.LOCK_REPLY, (False, 0 if record is None else record.fencing, "", 0, self._version()))
            remaining = int((record.expires - now) * 1000)
            return (Msg.LOCK_REPLY, (False, record.fencing, record.holder, remaining, self._version()))
        if release:
            return (Msg.LOCK_REPLY, (True, fencing, "", 0, self._version()))
        record = current_record(obj)
        return (Msg.LOCK_REPLY, (True, record.fencing, record.holder, int((record.expires - now) * 1000),
                                 self._version()))
