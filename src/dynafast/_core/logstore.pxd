# The log-structured storage engine (Bitcask's design): segments, keydir, write buffer, merge.
from cpython.pythread cimport PyThread_type_lock
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int64_t


cdef extern from "keydir.h" nogil:
    ctypedef struct df_buf:
        unsigned char *data
        size_t len
        size_t cap

    ctypedef struct df_item:
        uint16_t seg
        uint16_t klen
        uint32_t off
        uint32_t size
        unsigned char key[4]

    ctypedef struct df_keydir:
        size_t count
        size_t first[256]
        size_t arena_len
        size_t arena_dead
        unsigned char *arena

    const uint32_t DF_DEAD
    const uint32_t DF_MAX_SEGS
    void df_crc_init()
    uint32_t df_crc32(const unsigned char *p, size_t n)
    int df_buf_reserve(df_buf *b, size_t extra)
    int df_buf_append(df_buf *b, const void *p, size_t n)
    void df_buf_free(df_buf *b)
    size_t df_item_span(size_t klen)
    df_item *df_kd_item(df_keydir *kd, size_t pos)
    int df_kd_init(df_keydir *kd)
    void df_kd_free(df_keydir *kd)
    size_t df_kd_memory(const df_keydir *kd)
    size_t df_kd_allocated(const df_keydir *kd)
    uint32_t df_hash(const unsigned char *p, size_t n)
    df_item *df_kd_find(const df_keydir *kd, const unsigned char *key, size_t klen)
    df_item *df_kd_find_h(const df_keydir *kd, const unsigned char *key, size_t klen, uint32_t h)
    void df_kd_prefetch_slot(const df_keydir *kd, uint32_t h)
    void df_kd_prefetch_item(const df_keydir *kd, uint32_t h)
    int df_kd_put(df_keydir *kd, const unsigned char *key, size_t klen, uint32_t seg, uint32_t off,
                  uint32_t size, df_item *old)
    int df_kd_remove(df_keydir *kd, const unsigned char *key, size_t klen, df_item *old)
    int df_kd_compact(df_keydir *kd)
    size_t df_kd_next(const df_keydir *kd, size_t pos, size_t end, const unsigned char *prefix, size_t plen)


cdef extern from "<pthread.h>" nogil:
    ctypedef struct pthread_mutex_t:
        pass
    ctypedef struct pthread_cond_t:
        pass
    int pthread_mutex_init(pthread_mutex_t *m, const void *attr)
    int pthread_mutex_destroy(pthread_mutex_t *m)
    int pthread_mutex_lock(pthread_mutex_t *m)
    int pthread_mutex_trylock(pthread_mutex_t *m)
    int pthread_mutex_unlock(pthread_mutex_t *m)
    int pthread_cond_init(pthread_cond_t *c, const void *attr)
    int pthread_cond_destroy(pthread_cond_t *c)
    int pthread_cond_wait(pthread_cond_t *c, pthread_mutex_t *m)
    int pthread_cond_broadcast(pthread_cond_t *c)
    int pthread_cond_signal(pthread_cond_t *c)
    ctypedef struct pthread_t:
        pass
    int pthread_create(pthread_t *t, const void *attr, void *(*start)(void *) noexcept nogil, void *arg)
    int pthread_join(pthread_t t, void **ret)


# Every on-disk field width, in one place (the reference dynafast._ref.logstore packs the same):
#   record  = crc:4 | seq:8 | value_size:4 | key_size:2 | flags:1 | key | value      -> HEADER_SIZE 19
#             (little-endian; crc = CRC-32, zlib polynomial, of every byte after the crc field)
#   hint    = entry* | trailer
#   entry   = offset:4 | size:4 | key_size:2 | flags:1 | key [| expires:8 with FLAG_EXPIRES]  -> HINT_ENTRY_SIZE 11
#   a record flagged EXPIRES has expires:8 (ms since the epoch) first in its value field
#   trailer = data_size:8 | max_seq:8 | count:4 | crc:4                              -> HINT_TRAILER_SIZE 24
#             (crc of every hint byte before it; data_size must equal the data file's size)
#   MANIFEST = active:8 | count:4 | (seg_id:8 | size:8) * count | crc:4
#             (the sealed segments at their fsync'd sizes, and the active one: 2**64-1 after a clean close;
#             crc of every byte before it)
cdef enum:
    REC_CRC = 0
    REC_SEQ = 4
    REC_VSIZE = 12
    REC_KSIZE = 16
    REC_FLAGS = 18
    HEADER_SIZE = 19
    HINT_OFF = 0
    HINT_SIZE = 4
    HINT_KSIZE = 8
    HINT_FLAGS = 10
    HINT_ENTRY_SIZE = 11
    HINT_TRAILER_SIZE = 24

