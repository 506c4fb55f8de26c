"""Preference lists (riak_core's apl): which nodes hold a key, and who stands in for the ones that are down.

The primaries of a partition are the owners of it and the next partitions clockwise, skipping repeats (the
ring computes them). The coordinator writes to the first N healthy nodes of the preference list: the primaries
that are up, and for each primary that is down the next fallback, which stores the write as a hint for it.
"""
from __future__ import annotations


def primaries(ring, partition: int, n: int) -> tuple:
    """The N nodes that own a replica of ``partition``."""
    return tuple(ring.replicas(partition, n))


def targets(ring, partition: int, n: int, down, me: str) -> tuple[tuple, tuple]:
    """``(targets, spares)`` for a coordinator ``me``.

    A target is ``(node, hint_for)``: ``hint_for`` is None for a primary and names the primary a fallback
    stands in for. The coordinator's own replica goes first (its write is the local, durable one). Spares
    are the live fallbacks not already used, in preference order, for targets that fail during the request.
    """
    chosen = list(ring.preference_list(partition, n, down))
    if len(chosen) < n:
        # Too few live nodes to stand in: try the down primaries too, they may be back already.
        used = {node for node, _ in chosen}
        chosen += [(node, None) for node in ring.replicas(partition, n) if node not in used]
    chosen.sort(key=lambda target: target[0] != me)
    spares = tuple(node for node in ring.fallbacks(partition, n) if node not in down)
    return tuple(chosen), spares


class Routes:
    """Per-partition routes of one coordinator, cached until the ring or the set of down nodes changes.

    A route is ``(partition, primaries, targets, spares)``; targets is None when ``me`` holds no replica (the
    request is forwarded). Rings and down sets are replaced, never mutated, so identity tells a change:
    working routes out per request cost more than a local read.
    """

    def __init__(self, me: str, n: int):
        self.me = me
        self.n = n
        self._cache: dict = {}
        self._ring = None
        self._down = None

    def route(self, ring, down, key: bytes) -> tuple:
        if ring is not self._ring or down is not self._down:
            self._cache = {}
            self._ring = ring
            self._down = down
        partition = ring.partition_of(key)
        route = self._cache.get(partition)
        if route is None:
            owners = primaries(ring, partition, self.n)
            if self.me in owners:
                chosen, spares = targets(ring, partition, self.n, down, self.me)
            else:
                chosen = spares = None
            route = self._cache[partition] = (partition, owners, chosen, spares)
        return route
