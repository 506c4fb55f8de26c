"""Vector clocks and dotted version vector sets, compiled (the reference is dynafast._ref.vclock).

Entries live in C arrays sorted by actor; compare, merge, update and sync are merge walks over them, and
the byte formats are read and written in C. Results and bytes are identical to the reference.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from cpython.ref cimport Py_INCREF, Py_XDECREF, PyObject
from libc.stdint cimport uint64_t
from libc.stdlib cimport qsort
from libc.string cimport memcmp, memcpy as memcpy_

from dynafast._core.murmur3 cimport Hash128, mm3_x64_128
from dynafast._core.varint cimport MAX_VARINT_SIZE, put_varint, read_varint, varint_size

from dynafast.errors import ProtocolError

cdef extern from "Python.h":
    # Borrowed-pointer spellings of the bytes accessors, for entries that hold PyObject*.
    char* _bytes_data "PyBytes_AS_STRING" (PyObject* o) nogil
    Py_ssize_t _bytes_len "PyBytes_GET_SIZE" (PyObject* o) nogil
    PyObject* _Py_None "Py_None"

EQUAL = ORDER_EQUAL
DESCENDS = ORDER_DESCENDS
DOMINATED = ORDER_DOMINATED
CONCURRENT = ORDER_CONCURRENT

cdef enum:
    SIBLINGS_FORMAT = 1
    PRUNE_SMALL = 10  # prune()'s default ``small``: it drops nothing from a clock of this many entries or fewer

cdef object _U64 = 1 << 64


# -- small helpers ----------------------------------------------------------------------------------------------
cdef inline int actor_cmp(PyObject* a, PyObject* b) noexcept nogil:
    if a == b:
        return 0
    cdef Py_ssize_t la = _bytes_len(a), lb = _bytes_len(b)
    cdef int r = memcmp(_bytes_data(a), _bytes_data(b), <size_t>(la if la < lb else lb))
    if r:
        return r
    return (la > lb) - (la < lb)


cdef inline int value_cmp(PyObject* a, PyObject* b) noexcept nogil:
    # Tombstones (None) sort first, then bytes by content: the reference's _value_key.
    if a == b:
        return 0
    if a == _Py_None:
        return -1
    if b == _Py_None:
        return 1
    return actor_cmp(a, b)


cdef inline int anon_cmp(Dot* a, Dot* b) noexcept nogil:
    cdef int r = value_cmp(a.value, b.value)
    if r:
        return r
    return (a.ts > b.ts) - (a.ts < b.ts)


cdef inline void merge_ts(uint64_t c1, uint64_t t1, uint64_t c2, uint64_t t2,
                          uint64_t* c, uint64_t* t) noexcept nogil:
    # The timestamp of the larger counter, the larger timestamp on a tie.
    if c1 > c2:
        c[0] = c1; t[0] = t1
    elif c2 > c1:
        c[0] = c2; t[0] = t2
    else:
        c[0] = c1; t[0] = t1 if t1 > t2 else t2


cdef uint64_t check_u64(object value, str what) except? 0xFFFFFFFFFFFFFFFF:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{what} must be an int")
    if not 0 <= value < _U64:
        raise ValueError(f"{what} out of range 0..2**64-1: {value}")
    return <uint64_t>value


cdef inline int check_actor(object actor) except -1:
    if type(actor) is not bytes:
        raise TypeError(f"actor must be bytes, not {type(actor).__name__}")
    return 0


cdef inline void* alloc(Py_ssize_t count, size_t size) except NULL:
    cdef void* p = PyMem_Malloc(<size_t>(count if count > 0 else 1) * size)
    if p == NULL:
        raise MemoryError()
    return p


cdef int compare_entries(Entry* a, Py_ssize_t na, Entry* b, Py_ssize_t nb) noexcept nogil:
    cdef Py_ssize_t i = 0, j = 0
    cdef bint greater = False, less = False
    cdef int r
    while i < na or j < nb:
        if j >= nb:
            greater = True
            i += 1
        elif i >= na:
            less = True
            j += 1
        else:
            r = actor_cmp(a[i].actor, b[j].actor)
            if r < 0:
                greater = True
                i += 1
            elif r > 0:
                less = True
                j += 1
            else:
                if a[i].counter > b[j].counter:
                    greater = True
                elif a[i].counter < b[j].counter:
                    less = True
                i += 1
                j += 1
        if greater and less:
            return ORDER_CONCURRENT
    if greater:
        return ORDER_DESCENDS
    if less:
        return ORDER_DOMINATED
    return ORDER_EQUAL


# -- varints (varint.pxd) ----------------------------------------------------------------------------------------
cdef inline int get_varint(const unsigned char* p, Py_ssize_t end, Py_ssize_t* pos, uint64_t* out) except -1:
    # The clock formats are canonical: a longer encoding than needed is refused.
    return read_varint(p, end, pos, out, True)


cdef object get_bytes(const unsigned char* p, Py_ssize_t end, Py_ssize_t* pos):
    cdef uint64_t length
    get_varint(p, end, pos, &length)
    if length > <uint64_t>(end - pos[0]):
        raise ProtocolError("length field runs past the end of the data")
    cdef object b = PyBytes_FromStringAndSize(<const char*>p + pos[0], <Py_ssize_t>length)
    pos[0] += <Py_ssize_t>length
    return b


cdef object get_value(const unsigned char* p, Py_ssize_t end, Py_ssize_t* pos):
    cdef uint64_t tag
    get_varint(p, end, pos, &tag)
    if tag == 0:
        return None
    if tag - 1 > <uint64_t>(end - pos[0]):
        raise ProtocolError("value length runs past the end of the data")
    cdef object b = PyBytes_FromStringAndSize(<const char*>p + pos[0], <Py_ssize_t>(tag - 1))
    pos[0] += <Py_ssize_t>(tag - 1)
    return b


cdef inline Py_ssize_t value_size(PyObject* v) noexcept:
    if v == _Py_None:
        return 1
    return varint_size(<uint64_t>_bytes_len(v) + 1) + _bytes_len(v)


cdef inline unsigned char* put_value(unsigned char* w, PyObject* v) noexcept:
    cdef Py_ssize_t n
    if v == _Py_None:
        w[0] = 0
        return w + 1
    n = _bytes_len(v)
    w = put_varint(w, <uint64_t>n + 1)
    memcpy_(w, _bytes_data(v), n)
    return w + n


cdef inline bytes as_bytes(object data):
    # bytes are read in place; any other buffer is copied once into bytes first.
    return data if type(data) is bytes else bytes(memoryview(data))


cdef int read_entry_head(const unsigned char* p, Py_ssize_t end, Py_ssize_t* pos, Entry* e,
                         Entry* previous, str where) except -1:
    """Read actor, counter and timestamp into e (taking a reference to the actor)."""
    actor = get_bytes(p, end, pos)
    get_varint(p, end, pos, &e.counter)
    get_varint(p, end, pos, &e.ts)
    if e.counter == 0:
        raise ProtocolError(f"zero counter in {where}")
    if previous != NULL and actor_cmp(<PyObject*>actor, previous.actor) <= 0:
        raise ProtocolError(f"{where} actors not strictly sorted")
    Py_INCREF(actor)
    e.actor = <PyObject*>actor
    e.first = 0
    e.count = 0
    return 0


# -- prune: Riak's rule ----------------------------------------------------------------------------------------
cdef int oldest_first(const void* x, const void* y) noexcept nogil:
    cdef Entry* a = (<Entry**>x)[0]
    cdef Entry* b = (<Entry**>y)[0]
    if a.ts != b.ts:
        return -1 if a.ts < b.ts else 1
    return actor_cmp(a.actor, b.actor)


cdef int prune_marks(Entry* ents, Py_ssize_t n, char* drop, object now_, object small_, object big_,
                     object young_, object old_, bint keep_live) except -1:
    """Set drop[i] for the entries Riak's rule removes, oldest first; live entries stay when keep_live.

    Ages count from the second newest timestamp (``now`` if earlier), as in the reference: one wall clock set
    ahead, which stamped the newest entry, cannot age the others."""
    cdef uint64_t now = check_u64(now_, "now")
    cdef uint64_t small = check_u64(small_, "small")
    cdef uint64_t big = check_u64(big_, "big")
    cdef uint64_t young = check_u64(young_, "young")
    cdef uint64_t old = check_u64(old_, "old")
    cdef Py_ssize_t i, remaining = n
    cdef Entry* e
    cdef Entry** order = <Entry**>alloc(n, sizeof(Entry*))
    try:
        for i in range(n):
            order[i] = &ents[i]
            drop[i] = 0
        qsort(order, <size_t>n, sizeof(Entry*), oldest_first)
        if n:
            e = order[n - 2] if n > 1 else order[0]  # ages count from the second newest timestamp
            if e.ts < now:
                now = e.ts
        for i in range(n):
            e = order[i]
            if <uint64_t>remaining <= small:
                break
            # now < ts is a negative age: younger than any limit
            if now < e.ts or now - e.ts < young:
                break
            if not (<uint64_t>remaining > big or now - e.ts > old):
                break
            if keep_live and e.count:
                continue
            drop[e - ents] = 1
            remaining -= 1
    finally:
        PyMem_Free(order)
    return 0


# -- VClock ------------------------------------------------------------------------------------------------------
cdef VClock new_clock(Py_ssize_t capacity):
    cdef VClock v = VClock.__new__(VClock)
    v.ents = <Entry*>alloc(capacity, sizeof(Entry))
    return v


cdef inline void copy_entry(Entry* dst, Entry* src) noexcept:
    dst[0] = src[0]
    dst.first = 0
    dst.count = 0
    Py_INCREF(<object>dst.actor)


cdef bytes encode_entries(Entry* ents, Py_ssize_t n):
    cdef Py_ssize_t i, size = varint_size(<uint64_t>n)
    for i in range(n):
        size += (varint_size(<uint64_t>_bytes_len(ents[i].actor)) + _bytes_len(ents[i].actor)
                 + varint_size(ents[i].counter) + varint_size(ents[i].ts))
    cdef bytes out = PyBytes_FromStringAndSize(NULL, size)
    cdef unsigned char* w = <unsigned char*><char*>out
    w = put_varint(w, <uint64_t>n)
    for i in range(n):
        w = put_varint(w, <uint64_t>_bytes_len(ents[i].actor))
        memcpy_(w, _bytes_data(ents[i].actor), <size_t>_bytes_len(ents[i].actor))
        w += _bytes_len(ents[i].actor)
        w = put_varint(w, ents[i].counter)
        w = put_varint(w, ents[i].ts)
    return out


cdef int read_clock(const unsigned char* p, Py_ssize_t end, Py_ssize_t* pos, Entry** ents_out,
                    Py_ssize_t* n_out, str where) except -1:
    """Decode a clock into a fresh array owned by the caller through ents_out/n_out (filled as it goes)."""
    cdef uint64_t count
    get_varint(p, end, pos, &count)
    if count > <uint64_t>(end - pos[0]):
        raise ProtocolError("entry count runs past the end of the data")
    ents_out[0] = <Entry*>alloc(<Py_ssize_t>count, sizeof(Entry))
    cdef Py_ssize_t i
    for i in range(<Py_ssize_t>count):
        read_entry_head(p, end, pos, &ents_out[0][i], &ents_out[0][i - 1] if i else NULL, where)
        n_out[0] = i + 1
    return 0


cdef VClock clock_from_bytes(const unsigned char* data, Py_ssize_t size):
    cdef VClock v = VClock.__new__(VClock)
    cdef Py_ssize_t pos = 0
    read_clock(data, size, &pos, &v.ents, &v.n, "vector clock")
    if pos != size:
        raise ProtocolError("trailing bytes after vector clock")
    return v


cdef class VClock:
    """An immutable vector clock: actor (bytes) -> counter, with the timestamp of the actor's last event."""

    def __cinit__(self):
        self.ents = NULL
        self.n = 0

    def __dealloc__(self):
        cdef Py_ssize_t i
        for i in range(self.n):
            Py_XDECREF(self.ents[i].actor)
        PyMem_Free(self.ents)

    def __init__(self, entries=None):
        cdef Py_ssize_t i
        merged = {}
        if entries is not None:
            for actor, counter, timestamp in entries:
                check_actor(actor)
                check_u64(counter, "counter")
                check_u64(timestamp, "timestamp")
                if counter == 0:
                    continue  # a zero counter is the same as no entry
                if actor in merged:
                    c, t = merged[actor]
                    if counter > c or (counter == c and timestamp > t):
                        merged[actor] = (counter, timestamp)
                else:
                    merged[actor] = (counter, timestamp)
        if self.ents != NULL:  # __init__ called again
            for i in range(self.n):
                Py_XDECREF(self.ents[i].actor)
            PyMem_Free(self.ents)
            self.ents = NULL
            self.n = 0
        items = sorted(merged.items())
        self.ents = <Entry*>alloc(len(items), sizeof(Entry))
        i = 0
        for actor, (c, t) in items:
            Py_INCREF(actor)
            self.ents[i].actor = <PyObject*>actor
            self.ents[i].counter = <uint64_t>c
            self.ents[i].ts = <uint64_t>t
            self.ents[i].first = 0
            self.ents[i].count = 0
            i += 1
            self.n = i

    def increment(self, actor, now=0):
        check_actor(actor)
        cdef uint64_t ts = check_u64(now, "now")
        cdef VClock v = new_clock(self.n + 1)
        cdef Py_ssize_t i = 0
        cdef int r = 1
        while i < self.n:
            r = actor_cmp(self.ents[i].actor, <PyObject*>actor)
            if r >= 0:
                break
            copy_entry(&v.ents[v.n], &self.ents[i])
            v.n += 1
            i += 1
        if i < self.n and r == 0:
            if self.ents[i].counter == 0xFFFFFFFFFFFFFFFF:
                raise ValueError("counter overflows 64 bits")
            copy_entry(&v.ents[v.n], &self.ents[i])
            v.ents[v.n].counter += 1
            v.ents[v.n].ts = ts
            v.n += 1
            i += 1
        else:
            Py_INCREF(actor)
            v.ents[v.n].actor = <PyObject*>actor
            v.ents[v.n].counter = 1
            v.ents[v.n].ts = ts
            v.ents[v.n].first = 0
            v.ents[v.n].count = 0
            v.n += 1
        while i < self.n:
            copy_entry(&v.ents[v.n], &self.ents[i])
            v.n += 1
            i += 1
        return v

    def get(self, actor):
        check_actor(actor)
        cdef Py_ssize_t i
        for i in range(self.n):
            if actor_cmp(self.ents[i].actor, <PyObject*>actor) == 0:
                return self.ents[i].counter
        return 0

    cdef int _compare(self, VClock other) except -1:
        return compare_entries(self.ents, self.n, other.ents, other.n)

    def compare(self, other):
        if not isinstance(other, VClock):
            raise TypeError("can only compare with a VClock")
        return self._compare(<VClock>other)

    def descends(self, other):
        if not isinstance(other, VClock):
            raise TypeError("can only compare with a VClock")
        cdef int order = self._compare(<VClock>other)
        return order == ORDER_EQUAL or order == ORDER_DESCENDS

    def merge(self, other):
        if not isinstance(other, VClock):
            raise TypeError("can only merge with a VClock")
        cdef VClock b = <VClock>other
        cdef VClock v = new_clock(self.n + b.n)
        cdef Py_ssize_t i = 0, j = 0
        cdef int r
        while i < self.n or j < b.n:
            if j >= b.n:
                r = -1
            elif i >= self.n:
                r = 1
            else:
                r = actor_cmp(self.ents[i].actor, b.ents[j].actor)
            if r < 0:
                copy_entry(&v.ents[v.n], &self.ents[i])
                i += 1
            elif r > 0:
                copy_entry(&v.ents[v.n], &b.ents[j])
                j += 1
            else:
                copy_entry(&v.ents[v.n], &self.ents[i])
                merge_ts(self.ents[i].counter, self.ents[i].ts, b.ents[j].counter, b.ents[j].ts,
                         &v.ents[v.n].counter, &v.ents[v.n].ts)
                i += 1
                j += 1
            v.n += 1
        return v

    def prune(self, now, small=10, big=50, young=20, old=86400):
        cdef char* drop = <char*>alloc(self.n, 1)
        cdef VClock v
        cdef Py_ssize_t i
        try:
            prune_marks(self.ents, self.n, drop, now, small, big, young, old, False)
            v = new_clock(self.n)
            for i in range(self.n):
                if not drop[i]:
                    copy_entry(&v.ents[v.n], &self.ents[i])
                    v.n += 1
        finally:
            PyMem_Free(drop)
        return v

    def entries(self):
        cdef Py_ssize_t i
        return [(<object>self.ents[i].actor, self.ents[i].counter, self.ents[i].ts) for i in range(self.n)]

    def to_bytes(self):
        # count, then per entry (sorted by actor): actor length, actor, counter, timestamp; all varints.
        return encode_entries(self.ents, self.n)

    @classmethod
    def from_bytes(cls, data):
        cdef bytes b = as_bytes(data)
        return clock_from_bytes(<const unsigned char*><char*>b, len(b))

    def __eq__(self, other):
        if not isinstance(other, VClock):
            return NotImplemented
        cdef VClock b = <VClock>other
        if self.n != b.n:
            return False
        cdef Py_ssize_t i
        for i in range(self.n):
            if (self.ents[i].counter != b.ents[i].counter or self.ents[i].ts != b.ents[i].ts
                    or actor_cmp(self.ents[i].actor, b.ents[i].actor) != 0):
                return False
        return True

    def __hash__(self):
        return hash(self.to_bytes())

    def __reduce__(self):
        return (VClock.from_bytes, (self.to_bytes(),))

    def __len__(self):
        return self.n

    def __repr__(self):
        return f"VClock({self.entries()!r})"


