"""The RESP command table and what each command does on the node.

Every key command calls the node's own request coordinator in-process (the code the native GET/PUT/DELETE run),
so any node coordinates any key with no extra hop. A handler returns its reply at once when the coordinator
answered at once (a local read, N=1), or a future of it: no coroutine per request on that path.

Semantics on a Dynamo store (docs/resp.md): a RESP read answers one value, the newest of the siblings it finds by
the coordinators' write timestamps (last write wins); SET is the coordinator's last-write-wins put, which
supersedes every version its coordinator sees. Commands that need a conditional write (NX, XX, GETSET, INCR, ...) or
expiry (EX, EXPIRE, TTL, ...), SET among them, are in ``modify``, which adds them to TABLE.
"""
from __future__ import annotations

import asyncio
import os
import re
import time
from typing import NamedTuple

import dynafast
from dynafast.cluster import expiry
from dynafast.errors import DynafastError, QuorumNotMet
from dynafast.net.messages import Delete, Get, Put
from dynafast.resp import keyspace
from dynafast.resp.protocol import OK, PONG, RespError, Simple, Verbatim

REDIS_VERSION = "7.0.0"  # the command set and replies this front end follows
_RANK = {"read": 0, "readwrite": 1, "admin": 2}


class Command(NamedTuple):
    name: str
    arity: int  # Redis's convention: N exactly N arguments with the name, -N at least N
    role: str | None  # read, readwrite, admin; None: any logged-in connection
    flags: tuple
    first_key: int
    last_key: int
    step: int
    run: object  # run(app, conn, args) -> reply, or a future of one
    summary: str = ""
    preauth: bool = False  # may run before AUTH (AUTH, HELLO, QUIT, RESET)


TABLE: dict[bytes, Command] = {}


def command(name, arity, role, flags=(), keys=(0, 0, 0), summary="", preauth=False):
    def register(run):
        spec = Command(name, arity, role, tuple(flags), *keys, run, summary, preauth)
        TABLE[name.encode()] = spec
        TABLE[name.upper().encode()] = spec
        return run
    return register


# -- errors -----------------------------------------------------------------------------------------------
SYNTAX = RespError("ERR syntax error")
NOT_INTEGER = RespError("ERR value is not an integer or out of range")
NOAUTH = RespError("NOAUTH Authentication required.")
WRONGPASS = RespError("WRONGPASS invalid username-password pair or user is disabled.")


def arity_error(name: str) -> RespError:
    return RespError(f"ERR wrong number of arguments for '{name}' command")


def unknown_command(args) -> RespError:
    """Redis's text: the arguments quoted until they take 128 bytes, the last one cut there; each argument, and the
    name (up to 128 bytes), as C prints a string: up to its first NUL byte."""
    shown = b""
    for arg in args[1:]:
        if len(shown) >= 128:
            break
        shown += b"'" + _c_string(arg)[:128 - len(shown)] + b"' "
    name = _c_string(args[0])[:128]
    # The bytes as they came (surrogateescape: error_line writes back what is not UTF-8 as it was).
    return RespError(f"ERR unknown command '{name.decode('utf-8', 'surrogateescape')}', with args beginning with: "
                     f"{shown.decode('utf-8', 'surrogateescape')}")


def _c_string(arg) -> bytes:
    data = arg if isinstance(arg, bytes) else str(arg).encode()
    return data.split(b"\0", 1)[0]


def unknown_subcommand(sub, name: str) -> RespError:
    return RespError(f"ERR unknown subcommand '{_text(sub)[:128]}'. Try {name.upper()} HELP.")


def coordinator_error(exc: BaseException) -> RespError:
    """A coordinator's failure as an error reply."""
    if isinstance(exc, RespError):
        return exc
    if isinstance(exc, QuorumNotMet):
        return RespError(f"NOREPLICAS {exc}")
    if isinstance(exc, DynafastError):
        return RespError(f"ERR {exc}")
    return RespError(f"ERR internal error: {type(exc).__name__}")


def _text(arg) -> str:
    return arg.decode("utf-8", "replace") if isinstance(arg, (bytes, bytearray)) else str(arg)


