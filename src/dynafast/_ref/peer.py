"""The client side of one native-protocol connection in plain Python: the reference of dynafast._core.peer (the
same calls, replies, deadlines and errors)."""
import logging

from dynafast.errors import ProtocolError, Timeout, Unavailable
from dynafast._ref.codec import Decoder, encode_into

log = logging.getLogger("dynafast.net.connection")

_ERROR = 1  # dynafast.net.messages.Msg.ERROR
_MAX_REQUEST_ID = 0xFFFFFFFF


class DeadlineWheel:
    """``add(timeout, callback)`` calls ``callback()`` once ``timeout`` seconds have passed, unless the handle
    it returns is given to ``cancel`` first.

    ``callback`` is any hashable callable (a bound method, or an object with ``__call__``), added at most
    once at a time. The buckets are dicts used as ordered sets: ``cancel`` costs one removal, and a bucket's
    callbacks run in the order they were added, the same in every run (a set of objects iterates by address,
    which would make simulated runs differ).
    """

    __slots__ = ("loop", "tick", "_buckets")

    def __init__(self, loop, tick: float = 0.005):
        if tick <= 0:
            raise ValueError(f"tick must be positive, not {tick}")
        self.loop = loop
        self.tick = tick
        self._buckets = {}  # tick number -> callbacks due at its end

    def add(self, timeout: float, callback) -> dict:
        """Schedule ``callback``; returns the handle to pass to ``cancel``."""
        # The bucket's timer runs at the first tick boundary after the deadline: late by < 1 tick, not early.
        tick = int((self.loop.time() + timeout) / self.tick) + 1
        bucket = self._buckets.get(tick)
        if bucket is None:
            bucket = self._buckets[tick] = {}
            self.loop.call_at(tick * self.tick, self._expire, tick)
        bucket[callback] = None
        return bucket

    @staticmethod
    def cancel(handle: dict, callback) -> None:
        """``callback`` will not be called (a no-op when it was called or cancelled already)."""
        handle.pop(callback, None)

    def clear(self) -> None:
        """Cancel every deadline (the bucket timers still run, and find nothing to do)."""
        for bucket in self._buckets.values():
            bucket.clear()  # callers may still hold the handles
        self._buckets.clear()

    def __len__(self) -> int:
        """The deadlines not yet fired or cancelled."""
        return sum(len(bucket) for bucket in self._buckets.values())

    def _expire(self, tick: int) -> None:
        bucket = self._buckets.pop(tick, None)
        # Pop one at a time: a callback may cancel others of the same bucket, and those must not run.
        while bucket:
            callback = next(iter(bucket))
            del bucket[callback]
            try:
                callback()
            except Exception as exc:  # noqa: BLE001 - one failing callback must not stop the others' deadlines
                self.loop.call_exception_handler({
                    "message": f"deadline callback {callback!r} failed",
                    "exception": exc,
                })


class Call:
    """A request waiting for its reply; the deadline wheel calls it when the reply is late. Its outcome goes to
    its ``future``, or, with a ``callback``, straight to ``callback(call)`` from the loop step that reads the reply
    (or the deadline, or the lost connection): no future and no further loop step. A call answers as a done future
    does (``cancelled``, ``exception``, ``result``), so a future's done callback can serve as its callback."""

    __slots__ = ("protocol", "request_id", "timeout", "future", "callback", "deadline", "_reply", "_error")

    def __init__(self, protocol, request_id, timeout, future, callback):
        self.protocol = protocol
        self.request_id = request_id
        self.timeout = timeout
        self.future = future  # of (reply_type, fields); None for a callback's call
        self.callback = callback  # called once, as a future's callbacks are (then None)
        self._reply = None
        self._error = None
        self.deadline = protocol.deadlines.add(timeout, self)

    def __call__(self):
        protocol = self.protocol
        protocol.pending.pop(self.request_id, None)
        self.fail(Timeout(f"no reply from {protocol.peer} within {self.timeout}s"))

    def answer(self, reply):
        if self.future is not None:
            if not self.future.done():
                self.future.set_result(reply)
            return
        callback = self.callback
        if callback is not None:
            self.callback = None
            self._reply = reply
            try:
                callback(self)
            except Exception as exc:  # noqa: BLE001 - as the loop treats a failing done callback: log, go on
                self._callback_failed(callback, exc)

    def fail(self, error):
        if self.future is not None:
            if not self.future.done():
                self.future.set_exception(error)
            return
        callback = self.callback
        if callback is not None:
            self.callback = None
            self._error = error
            try:
                callback(self)
            except Exception as exc:  # noqa: BLE001
                self._callback_failed(callback, exc)

    def _callback_failed(self, callback, exc):
        self.protocol.loop.call_exception_handler({"message": f"reply callback {callback!r} failed",
                                                   "exception": exc})

    @staticmethod
    def cancelled():
        return False

    def exception(self):
        return self._error

    def result(self):
        if self._error is not None:
            raise self._error
        return self._reply


