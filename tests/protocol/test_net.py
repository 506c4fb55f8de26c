"""dynafast.net: protocol logic fed bytes, then real servers and connections on 127.0.0.1 on both loops."""
import asyncio
import gc
import socket
import struct
import sys
import time
import weakref

import pytest

from dynafast import _impl, errors
from dynafast._impl import codec
from dynafast.net import loop as netloop
from dynafast.net.blocking import BlockingConnection
from dynafast.net.connection import Connection, PeerPool
from dynafast.net.messages import (
    ErrorCode,
    Msg,
    Overloaded,
    RemoteError,
    UnknownMessage,
    WrongNode,
    error_fields,
    error_from_fields,
    raise_error,
)
from dynafast.net.server import ServerConnection, start_server
from dynafast.testing.builds import compiled_or_skip

pytestmark = pytest.mark.timeout(60)
LOOPS = ["asyncio"] + (["uvloop"] if netloop.uvloop is not None else [])
HOST = "127.0.0.1"


@pytest.fixture(autouse=True, params=["compiled", "reference"])
def peer_build(request, monkeypatch):
    """Every connection the tests open speaks through this build of ``peer`` (the compiled one is skipped when it
    is not built, and fails when a compiled build is required)."""
    from dynafast.net import connection

    build = compiled_or_skip("peer") if request.param == "compiled" else _impl.reference("peer")

    class ClientProtocol(build.ClientProtocol, asyncio.Protocol):
        def __init__(self, loop, max_frame):
            super().__init__(loop, max_frame, build.DeadlineWheel(loop))

    monkeypatch.setattr(connection, "_ClientProtocol", ClientProtocol)
    return request.param


@pytest.fixture(params=LOOPS)
def run(request):
    """run(coro): drive a coroutine on a fresh loop of each kind, with a timeout; fail if the loop's
    exception handler fired."""
    loop = netloop.new_event_loop(request.param)
    fired = []
    loop.set_exception_handler(lambda _loop, context: fired.append(context))

    def runner(coro, timeout=20):
        return loop.run_until_complete(asyncio.wait_for(coro, timeout))

    yield runner
    loop.run_until_complete(asyncio.sleep(0.01))  # let transports finish closing
    loop.close()
    assert not fired, fired


def frames_of(data):
    return codec.Decoder().feed(bytes(data))


# -- messages ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("exc, code", [
    (errors.ProtocolError("p"), ErrorCode.PROTOCOL),
    (errors.KeyTooLarge("k"), ErrorCode.KEY_TOO_LARGE),
    (errors.ValueTooLarge("v"), ErrorCode.VALUE_TOO_LARGE),
    (errors.Timeout("t"), ErrorCode.TIMEOUT),
    (errors.Unavailable("u"), ErrorCode.UNAVAILABLE),
    (errors.StorageFull("s"), ErrorCode.STORAGE_FULL),
    (errors.StoreClosed("c"), ErrorCode.STORE_CLOSED),
    (WrongNode("w"), ErrorCode.WRONG_NODE),
    (Overloaded("o"), ErrorCode.OVERLOADED),
    (UnknownMessage("m"), ErrorCode.UNKNOWN_MESSAGE),
])
def test_error_mapping_round_trip(exc, code):
    fields = error_fields(exc)
    assert fields == (int(code), str(exc), [])
    # the fields survive the wire
    (_, _, wire_fields), = frames_of(codec.encode(Msg.ERROR, 1, fields))
    with pytest.raises(type(exc)) as info:
        raise_error(wire_fields)
    assert type(info.value) is type(exc)
    assert str(info.value) == str(exc)


def test_quorum_not_met_keeps_counts():
    fields = error_fields(errors.QuorumNotMet("2 of 3", replied=1, required=2))
    assert fields == (int(ErrorCode.QUORUM_NOT_MET), "2 of 3", [1, 2])
    with pytest.raises(errors.QuorumNotMet) as info:
        raise_error(fields)
    assert (info.value.replied, info.value.required) == (1, 2)


