"""Wire protocol micro benchmarks: codec compiled vs reference, parsing fields into records, and loopback echo
throughput.

    pytest -n 0 -m bench benchmarks/test_bench_codec.py
"""
import asyncio

import pytest

from dynafast import _impl
from dynafast.net import loop as netloop
from dynafast.net.connection import Connection
from dynafast.net.messages import Msg, parse
from dynafast.net.server import start_server

pytestmark = pytest.mark.bench

BUILDS = ["compiled", "reference"]
GET_REPLY = ([b"v" * 100, b"w" * 100, b"x" * 100], b"c" * 40, 7)  # 3 siblings, 40-byte context, ring version
PUT_REQUEST = (b"user:0000000042", b"v" * 100, b"c" * 40, 2, 1, 1000)  # key, value, context, w, dw, timeout_ms
MESSAGES = {"get_reply": (Msg.GET_REPLY, GET_REPLY), "put": (Msg.PUT, PUT_REQUEST)}


def module(build):
    return _impl.compiled("codec") if build == "compiled" else _impl.reference("codec")


@pytest.mark.parametrize("message", list(MESSAGES))
@pytest.mark.parametrize("build", BUILDS)
def test_encode(benchmark, build, message):
    codec = module(build)
    msg_type, fields = MESSAGES[message]
    benchmark.group = f"encode {message}"
    data = benchmark(codec.encode, msg_type, 12345, fields)
    expected = tuple(list(f) if isinstance(f, (list, tuple)) else f for f in fields)
    assert codec.Decoder().feed(data) == [(msg_type, 12345, expected)]


@pytest.mark.parametrize("message", list(MESSAGES))
@pytest.mark.parametrize("build", BUILDS)
def test_decode(benchmark, build, message):
    codec = module(build)
    msg_type, fields = MESSAGES[message]
    data = codec.encode(msg_type, 12345, fields)
    decoder = codec.Decoder()
    benchmark.group = f"decode {message}"
    frames = benchmark(decoder.feed, data)
    assert frames[0][:2] == (msg_type, 12345)


@pytest.mark.parametrize("build", BUILDS)
def test_encode_into_batch_of_100(benchmark, build):
    codec = module(build)

    def batch():
        buf = bytearray()
        for i in range(100):
            codec.encode_into(buf, Msg.GET_REPLY, i, GET_REPLY)
        return buf

    benchmark.group = "encode_into x100 get_reply"
    assert len(codec.Decoder().feed(benchmark(batch))) == 100


# What a node or client does with decoded fields on every request: check them against the message's record.
PARSED = {
    "put": (Msg.PUT, PUT_REQUEST),
    "put_2_fields": (Msg.PUT, PUT_REQUEST[:2]),
    "get": (Msg.GET, (b"user:0000000042", 2, 1000)),
    "get_reply": (Msg.GET_REPLY, GET_REPLY),
}


@pytest.mark.parametrize("message", list(PARSED))
def test_parse(benchmark, message):
    msg_type, fields = PARSED[message]
    benchmark.group = "parse"
    record = benchmark(parse, int(msg_type), fields)  # the decoder hands over an int
    assert record[:len(fields)] == fields


CONNECTIONS = 50
REQUESTS_PER_CONNECTION = 400


async def echo_run():
    """50 connections, each sending 100-byte requests one after another; all in this process."""

    def handler(conn, msg_type, request_id, fields):
        return Msg.GET_REPLY, fields

    server = await start_server(handler, "127.0.0.1", 0)
    conns = [await Connection.open("127.0.0.1", server.port) for _ in range(CONNECTIONS)]
    payload = (b"k" * 100,)

    async def client(conn):
        for _ in range(REQUESTS_PER_CONNECTION):
            reply = await conn.call(Msg.GET, payload, timeout=10)
        return reply

    loop = asyncio.get_running_loop()
    start = loop.time()
    replies = await asyncio.gather(*(client(c) for c in conns))
    elapsed = loop.time() - start
    for conn in conns:
        await conn.close()
    server.close()
    await server.wait_closed()
    assert all(r == (Msg.GET_REPLY, payload) for r in replies)
    return CONNECTIONS * REQUESTS_PER_CONNECTION / elapsed


@pytest.mark.parametrize("loop_name", ["uvloop", "asyncio"])
def test_echo_throughput(benchmark, loop_name):
    if loop_name == "uvloop" and netloop.uvloop is None:
        pytest.skip("uvloop is not installed")
    rates = []

    def once():
        loop = netloop.new_event_loop(loop_name)
        try:
            rates.append(loop.run_until_complete(asyncio.wait_for(echo_run(), 120)))
        finally:
            loop.close()

    benchmark.group = "loopback echo, 50 connections, 100-byte requests"
    benchmark.pedantic(once, rounds=3, iterations=1)
    benchmark.extra_info["requests_per_second"] = round(max(rates))
    benchmark.extra_info["requests"] = CONNECTIONS * REQUESTS_PER_CONNECTION
    print(f"\n{loop_name}: {max(rates):,.0f} requests/s (best of 3; median {sorted(rates)[1]:,.0f})")
