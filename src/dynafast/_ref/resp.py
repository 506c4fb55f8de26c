"""RESP request parser and reply encoder, plain-Python reference of ``dynafast._core.resp``.

A request is an array of bulk strings (what every client sends) or an inline line (``PING\\r\\n``, typed by hand).
The parser gives lists of ``bytes`` and checks every header against the limits before it keeps anything for it:
at most ``max_args`` arguments, each at most ``max_bulk`` bytes, a header or inline line at most 64 KiB, with
Redis's error texts. A request is parsed as it arrives: its headers and whole arguments are read once, however
many reads it takes. The compiled twin must give the same requests, the same errors and the same ``buffered``.
"""
from __future__ import annotations

import re

from dynafast.resp.wire import (DEFAULT_MAX_ARGS, INLINE_MAX, INT_MAX, OK, RespError, RespProtocolError, Simple,
                                Verbatim, error_line, expected_dollar, float_text, inline_request,
                                protocol_error)

# A length as Redis's string2ll reads it: no sign but '-', no leading zero, no blank; it must fit 64 bits.
_NUMBER = re.compile(rb"-?[1-9][0-9]{0,18}|0")


def _number(buf, start: int, stop: int):
    """The integer in ``buf[start:stop]``, or None when Redis would not read one there."""
    text = buf[start:stop]
    if text.isdigit() and len(text) < 19 and (text[0] != 0x30 or len(text) == 1):  # the usual case, at once
        return int(text)
    if _NUMBER.fullmatch(text) is None:
        return None
    value = int(text)
    return value if -2**63 <= value < 2**63 else None


class Parser:
    """Requests out of the bytes of one connection, in the order they arrive."""

    def __init__(self, max_bulk: int, max_args: int = DEFAULT_MAX_ARGS):
        self.max_bulk = max_bulk
        self.max_args = max_args
        self._buf = bytearray()  # received and not consumed yet
        self._args = None  # the arguments so far of a multibulk request under way
        self._count = 0  # arguments it still needs
        self._bulk = -1  # the length of its next argument, once that argument's header is read
        self._held = 0  # bytes of it consumed already (its headers and whole arguments)

    @property
    def buffered(self) -> int:
        """Bytes received that are not a complete request yet."""
        return self._held + len(self._buf)

    def feed(self, data) -> list:
        """The complete requests in what arrived so far; RespProtocolError when the stream is broken."""
        buf = self._buf
        buf += data
        out = []
        try:
            used = self._parse(buf, out)
        except RespProtocolError as exc:
            exc.requests = out
            raise
        del buf[:used]
        return out

    def _parse(self, buf, out) -> int:
        """Parse what ``buf`` holds into ``out``; the bytes consumed."""
        pos = 0
        end = len(buf)
        args = self._args
        count = self._count
        size = self._bulk
        held = self._held
        while True:
            if args is None:  # a request starts here
                if pos >= end:
                    break
                if buf[pos] != 0x2A:  # not '*': an inline request
                    nl = buf.find(b"\n", pos)
                    if nl < 0:
                        if end - pos > INLINE_MAX:
                            raise protocol_error("too big inline request")
                        break
                    request = inline_request(bytes(buf[pos:nl]))
                    pos = nl + 1
                    if request:  # an empty line: nothing to answer, as in Redis
                        out.append(request)
                    continue
                nl = buf.find(b"\r\n", pos)
                if nl < 0:
                    if end - pos > INLINE_MAX:
                        raise protocol_error("too big mbulk count string")
                    break
                count = _number(buf, pos + 1, nl)
                if count is None or count > INT_MAX or count > self.max_args:
                    raise protocol_error("invalid multibulk length")
                if count <= 0:  # "*0" or "*-1": nothing to answer, as in Redis
                    pos = nl + 2
                    continue
                held = nl + 2 - pos
                pos = nl + 2
                args = []
                size = -1
            if size < 0:  # the next argument's header
                if pos >= end:
                    break
                if buf[pos] != 0x24:  # '$'
                    raise expected_dollar(buf[pos])
                nl = buf.find(b"\r\n", pos)
                if nl < 0:
                    if end - pos > INLINE_MAX:
                        raise protocol_error("too big bulk count string")
                    break
                size = _number(buf, pos + 1, nl)
                if size is None or size < 0 or size > self.max_bulk:
                    raise protocol_error("invalid bulk length")
                held += nl + 2 - pos
                pos = nl + 2
            if end - pos < size + 2:
                break
            if buf[pos + size] != 0x0D or buf[pos + size + 1] != 0x0A:
                raise protocol_error("expected CRLF after the bulk string")
            args.append(bytes(buf[pos:pos + size]))
            pos += size + 2
            held += size + 2
            size = -1
            count -= 1
            if not count:
                out.append(args)
                args = None
                held = 0
        self._args = args
        self._count = count
        self._bulk = size
        self._held = held
        return pos


# -- replies ----------------------------------------------------------------------------------------------
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
        out += (b"%%%d\r\n" % len(reply)) if resp3 else (b"*%d\r\n" % (2 * len(reply)))
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
        if resp3:
            out += b"," + float_text(reply) + b"\r\n"
        else:
            encode(out, float_text(reply), resp3)
    elif t is set or t is frozenset:
        out += (b"~%d\r\n" if resp3 else b"*%d\r\n") % len(reply)
        for item in reply:
            encode(out, item, resp3)
    elif isinstance(reply, RespError):
        out += error_line(reply)
    elif isinstance(reply, (bytearray, memoryview)):
        encode(out, bytes(reply), resp3)
    else:
        raise TypeError(f"no RESP encoding for {t.__name__}")
