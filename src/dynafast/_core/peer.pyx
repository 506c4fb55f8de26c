# cython: language_level=3
"""The client side of one native-protocol connection, in C: the requests it sends (one frame each, queued and
written once per loop turn), the calls waiting for their replies, the deadline of each, and the replies matched
to their calls. ``dynafast.net.connection`` builds connections and the peer pool on it. A coordinator makes one
or two replica calls per client request, and each call's bookkeeping in Python cost more than the call's share
of the request itself. The plain-Python reference is dynafast._ref.peer."""
from cpython.bytearray cimport PyByteArray_GET_SIZE
from cpython.tuple cimport PyTuple_GET_SIZE

import logging

from dynafast.errors import ProtocolError, Timeout, Unavailable
from dynafast._core.codec import Decoder, encode_into

log = logging.getLogger("dynafast.net.connection")

cdef enum:
    ERROR = 1  # dynafast.net.messages.Msg.ERROR

cdef unsigned long MAX_REQUEST_ID = 0xFFFFFFFF


cdef class DeadlineWheel:
    """``add(timeout, callback)`` calls ``callback()`` once ``timeout`` seconds have passed, unless the handle it
    returns is given to ``cancel`` first (dynafast.net.deadlines says why a wheel).

    ``callback`` is any hashable callable (a bound method, or an object with ``__call__``), added at most once at a
    time. The buckets are dicts used as ordered sets: ``cancel`` costs one removal, and a bucket's callbacks run in
    the order they were added, the same in every run (a set of objects iterates by address, which would make
    simulated runs differ)."""

    cdef readonly object loop
    cdef readonly double tick
    cdef dict _buckets  # tick number -> callbacks due at its end
    cdef object _time

    def __init__(self, loop, tick=0.005):
        if tick <= 0:
            raise ValueError(f"tick must be positive, not {tick}")
        self.loop = loop
        self.tick = tick
        self._buckets = {}
        self._time = loop.time

    cpdef dict add(self, double timeout, callback):
        """Schedule ``callback``; returns the handle to pass to ``cancel``."""
        # The bucket's timer runs at the first tick boundary after the deadline: late by < 1 tick, not early.
        cdef double at = (self._time() + timeout) / self.tick
        if at < 4.0e18:
            tick = <long long>at + 1
        else:  # beyond a C integer ("forever" written as sys.maxsize): a Python one, as the reference has
            tick = int(at) + 1
        bucket = self._buckets.get(tick)
        if bucket is None:
            bucket = self._buckets[tick] = {}
            self.loop.call_at(tick * self.tick, self._expire, tick)
        (<dict>bucket)[callback] = None
        return <dict>bucket

    @staticmethod
    def cancel(handle, callback):
        """``callback`` will not be called (a no-op when it was called or cancelled already)."""
        handle.pop(callback, None)

    def clear(self):
        """Cancel every deadline (the bucket timers still run, and find nothing to do)."""
        for bucket in self._buckets.values():
            (<dict>bucket).clear()  # callers may still hold the handles
        self._buckets.clear()

    def __len__(self):
        """The deadlines not yet fired or cancelled."""
        return sum(len(bucket) for bucket in self._buckets.values())

    def _expire(self, tick):
        bucket = self._buckets.pop(tick, None)
        # Pop one at a time: a callback may cancel others of the same bucket, and those must not run.
        while bucket:
            callback = next(iter(bucket))
            del bucket[callback]
            try:
                callback()
            except Exception as exc:  # noqa - one failing callback must not stop the others' deadlines
                self.loop.call_exception_handler({
                    "message": f"deadline callback {callback!r} failed",
                    "exception": exc,
                })


cdef class Call:
    """A request waiting for its reply; the deadline wheel calls it when the reply is late. Its outcome goes to
    its ``future``, or, with a ``callback``, straight to ``callback(call)`` from the loop step that reads the reply
    (or the deadline, or the lost connection): no future and no further loop step. A call answers as a done future
    does (``cancelled``, ``exception``, ``result``), so a future's done callback can serve as its callback."""

    cdef public ClientProtocol protocol
    cdef public object request_id
    cdef public object timeout
    cdef public object future  # of (reply_type, fields); None for a callback's call
    cdef public object callback  # called once, as a future's callbacks are (then None)
    cdef public dict deadline  # the wheel's bucket it waits in (DeadlineWheel.cancel takes it)
    cdef object _reply
    cdef object _error

    def __call__(self):
        protocol = self.protocol
        protocol.pending.pop(self.request_id, None)
        self._fail(Timeout(f"no reply from {protocol.peer} within {self.timeout}s"))

    def answer(self, reply):
        self._answer(reply)

    def fail(self, error):
        self._fail(error)

    cdef _answer(self, reply):
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
            except Exception as exc:  # noqa - as the loop treats a failing done callback: log, go on
                self._callback_failed(callback, exc)

    cdef _fail(self, error):
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
            except Exception as exc:  # noqa
                self._callback_failed(callback, exc)

    cdef _callback_failed(self, callback, exc):
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


