"""A node's vnodes (the partition replicas it holds) and the hints it keeps for others, over its one log store.

One store per node, as Riak does: every vnode shares the write buffer and the fsync stream, which is what makes
group commit pay off. A vnode is a key prefix inside it:

    b"o" + partition (2 bytes, big-endian) + key        the object (encoded Siblings) of a primary replica
    b"h" + owner id + b"\\0" + partition (2 bytes) + key   a hint held for ``owner`` by a fallback

so that iterating a vnode or one owner's hints is a prefix scan of the keydir. The vnode side follows riak_core's
vnode behaviour: ``fold`` (the handoff items), ``handoff_data`` (reconcile what a sender streamed), ``is_empty``,
``drop``.
"""
from __future__ import annotations

import struct

OBJECT = b"o"
HINT = b"h"
_PARTITION = struct.Struct(">H")


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

    def __init__(self, store, versions, on_write=None):
        self.store = store
        self.versions = versions
        self._siblings = versions.Siblings
        # on_write(partition, key, old, new) after each change of a primary object (Merkle trees follow it).
        self.on_write = on_write

    # -- objects -----------------------------------------------------------------------------------------
    def get(self, partition: int, key: bytes, hint_for: str | None = None):
        raw = self.store.get(object_key(partition, key) if hint_for is None else hint_key(hint_for, partition, key))
        return None if raw is None else self._siblings.from_bytes(raw)

    def get_raw(self, partition: int, key: bytes, hint_for: str | None = None) -> bytes | None:
        return self.store.get(object_key(partition, key) if hint_for is None else hint_key(hint_for, partition, key))

    def write(self, partition: int, key: bytes, siblings, hint_for: str | None = None, *, previous=None,
              raw: bytes | None = None) -> None:
        """Store ``siblings`` as they are (the caller merged them with ``previous``, what was stored)."""
        self.store.put(object_key(partition, key) if hint_for is None else hint_key(hint_for, partition, key),
                       raw if raw is not None else siblings.to_bytes())
        if hint_for is None and self.on_write is not None:
            self.on_write(partition, key, previous, siblings)

    def merge_in(self, partition: int, key: bytes, incoming, hint_for: str | None = None):
        """Reconcile ``incoming`` with the stored object; write and return the result.

        Nothing newer is ever overwritten: the result descends from both sides.
        """
        existing = self.get(partition, key, hint_for)
        merged = incoming if existing is None else incoming.sync(existing)
        if existing is None or merged != existing:
            self.write(partition, key, merged, hint_for, previous=existing)
        return merged

    def remove_if_equal(self, partition: int, key: bytes, expected) -> bool:
        """Drop a fully replicated tombstone, unless a newer write arrived meanwhile."""
        current = self.get(partition, key)
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
        """(key, Siblings) of one vnode, in key order."""
        prefix = vnode_prefix(partition)
        cut = len(prefix)
        for stored_key, raw in self.store.items(prefix=prefix):
            yield bytes(stored_key[cut:]), self._siblings.from_bytes(raw)

    def handoff_items(self, partition: int, after: bytes | None = None):
        """(key, encoded object) of one vnode in key order, past ``after``: what a transfer streams."""
        for key in sorted(self.keys(partition)):
            if after is not None and key <= after:
                continue
            raw = self.get_raw(partition, key)
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
        self.store.delete_prefix(vnode_prefix(partition))

    # -- hints -------------------------------------------------------------------------------------
    def hints(self, owner: str):
        """(partition, key, Siblings) of every hint held for ``owner``."""
        for stored_key, raw in self.store.items(prefix=hint_prefix(owner)):
            partition, key = split_hint_key(owner, stored_key)
            yield partition, key, self._siblings.from_bytes(raw)

    def hint_owners(self) -> set[str]:
        owners = set()
        for stored_key in self.store.keys(prefix=HINT):
            owners.add(bytes(stored_key[1 : stored_key.index(b"\0")]).decode())
        return owners

    def drop_hint_if_equal(self, owner: str, partition: int, key: bytes, delivered) -> bool:
        stored_key = hint_key(owner, partition, key)
        raw = self.store.get(stored_key)
        if raw is None or self._siblings.from_bytes(raw) != delivered:
            return False
        self.store.delete(stored_key)
        return True