def test_unexpected_exception_and_unknown_code():
    code, message, extra = error_fields(KeyError("boom"))
    assert code == ErrorCode.UNKNOWN and "KeyError" in message and extra == []
    err = error_from_fields((999, "from the future", []))
    assert isinstance(err, RemoteError) and err.code == 999
    assert isinstance(error_from_fields(("x",)), errors.ProtocolError)
    assert isinstance(error_from_fields(None), errors.ProtocolError)


# -- protocol logic without sockets ------------------------------------------------------------------------

def echo_handler(conn, msg_type, request_id, fields):
    if msg_type == Msg.GET:
        return Msg.GET_REPLY, fields
    if msg_type == Msg.PUT:
        raise errors.KeyTooLarge("key of 9000 bytes")
    if msg_type == Msg.DELETE:
        raise RuntimeError("handler bug")
    if msg_type == Msg.STATUS:
        return Msg.STATUS_REPLY, (object(),)  # cannot be encoded
    if msg_type == Msg.KEYS_GET:
        return None
    raise UnknownMessage(f"type {msg_type}")


def test_server_connection_fed_bytes():
    conn = ServerConnection(echo_handler)
    stream = b"".join([
        codec.encode(Msg.GET, 1, (b"k", [b"a", b"b"])),
        codec.encode(Msg.PING, 2, ("hi",)),
        codec.encode(Msg.PUT, 3, ()),
        codec.encode(Msg.DELETE, 4, ()),
        codec.encode(Msg.STATUS, 5, ()),
        codec.encode(Msg.KEYS_GET, 6, ()),
        codec.encode(99, 7, ()),
        struct.pack(">IBBI", 7, 1, Msg.GET, 8) + b"\x09",  # malformed body
        codec.encode(Msg.GET, 9, (1,)),
    ])
    for i in range(0, len(stream), 7):  # arbitrary chunking
        assert conn.feed(stream[i:i + 7])
    replies = {rid: (t, f) for t, rid, f in frames_of(conn.take_output())}
    assert replies[1] == (Msg.GET_REPLY, (b"k", [b"a", b"b"]))
    assert replies[2] == (Msg.PONG, ("hi",))
    assert replies[3][0] == Msg.ERROR and replies[3][1][0] == ErrorCode.KEY_TOO_LARGE
    assert replies[4][0] == Msg.ERROR and replies[4][1][0] == ErrorCode.UNKNOWN
    assert replies[5][0] == Msg.ERROR and replies[5][1][0] == ErrorCode.UNKNOWN
    assert 6 not in replies
    assert replies[7][0] == Msg.ERROR and replies[7][1][0] == ErrorCode.UNKNOWN_MESSAGE
    assert replies[8][0] == Msg.ERROR and replies[8][1][0] == ErrorCode.PROTOCOL
    assert replies[9] == (Msg.GET_REPLY, (1,))
    assert conn.stats.frames_received == 9
    assert conn.stats.protocol_errors == 1
    assert conn.stats.errors == 5


def test_server_connection_broken_stream(caplog):
    conn = ServerConnection(echo_handler)
    ok = codec.encode(Msg.GET, 1, (b"x",))
    assert conn.feed(ok + struct.pack(">IBBI", 6, 7, 1, 1)) is False  # version 7
    (t1, rid1, f1), (t2, rid2, f2) = frames_of(conn.take_output())
    assert (t1, rid1, f1) == (Msg.GET_REPLY, 1, (b"x",))  # the frame before the bad one was answered
    assert (t2, rid2) == (Msg.ERROR, 0) and f2[0] == ErrorCode.PROTOCOL
    oversized = ServerConnection(echo_handler, max_frame=100)
    assert oversized.feed(struct.pack(">I", 101)) is False
    assert sum("closing connection" in r.getMessage() for r in caplog.records) == 2  # both were logged


