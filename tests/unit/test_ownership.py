"""WRONG_NODE: a node serves replica-level requests only for the partitions it holds under the active or next ring."""
import pytest

from dynafast.cluster.preflist import Ownership
from dynafast.errors import ProtocolError, Unavailable
from dynafast.net.messages import ErrorCode, WrongNode, error_fields, error_from_fields

from conftest import implementations

impl = implementations("ring")

N = 2


def held(ring, node):
    return {p for p in range(ring.partitions) if node in ring.replicas(p, N)}


def test_primaries_of_the_active_ring_only(impl):
    ring = impl.Ring(16, ["a", "b", "c", "d"], n=N)
    for node in ring.members:
        ownership = Ownership(node, N)
        for p in range(ring.partitions):
            if p in held(ring, node):
                ownership.check(ring, None, p)
            else:
                with pytest.raises(WrongNode, match=f"{node} holds no replica of partition {p}"):
                    ownership.check(ring, None, p)
            ownership.check(ring, None, p, hint_for="x")  # any member may hold a hint


def test_the_next_ring_counts_while_the_cluster_changes_shape(impl):
    ring = impl.Ring(16, ["a", "b", "c"], n=N)
    next_ring = ring.with_members(["a", "b", "c", "d"])
    joiner = Ownership("d", N)
    gained = held(next_ring, "d")
    assert gained
    for p in range(ring.partitions):
        if p in gained:
            joiner.check(ring, next_ring, p)
        else:
            with pytest.raises(WrongNode):
                joiner.check(ring, next_ring, p)
        joiner.check(ring, next_ring, p, hint_for="a")
    # Once the next ring is active, an old owner no longer serves the partitions it gave away.
    for node in "abc":
        ownership = Ownership(node, N)
        for p in held(ring, node) - held(next_ring, node):
            ownership.check(ring, next_ring, p)
            with pytest.raises(WrongNode):
                ownership.check(next_ring, None, p)


def test_a_node_outside_the_ring_serves_nothing(impl):
    ring = impl.Ring(8, ["a", "b"], n=N)
    stranger = Ownership("z", N)
    for p in range(ring.partitions):
        with pytest.raises(WrongNode):
            stranger.check(ring, None, p)
        with pytest.raises(WrongNode, match="not a member"):
            stranger.check(ring, None, p, hint_for="a")


def test_partitions_outside_the_ring_are_protocol_errors(impl):
    ring = impl.Ring(8, ["a"], n=1)
    for p in (-1, 8, 2**40):
        with pytest.raises(ProtocolError, match="outside the ring"):
            Ownership("a", 1).check(ring, None, p)


def test_wrong_node_travels_as_its_own_code_and_is_not_unavailable():
    fields = error_fields(WrongNode("n3 holds no replica of partition 5"))
    assert fields.code == ErrorCode.WRONG_NODE
    error = error_from_fields(tuple(fields))
    assert isinstance(error, WrongNode) and not isinstance(error, Unavailable)
