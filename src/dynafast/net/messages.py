"""What goes over the wire: message types, the named fields of each message, and error codes.

Every message type has a record here (a NamedTuple, so it is still the tuple the codec encodes) listing its
fields in wire order: required fields first, then optional ones, which default to None and may be left off the
end. ``SCHEMA`` maps each type to its record, and ``parse(msg_type, fields)`` checks decoded fields against it
and returns the record. docs/protocol.md documents the same fields, and a test keeps the two equal.

An error frame is ``Msg.ERROR`` with fields ``(code: int, message: str, extra: list[int])``; ``extra`` carries
numbers that belong to the error (QuorumNotMet sends ``[replied, required]``, TooManySiblings
``[siblings, limit]``).
"""
import enum
import types
import typing
from typing import NamedTuple, NoReturn

from dynafast import errors


class Msg(enum.IntEnum):
    ERROR = 1
    PING = 2
    PONG = 3
    HELLO = 4
    HELLO_REPLY = 5
    AUTH = 6
    AUTH_REPLY = 7
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
    SCAN_PAGE = 80
    SCAN_PAGE_REPLY = 81
    CAS = 90
    CAS_REPLY = 91
    PAXOS_PREPARE = 92
    PAXOS_PREPARE_REPLY = 93
    PAXOS_PROPOSE = 94
    PAXOS_PROPOSE_REPLY = 95
    PAXOS_COMMIT = 96
    PAXOS_COMMIT_REPLY = 97
    LOCK = 98
    LOCK_REPLY = 99
    PAXOS_SNAPSHOT = 100
    PAXOS_SNAPSHOT_REPLY = 101
    PAXOS_INSTALL = 102
    PAXOS_INSTALL_REPLY = 103
    COMPACT = 110
    COMPACT_REPLY = 111
    BACKUP = 120
    BACKUP_REPLY = 121
    RESTORE = 122
    RESTORE_REPLY = 123
    REPAIR = 130
    REPAIR_REPLY = 131


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
    CORRUPTION = 13  # the node's copy is damaged: it could not serve this, another replica may
    TOO_MANY_SIBLINGS = 14
    AUTH_FAILED = 15  # wrong credentials, or a handshake out of order: the connection stays unauthenticated
    NOT_PERMITTED = 16  # the connection's identity may not send this message
    SCAN_INCOMPLETE = 20  # this replica of the partition may lack keys (repairing): scan another one
    CONDITION_FAILED = 25  # a conditional write's condition did not hold (CAS_REPLY says so on its own too)
    LOCK_HELD = 26  # a lock is held by another holder (LOCK_REPLY says so on its own too)


# Errors that have a code but no class in dynafast.errors. They derive from the nearest existing class so
# callers that catch the general error still catch them.
class RemoteError(errors.DynafastError):
    """The remote side failed in a way that has no more specific error."""

    def __init__(self, message: str, *, code: int = ErrorCode.UNKNOWN):
        super().__init__(message)
        self.code = code


class WrongNode(errors.DynafastError):
    """The node asked holds no replica of the partition: the sender's ring (or the receiver's) is stale.

    Not an Unavailable: the node answered, so a sender must not count it as down; it tries another replica.
    """


class Overloaded(errors.Unavailable):
    """The node refused the request because too much is in flight."""


class UnknownMessage(errors.ProtocolError):
    """The remote side does not handle this message type."""


# -- the fields of each message ------------------------------------------------------------------------
# Field types are what the codec carries: bytes, str, int (never bool), bool, and lists of those; ``X | None``
# may be None. A field with a default (always None) is optional: a sender may leave optional fields off the end.
# The meaning of each field is in docs/protocol.md.


class Error(NamedTuple):
    code: int
    message: str
    extra: list[int]


class Ping(NamedTuple):
    """No fields of its own: the transport answers a PING with a PONG that echoes whatever fields it carried."""


class Hello(NamedTuple):
    """Opens the handshake: the client's random nonce (16 to 64 bytes)."""

    nonce: bytes


class HelloReply(NamedTuple):
    nonce: bytes  # the server's random nonce for this connection
    node_id: str
    secured: bool  # the node asks for credentials: a cluster secret or users are configured


