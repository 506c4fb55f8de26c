"""FaultProxy against a real echo server on 127.0.0.1: forwarding, delay, drop, black hole, cut, heal, stop."""
import asyncio
import socket
import threading
import time

import pytest

from dynafast.testing import FaultProxy, free_port

IO_TIMEOUT = 5.0


class EchoServer:
    """A tiny asyncio echo server in its own thread; counts the connections it accepted."""

    def __init__(self):
        self.connections = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(asyncio.start_server(self._echo, "127.0.0.1", 0))
        self.address = "127.0.0.1:%d" % self._server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()
        self._server.close()
        self._loop.run_until_complete(self._server.wait_closed())
        self._loop.close()

    async def _echo(self, reader, writer):
        self.connections += 1
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()

    def __enter__(self):
        self._thread.start()
        assert self._ready.wait(IO_TIMEOUT)
        return self

    def __exit__(self, *exc):
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(IO_TIMEOUT)


@pytest.fixture
def echo():
    with EchoServer() as server:
        yield server


@pytest.fixture
def proxy(echo):
    with FaultProxy(echo.address) as p:
        yield p
        assert p.errors == []


def connect(proxy, timeout=IO_TIMEOUT):
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=timeout)
    return sock


def recv_exactly(sock, size):
    chunks, got = [], 0
    while got < size:
        chunk = sock.recv(min(65536, size - got))
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def round_trip(proxy, payload=b"hello"):
    with connect(proxy) as sock:
        sock.sendall(payload)
        return recv_exactly(sock, len(payload))


def assert_refused(proxy):
    """A new connection is accepted and reset at once (the reset may already show in connect())."""
    try:
        sock = connect(proxy)
    except ConnectionResetError:
        return
    with sock:
        try:
            sock.sendall(b"during")
        except (ConnectionResetError, BrokenPipeError):
            pass
        assert_closed_by_proxy(sock)


def assert_closed_by_proxy(sock):
    """The proxy ended this connection: reading gives end of stream or a reset, never data."""
    sock.settimeout(IO_TIMEOUT)
    try:
        data = sock.recv(100)
    except (ConnectionResetError, BrokenPipeError):
        return
    assert data == b""


def wait_until(predicate, timeout=IO_TIMEOUT):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_forwards_both_ways_and_counts_bytes(proxy, echo):
    assert proxy.address == f"127.0.0.1:{proxy.port}"
    assert proxy.target == echo.address
    assert round_trip(proxy, b"ping") == b"ping"
    assert wait_until(lambda: proxy.bytes_to_client == 4)
    assert proxy.bytes_to_target == 4
    assert proxy.bytes_forwarded == 8
    assert proxy.connections_accepted == 1
    assert echo.connections == 1


def test_large_stream_is_forwarded_intact(proxy):
    payload = bytes(range(256)) * 8192  # 2 MiB: many chunks, back-pressure on every hop
    with connect(proxy) as sock:
        sender = threading.Thread(target=sock.sendall, args=(payload,))
        sender.start()
        received = recv_exactly(sock, len(payload))
        sender.join(IO_TIMEOUT)
    assert received == payload


def test_half_close_is_passed_on(proxy):
    with connect(proxy) as sock:
        sock.sendall(b"last words")
        sock.shutdown(socket.SHUT_WR)
        # The echo server sees end of stream, answers and closes: we get everything, then end of stream.
        assert recv_exactly(sock, 100) == b"last words"
    assert wait_until(lambda: proxy.active_connections == 0)


def test_delay_adds_latency_but_data_arrives(proxy):
    proxy.delay(0.2)
    assert proxy.delay_seconds == 0.2
    started = time.monotonic()
    assert round_trip(proxy, b"slow") == b"slow"
    # Delayed once each way: a lower bound only, which a correct proxy can never miss.
    assert time.monotonic() - started >= 0.35
    proxy.heal()
    assert proxy.delay_seconds == 0.0
    assert round_trip(proxy, b"fast") == b"fast"


def test_delay_keeps_order_of_chunks(proxy):
    proxy.delay(0.05)
    with connect(proxy) as sock:
        for i in range(20):
            sock.sendall(b"%02d" % i)
        assert recv_exactly(sock, 40) == b"".join(b"%02d" % i for i in range(20))