class ClientProtocol:
    """The asyncio protocol of one connection (``dynafast.net.connection._ClientProtocol`` derives from it)."""

    def __init__(self, loop, max_frame, deadlines):
        self.loop = loop
        self.transport = None
        self.pending = {}  # request id -> Call
        self.deadlines = deadlines  # one DeadlineWheel per connection: a lost connection drops all its deadlines
        self.lost = None  # the exception every later call gets, once the connection is gone
        self._write_ready = None  # a future while the transport asks us to stop writing
        self._flush_scheduled = False
        self._out = bytearray()
        self._decoder = Decoder(max_frame)
        self._next_id = 0

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        try:
            frames = self._decoder.feed(data)
        except ProtocolError as exc:
            for frame in exc.frames:
                self._deliver(*frame)
            log.warning("closing connection to %s: %s", self.peer, exc)
            self._fail(Unavailable(f"connection to {self.peer} broke: {exc}"))
            self.transport.abort()
            return
        pending = self.pending
        for frame in frames:
            msg_type, request_id, fields = frame
            if type(fields) is tuple and msg_type != _ERROR and request_id:
                # A reply: what nearly every frame is, answered without the checks of _deliver.
                call = pending.pop(request_id, None)
                if call is not None:
                    call.deadline.pop(call, None)  # DeadlineWheel.cancel
                    call.answer((msg_type, fields))
                    continue
            self._deliver(msg_type, request_id, fields)

    def _deliver(self, msg_type, request_id, fields):
        from dynafast.net.messages import error_from_fields
        if request_id == 0 and msg_type == _ERROR:
            # The server found our stream broken and hangs up: the calls in flight get its reason.
            log.warning("%s reported a connection error: %r", self.peer, fields)
            self._fail(Unavailable(f"connection to {self.peer} was closed by the server"),
                       error_from_fields(fields))
            self.transport.close()
            return
        call = self.forget(request_id)
        if call is None:
            log.debug("reply to unknown or timed out request %d from %s", request_id, self.peer)
            return
        if isinstance(fields, ProtocolError):
            call.fail(fields)
        elif msg_type == _ERROR:
            call.fail(error_from_fields(fields))
        else:
            call.answer((msg_type, fields))

    def connection_lost(self, exc):
        reason = f": {exc}" if exc else ""
        self._fail(Unavailable(f"connection to {self.peer} lost{reason}"))
        if self._write_ready is not None and not self._write_ready.done():
            self._write_ready.set_result(None)

    def _fail(self, error, pending_error=None):
        """From now on calls raise ``error``; the ones in flight get ``pending_error`` (default ``error``)."""
        if self.lost is None:
            self.lost = error
        self.deadlines.clear()
        pending, self.pending = self.pending, {}
        for call in pending.values():
            call.fail(pending_error or error)

    @property
    def peer(self):
        return self.transport.get_extra_info("peername") if self.transport is not None else None

    def pause_writing(self):
        self._write_ready = self.loop.create_future()

    def resume_writing(self):
        if self._write_ready is not None and not self._write_ready.done():
            self._write_ready.set_result(None)
        self._write_ready = None

    def request(self, msg_type, fields, timeout, callback=None):
        """Queue a request; return (request_id, future of its reply or of Timeout after ``timeout`` seconds).
        With ``callback`` there is no future (None is returned for it): ``callback(call)`` gets the outcome."""
        if self.lost is not None:
            raise self.lost
        # Request ids cycle through 1..2**32-1 (0 is for errors about the connection itself).
        request_id = self._next_id = self._next_id % _MAX_REQUEST_ID + 1
        encode_into(self._out, msg_type, request_id, fields)
        future = self.loop.create_future() if callback is None else None
        self.pending[request_id] = Call(self, request_id, timeout, future, callback)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self._flush)
        return request_id, future

    def request_then(self, msg_type, fields, timeout, callback):
        """``request`` with ``callback`` when the connection can take it now; False, and nothing sent, when it
        cannot (closed, or the peer is not reading). Fields that cannot be encoded reach ``callback`` as a failed
        call from a later loop step."""
        transport = self.transport
        if transport is None or self.lost is not None or self._write_ready is not None or transport.is_closing():
            return False
        try:
            self.request(msg_type, fields, timeout, callback)
        except Exception as exc:  # noqa: BLE001
            future = self.loop.create_future()
            future.set_exception(exc)
            future.add_done_callback(callback)
        return True

    def forget(self, request_id):
        """Stop waiting for the reply to ``request_id`` (its deadline goes too); return its Call or None."""
        call = self.pending.pop(request_id, None)
        if call is not None:
            call.deadline.pop(call, None)  # DeadlineWheel.cancel
        return call

    def _flush(self):
        self._flush_scheduled = False
        if self._out and self.transport is not None and not self.transport.is_closing():
            out, self._out = self._out, bytearray()  # the transport may keep a reference to it
            self.transport.write(out)
