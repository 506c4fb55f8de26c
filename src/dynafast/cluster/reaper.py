"""Tombstone reaping: a delete's tombstone leaves once every primary holds it and the tombstone delay has passed.

Why the delay is long: a tombstone is the only thing that tells a replica that an older version it is handed
later (a hint replayed late, a read repair or transfer still in flight) was deleted. Once it is gone, such a
version would simply be stored again and the deleted value would be back. Every such carrier is bounded in
time: a hint is dropped ``hint_window`` after its holder received it, and repairs and transfers are bounded by
request timeouts. So a tombstone is kept for ``tombstone_delay``, which the configuration requires to exceed
``hint_window`` (Cassandra's gc_grace plays the same part).

Which tombstones: the coordinator of a delete that every primary acknowledged queues it; so does any primary
that finds a tombstone when it builds a vnode's Merkle tree (after a restart, or when the coordinator's reap
could not finish). A queued reap waits out the delay on this node's monotonic clock, so wall-clock jumps
cannot shorten it. A reap is queued for one version of the key (its digest): if the key was written and deleted
again meanwhile, the tombstone found when the reap comes due is another, perhaps only just written, and it is
queued afresh for the whole delay rather than reaped then. (One queued reap per key: without this, the reap of
a first delete, coming due just after a second one, removed the second tombstone at once, and a read repair
still in flight from before the second delete brought its value back.)

How: the other primaries go first and this node last. Each is asked whether it still holds exactly this
tombstone, then to remove it. If any cannot confirm or remove it, this node keeps its tombstone (anti-entropy
spreads it back where it was removed) and tries again later. Nothing is reaped while the ring is changing: a
next-ring replica may hold the tombstone too. Nor for a while after it changed (``hold``): an old owner hands
its copy of a vnode to the new primaries before dropping it, and an object of that copy whose key was deleted
and reaped meanwhile would come back as new to them.

Expired objects (every live value past its TTL, ``expiry``) are reaped the same way: they read as deleted, and
are removed once every primary holds that same version, ``tombstone_delay`` after they expired. The coordinator
of a TTL put that every primary acknowledged queues it for then; tree builds find the others.

Ports: config, a membership view, the vnodes, the transport, the clock.
"""
from __future__ import annotations

import asyncio
import heapq
import logging

from dynafast.cluster import expiry
from dynafast.cluster.background import cancel_and_wait
from dynafast.cluster.preflist import primaries
from dynafast.errors import DynafastError
from dynafast.net.messages import Msg

log = logging.getLogger("dynafast.reaper")

# Queued reaps are (due, partition, key) and the digest of the version to reap: ~200 bytes each. Past this many,
# more tombstones are left for the tree scan after the next restart to find, so that a burst of deletes cannot
# grow the node without bound.
MAX_QUEUED = 1_000_000


