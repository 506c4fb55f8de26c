"""Merkle trees for anti-entropy: the plain-Python reference of ``dynafast._core.merkle``.

One tree per vnode. The key space is cut into ``leaves`` segments by a hash of the key; a leaf is the sum
(mod 2**64) of the 64-bit hashes of the (key, version digest) pairs in its segment, so a put or delete
changes one leaf in O(1) and the sum does not depend on the order of updates. An internal node is the
MurmurHash3 of its children's hashes in order, so it is position-sensitive: leaves cannot cancel out.
Internal levels are recomputed lazily, only along the paths of leaves that changed.

Every hash here is MurmurHash3 x64_128 (``mmh3`` computes the same values; the tests check that):

- leaf of a key: high 64 bits of ``murmur3(key, seed=0)`` (the low 64 bits are the ring token, whose top
  bits are the same for every key of a partition, so they cannot spread keys over the leaves),
  top ``log2(leaves)`` bits;
- item hash: low 64 bits of ``murmur3(u32le(len(key)) + key + digest, seed=ITEM_SEED)`` (the length
  prefix keeps ``(b"ab", b"c")`` and ``(b"a", b"bc")`` apart);
- internal node: low 64 bits of ``murmur3(u64le(child_0) + ... + u64le(child_k), seed=NODE_SEED)``.

Hashes travel as 8 bytes, little-endian.
"""
from __future__ import annotations

import struct

from dynafast.errors import KeyTooLarge, ProtocolError

__all__ = ["MerkleTree", "TreeExchange", "diff", "murmur3_x64_128", "HASH_SIZE"]

HASH_SIZE = 8
ITEM_SEED = 0x4D4B4931  # "MKI1"
NODE_SEED = 0x4D4B4E31  # "MKN1"
CHECK_SEED = 0x4D4B4331  # "MKC1": checksum of the serialized form
MIN_LEAF_BITS = 4  # 16 leaves
MAX_LEAF_BITS = 20  # 1,048,576 leaves
MAX_FANOUT_BITS = 20
MAGIC = b"DFMT"
FORMAT_VERSION = 1
# Serialized form: magic, version, log2(leaves), log2(fanout), reserved 0 | leaves * u64le | u64le checksum.
HEADER = struct.Struct("<4sBBBB")
TRAILER_SIZE = 8
# Accounting of TreeExchange: a request is a header (depth u32, count u32) and one u32 per node index;
# a reply is one hash per index.
REQUEST_HEADER_SIZE = 8
INDEX_SIZE = 4

_M64 = 0xFFFFFFFFFFFFFFFF
_C1 = 0x87C37B91114253D5
_C2 = 0x4CF5AD432745937F


def _rotl(x: int, r: int) -> int:
    return ((x << r) | (x >> (64 - r))) & _M64


def _fmix(k: int) -> int:
    k ^= k >> 33
    k = (k * 0xFF51AFD7ED558CCD) & _M64
    k ^= k >> 33
    k = (k * 0xC4CEB9FE1A85EC53) & _M64
    k ^= k >> 33
    return k


def murmur3_x64_128(data: bytes, seed: int = 0) -> tuple[int, int]:
    """MurmurHash3 x64_128 of ``data`` as two unsigned 64-bit halves (h1, h2), as ``mmh3.hash64``."""
    n = len(data)
    h1 = h2 = seed & 0xFFFFFFFF
    nblocks = n // 16
    from_bytes = int.from_bytes
    for i in range(0, nblocks * 16, 16):
        k1 = from_bytes(data[i : i + 8], "little")
        k2 = from_bytes(data[i + 8 : i + 16], "little")
        k1 = (_rotl((k1 * _C1) & _M64, 31) * _C2) & _M64
        h1 ^= k1
        h1 = (((_rotl(h1, 27) + h2) & _M64) * 5 + 0x52DCE729) & _M64
        k2 = (_rotl((k2 * _C2) & _M64, 33) * _C1) & _M64
        h2 ^= k2
        h2 = (((_rotl(h2, 31) + h1) & _M64) * 5 + 0x38495AB5) & _M64
    tail = data[nblocks * 16 :]
    if len(tail) > 8:
        k2 = from_bytes(tail[8:], "little")
        h2 ^= (_rotl((k2 * _C2) & _M64, 33) * _C1) & _M64
    if tail:
        k1 = from_bytes(tail[:8], "little")
        h1 ^= (_rotl((k1 * _C1) & _M64, 31) * _C2) & _M64
    h1 ^= n
    h2 ^= n
    h1 = (h1 + h2) & _M64
    h2 = (h2 + h1) & _M64
    h1 = _fmix(h1)
    h2 = _fmix(h2)
    h1 = (h1 + h2) & _M64
    h2 = (h2 + h1) & _M64
    return h1, h2


