"""Linearizable conditional writes: single-decree Paxos per key among the key's replicas, as Cassandra's
lightweight transactions do it.

A round, run by whichever node the client asked (the proposer need not hold a replica):

1. PREPARE with a new ballot to the key's primaries. Each replica promises to ignore lower ballots and answers
   with the proposal it accepted last, the ballot it committed last, and its copy of the key (the read is part
   of this step). A quorum of promises is needed; a refusal names a higher ballot, and the round starts again
   above it after a random backoff (contention).
2. If a promise shows an accepted proposal newer than every commit seen, an earlier round may have chosen it
   and not finished: this round proposes and commits that value first, then starts again.
3. Otherwise the key's current state is the merge of the promising replicas' copies. The caller's ``decide``
   evaluates the condition on it and returns the new object (a version stamped on top of that state), or raises
   ConditionFailed: nothing more is sent.
4. PROPOSE the new object with the ballot; a quorum of accepts chooses it.
5. COMMIT: replicas merge the object into their copy of the key (where plain reads see it) and record the
   ballot as committed. The answer waits for a quorum of commits, or the deadline (the value is chosen already).

Why the merged copies hold every chosen value: the last chosen proposal was accepted by a quorum, which meets
the promising quorum, so some promising replica accepted it or something later; either that is newer than all
commits seen (step 2 finishes it) or a later commit was seen, whose value was built on the chosen one (every
proposal after a choice is), and the replica that saw it merged it into its copy. Objects only ever merge, so
committing a value twice, late, or out of order changes nothing.

Each replica keeps per key ``PaxosState`` (promised ballot, accepted ballot and value, committed ballot) in the
node's store under its own prefix (``b"p"`` + partition + key, beside the objects' ``b"o"``), written and
fsync'd before the replica answers.

Across a ring change: each attempt of a round is made for the proposer's ring view (``RingViews``), and acceptors
refuse rounds made for another; a moving partition's Paxos state goes to its new replicas merged from a quorum of
the old ones before the new ring is activated (``paxosmove``).

The first part of this module is I/O-free (the state, the acceptor's rules, the proposer's reading of a quorum
of promises, the CAS condition); ``Paxos`` at the end carries rounds out over the transport.
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
import struct
from typing import NamedTuple

from dynafast.cluster import expiry
from dynafast.cluster import preflist
from dynafast.cluster.ports import peer_failed
from dynafast.errors import ConditionFailed, QuorumNotMet, Timeout, Unavailable
from dynafast.net.messages import Msg, WrongNode, parse

log = logging.getLogger("dynafast.paxos")

PAXOS = b"p"
_PARTITION = struct.Struct(">H")
_STATE = struct.Struct(">qqqB")  # promised, accepted, committed, whether an accepted value follows

NOOP = b""  # a proposal that writes nothing: commits a ballot so that older accepted proposals are done
BACKOFF_BASE = 0.005  # seconds: the first pause after losing to a higher ballot
BACKOFF_CAP = 0.25


def paxos_key(partition: int, key: bytes) -> bytes:
    return PAXOS + _PARTITION.pack(partition) + key


def paxos_prefix(partition: int) -> bytes:
    return PAXOS + _PARTITION.pack(partition)


class RingViews:
    """The ring view of a cluster state: a digest of its ring and, while the cluster changes shape, its next ring.

    A round is made for one view (it picks its acceptors from it), and an acceptor takes part only in rounds made
    for the view it holds itself. That fences the rounds of a proposer that has not learned of a ring change off
    the replicas that have: once a moving partition's old replicas hold the new view, no round of the old one can
    reach them, so the Paxos state read from them for the partition's new replicas (``paxosmove``) is final.
    Worked out once per (ring, next ring) pair."""

    def __init__(self):
        self._rings = (None, None)
        self._view = b""

    def of(self, state) -> bytes:
        if self._rings[0] is not state.ring or self._rings[1] is not state.next_ring:
            h = hashlib.blake2b(state.ring.digest(), digest_size=8)
            if state.next_ring is not None:
                h.update(state.next_ring.digest())
            self._rings = (state.ring, state.next_ring)
            self._view = h.digest()
        return self._view


class PaxosState(NamedTuple):
    """What an acceptor keeps per key. Ballots are positive ints; 0 means none."""

    promised: int = 0
    accepted: int = 0
    accepted_value: bytes | None = None
    committed: int = 0

    def to_bytes(self) -> bytes:
        head = _STATE.pack(self.promised, self.accepted, self.committed, self.accepted_value is not None)
        return head + (self.accepted_value or b"")

    @classmethod
    def from_bytes(cls, raw) -> "PaxosState":
        raw = bytes(raw)
        promised, accepted, committed, has_value = _STATE.unpack_from(raw)
        value = raw[_STATE.size:] if has_value else None
        return cls(promised, accepted, value, committed)


# -- the acceptor's rules: (the state to store or None when unchanged, whether the request was granted) --------
def on_prepare(state: PaxosState, ballot: int) -> tuple[PaxosState | None, bool]:
    if ballot <= state.promised:
        return None, False
    return state._replace(promised=ballot), True


def on_propose(state: PaxosState, ballot: int, value: bytes) -> tuple[PaxosState | None, bool]:
    if ballot < state.promised:
        return None, False
    return state._replace(promised=ballot, accepted=ballot, accepted_value=value), True


def merged(states) -> PaxosState:
    """One acceptor state standing for several (a quorum of a moving partition's old replicas, and what its new
    replica holds already): the highest promise, the highest commit, and the proposal accepted last unless a
    commit at or past its ballot finished it (as ``on_commit`` clears it). The objects go with it: a commit's value
    is in the object of the replica that recorded it."""
    committed = max(s.committed for s in states)
    last = max(states, key=lambda s: s.accepted)
    if last.accepted <= committed or last.accepted_value is None:
        accepted, value = 0, None
    else:
        accepted, value = last.accepted, last.accepted_value
    return PaxosState(max(max(s.promised for s in states), accepted), accepted, value, committed)


def on_commit(state: PaxosState, ballot: int) -> PaxosState | None:
    if ballot <= state.committed:
        return None
    if state.accepted <= ballot:
        # The accepted proposal is this one or older: it is done, its value need not be kept.
        return state._replace(committed=ballot, accepted=0, accepted_value=None)
    return state._replace(committed=ballot)


# -- the proposer's side --------------------------------------------------------------------------------------
def quorum_of(n: int) -> int:
    return n // 2 + 1


class Electorate(NamedTuple):
    """What one attempt of a round is made for."""

    partition: int
    key: bytes
    nodes: list  # who is asked
    required: int  # how many must say yes
    view: bytes  # the ring view the nodes were picked from (``RingViews``)


class Promises:
    """A proposer's reading of the PREPARE replies of one ballot (``PaxosPrepareReply`` records)."""

    def __init__(self, versions):
        self.versions = versions
        self.promised: dict[str, object] = {}
        self.highest_refusal = 0  # the highest ballot a refusing replica had promised

    def add(self, node: str, reply) -> bool:
        """Count one reply; True when it is a promise."""
        if reply.promised:
            self.promised[node] = reply
            return True
        self.highest_refusal = max(self.highest_refusal, reply.ballot)
        return False

    def unfinished(self) -> tuple[int, bytes] | None:
        """(ballot, value) of an accepted proposal newer than every commit the promises show: it may have been
        chosen, so it must be finished before anything else is proposed. None when there is none."""
        committed = max((r.committed for r in self.promised.values()), default=0)
        best = None
        for reply in self.promised.values():
            if reply.accepted > committed and reply.accepted_value is not None:
                if best is None or reply.accepted > best[0]:
                    best = (reply.accepted, reply.accepted_value)
        return best

    def current(self):
        """The key as the promising replicas hold it: their copies merged (None when none has it)."""
        found = [self.versions.Siblings.from_bytes(r.object) for r in self.promised.values() if r.object is not None]
        return self.versions.reconcile(found) if found else None


