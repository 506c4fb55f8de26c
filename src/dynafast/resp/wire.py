"""What both builds of the RESP request parser and reply encoder share (dynafast._core.resp, dynafast._ref.resp):
the reply types, the protocol error and its texts, the limits, and the splitting of an inline request.

Kept apart from ``protocol`` so the compiled module can import it while ``protocol`` imports the chosen build.
"""
from __future__ import annotations

INLINE_MAX = 64 * 1024  # Redis's PROTO_INLINE_MAX_SIZE: an inline line, or a header line, at most this long
# Arguments of one request (Redis allows 1M; a quarter keeps a request's Python objects near ten MiB).
DEFAULT_MAX_ARGS = 256 * 1024
INT_MAX = 2**31 - 1  # Redis refuses a multibulk count above it whatever its own limits


class RespProtocolError(Exception):
    """The client broke the protocol; ``str()`` is the error text to send (then the connection closes).
    ``requests``: the complete requests that came before the error (they are answered first)."""

    def __init__(self, text: str):
        super().__init__(text)
        self.requests = []


def protocol_error(what: str) -> RespProtocolError:
    """Redis's text for a broken request: ``ERR Protocol error: <what>``."""
    return RespProtocolError(f"ERR Protocol error: {what}")


def expected_dollar(byte: int) -> RespProtocolError:
    return protocol_error(f"expected '$', got '{chr(byte)}'")


# -- replies ----------------------------------------------------------------------------------------------
class Simple(str):
    """A simple string reply (+OK)."""


class Verbatim(str):
    """A verbatim string (RESP3 ``=``; a bulk string in RESP2): INFO's text."""


class RespError(Exception):
    """An error reply; ``str()`` is its text, starting with its code (ERR, WRONGPASS, ...)."""


OK = Simple("OK")
PONG = Simple("PONG")


def float_text(value: float) -> bytes:
    """A double as RESP3 writes it (and as RESP2's bulk string of it)."""
    if value != value:
        return b"nan"
    if value in (float("inf"), float("-inf")):
        return b"inf" if value > 0 else b"-inf"
    return repr(value).encode()


def error_line(reply: RespError) -> bytes:
    """An error reply's line: its text on one line (a CR or LF inside would end it early); bytes of a request
    quoted in it that are not UTF-8 (decoded with surrogateescape) go back as they came."""
    return b"-" + str(reply).replace("\r", " ").replace("\n", " ").encode("utf-8", "surrogateescape") + b"\r\n"


# -- inline requests ----------------------------------------------------------------------------------------
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
                    raise protocol_error("unbalanced quotes in request")
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
                        raise protocol_error("unbalanced quotes in request")
                    quote = None
                else:
                    current.append(c)
            elif quote == 0x27:  # inside '...'
                if c == 0x5C and i + 1 < n and line[i + 1] == 0x27:
                    i += 1
                    current.append(0x27)
                elif c == 0x27:
                    if i + 1 < n and line[i + 1] not in b" \t":
                        raise protocol_error("unbalanced quotes in request")
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


def inline_request(line: bytes) -> list:
    """The arguments of an inline line (without its LF; a CR before it is dropped)."""
    return split_inline(line.rstrip(b"\r"))
