"""Vector clocks and dotted version vector sets: the plain-Python reference of dynafast._core.vclock.

A ``VClock`` is a sorted list of ``(actor, counter, timestamp)`` entries. A ``Siblings`` is a dotted version
vector set (Preguica et al.; Riak's dvvset): per actor a counter, the timestamp of its newest event and the
values still alive that this actor stamped, each with its dot ``(actor, n)`` and timestamp; plus the
"anonymous" value of a client write that no coordinator has stamped yet. A version is dropped exactly when
another side's history covers its dot but no longer holds it, so siblings stay bounded by the number of
writes that really did not see each other, however many clients share one coordinator.

Both builds produce identical results and identical bytes; the byte formats are described in
``docs``-style comments beside ``to_bytes``.
"""

import mmh3

from dynafast.errors import ProtocolError

EQUAL, DESCENDS, DOMINATED, CONCURRENT = 0, 1, 2, 3

_U64 = 1 << 64
_SIBLINGS_FORMAT = 1


# -- varints: unsigned LEB128, minimal, at most 10 bytes, value < 2**64 ---------------------------------------
def _put_varint(out, value):
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


def _get_varint(data, pos):
    result = 0
    shift = 0
    end = len(data)
    while True:
        if pos >= end:
            raise ProtocolError("truncated varint")
        byte = data[pos]
        pos += 1
        if shift == 63 and byte > 1:
            raise ProtocolError("varint overflows 64 bits")
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            # A zero last byte after the first one means a longer encoding than needed: not canonical.
            if byte == 0 and shift:
                raise ProtocolError("varint is not minimal")
            return result, pos
        shift += 7


def _get_bytes(data, pos):
    length, pos = _get_varint(data, pos)
    if length > len(data) - pos:
        raise ProtocolError("length field runs past the end of the data")
    return bytes(data[pos : pos + length]), pos + length


def _as_data(data):
    if isinstance(data, bytes):
        return data
    return bytes(memoryview(data))


def _check_actor(actor):
    if type(actor) is not bytes:
        raise TypeError(f"actor must be bytes, not {type(actor).__name__}")


def _check_u64(value, what):
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{what} must be an int")
    if not 0 <= value < _U64:
        raise ValueError(f"{what} out of range 0..2**64-1: {value}")


def _check_value(value):
    if value is not None and type(value) is not bytes:
        raise TypeError(f"value must be bytes or None, not {type(value).__name__}")


def _merge_ts(c1, t1, c2, t2):
    """Counter and timestamp of merging two entries of one actor: the timestamp of the larger counter."""
    if c1 > c2:
        return c1, t1
    if c2 > c1:
        return c2, t2
    return c1, max(t1, t2)


def _compare_counts(a, b):
    """Compare two sorted (actor, counter, ...) sequences as version vectors."""
    greater = less = False
    i = j = 0
    na, nb = len(a), len(b)
    while i < na or j < nb:
        if j >= nb or (i < na and a[i][0] < b[j][0]):
            greater = True
            i += 1
        elif i >= na or b[j][0] < a[i][0]:
            less = True
            j += 1
        else:
            if a[i][1] > b[j][1]:
                greater = True
            elif a[i][1] < b[j][1]:
                less = True
            i += 1
            j += 1
        if greater and less:
            return CONCURRENT
    if greater:
        return DESCENDS
    if less:
        return DOMINATED
    return EQUAL


def _prune_order(entries, now, small, big, young, old, keep=None):
    """Indexes of entries to drop under Riak's rule (oldest first); entries with keep(i) true are never dropped.

    Ages are not measured from ``now`` but from the second newest timestamp of the clock (``now`` if that is
    earlier): a timestamp is evidence of elapsed time only when some other entry is newer still. The newest entry
    is usually the one the caller just stamped with its own wall clock; were that clock set ahead, measuring from
    it would age every other entry at once, and dropping an entry whose actor has no live value left makes every
    older version that still holds a value of that actor concurrent again: a replaced value would come back.
    """
    for value, what in ((now, "now"), (small, "small"), (big, "big"), (young, "young"), (old, "old")):
        _check_u64(value, what)
    order = sorted(range(len(entries)), key=lambda i: (entries[i][2], entries[i][0]))
    remaining = len(entries)
    dropped = set()
    if remaining:
        now = min(now, entries[order[-2 if remaining > 1 else -1]][2])
    for i in order:
        if remaining <= small:
            break
        age = now - entries[i][2]
        if age < young:
            break
        if not (remaining > big or age > old):
            break
        if keep is not None and keep(i):
            continue
        dropped.add(i)
        remaining -= 1
    return dropped


