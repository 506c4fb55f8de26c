# cython: language_level=3
"""RESP request parser and reply encoder, compiled. The plain-Python reference is dynafast._ref.resp: the same
requests, errors and ``buffered`` from the same bytes, and the same reply bytes (the tests compare them).

A read that holds whole requests is parsed where it lies; only the unfinished tail of a read is copied, into the
parser's own buffer, and the next read is appended to it. Every header is checked against the limits before
anything is kept for it, and a request's arguments are kept as they arrive: a count or a length in a header costs
nothing until the bytes it announces are there (hiredis's reader allocates the array an array header announces).
"""
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.long cimport PyLong_AsLongLongAndOverflow
from cpython.mem cimport PyMem_Free, PyMem_Realloc
from libc.string cimport memchr, memcpy, memmove

from dynafast._core.reply cimport _bulk, _grow, _header, _put

from dynafast.resp.wire import (DEFAULT_MAX_ARGS, OK, RespError, RespProtocolError, Simple, Verbatim, error_line,
                                expected_dollar, float_text, inline_request, protocol_error)

cdef enum:
    INLINE_MAX = 64 * 1024  # dynafast.resp.wire.INLINE_MAX
    INT_MAX = 2147483647  # dynafast.resp.wire.INT_MAX
    SHRINK_ABOVE = 256 * 1024  # an emptied buffer larger than this is given back
    CR = 13
    LF = 10


cdef inline Py_ssize_t _find_crlf(const unsigned char *buf, Py_ssize_t pos, Py_ssize_t end) noexcept:
    """Where the next CRLF at or after ``pos`` starts; -1 when none has arrived."""
    cdef const unsigned char *p
    while pos < end - 1:
        p = <const unsigned char *>memchr(buf + pos, CR, end - 1 - pos)
        if p == NULL:
            return -1
        pos = p - buf
        if buf[pos + 1] == LF:
            return pos
        pos += 1
    return -1


cdef inline bint _number(const unsigned char *p, Py_ssize_t n, long long *value) noexcept:
    """Read a length as Redis's string2ll does: no sign but '-', no leading zero, no blank, within 64 bits."""
    cdef bint negative = False
    cdef unsigned long long v = 0
    cdef Py_ssize_t i = 0
    if n == 1 and p[0] == c'0':
        value[0] = 0
        return True
    if n > 0 and p[0] == c'-':
        negative = True
        i = 1
    if i >= n or n - i > 19 or p[i] < c'1' or p[i] > c'9':
        return False
    while i < n:
        if p[i] < c'0' or p[i] > c'9':
            return False
        v = v * 10 + (p[i] - c'0')  # 19 digits at most: below 2**64
        i += 1
    if negative:
        if v > 9223372036854775808ULL:
            return False
        value[0] = <long long>(0ULL - v)
    elif v > 9223372036854775807ULL:
        return False
    else:
        value[0] = <long long>v
    return True


cdef class Parser:
    """Requests out of the bytes of one connection, in the order they arrive."""

    def __cinit__(self, Py_ssize_t max_bulk, Py_ssize_t max_args=DEFAULT_MAX_ARGS):
        self.max_bulk = max_bulk
        self.max_args = max_args
        self._buf = NULL
        self._len = 0
        self._cap = 0
        self._args = None
        self._count = 0
        self._bulk = -1
        self._held = 0

    def __dealloc__(self):
        PyMem_Free(self._buf)

    @property
    def buffered(self):
        """Bytes received that are not a complete request yet."""
        return self._held + self._len

    def feed(self, data):
        """The complete requests in what arrived so far; RespProtocolError when the stream is broken."""
        cdef Py_buffer view
        cdef list out = []
        cdef Py_ssize_t used
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        try:
            if self._len == 0:
                used = self._parse(<const unsigned char *>view.buf, view.len, out)
                if used < view.len:
                    self._keep(<const unsigned char *>view.buf + used, view.len - used)
            else:
                self._keep(<const unsigned char *>view.buf, view.len)
                used = self._parse(self._buf, self._len, out)
                self._len -= used
                if self._len and used:
                    memmove(self._buf, self._buf + used, self._len)
                elif not self._len and self._cap > SHRINK_ABOVE:
                    PyMem_Free(self._buf)
                    self._buf = NULL
                    self._cap = 0
        except RespProtocolError as exc:
            exc.requests = out
            raise
        finally:
            PyBuffer_Release(&view)
        return out

    cdef int _keep(self, const unsigned char *data, Py_ssize_t n) except -1:
        """Append ``data`` to the unparsed bytes."""
        cdef Py_ssize_t cap
        cdef void *grown
        if self._len + n > self._cap:
            cap = max(self._len + n, 2 * self._cap, 4096)
            grown = PyMem_Realloc(self._buf, cap)
            if grown == NULL:
                raise MemoryError()
            self._buf = <unsigned char *>grown
            self._cap = cap
        memcpy(self._buf + self._len, data, n)
        self._len += n
        return 0

    cdef Py_ssize_t _parse(self, const unsigned char *buf, Py_ssize_t end, list out) except -1:
        """Parse ``buf[:end]`` into ``out``; the bytes consumed. The reference's ``_parse``, step for step."""
        cdef Py_ssize_t pos = 0
        cdef Py_ssize_t nl
        cdef Py_ssize_t size = self._bulk
        cdef Py_ssize_t count = self._count
        cdef Py_ssize_t held = self._held
        cdef long long number
        cdef const unsigned char *p
        cdef list args = self._args
        while True:
            if args is None:  # a request starts here
                if pos >= end:
                    break
                if buf[pos] != c'*':  # an inline request
                    p = <const unsigned char *>memchr(buf + pos, LF, end - pos)
                    if p == NULL:
                        if end - pos > INLINE_MAX:
                            raise protocol_error("too big inline request")
                        break
                    nl = p - buf
                    request = inline_request(PyBytes_FromStringAndSize(<const char *>buf + pos, nl - pos))
                    pos = nl + 1
                    if request:  # an empty line: nothing to answer, as in Redis
                        out.append(request)
                    continue
                nl = _find_crlf(buf, pos, end)
                if nl < 0:
                    if end - pos > INLINE_MAX:
                        raise protocol_error("too big mbulk count string")
                    break
                if not _number(buf + pos + 1, nl - pos - 1, &number) or number > INT_MAX \
                        or number > self.max_args:
                    raise protocol_error("invalid multibulk length")
                if number <= 0:  # "*0" or "*-1": nothing to answer, as in Redis
                    pos = nl + 2
                    continue
                count = <Py_ssize_t>number
                held = nl + 2 - pos
                pos = nl + 2
                args = []
                size = -1
            if size < 0:  # the next argument's header
                if pos >= end:
                    break
                if buf[pos] != c'$':
                    raise expected_dollar(buf[pos])
                nl = _find_crlf(buf, pos, end)
                if nl < 0:
                    if end - pos > INLINE_MAX:
                        raise protocol_error("too big bulk count string")
                    break
                if not _number(buf + pos + 1, nl - pos - 1, &number) or number < 0 or number > self.max_bulk:
                    raise protocol_error("invalid bulk length")
                size = <Py_ssize_t>number
                held += nl + 2 - pos
                pos = nl + 2
            if end - pos < size + 2:
                break
            if buf[pos + size] != CR or buf[pos + size + 1] != LF:
                raise protocol_error("expected CRLF after the bulk string")
            args.append(PyBytes_FromStringAndSize(<const char *>buf + pos, size))
            pos += size + 2
            held += size + 2
            size = -1
            count -= 1
            if count == 0:
                out.append(args)
                args = None
                held = 0
        self._args = args
        self._count = count
        self._bulk = size
        self._held = held
        return pos