class Auth(NamedTuple):
    kind: str  # "peer" (proof: HMAC over both nonces with the cluster secret) or "user" (proof: the password)
    name: str
    proof: bytes


class AuthReply(NamedTuple):
    role: str  # what the connection may do from now on: "peer", "admin", "readwrite" or "read"
    proof: bytes  # for a peer: the node's own HMAC over both nonces, so the peer knows it is one of the cluster


class Get(NamedTuple):
    key: bytes
    r: int | None = None
    timeout_ms: int | None = None
    newest: bool | None = None  # answer only the newest sibling (the RESP front end's rule), with the full context


class GetReply(NamedTuple):
    values: list[bytes]
    context: bytes
    ring_version: int | None = None
    ttls_ms: list[int] | None = None  # per value: ms left before it expires, -1 for never; absent: none expires
    expires_at_ms: list[int] | None = None  # a ``newest`` read's value: its expiry (ms since the epoch), exactly


class Put(NamedTuple):
    key: bytes
    value: bytes
    context: bytes | None = None
    w: int | None = None
    dw: int | None = None
    timeout_ms: int | None = None
    lww: bool | None = None
    ttl_ms: int | None = None  # the value expires this many ms after the coordinator receives the put
    r: int | None = None  # an lww put's read: replicas it must hear from (None: the coordinator's R)


class PutReply(NamedTuple):
    ring_version: int | None = None


class Delete(NamedTuple):
    key: bytes
    context: bytes | None = None
    w: int | None = None
    dw: int | None = None
    timeout_ms: int | None = None


class DeleteReply(NamedTuple):
    ring_version: int | None = None


class RingGet(NamedTuple):
    pass


class State(NamedTuple):
    """The cluster state (RING_REPLY, JOIN_REPLY, RING_PUSH); clients read only the first three fields."""

    ring: bytes
    ids: list[str]
    addresses: list[str]
    zones: list[str]
    statuses: list[str]
    version: int
    next_ring: bytes | None
    done_partitions: list[int]
    done_targets: list[str]
    # RING_REPLY only: the members the answering node's failure detector holds down (clients try them last)
    down: list[str] | None = None


class Status(NamedTuple):
    pass


class StatusReply(NamedTuple):
    status: str


class ReplicaGet(NamedTuple):
    partition: int
    key: bytes
    hint_for: str | None


class ReplicaGetReply(NamedTuple):
    object: bytes | None
    repairing: bool | None = None


class ReplicaPut(NamedTuple):
    partition: int
    key: bytes
    object: bytes
    durable: bool
    hint_for: str | None
    replace: bool | None = None


class ReplicaPutReply(NamedTuple):
    durable: bool
    stored: bool | None = None


class Reap(NamedTuple):
    partition: int
    key: bytes
    object: bytes


class ReapReply(NamedTuple):
    removed: bool


class Join(NamedTuple):
    node_id: str
    address: str
    zone: str


class RingPushReply(NamedTuple):
    version: int


class Gossip(NamedTuple):
    """GOSSIP and its reply: the sender's heartbeats and state digest, then its whole state (flat, because the
    codec nests lists one level only)."""

    sender: str
    heartbeat_ids: list[str]
    heartbeats: list[int]
    state_version: int
    state_digest: bytes
    ring: bytes
    ids: list[str]
    addresses: list[str]
    zones: list[str]
    statuses: list[str]
    version: int
    next_ring: bytes | None
    done_partitions: list[int]
    done_targets: list[str]

    def state(self) -> State:
        return State(*self[5:])


class HintPush(NamedTuple):
    partitions: list[int]
    keys: list[bytes]
    objects: list[bytes]


class HintPushReply(NamedTuple):
    durable: bool


class Transfer(NamedTuple):
    partition: int
    keys: list[bytes]
    objects: list[bytes]
    hints: bool | None = None  # true: hinted writes (younger than hint_window), not an old owner's copy


class TransferReply(NamedTuple):
    count: int


class TransferDone(NamedTuple):
    partitions: list[int]
    targets: list[str]
    next_ring_digest: bytes


class TransferDoneReply(NamedTuple):
    accepted: bool


