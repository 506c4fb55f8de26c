"""Request coordination: a node's side of client gets, puts and deletes, and of the replica calls they make.

The quorum rules live in the I/O-free state machines of ``coordinator``; this module routes a request
(``preflist``), forwards it when this node holds no replica of the key, stamps the new version, carries out the
machines' sends over the transport, keeps deadlines, answers the client, repairs stale replicas after a read,
and hands fully acknowledged deletes to the reaper. It also bounds siblings where a version is stamped (a put
that would leave more than ``max_siblings`` is refused), and carries out the writes that must first read what
they replace: last-write-wins puts and deletes without a context.

Ports: the node's config and actor, a membership view (ring, next ring, down set, addresses, mark up/down), the
vnodes, durability, the transport and the clock. Nothing here knows the Node.
"""
from __future__ import annotations

import asyncio
import functools
import logging

from dynafast.cluster import expiry
from dynafast.cluster.coordinator import GetCoordinator, PutCoordinator
from dynafast.cluster.durability import durable_reply
from dynafast.cluster.ports import peer_failed
from dynafast.cluster import preflist
from dynafast.cluster.preflist import Routes
from dynafast.errors import (CorruptionError, DynafastError, KeyTooLarge, NotSent, ProtocolError, QuorumNotMet,
                             TooManySiblings, Unavailable, ValueTooLarge)
from dynafast.net.deadlines import DeadlineWheel
from dynafast.net.messages import Msg, parser

log = logging.getLogger("dynafast.requests")

# Looked up once: an enum member lookup costs more than the rest of a small handler.
_GET, _PUT, _DELETE = int(Msg.GET), int(Msg.PUT), int(Msg.DELETE)
_PUT_REPLY, _DELETE_REPLY = int(Msg.PUT_REPLY), int(Msg.DELETE_REPLY)
_GET_REPLY, _REPLICA_GET_REPLY = int(Msg.GET_REPLY), int(Msg.REPLICA_GET_REPLY)
_REPLICA_PUT_REPLY = int(Msg.REPLICA_PUT_REPLY)
_REPLICA_GET, _REPLICA_PUT = int(Msg.REPLICA_GET), int(Msg.REPLICA_PUT)

_MARK = expiry.MARK  # values that begin with it are envelopes (a TTL, or an escaped plain value)
# A replica's reply is checked as its record before it counts (a lying or broken peer's is that replica failing).
_REPLICA_PUT_REPLY_RECORD = parser(Msg.REPLICA_PUT_REPLY)
_REPLICA_GET_REPLY_RECORD = parser(Msg.REPLICA_GET_REPLY)
_REPLACE = (True,)  # REPLICA_PUT's last field for a one-round lww put: store only what covers what is held

_SIBLING_WARNING_EVERY = 10.0  # seconds between log lines about keys with many siblings


def _check_sizes(config, key: bytes, value: bytes | None = None) -> None:
    if len(key) > config.max_key_size:
        raise KeyTooLarge(f"key of {len(key)} bytes is over the limit of {config.max_key_size}")
    if value is not None and len(value) > config.max_value_size:
        raise ValueTooLarge(f"value of {len(value)} bytes is over the limit of {config.max_value_size}")


def _ms(timeout_ms, default: float) -> float:
    if timeout_ms is None:
        return default
    if not isinstance(timeout_ms, int) or timeout_ms <= 0:
        raise ProtocolError("timeout must be a positive number of milliseconds")
    return timeout_ms / 1000.0


def _quorum(value, default: int, name: str, n: int) -> int:
    if value is None:
        return default
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= n:
        raise ProtocolError(f"{name} must be an integer in 0..{n}")
    return value


def _key_text(key: bytes) -> str:
    return repr(key) if len(key) <= 64 else f"{key[:64]!r}... ({len(key)} bytes)"


def _read_result(machine):
    return machine.result


def _answer_when_durable(answer, reply, synced):
    if answer.done():
        return
    exc = synced.exception() if not synced.cancelled() else asyncio.CancelledError()
    if exc is not None:
        log.error("durable write failed: %s", exc)
        answer.set_exception(exc)
    else:
        answer.set_result(reply)


def _replica_reply(call, expected: int, record):
    """The record of a replica call's reply (``call`` is done and did not fail); ProtocolError when it is not a
    reply of type ``expected`` with fields that fit."""
    msg_type, fields = call.result()
    if msg_type != expected:
        raise ProtocolError(f"answered with a message of type {msg_type}, not {expected}")
    return record(fields)


def _ignore_result(call):
    if not call.cancelled():
        call.exception()


