"""The clients' bulk operations: cluster scans (``scan``) and batches (``get_many``, ``put_many``).

A scan is routed by the client, not by a coordinator node: the client holds the ring already, so it picks one
replica per partition itself (``cluster.coverage``), asks it for one page at a time (SCAN_PAGE) and hands the
results out as they come. No node holds more than the page it is answering, no node relays another's pages
(one hop less than a coordinator would cost), and the position reached lives in the client, where a cursor can
carry it to another process. Each result is that one replica's copy of the key (r=1): its live siblings and
their context, as a get would return them from that replica alone. A write acknowledged by other replicas and
not yet on that one (held as a hint, or in flight) is not seen, or is seen in its previous version.

Batches group their keys by the node that coordinates them (the first of each key's preference list) and send
each group pipelined on that node's connection, the groups concurrently; a key whose node fails is retried on
its own, through the next nodes of its preference list, as a single request would be.
"""
from __future__ import annotations

import asyncio
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor

from dynafast import _impl
from dynafast.cluster import expiry
from dynafast.cluster.coverage import candidates, covering_set, decode_cursor, encode_cursor
from dynafast.errors import (CorruptionError, DynafastError, ProtocolError, ScanIncomplete, StoreClosed, Timeout,
                             Unavailable)
from dynafast.net.messages import Msg, ScanPage, WrongNode

DEFAULT_PAGE_SIZE = 1000
DEFAULT_PAGE_BYTES = 1 << 20
_BATCH_CHUNK = 256  # requests per pipelined write
_BATCH_CONCURRENCY = 256  # an AsyncClient's requests in flight per batch

# A replica that could not serve the page; another replica of the partition may (a ProtocolError too: a node that
# sent what we cannot read, or does not know SCAN_PAGE; the last one is raised when no replica serves).
OTHER_REPLICA = (WrongNode, ScanIncomplete, CorruptionError, StoreClosed, Unavailable, Timeout, ProtocolError)


