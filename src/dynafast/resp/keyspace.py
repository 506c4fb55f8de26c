"""SCAN, KEYS, RANDOMKEY, DBSIZE and FLUSHALL over the whole cluster, from any node.

They read the key space as a client scan does (``cluster.coverage``): one complete replica of each partition,
page by page in key order (SCAN_PAGE), this node's own vnodes in-process and the others' through the node's peer
connections. A replica that cannot serve (down, repairing, not a primary under its ring) is passed over for the
next replica of the partition, so a scan goes on while a node is down.

A Redis cursor is a number, and a scan position is a partition and the last key read: the cursor carries the
partition in its high bits and a number that this node maps to the last key (a bounded table, oldest forgotten
first). A cursor whose key is unknown here (another node, a restart, forgotten) restarts its partition from the
start: keys come again, which SCAN's contract allows, and none is missed.
"""
from __future__ import annotations

import asyncio
import collections
import random
import re

from dynafast.cluster.coverage import candidates, covering_set
from dynafast.cluster.ports import peer_failed
from dynafast.errors import DynafastError, Unavailable
from dynafast.net.messages import Delete, Msg, ScanPage
from dynafast.resp.protocol import OK, RespError

PARTITION_SHIFT = 47  # cursor = partition << 47 | position number: below 2**63 for up to 65535 partitions
POSITION_MASK = (1 << PARTITION_SHIFT) - 1
MAX_POSITIONS = 100_000  # scan positions remembered per node
MAX_PAGES_PER_CALL = 8  # pages one SCAN call reads at most (a sparse MATCH returns fewer keys, never waits long)
FLUSH_CONCURRENCY = 64
_GLOB = re.compile(rb"[*?\[\\]")


def parse_cursor(arg: bytes) -> int:
    try:
        cursor = int(arg)
    except ValueError:
        raise RespError("ERR invalid cursor") from None
    if not 0 <= cursor < 1 << 64:
        raise RespError("ERR invalid cursor")
    return cursor


def glob_prefix(pattern: bytes | None) -> bytes:
    """The literal start of a glob pattern: every key it matches starts with it."""
    if not pattern:
        return b""
    m = _GLOB.search(pattern)
    return pattern if m is None else pattern[:m.start()]


def glob_matcher(pattern: bytes | None):
    """A predicate on keys for a Redis glob pattern (``*``, ``?``, ``[a-z]``, ``[^x]``, ``\\`` escapes), read as
    Redis's stringmatchlen reads it: a range's ends in either order, a class without its ``]`` running to the end
    of the pattern, an empty pattern matching only the empty key. None: every key (no pattern, or ``*``)."""
    if pattern is None or pattern == b"*":
        return None
    if _GLOB.search(pattern) is None:
        return lambda key: key == pattern
    out = bytearray()
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i:i + 1]
        if c == b"*":
            out += b".*"
        elif c == b"?":
            out += b"."
        elif c == b"\\" and i + 1 < n:
            i += 1
            out += re.escape(pattern[i:i + 1])
        elif c == b"[":
            j = i + 1
            negate = j < n and pattern[j:j + 1] == b"^"
            if negate:
                j += 1
            items = bytearray()
            while j < n and pattern[j:j + 1] != b"]":
                if pattern[j:j + 1] == b"\\" and j + 1 < n:
                    j += 1
                    items += re.escape(pattern[j:j + 1])
                elif j + 2 < n and pattern[j + 1:j + 2] == b"-":
                    low, high = sorted((pattern[j:j + 1], pattern[j + 2:j + 3]))
                    items += re.escape(low) + b"-" + re.escape(high)
                    j += 2
                else:
                    items += re.escape(pattern[j:j + 1])
                j += 1
            if items:
                out += b"[" + (b"^" if negate else b"") + bytes(items) + b"]"
            else:
                out += b"." if negate else b"(?!)"  # [^] is any byte, [] none
            i = j  # at the ], or past the end when the class was never closed
        else:
            out += re.escape(c)
        i += 1
    regex = re.compile(bytes(out) + rb"\Z", re.DOTALL)
    return lambda key: regex.match(key) is not None