class RequestCoordinator:
    """Coordinates client requests and serves replica requests for this node."""

    def __init__(self, *, config, actor: bytes, actors, versions, membership, ownership, vnodes, durability,
                 transport, clock, reaper=None, repairing=frozenset()):
        self.config = config
        self.me = config.node_id
        self.actor = actor
        self.actors = actors  # fresh actors for keys this node holds no copy of
        self.Siblings = versions.Siblings
        self.versions = versions
        self.membership = membership
        self.ownership = ownership
        self.vnodes = vnodes
        self.durability = durability
        self.transport = transport
        self.clock = clock
        self.reaper = reaper
        # Partitions this node repairs after amnesia: its "not found" there may be a write it forgot.
        self.repairing = repairing
        self.routes = Routes(self.me, config.n)
        self.deadlines: DeadlineWheel | None = None
        self.loop = None  # the serving loop (asking asyncio for it per request costs a system call)
        self.read_repairs = 0
        self.replica_gets = 0  # replica calls served: what a coordinator's quorum costs its peers
        self.replica_puts = 0
        # Counting siblings costs a list; len() of the stored object (every version, tombstones too) is an upper
        # bound that costs nothing, so the count is taken only above the lower of the two limits.
        self.sibling_check = min(config.siblings_warn, config.max_siblings)
        self.sibling_warnings = 0
        self.sibling_reads = 0  # client reads that returned more than one value
        self.siblings_refused = 0
        self._next_sibling_warning = float("-inf")
        # Keys with a one-round lww put of ours under way: another lww put of such a key reads first. Stamped on
        # our copy, it would descend from the first put's version, which is not acknowledged yet and may not
        # cover what the refusing replicas hold, and the first put's second round would then take it for the
        # write that replaced it.
        self._replacing: dict[bytes, int] = {}
        # The one-round put and RESP's quorum read in C where the node's store allows (``_core.lane.Replaces``
        # and ``Reads``; None: the general path).
        self.replaces = None
        self.reads = None

    def start(self, loop) -> None:
        self.deadlines = DeadlineWheel(loop)
        self.loop = loop

    def _route(self, key):
        membership = self.membership
        state = membership.state
        if state is None:
            # Serving starts before a new (or wiped) node has joined: it cannot route anything yet.
            raise Unavailable(f"{self.me} has not joined the cluster yet")
        return self.routes.route(state.ring, membership.down(), key)

    def _address(self, node):
        return self.membership.address_of(node)

    # -- client requests --------------------------------------------------------------------------------------
    # Handlers receive the message's record (``dynafast.net.messages``): field types are checked already; the
    # ranges that depend on this node's configuration are checked here.
    def client_get(self, get):
        key, r, timeout_ms, newest = get
        config = self.config
        _check_sizes(config, key)
        r = _quorum(r, config.r, "r", config.n) or 1
        timeout = config.request_timeout if timeout_ms is None else _ms(timeout_ms, config.request_timeout)
        return self._get(key, r, timeout, (_GET, get), self._newest_answer if newest else None)

    def read_object(self, get):
        """``client_get`` for front ends that resolve siblings their own way (RESP picks the newest): the reply's
        fields are the merged object itself (a Siblings, None when not found) when this node coordinates; a key
        it holds no replica of is forwarded, and the reply is the other node's GET_REPLY fields (only the newest
        value when ``get.newest``)."""
        key, r, timeout_ms, _ = get
        config = self.config
        _check_sizes(config, key)
        r = _quorum(r, config.r, "r", config.n) or 1
        timeout = config.request_timeout if timeout_ms is None else _ms(timeout_ms, config.request_timeout)
        if self.reads is not None:
            return self.reads(key, r, timeout, (_GET, get))
        return self._read_object(key, r, timeout, (_GET, get))

    def _read_object(self, key, r, timeout, request):
        return self._get(key, r, timeout, request, _read_result)

    def _take_over_read(self, partition, key, r, left, targets, matched, local, answer, answered):
        """The general path's request for the rest of a read the read lane started (``_core.lane.Reads``): its
        machine as it stands, ``matched`` having answered with our copy ``local`` (this node first) and the other
        ``targets`` still to answer, ``left`` seconds before its deadline. ``answer``: the future its caller waits
        on (None when it was answered at once); ``answered``: whether it was."""
        machine = GetCoordinator([(node, None) for node in targets], r=r, versions=self.versions)
        machine.start()
        for node in matched:
            machine.on_reply(node, local)
        state = _Request(self.loop, machine, partition, key, None, None, _GET_REPLY)
        state.on_answer = _read_result
        state.on_finish = self._read_repair
        return state.continues(answer, answered, self.deadlines, left)

    def read_local(self, key):
        """``read_object`` without a quorum machine when this node is the key's one replica (N=1, and the key's
        primary is this node and up): the reply is then exactly this node's copy, which is all a quorum read
        could see. None when the key is not read that way here (use ``read_object``)."""
        partition = self._local_partition(key)
        if partition is None:
            return None
        _check_sizes(self.config, key)
        return (_GET_REPLY, self.vnodes.get(partition, key))  # CorruptionError: the client's error

    def _local_partition(self, key):
        """The key's partition when this node is its one replica (N=1, its primary is this node and up), else
        None: then a local read or write is all a quorum request would do."""
        if self.config.n != 1:
            return None
        partition, _, targets, _ = self._route(key)
        if targets is None or targets[0][1] is not None or targets[0][0] != self.me:
            return None
        return partition

    def replace_local(self, key, value, w=None, dw=None):
        """A last-write-wins put of ``value`` (no TTL) done in one step when this node is the key's one replica:
        read what is stored, supersede all of it, append. The same result as ``_read_then_write`` there (whose
        read and write would see the same copy), without a quorum machine, a deadline or a second read of the
        key. The PUT_REPLY at once with ``dw`` 0, else a future of it once the write is durable; None when the
        key is not written that way here (a cluster changing shape sends writes to new replicas too)."""
        if self.membership.next_ring is not None:
            return None
        partition = self._local_partition(key)
        if partition is None:
            return None
        config = self.config
        _check_sizes(config, key, value)
        dw = _quorum(dw, min(config.dw, _quorum(w, config.w, "w", 1) or 1), "dw", 1)  # _write's rules, N=1
        if value.startswith(_MARK):
            value = expiry.wrap(value)  # escaped, as client_put stores it
        try:
            existing = self.vnodes.get(partition, key)
        except CorruptionError:
            existing = None  # what we held is lost: the write replaces it, as in _put
        actor = self._stamping_actor(existing)
        now = int(self.clock.wall())
        incoming = self.Siblings.new(value, None if existing is None else existing.clock())
        stored = incoming.update(existing, actor, now).prune(now)
        if len(stored) > self.sibling_check:
            self._check_siblings(key, stored)
        self.vnodes.write(partition, key, stored, previous=existing, raw=stored.to_bytes())
        reply = (_PUT_REPLY, (self.membership.state.ring.version,))
        if not dw:
            return reply
        synced = self.durability.waiter()
        answer = synced.get_loop().create_future()
        synced.add_done_callback(functools.partial(_answer_when_durable, answer, reply))
        return answer

    def client_put(self, put):
        key, value, context, w, dw, timeout_ms, lww, ttl_ms, r = put
        _check_sizes(self.config, key, value)
        if ttl_ms is not None or value.startswith(_MARK):
            # The expiry is absolute, from this coordinator's clock, and from now on part of the version.
            value, ttl_ms = self._with_expiry(value, ttl_ms)
        return self._write(key, value, context, w, dw, timeout_ms, _PUT_REPLY, (_PUT, put), lww, ttl_ms, r)

    def _with_expiry(self, value, ttl_ms):
        """The stored form of a put's value (``expiry``), and the seconds its TTL lasts (None: no TTL)."""
        if ttl_ms is None:
            return expiry.wrap(value), None
        if not isinstance(ttl_ms, int) or not 0 < ttl_ms <= expiry.MAX_EXPIRY // 2:
            raise ProtocolError("ttl_ms must be a positive number of milliseconds")
        return expiry.wrap(value, int(self.clock.wall() * 1000) + ttl_ms), ttl_ms / 1000.0

    def client_delete(self, delete):
        key, context, w, dw, timeout_ms = delete
        _check_sizes(self.config, key)
        # Without a context a tombstone would only add a sibling: delete what a read finds instead.
        return self._write(key, None, context, w, dw, timeout_ms, _DELETE_REPLY, (_DELETE, delete), not context)

    def _write(self, key, value, context, w, dw, timeout_ms, reply_type, request, read_first, ttl=None, r=None):
        config = self.config
        w = _quorum(w, config.w, "w", config.n) or 1
        dw = _quorum(dw, min(config.dw, w), "dw", config.n)
        if dw > w:
            raise ProtocolError(f"dw ({dw}) must not exceed w ({w})")
        timeout = config.request_timeout if timeout_ms is None else _ms(timeout_ms, config.request_timeout)
        if read_first:
            r = _quorum(r, config.r, "r", config.n) or 1
            if value is not None:
                answer = self._replace(key, value, context, r, w, dw, timeout, reply_type, request, ttl)
                if answer is not None:
                    return answer
            return self._read_then_write(key, value, context, r, w, dw, timeout, reply_type, request, ttl)
        incoming = self.Siblings.new(value, context or None)
        return self._put(key, incoming, w, dw, timeout, reply_type, request, ttl)

    def _replace(self, key, value, context, r, w, dw, timeout, reply_type, request, ttl):
        """A last-write-wins put in one round, where one can stand for ``_read_then_write``; None where not.

        The version is stamped on this node's own copy (its context merged with ``context``), and every replica
        is asked to store it only if it covers all that replica holds of the key (``replace_if_covering``). A
        replica holding a version our copy has not received (a write acknowledged elsewhere a moment ago)
        refuses. When the refusals leave fewer than W replicas that stored it, ``_after_refusal`` reads the key
        and writes the same version again with the read's clock. So an acknowledged put was stored by W
        primaries that held nothing it does not supersede, or covers what R replicas held: with W >= R, any
        write acknowledged before it (by W_old replicas, R + W_old > N) is superseded, as the read of
        ``_read_then_write`` would have had it. Only where every target is a primary, this node among them: a
        stand-in that holds nothing of the key proves nothing, nor does a node repairing after amnesia.
        """
        if w < r:
            return None  # W acceptances would not meet every write quorum that R replies meet
        if key in self._replacing:
            return None
        if self.replaces is not None and not context and not dw and ttl is None:
            return self.replaces(key, value, r, w, timeout, reply_type)
        return self._replace_general(key, value, context, r, w, dw, timeout, reply_type, ttl)

    def _replace_general(self, key, value, context, r, w, dw, timeout, reply_type, ttl):
        """``_replace`` once its first checks passed: None where one round cannot stand for a read first."""
        partition, _, targets, _ = self._route(key)
        if targets is None or partition in self.repairing:
            return None
        mine = False
        for node, hint_for in targets:
            if hint_for is not None:
                return None
            mine = mine or node == self.me
        if not mine:
            return None
        try:
            existing = self.vnodes.get(partition, key)
        except CorruptionError:
            return None  # what we held is unknown: only a read of the others tells
        actor = self._stamping_actor(existing)
        stored = self._stamp(key, self.Siblings.new(value, self._context_with(context, existing) or None),
                             existing, actor)
        self._replacing[key] = self._replacing.get(key, 0) + 1
        try:
            return self._replicate(partition, targets, (), key, stored, existing, w, dw, timeout, reply_type, ttl,
                                   fallback=self._second_round(key, stored, actor, r, w, dw, timeout, reply_type,
                                                               ttl),
                                   on_done=functools.partial(self._replaced, key))
        except BaseException:
            self._replaced(key)
            raise

    def _second_round(self, key, stored, actor, r, w, dw, timeout, reply_type, ttl):
        """A one-round put's fallback: ``_after_refusal`` within what is left of ``timeout`` from now."""
        started = self.clock.monotonic()

        def after_refusal():
            remaining = max(timeout - (self.clock.monotonic() - started), 0.001)
            return self._after_refusal(key, stored, actor, r, w, dw, remaining, reply_type, ttl)

        return after_refusal

    def _take_over_replace(self, partition, key, stored, actor, r, w, left, reply_type, targets, acked, answer,
                           answered):
        """The general path's request for the rest of a one-round put the replace lane started
        (``_core.lane.Replaces``, dw 0, no TTL): its machine as it stands, ``acked`` having stored the write (this
        node first) and the other ``targets`` still to answer, ``left`` seconds before its deadline. ``answer``:
        the future its caller waits on (None when it was answered at once); ``answered``: whether it was."""
        machine = PutCoordinator([(node, None) for node in targets], w=w, dw=0)
        machine.start()
        for node in acked:
            machine.on_ack(node, False)
        state = _Request(self.loop, machine, partition, key, stored, None, reply_type)
        state.on_answer = self._write_answer
        state.fallback = self._second_round(key, stored, actor, r, w, 0, left, reply_type, None)
        if not answered:
            state.on_done = functools.partial(self._replaced, key)
        return state.continues(answer, answered, self.deadlines, left)

    def _replaced(self, key) -> None:
        """A one-round lww put of ``key`` has its answer (its second round's, if it took one)."""
        left = self._replacing.pop(key, 1) - 1
        if left > 0:
            self._replacing[key] = left

    async def _after_refusal(self, key, stored, actor, r, w, dw, timeout, reply_type, ttl):
        """A one-round lww put that too few replicas stored: read the key, then write the same version (its dot
        unchanged) with the read's clock, which covers what the refusing replicas hold.

        Not a new version: the first round's copies may have been read already, and a write made with that
        read's context must replace this put's value for good. A second version of the same value would not
        be covered by that context, and the value would come back as its sibling.
        """
        dot = stored.clock().get(actor)
        started = self.clock.monotonic()
        if self._route(key)[2] is None:  # the read would be forwarded, and the put with it, as a new version
            raise Unavailable("the key's replicas changed during the write; it may have been written")
        try:
            answer = self._get(key, r, timeout, None, _read_result)
            _, seen = answer if type(answer) is tuple else await answer
        except QuorumNotMet as exc:
            raise QuorumNotMet(f"written on fewer than w replicas, and the read that would cover the others "
                               f"failed ({exc})", replied=exc.replied, required=exc.required) from None
        kept = None if seen is None else seen.only(actor, dot)
        if kept is None:
            if seen is None:
                kept = stored  # no replica read holds anything (our copy was lost meanwhile): as it was
            elif seen.clock().get(actor) >= dot:
                return (reply_type, self._write_answer(None))  # a write that saw it replaced it already
            else:
                kept = seen.sync(stored).only(actor, dot)  # our copy lost it meanwhile: with what the read saw
        partition, _, targets, spares = self._route(key)
        if targets is None:
            raise Unavailable("the key's replicas changed during the write; it may have been written")
        existing = self.vnodes.get_intact(partition, key)
        if existing is not None:
            kept = kept.sync(existing)  # what reached our copy since the read stays
        remaining = max(timeout - (self.clock.monotonic() - started), 0.001)
        answer = self._replicate(partition, targets, spares, key, kept, existing, w, dw, remaining, reply_type,
                                 ttl)
        return answer if type(answer) is tuple else await answer

    async def _read_then_write(self, key, value, context, r, w, dw, timeout, reply_type, request, ttl=None):
        """A last-write-wins put, or a delete without a context: read the key (R replicas, this node's copy
        among them), then write with the read's context, so the write supersedes every version the read saw.

        Versions the read did not see (written meanwhile, or held only by replicas that did not answer) stay
        as siblings: this narrows the window of a read-modify-write to one coordinator step, it is no lock.
        """
        partition, primaries, targets, _ = self._route(key)
        if targets is None:
            return await self._forward(primaries, request, timeout)
        started = self.clock.monotonic()
        try:
            answer = self._get(key, r, timeout, request, _read_result)
            _, seen = answer if type(answer) is tuple else await answer
        except QuorumNotMet as exc:
            raise QuorumNotMet(f"nothing written: the read this write needs first failed ({exc})",
                               replied=exc.replied, required=exc.required) from None
        if value is None and (seen is None or not seen.live_values()):
            return (reply_type, self._write_answer(None))  # nothing to delete
        incoming = self.Siblings.new(value, self._context_with(context, seen) or None)
        # One deadline for both steps: the client waits for the whole request, not for each.
        remaining = max(timeout - (self.clock.monotonic() - started), 0.001)
        answer = self._put(key, incoming, w, dw, remaining, reply_type, request, ttl)
        return answer if type(answer) is tuple else await answer

    def _context_with(self, context, seen):
        """The request's ``context`` (bytes, maybe empty) merged with the clock of ``seen`` (None: nothing)."""
        if seen is None:
            return context
        if not context:
            return seen.context()
        return self.versions.VClock.from_bytes(context).merge(seen.clock()).to_bytes()

    async def _forward(self, primaries, request, timeout):
        """This node holds no replica of the key: hand the request to one that does."""
        msg_type, fields = request
        down = self.membership.down()
        order = [p for p in primaries if p not in down] + [p for p in primaries if p in down]
        last = None
        for node in order:
            try:
                # The replica answers within `timeout` (its own deadline); allow for the extra hop.
                return await self.transport.call(self._address(node), msg_type, fields, timeout + 0.5)
            except Exception as exc:  # noqa: BLE001 - filtered just below
                if not peer_failed(exc):
                    raise
                self.membership.mark_down(node, exc)
                if msg_type != Msg.GET and not isinstance(exc, NotSent):
                    # It may have reached that replica (a timeout, a connection lost after it was written), and
                    # been coordinated there: sent on to another, it would be written twice, as two versions.
                    raise
                last = exc
        raise Unavailable(f"no replica of the key answered: {last}")

    # put -------------------------------------------------------------------------------------------------
    def _stamping_actor(self, existing) -> bytes:
        """The actor to stamp a write of a key with, given our copy of it (kv679).

        Our actors' writes land in our copy first, and a copy only loses counters when it goes as a whole (a
        reap, a drop): so an actor of ours that our copy carries is one whose last counter for the key we
        know. Any other of our actors may have issued counters that replicas still hold, and starting it again
        at 1 would make them drop the write: a fresh actor cannot collide.
        """
        if existing is not None:
            base = self.actor
            issued = self.actors.issued
            # (Not the conditional writes' actor: those stamp from a quorum read, which our copy may not be in.)
            for actor, _counter, _time in existing.clock().entries():
                if actor == base or issued(actor):
                    return actor
        return self.actors.fresh()

    def _put(self, key, incoming, w, dw, timeout, reply_type, request, ttl=None):
        """``ttl``: seconds until the value expires (for the reaper), None when it does not."""
        partition, primaries, targets, spares = self._route(key)
        if targets is None:
            return self._forward(primaries, request, timeout)
        try:
            existing = self.vnodes.get(partition, key)
            damaged = False
        except CorruptionError:
            existing, damaged = None, True  # what we held is lost: as if we held nothing (the write replaces it)
        # Stamp the new version and write it locally in the same loop step as the read: no other write of
        # this key can slip in between.
        stored = self._stamp(key, incoming, existing, self._stamping_actor(existing))
        return self._replicate(partition, targets, spares, key, stored, existing, w, dw, timeout, reply_type, ttl,
                               damaged)

    def _stamp(self, key, incoming, existing, actor):
        """The version ``incoming`` makes of our copy ``existing``, stamped by ``actor``; TooManySiblings before
        anything is written when it would leave too many."""
        now = int(self.clock.wall())
        # Pruned as Riak does (by size and age): clocks gain an entry per coordinator incarnation.
        stored = incoming.update(existing, actor, now).prune(now)
        if len(stored) > self.sibling_check:
            self._check_siblings(key, stored)
        return stored

    def _replicate(self, partition, targets, spares, key, stored, existing, w, dw, timeout, reply_type, ttl,
                   damaged=False, fallback=None, on_done=None):
        """Write ``stored`` (which descends from ``existing``, our copy) here and on the targets: the reply once
        W replicas hold it. ``fallback``: a one-round lww put (``_replace``): the replicas store it only if it
        covers what they hold, and when too few did, what ``fallback()`` answers is the answer. ``on_done()``
        runs once the answer is known (the fallback's included)."""
        machine = PutCoordinator(targets, spares, w=w, dw=dw)
        state = _Request(self.loop, machine, partition, key, stored, stored.to_bytes(),
                         reply_type)
        state.previous = existing
        state.fallback = fallback
        state.on_done = on_done
        state.on_answer = self._write_answer
        if self.reaper is not None and len(targets) >= self.config.n:
            if stored.is_deleted():
                state.on_all_acked = self.reaper.schedule
            elif ttl is not None:
                # Reaped as a tombstone once it has expired (the reaper checks it is still all expired then).
                state.on_all_acked = functools.partial(self.reaper.schedule,
                                                       delay=ttl + self.config.tombstone_delay)
        self._send_puts(state, machine.start())
        next_ring = self.membership.next_ring
        if next_ring is not None:
            # The cluster is changing shape: new replicas get every write while their vnode streams in.
            sent = {node for node, _ in targets}
            for node in preflist.primaries(next_ring, partition, self.config.n):
                if node not in sent and node != self.me:
                    fields = (partition, key, state.raw, False, None)
                    self.transport.request_then(self._address(node), _REPLICA_PUT, fields,
                                                self.config.peer_timeout, _ignore_result)
        if damaged:
            self._repair_from_replicas(partition, key, targets, spares)
        return state.arm(self.deadlines, timeout)

    def _repair_from_replicas(self, partition, key, targets, spares):
        """Our copy of ``key`` was damaged and this write replaced it with the write alone: read it from every
        replica in the background, so that read repair brings back here the versions only they still hold."""
        machine = GetCoordinator(targets, spares, r=1, versions=self.versions)
        state = _Request(asyncio.get_running_loop(), machine, partition, key, None, None, Msg.GET_REPLY)
        state.on_finish = self._read_repair
        self._send_gets(state, machine.start())
        if not state.finished:
            state.deadline = self.deadlines.add(self.config.request_timeout, state)

    def _check_siblings(self, key, stored):
        """Refuse a put that would leave more than ``max_siblings`` live siblings; warn above ``siblings_warn``."""
        config = self.config
        live = len(stored.live_values())
        if live > config.max_siblings:
            self.siblings_refused += 1
            raise TooManySiblings(
                f"key {_key_text(key)} would have {live} siblings, over the limit of {config.max_siblings}: "
                f"they come from writes without a context. Read the key, merge its values and write the result "
                f"with the read's context (or put with lww=True to replace them all)",
                siblings=live, limit=config.max_siblings)
        if live > config.siblings_warn:
            self.sibling_warnings += 1
            now = self.clock.monotonic()
            if now >= self._next_sibling_warning:
                # Rate-limited: a client writing blindly in a loop would otherwise fill the log.
                self._next_sibling_warning = now + _SIBLING_WARNING_EVERY
                log.warning("key %s has %d siblings (warning above %d, puts refused above %d): its clients "
                            "write without the context of a read; %d such warnings so far",
                            _key_text(key), live, config.siblings_warn, config.max_siblings,
                            self.sibling_warnings)

    def _send_puts(self, state, sends):
        for send in sends:
            if send.node == self.me:
                if send.hint_for is None:
                    self.vnodes.write(state.partition, state.key, state.obj, previous=state.previous,
                                      raw=state.raw)
                else:
                    self.vnodes.merge_in(state.partition, state.key, state.obj, send.hint_for)
                if send.durable:
                    self.durability.waiter().add_done_callback(functools.partial(self._local_durable, state))
                else:
                    state.machine.on_ack(self.me, False)
            else:
                fields = (state.partition, state.key, state.raw, send.durable, send.hint_for)
                if state.fallback is not None:
                    fields += _REPLACE
                self.transport.request_then(self._address(send.node), _REPLICA_PUT, fields,
                                            self.config.peer_timeout,
                                            functools.partial(self._put_replied, state, send.node))
        state.settle()

    def _local_durable(self, state, synced):
        exc = synced.exception() if not synced.cancelled() else asyncio.CancelledError()
        if exc is not None:
            # A failed fsync fails this replica's ack, not the node.
            log.error("durable write failed: %s", exc)
            self._send_puts(state, state.machine.on_failure(self.me, exc))
            return
        state.machine.on_ack(self.me, True)
        state.settle()

    def _put_replied(self, state, node, call):
        machine = state.machine
        if call.cancelled():
            self._send_puts(state, machine.on_failure(node))
            return
        exc = call.exception()
        if exc is None:
            self.membership.mark_up(node)
            try:
                durable, stored = _replica_reply(call, _REPLICA_PUT_REPLY, _REPLICA_PUT_REPLY_RECORD)
            except ProtocolError as exc:
                log.warning("replica put on %s: %s", node, exc)
                self._send_puts(state, machine.on_failure(node, exc))
                return
            if state.fallback is not None and stored is not True:
                # It holds a version our copy has not received (or it cannot tell, or it predates replace):
                # not one of the W that stored the write.
                self._send_puts(state, machine.on_failure(node))
                return
            machine.on_ack(node, durable)
            state.settle()
            return
        if peer_failed(exc):
            self.membership.mark_down(node, exc)
        else:
            log.warning("replica put on %s failed: %s", node, exc)
        self._send_puts(state, machine.on_failure(node, exc))

    def _write_answer(self, machine):
        return (self.membership.state.ring.version,)

    # get -------------------------------------------------------------------------------------------------
    def _get(self, key, r, timeout, request, on_answer=None):
        """A quorum read. ``on_answer(machine)`` makes the reply's fields (default: the client's GET_REPLY)."""
        partition, primaries, targets, spares = self._route(key)
        if targets is None:
            return self._forward(primaries, request, timeout)
        machine = GetCoordinator(targets, spares, r=r, versions=self.versions)
        state = _Request(self.loop, machine, partition, key, None, None, _GET_REPLY)
        state.on_answer = on_answer or self._get_answer
        state.on_finish = self._read_repair
        self._send_gets(state, machine.start())
        return state.arm(self.deadlines, timeout)

    def _newest_answer(self, machine):
        """GET_REPLY fields with the newest live value only (last write wins; the context covers every sibling)
        and its exact expiry, if it has one."""
        result = machine.result
        if result is None:
            return self._get_answer(machine)
        live = (result if len(result) == 1 else result.lww()).live_values()
        answer = self._get_answer(machine, live)
        at = expiry.expires_at(live[0]) if live and answer[0] else None
        if at is None:
            return answer
        return answer[:3] + (answer[3] if len(answer) > 3 else None, [at])

    def _get_answer(self, machine, live=None):
        result = machine.result
        version = self.membership.state.ring.version  # lets a client see that its ring is stale
        if result is None:
            return ([], b"", version)
        if live is None:
            live = result.live_values()
        for value in live:
            if value.startswith(_MARK):
                # Envelopes: expired values read as deleted, the others are unwrapped.
                values, ttls = expiry.visible(live, int(self.clock.wall() * 1000))
                if len(values) > 1:
                    self.sibling_reads += 1
                if ttls is not None:
                    return (values, result.context(), version, ttls)
                return (values, result.context(), version)
        # Concurrent writes of the same bytes (a retried blind write) are one value to the application.
        values = list(dict.fromkeys(live))
        if len(values) > 1:
            self.sibling_reads += 1  # siblings the application must merge: counted for /metrics
        return (values, result.context(), version)

    def _send_gets(self, state, sends):
        for send in sends:
            if send.node == self.me:
                try:
                    siblings = self.vnodes.get(state.partition, state.key, send.hint_for)
                except CorruptionError as exc:
                    # A failed replica, not "not found" (which would outvote the others); read repair
                    # replaces the damaged record with what the others hold.
                    self._send_gets(state, state.machine.on_failure(self.me, exc))
                    continue
                weak = siblings is None and send.hint_for is None and state.partition in self.repairing
                state.machine.on_reply(self.me, siblings, weak)
            else:
                fields = (state.partition, state.key, send.hint_for)
                self.transport.request_then(self._address(send.node), _REPLICA_GET, fields,
                                            self.config.peer_timeout,
                                            functools.partial(self._get_replied, state, send.node))
        state.settle()

    def _get_replied(self, state, node, call):
        machine = state.machine
        exc = None if call.cancelled() else call.exception()
        if call.cancelled() or exc is not None:
            if peer_failed(exc):
                self.membership.mark_down(node, exc)
            self._send_gets(state, machine.on_failure(node, exc))
            return
        self.membership.mark_up(node)
        try:
            raw, repairing = _replica_reply(call, _REPLICA_GET_REPLY, _REPLICA_GET_REPLY_RECORD)
        except ProtocolError as exc:
            log.warning("replica get on %s: %s", node, exc)
            self._send_gets(state, machine.on_failure(node, exc))
            return
        try:
            siblings = None if raw is None else self.Siblings.from_bytes(raw)
        except DynafastError as exc:
            log.error("unreadable object from %s: %s", node, exc)
            # Damaged on the way or on its disk: either way read repair should write it a good copy.
            self._send_gets(state, machine.on_failure(node, CorruptionError(str(exc))))
            return
        # A replica repairing after amnesia says so with its "not found": that may be a write it forgot.
        machine.on_reply(node, siblings, siblings is None and repairing is True)
        state.settle()

    def _read_repair(self, state):
        merged, stale = state.machine.repairs()
        if merged is None:
            return
        raw = None
        for node in stale:
            self.read_repairs += 1
            if node == self.me:
                self.vnodes.merge_in(state.partition, state.key, merged)
                continue
            raw = raw or merged.to_bytes()
            fields = (state.partition, state.key, raw, False, None)
            self.transport.request_then(self._address(node), _REPLICA_PUT, fields, self.config.peer_timeout,
                                        _ignore_result)

    # -- replica requests from coordinators ----------------------------------------------------------------
    def replica_get(self, request):
        partition, key, hint_for = request  # unpacked once: this runs for most replica calls
        self.replica_gets += 1
        self.ownership.check_member(self.membership, partition, hint_for)
        # A damaged record raises CorruptionError: the coordinator counts this replica as failed and repairs it.
        raw = self.vnodes.get_raw(partition, key, hint_for)
        if raw is None and hint_for is None and partition in self.repairing:
            return (_REPLICA_GET_REPLY, (None, True))
        return (_REPLICA_GET_REPLY, (raw,))

    def replica_put(self, request):
        # A damaged record counts as absent for a merge (the incoming object replaces it), as unknown for replace.
        partition, key, raw, durable, hint_for, replace = request
        self.replica_puts += 1
        self.ownership.check_member(self.membership, partition, hint_for)
        incoming = self.Siblings.from_bytes(raw)
        if replace:
            # A replica repairing after amnesia cannot tell what it forgot: it stores nothing, and the coordinator
            # reads instead.
            if (hint_for is None and partition in self.repairing) \
                    or not self.vnodes.replace_if_covering(partition, key, incoming, raw, hint_for):
                return (_REPLICA_PUT_REPLY, (False, False))
            if durable:
                return durable_reply(self.durability, Msg.REPLICA_PUT_REPLY, (True, True))
            return (_REPLICA_PUT_REPLY, (False, True))
        self.vnodes.merge_in(partition, key, incoming, hint_for)
        if durable:
            return durable_reply(self.durability, Msg.REPLICA_PUT_REPLY)
        return (_REPLICA_PUT_REPLY, (False,))


