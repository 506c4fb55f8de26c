"""Nodes of a cluster run in the test's own process, over real stores and loopback sockets, on a wall clock that
stands still (so two clusters given the same requests stamp the same versions): for tests that compare two builds
of one path (the compiled lanes and the general paths) request by request."""
from __future__ import annotations

import asyncio
import random
import time

from dynafast.cluster.ports import Environment
from dynafast.config import NodeConfig
from dynafast.net.messages import Msg
from dynafast.node import Node
from dynafast.testing.cluster import free_port

NOW = 1_800_000_000.0


class StoppedClock:
    """A wall clock that stands still at ``NOW``."""

    monotonic = staticmethod(time.monotonic)

    @staticmethod
    def wall() -> float:
        return NOW


async def start_cluster(base, count: int = 3, **settings) -> list:
    """``count`` nodes (``NodeConfig`` ``settings`` for each; ``resp=True`` gives each a RESP port too), data under
    ``base``, once they are members of one ring at rest, done repairing and none marked down."""
    nodes = []
    seed = None
    resp = settings.pop("resp", False)
    for i in range(count):
        config = NodeConfig(node_id=f"n{i + 1}", listen=f"127.0.0.1:{free_port()}", data_dir=str(base / f"n{i + 1}"),
                            resp=f"127.0.0.1:{free_port()}" if resp else "", seeds=[seed] if seed else [],
                            **settings)
        node = Node(config, Environment(clock=StoppedClock(), rng=random.Random(i)))
        await node.start()
        nodes.append(node)
        seed = seed or config.listen
    for _ in range(1200):
        states = [node.membership.state for node in nodes]
        if all(s is not None and len(s.members) == count and s.next_ring is None for s in states) \
                and len({s.ring.version for s in states}) == 1 and not any(n.requests.repairing for n in nodes) \
                and all(len(n.membership.down()) == 0 for n in nodes):
            return nodes
        await asyncio.sleep(0.05)
    for node in nodes:
        await node.stop()
    raise AssertionError("the cluster did not form within 60 s")


async def quiet(nodes) -> None:
    """Until no replica call and no one-round put is under way on any of ``nodes``."""
    for _ in range(2000):
        busy = any(n.requests._replacing for n in nodes) or any(
            conn.in_flight for n in nodes for other in nodes if other is not n
            for conn in n.requests.transport.connections(other.config.listen))
        if not busy:
            await asyncio.sleep(0.01)  # replies sent but not read yet
            return
        await asyncio.sleep(0.005)
    raise AssertionError("requests still under way after 10 s")


def held(node, keys) -> dict:
    """The raw object ``node`` stores of each of ``keys`` (None: none), by (node id, key)."""
    ring = node.membership.state.ring
    return {(node.config.node_id, key): node.vnodes.get_raw(ring.partition_of(key), key) for key in keys}


def plant(node, key: bytes, value: bytes) -> None:
    """A version of ``key`` stamped over ``node``'s copy by a coordinator elsewhere and not sent on yet (a write
    acknowledged elsewhere a moment ago): a one-round put the node's copy has not seen is refused."""
    vnodes = node.vnodes
    partition = node.membership.state.ring.partition_of(key)
    existing = vnodes.get(partition, key)
    planted = node.requests.Siblings.new(value, None if existing is None else existing.context())
    vnodes.write(partition, key, planted.update(existing, b"elsewhere", int(NOW)), previous=existing)


def replies_in_order(nodes, step: float = 0.02) -> None:
    """Make replicas answer a coordinator in the same order every run: the k-th of ``nodes`` (from 0) serves a
    REPLICA_PUT or REPLICA_GET as it arrives and sends its reply ``k * step`` seconds later. Which W or R replicas
    a quorum counts first otherwise rests on when the kernel delivers each reply, so two clusters given the same
    requests could answer differently on a busy machine. (The nodes share one event loop: its timers fire in
    order of their deadlines however late the loop runs.)"""
    for k, node in enumerate(nodes):
        for msg in (Msg.REPLICA_PUT, Msg.REPLICA_GET):
            check, handle, op = node._dispatch[int(msg)]
            node._dispatch[int(msg)] = (check, _answer_later(handle, k * step), op)


def _answer_later(handle, delay: float):
    if delay == 0:
        return handle

    def later(fields):
        result = handle(fields)  # served now: the replica's state moves in the order requests arrive

        async def reply():
            answer = await result if asyncio.iscoroutine(result) else result
            await asyncio.sleep(delay)
            return answer
        return reply()
    return later
