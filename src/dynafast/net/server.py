"""The server side of the native protocol: one listening port for clients and peers.

``ServerConnection`` holds the protocol logic of one connection and does no I/O: feed it bytes, take its
output (tests drive it that way). ``ServerProtocol`` adds the asyncio transport: received bytes are fed in,
and replies collect in a per-connection buffer that is written once per loop turn.

Flow control: a peer that asks faster than it reads must not grow our memory. Replies not yet sent (the
transport's buffer) stay under a high-water mark: above it, reading stops and so does answering the frames
already read. Requests in flight hold their replies too, so a connection starts no more of them than the
high-water mark fits at the size its recent replies had. Frames that have not fully arrived are capped in
total across connections, and a connection with no complete frame for ``idle_timeout`` seconds is closed.
"""
import asyncio
import collections
import dataclasses
import functools
import inspect
import logging

from dynafast._impl import codec
from dynafast.address import format_address
from dynafast.errors import DynafastError, ProtocolError
from dynafast.net.messages import Error, ErrorCode, Msg, Overloaded, error_fields

log = logging.getLogger("dynafast.net.server")
# Looked up once: an enum member lookup per frame costs more than the comparison (about 0.1 us each).
_PING, _PONG, _ERROR = int(Msg.PING), int(Msg.PONG), int(Msg.ERROR)

DEFAULT_MAX_INFLIGHT = 4096  # per connection: async handler calls not yet answered
LINGER_SECONDS = 1.0  # after a broken stream: how long to wait for the peer to close before closing anyway
HIGH_WATER = 2 * 1024 * 1024  # per connection: unsent reply bytes above which we stop reading and answering
DEFAULT_IDLE_TIMEOUT = 300.0
DEFAULT_MAX_UNFINISHED = 256 * 1024 * 1024  # all connections: bytes of frames that have not fully arrived
SMALL_UNFINISHED = 64 * 1024  # a connection holding no more than this of a frame is never refused for the total
DEFAULT_MAX_CONNECTIONS = 10000
HANDSHAKE_TIMEOUT = 10.0  # seconds a connection in the peers' reserve has to log in as a peer
_OPEN = frozenset(range(256))  # every message type the codec can carry: a server without access control
# A TLS connection is ours only once its handshake is done (no idle timeout applies before): one that never
# finishes it is closed after this many seconds.
SSL_HANDSHAKE_TIMEOUT = 10.0


@dataclasses.dataclass
class ServerStats:
    connections: int = 0  # open now
    connections_total: int = 0
    frames_received: int = 0
    frames_sent: int = 0
    errors: int = 0  # ERROR frames sent, for any reason
    protocol_errors: int = 0  # malformed frames and broken streams received
    unfinished_bytes: int = 0  # now: bytes of frames not yet complete, all connections together
    unfinished_refused: int = 0  # connections closed because those bytes went over the limit
    idle_closed: int = 0  # connections closed for sending no complete frame within the idle timeout
    connections_refused: int = 0  # closed at once: the node had max_connections open
    reserve_closed: int = 0  # connections in the peer reserve closed for not logging in as a peer in time

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