_INTEGER = re.compile(rb"(?:0|-?[1-9][0-9]*)\Z")  # Redis's string2ll: no sign '+', no spaces, no leading zeros
INT64 = (-(1 << 63), (1 << 63) - 1)


def string2ll(value: bytes) -> int:
    """An integer as Redis's string2ll reads it, within a signed 64-bit integer; NOT_INTEGER otherwise (Python's
    int() also took " 1", "+1", "00" and "1_0")."""
    if type(value) is not bytes or len(value) > 20 or not _INTEGER.match(value):
        raise NOT_INTEGER
    number = int(value)
    if not INT64[0] <= number <= INT64[1]:
        raise NOT_INTEGER
    return number


# -- results that may not be ready yet ------------------------------------------------------------------
def then(result, fn):
    """``fn(reply)`` of a coordinator result (a reply, a future or a coroutine of one): at once when it is a
    reply, else a future of ``fn``'s result. ``fn`` may itself return a pending result."""
    if type(result) is tuple:
        return fn(result)
    source = result if isinstance(result, asyncio.Future) else asyncio.ensure_future(result)
    out = source.get_loop().create_future()

    def done(source):
        if out.done():  # cancelled: its connection went
            forget(source)
            return
        if source.cancelled():
            out.cancel()
            return
        exc = source.exception()
        if exc is not None:
            out.set_exception(exc)
            return
        try:
            _settle(out, fn(source.result()))
        except Exception as exc:  # noqa: BLE001 - becomes the command's error reply
            out.set_exception(exc)

    source.add_done_callback(done)
    return out


class Mapped:
    """A command's reply still pending: ``fn`` of the coordinator's reply ``source`` (a future). The connection
    applies ``fn`` when ``source`` is done; unlike ``then``, no future of its own is made in between. Only a
    command's own reply may be one: ``fn`` must return a plain value."""

    __slots__ = ("source", "fn")

    def __init__(self, source, fn):
        self.source = source
        self.fn = fn


def mapped(result, fn):
    """``then`` for a command's own reply (``Mapped``): at once when ``result`` is a reply."""
    if type(result) is tuple:
        return fn(result)
    if isinstance(result, asyncio.Future):
        return Mapped(result, fn)
    return then(result, fn)


def forget(result: asyncio.Future) -> None:
    """A result nobody waits for any more: its failure is taken here, not logged by the event loop as an exception
    never retrieved (a client that gave up on its logins left one such report per refused login)."""
    if not result.cancelled():
        result.exception()


def _settle(out, value):
    if isinstance(value, asyncio.Future):
        def copy(value):
            if out.done():
                forget(value)
                return
            if value.cancelled():
                out.cancel()
            elif value.exception() is not None:
                out.set_exception(value.exception())
            else:
                out.set_result(value.result())
        value.add_done_callback(copy)
    else:
        out.set_result(value)


def gather(results, combine):
    """``combine(list of replies)`` once every result is ready; at once when all are."""
    for r in results:
        if isinstance(r, BaseException):
            raise r
    if not any(isinstance(r, asyncio.Future) for r in results):
        return combine(results)
    loop = next(r for r in results if isinstance(r, asyncio.Future)).get_loop()
    out = loop.create_future()
    values = list(results)
    left = [sum(1 for r in results if isinstance(r, asyncio.Future))]

    def one_done(i, future):
        if out.done():
            return
        if future.cancelled() or future.exception() is not None:
            out.set_exception(future.exception() if not future.cancelled() else asyncio.CancelledError())
            return
        values[i] = future.result()
        left[0] -= 1
        if left[0] == 0:
            try:
                out.set_result(combine(values))
            except Exception as exc:  # noqa: BLE001
                out.set_exception(exc)

    for i, r in enumerate(results):
        if isinstance(r, asyncio.Future):
            r.add_done_callback(lambda f, i=i: one_done(i, f))
    return out


# -- reading and writing keys through the coordinator ------------------------------------------------
def _newest(fields):
    """The value a RESP read answers of a merged object: its newest live value, None when it has none or that
    one has expired."""
    # One version (the common case) needs no choosing.
    newest = (fields if len(fields) == 1 else fields.lww()).live_values()
    if not newest:
        return None
    value = newest[0]
    if value.startswith(expiry.MARK):  # an envelope: a value with a TTL (expired reads as deleted), or escaped
        value, at = expiry.unwrap(value)
        if at is not None and time.time() * 1000 >= at:
            return None
    return value


