"""A dynafast node: the one place that wires server, coordinator, membership, handoff and storage together."""
from __future__ import annotations

import asyncio
import functools
import gc
import json
import logging
import signal
import time
from pathlib import Path

import dynafast
from dynafast import _impl
from dynafast.cluster.antientropy import AntiEntropy, TokenBucket, VnodeTrees
from dynafast.cluster.background import cancel_and_wait
from dynafast.cluster.coordinator import GetCoordinator, PutCoordinator
from dynafast.cluster import incarnation
from dynafast.cluster.handoff import Transfers
from dynafast.cluster.membership import ClusterMembership
from dynafast.cluster.replica import DurabilityBatcher, ReplicaStore
from dynafast.config import NodeConfig, split_address
from dynafast.errors import (
    DynafastError,
    KeyTooLarge,
    ProtocolError,
    Timeout,
    Unavailable,
    ValueTooLarge,
)
from dynafast.metrics import RequestStats
from dynafast.net.connection import PeerPool
from dynafast.net.messages import Msg
from dynafast.net.server import start_server

log = logging.getLogger("dynafast.node")

_CLIENT_OPS = {Msg.GET: "get", Msg.PUT: "put", Msg.DELETE: "delete"}

# What unpacking fields of the wrong shape or type raises in a handler.
_MALFORMED = (TypeError, ValueError, IndexError, KeyError, AttributeError, OverflowError)

# Errors after which a peer is suspected: it did not answer, as opposed to answering with an error.
_PEER_FAILURES = (Unavailable, Timeout, ConnectionError)


def _peer_failed(exc) -> bool:
    """The peer did not answer (as opposed to answering with an error such as StorageFull)."""
    return isinstance(exc, _PEER_FAILURES) or (isinstance(exc, OSError) and not isinstance(exc, DynafastError))


def _ms(timeout_ms, default: float) -> float:
    if timeout_ms is None:
        return default
    if not isinstance(timeout_ms, int) or timeout_ms <= 0:
        raise ProtocolError("timeout must be a positive number of milliseconds")
    return timeout_ms / 1000.0


def _quorum(value, default: int, name: str, n: int) -> int:
    if value is None:
        return default
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= n:
        raise ProtocolError(f"{name} must be an integer in 0..{n}")
    return value


