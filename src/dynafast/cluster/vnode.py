"""A node's vnodes (the partition replicas it holds) and the hints it keeps for others, over its one log store.

One store per node, as Riak does: every vnode shares the write buffer and the fsync stream, which is what makes
group commit pay off. A vnode is a key prefix inside it:

    b"o" + partition (2 bytes, big-endian) + key        the object (encoded Siblings) of a primary replica
    b"h" + owner id + b"\\0" + partition (2 bytes) + key   a hint held for ``owner`` by a fallback

so that iterating a vnode or one owner's hints is a prefix scan of the keydir. The vnode side follows riak_core's
vnode behaviour: ``fold`` (the handoff items), ``handoff_data`` (reconcile what a sender streamed), ``is_empty``,
``drop``.

A record that cannot be read (the store's checksum fails, or its bytes do not decode) is a missing replica of
that key, not an outage: ``get`` raises CorruptionError so that a coordinator can count this replica as failed,
and everything else (merges, anti-entropy, handoff, reaping) treats the key as absent here, so the next write
of it (a repair) replaces the damaged record.

A hint's value is ``b"r"`` + when this node received it (8-byte big-endian float, seconds on this node's wall
clock; the earliest receipt when hints of one key merged) + the encoded object. The hint window is measured
from there, on the clock of the node that holds the hint: a coordinator's clock plays no part. A value that
begins with the object's own format byte instead is a hint stored before receipt times were kept.
"""
from __future__ import annotations

import logging
import struct

from dynafast.cluster.ports import SystemClock
from dynafast.errors import CorruptionError, ProtocolError

log = logging.getLogger("dynafast.vnode")

OBJECT = b"o"
HINT = b"h"
_PARTITION = struct.Struct(">H")
_RECEIVED = b"r"
_RECEIVED_AT = struct.Struct(">d")
_RECEIVED_SIZE = 1 + _RECEIVED_AT.size


_object_prefixes: dict[int, bytes] = {}  # partition -> b"o" + partition: packing it per call showed in profiles


def object_key(partition: int, key: bytes) -> bytes:
    prefix = _object_prefixes.get(partition)
    if prefix is None:
        prefix = _object_prefixes[partition] = OBJECT + _PARTITION.pack(partition)
    return prefix + key


def vnode_prefix(partition: int) -> bytes:
    return OBJECT + _PARTITION.pack(partition)


def hint_prefix(owner: str) -> bytes:
    return HINT + owner.encode() + b"\0"


def hint_key(owner: str, partition: int, key: bytes) -> bytes:
    return hint_prefix(owner) + _PARTITION.pack(partition) + key


def split_hint_key(owner: str, stored_key: bytes) -> tuple[int, bytes]:
    rest = stored_key[len(hint_prefix(owner)) :]
    return _PARTITION.unpack_from(rest)[0], bytes(rest[2:])


