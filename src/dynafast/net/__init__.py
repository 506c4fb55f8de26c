"""Native protocol networking: server, multiplexed client connections, peer pool, blocking client.

See docs/protocol.md for the wire format.
"""
from dynafast.net.blocking import BlockingConnection
from dynafast.net.connection import Connection, PeerPool
from dynafast.net.messages import ErrorCode, Msg, error_fields, raise_error
from dynafast.net.server import Server, start_server

__all__ = [
    "BlockingConnection",
    "Connection",
    "PeerPool",
    "ErrorCode",
    "Msg",
    "error_fields",
    "raise_error",
    "Server",
    "start_server",
]
