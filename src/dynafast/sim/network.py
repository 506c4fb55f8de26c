"""The simulated network: every message between nodes (and from clients) goes through here.

Each message is encoded and decoded with the real codec (so only what the wire can carry arrives, as a copy),
then delivered after a delay drawn from the seeded random source. Faults: loss, duplication (the duplicate's
reply is ignored, as a retransmitted frame's would be), reordering (independent delays), partitions and
one-way cuts (dropped silently: the sender times out), paused nodes (their traffic is held until they resume),
and crashed nodes (a refused connection: the sender learns at once).
"""
from __future__ import annotations

import asyncio
import itertools
import logging

from dynafast._impl import codec
from dynafast.errors import NotSent, Timeout, Unavailable
from dynafast.net.deadlines import DeadlineWheel
from dynafast.net.messages import Msg, error_fields, error_from_fields

log = logging.getLogger("dynafast.sim.network")


def _wire(msg_type, request_id, fields):
    """What the other side decodes: the codec's round trip."""
    frames = codec.Decoder().feed(codec.encode(msg_type, request_id, fields))
    (_, _, decoded), = frames
    if isinstance(decoded, BaseException):
        raise decoded
    return decoded


# Client writes, as a node relays them to a replica of the key (``RequestCoordinator._forward``).
_RELAYED_WRITES = frozenset((int(Msg.PUT), int(Msg.DELETE)))


class SimNetwork:
    def __init__(self, loop, rng, *, delay=(0.0001, 0.003), slow=(0.01, 0.2), slow_rate=0.02, loss=0.0,
                 duplicate=0.0):
        self.loop = loop
        self.rng = rng
        self.delay = delay
        self.slow = slow
        self.slow_rate = slow_rate
        self.loss = loss
        self.duplicate = duplicate
        self.handlers: dict[str, object] = {}      # address -> handler(conn, type, id, fields)
        self.paused: dict[str, list] = {}          # address -> deliveries held until it resumes
        self.cut: set[tuple[str, str]] = set()     # (from, to) pairs that cannot reach each other
        self.drop_rules: list = []                 # (source, target, msg_type) -> True drops that request
        self.sever_rules: list = []                # ... -> True: it arrives, and its connection breaks before the reply
        self.tasks: dict[str, set] = {}            # address -> handler tasks running on it
        self._ids = itertools.count(1)
        self.deadlines = DeadlineWheel(loop)
        self.sent = 0
        self.dropped = 0

    # -- nodes -----------------------------------------------------------------------------------------------
    def serve(self, address: str, handler) -> "_Server":
        self.handlers[address] = handler
        self.tasks.setdefault(address, set())
        return _Server(self, address)

    def crash(self, address: str) -> None:
        """The node is gone: nothing reaches it, its running handlers stop, its held traffic is lost."""
        self.handlers.pop(address, None)
        self.paused.pop(address, None)
        for task in self.tasks.pop(address, ()):
            task.cancel()

    def pause(self, address: str) -> None:
        self.paused.setdefault(address, [])

    def resume(self, address: str) -> None:
        for delivery in self.paused.pop(address, ()):
            self.loop.call_soon(*delivery)

    def partition(self, *groups) -> None:
        """Nodes in different groups cannot reach each other (both ways)."""
        for a, b in itertools.permutations(range(len(groups)), 2):
            for x in groups[a]:
                for y in groups[b]:
                    self.cut.add((x, y))

    def cut_one_way(self, source: str, target: str) -> None:
        self.cut.add((source, target))

    def heal(self) -> None:
        self.cut.clear()

    def transport(self, address: str) -> "SimTransport":
        return SimTransport(self, address)

    # -- moving messages -----------------------------------------------------------------------------------
    def _latency(self) -> float:
        low, high = self.slow if self.rng.random() < self.slow_rate else self.delay
        return self.rng.uniform(low, high)

    def _deliver_later(self, source, target, callback, *args) -> None:
        """Deliver after a delay unless the link is cut or a side crashed; hold it while either is paused."""
        self.sent += 1
        if (source, target) in self.cut or self.rng.random() < self.loss:
            self.dropped += 1
            return
        self.loop.call_later(self._latency(), self._arrive, source, target, callback, args)

    def _arrive(self, source, target, callback, args) -> None:
        for side in (source, target):
            held = self.paused.get(side)
            if held is not None:
                held.append((self._arrive, source, target, callback, args))
                return
        if (source, target) in self.cut:
            self.dropped += 1
            return
        callback(*args)

    def request(self, source: str, target: str, msg_type, fields, timeout: float) -> asyncio.Future:
        reply = self.loop.create_future()
        if target not in self.handlers:
            reply.set_exception(NotSent(f"cannot connect to {target}: connection refused"))
            return reply
        request_id = next(self._ids)
        fields = _wire(msg_type, request_id, fields)
        # One loop timer per tick for every request's timeout, as the real connections do.
        expire = _Expiry(reply, target, timeout)
        handle = self.deadlines.add(timeout, expire)
        reply.add_done_callback(lambda _: DeadlineWheel.cancel(handle, expire))
        # Duplicates model a peer re-sending an internal message; a client's request is sent once (over TCP
        # a duplicate would be the client's own retry, which is a new write). So is a client's write that a node
        # holding no replica of the key relays to one that does: the relay is that one request, and a second
        # copy would be coordinated as a second write, a new version that a read which saw only the first one
        # does not cover.
        copies = 2 if not source.startswith("client-") and self.rng.random() < self.duplicate \
            and msg_type not in _RELAYED_WRITES else 1
        if any(rule(source, target, msg_type) for rule in self.drop_rules):
            self.dropped += 1
            return reply  # a scripted fault: the request is lost, the caller times out
        severed = any(rule(source, target, msg_type) for rule in self.sever_rules)
        for copy in range(copies):
            if copy == 0 and not severed:
                answer = reply
            elif copy == 0:
                # A scripted fault: the peer gets the request and acts on it, and the sender learns only that the
                # connection broke (as when a TCP connection is reset after the request went out).
                answer = self.loop.create_future()
                answer.add_done_callback(_discard)
                answer.add_done_callback(lambda _: reply.done() or reply.set_exception(
                    Unavailable(f"connection to {target} lost")))
            else:
                answer = self.loop.create_future()  # the duplicate's reply is read by nobody
                answer.add_done_callback(_discard)
            self._deliver_later(source, target, self._handle, source, target, msg_type, request_id, fields, answer)
        return reply

    def _handle(self, source, target, msg_type, request_id, fields, reply) -> None:
        handler = self.handlers.get(target)
        if handler is None:
            return  # crashed while the message was on its way: the sender times out
        try:
            result = handler(None, msg_type, request_id, fields)
        except Exception as exc:  # noqa: BLE001 - answered as an error frame, as the server does
            self._reply_error(source, target, request_id, exc, reply)
            return
        if result is None:
            return
        if asyncio.iscoroutine(result) or asyncio.isfuture(result):
            task = asyncio.ensure_future(result)
            running = self.tasks.setdefault(target, set())
            running.add(task)
            task.add_done_callback(running.discard)
            task.add_done_callback(lambda done: self._finished(source, target, request_id, done, reply))
            return
        self._reply(source, target, request_id, result, reply)

    def _finished(self, source, target, request_id, done, reply) -> None:
        if done.cancelled():
            return  # the node crashed: no reply
        if done.exception() is not None:
            self._reply_error(source, target, request_id, done.exception(), reply)
        else:
            self._reply(source, target, request_id, done.result(), reply)

    def _reply(self, source, target, request_id, result, reply) -> None:
        if target not in self.handlers:
            return
        reply_type, reply_fields = result
        reply_fields = _wire(reply_type, request_id, reply_fields)
        self._deliver_later(target, source, _settle, reply, reply_type, reply_fields)

    def _reply_error(self, source, target, request_id, exc, reply) -> None:
        if target not in self.handlers:
            return
        fields = _wire(Msg.ERROR, request_id, error_fields(exc))
        self._deliver_later(target, source, _fail, reply, fields)


