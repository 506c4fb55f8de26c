"""Clients never crash on bad replies: whatever a node sends back becomes a DynafastError, the connection that
carried a malformed reply is replaced, reads try the next node, and the same client serves the next request.
Oversize keys and values are refused before anything is sent.

The nodes here are real servers on 127.0.0.1 that write whatever frames a test tells them to."""
import asyncio
import json
import random
import threading

import pytest

from dynafast import AsyncClient, Client, _impl
from dynafast._impl import codec
from dynafast.errors import DynafastError, KeyTooLarge, ProtocolError, ValueTooLarge
from dynafast.net.messages import ErrorCode, Msg
from dynafast.testing import LocalCluster

pytestmark = pytest.mark.timeout(120)
HOST = "127.0.0.1"
CONTEXT = _impl.vclock.VClock().increment(b"node-a", 1).to_bytes()
FUZZ_CASES = 500
SEED = 20261202


def frame(msg_type, request_id, fields) -> bytes:
    return codec.encode(msg_type, request_id, fields)


def body_frame(msg_type, request_id, body: bytes) -> bytes:
    """A frame with a sound header around ``body`` (which need not decode)."""
    length = 6 + len(body)
    return length.to_bytes(4, "big") + bytes([1, msg_type]) + request_id.to_bytes(4, "big") + body


def ring_fields(address: str) -> tuple:
    ring = _impl.ring.Ring(8, ["good"], n=1)
    return (ring.to_bytes(), ["good"], [address], ["z"], ["up"], 1, None, [], [])


def good_reply(address):
    """Well-formed answers, as a node gives them."""
    def reply(msg_type, request_id, fields):
        if msg_type == Msg.GET:
            return frame(Msg.GET_REPLY, request_id, ([b"value"], CONTEXT, None))
        if msg_type == Msg.RING_GET:
            return frame(Msg.RING_REPLY, request_id, ring_fields(address))
        if msg_type == Msg.STATUS:
            return frame(Msg.STATUS_REPLY, request_id, (json.dumps({"members": []}),))
        return frame(msg_type + 1, request_id, (None,))  # PUT_REPLY, DELETE_REPLY
    return reply


class FakeNode:
    """A server that answers each request frame with the bytes ``respond(msg_type, request_id, fields)`` returns
    (``b""``: no answer) and hangs up after answering when ``respond`` returns ``(bytes, True)``.

    It records what it received, so tests can tell whether anything was sent to it."""

    def __init__(self, loop):
        self.loop = loop
        self.requests = []  # (msg_type, fields) of every request frame received
        self.received = 0  # bytes
        self.connections = 0
        self.respond = None
        self.server = asyncio.run_coroutine_threadsafe(asyncio.start_server(self._serve, HOST, 0), loop).result(10)
        self.address = f"{HOST}:{self.server.sockets[0].getsockname()[1]}"
        self.script = []  # one-off responders, used in order before ``respond``

    async def _serve(self, reader, writer):
        self.connections += 1
        decoder = codec.Decoder()
        try:
            while data := await reader.read(1 << 16):
                self.received += len(data)
                for msg_type, request_id, fields in decoder.feed(data):
                    self.requests.append((msg_type, fields))
                    respond = self.script.pop(0) if self.script else self.respond
                    out = respond(msg_type, request_id, fields)
                    hang_up = False
                    if isinstance(out, tuple):
                        out, hang_up = out
                    writer.write(out)
                    await writer.drain()
                    if hang_up:
                        return
        except (OSError, DynafastError):
            pass
        finally:
            writer.close()

    def saw(self, msg_type) -> int:
        return sum(1 for t, _ in self.requests if t == msg_type)


@pytest.fixture
def nodes():
    """make(respond=None) -> a FakeNode (answering well when ``respond`` is None), served by an event loop in
    its own thread."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    made = []

    def make(respond=None):
        node = FakeNode(loop)
        node.respond = respond or good_reply(node.address)
        made.append(node)
        return node

    yield make

    async def close_all():
        for node in made:
            node.server.close()
        await asyncio.sleep(0.05)

    asyncio.run_coroutine_threadsafe(close_all(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    loop.close()


class AsyncAsBlocking:
    """An AsyncClient driven from the test's thread, so one test body covers both clients."""

    def __init__(self, nodes, **options):
        self._loop = asyncio.new_event_loop()
        self._client = AsyncClient(nodes, **options)

    def __getattr__(self, name):
        method = getattr(self._client, name)
        return lambda *args, **kwargs: self._loop.run_until_complete(method(*args, **kwargs))

    def close(self):
        self._loop.run_until_complete(self._client.close())
        self._loop.close()


