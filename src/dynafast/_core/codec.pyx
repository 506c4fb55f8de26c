# cython: language_level=3
"""Wire protocol codec: frames of tagged fields, encoded into and decoded out of reusable buffers.

The plain-Python twin is dynafast._ref.codec; docs/protocol.md describes the format. Field widths and tags
are declared in codec.pxd.
"""
from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_SIMPLE
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE, PyByteArray_Resize
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.float cimport PyFloat_AS_DOUBLE
from cpython.list cimport PyList_AsTuple
from cpython.number cimport PyNumber_Index
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from cpython.unicode cimport PyUnicode_DecodeUTF8
from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t
from libc.string cimport memcpy

from dynafast._core.varint cimport put_varint, read_varint

from dynafast.errors import ProtocolError

cdef extern from "Python.h":
    const char *PyUnicode_AsUTF8AndSize(object unicode, Py_ssize_t *size) except NULL
    bint PyLong_Check(object o)
    bint PyFloat_Check(object o)
    bint PyBytes_Check(object o)
    bint PyByteArray_Check(object o)
    bint PyMemoryView_Check(object o)
    bint PyUnicode_Check(object o)
    bint PyList_Check(object o)
    bint PyTuple_Check(object o)


PROTOCOL_VERSION = FRAME_VERSION
MAX_FRAME_DEFAULT = MAX_FRAME_DEFAULT_C
globals()["HEADER_SIZE"] = HEADER_SIZE  # same public constants as the reference
globals()["LENGTH_SIZE"] = LENGTH_SIZE
globals()["MIN_FRAME_LENGTH"] = MIN_FRAME_LENGTH
globals()["MAX_VARINT_SIZE"] = MAX_VARINT_SIZE

cdef union _DoubleBits:
    double d
    uint64_t u


cdef inline void _store_u32(char *p, uint32_t v) noexcept:
    p[0] = <char>(v >> 24)
    p[1] = <char>(v >> 16)
    p[2] = <char>(v >> 8)
    p[3] = <char>v


cdef inline uint32_t _load_u32(const unsigned char *p) noexcept:
    return (<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16) | (<uint32_t>p[2] << 8) | <uint32_t>p[3]


cdef inline bint _is_bytes_like(object value):
    return PyBytes_Check(value) or PyByteArray_Check(value) or PyMemoryView_Check(value)


