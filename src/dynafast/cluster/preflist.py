"""Preference lists (riak_core's apl): which nodes hold a key, and who stands in for the ones that are down.

The primaries of a partition are the owners of it and the next partitions clockwise, skipping repeats (the
ring computes them). The coordinator writes to the first N healthy nodes of the preference list: the primaries
that are up, and for each primary that is down the next fallback, which stores the write as a hint for it.
"""
from __future__ import annotations

from dynafast.errors import ProtocolError, Unavailable
from dynafast.net.messages import WrongNode


def primaries(ring, partition: int, n: int) -> tuple:
    """The N nodes that own a replica of ``partition``."""
    return tuple(ring.replicas(partition, n))


def targets(ring, partition: int, n: int, down, me: str) -> tuple[tuple, tuple]:
    """``(targets, spares)`` for a coordinator ``me``.

    A target is ``(node, hint_for)``: ``hint_for`` is None for a primary and names the primary a fallback
    stands in for. The coordinator's own replica goes first (its write is the local, durable one). Spares
    are the live fallbacks not already used, in preference order, for targets that fail during the request.

    When too few live nodes can stand in (N nodes or barely more), the down primaries are the last spares, not
    targets: asked only when the live targets cannot make the quorum, or fail. A node held down may be hung
    rather than dead (a stopped process, a stalled VM): requests sent to it pile up unanswered on the
    coordinator, and all land at once when it continues.
    """
    chosen = list(ring.preference_list(partition, n, down))
    chosen.sort(key=lambda target: target[0] != me)
    spares = tuple(node for node in ring.fallbacks(partition, n) if node not in down)
    if len(chosen) < n:
        used = {node for node, _ in chosen}
        spares += tuple(node for node in ring.replicas(partition, n) if node not in used)
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


# -- who answers replica-level requests ------------------------------------------------------------------
# Which partitions a node serves replica-level requests for; WRONG_NODE for the others.
#
# A coordinator picks replicas from its own ring. When that ring is stale, it may ask a node that does not hold
# the partition (an old owner that dropped its copy, or a node that never held it). Such a node must not answer
# as a replica: an empty REPLICA_GET reply would count as "not found" towards R, and a REPLICA_PUT written into a
# vnode the node does not hold would count towards W although the data sits outside the key's replica set. It
# answers WRONG_NODE instead, and the coordinator tries another node, as after any failed replica call.
#
# A node serves a partition as a primary when it is one of its n replicas under the active ring or under the
# next ring (while the cluster changes shape, the next ring's replicas receive writes and transfers). Any member
# of either ring may stand in for a down primary and store a hint, so hinted requests only need membership.
class Ownership:
    """``check`` raises WrongNode for a partition this node does not serve; the set of partitions it serves is
    worked out once per (ring, next ring) pair, so a check costs one set lookup."""

    def __init__(self, node_id: str, n: int):
        self.node_id = node_id
        self.n = n
        self._rings = (None, None)
        self._held: frozenset[int] = frozenset()
        self._member = False

    def check(self, ring, next_ring, partition: int, hint_for: str | None = None) -> None:
        """Raise WrongNode unless this node serves ``partition`` under ``ring`` / ``next_ring`` (None while the
        cluster is not changing shape): as a primary replica, or, for a hinted request (``hint_for`` set), as
        a member that may stand in for one. A partition outside the ring is a ProtocolError."""
        if self._rings[0] is not ring or self._rings[1] is not next_ring:
            self._update(ring, next_ring)
        if hint_for is None and partition in self._held:
            return  # the common case, first: one set lookup
        if not (type(partition) is int and 0 <= partition < ring.partitions):
            raise ProtocolError(f"partition {partition} is outside the ring's 0..{ring.partitions - 1}")
        if hint_for is None:
            raise WrongNode(f"{self.node_id} holds no replica of partition {partition}")
        if not self._member:
            raise WrongNode(f"{self.node_id} is not a member of the ring")

    def check_member(self, membership, partition: int, hint_for: str | None = None) -> None:
        """``check`` against a membership view's rings (Unavailable before this node has joined)."""
        state = membership.state
        if state is None:
            raise Unavailable(f"{self.node_id} has not joined the cluster yet")
        if hint_for is None and state.ring is self._rings[0] and state.next_ring is self._rings[1] \
                and partition in self._held:
            return  # the request path's case, without a further call
        self.check(state.ring, state.next_ring, partition, hint_for)

    def _update(self, ring, next_ring) -> None:
        rings = [r for r in (ring, next_ring) if r is not None]
        me = self.node_id
        self._held = frozenset(p for r in rings for p in range(r.partitions) if me in primaries(r, p, self.n))
        self._member = any(me in r.members for r in rings)
        self._rings = (ring, next_ring)
