"""The RESP commands that change a value in place, write conditionally or handle expiry: SET's options, SETNX,
GETSET, INCR and its kin, APPEND, SETRANGE, RENAME, RENAMENX, COPY, MSETNX; SETEX, PSETEX, GETEX, the EXPIRE
family, TTL, PTTL, EXPIRETIME, PEXPIRETIME and PERSIST. Redis 7's semantics, replies and error texts.

Where Redis promises atomicity on one key the command is one ``atomic.update`` (a Paxos round deciding on the
key's linearizable state). Commands that only set a value with an expiry (SETEX, SET EX) are SET's
last-write-wins write with a TTL; TTL and its kin are plain reads. Commands over two keys are a sequence of
single-key atomic steps: docs/resp.md says exactly what that leaves atomic.

An expiry is absolute (ms since the epoch, this node's clock), computed when the command arrives, and travels in
the value's envelope (``cluster.expiry``). A write that replaces the value drops its expiry unless Redis keeps it
(KEEPTTL, INCR, APPEND, SETRANGE, ...).
"""
from __future__ import annotations

import asyncio
import re
import time
import warnings
from decimal import Decimal

import numpy

from dynafast.cluster.paxos import same_state
from dynafast.resp import atomic
from dynafast.resp.atomic import TOMBSTONE
from dynafast.resp.commands import (INT64, OK, SYNTAX, arity_error, command, mapped, overwrite, read_object,
                                    read_value, set_value, string2ll, then)
from dynafast.resp.protocol import RespError

NOT_FLOAT = RespError("ERR value is not a valid float")
NO_SUCH_KEY = RespError("ERR no such key")
OVERFLOW = RespError("ERR increment or decrement would overflow")
TOO_LONG = RespError("ERR string exceeds maximum allowed size (proto-max-bulk-len)")
_FLOAT = re.compile(rb"[+-]?(?:(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|inf|infinity)\Z", re.I)


def invalid_expire(name: str) -> RespError:
    return RespError(f"ERR invalid expire time in '{name}' command")


def _now_ms() -> int:
    return int(time.time() * 1000)


def _spawn(coroutine):
    return asyncio.ensure_future(coroutine)


def _check_length(app, length: int) -> None:
    if length > app.config.max_value_size:
        raise TOO_LONG


# -- numbers as Redis reads and writes them ----------------------------------------------------------------
def stored_int(value: bytes | None) -> int:
    """The integer a value holds (absent: 0); NOT_INTEGER when it is not one, as Redis's string2ll reads it."""
    return 0 if value is None else string2ll(value)


argument_int = stored_int  # an argument is read as strictly as a stored value


def stored_float(value: bytes | None) -> numpy.longdouble:
    """A float as Redis's string2ld reads it (absent: 0), into a long double as Redis holds it: no spaces, no NaN,
    nothing strtold finds out of range (a finite text that rounds to infinity, a non-zero one that rounds to 0)."""
    if value is None:
        return numpy.longdouble(0)
    if not value or len(value) > 5000 or not _FLOAT.match(value):
        raise NOT_FLOAT
    text = value.decode()
    with warnings.catch_warnings():  # the range is checked below, as string2ld checks strtold's ERANGE
        warnings.simplefilter("ignore", RuntimeWarning)
        number = numpy.longdouble(text)
    if numpy.isinf(number) and "n" not in text.lower() or number == 0 and Decimal(text) != 0:
        raise NOT_FLOAT
    return number


def float_text(number: numpy.longdouble) -> bytes:
    """Redis's human form of a long double (``%.17Lf``, trailing zeros and dot dropped, ``-0`` as ``0``)."""
    text = numpy.format_float_positional(number, precision=17, unique=False, fractional=True, trim="-")
    return b"0" if text == "-0" else text.encode()


# -- expiry options ---------------------------------------------------------------------------------------
_UNITS = {b"EX": 1000, b"PX": 1, b"EXAT": 1000, b"PXAT": 1}


