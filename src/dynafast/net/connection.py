"""The client side of the native protocol: multiplexed connections and a per-peer connection pool.

Many calls share one connection; each gets a request id and its reply may come back in any order. Frames
queued during one loop turn go out in one write. A connection's requests, calls, deadlines and replies are the
build's ``peer`` module (compiled: a coordinator makes one or two replica calls per client request).
"""
import asyncio

from dynafast._impl import codec, peer
from dynafast.address import format_address, parse_address
from dynafast.errors import NotSent, Unavailable
from dynafast.net.deadlines import DeadlineWheel

DEFAULT_TIMEOUT = 5.0
DEFAULT_CONNECT_TIMEOUT = 1.0


class _ClientProtocol(peer.ClientProtocol, asyncio.Protocol):
    """The protocol of one connection: the build's (``dynafast._core.peer``, or its reference ``_ref.peer``)."""

    def __init__(self, loop, max_frame):
        super().__init__(loop, max_frame, DeadlineWheel(loop))


class Connection:
    """One client connection; many calls may be in flight on it at once."""

    def __init__(self, protocol: _ClientProtocol, host: str, port: int):
        self._protocol = protocol
        self.host = host
        self.port = port

    @classmethod
    async def open(cls, host: str, port: int, *, timeout: float = DEFAULT_CONNECT_TIMEOUT,
                   max_frame: int = codec.MAX_FRAME_DEFAULT, ssl=None,
                   server_hostname: str | None = None) -> "Connection":
        """Connect; raises Unavailable when the peer refuses or does not answer within ``timeout``.

        ``ssl``: an SSLContext to speak TLS with; the peer's certificate must name ``server_hostname`` (default
        ``host``). A handshake that fails (a certificate that does not verify) raises Unavailable saying why.
        """
        loop = asyncio.get_running_loop()
        tls = {} if ssl is None else {"ssl": ssl, "server_hostname": server_hostname or host}
        try:
            async with asyncio.timeout(timeout):
                _, protocol = await loop.create_connection(lambda: _ClientProtocol(loop, max_frame), host, port,
                                                           **tls)
        except TimeoutError:
            raise NotSent(f"connecting to {host}:{port} timed out after {timeout}s") from None
        except OSError as exc:
            raise NotSent(f"cannot connect to {host}:{port}: {exc}") from None
        return cls(protocol, host, port)

    @property
    def address(self) -> str:
        return format_address(self.host, self.port)

    @property
    def closed(self) -> bool:
        return self._protocol.lost is not None or self._protocol.transport is None \
            or self._protocol.transport.is_closing()

    @property
    def in_flight(self) -> int:
        return len(self._protocol.pending)

    async def call(self, msg_type: int, fields, timeout: float | None = DEFAULT_TIMEOUT):
        """Send a request and wait for its reply: ``(reply_type, reply_fields)``.

        An ERROR reply raises its typed exception; no reply within ``timeout`` seconds raises Timeout; a lost
        connection raises Unavailable. ``timeout=None`` means the default, never forever.
        """
        if timeout is None:
            timeout = DEFAULT_TIMEOUT
        protocol = self._protocol
        if protocol.transport is None or protocol.transport.is_closing():
            raise NotSent(f"connection to {self.address} is closed" + (f": {protocol.lost}" if protocol.lost else ""))
        if protocol._write_ready is not None:
            await protocol._write_ready
        request_id, future = protocol.request(msg_type, fields, timeout)
        try:
            return await future
        finally:
            protocol.forget(request_id)  # when the caller was cancelled

    def request(self, msg_type: int, fields, timeout: float | None = DEFAULT_TIMEOUT) -> asyncio.Future:
        """``call`` as a future, without a coroutine or a Task when the connection can take the request now
        (a coordinator makes one or two replica calls per client request, and a Task each cost more than the
        call). The future gets the reply or the same exception ``call`` would raise."""
        protocol = self._protocol
        transport = protocol.transport
        if transport is None or transport.is_closing() or protocol.lost is not None \
                or protocol._write_ready is not None:
            return asyncio.ensure_future(self.call(msg_type, fields, timeout))
        if timeout is None:
            timeout = DEFAULT_TIMEOUT
        try:
            _, future = protocol.request(msg_type, fields, timeout)
        except Exception as exc:  # noqa: BLE001 - e.g. unencodable fields: the future carries it, as call's would
            future = protocol.loop.create_future()
            future.set_exception(exc)
        return future

    def request_then(self, msg_type: int, fields, timeout: float | None, callback) -> bool:
        """``request``, with ``callback(call)`` run once with the outcome instead of a future's done callback,
        straight from the reply's loop step (a coordinator makes two replica calls per client request, and a
        future each costs more than the call's bookkeeping); never before this returns. ``call`` answers
        ``cancelled()``, ``exception()`` and ``result()`` as a done future does. False, and nothing sent, when
        the connection cannot take the request now (closed, or the peer is not reading): use ``call``."""
        return self._protocol.request_then(msg_type, fields, DEFAULT_TIMEOUT if timeout is None else timeout,
                                           callback)

    async def close(self):
        protocol = self._protocol
        if protocol.transport is not None and not protocol.transport.is_closing():
            protocol._flush()
            protocol.transport.close()
        protocol._fail(Unavailable(f"connection to {self.address} was closed"))
        await asyncio.sleep(0)  # let the transport finish closing

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc_info):
        await self.close()


