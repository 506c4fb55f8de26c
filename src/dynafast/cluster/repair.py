"""Repair after amnesia: vnodes that may have lost acknowledged writes pull them back from the other replicas.

A node that starts after a crash, with a wiped or damaged data directory, or with a store whose recovery lost
records, may lack writes it acknowledged. Until each of its vnodes has compared itself with the partition's other
replicas, that vnode is *repairing*:

- its "not found" does not outvote replicas that have the key (a get waits for another replica's answer);
- it is not a transfer source (a joining node must not copy a vnode with holes);
- it is repaired at once, one Merkle-tree exchange with each other primary that is up, rather than waiting for
  the anti-entropy round robin to come by.

Which vnodes: those this node is a primary of in the first ring it knows after the start (a wiped node learns
that ring from its peers when it rejoins). The set is kept in ``repairing.json``, so a restart in the middle
carries on where it was.

An operator can also ask for exchanges now (REPAIR, ``dynafast repair``): ``request`` queues partitions that are
exchanged the same way, without marking them repairing (nothing says they lost data). That queue is not kept
across a restart.

Ports: the node's id and replication factor, a membership view, the anti-entropy exchanges, metadata files, the
clock.
"""
from __future__ import annotations

import asyncio
import json
import logging

from dynafast.cluster.background import cancel_and_wait
from dynafast.cluster.preflist import primaries
from dynafast.errors import DynafastError, Unavailable

log = logging.getLogger("dynafast.repair")

FILE = "repairing.json"


class Repair:
    def __init__(self, *, me: str, n: int, membership, antientropy, files, clock, retry: float = 1.0):
        self.me = me
        self.on_repaired = None  # called after a vnode is whole again (it may now be a transfer source)
        self.n = n
        self.membership = membership
        self.antientropy = antientropy
        self.files = files
        self.clock = clock
        self.retry = retry
        # The partitions being repaired: the request path tests membership in it (a set lookup, on a miss only).
        self.partitions: set[int] = set()
        self.requested: set[int] = set()  # partitions an operator asked to exchange now
        self.requested_done = 0
        self._all_owned = False  # amnesia seen, ring not known yet: every owned partition once it is
        self.repaired = 0
        self.keys_repaired = 0
        self.started_at: float | None = None
        self.finished_at: float | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._load()

    # -- state ---------------------------------------------------------------------------------------------
    def _load(self) -> None:
        try:
            data = json.loads(self.files.read(FILE) or b"{}")
            self._all_owned = bool(data.get("all", False))
            self.partitions = {int(p) for p in data.get("partitions", [])}
        except (ValueError, TypeError, AttributeError):
            self._all_owned = True  # the record is damaged: assume the worst

    def _save(self) -> None:
        self.files.write(FILE, json.dumps({"all": self._all_owned, "partitions": sorted(self.partitions)}).encode())

    def begin(self) -> None:
        """This node may have lost acknowledged writes: repair every vnode it holds."""
        self._all_owned = True
        self._save()
        self._resolve()

    def _resolve(self) -> None:
        state = self.membership.state
        if not self._all_owned or state is None:
            return
        ring = state.ring
        self.partitions |= {p for p in range(ring.partitions) if self.me in primaries(ring, p, self.n)}
        self._all_owned = False
        self._save()
        if self.partitions:
            self.started_at = self.clock.monotonic()
            self.finished_at = None
            log.info("repairing %d vnodes from the other replicas", len(self.partitions))
        self._wake.set()

    def on_state(self, old, new) -> None:
        self._resolve()
        if self.partitions:
            self._wake.set()

    def request(self, partitions=None) -> int:
        """Exchange ``partitions`` (None: every one this node is a primary of) with their other replicas soon;
        how many were queued. A partition this node holds no primary replica of is refused."""
        state = self.membership.state
        if state is None:
            raise Unavailable(f"{self.me} has not joined the cluster yet")
        ring = state.ring
        held = {p for p in range(ring.partitions) if self.me in primaries(ring, p, self.n)}
        wanted = held if partitions is None else set(partitions)
        strangers = sorted(wanted - held)
        if strangers:
            raise DynafastError(f"{self.me} is not a primary of partition(s) {strangers[:10]}: ask one that is")
        self.requested |= wanted - self.partitions  # those repairing after amnesia are exchanged anyway
        self._wake.set()
        return len(wanted)

    # -- the work --------------------------------------------------------------------------------------------
    def start(self) -> None:
        self._resolve()
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        await cancel_and_wait([self._task])

    async def _run(self) -> None:
        while True:
            if not self.partitions and not self.requested:
                self._wake.clear()
                await self._wake.wait()
                continue
            progressed = False
            repairing = bool(self.partitions)
            for partition in sorted(self.partitions | self.requested):
                if not await self._repair(partition):
                    continue
                progressed = True
                if partition in self.requested:
                    self.requested.discard(partition)
                    self.requested_done += 1
                if partition in self.partitions:
                    self.partitions.discard(partition)
                    self.repaired += 1
                    self._save()
                    if self.on_repaired is not None:
                        self.on_repaired()
            if repairing and not self.partitions:
                self.finished_at = self.clock.monotonic()
                log.info("repair finished in %.1f s", self.finished_at - (self.started_at or self.finished_at))
            elif not progressed:
                await asyncio.sleep(self.retry)

    async def _repair(self, partition: int) -> bool:
        """One exchange with each other primary that is up; True when that covered every source it needs."""
        membership = self.membership
        if membership.state is None:
            return False
        others = [p for p in primaries(membership.ring, partition, self.n) if p != self.me]
        if self.me not in primaries(membership.ring, partition, self.n):
            return True  # no longer ours: nothing to serve from it
        if not others:
            return True  # the only replica: there is nowhere to pull from
        up = [p for p in others if membership.is_up(p)]
        if not up:
            return False
        for peer in up:
            try:
                report = await self.antientropy.exchange(partition, peer)
            except DynafastError as exc:
                log.info("repair of partition %d from %s failed: %s", partition, peer, exc)
                return False
            self.keys_repaired += report.repaired_local
        return True

    def status(self) -> dict:
        now = self.clock.monotonic()
        end = self.finished_at if self.finished_at is not None else now
        return {
            "vnodes_repairing": len(self.partitions),
            "pending_ring": self._all_owned,
            "vnodes_repaired": self.repaired,
            "keys_repaired": self.keys_repaired,
            "requested_pending": len(self.requested),
            "requested_done": self.requested_done,
            "seconds": None if self.started_at is None else round(end - self.started_at, 3),
        }
