"""The RESP request parser and reply encoder, both builds: they agree (same requests, errors and buffered bytes from
the same reads, split anywhere; same reply bytes), keep their limits before allocating, and only ever fail with a
protocol error."""
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import implementations
from dynafast import _impl
from dynafast.resp.protocol import OK, RespError, RespProtocolError, Simple, Verbatim

impl = implementations("resp")
# The fixture only hands out a module, so sharing it between hypothesis examples is safe.
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def frame(args) -> bytes:
    out = b"*%d\r\n" % len(args)
    for arg in args:
        out += b"$%d\r\n%s\r\n" % (len(arg), arg)
    return out


def random_requests(rng, count):
    return [[rng.randbytes(rng.choice([0, 1, 5, 100, 3000])) for _ in range(rng.randint(1, 6))]
            for _ in range(count)]


def test_pipelines_split_anywhere_parse_the_same(impl):
    rng = random.Random(7)
    for _ in range(200):
        requests = random_requests(rng, rng.randint(1, 20))
        data = b"".join(map(frame, requests))
        p = impl.Parser(max_bulk=4096)
        got, pos = [], 0
        while pos < len(data):
            step = rng.choice([1, 2, 7, 100, 5000, len(data)])
            got += p.feed(data[pos:pos + step])
            pos += step
            assert p.buffered <= len(data)
        assert got == requests and p.buffered == 0


def test_inline_requests(impl):
    p = impl.Parser(max_bulk=100)
    assert p.feed(b"PING\r\nSET k \"two words\\n\" 'it\\'s'\r\n\r\nGET") == \
        [[b"PING"], [b"SET", b"k", b"two words\n", b"it's"]]
    assert p.feed(b" k\r\n") == [[b"GET", b"k"]]
    p = impl.Parser(max_bulk=100)
    assert p.feed(b'SET k "a b"\r\nGET k\n') == [[b"SET", b"k", b"a b"], [b"GET", b"k"]]
    assert p.feed(frame([b"GET", b"k"]) + b"PING\r\n" + frame([b"DEL", b"k"])) == \
        [[b"GET", b"k"], [b"PING"], [b"DEL", b"k"]]
    with pytest.raises(RespProtocolError, match="unbalanced quotes"):
        impl.Parser(max_bulk=100).feed(b'SET k "open\r\n')


@pytest.mark.parametrize("data, error", [
    (b"*1\r\n$101\r\n", "ERR Protocol error: invalid bulk length"),
    (b"*2\r\n$3\r\nGET\r\n$99999999999999\r\n", "ERR Protocol error: invalid bulk length"),
    (b"*1\r\n$99999999999999999999\r\n", "ERR Protocol error: invalid bulk length"),
    (b"*1\r\n$-7\r\n", "ERR Protocol error: invalid bulk length"),
    (b"*1\r\n$+7\r\n", "ERR Protocol error: invalid bulk length"),
    (b"*1\r\n$07\r\n", "ERR Protocol error: invalid bulk length"),
    (b"*1001\r\n", "ERR Protocol error: invalid multibulk length"),
    (b"*2147483648\r\n", "ERR Protocol error: invalid multibulk length"),
    (b"*1\r\n*2147483648\r\n", "ERR Protocol error: expected '$', got '*'"),
    (b"*1\r\n*1\r\n*1\r\n", "ERR Protocol error: expected '$', got '*'"),
    (b"*x\r\n", "ERR Protocol error: invalid multibulk length"),
    (b"*\r\n", "ERR Protocol error: invalid multibulk length"),
    (b"* 1\r\n", "ERR Protocol error: invalid multibulk length"),
    (b"*1\r\n$1\r\nabc", "ERR Protocol error: expected CRLF after the bulk string"),
    (b"*" + b"1" * (64 * 1024 + 1), "ERR Protocol error: too big mbulk count string"),
    (b"*1\r\n$" + b"1" * (64 * 1024 + 1), "ERR Protocol error: too big bulk count string"),
    (b"x" * (64 * 1024 + 1), "ERR Protocol error: too big inline request"),
])
def test_limits_answer_redis_errors(impl, data, error):
    with pytest.raises(RespProtocolError) as caught:
        impl.Parser(max_bulk=100, max_args=1000).feed(data)
    assert str(caught.value) == error


