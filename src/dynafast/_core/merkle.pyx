"""Merkle trees for anti-entropy, compiled. Same public API and same hashes as ``dynafast._ref.merkle``
(read its docstring for the hash definitions and the serialized form).

All levels live in one malloc'd uint64 array. A put/delete adds/subtracts the pair's hash to its leaf and
pushes the leaf's parent on its level's dirty stack (once, thanks to a flag); root()/hashes() rehash the
dirty nodes bottom-up, so k updates cost O(k) now and O(k * depth * fanout) at the next read.
"""
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport (PyBytes_AS_STRING, PyBytes_CheckExact, PyBytes_FromStringAndSize,
                            PyBytes_GET_SIZE)
from libc.stdint cimport uint8_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memcmp, memcpy, memset

from dynafast._core.murmur3 cimport Hash128, load_le64, mm3_words, mm3_x64_128

from dynafast.errors import KeyTooLarge, ProtocolError

cdef extern from *:
    """
    #include <stdint.h>
    #include <string.h>
    /* Little-endian like the hash's loads (murmur3.pxd), whatever the host's byte order. */
    static inline void dynafast_merkle_store_le64(unsigned char *p, uint64_t v) {
    #if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
        v = __builtin_bswap64(v);
    #endif
        memcpy(p, &v, 8);
    }
    """
    void store_le64 "dynafast_merkle_store_le64" (unsigned char *p, uint64_t v) noexcept nogil

__all__ = ["MerkleTree", "TreeExchange", "diff", "murmur3_x64_128", "HASH_SIZE"]

HASH_SIZE = MERKLE_HASH_SIZE

cdef enum:
    _STACK_MESSAGE = 512              # item messages up to this size are hashed from the stack
    _HEADER_SIZE = 8                  # magic, version, log2(leaves), log2(fanout), reserved
    _TRAILER_SIZE = 8                 # u64le checksum
    _FORMAT_VERSION = 1
    _REQUEST_HEADER_SIZE = 8          # TreeExchange accounting: depth u32, count u32 ...
    _INDEX_SIZE = 4                   # ... and one u32 per index

cdef bytes _MAGIC = b"DFMT"


# -- byte views ------------------------------------------------------------------------------------
cdef class _Bytes:
    """A pointer to the bytes of a bytes-like object (bytes fast path, else the buffer protocol)."""
    cdef const unsigned char *ptr
    cdef Py_ssize_t size
    cdef Py_buffer view
    cdef bint has_view
    cdef object obj

    def __cinit__(self, obj):
        self._set(obj)

    cdef int _set(self, obj) except -1:
        if PyBytes_CheckExact(obj):
            self.ptr = <const unsigned char *>PyBytes_AS_STRING(obj)
            self.size = PyBytes_GET_SIZE(obj)
            self.obj = obj
            return 0
        PyObject_GetBuffer(obj, &self.view, PyBUF_SIMPLE)
        self.has_view = True
        self.ptr = <const unsigned char *>self.view.buf
        self.size = self.view.len
        return 0

    def __dealloc__(self):
        if self.has_view:
            PyBuffer_Release(&self.view)


cdef int merkle_item_hash(const unsigned char *key, Py_ssize_t klen,
                          const unsigned char *digest, Py_ssize_t dlen, uint64_t *out) except -1:
    # Hash u32le(len(key)) + key + digest; the length prefix keeps (b"ab", b"c") and (b"a", b"bc") apart.
    cdef unsigned char stackbuf[_STACK_MESSAGE]
    cdef unsigned char *buf = stackbuf
    cdef Py_ssize_t n = 4 + klen + dlen
    if <unsigned long long>klen > 0xFFFFFFFFULL:
        raise KeyTooLarge("key longer than 4 GiB")
    if n > _STACK_MESSAGE:
        buf = <unsigned char *>malloc(n)
        if buf == NULL:
            raise MemoryError()
    buf[0] = klen & 0xFF
    buf[1] = (klen >> 8) & 0xFF
    buf[2] = (klen >> 16) & 0xFF
    buf[3] = (klen >> 24) & 0xFF
    memcpy(buf + 4, key, klen)
    memcpy(buf + 4 + klen, digest, dlen)
    out[0] = mm3_x64_128(buf, n, MERKLE_ITEM_SEED).h1
    if buf != stackbuf:
        free(buf)
    return 0


cdef inline bytes _hash_bytes(uint64_t value):
    cdef unsigned char buf[8]
    store_le64(buf, value)
    return PyBytes_FromStringAndSize(<char *>buf, 8)