class MerkleGet(NamedTuple):
    partition: int
    depth: int
    indices: list[int]


class MerkleReply(NamedTuple):
    hashes: list[bytes]


class KeysGet(NamedTuple):
    partition: int
    leaves: list[int]


class KeysReply(NamedTuple):
    keys: list[bytes]
    digests: list[bytes]


class Leave(NamedTuple):
    node_id: str | None = None


class LeaveReply(NamedTuple):
    version: int


class ScanPage(NamedTuple):
    partition: int
    prefix: bytes
    after: bytes | None
    limit: int | None = None
    max_bytes: int | None = None


class ScanPageReply(NamedTuple):
    keys: list[bytes]
    objects: list[bytes]
    more: bool
    after: bytes | None


class Cas(NamedTuple):
    """A conditional put (``value`` set) or delete (``value`` None): applied only if the key's current context
    is ``context`` (``if_absent``: only if it has no live value), decided by a Paxos round among its replicas."""

    key: bytes
    value: bytes | None
    context: bytes | None
    if_absent: bool | None = None
    timeout_ms: int | None = None
    ttl_ms: int | None = None  # a put's value expires this many ms after the coordinator receives it


class CasReply(NamedTuple):
    applied: bool
    values: list[bytes]  # the key's live values after the round (the write's own when applied)
    context: bytes  # the key's context after the round
    ring_version: int | None = None


class PaxosPrepare(NamedTuple):
    partition: int
    key: bytes
    ballot: int
    view: bytes | None = None  # the proposer's ring view (``paxos.ring_view``): an acceptor in another refuses


class PaxosPrepareReply(NamedTuple):
    promised: bool
    ballot: int  # the highest ballot the replica has promised (the caller's when promised)
    accepted: int  # the ballot of the proposal the replica accepted last (0: none)
    accepted_value: bytes | None
    committed: int  # the ballot of the last proposal committed on the replica (0: none)
    object: bytes | None  # the replica's copy of the key


class PaxosPropose(NamedTuple):
    partition: int
    key: bytes
    ballot: int
    value: bytes
    view: bytes | None = None


class PaxosProposeReply(NamedTuple):
    accepted: bool
    ballot: int  # the replica's promised ballot


class PaxosCommit(NamedTuple):
    partition: int
    key: bytes
    ballot: int
    value: bytes


class PaxosCommitReply(NamedTuple):
    durable: bool


class PaxosSnapshot(NamedTuple):
    """The Paxos state an old replica holds for a partition that moves, a page at a time, by key."""

    partition: int
    view: bytes  # the ring view (with the next ring) the asker holds: the replica must hold the same one
    after: bytes | None  # the page starts past this key (None: at the first)


class PaxosSnapshotReply(NamedTuple):
    keys: list[bytes]
    states: list[bytes]  # each key's acceptor state (``PaxosState.to_bytes``)
    objects: list[bytes]  # each key's object as the replica holds it (empty: absent)
    more: bool  # the page ended at a size limit: keys past the last one may follow


class PaxosInstall(NamedTuple):
    """Acceptor states (and the objects they decided) merged from a quorum of a moving partition's old replicas,
    for a replica that gains it."""

    partition: int
    view: bytes
    keys: list[bytes]
    states: list[bytes]
    objects: list[bytes]


class PaxosInstallReply(NamedTuple):
    count: int  # keys merged, on disk


class Lock(NamedTuple):
    """Take (or, with ``release``, give back) the lease ``name`` for ``holder``; expiry on the coordinator's
    clock."""

    name: bytes
    holder: str
    ttl_ms: int
    release: bool | None = None
    fencing: int | None = None  # release: the token of the grant being given back
    timeout_ms: int | None = None


class LockReply(NamedTuple):
    granted: bool  # acquire: the lease is the holder's; release: it was and is now free
    fencing: int  # the token of the grant (granted) or of the current holder's grant
    holder: str  # who holds the lease now ("" when nobody)
    remaining_ms: int  # how long the current lease has left, on the coordinator's clock
    ring_version: int | None = None


class Compact(NamedTuple):
    """Merge the node's store now (an operator's ``dynafast compact``), whatever its dead-byte ratios."""