class Node:
    def __init__(self, config: NodeConfig):
        self.config = config
        self.node_id = config.node_id
        self.versions = _impl.vclock
        self.Siblings = self.versions.Siblings
        data = Path(config.data_dir)
        data.mkdir(parents=True, exist_ok=True)
        self.store = dynafast.open(
            data / "store",
            sync=config.sync,
            sync_interval=config.sync_interval,
            segment_size=config.segment_size,
            max_key_size=65535,  # the widest the record header holds; room for the vnode/hint prefixes
            max_value_size=config.max_value_size * 4 + 1024 * 1024,
        )
        # The store's lock is held now: no other process can be using this directory's incarnation.
        self.incarnation = incarnation.begin(data)
        self.actor = f"{self.node_id}.{self.incarnation}".encode()
        self.replicas = ReplicaStore(self.store, self.versions)
        self.trees = VnodeTrees(self.replicas, leaves=config.merkle_leaves)
        self.replicas.on_write = self.trees.on_write
        self.pool = PeerPool(connect_timeout=config.peer_timeout)
        self.membership = ClusterMembership(config, self.pool)
        self.transfers = Transfers(self, bytes_per_second=config.transfer_bytes_per_second,
                                   drop_grace=config.drop_grace, peer_timeout=config.peer_timeout * 5)
        self.membership.listeners.append(self.transfers.on_state)
        self.stopped = asyncio.Event()
        self.handoff_bucket = TokenBucket(config.handoff_bytes_per_second)
        self.requests = RequestStats(_CLIENT_OPS.values())
        self.hints_delivered = 0
        self.tombstones_reaped = 0
        self._reap_timers: set = set()
        self._closing = False
        self._background: set[asyncio.Task] = set()
        self.loop = None
        self.deadlines = None
        self.durable = DurabilityBatcher(self.store)
        self.antientropy = AntiEntropy(self, self.trees, interval=config.ae_interval,
                                       bytes_per_second=config.ae_bytes_per_second,
                                       peer_timeout=config.peer_timeout * 2)
        self.server = None
        self.http = None
        self.metrics = None
        self._tasks: list[asyncio.Task] = []
        self._routes: dict = {}  # partition -> route, for _routes_ring and _routes_down (see _route)
        self._routes_ring = None
        self._routes_down = None
        self.started = time.time()
        self.handlers = {
            Msg.PING: self.membership_ping,
            Msg.GET: self.client_get,
            Msg.PUT: self.client_put,
            Msg.DELETE: self.client_delete,
            Msg.RING_GET: self.ring_get,
            Msg.STATUS: self.status_msg,
            Msg.REPLICA_GET: self.replica_get,
            Msg.REPLICA_PUT: self.replica_put,
            Msg.JOIN: self.join,
            Msg.RING_PUSH: self.ring_push,
            Msg.GOSSIP: self.gossip,
            Msg.TRANSFER: self.transfer,
            Msg.HINT_PUSH: self.hint_push,
            Msg.REAP: self.reap,
            Msg.TRANSFER_DONE: self.transfer_done,
            Msg.LEAVE: self.leave,
            Msg.MERKLE_GET: self.merkle_get,
            Msg.KEYS_GET: self.keys_get,
        }

    # -- life cycle ----------------------------------------------------------------------------------------
    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.deadlines = _Deadlines(self.loop)
        host, port = split_address(self.config.listen)
        self.server = await start_server(self.handle, host, port, max_frame=self.config.max_frame)
        await self.membership.start()
        if self.config.http:
            from dynafast.http import start_http

            self.http = await start_http(self, self.config.http)
        self._tasks.append(asyncio.create_task(self._handoff_loop()))
        self.antientropy.start()

    async def stop(self) -> None:
        self._closing = True
        for handle in self._reap_timers:
            handle.cancel()
        await cancel_and_wait(list(self._tasks) + list(self._background))
        await self.antientropy.stop()
        await self.transfers.close()
        await self.membership.stop()
        if self.http is not None:
            await self.http.cleanup()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
        await self.pool.close()
        self.durable.close()
        # Flush the write buffer and fsync before the store closes; then the next start may keep the actor.
        self.store.sync()
        self.store.close()
        incarnation.end_clean(self.config.data_dir, self.incarnation)

    # -- dispatch -------------------------------------------------------------------------------------------
    def handle(self, conn, msg_type, request_id, fields):
        handler = self.handlers.get(msg_type)
        if handler is None:
            raise ProtocolError(f"unknown message type {msg_type}")
        op = _CLIENT_OPS.get(msg_type)
        started = self.requests.started() if op is not None else 0.0
        try:
            result = handler(fields)
        except DynafastError as exc:
            if op is not None:
                self.requests.finished(op, started, exc)
            raise  # KeyTooLarge and ValueTooLarge are ValueErrors too, and must reach the client as they are
        except _MALFORMED as exc:
            # Fields of the wrong number or type: the sender's fault, answered with a protocol error.
            error = ProtocolError(f"malformed {Msg(msg_type).name} request: {exc}")
            if op is not None:
                self.requests.finished(op, started, error)
            raise error from None
        if op is not None:
            return self.requests.track(op, started, result)
        return result

    # -- client requests --------------------------------------------------------------------------------------
    def _check_key(self, key) -> bytes:
        if not isinstance(key, bytes):
            raise ProtocolError("key must be bytes")
        if len(key) > self.config.max_key_size:
            raise KeyTooLarge(f"key of {len(key)} bytes is over the limit of {self.config.max_key_size}")
        return key

    def _check_value(self, value) -> bytes:
        if not isinstance(value, bytes):
            raise ProtocolError("value must be bytes")
        if len(value) > self.config.max_value_size:
            raise ValueTooLarge(
                f"value of {len(value)} bytes is over the limit of {self.config.max_value_size}"
            )
        return value

    def client_get(self, fields):
        key = self._check_key(fields[0])
        r = _quorum(fields[1] if len(fields) > 1 else None, self.config.r, "r", self.config.n) or 1
        timeout = _ms(fields[2] if len(fields) > 2 else None, self.config.request_timeout)
        return self._get(key, r, timeout, (Msg.GET, fields))

    def client_put(self, fields):
        key = self._check_key(fields[0])
        value = self._check_value(fields[1])
        return self._write(key, value, fields[2:], Msg.PUT, fields)

    def client_delete(self, fields):
        key = self._check_key(fields[0])
        return self._write(key, None, fields[1:], Msg.DELETE, fields)

    def _write(self, key, value, rest, msg_type, fields):
        context = rest[0] if len(rest) > 0 else None
        if context is not None and not isinstance(context, bytes):
            raise ProtocolError("context must be bytes")
        w = _quorum(rest[1] if len(rest) > 1 else None, self.config.w, "w", self.config.n) or 1
        dw = _quorum(rest[2] if len(rest) > 2 else None, min(self.config.dw, w), "dw", self.config.n)
        if dw > w:
            raise ProtocolError(f"dw ({dw}) must not exceed w ({w})")
        timeout = _ms(rest[3] if len(rest) > 3 else None, self.config.request_timeout)
        incoming = self.Siblings.new(value, context or None)
        reply_type = Msg.PUT_REPLY if msg_type == Msg.PUT else Msg.DELETE_REPLY
        return self._put(key, incoming, w, dw, timeout, reply_type, (msg_type, fields))

    def _route(self, key):
        """(partition, primaries, targets, spares) of ``key``; targets is None when this node holds no replica.

        Routes depend only on the ring and the set of down nodes, which change rarely (a new ring, a new
        frozenset), so they are cached per partition until either changes: working them out per request
        cost more than a local read.
        """
        membership = self.membership
        ring = membership.ring
        down = membership.down()
        if ring is not self._routes_ring or down is not self._routes_down:
            self._routes = {}
            self._routes_ring = ring
            self._routes_down = down
        partition = ring.partition_of(key)
        route = self._routes.get(partition)
        if route is None:
            primaries = ring.replicas(partition, self.config.n)
            if self.node_id in primaries:
                targets, spares = self._targets(ring, partition, primaries, down)
            else:
                targets = spares = None
            route = self._routes[partition] = (partition, primaries, targets, spares)
        return route

    async def _forward(self, primaries, request, timeout):
        """This node holds no replica of the key: hand the request to one that does."""
        msg_type, fields = request
        down = self.membership.down()
        order = [p for p in primaries if p not in down] + [p for p in primaries if p in down]
        last = None
        for node in order:
            try:
                # The replica answers within `timeout` (its own deadline); allow for the extra hop.
                return await self.pool.call(self.membership.address_of(node), msg_type, fields, timeout + 0.5)
            except Exception as exc:  # noqa: BLE001 - filtered just below
                if not _peer_failed(exc):
                    raise
                self.membership.mark_down(node, exc)
                if isinstance(exc, Timeout) and msg_type != Msg.GET:
                    raise  # the write may have happened there: doing it again elsewhere would duplicate it
                last = exc
        raise Unavailable(f"no replica of the key answered: {last}")

    def _targets(self, ring, partition, primaries, down):
        targets = ring.preference_list(partition, self.config.n, down)
        if len(targets) < self.config.n:
            # Too few live nodes to stand in: try the down primaries too, they may be back already.
            used = {node for node, _ in targets}
            targets += [(node, None) for node in primaries if node not in used]
        # The coordinator's own replica goes first: its write is the local, durable one.
        targets.sort(key=lambda target: target[0] != self.node_id)
        spares = tuple(node for node in ring.fallbacks(partition, self.config.n) if node not in down)
        return tuple(targets), spares

    # put -------------------------------------------------------------------------------------------------
    def _put(self, key, incoming, w, dw, timeout, reply_type, request):
        partition, primaries, targets, spares = self._route(key)
        if targets is None:
            return self._forward(primaries, request, timeout)
        existing = self.replicas.get(partition, key)
        # Stamp the new version and write it locally in the same loop step as the read: no other write of
        # this key can slip in between.
        now = int(time.time())
        # Pruned as Riak does (by size and age): clocks gain an entry per coordinator incarnation.
        stored = incoming.update(existing, self.actor, now).prune(now)
        machine = PutCoordinator(targets, spares, w=w, dw=dw)
        loop = asyncio.get_running_loop()
        state = _Request(loop, machine, partition, key, stored, stored.to_bytes(), reply_type)
        state.previous = existing
        state.on_answer = self._write_answer
        if stored.is_deleted() and len(targets) >= self.config.n:
            state.on_all_acked = self._schedule_reap
        self._send_puts(state, machine.start())
        next_ring = self.membership.next_ring
        if next_ring is not None:
            # The cluster is changing shape: new replicas get every write while their vnode streams in.
            sent = {node for node, _ in targets}
            for node in next_ring.replicas(partition, self.config.n):
                if node not in sent and node != self.node_id:
                    fields = (partition, key, state.raw, False, None)
                    call = self.pool.request(
                        self.membership.address_of(node), Msg.REPLICA_PUT, fields, self.config.peer_timeout)
                    call.add_done_callback(_ignore_result)
        return state.arm(self.deadlines, timeout)

    def _send_puts(self, state, sends):
        for send in sends:
            if send.node == self.node_id:
                if send.hint_for is None:
                    self.replicas.write(state.partition, state.key, state.obj, previous=state.previous,
                                        raw=state.raw)
                else:
                    self.replicas.merge_in(state.partition, state.key, state.obj, send.hint_for)
                if send.durable:
                    self.durable.waiter().add_done_callback(functools.partial(self._local_durable, state))
                else:
                    state.machine.on_ack(self.node_id, False)
            else:
                fields = (state.partition, state.key, state.raw, send.durable, send.hint_for)
                call = self.pool.request(
                    self.membership.address_of(send.node), Msg.REPLICA_PUT, fields, self.config.peer_timeout
                )
                call.add_done_callback(functools.partial(self._put_replied, state, send.node))
        state.settle()

    def _local_durable(self, state, synced):
        exc = synced.exception() if not synced.cancelled() else asyncio.CancelledError()
        if exc is not None:
            # A failed fsync fails this replica's ack, not the node.
            log.error("durable write failed: %s", exc)
            self._send_puts(state, state.machine.on_failure(self.node_id, exc))
            return
        state.machine.on_ack(self.node_id, True)
        state.settle()

    def _put_replied(self, state, node, call):
        machine = state.machine
        if call.cancelled():
            self._send_puts(state, machine.on_failure(node))
            return
        exc = call.exception()
        if exc is None:
            self.membership.mark_up(node)
            _, reply = call.result()
            machine.on_ack(node, bool(reply[0]))
            state.settle()
            return
        if _peer_failed(exc):
            self.membership.mark_down(node, exc)
        else:
            log.warning("replica put on %s failed: %s", node, exc)
        self._send_puts(state, machine.on_failure(node, exc))

    # get -------------------------------------------------------------------------------------------------
    def _get(self, key, r, timeout, request):
        partition, primaries, targets, spares = self._route(key)
        if targets is None:
            return self._forward(primaries, request, timeout)
        machine = GetCoordinator(targets, spares, r=r, versions=self.versions)
        loop = asyncio.get_running_loop()
        state = _Request(loop, machine, partition, key, None, None, Msg.GET_REPLY)
        state.on_answer = self._get_answer
        state.on_finish = self._read_repair
        self._send_gets(state, machine.start())
        return state.arm(self.deadlines, timeout)

    def _write_answer(self, machine):
        return (self.membership.ring.version,)

    def _get_answer(self, machine):
        result = machine.result
        version = self.membership.ring.version  # lets a client see that its ring is stale
        if result is None:
            return ([], b"", version)
        # Concurrent writes of the same bytes (a retried blind write) are one value to the application.
        values = list(dict.fromkeys(result.live_values()))
        return (values, result.context(), version)

    def _send_gets(self, state, sends):
        for send in sends:
            if send.node == self.node_id:
                state.machine.on_reply(self.node_id, self.replicas.get(state.partition, state.key, send.hint_for))
            else:
                fields = (state.partition, state.key, send.hint_for)
                call = self.pool.request(
                    self.membership.address_of(send.node), Msg.REPLICA_GET, fields, self.config.peer_timeout
                )
                call.add_done_callback(functools.partial(self._get_replied, state, send.node))
        state.settle()

    def _get_replied(self, state, node, call):
        machine = state.machine
        exc = None if call.cancelled() else call.exception()
        if call.cancelled() or exc is not None:
            if _peer_failed(exc):
                self.membership.mark_down(node, exc)
            self._send_gets(state, machine.on_failure(node, exc))
            return
        self.membership.mark_up(node)
        _, reply = call.result()
        try:
            siblings = None if reply[0] is None else self.Siblings.from_bytes(reply[0])
        except DynafastError as exc:
            log.error("unreadable object from %s: %s", node, exc)
            self._send_gets(state, machine.on_failure(node, exc))
            return
        machine.on_reply(node, siblings)
        state.settle()

    def _read_repair(self, state):
        merged, stale = state.machine.repairs()
        if merged is None:
            return
        raw = None
        for node in stale:
            if node == self.node_id:
                self.merge_local(state.partition, state.key, merged)
                continue
            raw = raw or merged.to_bytes()
            fields = (state.partition, state.key, raw, False, None)
            call = self.pool.request(
                self.membership.address_of(node), Msg.REPLICA_PUT, fields, self.config.peer_timeout
            )
            call.add_done_callback(_ignore_result)

    # -- replica requests from coordinators ----------------------------------------------------------------
    def replica_get(self, fields):
        partition, key, hint_for = fields[:3]
        return (Msg.REPLICA_GET_REPLY, (self.replicas.get_raw(partition, key, hint_for),))

    def replica_put(self, fields):
        partition, key, raw, durable, hint_for = fields[:5]
        incoming = self.Siblings.from_bytes(raw)
        self.replicas.merge_in(partition, key, incoming, hint_for)
        if durable:
            return self._durable_reply(Msg.REPLICA_PUT_REPLY)
        return (Msg.REPLICA_PUT_REPLY, (False,))

    def merge_local(self, partition, key, incoming):
        """Reconcile an object into this node's primary replica (read repair, anti-entropy)."""
        return self.replicas.merge_in(partition, key, incoming)

    def merkle_get(self, fields):
        partition, depth, indices = fields[:3]
        return (Msg.MERKLE_REPLY, (self.antientropy.merkle_hashes(partition, depth, indices),))

    def keys_get(self, fields):
        partition, leaves = fields[:2]
        keys, digests = self.trees.keys_in_leaves(partition, leaves)
        return (Msg.KEYS_REPLY, (keys, digests))

    # -- membership and ring ---------------------------------------------------------------------------------
    def membership_ping(self, fields):
        return (Msg.PONG, self.membership.handle_ping(fields))

    def gossip(self, fields):
        return (Msg.GOSSIP_REPLY, self.membership.handle_gossip(fields))

    def leave(self, fields):
        return _reply(Msg.LEAVE_REPLY, self.membership.handle_leave(fields))

    def transfer(self, fields):
        partition, keys, raws = fields[:3]
        return _reply(Msg.TRANSFER_REPLY, self.transfers.receive(partition, keys, raws))

    def transfer_done(self, fields):
        return _reply(Msg.TRANSFER_DONE_REPLY, self.membership.handle_transfer_done(fields))

    def request_stop(self) -> None:
        """Ask the serving loop to stop this node (after it has left the cluster)."""
        self.stopped.set()

    def ring_get(self, fields):
        return (Msg.RING_REPLY, self.membership.state_fields())

    def join(self, fields):
        return _reply(Msg.JOIN_REPLY, self.membership.handle_join(fields))

    def ring_push(self, fields):
        return (Msg.RING_PUSH_REPLY, self.membership.handle_ring_push(fields))

    def status_msg(self, fields):
        return (Msg.STATUS_REPLY, (json.dumps(self.status()),))

    def status(self) -> dict:
        ring = self.membership.ring
        owned: dict[str, int] = {}
        for owner in ring.owners():
            owned[owner] = owned.get(owner, 0) + 1
        members = []
        for member in sorted(self.membership.members.values(), key=lambda m: m.id):
            members.append({
                "id": member.id,
                "address": member.address,
                "zone": member.zone,
                "state": member.state if member.id != self.node_id or member.state != "down" else "up",
                "partitions": owned.get(member.id, 0),
            })
        stats = self.store.stats()
        return {
            "node": self.node_id,
            "address": self.config.advertise,
            "members": members,
            "partitions": ring.partitions,
            "n": self.config.n,
            "r": self.config.r,
            "w": self.config.w,
            "dw": self.config.dw,
            "ring_version": ring.version,
            "uptime": round(time.time() - self.started, 3),
            "storage": {k: v for k, v in stats.items() if isinstance(v, (int, float, str))},
            "hints_for": sorted(self.replicas.hint_owners()),
            "hints_delivered": self.hints_delivered,
            "tombstones_reaped": self.tombstones_reaped,
            "requests": self.requests.snapshot(),
            "antientropy": self.antientropy.status(),
            "transfers": self.transfers.status(),
            "next_ring_version": None if self.membership.next_ring is None else self.membership.next_ring.version,
        }

    # -- hinted handoff ----------------------------------------------------------------------------------------
    async def _handoff_loop(self):
        while True:
            await asyncio.sleep(self.config.handoff_interval)
            try:
                self.membership.check_claimant_duties()
                self.transfers.schedule(self.membership.state)
                await self.deliver_hints()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - keep the loop alive; the next round retries
                log.exception("hint delivery failed")

    async def deliver_hints(self) -> int:
        """Replay hints to owners that are up, in batches, throttled; a hint is dropped only after the owner
        acknowledged it durably, so an interrupted delivery resumes with what is left. Hints older than the hint
        window are dropped undelivered: anti-entropy repairs those keys."""
        delivered = 0
        now = time.time()
        members = self.membership.members
        for owner in sorted(self.replicas.hint_owners()):
            member = members.get(owner)
            # An owner that left (or was never admitted) will not take them: its partitions' new owners got
            # the data by transfer, and anti-entropy covers the rest.
            gone = member is None or member.status == "left"
            deliverable = not gone and self.membership.is_up(owner)
            batch, expired = [], 0
            for partition, key, siblings in self.replicas.hints(owner):
                newest = max((ts for _, _, ts in siblings.clock().entries()), default=now)
                if gone or now - newest > self.config.hint_window:
                    self.replicas.drop_hint_if_equal(owner, partition, key, siblings)
                    expired += 1
                    continue
                if not deliverable:
                    continue  # only expiring them this round
                batch.append((partition, key, siblings, siblings.to_bytes()))
                if len(batch) >= self.config.handoff_batch:
                    break
            if expired:
                log.info("dropped %d hints for %s older than the hint window", expired, owner)
            if not batch:
                continue
            size = sum(len(key) + len(raw) for _, key, _, raw in batch)
            await self.handoff_bucket.take(size)
            fields = ([p for p, _, _, _ in batch], [k for _, k, _, _ in batch], [r for _, _, _, r in batch])
            try:
                _, reply = await self.pool.call(self.membership.address_of(owner), Msg.HINT_PUSH, fields,
                                                self.config.peer_timeout * 5)
            except Exception as exc:  # noqa: BLE001 - filtered just below
                if not _peer_failed(exc):
                    raise
                self.membership.mark_down(owner, exc)
                continue
            if reply and reply[0]:
                for partition, key, siblings, _ in batch:
                    # A newer hint that arrived meanwhile stays for the next round.
                    if self.replicas.drop_hint_if_equal(owner, partition, key, siblings):
                        delivered += 1
        self.hints_delivered += delivered
        return delivered

    def hint_push(self, fields):
        """Hints delivered to us, their owner: reconcile them all, then one durable sync for the batch."""
        partitions, keys, raws = fields[:3]
        for partition, key, raw in zip(partitions, keys, raws, strict=True):
            self.merge_local(partition, key, self.Siblings.from_bytes(raw))
        return self._durable_reply(Msg.HINT_PUSH_REPLY)

    def _durable_reply(self, msg_type):
        """A future of the reply ``(msg_type, (True,))``, set once what was written so far is on disk."""
        reply = self.loop.create_future()

        def synced(waiter):
            if reply.done():
                return
            if waiter.cancelled():
                reply.cancel()
            elif waiter.exception() is not None:
                reply.set_exception(waiter.exception())
            else:
                reply.set_result((msg_type, (True,)))

        self.durable.waiter().add_done_callback(synced)
        return reply

    # -- deletes: tombstones leave once every replica holds them ------------------------------------------------
    def _schedule_reap(self, state) -> None:
        handle = self.loop.call_later(self.config.tombstone_delay, self._start_reap, state)
        self._reap_timers.add(handle)

    def _start_reap(self, state) -> None:
        self._reap_timers = {h for h in self._reap_timers if not h.cancelled() and h.when() > self.loop.time()}
        if not self._closing:
            self._spawn(self._reap(state))

    async def _reap(self, state) -> None:
        """Remove a tombstone from every primary, unless a newer write reached any of them meanwhile.

        The other replicas go first and this node last: if any of them cannot confirm or remove it, this node
        keeps its tombstone (its next write of the key then supersedes it). Nothing is reaped while the ring
        is changing (a next-ring replica may hold the tombstone too).
        """
        if self.membership.next_ring is not None:
            return
        primaries = self.membership.ring.replicas(state.partition, self.config.n)
        others = [node for node in primaries if node != self.node_id]
        fields = (state.partition, state.key, state.raw)
        try:
            for node in others:
                _, reply = await self.pool.call(self.membership.address_of(node), Msg.REPLICA_GET,
                                                (state.partition, state.key, None), self.config.peer_timeout)
                if reply[0] is None or self.Siblings.from_bytes(reply[0]) != state.obj:
                    return
            for node in others:
                _, reply = await self.pool.call(self.membership.address_of(node), Msg.REAP, fields,
                                                self.config.peer_timeout)
                if not reply[0]:
                    return
        except DynafastError:
            return  # keep the tombstone here; anti-entropy spreads it back where it was removed
        if self.node_id in primaries:
            self.replicas.remove_if_equal(state.partition, state.key, state.obj)
        self.tombstones_reaped += 1

    def _spawn(self, coro) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def reap(self, fields):
        partition, key, raw = fields[:3]
        removed = self.replicas.remove_if_equal(partition, key, self.Siblings.from_bytes(raw))
        return (Msg.REAP_REPLY, (removed,))