def same_state(versions, current, context: bytes | None) -> bool:
    """Whether ``context`` (from a read) names exactly the versions of ``current``."""
    if current is None:
        return not context
    if not context:
        return False
    try:
        return current.clock().compare(versions.VClock.from_bytes(context)) == versions.EQUAL
    except Exception:  # noqa: BLE001 - a context that does not decode names nothing that exists
        return False


def cas_decision(versions, actor, now: int, value: bytes | None, context: bytes | None, if_absent: bool,
                 now_ms: int | None = None):
    """``decide(current)`` for a conditional put (``value``) or delete (``value`` None): the new object, stamped
    by ``actor`` on top of ``current`` so that it replaces every version there; ConditionFailed when ``current``
    is not what the caller named."""

    def decide(current):
        # Expired values are absent (``expiry``; now_ms: the wall clock in ms, default ``now`` in seconds).
        live = [] if current is None else expiry.visible(current.live_values(),
                                                         now * 1000 if now_ms is None else now_ms)[0]
        if if_absent:
            ok = not live
        else:
            ok = same_state(versions, current, context)
        if not ok:
            raise ConditionFailed(
                "the key is not in the state the write named" + (" (it has a value)" if if_absent else ""),
                context=b"" if current is None else current.context(), values=list(dict.fromkeys(live)))
        if value is None and not live:
            return None  # deleting what is absent: nothing to write, the condition held
        return stamp(versions, actor, now, current, value)

    return decide


