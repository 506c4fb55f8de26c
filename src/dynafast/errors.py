"""Every error dynafast raises derives from DynafastError."""


class DynafastError(Exception):
    """Base class of every dynafast error."""


# -- embedded engine ------------------------------------------------------------------------------
class StoreLocked(DynafastError):
    """Another process holds the store directory open."""


class StoreClosed(DynafastError):
    """The store was used after close()."""


class CorruptionError(DynafastError):
    """A record or file failed its checksum and cannot be served."""


class KeyTooLarge(DynafastError, ValueError):
    """The key is longer than the configured limit."""


class ValueTooLarge(DynafastError, ValueError):
    """The value is longer than the configured limit."""


class StorageFull(DynafastError, OSError):
    """The disk is full; nothing acknowledged was lost, and the store works again once space is freed."""


# -- cluster ----------------------------------------------------------------------------------------
class ProtocolError(DynafastError):
    """A frame could not be decoded, or broke the protocol."""


class QuorumNotMet(DynafastError):
    """Fewer replicas than required answered in time."""

    def __init__(self, message: str, *, replied: int = 0, required: int = 0):
        super().__init__(message)
        self.replied = replied
        self.required = required


class Timeout(DynafastError, TimeoutError):
    """The request did not finish before its deadline."""


class Unavailable(DynafastError):
    """No node that could serve the request was reachable."""


class NotSent(Unavailable):
    """A request that never left this node: the connection could not be made, or was closed before it was
    written. Unlike a connection lost afterwards, the peer surely did not act on it."""


class TooManySiblings(DynafastError):
    """The put would leave the key with more live siblings than the node's ``max_siblings``; nothing was written.

    Siblings pile up when clients write without the context of a read. Resolve them: read the key, merge its
    values, and write the result with the read's context (or put with ``lww=True``).
    """

    def __init__(self, message: str, *, siblings: int = 0, limit: int = 0):
        super().__init__(message)
        self.siblings = siblings
        self.limit = limit


class AuthenticationFailed(DynafastError):
    """The node refused the credentials (user name and password, or the cluster secret's proof)."""


class NotPermitted(DynafastError):
    """The connection's identity may not do this: log in, or as a user whose role allows it."""


class ScanIncomplete(DynafastError):
    """The node's replica of a partition may lack keys (it is repairing after losing data): a scan reads
    another replica of that partition."""


class ConditionFailed(DynafastError):
    """A conditional write (``if_context``, ``if_absent``) found the key in another state than it named: nothing
    was written. ``context`` is the key's current context and ``values`` its current live values (empty when
    absent), as the write's linearizable read saw them: retry with them."""

    def __init__(self, message: str, *, context: bytes = b"", values: list[bytes] | None = None):
        super().__init__(message)
        self.context = context
        self.values = list(values or [])


class LockHeld(DynafastError):
    """``lock`` was not granted within its ``wait``: another holder has it. ``remaining`` is how long the
    holder's lease had left when last asked (seconds, on the coordinating node's clock)."""

    def __init__(self, message: str, *, remaining: float = 0.0):
        super().__init__(message)
        self.remaining = remaining


__all__ = [
    "DynafastError",
    "StoreLocked",
    "StoreClosed",
    "CorruptionError",
    "KeyTooLarge",
    "ValueTooLarge",
    "StorageFull",
    "ProtocolError",
    "QuorumNotMet",
    "Timeout",
    "Unavailable",
    "TooManySiblings",
    "AuthenticationFailed",
    "NotPermitted",
    "ScanIncomplete",
    "ConditionFailed",
    "LockHeld",
]