def _merge_sorted(a, b, combine):
    """Merge two lists of entries sorted by actor (item 0); ``combine`` merges the entries of one actor."""
    out = []
    i = j = 0
    while i < len(a) or j < len(b):
        if j >= len(b) or (i < len(a) and a[i][0] < b[j][0]):
            out.append(a[i])
            i += 1
        elif i >= len(a) or b[j][0] < a[i][0]:
            out.append(b[j])
            j += 1
        else:
            out.append(combine(a[i], b[j]))
            i += 1
            j += 1
    return out


class VClock:
    """An immutable vector clock: actor (bytes) -> counter, with the timestamp of the actor's last event."""

    __slots__ = ("_entries",)

    def __init__(self, entries=None):
        merged = {}
        if entries is not None:
            for actor, counter, timestamp in entries:
                _check_actor(actor)
                _check_u64(counter, "counter")
                _check_u64(timestamp, "timestamp")
                if counter == 0:
                    continue  # a zero counter is the same as no entry
                if actor in merged:
                    merged[actor] = _merge_ts(*merged[actor], counter, timestamp)
                else:
                    merged[actor] = (counter, timestamp)
        self._entries = [(a, c, t) for a, (c, t) in sorted(merged.items())]

    @classmethod
    def _make(cls, entries):
        clock = cls.__new__(cls)
        clock._entries = entries
        return clock

    def increment(self, actor, now=0):
        _check_actor(actor)
        _check_u64(now, "now")
        entries = list(self._entries)
        for i, (a, c, _t) in enumerate(entries):
            if a == actor:
                if c + 1 >= _U64:
                    raise ValueError("counter overflows 64 bits")
                entries[i] = (a, c + 1, now)
                return VClock._make(entries)
            if a > actor:
                entries.insert(i, (actor, 1, now))
                return VClock._make(entries)
        entries.append((actor, 1, now))
        return VClock._make(entries)

    def get(self, actor):
        _check_actor(actor)
        for a, c, _t in self._entries:
            if a == actor:
                return c
        return 0

    def compare(self, other):
        if not isinstance(other, VClock):
            raise TypeError("can only compare with a VClock")
        return _compare_counts(self._entries, other._entries)

    def descends(self, other):
        return self.compare(other) in (EQUAL, DESCENDS)

    def merge(self, other):
        if not isinstance(other, VClock):
            raise TypeError("can only merge with a VClock")
        out = _merge_sorted(self._entries, other._entries,
                            lambda x, y: (x[0], *_merge_ts(x[1], x[2], y[1], y[2])))
        return VClock._make(out)

    def prune(self, now, small=10, big=50, young=20, old=86400):
        dropped = _prune_order(self._entries, now, small, big, young, old)
        return VClock._make([e for i, e in enumerate(self._entries) if i not in dropped])

    def entries(self):
        return list(self._entries)

    def to_bytes(self):
        # count, then per entry (sorted by actor): actor length, actor, counter, timestamp; all varints.
        out = bytearray()
        _put_varint(out, len(self._entries))
        for actor, counter, timestamp in self._entries:
            _put_varint(out, len(actor))
            out += actor
            _put_varint(out, counter)
            _put_varint(out, timestamp)
        return bytes(out)

    @classmethod
    def from_bytes(cls, data):
        data = _as_data(data)
        entries, pos = _read_clock(data, 0)
        if pos != len(data):
            raise ProtocolError("trailing bytes after vector clock")
        return cls._make(entries)

    def __eq__(self, other):
        if not isinstance(other, VClock):
            return NotImplemented
        return self._entries == other._entries

    def __hash__(self):
        return hash(self.to_bytes())

    def __reduce__(self):
        return (VClock.from_bytes, (self.to_bytes(),))

    def __len__(self):
        return len(self._entries)

    def __repr__(self):
        return f"VClock({self._entries!r})"


