"""Hinted handoff: a fallback replays the writes it holds for a primary that was down, once it is back.

Hints are replayed in batches, throttled; a hint is dropped only after the owner acknowledged it durably, so an
interrupted delivery resumes with what is left. Hints held longer than the hint window are dropped undelivered
(their keys are left to anti-entropy). How long a hint was held is measured on this node's wall clock from when
it received the hint (kept with the hint): the version timestamps, stamped on the coordinator's clock, play no
part, so a fallback whose clock runs hours ahead of the coordinator's keeps a fresh hint. A receipt time in this
clock's future (the clock was set back) counts as just received. While the node runs, a step back of its wall
clock does not lengthen the window, nor does a step forward shorten it (``SteadyWall``): hints must not outlive
tombstones (``tombstone_delay``), nor expire before they were handed to the key's other primaries.

A hint is never dropped because its owner cannot take it any more: hints for an owner that left the cluster go
to the key's current primaries instead (the owner's vnode moved there, perhaps before this write reached it), and
so does every hint for an owner that is down when this node itself has left and is handing off before it stops
(``hand_off_all``); a leaving node expires nothing.

A hint may be one of the ``w`` copies a write was acknowledged with (sloppy quorum: the coordinator reached one
primary and this fallback, say), so dropping it undelivered is safe only once the key's other primaries hold what it
carries. A hint still held halfway through its window therefore also goes to the key's other primaries that are up
(a TRANSFER, answered once on their disks), and is dropped once all of them took it: its owner gets it from them
by anti-entropy. Otherwise the write would rest on one primary's disk alone when the hint expires, and losing that
disk (a truncated log, a wipe) would lose an acknowledged write although fewer than ``w`` of its copies were lost.
A hint whose holder reaches none of them (nor its owner) before the window ends is still dropped: kept longer, it
could bring back a value deleted and reaped meanwhile (docs/operations.md lists that as weakening the promise).

``plan`` decides (no I/O): which hints of one owner go in the next batch, where to, and which expire.
``deliver`` carries it out over the transport. Ports: config, a membership view, the vnodes (hints live in the
node's store), durability, the transport, the clock.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

from dynafast.cluster.durability import durable_reply
from dynafast.cluster.handover import give, live_primaries
from dynafast.cluster.ports import peer_failed
from dynafast.cluster.preflist import primaries
from dynafast.cluster.throttle import TokenBucket
from dynafast.errors import DynafastError
from dynafast.net.messages import Msg

log = logging.getLogger("dynafast.hints")


@dataclass
class Plan:
    """What to do with one owner's hints this round."""

    owner: str
    batch: list = field(default_factory=list)    # (partition, key, siblings, raw) to send
    expired: list = field(default_factory=list)  # (partition, key, siblings) to drop undelivered
    redirect: bool = False                       # the batch goes to the keys' current primaries, not the owner
    aged: list = field(default_factory=list)     # (partition, key, siblings, raw) past half the window: they go
                                                 # to the keys' other primaries too, before they can expire


def plan(owner: str, hints, *, now: float, window: float, deliverable: bool, batch_size: int,
         redirect: bool = False, expire: bool = True, unstamped: float | None = None) -> Plan:
    """Choose this round's batch for ``owner`` from its hints ``(partition, key, siblings, received)``.

    ``redirect``: the owner cannot take them (it left, or this node is leaving and the owner is down): the batch
    goes to the keys' current primaries. ``expire``: hints held longer than ``window`` are dropped. ``now`` and
    ``received`` are this node's wall clock; a hint stored without a receipt time (by an older version) counts
    as received at ``unstamped`` (default ``now``).
    """
    result = Plan(owner, redirect=redirect)
    for partition, key, siblings, received in hints:
        item = None
        if expire:
            if received is None:
                received = now if unstamped is None else unstamped
            if now - received > window:
                result.expired.append((partition, key, siblings))
                continue
            if not redirect and now - received > window / 2 and len(result.aged) < batch_size:
                item = (partition, key, siblings, siblings.to_bytes())
                result.aged.append(item)
        if not deliverable:
            continue  # only expiring (and handing aged ones to the other primaries) this round
        result.batch.append(item or (partition, key, siblings, siblings.to_bytes()))  # encoded once
        if len(result.batch) >= batch_size:
            break
    return result