def test_an_error_carries_the_requests_before_it(impl):
    p = impl.Parser(max_bulk=100)
    with pytest.raises(RespProtocolError) as caught:
        p.feed(frame([b"PING"]) + b"PING\r\n" + b"*1\r\n$-5\r\n")
    assert caught.value.requests == [[b"PING"], [b"PING"]]


def test_a_request_on_its_way_counts_what_it_holds(impl):
    # Headers and whole arguments already taken out of the buffer still count: the server caps them.
    p = impl.Parser(max_bulk=1000)
    data = frame([b"SET", b"k", b"v" * 500])
    for i in range(len(data) - 1):
        assert p.feed(data[i:i + 1]) == [] and p.buffered == i + 1
    assert p.feed(data[-1:]) == [[b"SET", b"k", b"v" * 500]] and p.buffered == 0
    assert p.feed(b"*0\r\n*-1\r\n\r\n") == [] and p.buffered == 0  # nothing to answer, as in Redis


def test_empty_and_many_arguments(impl):
    p = impl.Parser(max_bulk=10, max_args=5000)
    assert p.feed(frame([b""] * 5000)) == [[b""] * 5000]
    with pytest.raises(RespProtocolError, match="invalid multibulk length"):
        p.feed(b"*5001\r\n")


def test_fuzzed_input_only_raises_protocol_errors(impl):
    rng = random.Random(11)
    valid = b"".join(map(frame, random_requests(rng, 50)))
    for i in range(3000):
        if i % 3 == 0:
            data = rng.randbytes(rng.randint(1, 300))
        else:
            data = bytearray(valid[:rng.randint(1, 2000)])
            for _ in range(rng.randint(1, 5)):
                data[rng.randrange(len(data))] = rng.choice(b"*$\r\n-0123456789:+%~_ ")
            data = bytes(data)
        p = impl.Parser(max_bulk=4096, max_args=10_000)
        try:
            for request in p.feed(data):
                assert type(request) is list and all(type(arg) is bytes for arg in request)
        except RespProtocolError:
            pass
        assert p.buffered <= len(data) + 64 * 1024


# -- the two builds agree -----------------------------------------------------------------------------------
def _builds():
    try:
        return _impl.compiled("resp"), _impl.reference("resp")
    except ImportError:
        pytest.skip("dynafast._core.resp is not built")


def _run(module, reads, max_bulk=64, max_args=8):
    """What a parser makes of ``reads``: per read its requests and buffered bytes, or the error and the requests
    before it (then the stream stops, as the server stops reading)."""
    p = module.Parser(max_bulk, max_args)
    seen = []
    for data in reads:
        try:
            seen.append(("ok", p.feed(data), p.buffered))
        except RespProtocolError as exc:
            seen.append(("error", str(exc), exc.requests))
            break
    return seen


def _split(data: bytes, cuts) -> list:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0] + points, points + [len(data)])]


ARG = st.binary(max_size=80)
REQUEST = st.one_of(st.lists(ARG, min_size=0, max_size=10).map(frame),
                    st.lists(st.binary(min_size=1, max_size=8).filter(lambda a: b"\n" not in a), max_size=4)
                    .map(lambda args: b" ".join(args) + b"\r\n"))
PIPELINE = st.lists(REQUEST, min_size=1, max_size=8).map(b"".join)
CUTS = st.lists(st.integers(min_value=0, max_value=10_000), max_size=12)


