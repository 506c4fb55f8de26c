"""The clients try the next node when one could not serve a request itself (a damaged record, a closing store),
within the request's deadline; real servers on 127.0.0.1 answer them."""
import asyncio
import threading

import pytest

from dynafast import AsyncClient, Client, _impl
from dynafast.errors import CorruptionError, QuorumNotMet, StoreClosed
from dynafast.net.messages import Msg
from dynafast.net.server import start_server

pytestmark = pytest.mark.timeout(60)
HOST = "127.0.0.1"
CONTEXT = _impl.vclock.VClock().increment(b"node-a", 1).to_bytes()  # clients check that a context decodes


def failing(error):
    def handler(conn, msg_type, request_id, fields):
        raise error
    return handler


def serving(conn, msg_type, request_id, fields):
    if msg_type == Msg.GET:
        return Msg.GET_REPLY, ([b"value"], CONTEXT, None)
    return Msg(msg_type + 1), (None,)  # PUT_REPLY, DELETE_REPLY


@pytest.fixture
def servers():
    """start(handler) -> "HOST:PORT" of a server run by an event loop in its own thread."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    started = []

    def start(handler):
        server = asyncio.run_coroutine_threadsafe(start_server(handler, HOST, 0), loop).result(10)
        started.append(server)
        return f"{HOST}:{server.port}"

    yield start

    async def close_all():
        for server in started:
            server.close()
            await server.wait_closed()

    asyncio.run_coroutine_threadsafe(close_all(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    loop.close()


@pytest.mark.parametrize("error", [CorruptionError("record failed its checksum"), StoreClosed("closing")])
def test_client_tries_the_next_node(servers, error):
    nodes = [servers(failing(error)), servers(serving)]
    with Client(nodes, partition_aware=False, timeout=2.0) as client:
        assert client.get(b"k").values == [b"value"]
        client.put(b"k", b"v")
        client.delete(b"k")


def test_async_client_tries_the_next_node(servers):
    nodes = [servers(failing(CorruptionError("record failed its checksum"))), servers(serving)]

    async def main():
        client = AsyncClient(nodes, partition_aware=False, timeout=2.0)
        try:
            assert (await client.get(b"k")).values == [b"value"]
            await client.put(b"k", b"v")
        finally:
            await client.close()

    asyncio.run(main())


def test_when_no_node_can_serve_it_the_client_says_why(servers):
    nodes = [servers(failing(CorruptionError("bad record"))), servers(failing(CorruptionError("bad record")))]
    with Client(nodes, partition_aware=False, timeout=2.0) as client:
        with pytest.raises(CorruptionError):
            client.get(b"k")


def test_errors_about_the_request_itself_are_not_retried_elsewhere(servers):
    nodes = [servers(failing(QuorumNotMet("put reached 1 of w=2", replied=1, required=2))), servers(serving)]
    with Client(nodes, partition_aware=False, timeout=2.0) as client:
        with pytest.raises(QuorumNotMet):
            client.put(b"k", b"v")
