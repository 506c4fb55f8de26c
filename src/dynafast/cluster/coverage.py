"""Coverage queries, the client side: which replica of each partition a scan reads, and where it is.

A cluster scan must read every key once. With N replicas of every partition, reading one replica of each
partition covers the key space (riak_core's coverage plan, at r=1): ``covering_set`` picks one live primary per
partition, spreading partitions evenly over the nodes; ``candidates`` orders the replicas of one partition for
the client to try in turn when the one it asked fails or says it is not a complete replica.

Partitions are read one after the other, in partition order, each in key order; a cursor is the partition and
the last key handed out, so that a scan resumes where it stopped, in another process too: it is opaque bytes
to the caller (``encode_cursor``/``decode_cursor``). A cursor holds the ring's partition count and the scan's
prefix: resuming with another prefix, or on a cluster of another partition count, is refused.
"""
from __future__ import annotations

import struct

from dynafast.cluster.preflist import primaries

_CURSOR = struct.Struct(">BHHB")  # format, partition, partitions, whether a key follows
_FORMAT = 1


def covering_set(ring, is_up=lambda node: True) -> dict[int, str]:
    """``{partition: node}``: one replica of every partition of ``ring``, live ones (``is_up``) preferred, each
    node given as few partitions as the choice allows (the first in preference order among the least loaded)."""
    load: dict[str, int] = {}
    chosen: dict[int, str] = {}
    for partition in range(ring.partitions):
        replicas = primaries(ring, partition, ring.n)
        live = [node for node in replicas if is_up(node)] or list(replicas)
        node = min(live, key=lambda candidate: load.get(candidate, 0))  # min keeps the first of equals
        chosen[partition] = node
        load[node] = load.get(node, 0) + 1
    return chosen


def candidates(ring, partition: int, first: str | None, is_up=lambda node: True) -> list[str]:
    """The replicas of ``partition`` to try in order: ``first`` (the covering set's choice), then the other live
    ones, then the rest (they may be back)."""
    replicas = list(primaries(ring, partition, ring.n))
    ordered = [node for node in replicas if is_up(node)] + [node for node in replicas if not is_up(node)]
    if first in ordered:
        ordered.remove(first)
        ordered.insert(0, first)
    return ordered


def encode_cursor(partitions: int, partition: int, after: bytes | None, prefix: bytes) -> bytes:
    """The opaque position of a scan: next to read is ``partition``, past the key ``after`` (None: from its
    start). ``partition == partitions`` means the scan is done; ``partitions`` 0 (not known yet) a cursor at the
    very start."""
    head = _CURSOR.pack(_FORMAT, partition, partitions, after is not None)
    key = b"" if after is None else after
    return head + struct.pack(">H", len(prefix)) + prefix + key


def decode_cursor(cursor: bytes, partitions: int, prefix: bytes) -> tuple[int, bytes | None]:
    """``(partition, after)`` of ``cursor`` for a scan of ``prefix`` on a ring of ``partitions``; ValueError
    when it is not a cursor, or one of another scan or ring."""
    try:
        fmt, partition, their_partitions, has_key = _CURSOR.unpack_from(cursor)
        (prefix_len,) = struct.unpack_from(">H", cursor, _CURSOR.size)
    except (struct.error, TypeError):
        raise ValueError("not a scan cursor") from None
    start = _CURSOR.size + 2
    their_prefix = bytes(cursor[start:start + prefix_len])
    if fmt != _FORMAT or has_key not in (0, 1) or len(their_prefix) != prefix_len:
        raise ValueError("not a scan cursor")
    if their_prefix != prefix:
        raise ValueError(f"the cursor belongs to a scan of prefix {their_prefix!r}, not {prefix!r}")
    if their_partitions == 0 and partition == 0 and not has_key:
        return 0, None  # taken before the scan knew the ring: from the start
    if their_partitions != partitions or partition > partitions:
        raise ValueError(f"the cursor belongs to a ring of {their_partitions} partitions, not {partitions}")
    after = bytes(cursor[start + prefix_len:]) if has_key else None
    return partition, after
