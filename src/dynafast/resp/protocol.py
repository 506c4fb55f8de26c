"""RESP on the wire: request parsers (hiredis's C reader, or a pure-Python one) and the reply encoder.

A request is an array of bulk strings (what every client sends) or an inline line (``PING\\r\\n``, typed by hand).
Both parsers give lists of ``bytes`` and enforce the same limits with Redis's error texts: at most
``max_args`` arguments, each at most ``max_bulk`` bytes, an inline line at most 64 KiB. A limit broken is a
``RespProtocolError``: the connection answers it and closes, as Redis does.

hiredis parses much faster (benchmarks/resp_parser.py, figures in benchmarks/RESULTS.md), but decides no limit
itself: the hiredis parser checks the headers of a request that does not arrive in one read (the only way a
length can ask for more than was sent), and the server bounds the bytes any request may hold while it arrives.
"""
from __future__ import annotations

try:
    import hiredis
except ImportError:  # pragma: no cover - hiredis is optional; the Python parser is complete
    hiredis = None

INLINE_MAX = 64 * 1024  # Redis's PROTO_INLINE_MAX_SIZE
# Arguments of one request (Redis allows 1M; a quarter keeps a request's Python objects near ten MiB).
DEFAULT_MAX_ARGS = 256 * 1024


class RespProtocolError(Exception):
    """The client broke the protocol; ``str()`` is the error text to send (then the connection closes).
    ``requests``: the complete requests that came before the error (they are answered first)."""

    def __init__(self, text: str):
        super().__init__(text)
        self.requests = []


def _bad(what: str) -> RespProtocolError:
    return RespProtocolError(f"ERR Protocol error: {what}")


class PythonParser:
    """The reference parser: multibulk and inline requests, in pure Python."""

    def __init__(self, max_bulk: int, max_args: int = DEFAULT_MAX_ARGS):
        self.max_bulk = max_bulk
        self.max_args = max_args
        self._buf = bytearray()
        self._pos = 0

    @property
    def buffered(self) -> int:
        """Bytes received that are not a complete request yet."""
        return len(self._buf) - self._pos

    def feed(self, data) -> list:
        """The complete requests in what arrived so far; RespProtocolError when the stream is broken."""
        buf = self._buf
        if self._pos:
            del buf[:self._pos]
            self._pos = 0
        buf += data
        out = []
        pos = 0
        end = len(buf)
        while pos < end:
            try:
                if buf[pos] == 0x2A:  # '*'
                    request, pos2 = self._multibulk(buf, pos)
                else:
                    request, pos2 = self._inline(buf, pos)
            except RespProtocolError as exc:
                exc.requests = out
                raise
            if pos2 < 0:
                break
            pos = pos2
            if request:  # an empty line or "*0": nothing to answer, as in Redis
                out.append(request)
        self._pos = pos
        return out

    def _multibulk(self, buf, pos):
        nl = buf.find(b"\r\n", pos)
        if nl < 0:
            if len(buf) - pos > INLINE_MAX:
                raise _bad("too big mbulk count string")
            return None, -1
        try:
            count = int(buf[pos + 1:nl])
        except ValueError:
            raise _bad("invalid multibulk length") from None
        if count > self.max_args:
            raise _bad("invalid multibulk length")
        pos = nl + 2
        args = []
        end = len(buf)
        for _ in range(count):
            if pos >= end:
                return None, -1
            if buf[pos] != 0x24:  # '$'
                raise _bad(f"expected '$', got '{chr(buf[pos])}'")
            nl = buf.find(b"\r\n", pos)
            if nl < 0:
                if end - pos > INLINE_MAX:
                    raise _bad("too big bulk count string")
                return None, -1
            try:
                size = int(buf[pos + 1:nl])
            except ValueError:
                raise _bad("invalid bulk length") from None
            if size < 0 or size > self.max_bulk:
                raise _bad("invalid bulk length")
            start = nl + 2
            if start + size + 2 > end:
                return None, -1
            if buf[start + size:start + size + 2] != b"\r\n":
                raise _bad("expected CRLF after the bulk string")
            args.append(bytes(buf[start:start + size]))
            pos = start + size + 2
        return args, pos

    def _inline(self, buf, pos):
        nl = buf.find(b"\n", pos)
        if nl < 0:
            if len(buf) - pos > INLINE_MAX:
                raise _bad("too big inline request")
            return None, -1
        line = bytes(buf[pos:nl]).rstrip(b"\r")
        return split_inline(line), nl + 1


