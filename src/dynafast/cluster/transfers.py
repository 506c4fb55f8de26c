"""Ownership handoff: streaming vnodes to the nodes that gain them when the cluster changes shape.

When the cluster state carries a next ring, every partition that gains a replica needs the data first. The first
live replica of the partition under the current ring sends it: the vnode's objects go in key order, in batches,
through a byte-rate throttle, and the position reached is saved after each batch so an interrupted transfer
resumes there instead of starting over. The receiver reconciles each object into its store, so sending an object
twice is harmless. Finished transfers are reported to the claimant, which activates the next ring once all are
done. After the ring changes, a node drops its copy of each vnode it no longer holds (after a grace period for
requests in flight), and a node that has left stops.
"""
from __future__ import annotations

import asyncio
import json
import logging

from dynafast.cluster.background import cancel_and_wait
from dynafast.cluster.membership import LEFT
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


def unowned(state, me: str, busy) -> list[int]:
    """Partitions ``me`` neither holds nor will hold, and sends no transfer of: their copies may go."""
    ring, nxt = state.ring, state.next_ring
    return [p for p in range(ring.partitions)
            if me not in primaries(ring, p, ring.n)
            and not (nxt is not None and me in primaries(nxt, p, nxt.n))
            and p not in busy]


class Transfers:
    """Ports: the node's id, a membership view (which also takes finished transfers), the vnodes and their trees,
    durability, the transport, the clock, the metadata files, and ``on_left`` (called once this node has left and
    handed everything off)."""

    def __init__(self, *, me: str, membership, ownership, vnodes, trees, durability, transport, clock, files, on_left,
                 repairing=frozenset(), bytes_per_second: float = 8 << 20, batch_bytes: int = 64 << 10,
                 drop_grace: float = 5.0,
                 peer_timeout: float = 5.0):
        self.me = me
        self.membership = membership
        self.ownership = ownership
        self.vnodes = vnodes
        self.trees = trees
        self.repairing = repairing  # partitions this node is repairing after amnesia: not a source yet
        self.durability = durability
        self.transport = transport
        self.files = files
        self.on_left = on_left
        self.bucket = TokenBucket(bytes_per_second, burst=max(batch_bytes * 2, bytes_per_second),
                                  clock=clock.monotonic)
        self.batch_bytes = batch_bytes
        self.drop_grace = drop_grace
        self.peer_timeout = peer_timeout
        self.running: dict[tuple[int, str], asyncio.Task] = {}
        self.completed = 0
        self.objects_sent = 0
        self.bytes_sent = 0
        self.objects_received = 0
        self._cursors: dict[str, str] = self._load_cursors()
        self._unreported: set[tuple[int, str]] = set()
        self._tasks: set[asyncio.Task] = set()
        self._closed = False

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
        if old is not None and old.ring.digest() != new.ring.digest():
            self._spawn(self._drop_unowned_later())
        me = new.members.get(self.me)
        if me is not None and me.status == LEFT and old is not None:
            old_me = old.members.get(self.me)
            if old_me is None or old_me.status != LEFT:
                self._spawn(self._leave_later())

    def schedule(self, state) -> None:
        """Start the transfers this node must send for the state's next ring."""
        if state.next_ring is None:
            self._cursors = {}
            return
        for partition, target in to_send(state, self.me, self.membership.is_up, self.running, self.repairing):
            task = asyncio.ensure_future(self._transfer(partition, target, state.next_ring.digest()))
            self.running[(partition, target)] = task
            task.add_done_callback(lambda t, key=(partition, target): self.running.pop(key, None))

    async def _transfer(self, partition: int, target: str, next_digest: bytes) -> None:
        name = self._cursor_name(partition, target, next_digest)
        after = bytes.fromhex(self._cursors.get(name, "")) if name in self._cursors else None
        try:
            batch_keys, batch_raws, size = [], [], 0
            for key, raw in self.vnodes.handoff_items(partition, after):
                batch_keys.append(key)
                batch_raws.append(raw)
                size += len(key) + len(raw)
                if size >= self.batch_bytes:
                    await self._send(partition, target, batch_keys, batch_raws, size, name)
                    batch_keys, batch_raws, size = [], [], 0
            if batch_keys:
                await self._send(partition, target, batch_keys, batch_raws, size, name)
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
    async def _drop_unowned_later(self) -> None:
        await asyncio.sleep(self.drop_grace)
        busy = {p for p, _ in self.running}
        for partition in unowned(self.membership.state, self.me, busy):
            if not self.vnodes.is_empty(partition):
                self.vnodes.drop(partition)
                self.trees.drop(partition)
                log.info("dropped partition %d: it moved to its new owners", partition)

    async def _leave_later(self) -> None:
        await self._drop_unowned_later()
        log.info("%s has left the cluster; stopping", self.me)
        self.on_left()

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
        pending = len(state.required_transfers() - state.done) if state.next_ring is not None else 0
        return {
            "running": len(self.running),
            "pending_cluster_wide": pending,
            "completed": self.completed,
            "objects_sent": self.objects_sent,
            "objects_received": self.objects_received,
            "bytes_sent": self.bytes_sent,
        }

    # Objects reconciled per slice before the event loop gets a turn: clients are served between slices.
    RECEIVE_SLICE = 128

    def handle_transfer(self, transfer):
        self.ownership.check_member(self.membership, transfer.partition)
        return self.receive(transfer.partition, transfer.keys, transfer.objects)

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