class _Request:
    """Glue between one state machine and the client's answer: deadline, answer, completion hooks.

    The answer future is made only when the handler has to return before the machine is done: a request
    answered within the handler (a local read) returns its reply directly.
    """

    __slots__ = ("loop", "machine", "partition", "key", "obj", "raw", "reply_type", "answer", "answered",
                 "reply", "on_answer", "on_finish", "finished", "previous", "on_all_acked", "deadline", "fallback",
                 "rescue", "on_done")

    def __init__(self, loop, machine, partition, key, obj, raw, reply_type):
        self.loop = loop
        self.machine = machine
        self.partition = partition
        self.key = key
        self.obj = obj
        self.raw = raw
        self.reply_type = reply_type
        self.answer = None
        self.answered = False
        self.reply = None
        self.on_answer = None
        self.on_finish = None
        self.finished = False
        self.previous = None
        self.on_all_acked = None
        self.deadline = None
        self.fallback = None  # what answers instead when the machine fails (a one-round lww put's second round)
        self.rescue = None  # the future of that answer
        self.on_done = None  # called once the answer is known

    def arm(self, deadlines: DeadlineWheel, timeout: float):
        """What the handler returns: the reply when the machine is done already, else a future of it."""
        if not self.finished:
            self.deadline = deadlines.add(timeout, self)  # the request itself is the callback
        if self.answered:
            if self.rescue is not None:
                return self.rescue
            if self.machine.error is not None:
                raise self.machine.error
            return self.reply
        self.answer = self.loop.create_future()
        return self.answer

    def continues(self, answer, answered, deadlines: DeadlineWheel, left: float):
        """This request goes on with one a coordinator lane started: ``answer`` is the future its caller waits on
        (None when it was answered at once), ``answered`` whether it was, ``left`` the seconds to its deadline."""
        self.answer = answer
        self.answered = answered
        # Even when it has passed (the wheel runs up to a tick late, and a reply handled in between may be what
        # hands it over): the deadline still answers then.
        self.deadline = deadlines.add(max(left, 0.0), self)
        return self

    def __call__(self):
        """The deadline passed (the deadline wheel calls this, or a coordinator lane that handed this over)."""
        deadline, self.deadline = self.deadline, None
        if deadline is not None:
            DeadlineWheel.cancel(deadline, self)  # when the lane called: its entry in the wheel goes
        if not self.finished:
            self.fallback = None  # no time is left for it
            self.machine.on_deadline()
            self.settle(force_finish=True)

    def settle(self, force_finish=False):
        machine = self.machine
        if self.on_all_acked is not None and machine.finished and machine.ok and not self.finished:
            # Only when every target acked as a primary: then every replica holds the tombstone.
            if machine.primary_acks == len(machine.targets) and not machine.failed:
                self.on_all_acked(self.partition, self.key, self.obj)
            self.on_all_acked = None
        if machine.done and not self.answered:
            self.answered = True
            if machine.error is not None and self.fallback is not None:
                self._fall_back()
                return
            if machine.error is None:
                self.reply = (self.reply_type, self.on_answer(machine) if self.on_answer is not None else ())
            answer = self.answer
            if answer is not None and not answer.done():
                if machine.error is not None:
                    answer.set_exception(machine.error)
                else:
                    answer.set_result(self.reply)
            self._done()
        if not self.finished and (machine.finished or force_finish) and machine.done:
            self.finished = True
            if self.deadline is not None:
                DeadlineWheel.cancel(self.deadline, self)
                self.deadline = None
            if self.on_finish is not None:
                self.on_finish(self)

    def _fall_back(self):
        """The machine failed and ``fallback`` answers instead: its answer is the request's (``rescue``). This
        request is finished: the replicas' late replies change nothing any more."""
        fallback, self.fallback = self.fallback, None
        self.finished = True
        if self.deadline is not None:
            DeadlineWheel.cancel(self.deadline, self)
            self.deadline = None
        self.rescue = self.loop.create_task(fallback())
        self.rescue.add_done_callback(self._rescued)

    def _done(self):
        on_done, self.on_done = self.on_done, None
        if on_done is not None:
            on_done()

    def _rescued(self, rescue):
        self._done()
        answer = self.answer
        if answer is None:  # the handler returned the rescue itself
            return
        if answer.done():  # cancelled: its client went
            if not rescue.cancelled():
                rescue.exception()
        elif rescue.cancelled():
            answer.cancel()
        elif rescue.exception() is not None:
            answer.set_exception(rescue.exception())
        else:
            answer.set_result(rescue.result())