def stamp(versions, actor, now: int, current, value: bytes | None):
    """A new version of ``value`` (None: a tombstone) that replaces every version of ``current``. ``actor``:
    bytes, or ``actor(current)`` giving them (a fresh actor when nothing is read: a replica outside the round
    may still hold a reaped tombstone carrying our counters, kv679)."""
    if callable(actor):
        actor = actor(current)
    base = None if current is None else current.context()
    return versions.Siblings.new(value, base or None).update(current, actor, now).prune(now)


def backoff(rng, attempt: int) -> float:
    """A random pause before the ``attempt``-th retry after losing to another proposer."""
    return rng.uniform(0, min(BACKOFF_CAP, BACKOFF_BASE * (2 ** attempt)))


# -- the driver -----------------------------------------------------------------------------------------------
class Paxos:
    """Both sides of the per-key Paxos: the acceptor's handlers (PAXOS_PREPARE, PAXOS_PROPOSE, PAXOS_COMMIT) and
    ``run``, one linearizable read-decide-write of a key.

    Ports: config (node id, n, peer_timeout), a membership view (rings, addresses, mark up/down), the vnodes
    (objects and the store the Paxos state shares), durability, the transport, clock and rng.
    """

    def __init__(self, *, config, versions, membership, ownership, vnodes, durability, transport, clock, rng,
                 repairing=frozenset()):
        self.config = config
        self.me = config.node_id
        self.versions = versions
        self.membership = membership
        self.ownership = ownership
        self.vnodes = vnodes
        self.store = vnodes.store
        self.durability = durability
        self.transport = transport
        self.clock = clock
        self.rng = rng
        self.repairing = repairing
        self.views = RingViews()
        self._last_ballot = 0
        self._locks: dict[bytes, list] = {}  # key -> [asyncio.Lock, rounds waiting or running]
        self.rounds = 0
        self.contended = 0  # rounds that lost to a higher ballot and started again
        self.finished_others = 0  # unfinished proposals of earlier rounds this node completed

    # -- acceptor ---------------------------------------------------------------------------------------------
    def _state(self, partition: int, key: bytes) -> PaxosState:
        raw = self.store.get(paxos_key(partition, key))
        return PaxosState() if raw is None else PaxosState.from_bytes(raw)

    def check_acceptor(self, partition: int, view: bytes | None = None) -> None:
        """Raise unless this node may act as an acceptor of ``partition`` for a request made for ``view``: it holds
        a replica, is not repairing it, and holds the same ring view (None: a sender from before views)."""
        self.ownership.check_member(self.membership, partition, None)
        if partition in self.repairing:
            # It may have forgotten promises with its data: it takes no part until repaired.
            raise Unavailable(f"{self.me} repairs partition {partition} and takes no part in Paxos meanwhile")
        # A round made for another ring view (``RingViews``); None: a sender from before views, not fenced.
        if view is not None and view != self.views.of(self.membership.state):
            raise WrongNode(f"{self.me} holds another ring view than the round's: one of the two has not learned "
                            "the latest ring change yet")

    async def _durable(self):
        await self.durability.waiter()

    async def handle_prepare(self, request):
        partition, key, ballot, view = request
        self.check_acceptor(partition, view)
        state = self._state(partition, key)
        new, promised = on_prepare(state, ballot)
        # The read that comes with the promise: this replica's copy of the key, as it is now.
        obj = self.vnodes.get_raw(partition, key)
        if new is not None:
            self.store.put(paxos_key(partition, key), new.to_bytes())
            await self._durable()
            state = new
        return (Msg.PAXOS_PREPARE_REPLY,
                (promised, state.promised, state.accepted, state.accepted_value, state.committed,
                 None if obj is None else bytes(obj)))

    async def handle_propose(self, request):
        partition, key, ballot, value, view = request
        self.check_acceptor(partition, view)
        if value != NOOP:
            self.versions.Siblings.from_bytes(value)  # a value that does not decode is never accepted
        state = self._state(partition, key)
        new, accepted = on_propose(state, ballot, value)
        if new is not None:
            self.store.put(paxos_key(partition, key), new.to_bytes())
            await self._durable()
            state = new
        return (Msg.PAXOS_PROPOSE_REPLY, (accepted, state.promised))

    async def handle_commit(self, request):
        partition, key, ballot, value = request
        self.check_acceptor(partition)
        # The object first, then the ballot: a crash between them loses the ballot, never the value with it
        # (the log store keeps writes in order).
        if value != NOOP:
            self.vnodes.merge_in(partition, key, self.versions.Siblings.from_bytes(value))
        new = on_commit(self._state(partition, key), ballot)
        if new is not None:
            self.store.put(paxos_key(partition, key), new.to_bytes())
        await self._durable()
        return (Msg.PAXOS_COMMIT_REPLY, (True,))

    # -- proposer ---------------------------------------------------------------------------------------------
    def _ballot(self, above: int) -> int:
        """A new ballot above ``above`` and above every ballot this node made: wall-clock milliseconds in the high
        bits (so that proposers converge on recent ballots), random low bits (so that two proposers rarely make
        the same one; equal ballots are still safe, a replica promises a ballot once)."""
        base = max(int(self.clock.wall() * 1000), (above >> 16) + 1, (self._last_ballot >> 16) + 1)
        self._last_ballot = (base << 16) | self.rng.getrandbits(16)
        return self._last_ballot

    def participants(self, key: bytes) -> "Electorate":
        """Who takes part in a round on ``key`` now: its primaries, and while the cluster changes shape its next
        primaries too, which must all answer besides a quorum of the current ones (as Cassandra counts pending
        replicas) so that both the old and the new replica sets hold a quorum."""
        state = self.membership.state
        if state is None:
            raise Unavailable(f"{self.me} has not joined the cluster yet")
        n = self.config.n
        partition = state.ring.partition_of(key)
        nodes = list(preflist.primaries(state.ring, partition, n))
        required = quorum_of(len(nodes))
        if state.next_ring is not None:
            pending = [node for node in preflist.primaries(state.next_ring, partition, n) if node not in nodes]
            nodes += pending
            required += len(pending)
        return Electorate(partition, key, nodes, required, self.views.of(state))

    async def run(self, key: bytes, decide, timeout: float):
        """Read ``key`` linearizably, let ``decide(current)`` return the object to write (None: write nothing)
        or raise (the condition does not hold), and write it. Returns ``(the object now, whether written)``.

        Timeout or QuorumNotMet once a proposal was sent: the write may still be chosen later (by a round that
        finishes it), so its outcome is unknown. Rounds for one key on this node run one at a time: two at once
        could stamp different values with the same version (same actor, same state read)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = [asyncio.Lock(), 0]
        lock[1] += 1
        try:
            try:
                await asyncio.wait_for(lock[0].acquire(), max(deadline - loop.time(), 0.001))
            except asyncio.TimeoutError:
                raise Timeout("conditional write waited for this node's other rounds on the key until its "
                              "deadline: nothing was proposed") from None
            try:
                self.rounds += 1
                return await self._run(key, decide, deadline)
            finally:
                lock[0].release()
        finally:
            lock[1] -= 1
            if not lock[1]:
                del self._locks[key]

    async def _run(self, key: bytes, decide, deadline: float):
        above = 0
        attempt = 0
        mine: dict[bytes, object] = {}  # our proposals that lost to a higher ballot: maybe accepted somewhere
        while True:
            # Worked out again each attempt: a ring change may have come meanwhile.
            voters = self.participants(key)
            ballot = self._ballot(above)
            promises = Promises(self.versions)
            replies = await self._phase(voters, Msg.PAXOS_PREPARE, (voters.partition, key, ballot, voters.view),
                                        deadline, lambda node, reply: promises.add(node, reply))
            if len(promises.promised) < voters.required:
                if promises.highest_refusal or _stale_view(replies):
                    # Contention, or views that differ while a ring change spreads: again, with the state then.
                    above = max(above, promises.highest_refusal)
                    attempt = await self._back_off(attempt, deadline)
                    continue
                raise self._short("prepare", replies, voters.required, deadline)
            unfinished = promises.unfinished()
            if unfinished is not None:
                # An earlier round's proposal, maybe chosen: finish it under our ballot, then start again.
                self.finished_others += 1
                refused = await self._accept_and_commit(voters, ballot, unfinished[1], deadline)
                if refused:
                    above = max(above, refused)
                    attempt = await self._back_off(attempt, deadline)
                elif unfinished[1] in mine:
                    return mine[unfinished[1]], True  # it was ours: chosen now
                continue
            current = promises.current()
            try:
                new = decide(current)
            except Exception:
                if mine and not await self._settle_mine(mine, current, voters, ballot, deadline):
                    above = max(above, ballot)
                    attempt = await self._back_off(attempt, deadline)
                    continue
                raise  # the condition does not hold: nothing of ours was or will be written
            if new is None:
                if mine and not await self._settle_mine(mine, current, voters, ballot, deadline):
                    above = max(above, ballot)
                    attempt = await self._back_off(attempt, deadline)
                    continue
                return current, False
            raw = new.to_bytes()
            refused = await self._accept_and_commit(voters, ballot, raw, deadline)
            if not refused:
                return new, True
            mine[raw] = new
            above = max(above, refused)
            attempt = await self._back_off(attempt, deadline)

    async def _settle_mine(self, mine, current, voters, ballot, deadline) -> bool:
        """Before answering "not written" after proposals of ours lost: make sure none of them can still be
        chosen, by committing a no-op under this round's ballot (no earlier proposal counts as unfinished after
        that commit). False when a higher ballot got in first (the caller starts again). Timeout when one of
        ours may have been chosen already (the state covers its version): the outcome is unknown."""
        if current is not None:
            clock = current.clock()
            if any(clock.descends(proposal.clock()) for proposal in mine.values()):
                raise Timeout("conditional write lost to another writer after proposing: it may or may not have "
                              "been applied (read the key)")
        return not await self._accept_and_commit(voters, ballot, NOOP, deadline)

    async def _accept_and_commit(self, voters, ballot, value, deadline) -> int:
        """Propose ``value``; when a quorum accepts, commit it (waiting for a quorum or the deadline) and return
        0. When a higher ballot got in first, or a replica holds another ring view, return the ballot to start
        again above. QuorumNotMet or Timeout when too few answered."""
        replies = await self._phase(voters, Msg.PAXOS_PROPOSE,
                                    (voters.partition, voters.key, ballot, value, voters.view), deadline,
                                    lambda node, reply: reply.accepted)
        answers = [r for r in replies.values() if not isinstance(r, BaseException)]
        if sum(1 for r in answers if r.accepted) < voters.required:
            refused = max((r.ballot for r in answers if not r.accepted), default=0)
            if refused:
                return refused
            if _stale_view(replies):
                return ballot
            raise self._short("propose", replies, voters.required, deadline)
        # Chosen. The commit makes it visible to plain reads; the answer waits for a quorum of it when it can.
        # Commits are not fenced by view: a chosen value may merge into any replica's copy.
        await self._phase(voters, Msg.PAXOS_COMMIT, (voters.partition, voters.key, ballot, value), deadline,
                          lambda node, reply: reply.durable)
        return 0

    async def _back_off(self, attempt: int, deadline: float) -> int:
        self.contended += 1
        loop = asyncio.get_running_loop()
        pause = backoff(self.rng, attempt)
        if loop.time() + pause >= deadline:
            raise Timeout("conditional write lost to other writers of the key until its deadline")
        await asyncio.sleep(pause)
        return attempt + 1

    def _short(self, phase: str, replies: dict, required: int, deadline: float):
        answered = sum(1 for r in replies.values() if not isinstance(r, BaseException))
        if asyncio.get_running_loop().time() >= deadline:
            return Timeout(f"paxos {phase}: {answered} of {len(replies)} replicas answered by the deadline, "
                           f"{required} needed")
        return QuorumNotMet(f"paxos {phase} reached {answered} replicas, {required} needed",
                            replied=answered, required=required)

    async def _phase(self, voters, msg_type, fields, deadline, count) -> dict:
        """Send one phase's message to every voter; return once ``count(node, reply)`` said yes for as many as
        are required, or that can no longer happen, or at the deadline. Returns node -> reply record or
        exception."""
        nodes, required = voters.nodes, voters.required
        loop = asyncio.get_running_loop()
        calls = {}
        replies: dict = {}
        try:
            for node in nodes:
                if node == self.me:
                    call = asyncio.ensure_future(self._local(msg_type, fields))
                else:
                    call = self.transport.request(self.membership.address_of(node), msg_type, fields,
                                                  self.config.peer_timeout)
                calls[call] = node
            yes = 0
            pending = set(calls)
            while pending:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                done, pending = await asyncio.wait(pending, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
                for call in done:
                    node = calls[call]
                    reply = self._reply_of(node, call, msg_type)
                    replies[node] = reply
                    if not isinstance(reply, BaseException) and count(node, reply):
                        yes += 1
                if yes >= required or yes + len(pending) < required:
                    break
        finally:
            # Late answers of a phase already decided, or of one given up (the request was cancelled while it
            # waited, or a node's address could not be found): nobody reads them, and none may go unretrieved.
            for call, node in calls.items():
                if node not in replies:
                    call.add_done_callback(_ignore_result)
        return replies

    def _reply_of(self, node, call, msg_type):
        if call.cancelled():
            return Unavailable(f"{node}: call cancelled")
        exc = call.exception()
        if exc is not None:
            if node != self.me:
                if peer_failed(exc):
                    self.membership.mark_down(node, exc)
                else:
                    log.debug("paxos %s on %s failed: %s", Msg(msg_type).name, node, exc)
            return exc
        if node != self.me:
            self.membership.mark_up(node)
        reply_type, fields = call.result()
        try:
            return parse(reply_type, fields) if reply_type == msg_type + 1 else \
                Unavailable(f"{node} answered {msg_type} with {reply_type}")
        except Exception as exc:  # noqa: BLE001 - a malformed reply is a failed replica
            return exc

    def _local(self, msg_type, fields):
        if msg_type == Msg.PAXOS_PREPARE:
            return self.handle_prepare(parse(msg_type, fields))
        if msg_type == Msg.PAXOS_PROPOSE:
            return self.handle_propose(parse(msg_type, fields))
        return self.handle_commit(parse(msg_type, fields))


def _stale_view(replies: dict) -> bool:
    return any(isinstance(reply, WrongNode) for reply in replies.values())


def _ignore_result(call):
    if not call.cancelled():
        call.exception()