def _value(reply):
    """The value RESP answers of a read_object reply (None: not found)."""
    fields = reply[1]
    if fields is None:
        return None
    if isinstance(fields, (list, tuple)):  # forwarded: the owner's GET_REPLY fields, the newest value only
        return fields[0][0] if fields[0] else None
    return _newest(fields)


def _object(reply):
    """(the value RESP answers, context) of a read_object reply."""
    fields = reply[1]
    if fields is None:
        return None, b""
    if isinstance(fields, (list, tuple)):
        return _value(reply), fields[1]
    return _newest(fields), fields.context()


def read_object(app, conn, key, newest=True):
    """The coordinator's read of ``key``: a reply, or a future or coroutine of one. On a node that is the key's
    one replica (N=1) the local copy, without a quorum machine. A read this node forwards (it holds no replica)
    asks the owner for the ``newest`` value only, so that the rule RESP reads by is the owner's too."""
    return app.requests.read_local(key) or app.requests.read_object(Get(key, conn.r, None, newest))


def read(app, conn, key):
    """A future (or the value) of (newest value or None, context) of ``key``."""
    return then(read_object(app, conn, key), _object)


def read_value(app, conn, key, chain=then):
    """The value of ``key`` (None: not found), or a future of it (``chain=mapped``: a ``Mapped`` one, for a
    command's own reply). GET's path: no context is made."""
    reply = app.requests.read_local(key)
    if reply is not None:
        return _value(reply)
    return chain(app.requests.read_object(Get(key, conn.r, None, True)), _value)


def _ok(reply):
    return OK


def overwrite(app, conn, key, value, ttl_ms=None, chain=then):
    """The coordinator's last-write-wins put of ``value`` with the connection's R, W and DW: one round where the
    replicas hold nothing its copy has not seen, else a read and a write with its context (docs/resp.md)."""
    put = Put(key, value, None, conn.w, conn.dw, None, True, ttl_ms, conn.r)
    return chain(app.requests.client_put(put), _ok)


def set_value(app, conn, key, value, chain=then):
    """SET: where this node is the key's one replica, one local step that supersedes what is stored; else the
    coordinator's last-write-wins put. Not a write over the coordinator's own copy alone (Riak's way):
    docs/resp.md says why. ``chain``: as for ``read_value``."""
    app.check_value(key, value)
    done = app.requests.replace_local(key, value, conn.w, conn.dw)
    if done is None:
        return overwrite(app, conn, key, value, chain=chain)
    return OK if type(done) is tuple else chain(done, _ok)


def delete_seen(app, conn, key):
    """Delete what a read of ``key`` finds, with that read's context; the value read (None: nothing deleted)."""
    def delete(seen):
        value, context = seen
        if value is None:
            return None
        return then(app.requests.client_delete(Delete(key, context, conn.w, conn.dw, None)), lambda reply: value)
    return then(read(app, conn, key), delete)


# -- connection -------------------------------------------------------------------------------------
@command("ping", -1, None, ("fast", "stale"))
def cmd_ping(app, conn, args):
    if len(args) > 2:
        raise arity_error("ping")
    return PONG if len(args) == 1 else args[1]


@command("echo", 2, None, ("fast",))
def cmd_echo(app, conn, args):
    return args[1]


@command("quit", -1, None, ("fast",), preauth=True)
def cmd_quit(app, conn, args):
    conn.quit = True
    return OK


@command("reset", 1, None, ("fast",), preauth=True)
def cmd_reset(app, conn, args):
    conn.reset()
    return Simple("RESET")


@command("select", 2, None, ("fast",))
def cmd_select(app, conn, args):
    if string2ll(args[1]) != 0:
        raise RespError("ERR DB index is out of range")
    return OK


@command("auth", -2, None, ("fast", "no-auth"), preauth=True)
def cmd_auth(app, conn, args):
    if len(args) > 3:
        raise SYNTAX
    if len(args) == 2:
        if app.users is None:
            raise RespError("ERR AUTH <password> called without any password configured for the default user. "
                            "Are you sure your configuration is correct?")
        user, password = "default", args[1]
    else:
        user, password = _text(args[1]), args[2]
    return then(app.login(conn, user, password), lambda role: OK)


