"""The server side of the native protocol: one listening port for clients and peers.

``ServerConnection`` holds the protocol logic of one connection and does no I/O: feed it bytes, take its
output (tests drive it that way). ``ServerProtocol`` adds the asyncio transport: received bytes are fed in,
and replies collect in a per-connection buffer that is written once per loop turn.
"""
import asyncio
import dataclasses
import functools
import inspect
import logging

from dynafast._impl import codec
from dynafast.address import format_address
from dynafast.errors import DynafastError, ProtocolError
from dynafast.net.messages import Error, ErrorCode, Msg, Overloaded, error_fields

log = logging.getLogger("dynafast.net.server")

DEFAULT_MAX_INFLIGHT = 4096  # per connection: async handler calls not yet answered
LINGER_SECONDS = 1.0  # after a broken stream: how long to wait for the peer to close before closing anyway


@dataclasses.dataclass
class ServerStats:
    connections: int = 0  # open now
    connections_total: int = 0
    frames_received: int = 0
    frames_sent: int = 0
    errors: int = 0  # ERROR frames sent, for any reason
    protocol_errors: int = 0  # malformed frames and broken streams received

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


class ServerConnection:
    """Protocol logic of one server-side connection, without I/O.

    ``handler(conn, msg_type, request_id, fields)`` returns ``(reply_type, reply_fields)``, None (no reply), or
    an awaitable of those. PING is answered with PONG (same fields) without calling the handler.
    """

    def __init__(self, handler, stats: ServerStats | None = None, *, max_frame: int = codec.MAX_FRAME_DEFAULT,
                 max_inflight: int = DEFAULT_MAX_INFLIGHT, peername=None):
        self.handler = handler
        self.stats = stats if stats is not None else ServerStats()
        self.peername = peername
        self.max_inflight = max_inflight
        self.closed = False
        self._decoder = codec.Decoder(max_frame)
        self._out = bytearray()
        self._tasks = set()

    # -- output -----------------------------------------------------------------------------------------
    def send(self, msg_type: int, request_id: int, fields) -> bool:
        """Queue one frame for this connection; False when the connection is already closed."""
        if self.closed:
            return False
        try:
            codec.encode_into(self._out, msg_type, request_id, fields)
        except (TypeError, ValueError, OverflowError) as exc:  # UnicodeEncodeError is a ValueError
            # A reply we cannot encode is our bug, not the peer's: tell the peer something went wrong.
            log.error("cannot encode reply type %r to %s: %s", msg_type, self.peername, exc)
            codec.encode_into(self._out, Msg.ERROR, request_id, Error(int(ErrorCode.UNKNOWN), "unencodable reply", []))
            msg_type = Msg.ERROR
        self.stats.frames_sent += 1
        if msg_type == Msg.ERROR:
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
        for frame in frames:
            self._dispatch(*frame)
        return True

    def _dispatch(self, msg_type, request_id, fields):
        self.stats.frames_received += 1
        if isinstance(fields, ProtocolError):
            self.stats.protocol_errors += 1
            log.warning("malformed frame type %d id %d from %s: %s", msg_type, request_id, self.peername, fields)
            self.send_error(request_id, fields)
            return
        if msg_type == Msg.PING:
            self.send(Msg.PONG, request_id, fields)
            return
        if len(self._tasks) >= self.max_inflight:
            self.send_error(request_id, Overloaded(f"more than {self.max_inflight} requests in flight"))
            return
        try:
            result = self.handler(self, msg_type, request_id, fields)
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
            if self.closed is False and not self._tasks - {asyncio.current_task()}:
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

    def connection_made(self, transport):
        self._transport = transport
        self.peername = transport.get_extra_info("peername")
        self.stats.connections += 1
        self.stats.connections_total += 1
        self._server._connections.add(self)

    def connection_lost(self, exc):
        if self._linger is not None:
            self._linger.cancel()
        self.stats.connections -= 1
        self._server._connections.discard(self)
        self._transport = None
        self.connection_closed()

    def data_received(self, data):
        if self._draining:
            return
        if not self.feed(data):
            self._flush()
            self.closed = True
            self._draining = True
            transport = self._transport
            if transport.can_write_eof():
                # Half-close and discard what still arrives: closing with unread data would send a reset,
                # and a reset can destroy the error frame before the peer reads it.
                transport.write_eof()
                self._linger = self._loop.call_later(LINGER_SECONDS, transport.close)
            else:
                transport.close()

    def eof_received(self):
        if self._draining:
            return False
        # The peer will send nothing more; answer what is in flight, then close.
        self._flush()
        if not self._tasks:
            return False
        self._half_closed = True
        return True

    def _idle(self):
        if self._half_closed and self._transport is not None:
            self._flush()
            self._transport.close()

    def pause_writing(self):
        # The peer reads slower than it asks: stop reading its requests until it catches up.
        if self._transport is not None:
            self._transport.pause_reading()

    def resume_writing(self):
        if self._transport is not None and not self._transport.is_closing():
            self._transport.resume_reading()

    def _output_ready(self):
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self):
        self._flush_scheduled = False
        if self._out and self._transport is not None:
            # Hand the buffer over and start a new one: the transport may keep a reference to it.
            self._transport.write(self.take_output())

    def close(self):
        if self._transport is not None:
            self._flush()
            self._transport.close()


class Server:
    """A running server: ``.port`` (the bound port), ``.stats``, ``close()`` and ``await wait_closed()``."""

    def __init__(self, host: str):
        self.host = host
        self.stats = ServerStats()
        self._server = None
        self._connections = set()

    @property
    def port(self) -> int:
        return self._server.sockets[0].getsockname()[1]

    @property
    def address(self) -> str:
        return format_address(self.host, self.port)

    @property
    def sockets(self):
        return self._server.sockets

    def close(self):
        """Stop listening and close every connection (queued replies are still written)."""
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
                       max_inflight: int = DEFAULT_MAX_INFLIGHT, backlog: int = 1024) -> Server:
    """Listen on host:port (0 picks a free port) and serve the native protocol with ``handler``."""
    loop = asyncio.get_running_loop()
    server = Server(host)
    server._server = await loop.create_server(
        lambda: ServerProtocol(server, handler, max_frame=max_frame, max_inflight=max_inflight),
        host, port, backlog=backlog, reuse_address=True,
    )
    return server


__all__ = ["start_server", "Server", "ServerStats", "ServerConnection", "ServerProtocol"]
