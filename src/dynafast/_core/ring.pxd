# The partition ring: the contract other extensions cimport.
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t


cdef uint64_t key_token(object key) except? 0


cdef class Ring:
    cdef uint16_t* _owner         # member index of each partition
    cdef uint16_t* _walk_buf      # scratch for ring walks (one entry per member)
    cdef uint32_t* _mark          # walk marks: _mark[i] == _epoch means member i was seen
    cdef uint32_t _epoch
    cdef int _log2q
    cdef Py_ssize_t _count        # number of members
    cdef dict _index              # node id -> member index
    cdef bytes _wire              # cached to_bytes()
    cdef readonly int partitions
    cdef readonly int n
    cdef readonly tuple members
    cdef readonly dict zones
    cdef readonly unsigned long long version

    cdef int _set_owners(self, object owner) except -1
    cdef Py_ssize_t _check_partition(self, object partition) except -1
    cdef Py_ssize_t _check_n(self, object n) except -1
    cdef uint32_t _next_epoch(self) noexcept
    cdef Py_ssize_t _walk(self, Py_ssize_t partition, Py_ssize_t limit) noexcept
