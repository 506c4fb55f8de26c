"""dynafast: a Dynamo-style distributed key-value store with a compiled hot path."""
from dynafast.errors import (
    AuthenticationFailed,
    ConditionFailed,
    CorruptionError,
    DynafastError,
    KeyTooLarge,
    LockHeld,
    NotPermitted,
    ProtocolError,
    QuorumNotMet,
    ScanIncomplete,
    StorageFull,
    StoreClosed,
    StoreLocked,
    Timeout,
    TooManySiblings,
    Unavailable,
    ValueTooLarge,
)

__version__ = "0.1.0"


def open(path, **options):  # noqa: A001 - mirrors the built-in on purpose, as dbm.open does
    """Open (creating if needed) an embedded store at directory ``path``. See dynafast.storage.Store."""
    from dynafast.storage import Store

    return Store(path, **options)


def __getattr__(name):
    # The client pulls in asyncio machinery; import it only when asked for.
    if name in ("Client", "AsyncClient", "GetResult"):
        from dynafast import client

        return getattr(client, name)
    raise AttributeError(f"module 'dynafast' has no attribute {name!r}")


__all__ = [
    "open",
    "Client",
    "AsyncClient",
    "GetResult",
    "__version__",
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