class _Walk:
    """Where a scan is, and what it has fetched but not handed out yet (at most one page); no I/O."""

    def __init__(self, prefix, limit, page_size, max_bytes, cursor):
        if not isinstance(prefix, (bytes, bytearray, memoryview)):
            raise TypeError(f"prefix must be bytes, not {type(prefix).__name__}")
        if limit is not None and (type(limit) is not int or limit < 0):
            raise ValueError(f"limit must be a non-negative int or None, not {limit!r}")
        if type(page_size) is not int or page_size < 1 or type(max_bytes) is not int or max_bytes < 1:
            raise ValueError("page_size and max_bytes must be positive ints")
        self.prefix = bytes(prefix)
        self.remaining = limit
        self.page_size = page_size
        self.max_bytes = max_bytes
        self._start = cursor
        self.partitions = None  # the ring's partition count, once known
        self.partition = 0  # the next page to fetch: this partition, past ``after``
        self.after = None
        self.page: deque = deque()  # (key, raw object) fetched, not handed out
        self.page_partition = 0
        self.position = None  # (partition, after) past everything handed out
        self.plan: dict[int, str] = {}
        self._plan_ring = None
        self._decode = _impl.vclock.Siblings.from_bytes
        from dynafast.client import GetResult  # here: the client module imports this one

        self._result = GetResult

    def begin(self, ring) -> None:
        if self.partitions is None:
            self.partitions = ring.partitions
            if self._start is not None:
                self.partition, self.after = decode_cursor(bytes(self._start), ring.partitions, self.prefix)
            self.position = (self.partition, self.after)
        elif ring.partitions != self.partitions:
            raise ProtocolError(f"the ring went from {self.partitions} to {ring.partitions} partitions mid-scan")

    @property
    def exhausted(self) -> bool:
        return self.remaining == 0 or (self.partitions is not None and self.partition >= self.partitions)

    @property
    def cursor(self) -> bytes | None:
        """Resumes past everything handed out so far; None once the scan has read every partition."""
        if self.partitions is None:  # nothing fetched yet, the ring's size unknown
            return self._start if self._start is not None else encode_cursor(0, 0, None, self.prefix)
        partition, after = self.position
        if partition >= self.partitions:
            return None
        return encode_cursor(self.partitions, partition, after, self.prefix)

    def wants_more(self) -> bool:
        """Whether a page beyond those fetched may be needed (so worth reading ahead)."""
        return not self.exhausted and (self.remaining is None or len(self.page) < self.remaining)

    def request(self) -> ScanPage:
        size = self.page_size if self.remaining is None else min(self.page_size, self.remaining)
        return ScanPage(self.partition, self.prefix, self.after, size, self.max_bytes)

    def addresses(self, routing) -> list[str]:
        """The replicas of the next page's partition to try, in order, as addresses."""
        ring = routing.ring
        now = time.monotonic()
        bad = routing.bad

        def is_up(node):
            return bad.get(node, 0) < now

        if self._plan_ring is not ring:
            self.plan = covering_set(ring, is_up)
            self._plan_ring = ring
        nodes = candidates(ring, self.partition, self.plan.get(self.partition), is_up)
        return [routing.addresses[node] for node in nodes if node in routing.addresses]

    def take(self, reply, address: str) -> None:
        """A SCAN_PAGE_REPLY for the request made last."""
        if len(reply.keys) != len(reply.objects) or (reply.more and reply.after is None):
            raise ProtocolError(f"{address}: malformed SCAN_PAGE_REPLY")
        self.page_partition = self.partition
        self.page.extend(zip(reply.keys, reply.objects))
        if reply.more:
            self.after = reply.after
        else:
            self.partition += 1
            self.after = None
        if not self.page:
            self.position = (self.partition, self.after)

    def next_item(self, address: str = "node"):
        """The next (key, GetResult) fetched, or None when a page must be fetched (or the scan is over)."""
        while self.page and self.remaining != 0:
            key, raw = self.page.popleft()
            try:
                siblings = self._decode(raw)
                # Expired values read as deleted (on this client's clock; the replica left out objects whose
                # values had all expired on its own).
                values, ttls = expiry.visible(siblings.live_values(), int(time.time() * 1000))
                result = self._result(values, siblings.context(), _seconds(ttls))
            except (ProtocolError, ValueError) as exc:
                raise ProtocolError(f"{address}: a scanned object of {key!r} does not decode: {exc}") from None
            self.position = (self.page_partition, key) if self.page else (self.partition, self.after)
            if not values:
                continue
            if self.remaining is not None:
                self.remaining -= 1
            return key, result
        return None


class Scan:
    """A scan of a blocking Client: iterate for ``(key, GetResult)``; ``cursor`` resumes it (None when done).

    While the caller works through one page the next is already being fetched (one request ahead, on a shared
    thread): the node builds a page while the client decodes the last one."""

    def __init__(self, client, walk: _Walk, timeout: float):
        self._client = client
        self._walk = walk
        self._timeout = timeout
        self._address = "node"
        self._ahead = None  # the Future of the next page's (address, reply)

    @property
    def cursor(self) -> bytes | None:
        return self._walk.cursor

    def __iter__(self):
        return self

    def __next__(self):
        walk = self._walk
        while True:
            item = walk.next_item(self._address)
            if item is not None:
                return item
            if self._ahead is not None:
                ahead, self._ahead = self._ahead, None
                self._address, reply = ahead.result()
            elif walk.exhausted:
                raise StopIteration
            else:
                self._address, reply = self._fetch()
            walk.take(reply, self._address)
            if walk.wants_more():
                self._ahead = _reader().submit(self._fetch)

    def _fetch(self):
        """``(address, reply)`` of the next page, from the first replica of its partition that can serve it."""
        client, walk = self._client, self._walk
        routing = client._routing
        deadline = time.monotonic() + self._timeout * 2
        last = None
        pause = 0.05
        while True:
            if routing.ring is None or routing.stale() or last is not None:
                try:
                    client.refresh_ring()
                except (Unavailable, ProtocolError) as exc:
                    if routing.ring is None:
                        raise
                    last = exc
            walk.begin(routing.ring)
            for address in walk.addresses(routing):
                try:
                    return address, client._call(address, Msg.SCAN_PAGE, walk.request(), self._timeout)
                except OTHER_REPLICA as exc:
                    last = exc
            if time.monotonic() + pause > deadline:
                raise _no_replica(walk, last)
            time.sleep(pause)  # a ring change in progress settles, a down node is noticed
            pause = min(pause * 2, 1.0)


