"""The log-structured storage engine (Bitcask's design), compiled.

Same on-disk format and class API as the reference ``dynafast._ref.logstore`` (field widths: logstore.pxd).
Hot calls (put/get/delete/contains) run entirely with the GIL held and take no lock: the GIL already
serialises them, and none of them can release it half-way except to flush, which goes through io_lock.
The one reader of the keydir without the GIL is a merge's lookups, under kd_mutex, which changes to the
keydir take too while it runs (kd_shared).
Reads come from the write buffers or from a read-only shared mapping of the segment file, and verify the
record's CRC every time.

Threads: io_lock serialises flush/fsync/roll and is always acquired with the GIL released (so a thread
waiting for it never holds the GIL); the buffer being written is swapped out first (double buffering), so
puts keep appending while another thread's write()/fsync() runs without the GIL. That is group commit:
a sync() finding its bytes already covered by another thread's fsync returns at once.
"""
import errno as _errno
import os
import struct
import zlib

from lz4.block import compress as _lz4_compress, decompress as _lz4_decompress

from dynafast.errors import CorruptionError, KeyTooLarge, StorageFull, StoreClosed, ValueTooLarge

cimport cython
from cpython.dict cimport PyDict_GetItem
from cpython.long cimport PyLong_AsUnsignedLongLong
from cpython.object cimport PyObject
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_CheckExact, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.pythread cimport (
    NOWAIT_LOCK, WAIT_LOCK, PyThread_acquire_lock, PyThread_allocate_lock, PyThread_free_lock,
    PyThread_release_lock,
)
from libc.errno cimport EINTR, errno
from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memcpy, memset
from posix.mman cimport MAP_FAILED, MAP_SHARED, PROT_READ, mmap, munmap
from posix.types cimport off_t
from posix.unistd cimport close as c_close, dup as c_dup, fsync as c_fsync, pwrite as c_pwrite
from posix.unistd cimport read as c_read, usleep, write as c_write

from posix.time cimport CLOCK_MONOTONIC, CLOCK_REALTIME, clock_gettime, timespec

cdef extern from "<sched.h>" nogil:
    int sched_yield()

cdef extern from "<sys/eventfd.h>" nogil:
    int eventfd(unsigned int initval, int flags)
    int EFD_NONBLOCK
    int EFD_CLOEXEC

df_crc_init()

HEADER_SIZE_ = HEADER_SIZE
HINT_ENTRY_SIZE_ = HINT_ENTRY_SIZE
HINT_TRAILER_SIZE_ = HINT_TRAILER_SIZE

cdef enum:
    AHEAD = 32  # a merge asks for a record's keydir slot this many records before it looks it up (and its item half)
    LOOKUP_CHUNK = 1024  # a merge's lookups between two chances for writers to take the keydir's mutex

cdef int _ENOSPC = _errno.ENOSPC
cdef int _EDQUOT = _errno.EDQUOT


# -- byte order helpers (little-endian hosts) ------------------------------------------------------
cdef inline uint16_t ld16(const unsigned char *p) noexcept nogil:
    cdef uint16_t v
    memcpy(&v, p, 2)
    return v

cdef inline uint32_t ld32(const unsigned char *p) noexcept nogil:
    cdef uint32_t v
    memcpy(&v, p, 4)
    return v

cdef inline uint64_t ld64(const unsigned char *p) noexcept nogil:
    cdef uint64_t v
    memcpy(&v, p, 8)
    return v

cdef inline void st16(unsigned char *p, uint16_t v) noexcept nogil:
    memcpy(p, &v, 2)

cdef inline void st32(unsigned char *p, uint32_t v) noexcept nogil:
    memcpy(p, &v, 4)

cdef inline void st64(unsigned char *p, uint64_t v) noexcept nogil:
    memcpy(p, &v, 8)


# -- I/O seam: every write and fsync of the engine goes through io_pwrite/io_fsync ------------------
cdef int _fault_errno = 0
cdef int64_t _fault_budget = 0


def set_io_fault(err=_errno.ENOSPC, after_bytes=0):
    """Make file writes fail with ``err`` once ``after_bytes`` more bytes were written; fsync fails then too."""
    global _fault_errno, _fault_budget
    _fault_errno = err
    _fault_budget = after_bytes


def clear_io_fault():
    """Stop injecting I/O faults."""
    global _fault_errno, _fault_budget
    _fault_errno = 0
    _fault_budget = 0


cdef int64_t _group_wait_ns = 50000


cdef int _group_percent = 100


def _set_group_wait(ns, percent=100):
    """Tuning knobs: how long (at most) a group-commit leader waits, and for what share (in %) of the
    number of writers its predecessor's fsync covered."""
    global _group_wait_ns, _group_percent
    _group_wait_ns = ns
    _group_percent = percent


cdef int io_pwrite(int fd, const unsigned char *p, size_t n, uint64_t off) noexcept nogil:
    """Write all of p at off; 0 or an errno value."""
    global _fault_budget
    cdef ssize_t w
    cdef size_t allowed
    while n > 0:
        allowed = n
        if _fault_errno != 0:
            if _fault_budget <= 0:
                return _fault_errno
            if <uint64_t>_fault_budget < allowed:
                allowed = <size_t>_fault_budget
        w = c_pwrite(fd, p, allowed, <off_t>off)
        if w < 0:
            if errno == EINTR:
                continue
            return errno
        if _fault_errno != 0:
            _fault_budget -= w
        p += w
        n -= w
        off += w
    return 0


cdef extern from *:
    int __sync_fetch_and_add(int *p, int v) nogil

# Test seams: a point of the engine's work waits while it is held, counted in _waiting (a disk that takes
# its time, a merge caught between two chunks of lookups).
cdef enum:
    HOLD_FSYNC = 0
    HOLD_LOOKUPS = 1
    HOLD_LOOKUPS_LOCKED = 2
cdef int _held[3]
cdef int _waiting[3]
cdef int _writers_blocked = 0  # writers that found a merge's lookups holding the keydir's mutex, ever
cdef int _blocked_at_hold = 0


cdef inline void _wait_while_held(int point) noexcept nogil:
    if _held[point]:
        __sync_fetch_and_add(&_waiting[point], 1)
        while _held[point]:
            usleep(1000)
        __sync_fetch_and_add(&_waiting[point], -1)


def hold_fsyncs():
    """Make every fsync wait until ``release_fsyncs()``: a disk slow to make things durable."""
    _held[HOLD_FSYNC] = 1


def release_fsyncs():
    _held[HOLD_FSYNC] = 0


def fsyncs_waiting():
    """How many fsyncs ``hold_fsyncs`` is holding now."""
    return __sync_fetch_and_add(&_waiting[HOLD_FSYNC], 0)


def hold_merge_lookups(bint locked=False):
    """Make a merge wait after its first chunk of keydir lookups until ``release_merge_lookups()``, without the
    GIL or the keydir's mutex, so writers go on meanwhile; ``locked``: holding the mutex, until a writer waits
    for it too."""
    global _blocked_at_hold
    _blocked_at_hold = __sync_fetch_and_add(&_writers_blocked, 0)
    _held[HOLD_LOOKUPS_LOCKED if locked else HOLD_LOOKUPS] = 1


def release_merge_lookups():
    _held[HOLD_LOOKUPS] = 0
    _held[HOLD_LOOKUPS_LOCKED] = 0


def merge_lookups_waiting():
    """How many merges ``hold_merge_lookups`` is holding now."""
    return __sync_fetch_and_add(&_waiting[HOLD_LOOKUPS], 0) + __sync_fetch_and_add(&_waiting[HOLD_LOOKUPS_LOCKED], 0)


def writers_blocked():
    """How many writers have ever found a merge's lookups holding the keydir's mutex."""
    return __sync_fetch_and_add(&_writers_blocked, 0)


cdef int io_fsync(int fd) noexcept nogil:
    _wait_while_held(HOLD_FSYNC)
    if _fault_errno != 0 and _fault_budget <= 0:
        return _fault_errno
    if c_fsync(fd) < 0:
        return errno
    return 0


cdef void *_bg_main(void *arg) noexcept nogil:
    """The engine's fsync thread: fsync each job's files, publish the result, signal the eventfd.
    It only ever touches its BgSync (never the GIL, never the store's buffers or segment table): the
    caller flushed the buffer and dup'd the descriptors, so a roll or merge meanwhile cannot pull a file
    from under it."""
    cdef BgSync *bg = <BgSync *>arg
    cdef int fd, fd2, err
    cdef uint64_t one = 1
    pthread_mutex_lock(&bg.mutex)
    while True:
        while not bg.job and not bg.stop:
            pthread_cond_wait(&bg.cond, &bg.mutex)
        if not bg.job:
            break
        fd = bg.fd
        fd2 = bg.fd2
        pthread_mutex_unlock(&bg.mutex)
        err = 0
        if fd2 >= 0:
            err = io_fsync(fd2)
            c_close(fd2)
        if err == 0:
            err = io_fsync(fd)
        c_close(fd)
        pthread_mutex_lock(&bg.mutex)
        bg.job = False
        bg.fd = bg.fd2 = -1
        bg.done = True
        bg.err = err
        bg.fsyncs += 1
        c_write(bg.efd, &one, 8)  # cannot fail short of the counter overflowing (2**64 - 2 wakeups)
    pthread_mutex_unlock(&bg.mutex)
    return NULL


cdef int raise_io(int err) except -1:
    if err == _ENOSPC or err == _EDQUOT:
        raise StorageFull(err, "no space left on the store's device")
    raise OSError(err, os.strerror(err))


cdef object _to_bytes(object obj, str what):
    if isinstance(obj, (bytearray, memoryview)):
        return bytes(obj)
    raise TypeError(f"{what} must be bytes, bytearray or memoryview, not {type(obj).__name__}")


def data_name(seg_id):
    return f"{seg_id:016x}.data"


def hint_name(seg_id):
    return f"{seg_id:016x}.hint"


# -- expiry (TTL) --------------------------------------------------------------------------------
cdef inline uint64_t _now_ms() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_REALTIME, &ts)
    return <uint64_t>ts.tv_sec * 1000 + <uint64_t>ts.tv_nsec // 1000000


def now_ms():
    """The clock expiries are compared with: ms since the epoch."""
    return _now_ms()


cdef uint64_t _expires_in(ttl) except? 0:
    """When a key put now with ``ttl`` (seconds) expires: ms since the epoch."""
    cdef double seconds = 0
    cdef uint64_t ms
    if type(ttl) is float or type(ttl) is int or (isinstance(ttl, (int, float)) and not isinstance(ttl, bool)):
        seconds = ttl
    if 0 < seconds < 1e12:
        ms = <uint64_t>(seconds * 1000 + 0.5)
        return _now_ms() + (ms if ms > 0 else 1)
    raise ValueError(f"ttl must be a positive number of seconds, not {ttl!r}")


