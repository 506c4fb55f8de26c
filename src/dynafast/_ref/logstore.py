"""Plain-Python reference of the log-structured storage engine (Bitcask's design).

Same on-disk format and same class API as the compiled ``dynafast._core.logstore``; the keydir is a dict
``key -> (segment id, offset, record size)``. The tests run every behaviour on both.

On-disk format (little-endian; the compiled twin declares the same widths in ``logstore.pxd``)::

    record  = crc:u32 | seq:u64 | value_size:u32 | key_size:u16 | flags:u8 | key | value     (19-byte header)
              crc is CRC-32 (zlib's polynomial) of every byte after the crc field. With flag EXPIRES the
              value field begins with expires:u64 (ms since the epoch), then the (maybe compressed) value.
    hint    = entries, then trailer
    entry   = offset:u32 | size:u32 | key_size:u16 | flags:u8 | key [| expires:u64 with flag EXPIRES]
    trailer = data_size:u64 | max_seq:u64 | count:u32 | crc:u32                            (24 bytes)
              crc covers every byte of the hint file before it; data_size must equal the data file's size.
    MANIFEST = active:u64 | count:u32 | (seg_id:u64 | size:u64) * count | crc:u32
              the segments that make up the store: the sealed ones (fsync'd, at that size) and the active one
              (NO_ACTIVE after a clean close); crc covers every byte before it.

Segments are ``<id:016x>.data`` with an optional ``<id:016x>.hint``; files being written by a merge end in
``.tmp`` until they are complete. Ordinary segments get ids that are multiples of 2**16; a merge names its
outputs just after the newest sealed segment, so replaying segments in id order always replays older data
first (merge outputs hold only the newest version of each key as of the merge).

The manifest changes only when a segment is sealed, created or merged away (never per write), always by
write-then-rename with the directory fsync'd: a segment is listed only once its file's name is durable, and
unlisted before its file is unlinked. On open it tells which segments must be there and how long the sealed
ones are, so recovery can say whether it lost anything (``LogStore.recovery``).
"""
import errno as _errno
import os
import struct
import threading
import time
import zlib

import lz4.block

from dynafast.errors import CorruptionError, KeyTooLarge, StorageFull, StoreClosed, ValueTooLarge

# -- format ---------------------------------------------------------------------------------------
HEADER = struct.Struct("<IQIHB")  # crc, seq, value_size, key_size, flags
HEADER_SIZE = HEADER.size  # 19
HINT_ENTRY = struct.Struct("<IIHB")  # offset, size, key_size, flags
HINT_ENTRY_SIZE = HINT_ENTRY.size  # 11
HINT_TRAILER = struct.Struct("<QQII")  # data_size, max_seq, count, crc
HINT_TRAILER_SIZE = HINT_TRAILER.size  # 24
MANIFEST_HEAD = struct.Struct("<QI")  # active, count
MANIFEST_ENTRY = struct.Struct("<QQ")  # seg_id, size
MANIFEST = "MANIFEST"
NO_ACTIVE = (1 << 64) - 1  # manifest's active field after a clean close

FLAG_TOMBSTONE = 0x01
FLAG_LZ4 = 0x02
FLAG_BATCH = 0x04  # part of a write_batch: only applied once the record flagged COMMIT is seen
FLAG_COMMIT = 0x08  # last record of a write_batch
FLAG_EXPIRES = 0x10  # the value begins with when the key expires (TTL): expires:u64, ms since the epoch
EXPIRES = struct.Struct("<Q")

MAX_KEY_SIZE = 0xFFFF  # key_size is a u16
MAX_VALUE_SIZE = 0x7FFFFFFF  # keeps offset + record size within a u32
MAX_SEGMENT_SIZE = 0x7FFFFFFF
SEGMENT_ID_STEP = 1 << 16  # room for merge outputs between two ordinary segments

DEFAULTS = dict(
    segment_size=64 << 20,
    max_key_size=64 * 1024 - 1,
    max_value_size=16 << 20,
    compress_threshold=4096,
    write_buffer_size=1 << 20,
    sync_always=False,
)

# -- I/O seam ---------------------------------------------------------------------------------------
# Every write and fsync of the engine goes through _pwrite/_fsync so tests can inject ENOSPC.
_fault = {"errno": None, "budget": 0}


def set_io_fault(err=_errno.ENOSPC, after_bytes=0):
    """Make file writes fail with ``err`` once ``after_bytes`` more bytes were written; fsync fails then too."""
    _fault["errno"] = err
    _fault["budget"] = after_bytes


def clear_io_fault():
    """Stop injecting I/O faults."""
    _fault["errno"] = None
    _fault["budget"] = 0


def _os_error(err):
    if err in (_errno.ENOSPC, _errno.EDQUOT):
        return StorageFull(err, "no space left on the store's device")
    return OSError(err, os.strerror(err))


def _pwrite(fd, data, offset):
    view = memoryview(data)
    while view:
        allowed = len(view)
        if _fault["errno"] is not None:
            allowed = min(allowed, _fault["budget"])
            if allowed == 0:
                raise _os_error(_fault["errno"])
        try:
            n = os.pwrite(fd, view[:allowed], offset)
        except OSError as exc:
            raise _os_error(exc.errno) from exc
        if _fault["errno"] is not None:
            _fault["budget"] -= n
        view = view[n:]
        offset += n


