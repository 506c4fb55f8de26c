"""The HTTP key-value API, in Riak's shape (docs/http.md): ``GET``/``PUT``/``DELETE /kv/{key}`` and streaming
scans at ``GET /kv``.

A request here is a native request made in-process: the handlers build the same records the wire protocol
carries (GET, PUT, DELETE, CAS) and hand them to the node's own dispatch (``KvBackend.call``), so they take the
coordination path of native requests, with their checks, forwarding and metrics, and no extra hop. Scans walk the
cluster with ``NodeScans``.

Encodings: a key in the path is the percent-decoded bytes of the path after ``/kv/`` (any bytes); contexts,
cursors and values in JSON are URL-safe base64 (standard base64 is accepted too). Every error is a JSON object
``{"error": code, "message": text}`` with its status.
"""
from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Callable
from urllib.parse import parse_qsl, quote, unquote_to_bytes

from aiohttp import MultipartWriter, hdrs, web

from dynafast import _impl, errors
from dynafast.net.messages import Msg, WrongNode, parse_reply

CONTEXT = "X-Dynafast-Context"
NDJSON = "application/x-ndjson"
_GET, _PUT, _DELETE, _CAS = int(Msg.GET), int(Msg.PUT), int(Msg.DELETE), int(Msg.CAS)
_SCAN_PAGE_KEYS = 1000
_KEY_SAFE = ":@"  # a scanned key is written as it would be in /kv/{key}: these need no escaping in a path
_STREAM_CHUNK = 64 * 1024  # scan lines are written out in chunks of about this size

# Most specific first (isinstance picks the first match): status and error code of each failure.
_STATUS = [
    (errors.ConditionFailed, 412, "condition_failed"),
    (errors.TooManySiblings, 409, "too_many_siblings"),
    (errors.KeyTooLarge, 400, "key_too_large"),
    (errors.ValueTooLarge, 413, "value_too_large"),
    (errors.QuorumNotMet, 503, "quorum_not_met"),
    (errors.Timeout, 504, "timeout"),
    (errors.Unavailable, 503, "unavailable"),
    (WrongNode, 503, "unavailable"),
    (errors.ScanIncomplete, 503, "unavailable"),
    (errors.StorageFull, 507, "storage_full"),
    (errors.AuthenticationFailed, 401, "unauthorized"),
    (errors.NotPermitted, 403, "forbidden"),
    (errors.ProtocolError, 400, "bad_request"),  # what the coordinator says of out-of-range parameters
    (errors.CorruptionError, 503, "unavailable"),
    (errors.StoreClosed, 503, "unavailable"),
]


@dataclass
class KvBackend:
    """What the API may use of the node: its dispatch of client records (``call(msg_type, fields)`` returns the
    reply or an awaitable of it), its scans, and the size limits it enforces."""

    call: Callable
    scans: object  # dynafast.cluster.nodescan.NodeScans
    max_key_size: int
    max_value_size: int


class HttpError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict | None = None, **extra):
        super().__init__(message)
        self.status = status
        self.code = code
        self.headers = headers or {}
        self.extra = extra


def error_response(status: int, code: str, message: str, headers=None, **extra) -> web.Response:
    return web.json_response({"error": code, "message": message, **extra}, status=status, headers=headers)


def _from_exception(exc: Exception) -> HttpError:
    if isinstance(exc, HttpError):
        return exc
    for cls, status, code in _STATUS:
        if isinstance(exc, cls):
            return HttpError(status, code, str(exc))
    return HttpError(500, "internal", f"{type(exc).__name__}: {exc}")


# -- encodings -----------------------------------------------------------------------------------------------
def encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode()


def decode(text: str, what: str) -> bytes:
    """URL-safe or standard base64, padding optional; 400 when it is neither."""
    text = text.strip().translate(str.maketrans("+/", "-_"))
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        raise HttpError(400, f"bad_{what}", f"the {what} is not base64") from None