cdef class WriteBuffer:

    def __cinit__(self):
        self.buf = <char *>PyMem_Malloc(WRITE_BUFFER_INITIAL)
        if self.buf is NULL:
            raise MemoryError()
        self.capacity = WRITE_BUFFER_INITIAL
        self.size = 0

    def __dealloc__(self):
        PyMem_Free(self.buf)

    cdef int _grow(self, Py_ssize_t extra) except -1:
        cdef Py_ssize_t want = self.size + extra
        cdef Py_ssize_t new_capacity = self.capacity * 2
        if new_capacity < want:
            new_capacity = want
        cdef char *grown = <char *>PyMem_Realloc(self.buf, new_capacity)
        if grown is NULL:
            raise MemoryError()
        self.buf = grown
        self.capacity = new_capacity
        return 0

    cdef inline int reserve(self, Py_ssize_t extra) except -1:
        if self.size + extra > self.capacity:
            return self._grow(extra)
        return 0

    cdef int reset(self) except -1:
        # Give back memory after an unusually large frame so one big value does not pin it forever.
        cdef char *small
        if self.capacity > WRITE_BUFFER_KEEP:
            small = <char *>PyMem_Realloc(self.buf, WRITE_BUFFER_INITIAL)
            if small is not NULL:
                self.buf = small
                self.capacity = WRITE_BUFFER_INITIAL
        self.size = 0
        return 0

    cdef int write_varint(self, uint64_t value) except -1:
        self.reserve(MAX_VARINT_SIZE)
        cdef unsigned char *start = <unsigned char *>self.buf + self.size
        self.size += put_varint(start, value) - start
        return 0

    cdef int write_data(self, const char *data, Py_ssize_t size) except -1:
        self.reserve(size)
        memcpy(self.buf + self.size, data, size)
        self.size += size
        return 0

    cdef int write_bytes_like(self, object value) except -1:
        # varint length + data, for bytes / bytearray / memoryview
        cdef Py_buffer view
        if PyBytes_Check(value):
            self.reserve(MAX_VARINT_SIZE + PyBytes_GET_SIZE(value))
            self.write_varint(<uint64_t>PyBytes_GET_SIZE(value))
            self.write_data(PyBytes_AS_STRING(value), PyBytes_GET_SIZE(value))
            return 0
        PyObject_GetBuffer(value, &view, PyBUF_SIMPLE)
        try:
            self.reserve(MAX_VARINT_SIZE + view.len)
            self.write_varint(<uint64_t>view.len)
            self.write_data(<const char *>view.buf, view.len)
        finally:
            PyBuffer_Release(&view)
        return 0

    cdef int write_value(self, object value, bint top) except -1:
        # Order matters: bool before int (bool is an int), int before float. Same order as the reference.
        cdef int64_t i
        cdef _DoubleBits bits
        cdef const char *utf8
        cdef Py_ssize_t n
        cdef char *p
        cdef int k
        cdef bint all_bytes
        if value is None:
            self.reserve(1)
            self.buf[self.size] = TAG_NONE
            self.size += 1
        elif value is True:
            self.reserve(1)
            self.buf[self.size] = TAG_TRUE
            self.size += 1
        elif value is False:
            self.reserve(1)
            self.buf[self.size] = TAG_FALSE
            self.size += 1
        elif PyLong_Check(value):
            i = value  # OverflowError outside signed 64-bit
            self.reserve(1 + MAX_VARINT_SIZE)
            self.buf[self.size] = TAG_INT
            self.size += 1
            self.write_varint((<uint64_t>i << 1) ^ <uint64_t>(i >> 63))
        elif PyFloat_Check(value):
            bits.d = PyFloat_AS_DOUBLE(value)
            self.reserve(1 + FLOAT_SIZE)
            p = self.buf + self.size
            p[0] = TAG_FLOAT
            for k in range(FLOAT_SIZE):
                p[1 + k] = <char>(bits.u >> (56 - 8 * k))
            self.size += 1 + FLOAT_SIZE
        elif _is_bytes_like(value):
            self.reserve(1)
            self.buf[self.size] = TAG_BYTES
            self.size += 1
            self.write_bytes_like(value)
        elif PyUnicode_Check(value):
            utf8 = PyUnicode_AsUTF8AndSize(value, &n)
            self.reserve(1 + MAX_VARINT_SIZE + n)
            self.buf[self.size] = TAG_STR
            self.size += 1
            self.write_varint(<uint64_t>n)
            self.write_data(utf8, n)
        elif PyList_Check(value) or PyTuple_Check(value):
            if not top:
                raise TypeError("lists may be nested one level only")
            n = len(value)
            all_bytes = n > 0
            for item in value:
                if not _is_bytes_like(item):
                    all_bytes = False
                    break
            self.reserve(1 + MAX_VARINT_SIZE)
            self.buf[self.size] = TAG_LIST_BYTES if all_bytes else TAG_LIST
            self.size += 1
            self.write_varint(<uint64_t>n)
            if all_bytes:
                for item in value:
                    self.write_bytes_like(item)
            else:
                for item in value:
                    self.write_value(item, False)
        else:
            raise TypeError(f"cannot encode a field of type {type(value).__name__}")
        return 0

    cdef int write_frame(self, object msg_type, object request_id, object fields) except -1:
        # PyNumber_Index refuses floats (TypeError); range errors are OverflowError, as in the reference.
        cdef uint8_t mtype = PyNumber_Index(msg_type)
        cdef uint32_t rid = PyNumber_Index(request_id)
        cdef Py_ssize_t start = self.size
        cdef Py_ssize_t length
        if not (PyTuple_Check(fields) or PyList_Check(fields)):
            raise TypeError("fields must be a tuple or a list")
        self.reserve(HEADER_SIZE)
        self.size += HEADER_SIZE
        for value in fields:
            self.write_value(value, True)
        length = self.size - start - LENGTH_SIZE
        if <uint64_t>length > 0xFFFFFFFFULL:
            raise ValueError("frame too large for its u32 length field")
        cdef char *p = self.buf + start
        _store_u32(p, <uint32_t>length)
        p[LENGTH_SIZE] = FRAME_VERSION
        p[LENGTH_SIZE + VERSION_SIZE] = <char>mtype
        _store_u32(p + LENGTH_SIZE + VERSION_SIZE + TYPE_SIZE, rid)
        return 0