cdef enum:
    FLAG_TOMBSTONE = 0x01
    FLAG_LZ4 = 0x02
    FLAG_BATCH = 0x04    # part of a write_batch: applied only once the batch's COMMIT record is seen
    FLAG_COMMIT = 0x08   # last record of a write_batch
    FLAG_EXPIRES = 0x10  # the value begins with expires:8, when the key expires (ms since the epoch)
    EXPIRES_SIZE = 8

cdef enum:
    MAX_KEY_SIZE = 0xFFFF          # key_size is 2 bytes
    MAX_VALUE_SIZE = 0x7FFFFFFF    # keeps offset + record size within the keydir's 4-byte fields
    MAX_SEGMENT_SIZE = 0x7FFFFFFF
    SEGMENT_ID_STEP = 0x10000      # room for merge outputs between two ordinary segment ids
    NO_SEG = 0xFFFFFFFF


# One segment file. The keydir stores the index of its Seg in LogStore.segs, not the file id.
cdef struct Seg:
    uint64_t id
    int fd              # -1: free slot
    unsigned char *map  # read-only shared mapping (NULL when empty)
    size_t map_len
    uint64_t size       # bytes in the file (active segment: bytes flushed)
    uint64_t live
    uint64_t dead


# Asynchronous sync: the engine's own fsync thread (no GIL, ever) and what it shares with the callers.
# Every field is guarded by mutex; the thread touches nothing else of the store.
cdef struct BgSync:
    pthread_mutex_t mutex
    pthread_cond_t cond
    int efd             # eventfd written after each finished fsync (-1 until first asked for)
    bint stop
    bint job            # fd/fd2 wait for the thread
    bint done           # a finished fsync not collected yet by sync_poll()
    int fd              # dup of the active segment's fd (the thread closes it)
    int fd2             # dup of a sealed segment whose fsync failed at roll time, or -1
    int err             # errno of the finished fsync, 0 when it succeeded
    uint64_t fsyncs


cdef class LogStore


# keys()/items() iterator: walks the keydir arena by position up to where it ended at creation.
cdef class _Iter:
    cdef LogStore store
    cdef size_t pos
    cdef size_t end
    cdef bytes prefix
    cdef bint values
    cdef bint counted
    cdef void _done(self) noexcept


