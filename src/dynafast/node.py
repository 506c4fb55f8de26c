"""A dynafast node: the one place that builds the cluster services and wires them together.

Each service gets the ports it needs (a transport to peers, a clock, a random source, the store, durability,
metadata files, config) and never the Node; the Node holds the handler table and the life cycle. The ports come
from an ``Environment``: the real one (sockets, the system clock, files in the data directory) unless the
simulator hands in its own.
"""
from __future__ import annotations

import asyncio
import dataclasses
import functools
import gc
import json
import logging
import signal
from pathlib import Path

import dynafast
from dynafast import _impl
from dynafast.cluster import backup, incarnation
from dynafast.cluster.actors import Actors
from dynafast.cluster.antientropy import AntiEntropy, VnodeTrees
from dynafast.cluster.background import cancel_and_wait
from dynafast.cluster.conditional import ConditionalWrites
from dynafast.cluster.durability import DurabilityBatcher, durable_reply
from dynafast.cluster.hints import HintedHandoff, SteadyWall
from dynafast.cluster.membership import ClusterMembership
from dynafast.cluster.paxos import Paxos
from dynafast.cluster.paxosmove import PaxosMoves
from dynafast.cluster.preflist import Ownership
from dynafast.cluster.ports import DirectoryFiles, Environment
from dynafast.cluster.reaper import Reaper
from dynafast.cluster.repair import Repair
from dynafast.cluster.requests import RequestCoordinator
from dynafast.cluster.scan import Scans
from dynafast.cluster.transfers import Transfers
from dynafast.cluster.vnode import Vnodes
from dynafast.address import parse_address
from dynafast.config import NodeConfig
from dynafast.errors import DynafastError, ProtocolError
from dynafast.metrics import RequestStats
from dynafast.net.connection import PeerPool
from dynafast.net.messages import Msg, parser
from dynafast.net.server import descriptor_budget, start_server
from dynafast.recent import RecentActivity, RecentEvents
from dynafast.security.access import Access, peer_login, protected_mode, read_secrets
from dynafast.security.users import Users
from dynafast.security.tls import node_contexts

log = logging.getLogger("dynafast.node")

_CLIENT_OPS = {Msg.GET: "get", Msg.PUT: "put", Msg.DELETE: "delete", Msg.SCAN_PAGE: "scan"}

# What unpacking fields of the wrong shape or type raises in a handler.
_MALFORMED = (TypeError, ValueError, IndexError, KeyError, AttributeError, OverflowError)


def open_store(path, config: NodeConfig):
    return dynafast.open(
        path,
        sync=config.sync,
        sync_interval=config.sync_interval,
        segment_size=config.segment_size,
        max_key_size=65535,  # the widest the record header holds; room for the vnode/hint prefixes
        max_value_size=config.max_value_size * 4 + 1024 * 1024,
    )