# One scratch buffer for the module: encoding runs no Python code and holds the GIL, so it is never re-entered.
cdef WriteBuffer _scratch = WriteBuffer()


def encode(msg_type, request_id, fields):
    """One frame as bytes."""
    _scratch.reset()
    _scratch.write_frame(msg_type, request_id, fields)
    return PyBytes_FromStringAndSize(_scratch.buf, _scratch.size)


def encode_into(bytearray buf not None, msg_type, request_id, fields):
    """Append one frame to ``buf``. Nothing is appended when encoding fails."""
    _scratch.reset()
    _scratch.write_frame(msg_type, request_id, fields)
    cdef Py_ssize_t old = PyByteArray_GET_SIZE(buf)
    PyByteArray_Resize(buf, old + _scratch.size)
    memcpy(PyByteArray_AS_STRING(buf) + old, _scratch.buf, _scratch.size)


# -- decoding ---------------------------------------------------------------------------------------------

cdef inline Py_ssize_t _read_length(const unsigned char *data, Py_ssize_t *pos, Py_ssize_t end) except -1:
    cdef uint64_t size
    read_varint(data, end, pos, &size, False)
    if size > <uint64_t>(end - pos[0]):
        raise ProtocolError("field runs past the end of its frame")
    return <Py_ssize_t>size


cdef object _read_bytes(const unsigned char *data, Py_ssize_t *pos, Py_ssize_t end):
    cdef Py_ssize_t size = _read_length(data, pos, end)
    value = PyBytes_FromStringAndSize(<const char *>data + pos[0], size)
    pos[0] += size
    return value


cdef object _read_value(const unsigned char *data, Py_ssize_t *pos, Py_ssize_t end, bint top):
    cdef unsigned char tag = data[pos[0]]
    cdef uint64_t z
    cdef uint64_t count
    cdef uint64_t k
    cdef Py_ssize_t size
    cdef _DoubleBits bits
    cdef int b
    cdef list items
    pos[0] += 1
    if tag == TAG_NONE:
        return None
    if tag == TAG_TRUE:
        return True
    if tag == TAG_FALSE:
        return False
    if tag == TAG_INT:
        read_varint(data, end, pos, &z, False)
        return <int64_t>((z >> 1) ^ (0 - (z & 1)))
    if tag == TAG_FLOAT:
        if end - pos[0] < FLOAT_SIZE:
            raise ProtocolError("truncated float field")
        bits.u = 0
        for b in range(FLOAT_SIZE):
            bits.u = (bits.u << 8) | data[pos[0] + b]
        pos[0] += FLOAT_SIZE
        return bits.d
    if tag == TAG_BYTES:
        return _read_bytes(data, pos, end)
    if tag == TAG_STR:
        size = _read_length(data, pos, end)
        try:
            value = PyUnicode_DecodeUTF8(<const char *>data + pos[0], size, NULL)
        except UnicodeDecodeError:
            raise ProtocolError("invalid utf-8 in a str field") from None
        pos[0] += size
        return value
    if tag == TAG_LIST or tag == TAG_LIST_BYTES:
        if not top:
            raise ProtocolError("nested list")
        read_varint(data, end, pos, &count, False)
        if count > <uint64_t>(end - pos[0]):  # every item takes at least one byte: bounds the allocation
            raise ProtocolError("list count runs past the end of its frame")
        items = []
        if tag == TAG_LIST_BYTES:
            for k in range(count):
                items.append(_read_bytes(data, pos, end))
        else:
            for k in range(count):
                if pos[0] >= end:
                    raise ProtocolError("list runs past the end of its frame")
                items.append(_read_value(data, pos, end, False))
        return items
    raise ProtocolError(f"unknown field tag {tag}")