class CompactReply(NamedTuple):
    segments_merged: int
    disk_bytes_before: int
    disk_bytes_after: int


class Backup(NamedTuple):
    """Copy the node's store, consistently, into ``directory``/<node id>/ (an operator's ``dynafast backup``)."""

    directory: str


class BackupReply(NamedTuple):
    directory: str  # where this node's copy is
    keys: int
    segments: int
    bytes: int
    linked_bytes: int


class Repair(NamedTuple):
    """Exchange these partitions (None: every one the node holds) with their other replicas now."""

    partitions: list[int] | None = None


class RepairReply(NamedTuple):
    queued: int  # partitions queued for an exchange


# Messages that share a shape share a record.
Pong = Ping
RingReply = JoinReply = RingPush = State
GossipReply = Gossip
# A restore writes objects with their clocks as a transfer does; only who may send it differs (an admin).
Restore, RestoreReply = Transfer, TransferReply

SCHEMA: dict[Msg, type] = {
    Msg.ERROR: Error,
    Msg.PING: Ping,
    Msg.PONG: Pong,
    Msg.HELLO: Hello,
    Msg.HELLO_REPLY: HelloReply,
    Msg.AUTH: Auth,
    Msg.AUTH_REPLY: AuthReply,
    Msg.GET: Get,
    Msg.GET_REPLY: GetReply,
    Msg.PUT: Put,
    Msg.PUT_REPLY: PutReply,
    Msg.DELETE: Delete,
    Msg.DELETE_REPLY: DeleteReply,
    Msg.RING_GET: RingGet,
    Msg.RING_REPLY: RingReply,
    Msg.STATUS: Status,
    Msg.STATUS_REPLY: StatusReply,
    Msg.REPLICA_GET: ReplicaGet,
    Msg.REPLICA_GET_REPLY: ReplicaGetReply,
    Msg.REPLICA_PUT: ReplicaPut,
    Msg.REPLICA_PUT_REPLY: ReplicaPutReply,
    Msg.REAP: Reap,
    Msg.REAP_REPLY: ReapReply,
    Msg.JOIN: Join,
    Msg.JOIN_REPLY: JoinReply,
    Msg.RING_PUSH: RingPush,
    Msg.RING_PUSH_REPLY: RingPushReply,
    Msg.GOSSIP: Gossip,
    Msg.GOSSIP_REPLY: GossipReply,
    Msg.HINT_PUSH: HintPush,
    Msg.HINT_PUSH_REPLY: HintPushReply,
    Msg.TRANSFER: Transfer,
    Msg.TRANSFER_REPLY: TransferReply,
    Msg.TRANSFER_DONE: TransferDone,
    Msg.TRANSFER_DONE_REPLY: TransferDoneReply,
    Msg.MERKLE_GET: MerkleGet,
    Msg.MERKLE_REPLY: MerkleReply,
    Msg.KEYS_GET: KeysGet,
    Msg.KEYS_REPLY: KeysReply,
    Msg.LEAVE: Leave,
    Msg.LEAVE_REPLY: LeaveReply,
    Msg.SCAN_PAGE: ScanPage,
    Msg.SCAN_PAGE_REPLY: ScanPageReply,
    Msg.CAS: Cas,
    Msg.CAS_REPLY: CasReply,
    Msg.PAXOS_PREPARE: PaxosPrepare,
    Msg.PAXOS_PREPARE_REPLY: PaxosPrepareReply,
    Msg.PAXOS_PROPOSE: PaxosPropose,
    Msg.PAXOS_PROPOSE_REPLY: PaxosProposeReply,
    Msg.PAXOS_COMMIT: PaxosCommit,
    Msg.PAXOS_COMMIT_REPLY: PaxosCommitReply,
    Msg.PAXOS_SNAPSHOT: PaxosSnapshot,
    Msg.PAXOS_SNAPSHOT_REPLY: PaxosSnapshotReply,
    Msg.PAXOS_INSTALL: PaxosInstall,
    Msg.PAXOS_INSTALL_REPLY: PaxosInstallReply,
    Msg.LOCK: Lock,
    Msg.LOCK_REPLY: LockReply,
    Msg.COMPACT: Compact,
    Msg.COMPACT_REPLY: CompactReply,
    Msg.BACKUP: Backup,
    Msg.BACKUP_REPLY: BackupReply,
    Msg.RESTORE: Restore,
    Msg.RESTORE_REPLY: RestoreReply,
    Msg.REPAIR: Repair,
    Msg.REPAIR_REPLY: RepairReply,
}


