# cython: language_level=3
"""The partition ring, compiled: tokens, partitions and preference lists in C.

Same public names and behaviour as its reference ``dynafast._ref.ring``. The claim runs only on membership
changes, so both builds share the plain-Python ``dynafast.ringclaim``, and the argument checks and byte
format of ``dynafast.ringformat``; every lookup (token, partition, replicas, fallbacks, preference list)
runs here over a C array of uint16 member indices.
"""
from cpython.buffer cimport PyBUF_SIMPLE, PyObject_GetBuffer, PyBuffer_Release
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE, PyBytes_FromStringAndSize
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcpy, memset

import hashlib

import numpy

cimport numpy as cnp

from dynafast._core.murmur3 cimport mm3_x64_128

from dynafast.ringclaim import claim
from dynafast.ringformat import check_members, check_n, check_partitions, check_version, pack, parse

cnp.import_array()


# -- tokens: the low 64 bits of MurmurHash3 x64_128, seed 0 (murmur3.pxd) ------------------------------
cdef uint64_t key_token(object key) except? 0:
    """Token of a bytes-like key; str and non-buffers raise TypeError."""
    cdef Py_buffer view
    cdef uint64_t h
    if type(key) is bytes:
        return mm3_x64_128(<const unsigned char*>PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key), 0).h1
    if isinstance(key, str):
        raise TypeError("keys are bytes, not str")
    PyObject_GetBuffer(key, &view, PyBUF_SIMPLE)
    try:
        h = mm3_x64_128(<const unsigned char*>view.buf, view.len, 0).h1
    finally:
        PyBuffer_Release(&view)
    return h


cdef inline uint64_t _token(object key) except? 0:
    # key_token with the hash of bytes keys (nearly all keys) inlined into the lookup itself: a call into
    # key_token sets up its frame for the buffer path even when the key is bytes.
    if type(key) is bytes:
        return mm3_x64_128(<const unsigned char*>PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key), 0).h1
    return key_token(key)


def token(key):
    """The unsigned 64-bit token of ``key``: the low 64 bits of MurmurHash3 x64_128, seed 0."""
    return key_token(key)


def tokens(keys):
    """Tokens of a sequence of keys, as a uint64 array."""
    cdef list items = keys if type(keys) is list else list(keys)
    cdef Py_ssize_t i, count = len(items)
    out = numpy.empty(count, dtype=numpy.uint64)
    cdef uint64_t[::1] view = out
    for i in range(count):
        view[i] = _token(items[i])
    return out