def test_oversized_frame_closes_only_that_connection(run):
    async def main():
        server = await slow_handler_server(max_frame=1000)
        other = await Connection.open(HOST, server.port)
        reader, writer = await asyncio.open_connection(HOST, server.port)
        writer.write(struct.pack(">IBBI", 5000, 1, Msg.GET, 3))  # claims 5000 bytes: never waited for
        data = await reader.read()  # the server answers with a connection error, then hangs up
        writer.close()
        ((msg_type, request_id, fields),) = frames_of(data)
        assert (msg_type, request_id, fields[0]) == (Msg.ERROR, 0, ErrorCode.PROTOCOL)
        assert await other.call(Msg.GET, (0, b"still here")) == (Msg.GET_REPLY, (0, b"still here"))
        assert server.stats.protocol_errors == 1
        # A request over the server's limit: the call learns why the server hung up.
        with pytest.raises(errors.ProtocolError, match="exceeds the limit"):
            await other.call(Msg.GET, (0, b"x" * 2000))
        with pytest.raises(errors.Unavailable):
            await other.call(Msg.PING, ())
        await other.close()
        server.close()
        await server.wait_closed()

    run(main())


# -- real sockets ------------------------------------------------------------------------------------------

async def slow_handler_server(**options):
    """GET sleeps fields[0] seconds then echoes; PUT never answers; LEAVE closes the connection."""

    async def later(delay, fields):
        await asyncio.sleep(delay)
        return Msg.GET_REPLY, fields

    def handler(conn, msg_type, request_id, fields):
        if msg_type == Msg.GET:
            return later(fields[0], fields)
        if msg_type == Msg.PUT:
            return None
        if msg_type == Msg.LEAVE:
            conn.close()
            return None
        return echo_handler(conn, msg_type, request_id, fields)

    return await start_server(handler, HOST, 0, **options)


def test_call_round_trip_and_errors(run):
    async def main():
        server = await slow_handler_server()
        assert server.port > 0
        conn = await Connection.open(HOST, server.port, timeout=2)
        assert await conn.call(Msg.PING, (1, b"x")) == (Msg.PONG, (1, b"x"))
        value = [b"v" * 100] * 3
        assert await conn.call(Msg.GET, (0, value, b"c" * 40)) == (Msg.GET_REPLY, (0, value, b"c" * 40))
        with pytest.raises(UnknownMessage):
            await conn.call(Msg.JOIN, ())  # unknown to the handler
        with pytest.raises(RemoteError):
            await conn.call(Msg.DELETE, ())
        assert await conn.call(Msg.PING, ()) == (Msg.PONG, ())  # still usable after errors
        await conn.close()
        assert conn.closed
        with pytest.raises(errors.Unavailable):
            await conn.call(Msg.PING, ())
        server.close()
        await server.wait_closed()

    run(main())


def test_out_of_order_replies(run):
    async def main():
        server = await slow_handler_server()
        conn = await Connection.open(HOST, server.port)
        # A new connection starts with two requests in flight and widens as its replies prove small.
        await asyncio.gather(*(conn.call(Msg.GET, (0, i)) for i in range(20)))
        order = []

        async def one(delay, tag):
            reply = await conn.call(Msg.GET, (delay, tag), timeout=5)
            order.append(tag)
            return reply

        replies = await asyncio.gather(one(0.3, "slow"), one(0.1, "mid"), one(0.0, "fast"))
        assert [r[1][1] for r in replies] == ["slow", "mid", "fast"]  # each caller got its own reply
        assert order == ["fast", "mid", "slow"]
        await conn.close()
        server.close()
        await server.wait_closed()

    run(main())