# -- Siblings ------------------------------------------------------------------------------------------------------
cdef Siblings new_siblings(Py_ssize_t n_ents, Py_ssize_t n_dots, Py_ssize_t n_anon):
    cdef Siblings s = Siblings.__new__(Siblings)
    s.ents = <Entry*>alloc(n_ents, sizeof(Entry))
    s.dots = <Dot*>alloc(n_dots, sizeof(Dot))
    s.anon = <Dot*>alloc(n_anon, sizeof(Dot))
    return s


cdef inline void push_dot(Dot* dst, Py_ssize_t* n, Dot* src) noexcept:
    dst[n[0]] = src[0]
    Py_INCREF(<object>src.value)
    n[0] += 1


cdef inline void push_entry(Siblings s, Entry* src, uint64_t counter, uint64_t ts) noexcept:
    cdef Entry* e = &s.ents[s.n]
    e.actor = src.actor
    Py_INCREF(<object>src.actor)
    e.counter = counter
    e.ts = ts
    e.first = s.ndots
    e.count = 0
    s.n += 1


cdef inline bint dot_wins(Dot* a, Dot* b) noexcept:
    # Two copies of one dot are the same write; should they differ anyway, keep one by a fixed rule.
    if a.ts != b.ts:
        return a.ts > b.ts
    return value_cmp(a.value, b.value) > 0