@given(data=PIPELINE, cuts=CUTS)
@settings(max_examples=200, deadline=None)
def test_builds_agree_on_requests_split_anywhere(data, cuts):
    compiled, reference = _builds()
    reads = _split(data, cuts)
    assert _run(compiled, reads) == _run(reference, reads)


@given(data=PIPELINE, cuts=CUTS, edits=st.lists(st.tuples(st.integers(min_value=0), st.sampled_from(
    list(b"*$\r\n-+0123456789:%~_ \"'\\x\x00\xff"))), min_size=1, max_size=6))
@settings(max_examples=200, deadline=None)
def test_builds_agree_on_mutated_requests(data, cuts, edits):
    compiled, reference = _builds()
    data = bytearray(data)
    for where, byte in edits:
        data[where % len(data)] = byte
    reads = _split(bytes(data), cuts)
    assert _run(compiled, reads) == _run(reference, reads)


@given(data=st.binary(max_size=400), cuts=CUTS)
@settings(max_examples=200, deadline=None)
def test_builds_agree_on_random_bytes(data, cuts):
    compiled, reference = _builds()
    reads = _split(data, cuts)
    assert _run(compiled, reads) == _run(reference, reads)


# -- replies --------------------------------------------------------------------------------------------------
def enc(impl, reply, resp3):
    out = bytearray(b"before")
    impl.encode(out, reply, resp3)
    assert out[:6] == b"before"
    return bytes(out[6:])


def test_replies_in_resp2_and_resp3(impl):
    assert enc(impl, OK, False) == b"+OK\r\n" and enc(impl, Simple("PONG"), True) == b"+PONG\r\n"
    assert enc(impl, b"v", False) == b"$1\r\nv\r\n" and enc(impl, 7, True) == b":7\r\n"
    assert enc(impl, -2**63, True) == b":-9223372036854775808\r\n" and enc(impl, 2**64, True) == b":%d\r\n" % 2**64
    assert enc(impl, None, False) == b"$-1\r\n" and enc(impl, None, True) == b"_\r\n"
    assert enc(impl, [b"a", None], False) == b"*2\r\n$1\r\na\r\n$-1\r\n"
    assert enc(impl, {b"k": 1}, False) == b"*2\r\n$1\r\nk\r\n:1\r\n"
    assert enc(impl, {b"k": 1}, True) == b"%1\r\n$1\r\nk\r\n:1\r\n"
    assert enc(impl, RespError("ERR bad\r\nthing"), True) == b"-ERR bad  thing\r\n"
    assert enc(impl, Verbatim("é"), True) == b"=6\r\ntxt:\xc3\xa9\r\n" and enc(impl, Verbatim("a"), False) == \
        b"$1\r\na\r\n"
    assert enc(impl, 1.5, True) == b",1.5\r\n" and enc(impl, float("-inf"), False) == b"$4\r\n-inf\r\n"
    assert enc(impl, True, False) == b":1\r\n" and enc(impl, (), True) == b"*0\r\n"
    with pytest.raises(TypeError, match="no RESP encoding for object"):
        enc(impl, object(), True)


LEAF = st.one_of(st.binary(max_size=20), st.none(), st.integers(), st.booleans(), st.floats(),
                 st.text(max_size=10), st.text(max_size=10).map(Simple), st.text(max_size=10).map(Verbatim),
                 st.text(max_size=10).map(lambda t: RespError("ERR " + t)), st.just(OK),
                 st.binary(max_size=5).map(bytearray))
REPLY = st.recursive(LEAF, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.lists(inner, max_size=4).map(tuple),
    st.dictionaries(st.binary(max_size=4), inner, max_size=3), st.frozensets(st.integers(), max_size=3)),
    max_leaves=20)


@given(reply=REPLY, resp3=st.booleans())
@settings(max_examples=200, deadline=None)
def test_builds_encode_the_same(reply, resp3):
    compiled, reference = _builds()
    assert enc(compiled, reply, resp3) == enc(reference, reply, resp3)
