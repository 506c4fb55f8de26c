# Wire protocol codec: the contract for other extensions. All field widths live here (docs/protocol.md).
from libc.stdint cimport uint8_t, uint32_t, uint64_t, int64_t

from dynafast._core.varint cimport MAX_VARINT_SIZE  # varints are varint.pxd's


cdef enum:
    FRAME_VERSION = 1
    LENGTH_SIZE = 4          # u32 length of everything after it, big-endian
    VERSION_SIZE = 1         # u8
    TYPE_SIZE = 1            # u8 message type
    REQUEST_ID_SIZE = 4      # u32, big-endian
    HEADER_SIZE = 10         # 4 + 1 + 1 + 4
    MIN_FRAME_LENGTH = 6     # the length field counts version + type + request id + body
    FLOAT_SIZE = 8           # IEEE 754 double, big-endian
    MAX_FRAME_DEFAULT_C = 67108864   # 64 MiB
    WRITE_BUFFER_INITIAL = 4096
    WRITE_BUFFER_KEEP = 1048576      # a reused buffer grown past this is shrunk back after use


cdef enum Tag:
    TAG_NONE = 0
    TAG_FALSE = 1
    TAG_TRUE = 2
    TAG_INT = 3              # zigzag varint, signed 64-bit
    TAG_FLOAT = 4            # 8-byte double
    TAG_BYTES = 5            # varint length + bytes
    TAG_STR = 6              # varint length + utf-8
    TAG_LIST = 7             # varint count + tagged items (no nested lists)
    TAG_LIST_BYTES = 8       # varint count + (varint length + bytes) per item, no per-item tags


cdef class WriteBuffer:
    """A growable byte buffer owned by C; frames are built here and copied out once."""
    cdef char *buf
    cdef Py_ssize_t size
    cdef Py_ssize_t capacity

    cdef int _grow(self, Py_ssize_t extra) except -1
    cdef inline int reserve(self, Py_ssize_t extra) except -1
    cdef int reset(self) except -1
    cdef int write_varint(self, uint64_t value) except -1
    cdef int write_data(self, const char *data, Py_ssize_t size) except -1
    cdef int write_bytes_like(self, object value) except -1
    cdef int write_value(self, object value, bint top) except -1
    cdef int write_frame(self, object msg_type, object request_id, object fields) except -1


cdef class Decoder:
    cdef bytearray _buf
    cdef readonly Py_ssize_t max_frame
    cdef object _failed      # None, or the message of the error that broke the stream
    cdef object _error       # set by _parse when it stops at a bad header

    cdef list _parse(self, const unsigned char *data, Py_ssize_t size, Py_ssize_t *consumed)