class PeerPool:
    """Connections to many peers, by "host:port", opened on first use and reopened after they break.

    ``login``: ``async login(connection, timeout)`` run on every new connection before its first call (the
    handshake of ``security.access``); a connection whose login fails is closed and its error raised.
    """

    def __init__(self, *, connect_timeout: float = DEFAULT_CONNECT_TIMEOUT, connections_per_peer: int = 1,
                 max_frame: int = codec.MAX_FRAME_DEFAULT, login=None,
                 ssl=None):
        if connections_per_peer < 1:
            raise ValueError("connections_per_peer must be at least 1")
        self.connect_timeout = connect_timeout
        self.connections_per_peer = connections_per_peer
        self.max_frame = max_frame
        self.login = login
        self.ssl = ssl  # an SSLContext: every connection speaks TLS, checked against the host part of its address
        self._slots = {}  # address -> list of (Connection | Task opening one | None)
        self._turn = {}  # address -> next slot to use
        self._closed = False

    async def call(self, address: str, msg_type: int, fields, timeout: float | None = DEFAULT_TIMEOUT):
        """``Connection.call`` on a pooled connection to ``address``."""
        if timeout is None:
            timeout = DEFAULT_TIMEOUT
        try:
            conn = await self.get(address, timeout=min(timeout, self.connect_timeout))
        except Unavailable as exc:  # no connection, or its login failed: nothing was sent
            raise exc if isinstance(exc, NotSent) else NotSent(str(exc)) from exc
        return await conn.call(msg_type, fields, timeout)

    def request(self, address: str, msg_type: int, fields, timeout: float | None = DEFAULT_TIMEOUT) -> asyncio.Future:
        """``call`` as a future: on an open pooled connection no coroutine and no Task is made."""
        slots = self._slots.get(address)
        if slots is not None and not self._closed:
            turn = self._turn[address]
            conn = slots[turn]
            if isinstance(conn, Connection) and not conn.closed:
                self._turn[address] = (turn + 1) % self.connections_per_peer
                return conn.request(msg_type, fields, timeout)
        return asyncio.ensure_future(self.call(address, msg_type, fields, timeout))

    def request_then(self, address: str, msg_type: int, fields, timeout: float | None, callback) -> None:
        """``Connection.request_then`` on a pooled connection to ``address``; through ``call`` and a future
        when that connection cannot take it now (it is opened again, or its peer is not reading)."""
        slots = self._slots.get(address)
        if slots is not None and not self._closed:
            turn = self._turn[address]
            conn = slots[turn]
            # Connection.request_then, inlined: a coordinator's every replica call passes here.
            if type(conn) is Connection and conn._protocol.request_then(
                    msg_type, fields, DEFAULT_TIMEOUT if timeout is None else timeout, callback):
                self._turn[address] = (turn + 1) % self.connections_per_peer
                return
        asyncio.ensure_future(self.call(address, msg_type, fields, timeout)).add_done_callback(callback)

    async def get(self, address: str, *, timeout: float | None = None) -> Connection:
        """An open connection to ``address`` (connecting if needed)."""
        if self._closed:
            raise NotSent("the peer pool is closed")
        slots = self._slots.get(address)
        if slots is None:
            slots = self._slots[address] = [None] * self.connections_per_peer
            self._turn[address] = 0
        index = self._turn[address]
        self._turn[address] = (index + 1) % self.connections_per_peer
        slot = slots[index]
        if isinstance(slot, Connection) and not slot.closed:
            return slot
        if not isinstance(slot, asyncio.Task):
            # One connect per slot at a time: callers arriving meanwhile wait for the same attempt.
            slot = asyncio.ensure_future(self._open(address, timeout or self.connect_timeout))
            slots[index] = slot
        try:
            conn = await asyncio.shield(slot)
        except BaseException:
            if slots[index] is slot and slot.done():
                slots[index] = None
            raise
        if slots[index] is slot:
            slots[index] = conn
        return conn

    async def _open(self, address, timeout):
        host, port = parse_address(address)
        conn = await Connection.open(host, port, timeout=timeout, max_frame=self.max_frame, ssl=self.ssl)
        if self.login is not None:
            try:
                await self.login(conn, max(timeout, self.connect_timeout))
            except BaseException:
                await conn.close()
                raise
        return conn

    async def discard(self, address: str) -> None:
        """Close the open connections to ``address``; the next call opens new ones. For a peer that sent
        something that could not be read: what else it sends on that connection cannot be trusted to line up."""
        slots = self._slots.get(address, ())
        for index, entry in enumerate(slots):
            # A connect in progress is left alone: others may be waiting for it, and it is a new connection.
            if isinstance(entry, Connection):
                slots[index] = None
                await entry.close()

    def connections(self, address: str) -> list:
        """The open connections to ``address`` (for tests and stats)."""
        return [c for c in self._slots.get(address, ()) if isinstance(c, Connection) and not c.closed]

    async def close(self):
        self._closed = True
        slots, self._slots = self._slots, {}
        for entries in slots.values():
            for entry in entries:
                if isinstance(entry, asyncio.Task):
                    entry.cancel()
                elif isinstance(entry, Connection):
                    await entry.close()

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc_info):
        await self.close()


__all__ = ["Connection", "PeerPool", "DEFAULT_TIMEOUT", "DEFAULT_CONNECT_TIMEOUT"]