@pytest.fixture(params=["Client", "AsyncClient"])
def client_for(request):
    """client_for(addresses, **options) -> a Client, or an AsyncClient behind the same blocking calls."""
    made = []

    def make(addresses, **options):
        options.setdefault("partition_aware", False)
        options.setdefault("timeout", 2.0)
        client = Client(addresses, **options) if request.param == "Client" else AsyncAsBlocking(addresses, **options)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


# -- malformed replies ------------------------------------------------------------------------------------
# name -> respond(msg_type, request_id, fields): each answers one request wrongly. All of these are replies a
# client can read as frames but not as the answer it asked for: ProtocolError.
MALFORMED = {
    "wrong reply type": lambda t, rid, f: frame(Msg.PONG, rid, ()),
    "reply of another request": lambda t, rid, f: frame(Msg.STATUS_REPLY, rid, ("{}",)) if t != Msg.STATUS
    else frame(Msg.GET_REPLY, rid, ([b"value"], CONTEXT, None)),
    "request type echoed": lambda t, rid, f: frame(t, rid, f),
    "no fields": lambda t, rid, f: frame(t + 1, rid, ()) if t in (Msg.GET, Msg.RING_GET, Msg.STATUS)
    else frame(Msg.ERROR, rid, ()),
    "fields of the wrong types": lambda t, rid, f: frame(t + 1, rid, (1.5,) * 9),
    "undecodable body": lambda t, rid, f: body_frame(t + 1, rid, b"\xee\x01\x02"),
    "malformed error frame": lambda t, rid, f: frame(Msg.ERROR, rid, ("not a code",)),
}

GET_MALFORMED = {
    "values not a list": lambda t, rid, f: frame(Msg.GET_REPLY, rid, (b"value", CONTEXT, None)),
    "values not bytes": lambda t, rid, f: frame(Msg.GET_REPLY, rid, ([1, 2], CONTEXT, None)),
    "values of str": lambda t, rid, f: frame(Msg.GET_REPLY, rid, (["value"], CONTEXT, None)),
    "context not bytes": lambda t, rid, f: frame(Msg.GET_REPLY, rid, ([b"value"], "context", None)),
    "context undecodable": lambda t, rid, f: frame(Msg.GET_REPLY, rid, ([b"value"], b"\xff\xff\xff", None)),
    "context truncated": lambda t, rid, f: frame(Msg.GET_REPLY, rid, ([b"value"], CONTEXT[:-1], None)),
    "ring version not an int": lambda t, rid, f: frame(Msg.GET_REPLY, rid, ([b"value"], CONTEXT, "7")),
    "ring version a bool": lambda t, rid, f: frame(Msg.GET_REPLY, rid, ([b"value"], CONTEXT, True)),
}


def ring_reply(**changes):
    names = ["ring", "ids", "addresses", "zones", "statuses", "version", "next_ring", "done_partitions",
             "done_targets"]

    def respond(t, rid, f):
        fields = dict(zip(names, ring_fields(f"{HOST}:1")))
        fields.update(changes)
        return frame(Msg.RING_REPLY, rid, tuple(fields.values()))
    return respond


RING_MALFORMED = {
    "ring undecodable": ring_reply(ring=b"\x00\x01\x02"),
    "ring truncated": ring_reply(ring=ring_fields(f"{HOST}:1")[0][:-3]),
    "ring not bytes": ring_reply(ring="ring"),
    "ids not str": ring_reply(ids=[1]),
    "more ids than addresses": ring_reply(ids=["good", "other"]),
    "address not HOST:PORT": ring_reply(addresses=["nowhere"]),
    "address port out of range": ring_reply(addresses=[f"{HOST}:99999"]),
}

STATUS_MALFORMED = {
    "status not JSON": lambda t, rid, f: frame(Msg.STATUS_REPLY, rid, ("{not json",)),
    "status not an object": lambda t, rid, f: frame(Msg.STATUS_REPLY, rid, ("[1, 2]",)),
    "status not str": lambda t, rid, f: frame(Msg.STATUS_REPLY, rid, (b"{}",)),
}

# Replies that break the stream itself: the connection is gone, whatever the client makes of it.
BROKEN_STREAM = {
    "connection error then hang up": lambda t, rid, f: (frame(Msg.ERROR, 0, (int(ErrorCode.PROTOCOL),
                                                                             "frame too large", [])), True),
    "bad protocol version": lambda t, rid, f: b"\x00\x00\x00\x08\x09\x0b\x00\x00\x00\x01\x00\x00",
    "frame over the limit": lambda t, rid, f: b"\xff\xff\xff\xff\x01\x0b\x00\x00\x00\x01",
    "length shorter than a header": lambda t, rid, f: b"\x00\x00\x00\x01\x01",
    "truncated frame then hang up": lambda t, rid, f: (frame(Msg.GET_REPLY, rid, ([b"v" * 100], CONTEXT))[:20],
                                                       True),
    "hang up without an answer": lambda t, rid, f: (b"", True),
}