def _as_bytes(obj) -> bytes:
    if isinstance(obj, bytes):
        return obj
    if isinstance(obj, str):
        raise TypeError(f"a bytes-like object is required, not '{type(obj).__name__}'")
    return memoryview(obj).tobytes()


def _item_hash(key: bytes, digest: bytes) -> int:
    if len(key) > 0xFFFFFFFF:
        raise KeyTooLarge("key longer than 4 GiB")
    message = len(key).to_bytes(4, "little") + key + digest
    return murmur3_x64_128(message, ITEM_SEED)[0]


def _node_hash(children: list[int]) -> int:
    return murmur3_x64_128(struct.pack(f"<{len(children)}Q", *children), NODE_SEED)[0]


def _log2_exact(value, name: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int")
    if value <= 0 or value & (value - 1) or not (1 << low) <= value <= (1 << high):
        raise ValueError(f"{name} must be a power of two in {1 << low}..{1 << high}, not {value}")
    return value.bit_length() - 1


class MerkleTree:
    """A Merkle tree over the (key, version digest) pairs of one vnode."""

    __slots__ = ("_leaf_bits", "_fanout_bits", "_depth", "_sizes", "_levels", "_dirty", "_all_dirty")

    def __init__(self, leaves: int = 1024, fanout: int = 16):
        self._leaf_bits = _log2_exact(leaves, "leaves", MIN_LEAF_BITS, MAX_LEAF_BITS)
        self._fanout_bits = _log2_exact(fanout, "fanout", 1, MAX_FANOUT_BITS)
        # Level d holds 2**max(0, L - f*(depth - d)) nodes: full fanout below, a narrower root when
        # log2(leaves) is not a multiple of log2(fanout).
        self._depth = -(-self._leaf_bits // self._fanout_bits)
        self._sizes = [
            1 << max(0, self._leaf_bits - self._fanout_bits * (self._depth - d)) for d in range(self._depth + 1)
        ]
        self._levels = [[0] * size for size in self._sizes]
        # Dirty internal nodes per level; _all_dirty means every internal level must be recomputed.
        self._dirty = [set() for _ in range(self._depth)]
        self._all_dirty = True

    # -- shape --------------------------------------------------------------------------------------
    @property
    def leaves(self) -> int:
        return 1 << self._leaf_bits

    @property
    def fanout(self) -> int:
        return 1 << self._fanout_bits

    @property
    def depth(self) -> int:
        return self._depth

    def level_size(self, depth: int) -> int:
        """Number of nodes at ``depth`` (0 is the root, ``self.depth`` the leaves)."""
        self._check_depth(depth, self._depth)
        return self._sizes[depth]

    def children(self, depth: int, index: int) -> range:
        """Indices at ``depth + 1`` of the children of node ``index`` at ``depth``."""
        self._check_depth(depth, self._depth - 1)
        self._check_index(depth, index)
        start = index << self._fanout_bits
        return range(start, min(start + (1 << self._fanout_bits), self._sizes[depth + 1]))

    def leaf_of(self, key) -> int:
        """The leaf segment of ``key``."""
        return murmur3_x64_128(_as_bytes(key), 0)[1] >> (64 - self._leaf_bits)

    # -- updates ------------------------------------------------------------------------------------
    def insert(self, key, digest) -> None:
        self._add(_as_bytes(key), _as_bytes(digest), 1)

    def remove(self, key, digest) -> None:
        """Take out a pair inserted before (removing one never inserted leaves the tree unequal to any set)."""
        self._add(_as_bytes(key), _as_bytes(digest), -1)

    def update(self, key, old, new) -> None:
        """Replace version ``old`` of ``key`` by ``new``; None means absent on that side."""
        key = _as_bytes(key)
        if old is not None:
            old = _as_bytes(old)
        if new is not None:
            new = _as_bytes(new)
        if old is not None:
            self._add(key, old, -1)
        if new is not None:
            self._add(key, new, 1)

    def clear(self) -> None:
        self._levels[self._depth] = [0] * self.leaves
        self._dirty = [set() for _ in range(self._depth)]
        self._all_dirty = True

    def _add(self, key: bytes, digest: bytes, sign: int) -> None:
        leaf = self.leaf_of(key)
        item = _item_hash(key, digest)
        leaves = self._levels[self._depth]
        leaves[leaf] = (leaves[leaf] + sign * item) & _M64
        if not self._all_dirty:
            self._dirty[self._depth - 1].add(leaf >> self._fanout_bits)

    # -- reading ------------------------------------------------------------------------------------
    def root(self) -> bytes:
        self._flush()
        return self._levels[0][0].to_bytes(HASH_SIZE, "little")

    def hashes(self, depth: int, indices=None) -> list[bytes]:
        """The hashes at ``depth``: all of them, or those at ``indices`` in that order."""
        self._check_depth(depth, self._depth)
        if depth < self._depth:
            self._flush()
        level = self._levels[depth]
        if indices is None:
            return [h.to_bytes(HASH_SIZE, "little") for h in level]
        out = []
        for index in indices:
            self._check_index(depth, index)
            out.append(level[index].to_bytes(HASH_SIZE, "little"))
        return out

    def leaf_hash(self, leaf: int) -> bytes:
        self._check_index(self._depth, leaf)
        return self._levels[self._depth][leaf].to_bytes(HASH_SIZE, "little")

    def _flush(self) -> None:
        fb = self._fanout_bits
        if self._all_dirty:
            for d in range(self._depth - 1, -1, -1):
                below = self._levels[d + 1]
                self._levels[d] = [
                    _node_hash(below[i << fb : (i + 1) << fb]) for i in range(self._sizes[d])
                ]
            self._dirty = [set() for _ in range(self._depth)]
            self._all_dirty = False
            return
        for d in range(self._depth - 1, -1, -1):
            dirty = self._dirty[d]
            if not dirty:
                continue
            below = self._levels[d + 1]
            level = self._levels[d]
            for i in dirty:
                level[i] = _node_hash(below[i << fb : (i + 1) << fb])
                if d > 0:
                    self._dirty[d - 1].add(i >> fb)
            dirty.clear()

    def _check_depth(self, depth, high: int) -> None:
        if not 0 <= depth <= high:
            raise ValueError(f"depth {depth} out of range 0..{high}")

    def _check_index(self, depth: int, index) -> None:
        if not 0 <= index < self._sizes[depth]:
            raise IndexError(f"index {index} out of range at depth {depth} ({self._sizes[depth]} nodes)")

    # -- construction, serialization, comparison ----------------------------------------------------
    @classmethod
    def build(cls, items, leaves: int = 1024, fanout: int = 16) -> "MerkleTree":
        """A tree of the (key, digest) pairs of ``items``."""
        tree = cls(leaves, fanout)
        for key, digest in items:
            tree._add(_as_bytes(key), _as_bytes(digest), 1)
        return tree

    def to_bytes(self) -> bytes:
        body = HEADER.pack(MAGIC, FORMAT_VERSION, self._leaf_bits, self._fanout_bits, 0) + struct.pack(
            f"<{self.leaves}Q", *self._levels[self._depth]
        )
        return body + murmur3_x64_128(body, CHECK_SEED)[0].to_bytes(TRAILER_SIZE, "little")

    @classmethod
    def from_bytes(cls, data) -> "MerkleTree":
        data = _as_bytes(data)
        if len(data) < HEADER.size + TRAILER_SIZE:
            raise ValueError("merkle tree data too short")
        magic, version, leaf_bits, fanout_bits, reserved = HEADER.unpack_from(data)
        if magic != MAGIC or version != FORMAT_VERSION or reserved != 0:
            raise ValueError("not a serialized merkle tree of a known version")
        if not MIN_LEAF_BITS <= leaf_bits <= MAX_LEAF_BITS or not 1 <= fanout_bits <= MAX_FANOUT_BITS:
            raise ValueError("bad merkle tree shape")
        if len(data) != HEADER.size + (8 << leaf_bits) + TRAILER_SIZE:
            raise ValueError("merkle tree data has the wrong length")
        body = data[:-TRAILER_SIZE]
        if murmur3_x64_128(body, CHECK_SEED)[0] != int.from_bytes(data[-TRAILER_SIZE:], "little"):
            raise ValueError("merkle tree checksum mismatch")
        tree = cls(1 << leaf_bits, 1 << fanout_bits)
        tree._levels[tree._depth] = list(struct.unpack_from(f"<{1 << leaf_bits}Q", data, HEADER.size))
        return tree

    def __eq__(self, other):
        if not isinstance(other, MerkleTree):
            return NotImplemented
        return (
            self._leaf_bits == other._leaf_bits
            and self._fanout_bits == other._fanout_bits
            and self._levels[self._depth] == other._levels[other._depth]
        )

    __hash__ = None

    def __repr__(self) -> str:
        return f"MerkleTree(leaves={self.leaves}, fanout={self.fanout})"


class TreeExchange:
    """I/O-free level-by-level diff of a local tree against a remote one (the remote answers requests).

    Start at the root; at each level ask for the remote hashes of the children of the nodes that differed
    at the level above. Two trees that differ in d leaves cost O(d * fanout * depth) hashes.
    Both trees must have the same shape (leaves, fanout): agree on it before the exchange.
    """

    __slots__ = ("_local", "_depth", "_pending", "_issued", "_result", "_bytes_sent", "_bytes_received")

    def __init__(self, local: MerkleTree):
        if not isinstance(local, MerkleTree):
            raise TypeError("local must be a MerkleTree")
        self._local = local
        self._depth = 0
        self._pending = [0]
        self._issued = False
        self._result = None
        self._bytes_sent = 0
        self._bytes_received = 0

    @property
    def bytes_sent(self) -> int:
        return self._bytes_sent

    @property
    def bytes_received(self) -> int:
        return self._bytes_received

    def next_request(self):
        """(depth, node indices whose remote hashes we need), or None when the exchange is done."""
        if self._result is not None:
            return None
        if not self._issued:
            self._issued = True
            self._bytes_sent += REQUEST_HEADER_SIZE + INDEX_SIZE * len(self._pending)
        return self._depth, list(self._pending)

    def feed(self, hashes) -> None:
        """The remote's hashes for the last request, in the same order."""
        if self._result is not None or not self._issued:
            raise RuntimeError("no request outstanding")
        hashes = list(hashes)
        if len(hashes) != len(self._pending):
            raise ProtocolError(f"expected {len(self._pending)} hashes, got {len(hashes)}")
        for h in hashes:
            if not isinstance(h, (bytes, bytearray, memoryview)) or len(h) != HASH_SIZE:
                raise ProtocolError(f"a hash is {HASH_SIZE} bytes")
        self._bytes_received += HASH_SIZE * len(hashes)
        local = self._local.hashes(self._depth, self._pending)
        differing = [i for i, mine, theirs in zip(self._pending, local, hashes) if mine != theirs]
        self._issued = False
        if self._depth == self._local.depth or not differing:
            self._result = sorted(differing) if self._depth == self._local.depth else []
            self._pending = []
            return
        pending = []
        for i in differing:
            pending.extend(self._local.children(self._depth, i))
        self._depth += 1
        self._pending = pending

    def result(self) -> list[int]:
        """The differing leaf segments, sorted (once next_request() has returned None)."""
        if self._result is None:
            raise RuntimeError("exchange not finished")
        return list(self._result)


def diff(local: MerkleTree, remote) -> list[int]:
    """The leaf segments where ``local`` and ``remote`` differ, by a TreeExchange run in process."""
    if local.leaves != remote.leaves or local.fanout != remote.fanout:
        raise ValueError("trees of different shapes cannot be compared")
    exchange = TreeExchange(local)
    while (request := exchange.next_request()) is not None:
        exchange.feed(remote.hashes(*request))
    return exchange.result()
