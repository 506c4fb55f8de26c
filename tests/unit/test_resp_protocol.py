"""The RESP request parsers (hiredis-backed and pure Python) agree, keep their limits, and only ever fail with a
protocol error; the reply encoder writes RESP2 and RESP3."""
import random

import pytest

from dynafast.resp.protocol import (OK, HiredisParser, PythonParser, RespError, RespProtocolError, Simple,
                                    encode, hiredis)

PARSERS = [PythonParser] + ([HiredisParser] if hiredis is not None else [])


def frame(args) -> bytes:
    out = b"*%d\r\n" % len(args)
    for arg in args:
        out += b"$%d\r\n%s\r\n" % (len(arg), arg)
    return out


def random_requests(rng, count):
    return [[rng.randbytes(rng.choice([0, 1, 5, 100, 3000])) for _ in range(rng.randint(1, 6))]
            for _ in range(count)]


@pytest.mark.parametrize("parser", PARSERS)
def test_pipelines_split_anywhere_parse_the_same(parser):
    rng = random.Random(7)
    for _ in range(200):
        requests = random_requests(rng, rng.randint(1, 20))
        data = b"".join(map(frame, requests))
        p = parser(max_bulk=4096)
        got, pos = [], 0
        while pos < len(data):
            step = rng.choice([1, 2, 7, 100, 5000, len(data)])
            got += p.feed(data[pos:pos + step])
            pos += step
            assert p.buffered <= len(data)
        assert got == requests and p.buffered == 0


@pytest.mark.parametrize("parser", PARSERS)
def test_inline_requests(parser):
    p = parser(max_bulk=100)
    assert p.feed(b"PING\r\nSET k \"two words\\n\" 'it\\'s'\r\n\r\nGET") == \
        [[b"PING"], [b"SET", b"k", b"two words\n", b"it's"]]
    assert p.feed(b" k\r\n") == [[b"GET", b"k"]]
    p = parser(max_bulk=100)
    assert p.feed(b'SET k "a b"\r\nGET k\n') == [[b"SET", b"k", b"a b"], [b"GET", b"k"]]
    with pytest.raises(RespProtocolError, match="unbalanced quotes"):
        parser(max_bulk=100).feed(b'SET k "open\r\n')


@pytest.mark.parametrize("parser", PARSERS)
@pytest.mark.parametrize("data, error", [
    (b"*1\r\n$101\r\n", "ERR Protocol error: invalid bulk length"),
    (b"*2\r\n$3\r\nGET\r\n$99999999999999\r\n", "ERR Protocol error: invalid bulk length"),
    (b"*1\r\n$-7\r\n", "ERR Protocol error: invalid bulk length"),
    (b"*1000001\r\n", "ERR Protocol error: invalid multibulk length"),
    (b"*1\r\n*1\r\n*1\r\n", "ERR Protocol error: expected '$', got '*'"),
    (b"*x\r\n", "ERR Protocol error: invalid multibulk length"),
])
def test_limits_answer_redis_errors(parser, data, error):
    with pytest.raises(RespProtocolError) as caught:
        parser(max_bulk=100, max_args=1000).feed(data)
    if error is not None:
        assert str(caught.value) == error


@pytest.mark.parametrize("parser", PARSERS)
def test_fuzzed_input_only_raises_protocol_errors(parser):
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
        p = parser(max_bulk=4096, max_args=10_000)
        try:
            for request in p.feed(data):
                assert type(request) is list and all(type(arg) is bytes for arg in request)
        except RespProtocolError:
            pass
        assert p.buffered <= len(data) + 64 * 1024


def test_replies_in_resp2_and_resp3():
    def enc(reply, resp3):
        out = bytearray()
        encode(out, reply, resp3)
        return bytes(out)

    assert enc(OK, False) == b"+OK\r\n" and enc(Simple("PONG"), True) == b"+PONG\r\n"
    assert enc(b"v", False) == b"$1\r\nv\r\n" and enc(7, True) == b":7\r\n"
    assert enc(None, False) == b"$-1\r\n" and enc(None, True) == b"_\r\n"
    assert enc([b"a", None], False) == b"*2\r\n$1\r\na\r\n$-1\r\n"
    assert enc({b"k": 1}, False) == b"*2\r\n$1\r\nk\r\n:1\r\n" and enc({b"k": 1}, True) == b"%1\r\n$1\r\nk\r\n:1\r\n"
    assert enc(RespError("ERR bad\r\nthing"), True) == b"-ERR bad  thing\r\n"
