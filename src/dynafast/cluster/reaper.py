"""Tombstone reaping: a delete's tombstone leaves once every primary holds it and a delay has passed.

The other primaries go first and this node last: each is asked whether it still holds exactly this tombstone,
then to remove it. If any cannot confirm or remove it, this node keeps its tombstone (its next write of the key
then supersedes it, and anti-entropy spreads it back where it was removed). Nothing is reaped while the ring is
changing: a next-ring replica may hold the tombstone too. Nor for a while after it changed (``hold``): an old
owner hands its copy of a vnode to the new primaries before dropping it, and an object of that copy whose key
was deleted and reaped meanwhile would come back as new to them.

Ports: config, a membership view, the vnodes, the transport; timers are the event loop's.
"""
from __future__ import annotations

import asyncio
import logging

from dynafast.cluster.background import cancel_and_wait
from dynafast.cluster.preflist import primaries
from dynafast.errors import DynafastError
from dynafast.net.messages import Msg

log = logging.getLogger("dynafast.reaper")


class Reaper:
    def __init__(self, *, config, versions, membership, ownership, vnodes, transport):
        self.config = config
        self.me = config.node_id
        self.Siblings = versions.Siblings
        self.membership = membership
        self.ownership = ownership
        self.vnodes = vnodes
        self.transport = transport
        self.reaped = 0
        self._timers: set = set()
        self._tasks: set[asyncio.Task] = set()
        self._closing = False
        self._moved_at: dict[int, float] = {}  # partition -> event loop time a ring change took a replica away

    def schedule(self, partition: int, key: bytes, tombstone, raw: bytes) -> None:
        """Every primary acknowledged this tombstone: reap it after the tombstone delay."""
        if self._closing:
            return
        loop = asyncio.get_running_loop()
        handle = loop.call_later(self.config.tombstone_delay, self._start, partition, key, tombstone, raw)
        self._timers.add(handle)

    def _start(self, partition, key, tombstone, raw) -> None:
        now = asyncio.get_running_loop().time()
        self._timers = {h for h in self._timers if not h.cancelled() and h.when() > now}
        if self._closing:
            return
        task = asyncio.ensure_future(self.reap(partition, key, tombstone, raw))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def on_state(self, old, new) -> None:
        """A membership listener: note the partitions an adopted ring change took a replica away from (their
        old owner hands its copy off)."""
        if old is None or old.ring.digest() == new.ring.digest():
            return
        now = asyncio.get_running_loop().time()
        for partition in range(new.ring.partitions):
            if set(primaries(old.ring, partition, old.ring.n)) - set(primaries(new.ring, partition, new.ring.n)):
                self._moved_at[partition] = now

    @property
    def hold(self) -> float:
        """Seconds after a ring change took a replica of a partition away without reaping there: old owners hand off after ``drop_grace``, and the
        hand-off of a vnode that was streamed already takes a few tree comparisons."""
        return 2 * self.config.drop_grace + self.config.tombstone_delay

    def primaries_to_ask(self, partition: int) -> list[str] | None:
        """The other primaries, in the order to ask them; None when reaping must wait (the ring changes)."""
        if self.membership.next_ring is not None:
            return None
        moved = self._moved_at.get(partition)
        if moved is not None and asyncio.get_running_loop().time() - moved < self.hold:
            return None
        return [node for node in primaries(self.membership.ring, partition, self.config.n) if node != self.me]

    async def reap(self, partition: int, key: bytes, tombstone, raw: bytes) -> bool:
        others = self.primaries_to_ask(partition)
        if others is None:
            return False
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
        self._closing = True
        for handle in self._timers:
            handle.cancel()
        self._timers.clear()
        await cancel_and_wait(list(self._tasks))
