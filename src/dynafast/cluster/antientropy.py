"""Merkle-tree anti-entropy between the replicas of each partition.

Every vnode keeps a Merkle tree over (key, version digest) that is updated on every write (built once from the
store the first time it is needed, never rebuilt on a schedule). Now and then, and on demand, a node picks one
of its partitions and another replica of it and compares trees level by level (``TreeExchange``): only the
subtrees that differ are descended, so replicas that differ in d keys exchange O(d log n) hashes. For each
differing leaf the two sides list their (key, digest) pairs; for each differing key both objects are reconciled
(siblings merged, nothing newer overwritten) and the result is written to whichever side lacked it.

Exchanges are rate-limited (bytes per second over everything they send and receive, and one exchange at a time)
so that repair never takes more than a set share of the node.
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from dynafast import _impl
from dynafast.cluster.background import cancel_and_wait, periodic
from dynafast.cluster.preflist import primaries
from dynafast.cluster.throttle import TokenBucket
from dynafast.errors import DynafastError
from dynafast.net.messages import Msg

log = logging.getLogger("dynafast.antientropy")


@dataclass
class ExchangeReport:
    partition: int
    peer: str
    differing_leaves: int = 0
    differing_keys: int = 0
    repaired_local: int = 0
    repaired_remote: int = 0
    bytes: int = 0
    seconds: float = 0.0
    finished_at: float = 0.0  # the node's monotonic clock


class VnodeTrees:
    """The Merkle trees of the vnodes a node holds, kept current by the write path."""

    def __init__(self, vnodes, leaves: int = 1024, fanout: int = 16):
        self.replicas = vnodes
        self.merkle = _impl.merkle
        self.leaves = leaves
        self.fanout = fanout
        self.trees: dict[int, object] = {}
        # on_scan(partition, key, siblings) for each object a tree build reads (the reaper finds tombstones so).
        self.on_scan = None

    def tree(self, partition: int):
        tree = self.trees.get(partition)
        if tree is None:
            tree = self.merkle.MerkleTree.build(self._scan(partition), self.leaves, self.fanout)
            self.trees[partition] = tree
        return tree

    def _scan(self, partition: int):
        on_scan = self.on_scan
        for key, siblings in self.replicas.fold(partition):
            if on_scan is not None:
                on_scan(partition, key, siblings)
            yield key, siblings.digest()

    def on_write(self, partition: int, key: bytes, old, new) -> None:
        tree = self.trees.get(partition)
        if tree is None:
            return  # built from the store when first needed, which then includes this write
        tree.update(key, None if old is None else old.digest(), None if new is None else new.digest())

    def drop(self, partition: int) -> None:
        self.trees.pop(partition, None)

    def verify(self, partition: int) -> None:
        """Read every object of the vnode. A tree counts a record by the digest it had when written, so a record
        damaged since is found only by reading it; reading it drops the tree (``Vnodes.on_damaged``), which is
        then built again without it, and the exchange that follows fetches a good copy."""
        for _ in self.replicas.fold(partition):
            pass

    def keys_in_leaves(self, partition: int, leaves) -> tuple[list[bytes], list[bytes]]:
        """(keys, digests) of every key of the vnode that falls into one of ``leaves``."""
        tree = self.tree(partition)
        wanted = set(leaves)
        keys, digests = [], []
        # Pick the keys by leaf first (a hash of the key); only those objects are read and decoded.
        for key in self.replicas.keys(partition):
            if tree.leaf_of(key) in wanted:
                # A damaged record is left out: the other side then sends its copy, which replaces it.
                siblings = self.replicas.get_intact(partition, key)
                if siblings is not None:
                    keys.append(key)
                    digests.append(siblings.digest())
        return keys, digests


class AntiEntropy:
    """Schedules and runs tree exchanges for one node.

    Ports: the node's id and replication factor, a membership view, the trees and vnodes, the transport, the
    clock and a random source (which replica to exchange with).
    """

    PIPELINE = 32  # replica requests of one exchange in flight at once

    def __init__(self, *, me: str, n: int, membership, ownership, trees: VnodeTrees, vnodes, transport, clock, rng,
                 interval: float = 10.0, bytes_per_second: float = 4 << 20, peer_timeout: float = 2.0):
        self.me = me
        self.n = n
        self.membership = membership
        self.ownership = ownership
        self.trees = trees
        self.vnodes = vnodes
        self.transport = transport
        self.clock = clock
        self.rng = rng
        self.interval = interval
        self.bucket = TokenBucket(bytes_per_second, burst=max(bytes_per_second, 1 << 20), clock=clock.monotonic)
        self.peer_timeout = peer_timeout
        self.lock = asyncio.Lock()
        self.last: dict[int, ExchangeReport] = {}
        self.exchanges = 0
        self.keys_repaired = 0
        self._cursor = 0
        self._task: asyncio.Task | None = None
        self._full: asyncio.Task | None = None

    # -- scheduling ---------------------------------------------------------------------------------------
    def start(self) -> None:
        if self.interval > 0:
            self._task = asyncio.create_task(
                periodic(self.interval, self.run_once, log, "anti-entropy exchange", rng=self.rng))

    async def stop(self) -> None:
        await cancel_and_wait([self._task, self._full])
        self._task = self._full = None

    def _owned(self) -> list[int]:
        if self.membership.state is None:
            return []  # not joined yet
        ring = self.membership.ring
        return [p for p in range(ring.partitions) if self.me in primaries(ring, p, self.n)]

    async def run_once(self) -> ExchangeReport | None:
        """Exchange the next owned partition (round robin) with a random other replica that is up."""
        owned = self._owned()
        if not owned:
            return None
        partition = owned[self._cursor % len(owned)]
        self._cursor += 1
        peers = [p for p in primaries(self.membership.ring, partition, self.n)
                 if p != self.me and self.membership.is_up(p)]
        if not peers:
            return None
        return await self.exchange(partition, self.rng.choice(peers))

    def run_all_soon(self) -> asyncio.Task | None:
        """Start ``exchange_all`` in the background unless one is already running; returns its task or None."""
        if self._full is not None and not self._full.done():
            return None
        self._full = asyncio.ensure_future(self.exchange_all())
        return self._full

    async def exchange_all(self) -> list[ExchangeReport]:
        """Every owned partition, each read through first (finding records damaged since its tree was built),
        against every other live replica (on demand: after a disk was lost or damaged)."""
        reports = []
        for partition in self._owned():
            self.trees.verify(partition)
            for peer in primaries(self.membership.ring, partition, self.n):
                if peer != self.me and self.membership.is_up(peer):
                    try:
                        reports.append(await self.exchange(partition, peer))
                    except DynafastError as exc:
                        log.warning("exchange of %d with %s failed: %s", partition, peer, exc)
        return reports

    # -- one exchange -------------------------------------------------------------------------------------
    async def _call(self, peer: str, msg_type, fields):
        _, reply = await self.transport.call(self.membership.address_of(peer), msg_type, fields,
                                             self.peer_timeout)
        return reply

    async def exchange(self, partition: int, peer: str) -> ExchangeReport:
        async with self.lock:
            started = self.clock.monotonic()
            report = ExchangeReport(partition, peer)
            tree = self.trees.tree(partition)
            exchange = self.trees.merkle.TreeExchange(tree)
            while True:
                request = exchange.next_request()
                if request is None:
                    break
                depth, indices = request
                hashes = (await self._call(peer, Msg.MERKLE_GET, (partition, depth, list(indices))))[0]
                exchange.feed(list(hashes))
                await self.bucket.take(16 * (len(indices) + len(hashes)))
            leaves = exchange.result()
            report.bytes = exchange.bytes_sent + exchange.bytes_received
            report.differing_leaves = len(leaves)
            for start in range(0, len(leaves), 64):
                await self._repair_leaves(partition, peer, leaves[start:start + 64], report)
            report.finished_at = self.clock.monotonic()
            report.seconds = report.finished_at - started
            self.last[partition] = report
            self.exchanges += 1
            self.keys_repaired += report.repaired_local + report.repaired_remote
            if report.differing_keys:
                log.info("anti-entropy on partition %d with %s repaired %d here, %d there", partition, peer,
                         report.repaired_local, report.repaired_remote)
            return report

    async def _repair_leaves(self, partition: int, peer: str, leaves, report: ExchangeReport) -> None:
        remote_keys, remote_digests = await self._call(peer, Msg.KEYS_GET, (partition, list(leaves)))
        local_keys, local_digests = self.trees.keys_in_leaves(partition, leaves)
        remote = dict(zip(remote_keys, remote_digests))
        local = dict(zip(local_keys, local_digests))
        differing = sorted(k for k in remote.keys() | local.keys() if remote.get(k) != local.get(k))
        report.differing_keys += len(differing)
        report.bytes += sum(len(k) + 16 for k in remote_keys)
        await self.bucket.take(sum(len(k) + 16 for k in remote_keys))
        replicas = self.vnodes
        # Keys go in slices whose requests are in flight together: one round trip per key made a wiped node's
        # repair take as many round trips as it had keys.
        for start in range(0, len(differing), self.PIPELINE):
            chunk = differing[start:start + self.PIPELINE]
            wanted = [key for key in chunk if key in remote]
            replies = await asyncio.gather(*(self._call(peer, Msg.REPLICA_GET, (partition, key, None))
                                             for key in wanted))
            fetched = {key: reply[0] for key, reply in zip(wanted, replies)}
            await self.bucket.take(sum(len(key) + len(raw or b"") for key, raw in fetched.items()))
            pushes = []
            for key in chunk:
                raw = fetched.get(key)
                theirs = None if raw is None else replicas.versions.Siblings.from_bytes(raw)
                if theirs is not None:
                    before = replicas.get_intact(partition, key)
                    merged = replicas.merge_in(partition, key, theirs)
                    if before is None or merged != before:
                        report.repaired_local += 1
                else:
                    merged = replicas.get_intact(partition, key)
                if merged is not None and (theirs is None or merged != theirs):
                    pushes.append((key, merged.to_bytes()))
            await asyncio.gather(*(self._call(peer, Msg.REPLICA_PUT, (partition, key, raw, False, None))
                                   for key, raw in pushes))
            await self.bucket.take(sum(len(key) + len(raw) for key, raw in pushes))
            report.repaired_remote += len(pushes)

    # -- serving the other side ---------------------------------------------------------------------------
    def merkle_hashes(self, partition: int, depth: int, indices) -> list[bytes]:
        return self.trees.tree(partition).hashes(depth, list(indices))

    def handle_merkle_get(self, request):
        self.ownership.check_member(self.membership, request.partition)
        return (Msg.MERKLE_REPLY, (self.merkle_hashes(request.partition, request.depth, request.indices),))

    def handle_keys_get(self, request):
        self.ownership.check_member(self.membership, request.partition)
        keys, digests = self.trees.keys_in_leaves(request.partition, request.leaves)
        return (Msg.KEYS_REPLY, (keys, digests))

    def status(self) -> dict:
        now = self.clock.monotonic()
        last = max((r.finished_at for r in self.last.values()), default=None)
        return {
            "exchanges": self.exchanges,
            "keys_repaired": self.keys_repaired,
            "partitions_exchanged": len(self.last),
            "last_exchange_age": None if last is None else round(now - last, 3),
            "trees_built": len(self.trees.trees),
            "bytes_per_second": self.bucket.rate,
        }