class ServerConnection:
    """Protocol logic of one server-side connection, without I/O.

    ``handler(conn, msg_type, request_id, fields)`` returns ``(reply_type, reply_fields)``, None (no reply), or
    an awaitable of those. PING is answered with PONG (same fields) without calling the handler.

    ``access`` (a ``security.access.Access``, or None for a server open to everyone) decides what the
    connection may send: a request outside ``allowed`` goes to ``access.handle`` (the handshake, or a refusal)
    instead of the handler.
    """

    def __init__(self, handler, stats: ServerStats | None = None, *, max_frame: int = codec.MAX_FRAME_DEFAULT,
                 max_inflight: int = DEFAULT_MAX_INFLIGHT, high_water: int = HIGH_WATER, peername=None,
                 access=None):
        self.handler = handler
        self.access = access
        # Message types this connection may send; unknown types are let through so the handler names them.
        self.allowed = _OPEN if access is None else access.anonymous(peername)
        self.role = None  # after a login: "peer", "admin", "readwrite" or "read"
        self.principal = None  # the node or user name it logged in as
        self.auth_failures = 0
        self.nonces = None  # (client's, ours) between HELLO and AUTH
        self.reserved = False  # opened in the peers' reserve of connections: only a peer login may keep it
        self.stats = stats if stats is not None else ServerStats()
        self.peername = peername
        self.max_inflight = max_inflight
        self.high_water = high_water
        self.closed = False
        self._decoder = codec.Decoder(max_frame)
        self._out = bytearray()
        self._tasks = set()
        self._held = collections.deque()  # frames read but not yet answered: they wait for the peer to read
        self._writing_paused = False  # the transport holds more than high_water unsent bytes
        # What a reply is expected to weigh: the largest recent reply size, decaying towards smaller ones.
        # Requests in flight times this, plus the bytes the transport has not sent yet, stays under
        # high_water; a new connection starts with two requests in flight and widens as small replies come.
        self._reply_estimate = high_water // 2
        self._unsent = 0  # bytes the transport still held after our last write
        self.active = False  # a complete frame arrived (or the peer read) since the idle check last looked

    # -- output -----------------------------------------------------------------------------------------
    def send(self, msg_type: int, request_id: int, fields) -> bool:
        """Queue one frame for this connection; False when the connection is already closed."""
        if self.closed:
            return False
        out = self._out
        start = len(out)
        try:
            codec.encode_into(out, msg_type, request_id, fields)
        except (TypeError, ValueError, OverflowError) as exc:  # UnicodeEncodeError is a ValueError
            # A reply we cannot encode is our bug, not the peer's: tell the peer something went wrong.
            log.error("cannot encode reply type %r to %s: %s", msg_type, self.peername, exc)
            codec.encode_into(out, Msg.ERROR, request_id, Error(int(ErrorCode.UNKNOWN), "unencodable reply", []))
            msg_type = Msg.ERROR
        size = len(out) - start
        estimate = self._reply_estimate
        self._reply_estimate = size if size > estimate else estimate - ((estimate - size) >> 3)
        self.stats.frames_sent += 1
        if msg_type == _ERROR:
            self.stats.errors += 1
        self._output_ready()
        return True

    def send_error(self, request_id: int, exc: BaseException) -> bool:
        return self.send(Msg.ERROR, request_id, error_fields(exc))

    def take_output(self) -> bytearray:
        """Everything queued so far (the caller owns it afterwards)."""
        out = self._out
        self._out = bytearray()
        return out

    def _output_ready(self):
        """Called when output was queued; the asyncio side schedules a flush."""

    # -- input ------------------------------------------------------------------------------------------
    def feed(self, data) -> bool:
        """Handle received bytes. False when the stream is broken and the connection must be closed."""
        try:
            frames = self._decoder.feed(data)
        except ProtocolError as exc:
            for frame in exc.frames:
                self._dispatch(*frame)
            self.stats.protocol_errors += 1
            log.warning("closing connection from %s: %s", self.peername, exc)
            self.send_error(0, exc)  # request id 0: about the connection, not one request
            return False
        if frames:
            self.active = True
            if self._held:
                self._held.extend(frames)
                return True
            tasks = self._tasks
            high_water = self.high_water
            for i, frame in enumerate(frames):
                if self._writing_paused or (tasks and len(tasks) * self._reply_estimate + self._unsent >= high_water):
                    # The peer has enough coming: the rest waits (and reading stops) until it takes some.
                    self._held.extend(frames[i:])
                    self._pause_input()
                    break
                self._dispatch(*frame)
        return True

    @property
    def held(self) -> int:
        """Frames read but waiting to be answered until the peer reads what it was sent."""
        return len(self._held)

    def _release(self):
        """Answer held frames while the peer keeps up; resume reading once none is left."""
        held = self._held
        tasks = self._tasks
        while held and not self.closed:
            # With nothing in flight only a paused transport holds frames back: no completion would wake us.
            if self._writing_paused or (tasks and len(tasks) * self._reply_estimate + self._unsent >= self.high_water):
                return
            self._dispatch(*held.popleft())
        if not self._writing_paused:
            self._resume_input()

    def writing_paused(self):
        """The peer is not reading fast enough: stop answering and reading."""
        self._writing_paused = True
        self._pause_input()

    def writing_resumed(self):
        self._writing_paused = False
        self.active = True  # the peer read: not idle, however long its replies take
        self._release()

    def _pause_input(self):
        """Called when held frames wait or writing is paused; the asyncio side stops reading."""

    def _resume_input(self):
        """Called when nothing is held and writing is not paused; the asyncio side reads again."""

    def _dispatch(self, msg_type, request_id, fields):
        self.stats.frames_received += 1
        if isinstance(fields, ProtocolError):
            self.stats.protocol_errors += 1
            log.warning("malformed frame type %d id %d from %s: %s", msg_type, request_id, self.peername, fields)
            self.send_error(request_id, fields)
            return
        if msg_type == _PING:
            self.send(_PONG, request_id, fields)
            return
        if len(self._tasks) >= self.max_inflight:
            self.send_error(request_id, Overloaded(f"more than {self.max_inflight} requests in flight"))
            return
        try:
            if msg_type in self.allowed:
                result = self.handler(self, msg_type, request_id, fields)
            else:
                result = self._gate(msg_type, request_id, fields)
            if type(result) is not tuple and result is not None:
                if isinstance(result, asyncio.Future):
                    # A future needs no Task (a Task per request costs more than the request): answer from
                    # its done callback, or right now when it is already done.
                    if result.done():
                        self._future_done(request_id, result)
                    else:
                        self._tasks.add(result)
                        result.add_done_callback(functools.partial(self._future_done, request_id))
                    return
                if inspect.isawaitable(result):
                    task = asyncio.ensure_future(self._finish(request_id, result))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
                    return
        except Exception as exc:
            self._handler_failed(msg_type, request_id, exc)
            return
        self._reply(request_id, result)

    def _gate(self, msg_type, request_id, fields):
        """A request outside this connection's grant: the handshake, or a refusal (an unknown type goes on to
        the handler, which answers that it knows no such message)."""
        access = self.access
        if access is None or msg_type not in access.known:
            return self.handler(self, msg_type, request_id, fields)
        return access.handle(self, msg_type, fields)

    def _future_done(self, request_id, future):
        tasks = self._tasks
        tasks.discard(future)
        if future.cancelled():
            return  # only connection_closed cancels them: nobody to answer
        exc = future.exception()
        if exc is None:
            self._reply(request_id, future.result())
        else:
            self._handler_failed(None, request_id, exc)
        if self._held:
            self._release()
        if not tasks and self.closed is False:
            self._idle()

    async def _finish(self, request_id, awaitable):
        try:
            result = await awaitable
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._handler_failed(None, request_id, exc)
        else:
            self._reply(request_id, result)
        finally:
            self._tasks.discard(asyncio.current_task())
            if self._held:
                self._release()
            if self.closed is False and not self._tasks:
                self._idle()

    def _idle(self):
        """Called when the last async handler call finished; the asyncio side may close a half-closed stream."""

    def _reply(self, request_id, result):
        if result is None:
            return
        try:
            reply_type, reply_fields = result
        except (TypeError, ValueError):
            log.error("handler returned %r for request %d; expected (reply_type, fields) or None",
                      result, request_id)
            self.send(Msg.ERROR, request_id, Error(int(ErrorCode.UNKNOWN), "bad reply from handler", []))
            return
        self.send(reply_type, request_id, reply_fields)

    def _handler_failed(self, msg_type, request_id, exc):
        if isinstance(exc, DynafastError):
            log.debug("request %d (type %s) from %s failed: %r", request_id, msg_type, self.peername, exc)
        else:
            log.error("handler failed on request %d (type %s) from %s", request_id, msg_type, self.peername,
                      exc_info=exc)
        self.send_error(request_id, exc)

    def connection_closed(self):
        self.closed = True
        for task in list(self._tasks):
            task.cancel()
        self._tasks.clear()
        self._held.clear()
        self._out = bytearray()


