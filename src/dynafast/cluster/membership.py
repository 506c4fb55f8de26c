"""Cluster membership: who is in the cluster, at which address, who is up, and the ring.

``Membership`` is the interface the node relies on. ``SeedMembership`` implements it simply: a joining node
asks a seed, the seed computes the new ring (moving as few partitions as possible) and pushes it to every
member; every member pings the others each ``probe_interval`` with its ring version, so a member that missed a
push catches up, and a peer that stops answering is marked down (and up again when it answers).
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import random
from dataclasses import dataclass
from pathlib import Path

from dynafast import _impl
from dynafast.errors import DynafastError
from dynafast.net.messages import Msg

log = logging.getLogger("dynafast.membership")

UP, DOWN, JOINING, LEAVING, LEFT = "up", "down", "joining", "leaving", "left"


@dataclass
class Member:
    id: str
    address: str
    zone: str = ""
    state: str = UP


class Membership:
    """What the node needs from membership. Implementations: SeedMembership (now), gossip (later)."""

    node_id: str
    ring: object
    members: dict[str, Member]

    def address_of(self, node_id: str) -> str:
        raise NotImplementedError

    def down(self) -> frozenset[str]:
        raise NotImplementedError

    def mark_down(self, node_id: str) -> None:
        raise NotImplementedError

    def mark_up(self, node_id: str) -> None:
        raise NotImplementedError

    async def start(self) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        raise NotImplementedError


class SeedMembership(Membership):
    FAILURES_TO_DOWN = 2

    def __init__(self, config, pool, *, on_change=None):
        self.config = config
        self.node_id = config.node_id
        self.pool = pool
        self.rings = _impl.load("ring")
        self.members: dict[str, Member] = {}
        self.ring = None
        self.on_change = on_change
        self._failures: dict[str, int] = {}
        self._down: frozenset[str] = frozenset()
        self._task: asyncio.Task | None = None
        self._state_path = Path(config.data_dir) / "cluster.json"

    # -- queries ---------------------------------------------------------------------------------------
    def address_of(self, node_id: str) -> str:
        route = self.config.peer_routes.get(node_id)
        if route:
            return route
        return self.members[node_id].address

    def down(self) -> frozenset[str]:
        return self._down

    def is_up(self, node_id: str) -> bool:
        return node_id not in self._down

    def mark_down(self, node_id: str) -> None:
        if node_id == self.node_id or node_id not in self.members:
            return
        self._failures[node_id] = self._failures.get(node_id, 0) + 1
        if self._failures[node_id] >= self.FAILURES_TO_DOWN and node_id not in self._down:
            log.warning("peer %s marked down", node_id)
            self._down = self._down | {node_id}
            self.members[node_id].state = DOWN

    def mark_up(self, node_id: str) -> None:
        self._failures.pop(node_id, None)
        if node_id in self._down:
            log.info("peer %s is up again", node_id)
            self._down = self._down - {node_id}
            if node_id in self.members:
                self.members[node_id].state = UP

    # -- the ring state as message fields -------------------------------------------------------------
    def state_fields(self) -> tuple:
        ids = sorted(self.members)
        return (
            self.ring.to_bytes(),
            ids,
            [self.members[i].address for i in ids],
            [self.members[i].zone for i in ids],
        )

    def _adopt(self, fields, *, force: bool = False) -> bool:
        ring_bytes, ids, addresses, zones = fields[:4]
        ring = self.rings.Ring.from_bytes(ring_bytes)
        if self.ring is not None and not force:
            if (ring.version, ring.digest()) <= (self.ring.version, self.ring.digest()):
                return False
        self.members = {}
        for node_id, address, zone in zip(ids, addresses, zones):
            member = Member(node_id, address, zone)
            if node_id in self._down:
                member.state = DOWN
            self.members[node_id] = member
        self._down = frozenset(n for n in self._down if n in self.members)
        self.ring = ring
        self._save()
        if self.on_change is not None:
            self.on_change(ring)
        return True

    def _save(self) -> None:
        tmp = self._state_path.with_suffix(".tmp")
        ring_bytes, ids, addresses, zones = self.state_fields()
        data = {"ring": ring_bytes.hex(), "ids": ids, "addresses": addresses, "zones": zones}
        with open(tmp, "w") as f:
            json.dump(data, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self._state_path)

    def _load(self) -> bool:
        try:
            with open(self._state_path) as f:
                data = json.load(f)
            fields = (bytes.fromhex(data["ring"]), data["ids"], data["addresses"], data["zones"])
            return self._adopt(fields, force=True)
        except FileNotFoundError:
            return False
        except (ValueError, KeyError, DynafastError) as exc:
            log.error("ignoring unreadable cluster state %s: %s", self._state_path, exc)
            return False

    # -- life cycle -------------------------------------------------------------------------------------
    async def start(self) -> None:
        self._load()
        me = self.members.get(self.node_id)
        if self.ring is None and not self.config.seeds:
            # First node of a new cluster.
            self.members = {self.node_id: Member(self.node_id, self.config.advertise, self.config.zone)}
            self.ring = self.rings.Ring(self.config.partitions, [self.node_id], n=self.config.n,
                                        zones={self.node_id: self.config.zone})
            self._save()
        elif self.config.seeds and (me is None or me.address != self.config.advertise):
            await self._join()
        self._task = asyncio.create_task(self._probe_loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
            self._task = None

    async def _join(self) -> None:
        fields = (self.node_id, self.config.advertise, self.config.zone)
        last_error = None
        for attempt in range(30):
            for seed in self.config.seeds:
                if seed == self.config.advertise:
                    continue
                try:
                    _, reply = await self.pool.call(seed, Msg.JOIN, fields, self.config.peer_timeout * 5)
                    self._adopt(reply, force=True)
                    log.info("joined the cluster through %s (ring version %d)", seed, self.ring.version)
                    return
                except DynafastError as exc:
                    last_error = exc
            await asyncio.sleep(min(0.1 * (attempt + 1), 1.0))
        if self.ring is None:
            raise DynafastError(f"could not join through seeds {self.config.seeds}: {last_error}")

    # -- handlers of membership messages ----------------------------------------------------------------
    def handle_join(self, fields) -> tuple:
        node_id, address, zone = fields[:3]
        member = self.members.get(node_id)
        if member is None or member.address != address or member.zone != zone:
            members = dict(self.members)
            members[node_id] = Member(node_id, address, zone)
            zones = {m.id: m.zone for m in members.values()}
            ring = self.ring.with_members(sorted(members), zones=zones)
            self.members = members
            self.ring = ring
            self._save()
            log.info("admitted %s at %s; ring version %d", node_id, address, ring.version)
            if self.on_change is not None:
                self.on_change(ring)
            self.mark_up(node_id)
            self._push_ring()
        return self.state_fields()

    def handle_ring_push(self, fields) -> tuple:
        self._adopt(fields)
        return (self.ring.version,)

    def handle_ping(self, fields) -> tuple:
        sender = fields[0] if fields else None
        if sender in self.members:
            self.mark_up(sender)
        return (self.node_id, self.ring.version, self.ring.digest())

    def _push_ring(self) -> None:
        state = self.state_fields()
        for node_id in self.members:
            if node_id != self.node_id:
                asyncio.ensure_future(self._send_ring(node_id, state))

    async def _send_ring(self, node_id: str, state) -> None:
        try:
            await self.pool.call(self.address_of(node_id), Msg.RING_PUSH, state, self.config.peer_timeout)
        except DynafastError as exc:
            log.debug("ring push to %s failed: %s", node_id, exc)

    async def _probe_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.probe_interval * (0.8 + 0.4 * random.random()))
            peers = [node_id for node_id in self.members if node_id != self.node_id]
            await asyncio.gather(*(self._probe(node_id) for node_id in peers), return_exceptions=True)
            if self.node_id not in self.members and self.config.seeds:
                # A concurrent join elsewhere won over ours: ask again.
                try:
                    await self._join()
                except DynafastError as exc:
                    log.warning("rejoin failed: %s", exc)

    async def _probe(self, node_id: str) -> None:
        try:
            _, reply = await self.pool.call(self.address_of(node_id), Msg.PING, (self.node_id, self.ring.version),
                                            self.config.peer_timeout)
        except DynafastError:
            self.mark_down(node_id)
            return
        self.mark_up(node_id)
        _, version, digest = reply[:3]
        if (version, digest) > (self.ring.version, self.ring.digest()):
            try:
                _, state = await self.pool.call(self.address_of(node_id), Msg.RING_GET, (), self.config.peer_timeout)
                self._adopt(state)
            except DynafastError as exc:
                log.debug("ring fetch from %s failed: %s", node_id, exc)
        elif (version, digest) < (self.ring.version, self.ring.digest()):
            await self._send_ring(node_id, self.state_fields())
