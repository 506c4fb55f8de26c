"""Scans driven by a node (the HTTP API's ``GET /kv``): the clients' covering walk (``dynafast.bulk``) with its
pages read in-process from this node's own vnodes when it holds a complete replica of the partition, and over the
peer pool (SCAN_PAGE) from another replica otherwise.

The walk, its cursor and its results are exactly a client scan's: a cursor from one resumes the other. What a
page holds and which replica may serve it is ``cluster.scan``'s (a repairing or non-primary replica refuses, and
the next one is asked).
"""
from __future__ import annotations

import asyncio

from dynafast import bulk
from dynafast.bulk import OTHER_REPLICA
from dynafast.cluster.coverage import candidates, covering_set
from dynafast.errors import Unavailable
from dynafast.net.messages import Msg, parse_reply

_SCAN_PAGE = int(Msg.SCAN_PAGE)


class NodeScans:
    """Ports: the node's id, a membership view (ring, down set, addresses), the node's ``Scans`` (the replica
    side, called directly for local pages), the peer transport, the clock, and the per-page timeout."""

    def __init__(self, *, me: str, membership, scans, transport, clock, timeout: float):
        self.me = me
        self.membership = membership
        self.scans = scans
        self.transport = transport
        self.clock = clock
        self.timeout = timeout

    def walk(self, prefix: bytes, limit: int | None, cursor: bytes | None, page_size: int = bulk.DEFAULT_PAGE_SIZE,
             max_bytes: int = bulk.DEFAULT_PAGE_BYTES):
        """A new walk placed on the current ring: ValueError when ``cursor`` is not one of this scan and ring."""
        walk = bulk.new_walk(prefix, limit, page_size, max_bytes, cursor)
        walk.begin(self._ring())
        return walk

    def _ring(self):
        state = self.membership.state
        if state is None:
            raise Unavailable(f"{self.me} has not joined the cluster yet")
        return state.ring

    async def items(self, walk):
        """``(key, GetResult)`` of the walk until it is exhausted; each page fetched when the last is used up."""
        while True:
            item = walk.next_item()
            if item is not None:
                yield item
                continue
            if walk.exhausted:
                return
            await self.fetch(walk)

    async def fetch(self, walk) -> None:
        """Read the walk's next page from the first replica of its partition that can serve it."""
        deadline = self.clock.monotonic() + self.timeout * 2
        pause = 0.05
        last = None
        plan, plan_ring = {}, None
        while True:
            ring = self._ring()
            walk.begin(ring)  # a ring of another partition count mid-scan: ProtocolError
            down = self.membership.down()

            def is_up(node):
                return node not in down

            if plan_ring is not ring:
                plan, plan_ring = covering_set(ring, is_up), ring
            order = candidates(ring, walk.partition, plan.get(walk.partition), is_up)
            if self.me in order:  # our own complete replica costs no hop
                order.remove(self.me)
                order.insert(0, self.me)
            for node in order:
                try:
                    reply = await self._page(node, walk.request())
                    walk.take(parse_reply(_SCAN_PAGE, reply), node)
                    return
                except OTHER_REPLICA as exc:
                    last = exc
            if self.clock.monotonic() + pause > deadline:
                raise Unavailable(f"no complete replica of partition {walk.partition} answered the scan: {last}")
            await asyncio.sleep(pause)  # a ring change in progress settles, a down node is noticed
            pause = min(pause * 2, 1.0)

    async def _page(self, node: str, request):
        if node == self.me:
            return self.scans.handle_scan_page(request)
        return await self.transport.call(self.membership.address_of(node), _SCAN_PAGE, tuple(request),
                                         self.timeout)