def _discard(future) -> None:
    if not future.cancelled():
        future.exception()


class _Expiry:
    __slots__ = ("reply", "target", "timeout")

    def __init__(self, reply, target, timeout):
        self.reply, self.target, self.timeout = reply, target, timeout

    def __call__(self) -> None:
        if not self.reply.done():
            self.reply.set_exception(Timeout(f"no reply from {self.target} within {self.timeout}s"))


def _settle(reply, reply_type, fields) -> None:
    if not reply.done():
        reply.set_result((reply_type, fields))


def _fail(reply, fields) -> None:
    if not reply.done():
        reply.set_exception(error_from_fields(fields))


class _Server:
    def __init__(self, network: SimNetwork, address: str):
        self.network = network
        self.address = address

    def close(self) -> None:
        self.network.crash(self.address)

    async def wait_closed(self) -> None:
        return None


class SimTransport:
    """A node's (or client's) peer transport: ``PeerPool``'s interface over the simulated network."""

    def __init__(self, network: SimNetwork, address: str):
        self.network = network
        self.address = address
        self.closed = False

    def request(self, address: str, msg_type, fields, timeout=None) -> asyncio.Future:
        if self.closed:
            reply = self.network.loop.create_future()
            reply.set_exception(NotSent("the peer pool is closed"))
            return reply
        return self.network.request(self.address, address, msg_type, fields, timeout or 5.0)

    def request_then(self, address: str, msg_type, fields, timeout, callback) -> None:
        self.request(address, msg_type, fields, timeout).add_done_callback(callback)

    async def call(self, address: str, msg_type, fields, timeout=None):
        return await self.request(address, msg_type, fields, timeout)

    async def close(self) -> None:
        self.closed = True