cdef object _decode_body(const unsigned char *data, Py_ssize_t pos, Py_ssize_t end):
    """The fields of one body as a tuple, or the ProtocolError saying why it is malformed."""
    cdef list fields = []
    try:
        while pos < end:
            fields.append(_read_value(data, &pos, end, True))
    except ProtocolError as exc:
        return exc
    return PyList_AsTuple(fields)


cdef class Decoder:
    """Incremental frame decoder: feed it bytes as they arrive, get complete frames back."""

    def __init__(self, max_frame=MAX_FRAME_DEFAULT):
        self.max_frame = max_frame
        self._buf = bytearray()
        self._failed = None
        self._error = None

    @property
    def buffered(self):
        """Bytes received but not yet part of a complete frame."""
        return PyByteArray_GET_SIZE(self._buf)

    cdef list _parse(self, const unsigned char *data, Py_ssize_t size, Py_ssize_t *consumed):
        cdef list frames = []
        cdef Py_ssize_t pos = 0
        cdef Py_ssize_t end
        cdef uint32_t length
        while size - pos >= LENGTH_SIZE:
            length = _load_u32(data + pos)
            if length < MIN_FRAME_LENGTH:
                self._error = f"frame length {length} is shorter than a header"
                break
            if length > <uint64_t>self.max_frame:
                self._error = f"frame length {length} exceeds the limit of {self.max_frame}"
                break
            if size - pos > LENGTH_SIZE and data[pos + LENGTH_SIZE] != FRAME_VERSION:
                self._error = f"unsupported protocol version {data[pos + LENGTH_SIZE]}"
                break
            end = pos + LENGTH_SIZE + <Py_ssize_t>length
            if end > size:
                break
            frames.append((
                data[pos + LENGTH_SIZE + VERSION_SIZE],
                _load_u32(data + pos + LENGTH_SIZE + VERSION_SIZE + TYPE_SIZE),
                _decode_body(data, pos + HEADER_SIZE, end),
            ))
            pos = end
        consumed[0] = pos
        return frames

    def feed(self, data):
        """Every complete frame in the data so far, as (msg_type, request_id, fields).

        A frame with a sane header but a malformed body comes back with a ProtocolError instance in place of
        its fields. A bad version or length raises ProtocolError (its ``frames`` attribute holds the frames
        completed before it); the stream cannot be resynchronised and every later feed raises too.
        """
        cdef Py_buffer view
        cdef Py_ssize_t consumed = 0
        cdef Py_ssize_t have
        cdef list frames
        if self._failed is not None:
            raise ProtocolError(f"stream already failed: {self._failed}")
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        try:
            have = PyByteArray_GET_SIZE(self._buf)
            if have == 0:
                # Common case: parse straight out of the caller's buffer, keep only an incomplete tail.
                frames = self._parse(<const unsigned char *>view.buf, view.len, &consumed)
                if self._error is None and consumed < view.len:
                    PyByteArray_Resize(self._buf, view.len - consumed)
                    memcpy(PyByteArray_AS_STRING(self._buf), <const char *>view.buf + consumed,
                           view.len - consumed)
            else:
                PyByteArray_Resize(self._buf, have + view.len)
                memcpy(PyByteArray_AS_STRING(self._buf) + have, view.buf, view.len)
                frames = self._parse(<const unsigned char *>PyByteArray_AS_STRING(self._buf),
                                     PyByteArray_GET_SIZE(self._buf), &consumed)
                if consumed:
                    del self._buf[:consumed]  # O(1): bytearray moves its start offset
        finally:
            PyBuffer_Release(&view)
        if self._error is not None:
            self._failed = self._error
            self._buf = bytearray()
            exc = ProtocolError(self._error)
            exc.frames = frames
            raise exc
        return frames
