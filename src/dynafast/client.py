"""Cluster clients: ``Client`` (blocking sockets) and ``AsyncClient`` (asyncio).

Both are partition-aware: they fetch the ring from a node, send each request straight to a replica of its key
(that replica coordinates; client-driven coordination saves a hop), retry on the next replica when one is
unreachable, and refresh the ring when a node fails or the ring is older than ``ring_refresh`` seconds.

A node that does not answer within a per-try budget learnt from its recent replies (speculative retry, see
``_Latency``) is left for the next replica; one silent for longer (hung, ``_Latency.hung``) is avoided for a
while, and so are the nodes the cluster reports down with the ring. The caller's ``timeout`` bounds the whole
request, every try included (docs/operations.md, "Slow and hung nodes").

A node's reply is input like any other: every part of it a client uses is checked before use (``_decode``), and
whatever is wrong with it is a ProtocolError naming the node, never an IndexError or a TypeError. The
connection that carried it is replaced, and the client goes on serving requests.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import random
import threading
import time
import uuid
from dataclasses import dataclass, field

from dynafast import _impl
from dynafast.address import parse_address
from dynafast.cluster.conditional import lock_key
from dynafast.cluster.preflist import primaries
from dynafast.errors import (ConditionFailed, CorruptionError, DynafastError, KeyTooLarge, LockHeld, NotSent,
                             ProtocolError, QuorumNotMet, StoreClosed, Timeout, Unavailable, ValueTooLarge)
from dynafast.net.messages import Auth, Cas, Delete, Get, Leave, Lock, Msg, Overloaded, Put, parse_reply


@dataclass
class GetResult:
    """The answer of a get: one value per sibling (empty when the key is absent) and the causal context;
    ``ttls``: None when no value expires, else per value the seconds it has left (None for a value that does
    not expire)."""

    values: list[bytes] = field(default_factory=list)
    context: bytes = b""
    ttls: list[float | None] | None = None

    @property
    def found(self) -> bool:
        return bool(self.values)

    @property
    def value(self) -> bytes | None:
        """The value when there is exactly one; None when absent; ValueError when there are siblings."""
        if not self.values:
            return None
        if len(self.values) > 1:
            raise ValueError(f"{len(self.values)} siblings: resolve them with values and context")
        return self.values[0]

    @property
    def ttl(self) -> float | None:
        """Seconds until the key expires (its longest-lived value); None when a value never expires; KeyError
        when the key is absent (or expired)."""
        if not self.values:
            raise KeyError("the key is absent (or expired)")
        if self.ttls is None or None in self.ttls:
            return None
        return max(self.ttls)


def _get_result(reply) -> GetResult:
    ttls = reply.ttls_ms
    if ttls is not None:
        ttls = [None if t < 0 else t / 1000.0 for t in ttls]
    return GetResult(list(reply.values), reply.context, ttls)


def _ttl_ms(ttl) -> int | None:
    """A TTL in seconds as the PUT field (whole milliseconds, at least 1)."""
    if ttl is None:
        return None
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not ttl > 0:
        raise ValueError(f"ttl must be a positive number of seconds, not {ttl!r}")
    return max(1, round(ttl * 1000))


@dataclass
class LockToken:
    """A granted lease. ``fencing`` grows with every grant of the lock: hand it to what the lock protects, which
    refuses a token lower than one it has seen (a holder paused past its lease cannot do harm). ``expires``: the
    ``time.monotonic()`` by which the lease has surely ended, counted from before the request was sent."""

    name: bytes
    holder: str
    fencing: int
    ttl: float
    expires: float

    @property
    def valid(self) -> bool:
        return time.monotonic() < self.expires


def _as_bytes(name: str, value) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    raise TypeError(f"{name} must be bytes, not {type(value).__name__}")


# Errors that say this node could not serve the request (its copy of the record is damaged, its store is
# closing), not that the request cannot be served: another node may, so the client tries the next one.
_NODE_FAULTS = (CorruptionError, StoreClosed)
_TRY_NEXT = (Unavailable, *_NODE_FAULTS)
# Errors after which a lock request is asked again (until its wait ends): it may or may not have been granted,
# and asking again as the same holder only renews a lease that was.
_LOCK_RETRY = (Unavailable, Timeout, QuorumNotMet, *_NODE_FAULTS)


def _leave_pauses(deadline: float):
    """The pauses before each new send of a leave the cluster cannot take yet, until ``deadline`` (monotonic)."""
    pause = 0.25
    while time.monotonic() + pause <= deadline:
        yield pause
        pause = min(pause * 2, 1.0)


def _not_sent(exc) -> bool:
    """Whether a failed request surely never reached the node (it could not connect, or refused at once): a
    request that must not run twice (a conditional write) may then go to the next node."""
    text = str(exc)
    return isinstance(exc, Overloaded) or "cannot connect" in text or "connecting to" in text or "is closed" in text


def _cas_result(reply) -> bytes:
    if not reply.applied:
        raise ConditionFailed("the key is not in the state the conditional write named: nothing written",
                              context=reply.context, values=list(reply.values))
    return reply.context


def _lock_pause(reply, attempt: int, left: float) -> float:
    """How long to wait before asking for a held lock again: not past the holder's lease, nor past ``left``."""
    lease = reply.remaining_ms / 1000.0 if reply is not None else 0.05
    return max(0.0, min(left, max(0.005, min(lease, random.uniform(0.01, 0.05 * (attempt + 1))))))


def _timeout_ms(timeout: float | None) -> int | None:
    return None if timeout is None else max(1, int(timeout * 1000))


# The node's defaults (NodeConfig.max_key_size, max_value_size): what a node would refuse is not sent.
DEFAULT_MAX_KEY_SIZE = 32 * 1024
DEFAULT_MAX_VALUE_SIZE = 8 * 1024 * 1024
# Room a put's frame needs besides its key and value (header, context, quorums): the two limits together must
# leave this much of a frame, or a put under them could still be a frame no node accepts.
_FRAME_ROOM = 64 * 1024


def _check_limit(name: str, value, frame_limit: int) -> int:
    if type(value) is not int or value < 1:
        raise ValueError(f"{name} must be a positive number of bytes, not {value!r}")
    if value > frame_limit:
        raise ValueError(f"{name} of {value} bytes does not fit in a frame ({frame_limit} bytes)")
    return value