OPERATIONS = {
    "get": lambda c: c.get(b"key"),
    "put": lambda c: c.put(b"key", b"value"),
    "delete": lambda c: c.delete(b"key"),
    "status": lambda c: c.status(),
    "refresh_ring": lambda c: c.refresh_ring(),
}


def cases():
    for op in OPERATIONS:
        for name in MALFORMED:
            yield op, name, MALFORMED[name]
    for name, respond in GET_MALFORMED.items():
        yield "get", name, respond
    for name, respond in RING_MALFORMED.items():
        yield "refresh_ring", name, respond
    for name, respond in STATUS_MALFORMED.items():
        yield "status", name, respond


@pytest.mark.parametrize("op, name, respond", [pytest.param(*case, id=f"{case[0]}: {case[1]}") for case in cases()])
def test_a_malformed_reply_is_a_protocol_error_and_the_connection_is_replaced(nodes, client_for, op, name,
                                                                             respond):
    node = nodes()
    node.script.append(respond)
    client = client_for([node.address])
    with pytest.raises(ProtocolError) as raised:
        OPERATIONS[op](client)
    assert node.address in str(raised.value)
    # The same client serves the next request, over a new connection.
    assert client.get(b"key").values == [b"value"]
    assert node.connections == 2


@pytest.mark.parametrize("name", BROKEN_STREAM)
@pytest.mark.parametrize("op", OPERATIONS)
def test_a_broken_stream_is_an_error_and_the_next_request_is_served(nodes, client_for, op, name):
    node = nodes()
    node.script.append(BROKEN_STREAM[name])
    client = client_for([node.address])
    with pytest.raises(DynafastError):
        OPERATIONS[op](client)
    assert client.get(b"key").values == [b"value"]
    assert client.get(b"key").values == [b"value"]


@pytest.mark.parametrize("op", ["get", "status", "refresh_ring"])
def test_reads_try_the_next_node_after_a_malformed_reply(nodes, client_for, op):
    bad = nodes(MALFORMED["fields of the wrong types"])
    good = nodes()
    client = client_for([bad.address, good.address])
    OPERATIONS[op](client)
    assert len(bad.requests) == 1 and len(good.requests) == 1


def test_a_client_that_routes_by_ring_skips_a_node_with_a_malformed_ring(nodes, client_for):
    bad = nodes(RING_MALFORMED["ring undecodable"])
    good = nodes()
    client = client_for([bad.address, good.address], partition_aware=True)
    assert client.get(b"key").values == [b"value"]
    assert bad.saw(Msg.RING_GET) == 1 and bad.saw(Msg.GET) == 0


@pytest.mark.parametrize("op", ["put", "delete"])
def test_writes_are_not_tried_elsewhere_after_a_malformed_reply(nodes, client_for, op):
    """The write may have happened on the node that answered badly: doing it again elsewhere could duplicate it."""
    bad = nodes(MALFORMED["fields of the wrong types"])
    good = nodes()
    client = client_for([bad.address, good.address])
    with pytest.raises(ProtocolError):
        OPERATIONS[op](client)
    assert good.requests == []


# -- oversize keys and values ------------------------------------------------------------------------------
def test_oversize_keys_and_values_are_refused_without_a_byte_sent(nodes, client_for):
    node = nodes()
    client = client_for([node.address])
    with pytest.raises(ValueTooLarge):
        client.put(b"key", b"v" * (8 * 1024 * 1024 + 1))
    with pytest.raises(ValueTooLarge):
        client.put(b"key", bytes(codec.MAX_FRAME_DEFAULT + 1))  # not a frame a node would take either
    for request in (lambda: client.put(b"k" * (32 * 1024 + 1), b"v"), lambda: client.get(b"k" * (32 * 1024 + 1)),
                    lambda: client.delete(b"k" * (32 * 1024 + 1))):
        with pytest.raises(KeyTooLarge):
            request()
    assert node.received == 0 and node.connections == 0
    # The limits are the node's defaults: values and keys of exactly that size go out.
    client.put(b"k" * (32 * 1024), b"v" * (8 * 1024 * 1024))
    assert node.saw(Msg.PUT) == 1


def test_the_limits_are_client_options(nodes, client_for):
    node = nodes()
    client = client_for([node.address], max_key_size=10, max_value_size=100)
    with pytest.raises(ValueTooLarge):
        client.put(b"key", b"v" * 101)
    with pytest.raises(KeyTooLarge):
        client.get(b"k" * 11)
    assert node.received == 0
    client.put(b"k" * 10, b"v" * 100)
    assert node.saw(Msg.PUT) == 1