cdef void merge_dots(Siblings out, Siblings sa, Entry* a, Siblings sb, Entry* b) noexcept:
    """Append the live dots of one actor: a dot both hold, or one the other side has not seen."""
    cdef Dot* da = &sa.dots[a.first]
    cdef Dot* db = &sb.dots[b.first]
    cdef Py_ssize_t i = 0, j = 0, start = out.ndots
    while i < a.count or j < b.count:
        if j >= b.count or (i < a.count and da[i].dot > db[j].dot):
            if da[i].dot > b.counter:
                push_dot(out.dots, &out.ndots, &da[i])
            i += 1
        elif i >= a.count or db[j].dot > da[i].dot:
            if db[j].dot > a.counter:
                push_dot(out.dots, &out.ndots, &db[j])
            j += 1
        else:
            push_dot(out.dots, &out.ndots, &db[j] if dot_wins(&db[j], &da[i]) else &da[i])
            i += 1
            j += 1
    out.ents[out.n - 1].count = out.ndots - start


cdef void copy_entry_dots(Siblings out, Siblings src, Entry* e) noexcept:
    push_entry(out, e, e.counter, e.ts)
    cdef Py_ssize_t k
    for k in range(e.count):
        push_dot(out.dots, &out.ndots, &src.dots[e.first + k])
    out.ents[out.n - 1].count = e.count