def _exhausted(last, missed=None, timeout: float = 0.0) -> DynafastError:
    """What a request raises when no node it tried could serve it. ``missed``: ``[(address, seconds)]`` of the
    tries that got no reply in time (then the error is a Timeout naming them and the request's timeout)."""
    if missed:
        tries = ", ".join(f"{address} within {wait:.3g}s" for address, wait in missed)
        more = f"; {last}" if last is not None else ""
        return Timeout(f"no reply within the request's timeout of {timeout:g}s: no answer from {tries}{more}")
    if isinstance(last, (ProtocolError, *_NODE_FAULTS)):
        return last  # the nodes were there: say what went wrong on them
    return Unavailable(f"no node could take the request: {last}")


# Speculative retry (as Cassandra's ``speculative_retry``): a try gets a budget of twice the p99 of the node's
# recent replies, within [floor, cap] (the client options ``speculative_floor`` and ``speculative_cap``); a node
# with no replies yet gets the cap. Twice the p99, not the p99: every try past its budget sends the request
# again, and a healthy node's own tail should rarely do that.
_SAMPLES = 128  # replies per budget update


PROBE_WAIT = 1.0  # seconds a failed node's probe has before another request may probe it
HUNG_TRIES = 3  # tries out of budget, with no reply meanwhile, that show a node hung before ``cap`` has passed


class _Latency:
    """Reply times of one node and the per-try budget they give. Samples are collected and the budget worked
    out once per ``_SAMPLES`` replies: per request this is one append (threads of a blocking Client may race
    here; a lost sample changes nothing)."""

    __slots__ = ("samples", "budget", "floor", "cap", "last_reply", "asked", "silent_tries")

    def __init__(self, floor: float, cap: float):
        self.samples: list[float] = []
        self.budget = cap
        self.floor = floor
        self.cap = cap
        self.last_reply = float("-inf")  # time.monotonic() of the node's latest reply
        self.asked = float("-inf")  # when the oldest try that got no reply since last_reply went out
        self.silent_tries = 0  # tries that ran out of budget since last_reply

    def hung(self, started: float, now: float) -> bool:
        """A try sent at ``started`` got no reply within its budget: whether the node is hung, not merely slow.

        Hung: silent to every request while ``HUNG_TRIES`` tries ran out of budget (several requests in flight
        at once, as a loaded client has: a hung node is set aside within about one budget, so few requests wait
        on it), or asked and silent for ``cap`` seconds (as long as any try waits). A single try running out is
        a slow moment, which a busy node has: with one request in flight at a time (a single-threaded caller) no
        other reply can show the node alive meanwhile, and setting it aside after a stall just over its budget
        (50 ms at the floor) starved it of its keys' requests for seconds."""
        if self.last_reply >= started:
            return False  # it answered another request meanwhile
        if self.asked <= self.last_reply:  # the first try to run out since the node last replied
            self.asked = started
            self.silent_tries = 0
        elif started < self.asked:
            self.asked = started
        self.silent_tries += 1
        return self.silent_tries >= HUNG_TRIES or now - self.asked >= self.cap

    def add(self, seconds: float, now: float) -> None:
        self.last_reply = now
        samples = self.samples
        samples.append(seconds)
        if len(samples) >= _SAMPLES:
            ordered = sorted(samples)
            samples.clear()
            self.budget = min(self.cap, max(self.floor, 2.0 * ordered[int(len(ordered) * 0.99)]))


def _no_answer(last) -> DynafastError:
    """What a ring or status request raises when no node it asked gave a usable answer."""
    if isinstance(last, ProtocolError):
        return last
    return Unavailable(f"no node answered: {last}")


# Plain ints: comparing with them costs less than with the enum's members (this runs on every request).
_GET, _PUT, _DELETE, _RING_GET, _STATUS = map(int, (Msg.GET, Msg.PUT, Msg.DELETE, Msg.RING_GET, Msg.STATUS))
_decode_clock = _impl.vclock.VClock.from_bytes


def _decode(request_type, result):
    """What a client takes from ``result``, the ``(reply_type, fields)`` answering a ``request_type`` request:
    the record (GET, PUT, DELETE), ``(ring, {node: address})`` (RING_GET) or the status dict (STATUS).

    Everything the client will use is checked here, once: the record's fields and types, and the bytes inside
    them (a GET's context, the ring, the addresses). Anything wrong raises ProtocolError.
    """
    reply = parse_reply(request_type, result)
    if request_type == _PUT or request_type == _DELETE:
        return reply
    try:
        if request_type == _GET:
            if reply.context:
                _decode_clock(reply.context)  # the caller hands it back with its next write
            if reply.ttls_ms is not None and len(reply.ttls_ms) != len(reply.values):
                raise ProtocolError(f"GET_REPLY has {len(reply.ttls_ms)} TTLs for {len(reply.values)} values")
            return reply
        if request_type == _RING_GET:
            return _decode_ring(reply)
        if request_type == _STATUS:
            status = json.loads(reply.status)
            if type(status) is not dict:
                raise ProtocolError(f"STATUS_REPLY holds a JSON {type(status).__name__}, not an object")
            return status
    except ProtocolError:
        raise
    except (ValueError, TypeError, IndexError, KeyError, OverflowError) as exc:
        # What the decoders say of bytes they cannot read (json's JSONDecodeError is a ValueError)
        raise ProtocolError(f"malformed {Msg(request_type + 1).name}: {exc}") from None
    return reply


def _decode_ring(state) -> tuple:
    """``(ring, {node: address}, down)`` of a RING_REPLY (clients read only these of the cluster state; ``down``:
    the nodes the answering node's failure detector holds down, empty from nodes that do not say)."""
    ring = _impl.ring.Ring.from_bytes(state.ring)
    if len(state.ids) != len(state.addresses):
        raise ProtocolError(f"RING_REPLY has {len(state.ids)} node ids but {len(state.addresses)} addresses")
    for address in state.addresses:
        parse_address(address)  # ValueError: the client would fail on it when it connects
    return ring, dict(zip(state.ids, state.addresses)), frozenset(state.down or ())


def _from_node(exc: ProtocolError, address: str) -> ProtocolError:
    """``exc`` naming the node it came from (its class kept: UnknownMessage stays one)."""
    return type(exc)(f"{address}: {exc}")