def parse_expiry_options(options, allowed: set) -> tuple[set, bytes | None, bytes | None]:
    """(flags, expiry option, its argument) of SET's or GETEX's options, SYNTAX on a bad combination. ``allowed``:
    the flag options the command takes (NX, XX, GET, KEEPTTL, PERSIST)."""
    flags: set = set()
    unit = arg = None
    i = 0
    while i < len(options):
        option = options[i].upper()
        # An option given twice is taken twice, the last one winning (SET k v EX 10 EX 20), as in Redis; two
        # different expiry options are a syntax error.
        if option in _UNITS and i + 1 < len(options) and unit in (None, option) \
                and not flags & {b"KEEPTTL", b"PERSIST"}:
            unit, arg = option, options[i + 1]
            i += 2
            continue
        other = {b"NX": {b"XX"}, b"XX": {b"NX"}, b"KEEPTTL": {b"PERSIST"}, b"PERSIST": {b"KEEPTTL"}}.get(option)
        if option not in allowed or (other and flags & other) or (option in (b"KEEPTTL", b"PERSIST") and unit):
            raise SYNTAX
        flags.add(option)
        i += 1
    return flags, unit, arg


def expiry_at(unit: bytes, arg: bytes, name: str, now_ms: int) -> int:
    """The absolute expiry (ms since the epoch) of ``EX|PX|EXAT|PXAT arg``, checked as Redis does."""
    amount = argument_int(arg)
    scale = _UNITS[unit]
    if amount <= 0 or amount > INT64[1] // scale:
        raise invalid_expire(name)
    at = amount * scale
    if unit in (b"EX", b"PX"):
        if at > INT64[1] - now_ms:
            raise invalid_expire(name)
        at += now_ms
    return at


def set_expiring(app, conn, key: bytes, value: bytes, at: int):
    """SET with a relative expiry and no condition: SET's last-write-wins write carrying a TTL, which the
    coordinator makes absolute again (within a millisecond of ``at``)."""
    app.check_value(key, value)
    return overwrite(app, conn, key, value, max(at - _now_ms(), 1))


def _write_or_drop(value: bytes, at: int | None, now_ms: int, exists: bool):
    """The write of ``value`` expiring at ``at``; a delete (or nothing) when ``at`` is already past."""
    if at is not None and at <= now_ms:
        return TOMBSTONE if exists else None
    return value, at


# -- SET with options, SETNX, GETSET, SETEX, PSETEX -----------------------------------------------------------
@command("set", -3, "readwrite", ("write", "denyoom"), (1, 1, 1), "Set the string value of a key")
def cmd_set(app, conn, args):
    if len(args) > 3:
        return set_with_options(app, conn, args)  # NX, XX, GET, EX, PX, EXAT, PXAT, KEEPTTL
    return set_value(app, conn, args[1], args[2], mapped)


def set_with_options(app, conn, args):
    """SET key value [NX|XX] [GET] [EX s|PX ms|EXAT t|PXAT t|KEEPTTL]."""
    key, value = args[1], args[2]
    flags, unit, arg = parse_expiry_options(args[3:], {b"NX", b"XX", b"GET", b"KEEPTTL"})
    at = None if unit is None else expiry_at(unit, arg, "set", _now_ms())
    app.check_value(key, value)
    if not flags and unit in (b"EX", b"PX"):
        return set_expiring(app, conn, key, value, at)
    # Conditions, KEEPTTL and absolute expiries (stored exactly as given): one atomic step.
    nx, xx, get, keep = b"NX" in flags, b"XX" in flags, b"GET" in flags, b"KEEPTTL" in flags

    def change(seen, now_ms):
        old = seen.value
        if (nx and old is not None) or (xx and old is None):
            return None, old if get else None
        write = _write_or_drop(value, seen.expires if keep else at, now_ms, old is not None)
        return write, old if get else OK
    return _spawn(atomic.run(app, key, change))


@command("setnx", 3, "readwrite", ("write", "denyoom", "fast"), (1, 1, 1), "Set a key's value if it is absent")
def cmd_setnx(app, conn, args):
    key, value = args[1], args[2]
    app.check_value(key, value)

    def change(seen, now_ms):
        return (None, 0) if seen.value is not None else ((value, None), 1)
    return _spawn(atomic.run(app, key, change))


@command("getset", 3, "readwrite", ("write", "denyoom", "fast"), (1, 1, 1), "Set a value, answer the old one")
def cmd_getset(app, conn, args):
    key, value = args[1], args[2]
    app.check_value(key, value)
    return _spawn(atomic.run(app, key, lambda seen, now: ((value, None), seen.value)))


