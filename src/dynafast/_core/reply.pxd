# Writing replies into a connection's output bytearray: shared by the RESP encoder (resp.pyx) and the fast lane
# (lane.pyx), which writes its replies straight into the same buffer.
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE, PyByteArray_Resize
from libc.string cimport memcpy


cdef inline char *_grow(bytearray out, Py_ssize_t n) except NULL:
    """Room for ``n`` more bytes at the end of ``out``: where to write them."""
    cdef Py_ssize_t size = PyByteArray_GET_SIZE(out)
    PyByteArray_Resize(out, size + n)
    return PyByteArray_AS_STRING(out) + size


cdef inline int _put(bytearray out, const char *data, Py_ssize_t n) except -1:
    memcpy(_grow(out, n), data, n)
    return 0


cdef inline Py_ssize_t _line(char *p, char kind, long long value) noexcept:
    """Write ``<kind><value>\\r\\n`` at ``p`` (room for 24 bytes); its length."""
    cdef char digits[20]
    cdef Py_ssize_t n = 0, i = 1
    cdef unsigned long long v = <unsigned long long>value
    p[0] = kind
    if value < 0:
        p[1] = c'-'
        i = 2
        v = 0ULL - v
    while True:
        digits[n] = <char>(c'0' + v % 10)
        n += 1
        v //= 10
        if v == 0:
            break
    while n:
        n -= 1
        p[i] = digits[n]
        i += 1
    p[i] = c'\r'
    p[i + 1] = c'\n'
    return i + 2


cdef inline int _header(bytearray out, char kind, long long value) except -1:
    cdef char line[24]
    return _put(out, line, _line(line, kind, value))


cdef inline int _bulk(bytearray out, const char *data, Py_ssize_t n) except -1:
    """A bulk string: its header, its bytes and CRLF in one resize."""
    cdef char line[24]
    cdef Py_ssize_t h = _line(line, c'$', n)
    cdef char *p = _grow(out, h + n + 2)
    memcpy(p, line, h)
    memcpy(p + h, data, n)
    p[h + n] = c'\r'
    p[h + n + 1] = c'\n'
    return 0