class _Routing:
    """The client's view of the cluster: ring, member addresses, and which node to try for a key.

    With ``partition_aware=False`` the client sends every request to the nodes it was given, in order, and they
    coordinate or forward (for clients behind a load balancer, or pinned to one side of a network partition).
    """

    def __init__(self, seeds, ring_refresh: float, partition_aware: bool = True):
        self.partition_aware = partition_aware
        self.seeds = [s.strip() for s in seeds if s.strip()]
        if not self.seeds:
            raise ValueError("give at least one node address HOST:PORT")
        for seed in self.seeds:
            parse_address(seed)
        self.ring = None
        self.addresses: dict[str, str] = {}
        self.down: frozenset = frozenset()  # nodes the cluster reported down with the ring
        self.ring_refresh = ring_refresh
        self.fetched_at = 0.0
        self.bad: dict[str, float] = {}  # node -> until when it counts as failed
        self.probing: set[str] = set()  # failed nodes whose time out ended: one request tries each again
        self.strikes: dict[str, tuple[int, float]] = {}  # address -> (timeouts in a row, when the last was)
        self._order: dict[int, tuple[str, ...]] = {}  # partition -> candidates while no node is bad
        self._order_ring = None  # the ring _order was worked out for

    def note_ring_version(self, version: int | None) -> None:
        """Replies to get/put/delete carry the coordinator's ring version: a newer one means ours is stale."""
        if version is not None and self.ring is not None and version > self.ring.version:
            self.fetched_at = float("-inf")  # fetch the ring before the next request

    def adopt(self, ring, addresses: dict[str, str], down: frozenset = frozenset()) -> None:
        """Take a ring, the nodes' addresses and the nodes reported down (from a RING_REPLY, through
        ``_decode``)."""
        if self.ring is None or ring.version >= self.ring.version:
            self.ring = ring
            self.addresses = addresses
            self._order_ring = None  # the addresses may have changed with the same ring
        if down != self.down:
            self.down = down
            self._order_ring = None
        self.fetched_at = time.monotonic()

    def stale(self) -> bool:
        if not self.partition_aware:
            return False
        return self.ring is None or time.monotonic() - self.fetched_at > self.ring_refresh

    def ring_sources(self) -> list[str]:
        """Where to fetch the ring from: known nodes (healthy ones first, in random order), then the seeds."""
        if not self.partition_aware:
            return list(self.seeds)
        now = time.monotonic()
        known = list(self.addresses.items())
        random.shuffle(known)
        known = [a for n, a in known if self._healthy(n, now)] + [a for n, a in known if not self._healthy(n, now)]
        return known + [s for s in self.seeds if s not in known]

    def _healthy(self, node: str, now: float) -> bool:
        return node not in self.down and self.bad.get(node, float("-inf")) < now

    def candidates(self, key: bytes) -> list[str]:
        """Addresses to try for ``key``: its healthy replicas, the other healthy nodes, then the nodes that are
        down or recently failed (last resorts, they may be back)."""
        ring = self.ring
        if ring is None or not self.partition_aware:
            return list(self.seeds)
        partition = ring.partition_of(key)
        if self.bad:
            now = time.monotonic()
            replicas = primaries(ring, partition, ring.n)
            probe = None
            bad = {}  # a copy: other threads of a blocking Client may mark nodes bad meanwhile
            for node, until in list(self.bad.items()):
                if until >= now:
                    bad[node] = until
                elif probe is None and node in replicas:
                    # Its time out is over: this request tries it first (the probe); the others keep avoiding
                    # it until it answers (``answered``) or for PROBE_WAIT, so that a node still hung holds up
                    # one request, not every request for its keys.
                    probe = node
                    bad[node] = now + PROBE_WAIT
                    self.probing.add(node)
                elif now - until < PROBE_WAIT * 10:
                    bad[node] = until  # over, and healthy to this request: kept for a request it may probe
            self.bad = bad
            if bad:
                return self._ordered(replicas, now, probe)
        # No node failed lately: the order depends only on the ring, the addresses and the down set, so it is
        # worked out once per partition (per request it cost the client more than the rest of a call).
        if self._order_ring is not ring:
            self._order = {}
            self._order_ring = ring
        order = self._order.get(partition)
        if order is None:
            order = self._order[partition] = self._ordered(primaries(ring, partition, ring.n), 0.0)
        return order

    def _ordered(self, replicas, now: float, probe: str | None = None) -> tuple:
        nodes = [n for n in list(replicas) + [n for n in self.addresses if n not in replicas] if n in self.addresses]
        healthy = [n for n in nodes if n != probe and self._healthy(n, now)]
        if probe is not None:
            healthy.insert(0, probe)  # a probe is only one if it is tried
        return tuple(self.addresses[n] for n in healthy + [n for n in nodes if n not in healthy])

    def answered(self, address: str) -> None:
        """``address`` answered a request: a failed node it is counts as healthy again at once."""
        for node, addr in list(self.addresses.items()):
            if addr == address and node in self.bad:
                self.bad.pop(node, None)
                self.probing.discard(node)

    def failed(self, address: str, timed_out: bool = False) -> None:
        """``address`` failed a request: avoid it for 2 s; after a timeout (a hung or paused node, which may
        stay so) for twice as long as after the previous one, up to 30 s, while timeouts follow within a
        minute of each other."""
        now = time.monotonic()
        for node, addr in self.addresses.items():
            if addr == address:
                if node in self.probing:
                    self.probing.discard(node)  # the probe failed: a further strike
                elif self.bad.get(node, float("-inf")) >= now:
                    return  # known already (requests in flight to a node that fails all fail): one failure
                pause = 2.0
                if timed_out:
                    count, last = self.strikes.get(address, (0, float("-inf")))
                    count = 1 if now - last > 60.0 else min(count + 1, 5)
                    self.strikes[address] = (count, now)
                    pause = min(30.0, 2.0 * 2 ** (count - 1))
                self.bad[node] = now + pause
        self.fetched_at = float("-inf")  # refresh the ring on the next request