def _setex(name, scale):
    def run(app, conn, args):
        amount = argument_int(args[2])
        if amount <= 0 or amount > INT64[1] // scale:
            raise invalid_expire(name)
        now = _now_ms()
        if amount * scale > INT64[1] - now:
            raise invalid_expire(name)
        return set_expiring(app, conn, args[1], args[3], now + amount * scale)
    return run


command("setex", 4, "readwrite", ("write", "denyoom"), (1, 1, 1), "Set a value that expires in seconds")(
    _setex("setex", 1000))
command("psetex", 4, "readwrite", ("write", "denyoom"), (1, 1, 1), "Set a value that expires in milliseconds")(
    _setex("psetex", 1))


# -- INCR and its kin, APPEND, SETRANGE ------------------------------------------------------------------------
def _increment(app, key, by: int):
    def change(seen, now_ms):
        old = stored_int(seen.value)
        if (by < 0 and old < 0 and by < INT64[0] - old) or (by > 0 and old > 0 and by > INT64[1] - old):
            raise OVERFLOW
        new = old + by
        return (str(new).encode(), seen.expires), new  # the expiry stays, as in Redis
    return _spawn(atomic.run(app, key, change))


@command("incr", 2, "readwrite", ("write", "denyoom", "fast"), (1, 1, 1), "Add one to a key's integer")
def cmd_incr(app, conn, args):
    return _increment(app, args[1], 1)


@command("decr", 2, "readwrite", ("write", "denyoom", "fast"), (1, 1, 1), "Take one from a key's integer")
def cmd_decr(app, conn, args):
    return _increment(app, args[1], -1)


@command("incrby", 3, "readwrite", ("write", "denyoom", "fast"), (1, 1, 1), "Add to a key's integer")
def cmd_incrby(app, conn, args):
    return _increment(app, args[1], argument_int(args[2]))


@command("decrby", 3, "readwrite", ("write", "denyoom", "fast"), (1, 1, 1), "Subtract from a key's integer")
def cmd_decrby(app, conn, args):
    by = argument_int(args[2])
    if by == INT64[0]:
        raise RespError("ERR decrement would overflow")
    return _increment(app, args[1], -by)


@command("incrbyfloat", 3, "readwrite", ("write", "denyoom", "fast"), (1, 1, 1), "Add to a key's float")
def cmd_incrbyfloat(app, conn, args):
    key = args[1]
    by = stored_float(args[2])

    def change(seen, now_ms):
        with numpy.errstate(all="ignore"):  # an overflow is the infinity refused below, as in Redis
            new = stored_float(seen.value) + by
        if not numpy.isfinite(new):
            raise RespError("ERR increment would produce NaN or Infinity")
        text = float_text(new)
        return (text, seen.expires), text
    return _spawn(atomic.run(app, key, change))


@command("append", 3, "readwrite", ("write", "denyoom", "fast"), (1, 1, 1), "Append to a key's value")
def cmd_append(app, conn, args):
    key, tail = args[1], args[2]
    app.check_value(key, tail)

    def change(seen, now_ms):
        new = (seen.value or b"") + tail
        _check_length(app, len(new))
        return (new, seen.expires), len(new)
    return _spawn(atomic.run(app, key, change))


@command("setrange", 4, "readwrite", ("write", "denyoom"), (1, 1, 1), "Overwrite part of a key's value")
def cmd_setrange(app, conn, args):
    key, value = args[1], args[3]
    offset = argument_int(args[2])
    if offset < 0:
        raise RespError("ERR offset is out of range")
    app.check_value(key, value)

    def change(seen, now_ms):
        old = seen.value
        if not value:
            return None, len(old or b"")  # nothing to write; an absent key stays absent
        _check_length(app, offset + len(value))
        old = old or b""
        new = old[:offset].ljust(offset, b"\x00") + value + old[offset + len(value):]
        return (new, seen.expires), len(new)
    return _spawn(atomic.run(app, key, change))