# -- record scanning (recovery and merge) ----------------------------------------------------------
cdef inline size_t record_ok(const unsigned char *data, size_t pos, size_t n) noexcept nogil:
    """Size of the intact record at pos, or 0."""
    if pos + HEADER_SIZE > n:
        return 0
    cdef const unsigned char *p = data + pos
    cdef size_t size = HEADER_SIZE + <size_t>ld16(p + REC_KSIZE) + <size_t>ld32(p + REC_VSIZE)
    if size > n - pos:
        return 0
    if df_crc32(p + 4, size - 4) != ld32(p + REC_CRC):
        return 0
    if p[REC_FLAGS] & FLAG_EXPIRES and ld32(p + REC_VSIZE) < EXPIRES_SIZE:
        return 0
    return size


cdef inline size_t hint_span(const unsigned char *p) noexcept nogil:
    """Bytes of the hint entry at p."""
    return HINT_ENTRY_SIZE + ld16(p + HINT_KSIZE) + (EXPIRES_SIZE if p[HINT_FLAGS] & FLAG_EXPIRES else 0)


cdef inline int hint_entry(df_buf *b, uint32_t off, uint32_t size, const unsigned char *key, uint16_t klen,
                           uint8_t flags, const unsigned char *expires) noexcept nogil:
    """Append a hint entry; ``expires`` points at the record's 8 expiry bytes (read only with FLAG_EXPIRES)."""
    cdef size_t extra = EXPIRES_SIZE if flags & FLAG_EXPIRES else 0
    if df_buf_reserve(b, HINT_ENTRY_SIZE + klen + extra) < 0:
        return -1
    cdef unsigned char *p = b.data + b.len
    st32(p + HINT_OFF, off)
    st32(p + HINT_SIZE, size)
    st16(p + HINT_KSIZE, klen)
    p[HINT_FLAGS] = flags
    memcpy(p + HINT_ENTRY_SIZE, key, klen)
    if extra:
        memcpy(p + HINT_ENTRY_SIZE + klen, expires, EXPIRES_SIZE)
    b.len += HINT_ENTRY_SIZE + klen + extra
    return 0


cdef int64_t scan_records(const unsigned char *data, size_t n, df_buf *out, uint64_t *max_seq,
                          size_t *corrupt) noexcept nogil:
    """Append a hint entry to out for every intact, committed record; return where the valid data ends
    (-1: out of memory). A record failing its checksum is skipped by searching forward for the next
    intact one (corrupt counts the damaged stretches skipped so); when none follows, the rest is a torn
    tail. Batch records count only once their batch's COMMIT record is there."""
    cdef df_buf pending
    memset(&pending, 0, sizeof(pending))
    cdef size_t pos = 0, valid_end = 0, size
    cdef uint8_t flags
    cdef uint64_t seq
    cdef const unsigned char *p
    while pos < n:
        size = record_ok(data, pos, n)
        if size == 0:
            pos += 1
            while pos + HEADER_SIZE <= n and record_ok(data, pos, n) == 0:
                pos += 1
            if pos + HEADER_SIZE > n:
                break
            corrupt[0] += 1
            continue
        p = data + pos
        flags = p[REC_FLAGS]
        seq = ld64(p + REC_SEQ)
        if seq > max_seq[0]:
            max_seq[0] = seq
        if flags & FLAG_BATCH:
            if hint_entry(&pending, <uint32_t>pos, <uint32_t>size, p + HEADER_SIZE, ld16(p + REC_KSIZE),
                          flags, p + HEADER_SIZE + ld16(p + REC_KSIZE)) < 0:
                df_buf_free(&pending)
                return -1
            if flags & FLAG_COMMIT:
                if df_buf_append(out, pending.data, pending.len) < 0:
                    df_buf_free(&pending)
                    return -1
                pending.len = 0
                valid_end = pos + size
        else:
            pending.len = 0  # a batch without its commit record never happened
            if hint_entry(out, <uint32_t>pos, <uint32_t>size, p + HEADER_SIZE, ld16(p + REC_KSIZE), flags,
                          p + HEADER_SIZE + ld16(p + REC_KSIZE)) < 0:
                df_buf_free(&pending)
                return -1
            valid_end = pos + size
        pos += size
    df_buf_free(&pending)
    return <int64_t>valid_end


