"""A fault-injecting TCP proxy for tests: put it between two endpoints and delay, hold or cut their traffic.

The proxy runs an asyncio loop in a background thread so that a plain synchronous test can drive it; every
control method returns once the change has taken effect (for ``cut()``: once the connections are closed).

Faults:

- ``delay(seconds)``: every chunk is forwarded ``seconds`` after it was read, in both directions (latency,
  not a bandwidth limit: chunks are pipelined).
- ``drop(probability)``: each chunk is silently discarded with that probability. This corrupts the byte stream
  (a real network never does that to TCP); ``drop(1.0)`` is a discarding black hole.
- ``blackhole()``: connections stay open and are accepted, but nothing is forwarded. What was sent meanwhile is
  held (bounded: then the sender's socket buffers fill up) and delivered after ``heal()``, as TCP would
  retransmit it once a network black hole ends. Call ``reset_connections()`` first to lose it instead.
- ``cut()``: every current connection is reset, and new ones are reset as soon as they are accepted (the
  listening port stays bound so that ``heal()`` can never lose it to another process).
- ``heal()``: back to normal (no delay, no drop, no black hole, no cut).
- ``reset_connections()``: reset the current connections once; new ones are served normally.
"""
from __future__ import annotations

import asyncio
import random
import socket
import struct
import threading

from dynafast.address import format_address, parse_address

__all__ = ["FaultProxy"]

_CHUNK = 64 * 1024
# Chunks read but not yet written, per direction: bounds memory (16 x 64 KiB) and gives back-pressure.
_QUEUED_CHUNKS = 16
_NORMAL, _BLACKHOLE, _CUT = "normal", "blackhole", "cut"


def _parse_address(address) -> tuple[str, int]:
    if isinstance(address, tuple):
        host, port = address
        return str(host), int(port)
    return parse_address(str(address))


def _reset(writer: asyncio.StreamWriter | None) -> None:
    """Close a connection with a TCP RST, as a cut cable or a crashed peer would look."""
    if writer is None:
        return
    sock = writer.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
    writer.transport.abort()


class _Link:
    """One proxied connection: the client side, the upstream side and the task that pumps both ways."""

    __slots__ = ("client", "upstream", "task")

    def __init__(self, client: asyncio.StreamWriter, task: asyncio.Task):
        self.client = client
        self.upstream: asyncio.StreamWriter | None = None
        self.task = task


