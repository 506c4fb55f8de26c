# The contract of dynafast._core.vclock for other extensions (cimport it; the reference is dynafast._ref.vclock).
from cpython.ref cimport PyObject
from libc.stdint cimport uint64_t


cdef enum Order:
    ORDER_EQUAL = 0
    ORDER_DESCENDS = 1
    ORDER_DOMINATED = 2
    ORDER_CONCURRENT = 3


# One actor's entry. Actors are owned references to bytes objects, compared by content (memcmp).
# In a Siblings, first/count locate the actor's live dots in the set's dot array; a VClock leaves them 0.
ctypedef struct Entry:
    PyObject* actor
    uint64_t counter
    uint64_t ts
    Py_ssize_t first
    Py_ssize_t count


# A sibling: its dot counter (0 for an anonymous value), timestamp and value (owned: bytes, or None).
ctypedef struct Dot:
    uint64_t dot
    uint64_t ts
    PyObject* value


cdef class VClock:
    cdef Entry* ents
    cdef Py_ssize_t n

    cdef int _compare(self, VClock other) except -1


cdef class Siblings:
    cdef Entry* ents        # sorted by actor
    cdef Py_ssize_t n
    cdef Dot* dots          # each entry's dots, newest first, in entry order
    cdef Py_ssize_t ndots
    cdef Dot* anon          # values no coordinator stamped yet, sorted
    cdef Py_ssize_t nanon
    cdef bytes encoded      # its encoding once asked for (None before)

    cdef int _compare(self, Siblings other) except -1
    cdef Siblings _sync(self, Siblings other)
    cdef bytes _encode(self)
    cdef bytes _encode_now(self)
    cpdef Siblings supersede(self, value, actor, now=*)


cdef VClock clock_from_bytes(const unsigned char* data, Py_ssize_t size)
cdef Siblings siblings_from_bytes(const unsigned char* data, Py_ssize_t size)


# A sibling set read where it lies, without making objects (view_set), and a write that supersedes it encoded
# from that view (put_superseding): the RESP lane's GET and SET of the common set, one actor's one value.
cdef enum:
    VIEW_ENTRIES = 9  # supersede's own shortcut takes fewer than prune's ``small`` (10) entries

ctypedef struct EntryView:
    const unsigned char* actor  # into the viewed bytes
    Py_ssize_t alen
    uint64_t counter
    uint64_t ts

ctypedef struct SetView:
    Py_ssize_t n                # entries
    Py_ssize_t ndots
    const unsigned char* value  # the last dot's value (NULL: a tombstone), into the viewed bytes
    Py_ssize_t vlen
    EntryView ents[VIEW_ENTRIES]

cdef bint view_set(const unsigned char* data, Py_ssize_t size, SetView* view) except -1
cdef Py_ssize_t superseding_bound(SetView* view, Py_ssize_t alen, Py_ssize_t vlen) noexcept nogil
cdef unsigned char* put_superseding(unsigned char* w, SetView* view, Py_ssize_t stamp, const unsigned char* actor,
                                    Py_ssize_t alen, uint64_t now, const unsigned char* value,
                                    Py_ssize_t vlen) noexcept nogil