def test_timeout_then_connection_still_usable(run):
    async def main():
        server = await slow_handler_server()
        conn = await Connection.open(HOST, server.port)
        with pytest.raises(errors.Timeout):
            await conn.call(Msg.PUT, (), timeout=0.05)  # never answered
        with pytest.raises(errors.Timeout):
            await conn.call(Msg.GET, (0.3, "late"), timeout=0.05)  # answered too late
        assert isinstance(errors.Timeout("x"), TimeoutError)
        assert await conn.call(Msg.GET, (0, "ok")) == (Msg.GET_REPLY, (0, "ok"))
        await asyncio.sleep(0.35)  # the late reply arrives and is dropped
        assert await conn.call(Msg.GET, (0, "ok2")) == (Msg.GET_REPLY, (0, "ok2"))
        assert conn.in_flight == 0
        assert len(conn._protocol.deadlines) == 0  # answered calls took their deadlines with them
        await conn.close()
        server.close()
        await server.wait_closed()

    run(main())


def test_a_timeout_of_forever_is_a_deadline_like_any_other(run):
    """sys.maxsize seconds is beyond a C integer of ticks: the call still waits for its reply, as with any timeout
    (the compiled wheel once raised OverflowError after the request had gone out)."""
    async def main():
        server = await slow_handler_server()
        conn = await Connection.open(HOST, server.port)
        assert await conn.call(Msg.GET, (0, "forever"), timeout=sys.maxsize) == (Msg.GET_REPLY, (0, "forever"))
        assert conn.in_flight == 0 and len(conn._protocol.deadlines) == 0
        await conn.close()
        server.close()
        await server.wait_closed()

    run(main())


def test_a_closed_connection_is_freed_without_the_cycle_collector(run):
    """Its protocol holds no reference to itself: it and what it buffered go when the connection does, not at a
    full garbage collection that a node with a large heap runs rarely."""
    async def main():
        server = await slow_handler_server()
        conn = await Connection.open(HOST, server.port)
        assert await conn.call(Msg.GET, (0, "ok")) == (Msg.GET_REPLY, (0, "ok"))
        protocol = weakref.ref(conn._protocol)
        await conn.close()
        del conn
        await asyncio.sleep(0.05)  # the transport lets go of it
        assert protocol() is None
        server.close()
        await server.wait_closed()

    gc.disable()
    try:
        run(main())
    finally:
        gc.enable()


def test_a_cancelled_call_drops_its_deadline(run):
    async def main():
        server = await slow_handler_server()
        conn = await Connection.open(HOST, server.port)
        task = asyncio.ensure_future(conn.call(Msg.PUT, (), timeout=30))  # never answered
        await asyncio.sleep(0.02)
        assert conn.in_flight == 1 and len(conn._protocol.deadlines) == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert conn.in_flight == 0 and len(conn._protocol.deadlines) == 0
        await conn.close()
        server.close()
        await server.wait_closed()

    run(main())


def test_refused_and_lost(run):
    async def main():
        sock = socket.socket()
        sock.bind((HOST, 0))
        free_port = sock.getsockname()[1]
        sock.close()
        with pytest.raises(errors.Unavailable):
            await Connection.open(HOST, free_port, timeout=1)

        server = await slow_handler_server()
        conn = await Connection.open(HOST, server.port)
        pending = asyncio.ensure_future(conn.call(Msg.GET, (5, "x"), timeout=10))
        await asyncio.sleep(0.05)
        server.close()  # closes every connection: the pending call must fail fast, not time out
        with pytest.raises(errors.Unavailable):
            await pending
        assert conn.closed
        await server.wait_closed()

        server = await slow_handler_server()
        conn = await Connection.open(HOST, server.port)
        with pytest.raises(errors.Unavailable):
            await conn.call(Msg.LEAVE, (), timeout=5)  # the server hangs up on us
        await conn.close()
        server.close()
        await server.wait_closed()

    run(main())


