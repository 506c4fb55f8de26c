"""asv: ring lookups, compiled beside the plain-Python reference."""
import os

import numpy

from dynafast import _impl


def _module(build):
    return _impl.compiled("ring") if build == "compiled" else _impl.reference("ring")


class Lookups:
    params = ["compiled", "reference"]
    param_names = ["build"]

    def setup(self, build):
        try:
            mod = _module(build)
        except ImportError:
            raise NotImplementedError("dynafast._core.ring is not built")
        self.ring = mod.Ring(1024, [f"node-{i:02d}" for i in range(12)], n=3)
        self.keys = [os.urandom(16) for _ in range(1000)]
        self.tokens = numpy.random.default_rng(1).integers(0, 2**64 - 1, 100_000, dtype=numpy.uint64)
        self.down = frozenset({"node-03"})

    def time_partition_and_replicas(self, build):
        ring = self.ring
        for key in self.keys:
            ring.replicas(ring.partition_of(key))

    def time_preference_list_one_down(self, build):
        ring = self.ring
        for key in self.keys:
            ring.preference_list(ring.partition_of(key), None, self.down)

    def time_batch_keys(self, build):
        self.ring.partitions_of(self.keys)

    def time_batch_tokens(self, build):
        self.ring.partitions_of(self.tokens)


class ClaimMovement:
    """Fraction of partitions moved when one member joins, against the ideal (the joiner's share)."""

    params = ([64, 256, 1024], [3, 8, 16])
    param_names = ["partitions", "members"]

    def track_moved_over_ideal_add(self, q, s):
        ring = _impl.reference("ring").Ring(q, [f"node-{i:02d}" for i in range(s)], n=3)
        after = ring.with_members(list(ring.members) + ["joiner"])
        return ring.moved_partitions(after) / len(after.partitions_owned("joiner"))

    def track_moved_over_ideal_remove(self, q, s):
        ring = _impl.reference("ring").Ring(q, [f"node-{i:02d}" for i in range(s)], n=3)
        gone = ring.members[0]
        after = ring.with_members(ring.members[1:])
        return ring.moved_partitions(after) / len(ring.partitions_owned(gone))