class Reaper:
    def __init__(self, *, config, versions, membership, ownership, vnodes, transport, clock,
                 max_queued: int = MAX_QUEUED):
        self.config = config
        self.me = config.node_id
        self.Siblings = versions.Siblings
        self.membership = membership
        self.ownership = ownership
        self.vnodes = vnodes
        self.transport = transport
        self.clock = clock
        self.max_queued = max_queued
        self.reaped = 0
        self.overflowed = 0
        # A heap by due time (TTLs make delays differ): the loop only ever looks at the head.
        self._queue: list = []
        # (partition, key) in the queue -> the digest of the version its reap is for: a key is queued once.
        self._queued: dict = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._moved_at: dict[int, float] = {}  # partition -> when (monotonic) a ring change took a replica away
        # What happened to the ring before this start is unknown: every partition counts as just changed.
        self._started = clock.monotonic()

    @property
    def pending(self) -> int:
        return len(self._queue)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    def schedule(self, partition: int, key: bytes, obj, delay: float | None = None) -> None:
        """Reap ``obj``, this key's tombstone (or expiring object), once ``delay`` (default: the tombstone delay)
        has passed. Whatever else the key holds by then is not reaped then, only queued again."""
        self._push(partition, key, obj.digest(), self.config.tombstone_delay if delay is None else delay)

    def _push(self, partition: int, key: bytes, digest: bytes, delay: float) -> None:
        entry = (partition, key)
        if entry in self._queued:
            return  # the version queued first comes due first; a later one is queued afresh then
        if len(self._queue) >= self.max_queued:
            self.overflowed += 1
            return
        self._queued[entry] = digest
        due = self.clock.monotonic() + delay
        heapq.heappush(self._queue, (due, partition, key))
        if len(self._queue) == 1:
            self._wake.set()

    def found(self, partition: int, key: bytes, siblings) -> None:
        """A vnode scan came across an object: queue it when it is a tombstone, or an object whose values all
        expire, of which this node is a primary."""
        if siblings.is_deleted():
            delay = None
        else:
            gone_at = expiry.gone_at(siblings)
            if gone_at is None:
                return
            left = max(0.0, gone_at / 1000.0 - self.clock.wall())
            delay = left + self.config.tombstone_delay
        if self.membership.state is not None and \
                self.me in primaries(self.membership.ring, partition, self.config.n):
            self.schedule(partition, key, siblings, delay)

    async def _run(self) -> None:
        queue = self._queue
        while True:
            if not queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            due, partition, key = queue[0]
            wait = due - self.clock.monotonic()
            if wait > 0:
                # A sooner reap queued meanwhile waits for the next look: at most a minute late.
                await asyncio.sleep(min(wait, 60.0))
                continue
            heapq.heappop(queue)
            digest = self._queued.pop((partition, key), None)
            try:
                done = await self.reap(partition, key, digest)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - one bad reap must not stop the others
                log.exception("reaping a tombstone failed")
                done = False
            if done is False:
                # Not now (a primary did not answer, or the ring is changing): try again later.
                # The same version, which has waited out its delay already.
                self._push(partition, key, digest, max(1.0, self.config.tombstone_delay / 10))

    def on_state(self, old, new) -> None:
        """A membership listener: note the partitions an adopted ring change took a replica away from (their
        old owner hands its copy off)."""
        if old is None or old.ring.digest() == new.ring.digest():
            return
        now = self.clock.monotonic()
        for partition in range(new.ring.partitions):
            if set(primaries(old.ring, partition, old.ring.n)) - set(primaries(new.ring, partition, new.ring.n)):
                self._moved_at[partition] = now

    @property
    def hold(self) -> float:
        """Seconds after a ring change took a replica of a partition away without reaping there: old owners hand
        off after ``drop_grace``, and the hand-off of a vnode that was streamed already takes a few tree
        comparisons."""
        return 2 * self.config.drop_grace + self.config.tombstone_delay

    def held(self, partition: int) -> bool:
        """Whether the partition's tombstones are held back after a ring change (or this node's start): while
        they are, old owners may still hand their copies over; after that, such a copy could hold a value
        whose tombstone is gone, and is refused."""
        return self.clock.monotonic() - self._moved_at.get(partition, self._started) < self.hold

    def primaries_to_ask(self, partition: int) -> list[str] | None:
        """The other primaries, in the order to ask them; None when reaping must wait (the ring changes)."""
        if self.membership.next_ring is not None or self.held(partition):
            return None
        return [node for node in primaries(self.membership.ring, partition, self.config.n) if node != self.me]

    async def reap(self, partition: int, key: bytes, digest: bytes | None = None) -> bool | None:
        """Remove the key's tombstone (or expired object) everywhere. None: nothing to reap now (the key was
        written again meanwhile). ``digest``: the version the reap was queued for; another one found instead
        (written since, perhaps deleted again) is queued for its own full delay."""
        tombstone = self.vnodes.get(partition, key)
        if tombstone is None:
            return None
        if digest is not None and tombstone.digest() != digest:
            self.found(partition, key, tombstone)  # how long it has been there is unknown: the whole delay
            return None
        if not expiry.gone(tombstone, int(self.clock.wall() * 1000)):
            self.found(partition, key, tombstone)  # its expiry was put off (a later TTL put): reap it then
            return None
        others = self.primaries_to_ask(partition)
        if others is None:
            return False
        raw = tombstone.to_bytes()
        call = self.transport.call
        timeout = self.config.peer_timeout
        try:
            for node in others:
                _, reply = await call(self.membership.address_of(node), Msg.REPLICA_GET, (partition, key, None),
                                      timeout)
                if reply[0] is None or self.Siblings.from_bytes(reply[0]) != tombstone:
                    return False
            for node in others:
                _, reply = await call(self.membership.address_of(node), Msg.REAP, (partition, key, raw), timeout)
                if not reply[0]:
                    return False
        except DynafastError:
            return False  # keep the tombstone here; anti-entropy spreads it back where it was removed
        if self.me in primaries(self.membership.ring, partition, self.config.n):
            self.vnodes.remove_if_equal(partition, key, tombstone)
        self.reaped += 1
        return True

    def handle_reap(self, reap):
        self.ownership.check_member(self.membership, reap.partition)
        removed = self.vnodes.remove_if_equal(reap.partition, reap.key, self.Siblings.from_bytes(reap.object))
        return (Msg.REAP_REPLY, (removed,))

    async def stop(self) -> None:
        await cancel_and_wait([self._task])
        self._queue.clear()
        self._queued.clear()