cdef class LogStore:
    cdef readonly str path
    cdef readonly bint closed
    cdef readonly uint64_t segment_size
    cdef readonly uint64_t max_key_size
    cdef readonly uint64_t max_value_size
    cdef readonly uint64_t compress_threshold
    cdef readonly uint64_t write_buffer_size
    cdef readonly bint sync_always

    cdef df_keydir kd
    # A merge looks up liveness without the GIL, holding kd_mutex a chunk at a time; while kd_shared says one
    # does, every change to the keydir (all made with the GIL) takes kd_mutex too.
    cdef pthread_mutex_t kd_mutex
    cdef bint kd_shared
    cdef int kd_waiters       # writers waiting for kd_mutex: the merge lets them in before its next chunk
    cdef Seg *segs
    cdef uint32_t nsegs       # slots allocated in segs
    cdef uint32_t active      # slot of the segment being appended to
    cdef df_buf wbuf          # appends not yet handed to the OS; starts at file offset buf_base
    cdef df_buf inflight      # being written right now (GIL released), starts at infl_base
    cdef df_buf hint          # hint entries of the active segment
    cdef uint64_t buf_base
    cdef uint64_t infl_base
    cdef uint64_t seq
    cdef uint64_t appended    # bytes ever appended: the clock group commit compares against
    cdef uint64_t synced      # bytes of those known durable
    cdef uint64_t merges
    cdef uint64_t fsyncs
    cdef int64_t unsynced_seg # a sealed segment whose fsync failed at roll time (-1: none)
    # Group commit: one leader fsyncs at a time; the others sleep on sync_cond (without the GIL) and
    # return as soon as `synced` covers their write, without queueing on a lock one after another.
    cdef pthread_mutex_t sync_mutex
    cdef pthread_cond_t sync_cond
    cdef bint sync_leader
    cdef int sync_waiting     # followers sleeping on sync_cond
    cdef int last_group       # writers the last fsync covered: the next leader waits for that many
    cdef bint sync_init
    # Asynchronous sync (sync_request / sync_poll): the fields below BgSync are touched only with the GIL.
    cdef BgSync bg
    cdef pthread_t bg_thread
    cdef bint bg_started
    cdef bint bg_busy         # a job was handed to the thread and sync_poll() has not collected it yet
    cdef uint64_t bg_requested  # highest ticket asked for
    cdef uint64_t bg_target   # what the job in flight makes durable
    cdef int64_t bg_unsynced_id  # id of the sealed segment the job retries (-1: none)
    cdef Py_ssize_t iterators # open iterators: the arena is not compacted under them
    cdef dict rec             # what opening found (the recovery property)
    cdef dict expires         # key -> when it expires (ms since the epoch), for keys put with a TTL
    cdef PyThread_type_lock io_lock     # flush, fsync, roll (taken before the GIL-protected state)
    cdef PyThread_type_lock merge_lock  # one merge (or close) at a time
    cdef bint hints_deferred  # a roll leaves its hint to write_hints() (see defer_hints)
    cdef list pending_hints   # _Hint of sealed segments whose hint files are not written yet

    cdef int _check_open(self) except -1
    cpdef put(self, key, value, ttl=*)
    cdef int _lock(self, PyThread_type_lock lock) except -1
    cdef int64_t _new_seg(self, uint64_t seg_id, int fd, uint64_t size, size_t map_len) except -1
    cdef int _drop_seg(self, uint32_t slot, bint unlink) except -1
    cdef int _apply(self, const unsigned char *key, size_t klen, uint32_t seg, uint32_t off,
                    uint32_t size, int flags, const unsigned char *expires) except -1
    cdef int _index(self, const unsigned char *key, size_t klen, uint32_t seg, uint32_t off, uint32_t size,
                    int flags) noexcept nogil
    cdef int _apply_hint(self, uint32_t seg, const unsigned char *p, size_t n) except -1
    cdef int _open_active(self, uint64_t seg_id) except -1
    cdef int _activate(self, uint64_t seg_id, int fd) except -1
    cdef int _append(self, const unsigned char *key, size_t klen, const unsigned char *val, size_t vlen,
                     int flags, uint64_t expires) except -1
    cdef int _room(self, size_t size) except -1
    cdef int _add(self, const unsigned char *key, size_t klen, const unsigned char *val, size_t vlen, int flags,
                  uint64_t expires) except -1
    cdef int _put_plain(self, const unsigned char *key, size_t klen, const unsigned char *val,
                        size_t vlen) except -1
    cdef int _flush_locked(self, bint release_gil) except -1
    cdef int _roll_locked(self) except -1
    cdef int _sync_to(self, uint64_t target) except -1
    cdef int _sync_sealed(self) except -1
    cdef int _bg_start(self) except -1
    cdef int _bg_submit(self) except -1
    cdef int _bg_stop(self) except -1
    cdef const unsigned char *_locate(self, uint32_t seg, uint32_t off, uint32_t size) except NULL
    cdef const unsigned char *_checked(self, uint32_t seg, uint32_t off, uint32_t size) except NULL
    cdef int _plain_value(self, const df_item *it, const unsigned char **value, size_t *vlen) except -1
    cdef object _value_at(self, uint32_t seg, uint32_t off, uint32_t size)
    cdef bint _expired(self, key)
    cdef int _release_all(self) except -1
    cdef _Iter _iter(self, prefix, bint values)
    cdef int _write_hint(self, uint64_t seg_id, df_buf *entries, uint64_t data_size) except -1
    cdef int _write_hint_at(self, uint64_t seg_id, df_buf *entries, uint64_t data_size, uint64_t max_seq) except -1
    cdef int _write_pending_locked(self) except -1
