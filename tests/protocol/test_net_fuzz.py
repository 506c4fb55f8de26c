"""Throw random and mutated frames at a running server; it must keep serving everyone else correctly."""
import asyncio
import random
import struct

import pytest

from dynafast._impl import codec
from dynafast.errors import ProtocolError
from dynafast.net import loop as netloop
from dynafast.net.connection import Connection
from dynafast.net.messages import ErrorCode, Msg
from dynafast.net.server import start_server

pytestmark = pytest.mark.timeout(120)
LOOPS = ["asyncio"] + (["uvloop"] if netloop.uvloop is not None else [])
HOST = "127.0.0.1"
MAX_FRAME = 4096
CASES = 150  # per kind (random bytes, mutated frames), per loop
SEED = 20240611


def handler(conn, msg_type, request_id, fields):
    """Echo GET at once; REPLICA_GET through a task (so async replies are fuzzed too)."""
    if msg_type == Msg.GET:
        return Msg.GET_REPLY, fields
    if msg_type == Msg.REPLICA_GET:
        async def later():
            await asyncio.sleep(0)
            return Msg.REPLICA_GET_REPLY, fields
        return later()
    return None  # everything else: no reply


def valid_frames(rng):
    """A few well-formed frames of the kinds the node sends."""
    value = bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 120)))
    return [
        codec.encode(Msg.GET, rng.randint(1, 2**32 - 1), (b"key", value, 3, None)),
        codec.encode(Msg.REPLICA_GET, rng.randint(1, 2**32 - 1), ([value, b"ctx" * 10], 1.5, "s", True)),
        codec.encode(Msg.PUT, rng.randint(1, 2**32 - 1), (b"k", value, [1, -2, "x"], False)),
    ]


def mutate(rng, frame):
    data = bytearray(frame)
    kind = rng.randrange(6)
    if kind == 0:  # flip some bytes anywhere (header included)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    elif kind == 1:  # truncate
        del data[rng.randrange(len(data)):]
    elif kind == 2:  # random length field
        struct.pack_into(">I", data, 0, rng.choice([0, 5, 6, len(data), MAX_FRAME, MAX_FRAME + 1, 2**32 - 1,
                                                    rng.randrange(2**32)]))
    elif kind == 3:  # garbage body with a consistent length
        body = bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 64)))
        data = bytearray(struct.pack(">IBBI", 6 + len(body), 1, Msg.GET, 7) + body)
    elif kind == 4:  # bad version
        data[4] = rng.choice([0, 2, 255])
    else:  # insert random bytes in the middle
        at = rng.randrange(len(data))
        data[at:at] = bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 8)))
    return bytes(data)


async def throw(port, payload, marker_id):
    """Send payload then a PING; read until the server answers the PING or hangs up. Returns the frames."""
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        writer.write(payload + codec.encode(Msg.PING, marker_id, ("marker",)))
        writer.write_eof()
        data = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
    return data


def check_reply_stream(data, marker_id):
    """Whatever the server sent back is a valid frame stream; the PING is answered unless it hung up."""
    decoder = codec.Decoder()
    frames = decoder.feed(data)  # the server must never send a malformed frame
    assert decoder.buffered == 0
    for msg_type, _, fields in frames:
        assert not isinstance(fields, ProtocolError)
        if msg_type == Msg.ERROR:
            assert fields[0] in (ErrorCode.PROTOCOL, ErrorCode.UNKNOWN)
    pinged = (Msg.PONG, marker_id, ("marker",)) in frames
    hung_up_with_error = any(t == Msg.ERROR and rid == 0 for t, rid, _ in frames)
    return pinged, hung_up_with_error


@pytest.mark.parametrize("loop_name", LOOPS)
def test_fuzz_server_survives(loop_name):
    loop = netloop.new_event_loop(loop_name)
    fired = []
    loop.set_exception_handler(lambda _loop, context: fired.append(context))
    try:
        loop.run_until_complete(asyncio.wait_for(fuzz(random.Random(SEED)), 100))
    finally:
        loop.close()
    assert not fired, fired


async def fuzz(rng):
    server = await start_server(handler, HOST, 0, max_frame=MAX_FRAME)
    bystander = await Connection.open(HOST, server.port)
    stats = {"pinged": 0, "closed": 0}

    async def bystander_checks(tag):
        value = bytes([tag % 256]) * 100
        assert await bystander.call(Msg.GET, (tag, value), timeout=5) == (Msg.GET_REPLY, (tag, value))
        assert await bystander.call(Msg.REPLICA_GET, ([value, value],), timeout=5) == \
            (Msg.REPLICA_GET_REPLY, ([value, value],))

    for case in range(2 * CASES):
        if case < CASES:
            payload = bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 200)))
        else:
            frames = valid_frames(rng)
            pieces = [mutate(rng, f) if rng.random() < 0.7 else f for f in rng.sample(frames, rng.randint(1, 3))]
            payload = b"".join(pieces)
        marker = rng.randint(1, 2**32 - 1)
        data = await throw(server.port, payload, marker)
        pinged, hung_up = check_reply_stream(data, marker)
        stats["pinged"] += pinged
        stats["closed"] += not pinged
        if case % 25 == 0:
            await bystander_checks(case)

    # Both outcomes happened, so the test exercised both paths.
    assert stats["pinged"] > 0 and stats["closed"] > 0, stats
    assert server.stats.protocol_errors > 0

    # The long-lived connection was never disturbed, and a fresh one gets correct answers.
    await bystander_checks(7)
    assert not bystander.closed
    fresh = await Connection.open(HOST, server.port)
    replies = await asyncio.gather(*(fresh.call(Msg.GET, (i, b"v" * i), timeout=5) for i in range(50)))
    assert replies == [(Msg.GET_REPLY, (i, b"v" * i)) for i in range(50)]
    assert await fresh.call(Msg.PING, ()) == (Msg.PONG, ())
    await fresh.close()
    await bystander.close()
    server.close()
    await server.wait_closed()