@pytest.mark.parametrize("options", [{"max_value_size": 0}, {"max_key_size": -1}, {"max_value_size": 1 << 40},
                                     {"max_key_size": "big"}])
def test_limits_that_a_frame_cannot_carry_are_refused(options):
    with pytest.raises(ValueError):
        Client([f"{HOST}:1"], **options)


def test_a_value_the_node_refuses_is_value_too_large(nodes, client_for):
    """A value under the client's limit but over the node's: the node's VALUE_TOO_LARGE comes back as such."""
    def refuse(t, rid, f):
        return frame(Msg.ERROR, rid, (int(ErrorCode.VALUE_TOO_LARGE), "value over the limit of 1024", []))

    node = nodes()
    node.script.append(refuse)
    client = client_for([node.address])
    with pytest.raises(ValueTooLarge):
        client.put(b"key", b"v" * 2048)
    client.put(b"key", b"v")
    assert client.get(b"key").values == [b"value"]


def test_a_real_node_refusing_a_value_leaves_the_client_usable(tmp_path):
    (tmp_path / "node.toml").write_text("max_value_size = 1024\n")
    with LocalCluster(1, base_dir=tmp_path, n=1, r=1, w=1, partitions=8,
                      extra_args=["--config", str(tmp_path / "node.toml")]) as cluster:
        with Client(cluster.addresses, timeout=5.0) as client:
            with pytest.raises(ValueTooLarge):
                client.put(b"key", b"v" * 2048)
            client.put(b"key", b"small")
            assert client.get(b"key").values == [b"small"]
            with pytest.raises(ValueTooLarge):
                client.put(b"key", b"v" * (8 * 1024 * 1024 + 1))  # refused locally
            assert client.get(b"key").values == [b"small"]


# -- fuzz ----------------------------------------------------------------------------------------------------
def random_value(rng, top=True):
    kind = rng.randrange(8 if top else 7)
    if kind == 0:
        return None
    if kind == 1:
        return rng.random() < 0.5
    if kind == 2:
        return rng.choice([0, 1, -1, 7, 2**63 - 1, -(2**63), rng.randrange(-1000, 1000)])
    if kind == 3:
        return rng.randbytes(rng.randrange(12))
    if kind == 4:
        return rng.choice(["", "x", "{}", "[]", "{\"a\": 1}", "null", f"{HOST}:1", "nowhere"])
    if kind == 5:
        return rng.random() * 1000
    if kind == 6:
        return rng.choice([CONTEXT, ring_fields(f"{HOST}:1")[0], b"\x00"])
    return [random_value(rng, False) for _ in range(rng.randrange(4))]


def random_reply(rng, msg_type, request_id, good: bytes) -> bytes:
    """A malformed (or, by chance, well-formed) complete reply to one request."""
    kind = rng.randrange(4)
    if kind == 0:  # random fields under the right type or a near one
        reply_type = rng.choice([msg_type + 1, msg_type + 1, Msg.ERROR, rng.randrange(256)])
        return frame(reply_type, request_id, [random_value(rng) for _ in range(rng.randrange(10))])
    if kind == 1:  # the good reply with one field replaced, dropped or added
        fields = list(codec.Decoder().feed(good)[0][2])
        action = rng.randrange(3)
        if action == 0 and fields:
            fields[rng.randrange(len(fields))] = random_value(rng)
        elif action == 1 and fields:
            del fields[rng.randrange(len(fields)):]
        else:
            fields.append(random_value(rng))
        return frame(msg_type + 1, request_id, fields)
    if kind == 2:  # the good reply with its body's bytes mutated (the header stays sound)
        body = bytearray(good[10:])
        for _ in range(rng.randint(1, 3)):
            if body:
                body[rng.randrange(len(body))] = rng.randrange(256)
        return body_frame(msg_type + 1, request_id, bytes(body))
    return body_frame(msg_type + 1, request_id, rng.randbytes(rng.randrange(1, 30)))  # a random body


def test_fuzz_random_malformed_replies_never_crash_a_client(nodes, client_for):
    rng = random.Random(SEED)
    node = nodes()
    good = good_reply(node.address)
    client = client_for([node.address], timeout=5.0)
    outcomes = {"answered": 0, "raised": 0}
    ops = list(OPERATIONS)
    for _ in range(FUZZ_CASES):
        op = rng.choice(ops)
        seed = rng.getrandbits(32)
        node.script.append(
            lambda t, rid, f, seed=seed: random_reply(random.Random(seed), t, rid, good(t, rid, f)))
        try:
            OPERATIONS[op](client)
            outcomes["answered"] += 1
        except DynafastError:
            outcomes["raised"] += 1
        # Anything else (IndexError, TypeError, ValueError, KeyError, ...) fails the test here.
        assert client.get(b"key").values == [b"value"]
    assert outcomes["raised"] > FUZZ_CASES // 2