class _Deadlines:
    """Request deadlines in buckets of one tick, one loop timer per bucket.

    A loop timer per request costs more than the rest of a local request. Deadlines fire up to one tick late,
    never early.
    """

    TICK = 0.005  # seconds

    def __init__(self, loop):
        self.loop = loop
        self._buckets: dict[int, list] = {}

    def add(self, timeout: float, request: "_Request") -> None:
        tick = int((self.loop.time() + timeout) / self.TICK) + 1
        bucket = self._buckets.get(tick)
        if bucket is None:
            bucket = self._buckets[tick] = set()
            self.loop.call_at(tick * self.TICK, self._expire, tick)
        bucket.add(request)
        # A request leaves its bucket when it finishes: it is freed then, not seconds later at its deadline.
        request.deadline_bucket = bucket

    def _expire(self, tick: int) -> None:
        for request in list(self._buckets.pop(tick, ())):
            request.deadline_bucket = None
            if not request.finished:
                request._deadline()


class _Request:
    """Glue between one state machine and the client's answer: deadline, answer, completion hooks.

    The answer future is made only when the handler has to return before the machine is done: a request
    answered within the handler (a local read) returns its reply directly.
    """

    __slots__ = ("loop", "machine", "partition", "key", "obj", "raw", "reply_type", "answer", "answered",
                 "reply", "on_answer", "on_finish", "finished", "previous", "on_all_acked", "deadline_bucket")

    def __init__(self, loop, machine, partition, key, obj, raw, reply_type):
        self.loop = loop
        self.machine = machine
        self.partition = partition
        self.key = key
        self.obj = obj
        self.raw = raw
        self.reply_type = reply_type
        self.answer = None
        self.answered = False
        self.reply = None
        self.on_answer = None
        self.on_finish = None
        self.finished = False
        self.previous = None
        self.on_all_acked = None
        self.deadline_bucket = None

    def arm(self, deadlines: _Deadlines, timeout: float):
        """What the handler returns: the reply when the machine is done already, else a future of it."""
        if not self.finished:
            deadlines.add(timeout, self)
        if self.answered:
            if self.machine.error is not None:
                raise self.machine.error
            return self.reply
        self.answer = self.loop.create_future()
        return self.answer

    def _deadline(self):
        self.machine.on_deadline()
        self.settle(force_finish=True)

    def settle(self, force_finish=False):
        machine = self.machine
        if self.on_all_acked is not None and machine.finished and machine.ok and not self.finished:
            # Only when every target acked as a primary: then every replica holds the tombstone.
            if machine.primary_acks == len(machine.targets) and not machine.failed:
                self.on_all_acked(self)
            self.on_all_acked = None
        if machine.done and not self.answered:
            self.answered = True
            if machine.error is None:
                self.reply = (self.reply_type, self.on_answer(machine) if self.on_answer is not None else ())
            answer = self.answer
            if answer is not None and not answer.done():
                if machine.error is not None:
                    answer.set_exception(machine.error)
                else:
                    answer.set_result(self.reply)
        if not self.finished and (machine.finished or force_finish) and machine.done:
            self.finished = True
            if self.deadline_bucket is not None:
                self.deadline_bucket.discard(self)
                self.deadline_bucket = None
            if self.on_finish is not None:
                self.on_finish(self)