def decode_context(text: str) -> bytes:
    raw = decode(text, "context")
    if raw:
        try:
            _impl.vclock.VClock.from_bytes(raw)
        except (errors.DynafastError, ValueError, TypeError, IndexError, OverflowError):
            raise HttpError(400, "bad_context", "the context does not decode: pass one this API returned") from None
    return raw


def context_headers(context: bytes) -> dict:
    if not context:
        return {}
    text = encode(context)
    return {CONTEXT: text, hdrs.ETAG: f'"{text}"'}


def key_of(request: web.Request) -> bytes:
    """The percent-decoded bytes of the path after ``/kv/`` (decoded here, not by the router: keys are bytes)."""
    return unquote_to_bytes(request.rel_url.raw_path[len("/kv/"):])


class Query:
    """The query string as bytes (a prefix may be any bytes); every parameter must be one the route knows."""

    def __init__(self, request: web.Request, known: set[str]):
        self.params: dict[str, bytes] = {}
        for name, value in parse_qsl(request.rel_url.raw_query_string.encode("latin-1"), keep_blank_values=True):
            name = name.decode("latin-1")
            if name not in known:
                raise HttpError(400, "bad_parameter", f"unknown parameter {name!r} (this route takes "
                                f"{', '.join(sorted(known))})")
            self.params[name] = value

    def text(self, name: str) -> str | None:
        value = self.params.get(name)
        if value is None or value == b"":
            return None
        try:
            return value.decode("ascii")
        except UnicodeDecodeError:
            raise HttpError(400, "bad_parameter", f"{name} must be ASCII") from None

    def int(self, name: str, minimum: int = 0) -> int | None:
        text = self.text(name)
        if text is None:
            return None
        if not text.isdigit() or int(text) < minimum:
            raise HttpError(400, "bad_parameter", f"{name} must be an integer of at least {minimum}, not {text!r}")
        return int(text)

    def flag(self, name: str) -> bool:
        text = self.text(name)
        if text is None or text.lower() in ("false", "0", "no"):
            return False
        if text.lower() in ("true", "1", "yes"):
            return True
        raise HttpError(400, "bad_parameter", f"{name} must be true or false, not {text!r}")

    def ttl_ms(self) -> int | None:
        text = self.text("ttl")
        if text is None:
            return None
        try:
            ttl = float(text)
        except ValueError:
            ttl = -1.0
        if not ttl > 0 or ttl == float("inf"):
            raise HttpError(400, "bad_parameter", f"ttl must be a positive number of seconds, not {text!r}")
        return max(1, round(ttl * 1000))


def _precondition(request: web.Request, context: bytes) -> tuple[bytes | None, bool]:
    """``(if_context, if_absent)`` of the request's If-Match / If-None-Match headers."""
    if_match = request.headers.get(hdrs.IF_MATCH)
    if_none = request.headers.get(hdrs.IF_NONE_MATCH)
    if if_match is not None and if_none is not None:
        raise HttpError(400, "bad_precondition", "give If-Match or If-None-Match, not both")
    if if_none is not None:
        if if_none.strip() != "*":
            raise HttpError(400, "bad_precondition", "If-None-Match takes * alone (write only if the key is absent)")
        return None, True
    if if_match is None:
        return None, False
    tag = if_match.strip()
    if tag == "*" or "," in tag:
        raise HttpError(400, "bad_precondition", "If-Match takes one context (as GET returned it), not * or a list")
    if tag.startswith("W/"):
        tag = tag[2:]
    if_context = decode_context(tag.strip('"'))
    if context and context != if_context:
        raise HttpError(400, "bad_precondition", f"{CONTEXT} and If-Match name different contexts")
    return if_context, False


def _wants_json(request: web.Request) -> bool:
    return "application/json" in request.headers.get(hdrs.ACCEPT, "")


