"""The RESP listener of a node: connections, login, limits, flow control and the in-order answer of pipelines.

A read is parsed into requests, each is run, and the replies of everything that was answered at once go out in
one write per read (or as they pass the high-water mark). GET and SET of the keys this node alone holds run in the
compiled fast lane (``dynafast._core.lane``) while it can answer them; every other command takes the general path
(``commands``), which the lane hands each request it is not sure of. A command whose coordinator has to wait (replicas on other nodes, a fsync)
holds its place: later replies queue behind it, so a pipeline is answered in order, and a future's done callback
answers it, with no coroutine per request.

Bounded memory, as on the native port: a request's arguments at most ``max_value_size`` bytes each (Redis's
"invalid bulk length" past it), the bytes of requests still arriving at most ``max_frame`` per connection and
``max_unfinished_frames`` for all; a connection stops being read while its unsent replies exceed a high-water
mark, or while its commands waiting for other nodes would (by the size its replies have had; ``MAX_PENDING`` at
most); one whose unsent replies still pass ``OUTPUT_LIMIT`` (commands in flight answer after reading stopped) is
closed, as is one with nothing received for ``idle_timeout``.
"""
from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import os
import time

import dynafast
from dynafast import _impl
from dynafast.address import format_address, parse_address
from dynafast.cluster import expiry
from dynafast.cluster.vnode import OBJECT as OBJECT_PREFIX
from dynafast.errors import DynafastError
from dynafast.net.messages import Msg
from dynafast.net.server import close_idle, descriptor_budget
from dynafast.resp import commands, modify  # noqa: F401 - modify adds its commands (SET among them) to TABLE
from dynafast.resp.commands import (NOAUTH, TABLE, WRONGPASS, Mapped, arity_error, coordinator_error, forget,
                                    in_refused_multi, may, unknown_command)
from dynafast.resp.keyspace import Keyspace
from dynafast.resp.protocol import RespError, RespProtocolError, encode, new_parser
from dynafast.security.access import MAX_CONCURRENT_VERIFIES, is_loopback

log = logging.getLogger("dynafast.resp")

HIGH_WATER = 2 * 1024 * 1024  # unsent reply bytes per connection above which it is not read
# Unsent reply bytes past which a connection is closed (Redis's client-output-buffer-limit). Reading stops at
# HIGH_WATER, but commands already in flight still answer: after many small replies, many big ones at once.
OUTPUT_LIMIT = 64 * 1024 * 1024
# Commands of one connection waiting for the coordinator before it is not read. Their replies' sizes are unknown
# until they come: after small replies the window is wide, and this many big values may be fetched at once.
MAX_PENDING = 32
MAX_AUTH_FAILURES = 5
TTL_SAMPLE = 1000  # objects INFO keyspace reads to estimate expires and avg_ttl