def _read_clock(data, pos):
    count, pos = _get_varint(data, pos)
    if count > len(data) - pos:
        raise ProtocolError("entry count runs past the end of the data")
    entries = []
    previous = None
    for _ in range(count):
        actor, pos = _get_bytes(data, pos)
        counter, pos = _get_varint(data, pos)
        timestamp, pos = _get_varint(data, pos)
        if counter == 0:
            raise ProtocolError("zero counter in vector clock")
        if previous is not None and actor <= previous:
            raise ProtocolError("vector clock actors not strictly sorted")
        previous = actor
        entries.append((actor, counter, timestamp))
    return entries, pos


def _value_key(value):
    # Tombstones sort first; used to order anonymous values and to break ties deterministically.
    return (0, b"") if value is None else (1, value)


def _anon_key(item):
    value, ts = item
    return (_value_key(value), ts)


def _merge_entry(e1, e2):
    """Merge one actor's entries of two sets: keep a dot that both hold or that the other side has not seen."""
    actor, c1, t1, v1 = e1
    _, c2, t2, v2 = e2
    counter, ts = _merge_ts(c1, t1, c2, t2)
    dots1 = {d: (val, vt) for d, val, vt in v1}
    dots2 = {d: (val, vt) for d, val, vt in v2}
    kept = {}
    for d, (val, vt) in dots1.items():
        if d > c2 or d in dots2:
            kept[d] = (val, vt)
    for d, (val, vt) in dots2.items():
        if d > c1:
            kept[d] = (val, vt)
        elif d in dots1:
            # The same dot is the same write; should both copies differ anyway, pick one by a fixed rule.
            mine = kept[d]
            if (vt, _value_key(val)) > (mine[1], _value_key(mine[0])):
                kept[d] = (val, vt)
    values = [(d, val, vt) for d, (val, vt) in sorted(kept.items(), reverse=True)]
    return (actor, counter, ts, values)