# -- expiry ---------------------------------------------------------------------------------------------------
@command("getex", -2, "readwrite", ("write", "fast"), (1, 1, 1), "Get a value and set or remove its expiry")
def cmd_getex(app, conn, args):
    key = args[1]
    flags, unit, arg = parse_expiry_options(args[2:], {b"PERSIST"})
    if not flags and unit is None:
        return read_value(app, conn, key, mapped)  # GETEX without options is GET
    persist = b"PERSIST" in flags

    def change(seen, now_ms):
        value = seen.value
        if value is None:
            return None, None
        if persist:
            return ((value, None) if seen.expires is not None else None), value
        return _write_or_drop(value, expiry_at(unit, arg, "getex", now_ms), now_ms, True), value
    return _spawn(atomic.run(app, key, change))


_EXPIRE_FLAGS = {b"NX", b"XX", b"GT", b"LT"}


def _expire(name: str, scale: int, absolute: bool):
    def run(app, conn, args):
        key = args[1]
        flags = set()
        for option in args[3:]:
            flag = option.upper()
            if flag not in _EXPIRE_FLAGS:
                raise RespError(f"ERR Unsupported option {option.decode('utf-8', 'replace')}")
            flags.add(flag)
        if b"NX" in flags and flags & {b"XX", b"GT", b"LT"}:
            raise RespError("ERR NX and XX, GT or LT options at the same time are not compatible")
        if {b"GT", b"LT"} <= flags:
            raise RespError("ERR GT and LT options at the same time are not compatible")
        amount = argument_int(args[2])  # negative is allowed: the key is deleted
        if not -(-INT64[0] // scale) <= amount <= INT64[1] // scale:  # C's division: towards zero
            raise invalid_expire(name)
        amount *= scale
        base = 0 if absolute else _now_ms()
        if amount > INT64[1] - base:
            raise invalid_expire(name)
        when = amount + base

        def change(seen, now_ms):
            value, current = seen.value, seen.expires
            if value is None:
                return None, 0
            if (b"NX" in flags and current is not None) or (b"XX" in flags and current is None) \
                    or (b"GT" in flags and (current is None or when <= current)) \
                    or (b"LT" in flags and current is not None and when >= current):
                return None, 0
            return (TOMBSTONE if when <= now_ms else (value, when)), 1
        return _spawn(atomic.run(app, key, change))
    return run


for _name, _scale, _absolute in (("expire", 1000, False), ("pexpire", 1, False), ("expireat", 1000, True),
                                 ("pexpireat", 1, True)):
    command(_name, -3, "readwrite", ("write", "fast"), (1, 1, 1), "Set a key's expiry")(
        _expire(_name, _scale, _absolute))


@command("persist", 2, "readwrite", ("write", "fast"), (1, 1, 1), "Remove a key's expiry")
def cmd_persist(app, conn, args):
    def change(seen, now_ms):
        if seen.value is None or seen.expires is None:
            return None, 0
        return (seen.value, None), 1
    return _spawn(atomic.run(app, args[1], change))


def newest_with_expiry(reply) -> tuple[bytes | None, int | None]:
    """(newest value, its expiry in ms since the epoch) of a ``read_object`` reply, as RESP reads choose it."""
    fields = reply[1]
    now_ms = _now_ms()
    if isinstance(fields, (list, tuple)):  # forwarded: the owner's GET_REPLY, newest value and its expiry
        values = fields[0]
        if not values:
            return None, None
        return values[0], fields[4][0] if len(fields) > 4 and fields[4] else None
    return atomic.newest(fields, now_ms)


def _ttl(unit: int, absolute: bool):
    def run(app, conn, args):
        def answer(reply):
            value, at = newest_with_expiry(reply)
            if value is None:
                return -2
            if at is None:
                return -1
            if absolute:
                return at // unit
            left = max(at - _now_ms(), 0)
            return left if unit == 1 else (left + 500) // 1000
        return then(read_object(app, conn, args[1]), answer)
    return run


for _name, _unit, _absolute in (("ttl", 1000, False), ("pttl", 1, False), ("expiretime", 1000, True),
                                ("pexpiretime", 1, True)):
    command(_name, 2, "read", ("readonly", "fast"), (1, 1, 1), "A key's expiry")(_ttl(_unit, _absolute))


# -- commands over two keys or more ---------------------------------------------------------------------------
def _copy_to(value, at, replace_if):
    """The change that writes ``value`` (expiring at ``at``) into the destination: always when ``replace_if`` is
    None, else only if the destination is absent or ``replace_if(seen)``. Reply: whether written."""
    def change(seen, now_ms):
        if replace_if is not None and seen.value is not None and not replace_if(seen):
            return None, False
        return _write_or_drop(value, at, now_ms, seen.value is not None), True
    return change


def _unchanged_since(app, written):
    """A condition on a key's state: it is still exactly the object ``written`` (an Outcome's; None: never)."""
    context = None if written is None else written.context()
    versions = app.conditional.versions
    return lambda seen: context is not None and same_state(versions, seen.current, context)


async def _rename(app, source: bytes, destination: bytes, nx: bool):
    """RENAME / RENAMENX: a linearizable read of the source, a conditional write of the destination, then a
    conditional delete of the source if it is still what was read; again from the read when it changed."""
    written = None  # what this command wrote to the destination in an earlier pass
    for attempt in range(atomic.MAX_RUNS):
        seen = await atomic.read(app, source)
        if seen.value is None:
            if attempt == 0:
                raise NO_SUCH_KEY
            # Deleted since our copy: our copy is the rename, ordered before that delete.
            return 1 if nx else OK
        if source == destination:
            return 0 if nx else OK
        replace_if = _unchanged_since(app, written) if nx else None
        copied = await atomic.update(app, destination, _copy_to(seen.value, seen.expires, replace_if))
        if not copied.reply:
            return 0  # RENAMENX: the destination exists
        written = copied.written
        unchanged = _unchanged_since(app, seen.current)

        def drop(state, now_ms, unchanged=unchanged):
            return (TOMBSTONE, True) if unchanged(state) else (None, False)
        if (await atomic.update(app, source, drop)).reply:
            return 1 if nx else OK
    raise RespError(f"ERR the source key changed {atomic.MAX_RUNS} times during the rename: the destination "
                    "holds a copy of an earlier value and the source is unchanged")


@command("rename", 3, "readwrite", ("write",), (1, 2, 1), "Rename a key")
def cmd_rename(app, conn, args):
    return _spawn(_rename(app, args[1], args[2], False))


@command("renamenx", 3, "readwrite", ("write", "fast"), (1, 2, 1), "Rename a key if the new name is free")
def cmd_renamenx(app, conn, args):
    return _spawn(_rename(app, args[1], args[2], True))


@command("copy", -3, "readwrite", ("write", "denyoom"), (1, 2, 1), "Copy a key's value and expiry")
def cmd_copy(app, conn, args):
    source, destination = args[1], args[2]
    replace = False
    i = 3
    while i < len(args):
        option = args[i].upper()
        if option == b"REPLACE":
            replace = True
        elif option == b"DB" and i + 1 < len(args):
            if argument_int(args[i + 1]) != 0:
                raise RespError("ERR DB index is out of range")
            i += 1
        else:
            raise SYNTAX
        i += 1
    if source == destination:
        raise RespError("ERR source and destination objects are the same")

    async def copy():
        seen = await atomic.read(app, source)
        if seen.value is None:
            return 0
        change = _copy_to(seen.value, seen.expires, None if replace else (lambda state: False))
        return 1 if (await atomic.update(app, destination, change)).reply else 0
    return _spawn(copy())


@command("msetnx", -3, "readwrite", ("write", "denyoom"), (1, -1, 2), "Set keys if none of them exists")
def cmd_msetnx(app, conn, args):
    if len(args) % 2 != 1:
        raise arity_error("msetnx")
    items = {}
    for i in range(1, len(args), 2):
        app.check_value(args[i], args[i + 1])
        items[args[i]] = args[i + 1]  # a key given twice: the last value, as Redis sets them in order

    async def msetnx():
        written = []
        for key, value in items.items():
            outcome = await atomic.update(app, key, _copy_to(value, None, lambda state: False))
            if not outcome.reply:
                # One exists: take back what this command wrote, where it is still exactly that.
                for done_key, obj in reversed(written):
                    unchanged = _unchanged_since(app, obj)
                    await atomic.update(app, done_key, lambda seen, now, unchanged=unchanged:
                                        (TOMBSTONE, None) if unchanged(seen) else (None, None))
                return 0
            written.append((key, outcome.written))
        return 1
    return _spawn(msetnx())