def test_request_then_runs_its_callback_once_with_each_outcome(run):
    """The future-free call a coordinator makes to replicas: the callback gets a done-future-like call, in a
    later loop step than the request, for a reply, an error reply, a timeout, a lost connection, a field that
    cannot be encoded, and a pool that still has to connect."""
    async def main():
        server = await slow_handler_server()
        outcomes = {}
        done = asyncio.Event()

        def callback(tag):
            def record(call):
                assert not call.cancelled()
                assert tag not in outcomes, "called twice"
                outcomes[tag] = call.exception() or call.result()
                if len(outcomes) == 6:
                    done.set()
            return record

        async with PeerPool(connect_timeout=1.0) as pool:
            pool.request_then(server.address, Msg.GET, (0, b"first"), 2.0, callback("connecting"))
            await pool.call(server.address, Msg.PING, (), 2.0)  # the connection is open from here on
            (conn,) = pool.connections(server.address)
            assert conn.request_then(Msg.GET, (0, b"x"), 2.0, callback("reply"))
            assert conn.request_then(Msg.DELETE, (), 2.0, callback("error"))
            assert conn.request_then(Msg.PUT, (), 0.05, callback("timeout"))  # never answered
            assert conn.request_then(Msg.GET, (0, object()), 2.0, callback("unencodable"))
            assert outcomes == {} or set(outcomes) <= {"connecting"}  # none is called before request_then returns
            other = await Connection.open(HOST, server.port)
            assert other.request_then(Msg.GET, (5, b"never"), 10.0, callback("lost"))
            await asyncio.sleep(0.1)
            await other.close()  # the call in flight fails at once, it does not wait out its 10 s
            assert not other.request_then(Msg.GET, (0, b"y"), 1.0, callback("closed"))  # nothing sent: use call
            await asyncio.wait_for(done.wait(), 5)
            assert outcomes["connecting"] == (Msg.GET_REPLY, (0, b"first"))
            assert outcomes["reply"] == (Msg.GET_REPLY, (0, b"x"))
            assert isinstance(outcomes["error"], RemoteError)
            assert isinstance(outcomes["timeout"], errors.Timeout)
            assert isinstance(outcomes["unencodable"], TypeError)
            assert isinstance(outcomes["lost"], errors.Unavailable)
            assert conn.in_flight == 0 and len(conn._protocol.deadlines) == 0
        server.close()
        await server.wait_closed()

    run(main())


class CountingTransport:
    """Wraps an asyncio transport and counts write() calls."""

    def __init__(self, transport):
        self._transport = transport
        self.writes = 0

    def write(self, data):
        self.writes += 1
        self._transport.write(data)

    def __getattr__(self, name):
        return getattr(self._transport, name)


def test_one_write_per_loop_turn(run):
    async def main():
        server = await slow_handler_server()
        conn = await Connection.open(HOST, server.port)
        assert await conn.call(Msg.PING, ()) == (Msg.PONG, ())
        client_transport = CountingTransport(conn._protocol.transport)
        conn._protocol.transport = client_transport
        (server_side,) = server._connections
        server_transport = CountingTransport(server_side._transport)
        server_side._transport = server_transport

        replies = await asyncio.gather(*(conn.call(Msg.PING, (i,)) for i in range(100)))
        assert replies == [(Msg.PONG, (i,)) for i in range(100)]
        assert client_transport.writes == 1  # 100 requests, one write
        assert 1 <= server_transport.writes <= 100
        assert server.stats.frames_received == 101
        conn._protocol.transport = client_transport._transport
        await conn.close()
        server.close()
        await server.wait_closed()

    run(main())


def test_overloaded(run):
    async def main():
        server = await slow_handler_server(max_inflight=2)
        conn = await Connection.open(HOST, server.port)
        for i in range(20):  # small replies widen the window a new connection starts with (two in flight)
            await conn.call(Msg.GET, (0, i))
        results = await asyncio.gather(*(conn.call(Msg.GET, (0.2, i)) for i in range(5)), return_exceptions=True)
        assert [r for r in results if isinstance(r, Overloaded)] == results[2:]
        assert results[:2] == [(Msg.GET_REPLY, (0.2, 0)), (Msg.GET_REPLY, (0.2, 1))]
        await conn.close()
        server.close()
        await server.wait_closed()

    run(main())