class Field(NamedTuple):
    """One field of a record, as parse checks it and docs/protocol.md documents it."""

    name: str
    type: str  # "bytes", "int or None", "list of str", ...
    required: bool


def _type_name(annotation) -> str:
    if type(annotation) is types.UnionType:
        inner = [a for a in typing.get_args(annotation) if a is not type(None)]
        return f"{_type_name(inner[0])} or None"
    if typing.get_origin(annotation) is list:
        return f"list of {typing.get_args(annotation)[0].__name__}"
    return annotation.__name__


def fields_of(record: type) -> list[Field]:
    """The fields of a record in wire order."""
    return [Field(name, _type_name(record.__annotations__[name]), name not in record._field_defaults)
            for name in record._fields]


def _accepted(annotation) -> tuple[tuple, tuple | None]:
    """(the types a field may have, the types a list field's items may have, or None)."""
    if type(annotation) is types.UnionType:
        inner = [a for a in typing.get_args(annotation) if a is not type(None)]
        accepted, items = _accepted(inner[0])
        return (type(None),) + accepted, items
    if typing.get_origin(annotation) is list:
        # The decoder returns lists; local callers may pass tuples, which the encoder also takes as lists.
        return (list, tuple), typing.get_args(annotation)
    return (annotation,), None  # exact types: a bool is not an int here


def _checker(record: type, accepted: list[tuple]):
    """A function telling whether a tuple of exactly the record's fields has the right types, in straight-line
    code (as namedtuple builds its __new__): looping over a table of types cost twice as much per request."""
    names = [f"f{i}" for i in range(len(accepted))]
    tests = []
    for name, types_ in zip(names, accepted):
        tests.append("(" + " or ".join(f"{name} is None" if t is type(None) else f"type({name}) is {t.__name__}"
                                       for t in types_) + ")")
    unpack = f"    {', '.join(names)}, = fields\n" if names else ""
    source = f"def check(fields):\n{unpack}    return {' and '.join(tests) or 'True'}\n"
    namespace = {}
    exec(source, {}, namespace)  # only builtin type names appear in the source
    check = namespace["check"]
    check.__qualname__ = f"check_{record.__name__}"
    return check


def _spec(record: type) -> tuple:
    """What parse needs to know about a record, as a plain tuple (unpacked on every call)."""
    checks = [_accepted(record.__annotations__[name]) for name in record._fields]
    required = sum(1 for name in record._fields if name not in record._field_defaults)
    defaults = tuple(record._field_defaults[name] for name in record._fields[required:])
    if len(defaults) != len(record._fields) - required:
        raise TypeError(f"{record.__name__}: optional fields must come after the required ones")
    check = _checker(record, [accepted for accepted, _ in checks])
    lists = tuple((i, frozenset(items)) for i, (_, items) in enumerate(checks) if items is not None)
    return record, check, required, len(record._fields), defaults, lists


# Keyed by plain ints: the decoder hands over ints.
_SPECS = {int(msg_type): _spec(record) for msg_type, record in SCHEMA.items()}
_new = tuple.__new__


def parse(msg_type, fields):
    """The record of ``msg_type`` holding ``fields`` (a decoded message), or ProtocolError naming what is wrong.

    Optional fields left off the end are filled with None. Fields beyond the record are ignored: new trailing
    fields are how version 1 of the protocol grows, and a receiver ignores those it does not know. Range checks
    that depend on a node's configuration (quorums, sizes, partitions) are the receiver's.
    """
    try:
        fast = _PARSERS[msg_type]
    except (KeyError, TypeError):
        raise UnknownMessage(f"unknown message type {msg_type!r}") from None
    return fast(fields)