# -- the ring --------------------------------------------------------------------------------------
cdef class Ring:
    """Q partitions claimed by the members; immutable (membership changes make a new ring)."""

    def __cinit__(self):
        self._owner = NULL
        self._walk_buf = NULL
        self._mark = NULL
        self._epoch = 0

    def __dealloc__(self):
        PyMem_Free(self._owner)
        PyMem_Free(self._walk_buf)
        PyMem_Free(self._mark)

    def __init__(self, partitions, members, *, n=3, zones=None, previous=None, version=1):
        log2q = check_partitions(partitions)
        n = check_n(n)
        members, zones = check_members(members, zones)
        check_version(version)
        prev = None
        if previous is not None:
            if getattr(previous, "partitions", None) != partitions:
                raise ValueError("previous must be a Ring with the same number of partitions")
            prev = previous.owners()
        owner = claim(partitions, members, n, zones, prev)
        self._setup(log2q, n, version, members, zones, owner)

    def _setup(self, int log2q, int n, unsigned long long version, tuple members, dict zones, owner):
        self._log2q = log2q
        self.partitions = 1 << log2q
        self.n = n
        self.version = version
        self.members = members
        self.zones = zones
        self._count = len(members)
        self._index = {m: i for i, m in enumerate(members)}
        self._wire = None
        self._set_owners(owner)

    cdef int _set_owners(self, object owner) except -1:
        cdef Py_ssize_t p, q = self.partitions
        # __init__ may run twice on one object: drop the old tables first.
        PyMem_Free(self._owner)
        PyMem_Free(self._walk_buf)
        PyMem_Free(self._mark)
        self._epoch = 0
        self._owner = <uint16_t*>PyMem_Malloc(q * sizeof(uint16_t))
        self._walk_buf = <uint16_t*>PyMem_Malloc(self._count * sizeof(uint16_t))
        self._mark = <uint32_t*>PyMem_Malloc(self._count * sizeof(uint32_t))
        if self._owner == NULL or self._walk_buf == NULL or self._mark == NULL:
            raise MemoryError()
        memset(self._mark, 0, self._count * sizeof(uint32_t))
        for p in range(q):
            self._owner[p] = <uint16_t>owner[p]
        return 0

    @classmethod
    def _build(cls, log2q, n, version, members, zones, owner):
        cdef Ring self = cls.__new__(cls)
        self._setup(log2q, n, version, members, zones, owner)
        return self

    def with_members(self, members, zones=None):
        """A new ring for ``members`` (version + 1) that moves as few partitions as possible from this one."""
        if zones is None:
            zones = self.zones
        return type(self)(self.partitions, members, n=self.n, zones=zones, previous=self,
                          version=self.version + 1)

    # -- C helpers ----------------------------------------------------------------------------------
    cdef Py_ssize_t _check_partition(self, object partition) except -1:
        if not isinstance(partition, int):
            raise TypeError("partition must be an int")
        if not 0 <= partition < self.partitions:
            raise IndexError("partition out of range")
        return <Py_ssize_t>partition

    cdef Py_ssize_t _check_n(self, object n) except -1:
        if n is None:
            return self.n
        # The common case inline (a call into Python costs more than the lookup itself).
        if type(n) is int and 1 <= n <= 65535:
            return <Py_ssize_t>n
        return check_n(n)

    cdef uint32_t _next_epoch(self) noexcept:
        self._epoch += 1
        if self._epoch == 0:  # wrapped: old marks could look current
            memset(self._mark, 0, self._count * sizeof(uint32_t))
            self._epoch = 1
        return self._epoch

    cdef Py_ssize_t _walk(self, Py_ssize_t partition, Py_ssize_t limit) noexcept:
        """Distinct owners clockwise from ``partition`` into _walk_buf, at most ``limit``; marks them seen."""
        cdef Py_ssize_t q = self.partitions, d, found = 0
        cdef uint32_t epoch = self._next_epoch()
        cdef uint16_t o
        for d in range(q):
            if found >= limit:
                break
            o = self._owner[(partition + d) & (q - 1)]
            if self._mark[o] != epoch:
                self._mark[o] = epoch
                self._walk_buf[found] = o
                found += 1
        return found

    # -- lookups ------------------------------------------------------------------------------------
    def owner(self, partition):
        return self.members[self._owner[self._check_partition(partition)]]

    def owners(self):
        cdef Py_ssize_t p
        cdef tuple members = self.members
        return [members[self._owner[p]] for p in range(self.partitions)]

    def partition_of(self, key):
        return _token(key) >> (64 - self._log2q)

    def partition_of_token(self, token):
        cdef uint64_t t
        if not isinstance(token, int):
            raise TypeError("token must be an int")
        if not 0 <= token < 2**64:
            raise OverflowError("token must be an unsigned 64-bit integer")
        t = token
        return t >> (64 - self._log2q)

    def partitions_of(self, keys_or_tokens):
        cdef Py_ssize_t i, count
        cdef int shift = 64 - self._log2q
        cdef const uint64_t[::1] toks
        cdef const uint64_t* src = NULL
        cdef Py_ssize_t* dst
        cdef list items
        if isinstance(keys_or_tokens, numpy.ndarray):
            if keys_or_tokens.dtype != numpy.uint64:
                raise TypeError("tokens must be a uint64 array")
            toks = numpy.ascontiguousarray(keys_or_tokens).ravel()
            count = toks.shape[0]
            out = numpy.empty(count, dtype=numpy.intp)
            dst = <Py_ssize_t*>cnp.PyArray_DATA(out)
            if count:
                src = &toks[0]
            with nogil:
                _shift_into(src, dst, count, shift)
            return out
        items = keys_or_tokens if type(keys_or_tokens) is list else list(keys_or_tokens)
        count = len(items)
        out = numpy.empty(count, dtype=numpy.intp)
        dst = <Py_ssize_t*>cnp.PyArray_DATA(out)
        for i in range(count):
            dst[i] = <Py_ssize_t>(_token(items[i]) >> shift)
        return out

    def partitions_owned(self, node):
        cdef Py_ssize_t p
        cdef uint16_t i
        try:
            i = self._index[node]
        except (KeyError, TypeError):
            raise KeyError(node) from None
        return [p for p in range(self.partitions) if self._owner[p] == i]

    def replicas(self, partition, n=None):
        cdef Py_ssize_t p = self._check_partition(partition), want = self._check_n(n), found, i
        cdef tuple members = self.members
        found = self._walk(p, want)
        return [members[self._walk_buf[i]] for i in range(found)]

    def fallbacks(self, partition, n=None):
        cdef Py_ssize_t p = self._check_partition(partition), want = self._check_n(n), found, i
        cdef tuple members = self.members
        found = self._walk(p, self._count)
        out = [members[self._walk_buf[i]] for i in range(want, found)]
        if found < self._count:
            # Members that own nothing (only when S > Q) come last, in name order.
            skipped = [members[i] for i in range(self._count) if self._mark[i] != self._epoch]
            out.extend(skipped[max(0, want - found):])
        return out

    def preference_list(self, partition, n=None, down=frozenset()):
        cdef Py_ssize_t p = self._check_partition(partition), want = self._check_n(n)
        cdef Py_ssize_t found, i, r, f, nrep
        cdef tuple members = self.members
        if not down:
            found = self._walk(p, want)
            return [(members[self._walk_buf[i]], None) for i in range(found)]
        found = self._walk(p, self._count)
        if found < self._count:
            # Members owning nothing are fallbacks after every owner (S > Q only).
            for i in range(self._count):
                if self._mark[i] != self._epoch:
                    self._walk_buf[found] = <uint16_t>i
                    found += 1
        nrep = want if want < found else found
        is_down = [members[self._walk_buf[i]] in down for i in range(found)]
        out = [(members[self._walk_buf[i]], None) for i in range(nrep) if not is_down[i]]
        f = nrep
        for r in range(nrep):
            if is_down[r]:
                while f < found and is_down[f]:
                    f += 1
                if f >= found:
                    break
                out.append((members[self._walk_buf[f]], members[self._walk_buf[r]]))
                f += 1
        return out

    # -- comparing and gossip -----------------------------------------------------------------------
    def moved_partitions(self, other):
        if getattr(other, "partitions", None) != self.partitions:
            raise ValueError("can only compare rings with the same number of partitions")
        return sum(1 for a, b in zip(self.owners(), other.owners()) if a != b)

    def to_bytes(self):
        cdef Py_ssize_t p, q = self.partitions
        cdef bytes table
        cdef uint8_t* dst
        if self._wire is None:
            table = PyBytes_FromStringAndSize(NULL, 2 * q)
            dst = <uint8_t*>PyBytes_AS_STRING(table)
            for p in range(q):
                dst[2 * p] = self._owner[p] & 0xff
                dst[2 * p + 1] = self._owner[p] >> 8
            self._wire = pack(self._log2q, self.n, self.version, self.members, self.zones, table)
        return self._wire

    @classmethod
    def from_bytes(cls, data):
        log2q, n, version, members, zones, owner = parse(data)
        return cls._build(log2q, n, version, members, zones, owner)

    def digest(self):
        return hashlib.blake2b(self.to_bytes(), digest_size=16).digest()

    def __eq__(self, other):
        if not isinstance(other, Ring):
            return NotImplemented
        return self.to_bytes() == (<Ring>other).to_bytes()

    def __hash__(self):
        return hash(self.digest())

    def __reduce__(self):
        return (type(self).from_bytes, (self.to_bytes(),))

    def __repr__(self):
        return f"<Ring Q={self.partitions} n={self.n} members={len(self.members)} version={self.version}>"


cdef void _shift_into(const uint64_t* src, Py_ssize_t* dst, Py_ssize_t count, int shift) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(count):
        dst[i] = <Py_ssize_t>(src[i] >> shift)