class KvApi:
    def __init__(self, backend: KvBackend):
        self.backend = backend

    async def _call(self, msg_type: int, fields: tuple):
        result = self.backend.call(msg_type, fields)
        if type(result) is not tuple:
            result = await result  # a reply still being gathered (or a request forwarded to a replica)
        return parse_reply(msg_type, result)

    async def _body(self, request: web.Request) -> bytes:
        """The request body, read no further than the node's value size limit."""
        limit = self.backend.max_value_size
        too_large = HttpError(413, "value_too_large", f"the value is over the limit of {limit} bytes")
        if request.content_length is not None and request.content_length > limit:
            raise too_large
        chunks, size = [], 0
        while True:
            chunk = await request.content.read(1 << 16)
            if not chunk:
                return b"".join(chunks)
            size += len(chunk)
            if size > limit:
                raise too_large
            chunks.append(chunk)

    def _context_header(self, request: web.Request) -> bytes:
        text = request.headers.get(CONTEXT)
        return b"" if text is None or not text.strip() else decode_context(text)

    # -- one key ---------------------------------------------------------------------------------------------
    async def get(self, request: web.Request) -> web.StreamResponse:
        key = key_of(request)
        query = Query(request, {"r", "timeout"})
        reply = await self._call(_GET, (key, query.int("r"), query.int("timeout", 1)))
        values, context = reply.values, reply.context
        headers = {**context_headers(context), hdrs.VARY: hdrs.ACCEPT}
        if not values:
            raise HttpError(404, "not_found", "no such key", headers=headers,
                            context=encode(context) if context else None)
        status = 200 if len(values) == 1 else 300  # 300: siblings, to resolve with a write naming the context
        if _wants_json(request):
            body = {"values": [encode(v) for v in values], "context": encode(context) if context else None}
            return web.json_response(body, status=status, headers=headers)
        if len(values) == 1:
            return web.Response(body=values[0], content_type="application/octet-stream", headers=headers)
        parts = MultipartWriter("mixed")
        for value in values:
            parts.append(value, {hdrs.CONTENT_TYPE: "application/octet-stream"})
        return web.Response(body=parts, status=300, headers=headers)

    async def put(self, request: web.Request) -> web.Response:
        key = key_of(request)
        query = Query(request, {"w", "dw", "timeout", "lww", "ttl", "r"})
        w, dw, timeout_ms, lww = query.int("w"), query.int("dw"), query.int("timeout", 1), query.flag("lww")
        r = query.int("r", 1)
        if r is not None and not lww:
            raise HttpError(400, "bad_parameter", "r applies to a put with lww=true only (its read)")
        ttl_ms = query.ttl_ms()
        context = self._context_header(request)
        if_context, if_absent = _precondition(request, context)
        value = await self._body(request)
        if if_context is not None or if_absent:
            self._conditional_only(w, dw, lww)
            return await self._conditional(key, value, if_context, if_absent, timeout_ms, ttl_ms)
        await self._call(_PUT, (key, value, context or None, w, dw, timeout_ms, True if lww else None, ttl_ms, r))
        return web.Response(status=204)

    async def delete(self, request: web.Request) -> web.Response:
        key = key_of(request)
        query = Query(request, {"w", "dw", "timeout"})
        w, dw, timeout_ms = query.int("w"), query.int("dw"), query.int("timeout", 1)
        context = self._context_header(request)
        if_context, if_absent = _precondition(request, context)
        if if_absent:
            raise HttpError(400, "bad_precondition", "a delete takes If-Match, not If-None-Match")
        if if_context is not None:
            self._conditional_only(w, dw, False)
            return await self._conditional(key, None, if_context, False, timeout_ms, None)
        # Without a context the coordinator deletes every version its read finds (as Client.delete).
        await self._call(_DELETE, (key, context or None, w, dw, timeout_ms))
        return web.Response(status=204)

    @staticmethod
    def _conditional_only(w, dw, lww) -> None:
        if w is not None or dw is not None or lww:
            raise HttpError(400, "bad_parameter", "w, dw and lww do not apply to a conditional write (it is one "
                            "Paxos round among the key's replicas)")

    async def _conditional(self, key, value, if_context, if_absent, timeout_ms, ttl_ms) -> web.Response:
        reply = await self._call(_CAS, (key, value, if_context, True if if_absent else None, timeout_ms, ttl_ms))
        headers = context_headers(reply.context)
        if not reply.applied:
            raise HttpError(412, "condition_failed", "the key is not in the state the write named: nothing written",
                            headers=headers, context=encode(reply.context) if reply.context else None,
                            values=[encode(v) for v in reply.values])
        return web.Response(status=204, headers=headers)

    # -- scans -----------------------------------------------------------------------------------------------
    async def scan(self, request: web.Request) -> web.StreamResponse:
        query = Query(request, {"prefix", "limit", "cursor", "values"})
        prefix = query.params.get("prefix", b"")
        limit = query.int("limit")
        cursor_text = query.text("cursor")
        cursor = None if cursor_text is None else decode(cursor_text, "cursor")
        with_values = query.flag("values")
        scans = self.backend.scans
        page = _SCAN_PAGE_KEYS if limit is None else max(1, min(limit, _SCAN_PAGE_KEYS))
        try:
            walk = scans.walk(prefix, limit, cursor, page_size=page)
        except ValueError as exc:
            raise HttpError(400, "bad_cursor", str(exc)) from None
        if not walk.exhausted:
            await scans.fetch(walk)  # the first page before the status line: its failure is the status
        response = web.StreamResponse(headers={hdrs.CONTENT_TYPE: NDJSON})
        response.enable_chunked_encoding()
        await response.prepare(request)
        lines, size, count = [], 0, 0
        try:
            async for key, result in scans.items(walk):
                item = {"key": quote(key, safe=_KEY_SAFE)}
                if with_values:
                    item["values"] = [encode(v) for v in result.values]
                    item["context"] = encode(result.context) if result.context else None
                line = json.dumps(item) + "\n"
                lines.append(line)
                size += len(line)
                count += 1
                if size >= _STREAM_CHUNK:
                    await response.write("".join(lines).encode())
                    lines, size = [], 0
            cursor = walk.cursor
            lines.append(json.dumps({"cursor": None if cursor is None else encode(cursor), "count": count}) + "\n")
        except Exception as exc:  # noqa: BLE001 - the status is sent: the last line tells the failure
            failure = _from_exception(exc)
            cursor = walk.cursor
            lines.append(json.dumps({"error": failure.code, "message": str(failure), "status": failure.status,
                                     "cursor": None if cursor is None else encode(cursor), "count": count}) + "\n")
        await response.write("".join(lines).encode())
        await response.write_eof()
        return response