def test_cut_closes_connections_and_refuses_new_ones_until_heal(proxy, echo):
    sock = connect(proxy)
    sock.sendall(b"before")
    assert recv_exactly(sock, 6) == b"before"
    proxy.cut()
    assert proxy.state == "cut"
    assert proxy.active_connections == 0
    assert_closed_by_proxy(sock)
    sock.close()

    assert_refused(proxy)
    assert echo.connections == 1  # nothing reached the target while cut
    assert proxy.connections_refused >= 1

    proxy.heal()
    assert proxy.state == "normal"
    assert round_trip(proxy, b"after") == b"after"
    assert echo.connections == 2


def test_blackhole_holds_data_until_heal(proxy, echo):
    with connect(proxy) as sock:
        sock.sendall(b"one")
        assert recv_exactly(sock, 3) == b"one"
        proxy.blackhole()
        assert proxy.state == "blackhole"
        sock.sendall(b"two")
        sock.settimeout(0.3)
        with pytest.raises(socket.timeout):
            sock.recv(100)  # the connection stays open, nothing comes through
        assert proxy.active_connections == 1

        # A connection made meanwhile is accepted but does not reach the target.
        late = connect(proxy)
        late.sendall(b"three")
        assert wait_until(lambda: proxy.connections_accepted == 2)
        assert echo.connections == 1

        proxy.heal()
        sock.settimeout(IO_TIMEOUT)
        assert recv_exactly(sock, 3) == b"two"
        assert recv_exactly(late, 5) == b"three"
        late.close()
    assert echo.connections == 2


def test_drop_discards_chunks(proxy):
    with pytest.raises(ValueError):
        proxy.drop(1.5)
    with pytest.raises(ValueError):
        proxy.delay(-1)
    proxy.drop(1.0)
    assert proxy.drop_probability == 1.0
    with connect(proxy) as sock:
        sock.sendall(b"lost")
        assert wait_until(lambda: proxy.bytes_dropped == 4)
        sock.settimeout(0.2)
        with pytest.raises(socket.timeout):
            sock.recv(100)
    assert proxy.bytes_to_target == 0
    proxy.drop(0.0)
    assert round_trip(proxy, b"kept") == b"kept"


def test_reset_connections_keeps_serving_new_ones(proxy):
    sock = connect(proxy)
    sock.sendall(b"x")
    assert recv_exactly(sock, 1) == b"x"
    proxy.reset_connections()
    assert proxy.active_connections == 0
    assert_closed_by_proxy(sock)
    sock.close()
    assert proxy.state == "normal"
    assert round_trip(proxy, b"y") == b"y"


def test_unreachable_target_closes_the_client():
    with FaultProxy(f"127.0.0.1:{free_port()}", connect_timeout=2.0) as proxy:
        assert_refused(proxy)
        assert wait_until(lambda: proxy.upstream_failures == 1)
        assert proxy.errors == []


def test_set_target_applies_to_new_connections(echo):
    with EchoServer() as other, FaultProxy(echo.address) as proxy:
        assert round_trip(proxy) == b"hello"
        proxy.set_target(other.address)
        assert round_trip(proxy) == b"hello"
        assert (echo.connections, other.connections) == (1, 1)


def test_stop_closes_everything_and_leaves_no_thread(echo):
    proxy = FaultProxy(echo.address).start()
    sock = connect(proxy)
    sock.sendall(b"z")
    assert recv_exactly(sock, 1) == b"z"
    proxy.stop()
    assert not proxy.running
    assert_closed_by_proxy(sock)
    sock.close()
    assert not [t for t in threading.enumerate() if t.name == "dynafast-fault-proxy"]
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", proxy.port), timeout=IO_TIMEOUT).close()
    proxy.stop()  # a second stop is harmless
    assert proxy.errors == []


def test_faults_set_before_start_apply_once_started(echo):
    proxy = FaultProxy(echo.address)
    proxy.blackhole()
    with proxy:
        assert proxy.state == "blackhole"
        with connect(proxy) as sock:
            sock.sendall(b"held")
            sock.settimeout(0.2)
            with pytest.raises(socket.timeout):
                sock.recv(10)
            proxy.heal()
            sock.settimeout(IO_TIMEOUT)
            assert recv_exactly(sock, 4) == b"held"


def test_max_connections_is_enforced(echo):
    with FaultProxy(echo.address, max_connections=2) as proxy:
        a, b = connect(proxy), connect(proxy)
        for s in (a, b):
            s.sendall(b"k")
            assert recv_exactly(s, 1) == b"k"
        assert_refused(proxy)
        assert proxy.connections_refused == 1
        a.close()
        b.close()