cdef int _log2_exact(object value, str name, int low, int high) except -1:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int")
    if value <= 0 or value & (value - 1) or not (1 << low) <= value <= (1 << high):
        raise ValueError(f"{name} must be a power of two in {1 << low}..{1 << high}, not {value}")
    return value.bit_length() - 1


def murmur3_x64_128(data, seed=0):
    """MurmurHash3 x64_128 of ``data`` as two unsigned 64-bit halves (h1, h2), as ``mmh3.hash64``."""
    cdef _Bytes b = _Bytes(data)
    cdef Hash128 h = mm3_x64_128(b.ptr, b.size, <uint32_t>(seed & 0xFFFFFFFF))
    return h.h1, h.h2


# -- the tree ----------------------------------------------------------------------------------------
cdef class MerkleTree:
    """A Merkle tree over the (key, version digest) pairs of one vnode."""

    def __cinit__(self, leaves=1024, fanout=16):
        cdef int d
        cdef Py_ssize_t total
        self.leaf_bits = _log2_exact(leaves, "leaves", MERKLE_MIN_LEAF_BITS, MERKLE_MAX_LEAF_BITS)
        self.fanout_bits = _log2_exact(fanout, "fanout", 1, MERKLE_MAX_FANOUT_BITS)
        self.leaves = 1 << self.leaf_bits
        self.fanout = 1 << self.fanout_bits
        self.depth = (self.leaf_bits + self.fanout_bits - 1) // self.fanout_bits
        total = 0
        for d in range(self.depth + 1):
            # Full fanout below, a narrower root when log2(leaves) is not a multiple of log2(fanout).
            self.size[d] = <Py_ssize_t>1 << max(0, self.leaf_bits - self.fanout_bits * (self.depth - d))
            self.offset[d] = total
            self.ndirty[d] = 0
            total += self.size[d]
        self.nodes = <uint64_t *>calloc(total, sizeof(uint64_t))
        self.dirty_flag = <uint8_t *>calloc(self.offset[self.depth], sizeof(uint8_t))
        self.dirty_stack = <uint32_t *>malloc(self.offset[self.depth] * sizeof(uint32_t))
        if self.nodes == NULL or self.dirty_flag == NULL or self.dirty_stack == NULL:
            raise MemoryError()
        self.all_dirty = True

    def __dealloc__(self):
        free(self.nodes)
        free(self.dirty_flag)
        free(self.dirty_stack)

    # -- C level -----------------------------------------------------------------------------------
    cdef Py_ssize_t c_leaf_of(self, const unsigned char *key, Py_ssize_t klen) noexcept nogil:
        # High half: the low half is the ring token, constant in its top bits within a partition.
        return <Py_ssize_t>(mm3_x64_128(key, klen, 0).h2 >> (64 - self.leaf_bits))

    cdef int c_add(self, const unsigned char *key, Py_ssize_t klen,
                   const unsigned char *digest, Py_ssize_t dlen, int sign) except -1:
        cdef uint64_t item
        cdef Py_ssize_t leaf = self.c_leaf_of(key, klen), parent, slot
        cdef int d = self.depth - 1
        merkle_item_hash(key, klen, digest, dlen, &item)
        if sign > 0:
            self.nodes[self.offset[self.depth] + leaf] += item
        else:
            self.nodes[self.offset[self.depth] + leaf] -= item
        if not self.all_dirty:
            parent = leaf >> self.fanout_bits
            slot = self.offset[d] + parent
            if not self.dirty_flag[slot]:
                self.dirty_flag[slot] = 1
                self.dirty_stack[self.offset[d] + self.ndirty[d]] = <uint32_t>parent
                self.ndirty[d] += 1
        return 0

    cdef void _rehash(self, int d, Py_ssize_t i) noexcept nogil:
        cdef Py_ssize_t start = i << self.fanout_bits
        cdef Py_ssize_t count = min(<Py_ssize_t>self.fanout, self.size[d + 1] - start)
        self.nodes[self.offset[d] + i] = mm3_words(
            self.nodes + self.offset[d + 1] + start, count, MERKLE_NODE_SEED).h1

    cdef int c_flush(self) except -1:
        cdef int d
        cdef Py_ssize_t i, j, parent, slot
        if self.all_dirty:
            # Holding the GIL on purpose: an insert from another thread meanwhile would skip marking
            # (all_dirty) and then be lost when all_dirty is cleared.
            for d in range(self.depth - 1, -1, -1):
                for i in range(self.size[d]):
                    self._rehash(d, i)
                self.ndirty[d] = 0
            memset(self.dirty_flag, 0, self.offset[self.depth])
            self.all_dirty = False
            return 0
        for d in range(self.depth - 1, -1, -1):
            for j in range(self.ndirty[d]):
                i = self.dirty_stack[self.offset[d] + j]
                self.dirty_flag[self.offset[d] + i] = 0
                self._rehash(d, i)
                if d > 0:
                    parent = i >> self.fanout_bits
                    slot = self.offset[d - 1] + parent
                    if not self.dirty_flag[slot]:
                        self.dirty_flag[slot] = 1
                        self.dirty_stack[self.offset[d - 1] + self.ndirty[d - 1]] = <uint32_t>parent
                        self.ndirty[d - 1] += 1
            self.ndirty[d] = 0
        return 0

    cdef int c_check_depth(self, Py_ssize_t depth, Py_ssize_t high) except -1:
        if not 0 <= depth <= high:
            raise ValueError(f"depth {depth} out of range 0..{high}")
        return 0

    cdef int c_check_index(self, Py_ssize_t depth, Py_ssize_t index) except -1:
        if not 0 <= index < self.size[depth]:
            raise IndexError(f"index {index} out of range at depth {depth} ({self.size[depth]} nodes)")
        return 0

    # -- shape -------------------------------------------------------------------------------------
    def level_size(self, Py_ssize_t depth):
        """Number of nodes at ``depth`` (0 is the root, ``self.depth`` the leaves)."""
        self.c_check_depth(depth, self.depth)
        return self.size[depth]

    def children(self, Py_ssize_t depth, Py_ssize_t index):
        """Indices at ``depth + 1`` of the children of node ``index`` at ``depth``."""
        self.c_check_depth(depth, self.depth - 1)
        self.c_check_index(depth, index)
        cdef Py_ssize_t start = index << self.fanout_bits
        return range(start, min(start + self.fanout, self.size[depth + 1]))

    def leaf_of(self, key):
        """The leaf segment of ``key``."""
        cdef _Bytes k = _Bytes(key)
        return self.c_leaf_of(k.ptr, k.size)

    # -- updates -----------------------------------------------------------------------------------
    def insert(self, key, digest):
        cdef _Bytes k = _Bytes(key), v = _Bytes(digest)
        self.c_add(k.ptr, k.size, v.ptr, v.size, 1)

    def remove(self, key, digest):
        """Take out a pair inserted before (removing one never inserted leaves the tree unequal to any set)."""
        cdef _Bytes k = _Bytes(key), v = _Bytes(digest)
        self.c_add(k.ptr, k.size, v.ptr, v.size, -1)

    def update(self, key, old, new):
        """Replace version ``old`` of ``key`` by ``new``; None means absent on that side."""
        if (PyBytes_CheckExact(key) and (old is None or PyBytes_CheckExact(old))
                and (new is None or PyBytes_CheckExact(new))):
            # Every write comes here (bytes): no buffer views to take, so no objects made per call.
            if old is not None:
                self.c_add(<const unsigned char *>PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key),
                           <const unsigned char *>PyBytes_AS_STRING(old), PyBytes_GET_SIZE(old), -1)
            if new is not None:
                self.c_add(<const unsigned char *>PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key),
                           <const unsigned char *>PyBytes_AS_STRING(new), PyBytes_GET_SIZE(new), 1)
            return
        cdef _Bytes k = _Bytes(key)
        cdef _Bytes o = _Bytes(old) if old is not None else None
        cdef _Bytes n = _Bytes(new) if new is not None else None
        if o is not None:
            self.c_add(k.ptr, k.size, o.ptr, o.size, -1)
        if n is not None:
            self.c_add(k.ptr, k.size, n.ptr, n.size, 1)

    def clear(self):
        memset(self.nodes + self.offset[self.depth], 0, self.size[self.depth] * sizeof(uint64_t))
        self.all_dirty = True

    # -- reading -----------------------------------------------------------------------------------
    def root(self):
        self.c_flush()
        return _hash_bytes(self.nodes[0])

    def hashes(self, Py_ssize_t depth, indices=None):
        """The hashes at ``depth``: all of them, or those at ``indices`` in that order."""
        cdef Py_ssize_t i, n, index
        cdef uint64_t *level
        cdef list out
        self.c_check_depth(depth, self.depth)
        if depth < self.depth:
            self.c_flush()
        level = self.nodes + self.offset[depth]
        if indices is None:
            n = self.size[depth]
            out = [None] * n
            for i in range(n):
                out[i] = _hash_bytes(level[i])
            return out
        if type(indices) is not list:
            indices = list(indices)
        n = len(<list>indices)
        out = [None] * n
        for i in range(n):
            index = (<list>indices)[i]
            self.c_check_index(depth, index)
            out[i] = _hash_bytes(level[index])
        return out

    def leaf_hash(self, Py_ssize_t leaf):
        self.c_check_index(self.depth, leaf)
        return _hash_bytes(self.nodes[self.offset[self.depth] + leaf])

    # -- construction, serialization, comparison ---------------------------------------------------
    @classmethod
    def build(cls, items, leaves=1024, fanout=16):
        """A tree of the (key, digest) pairs of ``items``."""
        cdef MerkleTree tree = cls(leaves, fanout)
        cdef _Bytes k, v
        for key, digest in items:
            if PyBytes_CheckExact(key) and PyBytes_CheckExact(digest):
                tree.c_add(<const unsigned char *>PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key),
                           <const unsigned char *>PyBytes_AS_STRING(digest), PyBytes_GET_SIZE(digest), 1)
            else:
                k = _Bytes(key)
                v = _Bytes(digest)
                tree.c_add(k.ptr, k.size, v.ptr, v.size, 1)
        return tree

    def to_bytes(self):
        cdef Py_ssize_t i, n = self.size[self.depth]
        cdef Py_ssize_t body = _HEADER_SIZE + 8 * n
        cdef bytes out = PyBytes_FromStringAndSize(NULL, body + _TRAILER_SIZE)
        cdef unsigned char *p = <unsigned char *>PyBytes_AS_STRING(out)
        cdef const uint64_t *leaves = self.nodes + self.offset[self.depth]
        memcpy(p, <const char *>_MAGIC, 4)
        p[4] = _FORMAT_VERSION
        p[5] = self.leaf_bits
        p[6] = self.fanout_bits
        p[7] = 0
        with nogil:
            for i in range(n):
                store_le64(p + _HEADER_SIZE + 8 * i, leaves[i])
            store_le64(p + body, mm3_x64_128(p, body, MERKLE_CHECK_SEED).h1)
        return out

    @classmethod
    def from_bytes(cls, data):
        cdef _Bytes b = _Bytes(data)
        cdef const unsigned char *p = b.ptr
        cdef Py_ssize_t i, n, body
        cdef MerkleTree tree
        cdef uint64_t *leaves
        if b.size < _HEADER_SIZE + _TRAILER_SIZE:
            raise ValueError("merkle tree data too short")
        if memcmp(p, <const char *>_MAGIC, 4) != 0 or p[4] != _FORMAT_VERSION or p[7] != 0:
            raise ValueError("not a serialized merkle tree of a known version")
        if not (MERKLE_MIN_LEAF_BITS <= p[5] <= MERKLE_MAX_LEAF_BITS) or not (1 <= p[6] <= MERKLE_MAX_FANOUT_BITS):
            raise ValueError("bad merkle tree shape")
        n = <Py_ssize_t>1 << p[5]
        body = _HEADER_SIZE + 8 * n
        if b.size != body + _TRAILER_SIZE:
            raise ValueError("merkle tree data has the wrong length")
        if mm3_x64_128(p, body, MERKLE_CHECK_SEED).h1 != load_le64(p + body):
            raise ValueError("merkle tree checksum mismatch")
        tree = cls(1 << p[5], 1 << p[6])
        leaves = tree.nodes + tree.offset[tree.depth]
        for i in range(n):
            leaves[i] = load_le64(p + _HEADER_SIZE + 8 * i)
        return tree

    def __eq__(self, other):
        if not isinstance(other, MerkleTree):
            return NotImplemented
        cdef MerkleTree o = <MerkleTree>other
        if self.leaf_bits != o.leaf_bits or self.fanout_bits != o.fanout_bits:
            return False
        return memcmp(self.nodes + self.offset[self.depth], o.nodes + o.offset[o.depth],
                      self.size[self.depth] * sizeof(uint64_t)) == 0

    __hash__ = None

    def __repr__(self):
        return f"MerkleTree(leaves={self.leaves}, fanout={self.fanout})"