class ServerProtocol(ServerConnection, asyncio.Protocol):
    """The asyncio side: a transport around ServerConnection; replies are written once per loop turn."""

    def __init__(self, server: "Server", handler, **options):
        super().__init__(handler, server.stats, **options)
        self._server = server
        self._transport = None
        self._loop = asyncio.get_running_loop()
        self._flush_scheduled = False
        self._half_closed = False
        self._draining = False  # the stream broke: discard input until the peer closes
        self._linger = None
        self._reading_paused = False
        self._unfinished = 0  # our part of stats.unfinished_bytes
        self.idle_checks = 0  # idle checks in a row that found this connection idle

    def connection_made(self, transport):
        self._transport = transport
        transport.set_write_buffer_limits(high=self.high_water, low=self.high_water // 4)
        self.peername = transport.get_extra_info("peername")
        if self.access is not None:
            self.allowed = self.access.anonymous(self.peername)
        stats = self.stats
        stats.connections += 1
        stats.connections_total += 1
        server = self._server
        server._connections.add(self)
        if stats.connections > server.max_connections:
            stats.connections_refused += 1
            if stats.connections_refused & (stats.connections_refused - 1) == 0:  # 1st, 2nd, 4th, ...: not a flood
                log.warning("refusing connections: %d open, the most this node takes (refused so far: %d)",
                            server.max_connections, stats.connections_refused)
            self.send_error(0, Overloaded(f"this node has {server.max_connections} connections open, its limit"))
            self._break()
        elif stats.connections > server.max_connections - server.peer_reserve and self.access is not None \
                and self.access.secrets:
            # The last connections are kept for cluster nodes: clients that took all the others must not cut
            # the cluster apart. This one may only log in as a peer, and soon.
            self.allowed = frozenset()
            self.reserved = True
            self._loop.call_later(server.handshake_timeout, self._reserve_expired)

    def _reserve_expired(self):
        if self.role != "peer" and self._transport is not None and not self.closed:
            self.stats.reserve_closed += 1
            self.send_error(0, Overloaded("connections left on this node are for cluster peers"))
            self._break()

    def connection_lost(self, exc):
        if self._linger is not None:
            self._linger.cancel()
        self.stats.connections -= 1
        self._forget_unfinished()
        self._server._connections.discard(self)
        self._transport = None
        self.connection_closed()

    def data_received(self, data):
        if self._draining:
            return
        if not self.feed(data):
            self._break()
            return
        unfinished = self._decoder.buffered
        if unfinished != self._unfinished:
            stats = self.stats
            grew = unfinished > self._unfinished
            stats.unfinished_bytes += unfinished - self._unfinished
            self._unfinished = unfinished
            if grew and unfinished > SMALL_UNFINISHED and stats.unfinished_bytes > self._server.max_unfinished:
                stats.unfinished_refused += 1
                log.warning("closing connection from %s: its unfinished frame (%d bytes so far) would take "
                            "unfinished frames past %d bytes", self.peername, unfinished, self._server.max_unfinished)
                self.send_error(0, Overloaded(f"too many bytes of unfinished frames on this node "
                                              f"(limit {self._server.max_unfinished})"))
                self._break()

    def _forget_unfinished(self):
        self.stats.unfinished_bytes -= self._unfinished
        self._unfinished = 0

    def _break(self):
        """The stream cannot go on: send what is queued (the error among it) and close."""
        self._flush()
        self.closed = True
        self._draining = True
        self._held.clear()
        self._forget_unfinished()
        self._decoder = codec.Decoder(self._decoder.max_frame)  # drop the unfinished frame now
        transport = self._transport
        if transport.can_write_eof():
            # Half-close and discard what still arrives: closing with unread data would send a reset,
            # and a reset can destroy the error frame before the peer reads it.
            transport.write_eof()
            self._linger = self._loop.call_later(LINGER_SECONDS, transport.close)
        else:
            transport.close()
        if self._reading_paused:
            self._reading_paused = False
            transport.resume_reading()  # to see the peer close (and discard what it still sends)

    def eof_received(self):
        if self._draining:
            return False
        # The peer will send nothing more; answer what is in flight and held, then close.
        self._flush()
        if not self._tasks and not self._held:
            return False
        self._half_closed = True
        return True

    def _idle(self):
        if self._half_closed and not self._held and self._transport is not None:
            self._flush()
            self._transport.close()

    def pause_writing(self):
        # The peer reads slower than it asks: stop reading and answering its requests until it catches up.
        self.writing_paused()

    def resume_writing(self):
        self._unsent = self._transport.get_write_buffer_size() if self._transport is not None else 0
        self.writing_resumed()

    def _pause_input(self):
        if not self._reading_paused and self._transport is not None:
            self._reading_paused = True
            self._transport.pause_reading()

    def _resume_input(self):
        if self._reading_paused and self._transport is not None and not self._transport.is_closing():
            self._reading_paused = False
            self._transport.resume_reading()
        if self._half_closed and not self._tasks:
            self._idle()

    def _output_ready(self):
        if len(self._out) >= self.high_water:
            # A large reply: hand it to the transport now, so its high-water mark sees it before the next frame.
            self._flush()
        elif not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self):
        self._flush_scheduled = False
        transport = self._transport
        if self._out and transport is not None:
            # Hand the buffer over and start a new one: the transport may keep a reference to it.
            transport.write(self.take_output())
            self._unsent = transport.get_write_buffer_size()
            if self._held:
                self._release()

    def close(self):
        if self._transport is not None and not self._transport.is_closing():
            self._flush()
            self._transport.close()

    def close_idle(self):
        """Close a connection that sent nothing complete for the idle timeout (unsent replies are dropped:
        a peer that does not read would keep them, and the connection, forever)."""
        transport = self._transport
        # Closing already (a TLS connection stays until its shutdown completes): asyncio's TLS transport
        # drops its protocol on a second close, and then fails every call.
        if transport is None or transport.is_closing():
            return
        self.stats.idle_closed += 1
        log.info("closing connection from %s: idle", self.peername)
        if transport.get_write_buffer_size() or self._out:
            transport.abort()
        else:
            transport.close()