class Node:
    def __init__(self, config: NodeConfig, env: Environment | None = None):
        env = env or Environment()
        self.config = config
        self.node_id = config.node_id
        self.env = env
        self.clock = env.clock
        # TLS (when configured) on the port we serve, on HTTP, and on every connection to a peer. First: a bad
        # certificate or key file stops the start before anything is opened.
        self.tls_server, tls_peers = node_contexts(config)
        # Client users, read before anything is opened: a missing or damaged file stops the start, never opens
        # the node to everyone.
        self.users = Users(config.users_file) if config.users_file else None
        if self.users is not None and not self.users.configured:
            log.warning("users file %s has no users: every request that needs one is refused", config.users_file)
        versions = _impl.vclock
        data = Path(config.data_dir)
        files = env.files
        if files is None:
            data.mkdir(parents=True, exist_ok=True)
            files = DirectoryFiles(data)
        self.files = files
        self.store = (env.open_store or open_store)(data / "store", config)
        # The store's lock is held now: no other process can be using this directory's incarnation. A start
        # that may have forgotten acknowledged writes (a crash, a lost or damaged directory) takes a new actor
        # and repairs its vnodes from the other replicas before trusting them.
        recovery = getattr(self.store, "recovery", None) or {}
        amnesia = incarnation.last_clean(files) is None or bool(recovery.get("lost"))
        self.incarnation = incarnation.begin(files, env.rng, lost=bool(recovery.get("lost")))
        actor = f"{self.node_id}.{self.incarnation}".encode()
        self.durable = (env.durability or DurabilityBatcher)(self.store)
        # Who may send what: the cluster secret (proved by peers) and the users file (client logins).
        secrets = read_secrets(config.secret_file) if config.secret_file else []
        self.access = Access(self.node_id, secrets=secrets, users=self.users)
        login = peer_login(self.node_id, secrets) if secrets else None
        self.pool = env.transport or PeerPool(connect_timeout=config.peer_timeout, login=login, ssl=tls_peers)
        hint_clock = SteadyWall(env.clock)  # receipt times of hints, and their age: one clock for both
        self.vnodes = vnodes = Vnodes(self.store, versions, clock=hint_clock)
        self.trees = VnodeTrees(vnodes, leaves=config.merkle_leaves)
        vnodes.on_write = self.trees.on_write
        vnodes.on_damaged = self._found_damaged
        self.membership = membership = ClusterMembership(config, self.pool, clock=env.clock, rng=env.rng, files=files)
        # Replica-level requests for a partition this node does not serve answer WRONG_NODE.
        ownership = Ownership(self.node_id, config.n)
        shared = dict(config=config, versions=versions, membership=membership, vnodes=vnodes, transport=self.pool)
        self.reaper = Reaper(**shared, ownership=ownership, clock=env.clock)
        self.trees.on_scan = self.reaper.found
        self.antientropy = AntiEntropy(me=self.node_id, n=config.n, membership=membership, ownership=ownership,
                                       trees=self.trees,
                                       vnodes=vnodes, transport=self.pool, clock=env.clock, rng=env.rng,
                                       interval=config.ae_interval, bytes_per_second=config.ae_bytes_per_second,
                                       peer_timeout=config.peer_timeout * 2)
        self.repair = Repair(me=self.node_id, n=config.n, membership=membership, antientropy=self.antientropy,
                             files=files, clock=env.clock)
        if amnesia:
            self.repair.begin()
        membership.listeners.append(self.repair.on_state)
        repairing = self.repair.partitions
        self.requests = RequestCoordinator(**shared, ownership=ownership, actor=actor, repairing=repairing,
                                           actors=Actors(actor, files, env.rng), durability=self.durable,
                                           clock=env.clock, reaper=self.reaper)
        self.scans = Scans(me=self.node_id, n=config.n, membership=membership, vnodes=vnodes, repairing=repairing)
        # Conditional writes and leases: a Paxos round per request among the key's primaries.
        self.paxos = Paxos(**shared, ownership=ownership, durability=self.durable, clock=env.clock, rng=env.rng,
                           repairing=repairing)
        requests = self.requests
        self.conditional = ConditionalWrites(config=config, versions=versions, paxos=self.paxos,
                                             membership=membership, clock=env.clock,
                                             actor=lambda current: requests.actor + b".cas" if current is not None
                                             else requests.actors.fresh())
        self.hints = HintedHandoff(**shared, durability=self.durable, clock=hint_clock)
        self.paxos_moves = PaxosMoves(me=self.node_id, membership=membership, check=self.paxos.check_acceptor,
                                      views=self.paxos.views, versions=versions, vnodes=vnodes,
                                      durability=self.durable, transport=self.pool,
                                      peer_timeout=config.peer_timeout * 5)
        self.transfers = Transfers(me=self.node_id, membership=membership, ownership=ownership, vnodes=vnodes,
                                   trees=self.trees, repairing=repairing,
                                   durability=self.durable, transport=self.pool, clock=env.clock, files=files,
                                   on_left=self.request_stop, hand_off_hints=self.hints.hand_off_all,
                                   move_paxos=self.paxos_moves.move,
                                   accepts_hand_off=self.reaper.held,
                                   bytes_per_second=config.transfer_bytes_per_second,
                                   drop_grace=config.drop_grace, peer_timeout=config.peer_timeout * 5)
        membership.listeners.append(self.transfers.on_state)
        self.repair.on_repaired = lambda: self.transfers.schedule(membership.state)  # a source again
        membership.listeners.append(self.reaper.on_state)
        self.stats = RequestStats(_CLIENT_OPS.values())
        # The console's last minute of requests and last warnings (ticked once a second off the request path).
        self.events = RecentEvents(env.clock)
        self.recent = RecentActivity(self.stats, env.clock, self.events)
        self.stopped = asyncio.Event()
        self.server = None
        self.http = None
        self.resp = None
        self._tasks: list[asyncio.Task] = []
        self.started = self.clock.monotonic()
        self.handlers = {
            Msg.GET: self.requests.client_get,
            Msg.PUT: self.requests.client_put,
            Msg.DELETE: self.requests.client_delete,
            Msg.REPLICA_GET: self.requests.replica_get,
            Msg.REPLICA_PUT: self.requests.replica_put,
            Msg.RING_GET: lambda fields: (Msg.RING_REPLY, membership.state_fields() + (sorted(membership.down()),)),
            Msg.STATUS: lambda fields: (Msg.STATUS_REPLY, (json.dumps(self.status()),)),
            Msg.GOSSIP: lambda fields: (Msg.GOSSIP_REPLY, membership.handle_gossip(fields)),
            Msg.RING_PUSH: lambda fields: (Msg.RING_PUSH_REPLY, membership.handle_ring_push(fields)),
            Msg.JOIN: lambda fields: _reply(Msg.JOIN_REPLY, membership.handle_join(fields)),
            Msg.LEAVE: lambda fields: _reply(Msg.LEAVE_REPLY, membership.handle_leave(fields)),
            Msg.TRANSFER_DONE: lambda fields: _reply(Msg.TRANSFER_DONE_REPLY, membership.handle_transfer_done(fields)),
            Msg.TRANSFER: lambda fields: _reply(Msg.TRANSFER_REPLY, self.transfers.handle_transfer(fields)),
            Msg.HINT_PUSH: self.hints.handle_hint_push,
            Msg.REAP: self.reaper.handle_reap,
            Msg.MERKLE_GET: self.antientropy.handle_merkle_get,
            Msg.KEYS_GET: self.antientropy.handle_keys_get,
            Msg.SCAN_PAGE: self.scans.handle_scan_page,
            Msg.CAS: self.conditional.client_cas,
            Msg.LOCK: self.conditional.client_lock,
            Msg.COMPACT: lambda fields: self.compact(),
            Msg.BACKUP: self.backup,
            Msg.RESTORE: self.restore,
            Msg.REPAIR: lambda fields: (Msg.REPAIR_REPLY, (self.repair.request(fields.partitions),)),
            Msg.PAXOS_PREPARE: self.paxos.handle_prepare,
            Msg.PAXOS_PROPOSE: self.paxos.handle_propose,
            Msg.PAXOS_COMMIT: self.paxos.handle_commit,
            Msg.PAXOS_SNAPSHOT: self.paxos_moves.handle_snapshot,
            Msg.PAXOS_INSTALL: self.paxos_moves.handle_install,
        }
        # One lookup per message: (record check, handler, client op or None), keyed by the decoder's plain ints.
        self._dispatch = {int(t): (parser(t), h, _CLIENT_OPS.get(t)) for t, h in self.handlers.items()}
        replica_puts, replica_gets = _replica_lanes(self)
        if replica_puts is not None:  # they check the fields themselves, and hand the general path what they leave
            self._dispatch[int(Msg.REPLICA_PUT)] = (_as_sent, replica_puts, None)
            self._dispatch[int(Msg.REPLICA_GET)] = (_as_sent, replica_gets, None)
        self.requests.replaces, self.requests.reads = _coordinator_lanes(self)

    # -- life cycle ----------------------------------------------------------------------------------------
    async def start(self) -> None:
        self.requests.start(asyncio.get_running_loop())
        host, port = parse_address(self.config.listen)
        serve = self.env.serve or start_server
        if self.env.serve is None:
            protected_mode(self.config)
        self.server = await serve(self.handle, host, port, max_frame=self.config.max_frame,
                                  idle_timeout=self.config.idle_timeout,
                                  max_unfinished=self.config.max_unfinished_frames, access=self.access,
                                  max_connections=self.config.max_connections or descriptor_budget(),
                                  peer_reserve=self.config.peer_reserve, ssl=self.tls_server)
        await self.membership.start()
        if self.config.http and self.env.http:
            from dynafast.http import start_http

            self.http = await start_http(self.http_view(), self.config.http, ssl=self.tls_server)
        if self.config.resp and self.env.serve is None:
            from dynafast.resp.server import start_resp

            self.resp = await start_resp(self, self.config.resp, ssl=self.tls_server)
        self._tasks.append(asyncio.create_task(self._handoff_loop()))
        if self.env.serve is None:  # a real node process (the simulator runs many nodes in one, on its own time)
            logging.getLogger("dynafast").addHandler(self.events)
            self._tasks.append(asyncio.create_task(self.recent.run()))
        self.reaper.start()
        self.antientropy.start()
        self.repair.start()

    async def stop(self) -> None:
        await cancel_and_wait(self._tasks)
        logging.getLogger("dynafast").removeHandler(self.events)
        await self.reaper.stop()
        await self.repair.stop()
        await self.antientropy.stop()
        await self.transfers.close()
        await self.membership.stop()
        if self.http is not None:
            await self.http.cleanup()
        if self.resp is not None:
            self.resp.close()
            await self.resp.wait_closed()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
        await self.pool.close()
        self.durable.close()
        # Flush the write buffer and fsync before the store closes; then the next start may keep the actor.
        self.store.sync()
        self.store.close()
        incarnation.end_clean(self.files, self.incarnation)

    def _found_damaged(self, partition: int) -> None:
        """A stored object was found damaged: the versions it held are forgotten here."""
        self.trees.drop(partition)  # rebuilt without the damaged record, which the repair then adds
        # Our counters for that key are forgotten too: the next write stamped from the rest of what we hold (a
        # repair brings back only what the others have) could reuse one. A new incarnation cannot (kv679).
        self.incarnation = incarnation.begin(self.files, self.env.rng, lost=True)
        actor = f"{self.node_id}.{self.incarnation}".encode()
        self.requests.actor = self.requests.actors.base = actor
        log.warning("took incarnation %s after a damaged record", self.incarnation)

    def request_stop(self) -> None:
        """Ask the serving loop to stop this node (after it has left the cluster)."""
        self.stopped.set()

    async def _handoff_loop(self):
        # Ring changes move on at least every second (claimant duties, transfers to start or retry), however
        # far apart hint rounds are set.
        interval = self.config.handoff_interval
        last_hints = self.clock.monotonic()
        while True:
            await asyncio.sleep(min(1.0, interval))
            try:
                self.membership.check_claimant_duties()
                self.transfers.schedule(self.membership.state)
                if self.clock.monotonic() - last_hints >= interval:
                    last_hints = self.clock.monotonic()
                    await self.hints.deliver()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - keep the loop alive; the next round retries
                log.exception("hint delivery failed")

    # -- dispatch -------------------------------------------------------------------------------------------
    def handle(self, conn, msg_type, request_id, fields):
        entry = self._dispatch.get(msg_type)
        if entry is None:
            raise ProtocolError(f"unknown message type {msg_type}")
        # Every decoded message is checked against its record (``check``) before it reaches a service.
        check, handler, op = entry
        started = self.stats.started() if op is not None else 0.0
        try:
            result = handler(check(fields))
        except DynafastError as exc:
            if op is not None:
                self.stats.finished(op, started, exc)
            raise  # KeyTooLarge and ValueTooLarge are ValueErrors too, and must reach the client as they are
        except _MALFORMED as exc:
            # Fields out of range for this node: the sender's fault, answered with a protocol error.
            error = ProtocolError(f"malformed {Msg(msg_type).name} request: {exc}")
            if op is not None:
                self.stats.finished(op, started, error)
            raise error from None
        if op is not None:
            return self.stats.track(op, started, result)
        return result

    async def compact(self):
        """Merge the store now (COMPACT, an operator's request), in a thread: requests go on being served."""
        before = self.store.stats()["disk_bytes"]
        merged = await asyncio.to_thread(self.store.merge)
        log.info("compacted the store on request: %d segments merged", merged)
        return Msg.COMPACT_REPLY, (merged, before, self.store.stats()["disk_bytes"])

    async def backup(self, request):
        """Copy the store into the operator's backup directory (BACKUP), in a thread: writes go on meanwhile."""
        result = await asyncio.to_thread(backup.write, self.store, request.directory, self.node_id,
                                         self.membership.ring, self.config.n)
        log.info("backed up %d keys into %s", result["keys"], result["directory"])
        return Msg.BACKUP_REPLY, (result["directory"], result["keys"], result["segments"], result["bytes"],
                                  result["linked_bytes"])

    def restore(self, request):
        """Objects of a backup, with their clocks (RESTORE): reconciled into our replica as a transfer's are."""
        self.transfers.ownership.check_member(self.membership, request.partition)
        return _reply(Msg.RESTORE_REPLY, self.transfers.receive(request.partition, request.keys, request.objects))

    # -- what the node publishes -------------------------------------------------------------------------------
    def status(self) -> dict:
        membership = self.membership
        ring = membership.ring
        owned: dict[str, int] = {}
        for owner in ring.owners():
            owned[owner] = owned.get(owner, 0) + 1
        members = []
        for member in sorted(membership.members.values(), key=lambda m: m.id):
            members.append({
                "id": member.id,
                "address": member.address,
                "zone": member.zone,
                "state": member.state if member.id != self.node_id or member.state != "down" else "up",
                "partitions": owned.get(member.id, 0),
            })
        stats = self.store.stats()
        hints = self.vnodes.hint_counts()
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
            "uptime": round(self.clock.monotonic() - self.started, 3),
            "storage": {k: v for k, v in stats.items() if isinstance(v, (int, float, str))},
            "hints_for": sorted(hints),
            "hints_pending": hints,
            "hints_delivered": self.hints.delivered,
            "hints_expired": self.hints.expired,
            "tombstones_reaped": self.reaper.reaped,
            "tombstones_queued": self.reaper.pending,
            "read_repairs": self.requests.read_repairs,
            "replica_requests": {"get": self.requests.replica_gets, "put": self.requests.replica_puts},
            "corrupt_records": {"found": self.vnodes.corrupt_found, "repaired": self.vnodes.corrupt_repaired,
                                "unrepaired": len(self.vnodes.damaged)},
            "siblings": {"warnings": self.requests.sibling_warnings, "refused": self.requests.siblings_refused,
                         "reads": self.requests.sibling_reads},
            "requests": self.stats.snapshot(),
            "scans": self.scans.status(),
            "paxos": {"rounds": self.paxos.rounds, "contended": self.paxos.contended,
                      "finished_others": self.paxos.finished_others, "applied": self.conditional.applied,
                      "condition_failed": self.conditional.failed, "keys_moved": self.paxos_moves.keys_moved},
            "security": {"peer_secret": bool(self.access.secrets), "users": self.users is not None,
                         **self.access.stats()},
            "antientropy": self.antientropy.status(),
            "repair": self.repair.status(),
            "transfers": self.transfers.status(),
            "next_ring_version": None if membership.next_ring is None else membership.next_ring.version,
            "config": public_settings(self.config),
            "recent": self.recent.status(),
        }

    def http_view(self):
        """What the HTTP front end may see and do: published figures and the on-demand repair, not the node."""
        from dynafast.cluster.nodescan import NodeScans
        from dynafast.console import ClusterView, ring_map
        from dynafast.http import NodeView
        from dynafast.httpkv import KvBackend

        config = self.config
        # The KV API's requests go through the dispatch native ones take (checks, metrics), in-process.
        kv = KvBackend(call=lambda msg_type, fields: self.handle(None, msg_type, 0, fields),
                       scans=NodeScans(me=self.node_id, membership=self.membership, scans=self.scans,
                                       transport=self.pool, clock=self.clock, timeout=config.request_timeout),
                       max_key_size=config.max_key_size, max_value_size=config.max_value_size)
        return NodeView(
            node_id=self.node_id,
            status=self.status,
            request_stats=self.stats,
            server_stats=lambda: self.server.stats.as_dict(),
            durable_syncs=lambda: self.durable.syncs,
            fsync_seconds=self.durable.fsync_seconds,
            repair_all=self.antientropy.run_all_soon,
            users=self.users,
            metrics_auth=self.config.metrics_auth,
            kv=kv,
            cluster=ClusterView(status=self.status, ring_map=lambda: ring_map(self.membership.state, config.n),
                                peer_status=self._peer_status),
        )

    async def _peer_status(self, node_id: str, timeout: float) -> dict:
        """Another member's status (for the console), asked over the native protocol."""
        _, (text,) = await self.pool.call(self.membership.address_of(node_id), Msg.STATUS, (), timeout)
        return json.loads(text)