@command("hello", -1, None, ("fast", "no-auth"), preauth=True)
def cmd_hello(app, conn, args):
    version = None
    if len(args) > 1:
        try:
            version = int(args[1])
        except ValueError:
            raise RespError("ERR Protocol version is not an integer or out of range") from None
        if version not in (2, 3):
            raise RespError("NOPROTO unsupported protocol version")
    i, login, name = 2, None, None
    while i < len(args):
        option = args[i].lower()
        if option == b"auth" and i + 2 < len(args):
            login = (_text(args[i + 1]), args[i + 2])
            i += 3
        elif option == b"setname" and i + 1 < len(args):
            name = args[i + 1]
            i += 2
        else:
            raise RespError(f"ERR Syntax error in HELLO option '{_text(args[i])}'")
    if name is not None:
        _check_name(name)

    def answer(_role=None):
        if login is None and conn.role is None:
            raise RespError("NOAUTH HELLO must be called with the client already authenticated, otherwise the "
                            "HELLO AUTH <user> <pass> option can be used to authenticate the client and select "
                            "the RESP protocol version at the same time")
        if version is not None:
            conn.resp3 = version == 3
        if name is not None:
            conn.name = name
        return {b"server": b"redis", b"version": REDIS_VERSION.encode(), b"proto": 3 if conn.resp3 else 2,
                b"id": conn.id, b"mode": b"standalone", b"role": b"master", b"modules": [],
                b"dynafast": dynafast.__version__.encode()}

    if login is not None:
        return then(app.login(conn, *login), answer)
    return answer()


def _check_name(name: bytes) -> None:
    if any(c < 0x21 or c > 0x7E for c in name):
        raise RespError("ERR Client names cannot contain spaces, newlines or special characters.")


@command("client", -2, None, ("slow",))
def cmd_client(app, conn, args):
    sub = args[1].lower()
    if sub == b"setname" and len(args) == 3:
        _check_name(args[2])
        conn.name = args[2] or None
        return OK
    if sub == b"getname" and len(args) == 2:
        return conn.name
    if sub == b"id" and len(args) == 2:
        return conn.id
    if sub == b"info" and len(args) == 2:
        return Verbatim(conn.describe() + "\n")
    if sub == b"list":
        return Verbatim("".join(c.describe() + "\n" for c in _client_list(app, args[2:])))
    if sub == b"setinfo" and len(args) == 4:
        attr = args[2].lower()
        if attr not in (b"lib-name", b"lib-ver"):
            raise RespError(f"ERR Unrecognized option '{_text(args[2])}'")
        _check_name(args[3])
        setattr(conn, "lib_name" if attr == b"lib-name" else "lib_ver", _text(args[3]))
        return OK
    if sub == b"help" and len(args) == 2:
        return [Simple(line) for line in ("CLIENT <subcommand> [<arg> ...]. Subcommands are:", "GETNAME", "ID",
                                          "INFO", "LIST", "SETINFO <LIB-NAME|LIB-VER> <value>",
                                          "SETNAME <name>", "HELP")]
    if sub in (b"setname", b"getname", b"id", b"info", b"setinfo", b"help"):
        raise arity_error(f"client|{_text(sub)}")
    raise unknown_subcommand(args[1], "client")


def _client_list(app, options):
    """The connections CLIENT LIST [TYPE type] [ID id ...] shows, as Redis filters them (all are normal clients)."""
    connections = app.server.connections_by_id()
    if not options:
        return connections
    kind = options[0].upper()
    if kind == b"TYPE" and len(options) == 2:
        wanted = options[1].lower()
        if wanted not in (b"normal", b"master", b"replica", b"slave", b"pubsub"):
            raise RespError(f"ERR Unknown client type '{_text(options[1])}'")
        return connections if wanted == b"normal" else []
    if kind == b"ID" and len(options) > 1:
        try:
            ids = {string2ll(arg) for arg in options[1:]}
        except RespError:
            ids = {0}
        if min(ids) <= 0:
            raise RespError("ERR Invalid client ID")
        return [c for c in connections if c.id in ids]
    raise SYNTAX