# -- the exchange ------------------------------------------------------------------------------------
cdef class TreeExchange:
    """I/O-free level-by-level diff of a local tree against a remote one (the remote answers requests).

    Start at the root; at each level ask for the remote hashes of the children of the nodes that differed
    at the level above. Two trees that differ in d leaves cost O(d * fanout * depth) hashes.
    Both trees must have the same shape (leaves, fanout): agree on it before the exchange.
    """

    def __cinit__(self, MerkleTree local not None):
        self.local = local
        self.level = 0
        self.pending = [0]
        self.finished = None
        self.issued = False
        self.bytes_sent = 0
        self.bytes_received = 0

    def next_request(self):
        """(depth, node indices whose remote hashes we need), or None when the exchange is done."""
        if self.finished is not None:
            return None
        if not self.issued:
            self.issued = True
            self.bytes_sent += _REQUEST_HEADER_SIZE + _INDEX_SIZE * len(self.pending)
        return self.level, list(self.pending)

    def feed(self, hashes):
        """The remote's hashes for the last request, in the same order."""
        cdef MerkleTree tree = self.local
        cdef list theirs, differing
        cdef Py_ssize_t i, n, index
        cdef const unsigned char *p
        cdef uint64_t *level
        cdef object h
        if self.finished is not None or not self.issued:
            raise RuntimeError("no request outstanding")
        theirs = hashes if type(hashes) is list else list(hashes)
        n = len(self.pending)
        if len(theirs) != n:
            raise ProtocolError(f"expected {n} hashes, got {len(theirs)}")
        if self.level < tree.depth:
            tree.c_flush()
        level = tree.nodes + tree.offset[self.level]
        differing = []
        for i in range(n):
            index = self.pending[i]
            h = theirs[i]
            if PyBytes_CheckExact(h) and PyBytes_GET_SIZE(h) == MERKLE_HASH_SIZE:
                if load_le64(<const unsigned char *>PyBytes_AS_STRING(h)) != level[index]:
                    differing.append(index)
                continue
            if not isinstance(h, (bytes, bytearray, memoryview)) or len(h) != MERKLE_HASH_SIZE:
                raise ProtocolError(f"a hash is {MERKLE_HASH_SIZE} bytes")
            if bytes(h) != _hash_bytes(level[index]):
                differing.append(index)
        # Counted only once the whole answer was accepted.
        self.bytes_received += MERKLE_HASH_SIZE * n
        self.c_advance(differing)

    cdef int c_step_against(self, MerkleTree remote) except -1:
        """One request and its answer read straight from a tree in this process: no bytes objects."""
        cdef MerkleTree tree = self.local
        cdef Py_ssize_t i, n = len(self.pending), index
        cdef uint64_t *mine
        cdef uint64_t *theirs
        cdef list differing = []
        if not self.issued:
            self.bytes_sent += _REQUEST_HEADER_SIZE + _INDEX_SIZE * n
        self.bytes_received += MERKLE_HASH_SIZE * n
        if self.level < tree.depth:
            tree.c_flush()
            remote.c_flush()
        mine = tree.nodes + tree.offset[self.level]
        theirs = remote.nodes + remote.offset[self.level]
        for i in range(n):
            index = self.pending[i]
            if mine[index] != theirs[index]:
                differing.append(index)
        return self.c_advance(differing)

    cdef int c_advance(self, list differing) except -1:
        """Go down one level below the differing nodes, or finish."""
        cdef MerkleTree tree = self.local
        cdef list pending
        cdef Py_ssize_t i, index, start, stop
        self.issued = False
        if self.level == tree.depth or not differing:
            self.finished = sorted(differing) if self.level == tree.depth else []
            self.pending = []
            return 0
        pending = []
        for index in differing:
            start = index << tree.fanout_bits
            stop = min(start + tree.fanout, tree.size[self.level + 1])
            for i in range(start, stop):
                pending.append(i)
        self.level += 1
        self.pending = pending
        return 0

    def result(self):
        """The differing leaf segments, sorted (once next_request() has returned None)."""
        if self.finished is None:
            raise RuntimeError("exchange not finished")
        return list(self.finished)


def diff(MerkleTree local not None, remote):
    """The leaf segments where ``local`` and ``remote`` differ, by a TreeExchange run in process."""
    cdef MerkleTree other
    cdef TreeExchange exchange
    if type(remote) is MerkleTree:
        # Same requests and accounting as the generic loop below, answered from the remote's arrays.
        other = <MerkleTree>remote
        if local.leaf_bits != other.leaf_bits or local.fanout_bits != other.fanout_bits:
            raise ValueError("trees of different shapes cannot be compared")
        exchange = TreeExchange(local)
        while exchange.finished is None:
            exchange.c_step_against(other)
        return exchange.finished
    if local.leaves != remote.leaves or local.fanout != remote.fanout:
        raise ValueError("trees of different shapes cannot be compared")
    exchange = TreeExchange(local)
    while (request := exchange.next_request()) is not None:
        exchange.feed(remote.hashes(*request))
    return exchange.result()