class Keyspace:
    """Cluster-wide key iteration for the RESP front end of one node.

    Ports: this node's id, membership, its Scans service (pages of its own vnodes), the peer pool, the request
    coordinator (FLUSHALL deletes through it), the config."""

    def __init__(self, *, me, membership, scans, transport, requests, config):
        self.me = me
        self.membership = membership
        self.scans = scans
        self.transport = transport
        self.requests = requests
        self.config = config
        self._positions: collections.OrderedDict[int, bytes] = collections.OrderedDict()
        self._next_position = random.getrandbits(32) | 1
        self._plan = (None, {})

    # -- cursors --------------------------------------------------------------------------------------
    def _encode(self, partitions: int, partition: int, after: bytes | None) -> bytes:
        if partition >= partitions:
            return b"0"
        number = 0
        if after is not None:
            number = self._next_position
            self._next_position = self._next_position % POSITION_MASK + 1
            positions = self._positions
            positions[number] = after
            if len(positions) > MAX_POSITIONS:
                positions.popitem(last=False)
        return str(partition << PARTITION_SHIFT | number).encode()

    def _decode(self, cursor: int, partitions: int) -> tuple[int, bytes | None]:
        partition, number = cursor >> PARTITION_SHIFT, cursor & POSITION_MASK
        if partition >= partitions:
            return 0, None  # a cursor of another ring: from the start (keys may come twice, none is missed)
        return partition, (self._positions.get(number) if number else None)

    # -- pages ----------------------------------------------------------------------------------------
    def _ring(self):
        state = self.membership.state
        if state is None:
            raise Unavailable(f"{self.me} has not joined the cluster yet")
        return state.ring

    async def page(self, ring, partition: int, prefix: bytes, after, limit: int):
        """(keys, more, after) of one page of ``partition``, from the first of its replicas that serves it."""
        membership = self.membership
        down = membership.down()

        def is_up(node):
            return node not in down

        if self._plan[0] is not ring:
            self._plan = (ring, covering_set(ring, is_up))
        request = ScanPage(partition, prefix, after, limit, None)
        last = None
        for node in candidates(ring, partition, self._plan[1].get(partition), is_up):
            try:
                if node == self.me:
                    _, fields = self.scans.handle_scan_page(request)
                else:
                    _, fields = await self.transport.call(membership.address_of(node), Msg.SCAN_PAGE, request,
                                                          self.config.request_timeout)
            except (DynafastError, OSError) as exc:
                if peer_failed(exc):
                    membership.mark_down(node, exc)
                last = exc
                continue
            return fields[0], fields[2], fields[3]  # keys, more, after (the objects are not needed)
        raise Unavailable(f"no replica of partition {partition} could be scanned: {last}")

    async def walk(self, pattern=None, limit: int = 1000):
        """Every live key matching ``pattern``, page by page (an async iterator of key lists)."""
        ring = self._ring()
        prefix, match = glob_prefix(pattern), glob_matcher(pattern)
        for partition in range(ring.partitions):
            after = None
            while True:
                keys, more, after = await self.page(ring, partition, prefix, after, limit)
                yield keys if match is None else [k for k in keys if match(k)]
                if not more:
                    break

    # -- commands -------------------------------------------------------------------------------------
    async def scan(self, cursor: int, pattern, count: int, kind):
        ring = self._ring()
        partitions = ring.partitions
        partition, after = self._decode(cursor, partitions)
        prefix, match = glob_prefix(pattern), glob_matcher(pattern)
        found = []
        pages = 0
        limit = max(1, min(count, 10_000))
        while partition < partitions and len(found) < count and pages < MAX_PAGES_PER_CALL:
            keys, more, next_after = await self.page(ring, partition, prefix, after, limit)
            pages += 1
            found.extend(keys if match is None else (k for k in keys if match(k)))
            if more:
                after = next_after
            else:
                partition, after = partition + 1, None
        if kind is not None and kind != b"string":
            found = []  # every key of this store is a string
        return [self._encode(partitions, partition, after), found]

    async def keys(self, pattern):
        out = []
        async for keys in self.walk(pattern):
            out.extend(keys)
        return out

    async def count(self):
        total = 0
        async for keys in self.walk():
            total += len(keys)
        return total

    async def random_key(self):
        ring = self._ring()
        start = random.randrange(ring.partitions)
        for i in range(ring.partitions):
            partition = (start + i) % ring.partitions
            keys, _, _ = await self.page(ring, partition, b"", None, 16)
            if keys:
                return random.choice(keys)
        return None

    async def flush(self, conn):
        """Delete every key: a scan, and a delete of each key through the coordinator (reads then deletes)."""
        pending = set()
        async for keys in self.walk():
            for key in keys:
                delete = Delete(key, None, conn.w, conn.dw, None)
                pending.add(asyncio.ensure_future(_await(self.requests.client_delete(delete))))
                if len(pending) >= FLUSH_CONCURRENCY:
                    done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                    for future in done:
                        future.result()
        for future in pending:
            await future
        return OK


async def _await(result):
    return result if type(result) is tuple else await result
