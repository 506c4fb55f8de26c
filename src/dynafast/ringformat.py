"""The ring's byte format, and the limits it sets on what a ring may hold.

Both builds of the ring (``dynafast._core.ring`` and its reference ``dynafast._ref.ring``) check their
arguments and read and write their bytes here, so the two can never drift apart on the wire.

Layout, little-endian: magic ``DFRG`` (4), format version (1), log2 Q (1), N (2), ring version (8), member
count (2); then per member (sorted by id) its id and its zone, each as a uint16 length and UTF-8; then the
owner of each partition as a uint16 index into the members.
"""
import struct

from dynafast.errors import ProtocolError

MAGIC = b"DFRG"
FORMAT_VERSION = 1
MIN_PARTITIONS = 8
MAX_PARTITIONS = 4096
MAX_MEMBERS = 65535  # member indices are uint16
MAX_NAME = 65535

# magic(4) format(1) log2q(1) n(2) version(8) members(2)
_HEADER = struct.Struct("<4sBBHQH")
_LEN = struct.Struct("<H")


# -- arguments -----------------------------------------------------------------------------------------
def check_partitions(partitions):
    """log2 of ``partitions``, which must be a power of two in MIN_PARTITIONS..MAX_PARTITIONS."""
    if (
        not isinstance(partitions, int)
        or isinstance(partitions, bool)
        or partitions < MIN_PARTITIONS
        or partitions > MAX_PARTITIONS
        or partitions & (partitions - 1)
    ):
        raise ValueError(f"partitions must be a power of two in {MIN_PARTITIONS}..{MAX_PARTITIONS}")
    return partitions.bit_length() - 1


def check_members(members, zones):
    """(sorted tuple of member ids, {member: zone label}); members without a zone get the label ""."""
    if isinstance(members, (str, bytes)):
        raise TypeError("members is an iterable of node ids")
    ids = list(members)
    for m in ids:
        if not isinstance(m, str):
            raise TypeError("member ids are str")
        if len(m.encode()) > MAX_NAME:
            raise ValueError("member id too long")
    if not ids:
        raise ValueError("a ring needs at least one member")
    if len(set(ids)) != len(ids):
        raise ValueError("duplicate members")
    if len(ids) > MAX_MEMBERS:
        raise ValueError(f"at most {MAX_MEMBERS} members")
    zones = dict(zones or {})
    out = {}
    for m in ids:
        z = zones.get(m, "")
        if not isinstance(z, str):
            raise TypeError("zone labels are str")
        if len(z.encode()) > MAX_NAME:
            raise ValueError("zone label too long")
        out[m] = z
    return tuple(sorted(ids)), out


def check_n(n):
    if not isinstance(n, int) or isinstance(n, bool) or n < 1 or n > MAX_MEMBERS:
        raise ValueError("n must be an integer >= 1")
    return n


def check_version(version):
    if not isinstance(version, int) or isinstance(version, bool) or not 0 <= version < 2**64:
        raise ValueError("version must be an unsigned 64-bit integer")
    return version


# -- bytes ---------------------------------------------------------------------------------------------
def pack(log2q, n, version, members, zones, owner_le):
    """Serialised ring: header, (member id, zone) pairs as length-prefixed UTF-8, owners as uint16 LE."""
    parts = [_HEADER.pack(MAGIC, FORMAT_VERSION, log2q, n, version, len(members))]
    for m in members:
        for text in (m, zones[m]):
            raw = text.encode()
            parts.append(_LEN.pack(len(raw)))
            parts.append(raw)
    parts.append(owner_le)
    return b"".join(parts)


def _as_bytes(data):
    if isinstance(data, bytes):
        return data
    try:
        view = memoryview(data)  # str and objects without the buffer protocol raise TypeError
    except TypeError as exc:
        raise ProtocolError("ring: data is not bytes") from exc
    if not view.c_contiguous:
        raise ProtocolError("ring: data is not bytes")
    return view.tobytes()


def parse(data):
    """(log2q, n, version, members, zones, owner indices as a tuple); ProtocolError on any malformed input."""
    data = _as_bytes(data)
    if len(data) < _HEADER.size:
        raise ProtocolError("ring: truncated header")
    magic, fmt, log2q, n, version, count = _HEADER.unpack_from(data)
    if magic != MAGIC or fmt != FORMAT_VERSION:
        raise ProtocolError("ring: bad magic or format version")
    if not 3 <= log2q <= 12 or n < 1 or count < 1:
        raise ProtocolError("ring: bad header field")
    q = 1 << log2q
    pos = _HEADER.size
    members, zones = [], {}
    for _ in range(count):
        texts = []
        for _ in range(2):
            if pos + 2 > len(data):
                raise ProtocolError("ring: truncated member table")
            (size,) = _LEN.unpack_from(data, pos)
            pos += 2
            if pos + size > len(data):
                raise ProtocolError("ring: truncated member table")
            try:
                texts.append(data[pos : pos + size].decode())
            except UnicodeDecodeError as exc:
                raise ProtocolError("ring: member id is not UTF-8") from exc
            pos += size
        members.append(texts[0])
        zones[texts[0]] = texts[1]
    if any(a >= b for a, b in zip(members, members[1:])):
        raise ProtocolError("ring: members not sorted and unique")
    if len(data) != pos + 2 * q:
        raise ProtocolError("ring: owner table has the wrong size")
    owner = struct.unpack_from(f"<{q}H", data, pos)
    if max(owner) >= count:
        raise ProtocolError("ring: owner index out of range")
    return log2q, n, version, tuple(members), zones, owner