def _command_info(spec: Command) -> list:
    return [spec.name.encode(), spec.arity, [Simple(flag) for flag in spec.flags], spec.first_key,
            spec.last_key, spec.step, [], [], [], []]


def _unique_specs():
    return {spec.name: spec for spec in TABLE.values()}.values()


@command("command", -1, None, ("loading", "stale"))
def cmd_command(app, conn, args):
    if len(args) == 1:
        return [_command_info(spec) for spec in _unique_specs()]
    sub = args[1].lower()
    if sub == b"count":
        if len(args) != 2:
            raise arity_error("command|count")
        return len(_unique_specs())
    if sub == b"list":
        return [spec.name.encode() for spec in _unique_specs()]
    if sub == b"info":
        specs = list(_unique_specs()) if len(args) == 2 else [TABLE.get(name.lower()) for name in args[2:]]
        return [None if spec is None else _command_info(spec) for spec in specs]
    if sub == b"docs":
        specs = list(_unique_specs()) if len(args) == 2 else [TABLE[n.lower()] for n in args[2:]
                                                               if n.lower() in TABLE]
        return {spec.name.encode(): {b"summary": spec.summary.encode(), b"since": b"1.0.0",
                                     b"group": b"generic"} for spec in specs}
    if sub == b"getkeys":
        if len(args) < 3:
            raise arity_error("command|getkeys")
        spec = TABLE.get(args[2].lower())
        if spec is None:
            raise RespError("ERR Invalid command specified")
        if (spec.arity > 0 and len(args) - 2 != spec.arity) or len(args) - 2 < -spec.arity:
            raise RespError("ERR Invalid number of arguments specified for command")
        if spec.first_key == 0:
            raise RespError("ERR The command has no key arguments")
        rest = args[2:]
        last = len(rest) - 1 if spec.last_key < 0 else spec.last_key
        return [rest[i] for i in range(spec.first_key, last + 1, spec.step) if i < len(rest)]
    raise unknown_subcommand(args[1], "command")


MULTI_REFUSED = ("ERR MULTI is not supported: transactions across keys have no atomic mechanism in this store "
                 "(see docs/resp.md)")
# Clients send MULTI, the commands and EXEC in one go: after a refused MULTI none of them may run, or a client that
# sees the error and retries would apply the writes twice. Until EXEC or DISCARD every command answers this.
NOT_RUN = RespError("ERR not run: MULTI was refused on this connection; EXEC or DISCARD ends the transaction")
EXECABORT = RespError("EXECABORT Transaction discarded because of previous errors.")


@command("multi", 1, None, ("fast",))
def cmd_multi(app, conn, args):
    conn.refused_multi = True  # what follows is answered by in_refused_multi
    raise RespError(MULTI_REFUSED)


def in_refused_multi(conn, args):
    """The reply to a command sent after a refused MULTI: none runs; EXEC aborts and DISCARD ends it (as Redis
    answers a transaction with errors queued)."""
    name = args[0].lower()
    if name == b"exec":
        conn.refused_multi = False
        return EXECABORT
    if name == b"discard":
        conn.refused_multi = False
        return OK
    return NOT_RUN


@command("exec", 1, None, ("fast",))
def cmd_exec(app, conn, args):
    raise RespError("ERR EXEC without MULTI")


@command("discard", 1, None, ("fast",))
def cmd_discard(app, conn, args):
    raise RespError("ERR DISCARD without MULTI")


@command("watch", -2, None, ("fast",))
def cmd_watch(app, conn, args):
    raise RespError(MULTI_REFUSED.replace("MULTI", "WATCH", 1))


command("unwatch", 1, None, ("fast",))(cmd_watch)


# -- strings --------------------------------------------------------------------------------------------
@command("get", 2, "read", ("readonly", "fast"), (1, 1, 1), "Get the value of a key")
def cmd_get(app, conn, args):
    return read_value(app, conn, args[1], mapped)


@command("mget", -2, "read", ("readonly", "fast"), (1, -1, 1), "Get the values of all the given keys")
def cmd_mget(app, conn, args):
    return gather([_attempt(read_value, app, conn, key) for key in args[1:]], list)


