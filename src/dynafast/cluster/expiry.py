"""Per-object TTL in the cluster: how a value carries its expiry, and which stored values are expired.

The expiry travels inside the versioned object: each sibling value the cluster stores is an envelope around the
client's bytes. A put with a TTL is stamped by its coordinator with an absolute expiry (milliseconds since the
epoch, the coordinator's wall clock when the put arrived), and from then on that expiry is part of the value:
read repair, anti-entropy, hints and transfers copy objects as they are, so every replica holds the same expiry
for the same version. ``expire`` and ``persist`` are new versions (a read, then a put with the read's context).

Envelope (the sibling value as stored)::

    value                         a plain value whose first byte is not MARK: stored as it is (no copy, no cost)
    MARK 0x00 value               a plain value whose first byte is MARK (escaped, so every byte string is safe)
    MARK 0x01 expiry:u64be value  a value that expires at ``expiry`` (ms since the epoch)

Any other byte after MARK is read as a plain value, envelope and all: MARK (0xF5) never begins UTF-8 text, so a
value stored before envelopes existed is misread only if it began with 0xF5 0x00 or 0xF5 0x01.

An expired value reads as deleted: it is left out of every read at once, on any node whose clock is past its
expiry. When every live value of an object has expired, the object is "gone" and the reaper removes it as it
does a tombstone: only once every primary holds that same version, and ``tombstone_delay`` after it expired
(see ``reaper``). A replica that missed the TTL put and still holds an older value blocks the reap until
anti-entropy or read repair has given it the expired version, so the older value cannot come back.

``visible`` and ``gone`` are what every read path (get, scan) uses to hide expired values.
"""
from __future__ import annotations

import struct

MARK = b"\xf5"
_PLAIN = b"\xf5\x00"
_EXPIRES = b"\xf5\x01"
_EXPIRY = struct.Struct(">Q")
_HEADER = len(_EXPIRES) + _EXPIRY.size  # 10
NO_EXPIRY = -1  # what a reply says for a value without expiry
MAX_EXPIRY = (1 << 63) - 1


def wrap(value: bytes, expires_at: int | None = None) -> bytes:
    """The stored form of ``value``, expiring at ``expires_at`` (ms since the epoch) or never."""
    if expires_at is not None:
        return _EXPIRES + _EXPIRY.pack(expires_at) + value
    if value.startswith(MARK):
        return _PLAIN + value
    return value


def unwrap(stored: bytes) -> tuple[bytes, int | None]:
    """(the client's value, its expiry or None) of a stored sibling value."""
    if not stored.startswith(MARK):
        return stored, None
    head = stored[:2]
    if head == _EXPIRES and len(stored) >= _HEADER:
        return stored[_HEADER:], _EXPIRY.unpack_from(stored, 2)[0]
    if head == _PLAIN:
        return stored[2:], None
    return stored, None


def expires_at(stored: bytes | None) -> int | None:
    """The expiry (ms since the epoch) of a stored sibling value, None when it never expires (or is a tombstone)."""
    if stored is None or not stored.startswith(_EXPIRES) or len(stored) < _HEADER:
        return None
    return _EXPIRY.unpack_from(stored, 2)[0]


def is_expired(stored: bytes | None, now_ms: int) -> bool:
    """Whether a stored sibling value has expired at ``now_ms`` (ms since the epoch). A tombstone (None) is not
    a value that expires: check ``Siblings.is_deleted`` for that."""
    at = expires_at(stored)
    return at is not None and now_ms >= at


def visible(values, now_ms: int) -> tuple[list[bytes], list[int] | None]:
    """The client's values among the live sibling values ``values`` that have not expired at ``now_ms`` (equal
    values once), and the milliseconds each has left (NO_EXPIRY for none), or None when no value expires."""
    if len(values) == 1:  # the usual case, without the dict
        value, at = unwrap(values[0])
        if at is None:
            return [value], None
        return ([value], [at - now_ms]) if now_ms < at else ([], None)
    if not any(v.startswith(MARK) for v in values):
        return list(dict.fromkeys(values)), None  # the plain case: as cheap as before TTLs
    left: dict[bytes, int] = {}
    for stored in values:
        value, at = unwrap(stored)
        if at is None:
            left[value] = NO_EXPIRY
        elif now_ms < at:
            remaining = at - now_ms
            before = left.get(value)
            # Equal bytes are one value to the application: it lives as long as its longest-lived copy.
            if before is None or (before != NO_EXPIRY and remaining > before):
                left[value] = remaining
    ttls = list(left.values())
    return list(left), (ttls if any(t != NO_EXPIRY for t in ttls) else None)


def gone_at(siblings) -> int | None:
    """When (ms since the epoch) every live value of the object will have expired; None when some value never
    expires, or when it has no live value (a tombstone is the reaper's already)."""
    values = siblings.live_values()
    latest = None
    for stored in values:
        at = expires_at(stored)
        if at is None:
            return None
        latest = at if latest is None else max(latest, at)
    return latest


def gone(siblings, now_ms: int) -> bool:
    """Whether the object reads as absent at ``now_ms``: deleted, or every live value expired."""
    if siblings.is_deleted():
        return True
    at = gone_at(siblings)
    return at is not None and now_ms >= at