class Server:
    """A running server: ``.port`` (the bound port), ``.stats``, ``close()`` and ``await wait_closed()``."""

    def __init__(self, host: str, *, idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
                 max_unfinished: int = DEFAULT_MAX_UNFINISHED, access=None,
                 max_connections: int = DEFAULT_MAX_CONNECTIONS, peer_reserve: int = 0,
                 handshake_timeout: float = HANDSHAKE_TIMEOUT):
        self.host = host
        self.access = access
        self.max_connections = max_connections
        self.peer_reserve = peer_reserve
        self.handshake_timeout = handshake_timeout
        self.stats = ServerStats()
        self.idle_timeout = idle_timeout
        self.max_unfinished = max_unfinished
        self._server = None
        self._connections = set()
        self._idle_timer = None

    @property
    def port(self) -> int:
        return self._server.sockets[0].getsockname()[1]

    @property
    def address(self) -> str:
        return format_address(self.host, self.port)

    @property
    def sockets(self):
        return self._server.sockets

    def _check_idle(self):
        close_idle(self._connections, lambda conn: conn._tasks)
        self._idle_timer = asyncio.get_running_loop().call_later(self.idle_timeout / 2, self._check_idle)

    def close(self):
        """Stop listening and close every connection (queued replies are still written)."""
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        self._server.close()
        for conn in list(self._connections):
            conn.close()

    async def wait_closed(self):
        await self._server.wait_closed()

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc_info):
        self.close()
        await self.wait_closed()