def _fsync(fd):
    if _fault["errno"] is not None and _fault["budget"] == 0:
        raise _os_error(_fault["errno"])
    try:
        os.fsync(fd)
    except OSError as exc:
        raise _os_error(exc.errno) from exc


# -- helpers ----------------------------------------------------------------------------------------
def _as_bytes(obj, what):
    if isinstance(obj, bytes):
        return obj
    if isinstance(obj, (bytearray, memoryview)):
        return bytes(obj)
    raise TypeError(f"{what} must be bytes, bytearray or memoryview, not {type(obj).__name__}")


def now_ms():
    """The clock expiries are compared with: ms since the epoch."""
    return int(time.time() * 1000)


def encode_record(seq, key, value, flags):
    """One record's bytes (value already compressed if flagged)."""
    body = HEADER.pack(0, seq, len(value), len(key), flags)[4:] + key + value
    return struct.pack("<I", zlib.crc32(body)) + body


def _expires_in(ttl):
    """When a key put now with ``ttl`` (seconds) expires: ms since the epoch."""
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not 0 < ttl < 1e12:
        raise ValueError(f"ttl must be a positive number of seconds, not {ttl!r}")
    return now_ms() + max(1, int(ttl * 1000 + 0.5))


def data_name(seg_id):
    return f"{seg_id:016x}.data"


def hint_name(seg_id):
    return f"{seg_id:016x}.hint"


def _record_at(data, pos, end):
    """(size, seq, flags, key, expires or None) of the intact record at pos, or None."""
    if pos + HEADER_SIZE > end:
        return None
    crc, seq, vsize, ksize, flags = HEADER.unpack_from(data, pos)
    size = HEADER_SIZE + ksize + vsize
    if pos + size > end:
        return None
    if zlib.crc32(memoryview(data)[pos + 4 : pos + size]) != crc:
        return None
    if flags & FLAG_EXPIRES and vsize < EXPIRES.size:
        return None
    expires = EXPIRES.unpack_from(data, pos + HEADER_SIZE + ksize)[0] if flags & FLAG_EXPIRES else None
    return size, seq, flags, bytes(data[pos + HEADER_SIZE : pos + HEADER_SIZE + ksize]), expires


def scan_records(data):
    """Intact, committed records of a data file: ([(offset, size, flags, key)], valid_end, max_seq, corrupt)."""
    entries, valid_end, max_seq, corrupt = scan_entries(data)
    return [e[:4] for e in entries], valid_end, max_seq, corrupt


def scan_entries(data):
    """As ``scan_records``, each entry with its expiry too: (offset, size, flags, key, expires or None).

    A record failing its checksum is skipped by searching forward for the next intact record (corrupt counts
    the damaged stretches skipped so); when none follows, the rest is a torn tail and valid_end says where to
    truncate. Batch records count only when their batch's COMMIT record is there.
    """
    end = len(data)
    out, pending = [], []
    pos = valid_end = max_seq = corrupt = 0
    while pos < end:
        rec = _record_at(data, pos, end)
        if rec is None:
            pos = _resync(data, pos + 1, end)
            if pos < 0:
                break
            corrupt += 1
            continue
        size, seq, flags, key, expires = rec
        entry = (pos, size, flags, key, expires)
        max_seq = max(max_seq, seq)
        pos += size
        if flags & FLAG_BATCH:
            pending.append(entry)
            if flags & FLAG_COMMIT:
                out.extend(pending)
                pending = []
                valid_end = pos
        else:
            pending = []  # a batch without its commit record never happened
            out.append(entry)
            valid_end = pos
    return out, valid_end, max_seq, corrupt


def _resync(data, pos, end):
    while pos + HEADER_SIZE <= end:
        if _record_at(data, pos, end) is not None:
            return pos
        pos += 1
    return -1


def encode_hint(entries, data_size, max_seq):
    parts = [HINT_ENTRY.pack(off, size, len(key), flags) + key + (b"" if exp is None else EXPIRES.pack(exp))
             for off, size, flags, key, exp in entries]
    body = b"".join(parts) + struct.pack("<QQI", data_size, max_seq, len(entries))
    return body + struct.pack("<I", zlib.crc32(body))


def decode_hint(blob, data_size):
    """[(offset, size, flags, key, expires)], max_seq of a hint file, or None when it fails its checks."""
    if len(blob) < HINT_TRAILER_SIZE:
        return None
    hsize, max_seq, count, crc = HINT_TRAILER.unpack_from(blob, len(blob) - HINT_TRAILER_SIZE)
    if zlib.crc32(memoryview(blob)[:-4]) != crc or hsize != data_size:
        return None
    entries, pos, end = [], 0, len(blob) - HINT_TRAILER_SIZE
    while pos < end:
        off, size, ksize, flags = HINT_ENTRY.unpack_from(blob, pos)
        pos += HINT_ENTRY_SIZE
        key = bytes(blob[pos : pos + ksize])
        pos += ksize
        expires = None
        if flags & FLAG_EXPIRES:
            if pos + EXPIRES.size > end:
                return None
            expires = EXPIRES.unpack_from(blob, pos)[0]
            pos += EXPIRES.size
        entries.append((off, size, flags, key, expires))
    if pos != end or len(entries) != count:
        return None
    for off, size, _, _, _ in entries:
        if off + size > data_size:
            return None
    return entries, max_seq


