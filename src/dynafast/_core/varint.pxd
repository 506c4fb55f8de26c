# Unsigned LEB128 varints (7 bits a byte, low group first, high bit set on every byte but the last), the one
# copy the codec and the clock formats cimport. All inline: they sit in the decoders' inner loops.
from libc.stdint cimport uint64_t

cdef enum:
    MAX_VARINT_SIZE = 10     # a u64 in 7-bit groups


cdef inline Py_ssize_t varint_size(uint64_t v) noexcept nogil:
    cdef Py_ssize_t n = 1
    while v >= 0x80:
        v >>= 7
        n += 1
    return n


# Writes v at w (room for MAX_VARINT_SIZE bytes is the caller's job); returns the end of what it wrote.
cdef inline unsigned char* put_varint(unsigned char* w, uint64_t v) noexcept nogil:
    while v >= 0x80:
        w[0] = <unsigned char>((v & 0x7F) | 0x80)
        w += 1
        v >>= 7
    w[0] = <unsigned char>v
    return w + 1


cdef inline int _varint_error(str problem) except -1:
    # Imported here, on the error path only: a .pxd cannot import at module level.
    from dynafast.errors import ProtocolError
    raise ProtocolError(problem)


# Reads a varint at p[pos[0]] (no further than end) into out and moves pos past it. ProtocolError when it is
# truncated or overflows 64 bits, and with canonical when it is longer than needed (the codec accepts that;
# the clock formats, whose bytes are compared and hashed, do not).
cdef inline int read_varint(const unsigned char* p, Py_ssize_t end, Py_ssize_t* pos, uint64_t* out,
                            bint canonical) except -1:
    cdef uint64_t result = 0
    cdef int shift = 0
    cdef unsigned char byte
    while True:
        if pos[0] >= end:
            _varint_error("truncated varint")
            return -1  # not reached (it raises); tells the C compiler that out is only read after a success
        byte = p[pos[0]]
        pos[0] += 1
        if shift == 63 and byte > 1:  # the tenth byte: only bit 63 is left
            _varint_error("varint overflows 64 bits")
            return -1
        result |= (<uint64_t>(byte & 0x7F)) << shift
        if byte < 0x80:
            if canonical and byte == 0 and shift:  # a zero last byte after the first: a longer encoding
                _varint_error("varint is not minimal")
                return -1
            out[0] = result
            return 0
        shift += 7