# Settings that name where a secret is kept: the effective configuration a node publishes leaves them out
# (``security`` in the status says whether a secret and users are in use).
_PRIVATE_SETTINGS = ("secret_file", "users_file", "tls_key")


def public_settings(config: NodeConfig) -> dict:
    """The node's effective settings (defaults, file and flags applied), as ``dynafast config`` shows them."""
    settings = dataclasses.asdict(config)
    for name in _PRIVATE_SETTINGS:
        settings.pop(name, None)
    return settings


def _as_sent(fields):
    return fields


def _lanes(node, make):
    """``make(lanes, engine)``: the build's lanes (``dynafast._core.lane``; in the reference build their twins, the
    general paths themselves) over the node's store, or (None, None) where they cannot run: a compiled lane over the
    reference store, or a store without an engine (the simulator's)."""
    engine = getattr(node.store, "_engine", None)
    if engine is None:
        return None, None
    try:
        return make(_impl.lane, engine)
    except TypeError:
        return None, None


def _replica_lanes(node):
    """The REPLICA_PUT and REPLICA_GET lanes (``ReplicaPuts``, ``ReplicaGets``), or (None, None)."""
    requests = node.requests
    return _lanes(node, lambda lanes, engine: (
        lanes.ReplicaPuts(requests, node.vnodes, engine, parser(Msg.REPLICA_PUT), int(Msg.REPLICA_PUT_REPLY),
                          functools.partial(durable_reply, requests.durability, Msg.REPLICA_PUT_REPLY)),
        lanes.ReplicaGets(requests, engine, parser(Msg.REPLICA_GET), int(Msg.REPLICA_GET_REPLY))))


