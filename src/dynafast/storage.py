"""The embedded engine facade: options, the directory lock, flush/sync timers and background merge.

The mechanism (segments, keydir, write buffer, group commit, merge) is ``dynafast._core.logstore``
(or its plain-Python reference); this module adds the policy around it.
"""
import errno
import fcntl
import os
import shutil
import threading
import weakref

from dynafast import _impl
from dynafast.errors import StoreClosed, StoreLocked

_SYNC_MODES = ("none", "interval", "always")


class Store:
    """A log-structured key-value store in directory ``path`` (created if needed).

    Options (keywords):

    - ``sync`` ("none"): "always" -- put/delete/write_batch return only once the record is fsync'd; threads
      writing at the same time share fsyncs (group commit). "interval" -- a background thread fsyncs every
      ``sync_interval`` seconds, so at most that much acknowledged data can be lost. "none" -- buffered writes
      reach the OS every ``flush_interval`` seconds or when the write buffer fills; the OS decides when they
      reach the disk. ``sync()`` makes everything written before it durable in any mode.
    - ``sync_interval`` (0.1 s), ``flush_interval`` (0.05 s; 0: no flushes but the buffer's own).
    - ``segment_size`` (64 MiB): a segment file is sealed (and its hint file written) when it reaches this.
    - ``max_key_size`` (65535 bytes, also the hard cap of the u16 field), ``max_value_size`` (16 MiB):
      larger keys/values raise KeyTooLarge/ValueTooLarge and nothing is written.
    - ``compress_threshold`` (4096): values longer than this are lz4-compressed (when that makes them smaller).
    - ``write_buffer_size`` (1 MiB): appends collect in memory (reads see them) until this much is buffered.
    - ``merge_trigger`` (0.5): a sealed segment whose dead/total byte ratio reaches this is merged.
    - ``background_merge`` (True) and ``merge_check_interval`` (1.0 s): merge by itself, in a thread of its own
      (never the one that syncs, whose interval a merge would put off).
    - ``engine``: the engine module (default ``dynafast._impl.logstore``); tests pass the reference.

    TTL: ``put(key, value, ttl=seconds)`` makes the key expire that many seconds later (wall clock). An
    expired key is absent at once for get, keys, items, count and ``in``; a merge reclaims its space (leaving a
    tombstone in its place only while an older segment could still hold a value of the key). The expiry is in
    the record and in the hint file, so it survives a restart. ``ttl(key)``, ``expire(key, ttl)`` and
    ``persist(key)`` read and change it; ``expire`` and ``persist`` rewrite the value (a get, then a put:
    not atomic against another thread's put of the same key).

    Keys and values are bytes (bytearray and memoryview accepted; anything else, str included, raises
    TypeError). Iteration (``keys``, ``items``) is unordered and safe while writes and merges go on: keys
    present for the whole iteration come exactly once, keys added or deleted meanwhile may or may not.

    Corruption: every record's checksum is verified when it is read. On open, a torn tail of a segment is
    truncated and a damaged record is skipped (the key then shows its previous intact version, if any);
    a record found damaged later by ``get`` raises CorruptionError -- a damaged record is never returned.
    A disk full raises StorageFull: acknowledged writes are kept, and the store works again once space
    is freed (a write that raised may still land later: it was not acknowledged).

    A second process (or a second Store in this one) opening the directory gets StoreLocked.

    Recovery report: ``recovery`` is a dict saying what opening found, so that a caller whose data must not
    silently go back in time (a replica's version-vector actor, say) can tell. A ``MANIFEST`` file lists the
    segments that make up the store -- the sealed ones with the size they were fsync'd at, and the one being
    written (none after a clean close, which seals it). It changes only when a segment is sealed, created or
    merged away, never per write. Keys:

    - ``fresh``: the directory held no store (no manifest, no data). A wiped directory looks just like a new
      one: only something kept elsewhere (the node's incarnation file) can tell them apart.
    - ``truncated_bytes``: torn tail bytes cut from data files.
    - ``corrupt_records``: damaged stretches skipped while scanning a data file (found only when its hint file
      is unusable; otherwise ``get`` finds them later and raises CorruptionError).
    - ``missing_segments``: segments the manifest lists whose data file is gone.
    - ``short_segments``: sealed segments shorter than the size the manifest recorded when they were sealed.
    - ``hint_mismatch``: intact hint files describing a data size their data file does not have.
    - ``manifest_missing``: data files without a manifest, or a damaged manifest (which segments should be
      there cannot be checked).
    - ``details``: one line per finding, for the log.
    - ``lost``: True when anything that may have held acknowledged records is gone: a missing segment, a short
      sealed segment, a hint describing more data than there is, a damaged record, a torn tail of a sealed
      segment, a missing or damaged manifest beside data. A torn tail of the segment that was being written
      when the process died is normal and not ``lost``: past its last fsync nothing was durable, and the engine
      does not record each fsync (that would cost every synced write), so a tail cut off it by hand goes
      unnoticed -- after a clean close it is sealed, and then it would not. The report is conservative the
      other way: a damaged record in that segment after a power cut may have been an unacknowledged write,
      and still counts as lost.

    Recovery rewrites the manifest to match what it kept, so the next open reports only what happened since.
    A store written before manifests existed reports ``manifest_missing`` and ``lost`` on its first open.
    """

    def __init__(
        self,
        path,
        *,
        sync="none",
        sync_interval=0.1,
        flush_interval=0.05,
        segment_size=64 << 20,
        max_key_size=0xFFFF,
        max_value_size=16 << 20,
        compress_threshold=4096,
        write_buffer_size=1 << 20,
        merge_trigger=0.5,
        background_merge=True,
        merge_check_interval=1.0,
        engine=None,
    ):
        if sync not in _SYNC_MODES:
            raise ValueError(f"sync must be one of {_SYNC_MODES}, not {sync!r}")
        # Each of these is a thread's tick: zero would make it spin (or, for sync_interval, never sync).
        if not sync_interval > 0:
            raise ValueError(f"sync_interval must be positive, not {sync_interval!r}")
        if not merge_check_interval > 0:
            raise ValueError(f"merge_check_interval must be positive, not {merge_check_interval!r}")
        if not flush_interval >= 0:
            raise ValueError(f"flush_interval must be 0 (no flush thread) or positive, not {flush_interval!r}")
        self.path = os.fspath(path)
        self.sync_mode = sync
        self.sync_interval = float(sync_interval)
        self.flush_interval = float(flush_interval)
        self.merge_trigger = float(merge_trigger)
        self.merge_check_interval = float(merge_check_interval)
        self._module = engine if engine is not None else _impl.logstore
        os.makedirs(self.path, exist_ok=True)
        self._lock_fd = os.open(os.path.join(self.path, "LOCK"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise StoreLocked(f"{self.path} is open in another process (or Store)") from None
        try:
            self._engine = self._module.LogStore(
                self.path,
                segment_size=segment_size,
                max_key_size=max_key_size,
                max_value_size=max_value_size,
                compress_threshold=compress_threshold,
                write_buffer_size=write_buffer_size,
                sync_always=(sync == "always"),
            )
        except BaseException:
            os.close(self._lock_fd)
            raise
        e = self._engine
        # The hot calls go straight to the engine (no Python frame in between); it checks its arguments
        # and raises StoreClosed itself.
        self.put = e.put
        self.get = e.get
        self.delete = e.delete
        self.write_batch = e.write_batch
        self.delete_prefix = e.delete_prefix
        self.count = e.count
        self.keys = e.keys
        self.items = e.items
        self.sync = e.sync
        self.flush = e.flush
        self.sync_request = e.sync_request
        self.sync_poll = e.sync_poll
        self.durable_seq = e.durable_seq
        self.sync_fd = e.sync_fd
        self.background_error = None
        # Held by every merge, and by copy_into: a merge is what deletes sealed segments.
        self._merge_gate = threading.Lock()
        self._stop = threading.Event()
        # Syncs and merges each have a thread: a merge takes from tens of ms to seconds, and the interval sync
        # must not wait for it. The threads hold only a weak reference: a Store dropped without close() is
        # still collected (and __del__ closes it).
        self._threads = []
        tick = self.sync_interval if sync == "interval" else self.flush_interval
        if tick > 0:
            self._threads.append(threading.Thread(
                target=_every, args=(weakref.ref(self), self._stop, tick, Store._sync_step),
                name="dynafast-sync", daemon=True))
        if background_merge:
            self._threads.append(threading.Thread(
                target=_every, args=(weakref.ref(self), self._stop, self.merge_check_interval, Store._merge_step),
                name="dynafast-merge", daemon=True))
        if self._threads:
            e.defer_hints(True)  # a thread writes a sealed segment's hint, not the writer that rolled it
            for thread in self._threads:
                thread.start()

    # Documented signatures; __init__ binds the engine's methods over these for speed.
    def put(self, key, value, ttl=None):
        """Store value under key; ``ttl``: it expires that many seconds from now (None: never)."""
        self._engine.put(key, value, ttl)

    def ttl(self, key):
        """Seconds until key expires; None when it does not expire; KeyError when it is absent or expired."""
        expires = self._engine.expires_at(key)
        if expires is None:
            if key not in self._engine:
                raise KeyError(key)
            return None
        left = expires - self._module.now_ms()
        if left <= 0:
            raise KeyError(key)
        return left / 1000.0

    def expire(self, key, ttl):
        """Make key expire ``ttl`` seconds from now (its value is written again); False when it is absent."""
        value = self._engine.get(key)
        if value is None:
            return False
        self._engine.put(key, value, ttl)
        return True

    def persist(self, key):
        """Remove key's expiry (its value is written again); False when it is absent or has none."""
        if self._engine.expires_at(key) is None:
            return False
        value = self._engine.get(key)
        if value is None:
            return False
        self._engine.put(key, value)
        return True

    def get(self, key):
        """The value of key (bytes), or None when absent."""
        return self._engine.get(key)

    def delete(self, key):
        """Remove key; deleting an absent key is not an error."""
        self._engine.delete(key)

    def write_batch(self, ops):
        """Apply [(key, value-or-None)] atomically; None deletes."""
        self._engine.write_batch(ops)

    def delete_prefix(self, prefix):
        """Delete every key starting with prefix (one atomic batch); returns how many."""
        return self._engine.delete_prefix(prefix)

    def count(self, prefix=b""):
        """Number of live keys starting with prefix."""
        return self._engine.count(prefix)

    def keys(self, prefix=b""):
        """Iterator over the live keys starting with prefix (unordered)."""
        return self._engine.keys(prefix)

    def items(self, prefix=b""):
        """Iterator over (key, value) of the live keys starting with prefix (unordered)."""
        return self._engine.items(prefix)

    def sync(self):
        """Return once everything written before the call is durable (shares fsyncs with other callers)."""
        self._engine.sync()

    def flush(self):
        """Hand buffered writes to the OS now (no fsync)."""
        self._engine.flush()

    # Asynchronous sync, for event loops: nothing here blocks on an fsync (the engine's own thread does it).
    def sync_request(self):
        """Start making everything written so far durable; return its ticket (durable once
        ``durable_seq() >= ticket``). Concurrent tickets share fsyncs."""
        return self._engine.sync_request()

    def sync_poll(self):
        """Call when ``sync_fd()`` is readable: collect the finished fsync, start the next one if tickets
        wait, return ``durable_seq()``. Raises the fsync's error (StorageFull, OSError) when it failed."""
        return self._engine.sync_poll()

    def durable_seq(self):
        """The highest ticket known durable."""
        return self._engine.durable_seq()

    def sync_fd(self):
        """File descriptor readable once an fsync started by ``sync_request()`` finished (watch it with
        ``loop.add_reader``); it stays valid until the store is freed, close() included."""
        return self._engine.sync_fd()

    def merge(self):
        """Compact now: rewrite live data out of segments holding dead records. Returns segments merged."""
        with self._merge_gate:
            return self._engine.merge(None)

    def copy_into(self, dest):
        """A consistent copy of the store in directory ``dest`` (created; it must not hold a store), taken while
        writes go on: everything written before the call, as a prefix of the log.

        Sealed segments never change, so they (and their hint files) are hard-linked, or copied when ``dest`` is
        on another filesystem; merges, which delete sealed segments, wait meanwhile. The segment being written
        is copied up to its length after a sync; a record torn at that end is cut when the copy is opened, as
        after a crash. ``dest`` gets a MANIFEST naming those segments (the copied one as the active segment), so
        that ``dynafast.open(dest)`` reads it as any store. Returns {"segments", "bytes", "linked_bytes"}.
        """
        from dynafast._ref import logstore as layout  # the on-disk format (the same for both engines)

        dest = os.fspath(dest)
        os.makedirs(dest, exist_ok=True)
        if any(name.endswith(".data") or name == layout.MANIFEST for name in os.listdir(dest)):
            raise FileExistsError(f"{dest} already holds a store")
        with self._merge_gate:
            self._engine.sync()  # acknowledged writes are in the files before they are measured
            ids = sorted(int(name[:-5], 16) for name in os.listdir(self.path) if name.endswith(".data"))
            sizes = {seg_id: os.stat(os.path.join(self.path, layout.data_name(seg_id))).st_size for seg_id in ids}
            active = ids[-1] if ids else layout.NO_ACTIVE  # merge outputs are named below the active segment
            linked = total = 0
            for seg_id in ids[:-1]:
                for name in (layout.data_name(seg_id), layout.hint_name(seg_id)):
                    if os.path.exists(os.path.join(self.path, name)):
                        size, was_linked = _link_or_copy(os.path.join(self.path, name), os.path.join(dest, name))
                        total += size
                        linked += size if was_linked else 0
            if ids:
                name = layout.data_name(active)
                with open(os.path.join(self.path, name), "rb") as src, open(os.path.join(dest, name), "wb") as out:
                    _copy_prefix(src, out, sizes[active])
                total += sizes[active]
        if not layout.write_manifest(dest, active, sorted((seg_id, sizes[seg_id]) for seg_id in ids[:-1])):
            raise OSError(f"cannot write the manifest of the copy in {dest}")
        return {"segments": len(ids), "bytes": total, "linked_bytes": linked}

    def stats(self):
        """dict: keys, live_bytes, dead_bytes, segments, disk_bytes, buffer_bytes, keydir_bytes,
        keydir_bytes_per_key, seq, merges, implementation, sync."""
        s = self._engine.stats()
        s["sync"] = self.sync_mode
        return s

    # -- mapping sugar ---------------------------------------------------------------------------
    def __getitem__(self, key):
        value = self._engine.get(key)
        if value is None:
            raise KeyError(key)
        return value

    def __setitem__(self, key, value):
        self._engine.put(key, value)

    def __delitem__(self, key):
        self._engine.delete(key)

    def __contains__(self, key):
        return key in self._engine

    def __len__(self):
        return len(self._engine)

    def __iter__(self):
        return self._engine.keys(b"")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def closed(self):
        return self._engine.closed

    @property
    def recovery(self):
        """What opening the store found, and whether it lost anything (a dict; see the class docstring)."""
        return self._engine.recovery

    # -- background ------------------------------------------------------------------------------
    def _sync_step(self):
        """A tick of the sync thread: sync or flush per the policy, and the hint files rolls left, unless a
        merge has them (it can take seconds, and the next sync is due sooner)."""
        if self.sync_mode == "interval":
            self._engine.sync()
        else:
            self._engine.flush()
        self._engine.write_hints(wait=False)

    def _merge_step(self):
        """A tick of the merge thread: the hint files rolls left, and a merge when some segment is due."""
        self._engine.write_hints()
        # A copy being taken holds the gate: this merge waits for the next tick rather than for the copy.
        if self._engine.needs_merge(self.merge_trigger) and self._merge_gate.acquire(blocking=False):
            try:
                self._engine.merge(self.merge_trigger)
            finally:
                self._merge_gate.release()

    def close(self):
        """Stop the background threads, flush, fsync and close. Idempotent."""
        self._stop.set()
        for thread in getattr(self, "_threads", ()):
            if thread is not threading.current_thread():  # __del__ can run on one of them
                thread.join()
        self._threads = []
        if not self._engine.closed:
            self._engine.close()
        if self._lock_fd >= 0:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = -1

    def __del__(self):
        # Leave a dropped Store's files consistent (best effort; close() is the way).
        try:
            if getattr(self, "_lock_fd", -1) >= 0:
                self.close()
        except Exception:
            pass


def _link_or_copy(src: str, dst: str) -> tuple[int, bool]:
    """(size, whether hard-linked) of ``src`` put at ``dst``: a hard link, or a copy across filesystems."""
    try:
        os.link(src, dst)
        return os.stat(dst).st_size, True
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
            raise
    shutil.copyfile(src, dst)
    return os.stat(dst).st_size, False


def _copy_prefix(src, out, size: int, chunk: int = 1 << 20) -> None:
    left = size
    while left > 0:
        block = src.read(min(chunk, left))
        if not block:
            raise OSError(errno.EIO, f"{src.name} is shorter than the {size} bytes it held")
        out.write(block)
        left -= len(block)
    out.flush()
    os.fsync(out.fileno())


def _every(store_ref, stop, interval, step):
    """Call step(store) every interval seconds until stop is set or the store is gone."""
    while not stop.wait(interval):
        store = store_ref()
        if store is None:
            return
        try:
            step(store)
        except StoreClosed:
            return
        except Exception as exc:  # e.g. StorageFull: keep trying; callers see it on their own calls
            store.background_error = exc
        finally:
            del store