def parser(msg_type):
    """``parse`` of one message type as a function of the fields alone (a dispatcher looks it up once)."""
    return _PARSERS[int(msg_type)]


def _parse(msg_type, fields):
    """The general path of ``parse``: fields to fit, list items to check, errors to name."""
    record, check, required, size, defaults, lists = _SPECS[msg_type]
    if type(fields) is not tuple or len(fields) != size:
        fields = _fit(msg_type, record, fields, required, size, defaults)
    if not check(fields):
        raise _wrong_type(msg_type, record, fields)
    for index, items in lists:
        for item in fields[index] or ():  # an optional list may be None (the type check allowed it)
            if type(item) not in items:
                raise _malformed(msg_type, record, record._fields[index])
    return _new(record, fields)


def _parser(msg_type: int):
    """``parse`` for one message type, as straight-line code (as namedtuple builds its __new__): a record
    without list fields that arrives whole and well typed (every request on the hot path) is one size test and
    inline type tests; anything else takes the general path."""
    record, _, _, size, _, lists = _SPECS[msg_type]
    if lists:
        return lambda fields: _parse(msg_type, fields)
    names = [f"f{i}" for i in range(size)]
    tests = []
    for name, field in zip(names, record._fields):
        accepted, _ = _accepted(record.__annotations__[field])
        tests.append("(" + " or ".join(f"{name} is None" if t is type(None) else f"type({name}) is {t.__name__}"
                                       for t in accepted) + ")")
    unpack = f"        {', '.join(names)}, = fields\n" if names else ""
    source = (f"def parse_{record.__name__}(fields):\n"
              f"    if type(fields) is tuple and len(fields) == {size}:\n"
              f"{unpack}"
              f"        if {' and '.join(tests) or 'True'}:\n"
              f"            return _new(record, fields)\n"
              f"    return _parse({msg_type}, fields)\n")
    namespace = {"_new": _new, "record": record, "_parse": _parse}
    exec(source, namespace)  # only builtin type names and these three names appear in the source
    return namespace[f"parse_{record.__name__}"]


def _fit(msg_type, record, fields, required, size, defaults) -> tuple:
    """``fields`` as a tuple of exactly ``size``: optional fields left off filled in, unknown ones dropped."""
    if not isinstance(fields, (tuple, list)):
        kind = type(fields).__name__
        raise errors.ProtocolError(f"malformed {_what(msg_type)}: fields must be a tuple, not {kind}")
    fields = tuple(fields)
    count = len(fields)
    if count < required:
        raise _malformed(msg_type, record, record._fields[count], "is missing")
    return fields[:size] if count > size else fields + defaults[count - required:]


def _wrong_type(msg_type, record, fields) -> errors.ProtocolError:
    for name, value in zip(record._fields, fields):
        accepted, _ = _accepted(record.__annotations__[name])
        if type(value) not in accepted:
            return _malformed(msg_type, record, name)
    raise AssertionError(f"no field of {fields!r} is wrong for {record.__name__}")


_PARSERS = {msg_type: _parser(msg_type) for msg_type in _SPECS}


def parse_reply(request_type, reply):
    """The record of ``reply``, a ``(reply_type, fields)`` pair as a connection's ``call`` returns it, after
    checking that it answers a ``request_type`` request (whose reply type is the request's type + 1)."""
    reply_type, fields = reply
    if reply_type != request_type + 1:
        name = Msg(request_type).name
        raise errors.ProtocolError(f"a {name} request was answered with message type {reply_type}")
    return parse(reply_type, fields)


def _what(msg_type) -> str:
    name = Msg(msg_type).name
    if msg_type == Msg.ERROR:
        return "ERROR frame"
    return f"{name} request" if msg_type % 2 == 0 else name  # requests are even, replies odd


def _malformed(msg_type, record: type, name: str, problem: str | None = None) -> errors.ProtocolError:
    if problem is None:
        expected = _type_name(record.__annotations__[name])
        problem = f"must be a {expected}" if expected.startswith("list") else f"must be {expected}"
    return errors.ProtocolError(f"malformed {_what(msg_type)}: field {name!r} {problem}")


