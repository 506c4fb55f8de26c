"""A blocking-socket connection for synchronous callers (the synchronous Client, scripts, tests)."""
import socket
import ssl as _ssl
import time

from dynafast._impl import codec
from dynafast.errors import DynafastError, ProtocolError, Timeout, Unavailable
from dynafast.net.messages import Msg, error_from_fields

DEFAULT_TIMEOUT = 5.0
_RECV_SIZE = 256 * 1024
_MAX_REQUEST_ID = 0xFFFFFFFF
# A connection unused for this long is checked before use: the server closes idle connections, and a request
# sent on one it has closed would fail although nothing went wrong.
_IDLE_CHECK_SECONDS = 1.0


class BlockingConnection:
    """One TCP connection, one caller at a time (not thread-safe); ``call_many`` pipelines requests.

    ``login(connection)``: run on the new socket before anything else, and again whenever the connection is
    replaced (the handshake of ``security.access``).
    """

    def __init__(self, host: str, port: int, timeout: float = DEFAULT_TIMEOUT, *,
                 max_frame: int = codec.MAX_FRAME_DEFAULT, login=None,
                 ssl: _ssl.SSLContext | None = None):
        self.host = host
        self.port = port
        self.timeout = timeout
        self.ssl = ssl  # TLS, with the server's certificate checked against ``host``
        self._decoder = codec.Decoder(max_frame)
        self._replies = {}  # request id -> (type, fields) that arrived while waiting for another one
        self._abandoned = set()  # ids of timed-out requests whose late replies are to be dropped
        self._next_id = 0
        self._login = login
        self._last_used = time.monotonic()
        self._sock = self._connect()
        self._logged_in()

    def _logged_in(self) -> None:
        if self._login is None:
            return
        try:
            self._login(self)
        except BaseException:
            self.close()
            raise

    def _connect(self) -> socket.socket:
        host, port = self.host, self.port
        try:
            sock = socket.create_connection((host, port), timeout=self.timeout)
        except socket.timeout:
            raise Unavailable(f"connecting to {host}:{port} timed out after {self.timeout}s") from None
        except OSError as exc:
            raise Unavailable(f"cannot connect to {host}:{port}: {exc}") from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.ssl is None:
            return sock
        try:
            return self.ssl.wrap_socket(sock, server_hostname=host)  # the handshake, within the socket's timeout
        except socket.timeout:
            sock.close()
            raise Unavailable(f"TLS handshake with {host}:{port} timed out after {self.timeout}s") from None
        except OSError as exc:  # a certificate that does not verify, a server that does not speak TLS
            sock.close()
            raise Unavailable(f"cannot connect to {host}:{port}: {exc}") from None

    def _closed_by_server(self) -> bool:
        """True when the server has closed the connection (nothing of ours is in flight when this is asked)."""
        self._sock.setblocking(False)  # with a timeout set, recv would wait for data first; call_many resets it
        if self.ssl is not None:
            return self._tls_closed_by_server()
        try:
            return not self._sock.recv(1, socket.MSG_PEEK)
        except BlockingIOError:
            return False
        except OSError:
            return True

    def _tls_closed_by_server(self) -> bool:
        # TLS cannot peek (raw bytes may be a session ticket or the server's close notice): read instead, and
        # keep what arrives (late replies of abandoned requests).
        try:
            data = self._sock.recv(_RECV_SIZE)
        except (BlockingIOError, _ssl.SSLWantReadError):
            return False
        except OSError:
            return True
        if not data:
            return True
        try:
            self._receive(data)
        except DynafastError:
            return True
        return False

    @property
    def closed(self) -> bool:
        return self._sock is None

    def _new_id(self):
        self._next_id = self._next_id % _MAX_REQUEST_ID + 1
        return self._next_id

    def call(self, msg_type: int, fields, timeout: float | None = None):
        """Send one request and wait for its reply ``(reply_type, fields)``; ERROR replies raise."""
        result = self.call_many([(msg_type, fields)], timeout=timeout, return_exceptions=True)[0]
        if isinstance(result, BaseException):
            raise result
        return result

    def call_many(self, requests, timeout: float | None = None, *, return_exceptions: bool = False):
        """Send all requests in one write and return their replies in order.

        An ERROR reply raises its exception after every reply was read (the connection stays usable), or
        stands in the list in place of the reply when ``return_exceptions`` is true.
        """
        if self._sock is None:
            raise Unavailable(f"connection to {self.host}:{self.port} is closed")
        now = time.monotonic()
        if now - self._last_used > _IDLE_CHECK_SECONDS and self._closed_by_server():
            # Closed while idle: nothing was lost, so a new connection takes the requests.
            self.close()
            self._decoder = codec.Decoder(self._decoder.max_frame)
            self._abandoned.clear()
            self._sock = self._connect()
            self._last_used = now
            self._logged_in()
        self._last_used = now
        timeout = self.timeout if timeout is None else timeout
        out = bytearray()
        ids = []
        for msg_type, fields in requests:
            request_id = self._new_id()
            codec.encode_into(out, msg_type, request_id, fields)
            ids.append(request_id)
        try:
            self._sock.settimeout(timeout)
            self._sock.sendall(out)
            results = [self._wait(request_id) for request_id in ids]
        except socket.timeout:
            # Late replies carry ids nobody waits for; they are dropped, so the connection stays usable.
            for request_id in ids:
                self._replies.pop(request_id, None)
            self._abandoned.update(ids)
            raise Timeout(f"no reply from {self.host}:{self.port} within {timeout}s") from None
        except OSError as exc:
            self.close()
            raise Unavailable(f"connection to {self.host}:{self.port} broke: {exc}") from None
        if not return_exceptions:
            for result in results:
                if isinstance(result, BaseException):
                    raise result
        return results

    def _wait(self, request_id):
        while request_id not in self._replies:
            data = self._sock.recv(_RECV_SIZE)
            if not data:
                self.close()
                raise Unavailable(f"{self.host}:{self.port} closed the connection")
            self._receive(data)
        msg_type, fields = self._replies.pop(request_id)
        if isinstance(fields, ProtocolError):
            return fields
        if msg_type == Msg.ERROR:
            return error_from_fields(fields)
        return msg_type, fields

    def _receive(self, data):
        """Decode ``data`` and keep the replies someone waits for."""
        try:
            frames = self._decoder.feed(data)
        except ProtocolError as exc:
            self.close()
            raise Unavailable(f"connection to {self.host}:{self.port} broke: {exc}") from None
        for msg_type, rid, fields in frames:
            if rid == 0 and msg_type == Msg.ERROR:
                self.close()
                raise error_from_fields(fields)
            if rid in self._abandoned:
                self._abandoned.discard(rid)
                continue
            self._replies[rid] = (msg_type, fields)

    def close(self):
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


__all__ = ["BlockingConnection"]