class _ClientOptions:
    """What both clients are configured with.

    ``nodes``: "HOST:PORT" addresses (a list, or one comma-separated string) of any nodes of the cluster; the
    rest are discovered. ``timeout``: seconds per request, in total over every node tried (also the
    coordinator's quorum deadline). ``connect_timeout``. ``ring_refresh``: seconds after which the ring is
    fetched again. ``r``, ``w``, ``dw``: default quorums (None: the node's). ``partition_aware=False`` sends
    every request to ``nodes`` in order instead of to a replica of the key. ``max_key_size``,
    ``max_value_size``: larger keys and values are refused with KeyTooLarge and ValueTooLarge before anything
    is sent (the defaults are the node's; a node configured lower refuses with the same errors).
    ``username``, ``password``: log every connection in as this user (nodes with a users file require it;
    AuthenticationFailed when refused).
    ``tls``: an SSLContext (``dynafast.security.tls.client_context(ca)``) to reach TLS nodes with; each node's
    certificate must verify and name the host of its address.
    ``speculative_floor``, ``speculative_cap``: the bounds, in seconds, of the per-try budget (twice the p99
    of the node's recent replies) after which a request moves on to the next replica; a node silent for
    ``speculative_cap`` counts as hung and is tried last for a while. ``retry_writes``: whether
    puts and deletes move on too after a try's budget (True), or wait for the first node until ``timeout``
    (False); either way a conditional write or lock request never does, and every request moves on after a
    connection failure or a refusal (docs/operations.md, "Slow and hung nodes").
    """

    def __init__(self, nodes, *, timeout: float = 5.0, connect_timeout: float = 2.0, ring_refresh: float = 10.0,
                 r: int | None = None, w: int | None = None, dw: int | None = None, partition_aware: bool = True,
                 max_key_size: int = DEFAULT_MAX_KEY_SIZE, max_value_size: int = DEFAULT_MAX_VALUE_SIZE,
                 username: str | None = None, password: str | None = None,
                 tls=None, speculative_floor: float = 0.05, speculative_cap: float = 1.0,
                 retry_writes: bool = True):
        if isinstance(nodes, str):
            nodes = nodes.split(",")
        if (username is None) != (password is None):
            raise ValueError("give both username and password, or neither")
        self.username = username
        self._password = password
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.tls = tls
        self.defaults = {"r": r, "w": w, "dw": dw}
        room = _impl.codec.MAX_FRAME_DEFAULT - _FRAME_ROOM
        self.max_key_size = _check_limit("max_key_size", max_key_size, room)
        self.max_value_size = _check_limit("max_value_size", max_value_size, room - max_key_size)
        self._routing = _Routing(nodes, ring_refresh, partition_aware)
        self._closed = False
        if not 0 < speculative_floor <= speculative_cap:
            raise ValueError("need 0 < speculative_floor <= speculative_cap")
        self.speculative_floor = speculative_floor
        self.speculative_cap = speculative_cap
        self.retry_writes = retry_writes
        self._latency: dict[str, _Latency] = {}  # address -> its reply times and per-try budget

    def _tracker(self, address: str) -> _Latency:
        tracker = self._latency.get(address)
        if tracker is None:
            tracker = self._latency[address] = _Latency(self.speculative_floor, self.speculative_cap)
        return tracker

    def _speculates(self, msg_type, once: bool) -> bool:
        """Whether a request moves on to the next node after a try's budget: reads always, plain writes when
        ``retry_writes`` (a write that timed out may run on the first node later all the same, see
        docs/operations.md), never a request that must not run twice."""
        return not once and (msg_type == _GET or self.retry_writes)

    def _last_try(self, missed) -> str:
        """Of the nodes whose try's budget ran out, the one to give the rest of a request's time: a slow node
        rather than a hung one. Nodes that hung in the last 10 s come last (one just continued still works
        through what queued up meanwhile); then the latest reply (to any request) decides."""
        now = time.monotonic()
        strikes = self._routing.strikes

        def liveliness(address):
            hung = strikes.get(address)
            return hung is None or now - hung[1] > 10.0, self._tracker(address).last_reply

        return max((address for address, _ in missed), key=liveliness)

    def _ring_wait(self, sources: list, index: int) -> float:
        """How long a ring or status request waits for ``sources[index]``: the last source gets the whole
        timeout, the others at most the cap of a try (a hung node must not hold up every request)."""
        if index + 1 == len(sources):
            return self.timeout
        return min(self.timeout, self._tracker(sources[index]).budget)

    def _key(self, key) -> bytes:
        key = _as_bytes("key", key)
        if len(key) > self.max_key_size:
            raise KeyTooLarge(f"key of {len(key)} bytes is over the client's limit of {self.max_key_size}")
        return key

    def _get_request(self, key, r, timeout):
        key = self._key(key)
        r = self.defaults["r"] if r is None else r
        return key, Msg.GET, Get(key, r, _timeout_ms(timeout))

    def _write_request(self, key, value, context, w, dw, timeout, lww=False, ttl=None, r=None):
        """A put (value is bytes) or a delete (value is None)."""
        key = self._key(key)
        context = None if context is None else _as_bytes("context", context)
        w = self.defaults["w"] if w is None else w
        dw = self.defaults["dw"] if dw is None else dw
        if value is None:
            return key, Msg.DELETE, Delete(key, context, w, dw, _timeout_ms(timeout))
        value = _as_bytes("value", value)
        if len(value) > self.max_value_size:
            raise ValueTooLarge(f"value of {len(value)} bytes is over the client's limit of {self.max_value_size}")
        if lww:
            r = self.defaults["r"] if r is None else r
        return key, Msg.PUT, Put(key, value, context, w, dw, _timeout_ms(timeout), True if lww else None,
                                 _ttl_ms(ttl), r)

    def _cas_request(self, key, value, if_context, if_absent, context, lww, timeout, ttl=None):
        """A conditional put (value is bytes) or delete (value is None)."""
        if context is not None or lww:
            raise ValueError("a conditional write names its precondition with if_context (or if_absent) alone")
        if if_context is not None and if_absent:
            raise ValueError("give if_context or if_absent, not both")
        key = self._key(key)
        if_context = None if if_context is None else _as_bytes("if_context", if_context)
        if value is not None:
            value = _as_bytes("value", value)
            if len(value) > self.max_value_size:
                raise ValueTooLarge(f"value of {len(value)} bytes is over the client's limit of {self.max_value_size}")
        return key, Msg.CAS, Cas(key, value, if_context, True if if_absent else None, _timeout_ms(timeout),
                                 _ttl_ms(ttl))

    def _lock_request(self, name, holder, ttl, release=False, fencing=None, timeout=None):
        name = _as_bytes("name", name)
        if not 0 < ttl <= 24 * 3600:
            raise ValueError(f"ttl must be a positive number of seconds up to a day, not {ttl!r}")
        key = self._key(lock_key(name))
        return key, Msg.LOCK, Lock(name, holder, max(1, int(ttl * 1000)), True if release else None, fencing,
                                   _timeout_ms(timeout))