class Siblings:
    """A dotted version vector set: the concurrent versions of one key with their causal history."""

    __slots__ = ("_entries", "_anon")

    def __init__(self):
        # entries: sorted list of (actor, counter, timestamp, [(dot, value, timestamp), ...] newest dot first)
        # anon: sorted list of (value, timestamp) not stamped by a coordinator yet
        self._entries = []
        self._anon = []

    @classmethod
    def _make(cls, entries, anon):
        s = cls.__new__(cls)
        s._entries = entries
        s._anon = anon
        return s

    @classmethod
    def new(cls, value, context=None):
        _check_value(value)
        if context is None or (isinstance(context, (bytes, bytearray)) and len(context) == 0):
            clock = []
        elif isinstance(context, VClock):
            clock = context._entries
        else:
            clock = VClock.from_bytes(context)._entries
        return cls._make([(a, c, t, []) for a, c, t in clock], [(value, 0)])

    @classmethod
    def empty(cls):
        return cls._make([], [])

    def update(self, existing, actor, now=0):
        _check_actor(actor)
        _check_u64(now, "now")
        if len(self._anon) != 1 or any(e[3] for e in self._entries):
            raise ValueError("update() needs a client write made by Siblings.new()")
        if existing is None:
            existing = Siblings.empty()
        elif not isinstance(existing, Siblings):
            raise TypeError("existing must be a Siblings or None")
        value = self._anon[0][0]
        synced = Siblings._make(self._entries, []).sync(existing)
        entries = list(synced._entries)
        for i, (a, c, _t, vals) in enumerate(entries):
            if a == actor:
                if c + 1 >= _U64:
                    raise ValueError("counter overflows 64 bits")
                entries[i] = (a, c + 1, now, [(c + 1, value, now)] + vals)
                break
            if a > actor:
                entries.insert(i, (actor, 1, now, [(1, value, now)]))
                break
        else:
            entries.append((actor, 1, now, [(1, value, now)]))
        return Siblings._make(entries, synced._anon)

    def supersede(self, value, actor, now=0):
        """A write of ``value`` that supersedes every version here, stamped by ``actor`` and pruned:
        ``Siblings.new(value, self.clock()).update(self, actor, now).prune(now)`` (a last-write-wins put on the
        replica that coordinates it)."""
        return Siblings.new(value, self.clock()).update(self, actor, now).prune(now)

    def sync(self, other):
        if not isinstance(other, Siblings):
            raise TypeError("can only sync with a Siblings")
        a, b = self._entries, other._entries
        order = _compare_counts(a, b)
        if order == DOMINATED:
            anon = other._anon
        elif order == DESCENDS:
            anon = self._anon
        else:
            anon = sorted(set(self._anon) | set(other._anon), key=_anon_key)
        return Siblings._make(_merge_sorted(a, b, _merge_entry), list(anon))

    @property
    def values(self):
        out = [val for e in self._entries for _d, val, _t in e[3]]
        out.extend(val for val, _t in self._anon)
        return out

    def live_values(self):
        return [v for v in self.values if v is not None]

    def is_deleted(self):
        values = self.values
        return bool(values) and all(v is None for v in values)

    def __len__(self):
        return sum(len(e[3]) for e in self._entries) + len(self._anon)

    def clock(self):
        return VClock._make([(a, c, t) for a, c, t, _v in self._entries])

    def context(self):
        return self.clock().to_bytes()

    def compare(self, other):
        if not isinstance(other, Siblings):
            raise TypeError("can only compare with a Siblings")
        return _compare_counts(self._entries, other._entries)

    def digest(self):
        """16 bytes that stand for this object in the anti-entropy trees: MurmurHash3 x64_128 of its encoding
        (the trees hash (key, digest) pairs with the same function; a cryptographic digest made them no
        stronger)."""
        return mmh3.hash_bytes(self.to_bytes())

    def lww(self):
        best = None
        best_key = None
        for ei, (actor, _c, _t, vals) in enumerate(self._entries):
            for d, _val, vt in vals:
                key = (vt, actor, d)
                if best_key is None or key > best_key:
                    best_key, best = key, ("e", ei, d)
        for ai, (_val, vt) in enumerate(self._anon):
            key = (vt, b"", -len(self._anon) + ai)
            if best_key is None or key > best_key:
                best_key, best = key, ("a", ai, 0)
        if best is None:
            return Siblings._make(list(self._entries), list(self._anon))
        entries = []
        for ei, (a, c, t, vals) in enumerate(self._entries):
            keep = [v for v in vals if best[0] == "e" and best[1] == ei and v[0] == best[2]]
            entries.append((a, c, t, keep))
        anon = [self._anon[best[1]]] if best[0] == "a" else []
        return Siblings._make(entries, anon)

    def only(self, actor, dot):
        """This set with the one version ``actor`` stamped as ``dot`` left, and its whole clock (every other
        version counts as seen and replaced); None when it does not hold that version."""
        _check_actor(actor)
        _check_u64(dot, "dot")
        for a, _c, _t, vals in self._entries:
            if a == actor:
                if any(d == dot for d, _val, _vt in vals):
                    return Siblings._make([(a2, c2, t2, [v for v in vals2 if a2 == actor and v[0] == dot])
                                           for a2, c2, t2, vals2 in self._entries], [])
                break
        return None

    def prune(self, now, small=10, big=50, young=20, old=86400):
        # Entries that still hold a sibling stay: dropping them would lose the sibling's dot.
        entries = self._entries
        dropped = _prune_order(entries, now, small, big, young, old, keep=lambda i: bool(entries[i][3]))
        return Siblings._make([e for i, e in enumerate(entries) if i not in dropped], list(self._anon))

    def to_bytes(self):
        # format byte 1; anonymous count, then per anonymous value: timestamp, value; entry count, then per
        # entry (sorted by actor): actor length, actor, counter, timestamp, value count, then per value: the
        # gap below the previous dot (counter for the first; dots strictly decrease, so contiguous dots are all
        # 0), timestamp, value. A value is 0 for a tombstone, else length + 1 and the bytes. All varints.
        out = bytearray((_SIBLINGS_FORMAT,))
        _put_varint(out, len(self._anon))
        for value, ts in self._anon:
            _put_varint(out, ts)
            _put_value(out, value)
        _put_varint(out, len(self._entries))
        for actor, counter, ts, vals in self._entries:
            _put_varint(out, len(actor))
            out += actor
            _put_varint(out, counter)
            _put_varint(out, ts)
            _put_varint(out, len(vals))
            previous = counter + 1
            for d, value, vt in vals:
                _put_varint(out, previous - d - 1)
                previous = d
                _put_varint(out, vt)
                _put_value(out, value)
        return bytes(out)

    @classmethod
    def from_bytes(cls, data):
        data = _as_data(data)
        if not data or data[0] != _SIBLINGS_FORMAT:
            raise ProtocolError("unknown sibling set format")
        pos = 1
        n_anon, pos = _get_varint(data, pos)
        if n_anon > len(data) - pos:
            raise ProtocolError("count runs past the end of the data")
        anon = []
        for _ in range(n_anon):
            ts, pos = _get_varint(data, pos)
            value, pos = _get_value(data, pos)
            item = (value, ts)
            if anon and _anon_key(item) <= _anon_key(anon[-1]):
                raise ProtocolError("anonymous values not strictly sorted")
            anon.append(item)
        n_entries, pos = _get_varint(data, pos)
        if n_entries > len(data) - pos:
            raise ProtocolError("count runs past the end of the data")
        entries = []
        for _ in range(n_entries):
            actor, pos = _get_bytes(data, pos)
            counter, pos = _get_varint(data, pos)
            ts, pos = _get_varint(data, pos)
            if counter == 0:
                raise ProtocolError("zero counter in sibling set")
            if entries and actor <= entries[-1][0]:
                raise ProtocolError("sibling set actors not strictly sorted")
            n_vals, pos = _get_varint(data, pos)
            if n_vals > len(data) - pos:
                raise ProtocolError("count runs past the end of the data")
            vals = []
            previous = counter + 1
            for _ in range(n_vals):
                gap, pos = _get_varint(data, pos)
                if gap + 1 >= previous:
                    raise ProtocolError("dot below 1 in sibling set")
                d = previous - gap - 1
                previous = d
                vt, pos = _get_varint(data, pos)
                value, pos = _get_value(data, pos)
                vals.append((d, value, vt))
            entries.append((actor, counter, ts, vals))
        if pos != len(data):
            raise ProtocolError("trailing bytes after sibling set")
        return cls._make(entries, anon)

    def __eq__(self, other):
        if not isinstance(other, Siblings):
            return NotImplemented
        return self._entries == other._entries and self._anon == other._anon

    __hash__ = None

    def __reduce__(self):
        return (Siblings.from_bytes, (self.to_bytes(),))

    def __repr__(self):
        return f"Siblings(values={self.values!r}, clock={self.clock()!r})"


def _put_value(out, value):
    if value is None:
        out.append(0)
    else:
        _put_varint(out, len(value) + 1)
        out += value


def _get_value(data, pos):
    tag, pos = _get_varint(data, pos)
    if tag == 0:
        return None, pos
    length = tag - 1
    if length > len(data) - pos:
        raise ProtocolError("value length runs past the end of the data")
    return bytes(data[pos : pos + length]), pos + length


def reconcile(sets):
    """Sync every replica's set into one: the read path's merge of R replies."""
    result = Siblings.empty()
    for s in sets:
        result = result.sync(s)
    return result


__all__ = ["EQUAL", "DESCENDS", "DOMINATED", "CONCURRENT", "VClock", "Siblings", "reconcile"]
