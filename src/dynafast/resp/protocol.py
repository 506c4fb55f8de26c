"""RESP on the wire: the request parser and the reply encoder, compiled (dynafast._core.resp) or their
plain-Python twins (dynafast._ref.resp) as dynafast._impl chose, and the reply types (dynafast.resp.wire).

A request is an array of bulk strings (what every client sends) or an inline line (``PING\\r\\n``, typed by hand).
The parser gives lists of ``bytes`` and checks every header against the limits before it keeps anything for it,
with Redis's error texts: at most ``max_args`` arguments, each at most ``max_bulk`` bytes, an inline line at most
64 KiB. A limit broken is a ``RespProtocolError``: the connection answers it and closes, as Redis does. The
server bounds the bytes any request may hold while it arrives (``buffered``).

hiredis's C reader is not used: it allocates the array an array header announces before checking anything (one
``*2147483648\\r\\n`` took a node 16 GiB and 15 s), and the compiled parser is faster (benchmarks/resp_parser.py).
"""
from __future__ import annotations

from dynafast import _impl
from dynafast.resp.wire import DEFAULT_MAX_ARGS, OK, PONG, RespError, RespProtocolError, Simple, Verbatim

__all__ = ["OK", "PONG", "RespError", "RespProtocolError", "Simple", "Verbatim", "encode", "new_parser"]

encode = _impl.resp.encode


def new_parser(max_bulk: int, max_args: int = DEFAULT_MAX_ARGS, kind: str = "auto"):
    """A request parser for one connection: the build _impl chose, or the reference with ``kind="python"``."""
    module = _impl.reference("resp") if kind == "python" else _impl.resp
    return module.Parser(max_bulk, max_args)