def hint_data_size(blob):
    """The data size an intact hint file describes, or None when it fails its checksum."""
    if len(blob) < HINT_TRAILER_SIZE:
        return None
    hsize, _, _, crc = HINT_TRAILER.unpack_from(blob, len(blob) - HINT_TRAILER_SIZE)
    if zlib.crc32(memoryview(blob)[:-4]) != crc:
        return None
    return hsize


def encode_manifest(active, sealed):
    body = MANIFEST_HEAD.pack(active, len(sealed)) + b"".join(MANIFEST_ENTRY.pack(i, n) for i, n in sealed)
    return body + struct.pack("<I", zlib.crc32(body))


def decode_manifest(blob):
    """(active id, {sealed id: size}) of a manifest, or None when it fails its checks."""
    n = len(blob)
    if n < MANIFEST_HEAD.size + 4 or zlib.crc32(memoryview(blob)[:-4]) != struct.unpack_from("<I", blob, n - 4)[0]:
        return None
    active, count = MANIFEST_HEAD.unpack_from(blob, 0)
    if n != MANIFEST_HEAD.size + count * MANIFEST_ENTRY.size + 4:
        return None
    return active, dict(MANIFEST_ENTRY.iter_unpack(blob[MANIFEST_HEAD.size : n - 4]))


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
    tmp = os.path.join(path, MANIFEST + ".tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    except OSError:
        return False
    try:
        _pwrite(fd, encode_manifest(active, sealed), 0)
        _fsync(fd)
    except OSError:
        os.close(fd)
        os.unlink(tmp)
        return False
    os.close(fd)
    os.rename(tmp, os.path.join(path, MANIFEST))
    _fsync_dir(path)
    return True


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


def _found(rec, text, lost):
    rec["details"].append(text)
    if lost:
        rec["lost"] = True


def _fsync_dir(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _Segment:
    __slots__ = ("id", "path", "fd", "size", "live", "dead", "hint")

    def __init__(self, seg_id, path, fd, size):
        self.id = seg_id
        self.path = path
        self.fd = fd
        self.size = size  # bytes in the file (for the active segment: flushed bytes)
        self.live = 0
        self.dead = 0
        self.hint = None  # active segment: list of hint entries written so far


class LogStore:
    """The engine: segments, keydir, write buffer, merge. Thread-safe; no background threads, no policy.

    Two locks: ``_lock`` guards the in-memory state and is held only briefly; ``_io`` serialises flushes,
    fsyncs and segment rolls so that one thread's fsync covers everything buffered before it (group commit).
    ``_io`` is always taken before ``_lock``, never while holding it.
    """

    def __init__(self, path, **options):
        opts = dict(DEFAULTS)
        unknown = set(options) - set(opts)
        if unknown:
            raise TypeError(f"unknown options: {sorted(unknown)}")
        opts.update(options)
        self.path = os.fspath(path)
        self.segment_size = int(opts["segment_size"])
        self.max_key_size = int(opts["max_key_size"])
        self.max_value_size = int(opts["max_value_size"])
        self.compress_threshold = int(opts["compress_threshold"])
        self.write_buffer_size = int(opts["write_buffer_size"])
        self.sync_always = bool(opts["sync_always"])
        if not 0 < self.segment_size <= MAX_SEGMENT_SIZE:
            raise ValueError("segment_size out of range")
        if not 0 <= self.max_key_size <= MAX_KEY_SIZE:
            raise ValueError(f"max_key_size must be at most {MAX_KEY_SIZE}")
        if not 0 <= self.max_value_size <= MAX_VALUE_SIZE:
            raise ValueError(f"max_value_size must be at most {MAX_VALUE_SIZE}")
        self._lock = threading.RLock()
        self._io = threading.Lock()
        self._merge_lock = threading.Lock()
        self._closed = False
        self._keydir = {}
        self._expires = {}  # key -> when it expires (ms since the epoch), for keys put with a TTL
        self._segs = {}
        self._seq = 0
        self._buf = bytearray()
        self._buf_base = 0  # file offset of _buf[0] in the active segment
        self._appended = 0  # bytes ever appended (logical clock for group commit)
        self._synced = 0  # of those, bytes known durable
        self._merges = 0
        self._fsyncs = 0
        self._active = None
        # Asynchronous sync (sync_request/sync_poll): a thread of the engine fsyncs, an eventfd tells.
        self._bg_cond = threading.Condition(threading.Lock())  # guards _bg_job, _bg_done, _bg_stop
        self._bg_job = None  # (fd, target) for the thread; it closes fd
        self._bg_done = None  # (target, error) of a finished fsync not collected yet
        self._bg_stop = False
        self._bg_fsyncs = 0
        self._bg_thread = None
        self._bg_fd = -1
        self._bg_busy = False  # a job was handed over and sync_poll() has not collected it yet
        self._bg_requested = 0
        os.makedirs(self.path, exist_ok=True)
        self._recover()

    # -- open / recovery ----------------------------------------------------------------------------
    def _recover(self):
        rec = self._recovery = new_recovery()
        manifest = read_manifest(self.path)
        ids = []
        for name in os.listdir(self.path):
            if name.endswith(".tmp"):
                os.unlink(os.path.join(self.path, name))  # an unfinished merge, hint or manifest: never referenced
            elif name.endswith(".data"):
                try:
                    ids.append(int(name[:-5], 16))
                except ValueError:
                    pass
            elif name.endswith(".hint") and not os.path.exists(os.path.join(self.path, name[:-5] + ".data")):
                os.unlink(os.path.join(self.path, name))
        active, sealed = manifest if manifest else (NO_ACTIVE, {})
        listed = set(sealed)
        if active != NO_ACTIVE:
            listed.add(active)
        for seg_id in sorted(listed - set(ids)):
            rec["missing_segments"] += 1
            _found(rec, f"{data_name(seg_id)} is missing", True)
        empty, had_data = [], False
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
        if self._write_manifest():
            for path in empty:
                os.unlink(path)

    def _load_segment(self, seg_id, sealed_size, empty):
        """Load one segment into the keydir, noting in the recovery report what it lacks; returns its size
        as found. sealed_size: its size when sealed, as the manifest records (None: not sealed there)."""
        rec = self._recovery
        name = data_name(seg_id)
        path = os.path.join(self.path, name)
        fd = os.open(path, os.O_RDWR)
        size = found = os.fstat(fd).st_size
        seg = _Segment(seg_id, path, fd, size)
        self._segs[seg_id] = seg
        if sealed_size is not None and size < sealed_size:
            rec["short_segments"] += 1
            _found(rec, f"{name} holds {size} bytes, {sealed_size} were sealed", True)
        decoded = None
        hpath = os.path.join(self.path, hint_name(seg_id))
        if os.path.exists(hpath):
            with open(hpath, "rb") as f:
                blob = f.read()
            hsize = hint_data_size(blob)
            if hsize is not None and hsize != size:
                rec["hint_mismatch"] += 1
                _found(rec, f"{hint_name(seg_id)} describes {hsize} bytes, {name} holds {size}", hsize > size)
            decoded = decode_hint(blob, size)
        if decoded is not None:
            entries, max_seq = decoded
        else:
            data = os.pread(fd, size, 0) if size else b""
            entries, valid_end, max_seq, corrupt = scan_entries(data)
            if corrupt:
                rec["corrupt_records"] += corrupt
                _found(rec, f"{name}: {corrupt} damaged stretch(es) skipped", True)
            if valid_end < size:
                # Past the last fsync of the segment being written a torn tail is normal; a sealed one was
                # fsync'd whole.
                rec["truncated_bytes"] += size - valid_end
                _found(rec, f"{name}: torn tail of {size - valid_end} bytes cut", sealed_size is not None)
                os.ftruncate(fd, valid_end)  # torn tail (or a torn batch): never acknowledged
                seg.size = size = valid_end
            self._write_hint(seg_id, entries, size, max_seq)
        self._seq = max(self._seq, max_seq)
        if size == 0:  # e.g. a roll cut short by a crash: nothing in it
            del self._segs[seg_id]
            os.close(fd)
            empty.extend(p for p in (hpath, path) if os.path.exists(p))
            return found
        if sealed_size is None:
            _fsync(fd)  # the manifest written next lists it as sealed: at this size, durably
        for off, rsize, flags, key, expires in entries:
            self._apply(key, seg_id, off, rsize, flags, expires)
        return found

    def _write_manifest(self, closing=False):
        """Record the segments that make up the store now; closing: the active one is sealed too.
        Returns whether it was written (failures are left to the next roll, merge, close or open)."""
        act = self._active
        sealed = sorted((s.id, s.size) for s in self._segs.values() if s is not act or (closing and s.size))
        return write_manifest(self.path, NO_ACTIVE if closing else act.id, sealed)

    @property
    def recovery(self):
        """What opening the store found; a fresh dict (keys: see dynafast.storage)."""
        return dict(self._recovery, details=list(self._recovery["details"]))

    def _apply(self, key, seg_id, off, size, flags, expires=None):
        """Account one record in the keydir (on load and on every write)."""
        if expires is not None:
            self._expires[key] = expires
        elif self._expires:
            self._expires.pop(key, None)
        old = self._keydir.pop(key, None)
        if old is not None:
            oseg = self._segs[old[0]]
            oseg.live -= old[2]
            oseg.dead += old[2]
        seg = self._segs[seg_id]
        if flags & FLAG_TOMBSTONE:
            seg.dead += size
        else:
            self._keydir[key] = (seg_id, off, size)
            seg.live += size

    def _write_hint(self, seg_id, entries, data_size, max_seq):
        # A hint is only an accelerator: failing to write one is ignored (the data file is read instead),
        # and a lost or torn one fails its checksum.
        tmp = os.path.join(self.path, hint_name(seg_id) + ".tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        except OSError:
            return
        try:
            _pwrite(fd, encode_hint(entries, data_size, max_seq), 0)
        except OSError:
            os.close(fd)
            os.unlink(tmp)
            return
        os.close(fd)
        os.rename(tmp, os.path.join(self.path, hint_name(seg_id)))

    def _open_active(self, seg_id):
        path = os.path.join(self.path, data_name(seg_id))
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        seg = _Segment(seg_id, path, fd, 0)
        seg.hint = []
        self._segs[seg_id] = seg
        self._active = seg
        self._buf = bytearray()
        self._buf_base = 0

    # -- checks ----------------------------------------------------------------------------------
    def _check_open(self):
        if self._closed:
            raise StoreClosed("the store is closed")

    def _key(self, key):
        k = _as_bytes(key, "key")
        if len(k) > self.max_key_size:
            raise KeyTooLarge(f"key of {len(k)} bytes exceeds max_key_size={self.max_key_size}")
        return k

    def _value(self, value):
        v = _as_bytes(value, "value")
        if len(v) > self.max_value_size:
            raise ValueTooLarge(f"value of {len(v)} bytes exceeds max_value_size={self.max_value_size}")
        if len(v) > self.compress_threshold:
            packed = lz4.block.compress(v, store_size=True)
            if len(packed) < len(v):
                return packed, FLAG_LZ4
        return v, 0

    # -- writes ------------------------------------------------------------------------------------
    def put(self, key, value, ttl=None):
        """Store value under key (both bytes-like); ``ttl``: it expires that many seconds from now (or never)."""
        k = self._key(key)
        v, flags = self._value(value)
        if ttl is not None:
            v = EXPIRES.pack(_expires_in(ttl)) + v
            flags |= FLAG_EXPIRES
        self._write([(k, v, flags)])

    def expires_at(self, key):
        """When key expires (ms since the epoch); None when it never does or is absent."""
        k = _as_bytes(key, "key")
        with self._lock:
            self._check_open()
            if not self._expires or k not in self._keydir:
                return None
            return self._expires.get(k)

    def _expired(self, k):
        """Whether the present key k has expired (caller holds _lock)."""
        expires = self._expires.get(k)
        return expires is not None and now_ms() >= expires

    def delete(self, key):
        """Remove key; an absent key is not an error. A tombstone is written either way: a key can read as absent
        because of a tombstone whose record is damaged (a segment's hint still applies it), and should that record
        go, the key's older value would come back although this delete was acknowledged."""
        k = self._key(key)
        with self._lock:
            self._check_open()
        self._write([(k, b"", FLAG_TOMBSTONE)])

    def write_batch(self, ops):
        """Apply [(key, value or None)] atomically: after a crash either all of them or none are there."""
        recs = []
        for key, value in ops:
            k = self._key(key)
            if value is None:
                recs.append((k, b"", FLAG_TOMBSTONE))
            else:
                v, flags = self._value(value)
                recs.append((k, v, flags))
        if recs:
            self._write(recs, batch=True)

    def delete_prefix(self, prefix=b""):
        """Delete every key starting with prefix in one atomic batch; returns how many were deleted."""
        p = _as_bytes(prefix, "prefix")
        with self._lock:
            self._check_open()
            keys = [k for k in self._keydir if k.startswith(p)]
        if keys:
            self._write([(k, b"", FLAG_TOMBSTONE) for k in keys], batch=True)
        return len(keys)

    def _write(self, recs, batch=False):
        size = sum(HEADER_SIZE + len(k) + len(v) for k, v, _ in recs)
        while True:
            with self._lock:
                self._check_open()
                seg = self._active
                used = self._buf_base + len(self._buf)
                roll = used > 0 and used + size > self.segment_size
                full = len(self._buf) > 0 and len(self._buf) + size > self.write_buffer_size
                if not roll and not full:
                    self._append(recs, batch)
                    target = self._appended
                    break
            with self._io:
                with self._lock:
                    self._check_open()
                    if roll:
                        if self._active is seg:
                            self._roll()
                    else:
                        self._flush_locked()
        if self.sync_always:
            self._sync_to(target)

    def _append(self, recs, batch):
        seg = self._active
        last = len(recs) - 1
        for i, (k, v, flags) in enumerate(recs):
            if batch:
                flags |= FLAG_BATCH | (FLAG_COMMIT if i == last else 0)
            self._seq += 1
            rec = encode_record(self._seq, k, v, flags)
            off = self._buf_base + len(self._buf)
            self._buf += rec
            self._appended += len(rec)
            seg.hint.append((off, len(rec), flags, k, EXPIRES.unpack_from(v)[0] if flags & FLAG_EXPIRES else None))
        # Apply to the keydir only after the whole batch is in the buffer.
        for off, rsize, flags, k, expires in seg.hint[len(seg.hint) - len(recs) :]:
            self._apply(k, seg.id, off, rsize, flags, expires)

    def _flush_locked(self):
        """Write the buffer to the active segment (caller holds _io and _lock)."""
        if self._buf:
            seg = self._active
            _pwrite(seg.fd, self._buf, self._buf_base)
            self._buf_base += len(self._buf)
            seg.size = self._buf_base
            self._buf = bytearray()

    def _roll(self):
        """Seal the active segment (durable, with its hint) and start the next one (holds _io, _lock)."""
        seg = self._active
        self._flush_locked()
        _fsync(seg.fd)
        self._synced = self._appended
        self._write_hint(seg.id, seg.hint, seg.size, self._seq)
        seg.hint = None
        self._open_active((seg.id // SEGMENT_ID_STEP + 1) * SEGMENT_ID_STEP)
        _fsync_dir(self.path)  # the new segment's name is durable before the manifest lists it
        self._write_manifest()

    def flush(self):
        """Hand buffered writes to the OS (no fsync)."""
        with self._io:
            with self._lock:
                self._check_open()
                self._flush_locked()

    def sync(self):
        """Make everything written before this call durable; concurrent callers share one fsync."""
        with self._lock:
            self._check_open()
            target = self._appended
        self._sync_to(target)

    def _sync_to(self, target):
        with self._io:
            if self._synced >= target:
                return  # a leader's fsync already covered this write
            with self._lock:
                self._check_open()
                self._flush_locked()
                end = self._appended
                fd = self._active.fd
            self._fsyncs += 1
            _fsync(fd)
            self._synced = end

    # -- asynchronous sync (for event loops) ---------------------------------------------------------
    # Tickets are positions of the write clock (bytes ever appended). sync_request() flushes and hands the
    # fsync to the engine's thread; while it runs, further requests only raise _bg_requested, and the
    # sync_poll() collecting it starts the next one covering all of them.
    def _bg_start(self):
        if self._bg_fd < 0:
            self._bg_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        if self._bg_thread is None:
            self._bg_stop = False
            self._bg_thread = threading.Thread(target=self._bg_main, name="dynafast-fsync", daemon=True)
            self._bg_thread.start()

    def _bg_halt(self):
        """Let the thread finish the job it has, then join it."""
        if self._bg_thread is not None:
            with self._bg_cond:
                self._bg_stop = True
                self._bg_cond.notify()
            self._bg_thread.join()
            self._bg_thread = None

    def _bg_main(self):
        cond = self._bg_cond
        while True:
            with cond:
                while self._bg_job is None and not self._bg_stop:
                    cond.wait()
                if self._bg_job is None:
                    return
                fd, target = self._bg_job
            error = None
            try:
                _fsync(fd)
            except OSError as exc:
                error = exc
            finally:
                os.close(fd)
            with cond:
                self._bg_job = None
                self._bg_done = (target, error)
                self._bg_fsyncs += 1
            os.eventfd_write(self._bg_fd, 1)

    def _bg_submit(self):
        """Flush and hand an fsync of everything appended so far to the thread (caller claimed _bg_busy)."""
        self._bg_start()
        with self._io:
            with self._lock:
                self._check_open()
                self._flush_locked()
                target = self._appended
                fd = os.dup(self._active.fd)
        with self._bg_cond:
            self._bg_job = (fd, target)
            self._bg_cond.notify()

    def _bg_kick(self):
        with self._lock:
            if self._bg_busy or self._closed or self._bg_requested <= self._synced:
                return
            self._bg_busy = True
        try:
            self._bg_submit()
        except BaseException:
            self._bg_busy = False
            raise

    def sync_request(self):
        """Ask for everything written so far to be made durable, without waiting; returns the ticket.
        The write is durable once durable_seq() >= ticket; sync_fd() becomes readable when an fsync
        finishes, and sync_poll() must then be called to collect it (and start the next one)."""
        with self._lock:
            self._check_open()
            ticket = self._appended
            if ticket <= self._synced:
                return ticket
            self._bg_requested = max(self._bg_requested, ticket)
        self._bg_kick()
        return ticket

    def sync_poll(self):
        """Collect a finished fsync and return durable_seq(); start the next fsync if tickets wait.
        Raises the fsync's error (StorageFull, OSError) when it failed: durable_seq() did not move, and
        every ticket above it must be asked for again."""
        if self._bg_fd >= 0:
            try:
                os.eventfd_read(self._bg_fd)
            except BlockingIOError:
                pass
        with self._bg_cond:
            done, self._bg_done = self._bg_done, None
        if done is not None:
            target, error = done
            with self._lock:
                busy, self._bg_busy = self._bg_busy, False
                if busy:
                    if error is not None:
                        self._bg_requested = self._synced
                        raise error
                    self._synced = max(self._synced, target)
        self._bg_kick()
        return self._synced

    def durable_seq(self):
        """Write-clock position known durable: every ticket up to it is on disk."""
        return self._synced

    def sync_fd(self):
        """An eventfd, readable when an fsync asked for by sync_request() has finished (or failed).
        It stays open until the store object is freed, so a watcher may outlive close()."""
        if self._bg_fd < 0:
            self._check_open()
            self._bg_start()
        return self._bg_fd

    def __del__(self):
        if getattr(self, "_bg_thread", None) is not None:
            self._bg_halt()
        if getattr(self, "_bg_fd", -1) >= 0:
            os.close(self._bg_fd)
            self._bg_fd = -1

    # -- reads -------------------------------------------------------------------------------------
    def _read(self, loc):
        seg_id, off, size = loc
        if self._active is not None and seg_id == self._active.id and off >= self._buf_base:
            return bytes(self._buf[off - self._buf_base : off - self._buf_base + size])
        return os.pread(self._segs[seg_id].fd, size, off)

    @staticmethod
    def _decode(data, size):
        if len(data) != size:
            raise CorruptionError("record is cut short")
        crc, _seq, vsize, ksize, flags = HEADER.unpack_from(data, 0)
        if HEADER_SIZE + ksize + vsize != size or zlib.crc32(memoryview(data)[4:]) != crc:
            raise CorruptionError("record failed its checksum")
        value = data[HEADER_SIZE + ksize + (EXPIRES.size if flags & FLAG_EXPIRES else 0) :]
        if flags & FLAG_LZ4:
            try:
                value = lz4.block.decompress(value)
            except Exception as exc:
                raise CorruptionError("compressed value does not decode") from exc
        return value

    def get(self, key):
        """The value of key, or None when absent. CorruptionError when its record fails its checksum."""
        k = _as_bytes(key, "key")
        with self._lock:
            self._check_open()
            loc = self._keydir.get(k)
            if loc is None or (self._expires and self._expired(k)):
                return None
            data = self._read(loc)
        return self._decode(data, loc[2])

    def __contains__(self, key):
        k = _as_bytes(key, "key")
        with self._lock:
            self._check_open()
            return k in self._keydir and not (self._expires and self._expired(k))

    def __len__(self):
        return self.count()

    def count(self, prefix=b""):
        """Number of live keys starting with prefix (expired ones are not)."""
        p = _as_bytes(prefix, "prefix")
        with self._lock:
            self._check_open()
            n = len(self._keydir) if not p else sum(1 for k in self._keydir if k.startswith(p))
            if self._expires:
                now = now_ms()
                n -= sum(1 for k, e in self._expires.items() if now >= e and k.startswith(p))
            return n

    def keys(self, prefix=b""):
        """Iterator over live keys with prefix (unordered). Keys present for the whole iteration are
        yielded exactly once; keys added or deleted meanwhile may or may not be; none twice."""
        p = _as_bytes(prefix, "prefix")
        with self._lock:
            self._check_open()
            snapshot = [k for k in self._keydir if k.startswith(p)]
        return self._iter(snapshot, False)

    def items(self, prefix=b""):
        """Iterator over (key, value) with prefix; same guarantees as keys()."""
        p = _as_bytes(prefix, "prefix")
        with self._lock:
            self._check_open()
            snapshot = [k for k in self._keydir if k.startswith(p)]
        return self._iter(snapshot, True)

    def _iter(self, snapshot, values):
        for k in snapshot:
            with self._lock:
                self._check_open()
                loc = self._keydir.get(k)
                if loc is None or (self._expires and self._expired(k)):
                    continue
                data = self._read(loc) if values else None
            yield (k, self._decode(data, loc[2])) if values else k

    # -- merge -------------------------------------------------------------------------------------
    def defer_hints(self, defer=True):
        """The compiled store leaves a rolled segment's hint file to ``write_hints()`` when asked to (its rolls run
        on the writer's thread); this one writes it at once, so there is never one to wait for."""

    def write_hints(self, wait=True):
        """Nothing is pending here (see defer_hints)."""
        return True

    def needs_merge(self, threshold):
        """Whether some sealed segment's dead ratio is at least threshold."""
        with self._lock:
            self._check_open()
            return bool(self._pick(threshold))

    def _pick(self, threshold):
        picked = []
        expired = self._expired_bytes()
        for seg in self._segs.values():
            if seg is self._active:
                continue
            total = seg.live + seg.dead
            dead = seg.dead + expired.get(seg.id, 0)
            if threshold is None:
                if dead > 0 or seg.size < self.segment_size // 4:
                    picked.append(seg)
            elif total and dead / total >= threshold:
                picked.append(seg)
        if threshold is None and len(picked) == 1 and picked[0].dead + expired.get(picked[0].id, 0) == 0:
            return []  # one small segment alone: nothing to gain
        return sorted(picked, key=lambda s: s.id)

    def _expired_bytes(self):
        """Segment id -> bytes of its records whose keys have expired: dead to a merge, though still in the
        keydir until one drops them."""
        out = {}
        if self._expires:
            now = now_ms()
            for k, e in self._expires.items():
                if now >= e:
                    loc = self._keydir.get(k)
                    if loc is not None:
                        out[loc[0]] = out.get(loc[0], 0) + loc[2]
        return out

    def merge(self, threshold=None):
        """Rewrite the live records of segments whose dead ratio is at least threshold (None: every
        sealed segment with dead bytes, the active one sealed first, and small segments) into new
        segments, then drop the old ones. Returns the number of segments merged."""
        with self._merge_lock:
            with self._io:
                with self._lock:
                    self._check_open()
                    act = self._active
                    if threshold is None and (act.dead > 0 or act.size + len(self._buf) > 0):
                        self._roll()
                    inputs = self._pick(threshold)
                    if not inputs:
                        return 0
                    need = sum(s.size for s in inputs) // self.segment_size + 2
                    sealed_top = max(s.id for s in self._segs.values() if s is not self._active)
                    if self._active.id - sealed_top - 1 < need:
                        self._roll()  # make room for the outputs' ids below the active segment
                        sealed_top = max(s.id for s in self._segs.values() if s is not self._active)
                    input_ids = {s.id for s in inputs}
                    older_kept = [s.id for s in self._segs.values() if s.id not in input_ids and s is not self._active]
                    oldest_kept = min(older_kept) if older_kept else None
            self._merge(inputs, sealed_top + 1, oldest_kept)
            self._merges += 1
            return len(inputs)

    def _merge(self, inputs, next_id, oldest_kept):
        outputs = []  # [seg_id, tmp path, fd, size, entries, moves]

        def new_output():
            nonlocal next_id
            seg_id = next_id
            next_id += 1
            tmp = os.path.join(self.path, data_name(seg_id) + ".tmp")
            fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
            outputs.append([seg_id, tmp, fd, 0, [], [], 0])
            return outputs[-1]

        out = None
        seen_tombstones = set()
        now = now_ms()
        try:
            for seg in inputs:
                data = os.pread(seg.fd, seg.size, 0) if seg.size else b""
                entries = scan_entries(data)[0]
                for off, size, flags, key, expires in entries:
                    with self._lock:
                        live = self._keydir.get(key) == (seg.id, off, size)
                    rec = data[off : off + size]
                    if live and expires is not None and now >= expires:
                        # Expired: its value goes, and its key with it when the swap finds it still pointing
                        # here. A tombstone takes its place while an older segment that stays could still
                        # hold a value for the key.
                        if oldest_kept is None or oldest_kept > seg.id:
                            continue
                        rec = encode_record(HEADER.unpack_from(data, off)[1], key, b"", FLAG_TOMBSTONE)
                        flags, size, expires = FLAG_TOMBSTONE, len(rec), None
                    elif flags & FLAG_TOMBSTONE:
                        # Keep it while an older segment that stays could still hold a value for the key.
                        with self._lock:
                            present = key in self._keydir
                        if present or key in seen_tombstones:
                            continue
                        if oldest_kept is None or oldest_kept > seg.id:
                            continue
                        seen_tombstones.add(key)
                    elif not live:
                        continue
                    flags &= ~(FLAG_BATCH | FLAG_COMMIT)  # every copied record stands alone
                    if flags != rec[18]:
                        rec = bytearray(rec)
                        rec[18] = flags
                        rec[0:4] = struct.pack("<I", zlib.crc32(memoryview(rec)[4:]))
                        rec = bytes(rec)
                    if out is None or (out[3] > 0 and out[3] + size > self.segment_size):
                        out = new_output()
                    _pwrite(out[2], rec, out[3])
                    out[4].append((out[3], size, flags, key, expires))
                    if flags & FLAG_TOMBSTONE:
                        out[6] += size
                    else:
                        out[5].append((key, (seg.id, off, size), (out[0], out[3], size)))
                    out[3] += size
            for o in outputs:
                _fsync(o[2])
                self._write_hint(o[0], o[4], o[3], self._seq)
                os.rename(o[1], os.path.join(self.path, data_name(o[0])))
            _fsync_dir(self.path)
        except BaseException:
            for o in outputs:
                os.close(o[2])
                for p in (o[1], os.path.join(self.path, data_name(o[0]))):
                    if os.path.exists(p):
                        os.unlink(p)
                hp = os.path.join(self.path, hint_name(o[0]))
                if os.path.exists(hp):
                    os.unlink(hp)
            raise
        with self._io, self._lock:  # _io: no roll writes the manifest meanwhile
            for seg_id, tmp, fd, size, entries, moves, tombs in outputs:
                seg = _Segment(seg_id, os.path.join(self.path, data_name(seg_id)), fd, size)
                self._segs[seg_id] = seg
                # Tombstones a merge had to keep count as live: merging them again would gain nothing.
                seg.live = tombs
                seg.dead = size - tombs
                for key, old, new in moves:
                    if self._keydir.get(key) == old:
                        self._keydir[key] = new
                        seg.live += new[2]
                        seg.dead -= new[2]
            # Keys still pointing into the inputs had damaged records there, or expired ones: drop them.
            gone = {seg.id for seg in inputs}
            for key in [k for k, loc in self._keydir.items() if loc[0] in gone]:
                del self._keydir[key]
                self._expires.pop(key, None)
            for seg in inputs:
                del self._segs[seg.id]
                os.close(seg.fd)
            # The inputs' files go only once the manifest no longer lists them; if it could not be
            # written they stay, and the next open replays them before the outputs (as after a crash here).
            if not self._write_manifest():
                return
            # Oldest first: a tombstone outlives every older value it hides.
            for seg in inputs:
                hp = os.path.join(self.path, hint_name(seg.id))
                if os.path.exists(hp):
                    os.unlink(hp)
                os.unlink(seg.path)

    # -- stats / close ---------------------------------------------------------------------------
    def stats(self):
        """Counters: keys, live_bytes, dead_bytes, segments, keydir_bytes, keydir_bytes_per_key, ..."""
        import sys

        with self._lock:
            self._check_open()
            n = len(self._keydir)
            kd = sys.getsizeof(self._keydir) + sum(sys.getsizeof(k) + 72 for k in self._keydir)
            return {
                "keys": n,
                "live_bytes": sum(s.live for s in self._segs.values()),
                "dead_bytes": sum(s.dead for s in self._segs.values()),
                "segments": len(self._segs),
                "disk_bytes": sum(s.size for s in self._segs.values()),
                "buffer_bytes": len(self._buf),
                "keydir_bytes": kd,
                "keydir_bytes_per_key": kd / n if n else 0.0,
                "keydir_allocated_bytes": kd,
                "keydir_overhead_per_key": (kd - sum(len(k) for k in self._keydir)) / n if n else 0.0,
                "fsyncs": self._fsyncs + self._bg_fsyncs,
                "seq": self._seq,
                "merges": self._merges,
                "implementation": "reference",
            }

    @property
    def closed(self):
        return self._closed

    def close(self):
        """Flush, fsync, seal the active segment with its hint, close every file. Idempotent."""
        with self._merge_lock:
            with self._io:
                with self._lock:
                    if self._closed:
                        return
                    # A failure here (disk full) leaves the store open so the caller can retry.
                    self._bg_halt()  # its last job is finished (and collectable) after this
                    seg = self._active
                    self._flush_locked()
                    if seg.size:
                        _fsync(seg.fd)
                        self._write_hint(seg.id, seg.hint, seg.size, self._seq)
                    if self._write_manifest(closing=True) and not seg.size:
                        os.unlink(seg.path)  # unlisted first: a listed file is never missing
                    # Everything is durable now: wake a watcher so its waiters resolve.
                    self._synced = self._bg_requested = self._appended
                    with self._bg_cond:
                        self._bg_done = (self._synced, None)
                    if self._bg_fd >= 0:
                        os.eventfd_write(self._bg_fd, 1)
                    self._closed = True
                    for s in self._segs.values():
                        os.close(s.fd)
                    self._segs.clear()
                    self._keydir.clear()
                    self._expires.clear()
                    self._buf = bytearray()