cdef size_t look_up_live(df_keydir *kd, pthread_mutex_t *kd_mutex, int *kd_waiters, const unsigned char *entries,
                         size_t n, uint32_t slot, uint8_t *live) noexcept nogil:
    """For each of a merged segment's hint entries, whether the keydir still points at its record (for a
    tombstone: whether its key is absent), into live[]; returns how many entries there were.

    It runs without the GIL, taking the keydir's mutex a chunk at a time: writers take that mutex too while a
    merge looks up (see _apply), and get in between chunks: a writer waiting (kd_waiters) gets the mutex before
    the next chunk does, since a mutex is not fair and the writer waits holding the GIL."""
    cdef uint32_t hashes[LOOKUP_CHUNK]
    cdef size_t at[LOOKUP_CHUNK]
    cdef size_t pos = 0, count = 0, k, j
    cdef const unsigned char *e
    cdef df_item *it
    while pos < n:
        if count:
            _wait_while_held(HOLD_LOOKUPS)
        k = 0
        while pos < n and k < LOOKUP_CHUNK:
            at[k] = pos
            hashes[k] = df_hash(entries + pos + HINT_ENTRY_SIZE, ld16(entries + pos + HINT_KSIZE))
            pos += hint_span(entries + pos)
            k += 1
        pthread_mutex_lock(kd_mutex)
        if count and _held[HOLD_LOOKUPS_LOCKED]:
            __sync_fetch_and_add(&_waiting[HOLD_LOOKUPS_LOCKED], 1)
            while _held[HOLD_LOOKUPS_LOCKED] and __sync_fetch_and_add(&_writers_blocked, 0) == _blocked_at_hold:
                usleep(1000)
            __sync_fetch_and_add(&_waiting[HOLD_LOOKUPS_LOCKED], -1)
        # Nearly every lookup is two cache misses (most records of a merged segment are dead, their keys
        # anywhere): each entry's slot is asked for AHEAD entries ahead, its item half as far.
        for j in range(k if k < AHEAD else AHEAD):
            df_kd_prefetch_slot(kd, hashes[j])
        for j in range(k):
            if j + AHEAD < k:
                df_kd_prefetch_slot(kd, hashes[j + AHEAD])
            if j + AHEAD // 2 < k:
                df_kd_prefetch_item(kd, hashes[j + AHEAD // 2])
            e = entries + at[j]
            it = df_kd_find_h(kd, e + HINT_ENTRY_SIZE, ld16(e + HINT_KSIZE), hashes[j])
            if e[HINT_FLAGS] & FLAG_TOMBSTONE:
                live[count + j] = it == NULL
            else:
                live[count + j] = it != NULL and it.seg == slot and it.off == ld32(e + HINT_OFF)
        pthread_mutex_unlock(kd_mutex)
        count += k
        for j in range(10000):  # bounded: a writer that never comes cannot hold up the merge for long
            if __sync_fetch_and_add(kd_waiters, 0) == 0:
                break
            sched_yield()
    return count


cdef int64_t check_hint(const unsigned char *p, size_t n, uint64_t data_size, uint64_t *max_seq) noexcept nogil:
    """Length of the entries of a valid hint file, or -1."""
    if n < HINT_TRAILER_SIZE:
        return -1
    cdef const unsigned char *t = p + n - HINT_TRAILER_SIZE
    if df_crc32(p, n - 4) != ld32(t + 20) or ld64(t) != data_size:
        return -1
    cdef size_t end = n - HINT_TRAILER_SIZE, pos = 0, count = 0
    while pos < end:
        if pos + HINT_ENTRY_SIZE > end:
            return -1
        if <uint64_t>ld32(p + pos + HINT_OFF) + ld32(p + pos + HINT_SIZE) > data_size:
            return -1
        pos += hint_span(p + pos)
        count += 1
    if pos != end or count != ld32(t + 16):
        return -1
    max_seq[0] = ld64(t + 8)
    return <int64_t>end


# -- manifest: the segments that make up the store (format: logstore.pxd) ---------------------------
MANIFEST = "MANIFEST"
NO_ACTIVE = (1 << 64) - 1  # manifest's active field after a clean close
_MANIFEST_HEAD = struct.Struct("<QI")  # active, count
_MANIFEST_ENTRY = struct.Struct("<QQ")  # seg_id, size


def encode_manifest(active, sealed):
    body = _MANIFEST_HEAD.pack(active, len(sealed)) + b"".join(_MANIFEST_ENTRY.pack(i, n) for i, n in sealed)
    return body + struct.pack("<I", zlib.crc32(body))


def decode_manifest(bytes blob):
    """(active id, {sealed id: size}) of a manifest, or None when it fails its checks."""
    cdef Py_ssize_t n = len(blob)
    if n < _MANIFEST_HEAD.size + 4 or zlib.crc32(blob[: n - 4]) != struct.unpack_from("<I", blob, n - 4)[0]:
        return None
    active, count = _MANIFEST_HEAD.unpack_from(blob, 0)
    if n != _MANIFEST_HEAD.size + count * _MANIFEST_ENTRY.size + 4:
        return None
    return active, dict(_MANIFEST_ENTRY.iter_unpack(blob[_MANIFEST_HEAD.size : n - 4]))


def read_manifest(path):
    """The decoded manifest in directory path; None when there is none, False when it is damaged."""
    try:
        with open(os.path.join(path, MANIFEST), "rb") as f:
            blob = f.read()
    except FileNotFoundError:
        return None
    decoded = decode_manifest(blob)
    return False if decoded is None else decoded


def write_manifest(path, active, sealed):
    """Replace the manifest atomically and durably; False when that failed (the old one stays)."""
    cdef bytes blob = encode_manifest(active, sealed)
    cdef const unsigned char *p = <const unsigned char *>PyBytes_AS_STRING(blob)
    cdef size_t n = PyBytes_GET_SIZE(blob)
    cdef int fd, err
    tmp = os.path.join(path, MANIFEST + ".tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    except OSError:
        return False
    with nogil:
        err = io_pwrite(fd, p, n, 0)
        if err == 0:
            err = io_fsync(fd)
    os.close(fd)
    if err:
        os.unlink(tmp)
        return False
    os.rename(tmp, os.path.join(path, MANIFEST))
    _fsync_dir(path)
    return True


def hint_data_size(bytes blob):
    """The data size an intact hint file describes, or None when it fails its checksum."""
    cdef const unsigned char *p = <const unsigned char *>PyBytes_AS_STRING(blob)
    cdef size_t n = PyBytes_GET_SIZE(blob)
    if n < HINT_TRAILER_SIZE or df_crc32(p, n - 4) != ld32(p + n - 4):
        return None
    return ld64(p + n - HINT_TRAILER_SIZE)


def new_recovery():
    """What opening a store found (LogStore.recovery); see dynafast.storage for the meaning of each key."""
    return {
        "fresh": False,
        "lost": False,
        "truncated_bytes": 0,
        "corrupt_records": 0,
        "missing_segments": 0,
        "short_segments": 0,
        "hint_mismatch": 0,
        "manifest_missing": False,
        "details": [],
    }


def _found(dict rec, str text, bint lost):
    rec["details"].append(text)
    if lost:
        rec["lost"] = True


def _fsync_dir(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# A move of one live record by a merge: applied to the keydir only if the key still points at the old place.
cdef struct Move:
    uint32_t old_seg
    uint32_t old_off
    uint32_t size
    uint32_t new_off
    size_t hint_pos


cdef class _Output:
    """One segment being written by a merge (under a .tmp name until complete)."""
    cdef uint64_t seg_id
    cdef str tmp
    cdef int fd
    cdef uint64_t size
    cdef uint64_t tombs  # bytes of tombstones this merge had to keep
    cdef df_buf data
    cdef df_buf hint
    cdef df_buf moves

    def __cinit__(self):
        self.fd = -1

    def __dealloc__(self):
        df_buf_free(&self.data)
        df_buf_free(&self.hint)
        df_buf_free(&self.moves)
        if self.fd >= 0:
            c_close(self.fd)

    cdef int write(self) except -1:
        cdef int err
        if self.data.len:
            with nogil:
                err = io_pwrite(self.fd, self.data.data, self.data.len, self.size)
            if err:
                raise_io(err)
            self.size += self.data.len
            self.data.len = 0
        return 0


cdef class _Iter:
    """Walks the keydir arena by position up to where it ended when the iterator was made."""

    def __iter__(self):
        return self

    def __next__(self):
        cdef LogStore store = self.store
        cdef size_t pos
        cdef df_item *it
        cdef uint32_t seg, off, size
        while True:
            if not self.counted:
                raise StopIteration
            if store.closed:
                self._done()
                raise StoreClosed("the store is closed")
            pos = df_kd_next(&store.kd, self.pos, self.end, <const unsigned char *>PyBytes_AS_STRING(self.prefix),
                             <size_t>PyBytes_GET_SIZE(self.prefix))
            if pos >= self.end:
                self._done()
                raise StopIteration
            it = df_kd_item(&store.kd, pos)
            self.pos = pos + df_item_span(it.klen)
            # Copy the location out first: allocating the key may run a finaliser that writes (and so
            # moves the arena).
            seg, off, size = it.seg, it.off, it.size
            key = PyBytes_FromStringAndSize(<const char *>it.key, it.klen)
            if self.values:
                value = store._value_at(seg, off, size)
                if value is None:
                    continue  # expired: as if absent
                return (key, value)
            if store.expires and store._expired(key):
                continue
            return key

    cdef void _done(self) noexcept:
        if self.counted:
            self.counted = False
            self.store.iterators -= 1

    def close(self):
        self._done()

    def __dealloc__(self):
        if self.counted and self.store is not None:
            self.store.iterators -= 1


cdef class _Hint:
    """A sealed segment's hint entries, waiting for write_hints()."""
    cdef uint64_t seg_id
    cdef uint64_t data_size
    cdef uint64_t max_seq
    cdef df_buf entries

    def __dealloc__(self):
        df_buf_free(&self.entries)


cdef class LogStore:
    """The engine: segments, keydir, write buffer, merge. Thread-safe; no background threads, no policy.

    Options: segment_size, max_key_size, max_value_size, compress_threshold, write_buffer_size,
    sync_always (put/delete/write_batch return only after an fsync, shared between threads).
    """

    def __cinit__(self):
        self.closed = True  # until __init__ has opened everything
        self.expires = {}
        self.pending_hints = []
        self.unsynced_seg = -1
        self.io_lock = PyThread_allocate_lock()
        self.merge_lock = PyThread_allocate_lock()
        if self.io_lock == NULL or self.merge_lock == NULL:
            raise MemoryError()
        pthread_mutex_init(&self.sync_mutex, NULL)
        pthread_mutex_init(&self.kd_mutex, NULL)
        pthread_cond_init(&self.sync_cond, NULL)
        pthread_mutex_init(&self.bg.mutex, NULL)
        pthread_cond_init(&self.bg.cond, NULL)
        self.bg.efd = self.bg.fd = self.bg.fd2 = -1
        self.bg_unsynced_id = -1
        self.sync_init = True

    def __init__(self, path, *, segment_size=64 << 20, max_key_size=MAX_KEY_SIZE, max_value_size=16 << 20,
                 compress_threshold=4096, write_buffer_size=1 << 20, sync_always=False):
        if not 0 < segment_size <= MAX_SEGMENT_SIZE:
            raise ValueError("segment_size out of range")
        if not 0 <= max_key_size <= MAX_KEY_SIZE:
            raise ValueError(f"max_key_size must be at most {MAX_KEY_SIZE}")
        if not 0 <= max_value_size <= MAX_VALUE_SIZE:
            raise ValueError(f"max_value_size must be at most {MAX_VALUE_SIZE}")
        self.path = os.fspath(path)
        self.segment_size = segment_size
        self.max_key_size = max_key_size
        self.max_value_size = max_value_size
        self.compress_threshold = compress_threshold
        self.write_buffer_size = write_buffer_size
        self.sync_always = sync_always
        if df_kd_init(&self.kd) < 0:
            raise MemoryError()
        os.makedirs(self.path, exist_ok=True)
        self.closed = False
        try:
            self._recover()
        except BaseException:
            self._release_all()
            raise

    def __dealloc__(self):
        if self.sync_init and self.bg_started:
            self._bg_stop()
        if not self.closed:
            self._release_all()
        df_kd_free(&self.kd)
        if self.io_lock != NULL:
            PyThread_free_lock(self.io_lock)
        if self.merge_lock != NULL:
            PyThread_free_lock(self.merge_lock)
        if self.sync_init:
            pthread_cond_destroy(&self.sync_cond)
            pthread_mutex_destroy(&self.sync_mutex)
            pthread_mutex_destroy(&self.kd_mutex)
            pthread_cond_destroy(&self.bg.cond)
            pthread_mutex_destroy(&self.bg.mutex)
            if self.bg.efd >= 0:
                c_close(self.bg.efd)

    # -- small helpers ---------------------------------------------------------------------------
    cdef int _check_open(self) except -1:
        if self.closed:
            raise StoreClosed("the store is closed")
        return 0

    cdef int _lock(self, PyThread_type_lock lock) except -1:
        # Never wait for a lock while holding the GIL: its holder may need the GIL to let go.
        if not PyThread_acquire_lock(lock, NOWAIT_LOCK):
            with nogil:
                PyThread_acquire_lock(lock, WAIT_LOCK)
        return 0

    cdef int64_t _new_seg(self, uint64_t seg_id, int fd, uint64_t size, size_t map_len) except -1:
        cdef uint32_t i, slot = NO_SEG
        cdef Seg *grown
        for i in range(self.nsegs):
            if self.segs[i].fd < 0:
                slot = i
                break
        if slot == NO_SEG:
            if self.nsegs * 2 + 8 > DF_MAX_SEGS:
                raise OSError(_errno.EMFILE, "too many segment files open; merge to reduce them")
            grown = <Seg *>realloc(self.segs, (self.nsegs * 2 + 8) * sizeof(Seg))
            if grown == NULL:
                raise MemoryError()
            self.segs = grown
            for i in range(self.nsegs, self.nsegs * 2 + 8):
                memset(&self.segs[i], 0, sizeof(Seg))
                self.segs[i].fd = -1
            slot = self.nsegs
            self.nsegs = self.nsegs * 2 + 8
        cdef void *m = NULL
        if map_len:
            m = mmap(NULL, map_len, PROT_READ, MAP_SHARED, fd, 0)
            if m == MAP_FAILED:
                raise OSError(errno, os.strerror(errno))
        cdef Seg *s = &self.segs[slot]
        s.id = seg_id
        s.fd = fd
        s.map = <unsigned char *>m
        s.map_len = map_len if m != NULL else 0
        s.size = size
        s.live = 0
        s.dead = 0
        return slot

    cdef int _drop_seg(self, uint32_t slot, bint unlink) except -1:
        cdef Seg *s = &self.segs[slot]
        if self.unsynced_seg == slot:
            self.unsynced_seg = -1  # dropped by a merge, which made its live records durable elsewhere
        seg_id = s.id
        if s.map != NULL:
            munmap(s.map, s.map_len)
            s.map = NULL
        if s.fd >= 0:
            c_close(s.fd)
            s.fd = -1
        if unlink:
            hp = os.path.join(self.path, hint_name(seg_id))
            if os.path.exists(hp):
                os.unlink(hp)
            os.unlink(os.path.join(self.path, data_name(seg_id)))
        return 0

    cdef int _release_all(self) except -1:
        cdef uint32_t i
        for i in range(self.nsegs):
            if self.segs[i].fd >= 0:
                self._drop_seg(i, False)
        free(self.segs)
        self.segs = NULL
        self.nsegs = 0
        df_buf_free(&self.wbuf)
        df_buf_free(&self.inflight)
        df_buf_free(&self.hint)
        self.expires.clear()
        df_kd_free(&self.kd)
        self.closed = True
        return 0

    cdef int _apply(self, const unsigned char *key, size_t klen, uint32_t seg, uint32_t off,
                    uint32_t size, int flags, const unsigned char *expires) except -1:
        """Account one record in the keydir (on load and on every write); ``expires`` points at its 8 expiry
        bytes (read only with FLAG_EXPIRES)."""
        cdef int r
        cdef bint shared
        if flags & FLAG_EXPIRES:
            if expires != NULL:  # NULL: the caller records it (put, which has the key object at hand)
                self.expires[PyBytes_FromStringAndSize(<const char *>key, klen)] = ld64(expires)
        elif self.expires:  # only stores that hold TTL keys pay for this
            self.expires.pop(PyBytes_FromStringAndSize(<const char *>key, klen), None)
        # Waiting here with the GIL held is safe: a merge holds kd_mutex only in its GIL-free lookups, and
        # for one chunk of them. Nothing from here to the unlock can let the GIL go.
        shared = self.kd_shared
        if shared and pthread_mutex_trylock(&self.kd_mutex) != 0:
            __sync_fetch_and_add(&_writers_blocked, 1)
            __sync_fetch_and_add(&self.kd_waiters, 1)
            pthread_mutex_lock(&self.kd_mutex)
            __sync_fetch_and_add(&self.kd_waiters, -1)
        r = self._index(key, klen, seg, off, size, flags)
        if shared:
            pthread_mutex_unlock(&self.kd_mutex)
        if r < 0:
            raise MemoryError()
        return 0

    cdef int _index(self, const unsigned char *key, size_t klen, uint32_t seg, uint32_t off, uint32_t size,
                    int flags) noexcept nogil:
        """_apply's change to the keydir and the segments' live and dead bytes (-1: out of memory)."""
        cdef df_item old
        cdef int r
        if flags & FLAG_TOMBSTONE:
            if df_kd_remove(&self.kd, key, klen, &old):
                self.segs[old.seg].live -= old.size
                self.segs[old.seg].dead += old.size
            self.segs[seg].dead += size
            if (self.iterators == 0 and self.kd.arena_dead > 65536
                    and self.kd.arena_dead * 2 > self.kd.arena_len):
                if df_kd_compact(&self.kd) < 0:
                    return -1
        else:
            r = df_kd_put(&self.kd, key, klen, seg, off, size, &old)
            if r < 0:
                return -1
            if r:
                self.segs[old.seg].live -= old.size
                self.segs[old.seg].dead += old.size
            self.segs[seg].live += size
        return 0

    cdef int _apply_hint(self, uint32_t seg, const unsigned char *p, size_t n) except -1:
        cdef size_t pos = 0
        cdef uint16_t klen
        while pos < n:
            klen = ld16(p + pos + HINT_KSIZE)
            self._apply(p + pos + HINT_ENTRY_SIZE, klen, seg, ld32(p + pos + HINT_OFF),
                        ld32(p + pos + HINT_SIZE), p[pos + HINT_FLAGS], p + pos + HINT_ENTRY_SIZE + klen)
            pos += hint_span(p + pos)
        return 0

    # -- open / recovery ---------------------------------------------------------------------------
    def _recover(self):
        rec = self.rec = new_recovery()
        manifest = read_manifest(self.path)
        ids = []
        for name in os.listdir(self.path):
            if name.endswith(".tmp"):
                os.unlink(os.path.join(self.path, name))  # an unfinished merge, hint or manifest: never referenced
            elif name.endswith(".data"):
                try:
                    ids.append(int(name[: len(name) - 5], 16))
                except ValueError:
                    pass
            elif name.endswith(".hint"):
                if not os.path.exists(os.path.join(self.path, name[: len(name) - 5] + ".data")):
                    os.unlink(os.path.join(self.path, name))
        active, sealed = manifest if manifest else (NO_ACTIVE, {})
        listed = set(sealed)
        if active != NO_ACTIVE:
            listed.add(active)
        for seg_id in sorted(listed - set(ids)):
            rec["missing_segments"] += 1
            _found(rec, f"{data_name(seg_id)} is missing", True)
        empty = []
        had_data = False
        for seg_id in sorted(ids):
            size = self._load_segment(seg_id, sealed.get(seg_id), empty)
            had_data = had_data or size > 0
        if manifest is None and had_data:
            rec["manifest_missing"] = True
            _found(rec, f"{MANIFEST} is missing beside data files", True)
        elif manifest is False:
            rec["manifest_missing"] = True
            _found(rec, f"{MANIFEST} is damaged", True)
        rec["fresh"] = manifest is None and not had_data
        top = max(ids) if ids else 0
        self._open_active((top // SEGMENT_ID_STEP + 1) * SEGMENT_ID_STEP)
        _fsync_dir(self.path)  # the new segment's name must survive a crash before anything in it can
        # Empty segments go only once a manifest without them is durable: a listed file is never missing.
        if self._write_manifest(False):
            for path in empty:
                os.unlink(path)

    def _load_segment(self, uint64_t seg_id, sealed_size, list empty):
        """Load one segment into the keydir, noting in the recovery report what it lacks; returns its size
        as found. sealed_size: its size when sealed, as the manifest records (None: not sealed there)."""
        rec = self.rec
        name = data_name(seg_id)
        path = os.path.join(self.path, name)
        fd = os.open(path, os.O_RDWR)
        cdef uint64_t size, found
        try:
            size = found = os.fstat(fd).st_size
        except BaseException:
            os.close(fd)
            raise
        cdef uint32_t slot = self._new_seg(seg_id, fd, size, size)
        cdef uint64_t max_seq = 0
        cdef int64_t n = -1, valid_end
        cdef size_t corrupt = 0
        cdef int err, cfd
        cdef df_buf entries
        cdef const unsigned char *m = self.segs[slot].map
        cdef bytes blob
        if sealed_size is not None and size < sealed_size:
            rec["short_segments"] += 1
            _found(rec, f"{name} holds {size} bytes, {sealed_size} were sealed", True)
        hpath = os.path.join(self.path, hint_name(seg_id))
        if os.path.exists(hpath):
            with open(hpath, "rb") as f:
                blob = f.read()
            hsize = hint_data_size(blob)
            if hsize is not None and hsize != size:
                rec["hint_mismatch"] += 1
                _found(rec, f"{hint_name(seg_id)} describes {hsize} bytes, {name} holds {size}", hsize > size)
            n = check_hint(<const unsigned char *>PyBytes_AS_STRING(blob), len(blob), size, &max_seq)
        if n >= 0:
            self._apply_hint(slot, <const unsigned char *>PyBytes_AS_STRING(blob), <size_t>n)
        else:
            memset(&entries, 0, sizeof(entries))
            try:
                with nogil:
                    valid_end = scan_records(m, size, &entries, &max_seq, &corrupt)
                if valid_end < 0:
                    raise MemoryError()
                if corrupt:
                    rec["corrupt_records"] += corrupt
                    _found(rec, f"{name}: {corrupt} damaged stretch(es) skipped", True)
                if <uint64_t>valid_end < size:
                    # Past the last fsync of the segment being written a torn tail is normal; a sealed one
                    # was fsync'd whole.
                    rec["truncated_bytes"] += size - valid_end
                    _found(rec, f"{name}: torn tail of {size - valid_end} bytes cut", sealed_size is not None)
                    os.ftruncate(fd, valid_end)  # torn tail (or a torn batch): never acknowledged
                    self.segs[slot].size = size = valid_end
                self._write_hint(seg_id, &entries, size)
                self._apply_hint(slot, entries.data, entries.len)
            finally:
                df_buf_free(&entries)
        if max_seq > self.seq:
            self.seq = max_seq
        if size == 0:  # e.g. a roll cut short by a crash: nothing in it
            self._drop_seg(slot, False)
            empty.extend(p for p in (hpath, path) if os.path.exists(p))
        elif sealed_size is None:
            cfd = fd
            with nogil:
                err = io_fsync(cfd)  # the manifest written next lists it as sealed: at this size, durably
            if err:
                raise_io(err)
        return found

    def _write_manifest(self, bint closing):
        """Record the segments that make up the store now; closing: the active one is sealed too.
        Returns whether it was written (failures are left to the next roll, merge, close or open).
        A sealed segment whose fsync failed is not listed as sealed until it has been made durable."""
        cdef uint32_t i
        cdef Seg *s
        sealed = []
        for i in range(self.nsegs):
            s = &self.segs[i]
            if s.fd < 0 or i == self.unsynced_seg:
                continue
            if i != self.active or (closing and s.size):
                sealed.append((s.id, s.size))
        sealed.sort()
        return write_manifest(self.path, NO_ACTIVE if closing else self.segs[self.active].id, sealed)

    @property
    def recovery(self):
        """What opening the store found; a fresh dict (keys: see dynafast.storage)."""
        return dict(self.rec, details=list(self.rec["details"]))

    cdef int _write_hint(self, uint64_t seg_id, df_buf *entries, uint64_t data_size) except -1:
        """Write entries + trailer as the segment's hint file. A hint is only an accelerator: failing to
        write one is ignored (the data file is read instead), and a torn one fails its checksum."""
        return self._write_hint_at(seg_id, entries, data_size, self.seq)

    cdef int _write_hint_at(self, uint64_t seg_id, df_buf *entries, uint64_t data_size,
                            uint64_t max_seq) except -1:
        cdef size_t n = entries.len, pos = 0
        cdef uint32_t count = 0
        cdef unsigned char trailer[HINT_TRAILER_SIZE]
        cdef int err, fd
        while pos < n:
            pos += hint_span(entries.data + pos)
            count += 1
        st64(trailer, data_size)
        st64(trailer + 8, max_seq)
        st32(trailer + 16, count)
        if df_buf_reserve(entries, HINT_TRAILER_SIZE) < 0:
            raise MemoryError()
        df_buf_append(entries, trailer, HINT_TRAILER_SIZE - 4)  # reserved: cannot fail
        st32(trailer + 20, df_crc32(entries.data, entries.len))
        df_buf_append(entries, trailer + 20, 4)
        tmp = os.path.join(self.path, hint_name(seg_id) + ".tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        except OSError:
            entries.len = n
            return 0
        with nogil:
            err = io_pwrite(fd, entries.data, entries.len, 0)
        entries.len = n
        os.close(fd)
        if err:
            os.unlink(tmp)
            return 0
        os.rename(tmp, os.path.join(self.path, hint_name(seg_id)))
        return 0

    cdef int _open_active(self, uint64_t seg_id) except -1:
        self._activate(seg_id, self._create_segment(seg_id))
        return 0

    def _create_segment(self, uint64_t seg_id):
        try:
            return os.open(os.path.join(self.path, data_name(seg_id)), os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        except OSError as exc:
            raise_io(exc.errno)

    cdef int _activate(self, uint64_t seg_id, int fd) except -1:
        """Make the new, empty file fd the active segment. Runs no Python code (so the GIL stays held):
        callers rely on nothing being appended between their last flush and the switch."""
        # Map a whole segment's worth up front: pages past the end of the file are never touched.
        cdef size_t map_len = self.segment_size if self.segment_size > 4096 else 4096
        self.active = self._new_seg(seg_id, fd, 0, map_len)
        self.buf_base = 0
        return 0

    # -- writes ------------------------------------------------------------------------------------
    cdef int _room(self, size_t size) except -1:
        """Make room for size bytes in the active segment and the write buffer (roll or flush)."""
        cdef uint64_t used, seg_id
        while True:
            self._check_open()
            used = self.buf_base + self.wbuf.len
            if used > 0 and used + size > self.segment_size:
                seg_id = self.segs[self.active].id
                self._lock(self.io_lock)
                try:
                    self._check_open()
                    if self.segs[self.active].id == seg_id:
                        self._roll_locked()
                finally:
                    PyThread_release_lock(self.io_lock)
                continue
            if self.wbuf.len > 0 and self.wbuf.len + size > self.write_buffer_size:
                self._lock(self.io_lock)
                try:
                    self._check_open()
                    self._flush_locked(True)
                finally:
                    PyThread_release_lock(self.io_lock)
                continue
            return 0

    cdef int _append(self, const unsigned char *key, size_t klen, const unsigned char *val, size_t vlen,
                     int flags, uint64_t expires) except -1:
        """Append one record to the write buffer and the active hint (the caller applies it); with
        FLAG_EXPIRES its value field is ``expires`` (8 bytes) and then val."""
        cdef size_t extra = EXPIRES_SIZE if flags & FLAG_EXPIRES else 0
        cdef size_t size = HEADER_SIZE + klen + extra + vlen
        if df_buf_reserve(&self.wbuf, size) < 0:
            raise MemoryError()
        cdef uint64_t off = self.buf_base + self.wbuf.len
        cdef unsigned char *p = self.wbuf.data + self.wbuf.len
        self.seq += 1
        st64(p + REC_SEQ, self.seq)
        st32(p + REC_VSIZE, <uint32_t>(extra + vlen))
        st16(p + REC_KSIZE, <uint16_t>klen)
        p[REC_FLAGS] = <uint8_t>flags
        memcpy(p + HEADER_SIZE, key, klen)
        if extra:
            st64(p + HEADER_SIZE + klen, expires)
        if vlen:
            memcpy(p + HEADER_SIZE + klen + extra, val, vlen)
        st32(p + REC_CRC, df_crc32(p + 4, size - 4))
        if hint_entry(&self.hint, <uint32_t>off, <uint32_t>size, key, <uint16_t>klen, <uint8_t>flags,
                      p + HEADER_SIZE + klen) < 0:
            raise MemoryError()
        self.wbuf.len += size
        self.appended += size
        return 0

    cdef int _flush_locked(self, bint release_gil) except -1:
        """Write the buffer to the active segment (caller holds io_lock)."""
        if self.wbuf.len == 0:
            return 0
        cdef Seg *s = &self.segs[self.active]
        cdef int fd = s.fd, err
        cdef df_buf t = self.wbuf
        self.wbuf = self.inflight  # empty: puts keep appending here while the write runs
        self.inflight = t
        self.infl_base = self.buf_base
        self.buf_base += self.inflight.len
        if release_gil:
            with nogil:
                err = io_pwrite(fd, self.inflight.data, self.inflight.len, self.infl_base)
        else:
            err = io_pwrite(fd, self.inflight.data, self.inflight.len, self.infl_base)
        if err:
            # Keep everything buffered, in order, for the next attempt.
            if self.wbuf.len:
                if df_buf_append(&self.inflight, self.wbuf.data, self.wbuf.len) < 0:
                    raise MemoryError()
            t = self.wbuf
            self.wbuf = self.inflight
            self.inflight = t
            self.inflight.len = 0
            self.buf_base = self.infl_base
            raise_io(err)
        s = &self.segs[self.active]
        s.size = self.infl_base + self.inflight.len
        self.inflight.len = 0
        cdef void *m
        if s.size > s.map_len:  # a segment grown past segment_size by one large record or batch
            m = mmap(NULL, s.size * 2, PROT_READ, MAP_SHARED, fd, 0)
            if m == MAP_FAILED:
                raise OSError(errno, os.strerror(errno))
            if s.map != NULL:
                munmap(s.map, s.map_len)
            s.map = <unsigned char *>m
            s.map_len = s.size * 2
        return 0

    cdef int _roll_locked(self) except -1:
        """Seal the active segment (durable, with its hint) and start the next one (holds io_lock)."""
        cdef uint32_t old = self.active
        cdef uint64_t old_id = self.segs[old].id, end
        cdef uint64_t new_id = (old_id // SEGMENT_ID_STEP + 1) * SEGMENT_ID_STEP
        cdef int fd = self.segs[old].fd, err
        cdef _Hint pending
        cdef int new_fd = self._create_segment(new_id)  # Python I/O (may let other threads run) first
        try:
            # From the flush to the switch the GIL is never released: nothing can be appended in between.
            self._flush_locked(False)
            end = self.appended
            self._activate(new_id, new_fd)
        except BaseException:
            os.close(new_fd)
            os.unlink(os.path.join(self.path, data_name(new_id)))
            raise
        cdef df_buf hint = self.hint
        memset(&self.hint, 0, sizeof(self.hint))
        try:
            with nogil:
                err = io_fsync(fd)
            if err:
                # The next sync() retries this segment's fsync before it acknowledges anything.
                self.unsynced_seg = old
                raise_io(err)
            if end > self.synced:
                self.synced = end
            if self.hints_deferred:
                # Written by write_hints(), off the writer's thread: tens of MB into the page cache took
                # a node's event loop 100 ms and more. Until then (or without it, after a crash) an open
                # reads the segment itself.
                pending = _Hint.__new__(_Hint)
                pending.seg_id = old_id
                pending.data_size = self.segs[old].size
                pending.max_seq = self.seq
                pending.entries = hint
                memset(&hint, 0, sizeof(hint))  # the pending hint owns it now
                self.pending_hints.append(pending)
            else:
                self._write_hint(old_id, &hint, self.segs[old].size)
        finally:
            df_buf_free(&hint)
        _fsync_dir(self.path)  # the new segment's name is durable before the manifest lists it
        self._write_manifest(False)
        return 0

    cdef int _sync_sealed(self) except -1:
        """fsync the sealed segment a failed roll left behind, if any (caller holds io_lock)."""
        cdef int err, fd
        if self.unsynced_seg >= 0:
            fd = self.segs[self.unsynced_seg].fd
            with nogil:
                err = io_fsync(fd)
            if err:
                raise_io(err)
            self.unsynced_seg = -1
        return 0

    cdef int _sync_to(self, uint64_t target) except -1:
        if self.synced >= target:
            return 0
        cdef uint64_t end
        cdef int fd, err
        cdef bint covered
        with nogil:
            pthread_mutex_lock(&self.sync_mutex)
            while self.synced < target and self.sync_leader:
                self.sync_waiting += 1
                pthread_cond_wait(&self.sync_cond, &self.sync_mutex)
                self.sync_waiting -= 1
            covered = self.synced >= target
            if not covered:
                self.sync_leader = True
            pthread_mutex_unlock(&self.sync_mutex)
        if covered:
            return 0  # a leader's fsync covered this write
        # Leader. Let the other writers append first: they are about to wait for this fsync, and each one
        # that gets in now saves an fsync of its own. Wait (without the GIL, a bounded 50 us by default)
        # until as many are waiting as the last group had; one writer alone never waits.
        cdef timespec t0, t1
        cdef int waiting
        with nogil:
            clock_gettime(CLOCK_MONOTONIC, &t0)
            while True:
                pthread_mutex_lock(&self.sync_mutex)
                waiting = self.sync_waiting
                pthread_mutex_unlock(&self.sync_mutex)
                if (waiting + 1) * 100 >= self.last_group * _group_percent:
                    break
                sched_yield()
                clock_gettime(CLOCK_MONOTONIC, &t1)
                if (t1.tv_sec - t0.tv_sec) * 1000000000 + (t1.tv_nsec - t0.tv_nsec) > _group_wait_ns:
                    break
        cdef bint locked = False, woke = False
        try:
            self._lock(self.io_lock)
            locked = True
            self._check_open()
            end = self.appended
            self._sync_sealed()
            self._flush_locked(True)
            # The fsync goes to a copy of the descriptor, without io_lock: writes that fill the buffer meanwhile
            # (an event loop's) flush it and roll segments as ever, instead of waiting for the disk. What this
            # fsync covers was flushed by now; a roll or merge meanwhile cannot close the file from under it.
            fd = c_dup(self.segs[self.active].fd)
            if fd < 0:
                raise OSError(errno, os.strerror(errno))
            PyThread_release_lock(self.io_lock)
            locked = False
            with nogil:
                err = io_fsync(fd)
                c_close(fd)
                # Wake the followers straight from here: they need not wait for this thread's GIL.
                pthread_mutex_lock(&self.sync_mutex)
                if err == 0 and end > self.synced:
                    self.synced = end
                self.last_group = self.sync_waiting + 1
                self.sync_leader = False
                pthread_cond_broadcast(&self.sync_cond)
                pthread_mutex_unlock(&self.sync_mutex)
                woke = True
            self.fsyncs += 1
            if err:
                raise_io(err)
        finally:
            if locked:
                PyThread_release_lock(self.io_lock)
            if not woke:
                with nogil:
                    pthread_mutex_lock(&self.sync_mutex)
                    self.sync_leader = False
                    pthread_cond_broadcast(&self.sync_cond)
                    pthread_mutex_unlock(&self.sync_mutex)
        return 0

    cpdef put(self, key, value, ttl=None):
        """Store value under key (both bytes-like); ``ttl``: it expires that many seconds from now (or never)."""
        if not PyBytes_CheckExact(key):
            key = _to_bytes(key, "key")
        if not PyBytes_CheckExact(value):
            value = _to_bytes(value, "value")
        cdef size_t klen = PyBytes_GET_SIZE(key), vlen = PyBytes_GET_SIZE(value)
        cdef int flags = 0
        cdef uint64_t expires = 0
        cdef size_t extra = 0
        if klen > self.max_key_size:
            raise KeyTooLarge(f"key of {klen} bytes exceeds max_key_size={self.max_key_size}")
        if vlen > self.max_value_size:
            raise ValueTooLarge(f"value of {vlen} bytes exceeds max_value_size={self.max_value_size}")
        if vlen > self.compress_threshold:
            packed = _lz4_compress(value, store_size=True)
            if len(packed) < vlen:
                value = packed
                vlen = len(packed)
                flags = FLAG_LZ4
        if ttl is not None:
            expires = _expires_in(ttl)
            extra = EXPIRES_SIZE
            flags |= FLAG_EXPIRES
        self._add(<const unsigned char *>PyBytes_AS_STRING(key), klen,
                  <const unsigned char *>PyBytes_AS_STRING(value), vlen, flags, expires)
        if extra:
            self.expires[key] = expires
        if self.sync_always:
            self._sync_to(self.appended)

    cdef int _add(self, const unsigned char *key, size_t klen, const unsigned char *val, size_t vlen, int flags,
                  uint64_t expires) except -1:
        """put's record, made and in place: appended, and the keydir pointing at it."""
        cdef size_t size = HEADER_SIZE + klen + (EXPIRES_SIZE if flags & FLAG_EXPIRES else 0) + vlen
        self._room(size)
        cdef uint64_t off = self.buf_base + self.wbuf.len
        self._append(key, klen, val, vlen, flags, expires)
        self._apply(key, klen, self.active, <uint32_t>off, <uint32_t>size, flags, NULL)
        return 0

    cdef int _put_plain(self, const unsigned char *key, size_t klen, const unsigned char *val,
                        size_t vlen) except -1:
        """put(key, value) from C buffers, making no object, of a value put stores as it is: neither compressed
        (not over compress_threshold) nor expiring."""
        if klen > self.max_key_size:
            raise KeyTooLarge(f"key of {klen} bytes exceeds max_key_size={self.max_key_size}")
        if vlen > self.compress_threshold:
            raise ValueError("a value over compress_threshold is put()'s to compress")
        if vlen > self.max_value_size:
            raise ValueTooLarge(f"value of {vlen} bytes exceeds max_value_size={self.max_value_size}")
        self._add(key, klen, val, vlen, 0, 0)
        if self.sync_always:
            self._sync_to(self.appended)
        return 0

    def delete(self, key):
        """Remove key; an absent key is not an error. A tombstone is written either way (see the reference's)."""
        if not PyBytes_CheckExact(key):
            key = _to_bytes(key, "key")
        cdef size_t klen = PyBytes_GET_SIZE(key)
        cdef const unsigned char *k = <const unsigned char *>PyBytes_AS_STRING(key)
        if klen > self.max_key_size:
            raise KeyTooLarge(f"key of {klen} bytes exceeds max_key_size={self.max_key_size}")
        self._check_open()
        self._room(HEADER_SIZE + klen)
        cdef uint64_t off = self.buf_base + self.wbuf.len
        self._append(k, klen, NULL, 0, FLAG_TOMBSTONE, 0)
        self._apply(k, klen, self.active, <uint32_t>off, <uint32_t>(HEADER_SIZE + klen), FLAG_TOMBSTONE, NULL)
        if self.sync_always:
            self._sync_to(self.appended)

    def write_batch(self, ops):
        """Apply [(key, value or None)] atomically: after a crash either all of them or none are there."""
        recs = []
        cdef size_t total = 0, klen, vlen
        cdef int flags
        for key, value in ops:
            if not PyBytes_CheckExact(key):
                key = _to_bytes(key, "key")
            klen = PyBytes_GET_SIZE(key)
            if klen > self.max_key_size:
                raise KeyTooLarge(f"key of {klen} bytes exceeds max_key_size={self.max_key_size}")
            if value is None:
                recs.append((key, b"", FLAG_TOMBSTONE))
                total += HEADER_SIZE + klen
                continue
            if not PyBytes_CheckExact(value):
                value = _to_bytes(value, "value")
            vlen = PyBytes_GET_SIZE(value)
            if vlen > self.max_value_size:
                raise ValueTooLarge(f"value of {vlen} bytes exceeds max_value_size={self.max_value_size}")
            flags = 0
            if vlen > self.compress_threshold:
                packed = _lz4_compress(value, store_size=True)
                if len(packed) < vlen:
                    value = packed
                    flags = FLAG_LZ4
            recs.append((key, value, flags))
            total += HEADER_SIZE + klen + len(value)
        if not recs:
            return
        self._write_batch(recs, total)

    def _write_batch(self, list recs, size_t total):
        self._room(total)
        # From here to the end the GIL is never released: the batch lands in the buffer in one piece.
        cdef size_t start = self.hint.len, last = len(recs) - 1, i = 0
        cdef bytes k, v
        cdef int flags
        for k, v, flags in recs:
            flags |= FLAG_BATCH | (FLAG_COMMIT if i == last else 0)
            self._append(<const unsigned char *>PyBytes_AS_STRING(k), PyBytes_GET_SIZE(k),
                         <const unsigned char *>PyBytes_AS_STRING(v), PyBytes_GET_SIZE(v), flags, 0)
            i += 1
        self._apply_hint(self.active, self.hint.data + start, self.hint.len - start)
        if self.sync_always:
            self._sync_to(self.appended)

    def delete_prefix(self, prefix=b""):
        """Delete every key starting with prefix in one atomic batch; returns how many were deleted."""
        keys = list(self.keys(prefix))
        if self.expires:  # expired keys are still in the keydir (keys() leaves them out): they go too
            now = _now_ms()
            listed = set(keys)
            keys.extend(k for k, e in list(self.expires.items())
                        if now >= <uint64_t>e and k.startswith(prefix) and k not in listed)
        if keys:
            self._write_batch([(k, b"", FLAG_TOMBSTONE) for k in keys],
                              sum(HEADER_SIZE + len(k) for k in keys))
        return len(keys)

    def flush(self):
        """Hand buffered writes to the OS (no fsync)."""
        self._check_open()
        self._lock(self.io_lock)
        try:
            self._check_open()
            self._flush_locked(True)
        finally:
            PyThread_release_lock(self.io_lock)

    def sync(self):
        """Make everything written before this call durable; concurrent callers share one fsync."""
        self._check_open()
        self._sync_to(self.appended)

    # -- asynchronous sync (for event loops) ---------------------------------------------------------
    # Tickets are positions of the write clock (bytes ever appended). sync_request() flushes the buffer
    # (with the GIL, so nothing can be appended half-way) and hands the fsync to the engine's thread; while
    # that fsync runs, further requests only raise bg_requested, and the sync_poll() that collects it starts
    # the next one covering all of them (group commit, one GIL-free fsync per batch).
    cdef int _bg_start(self) except -1:
        cdef int rc
        if self.bg.efd < 0:
            self.bg.efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)
            if self.bg.efd < 0:
                raise OSError(errno, os.strerror(errno))
        if not self.bg_started:
            self.bg.stop = False
            rc = pthread_create(&self.bg_thread, NULL, _bg_main, &self.bg)
            if rc:
                raise OSError(rc, os.strerror(rc))
            self.bg_started = True
        return 0

    cdef int _bg_stop(self) except -1:
        """Let the thread finish the job it has, then join it."""
        if not self.bg_started:
            return 0
        with nogil:
            pthread_mutex_lock(&self.bg.mutex)
            self.bg.stop = True
            pthread_cond_signal(&self.bg.cond)
            pthread_mutex_unlock(&self.bg.mutex)
            pthread_join(self.bg_thread, NULL)
        self.bg_started = False
        return 0

    cdef int _bg_submit(self) except -1:
        """Flush and hand an fsync of everything appended so far to the thread (none in flight)."""
        cdef int fd = -1, fd2 = -1
        cdef int64_t unsynced_id = -1
        cdef uint64_t target
        self._bg_start()
        self.bg_busy = True  # claimed before io_lock, which may let another thread in
        try:
            self._lock(self.io_lock)
            try:
                self._check_open()
                self._flush_locked(False)
                target = self.appended
                fd = c_dup(self.segs[self.active].fd)
                if fd < 0:
                    raise OSError(errno, os.strerror(errno))
                if self.unsynced_seg >= 0:
                    fd2 = c_dup(self.segs[self.unsynced_seg].fd)
                    if fd2 < 0:
                        c_close(fd)
                        raise OSError(errno, os.strerror(errno))
                    unsynced_id = self.segs[self.unsynced_seg].id
            finally:
                PyThread_release_lock(self.io_lock)
        except BaseException:
            self.bg_busy = False
            raise
        self.bg_target = target
        self.bg_unsynced_id = unsynced_id
        pthread_mutex_lock(&self.bg.mutex)  # held only briefly by the thread, which never needs the GIL
        self.bg.fd = fd
        self.bg.fd2 = fd2
        self.bg.job = True
        pthread_cond_signal(&self.bg.cond)
        pthread_mutex_unlock(&self.bg.mutex)
        return 0

    def sync_request(self):
        """Ask for everything written so far to be made durable, without waiting; returns the ticket.
        The write is durable once durable_seq() >= ticket; sync_fd() becomes readable when an fsync
        finishes, and sync_poll() must then be called to collect it (and start the next one)."""
        self._check_open()
        cdef uint64_t ticket = self.appended
        if ticket <= self.synced:
            return ticket
        if ticket > self.bg_requested:
            self.bg_requested = ticket
        if not self.bg_busy:
            self._bg_submit()
        return ticket

    def sync_poll(self):
        """Collect a finished fsync and return durable_seq(); start the next fsync if tickets wait.
        Raises the fsync's error (StorageFull, OSError) when it failed: durable_seq() did not move, and
        every ticket above it must be asked for again."""
        cdef uint64_t junk
        cdef bint done
        cdef int err = 0
        if self.bg.efd >= 0:
            c_read(self.bg.efd, &junk, 8)  # drain; EAGAIN when there was nothing
        pthread_mutex_lock(&self.bg.mutex)
        done = self.bg.done
        if done:
            err = self.bg.err
            self.bg.done = False
            self.bg.err = 0
        pthread_mutex_unlock(&self.bg.mutex)
        if done and self.bg_busy:
            self.bg_busy = False
            if err:
                self.bg_requested = self.synced
                raise_io(err)
            if self.bg_target > self.synced:
                self.synced = self.bg_target
            if (self.bg_unsynced_id >= 0 and not self.closed and self.unsynced_seg >= 0
                    and self.segs[self.unsynced_seg].id == <uint64_t>self.bg_unsynced_id):
                self.unsynced_seg = -1
        if not self.closed and not self.bg_busy and self.bg_requested > self.synced:
            self._bg_submit()
        return self.synced

    def durable_seq(self):
        """Write-clock position known durable: every ticket up to it is on disk."""
        return self.synced

    def sync_fd(self):
        """An eventfd, readable when an fsync asked for by sync_request() has finished (or failed).
        It stays open until the store object is freed, so a watcher may outlive close()."""
        if self.bg.efd < 0:
            self._check_open()
            self._bg_start()
        return self.bg.efd

    # -- reads -------------------------------------------------------------------------------------
    cdef const unsigned char *_locate(self, uint32_t seg, uint32_t off, uint32_t size) except NULL:
        if seg == self.active:
            if off >= self.buf_base:
                return self.wbuf.data + (off - self.buf_base)
            if self.inflight.len and off >= self.infl_base:
                return self.inflight.data + (off - self.infl_base)
        cdef Seg *s = &self.segs[seg]
        if s.map == NULL or <uint64_t>off + size > s.size:
            raise CorruptionError("record lies beyond the end of its segment")
        return s.map + off

    cdef const unsigned char *_checked(self, uint32_t seg, uint32_t off, uint32_t size) except NULL:
        """Where the record lies, once its sizes and checksum are found good."""
        cdef const unsigned char *p = self._locate(seg, off, size)
        if HEADER_SIZE + <size_t>ld16(p + REC_KSIZE) + ld32(p + REC_VSIZE) != size or \
                df_crc32(p + 4, size - 4) != ld32(p + REC_CRC):
            raise CorruptionError("record failed its checksum")
        return p

    cdef int _plain_value(self, const df_item *it, const unsigned char **value, size_t *vlen) except -1:
        """Where the value of the keydir's item lies, read in place (checked as _value_at checks it): 1; or 0,
        and nothing set, when it is not stored as it is (compressed, or carrying an expiry): _value_at's to
        read. The pointer holds until the store changes or the GIL is let go."""
        cdef const unsigned char *p = self._checked(it.seg, it.off, it.size)
        if p[REC_FLAGS] & (FLAG_EXPIRES | FLAG_LZ4):
            return 0
        value[0] = p + HEADER_SIZE + ld16(p + REC_KSIZE)
        vlen[0] = ld32(p + REC_VSIZE)
        return 1

    cdef object _value_at(self, uint32_t seg, uint32_t off, uint32_t size):
        """The record's value; None when it has expired (the record carries its expiry: no lookup needed)."""
        cdef const unsigned char *p = self._checked(seg, off, size)
        cdef size_t klen = ld16(p + REC_KSIZE), vlen = ld32(p + REC_VSIZE)
        if p[REC_FLAGS] & FLAG_EXPIRES:
            if _now_ms() >= ld64(p + HEADER_SIZE + klen):
                return None
            value = PyBytes_FromStringAndSize(<const char *>p + HEADER_SIZE + klen + EXPIRES_SIZE,
                                              vlen - EXPIRES_SIZE)
        else:
            value = PyBytes_FromStringAndSize(<const char *>p + HEADER_SIZE + klen, vlen)
        if p[REC_FLAGS] & FLAG_LZ4:
            try:
                return _lz4_decompress(value)
            except Exception as exc:
                raise CorruptionError("compressed value does not decode") from exc
        return value

    @cython.always_allow_keywords(False)  # METH_O: the cheapest call from Python
    def get(self, key):
        """The value of key, or None when absent. CorruptionError when its record fails its checksum."""
        if not PyBytes_CheckExact(key):
            key = _to_bytes(key, "key")
        if self.closed:
            raise StoreClosed("the store is closed")
        cdef df_item *it = df_kd_find(&self.kd, <const unsigned char *>PyBytes_AS_STRING(key),
                                      PyBytes_GET_SIZE(key))
        if it == NULL:
            return None
        return self._value_at(it.seg, it.off, it.size)

    cdef bint _expired(self, key):
        """Whether the present key has expired."""
        cdef PyObject *expires = PyDict_GetItem(self.expires, key)  # borrowed: no reference counting
        return expires != NULL and _now_ms() >= PyLong_AsUnsignedLongLong(<object>expires)

    def expires_at(self, key):
        """When key expires (ms since the epoch); None when it never does or is absent."""
        if not PyBytes_CheckExact(key):
            key = _to_bytes(key, "key")
        self._check_open()
        if not self.expires or df_kd_find(&self.kd, <const unsigned char *>PyBytes_AS_STRING(key),
                                          PyBytes_GET_SIZE(key)) == NULL:
            return None
        return self.expires.get(key)

    def __contains__(self, key):
        if not PyBytes_CheckExact(key):
            key = _to_bytes(key, "key")
        self._check_open()
        if df_kd_find(&self.kd, <const unsigned char *>PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key)) == NULL:
            return False
        return not (self.expires and self._expired(key))

    def __len__(self):
        return self.count()

    def count(self, prefix=b""):
        """Number of live keys starting with prefix (expired ones are not)."""
        if not PyBytes_CheckExact(prefix):
            prefix = _to_bytes(prefix, "prefix")
        self._check_open()
        cdef size_t plen = PyBytes_GET_SIZE(prefix), pos = 0, end = self.kd.arena_len, n = 0, expired = 0
        cdef uint64_t now
        if self.expires:
            now = _now_ms()
            for k, e in self.expires.items():
                if now >= <uint64_t>e and k.startswith(prefix):
                    expired += 1
        if plen == 0:
            return self.kd.count - expired
        cdef const unsigned char *p = <const unsigned char *>PyBytes_AS_STRING(prefix)
        if plen == 1:  # the key index keeps these counts (INFO asks for the objects' on every call)
            return self.kd.first[p[0]] - expired
        while True:
            pos = df_kd_next(&self.kd, pos, end, p, plen)
            if pos >= end:
                return n - expired
            n += 1
            pos += df_item_span(df_kd_item(&self.kd, pos).klen)

    cdef _Iter _iter(self, prefix, bint values):
        if not PyBytes_CheckExact(prefix):
            prefix = _to_bytes(prefix, "prefix")
        self._check_open()
        cdef _Iter it = _Iter.__new__(_Iter)
        it.store = self
        it.pos = 0
        it.end = self.kd.arena_len
        it.prefix = prefix
        it.values = values
        it.counted = True
        self.iterators += 1
        return it

    def keys(self, prefix=b""):
        """Iterator over live keys with prefix (unordered). Keys present for the whole iteration are
        yielded exactly once; keys added or deleted meanwhile may or may not be; none twice."""
        return self._iter(prefix, False)

    def items(self, prefix=b""):
        """Iterator over (key, value) with prefix; same guarantees as keys()."""
        return self._iter(prefix, True)

    # -- merge -------------------------------------------------------------------------------------
    def _pick(self, threshold):
        cdef uint32_t i
        cdef Seg *s
        picked = []
        expired = self._expired_bytes()
        for i in range(self.nsegs):
            s = &self.segs[i]
            if s.fd < 0 or i == self.active:
                continue
            total = s.live + s.dead
            dead = s.dead + expired.get(i, 0)
            if threshold is None:
                if dead > 0 or s.size < self.segment_size // 4:
                    picked.append((s.id, i))
            elif total and dead / total >= threshold:
                picked.append((s.id, i))
        if threshold is None and len(picked) == 1 and \
                self.segs[picked[0][1]].dead + expired.get(picked[0][1], 0) == 0:
            return []  # one small segment alone: nothing to gain
        picked.sort()
        return [slot for _, slot in picked]

    def _expired_bytes(self):
        """Segment slot -> bytes of its records whose keys have expired: dead to a merge, though still in the
        keydir until one drops them."""
        out = {}
        cdef df_item *it
        cdef uint64_t now
        if self.expires:
            now = _now_ms()
            for k, e in self.expires.items():
                if now >= <uint64_t>e:
                    it = df_kd_find(&self.kd, <const unsigned char *>PyBytes_AS_STRING(k), PyBytes_GET_SIZE(k))
                    if it != NULL:
                        out[it.seg] = out.get(it.seg, 0) + it.size
        return out

    def _sealed_ids(self):
        cdef uint32_t i
        return [self.segs[i].id for i in range(self.nsegs) if self.segs[i].fd >= 0 and i != self.active]

    def defer_hints(self, bint defer=True):
        """Whether a roll leaves its sealed segment's hint file to ``write_hints()`` (a store whose own thread
        calls it) instead of writing it on the writer's thread."""
        self.hints_deferred = defer
        if not defer:
            self.write_hints()

    cdef int _write_pending_locked(self) except -1:
        """write_hints() for a caller holding merge_lock."""
        cdef _Hint pending
        cdef uint32_t i
        while self.pending_hints:
            pending = self.pending_hints.pop(0)
            for i in range(self.nsegs):
                if self.segs[i].fd >= 0 and self.segs[i].id == pending.seg_id:
                    self._write_hint_at(pending.seg_id, &pending.entries, pending.data_size, pending.max_seq)
                    break
        return 0

    def write_hints(self, bint wait=True):
        """Write the hint files rolls left pending; those of segments merged away since are dropped. Without
        ``wait``, a merge running leaves them for the next call. Returns whether none is left pending."""
        if not self.pending_hints:
            return True
        # No merge drops a segment (and its hint file) meanwhile.
        if wait:
            self._lock(self.merge_lock)
        elif not PyThread_acquire_lock(self.merge_lock, NOWAIT_LOCK):
            return False
        try:
            if not self.closed:
                self._write_pending_locked()
        finally:
            PyThread_release_lock(self.merge_lock)
        return True

    def needs_merge(self, threshold):
        """Whether some sealed segment's dead ratio is at least threshold."""
        self._check_open()
        return bool(self._pick(threshold))

    def merge(self, threshold=None):
        """Rewrite the live records of segments whose dead ratio is at least threshold (None: every
        sealed segment with dead bytes, the active one sealed first, and small segments) into new
        segments, then drop the old ones. Returns the number of segments merged."""
        self._check_open()
        self._lock(self.merge_lock)
        try:
            self._lock(self.io_lock)
            try:
                self._check_open()
                if threshold is None and (self.segs[self.active].dead > 0 or self.buf_base + self.wbuf.len > 0):
                    self._roll_locked()
                inputs = self._pick(threshold)
                if not inputs:
                    return 0
                need = 2
                for i in inputs:
                    need += self.segs[<uint32_t>i].size // self.segment_size
                sealed_top = max(self._sealed_ids())
                if self.segs[self.active].id - sealed_top - 1 < need:
                    self._roll_locked()  # make room for the outputs' ids below the active segment
                    sealed_top = max(self._sealed_ids())
                input_ids = set()
                for i in inputs:
                    input_ids.add(self.segs[<uint32_t>i].id)
                kept = [i for i in self._sealed_ids() if i not in input_ids]
                oldest_kept = min(kept) if kept else None
            finally:
                PyThread_release_lock(self.io_lock)
            self._merge(inputs, sealed_top + 1, oldest_kept)
            self.merges += 1
            return len(inputs)
        finally:
            PyThread_release_lock(self.merge_lock)

    def _merge(self, list inputs, uint64_t next_id, oldest_kept):
        outputs = []
        seen_tombstones = set()
        cdef _Output out = None
        cdef uint32_t slot, rsize, roff
        cdef uint16_t klen
        cdef uint8_t flags
        cdef uint64_t seg_id, mseq = 0, max_seq
        cdef int64_t valid_end
        cdef size_t pos, size
        cdef size_t corrupt = 0
        cdef int err
        cdef const unsigned char *m
        cdef const unsigned char *key
        cdef unsigned char *rec
        cdef df_buf entries, out_tomb
        cdef Move mv
        cdef uint64_t now = _now_ms()
        cdef const unsigned char *src
        cdef unsigned char *tomb
        cdef uint8_t *live = NULL
        cdef size_t j, nentries
        memset(&entries, 0, sizeof(entries))
        memset(&out_tomb, 0, sizeof(out_tomb))
        try:
            for slot in inputs:
                seg_id = self.segs[slot].id
                m = self.segs[slot].map
                size = self.segs[slot].size
                entries.len = 0
                # Sealed segments are immutable and only a merge (this one) deletes them.
                with nogil:
                    valid_end = scan_records(m, size, &entries, &mseq, &corrupt)
                if valid_end < 0:
                    raise MemoryError()
                free(live)
                live = <uint8_t *>malloc(entries.len // HINT_ENTRY_SIZE + 1)
                if live == NULL:
                    raise MemoryError()
                # Which records are live, looked up without the GIL: the event loop's thread keeps serving. A
                # record that dies after its lookup is copied all the same, and _swap_in moves only keys that
                # still point at the old place; a key put again after its tombstone's lookup has a newer
                # record, which the kept tombstone cannot hide.
                self.kd_shared = True
                try:
                    with nogil:
                        nentries = look_up_live(&self.kd, &self.kd_mutex, &self.kd_waiters, entries.data,
                                                entries.len, slot, live)
                finally:
                    self.kd_shared = False
                pos = 0
                for j in range(nentries):
                    roff = ld32(entries.data + pos + HINT_OFF)
                    rsize = ld32(entries.data + pos + HINT_SIZE)
                    klen = ld16(entries.data + pos + HINT_KSIZE)
                    flags = entries.data[pos + HINT_FLAGS]
                    key = entries.data + pos + HINT_ENTRY_SIZE
                    pos += hint_span(entries.data + pos)
                    if j % 4096 == 4095:
                        with nogil:
                            pass  # let readers and writers in between chunks
                    if not live[j]:
                        continue  # dead, or a tombstone whose key is there again
                    src = m + roff
                    if flags & FLAG_TOMBSTONE:
                        # Keep it while an older segment that stays could still hold a value for the key.
                        if oldest_kept is None or oldest_kept > seg_id:
                            continue
                        kb = PyBytes_FromStringAndSize(<const char *>key, klen)
                        if kb in seen_tombstones:
                            continue
                        seen_tombstones.add(kb)
                    elif flags & FLAG_EXPIRES and now >= ld64(key + klen):
                        # Expired: its value goes, and its key with it when the swap finds it still pointing
                        # here. A tombstone takes its place while an older segment that stays could still hold
                        # a value for the key.
                        if oldest_kept is None or oldest_kept > seg_id:
                            continue
                        if df_buf_reserve(&out_tomb, HEADER_SIZE + klen) < 0:
                            raise MemoryError()
                        tomb = out_tomb.data
                        st64(tomb + REC_SEQ, ld64(m + roff + REC_SEQ))
                        st32(tomb + REC_VSIZE, 0)
                        st16(tomb + REC_KSIZE, klen)
                        tomb[REC_FLAGS] = FLAG_TOMBSTONE
                        memcpy(tomb + HEADER_SIZE, key, klen)
                        st32(tomb + REC_CRC, df_crc32(tomb + 4, HEADER_SIZE + klen - 4))
                        src = tomb
                        rsize = HEADER_SIZE + klen
                        flags = FLAG_TOMBSTONE
                    if out is None or (out.size + out.data.len > 0
                                       and out.size + out.data.len + rsize > self.segment_size):
                        if out is not None:
                            out.write()
                        out = _Output.__new__(_Output)
                        out.seg_id = next_id
                        next_id += 1
                        out.tmp = os.path.join(self.path, data_name(out.seg_id) + ".tmp")
                        out.fd = os.open(out.tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
                        outputs.append(out)
                    mv.old_seg = slot
                    mv.old_off = roff
                    mv.size = rsize
                    mv.new_off = <uint32_t>(out.size + out.data.len)
                    mv.hint_pos = out.hint.len
                    if df_buf_append(&out.data, src, rsize) < 0:
                        raise MemoryError()
                    if flags & (FLAG_BATCH | FLAG_COMMIT):
                        flags &= ~(FLAG_BATCH | FLAG_COMMIT)  # every copied record stands alone
                        rec = out.data.data + out.data.len - rsize
                        rec[REC_FLAGS] = flags
                        st32(rec + REC_CRC, df_crc32(rec + 4, rsize - 4))
                    if hint_entry(&out.hint, mv.new_off, rsize, key, klen, flags, key + klen) < 0:
                        raise MemoryError()
                    if flags & FLAG_TOMBSTONE:
                        out.tombs += rsize
                    elif df_buf_append(&out.moves, &mv, sizeof(Move)) < 0:
                        raise MemoryError()
                    if out.data.len >= self.write_buffer_size:
                        out.write()
            for out in outputs:
                out.write()
                with nogil:
                    err = io_fsync(out.fd)
                if err:
                    raise_io(err)
                self._write_hint(out.seg_id, &out.hint, out.size)
                os.rename(out.tmp, os.path.join(self.path, data_name(out.seg_id)))
            _fsync_dir(self.path)
        except BaseException:
            for out in outputs:
                for p in (out.tmp, os.path.join(self.path, data_name(out.seg_id)),
                          os.path.join(self.path, hint_name(out.seg_id))):
                    if os.path.exists(p):
                        os.unlink(p)
            raise
        finally:
            free(live)
            df_buf_free(&entries)
            df_buf_free(&out_tomb)
        self._lock(self.io_lock)  # no roll writes the manifest meanwhile
        try:
            gone = self._swap_in(outputs, inputs)
        finally:
            PyThread_release_lock(self.io_lock)
        # Unlinking a segment frees its cached pages, tens of ms for a full one: without io_lock, which the
        # writers need. merge_lock, still held, keeps their ids from being reused meanwhile.
        # Oldest first: a tombstone outlives every older value it hides.
        for seg_id in gone:
            hp = os.path.join(self.path, hint_name(seg_id))
            if os.path.exists(hp):
                os.unlink(hp)
            os.unlink(os.path.join(self.path, data_name(seg_id)))

    def _swap_in(self, list outputs, list inputs):
        """Put a merge's outputs in place of its inputs (holds merge_lock and io_lock); returns the ids of the
        inputs whose files can go."""
        # The GIL is held up to the manifest's write, so readers see the old or the new layout.
        cdef _Output out
        cdef uint32_t slot
        cdef uint16_t klen
        cdef const unsigned char *key
        cdef df_item *it
        cdef uint32_t nslot
        cdef Move *mvs
        cdef size_t j, nmoves
        cdef uint32_t hashes[AHEAD]
        cdef const unsigned char *ahead_key
        for out in outputs:
            nslot = self._new_seg(out.seg_id, out.fd, out.size, out.size)
            out.fd = -1  # the segment table owns it now
            # Tombstones a merge had to keep count as live: merging them again would gain nothing.
            self.segs[nslot].live = out.tombs
            self.segs[nslot].dead = out.size - out.tombs
            mvs = <Move *>out.moves.data
            nmoves = out.moves.len // sizeof(Move)
            for j in range(min(nmoves, AHEAD)):
                key = out.hint.data + mvs[j].hint_pos
                hashes[j % AHEAD] = df_hash(key + HINT_ENTRY_SIZE, ld16(key + HINT_KSIZE))
                df_kd_prefetch_slot(&self.kd, hashes[j % AHEAD])
            for j in range(nmoves):
                # As in _merge: the lookups' memory asked for ahead.
                if j + AHEAD // 2 < nmoves:
                    df_kd_prefetch_item(&self.kd, hashes[(j + AHEAD // 2) % AHEAD])
                key = out.hint.data + mvs[j].hint_pos
                klen = ld16(key + HINT_KSIZE)
                it = df_kd_find_h(&self.kd, key + HINT_ENTRY_SIZE, klen, hashes[j % AHEAD])
                if j + AHEAD < nmoves:
                    ahead_key = out.hint.data + mvs[j + AHEAD].hint_pos
                    hashes[j % AHEAD] = df_hash(ahead_key + HINT_ENTRY_SIZE, ld16(ahead_key + HINT_KSIZE))
                    df_kd_prefetch_slot(&self.kd, hashes[j % AHEAD])
                if it != NULL and it.seg == mvs[j].old_seg and it.off == mvs[j].old_off:
                    it.seg = nslot
                    it.off = mvs[j].new_off
                    self.segs[nslot].live += mvs[j].size
                    self.segs[nslot].dead -= mvs[j].size
                    self.segs[mvs[j].old_seg].live -= mvs[j].size
        cdef bint stale = False
        for slot in inputs:
            if self.segs[slot].live:
                stale = True
        if stale:
            self._forget(inputs)
        gone = [self.segs[<uint32_t>slot].id for slot in inputs]
        for slot in inputs:
            self._drop_seg(slot, False)
        # The inputs' files go only once the manifest no longer lists them; if it could not be written
        # they stay, and the next open replays them before the outputs (as after a crash here).
        return gone if self._write_manifest(False) else []

    def _forget(self, list inputs):
        """Drop keydir entries still pointing into merged segments: their records were damaged, or expired."""
        cdef set slots = set(inputs)
        cdef size_t pos = 0, end = self.kd.arena_len
        cdef df_item *it
        cdef df_item old
        while pos < end:
            it = df_kd_item(&self.kd, pos)
            pos += df_item_span(it.klen)
            if it.seg != DF_DEAD and it.seg in slots:
                if self.expires:
                    self.expires.pop(PyBytes_FromStringAndSize(<const char *>it.key, it.klen), None)
                df_kd_remove(&self.kd, it.key, it.klen, &old)

    def _check_keydir(self):
        """Test hook: (key, slot, offset) of keydir entries that point outside a live segment's data."""
        self._check_open()
        cdef size_t pos = 0
        cdef df_item *it
        cdef uint64_t limit
        bad = []
        while pos < self.kd.arena_len:
            it = df_kd_item(&self.kd, pos)
            pos += df_item_span(it.klen)
            if it.seg == DF_DEAD:
                continue
            limit = 0
            if it.seg < self.nsegs:
                limit = self.segs[it.seg].size
                if it.seg == self.active:
                    limit = self.buf_base + self.wbuf.len
            if it.seg >= self.nsegs or self.segs[it.seg].fd < 0 or it.off + it.size > limit:
                bad.append((it.seg, it.off, it.size, limit, self.active,
                            PyBytes_FromStringAndSize(<const char *>it.key, it.klen)))
        return bad

    # -- stats / close ---------------------------------------------------------------------------
    def stats(self):
        """Counters: keys, live_bytes, dead_bytes, segments, keydir_bytes, keydir_bytes_per_key, ..."""
        self._check_open()
        cdef uint32_t i
        cdef uint64_t live = 0, dead = 0, disk = 0, nseg = 0, key_bytes = 0
        cdef size_t pos = 0
        cdef df_item *it
        for i in range(self.nsegs):
            if self.segs[i].fd >= 0:
                live += self.segs[i].live
                dead += self.segs[i].dead
                disk += self.segs[i].size
                nseg += 1
        while pos < self.kd.arena_len:
            it = df_kd_item(&self.kd, pos)
            if it.seg != DF_DEAD:
                key_bytes += it.klen
            pos += df_item_span(it.klen)
        n = self.kd.count
        mem = df_kd_memory(&self.kd)
        return {
            "keys": n,
            "live_bytes": live,
            "dead_bytes": dead,
            "segments": nseg,
            "disk_bytes": disk,
            "buffer_bytes": self.wbuf.len + self.inflight.len,
            "keydir_bytes": mem,
            "keydir_allocated_bytes": df_kd_allocated(&self.kd),
            "fsyncs": self.fsyncs + self.bg.fsyncs,
            "keydir_bytes_per_key": mem / n if n else 0.0,
            "keydir_overhead_per_key": (mem - key_bytes) / n if n else 0.0,
            "seq": self.seq,
            "merges": self.merges,
            "implementation": "compiled",
        }

    def close(self):
        """Flush, fsync, seal the active segment with its hint, close every file. Idempotent.
        A failure (disk full) leaves the store open so the caller can retry."""
        if self.closed:
            return
        cdef int err, fd
        cdef uint64_t junk
        self._lock(self.merge_lock)
        try:
            self._lock(self.io_lock)
            try:
                if self.closed:
                    return
                # Closed from here (other threads get StoreClosed instead of writing into a closing
                # store); reopened below if the final flush fails.
                self.closed = True
                self._bg_stop()  # its last job is finished (and collectable) after this
                try:
                    self._sync_sealed()
                    self._flush_locked(False)
                    fd = self.segs[self.active].fd
                    if self.segs[self.active].size:
                        with nogil:
                            err = io_fsync(fd)
                        if err:
                            raise_io(err)
                    listed = self._write_manifest(True)
                except BaseException:
                    self.closed = False
                    raise
                # Everything is durable now: wake a watcher so its waiters resolve.
                if self.appended > self.synced:
                    self.synced = self.appended
                self.bg_requested = self.synced
                pthread_mutex_lock(&self.bg.mutex)
                self.bg.err = 0
                self.bg.done = True
                pthread_mutex_unlock(&self.bg.mutex)
                if self.bg.efd >= 0:
                    junk = 1
                    c_write(self.bg.efd, &junk, 8)
                self._write_pending_locked()
                if self.segs[self.active].size:
                    self._write_hint(self.segs[self.active].id, &self.hint, self.segs[self.active].size)
                elif listed:  # unlisted first: a listed file is never missing
                    os.unlink(os.path.join(self.path, data_name(self.segs[self.active].id)))
                self._release_all()
            finally:
                PyThread_release_lock(self.io_lock)
        finally:
            PyThread_release_lock(self.merge_lock)
