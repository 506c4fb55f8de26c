"""Message types, error codes, and the mapping between error frames and dynafast exceptions.

An error frame is ``Msg.ERROR`` with fields ``(code: int, message: str, extra: list[int])``; ``extra`` carries
numbers that belong to the error (QuorumNotMet sends ``[replied, required]``).
"""
import enum
from typing import NoReturn

from dynafast import errors


class Msg(enum.IntEnum):
    ERROR = 1
    PING = 2
    PONG = 3
    GET = 10
    GET_REPLY = 11
    PUT = 12
    PUT_REPLY = 13
    DELETE = 14
    DELETE_REPLY = 15
    RING_GET = 20
    RING_REPLY = 21
    STATUS = 22
    STATUS_REPLY = 23
    REPLICA_GET = 30
    REPLICA_GET_REPLY = 31
    REPLICA_PUT = 32
    REPLICA_PUT_REPLY = 33
    REAP = 34
    REAP_REPLY = 35
    JOIN = 40
    JOIN_REPLY = 41
    RING_PUSH = 42
    RING_PUSH_REPLY = 43
    GOSSIP = 44
    GOSSIP_REPLY = 45
    HINT_PUSH = 50
    HINT_PUSH_REPLY = 51
    TRANSFER = 52
    TRANSFER_REPLY = 53
    TRANSFER_DONE = 54
    TRANSFER_DONE_REPLY = 55
    MERKLE_GET = 60
    MERKLE_REPLY = 61
    KEYS_GET = 62
    KEYS_REPLY = 63
    LEAVE = 70
    LEAVE_REPLY = 71


class ErrorCode(enum.IntEnum):
    UNKNOWN = 1
    PROTOCOL = 2
    KEY_TOO_LARGE = 3
    VALUE_TOO_LARGE = 4
    QUORUM_NOT_MET = 5
    TIMEOUT = 6
    UNAVAILABLE = 7
    WRONG_NODE = 8  # the sender's ring is stale: fetch the ring and retry elsewhere
    UNKNOWN_MESSAGE = 9
    OVERLOADED = 10
    STORAGE_FULL = 11
    STORE_CLOSED = 12


# Errors that have a code but no class in dynafast.errors. They derive from the nearest existing class so
# callers that catch the general error still catch them.
class RemoteError(errors.DynafastError):
    """The remote side failed in a way that has no more specific error."""

    def __init__(self, message: str, *, code: int = ErrorCode.UNKNOWN):
        super().__init__(message)
        self.code = code


class WrongNode(errors.Unavailable):
    """The node asked does not own the key: the sender's ring is stale."""


class Overloaded(errors.Unavailable):
    """The node refused the request because too much is in flight."""


class UnknownMessage(errors.ProtocolError):
    """The remote side does not handle this message type."""


# Most specific first: error_fields walks this in order and isinstance picks the first match.
_BY_CLASS = [
    (errors.QuorumNotMet, ErrorCode.QUORUM_NOT_MET),
    (UnknownMessage, ErrorCode.UNKNOWN_MESSAGE),
    (errors.ProtocolError, ErrorCode.PROTOCOL),
    (errors.KeyTooLarge, ErrorCode.KEY_TOO_LARGE),
    (errors.ValueTooLarge, ErrorCode.VALUE_TOO_LARGE),
    (errors.Timeout, ErrorCode.TIMEOUT),
    (WrongNode, ErrorCode.WRONG_NODE),
    (Overloaded, ErrorCode.OVERLOADED),
    (errors.Unavailable, ErrorCode.UNAVAILABLE),
    (errors.StorageFull, ErrorCode.STORAGE_FULL),
    (errors.StoreClosed, ErrorCode.STORE_CLOSED),
]

_BY_CODE = {
    ErrorCode.PROTOCOL: errors.ProtocolError,
    ErrorCode.KEY_TOO_LARGE: errors.KeyTooLarge,
    ErrorCode.VALUE_TOO_LARGE: errors.ValueTooLarge,
    ErrorCode.TIMEOUT: errors.Timeout,
    ErrorCode.UNAVAILABLE: errors.Unavailable,
    ErrorCode.WRONG_NODE: WrongNode,
    ErrorCode.UNKNOWN_MESSAGE: UnknownMessage,
    ErrorCode.OVERLOADED: Overloaded,
    ErrorCode.STORAGE_FULL: errors.StorageFull,
    ErrorCode.STORE_CLOSED: errors.StoreClosed,
}


def error_fields(exc: BaseException) -> tuple:
    """The fields of the ERROR frame that reports ``exc`` to the remote side."""
    if isinstance(exc, RemoteError):
        return (int(exc.code), str(exc), [])
    for cls, code in _BY_CLASS:
        if isinstance(exc, cls):
            extra = [int(exc.replied), int(exc.required)] if code == ErrorCode.QUORUM_NOT_MET else []
            return (int(code), str(exc), extra)
    # Not one of ours: say what it was, without a traceback (that is logged on the side where it happened).
    return (int(ErrorCode.UNKNOWN), f"{type(exc).__name__}: {exc}", [])


def error_from_fields(fields) -> errors.DynafastError:
    """The exception an ERROR frame's fields describe (a ProtocolError when they are malformed)."""
    if isinstance(fields, BaseException):
        return fields if isinstance(fields, errors.DynafastError) else errors.ProtocolError(str(fields))
    try:
        code, message, extra = fields
        code = int(code)
        message = str(message)
        extra = list(extra)
    except (TypeError, ValueError):
        return errors.ProtocolError(f"malformed error frame: {fields!r}")
    if code == ErrorCode.QUORUM_NOT_MET:
        replied = extra[0] if len(extra) > 0 and isinstance(extra[0], int) else 0
        required = extra[1] if len(extra) > 1 and isinstance(extra[1], int) else 0
        return errors.QuorumNotMet(message, replied=replied, required=required)
    cls = _BY_CODE.get(code)
    if cls is None:
        return RemoteError(message, code=code)
    return cls(message)


def raise_error(fields) -> NoReturn:
    """Raise the typed exception an ERROR frame's fields describe."""
    raise error_from_fields(fields)


__all__ = [
    "Msg",
    "ErrorCode",
    "RemoteError",
    "WrongNode",
    "Overloaded",
    "UnknownMessage",
    "error_fields",
    "error_from_fields",
    "raise_error",
]