def test_half_close_still_answers(run):
    async def main():
        server = await slow_handler_server()
        reader, writer = await asyncio.open_connection(HOST, server.port)
        writer.write(codec.encode(Msg.GET, 5, (0.1, "after eof")) + codec.encode(Msg.PING, 6, ()))
        writer.write_eof()
        data = await reader.read()  # until the server closes
        writer.close()
        assert sorted(frames_of(data)) == [(Msg.PONG, 6, ()), (Msg.GET_REPLY, 5, (0.1, "after eof"))]
        server.close()
        await server.wait_closed()

    run(main())


def test_peer_pool(run):
    async def main():
        server = await slow_handler_server()
        address = server.address
        async with PeerPool(connect_timeout=1.0) as pool:
            replies = await asyncio.gather(*(pool.call(address, Msg.PING, (i,), 2.0) for i in range(20)))
            assert replies == [(Msg.PONG, (i,)) for i in range(20)]
            (first,) = pool.connections(address)
            assert await pool.call(address, Msg.GET, (0, b"x"), 2.0) == (Msg.GET_REPLY, (0, b"x"))
            assert pool.connections(address) == [first]  # reused
            with pytest.raises(errors.Unavailable):
                await pool.call(address, Msg.LEAVE, (), 2.0)  # the server drops the connection
            assert await pool.call(address, Msg.PING, (), 2.0) == (Msg.PONG, ())  # reconnected
            (second,) = pool.connections(address)
            assert second is not first
            assert server.stats.connections_total == 2

            sock = socket.socket()
            sock.bind((HOST, 0))
            dead = f"{HOST}:{sock.getsockname()[1]}"
            sock.close()
            with pytest.raises(errors.Unavailable):
                await pool.call(dead, Msg.PING, (), 1.0)
            with pytest.raises(ValueError):
                await pool.call("no-port", Msg.PING, (), 1.0)

        async with PeerPool(connections_per_peer=3) as pool:
            await asyncio.gather(*(pool.call(address, Msg.PING, (), 2.0) for _ in range(9)))
            assert len(pool.connections(address)) == 3
        with pytest.raises(errors.Unavailable):
            await pool.call(address, Msg.PING, (), 1.0)  # closed pool
        server.close()
        await server.wait_closed()

    run(main())


def test_blocking_connection(run):
    async def main():
        server = await slow_handler_server()

        def client():
            with BlockingConnection(HOST, server.port, timeout=2.0) as conn:
                assert conn.call(Msg.PING, (b"x",)) == (Msg.PONG, (b"x",))
                assert conn.call_many([(Msg.GET, (0.1, 1)), (Msg.GET, (0, 2)), (Msg.PING, ())]) == [
                    (Msg.GET_REPLY, (0.1, 1)), (Msg.GET_REPLY, (0, 2)), (Msg.PONG, ())]
                with pytest.raises(RemoteError):
                    conn.call(Msg.DELETE, ())
                results = conn.call_many([(Msg.PING, ()), (Msg.JOIN, ())], return_exceptions=True)
                assert results[0] == (Msg.PONG, ()) and isinstance(results[1], UnknownMessage)
                with pytest.raises(UnknownMessage):
                    conn.call_many([(Msg.JOIN, ()), (Msg.PING, ())])
                with pytest.raises(errors.Timeout):
                    conn.call(Msg.GET, (0.3, "late"), timeout=0.05)
                assert conn.call(Msg.PING, ("after",)) == (Msg.PONG, ("after",))  # late reply skipped
                assert conn.call(Msg.GET, (0.35, "ok")) == (Msg.GET_REPLY, (0.35, "ok"))
                with pytest.raises(errors.Unavailable):
                    conn.call(Msg.LEAVE, ())
                assert conn.closed
            with pytest.raises(errors.Unavailable):
                BlockingConnection(HOST, 1, timeout=1.0)

        await asyncio.get_running_loop().run_in_executor(None, client)
        server.close()
        await server.wait_closed()

    run(main())