def _reply(msg_type, result):
    """Wrap a handler result that may be a coroutine (a request forwarded to the claimant)."""
    if asyncio.iscoroutine(result):
        async def wrapped():
            return (msg_type, await result)
        return wrapped()
    return (msg_type, result)


def _ignore_result(call):
    if not call.cancelled():
        call.exception()


def run_node(config: NodeConfig) -> int:
    """Run a node until SIGTERM/SIGINT; returns the exit code."""
    from dynafast.net.loop import install

    install()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return asyncio.run(_serve(config))


async def _serve(config: NodeConfig) -> int:
    node = Node(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await node.start()
    except BaseException:
        await node.stop()
        raise
    # Requests in flight (and their deadline entries) keep thousands of young container objects alive under
    # load, so the cyclic collector ran several times a second over the whole heap: ~6% of the node's CPU.
    # Nothing on the request path makes cycles, so collect young objects less often, and leave everything
    # built at start (ring, membership, modules) out of full collections.
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
    print(f"dynafast node {node.node_id} serving on {config.advertise}", flush=True)
    stopper = asyncio.ensure_future(node.stopped.wait())
    await asyncio.wait([asyncio.ensure_future(stop.wait()), stopper], return_when=asyncio.FIRST_COMPLETED)
    log.info("stopping")
    await node.stop()
    return 0
