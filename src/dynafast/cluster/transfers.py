"""Ownership handoff: streaming vnodes to the nodes that gain them when the cluster changes shape.

When the cluster state carries a next ring, every partition that gains a replica needs the data first. The first
live replica of the partition under the current ring sends it: the vnode's objects go in key order, in batches,
through a byte-rate throttle, and the position reached is saved after each batch so an interrupted transfer
resumes there instead of starting over. The receiver reconciles each object into its store, so sending an object
twice is harmless. Then the partition's Paxos state follows, merged from a quorum of its old replicas
(``paxosmove``: conditional writes need what a quorum accepted, not what one replica holds). Finished transfers
are reported to the claimant, which activates the next ring once all are done.

After the ring changes, a node drops its copy of each vnode it no longer holds, after a grace period for requests
in flight. A node that has left hands its copies off first: every object the partition's current primaries lack
goes to them (found by comparing Merkle trees, so a vnode that was streamed already costs a few hashes), and a copy
is dropped once they acknowledged it durably and nothing was written to it meanwhile. The transfers above do not
make this redundant: a leaver that was cut off while the others streamed its partitions kept accepting writes they
never saw (the claimant waits until it is back before it activates the ring). It hands off the hints it holds too
(``hand_off_hints``), and stops only when it holds no data at all; until then it retries.

Every old owner hands off this way, not only a leaver: the stream came from one old replica, and writes the
others acknowledged while it ran (a coordinator that had not learned of the next ring yet sends to the old
replicas only) would otherwise be dropped with them. A copy handed over late may hold a value whose key was
deleted, and reaped, meanwhile, and the primaries would take it for new; so the primaries hold back reaping in a
partition for a while after a ring change took a replica of it away (``Reaper.hold``: longer than the tombstone
delay), and refuse a hand-off that comes later than that (a node cut off for longer). Such a copy is dropped
without being handed over, and the node logs how many objects that was.
"""
from __future__ import annotations

import asyncio
import json
import logging

from dynafast.cluster.background import cancel_and_wait
from dynafast.cluster.handover import REFUSED, HandOffRefused, give, live_primaries
from dynafast.cluster.membership import LEFT
from dynafast.cluster.paxos import paxos_prefix
from dynafast.cluster.preflist import primaries
from dynafast.cluster.throttle import TokenBucket
from dynafast.errors import DynafastError, ProtocolError
from dynafast.net.messages import Msg

log = logging.getLogger("dynafast.handoff")


CURSORS = "transfers.json"


def to_send(state, me: str, is_up, running, repairing=()) -> list[tuple[int, str]]:
    """The (partition, target) transfers ``me`` must start now: those still needed for the next ring whose
    sender it is (the first live primary of the partition under the current ring), and not running already.
    A vnode being repaired after amnesia is sent once it is whole again."""
    chosen = []
    for partition, target in sorted(state.required_transfers() - state.done):
        if (partition, target) in running or partition in repairing:
            continue
        senders = [n for n in primaries(state.ring, partition, state.ring.n) if n == me or is_up(n)]
        if senders and senders[0] == me:
            chosen.append((partition, target))
    return chosen


def unowned(state, me: str) -> list[int]:
    """Partitions ``me`` neither holds nor will hold: their copies go, once handed off."""
    ring, nxt = state.ring, state.next_ring
    return [p for p in range(ring.partitions)
            if me not in primaries(ring, p, ring.n)
            and not (nxt is not None and me in primaries(nxt, p, nxt.n))]


