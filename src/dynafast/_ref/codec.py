"""Wire protocol codec, plain-Python reference of ``dynafast._core.codec``.

Frame layout (big-endian; docs/protocol.md is the full description)::

    u32 length (of everything after it) | u8 version | u8 message type | u32 request id | body

The body is a sequence of tagged fields (see the TAG_* constants). The compiled twin must produce identical
bytes and identical decode results, errors included.
"""
import operator
import struct

from dynafast.errors import ProtocolError

PROTOCOL_VERSION = 1
MAX_FRAME_DEFAULT = 64 * 1024 * 1024

# Field widths: keep in step with codec.pxd, which is the one place they are defined for the compiled build.
LENGTH_SIZE = 4
HEADER_SIZE = 10  # u32 length + u8 version + u8 type + u32 request id
MIN_FRAME_LENGTH = 6  # the length field counts version + type + request id + body
MAX_VARINT_SIZE = 10

TAG_NONE = 0
TAG_FALSE = 1
TAG_TRUE = 2
TAG_INT = 3  # zigzag varint, signed 64-bit
TAG_FLOAT = 4  # 8-byte IEEE 754 double
TAG_BYTES = 5  # varint length + bytes
TAG_STR = 6  # varint length + utf-8
TAG_LIST = 7  # varint count + tagged items (no nested lists)
TAG_LIST_BYTES = 8  # varint count + (varint length + bytes) per item: a list of values without per-item tags

_HEADER = struct.Struct(">IBBI")
_LENGTH = struct.Struct(">I")
_DOUBLE = struct.Struct(">d")
_INT64_MIN = -(1 << 63)
_INT64_MAX = (1 << 63) - 1
_U32_MAX = (1 << 32) - 1
_BYTES_LIKE = (bytes, bytearray, memoryview)


def _put_varint(out, value):
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


def _put_bytes(out, value):
    view = memoryview(value)
    _put_varint(out, view.nbytes)
    out += view


def _put_value(out, value, top):
    # Order matters: bool before int (bool is an int), int before float.
    if value is None:
        out.append(TAG_NONE)
    elif value is True:
        out.append(TAG_TRUE)
    elif value is False:
        out.append(TAG_FALSE)
    elif isinstance(value, int):
        value = int(value)
        if value < _INT64_MIN or value > _INT64_MAX:
            raise OverflowError("int field out of signed 64-bit range")
        out.append(TAG_INT)
        _put_varint(out, (value << 1) if value >= 0 else ((-value) << 1) - 1)
    elif isinstance(value, float):
        out.append(TAG_FLOAT)
        out += _DOUBLE.pack(value)
    elif isinstance(value, _BYTES_LIKE):
        out.append(TAG_BYTES)
        _put_bytes(out, value)
    elif isinstance(value, str):
        data = value.encode("utf-8")
        out.append(TAG_STR)
        _put_varint(out, len(data))
        out += data
    elif isinstance(value, (list, tuple)):
        if not top:
            raise TypeError("lists may be nested one level only")
        if value and all(isinstance(item, _BYTES_LIKE) for item in value):
            out.append(TAG_LIST_BYTES)
            _put_varint(out, len(value))
            for item in value:
                _put_bytes(out, item)
        else:
            out.append(TAG_LIST)
            _put_varint(out, len(value))
            for item in value:
                _put_value(out, item, False)
    else:
        raise TypeError(f"cannot encode a field of type {type(value).__name__}")


def _frame(msg_type, request_id, fields):
    msg_type = operator.index(msg_type)
    request_id = operator.index(request_id)
    if not 0 <= msg_type <= 0xFF:
        raise OverflowError("message type out of u8 range")
    if not 0 <= request_id <= _U32_MAX:
        raise OverflowError("request id out of u32 range")
    if not isinstance(fields, (tuple, list)):
        raise TypeError("fields must be a tuple or a list")
    out = bytearray(HEADER_SIZE)
    for value in fields:
        _put_value(out, value, True)
    length = len(out) - LENGTH_SIZE
    if length > _U32_MAX:
        raise ValueError("frame too large for its u32 length field")
    _HEADER.pack_into(out, 0, length, PROTOCOL_VERSION, msg_type, request_id)
    return out


def encode(msg_type, request_id, fields):
    """One frame as bytes."""
    return bytes(_frame(msg_type, request_id, fields))


def encode_into(buf, msg_type, request_id, fields):
    """Append one frame to ``buf`` (a bytearray). Nothing is appended when encoding fails."""
    buf += _frame(msg_type, request_id, fields)