# -- replies ----------------------------------------------------------------------------------------------
cdef int _simple(bytearray out, char kind, bytes text) except -1:
    cdef Py_ssize_t n = PyBytes_GET_SIZE(text)
    cdef char *p = _grow(out, n + 3)
    p[0] = kind
    memcpy(p + 1, PyBytes_AS_STRING(text), n)
    p[n + 1] = CR
    p[n + 2] = LF
    return 0


def encode(bytearray out not None, reply, bint resp3):
    """Append ``reply`` to ``out``: bytes a bulk string, None a null, int an integer, float a double, list an
    array, dict a map (a flat array in RESP2), set a set, Simple a simple string, RespError an error."""
    _encode(out, reply, resp3)


cdef int _encode(bytearray out, object reply, bint resp3) except -1:
    cdef type t = type(reply)
    cdef int overflow
    cdef long long value
    cdef bytes data
    if t is bytes:
        _bulk(out, PyBytes_AS_STRING(reply), PyBytes_GET_SIZE(reply))
    elif reply is OK:
        _put(out, b"+OK\r\n", 5)
    elif reply is None:
        if resp3:
            _put(out, b"_\r\n", 3)
        else:
            _put(out, b"$-1\r\n", 5)
    elif t is int or t is bool:
        value = PyLong_AsLongLongAndOverflow(reply, &overflow)
        if overflow:
            data = b":%d\r\n" % reply
            _put(out, PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data))
        else:
            _header(out, c':', value)
    elif t is Simple:
        _simple(out, c'+', reply.encode())
    elif t is list or t is tuple:
        _header(out, c'*', len(reply))
        for item in reply:
            _encode(out, item, resp3)
    elif t is dict:
        if resp3:
            _header(out, c'%', len(reply))
        else:
            _header(out, c'*', 2 * len(reply))
        for key, item in (<dict>reply).items():
            _encode(out, key, resp3)
            _encode(out, item, resp3)
    elif t is str:
        data = reply.encode()
        _bulk(out, PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data))
    elif t is Verbatim:
        data = b"txt:" + reply.encode()
        if resp3:
            _header(out, c'=', PyBytes_GET_SIZE(data))
            _put(out, PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data))
            _put(out, b"\r\n", 2)
        else:
            _bulk(out, PyBytes_AS_STRING(data) + 4, PyBytes_GET_SIZE(data) - 4)
    elif t is float:
        data = float_text(reply)
        if resp3:
            _simple(out, c',', data)
        else:
            _bulk(out, PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data))
    elif t is set or t is frozenset:
        _header(out, c'~' if resp3 else c'*', len(reply))
        for item in reply:
            _encode(out, item, resp3)
    elif isinstance(reply, RespError):
        data = error_line(reply)
        _put(out, PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data))
    elif isinstance(reply, (bytearray, memoryview)):
        data = bytes(reply)
        _bulk(out, PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data))
    else:
        raise TypeError(f"no RESP encoding for {t.__name__}")
    return 0