class Transfers:
    """Ports: the node's id, a membership view (which also takes finished transfers), the vnodes and their trees,
    durability, the transport, the clock, the metadata files, ``hand_off_hints`` (async; true once this node holds
    no hint), ``move_paxos`` (async; the partition's Paxos state to the target, once its objects are there) and
    ``on_left`` (called once this node has left and handed everything off)."""

    def __init__(self, *, me: str, membership, ownership, vnodes, trees, durability, transport, clock, files, on_left,
                 hand_off_hints, move_paxos, accepts_hand_off=lambda partition: True, repairing=frozenset(),
                 bytes_per_second: float = 8 << 20, batch_bytes: int = 64 << 10, drop_grace: float = 5.0,
                 peer_timeout: float = 5.0):
        self.me = me
        self.membership = membership
        self.ownership = ownership
        self.vnodes = vnodes
        self.trees = trees
        self.repairing = repairing  # partitions this node is repairing after amnesia: not a source yet
        self.accepts_hand_off = accepts_hand_off  # partition -> whether an old owner's copy may still come
        self.refused = 0
        self.durability = durability
        self.transport = transport
        self.files = files
        self.on_left = on_left
        self.hand_off_hints = hand_off_hints
        self.move_paxos = move_paxos  # async (partition, target, state): the partition's Paxos state (``paxosmove``)
        self.bucket = TokenBucket(bytes_per_second, burst=max(batch_bytes * 2, bytes_per_second),
                                  clock=clock.monotonic)
        self.batch_bytes = batch_bytes
        self.drop_grace = drop_grace
        self.peer_timeout = peer_timeout
        self.running: dict[tuple[int, str], asyncio.Task] = {}
        # (partition, target) -> [objects sent by this run, objects the vnode held when it started]
        self.progress: dict[tuple[int, str], list[int]] = {}
        self.completed = 0
        self.objects_sent = 0
        self.bytes_sent = 0
        self.objects_received = 0
        self._cursors: dict[str, str] = self._load_cursors()
        self._unreported: set[tuple[int, str]] = set()
        self._tasks: set[asyncio.Task] = set()
        self._closed = False
        self._handing_off: asyncio.Task | None = None
        self._again = False  # the cluster state changed during a hand-off pass
        self.handed_off = 0  # vnodes handed off and dropped
        self.to_hand_off = 0  # vnodes the hand-off pass under way has left to do (progress for status)

    # -- persistence of the positions reached ------------------------------------------------------------
    def _load_cursors(self) -> dict[str, str]:
        raw = self.files.read(CURSORS)
        try:
            data = json.loads(raw) if raw else {}
        except ValueError:
            return {}
        return data if isinstance(data, dict) else {}

    def _save_cursors(self) -> None:
        self.files.write(CURSORS, json.dumps(self._cursors).encode())

    @staticmethod
    def _cursor_name(partition: int, target: str, digest: bytes) -> str:
        return f"{partition}:{target}:{digest.hex()}"

    # -- reacting to cluster state changes -----------------------------------------------------------------
    def on_state(self, old, new) -> None:
        if self._closed:
            return
        self.schedule(new)
        if old is None:
            self._hand_off_soon()  # a restart: whatever a hand-off under way then had left to do
            return
        me, old_me = new.members.get(self.me), old.members.get(self.me)
        left = me is not None and me.status == LEFT and (old_me is None or old_me.status != LEFT)
        if left or old.ring.digest() != new.ring.digest():
            self._hand_off_soon()

    def schedule(self, state) -> None:
        """Start the transfers this node must send for the state's next ring."""
        if state.next_ring is None:
            self._cursors = {}
            return
        for partition, target in to_send(state, self.me, self.membership.is_up, self.running, self.repairing):
            task = asyncio.ensure_future(self._transfer(partition, target, state.next_ring.digest()))
            self.running[(partition, target)] = task
            task.add_done_callback(lambda t, key=(partition, target): self._ended(key))

    def _ended(self, key: tuple[int, str]) -> None:
        self.running.pop(key, None)
        self.progress.pop(key, None)

    async def _transfer(self, partition: int, target: str, next_digest: bytes) -> None:
        name = self._cursor_name(partition, target, next_digest)
        after = bytes.fromhex(self._cursors.get(name, "")) if name in self._cursors else None
        # A count is one pass over the key index, cheaper than the key listing the stream starts with.
        progress = self.progress[(partition, target)] = [0, self.vnodes.count(partition)]
        try:
            batch_keys, batch_raws, size = [], [], 0
            for key, raw in self.vnodes.handoff_items(partition, after):
                batch_keys.append(key)
                batch_raws.append(raw)
                size += len(key) + len(raw)
                if size >= self.batch_bytes:
                    await self._send(partition, target, batch_keys, batch_raws, size, name)
                    progress[0] += len(batch_keys)
                    batch_keys, batch_raws, size = [], [], 0
            if batch_keys:
                await self._send(partition, target, batch_keys, batch_raws, size, name)
            state = self.membership.state
            if state.next_ring is None or state.next_ring.digest() != next_digest:
                raise DynafastError("the ring change it was for has ended or been replaced")
            await self.move_paxos(partition, target, state)
        except DynafastError as exc:
            log.info("transfer of partition %d to %s paused: %s", partition, target, exc)
            await asyncio.sleep(1.0)
            self._retry_later()
            return
        self.completed += 1
        self._unreported.add((partition, target))
        await self._report(next_digest)

    async def _send(self, partition, target, keys, raws, size, cursor_name) -> None:
        await self.bucket.take(size)
        address = self.membership.address_of(target)
        await self.transport.call(address, Msg.TRANSFER, (partition, keys, raws), self.peer_timeout)
        self.objects_sent += len(keys)
        self.bytes_sent += size
        self._cursors[cursor_name] = keys[-1].hex()
        self._save_cursors()

    async def _report(self, next_digest: bytes) -> None:
        await asyncio.sleep(0.05)  # transfers that finish together are reported together
        if not self._unreported:
            return
        done = sorted(self._unreported)
        fields = ([p for p, _ in done], [t for _, t in done], next_digest)
        try:
            result = self.membership.handle_transfer_done(fields)
            if asyncio.iscoroutine(result):
                await result
            self._unreported -= set(done)
        except DynafastError as exc:
            log.info("could not report finished transfers yet: %s", exc)
            self._retry_later()

    def _retry_later(self) -> None:
        async def again():
            await asyncio.sleep(1.0)
            state = self.membership.state
            if state.next_ring is not None:
                self._unreported &= state.required_transfers()
                if self._unreported:
                    await self._report(state.next_ring.digest())
                self.schedule(state)
        self._spawn(again())

    # -- after the ring changed ---------------------------------------------------------------------------
    def _hand_off_soon(self) -> None:
        self._again = True
        if self._handing_off is None or self._handing_off.done():
            self._handing_off = asyncio.ensure_future(self._hand_off())
            self._tasks.add(self._handing_off)
            self._handing_off.add_done_callback(self._tasks.discard)

    def _has_left(self) -> bool:
        me = self.membership.state.members.get(self.me)
        return me is not None and me.status == LEFT

    async def _hand_off(self) -> None:
        """Drop every vnode this node no longer holds; once it has left, hand them and its hints off first, then stop.

        Passes repeat (a second apart) until one finds nothing left to do; a node that has left never stops
        before that, however long its peers stay out of reach.
        """
        await asyncio.sleep(self.drop_grace)  # requests in flight under the old ring land first
        while True:
            self._again = False
            done = await self._hand_off_unowned()
            leaving = self._has_left()
            if leaving:
                try:
                    done = await self.hand_off_hints() and done
                except (DynafastError, OSError) as exc:
                    log.info("hints not handed off yet: %s", exc)
                    done = False
            if done and not self._again:
                break
            if not done:
                await asyncio.sleep(1.0)
        if leaving:
            log.info("%s has left the cluster and handed everything off; stopping", self.me)
            self.on_left()

    async def _hand_off_unowned(self) -> bool:
        """One pass over the vnodes this node no longer holds (a leaver hands them off first); true when none is
        left."""
        busy = {p for p, _ in self.running}
        done = True
        partitions = [p for p in unowned(self.membership.state, self.me) if not self.vnodes.is_empty(p)]
        self.to_hand_off = len(partitions)
        for partition in partitions:
            if partition in busy:
                # A stream of it is still under way (one of a ring change that others completed meanwhile ends
                # within a second or so): handed off on a later pass, never skipped, or a leaver would stop
                # holding it.
                done = False
                continue
            if not await self._hand_off_vnode(partition):
                done = False
            self.to_hand_off = max(0, self.to_hand_off - 1)
        return done

    def _drop(self, partition: int) -> None:
        self.vnodes.drop(partition)
        self.vnodes.store.delete_prefix(paxos_prefix(partition))  # no longer an acceptor of its keys either
        self.trees.drop(partition)

    async def _hand_off_vnode(self, partition: int) -> bool:
        """Give the current primaries what they lack of our copy of ``partition``, then drop it; true if dropped."""
        targets = live_primaries(self.membership, partition, self.me)
        before = self.trees.tree(partition).root()
        try:
            if not targets:
                raise DynafastError("no primary of it is up")
            for target in targets:
                await self._give_missing(partition, target)
        except HandOffRefused as exc:
            # Too late to be safe (see the module's docstring): what only this copy held cannot be told apart
            # from what was deleted since.
            log.warning("partition %d dropped without handing off its %d objects: %s", partition,
                        self.vnodes.count(partition), exc)
            self._drop(partition)
            self.refused += 1
            return True
        except (DynafastError, OSError) as exc:
            log.info("partition %d not handed off yet: %s", partition, exc)
            return False
        # Checked and dropped in one step: no write can come in between.
        if self.trees.tree(partition).root() != before:
            return False  # written to meanwhile (a read repair of a request in flight): the next pass sends it
        if partition not in unowned(self.membership.state, self.me):
            return True  # ours again meanwhile: keep it
        self._drop(partition)
        self.handed_off += 1
        log.info("dropped partition %d: handed off to %s", partition, ", ".join(targets))
        return True

    async def _give_missing(self, partition: int, target: str) -> None:
        """Send ``target`` every object of our copy whose version it does not hold; return once it has them on
        disk. The Merkle trees are compared first, so only the leaves that differ are listed."""
        address = self.membership.address_of(target)

        async def call(msg_type, fields):
            return (await self.transport.call(address, msg_type, fields, self.peer_timeout))[1]

        exchange = self.trees.merkle.TreeExchange(self.trees.tree(partition))
        while (request := exchange.next_request()) is not None:
            depth, indices = request
            exchange.feed(list((await call(Msg.MERKLE_GET, (partition, depth, list(indices))))[0]))
        leaves = exchange.result()
        keys, raws, size = [], [], 0
        for start in range(0, len(leaves), 64):
            chunk = leaves[start:start + 64]
            theirs_keys, theirs_digests = await call(Msg.KEYS_GET, (partition, chunk))
            theirs = dict(zip(theirs_keys, theirs_digests))
            for key, digest in zip(*self.trees.keys_in_leaves(partition, chunk)):
                raw = self.vnodes.get_raw(partition, key) if theirs.get(key) != digest else None
                if raw is None:
                    continue
                keys.append(key)
                raws.append(raw)
                size += len(key) + len(raw)
                if size >= self.batch_bytes:
                    await self._give(partition, target, keys, raws, size)
                    keys, raws, size = [], [], 0
        # The last batch goes even when empty: its answer comes after the target's next fsync, which makes the
        # copies it held already (written there without a durable ack, perhaps) durable too.
        await self._give(partition, target, keys, raws, size)

    async def _give(self, partition, target, keys, raws, size) -> None:
        await self.bucket.take(size)
        await give(self.transport, self.membership, [target], partition, keys, raws, self.peer_timeout)
        self.objects_sent += len(keys)
        self.bytes_sent += size

    # -- bookkeeping ----------------------------------------------------------------------------------------
    def _spawn(self, coro) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        self._closed = True
        await cancel_and_wait(list(self._tasks) + list(self.running.values()))

    def status(self) -> dict:
        state = self.membership.state
        required = state.required_transfers()  # empty without a next ring
        return {
            "running": len(self.running),
            "in_progress": [{"partition": p, "target": t, "sent": sent, "total": total}
                            for (p, t), (sent, total) in sorted(self.progress.items())],
            "pending_cluster_wide": len(required - state.done),
            "required_cluster_wide": len(required),  # of the ring change under way: progress is 1 - pending/required
            "completed": self.completed,
            "objects_sent": self.objects_sent,
            "objects_received": self.objects_received,
            "bytes_sent": self.bytes_sent,
            "handed_off": self.handed_off,
            "to_hand_off": self.to_hand_off,
            "hand_offs_refused": self.refused,
            "handing_off": self._handing_off is not None and not self._handing_off.done(),
        }

    # Objects reconciled per slice before the event loop gets a turn: clients are served between slices.
    RECEIVE_SLICE = 128

    def handle_transfer(self, transfer):
        self.ownership.check_member(self.membership, transfer.partition)
        # Hinted writes are younger than hint_window, which tombstones outlive: they are never too late.
        if not transfer.hints and not self.accepts_hand_off(transfer.partition) \
                and not self._gaining(transfer.partition):
            return (REFUSED,)  # an old owner's copy, later than tombstones are held back: see the docstring
        return self.receive(transfer.partition, transfer.keys, transfer.objects)

    def _gaining(self, partition: int) -> bool:
        """Whether this node gains ``partition`` in the ring change under way: then a batch is the stream of
        that change (which goes only to the nodes that gain a partition). An old owner hands its copy to the
        primaries of the active ring, never to such a node; a copy of its coming to one of those later than
        tombstones are held back is refused whether or not a ring change is under way meanwhile."""
        state = self.membership.state
        nxt = state.next_ring
        return (nxt is not None and self.me in primaries(nxt, partition, nxt.n)
                and self.me not in primaries(state.ring, partition, state.ring.n))

    async def receive(self, partition: int, keys, raws) -> tuple:
        """A batch of a vnode streamed to us: reconcile each object into our replica."""
        if len(keys) != len(raws):
            raise ProtocolError("a transfer batch needs as many objects as keys")
        take = self.vnodes.handoff_data
        for start in range(0, len(keys), self.RECEIVE_SLICE):
            for key, raw in zip(keys[start:start + self.RECEIVE_SLICE], raws[start:start + self.RECEIVE_SLICE]):
                take(partition, key, raw)
            await asyncio.sleep(0)
        # The sender moves its cursor past this batch on our reply, and the old owner drops its copy once the
        # move completes: the batch must be on disk first.
        await self.durability.wait()
        self.objects_received += len(keys)
        return (len(keys),)