@command("mset", -3, "readwrite", ("write", "denyoom"), (1, -1, 2), "Set multiple keys to multiple values")
def cmd_mset(app, conn, args):
    if len(args) % 2 != 1:
        raise arity_error("mset")
    items = {}
    for i in range(1, len(args), 2):
        app.check_value(args[i], args[i + 1])
        # A key given twice gets its last value, as Redis sets them in order; written side by side here, each
        # would have stayed as a sibling of the others.
        items[args[i]] = args[i + 1]
    return gather([set_value(app, conn, key, value) for key, value in items.items()], lambda _: OK)


def _attempt(fn, *args):
    try:
        return fn(*args)
    except Exception as exc:  # noqa: BLE001 - gather raises it
        return exc


@command("del", -2, "readwrite", ("write",), (1, -1, 1), "Delete keys")
def cmd_del(app, conn, args):
    # A key named twice is deleted (and counted) once, as in Redis: deletes of one key run side by side here,
    # and both would find it.
    return gather([delete_seen(app, conn, key) for key in dict.fromkeys(args[1:])],
                  lambda values: sum(1 for value in values if value is not None))


command("unlink", -2, "readwrite", ("write", "fast"), (1, -1, 1), "Delete keys")(cmd_del)


@command("exists", -2, "read", ("readonly", "fast"), (1, -1, 1), "Count the keys that exist")
def cmd_exists(app, conn, args):
    return gather([read_value(app, conn, key) for key in args[1:]],
                  lambda values: sum(1 for value in values if value is not None))


@command("type", 2, "read", ("readonly", "fast"), (1, 1, 1), "The type of a key")
def cmd_type(app, conn, args):
    return then(read_object(app, conn, args[1]),
                lambda reply: Simple("none" if _object(reply)[0] is None else "string"))


@command("strlen", 2, "read", ("readonly", "fast"), (1, 1, 1), "The length of a key's value")
def cmd_strlen(app, conn, args):
    return then(read_object(app, conn, args[1]),
                lambda reply: len(_object(reply)[0] or b""))


@command("getrange", 4, "read", ("readonly",), (1, 1, 1), "A substring of a key's value")
def cmd_getrange(app, conn, args):
    start, end = string2ll(args[2]), string2ll(args[3])

    def cut(reply):
        value = _object(reply)[0] or b""
        n = len(value)
        s = max(n + start, 0) if start < 0 else start
        e = max(n + end, 0) if end < 0 else end
        if start < 0 and end < 0 and start > end or n == 0:
            return b""
        e = min(e, n - 1)
        return value[s:e + 1] if s <= e else b""
    return then(read_object(app, conn, args[1]), cut)


@command("getdel", 2, "readwrite", ("write", "fast"), (1, 1, 1), "Get a key's value and delete the key")
def cmd_getdel(app, conn, args):
    return delete_seen(app, conn, args[1])


# -- keyspace ---------------------------------------------------------------------------------------
@command("scan", -2, "read", ("readonly",), summary="Iterate over the keys")
def cmd_scan(app, conn, args):
    cursor = keyspace.parse_cursor(args[1])
    pattern, count, kind = None, 10, None
    i = 2
    while i < len(args):
        option = args[i].lower()
        if i + 1 >= len(args):
            raise SYNTAX
        if option == b"match":
            pattern = args[i + 1]
        elif option == b"count":
            count = string2ll(args[i + 1])
            if count < 1:
                raise SYNTAX
        elif option == b"type":
            kind = args[i + 1].lower()
        else:
            raise SYNTAX
        i += 2
    return asyncio.ensure_future(app.keyspace.scan(cursor, pattern, count, kind))


@command("keys", 2, "read", ("readonly",), summary="Every key matching a pattern")
def cmd_keys(app, conn, args):
    return asyncio.ensure_future(app.keyspace.keys(args[1]))


@command("randomkey", 1, "read", ("readonly",), summary="A random key")
def cmd_randomkey(app, conn, args):
    return asyncio.ensure_future(app.keyspace.random_key())


@command("dbsize", 1, "read", ("readonly", "fast"), summary="The number of keys")
def cmd_dbsize(app, conn, args):
    return asyncio.ensure_future(app.keyspace.count())