# Most specific first: error_fields walks this in order and isinstance picks the first match.
_BY_CLASS = [
    (errors.QuorumNotMet, ErrorCode.QUORUM_NOT_MET),
    (errors.ConditionFailed, ErrorCode.CONDITION_FAILED),
    (errors.LockHeld, ErrorCode.LOCK_HELD),
    (errors.TooManySiblings, ErrorCode.TOO_MANY_SIBLINGS),
    (UnknownMessage, ErrorCode.UNKNOWN_MESSAGE),
    (errors.AuthenticationFailed, ErrorCode.AUTH_FAILED),
    (errors.NotPermitted, ErrorCode.NOT_PERMITTED),
    (errors.ScanIncomplete, ErrorCode.SCAN_INCOMPLETE),
    (errors.ProtocolError, ErrorCode.PROTOCOL),
    (errors.KeyTooLarge, ErrorCode.KEY_TOO_LARGE),
    (errors.ValueTooLarge, ErrorCode.VALUE_TOO_LARGE),
    (errors.Timeout, ErrorCode.TIMEOUT),
    (WrongNode, ErrorCode.WRONG_NODE),
    (Overloaded, ErrorCode.OVERLOADED),
    (errors.Unavailable, ErrorCode.UNAVAILABLE),
    (errors.StorageFull, ErrorCode.STORAGE_FULL),
    (errors.StoreClosed, ErrorCode.STORE_CLOSED),
    (errors.CorruptionError, ErrorCode.CORRUPTION),
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
    ErrorCode.CORRUPTION: errors.CorruptionError,
    ErrorCode.AUTH_FAILED: errors.AuthenticationFailed,
    ErrorCode.NOT_PERMITTED: errors.NotPermitted,
    ErrorCode.SCAN_INCOMPLETE: errors.ScanIncomplete,
    ErrorCode.CONDITION_FAILED: errors.ConditionFailed,
    ErrorCode.LOCK_HELD: errors.LockHeld,
}


def error_fields(exc: BaseException) -> Error:
    """The fields of the ERROR frame that reports ``exc`` to the remote side."""
    if isinstance(exc, RemoteError):
        return Error(int(exc.code), str(exc), [])
    for cls, code in _BY_CLASS:
        if isinstance(exc, cls):
            if code == ErrorCode.QUORUM_NOT_MET:
                extra = [int(exc.replied), int(exc.required)]
            elif code == ErrorCode.TOO_MANY_SIBLINGS:
                extra = [int(exc.siblings), int(exc.limit)]
            else:
                extra = []
            return Error(int(code), str(exc), extra)
    # Not one of ours: say what it was, without a traceback (that is logged on the side where it happened).
    return Error(int(ErrorCode.UNKNOWN), f"{type(exc).__name__}: {exc}", [])


def error_from_fields(fields) -> errors.DynafastError:
    """The exception an ERROR frame's fields describe (a ProtocolError when they are malformed)."""
    if isinstance(fields, BaseException):
        return fields if isinstance(fields, errors.DynafastError) else errors.ProtocolError(str(fields))
    try:
        error = parse(Msg.ERROR, fields)
    except errors.ProtocolError as exc:
        return exc
    if error.code == ErrorCode.QUORUM_NOT_MET:
        replied, required = (error.extra + [0, 0])[:2]
        return errors.QuorumNotMet(error.message, replied=replied, required=required)
    if error.code == ErrorCode.TOO_MANY_SIBLINGS:
        siblings, limit = (error.extra + [0, 0])[:2]
        return errors.TooManySiblings(error.message, siblings=siblings, limit=limit)
    cls = _BY_CODE.get(error.code)
    if cls is None:
        return RemoteError(error.message, code=error.code)
    return cls(error.message)


def raise_error(fields) -> NoReturn:
    """Raise the typed exception an ERROR frame's fields describe."""
    raise error_from_fields(fields)


__all__ = [
    "Msg",
    "SCHEMA",
    "Field",
    "fields_of",
    "parse",
    "parse_reply",
    "ErrorCode",
    "RemoteError",
    "WrongNode",
    "Overloaded",
    "UnknownMessage",
    "error_fields",
    "error_from_fields",
    "raise_error",
    "parser",
]
