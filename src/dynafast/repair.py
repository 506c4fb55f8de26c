"""``dynafast repair``: which nodes to ask to exchange which partitions now (REPAIR), and following their
progress (the ``repair`` figures of each node's STATUS) until none are left."""
from __future__ import annotations

import time

from dynafast.errors import DynafastError, Unavailable

ASK_TRIES = 30  # seconds, one try each: a node that just restarted may not know the ring yet, and says so


def targets(ring, status: dict, node: str | None, partition: int | None) -> dict:
    """{node id: the partitions to ask it for, None for all it holds}: ``node`` alone, every partition it holds;
    ``partition`` alone, its first primary that is up; neither, every partition from its owner."""
    members = {m["id"]: m for m in status["members"]}
    n = min(status["n"], len(ring.members))
    if partition is not None and not 0 <= partition < ring.partitions:
        raise ValueError(f"partition must be in 0..{ring.partitions - 1}")
    if node:
        if node not in members:
            raise ValueError(f"no node {node!r} in the cluster (members: {', '.join(members)})")
        return {node: None if partition is None else [partition]}
    up = {m for m, member in members.items() if member["state"] == "up"}
    if partition is not None:
        replicas = [m for m in ring.replicas(partition, n) if m in up]
        if not replicas:
            raise DynafastError(f"no replica of partition {partition} is up")
        return {replicas[0]: [partition]}
    asks: dict[str, list[int]] = {}
    for p, owner in enumerate(ring.owners()):
        asks.setdefault(owner, []).append(p)
    return {m: parts for m, parts in asks.items() if m in up}


class RepairRun:
    """Asks each target node (REPAIR), then reports how many vnodes are left to repair on them."""

    def __init__(self, client, addresses: dict[str, str], asks: dict, timeout: float):
        self.client = client
        self.addresses = {node: addresses[node] for node in asks}
        self.asks = asks
        self.timeout = timeout
        self.before = self.figures()
        self.queued: dict[str, int] = {}

    def figures(self) -> dict[str, dict]:
        return {node: self.client.status(address)["repair"] for node, address in self.addresses.items()}

    def start(self) -> int:
        from dynafast.net.messages import Msg, Repair

        for node, partitions in self.asks.items():
            for attempt in range(ASK_TRIES):
                try:
                    reply = self.client._call(self.addresses[node], Msg.REPAIR, Repair(partitions), self.timeout)
                    break
                except Unavailable:
                    if attempt == ASK_TRIES - 1:
                        raise
                    time.sleep(1.0)
            self.queued[node] = reply.queued
        return sum(self.queued.values())

    @staticmethod
    def left(figures: dict[str, dict]) -> int:
        """Vnodes still to repair: queued by an operator, or repairing after amnesia."""
        return sum(f["vnodes_repairing"] + f["requested_pending"] for f in figures.values())

    def follow(self, wait: float, progress, interval: float = 0.5) -> dict[str, dict]:
        """Poll until nothing is left or ``wait`` seconds passed, calling ``progress(done, total)``; the last
        figures."""
        figures = self.figures()
        left = self.left(figures)
        total = max(sum(self.queued.values()), left)
        progress(total - left, total)
        deadline = time.monotonic() + wait
        while left and time.monotonic() < deadline:
            time.sleep(interval)
            try:
                figures = self.figures()
            except DynafastError:
                continue  # a node restarting: ask again
            left = self.left(figures)
            total = max(total, left)
            progress(total - left, total)
        return figures

    def repaired(self, figures: dict[str, dict]) -> dict[str, int]:
        """Keys each node repaired since the run began."""
        return {node: f["keys_repaired"] - self.before[node]["keys_repaired"] for node, f in figures.items()}