class Vnodes:
    """Versioned objects of the vnodes a node holds, and the hints it keeps for others."""

    def __init__(self, store, versions, on_write=None, on_damaged=None, *, clock=None):
        self.store = store
        self.versions = versions
        self._siblings = versions.Siblings
        # on_write(partition, key, old, new) after each change of a primary object (Merkle trees follow it).
        self.on_write = on_write
        # on_damaged(partition) when a primary object is first found damaged: what was derived from its old
        # contents (a Merkle tree) is stale now, and a repair will write it as new.
        self.on_damaged = on_damaged
        self.damaged: set[bytes] = set()  # stored keys found damaged and not written since
        self.corrupt_found = 0
        self.corrupt_repaired = 0
        self.clock = clock if clock is not None else SystemClock()  # its wall(): when a hint was received

    # -- objects (with ``hint_for``: the hint held for that owner) -----------------------------------------
    def get(self, partition: int, key: bytes, hint_for: str | None = None):
        """The stored object, or None when absent; CorruptionError when its record cannot be read."""
        if hint_for is not None:
            found = self._hint(hint_for, partition, key)
            return None if found is None else found[1]
        stored_key = object_key(partition, key)
        try:
            raw = self.store.get(stored_key)
            return None if raw is None else self._siblings.from_bytes(raw)
        except (CorruptionError, ProtocolError, ValueError) as exc:  # a failed checksum, or bytes that do not decode
            raise self._found_damaged(stored_key, partition, exc) from exc

    def get_intact(self, partition: int, key: bytes, hint_for: str | None = None):
        """The stored object, or None when absent or damaged (then the next write of the key replaces it)."""
        try:
            return self.get(partition, key, hint_for)
        except CorruptionError:
            return None

    def get_raw(self, partition: int, key: bytes, hint_for: str | None = None) -> bytes | None:
        """The stored bytes undecoded (the receiver decodes them); CorruptionError when they fail their checksum."""
        stored_key = object_key(partition, key) if hint_for is None else hint_key(hint_for, partition, key)
        try:
            raw = self.store.get(stored_key)
        except CorruptionError as exc:
            raise self._found_damaged(stored_key, partition if hint_for is None else None, exc) from exc
        return raw if raw is None or hint_for is None else _split_hint(raw)[1]

    def _found_damaged(self, stored_key: bytes, partition: int | None, exc: Exception) -> CorruptionError:
        if stored_key not in self.damaged:
            self.damaged.add(stored_key)
            self.corrupt_found += 1
            log.error("damaged record %r (%s): serving it as missing until it is repaired", stored_key, exc)
            if partition is not None and self.on_damaged is not None:
                self.on_damaged(partition)
        return exc if isinstance(exc, CorruptionError) else CorruptionError(f"stored object does not decode: {exc}")

    def write(self, partition: int, key: bytes, siblings, hint_for: str | None = None, *, previous=None,
              raw: bytes | None = None, received: float | None = None) -> None:
        """Store ``siblings`` as they are (the caller merged them with ``previous``, what was stored); ``raw`` is
        their encoding. A hint is stored with its receipt time: ``received``, or now."""
        if hint_for is None:
            stored_key = object_key(partition, key)
            value = raw if raw is not None else siblings.to_bytes()
        else:
            stored_key = hint_key(hint_for, partition, key)
            value = (_RECEIVED + _RECEIVED_AT.pack(self.clock.wall() if received is None else received)
                     + (raw if raw is not None else siblings.to_bytes()))
        self.store.put(stored_key, value)
        if self.damaged and stored_key in self.damaged:
            self.damaged.discard(stored_key)
            self.corrupt_repaired += 1
            log.info("damaged record %r repaired", stored_key)
        if hint_for is None and self.on_write is not None:
            self.on_write(partition, key, previous, siblings)

    def merge_in(self, partition: int, key: bytes, incoming, hint_for: str | None = None):
        """Reconcile ``incoming`` with the stored object; write and return the result.

        Nothing newer is ever overwritten: the result descends from both sides. A damaged record counts as
        absent: ``incoming`` replaces it.
        """
        if hint_for is not None:
            return self._merge_hint(hint_for, partition, key, incoming)
        existing = self.get_intact(partition, key)
        merged = incoming if existing is None else incoming.sync(existing)
        if existing is None or merged != existing:
            self.write(partition, key, merged, previous=existing)
        return merged

    def replace_if_covering(self, partition: int, key: bytes, incoming, raw: bytes | None = None,
                            hint_for: str | None = None) -> bool:
        """Store ``incoming`` only if its clock covers every version held of ``key`` (it then replaces them all,
        as ``merge_in`` would); False, and nothing written, when a version held is not covered or the record is
        damaged (what it held is unknown). A one-round last-write-wins put counts on this answer.

        Only versions count: clock entries without one that ``incoming`` lacks (its coordinator pruned them from
        its copy) are merged back in, as ``merge_in`` does, rather than refuse every such write."""
        try:
            existing = self.get(partition, key, hint_for)
        except CorruptionError:
            return False
        if existing is not None:
            merged = incoming.sync(existing)
            if merged.values != incoming.values:  # a version held survives the merge: not covered
                return False
            if merged != incoming:  # entries the writer pruned come back; else the encoding that came is stored
                incoming, raw = merged, None
        if hint_for is not None:
            self._merge_hint(hint_for, partition, key, incoming)
        elif existing is None or incoming != existing:
            self.write(partition, key, incoming, previous=existing, raw=raw)
        return True

    def remove_if_equal(self, partition: int, key: bytes, expected) -> bool:
        """Drop a fully replicated tombstone, unless a newer write arrived meanwhile."""
        current = self.get_intact(partition, key)
        if current is None or current != expected:
            return False
        self.store.delete(object_key(partition, key))
        if self.on_write is not None:
            self.on_write(partition, key, current, None)
        return True

    # -- the vnode behaviour ---------------------------------------------------------------------------
    def keys(self, partition: int):
        """The keys of one vnode (no values read)."""
        prefix = vnode_prefix(partition)
        cut = len(prefix)
        for stored_key in self.store.keys(prefix=prefix):
            yield bytes(stored_key[cut:])

    def fold(self, partition: int):
        """(key, Siblings) of one vnode, unordered; damaged records are left out (they count as missing).

        Each key is read on its own, not by one iteration over the store's items: a damaged record ends such an
        iteration, and with it the fold.
        """
        for key in self.keys(partition):
            siblings = self.get_intact(partition, key)
            if siblings is not None:
                yield key, siblings

    def handoff_items(self, partition: int, after: bytes | None = None):
        """(key, encoded object) of one vnode in key order, past ``after``: what a transfer streams."""
        for key in sorted(self.keys(partition)):
            if after is not None and key <= after:
                continue
            try:
                raw = self.get_raw(partition, key)
            except CorruptionError:
                continue  # the new owner lacks it for now: anti-entropy brings it from the other replicas
            if raw is not None:
                yield key, raw

    def handoff_data(self, partition: int, key: bytes, raw: bytes):
        """An object a transfer, hint or repair brought: reconcile it into our replica."""
        return self.merge_in(partition, key, self._siblings.from_bytes(raw))

    def count(self, partition: int) -> int:
        return self.store.count(vnode_prefix(partition))

    def is_empty(self, partition: int) -> bool:
        return self.count(partition) == 0

    def drop(self, partition: int) -> None:
        prefix = vnode_prefix(partition)
        self.store.delete_prefix(prefix)
        if self.damaged:
            self.damaged = {k for k in self.damaged if not k.startswith(prefix)}

    # -- hints -------------------------------------------------------------------------------------
    def _hint(self, owner: str, partition: int, key: bytes):
        """(received or None, Siblings) of the hint held for ``owner``, None when absent; CorruptionError when
        its record cannot be read."""
        stored_key = hint_key(owner, partition, key)
        try:
            stored = self.store.get(stored_key)
            if stored is None:
                return None
            received, raw = _split_hint(stored)
            return received, self._siblings.from_bytes(raw)
        except (CorruptionError, ProtocolError, ValueError, struct.error) as exc:
            raise self._found_damaged(stored_key, None, exc) from exc

    def _merge_hint(self, owner: str, partition: int, key: bytes, incoming):
        try:
            found = self._hint(owner, partition, key)
        except CorruptionError:
            found = None  # a damaged hint counts as absent: incoming replaces it
        now = self.clock.wall()
        if found is None:
            merged, received = incoming, now
        else:
            received, existing = found
            merged = incoming.sync(existing)
            if merged == existing and received is not None:
                return merged
            # The earliest receipt stays: a merged hint expires no later than its oldest part would have.
            received = now if received is None else min(received, now)
        self.write(partition, key, merged, owner, received=received)
        return merged

    def hints(self, owner: str):
        """(partition, key, Siblings, received) of every intact hint held for ``owner`` (read one by one, as
        ``fold``); ``received`` is when this node received it (its wall clock), None for a hint stored before
        receipt times were kept."""
        for stored_key in self.store.keys(prefix=hint_prefix(owner)):
            partition, key = split_hint_key(owner, stored_key)
            try:
                found = self._hint(owner, partition, key)
            except CorruptionError:
                # Nothing can repair a hint (no other node holds it): drop it, and leave the owner's copy to
                # read repair and anti-entropy, as for a hint past its window.
                self.store.delete(stored_key)
                self.damaged.discard(stored_key)
                continue
            if found is not None:
                yield partition, key, found[1], found[0]

    def hint_owners(self) -> set[str]:
        return set(self.hint_counts())

    def hint_counts(self) -> dict[str, int]:
        """Hints held per owner (one pass over the hint keys, as ``hint_owners``)."""
        counts: dict[bytes, int] = {}
        for stored_key in self.store.keys(prefix=HINT):
            owner = bytes(stored_key[1 : stored_key.index(b"\0")])
            counts[owner] = counts.get(owner, 0) + 1
        return {owner.decode(): count for owner, count in counts.items()}

    def drop_hint_if_equal(self, owner: str, partition: int, key: bytes, delivered) -> bool:
        current = self.get_intact(partition, key, owner)
        if current is None or current != delivered:
            return False
        self.store.delete(hint_key(owner, partition, key))
        return True


def hint_object(stored) -> bytes:
    """The encoded object of a stored hint, its receipt time left off."""
    return _split_hint(stored)[1]


def _split_hint(stored) -> tuple[float | None, bytes]:
    """(receipt time or None, encoded object) of a stored hint."""
    stored = bytes(stored)
    if stored[:1] != _RECEIVED:
        return None, stored
    return _RECEIVED_AT.unpack_from(stored, 1)[0], stored[_RECEIVED_SIZE:]