def _coordinator_lanes(node):
    """The one-round lww put and the quorum read (``Replaces``, ``Reads``), or (None, None)."""
    requests = node.requests
    return _lanes(node, lambda lanes, engine: (
        lanes.Replaces(requests, node.vnodes, engine, requests.transport, int(Msg.REPLICA_PUT)),
        lanes.Reads(requests, node.vnodes, engine, requests.transport, int(Msg.REPLICA_GET), int(Msg.GET_REPLY))))


def _reply(msg_type, result):
    """Wrap a handler result that may be a coroutine (a request forwarded to the claimant)."""
    if asyncio.iscoroutine(result):
        async def wrapped():
            return (msg_type, await result)
        return wrapped()
    return (msg_type, result)


def run_node(config: NodeConfig) -> int:
    """Run a node until SIGTERM/SIGINT; returns the exit code."""
    from dynafast.net.loop import install

    install()
    setup_logging(config.log_level, config.log_format)
    return asyncio.run(_serve(config))


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line (``log_format = "json"``), for log shippers: time, level, logger, message."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def setup_logging(level: str = "info", fmt: str = "text") -> None:
    """Log to stderr at ``level`` (debug, info, warning, error), as text lines or JSON objects."""
    handler = logging.StreamHandler()
    if fmt == "json":
        handler.setFormatter(JsonLogFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


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
    resp = f" (RESP on {node.resp.address})" if node.resp is not None else ""
    print(f"dynafast node {node.node_id} serving on {config.advertise}{resp}", flush=True)
    stopper = asyncio.ensure_future(node.stopped.wait())
    await asyncio.wait([asyncio.ensure_future(stop.wait()), stopper], return_when=asyncio.FIRST_COMPLETED)
    log.info("stopping")
    await node.stop()
    return 0
