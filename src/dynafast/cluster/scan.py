"""Cluster-wide scans, the replica side: SCAN_PAGE reads one page of one vnode, in key order.

A scan is a coverage query, as in riak_core: the client picks one replica of each partition (a covering set) and
asks each for its vnode's keys page by page (``dynafast.cluster.coverage``). This module answers one page.

Only a complete replica answers. A node serves a partition's scan when it is one of the partition's primaries
under its active ring and the vnode is not repairing after amnesia. So during a join or leave a scan reads an
old owner until the ring switches (the new owner is still receiving then: it holds a primary place only in the
next ring), never a vnode that may have holes. Anything else answers WRONG_NODE (not ours under this ring: the
client's ring may be stale) or SCAN_INCOMPLETE (ours, but repairing), and the client reads another replica.

Memory is bounded by the page, never the partition: the keydir is unordered, so a page is the ``limit``
smallest keys after the cursor, picked with a bounded heap in one pass over the vnode's keys (``heapq.nsmallest``
keeps ``limit`` + 1 keys). A partition of P keys thus costs P / limit passes over the node's keydir; each pass
is C code walking the key arena. Tombstones, and objects whose values have all expired (``expiry``), are read and
left out; they still move the cursor on, so a page may hold fewer keys than ``limit``, or none, with ``more``
set. The client leaves out single expired siblings.
"""
from __future__ import annotations

import heapq

from dynafast.cluster import expiry
from dynafast.cluster.preflist import primaries
from dynafast.cluster.vnode import vnode_prefix
from dynafast.errors import CorruptionError, ProtocolError, ScanIncomplete, Unavailable
from dynafast.net.messages import Msg, WrongNode

# The most a node puts in one page, whatever the client asks: a page is built in the event loop in one go.
MAX_PAGE_KEYS = 10_000
MAX_PAGE_BYTES = 4 << 20
DEFAULT_PAGE_KEYS = 1000
DEFAULT_PAGE_BYTES = 1 << 20

_REPLY = int(Msg.SCAN_PAGE_REPLY)


def read_page(vnodes, partition: int, prefix: bytes, after: bytes | None, limit: int, max_bytes: int):
    """``(keys, objects, more, after)``: the live keys of ``partition`` starting with ``prefix`` and greater than
    ``after``, in key order, with their encoded objects; at most ``limit`` keys examined and about ``max_bytes``
    of objects (at least one key). ``after`` in the result is the last key examined (the next page starts past
    it), None when the vnode has no more."""
    base = vnode_prefix(partition)
    cut = len(base)
    stored = vnodes.store.keys(base + prefix)
    if after is not None:
        floor = base + after
        stored = (k for k in stored if k > floor)
    chosen = heapq.nsmallest(limit + 1, stored)
    more = len(chosen) > limit
    from_bytes = vnodes.versions.Siblings.from_bytes
    now_ms = int(vnodes.clock.wall() * 1000)
    keys: list[bytes] = []
    objects: list[bytes] = []
    size = 0
    last = None
    for examined, stored_key in enumerate(chosen[:limit], 1):
        key = bytes(stored_key[cut:])
        raw = vnodes.get_raw(partition, key)  # CorruptionError: the client reads another replica from here
        last = key
        if raw is None:
            continue  # deleted (reaped) since the keydir was walked
        try:
            deleted = expiry.gone(from_bytes(raw), now_ms)  # a tombstone, or every value expired
        except (ProtocolError, ValueError) as exc:
            raise CorruptionError(f"stored object of {key!r} does not decode: {exc}") from exc
        if deleted:
            continue
        keys.append(key)
        objects.append(raw)
        size += len(key) + len(raw)
        if size >= max_bytes and examined < limit:
            more = True
            break
    return keys, objects, more, (last if more else None)


class Scans:
    """Answers SCAN_PAGE for the vnodes this node holds completely; counts what it served.

    Ports: the node's id and replication factor, a membership view, the vnodes, and the set of partitions being
    repaired (shared with the repair service, which empties it)."""

    def __init__(self, *, me: str, n: int, membership, vnodes, repairing=frozenset()):
        self.me = me
        self.n = n
        self.membership = membership
        self.vnodes = vnodes
        self.repairing = repairing
        self.pages = 0
        self.keys = 0
        self.bytes = 0
        self.refused = 0

    def check(self, partition: int) -> None:
        """Raise unless this node holds a complete replica of ``partition`` now."""
        state = self.membership.state
        if state is None:
            raise Unavailable(f"{self.me} has not joined the cluster yet")
        ring = state.ring
        if not (type(partition) is int and 0 <= partition < ring.partitions):
            raise ProtocolError(f"partition {partition} is outside the ring's 0..{ring.partitions - 1}")
        if self.me not in primaries(ring, partition, self.n):
            self.refused += 1
            raise WrongNode(f"{self.me} is not a primary of partition {partition} under ring {ring.version}")
        if partition in self.repairing:
            self.refused += 1
            raise ScanIncomplete(f"{self.me} is repairing partition {partition}: it may lack keys")

    def handle_scan_page(self, request):
        partition, prefix, after, limit, max_bytes = request
        self.check(partition)
        limit = DEFAULT_PAGE_KEYS if limit is None else limit
        max_bytes = DEFAULT_PAGE_BYTES if max_bytes is None else max_bytes
        if limit < 1 or max_bytes < 1:
            raise ProtocolError("a scan page's limit and max_bytes must be positive")
        keys, objects, more, last = read_page(self.vnodes, partition, prefix, after, min(limit, MAX_PAGE_KEYS),
                                              min(max_bytes, MAX_PAGE_BYTES))
        self.pages += 1
        self.keys += len(keys)
        self.bytes += sum(map(len, objects))
        return (_REPLY, (keys, objects, more, last))

    def status(self) -> dict:
        return {"pages": self.pages, "keys": self.keys, "bytes": self.bytes, "refused": self.refused}