def _json_errors(handler):
    async def answer(request):
        try:
            return await handler(request)
        except (HttpError, errors.DynafastError) as exc:
            failure = _from_exception(exc)
            return error_response(failure.status, failure.code, str(failure), failure.headers, **failure.extra)
    return answer


def _guarded(guard, role: str, handler):
    """``handler`` for users whose role allows ``role``; the guard's 401 and 403 answered in JSON."""
    if guard is None:
        return handler

    async def guarded(request):
        try:
            await guard.require(request, role)
        except web.HTTPException as exc:
            code = {401: "unauthorized", 403: "forbidden"}.get(exc.status, "internal")
            challenge = {k: v for k, v in exc.headers.items() if k == hdrs.WWW_AUTHENTICATE}
            return error_response(exc.status, code, exc.text or exc.reason, challenge)
        return await handler(request)
    return guarded


def add_routes(app: web.Application, backend: KvBackend, guard=None) -> None:
    """The KV routes on ``app``; ``guard`` (a BasicAuthGuard, or None when the node has no users) lets the read
    role get and scan, and the readwrite role write."""
    api = KvApi(backend)
    app.router.add_get("/kv", _guarded(guard, "read", _json_errors(api.scan)))
    app.router.add_get("/kv/{key:.+}", _guarded(guard, "read", _json_errors(api.get)))
    app.router.add_put("/kv/{key:.+}", _guarded(guard, "readwrite", _json_errors(api.put)))
    app.router.add_delete("/kv/{key:.+}", _guarded(guard, "readwrite", _json_errors(api.delete)))


def server_limits(backend: KvBackend) -> dict:
    """aiohttp's request parser limits that let any key the node accepts be named in a URL (percent-encoding
    triples a byte), and a context header of a busy key through."""
    return {"max_line_size": 3 * backend.max_key_size + 8192, "max_field_size": 64 * 1024}