class SteadyWall:
    """This node's wall clock as it read when the process started, moved on by the monotonic clock since: steps of
    the wall clock while the process runs (an operator or NTP setting it back or forward) change nothing here.

    Hints are stamped with it when they arrive and aged by it. Set back, a raw wall clock would lengthen the
    window past ``tombstone_delay``; stepped forward, it would drop hints early, among them a hint that is one of
    the ``w`` copies of an acknowledged write, before it went to the key's other primaries halfway through its
    window (and the write was lost when the one primary holding it lost its disk). Across a restart the stored
    receipt times are compared with the new process's reading of the wall clock.
    """

    def __init__(self, clock):
        self.monotonic = clock.monotonic
        self._anchor = clock.wall() - clock.monotonic()

    def wall(self) -> float:
        return self._anchor + self.monotonic()


class HintedHandoff:
    def __init__(self, *, config, versions, membership, vnodes, durability, transport, clock):
        self.config = config
        self.Siblings = versions.Siblings
        self.membership = membership
        self.vnodes = vnodes
        self.durability = durability
        self.transport = transport
        self.clock = clock  # the node's SteadyWall, which the vnodes stamp hints' receipts with too
        self.bucket = TokenBucket(config.handoff_bytes_per_second, clock=clock.monotonic)
        # A batch is answered after an fsync: it gets five peer timeouts, but never more than an eighth of the
        # window. Owners and partitions are served one after another, so a call to an owner that hangs holds the
        # round up, and hints aging meanwhile must still reach their other primaries before they expire.
        self.call_timeout = min(config.peer_timeout * 5, config.hint_window / 8)
        self.delivered = 0
        self.expired = 0
        self.started = clock.wall()  # when hints stored without a receipt time count as received
        # owner -> {(partition, key): (siblings, primaries that took that version of the aged hint)}
        self._given: dict[str, dict] = {}

    def plans(self, leaving: bool = False) -> list[Plan]:
        now = self.clock.wall()
        members = self.membership.members
        result = []
        for owner in sorted(self.vnodes.hint_owners()):
            member = members.get(owner)
            # An owner that left (or was never admitted) will not take them: its partitions' primaries will.
            gone = member is None or member.status == "left"
            up = not gone and self.membership.is_up(owner)
            redirect = gone or (leaving and not up)
            result.append(plan(owner, self.vnodes.hints(owner), now=now, window=self.config.hint_window,
                               deliverable=up or redirect, batch_size=self.config.handoff_batch,
                               redirect=redirect, expire=not gone and not leaving, unstamped=self.started))
        return result

    async def deliver(self, leaving: bool = False) -> int:
        """One round: each owner's next batch; returns how many hints were delivered (to the owner or not)."""
        delivered = 0
        for step in self.plans(leaving):
            for partition, key, siblings in step.expired:
                if self.vnodes.drop_hint_if_equal(step.owner, partition, key, siblings):
                    self.expired += 1
            if step.expired:
                log.info("dropped %d hints for %s older than the hint window", len(step.expired), step.owner)
            if not step.aged:
                self._given.pop(step.owner, None)
            else:
                # First, so that an owner that takes no hints (and times out) cannot hold them up.
                gone = await self._secure(step.owner, step.aged)
                delivered += len(gone)
                step.batch = [item for item in step.batch if (item[0], item[1]) not in gone]
            if step.batch and step.redirect:
                delivered += await self._redirect(step.owner, step.batch)
            elif step.batch:
                delivered += await self._send(step.owner, step.batch)
        self.delivered += delivered
        return delivered

    async def hand_off_all(self) -> bool:
        """This node has left: deliver every hint it holds, wherever it can go. True once none is left."""
        while self.vnodes.hint_owners():
            if not await self.deliver(leaving=True):
                return False  # nobody could take what is left this time: the caller tries again later
        return True

    async def _send(self, owner: str, batch) -> int:
        await self.bucket.take(sum(len(key) + len(raw) for _, key, _, raw in batch))
        fields = ([p for p, _, _, _ in batch], [k for _, k, _, _ in batch], [r for _, _, _, r in batch])
        try:
            _, reply = await self.transport.call(self.membership.address_of(owner), Msg.HINT_PUSH, fields,
                                                 self.call_timeout)
        except Exception as exc:  # noqa: BLE001 - filtered just below
            if not peer_failed(exc):
                raise
            self.membership.mark_down(owner, exc)
            return 0
        delivered = 0
        if reply and reply[0]:
            for partition, key, siblings, _ in batch:
                # A newer hint that arrived meanwhile stays for the next round.
                if self.vnodes.drop_hint_if_equal(owner, partition, key, siblings):
                    delivered += 1
        return delivered

    async def _redirect(self, owner: str, batch) -> int:
        """The owner cannot take these: give each partition's hints to its current primaries (but the owner)."""
        by_partition: dict[int, list] = {}
        for item in batch:
            by_partition.setdefault(item[0], []).append(item)
        delivered = 0
        for partition, items in sorted(by_partition.items()):
            await self.bucket.take(sum(len(key) + len(raw) for _, key, _, raw in items))
            targets = live_primaries(self.membership, partition, self.config.node_id, exclude=owner)
            try:
                await give(self.transport, self.membership, targets, partition, [k for _, k, _, _ in items],
                           [r for _, _, _, r in items], self.call_timeout, hints=True)
            except (DynafastError, OSError) as exc:  # down, timed out, or not a primary in its ring (yet)
                log.info("hints for %s of partition %d not handed to its primaries yet: %s", owner, partition, exc)
                continue
            for _, key, siblings, _ in items:
                if self.vnodes.drop_hint_if_equal(owner, partition, key, siblings):
                    delivered += 1
        return delivered

    async def _secure(self, owner: str, aged) -> set:
        """Hints past half their window: give them to their partitions' other primaries that are up (not the
        owner), each primary once per version, and drop a hint once every other primary holds it durably (its
        owner then gets it from them by anti-entropy). Returns the (partition, key) pairs dropped.

        Until then the hint stays, and may still go to its owner or expire: by then the primaries that took it
        hold the write too, so its expiry no longer leaves it on the coordinator's copy alone."""
        held = {(partition, key): siblings for partition, key, siblings, _ in aged}
        # What each other primary took, kept for the hints still aged and unchanged (a newer version starts over).
        given = {item: nodes for item, (siblings, nodes) in self._given.get(owner, {}).items()
                 if held.get(item) == siblings}
        by_partition: dict[int, list] = {}
        for item in aged:
            by_partition.setdefault(item[0], []).append(item)
        ring = self.membership.state.ring
        me = self.config.node_id
        dropped = set()
        for partition, items in sorted(by_partition.items()):
            others = {node for node in primaries(ring, partition, ring.n) if node not in (me, owner)}
            for node in live_primaries(self.membership, partition, me, exclude=owner):
                missing = [item for item in items if node not in given.get((partition, item[1]), ())]
                if not missing:
                    continue
                await self.bucket.take(sum(len(key) + len(raw) for _, key, _, raw in missing))
                try:
                    # One primary at a time: one that is down or refuses must not keep the others from taking them.
                    await give(self.transport, self.membership, [node], partition, [k for _, k, _, _ in missing],
                               [r for _, _, _, r in missing], self.call_timeout, hints=True)
                except (DynafastError, OSError) as exc:
                    if peer_failed(exc):
                        self.membership.mark_down(node, exc)
                    log.info("aged hints for %s of partition %d not handed to %s yet: %s", owner, partition,
                             node, exc)
                    continue
                for _, key, _, _ in missing:
                    given[(partition, key)] = given.get((partition, key), frozenset()) | {node}
            for _, key, siblings, _ in items:
                if others and others <= given.get((partition, key), frozenset()) and \
                        self.vnodes.drop_hint_if_equal(owner, partition, key, siblings):
                    dropped.add((partition, key))
                    given.pop((partition, key), None)
        self._given[owner] = {item: (held[item], nodes) for item, nodes in given.items()}
        return dropped

    def handle_hint_push(self, fields):
        """Hints delivered to us, their owner: reconcile them all, then one durable sync for the batch."""
        # Not checked against ownership: the hints are for this node by name, and refusing one partition would
        # hold back every other hint of the batch.
        for partition, key, raw in zip(fields.partitions, fields.keys, fields.objects, strict=True):
            self.vnodes.handoff_data(partition, key, raw)
        return durable_reply(self.durability, Msg.HINT_PUSH_REPLY)