@command("flushall", -1, "admin", ("write",), summary="Delete every key")
def cmd_flushall(app, conn, args):
    if len(args) > 2 or (len(args) == 2 and args[1].upper() not in (b"ASYNC", b"SYNC")):
        raise SYNTAX  # one option at most, as in Redis: FLUSHALL ASYNC SYNC wiped everything
    return asyncio.ensure_future(app.keyspace.flush(conn))


command("flushdb", -1, "admin", ("write",), summary="Delete every key")(cmd_flushall)


# -- server -----------------------------------------------------------------------------------------
@command("time", 1, None, ("fast",))
def cmd_time(app, conn, args):
    now = time.time()
    return [str(int(now)).encode(), str(int((now % 1) * 1_000_000)).encode()]


@command("info", -1, None, ("slow",))
def cmd_info(app, conn, args):
    return Verbatim(app.info([a.lower().decode("utf-8", "replace") for a in args[1:]]))


@command("config", -2, None, ("slow",))
def cmd_config(app, conn, args):
    sub = args[1].lower()
    if sub == b"get" and len(args) >= 3:
        return app.config_get(args[2:])
    if sub == b"set":
        raise RespError("ERR CONFIG SET is not supported: configure the node (docs/configuration.md)")
    if sub == b"resetstat" and len(args) == 2:
        return OK
    if sub == b"get":
        raise arity_error("config|get")
    raise unknown_subcommand(args[1], "config")


# -- Dynamo's model --------------------------------------------------------------------------------
@command("df.get", 2, "read", ("readonly", "fast"), (1, 1, 1), "Every sibling of a key and its context")
def cmd_df_get(app, conn, args):
    def answer(reply):
        fields = reply[1]
        if fields is None:
            return [b"", []]
        if isinstance(fields, (list, tuple)):
            return [fields[1], list(fields[0])]
        values, _ = expiry.visible(fields.live_values(), int(time.time() * 1000))
        return [fields.context(), values]
    return then(read_object(app, conn, args[1], newest=False), answer)


@command("df.put", -3, "readwrite", ("write", "denyoom"), (1, 1, 1), "Write a value with a context")
def cmd_df_put(app, conn, args):
    key, value = args[1], args[2]
    context, w, dw = None, conn.w, conn.dw
    i = 3
    while i < len(args):
        if i + 1 >= len(args):
            raise SYNTAX
        option = args[i].upper()
        if option == b"CONTEXT":
            context = args[i + 1]
        elif option == b"W":
            w = string2ll(args[i + 1])
        elif option == b"DW":
            dw = string2ll(args[i + 1])
        else:
            raise SYNTAX
        i += 2
    app.check_value(key, value)
    return then(app.requests.client_put(Put(key, value, context or None, w, dw, None, False)), lambda reply: OK)


@command("df.config", -2, None, ("fast",), summary="This connection's r, w and dw")
def cmd_df_config(app, conn, args):
    sub = args[1].lower()
    if sub == b"get" and len(args) == 2:
        config = app.config
        return {b"r": conn.r or config.r, b"w": conn.w or config.w, b"dw": config.dw if conn.dw is None else conn.dw,
                b"n": config.n}
    if sub == b"set" and len(args) == 4:
        name = args[2].lower()
        value = string2ll(args[3])
        n = app.config.n
        if name not in (b"r", b"w", b"dw"):
            raise RespError(f"ERR unknown quorum '{_text(args[2])}': one of r, w, dw")
        if not (1 if name != b"dw" else 0) <= value <= n:
            raise RespError(f"ERR {name.decode()} must be in {1 if name != b'dw' else 0}..{n}")
        setattr(conn, name.decode(), value)
        return OK
    if sub in (b"get", b"set"):
        raise arity_error(f"df.config|{sub.decode()}")
    raise unknown_subcommand(args[1], "df.config")


def may(role: str | None, needed: str | None) -> bool:
    """Whether a connection logged in with ``role`` may run a command that needs ``needed``."""
    return needed is None or (role is not None and _RANK[role] >= _RANK[needed])


def process_info() -> dict:
    """Figures of this process for INFO: resident memory and CPU seconds."""
    figures = {"rss": 0}
    try:
        with open("/proc/self/statm") as f:
            figures["rss"] = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        pass
    times = os.times()
    figures["cpu_user"], figures["cpu_sys"] = times.user, times.system
    return figures