cdef class ClientProtocol:
    """The asyncio protocol of one connection (``dynafast.net.connection._ClientProtocol`` derives from it)."""

    cdef public object loop
    cdef public object transport
    cdef public dict pending  # request id -> Call
    cdef public DeadlineWheel deadlines  # one per connection: a lost connection drops all its deadlines
    cdef public object lost  # the exception every later call gets, once the connection is gone
    cdef public object _write_ready  # a future while the transport asks us to stop writing
    cdef public bint _flush_scheduled
    cdef public bytearray _out
    cdef object _decoder
    cdef unsigned long _next_id

    def __init__(self, loop, max_frame, deadlines):
        self.loop = loop
        self.transport = None
        self.pending = {}
        self.deadlines = deadlines
        self.lost = None
        self._write_ready = None
        self._flush_scheduled = False
        self._out = bytearray()
        self._decoder = Decoder(max_frame)
        self._next_id = 0

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        cdef tuple frame
        cdef Call call
        try:
            frames = self._decoder.feed(data)
        except ProtocolError as exc:
            for frame in exc.frames:
                self._deliver(frame[0], frame[1], frame[2])
            log.warning("closing connection to %s: %s", self.peer, exc)
            self._fail(Unavailable(f"connection to {self.peer} broke: {exc}"))
            self.transport.abort()
            return
        pending = self.pending
        for frame in frames:
            msg_type, request_id, fields = frame
            if type(fields) is tuple and msg_type != ERROR and request_id:
                # A reply: what nearly every frame is, answered without the checks of _deliver.
                found = pending.pop(request_id, None)
                if found is not None:
                    call = <Call>found
                    call.deadline.pop(call, None)  # DeadlineWheel.cancel
                    call._answer((msg_type, fields))
                    continue
            self._deliver(msg_type, request_id, fields)

    def _deliver(self, msg_type, request_id, fields):
        from dynafast.net.messages import error_from_fields
        if request_id == 0 and msg_type == ERROR:
            # The server found our stream broken and hangs up: the calls in flight get its reason.
            log.warning("%s reported a connection error: %r", self.peer, fields)
            self._fail(Unavailable(f"connection to {self.peer} was closed by the server"),
                       error_from_fields(fields))
            self.transport.close()
            return
        found = self.forget(request_id)
        if found is None:
            log.debug("reply to unknown or timed out request %d from %s", request_id, self.peer)
            return
        call = <Call>found
        if isinstance(fields, ProtocolError):
            call._fail(fields)
        elif msg_type == ERROR:
            call._fail(error_from_fields(fields))
        else:
            call._answer((msg_type, fields))

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
            (<Call>call)._fail(pending_error or error)

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
        cdef Call call
        if self.lost is not None:
            raise self.lost
        # Request ids cycle through 1..2**32-1 (0 is for errors about the connection itself).
        self._next_id = self._next_id % MAX_REQUEST_ID + 1
        request_id = self._next_id
        encode_into(self._out, msg_type, request_id, fields)
        call = Call.__new__(Call)
        call.protocol = self
        call.request_id = request_id
        call.timeout = timeout
        if callback is None:
            future = call.future = self.loop.create_future()
        else:
            future = None
            call.callback = callback
        call.deadline = self.deadlines.add(timeout, call)
        self.pending[request_id] = call
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self._flush)  # a bound method once per loop turn (kept, it would be a cycle)
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
        except Exception as exc:  # noqa
            future = self.loop.create_future()
            future.set_exception(exc)
            future.add_done_callback(callback)
        return True

    def forget(self, request_id):
        """Stop waiting for the reply to ``request_id`` (its deadline goes too); return its Call or None."""
        call = self.pending.pop(request_id, None)
        if call is not None:
            (<Call>call).deadline.pop(call, None)
        return call

    def _flush(self):
        self._flush_scheduled = False
        transport = self.transport
        if PyByteArray_GET_SIZE(self._out) and transport is not None and not transport.is_closing():
            out = self._out
            self._out = bytearray()  # the transport may keep a reference to it
            transport.write(out)