async def start_server(handler, host: str, port: int, *, max_frame: int = codec.MAX_FRAME_DEFAULT,
                       max_inflight: int = DEFAULT_MAX_INFLIGHT, backlog: int = 1024,
                       idle_timeout: float = DEFAULT_IDLE_TIMEOUT, max_unfinished: int = DEFAULT_MAX_UNFINISHED,
                       high_water: int = HIGH_WATER, access=None, max_connections: int = DEFAULT_MAX_CONNECTIONS,
                       peer_reserve: int = 0, handshake_timeout: float = HANDSHAKE_TIMEOUT,
                       ssl=None) -> Server:
    """Listen on host:port (0 picks a free port) and serve the native protocol with ``handler``.

    ``idle_timeout`` (seconds, 0 for none): close connections that send no complete frame for that long.
    ``max_unfinished``: bytes of not yet complete frames held for all connections together; a connection that
    takes them past it is refused. ``high_water``: unsent reply bytes per connection above which it is no
    longer read or answered until the peer reads. ``access``: who may send what (None: everyone everything).
    ``max_connections``: connections open at once; more are closed at once with an OVERLOADED error. With a
    cluster secret, the last ``peer_reserve`` of them are for peers: such a connection must log in as a peer
    within ``handshake_timeout`` seconds and may do nothing else. ``ssl``: an SSLContext to serve TLS with; a
    connection that does not finish its TLS handshake within SSL_HANDSHAKE_TIMEOUT seconds is closed.
    """
    loop = asyncio.get_running_loop()
    server = Server(host, idle_timeout=idle_timeout, max_unfinished=max_unfinished, access=access,
                    max_connections=max_connections, peer_reserve=peer_reserve, handshake_timeout=handshake_timeout)
    server._server = await loop.create_server(
        lambda: ServerProtocol(server, handler, max_frame=max_frame, max_inflight=max_inflight,
                               high_water=high_water, access=access),
        host, port, backlog=backlog, reuse_address=True,
        ssl=ssl, ssl_handshake_timeout=SSL_HANDSHAKE_TIMEOUT if ssl is not None else None,
    )
    if idle_timeout:
        server._idle_timer = loop.call_later(idle_timeout / 2, server._check_idle)
    return server


def close_idle(connections, busy) -> None:
    """One idle check, made every half idle timeout: close the connections found idle twice in a row, so each
    is closed between one and one and a half idle timeouts after its last complete request. Requests in flight
    (``busy(conn)``) are ours to answer: a connection waiting for them is not idle."""
    for conn in list(connections):
        if conn.active or busy(conn):
            conn.active = False
            conn.idle_checks = 0
            continue
        conn.idle_checks += 1
        if conn.idle_checks >= 2:
            conn.close_idle()


def descriptor_budget(reserved: int = 256) -> int:
    """How many connections this process can hold: its descriptor limit (raised to the hard limit, at most
    65536, when allowed) less ``reserved`` for data files, outgoing peer connections and the HTTP side."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (ValueError, OSError):
            pass
    if soft == resource.RLIM_INFINITY:
        soft = 65536
    return max(16, soft - reserved)


__all__ = ["close_idle", "descriptor_budget", "start_server", "Server", "ServerStats", "ServerConnection", "ServerProtocol"]
