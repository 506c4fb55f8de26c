"""The covering set of a scan (one replica per partition) and the scan cursor."""
import pytest

from dynafast._impl import ring as rings
from dynafast.cluster.coverage import candidates, covering_set, decode_cursor, encode_cursor
from dynafast.cluster.preflist import primaries


def ring_of(members, partitions=64, n=3):
    return rings.Ring(partitions, members, n=n)


@pytest.mark.parametrize("members", [["n1", "n2", "n3"], ["n1", "n2", "n3", "n4", "n5"], ["a", "b", "c", "d"]])
def test_every_partition_is_covered_once_by_one_of_its_replicas_spread_evenly(members):
    ring = ring_of(members)
    chosen = covering_set(ring)
    assert sorted(chosen) == list(range(ring.partitions))
    for partition, node in chosen.items():
        assert node in primaries(ring, partition, ring.n)
    load = {m: list(chosen.values()).count(m) for m in members}
    assert max(load.values()) - min(load.values()) <= 1, load


def test_a_down_node_is_left_out_while_another_replica_lives():
    ring = ring_of(["n1", "n2", "n3", "n4"])
    chosen = covering_set(ring, is_up=lambda node: node != "n2")
    assert "n2" not in chosen.values()
    load = {m: list(chosen.values()).count(m) for m in ("n1", "n3", "n4")}
    assert max(load.values()) - min(load.values()) <= 1, load


def test_with_every_replica_down_the_partition_still_gets_one_to_try():
    ring = ring_of(["n1", "n2", "n3"])
    chosen = covering_set(ring, is_up=lambda node: False)
    assert sorted(chosen) == list(range(ring.partitions))


def test_candidates_put_the_chosen_replica_first_then_live_ones_then_down_ones():
    ring = ring_of(["n1", "n2", "n3", "n4", "n5"])
    partition = 7
    replicas = list(primaries(ring, partition, 3))
    down = replicas[0]
    order = candidates(ring, partition, replicas[2], is_up=lambda node: node != down)
    assert order[0] == replicas[2]
    assert order[-1] == down
    assert sorted(order) == sorted(replicas)


def test_cursor_round_trips_and_refuses_another_scan_or_ring():
    cursor = encode_cursor(64, 12, b"user:17", b"user:")
    assert decode_cursor(cursor, 64, b"user:") == (12, b"user:17")
    assert decode_cursor(encode_cursor(64, 3, None, b""), 64, b"") == (3, None)
    assert decode_cursor(encode_cursor(0, 0, None, b"p"), 128, b"p") == (0, None)  # taken before the ring was known
    with pytest.raises(ValueError, match="prefix"):
        decode_cursor(cursor, 64, b"other:")
    with pytest.raises(ValueError, match="partitions"):
        decode_cursor(cursor, 128, b"user:")
    for junk in (b"", b"\x02" + cursor[1:], cursor[:4]):
        with pytest.raises(ValueError):
            decode_cursor(junk, 64, b"user:")