def split_inline(line: bytes) -> list:
    """An inline request's arguments: split on blanks, with "double" and 'single' quotes as Redis reads them."""
    if b'"' not in line and b"'" not in line:
        return line.split()
    args = []
    i, n = 0, len(line)
    while True:
        while i < n and line[i] in b" \t\r\n":
            i += 1
        if i >= n:
            return args
        current = bytearray()
        quote = None
        while True:
            if i >= n:
                if quote:
                    raise _bad("unbalanced quotes in request")
                break
            c = line[i]
            if quote == 0x22:  # inside "..."
                if c == 0x5C and i + 1 < n:  # backslash escapes
                    i += 1
                    esc = line[i]
                    if esc == 0x78 and i + 2 < n:  # \xHH
                        try:
                            current.append(int(line[i + 1:i + 3], 16))
                            i += 2
                        except ValueError:
                            current.append(esc)
                    else:
                        current.append({0x6E: 10, 0x72: 13, 0x74: 9, 0x62: 8, 0x61: 7}.get(esc, esc))
                elif c == 0x22:
                    if i + 1 < n and line[i + 1] not in b" \t":
                        raise _bad("unbalanced quotes in request")
                    quote = None
                else:
                    current.append(c)
            elif quote == 0x27:  # inside '...'
                if c == 0x5C and i + 1 < n and line[i + 1] == 0x27:
                    i += 1
                    current.append(0x27)
                elif c == 0x27:
                    if i + 1 < n and line[i + 1] not in b" \t":
                        raise _bad("unbalanced quotes in request")
                    quote = None
                else:
                    current.append(c)
            elif c in b" \t":
                break
            elif c in (0x22, 0x27):
                quote = c
            else:
                current.append(c)
            i += 1
        args.append(bytes(current))


class HiredisParser:
    """hiredis's C reader for multibulk requests; the Python parser for a connection that starts inline, and for
    the limits of a request that does not arrive whole."""

    def __init__(self, max_bulk: int, max_args: int = DEFAULT_MAX_ARGS):
        self.max_bulk = max_bulk
        self.max_args = max_args
        self._reader = hiredis.Reader()
        self._unparsed = 0  # bytes fed to the reader that are not a complete request yet
        self._python = None  # the Python parser, for a connection that speaks inline

    @property
    def buffered(self) -> int:
        return self._unparsed if self._python is None else self._python.buffered

    def feed(self, data) -> list:
        if self._python is not None:
            return self._python.feed(data)
        if not self._unparsed and data[:1] != b"*":
            # Inline requests (someone typing): this connection is parsed in Python from now on.
            self._python = PythonParser(self.max_bulk, self.max_args)
            return self._python.feed(data)
        out = []
        try:
            self._parse(data, out)
        except RespProtocolError as exc:
            exc.requests = out + exc.requests
            raise
        return out

    def _parse(self, data, out) -> None:
        reader = self._reader
        reader.feed(data)
        gets = reader.gets
        max_bulk = self.max_bulk
        before = self._unparsed
        try:
            while True:
                request = gets()
                if request is False:
                    break
                if type(request) is not list:
                    raise _bad("expected '*'")
                for arg in request:
                    if type(arg) is not bytes:
                        raise _bad("expected '$', got '*'" if type(arg) is list else "expected '$'")
                    if len(arg) > max_bulk:
                        raise _bad("invalid bulk length")
                if len(request) > self.max_args:
                    raise _bad("invalid multibulk length")
                if request:
                    out.append(request)
                else:
                    self._unparsed -= 4  # "*0\r\n": nothing to answer, as in Redis
        except hiredis.ProtocolError as exc:
            text = str(exc)
            consumed = sum(map(_encoded_size, out)) - before
            if "reply type byte" in text and 0 <= consumed <= len(data):
                # An inline request after multibulk ones: the rest of this connection is parsed in Python.
                self._python = PythonParser(self.max_bulk, self.max_args)
                self._unparsed = 0
                out.extend(self._python.feed(data[consumed:]))
                return
            if "Bulk string length" in text:
                text = "invalid bulk length"
            elif "depth" in text:
                text = "expected '$', got '*'"
            elif "length" in text:
                text = "invalid multibulk length"
            raise _bad(text) from None
        # What is left of a request that did not arrive whole, from the sizes of the requests completed (the
        # reader does not say; clients send lengths in their canonical form).
        self._unparsed += len(data) - sum(map(_encoded_size, out))
        if self._unparsed < 0:
            self._unparsed = 0  # lengths sent in a longer form than needed: only the estimate is off
        if before == 0 and 0 < self._unparsed <= len(data):
            # Its headers so far must not ask for more than the limits (the only way a request asks for memory
            # it did not send); later headers are bounded by the server's cap on a request's bytes.
            PythonParser(self.max_bulk, self.max_args).feed(data[len(data) - self._unparsed:])