class FaultProxy:
    """TCP proxy on ``host:port`` (port 0: any free port) forwarding every connection to ``target``.

    Usable as ``with FaultProxy("127.0.0.1:7101") as proxy: ...`` or with ``start()``/``stop()``.
    """

    def __init__(
        self,
        target,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        connect_timeout: float = 5.0,
        max_connections: int = 256,
        seed: int | None = None,
    ):
        self._target = _parse_address(target)
        self._host = host
        self._requested_port = port
        self._port: int | None = None
        self._connect_timeout = connect_timeout
        self._max_connections = max_connections
        self._random = random.Random(seed)

        self._mode = _NORMAL
        self._delay = 0.0
        self._drop = 0.0

        self.bytes_to_target = 0
        self.bytes_to_client = 0
        self.bytes_dropped = 0
        self.connections_accepted = 0
        self.connections_refused = 0
        self.upstream_failures = 0
        # Contexts passed to the loop's exception handler: anything here is a bug in the proxy.
        self.errors: list[dict] = []

        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._links: set[_Link] = set()
        self._passing: asyncio.Event | None = None
        self._stopping: asyncio.Future | None = None
        self._lock = threading.Lock()

    # -- addresses and figures --------------------------------------------------------------------------
    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the proxy is not started")
        return self._port

    @property
    def address(self) -> str:
        return format_address(self._host, self.port)

    @property
    def target(self) -> str:
        return format_address(*self._target)

    def set_target(self, target) -> None:
        """Forward connections accepted from now on to ``target`` (current ones keep theirs)."""
        self._target = _parse_address(target)

    @property
    def state(self) -> str:
        """``"normal"``, ``"blackhole"`` or ``"cut"``."""
        return self._mode

    @property
    def delay_seconds(self) -> float:
        return self._delay

    @property
    def drop_probability(self) -> float:
        return self._drop

    @property
    def bytes_forwarded(self) -> int:
        return self.bytes_to_target + self.bytes_to_client

    @property
    def active_connections(self) -> int:
        return len(self._links)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # -- life cycle -------------------------------------------------------------------------------------
    def start(self, timeout: float = 10.0) -> "FaultProxy":
        with self._lock:
            if self._thread is not None:
                raise RuntimeError("the proxy is already started")
            ready = threading.Event()
            outcome: list = []
            self._thread = threading.Thread(
                target=self._run, args=(ready, outcome), name="dynafast-fault-proxy", daemon=True
            )
            self._thread.start()
        if not ready.wait(timeout):
            raise TimeoutError("the proxy did not start in time")
        if outcome and isinstance(outcome[0], BaseException):
            self._thread.join(timeout)
            self._thread = None
            raise outcome[0]
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Reset every connection, stop listening and end the background thread."""
        with self._lock:
            thread, loop = self._thread, self._loop
            if thread is None:
                return
            if loop is not None and not loop.is_closed():
                try:
                    loop.call_soon_threadsafe(self._request_stop)
                except RuntimeError:  # the loop closed in between
                    pass
            thread.join(timeout)
            if thread.is_alive():
                raise RuntimeError("the proxy thread did not stop in time")
            self._thread = None
            self._loop = None

    def __enter__(self) -> "FaultProxy":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        where = self.address if self._port is not None else "not started"
        return f"<FaultProxy {where} -> {self.target} {self._mode} delay={self._delay} drop={self._drop}>"

    # -- faults -----------------------------------------------------------------------------------------
    def delay(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("delay must be >= 0")
        self._delay = float(seconds)

    def drop(self, probability: float) -> None:
        if not 0.0 <= probability <= 1.0:
            raise ValueError("probability must be within [0, 1]")
        self._drop = float(probability)

    def blackhole(self) -> None:
        self._control(self._set_mode, _BLACKHOLE)

    def cut(self) -> None:
        self._control(self._set_mode, _CUT)

    def heal(self) -> None:
        self._delay = 0.0
        self._drop = 0.0
        self._control(self._set_mode, _NORMAL)

    def reset_connections(self) -> None:
        self._control(self._reset_all)

    def _control(self, coroutine_function, *args, timeout: float = 10.0) -> None:
        loop = self._loop
        if loop is None or not self.running:
            # Not started: only the mode is remembered; there is nothing to reset.
            if coroutine_function == self._set_mode:
                self._mode = args[0]
            return
        asyncio.run_coroutine_threadsafe(coroutine_function(*args), loop).result(timeout)

    # -- inside the loop thread -------------------------------------------------------------------------
    def _run(self, ready: threading.Event, outcome: list) -> None:
        loop = asyncio.new_event_loop()
        loop.set_exception_handler(self._on_loop_error)
        try:
            loop.run_until_complete(self._serve(loop, ready, outcome))
        except BaseException as exc:  # reported to start() when it happens before serving
            if not ready.is_set():
                outcome.append(exc)
                ready.set()
            else:
                self.errors.append({"message": "proxy loop failed", "exception": exc})
        finally:
            try:
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                loop.close()

    def _on_loop_error(self, loop, context) -> None:
        self.errors.append(context)

    def _request_stop(self) -> None:
        if self._stopping is not None and not self._stopping.done():
            self._stopping.set_result(None)

    async def _serve(self, loop, ready: threading.Event, outcome: list) -> None:
        self._passing = asyncio.Event()
        if self._mode == _NORMAL:
            self._passing.set()
        self._stopping = loop.create_future()
        server = await asyncio.start_server(self._accept, self._host, self._requested_port)
        self._port = server.sockets[0].getsockname()[1]
        self._loop = loop
        outcome.append(self._port)
        ready.set()
        try:
            await self._stopping
        finally:
            server.close()
            await self._reset_all()
            try:
                await asyncio.wait_for(server.wait_closed(), 5.0)
            except asyncio.TimeoutError:
                self.errors.append({"message": "server did not close in time"})
            await asyncio.sleep(0)  # let the aborted transports run their connection_lost callbacks
            leftover = [t for t in asyncio.all_tasks(loop) if t is not asyncio.current_task()]
            for task in leftover:
                task.cancel()
            if leftover:
                await asyncio.wait(leftover, timeout=5.0)

    async def _set_mode(self, mode: str) -> None:
        self._mode = mode
        if mode == _NORMAL:
            self._passing.set()
        else:
            self._passing.clear()
        if mode == _CUT:
            await self._reset_all()

    async def _reset_all(self) -> None:
        links = list(self._links)
        for link in links:
            link.task.cancel()
        if links:
            # Bounded: a link task only awaits I/O, which a cancellation interrupts.
            await asyncio.wait([link.task for link in links], timeout=5.0)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._mode == _CUT or len(self._links) >= self._max_connections:
            self.connections_refused += 1
            _reset(writer)
            return
        self.connections_accepted += 1
        link = _Link(writer, asyncio.current_task())
        self._links.add(link)
        clean = False
        try:
            clean = await self._forward(link, reader, writer)
        except asyncio.CancelledError:
            # Reset by cut(), reset_connections() or stop(). The task is ours and nobody awaits it: ending it
            # cancelled would make asyncio's done-callback report an error.
            pass
        finally:
            self._links.discard(link)
            if clean:
                # Both sides finished: close normally so that data still in the socket buffers is delivered.
                link.upstream.close()
                writer.close()
            else:
                _reset(link.upstream)
                _reset(writer)

    async def _forward(self, link: _Link, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Forward until both directions end; True when they ended cleanly (end of stream both ways)."""
        # A connection made during a black hole waits for the heal before it reaches the target.
        await self._passing.wait()
        try:
            up_reader, link.upstream = await asyncio.wait_for(
                asyncio.open_connection(*self._target), self._connect_timeout
            )
        except (OSError, asyncio.TimeoutError):
            self.upstream_failures += 1
            return False
        clean = True
        try:
            async with asyncio.TaskGroup() as group:
                self._pump(group, reader, link.upstream, to_target=True)
                self._pump(group, up_reader, writer, to_target=False)
        except* (OSError, asyncio.IncompleteReadError):
            clean = False  # a side went away: the caller resets the other one
        return clean

    def _pump(self, group: asyncio.TaskGroup, reader, writer, *, to_target: bool) -> None:
        """Forward one direction through a bounded queue, so that a delay is latency and not a throughput cap."""
        queue: asyncio.Queue = asyncio.Queue(_QUEUED_CHUNKS)
        loop = asyncio.get_running_loop()

        async def read_side() -> None:
            while True:
                data = await reader.read(_CHUNK)
                if not data:
                    await queue.put(None)
                    return
                if self._drop and self._random.random() < self._drop:
                    self.bytes_dropped += len(data)
                    continue
                await queue.put((loop.time() + self._delay, data))

        async def write_side() -> None:
            while True:
                item = await queue.get()
                if item is None:
                    # Pass the half-close on: the other direction may still have data to send back.
                    if writer.can_write_eof():
                        writer.write_eof()
                    return
                due, data = item
                await self._passing.wait()
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                    await self._passing.wait()  # a black hole may have started while this chunk waited
                writer.write(data)
                await writer.drain()
                if to_target:
                    self.bytes_to_target += len(data)
                else:
                    self.bytes_to_client += len(data)

        group.create_task(read_side())
        group.create_task(write_side())