_readers = None


def _reader() -> ThreadPoolExecutor:
    """The threads that fetch blocking scans' next pages (shared: a scan left unfinished holds none)."""
    global _readers
    if _readers is None:
        _readers = ThreadPoolExecutor(max_workers=8, thread_name_prefix="dynafast-scan")
    return _readers


class AsyncScan:
    """A scan of an AsyncClient: ``async for key, result in scan``; ``cursor`` as for Scan; one page read ahead
    as there. ``aclose()`` drops the page being read ahead when the scan is left unfinished."""

    def __init__(self, client, walk: _Walk, timeout: float):
        self._client = client
        self._walk = walk
        self._timeout = timeout
        self._address = "node"
        self._ahead: asyncio.Task | None = None

    @property
    def cursor(self) -> bytes | None:
        return self._walk.cursor

    def __aiter__(self):
        return self

    async def __anext__(self):
        walk = self._walk
        while True:
            item = walk.next_item(self._address)
            if item is not None:
                return item
            if self._ahead is not None:
                ahead, self._ahead = self._ahead, None
                self._address, reply = await ahead
            elif walk.exhausted:
                raise StopAsyncIteration
            else:
                self._address, reply = await self._fetch()
            walk.take(reply, self._address)
            if walk.wants_more():
                self._ahead = asyncio.ensure_future(self._fetch())
                self._ahead.add_done_callback(_retrieved)

    async def aclose(self) -> None:
        if self._ahead is not None:
            self._ahead.cancel()
            self._ahead = None

    async def _fetch(self):
        client, walk = self._client, self._walk
        routing = client._routing
        deadline = time.monotonic() + self._timeout * 2
        last = None
        pause = 0.05
        while True:
            if routing.ring is None or routing.stale() or last is not None:
                try:
                    await client.refresh_ring()
                except (Unavailable, ProtocolError) as exc:
                    if routing.ring is None:
                        raise
                    last = exc
            walk.begin(routing.ring)
            for address in walk.addresses(routing):
                try:
                    return address, await client._call(address, Msg.SCAN_PAGE, walk.request(), self._timeout)
                except OTHER_REPLICA as exc:
                    last = exc
            if time.monotonic() + pause > deadline:
                raise _no_replica(walk, last)
            await asyncio.sleep(pause)
            pause = min(pause * 2, 1.0)


def _retrieved(task: asyncio.Task) -> None:
    """A page read ahead for a scan left unfinished: its error is nobody's (``__anext__`` raises it otherwise)."""
    if not task.cancelled():
        task.exception()


def _no_replica(walk: _Walk, last) -> DynafastError:
    message = f"no complete replica of partition {walk.partition} answered the scan: {last}"
    return last if isinstance(last, ProtocolError) else Unavailable(message)


def new_walk(prefix, limit, page_size, max_bytes, cursor) -> _Walk:
    return _Walk(prefix, limit, page_size, max_bytes, cursor)


# -- batches -------------------------------------------------------------------------------------------------
def _prepared(requests, results: dict) -> list:
    """The requests that could be built; the others' errors (a key too large, a value of the wrong type) go
    straight to ``results``."""
    prepared = []
    for key, build in requests:
        try:
            prepared.append(build())
        except (TypeError, ValueError, DynafastError) as exc:
            results[key] = exc
    return prepared


def _chunks(items, size):
    for start in range(0, len(items), size):
        yield items[start:start + size]