class RespApp:
    """What the RESP front end may use of the node: its coordinator, scans, membership, peer pool, users and
    config; and the figures INFO reports."""

    def __init__(self, node):
        self.config = node.config
        self.node_id = node.node_id
        self.requests = node.requests
        self.conditional = node.conditional  # its Paxos rounds: the commands Redis makes atomic (resp/atomic.py)
        self.users = node.users
        self.access = node.access
        self.store = node.store
        self.membership = node.membership
        self.keyspace = Keyspace(me=node.node_id, membership=node.membership, scans=node.scans,
                                 transport=node.pool, requests=node.requests, config=node.config)
        self.server: RespServer | None = None
        self.started = time.monotonic()
        self.commands = 0
        self.errors = 0
        self.logins = 0
        self.login_failures = 0
        self.max_bulk = max(node.config.max_value_size, node.config.max_key_size)
        self._verifying = None
        # GET and SET of the keys this node alone holds, compiled end to end (none: every command takes the
        # general path below). It writes only with dw 0: a SET waiting for a fsync answers through a future.
        self.lane = new_lane(node)
        self.lane_writes = node.config.dw == 0
        # GET and SET of a cluster's keys (N>1) straight into the coordinator lanes (none: through the commands).
        self.quorum = new_quorum(node)

    def lane_rights(self, conn) -> int:
        """What the lanes may do for ``conn``: READ, WRITE when its writes are acknowledged at once, and QUORUM when
        its R, W and DW are the node's (``Quorum`` takes only those)."""
        role = conn.role
        if role is None or (self.lane is None and self.quorum is None) or conn.refused_multi:
            return 0
        lanes = _impl.lane
        rights = lanes.READ if may(role, "read") else 0
        if self.lane_writes and conn.w is None and conn.dw is None and may(role, "readwrite"):
            rights |= lanes.WRITE
        if conn.r is None and conn.w is None and conn.dw is None:
            rights |= lanes.QUORUM
        return rights

    def check_value(self, key: bytes, value: bytes) -> None:
        config = self.config
        if len(key) > config.max_key_size:
            raise RespError(f"ERR key of {len(key)} bytes is over the limit of {config.max_key_size} "
                            "(max_key_size)")
        if len(value) > config.max_value_size:
            raise RespError(f"ERR string exceeds maximum allowed size ({config.max_value_size} bytes, "
                            "max_value_size)")

    # -- running a command ----------------------------------------------------------------------------
    def execute(self, conn, args, spec):
        """The reply to ``args`` (``spec``: its command, or None): a value, a RespError, or a future of either."""
        self.commands += 1
        conn.last_command = args[0]
        if conn.refused_multi and args[0].lower() not in (b"quit", b"reset"):
            return in_refused_multi(conn, args)
        if spec is None:
            return unknown_command(args)
        arity = spec.arity
        if (arity > 0 and len(args) != arity) or len(args) < -arity:
            return arity_error(spec.name)
        if conn.role is None and not spec.preauth:
            return NOAUTH
        if spec.role is not None and not may(conn.role, spec.role):
            return RespError(f"NOPERM this user has no permissions to run the '{spec.name}' command")
        try:
            return spec.run(self, conn, args)
        except Exception as exc:  # noqa: BLE001 - a bug here must not take the connection's other replies
            return failed(args, exc)

    # -- logins ---------------------------------------------------------------------------------------
    def anonymous_role(self, peername) -> str | None:
        """What a connection may do before AUTH: as on the native port (security/access.py)."""
        if self.users is not None:
            return None
        if not self.access.secrets:
            return "admin"
        host = peername[0] if isinstance(peername, tuple) and peername else ""
        return "admin" if is_loopback(host) else "readwrite"

    def login(self, conn, user: str, password: bytes):
        """A future of the role ``user`` logs in with; WRONGPASS when the password is not theirs."""
        return asyncio.ensure_future(self._login(conn, user, password))

    async def _login(self, conn, user, password):
        if conn.auth_failures >= MAX_AUTH_FAILURES:
            raise RespError(f"ERR {MAX_AUTH_FAILURES} failed logins on this connection: reconnect")
        if self.users is None:
            # No users: "default" is Redis's user without a password, and any password logs it in, with what
            # the connection may do anyway (redis://default:secret@host URLs send one); no other user exists.
            role = self.anonymous_role(conn.peername) if user == "default" else None
        else:
            if self._verifying is None:
                self._verifying = asyncio.Semaphore(MAX_CONCURRENT_VERIFIES)
            try:
                text = password.decode()
            except UnicodeDecodeError:
                text = None
            role = None
            if text is not None:
                async with self._verifying:
                    # An argon2id hash takes tens of milliseconds: off the event loop, as on the native port.
                    try:
                        role = await asyncio.get_running_loop().run_in_executor(None, self.users.verify, user,
                                                                                text)
                    except ValueError as exc:
                        log.error("cannot check a RESP login: %s", exc)
        if role is None:
            conn.auth_failures += 1
            self.login_failures += 1
            log.warning("failed RESP login as %r from %s", user[:64], conn.peername)
            raise WRONGPASS
        conn.role, conn.user = role, user
        self.logins += 1
        return role

    # -- server figures -------------------------------------------------------------------------------
    def info(self, sections) -> str:
        wanted = set(sections) or {"default"}
        everything = bool(wanted & {"all", "everything", "default"})
        server = self.server
        stats = server.stats if server is not None else collections.Counter()
        process = commands.process_info()
        store = self.store.stats()
        state = self.membership.state
        members = sorted(self.membership.members.values(), key=lambda m: m.id)
        host, port = parse_address(self.config.resp) if self.config.resp else ("", 0)
        blocks = {
            "server": {
                "redis_version": commands.REDIS_VERSION,
                "dynafast_version": dynafast.__version__,
                "redis_mode": "standalone",
                "os": " ".join(os.uname()[0:3:2]),
                "process_id": os.getpid(),
                "tcp_port": server.port if server is not None else port,
                "node_id": self.node_id,
                "uptime_in_seconds": int(time.monotonic() - self.started),
                "uptime_in_days": int((time.monotonic() - self.started) // 86400),
            },
            "clients": {
                "connected_clients": stats["connections"],
                "blocked_clients": 0,
                "maxclients": server.max_connections if server is not None else 0,
            },
            "memory": {
                "used_memory": process["rss"],
                "used_memory_human": _human(process["rss"]),
                "used_memory_rss": process["rss"],
                "maxmemory": 0,
                "maxmemory_policy": "noeviction",
                "keydir_bytes": store.get("keydir_bytes", 0),
                "disk_bytes": store.get("disk_bytes", 0),
            },
            "stats": {
                "total_connections_received": stats["connections_total"],
                "total_commands_processed": self.commands,
                "rejected_connections": stats["connections_refused"],
                "total_error_replies": self.errors,
                "auth_logins": self.logins,
                "auth_failures": self.login_failures,
                "idle_closed": stats["idle_closed"],
                "client_output_buffer_limit_disconnections": stats["output_limit_closed"],
                "protocol_errors": stats["protocol_errors"],
                "used_cpu_user": round(process["cpu_user"], 3),
                "used_cpu_sys": round(process["cpu_sys"], 3),
            },
            "replication": {
                "role": "master",
                "connected_slaves": 0,
                "dynafast_n": self.config.n,
                "dynafast_r": self.config.r,
                "dynafast_w": self.config.w,
                "dynafast_dw": self.config.dw,
                "cluster_members": len(members),
                "cluster_members_down": len(self.membership.down()),
                "ring_version": state.ring.version if state is not None else 0,
            },
            "keyspace": {"db0": self._keyspace()},
        }
        lines = []
        for name, fields in blocks.items():
            if everything or name in wanted:
                lines.append(f"# {name.capitalize()}")
                lines.extend(f"{key}:{value}" for key, value in fields.items())
                lines.append("")
        return "\r\n".join(lines)

    def _keyspace(self) -> str:
        """INFO's db0 line for the objects this node stores (its replicas; the cluster's key count is DBSIZE,
        which scans): ``keys`` counts them, tombstones of deleted keys left out; ``expires`` (those whose value has
        a TTL) and ``avg_ttl`` (the milliseconds they have left, on average) are worked out from up to
        ``TTL_SAMPLE`` of them, as Redis estimates ``avg_ttl``. Exact while the node stores no more objects than
        that."""
        objects = self.store.count(OBJECT_PREFIX)
        now_ms = int(time.time() * 1000)
        seen = live = expiring = 0
        left = 0
        for _, raw in itertools.islice(self.store.items(OBJECT_PREFIX), TTL_SAMPLE):
            seen += 1
            try:
                values = _impl.vclock.Siblings.from_bytes(raw).live_values()
            except DynafastError:
                continue  # a damaged record: read repair's business, not a key to count
            values, ttls = expiry.visible(values, now_ms)
            if not values:
                continue  # deleted, or expired and not reaped yet
            live += 1
            ttls = [ttl for ttl in ttls or () if ttl != expiry.NO_EXPIRY]
            if ttls:
                expiring += 1
                left += min(ttls)
        if not seen:
            return "keys=0,expires=0,avg_ttl=0"
        keys = round(objects * live / seen)
        expires = round(objects * expiring / seen)
        return f"keys={keys},expires={expires},avg_ttl={left // expiring if expiring else 0}"

    def config_get(self, patterns) -> dict:
        from dynafast.resp.keyspace import glob_matcher

        values = {
            b"save": b"", b"appendonly": b"no" if self.config.sync == "none" else b"yes",
            b"appendfsync": {"always": b"always", "interval": b"everysec", "none": b"no"}.get(self.config.sync,
                                                                                            b"everysec"),
            b"maxmemory": b"0", b"maxmemory-policy": b"noeviction", b"databases": b"1",
            b"proto-max-bulk-len": str(self.config.max_value_size).encode(),
            b"timeout": str(int(self.config.idle_timeout)).encode(), b"cluster-enabled": b"no",
            b"maxclients": str(self.server.max_connections if self.server is not None else 0).encode(),
        }
        out = {}
        for pattern in patterns:
            if pattern.lower() in values:
                out[pattern] = values[pattern.lower()]  # a name without a glob comes back as asked, as in Redis
                continue
            match = glob_matcher(pattern.lower()) or (lambda name: True)
            for name, value in values.items():
                if match(name):
                    out[name] = value
        return out


def failed(args, exc: Exception):
    """The reply of a command that raised ``exc``."""
    if isinstance(exc, RespError):
        return exc
    if not isinstance(exc, (DynafastError, ValueError)):
        log.error("RESP command %r failed", args[0][:64], exc_info=exc)
    return coordinator_error(exc)


def new_quorum(node):
    """The node's ``dynafast._core.lane.Quorum``, or None where it cannot run: N=1 (the fast lane's), or no
    compiled coordinator lanes."""
    if node.config.n == 1:
        return None
    try:
        return _impl.lane.Quorum(node.requests, node.config, int(Msg.PUT_REPLY), Mapped, commands._ok,
                                 commands._value)
    except TypeError:
        return None


def new_lane(node):
    """The node's fast lane, or None where it cannot run: keys with more than one replica (N>1), or a compiled
    lane over the reference store."""
    engine = getattr(node.store, "_engine", None)
    if engine is None or node.config.n != 1:
        return None
    try:
        return _impl.lane.Lane(node.requests, node.vnodes, engine, node.config, node.trees)
    except TypeError:
        return None


def _human(size: int) -> str:
    for unit in ("B", "K", "M", "G"):
        if size < 1024:
            return f"{size:.2f}{unit}" if unit != "B" else f"{size}B"
        size /= 1024
    return f"{size:.2f}T"


_ids = itertools.count(1)


class RespConnection(_impl.lane.LaneConnection, asyncio.Protocol):
    """One client connection. Its read step (``data_received``) and ``_flush`` are the lane's (compiled): they
    answer a read the lane can answer whole and hand everything else to ``_received``."""

    def __init__(self, server: "RespServer"):
        self.server = server
        self.app = server.app
        self.high_water = HIGH_WATER
        self.id = next(_ids)
        self.transport = None
        self.peername = None
        self.parser = new_parser(self.app.max_bulk, kind=server.parser_kind)
        self.created = time.monotonic()
        self.active = True
        self.idle_checks = 0
        self.auth_failures = 0
        self.quit = False
        self.closed = False
        self._out = bytearray()
        self._pending = collections.deque()  # [future or None, reply] in request order, from the first waiting
        # What the commands in flight touch: a later command on one of their keys waits (a pipeline's GET sees
        # the SET before it), and a barrier (AUTH, SCAN, ...) waits for all and holds back all after it.
        self._busy_keys = {}  # key -> commands in flight on it (a dict: Counter's update showed in profiles)
        self._barriers = 0
        self._held = collections.deque()  # requests parsed but not yet run (reading is paused)
        self._reading_paused = False
        self._writing_paused = False
        self._flush_scheduled = False
        # Commands in flight are bounded by what their replies weigh, as on the cluster port: the largest recent
        # reply size, decaying towards smaller ones (their number times it, plus what the transport has not sent
        # yet, stays under HIGH_WATER). A new connection starts with two in flight and widens as small replies
        # come; one asking for large values from other nodes has one or two, not MAX_PENDING of them.
        self._reply_estimate = HIGH_WATER // 2
        self._unsent = 0  # bytes the transport still held after our last write
        self._unfinished = 0
        self._broken = None  # the protocol error to send once the requests before it are answered
        self._half_closed = False
        self.reset()

    def reset(self):
        """A fresh session (RESET): RESP2, no name, anonymous, the node's quorums."""
        self.resp3 = False
        self.name = None
        self.user = "default"
        self.role = self.app.anonymous_role(self.peername)
        self.r = self.w = self.dw = None
        self.lib_name = self.lib_ver = ""
        self.last_command = b"NULL"
        self.refused_multi = False  # MULTI was refused: nothing runs until EXEC or DISCARD
        self.rights = self.app.lane_rights(self)

    def describe(self) -> str:
        host, port = (self.peername or ("?", 0))[:2]
        age = int(time.monotonic() - self.created)
        name = (self.name or b"").decode("utf-8", "replace")
        return (f"id={self.id} addr={format_address(host, port)} laddr={self.server.address} fd=-1 name={name} "
                f"age={age} idle=0 flags=N db=0 sub=0 psub=0 ssub=0 multi=-1 qbuf={self.parser.buffered} "
                f"obl=0 oll={len(self._pending)} omem={len(self._out)} tot-mem=0 events=r "
                f"cmd={self.last_command.decode('utf-8', 'replace').lower()} user={self.user} redir=-1 resp="
                f"{3 if self.resp3 else 2} lib-name={self.lib_name} lib-ver={self.lib_ver}")

    # -- asyncio --------------------------------------------------------------------------------------
    def connection_made(self, transport):
        self.transport = transport
        transport.set_write_buffer_limits(high=HIGH_WATER, low=HIGH_WATER // 4)
        self.peername = transport.get_extra_info("peername")
        self.role = self.app.anonymous_role(self.peername)
        self.rights = self.app.lane_rights(self)
        server = self.server
        server.stats["connections"] += 1
        server.stats["connections_total"] += 1
        server.connections[self.id] = self
        if server.stats["connections"] > server.max_connections:
            server.stats["connections_refused"] += 1
            self._out += b"-ERR max number of clients reached\r\n"
            self._close()

    def connection_lost(self, exc):
        self.closed = True
        server = self.server
        server.stats["connections"] -= 1
        server.unfinished -= self._unfinished
        self._unfinished = 0
        server.connections.pop(self.id, None)
        for slot in self._pending:
            future = slot[0]
            if future is None:
                continue
            if slot[3] is not None:
                # A coordinator's own future (a Mapped reply): its request goes on to its end, as one whose client
                # left does (a put's second round must not be cut short); only its outcome is not wanted.
                future.add_done_callback(forget)
            else:
                future.cancel()
        self._pending.clear()
        self._held.clear()
        self.transport = None

    def _received(self, data):
        """What arrived, the general way (the lane's ``data_received`` hands over each read it does not answer)."""
        if self.closed or self._broken is not None:
            return
        self.active = True
        try:
            requests = self.parser.feed(data)
        except RespProtocolError as exc:
            requests = self._refused(exc)
        self._handle(requests)

    def _refused(self, exc: Exception) -> list:
        """The requests before a protocol error; what came before it is answered, then the error, then the
        connection closes (as Redis)."""
        if not isinstance(exc, RespProtocolError):
            raise exc
        self.server.stats["protocol_errors"] += 1
        self._broken = str(exc).encode()
        return exc.requests

    def _handle(self, requests: list):
        if self.parser.buffered != self._unfinished and not self._account_unfinished():
            return
        if self._held:
            self._held.extend(requests)
        else:
            self._run(requests)
        self._flush()
        if self._broken is not None or self._half_closed:
            self._maybe_done()

    def _maybe_done(self):
        """Once everything received is answered: after a protocol error, the error and close (as Redis does);
        after the client's half-close, close."""
        if self._pending or self._held or self.transport is None:
            return
        if self._broken is not None:
            self._out += b"-" + self._broken + b"\r\n"
            self._close()
        elif self._half_closed:
            self._close()

    def eof_received(self):
        # The client sends nothing more: answer what it sent (a pipeline, then a half-close), then close.
        self._half_closed = True
        if not self._pending and not self._held:
            self._flush()
            return False
        return True

    def _account_unfinished(self) -> bool:
        buffered = self.parser.buffered
        if buffered != self._unfinished:
            server = self.server
            server.unfinished += buffered - self._unfinished
            grew = buffered > self._unfinished
            self._unfinished = buffered
            if grew and (buffered > server.max_request or server.unfinished > server.max_unfinished):
                server.stats["protocol_errors"] += 1
                self._out += b"-ERR Protocol error: too big request\r\n"
                self._close()
                return False
        return True

    def _run(self, requests, start: int = 0, refused: int = -1):
        """Run ``requests[start:]``; the lane is not asked again for ``requests[refused]`` (it just left it)."""
        pending = self._pending
        app = self.app
        execute = app.execute
        lane = app.lane
        quorum = app.quorum
        rights = self.rights
        out = self._out
        i, count = start, len(requests)
        while i < count:
            if len(out) >= HIGH_WATER:
                # Big replies go out as they are made, not once the whole read is answered: a client that sends
                # many GETs of big values and never reads is then held back (pause_writing) instead of growing
                # the node by every reply at once.
                self._flush()
                out = self._out
            if lane is not None and rights and not pending and not self._writing_paused and i != refused:
                stop = lane.serve(requests, i, out, rights, self.resp3, HIGH_WATER)
                if stop > i:
                    app.commands += stop - i
                    self.last_command = requests[stop - 1][0]
                    i = stop
                    continue
            args = requests[i]
            i += 1
            if self._writing_paused or (pending and (
                    len(pending) >= MAX_PENDING or len(pending) * self._reply_estimate + self._unsent >= HIGH_WATER)):
                self._held.extend(requests[i - 1:])
                self._pause_reading()
                return
            reply = None
            if quorum is not None and rights and not (pending and (self._barriers or (
                    len(args) > 1 and args[1] in self._busy_keys))):
                try:
                    reply = quorum.take(args, rights)
                except Exception as exc:  # noqa: BLE001 - as execute answers a command that raised
                    reply = failed(args, exc)
            if reply is not None:  # a GET or SET a coordinator lane started
                app.commands += 1
                self.last_command = args[0]
                keys = args[1:2]
            else:
                spec = TABLE.get(args[0])
                if spec is None:
                    spec = TABLE.get(args[0].lower())
                keys = _keys(spec, args)
                if pending and self._must_wait(spec, keys):
                    self._held.extend(requests[i - 1:])
                    if len(self._held) > MAX_PENDING:
                        self._pause_reading()
                    return
                reply = execute(self, args, spec)
            fn = None
            if type(reply) is Mapped:  # the coordinator's future, and what makes the reply of its result
                reply, fn = reply.source, reply.fn
                if type(reply) is tuple:  # answered at once (a lane's R or W of 1)
                    try:
                        reply = fn(reply)
                    except Exception as exc:  # noqa: BLE001
                        reply = failed(args, exc)
            if isinstance(reply, asyncio.Future):
                if reply.done():
                    reply = _outcome(reply, fn)
                else:
                    if keys is None:
                        self._barriers += 1
                    else:
                        busy = self._busy_keys
                        for key in keys:
                            busy[key] = busy.get(key, 0) + 1
                    pending.append([reply, None, keys, fn])
                    reply.add_done_callback(self._answered)
                    continue
            if pending:
                pending.append([None, reply, ()])
            else:
                if type(reply) is not bytes and isinstance(reply, RespError):
                    self.app.errors += 1
                encode(out, reply, self.resp3)  # read each time: HELLO switches it
            if self.quit:
                self._held.clear()
                self._close()
                return
            if lane is not None or quorum is not None:
                rights = self.rights = app.lane_rights(self)  # AUTH, HELLO, RESET and DF.CONFIG change them

    def _answered(self, future):
        if self.closed:
            return
        pending = self._pending
        for slot in pending:
            if slot[0] is future:
                slot[0], slot[1] = None, _outcome(future, slot[3])
                keys = slot[2]
                if keys is None:  # AUTH and HELLO among them: a login changes what the lanes may do
                    self.rights = self.app.lane_rights(self)
                    self._barriers -= 1
                else:
                    busy = self._busy_keys
                    for key in keys:
                        left = busy[key] - 1
                        if left:
                            busy[key] = left
                        else:
                            del busy[key]
                break
        out = self._out
        while pending and pending[0][0] is None:
            reply = pending.popleft()[1]
            if isinstance(reply, RespError):
                self.app.errors += 1
            start = len(out)
            encode(out, reply, self.resp3)
            size, estimate = len(out) - start, self._reply_estimate
            self._reply_estimate = size if size > estimate else estimate - ((estimate - size) >> 3)
        if len(out) + self._unsent > OUTPUT_LIMIT:
            self._overflow()
            return
        if not pending and not self._held and (self._broken is not None or self._half_closed):
            self._maybe_done()
            return
        if not self._flush_scheduled:
            self._flush_scheduled = True
            future.get_loop().call_soon(self._flush)  # (get_running_loop costs a system call per reply)
        if self._held and len(pending) <= MAX_PENDING // 2:
            # Not at every answer while the window is full: each release goes over every request held (a
            # pipeline deeper than the window), and half a window of them then starts in one go.
            self._release()

    def _must_wait(self, spec, keys) -> bool:
        """Whether a command (``keys``: those it touches, ``_keys``) must wait for commands still in flight (it runs
        after them, as in Redis)."""
        if self._barriers:
            return True
        if spec is None:
            return False
        if keys is None:
            return True
        busy = self._busy_keys
        if busy:
            for key in keys:
                if key in busy:
                    return True
        return False

    def _release(self):
        held, self._held = list(self._held), collections.deque()
        if not self._writing_paused:
            self._resume_reading()
        self._run(held)
        self._flush()
        self._maybe_done()

    def _overflow(self):
        """Close a connection whose client does not read what it asked for: its replies go unsent."""
        self.server.stats["output_limit_closed"] += 1
        log.warning("closing RESP connection %s: %d MiB of replies unsent (the client does not read them)",
                    self.id, (len(self._out) + self._unsent) >> 20)
        self._out = bytearray()
        self.closed = True  # later answers are dropped; connection_lost cancels the commands still in flight
        if self.transport is not None:
            self.transport.abort()

    def _close(self):
        self._flush()
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def pause_writing(self):
        self._writing_paused = True
        self._pause_reading()

    def resume_writing(self):
        self._writing_paused = False
        self._unsent = self.transport.get_write_buffer_size() if self.transport is not None else 0
        self.active = True
        if self._held:
            self._release()
        else:
            self._resume_reading()

    def _pause_reading(self):
        if not self._reading_paused and self.transport is not None:
            self._reading_paused = True
            self.transport.pause_reading()

    def _resume_reading(self):
        if self._reading_paused and self.transport is not None and not self.transport.is_closing():
            self._reading_paused = False
            self.transport.resume_reading()

    def close_idle(self):
        if self.transport is not None and not self.transport.is_closing():
            self.server.stats["idle_closed"] += 1
            self.transport.abort() if self._out or self.transport.get_write_buffer_size() else self.transport.close()


def _keys(spec, args):
    """The keys a command touches; None for a barrier (a command without keys that is not a plain reply)."""
    if spec is None or spec.first_key == 0:
        return None
    last = len(args) - 1 if spec.last_key < 0 else min(spec.last_key, len(args) - 1)
    return args[spec.first_key:last + 1:spec.step]


def _outcome(future, fn=None):
    """The reply a done future makes (``fn`` of its result, when given: a ``Mapped`` reply's)."""
    if future.cancelled():
        return RespError("ERR request cancelled")
    exc = future.exception()
    if exc is None:
        if fn is None:
            return future.result()
        try:
            return fn(future.result())
        except Exception as failed:  # noqa: BLE001 - the command's error reply, as through ``then``
            exc = failed
    if not isinstance(exc, (DynafastError, RespError, ValueError, OSError)):
        log.error("RESP command failed", exc_info=exc)
    return coordinator_error(exc)


class RespServer:
    def __init__(self, app: RespApp, host: str, *, parser_kind: str = "auto"):
        config = app.config
        self.app = app
        self.host = host
        self.parser_kind = parser_kind
        self.stats = collections.Counter()
        self.connections: dict[int, RespConnection] = {}
        self.max_connections = config.max_connections or descriptor_budget()
        self.max_request = config.max_frame
        self.max_unfinished = config.max_unfinished_frames
        self.unfinished = 0
        self.idle_timeout = config.idle_timeout
        self._server = None
        self._idle_timer = None

    @property
    def port(self) -> int:
        return self._server.sockets[0].getsockname()[1]

    @property
    def address(self) -> str:
        return format_address(self.host, self.port)

    def connections_by_id(self):
        return [self.connections[i] for i in sorted(self.connections)]

    def _check_idle(self):
        close_idle(self.connections.values(), lambda conn: conn._pending)
        self._idle_timer = asyncio.get_running_loop().call_later(self.idle_timeout / 2, self._check_idle)

    def close(self):
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        self._server.close()
        for conn in list(self.connections.values()):
            conn._close()

    async def wait_closed(self):
        await self._server.wait_closed()


async def start_resp(node, address: str, *, ssl=None, parser_kind: str = "auto") -> RespServer:
    """Serve RESP for ``node`` on ``address`` (HOST:PORT; port 0 picks one)."""
    host, port = parse_address(address)
    app = RespApp(node)
    server = RespServer(app, host, parser_kind=parser_kind)
    app.server = server
    loop = asyncio.get_running_loop()
    server._server = await loop.create_server(lambda: RespConnection(server), host, port, backlog=1024,
                                              reuse_address=True, ssl=ssl,
                                              ssl_handshake_timeout=10.0 if ssl is not None else None)
    if server.idle_timeout:
        server._idle_timer = loop.call_later(server.idle_timeout / 2, server._check_idle)
    return server