cdef Siblings siblings_from_bytes(const unsigned char* p, Py_ssize_t end):
    if end < 1 or p[0] != SIBLINGS_FORMAT:
        raise ProtocolError("unknown sibling set format")
    cdef Py_ssize_t pos = 1, i, k
    cdef uint64_t n_anon, n_ents, n_vals, previous, ts
    cdef Siblings s = Siblings.__new__(Siblings)
    get_varint(p, end, &pos, &n_anon)
    if n_anon > <uint64_t>(end - pos):
        raise ProtocolError("count runs past the end of the data")
    s.anon = <Dot*>alloc(<Py_ssize_t>n_anon, sizeof(Dot))
    for i in range(<Py_ssize_t>n_anon):
        get_varint(p, end, &pos, &ts)
        value = get_value(p, end, &pos)
        Py_INCREF(value)
        s.anon[i].dot = 0
        s.anon[i].ts = ts
        s.anon[i].value = <PyObject*>value
        s.nanon = i + 1
        if i and anon_cmp(&s.anon[i], &s.anon[i - 1]) <= 0:
            raise ProtocolError("anonymous values not strictly sorted")
    get_varint(p, end, &pos, &n_ents)
    if n_ents > <uint64_t>(end - pos):
        raise ProtocolError("count runs past the end of the data")
    s.ents = <Entry*>alloc(<Py_ssize_t>n_ents, sizeof(Entry))
    # Every dot takes at least two bytes, so the rest of the data bounds the dot array.
    s.dots = <Dot*>alloc((end - pos) // 2 + 1, sizeof(Dot))
    cdef Entry* e
    for i in range(<Py_ssize_t>n_ents):
        e = &s.ents[i]
        read_entry_head(p, end, &pos, e, &s.ents[i - 1] if i else NULL, "sibling set")
        s.n = i + 1
        e.first = s.ndots
        get_varint(p, end, &pos, &n_vals)
        if n_vals > <uint64_t>(end - pos):
            raise ProtocolError("count runs past the end of the data")
        previous = e.counter + 1 if e.counter != 0xFFFFFFFFFFFFFFFF else 0
        for k in range(<Py_ssize_t>n_vals):
            read_dot(p, end, &pos, e.counter, k, &previous, &ts)
            value = get_value(p, end, &pos)
            Py_INCREF(value)
            s.dots[s.ndots].dot = previous
            s.dots[s.ndots].ts = ts
            s.dots[s.ndots].value = <PyObject*>value
            s.ndots += 1
            e.count += 1
    if pos != end:
        raise ProtocolError("trailing bytes after sibling set")
    return s


# The first dot is counter - gap, each next one previous - gap - 1; it must stay >= 1. Written without
# computing counter + 1, which overflows for the largest counter.
cdef inline bint dot_fits(uint64_t gap, uint64_t previous, uint64_t counter, Py_ssize_t k) noexcept nogil:
    if k == 0:
        return gap < counter
    return gap + 1 < previous and gap < previous


cdef inline uint64_t dot_below(uint64_t gap, uint64_t previous, uint64_t counter, Py_ssize_t k) noexcept nogil:
    if k == 0:
        return counter - gap
    return previous - gap - 1


cdef inline int read_dot(const unsigned char* p, Py_ssize_t end, Py_ssize_t* pos, uint64_t counter, Py_ssize_t k,
                         uint64_t* previous, uint64_t* ts) except -1:
    """The k-th dot of an entry of ``counter``: its counter into previous (the one before it there), then its
    timestamp."""
    cdef uint64_t gap
    get_varint(p, end, pos, &gap)
    if not dot_fits(gap, previous[0], counter, k):
        raise ProtocolError("dot below 1 in sibling set")
    previous[0] = dot_below(gap, previous[0], counter, k)
    return get_varint(p, end, pos, ts)


# -- a set read and superseded where it lies (the RESP lane's GET and SET) ------------------------------------------
cdef inline int view_cmp(const unsigned char* a, Py_ssize_t la, const unsigned char* b, Py_ssize_t lb) noexcept nogil:
    """actor_cmp of two actors given as bytes in place."""
    cdef int r = memcmp(a, b, <size_t>(la if la < lb else lb))
    if r:
        return r
    return (la > lb) - (la < lb)


cdef bint view_set(const unsigned char* p, Py_ssize_t end, SetView* view) except -1:
    """Read the encoded set ``p[:end]`` into ``view``, making no object: each entry's actor (pointing into p),
    counter and timestamp, the number of dots and where the last one's value lies. False, with ``view`` not to be
    used, when the set is not of the shape the view holds: an anonymous value, or more than VIEW_ENTRIES entries.
    Every check siblings_from_bytes makes is made here too, with the same ProtocolError: a view is never made of
    bytes the object path would call damaged."""
    if end < 1 or p[0] != SIBLINGS_FORMAT:
        raise ProtocolError("unknown sibling set format")
    cdef Py_ssize_t pos = 1, i, k, length
    cdef uint64_t n_anon, n_ents, n_vals, previous, tag, ignored
    cdef EntryView* e
    get_varint(p, end, &pos, &n_anon)
    if n_anon:
        return False
    get_varint(p, end, &pos, &n_ents)
    if n_ents > <uint64_t>(end - pos):
        raise ProtocolError("count runs past the end of the data")
    if n_ents > VIEW_ENTRIES:
        return False
    view.n = <Py_ssize_t>n_ents
    view.ndots = 0
    view.value = NULL
    view.vlen = 0
    for i in range(view.n):
        e = &view.ents[i]
        get_varint(p, end, &pos, &tag)
        if tag > <uint64_t>(end - pos):
            raise ProtocolError("length field runs past the end of the data")
        e.actor = p + pos
        e.alen = <Py_ssize_t>tag
        pos += e.alen
        get_varint(p, end, &pos, &e.counter)
        get_varint(p, end, &pos, &e.ts)
        if e.counter == 0:
            raise ProtocolError("zero counter in sibling set")
        if i and view_cmp(e.actor, e.alen, view.ents[i - 1].actor, view.ents[i - 1].alen) <= 0:
            raise ProtocolError("sibling set actors not strictly sorted")
        get_varint(p, end, &pos, &n_vals)
        if n_vals > <uint64_t>(end - pos):
            raise ProtocolError("count runs past the end of the data")
        previous = e.counter + 1 if e.counter != 0xFFFFFFFFFFFFFFFF else 0
        for k in range(<Py_ssize_t>n_vals):
            read_dot(p, end, &pos, e.counter, k, &previous, &ignored)
            get_varint(p, end, &pos, &tag)
            if tag == 0:
                view.value = NULL
                view.vlen = 0
            else:
                if tag - 1 > <uint64_t>(end - pos):
                    raise ProtocolError("value length runs past the end of the data")
                view.value = p + pos
                view.vlen = <Py_ssize_t>(tag - 1)
                pos += view.vlen
            view.ndots += 1
    if pos != end:
        raise ProtocolError("trailing bytes after sibling set")
    return True


cdef Py_ssize_t superseding_bound(SetView* view, Py_ssize_t alen, Py_ssize_t vlen) noexcept nogil:
    """At least the size of what put_superseding writes, for a joining actor of ``alen`` bytes."""
    cdef Py_ssize_t i, size = 3 + 6 * MAX_VARINT_SIZE + alen + vlen
    for i in range(view.n):
        size += 3 * MAX_VARINT_SIZE + 1 + view.ents[i].alen
    return size


cdef inline unsigned char* put_head(unsigned char* w, const unsigned char* actor, Py_ssize_t alen,
                                    uint64_t counter, uint64_t ts) noexcept nogil:
    w = put_varint(w, <uint64_t>alen)
    memcpy_(w, actor, <size_t>alen)
    return put_varint(put_varint(w + alen, counter), ts)


cdef inline unsigned char* put_stamped(unsigned char* w, const unsigned char* actor, Py_ssize_t alen,
                                       uint64_t counter, uint64_t now, const unsigned char* value,
                                       Py_ssize_t vlen) noexcept nogil:
    """An entry with its one dot, the newest: gap 0 below its counter."""
    w = put_head(w, actor, alen, counter, now)
    w[0] = 1  # one dot
    w[1] = 0  # its gap
    w = put_varint(put_varint(w + 2, now), <uint64_t>vlen + 1)
    memcpy_(w, value, <size_t>vlen)
    return w + vlen


cdef unsigned char* put_superseding(unsigned char* w, SetView* view, Py_ssize_t stamp, const unsigned char* actor,
                                    Py_ssize_t alen, uint64_t now, const unsigned char* value,
                                    Py_ssize_t vlen) noexcept nogil:
    """Write at ``w`` (room: superseding_bound) the encoding of ``supersede(value, actor, now)`` of the viewed set,
    and return its end. ``stamp``: the entry of the stamping actor (its counter below 2**64 - 1: the caller's
    check), whose counter moves on; or -1, and ``actor`` joins with counter 1 at its place. Every other entry
    keeps its counter and timestamp and loses its dots."""
    cdef Py_ssize_t i
    cdef bint joined = stamp >= 0
    cdef EntryView* e
    w[0] = SIBLINGS_FORMAT
    w[1] = 0  # no anonymous values
    w = put_varint(w + 2, <uint64_t>(view.n + (0 if joined else 1)))
    for i in range(view.n):
        e = &view.ents[i]
        if not joined and view_cmp(actor, alen, e.actor, e.alen) < 0:
            w = put_stamped(w, actor, alen, 1, now, value, vlen)
            joined = True
        if i == stamp:
            w = put_stamped(w, e.actor, e.alen, e.counter + 1, now, value, vlen)
        else:
            w = put_head(w, e.actor, e.alen, e.counter, e.ts)
            w[0] = 0  # no dots
            w += 1
    if not joined:
        w = put_stamped(w, actor, alen, 1, now, value, vlen)
    return w


def _superseded_in_place(data, value, actor, now):
    """For the tests: what the in-place writer stores for ``Siblings.from_bytes(data).supersede(value, actor,
    now)`` (``data`` None: no set yet), the entry of ``actor`` picked as the lane picks it; None where the view
    declines the set. Raises what view_set raises."""
    cdef SetView view
    cdef Py_ssize_t i, stamp = -1
    cdef bytes b = actor
    cdef bytes v = value
    cdef uint64_t ts = check_u64(now, "now")
    if data is None:
        view.n = 0
    else:
        data = as_bytes(data)
        if not view_set(<const unsigned char*><char*>data, len(data), &view):
            return None
    for i in range(view.n):
        if view_cmp(view.ents[i].actor, view.ents[i].alen, <const unsigned char*><char*>b, len(b)) == 0:
            if view.ents[i].counter == 0xFFFFFFFFFFFFFFFF:
                return None
            stamp = i
    cdef bytearray out = bytearray(superseding_bound(&view, len(b), len(v)))
    cdef unsigned char* start = <unsigned char*><char*>out
    cdef unsigned char* end = put_superseding(start, &view, stamp, <const unsigned char*><char*>b, len(b), ts,
                                              <const unsigned char*><char*>v, len(v))
    return bytes(out[:end - start])


cdef class Siblings:
    """A dotted version vector set: the concurrent versions of one key with their causal history."""

    def __cinit__(self):
        self.ents = NULL
        self.dots = NULL
        self.anon = NULL
        self.n = self.ndots = self.nanon = 0

    def __dealloc__(self):
        cdef Py_ssize_t i
        for i in range(self.n):
            Py_XDECREF(self.ents[i].actor)
        for i in range(self.ndots):
            Py_XDECREF(self.dots[i].value)
        for i in range(self.nanon):
            Py_XDECREF(self.anon[i].value)
        PyMem_Free(self.ents)
        PyMem_Free(self.dots)
        PyMem_Free(self.anon)

    @classmethod
    def new(cls, value, context=None):
        if value is not None and type(value) is not bytes:
            raise TypeError(f"value must be bytes or None, not {type(value).__name__}")
        cdef Siblings s = Siblings.__new__(Siblings)
        cdef VClock clock
        cdef Py_ssize_t i
        if context is None or (isinstance(context, (bytes, bytearray)) and len(context) == 0):
            clock = None
        elif isinstance(context, VClock):
            clock = <VClock>context
        else:
            clock = VClock.from_bytes(context)
        s.anon = <Dot*>alloc(1, sizeof(Dot))
        s.dots = <Dot*>alloc(0, sizeof(Dot))
        Py_INCREF(value)
        s.anon[0].dot = 0
        s.anon[0].ts = 0
        s.anon[0].value = <PyObject*>value
        s.nanon = 1
        if clock is None:
            s.ents = <Entry*>alloc(0, sizeof(Entry))
        else:
            s.ents = <Entry*>alloc(clock.n, sizeof(Entry))
            for i in range(clock.n):
                copy_entry(&s.ents[i], &clock.ents[i])
                s.n = i + 1
        return s

    @classmethod
    def empty(cls):
        return new_siblings(0, 0, 0)

    def update(self, existing, actor, now=0):
        check_actor(actor)
        cdef uint64_t ts = check_u64(now, "now")
        if self.nanon != 1 or self.ndots:
            raise ValueError("update() needs a client write made by Siblings.new()")
        cdef Siblings stored
        if existing is None:
            stored = new_siblings(0, 0, 0)
        elif isinstance(existing, Siblings):
            stored = <Siblings>existing
        else:
            raise TypeError("existing must be a Siblings or None")
        # Sync the write's context (without its value) into the stored set, then add the write as a new event.
        cdef Siblings ctx = Siblings.__new__(Siblings)
        ctx.ents = self.ents
        ctx.n = self.n
        cdef Siblings synced
        try:
            synced = ctx._sync(stored)
        finally:
            ctx.ents = NULL  # borrowed from self
            ctx.n = 0
        cdef Siblings out = new_siblings(synced.n + 1, synced.ndots + 1, synced.nanon)
        cdef Py_ssize_t i = 0, k
        cdef int r = 1
        cdef Dot fresh
        fresh.ts = ts
        fresh.value = self.anon[0].value
        while i < synced.n:
            r = actor_cmp(synced.ents[i].actor, <PyObject*>actor)
            if r >= 0:
                break
            copy_entry_dots(out, synced, &synced.ents[i])
            i += 1
        if i < synced.n and r == 0:
            if synced.ents[i].counter == 0xFFFFFFFFFFFFFFFF:
                raise ValueError("counter overflows 64 bits")
            push_entry(out, &synced.ents[i], synced.ents[i].counter + 1, ts)
            fresh.dot = synced.ents[i].counter + 1
            push_dot(out.dots, &out.ndots, &fresh)
            for k in range(synced.ents[i].count):
                push_dot(out.dots, &out.ndots, &synced.dots[synced.ents[i].first + k])
            out.ents[out.n - 1].count = synced.ents[i].count + 1
            i += 1
        else:
            fresh.dot = 1
            out.ents[out.n].actor = <PyObject*>actor
            Py_INCREF(actor)
            out.ents[out.n].counter = 1
            out.ents[out.n].ts = ts
            out.ents[out.n].first = out.ndots
            out.ents[out.n].count = 1
            out.n += 1
            push_dot(out.dots, &out.ndots, &fresh)
        while i < synced.n:
            copy_entry_dots(out, synced, &synced.ents[i])
            i += 1
        for k in range(synced.nanon):
            push_dot(out.anon, &out.nanon, &synced.anon[k])
        return out

    cpdef Siblings supersede(self, value, actor, now=0):
        """A write of ``value`` that supersedes every version here, stamped by ``actor`` and pruned:
        ``Siblings.new(value, self.clock()).update(self, actor, now).prune(now)`` (a last-write-wins put on the
        replica that coordinates it), built in one step when that is this set's clock with the actor's counter
        moved on and the one new dot: no anonymous value to carry over, and too few entries for prune to drop."""
        if type(value) is not bytes or self.nanon or self.n >= PRUNE_SMALL:
            return Siblings.new(value, self.clock()).update(self, actor, now).prune(now)
        check_actor(actor)
        cdef uint64_t ts = check_u64(now, "now")
        cdef Siblings out = new_siblings(self.n + 1, 1, 0)
        cdef Py_ssize_t i = 0
        cdef int r = 1
        cdef Dot fresh
        fresh.ts = ts
        fresh.value = <PyObject*>value
        while i < self.n:
            r = actor_cmp(self.ents[i].actor, <PyObject*>actor)
            if r >= 0:
                break
            push_entry(out, &self.ents[i], self.ents[i].counter, self.ents[i].ts)
            i += 1
        if i < self.n and r == 0:
            if self.ents[i].counter == 0xFFFFFFFFFFFFFFFF:
                raise ValueError("counter overflows 64 bits")
            push_entry(out, &self.ents[i], self.ents[i].counter + 1, ts)
            i += 1
        else:
            out.ents[out.n].actor = <PyObject*>actor
            Py_INCREF(actor)
            out.ents[out.n].counter = 1
            out.ents[out.n].ts = ts
            out.ents[out.n].first = 0
            out.ents[out.n].count = 0
            out.n += 1
        fresh.dot = out.ents[out.n - 1].counter
        push_dot(out.dots, &out.ndots, &fresh)
        out.ents[out.n - 1].count = 1
        while i < self.n:
            push_entry(out, &self.ents[i], self.ents[i].counter, self.ents[i].ts)
            i += 1
        return out

    cdef Siblings _sync(self, Siblings b):
        cdef int order = compare_entries(self.ents, self.n, b.ents, b.n)
        cdef Siblings out = new_siblings(self.n + b.n, self.ndots + b.ndots, self.nanon + b.nanon)
        cdef Py_ssize_t i = 0, j = 0
        cdef int r
        cdef uint64_t c, t
        while i < self.n or j < b.n:
            if j >= b.n:
                r = -1
            elif i >= self.n:
                r = 1
            else:
                r = actor_cmp(self.ents[i].actor, b.ents[j].actor)
            if r < 0:
                copy_entry_dots(out, self, &self.ents[i])
                i += 1
            elif r > 0:
                copy_entry_dots(out, b, &b.ents[j])
                j += 1
            else:
                merge_ts(self.ents[i].counter, self.ents[i].ts, b.ents[j].counter, b.ents[j].ts, &c, &t)
                push_entry(out, &self.ents[i], c, t)
                merge_dots(out, self, &self.ents[i], b, &b.ents[j])
                i += 1
                j += 1
        # Anonymous values: the newer side's when one history descends the other, else the sorted union.
        if order == ORDER_DOMINATED:
            for i in range(b.nanon):
                push_dot(out.anon, &out.nanon, &b.anon[i])
        elif order == ORDER_DESCENDS:
            for i in range(self.nanon):
                push_dot(out.anon, &out.nanon, &self.anon[i])
        else:
            i = j = 0
            while i < self.nanon or j < b.nanon:
                if j >= b.nanon:
                    r = -1
                elif i >= self.nanon:
                    r = 1
                else:
                    r = anon_cmp(&self.anon[i], &b.anon[j])
                if r <= 0:
                    push_dot(out.anon, &out.nanon, &self.anon[i])
                    i += 1
                    if r == 0:
                        j += 1
                else:
                    push_dot(out.anon, &out.nanon, &b.anon[j])
                    j += 1
        return out

    def sync(self, other):
        if not isinstance(other, Siblings):
            raise TypeError("can only sync with a Siblings")
        return self._sync(<Siblings>other)

    @property
    def values(self):
        cdef Py_ssize_t i
        out = [<object>self.dots[i].value for i in range(self.ndots)]
        for i in range(self.nanon):
            out.append(<object>self.anon[i].value)
        return out

    def live_values(self):
        return [v for v in self.values if v is not None]

    def is_deleted(self):
        cdef Py_ssize_t i
        if self.ndots + self.nanon == 0:
            return False
        for i in range(self.ndots):
            if self.dots[i].value != _Py_None:
                return False
        for i in range(self.nanon):
            if self.anon[i].value != _Py_None:
                return False
        return True

    def __len__(self):
        return self.ndots + self.nanon

    def clock(self):
        cdef VClock v = new_clock(self.n)
        cdef Py_ssize_t i
        for i in range(self.n):
            copy_entry(&v.ents[i], &self.ents[i])
            v.n = i + 1
        return v

    def context(self):
        return encode_entries(self.ents, self.n)

    cdef int _compare(self, Siblings other) except -1:
        return compare_entries(self.ents, self.n, other.ents, other.n)

    def compare(self, other):
        if not isinstance(other, Siblings):
            raise TypeError("can only compare with a Siblings")
        return self._compare(<Siblings>other)

    def digest(self):
        """16 bytes that stand for this object in the anti-entropy trees: MurmurHash3 x64_128 of its encoding
        (``mmh3.hash_bytes``). The trees hash (key, digest) pairs with the same function, so a cryptographic
        digest here made them no stronger; it cost a microsecond (two per write: old and new) where this costs
        tens of nanoseconds."""
        cdef bytes data = self._encode()
        cdef Hash128 h = mm3_x64_128(<const unsigned char *>PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data), 0)
        cdef unsigned char out[16]
        cdef int i
        for i in range(8):  # little-endian halves, as mmh3.hash_bytes on every host
            out[i] = <unsigned char>(h.h1 >> (8 * i))
            out[8 + i] = <unsigned char>(h.h2 >> (8 * i))
        return PyBytes_FromStringAndSize(<char *>out, 16)

    def lww(self):
        # The greatest (timestamp, actor, dot); an anonymous value counts as actor b"" below every dot, and
        # among anonymous values the later one in sorted order wins a tie.
        cdef Py_ssize_t i, k, best_e = -1, best_k = -1, best_a = -1
        cdef Dot* d
        cdef Dot* best = NULL
        cdef int r
        for i in range(self.n):
            for k in range(self.ents[i].first, self.ents[i].first + self.ents[i].count):
                d = &self.dots[k]
                if best != NULL:
                    if d.ts != best.ts:
                        if d.ts < best.ts:
                            continue
                    else:
                        r = actor_cmp(self.ents[i].actor, self.ents[best_e].actor)
                        if r < 0 or (r == 0 and d.dot <= best.dot):
                            continue
                best = d
                best_e = i
                best_k = k
        for i in range(self.nanon):
            if best == NULL or self.anon[i].ts > best.ts or (best_a >= 0 and self.anon[i].ts == best.ts):
                best = &self.anon[i]
                best_a = i
                best_e = -1
        cdef Siblings out = new_siblings(self.n, 1, 1)
        for i in range(self.n):
            push_entry(out, &self.ents[i], self.ents[i].counter, self.ents[i].ts)
            if best_a < 0 and i == best_e:
                push_dot(out.dots, &out.ndots, &self.dots[best_k])
                out.ents[i].count = 1
        if best_a >= 0:
            push_dot(out.anon, &out.nanon, &self.anon[best_a])
        if best == NULL:
            for i in range(self.nanon):  # nothing to choose from: an unchanged copy
                push_dot(out.anon, &out.nanon, &self.anon[i])
        return out

    def only(self, actor, dot):
        """This set with the one version ``actor`` stamped as ``dot`` left, and its whole clock (every other
        version counts as seen and replaced); None when it does not hold that version."""
        check_actor(actor)
        cdef uint64_t want = check_u64(dot, "dot")
        cdef Py_ssize_t i, k, found_e = -1, found_k = -1
        for i in range(self.n):
            if actor_cmp(self.ents[i].actor, <PyObject*>actor) == 0:
                for k in range(self.ents[i].first, self.ents[i].first + self.ents[i].count):
                    if self.dots[k].dot == want:
                        found_e, found_k = i, k
                break
        if found_e < 0:
            return None
        cdef Siblings out = new_siblings(self.n, 1, 0)
        for i in range(self.n):
            push_entry(out, &self.ents[i], self.ents[i].counter, self.ents[i].ts)
            if i == found_e:
                push_dot(out.dots, &out.ndots, &self.dots[found_k])
                out.ents[i].count = 1
        return out

    def prune(self, now, small=10, big=50, young=20, old=86400):
        # Entries that still hold a sibling stay: dropping them would lose the sibling's dot.
        cdef char* drop = <char*>alloc(self.n, 1)
        cdef Siblings out
        cdef Py_ssize_t i
        try:
            prune_marks(self.ents, self.n, drop, now, small, big, young, old, True)
            out = new_siblings(self.n, self.ndots, self.nanon)
            for i in range(self.n):
                if not drop[i]:
                    copy_entry_dots(out, self, &self.ents[i])
            for i in range(self.nanon):
                push_dot(out.anon, &out.nanon, &self.anon[i])
        finally:
            PyMem_Free(drop)
        return out

    cdef bytes _encode(self):
        # A set is never changed once made, so its encoding is made once: a write stores it, and the Merkle
        # tree's digest of the new version hashes it again.
        if self.encoded is None:
            self.encoded = self._encode_now()
        return self.encoded

    cdef bytes _encode_now(self):
        # Same layout as the reference's to_bytes (see there): format byte, anonymous values, then entries
        # whose dots are written as gaps below the previous dot.
        cdef Py_ssize_t i, k, size = 1 + varint_size(<uint64_t>self.nanon) + varint_size(<uint64_t>self.n)
        cdef uint64_t previous = 0
        cdef Entry* e
        cdef Dot* d
        for i in range(self.nanon):
            size += varint_size(self.anon[i].ts) + value_size(self.anon[i].value)
        for i in range(self.n):
            e = &self.ents[i]
            size += (varint_size(<uint64_t>_bytes_len(e.actor)) + _bytes_len(e.actor) + varint_size(e.counter)
                     + varint_size(e.ts) + varint_size(<uint64_t>e.count))
            for k in range(e.count):
                d = &self.dots[e.first + k]
                size += varint_size(e.counter - d.dot if k == 0 else previous - d.dot - 1)
                size += varint_size(d.ts) + value_size(d.value)
                previous = d.dot
        cdef bytes out = PyBytes_FromStringAndSize(NULL, size)
        cdef unsigned char* w = <unsigned char*><char*>out
        w[0] = SIBLINGS_FORMAT
        w += 1
        w = put_varint(w, <uint64_t>self.nanon)
        for i in range(self.nanon):
            w = put_varint(w, self.anon[i].ts)
            w = put_value(w, self.anon[i].value)
        w = put_varint(w, <uint64_t>self.n)
        for i in range(self.n):
            e = &self.ents[i]
            w = put_varint(w, <uint64_t>_bytes_len(e.actor))
            memcpy_(w, _bytes_data(e.actor), <size_t>_bytes_len(e.actor))
            w += _bytes_len(e.actor)
            w = put_varint(w, e.counter)
            w = put_varint(w, e.ts)
            w = put_varint(w, <uint64_t>e.count)
            for k in range(e.count):
                d = &self.dots[e.first + k]
                w = put_varint(w, e.counter - d.dot if k == 0 else previous - d.dot - 1)
                w = put_varint(w, d.ts)
                w = put_value(w, d.value)
                previous = d.dot
        return out

    def to_bytes(self):
        return self._encode()

    @classmethod
    def from_bytes(cls, data):
        cdef bytes b = as_bytes(data)
        return siblings_from_bytes(<const unsigned char*><char*>b, len(b))

    def __eq__(self, other):
        if not isinstance(other, Siblings):
            return NotImplemented
        cdef Siblings b = <Siblings>other
        if self.n != b.n or self.ndots != b.ndots or self.nanon != b.nanon:
            return False
        cdef Py_ssize_t i
        for i in range(self.n):
            if (self.ents[i].counter != b.ents[i].counter or self.ents[i].ts != b.ents[i].ts
                    or self.ents[i].count != b.ents[i].count
                    or actor_cmp(self.ents[i].actor, b.ents[i].actor) != 0):
                return False
        for i in range(self.ndots):
            if (self.dots[i].dot != b.dots[i].dot or self.dots[i].ts != b.dots[i].ts
                    or value_cmp(self.dots[i].value, b.dots[i].value) != 0):
                return False
        for i in range(self.nanon):
            if anon_cmp(&self.anon[i], &b.anon[i]) != 0:
                return False
        return True

    __hash__ = None

    def __reduce__(self):
        return (Siblings.from_bytes, (self._encode(),))

    def __repr__(self):
        return f"Siblings(values={self.values!r}, clock={self.clock()!r})"


def reconcile(sets):
    """Sync every replica's set into one: the read path's merge of R replies."""
    cdef Siblings result = new_siblings(0, 0, 0)
    for s in sets:
        if not isinstance(s, Siblings):
            raise TypeError("can only sync with a Siblings")
        result = result._sync(<Siblings>s)
    return result


__all__ = ["EQUAL", "DESCENDS", "DOMINATED", "CONCURRENT", "VClock", "Siblings", "reconcile"]