def _encoded_size(request) -> int:
    size = len(str(len(request))) + 3
    for arg in request:
        n = len(arg)
        size += n + len(str(n)) + 5
    return size


def new_parser(max_bulk: int, max_args: int = DEFAULT_MAX_ARGS, kind: str = "auto"):
    if kind == "python" or (kind == "auto" and hiredis is None):
        return PythonParser(max_bulk, max_args)
    return HiredisParser(max_bulk, max_args)


# -- replies ----------------------------------------------------------------------------------------------
class Simple(str):
    """A simple string reply (+OK)."""


class Verbatim(str):
    """A verbatim string (RESP3 ``=``; a bulk string in RESP2): INFO's text."""


class RespError(Exception):
    """An error reply; ``str()`` is its text, starting with its code (ERR, WRONGPASS, ...)."""


OK = Simple("OK")
PONG = Simple("PONG")
QUEUED = Simple("QUEUED")
_OK = b"+OK\r\n"


def encode(out: bytearray, reply, resp3: bool) -> None:
    """Append ``reply`` to ``out``: bytes a bulk string, None a null, int an integer, float a double, list an
    array, dict a map (a flat array in RESP2), set a set, Simple a simple string, RespError an error."""
    t = type(reply)
    if t is bytes:
        out += b"$%d\r\n" % len(reply)
        out += reply
        out += b"\r\n"
    elif reply is OK:
        out += _OK
    elif reply is None:
        out += b"_\r\n" if resp3 else b"$-1\r\n"
    elif t is int or t is bool:
        out += b":%d\r\n" % reply
    elif t is Simple:
        out += b"+" + reply.encode() + b"\r\n"
    elif t is list or t is tuple:
        out += b"*%d\r\n" % len(reply)
        for item in reply:
            encode(out, item, resp3)
    elif t is dict:
        if resp3:
            out += b"%%%d\r\n" % len(reply)
        else:
            out += b"*%d\r\n" % (2 * len(reply))
        for key, value in reply.items():
            encode(out, key, resp3)
            encode(out, value, resp3)
    elif t is str:
        encode(out, reply.encode(), resp3)
    elif t is Verbatim:
        data = reply.encode()
        if resp3:
            out += b"=%d\r\ntxt:" % (len(data) + 4)
            out += data + b"\r\n"
        else:
            encode(out, data, resp3)
    elif t is float:
        text = repr(reply).encode() if reply == reply and reply not in (float("inf"), float("-inf")) else \
            (b"nan" if reply != reply else (b"inf" if reply > 0 else b"-inf"))
        if resp3:
            out += b"," + text + b"\r\n"
        else:
            encode(out, text, resp3)
    elif t is set or t is frozenset:
        out += (b"~%d\r\n" if resp3 else b"*%d\r\n") % len(reply)
        for item in reply:
            encode(out, item, resp3)
    elif isinstance(reply, RespError):
        text = str(reply).replace("\r", " ").replace("\n", " ")
        out += b"-" + text.encode() + b"\r\n"
    elif isinstance(reply, (bytearray, memoryview)):
        encode(out, bytes(reply), resp3)
    else:
        raise TypeError(f"no RESP encoding for {t.__name__}")
