"""Simulated nodes: the real ``Node`` with simulated ports, and the faults that can happen to one."""
from __future__ import annotations

import logging
import random

from dynafast.cluster.ports import Environment
from dynafast.config import NodeConfig
from dynafast.node import Node
from dynafast.sim.clock import SimClock
from dynafast.sim.disk import SimDisk, SimDurability, SimFiles

log = logging.getLogger("dynafast.sim")

# Faster background work than a real node's defaults, so that a short simulated run sees many rounds of it.
SIM_OPTIONS = dict(
    partitions=16, n=3, r=2, w=2, dw=1,
    request_timeout=1.0, peer_timeout=0.5,
    gossip_interval=0.5, handoff_interval=0.5, ae_interval=1.0, hint_window=4.0, tombstone_delay=6.0,
    transfer_bytes_per_second=1 << 20, drop_grace=2.0, merkle_leaves=64,
    sync="interval", sync_interval=0.1,
)


def address_of(name: str) -> str:
    return f"{name}.sim:7101"


class SimNode:
    """One node's identity and disk; it may be running (``node``) or not."""

    def __init__(self, name: str, network, rng: random.Random, *, seeds=(), skew: float = 0.0, **options):
        self.name = name
        self.address = address_of(name)
        self.network = network
        self.rng = rng
        self.disk = SimDisk()
        self.clock = SimClock(network.loop, skew=skew, boot=rng.uniform(0, 1000))
        self.config = NodeConfig(node_id=name, listen=self.address, data_dir=f"/sim/{name}", seeds=list(seeds),
                                 **{**SIM_OPTIONS, **options})
        self.node: Node | None = None
        self.transport = None
        self.starts = 0
        self.left = False
        self.ready = False  # started and serving (faults pick only ready nodes)

    @property
    def running(self) -> bool:
        return self.node is not None

    async def start(self) -> None:
        self.starts += 1
        self.transport = self.network.transport(self.address)
        rng = random.Random(self.rng.getrandbits(64))
        network = self.network

        def durability(store):
            batcher = SimDurability(store, rng=rng, interval=self.config.sync_interval)
            if self.config.sync == "interval":
                batcher.start_interval()
            return batcher

        async def serve(handler, host, port, **_limits):
            return network.serve(self.address, handler)

        env = Environment(clock=self.clock, rng=rng, transport=self.transport, files=SimFiles(self.disk),
                          open_store=lambda path, config: self.disk.open_store(), durability=durability,
                          serve=serve, http=False)
        self.node = Node(self.config, env)
        await self.node.start()
        self.ready = True

    async def stop(self) -> None:
        """A clean stop: everything is flushed, the incarnation is kept."""
        node, self.node = self.node, None
        self.ready = False
        if node is not None:
            await node.stop()

    async def crash(self) -> None:
        """kill -9 at a random instant (and the power with it): what was not fsync'd is lost."""
        node, self.node = self.node, None
        self.ready = False
        if node is None:
            return
        self.network.crash(self.address)
        self.transport.closed = True
        self.disk.crash()
        try:
            await node.stop()  # only winds down its tasks: its store, files and network are gone already
        except Exception:  # noqa: BLE001 - the dead store refuses the final flush, as it should
            pass

    def wipe(self) -> None:
        """The node's data directory is lost (it must not be running)."""
        assert self.node is None
        self.disk.wipe()


async def start_nodes(network, count: int, **options) -> dict[str, SimNode]:
    """Nodes n1..n``count`` for a scripted scenario: n1 starts the cluster, the others join through it, one after
    another; node i draws from ``random.Random(i + 1)``. The caller waits for the cluster to settle."""
    sims: dict[str, SimNode] = {}
    for i in range(1, count + 1):
        seeds = [] if i == 1 else [sims["n1"].address]
        sims[f"n{i}"] = SimNode(f"n{i}", network, random.Random(i + 1), seeds=seeds, **options)
        await sims[f"n{i}"].start()
    return sims


def run_scenario(scenario):
    """Run ``scenario()`` (a coroutine function) on a fresh simulated loop; return what it returns."""
    from dynafast.sim.loop import SimLoop

    loop = SimLoop()
    try:
        return loop.run_until_complete(scenario())
    finally:
        loop.close()
