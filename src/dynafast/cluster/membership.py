"""Cluster membership: who is in the cluster, at which address, who is up, and the ring.

The shared part is one versioned ``ClusterState``: the members with their status (joining, valid, leaving,
left), the active ring, and while the cluster changes shape, the next ring and the partition transfers towards it
that are done. Only the *claimant* changes it (the valid member with the lowest id that is up in the deciding
node's view, as in Riak); everyone else forwards joins, leaves and finished transfers to the claimant. The state
spreads by gossip (``GossipCore``): each round a node swaps heartbeats and its state with one random peer, and the
newer state (by version, then digest) wins. The claimant changes the state only while it sees a strict majority
of the voters (the active ring's members that have not left) up, and has for a few gossip intervals: during a
partition each side has a claimant, and two sides both bumping the version would have the higher one silently
undo the other's changes after the heal. This rests on the failure detectors' views, not on a vote: two
claimants that each see a majority (a one-way cut) can still both commit.

Liveness is local: a phi-accrual failure detector fed by gossiped heartbeats marks peers down and up; a refused
connection marks a peer down at once, until its heartbeat moves again.

Changing shape without losing data (Dynamo's join/leave with Riak's handoff rules): a join or leave makes a next
ring that moves as few partitions as possible. For every partition that gains a replica, the first live old
replica streams the vnode to it (while coordinators also send new writes there); the claimant records each
finished transfer and activates the next ring only when all are done and every leaving member is reachable. Old
replicas drop their copy afterwards; a node that was leaving hands its copies and hints off first and stops once
it holds nothing (``transfers``).
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from dataclasses import dataclass, field

from dynafast import _impl
from dynafast.cluster import generation
from dynafast.cluster.background import cancel_and_wait, periodic
from dynafast.cluster.failure import FailureDetector, LocalPause
from dynafast.cluster.gossip import GossipCore, state_order
from dynafast.errors import DynafastError, ProtocolError, Timeout, Unavailable
from dynafast.net.messages import Msg, Overloaded, parse

log = logging.getLogger("dynafast.membership")

# Most members a cluster state may name. Gossip and pushed states naming more are refused unread (a forged one
# would otherwise be carried in every gossip message from then on), and the claimant admits no join past it.
MAX_MEMBERS = 4096

# Shared statuses (part of the cluster state) ...
JOINING, VALID, LEAVING, LEFT = "joining", "valid", "leaving", "left"
STATUSES = (JOINING, VALID, LEAVING, LEFT)
# How far a state from a peer may be ahead of ours. Every change (a join, a leave, each finished transfer)
# adds one; a node that slept through a few thousand catches up, while a state claiming to be millions
# ahead (which would outrank every real change from then on) is refused.
MAX_STATE_JUMP = 1_000_000
# ... and what `status` shows, mixing in local liveness.
UP, DOWN = "up", "down"


@dataclass
class Member:
    id: str
    address: str
    zone: str = ""
    status: str = VALID
    state: str = UP  # as shown: joining | leaving | left | up | down


@dataclass
class ClusterState:
    version: int
    members: dict[str, Member]
    ring: object
    next_ring: object = None
    done: set = field(default_factory=set)  # {(partition, target)} transfers finished towards next_ring

    def to_fields(self) -> tuple:
        """Wire form. The first three fields (ring, ids, addresses) are what clients read."""
        ids = sorted(self.members)
        done = sorted(self.done)
        return (
            self.ring.to_bytes(),
            ids,
            [self.members[i].address for i in ids],
            [self.members[i].zone for i in ids],
            [self.members[i].status for i in ids],
            self.version,
            None if self.next_ring is None else self.next_ring.to_bytes(),
            [p for p, _ in done],
            [t for _, t in done],
        )

    @classmethod
    def from_fields(cls, fields, rings) -> "ClusterState":
        try:
            ring_bytes, ids, addresses, zones, statuses, version, next_bytes, done_p, done_t = fields[:9]
            if len(ids) > MAX_MEMBERS:
                raise ProtocolError(f"cluster state names {len(ids)} members, more than {MAX_MEMBERS}")
            members = {
                i: Member(i, a, z, s) for i, a, z, s in zip(ids, addresses, zones, statuses, strict=True)
            }
            ring = rings.Ring.from_bytes(ring_bytes)
            next_ring = None if next_bytes is None else rings.Ring.from_bytes(next_bytes)
            done = set(zip(done_p, done_t, strict=True))
        except (TypeError, ValueError) as exc:
            raise ProtocolError(f"malformed cluster state: {exc}") from exc
        if not isinstance(version, int) or version < 0:
            raise ProtocolError("malformed cluster state: version")
        for member in members.values():
            if member.status not in STATUSES or not all(isinstance(v, str) for v in (member.address, member.zone)):
                raise ProtocolError(f"malformed cluster state: member {member.id!r}")
        for r in (ring, next_ring):
            if r is None:
                continue
            strangers = set(r.owners()) - set(members)
            if strangers:
                raise ProtocolError(f"malformed cluster state: the ring names non-members {sorted(strangers)[:5]}")
        if next_ring is not None and next_ring.partitions != ring.partitions:
            raise ProtocolError("malformed cluster state: the next ring has another partition count")
        return cls(version, members, ring, next_ring, done)

    def digest(self) -> bytes:
        h = hashlib.blake2b(digest_size=16)
        h.update(repr(self.to_fields()).encode())
        return h.digest()

    def required_transfers(self) -> set:
        """(partition, target) pairs that must be done before next_ring can become the ring."""
        if self.next_ring is None:
            return set()
        needed = set()
        for p in range(self.ring.partitions):
            old = set(self.ring.replicas(p))
            for target in self.next_ring.replicas(p):
                if target not in old:
                    needed.add((p, target))
        return needed

    def copy(self) -> "ClusterState":
        members = {i: Member(m.id, m.address, m.zone, m.status) for i, m in self.members.items()}
        return ClusterState(self.version, members, self.ring, self.next_ring, set(self.done))


class ClusterMembership:
    """Membership over gossip. ``listeners`` are called with (old_state, new_state) after each change.

    Ports: config, the transport, the clock, a random source (gossip peers, jitter) and the metadata files
    (the cluster state survives restarts in ``cluster.json``).
    """

    STATE_FILE = "cluster.json"

    def __init__(self, config, transport, *, clock, rng, files):
        self.config = config
        self.node_id = config.node_id
        self.pool = transport
        self.clock = clock
        self.rng = rng
        self.files = files
        self.rings = _impl.ring
        self.state: ClusterState | None = None
        detector = FailureDetector(config.phi_threshold, first_interval=config.gossip_interval,
                                   acceptable_pause=config.gossip_interval)
        # Liveness is checked several times a second; a stall of ours a few times that long is excused until
        # our gossip round and our peers' have had time to bring fresh heartbeats.
        self.local_pause = LocalPause(2 * config.gossip_interval, 2 * config.gossip_interval + config.peer_timeout)
        # A restarted node must beat above what its previous lives reached: a new generation each start.
        self.gossip = GossipCore(self.node_id, detector=detector, rng=rng, generation=generation.begin(files))
        self.listeners: list = []
        self._forced_down: set[str] = set()
        self._down: frozenset[str] = frozenset()
        self._tasks: list[asyncio.Task] = []
        self._first_seen: dict[str, float] = {}
        self._pushes: set[asyncio.Task] = set()
        self._exchanges: dict[str, asyncio.Task] = {}  # peer -> our gossip round's exchange with it, under way
        self._waiting_for_majority: str | None = None  # why the claimant last held a ring change back (logged once)
        # Since when this node has been, without a break, the claimant with a majority of the voters up in its
        # view; it changes nothing until it has been for ``settle_grace`` seconds (see _change_problem).
        self._deciding_since: float | None = None
        self.settle_grace = 2 * config.gossip_interval + config.peer_timeout

    # -- queries used on every request (kept cheap) ------------------------------------------------------
    @property
    def ring(self):
        return self.state.ring

    @property
    def next_ring(self):
        return self.state.next_ring

    @property
    def members(self) -> dict[str, Member]:
        return self.state.members

    def address_of(self, node_id: str) -> str:
        route = self.config.peer_routes.get(node_id)
        if route:
            return route
        member = self.state.members.get(node_id)
        if member is None:
            # A newer cluster state dropped it while a job for it was under way: as unreachable as a dead peer.
            raise Unavailable(f"{node_id} is not a member of the cluster")
        return member.address

    def down(self) -> frozenset[str]:
        return self._down

    def is_up(self, node_id: str) -> bool:
        return node_id not in self._down

    def mark_down(self, node_id: str, error: BaseException | None = None) -> None:
        """A call to the peer failed to connect: treat it as down until its heartbeat moves again.

        A call that merely timed out proves nothing (the peer may be slow): the failure detector decides.
        """
        if node_id == self.node_id or node_id not in self.state.members:
            return
        if isinstance(error, (Timeout, TimeoutError)):
            return
        if node_id not in self._forced_down:
            self._forced_down.add(node_id)
            self._refresh_liveness()

    def mark_up(self, node_id: str) -> None:
        if node_id in self._forced_down:
            self._forced_down.discard(node_id)
            self._refresh_liveness()

    def _refresh_liveness(self) -> None:
        now = self.clock.monotonic()
        stalled = self.local_pause.check(now)
        if stalled:
            log.warning("this node stalled for %.1f s: for %.1f s no peer is marked down for its silence",
                        stalled, self.local_pause.grace)
        excused = self.local_pause.excused(now)
        detector = self.gossip.detector
        down = set()
        for node_id, member in self.state.members.items():
            if node_id == self.node_id or member.status == LEFT:
                continue
            if node_id in self._forced_down:
                down.add(node_id)
            elif excused and node_id not in self._down:
                continue  # silent only because we were: it stays up while its heartbeats come in
            elif node_id in detector.peers:
                if not detector.available(node_id, now):
                    down.add(node_id)
            elif now - self._first_seen.setdefault(node_id, now) > 3 * self.config.gossip_interval + 5:
                # Never heard from since we learnt of it: suspect it.
                down.add(node_id)
        if down != self._down:
            for node_id in down - self._down:
                log.warning("peer %s marked down", node_id)
            for node_id in self._down - down:
                log.info("peer %s is up", node_id)
            self._down = frozenset(down)
        for node_id, member in self.state.members.items():
            member.state = self._shown_state(member)
        if self.claimant() == self.node_id and self.majority_problem() is None:
            if self._deciding_since is None:
                self._deciding_since = now
        else:
            self._deciding_since = None

    def _shown_state(self, member: Member) -> str:
        if member.status in (JOINING, LEAVING, LEFT):
            return member.status
        return DOWN if member.id in self._down else UP

    def claimant(self) -> str:
        """The member allowed to change the cluster state (lowest valid id that is up)."""
        candidates = [i for i, m in self.state.members.items() if m.status == VALID and self.is_up(i)]
        if not candidates:
            candidates = [i for i, m in self.state.members.items() if m.status != LEFT and self.is_up(i)]
        return min(candidates) if candidates else self.node_id

    def voters(self, state: ClusterState | None = None) -> list[str]:
        """The members a change of the cluster state needs a majority of: those the active ring names (they hold
        its data), valid or leaving. A joiner votes once the ring with it is active, so one that dies half-way
        through its join cannot stop the others from removing it; a member that left votes no more."""
        state = self.state if state is None else state
        voters = sorted(i for i in state.ring.members if i in state.members and state.members[i].status != LEFT)
        return voters or sorted(i for i, m in state.members.items() if m.status != LEFT)

    def majority_problem(self, state: ClusterState | None = None) -> str | None:
        """None if a strict majority of the voters of ``state`` (ours by default) is up in our view, counting
        ourselves; otherwise why not. During a partition only the side holding a majority may change the
        cluster state: two sides each changing it on their own would both bump its version, and after the heal
        the state with the higher (version, digest) would silently undo the other side's changes."""
        voters = self.voters(state)
        up = [v for v in voters if v == self.node_id or self.is_up(v)]
        if 2 * len(up) > len(voters):
            return None
        down = [v for v in voters if v not in up]
        return (f"no majority of members reachable: {len(up)} of {len(voters)} voting members up, "
                f"{', '.join(down)} down or cut off")

    def _change_problem(self, state: ClusterState | None = None) -> str | None:
        """Why this claimant may not change the cluster state now, or None.

        Besides a majority of the voters up: the claimant must have been the claimant with a majority up for
        ``settle_grace`` seconds without a break (unless it is the only voter). A node that just took over
        (lower ids marked down) may, at the start of a partition, still count members of the other side, whose
        failure detectors mark nodes down one by one over a gossip interval or so, while the usual claimant,
        over there, still counts this side's. And one that just regained a majority (a partition healed, a
        pause ended) may hold an old state and receive stale requests before gossip brings it the newer
        state the others committed meanwhile. By the end of the grace its view and its state have settled."""
        problem = self.majority_problem(state)
        if problem is not None:
            return problem
        if self.voters() == [self.node_id]:
            return None
        since = self._deciding_since
        if since is None or self.clock.monotonic() - since < self.settle_grace:
            return (f"this node became the claimant with a majority up only now (it took over, or a majority "
                    f"came back); it waits {self.settle_grace:g}s for its view of the cluster to settle")
        return None

    def _grace_left(self) -> float | None:
        """Seconds until this claimant may change the state, when a majority of the voters is up and only its
        settle grace stands in the way; None when something else does (or nothing)."""
        if self.majority_problem() is not None or self.voters() == [self.node_id]:
            return None
        since = self._deciding_since
        left = self.settle_grace if since is None else self.settle_grace - (self.clock.monotonic() - since)
        return left if left > 0 else None

    async def _after_grace(self, wait: float, handler, fields):
        """Answer a join or leave that came during the settle grace once it is over, rather than refuse it: the
        grace is a few seconds at most, and an operator's leave would otherwise have to be sent again."""
        for _ in range(2):  # twice at most: the grace may have begun only after this wait was worked out
            await asyncio.sleep(wait)
            wait = self._grace_left()
            if wait is None:
                break
        result = handler(fields, waited=True)
        return await result if asyncio.iscoroutine(result) else result

    def _require_majority(self, what: str) -> None:
        problem = self._change_problem()
        if problem is not None:
            raise Unavailable(f"{problem}; cannot {what} now")

    def state_fields(self) -> tuple:
        return self.state.to_fields()

    # -- adopting states ----------------------------------------------------------------------------------
    def _adopt(self, new: ClusterState, *, force: bool = False) -> bool:
        old = self.state
        if old is not None and not force and state_order(new) <= state_order(old):
            return False
        self.state = new
        self.gossip.state = new
        for node_id in list(self.gossip.heartbeats):
            if node_id not in new.members:
                self.gossip.forget(node_id)
        self._forced_down &= set(new.members)
        self._refresh_liveness()
        self._save()
        for listener in self.listeners:
            try:
                listener(old, new)
            except Exception:  # noqa: BLE001 - a listener bug must not stop membership
                log.exception("membership listener failed")
        return True

    def _commit(self, new: ClusterState) -> ClusterState:
        """Claimant-side change: bump the version, adopt, and spread it at once. Only with a majority of the
        voters up (callers check first; this is the last guard)."""
        self._require_majority("change the cluster state")
        new.version = self.state.version + 1
        self._adopt(new)
        self._spread()
        return new

    def _save(self) -> None:
        fields = self.state.to_fields()
        data = {"fields": [f.hex() if isinstance(f, bytes) else f for f in fields]}
        self.files.write(self.STATE_FILE, json.dumps(data).encode())

    def _load(self) -> bool:
        try:
            stored = self.files.read(self.STATE_FILE)
            if stored is None:
                return False
            raw = json.loads(stored)["fields"]
            fields = list(raw)
            fields[0] = bytes.fromhex(fields[0])
            fields[6] = None if fields[6] is None else bytes.fromhex(fields[6])
            return self._adopt(ClusterState.from_fields(fields, self.rings), force=True)
        except (ValueError, KeyError, TypeError, DynafastError) as exc:
            log.error("ignoring unreadable cluster state %s: %s", self.STATE_FILE, exc)
            return False

    # -- life cycle -------------------------------------------------------------------------------------
    async def start(self) -> None:
        self._load()
        me = self.state.members.get(self.node_id) if self.state is not None else None
        seeds = self.config.seeds
        if self.state is None and (not seeds or seeds[0] == self.config.advertise and not await self._seeds_know()):
            # No seeds, or this node is the first seed (every node of a deployment may share one seed list) and
            # no other seed knows of a cluster yet: start a new one.
            ring = self.rings.Ring(self.config.partitions, [self.node_id], n=self.config.n,
                                   zones={self.node_id: self.config.zone})
            member = Member(self.node_id, self.config.advertise, self.config.zone, VALID)
            self._adopt(ClusterState(1, {self.node_id: member}, ring), force=True)
        elif seeds and (me is None or me.address != self.config.advertise or me.status == LEFT):
            # Until it has joined, a new node keeps asking: its seeds may not be up, or their names not in DNS, yet.
            await self._join(None if self.state is None else 60)
        self._tasks.append(asyncio.create_task(
            periodic(self.config.gossip_interval, self.gossip_round, log, "gossip round", rng=self.rng)))
        self._tasks.append(asyncio.create_task(self._liveness_loop()))

    async def stop(self) -> None:
        await cancel_and_wait(list(self._tasks) + list(self._pushes) + list(self._exchanges.values()))
        self._tasks = []

    async def _seeds_know(self) -> bool:
        """Does another seed hold a cluster state? Then the first seed, started without one (its data lost),
        joins that cluster rather than starting a second one."""
        for seed in self.config.seeds:
            if seed != self.config.advertise:
                try:
                    await self.pool.call(seed, Msg.RING_GET, (), self.config.peer_timeout)
                    return True
                except DynafastError:  # down, not resolvable yet, or (starting too) without a state
                    pass
        return False

    async def _join(self, rounds: int | None = 60) -> None:
        """Ask each seed in turn to admit us, for ``rounds`` rounds (None: until one does)."""
        fields = (self.node_id, self.config.advertise, self.config.zone)
        last_error = None
        attempt = 0
        while rounds is None or attempt < rounds:
            for seed in self.config.seeds:
                if seed == self.config.advertise:
                    continue
                try:
                    _, reply = await self.pool.call(seed, Msg.JOIN, fields, self.config.peer_timeout * 5)
                    self._adopt(ClusterState.from_fields(reply, self.rings), force=self.state is None)
                    log.info("joined the cluster through %s (state version %d)", seed, self.state.version)
                    return
                except DynafastError as exc:
                    last_error = exc
            attempt += 1
            if attempt % 30 == 0:
                log.warning("still joining through seeds %s: %s", ", ".join(self.config.seeds), last_error)
            await asyncio.sleep(min(0.1 * attempt, 1.0))
        if self.state is None:
            raise DynafastError(f"could not join through seeds {self.config.seeds}: {last_error}")

    # -- gossip ---------------------------------------------------------------------------------------------
    async def _liveness_loop(self) -> None:
        while True:
            await asyncio.sleep(min(0.2, self.config.gossip_interval / 2))
            self._refresh_liveness()
            if self.node_id not in self.state.members and self.config.seeds:
                try:
                    await self._join()  # a concurrent change elsewhere dropped us: ask again
                except DynafastError as exc:
                    log.warning("rejoin failed: %s", exc)

    def _gossip_fields(self) -> tuple:
        ids, counters, state = self.gossip.message()
        # Flat: the codec nests lists one level only, so the state's fields follow the gossip header.
        return (self.node_id, ids, counters, state.version, state.digest()) + state.to_fields()

    def _gossip_targets(self) -> list[str]:
        return [i for i, m in self.state.members.items() if i != self.node_id and m.status != LEFT]

    async def gossip_round(self) -> None:
        """Beat, and start an exchange with one random peer that has none under way.

        The round does not wait for the exchange: a peer that accepts the connection and answers nothing (paused,
        overloaded) would hold up our next beat for peer_timeout. Picked twice running, it stopped our heartbeat
        long enough for the other nodes' failure detectors to suspect us, and coordinators routed around a live
        node. One exchange per peer at a time bounds those under way by the number of peers.
        """
        self.gossip.tick()
        exchanges = self._exchanges
        peer = self.gossip.choose_peer([p for p in self._gossip_targets() if p not in exchanges])
        if peer is None:
            return
        task = exchanges[peer] = asyncio.ensure_future(self._exchange(peer))
        task.add_done_callback(lambda _: exchanges.pop(peer, None))

    async def _exchange(self, peer: str) -> None:
        try:
            await self._gossip_with(peer)
        except DynafastError as exc:  # an unreadable reply: the next round tries another peer
            log.warning("gossip with %s failed: %s", peer, exc)
        except Exception:  # noqa: BLE001 - as for the other background rounds: logged, and the next one runs
            log.exception("gossip with %s failed", peer)

    async def _gossip_with(self, peer: str) -> None:
        try:
            _, reply = await self.pool.call(self.address_of(peer), Msg.GOSSIP, self._gossip_fields(),
                                            self.config.peer_timeout)
        except DynafastError as exc:
            self.mark_down(peer, exc)
            return
        self.mark_up(peer)
        self._receive_gossip(reply)

    def _receive_gossip(self, fields) -> None:
        gossip = parse(Msg.GOSSIP, fields)
        if len(gossip.heartbeat_ids) > MAX_MEMBERS:
            raise ProtocolError(f"gossip carries {len(gossip.heartbeat_ids)} heartbeats, more than {MAX_MEMBERS}")
        if (gossip.state_version, gossip.state_digest) > state_order(self.state):
            new = self._from_peer(gossip.state())
        else:
            new = None
        known = self.gossip.heartbeats
        before = {node: known.get(node, -1) for node in self._forced_down}
        generation_before = self.gossip.generation
        # Heartbeats of members the state we keep does not name are dropped, not carried on: members come
        # only through a join at the claimant, and reach us in its states.
        members = (new or self.state).members
        self.gossip.receive(gossip.heartbeat_ids, gossip.heartbeats, None, self.clock.monotonic(), members)
        if self.gossip.generation != generation_before:
            # A lost generation file: peers knew a later life of ours. Durable before the new one is sent.
            generation.save(self.files, self.gossip.generation)
            log.warning("heartbeat generation moved to %d past what peers remembered", self.gossip.generation)
        # A peer forced down by a refused connection is up again once its heartbeat moves (heard first- or
        # second-hand), or once it talks to us itself.
        for node, beat in before.items():
            if node == gossip.sender or known.get(node, -1) > beat:
                self.mark_up(node)
        if new is not None:
            self._adopt(new)

    def _spread(self) -> None:
        """Push a fresh change to every member now instead of waiting for random rounds."""
        for peer in self._gossip_targets():
            task = asyncio.ensure_future(self._gossip_with(peer))
            self._pushes.add(task)
            task.add_done_callback(self._pushes.discard)

    # -- handlers ----------------------------------------------------------------------------------------
    def handle_gossip(self, fields) -> tuple:
        self._receive_gossip(fields)
        return self._gossip_fields()

    def _from_peer(self, fields) -> ClusterState:
        """A cluster state a peer sent, checked before it may replace ours."""
        new = ClusterState.from_fields(fields, self.rings)
        # The partition count is fixed when a cluster is made (a node alone may still be joining one).
        if len(self.state.members) > 1 and new.ring.partitions != self.state.ring.partitions:
            raise ProtocolError(f"a cluster state with {new.ring.partitions} partitions; ours has "
                                f"{self.state.ring.partitions}")
        if new.version > self.state.version + MAX_STATE_JUMP:
            raise ProtocolError(f"a cluster state version {new.version} is more than {MAX_STATE_JUMP} ahead of "
                                f"ours ({self.state.version})")
        return new

    def handle_ring_push(self, fields) -> tuple:
        self._adopt(self._from_peer(fields))
        return (self.state.version,)

    async def _at_claimant(self, msg_type, fields):
        claimant = self.claimant()
        if claimant == self.node_id:
            return None
        _, reply = await self.pool.call(self.address_of(claimant), msg_type, fields, self.config.peer_timeout * 5)
        return reply

    def handle_join(self, fields, waited: bool = False):
        if self.claimant() != self.node_id:
            return self._forwarded(Msg.JOIN, fields)
        node_id, address, zone = fields[:3]
        if not isinstance(node_id, str) or not isinstance(address, str) or not isinstance(zone, str):
            raise ProtocolError("join needs (node id, address, zone) strings")
        member = self.state.members.get(node_id)
        if (member is not None and member.address == address and member.zone == zone
                and member.status in (VALID, JOINING)):
            return self.state_fields()
        if member is None and len(self.state.members) >= MAX_MEMBERS:
            raise Overloaded(f"the cluster already has {MAX_MEMBERS} members, the most a cluster state holds")
        wait = None if waited else self._grace_left()
        if wait is not None:
            return self._after_grace(wait, self.handle_join, fields)
        self._require_majority(f"admit {node_id}")
        new = self.state.copy()
        status = VALID if member is not None and member.status == VALID else JOINING
        new.members[node_id] = Member(node_id, address, zone, status)
        self._plan(new)
        self._commit(new)
        log.info("admitted %s at %s (state version %d)", node_id, address, new.version)
        self._maybe_activate()
        return self.state_fields()

    def handle_leave(self, fields, waited: bool = False):
        node_id = fields[0] if fields and fields[0] else self.node_id
        if self.claimant() != self.node_id:
            return self._forwarded(Msg.LEAVE, (node_id,))
        member = self.state.members.get(node_id)
        if member is None:
            raise ProtocolError(f"{node_id} is not a member")
        active = [i for i, m in self.state.members.items() if m.status in (VALID, JOINING) and i != node_id]
        if not active:
            raise ProtocolError("the last member cannot leave")
        if member.status in (LEAVING, LEFT):
            return (self.state.version,)
        wait = None if waited else self._grace_left()
        if wait is not None:
            return self._after_grace(wait, self.handle_leave, fields)
        self._require_majority(f"let {node_id} leave")
        new = self.state.copy()
        new.members[node_id].status = LEAVING
        self._plan(new)
        self._commit(new)
        log.info("%s is leaving (state version %d)", node_id, new.version)
        self._maybe_activate()
        return (self.state.version,)

    def handle_transfer_done(self, fields):
        """(partitions, targets, next ring digest): transfers a sender finished."""
        if self.claimant() != self.node_id:
            return self._forwarded(Msg.TRANSFER_DONE, fields)
        partitions, targets, next_digest = fields[:3]
        nxt = self.state.next_ring
        if nxt is None or nxt.digest() != next_digest:
            return (False,)
        finished = set(zip(partitions, targets, strict=True)) - self.state.done
        if finished:
            # Refused, not dropped: the sender reports them again later.
            self._require_majority("record finished transfers")
            new = self.state.copy()
            new.done |= finished
            self._commit(new)
            self._maybe_activate()
        return (True,)

    async def _forwarded(self, msg_type, fields):
        reply = await self._at_claimant(msg_type, fields)
        if reply is None:  # we became the claimant meanwhile
            handler = {Msg.JOIN: self.handle_join, Msg.LEAVE: self.handle_leave,
                       Msg.TRANSFER_DONE: self.handle_transfer_done}[msg_type]
            result = handler(fields)
            return await result if asyncio.iscoroutine(result) else result
        if msg_type == Msg.JOIN:
            self._adopt(ClusterState.from_fields(reply, self.rings))
        return reply

    # -- planning ring changes (claimant) -------------------------------------------------------------
    def _plan(self, new: ClusterState) -> None:
        """Set new.next_ring for the members that will hold data once the change completes."""
        targets = sorted(i for i, m in new.members.items() if m.status in (VALID, JOINING))
        zones = {i: new.members[i].zone for i in targets}
        ring = new.ring
        if sorted(ring.members) == targets:
            new.next_ring = None
        else:
            new.next_ring = self.rings.Ring(ring.partitions, targets, n=ring.n, zones=zones, previous=ring,
                                            version=ring.version + 1)
        new.done = set()

    def _maybe_activate(self) -> None:
        state = self.state
        problem = self._change_problem()
        if problem is not None:
            # A claimant cut off from most members changes nothing; check_claimant_duties retries.
            if problem != self._waiting_for_majority and (state.next_ring is not None or any(
                    m.status == JOINING or (m.status == LEAVING and m.id not in state.ring.members)
                    for m in state.members.values())):
                log.warning("the ring change waits: %s", problem)
            self._waiting_for_majority = problem
            return
        self._waiting_for_majority = None
        if state.next_ring is None:
            # Nothing to move: joiners are in, and leavers the ring does not hold (one told to leave before
            # its join finished) are out.
            settle = [m for m in state.members.values()
                      if m.status == JOINING or (m.status == LEAVING and m.id not in state.ring.members)]
            if settle:
                new = state.copy()
                for m in settle:
                    new.members[m.id].status = VALID if m.status == JOINING else LEFT
                self._commit(new)
            return
        # A leaving member the claimant cannot reach may be acknowledging writes nobody else sees: the ring
        # without it waits until it is back, learns of the next ring and can hand them off.
        leavers_up = all(self.is_up(m.id) for m in state.members.values() if m.status == LEAVING)
        if state.required_transfers() <= state.done and leavers_up:
            new = state.copy()
            new.ring = state.next_ring
            new.next_ring = None
            new.done = set()
            for m in new.members.values():
                if m.status == JOINING:
                    m.status = VALID
                elif m.status == LEAVING:
                    m.status = LEFT
            # The voters change here (joiners start voting, leavers stop): a majority of the new ones must be
            # up too, or a cluster of one plus a joiner that died after its transfers would be left with two
            # voters, one dead, and could never change again.
            if self._change_problem(new) is not None:
                return
            self._commit(new)
            log.info("ring version %d is active (state version %d)", new.ring.version, new.version)

    def check_claimant_duties(self) -> None:
        """Called periodically: a new claimant finishes what a failed one left (activation)."""
        if self.claimant() == self.node_id:
            self._maybe_activate()
