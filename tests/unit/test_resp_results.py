"""Results of RESP commands that are not ready yet (``commands.then``): a failure that nobody waits for any more,
because the connection went, is taken quietly instead of being reported by the event loop."""
import asyncio
import gc

import pytest

from dynafast.resp.commands import then
from dynafast.resp.protocol import RespError


@pytest.mark.parametrize("chained", [False, True])
def test_a_failure_after_the_client_went_is_not_reported_as_never_retrieved(chained):
    async def run():
        loop = asyncio.get_running_loop()
        reported = []
        loop.set_exception_handler(lambda _, context: reported.append(context["message"]))
        source, inner = loop.create_future(), loop.create_future()
        # A login: the command's future follows the verification (chained: a second step that is itself pending).
        out = then(source, (lambda _: inner) if chained else (lambda role: role))
        if chained:
            source.set_result("readwrite")
            await asyncio.sleep(0)
        out.cancel()  # the connection closed: its commands in flight are cancelled
        (inner if chained else source).set_exception(RespError("WRONGPASS invalid username-password pair"))
        await asyncio.sleep(0)
        del source, inner, out
        gc.collect()
        await asyncio.sleep(0)
        return reported

    assert asyncio.run(run()) == []


def _durable_node(tmp_path):
    """A node of one replica per key whose writes are answered once on disk (dw 1): a SET's reply is pending."""
    import random

    from dynafast.cluster.ports import Environment
    from dynafast.config import NodeConfig
    from dynafast.node import Node
    from dynafast.testing.cluster import free_port

    config = NodeConfig(node_id="n1", listen=f"127.0.0.1:{free_port()}", resp=f"127.0.0.1:{free_port()}",
                        data_dir=str(tmp_path), n=1, r=1, w=1, dw=1)
    return Node(config, Environment(rng=random.Random(0)))


def test_pending_replies_made_from_the_coordinators_own_future_keep_their_order(tmp_path):
    """SET and GET hand the connection the coordinator's future and what makes their reply of it (``Mapped``):
    the replies still come in request order, and a connection that goes does not cut the writes short."""
    from dynafast.resp.server import RespConnection

    async def run():
        node = _durable_node(tmp_path)
        await node.start()
        try:
            node.resp.app.lane = None
            conn = RespConnection(node.resp)  # not connected: its replies stay in its output buffer
            conn._run([[b"SET", b"a", b"1"], [b"GET", b"a"], [b"SET", b"b", b"2"], [b"PING"], [b"GET", b"b"]])
            assert any(len(slot) > 3 and slot[3] is not None for slot in conn._pending)
            for _ in range(500):
                if not conn._pending:
                    break
                await asyncio.sleep(0.005)
            assert bytes(conn._out) == b"+OK\r\n$1\r\n1\r\n+OK\r\n+PONG\r\n$1\r\n2\r\n"
            gone = RespConnection(node.resp)
            gone._run([[b"SET", b"c", b"3"]])
            futures = [slot[0] for slot in gone._pending]
            gone.connection_lost(None)
            await asyncio.gather(*futures)  # not cancelled: the write went on
            assert node.vnodes.get(node.membership.state.ring.partition_of(b"c"), b"c").values == [b"3"]
        finally:
            await node.stop()

    asyncio.run(run())