class Client(_ClientOptions):
    """Blocking client (options: see _ClientOptions). Thread-safe: each node connection is used by one thread
    at a time."""

    def __init__(self, nodes, **options):
        super().__init__(nodes, **options)
        self._conns: dict[str, object] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()

    # -- plumbing --------------------------------------------------------------------------------------
    def _conn(self, address: str):
        from dynafast.net.blocking import BlockingConnection

        with self._lock:
            conn = self._conns.get(address)
            if conn is None:
                host, port = parse_address(address)
                conn = BlockingConnection(host, port, self.connect_timeout, login=self._login,
                                          ssl=self.tls)
                self._conns[address] = conn
                self._locks[address] = threading.Lock()
            return conn, self._locks[address]

    def _login(self, conn) -> None:
        if self.username is None:
            return
        from dynafast.security.access import hello

        conn.call(Msg.HELLO, hello(), self.connect_timeout)
        conn.call(Msg.AUTH, Auth("user", self.username, self._password.encode()), self.connect_timeout)

    def _drop(self, address: str) -> None:
        with self._lock:
            conn = self._conns.pop(address, None)
        if conn is not None:
            try:
                conn.close()
            except OSError:
                pass

    def _call(self, address: str, msg_type, fields, timeout: float):
        """What ``_decode`` makes of the reply of ``address`` to one request."""
        if self._closed:
            raise Unavailable("client is closed")
        conn = None
        try:
            conn, lock = self._conn(address)
            # Bounded: another thread may be waiting on this node's connection for a hung node's reply.
            if not lock.acquire(timeout=timeout):
                raise Timeout(f"no reply from {address} within {timeout}s (its connection was busy)")
            try:
                result = conn.call(msg_type, fields, timeout)
            finally:
                lock.release()
            return _decode(msg_type, result)
        except ProtocolError as exc:
            # The node sent what we cannot read, or hung up saying our stream broke: a new connection replaces
            # this one, which may be out of step.
            self._drop(address)
            self._routing.failed(address)
            raise _from_node(exc, address) from None
        except Unavailable:
            self._drop(address)
            self._routing.failed(address)
            raise
        except DynafastError:
            # Timeout, QuorumNotMet, StorageFull, ...: the node is there; trying another won't help.
            if conn is not None and conn.closed:
                self._drop(address)
            raise
        except OSError as exc:
            self._drop(address)
            self._routing.failed(address)
            raise Unavailable(f"{address}: {exc}") from exc

    def refresh_ring(self) -> None:
        last = None
        sources = self._routing.ring_sources()
        for index, address in enumerate(sources):
            started = time.monotonic()
            try:
                self._routing.adopt(*self._call(address, Msg.RING_GET, (), self._ring_wait(sources, index)))
                return
            except (Unavailable, ProtocolError, Timeout) as exc:
                if isinstance(exc, Timeout) and self._tracker(address).hung(started, time.monotonic()):
                    self._routing.failed(address, timed_out=True)
                last = exc
        raise _no_answer(last)

    def _request(self, key: bytes, msg_type, fields, timeout: float | None, once: bool = False):
        """``once``: the request must not run twice (a conditional write), so it goes to another node only when
        it surely did not reach the first."""
        timeout = self.timeout if timeout is None else timeout
        if self._routing.stale():
            self._routing.fetched_at = time.monotonic()  # one refresh at a time; the others use the ring we have
            try:
                self.refresh_ring()
            except (Unavailable, ProtocolError, Timeout):
                if self._routing.ring is None:
                    raise
        last = None
        missed = None  # [(address, seconds)] of tries that got no reply in time
        speculate = self._speculates(msg_type, once)
        # One deadline for every node tried: the caller's timeout is the whole request's.
        started = time.monotonic()
        deadline = started + timeout
        candidates = self._routing.candidates(key)
        count = len(candidates)
        index = 0
        last_try = not speculate or count == 1  # the try that gets all the time left
        while True:
            if index == count:
                if last_try or not missed:
                    break
                # Every node had a try's budget: the time left goes to the likeliest to answer (_last_try).
                candidates, count, last_try = (*candidates, self._last_try(missed)), count + 1, True
            address = candidates[index]
            if index:
                started = time.monotonic()
            index += 1
            left = deadline - started
            if left <= 0:
                break
            tracker = self._latency.get(address) or self._tracker(address)
            wait = left if last_try or tracker.budget >= left else tracker.budget
            try:
                reply = self._call(address, msg_type, fields, wait)
            except Timeout:
                if once:
                    raise  # its outcome is unknown (the error says so): not to be run again elsewhere
                if tracker.hung(started, time.monotonic()):
                    # Silent to every request for a while: set aside (a node only slow is left for this
                    # request alone).
                    self._routing.failed(address, timed_out=True)
                missed = (missed or []) + [(address, wait)]
                if wait < left:
                    continue  # only a try's budget ran out: the next node, within what is left
                break
            except _TRY_NEXT as exc:
                if once and not _not_sent(exc):
                    raise
                last = exc
                continue
            except ProtocolError as exc:
                if msg_type != Msg.GET:
                    raise  # the write may have happened there: doing it again elsewhere could duplicate it
                last = exc
                continue
            now = time.monotonic()
            tracker.add(now - started, now)
            routing = self._routing
            if routing.bad:
                routing.answered(address)
            routing.note_ring_version(reply.ring_version)
            return reply
        raise _exhausted(last, missed, timeout)

    # -- the API -----------------------------------------------------------------------------------------
    def get(self, key, *, r: int | None = None, timeout: float | None = None) -> GetResult:
        key, msg_type, fields = self._get_request(key, r, timeout)
        reply = self._request(key, msg_type, fields, timeout)
        return _get_result(reply)

    def put(self, key, value, *, context: bytes | None = None, w: int | None = None, dw: int | None = None,
            timeout: float | None = None, lww: bool = False, if_context: bytes | None = None,
            if_absent: bool = False, ttl: float | None = None, r: int | None = None) -> bytes | None:
        """Write ``value``. It replaces the versions ``context`` (from a get) has seen; without a context it is a
        sibling of whatever is stored. ``lww=True``: the coordinator reads the key first and the value replaces
        every version that read saw (last write wins); ``r``: how many replicas that read hears from (default: the
        client's ``r``, else the coordinator's). ``ttl``: the value expires that many seconds after the
        coordinator receives the put (docs/operations.md, TTL). TooManySiblings when the key would exceed the
        node's ``max_siblings``.

        Conditional (linearizable, one Paxos round among the key's replicas): ``if_context=ctx`` writes only if
        the key's current versions are exactly those ``ctx`` (from a get, or a ConditionFailed) names;
        ``if_absent=True`` only if the key has no live value. ConditionFailed (with the current ``context`` and
        ``values``) when not; returns the key's new context when written. Timeout or QuorumNotMet: the outcome
        is unknown (read the key to learn it). ``ttl`` applies to a conditional write as to a plain one."""
        if value is None:
            raise TypeError("value must be bytes, not None (use delete)")
        if r is not None and not lww:
            raise ValueError("r applies to an lww put only (its read); a plain put reads nothing")
        if if_context is not None or if_absent:
            request = self._cas_request(key, value, if_context, if_absent, context, lww, timeout, ttl)
            return _cas_result(self._request(*request, timeout, once=True))
        self._request(*self._write_request(key, value, context, w, dw, timeout, lww, ttl, r), timeout)

    def ttl(self, key, *, r: int | None = None, timeout: float | None = None) -> float | None:
        """Seconds until ``key`` expires; None when it does not expire; KeyError when it is absent or expired."""
        return self.get(key, r=r, timeout=timeout).ttl

    def expire(self, key, ttl: float, *, w: int | None = None, dw: int | None = None,
               timeout: float | None = None) -> bool:
        """Make ``key`` expire ``ttl`` seconds from now: a read, then a put of its value with the read's context.
        False when the key is absent (or expired); ValueError when it has siblings (resolve them first)."""
        found = self.get(key, timeout=timeout)
        if not found.found:
            return False
        self.put(key, found.value, context=found.context, w=w, dw=dw, timeout=timeout, ttl=ttl)
        return True

    def persist(self, key, *, w: int | None = None, dw: int | None = None, timeout: float | None = None) -> bool:
        """Remove ``key``'s expiry (a read, then a put of its value with the read's context). False when the key
        is absent or does not expire; ValueError when it has siblings."""
        found = self.get(key, timeout=timeout)
        if found.ttls is None:
            return False
        self.put(key, found.value, context=found.context, w=w, dw=dw, timeout=timeout)
        return True

    def delete(self, key, *, context: bytes | None = None, w: int | None = None, dw: int | None = None,
               timeout: float | None = None, if_context: bytes | None = None) -> None:
        """Delete the versions ``context`` has seen; without a context, every version the coordinator reads.
        ``if_context``: conditional, as for ``put``."""
        if if_context is not None:
            request = self._cas_request(key, None, if_context, False, context, False, timeout)
            _cas_result(self._request(*request, timeout, once=True))
            return
        self._request(*self._write_request(key, None, context, w, dw, timeout), timeout)

    def scan(self, prefix: bytes = b"", limit: int | None = None, *, cursor: bytes | None = None,
             page_size: int = 1000, max_bytes: int = 1 << 20, timeout: float | None = None):
        """Every live key starting with ``prefix`` (at most ``limit``), as ``(key, GetResult)``: partition by
        partition, each in key order, read from one replica per partition (r=1; see dynafast.bulk). The iterator's
        ``cursor`` (bytes; None once done) resumes the scan, from any client: ``scan(prefix, cursor=...)``."""
        from dynafast import bulk

        walk = bulk.new_walk(prefix, limit, page_size, max_bytes, cursor)
        return bulk.Scan(self, walk, self.timeout if timeout is None else timeout)

    def get_many(self, keys, *, r: int | None = None, timeout: float | None = None) -> dict:
        """``{key: GetResult or exception}``; requests to the same coordinator are pipelined."""
        from dynafast import bulk

        requests = [(key, lambda key=key: self._get_request(key, r, timeout)) for key in keys]
        return bulk.get_results(bulk.run_batch(self, requests, timeout))

    def put_many(self, items, *, w: int | None = None, dw: int | None = None, timeout: float | None = None) -> dict:
        """Write each of ``items``, (key, value) or (key, value, context), as put does (no lww): ``{key: None or
        exception}``. Two items of one key are two writes (siblings, without contexts)."""
        from dynafast import bulk

        return bulk.put_results(bulk.run_batch(self, bulk.put_items(self, items, w, dw, timeout), timeout))

    def acquire(self, name, *, ttl: float = 10.0, wait: float = 0.0, timeout: float | None = None) -> LockToken:
        """Take the lease ``name`` for ``ttl`` seconds (see ``lock``); LockHeld when not granted within ``wait``."""
        holder = uuid.uuid4().hex
        deadline = time.monotonic() + wait
        attempt = 0
        while True:
            sent = time.monotonic()
            reply, error = None, None
            try:
                # A retry after an unknown outcome is safe: the same holder asking again renews its own lease.
                reply = self._request(*self._lock_request(name, holder, ttl, timeout=timeout), timeout, once=True)
                if reply.granted:
                    return LockToken(_as_bytes("name", name), holder, reply.fencing, ttl, sent + ttl)
            except _LOCK_RETRY as exc:
                error = exc
            left = deadline - time.monotonic()
            if left <= 0:
                if reply is None:
                    raise error
                raise LockHeld(f"lock {name!r} is held by another holder ({reply.remaining_ms} ms of its lease "
                               "left)", remaining=reply.remaining_ms / 1000.0)
            time.sleep(_lock_pause(reply, attempt, left))
            attempt += 1

    def release(self, token: LockToken, *, timeout: float | None = None) -> bool:
        """Give the lease back if it is still the token's; False when it was not (it had expired)."""
        request = self._lock_request(token.name, token.holder, token.ttl, True, token.fencing, timeout)
        return self._request(*request, timeout, once=True).granted

    @contextlib.contextmanager
    def lock(self, name, *, ttl: float = 10.0, wait: float = 0.0, timeout: float | None = None):
        """A lease on ``name`` as a context manager: yields a LockToken (``.fencing`` grows with every grant),
        released on exit if still held. LockHeld when not granted within ``wait`` seconds. The lease ends after
        ``ttl`` seconds even if its holder dies or hangs (the coordinating node's clock decides, see
        docs/operations.md): check ``token.valid``, and pass ``token.fencing`` to what the lock protects."""
        token = self.acquire(name, ttl=ttl, wait=wait, timeout=timeout)
        try:
            yield token
        finally:
            try:
                self.release(token, timeout=timeout)
            except DynafastError:
                pass  # the lease expires by itself

    def status(self, address: str | None = None) -> dict:
        addresses = [address] if address else self._routing.ring_sources()
        last = None
        for addr in addresses:
            try:
                return self._call(addr, Msg.STATUS, (), self.timeout)
            except (Unavailable, ProtocolError) as exc:
                last = exc
        raise _no_answer(last)

    def leave(self, node_id: str | None = None, *, address: str | None = None, retry_for: float = 15.0) -> None:
        """Ask the cluster to let ``node_id`` leave (None: the node at ``address``), through the node at ``address``
        (default: the first this client was given). The leaver hands its partitions off, then stops.

        While the cluster answers that it cannot change now (a claimant that has just taken over waits for its
        view to settle, and under load its failure detector can restart that wait more than once), the leave is
        sent again for up to ``retry_for`` seconds: a leave sent twice is one leave. A node that cannot be reached
        at all (NotSent) is reported at once."""
        address = address or self._routing.seeds[0]
        pauses = _leave_pauses(time.monotonic() + retry_for)
        while True:
            try:
                self._call(address, Msg.LEAVE, Leave(node_id), self.timeout)
                return
            except Unavailable as exc:
                pause = None if isinstance(exc, NotSent) else next(pauses, None)
                if pause is None:
                    raise
                time.sleep(pause)

    def close(self) -> None:
        self._closed = True
        with self._lock:
            conns, self._conns = list(self._conns.values()), {}
        for conn in conns:
            try:
                conn.close()
            except OSError:
                pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class AsyncClient(_ClientOptions):
    """The same API as Client, as coroutines, over multiplexed asyncio connections (one per node); options:
    see _ClientOptions."""

    def __init__(self, nodes, **options):
        super().__init__(nodes, **options)
        self._pool = None

    async def connect(self) -> "AsyncClient":
        self._new_pool()
        await self.refresh_ring()
        return self

    def _new_pool(self):
        if self._pool is None:
            from dynafast.net.connection import PeerPool

            login = None
            if self.username is not None:
                from dynafast.security.access import login_user

                username, password = self.username, self._password
                login = lambda conn, timeout: login_user(conn, username, password, timeout)  # noqa: E731
            self._pool = PeerPool(connect_timeout=self.connect_timeout, login=login, ssl=self.tls)
        return self._pool

    async def _call(self, address: str, msg_type, fields, timeout: float):
        if self._closed:
            raise Unavailable("client is closed")
        if self._pool is None:
            self._new_pool()
        try:
            return _decode(msg_type, await self._pool.request(address, msg_type, fields, timeout))
        except ProtocolError as exc:
            raise await self._bad_reply(address, exc) from None
        except (Unavailable, OSError) as exc:
            self._routing.failed(address)
            if isinstance(exc, Unavailable):
                raise
            raise Unavailable(f"{address}: {exc}") from exc

    async def _bad_reply(self, address: str, exc: ProtocolError) -> ProtocolError:
        """After ``address`` sent what we cannot read: its connection, which may be out of step, is replaced
        (calls in flight on it get Unavailable and try elsewhere). Returns the error to raise."""
        self._routing.failed(address)
        if self._pool is not None:
            await self._pool.discard(address)
        return _from_node(exc, address)

    async def refresh_ring(self) -> None:
        last = None
        sources = self._routing.ring_sources()
        for index, address in enumerate(sources):
            started = time.monotonic()
            try:
                self._routing.adopt(*await self._call(address, Msg.RING_GET, (), self._ring_wait(sources, index)))
                return
            except (Unavailable, ProtocolError, Timeout) as exc:
                if isinstance(exc, Timeout) and self._tracker(address).hung(started, time.monotonic()):
                    self._routing.failed(address, timed_out=True)
                last = exc
        raise _no_answer(last)

    async def _request(self, key: bytes, msg_type, fields, timeout: float | None, once: bool = False):
        timeout = self.timeout if timeout is None else timeout
        if self._routing.stale():
            self._routing.fetched_at = time.monotonic()  # one refresh at a time; the others use the ring we have
            try:
                await self.refresh_ring()
            except (Unavailable, ProtocolError, Timeout):
                if self._routing.ring is None:
                    raise
        last = None
        missed = None  # as in Client._request: tries that got no reply within their budget
        speculate = self._speculates(msg_type, once)
        started = time.monotonic()
        deadline = started + timeout  # one total for every node tried
        candidates = self._routing.candidates(key)
        count = len(candidates)
        index = 0
        last_try = not speculate or count == 1  # the try that gets all the time left
        while True:
            if index == count:
                if last_try or not missed:
                    break
                # Every node had a try's budget: the time left goes to the likeliest to answer (_last_try).
                candidates, count, last_try = (*candidates, self._last_try(missed)), count + 1, True
            address = candidates[index]
            if index:
                started = time.monotonic()
            index += 1
            left = deadline - started
            if left <= 0:
                break
            tracker = self._latency.get(address) or self._tracker(address)
            wait = left if last_try or tracker.budget >= left else tracker.budget
            # _call inlined: one coroutine less per request, the client's own CPU is the load tool's limit.
            if self._closed:
                raise Unavailable("client is closed")
            pool = self._pool
            if pool is None:
                pool = self._new_pool()
            try:
                reply = _decode(msg_type, await pool.request(address, msg_type, fields, wait))
            except Timeout:
                if once:
                    raise  # see Client._request
                if tracker.hung(started, time.monotonic()):
                    self._routing.failed(address, timed_out=True)  # see Client._request
                missed = (missed or []) + [(address, wait)]
                if wait < left:
                    continue  # see Client._request
                break
            except Unavailable as exc:
                self._routing.failed(address)
                if once and not _not_sent(exc):
                    raise  # see Client._request
                last = exc
                continue
            except _NODE_FAULTS as exc:
                if once:
                    raise
                last = exc
                continue
            except ProtocolError as exc:
                last = await self._bad_reply(address, exc)
                if msg_type != Msg.GET:
                    raise last from None  # the write may have happened there: see Client._request
                continue
            except DynafastError:
                raise  # QuorumNotMet, StorageFull, ...: the node is there; trying another won't help
            except OSError as exc:
                self._routing.failed(address)
                last = Unavailable(f"{address}: {exc}")
                if once:
                    raise last from exc
                continue
            now = time.monotonic()
            tracker.add(now - started, now)
            routing = self._routing
            if routing.bad:
                routing.answered(address)
            routing.note_ring_version(reply.ring_version)
            return reply
        raise _exhausted(last, missed, timeout)

    async def get(self, key, *, r: int | None = None, timeout: float | None = None) -> GetResult:
        key, msg_type, fields = self._get_request(key, r, timeout)
        reply = await self._request(key, msg_type, fields, timeout)
        return _get_result(reply)

    async def put(self, key, value, *, context: bytes | None = None, w: int | None = None,
                  dw: int | None = None, timeout: float | None = None, lww: bool = False,
                  if_context: bytes | None = None, if_absent: bool = False,
                  ttl: float | None = None, r: int | None = None) -> bytes | None:
        if value is None:
            raise TypeError("value must be bytes, not None (use delete)")
        if r is not None and not lww:
            raise ValueError("r applies to an lww put only (its read); a plain put reads nothing")
        if if_context is not None or if_absent:
            request = self._cas_request(key, value, if_context, if_absent, context, lww, timeout, ttl)
            return _cas_result(await self._request(*request, timeout, once=True))
        await self._request(*self._write_request(key, value, context, w, dw, timeout, lww, ttl, r), timeout)

    async def ttl(self, key, *, r: int | None = None, timeout: float | None = None) -> float | None:
        return (await self.get(key, r=r, timeout=timeout)).ttl

    async def expire(self, key, ttl: float, *, w: int | None = None, dw: int | None = None,
                     timeout: float | None = None) -> bool:
        found = await self.get(key, timeout=timeout)
        if not found.found:
            return False
        await self.put(key, found.value, context=found.context, w=w, dw=dw, timeout=timeout, ttl=ttl)
        return True

    async def persist(self, key, *, w: int | None = None, dw: int | None = None,
                      timeout: float | None = None) -> bool:
        found = await self.get(key, timeout=timeout)
        if found.ttls is None:
            return False
        await self.put(key, found.value, context=found.context, w=w, dw=dw, timeout=timeout)
        return True

    async def delete(self, key, *, context: bytes | None = None, w: int | None = None, dw: int | None = None,
                     timeout: float | None = None, if_context: bytes | None = None) -> None:
        if if_context is not None:
            request = self._cas_request(key, None, if_context, False, context, False, timeout)
            _cas_result(await self._request(*request, timeout, once=True))
            return
        await self._request(*self._write_request(key, None, context, w, dw, timeout), timeout)

    def scan(self, prefix: bytes = b"", limit: int | None = None, *, cursor: bytes | None = None,
             page_size: int = 1000, max_bytes: int = 1 << 20, timeout: float | None = None):
        """As Client.scan, for ``async for``."""
        from dynafast import bulk

        walk = bulk.new_walk(prefix, limit, page_size, max_bytes, cursor)
        return bulk.AsyncScan(self, walk, self.timeout if timeout is None else timeout)

    async def get_many(self, keys, *, r: int | None = None, timeout: float | None = None) -> dict:
        from dynafast import bulk

        requests = [(key, lambda key=key: self._get_request(key, r, timeout)) for key in keys]
        return bulk.get_results(await bulk.run_batch_async(self, requests, timeout))

    async def put_many(self, items, *, w: int | None = None, dw: int | None = None,
                       timeout: float | None = None) -> dict:
        from dynafast import bulk

        return bulk.put_results(await bulk.run_batch_async(self, bulk.put_items(self, items, w, dw, timeout), timeout))

    async def acquire(self, name, *, ttl: float = 10.0, wait: float = 0.0,
                      timeout: float | None = None) -> LockToken:
        holder = uuid.uuid4().hex
        deadline = time.monotonic() + wait
        attempt = 0
        while True:
            sent = time.monotonic()
            reply, error = None, None
            try:
                reply = await self._request(*self._lock_request(name, holder, ttl, timeout=timeout), timeout,
                                            once=True)
                if reply.granted:
                    return LockToken(_as_bytes("name", name), holder, reply.fencing, ttl, sent + ttl)
            except _LOCK_RETRY as exc:
                error = exc
            left = deadline - time.monotonic()
            if left <= 0:
                if reply is None:
                    raise error
                raise LockHeld(f"lock {name!r} is held by another holder ({reply.remaining_ms} ms of its lease "
                               "left)", remaining=reply.remaining_ms / 1000.0)
            await asyncio.sleep(_lock_pause(reply, attempt, left))
            attempt += 1

    async def release(self, token: LockToken, *, timeout: float | None = None) -> bool:
        request = self._lock_request(token.name, token.holder, token.ttl, True, token.fencing, timeout)
        return (await self._request(*request, timeout, once=True)).granted

    @contextlib.asynccontextmanager
    async def lock(self, name, *, ttl: float = 10.0, wait: float = 0.0, timeout: float | None = None):
        """As Client.lock, as an async context manager."""
        token = await self.acquire(name, ttl=ttl, wait=wait, timeout=timeout)
        try:
            yield token
        finally:
            try:
                await self.release(token, timeout=timeout)
            except DynafastError:
                pass  # the lease expires by itself

    async def status(self, address: str | None = None) -> dict:
        addresses = [address] if address else self._routing.ring_sources()
        last = None
        for addr in addresses:
            try:
                return await self._call(addr, Msg.STATUS, (), self.timeout)
            except (Unavailable, ProtocolError) as exc:
                last = exc
        raise _no_answer(last)

    async def leave(self, node_id: str | None = None, *, address: str | None = None,
                    retry_for: float = 15.0) -> None:
        """As ``Client.leave``."""
        address = address or self._routing.seeds[0]
        pauses = _leave_pauses(time.monotonic() + retry_for)
        while True:
            try:
                await self._call(address, Msg.LEAVE, Leave(node_id), self.timeout)
                return
            except Unavailable as exc:
                pause = None if isinstance(exc, NotSent) else next(pauses, None)
                if pause is None:
                    raise
                await asyncio.sleep(pause)

    async def close(self) -> None:
        self._closed = True
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def __aenter__(self):
        return await self.connect()

    async def __aexit__(self, *exc):
        await self.close()
