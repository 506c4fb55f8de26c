"""Which partitions a node serves replica-level requests for; WRONG_NODE for the others.

A coordinator picks replicas from its own ring. When that ring is stale, it may ask a node that does not hold
the partition (an old owner that dropped its copy, or a node that never held it). Such a node must not answer
as a replica: an empty REPLICA_GET reply would count as "not found" towards R, and a REPLICA_PUT written into a
vnode the node does not hold would count towards W although the data sits outside the key's replica set. It
answers WRONG_NODE instead, and the coordinator tries another node, as after any failed replica call.

A node serves a partition as a primary when it is one of its n replicas under the active ring or under the
next ring (while the cluster changes shape, the next ring's replicas receive writes and transfers). Any member
of either ring may stand in for a down primary and store a hint, so hinted requests only need membership.
"""
from __future__ import annotations

from dynafast.errors import ProtocolError
from dynafast.net.messages import WrongNode


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
        if not 0 <= partition < ring.partitions:
            raise ProtocolError(f"partition {partition} is outside the ring's 0..{ring.partitions - 1}")
        if hint_for is None:
            if partition not in self._held:
                raise WrongNode(f"{self.node_id} holds no replica of partition {partition}")
        elif not self._member:
            raise WrongNode(f"{self.node_id} is not a member of the ring")

    def _update(self, ring, next_ring) -> None:
        rings = [r for r in (ring, next_ring) if r is not None]
        me = self.node_id
        self._held = frozenset(p for r in rings for p in range(r.partitions) if me in r.replicas(p, self.n))
        self._member = any(me in r.members for r in rings)
        self._rings = (ring, next_ring)
