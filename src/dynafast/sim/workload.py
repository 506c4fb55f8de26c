"""Clients of a simulated cluster, and the history of what they asked and were told."""
from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from dynafast.errors import DynafastError, Timeout
from dynafast.net.messages import Msg


@dataclass
class Op:
    client: int
    kind: str                      # get | put | delete | cas (an increment of a counter key by compare-and-set)
    key: bytes
    value: bytes | None = None     # what a put wrote (unique per put)
    seen: frozenset = frozenset()  # the values of the read whose context the write carried
    blind: bool = True
    overwrite: bool = False        # an lww put or a delete without a context: it replaced what its coordinator
                                   # read, which the client does not know
    outcome: str = ""              # ok | failed | unknown (timed out: it may have happened)
    result: tuple = ()             # a get's values
    read: int = 0                  # a cas: the counter value it read (it wrote read + 1)
    start: float = 0.0
    end: float = 0.0


@dataclass
class History:
    ops: list[Op] = field(default_factory=list)

    def record(self, op: Op) -> Op:
        self.ops.append(op)
        return op


class SimClient:
    """Sends the native protocol's GET/PUT/DELETE to a node of its choice, as a client would; on a refused
    connection it tries the next node. Reads keep the context they returned for the client's next write."""

    def __init__(self, index: int, network, history: History, rng, *, timeout: float = 1.0):
        self.index = index
        self.transport = network.transport(f"client-{index}.sim:1")
        self.history = history
        self.rng = rng
        self.timeout = timeout
        self.loop = network.loop
        self.contexts: dict[bytes, tuple[bytes, frozenset]] = {}
        self.serial = 0

    async def _call(self, nodes, msg_type, fields):
        order = list(nodes)
        self.rng.shuffle(order)
        last = None
        for address in order[:2]:
            try:
                return await self.transport.call(address, msg_type, fields, self.timeout + 1.0)
            except Timeout:
                raise
            except DynafastError as exc:
                last = exc
                if msg_type != Msg.GET and not _refused(exc):
                    raise
        raise last

    async def get(self, nodes, key: bytes, r: int | None = None) -> Op:
        op = self.history.record(Op(self.index, "get", key, start=self.loop.time()))
        try:
            _, reply = await self._call(nodes, Msg.GET, (key, r, int(self.timeout * 1000)))
            values, context = reply[0], reply[1]
            op.result = tuple(values)
            op.outcome = "ok"
            self.contexts[key] = (context, frozenset(values))
        except DynafastError:
            op.outcome = "failed"
        op.end = self.loop.time()
        return op

    async def put(self, nodes, key: bytes, *, with_context: bool, lww: bool = False, w: int | None = None) -> Op:
        """``lww``: a last-write-wins put (without a context): it replaces what its coordinator sees."""
        self.serial += 1
        value = b"c%d-%d" % (self.index, self.serial)
        context, seen = self.contexts.pop(key, (None, frozenset())) if with_context else (None, frozenset())
        op = self.history.record(Op(self.index, "put", key, value, seen, blind=context is None, overwrite=lww,
                                    start=self.loop.time()))
        fields = (key, value, context or None, w, None, int(self.timeout * 1000)) + ((True,) if lww else ())
        await self._write(op, nodes, Msg.PUT, fields)
        return op

    async def delete(self, nodes, key: bytes) -> Op | None:
        """With the context of the client's last read of ``key``; when that read found nothing the context is
        empty, and the coordinator deletes whatever it reads then (an overwrite)."""
        if key not in self.contexts:
            return None
        context, seen = self.contexts.pop(key)
        op = self.history.record(Op(self.index, "delete", key, None, seen, blind=not context, overwrite=not context,
                                    start=self.loop.time()))
        await self._write(op, nodes, Msg.DELETE, (key, context or None, None, None, int(self.timeout * 1000)))
        return op

    async def _write(self, op: Op, nodes, msg_type, fields) -> None:
        try:
            await self._call(nodes, msg_type, fields)
            op.outcome = "ok"
        except Timeout:
            op.outcome = "unknown"
        except DynafastError:
            op.outcome = "unknown"  # a quorum not met may still have reached some replicas
        except asyncio.CancelledError:
            op.outcome = "unknown"
            raise
        op.end = self.loop.time()


class CasClient(SimClient):
    """Also increments counter keys by compare-and-set (CAS of the value read + 1), keeping the state each CAS
    reply reports (the linearizable read of its round) for the next one."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.counters: dict[bytes, tuple[int, bytes]] = {}

    async def increment(self, nodes, key: bytes) -> Op:
        known = self.counters.pop(key, None)
        if known is None:
            known = await self.read_counter(nodes, key)
        if known is None:
            return None
        value, context = known
        op = self.history.record(Op(self.index, "cas", key, read=value, start=self.loop.time()))
        fields = (key, b"%d" % (value + 1), context, None, int(self.timeout * 1000))
        try:
            # Only to a node that surely did not get it may a CAS go next: a refused connection.
            _, reply = await self._call(nodes, Msg.CAS, fields)
            op.outcome = "ok" if reply[0] else "failed"
            current = _counter(reply[1])
            if current is not None:
                self.counters[key] = (current, reply[2])
        except DynafastError:
            op.outcome = "unknown"
        except asyncio.CancelledError:
            op.outcome = "unknown"
            raise
        op.end = self.loop.time()
        return op

    async def read_counter(self, nodes, key: bytes):
        """(value, context) by a CAS that cannot hold (its reply reports the state linearizably), or None."""
        try:
            _, reply = await self._call(nodes, Msg.CAS, (key, b"", b"\xff", None, int(self.timeout * 1000)))
        except DynafastError:
            return None
        value = _counter(reply[1])
        return None if value is None else (value, reply[2])


def _counter(values) -> int | None:
    if not values:
        return 0
    if len(values) > 1:
        return None  # siblings: never for a counter only CAS writes
    return int(values[0])


def _refused(exc) -> bool:
    return "refused" in str(exc) or "closed" in str(exc)