def run_batch(client, requests, timeout: float | None) -> dict:
    """Blocking Client: ``{key: reply record or exception}`` for ``requests``, pairs of (key, a function building
    ``(key, msg_type, fields)``)."""
    from dynafast.client import _decode as decode

    results: dict = {}
    prepared = _prepared(requests, results)
    if not prepared:
        return results
    timeout = client.timeout if timeout is None else timeout
    routing = client._routing
    if routing.stale():
        try:
            client.refresh_ring()
        except (Unavailable, ProtocolError):
            if routing.ring is None:
                raise
    groups: dict[str, list] = {}
    for item in prepared:
        order = routing.candidates(item[0])
        groups.setdefault(order[0] if order else routing.seeds[0], []).append(item)

    def one_node(address, items) -> dict:
        out: dict = {}
        again = []
        for chunk in _chunks(items, _BATCH_CHUNK):
            try:
                conn, lock = client._conn(address)
                with lock:
                    replies = conn.call_many([(m, f) for _, m, f in chunk], timeout + 1.0, return_exceptions=True)
            except (Unavailable, ProtocolError, OSError) as exc:
                client._drop(address)
                routing.failed(address)
                for item in chunk:  # as a single request does: try the key's other nodes, but never write twice
                    if isinstance(exc, ProtocolError) and item[1] != Msg.GET:
                        out[item[0]] = exc
                    else:
                        again.append(item)
                continue
            except DynafastError as exc:  # a timeout: the node is there, but the chunk's outcome is unknown
                out.update((key, exc) for key, _, _ in chunk)
                continue
            for item, reply in zip(chunk, replies):
                key, msg_type, _ = item
                if isinstance(reply, BaseException):
                    if isinstance(reply, (Unavailable, CorruptionError, StoreClosed)):
                        again.append(item)
                    else:
                        out[key] = reply
                    continue
                try:
                    record = decode(msg_type, reply)
                except ProtocolError as exc:
                    out[key] = exc
                    continue
                routing.note_ring_version(record.ring_version)
                out[key] = record
        for key, msg_type, fields in again:
            try:
                out[key] = client._request(key, msg_type, fields, timeout)
            except DynafastError as exc:
                out[key] = exc
        return out

    if len(groups) == 1:
        results.update(one_node(*next(iter(groups.items()))))
        return results
    with ThreadPoolExecutor(max_workers=min(len(groups), 16), thread_name_prefix="dynafast-batch") as pool:
        for out in pool.map(lambda group: one_node(*group), groups.items()):
            results.update(out)
    return results


async def run_batch_async(client, requests, timeout: float | None) -> dict:
    """AsyncClient: as ``run_batch``. Each node's requests go concurrently over its one multiplexed connection,
    which pipelines them; at most _BATCH_CONCURRENCY are in flight."""
    results: dict = {}
    prepared = _prepared(requests, results)
    if not prepared:
        return results
    gate = asyncio.Semaphore(_BATCH_CONCURRENCY)

    async def one(key, msg_type, fields):
        async with gate:
            try:
                return key, await client._request(key, msg_type, fields, timeout)
            except DynafastError as exc:
                return key, exc

    # Sorted by coordinator: each node's requests leave together, so they share writes on its connection.
    if client._routing.ring is not None:
        prepared.sort(key=lambda item: (client._routing.candidates(item[0]) or [""])[0])
    for key, outcome in await asyncio.gather(*(one(*item) for item in prepared)):
        results[key] = outcome
    return results


def get_results(replies: dict) -> dict:
    """``{key: GetResult or exception}`` of a batch of gets."""
    from dynafast.client import GetResult

    return {key: reply if isinstance(reply, BaseException) else
            GetResult(list(reply.values), reply.context, _seconds(reply.ttls_ms)) for key, reply in replies.items()}


def _seconds(ttls_ms):
    """A reply's ``ttls_ms`` as GetResult's ``ttls``: seconds, None for a value that does not expire."""
    return None if ttls_ms is None else [None if t < 0 else t / 1000.0 for t in ttls_ms]


def put_results(replies: dict) -> dict:
    """``{key: None or exception}`` of a batch of puts."""
    return {key: reply if isinstance(reply, BaseException) else None for key, reply in replies.items()}


def put_items(client, items, w, dw, timeout) -> list:
    """(key, builder) pairs of a put_many's items: (key, value) or (key, value, context)."""
    requests = []
    for item in items:
        if len(item) == 2:
            key, value = item
            context = None
        else:
            key, value, context = item

        def build(key=key, value=value, context=context):
            if value is None:
                raise TypeError("value must be bytes, not None (use delete)")
            return client._write_request(key, value, context, w, dw, timeout)

        requests.append((key, build))
    return requests