def test_blocking_connection_checks_an_idle_connection_without_waiting_and_reconnects_a_closed_one(run):
    async def main():
        server = await slow_handler_server(idle_timeout=0)  # the server never closes an idle connection
        closing = await slow_handler_server(idle_timeout=0.4)

        def client():
            with BlockingConnection(HOST, server.port, timeout=3.0) as conn:
                assert conn.call(Msg.PING, (1,)) == (Msg.PONG, (1,))
                time.sleep(1.2)  # idle long enough to be checked: still open, so it is kept
                assert conn.call(Msg.PING, (2,), timeout=1.0) == (Msg.PONG, (2,))
            with BlockingConnection(HOST, closing.port, timeout=3.0) as conn:
                assert conn.call(Msg.PING, (1,)) == (Msg.PONG, (1,))
                time.sleep(1.5)  # the server closes it meanwhile; the next call goes on a new connection
                assert conn.call(Msg.PING, (2,)) == (Msg.PONG, (2,))

        await asyncio.get_running_loop().run_in_executor(None, client)
        assert server.stats.connections_total == 1
        assert closing.stats.connections_total == 2 and closing.stats.idle_closed == 1
        for s in (server, closing):
            s.close()
            await s.wait_closed()

    run(main())


def test_requests_in_flight_and_unsent_replies_hold_back_further_frames(run):
    async def main():
        loop = asyncio.get_running_loop()
        pending = []  # (request id, future) in the order the handler was called

        def handler(conn, msg_type, request_id, fields):
            future = loop.create_future()
            pending.append((request_id, future))
            return future

        def answer(size):
            for _, future in pending:
                if not future.done():
                    future.set_result((Msg.GET_REPLY, (b"x" * size,)))

        def in_flight():
            return sum(not future.done() for _, future in pending)

        conn = ServerConnection(handler, high_water=1000)
        conn.feed(b"".join(codec.encode(Msg.GET, i, (i,)) for i in range(1, 41)))
        assert [i for i, _ in pending] == [1, 2] and conn.held == 38  # a new connection starts at two
        answer(10)  # small replies: more may be in flight at once
        await asyncio.sleep(0)
        assert in_flight() > 2
        answer(2000)  # a reply above the high-water mark: from now on one request at a time
        await asyncio.sleep(0)
        assert in_flight() == 1
        # A transport full of unsent bytes stops everything until the peer reads.
        conn.writing_paused()
        dispatched = len(pending)
        answer(2000)
        await asyncio.sleep(0)
        assert len(pending) == dispatched and in_flight() == 0 and conn.held == 40 - dispatched
        conn.writing_resumed()
        assert len(pending) == dispatched + 1
        for _ in range(100):
            if not conn.held:
                break
            answer(10)
            await asyncio.sleep(0)
        answer(10)
        await asyncio.sleep(0)
        assert [i for i, _ in pending] == list(range(1, 41)) and conn.held == 0
        assert [rid for _, rid, _ in frames_of(conn.take_output())] == list(range(1, 41))

    run(main())


def test_loop_choice(monkeypatch):
    monkeypatch.setenv("DYNAFAST_LOOP", "asyncio")
    assert netloop.loop_name() == "asyncio"
    loop = netloop.new_event_loop()
    assert type(loop).__module__.startswith("asyncio")
    loop.close()
    monkeypatch.delenv("DYNAFAST_LOOP")
    if netloop.uvloop is not None:
        assert netloop.loop_name() == "uvloop"
        loop = netloop.new_event_loop()
        assert type(loop).__module__.startswith("uvloop")
        loop.close()
        try:
            assert netloop.install() == "uvloop"
            assert isinstance(asyncio.get_event_loop_policy(), netloop.uvloop.EventLoopPolicy)
        finally:
            asyncio.set_event_loop_policy(None)