def _get_varint(data, pos, end):
    result = 0
    shift = 0
    for i in range(MAX_VARINT_SIZE):
        if pos >= end:
            raise ProtocolError("truncated varint")
        byte = data[pos]
        pos += 1
        if i == MAX_VARINT_SIZE - 1 and byte > 1:
            raise ProtocolError("varint overflows 64 bits")
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
    raise ProtocolError("varint too long")  # not reached: the 10th byte either ends it or overflows


def _get_bytes(data, pos, end):
    size, pos = _get_varint(data, pos, end)
    if size > end - pos:
        raise ProtocolError("field runs past the end of its frame")
    return bytes(data[pos:pos + size]), pos + size


def _get_value(data, pos, end, top):
    tag = data[pos]
    pos += 1
    if tag == TAG_NONE:
        return None, pos
    if tag == TAG_TRUE:
        return True, pos
    if tag == TAG_FALSE:
        return False, pos
    if tag == TAG_INT:
        z, pos = _get_varint(data, pos, end)
        return (z >> 1) ^ -(z & 1), pos
    if tag == TAG_FLOAT:
        if end - pos < 8:
            raise ProtocolError("truncated float field")
        return _DOUBLE.unpack_from(data, pos)[0], pos + 8
    if tag == TAG_BYTES:
        return _get_bytes(data, pos, end)
    if tag == TAG_STR:
        raw, pos = _get_bytes(data, pos, end)
        try:
            return raw.decode("utf-8"), pos
        except UnicodeDecodeError:
            raise ProtocolError("invalid utf-8 in a str field") from None
    if tag == TAG_LIST or tag == TAG_LIST_BYTES:
        if not top:
            raise ProtocolError("nested list")
        count, pos = _get_varint(data, pos, end)
        if count > end - pos:  # every item takes at least one byte: a cheap bound against huge counts
            raise ProtocolError("list count runs past the end of its frame")
        items = []
        if tag == TAG_LIST_BYTES:
            for _ in range(count):
                item, pos = _get_bytes(data, pos, end)
                items.append(item)
        else:
            for _ in range(count):
                if pos >= end:
                    raise ProtocolError("list runs past the end of its frame")
                item, pos = _get_value(data, pos, end, False)
                items.append(item)
        return items, pos
    raise ProtocolError(f"unknown field tag {tag}")


def _decode_body(data, pos, end):
    """The fields of one body, or the ProtocolError describing why they are malformed."""
    fields = []
    try:
        while pos < end:
            value, pos = _get_value(data, pos, end, True)
            fields.append(value)
    except ProtocolError as exc:
        return exc
    return tuple(fields)


class Decoder:
    """Incremental frame decoder: feed it bytes as they arrive, get complete frames back."""

    def __init__(self, max_frame=MAX_FRAME_DEFAULT):
        self.max_frame = int(max_frame)
        self._buf = bytearray()
        self._failed = None

    @property
    def buffered(self):
        """Bytes received but not yet part of a complete frame."""
        return len(self._buf)

    def feed(self, data):
        """Every complete frame in the data so far, as (msg_type, request_id, fields).

        A frame with a sane header but a malformed body comes back with a ProtocolError instance in place of
        its fields. A bad version or length raises ProtocolError (its ``frames`` attribute holds the frames
        completed before it); the stream cannot be resynchronised and every later feed raises too.
        """
        if self._failed is not None:
            raise ProtocolError(f"stream already failed: {self._failed}")
        buf = self._buf
        buf += data
        frames = []
        pos = 0
        size = len(buf)
        error = None
        while size - pos >= LENGTH_SIZE:
            (length,) = _LENGTH.unpack_from(buf, pos)
            if length < MIN_FRAME_LENGTH:
                error = f"frame length {length} is shorter than a header"
                break
            if length > self.max_frame:
                error = f"frame length {length} exceeds the limit of {self.max_frame}"
                break
            if size - pos > LENGTH_SIZE and buf[pos + LENGTH_SIZE] != PROTOCOL_VERSION:
                error = f"unsupported protocol version {buf[pos + LENGTH_SIZE]}"
                break
            end = pos + LENGTH_SIZE + length
            if end > size:
                break
            _, _, msg_type, request_id = _HEADER.unpack_from(buf, pos)
            frames.append((msg_type, request_id, _decode_body(buf, pos + HEADER_SIZE, end)))
            pos = end
        if error is not None:
            self._failed = error
            del buf[:]
            exc = ProtocolError(error)
            exc.frames = frames
            raise exc
        del buf[:pos]
        return frames
