"""The partition ring: plain-Python reference of ``dynafast._core.ring``.

A key maps to a 64-bit token (MurmurHash3 x64_128 with seed 0, low 64 bits), and a token to one of Q equal
partitions: ``partition = token >> (64 - log2 Q)``. Partitions are claimed by the members; the preference list
of a partition is its owner then the owners of the next partitions clockwise, skipping repeats.

This module is the reference for what the compiled ring computes itself (tokens, partitions, replicas,
fallbacks, preference lists). What both builds share is elsewhere: the claim, which decides the layout, is
``dynafast.ringclaim`` (read it for the layout's guarantees), and the argument checks and the byte format
are ``dynafast.ringformat``.
"""
import hashlib
import struct

import mmh3
import numpy

from dynafast.ringclaim import claim
from dynafast.ringformat import check_members, check_n, check_partitions, check_version, pack, parse


# -- tokens ---------------------------------------------------------------------------------------
def _as_bytes(key):
    if isinstance(key, bytes):
        return key
    if isinstance(key, str):
        raise TypeError("keys are bytes, not str")
    view = memoryview(key)  # TypeError for objects without the buffer protocol
    if not view.c_contiguous:
        raise BufferError("key buffer is not C-contiguous")
    return view.tobytes()


def token(key) -> int:
    """The unsigned 64-bit token of ``key``: the low 64 bits of MurmurHash3 x64_128, seed 0."""
    return mmh3.hash64(_as_bytes(key), seed=0, x64arch=True, signed=False)[0]


def tokens(keys) -> numpy.ndarray:
    """Tokens of a sequence of keys, as a uint64 array."""
    return numpy.array([token(k) for k in keys], dtype=numpy.uint64)



# -- the ring ---------------------------------------------------------------------------------------
class Ring:
    """Q partitions claimed by the members; immutable (membership changes make a new ring)."""

    def __init__(self, partitions, members, *, n=3, zones=None, previous=None, version=1):
        self._log2q = check_partitions(partitions)
        self.partitions = partitions
        self.n = check_n(n)
        self.members, self.zones = check_members(members, zones)
        self.version = check_version(version)
        prev = None
        if previous is not None:
            if getattr(previous, "partitions", None) != partitions:
                raise ValueError("previous must be a Ring with the same number of partitions")
            prev = previous.owners()
        self._owner = claim(partitions, self.members, self.n, self.zones, prev)

    @classmethod
    def _build(cls, log2q, n, version, members, zones, owner):
        self = cls.__new__(cls)
        self._log2q = log2q
        self.partitions = 1 << log2q
        self.n = n
        self.version = version
        self.members = members
        self.zones = zones
        self._owner = owner
        return self

    def with_members(self, members, zones=None):
        """A new ring for ``members`` (version + 1) that moves as few partitions as possible from this one."""
        if zones is None:
            zones = self.zones
        return Ring(self.partitions, members, n=self.n, zones=zones, previous=self, version=self.version + 1)

    # -- lookups --------------------------------------------------------------------------------
    def _partition(self, partition):
        if not isinstance(partition, int):
            raise TypeError("partition must be an int")
        if not 0 <= partition < self.partitions:
            raise IndexError("partition out of range")
        return partition

    def owner(self, partition):
        return self.members[self._owner[self._partition(partition)]]

    def owners(self):
        return [self.members[i] for i in self._owner]

    def partition_of(self, key):
        return token(key) >> (64 - self._log2q)

    def partition_of_token(self, token):
        if not isinstance(token, int):
            raise TypeError("token must be an int")
        if not 0 <= token < 2**64:
            raise OverflowError("token must be an unsigned 64-bit integer")
        return token >> (64 - self._log2q)

    def partitions_of(self, keys_or_tokens):
        if isinstance(keys_or_tokens, numpy.ndarray):
            if keys_or_tokens.dtype != numpy.uint64:
                raise TypeError("tokens must be a uint64 array")
            toks = keys_or_tokens.ravel()
        else:
            toks = tokens(keys_or_tokens)
        return (toks >> numpy.uint64(64 - self._log2q)).astype(numpy.intp)

    def partitions_owned(self, node):
        i = self._index(node)
        return [p for p, o in enumerate(self._owner) if o == i]

    def _index(self, node):
        try:
            return self.members.index(node)
        except ValueError:
            raise KeyError(node) from None

    def _walk(self, partition):
        """Distinct owners in ring order starting at ``partition``."""
        seen = set()
        q = self.partitions
        for d in range(q):
            o = self._owner[(partition + d) % q]
            if o not in seen:
                seen.add(o)
                yield o

    def replicas(self, partition, n=None):
        n = self.n if n is None else check_n(n)
        p = self._partition(partition)
        out = []
        for o in self._walk(p):
            if len(out) == n:
                break
            out.append(self.members[o])
        return out

    def fallbacks(self, partition, n=None):
        n = self.n if n is None else check_n(n)
        p = self._partition(partition)
        order = list(self._walk(p))
        seen = set(order)
        # Members that own nothing (only when S > Q) come last, in name order.
        order += [i for i in range(len(self.members)) if i not in seen]
        return [self.members[o] for o in order[n:]]

    def preference_list(self, partition, n=None, down=frozenset()):
        n = self.n if n is None else check_n(n)
        replicas = self.replicas(partition, n)
        fallbacks = self.fallbacks(partition, n)
        out = [(r, None) for r in replicas if r not in down]
        spare = iter([f for f in fallbacks if f not in down])
        for r in replicas:
            if r in down:
                f = next(spare, None)
                if f is None:
                    break
                out.append((f, r))
        return out

    # -- comparing and gossip -------------------------------------------------------------------
    def moved_partitions(self, other):
        if getattr(other, "partitions", None) != self.partitions:
            raise ValueError("can only compare rings with the same number of partitions")
        return sum(1 for a, b in zip(self.owners(), other.owners()) if a != b)

    def to_bytes(self):
        table = struct.pack(f"<{self.partitions}H", *self._owner)
        return pack(self._log2q, self.n, self.version, self.members, self.zones, table)

    @classmethod
    def from_bytes(cls, data):
        log2q, n, version, members, zones, owner = parse(data)
        return cls._build(log2q, n, version, members, zones, list(owner))

    def __reduce__(self):
        return (type(self).from_bytes, (self.to_bytes(),))

    def digest(self):
        return hashlib.blake2b(self.to_bytes(), digest_size=16).digest()

    def __eq__(self, other):
        if not isinstance(other, Ring):
            return NotImplemented
        return self.to_bytes() == other.to_bytes()

    def __hash__(self):
        return hash(self.digest())

    def __repr__(self):
        return f"<Ring Q={self.partitions} n={self.n} members={len(self.members)} version={self.version}>"
