"""The node's HTTP side: /health, /status (as `status --json`), /metrics (Prometheus), the console (``console``),
POST /antientropy to start a full anti-entropy pass now, and the key-value API under /kv (``httpkv``).

With a users file every page but /health needs HTTP Basic credentials of a user whose role allows it."""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
import time
from dataclasses import dataclass
from typing import Callable

from aiohttp import BasicAuth, hdrs, web
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from dynafast.address import parse_address
from dynafast.exporter import NodeMetrics
from dynafast.security.users import Users, UsersFileError, role_allows

log = logging.getLogger("dynafast.http")

@dataclass
class NodeView:
    """What the HTTP side reads and may do: the status the services publish, counters, and an on-demand repair."""

    node_id: str
    status: Callable[[], dict]
    request_stats: object
    server_stats: Callable[[], dict]
    durable_syncs: Callable[[], int]
    repair_all: Callable[[], object]
    users: Users | None = None  # None: no users file, every page is open
    metrics_auth: bool = False  # /metrics needs a user too
    kv: object = None  # httpkv.KvBackend: the key-value API under /kv
    cluster: object = None  # console.ClusterView: what the console page shows
    fsync_seconds: object = None  # metrics.Histogram of the group-commit fsyncs (None: not measured)


class BasicAuthGuard:
    """Checks HTTP Basic credentials against the users file without blocking the event loop.

    A password check is an argon2id hash (tens of milliseconds), so it runs in a worker thread, a few at a time
    (a flood of guesses queues up instead of taking every core and its memory). A successful check is
    remembered for ``ttl`` seconds, so a console refreshing every 2 s costs one hash a minute; a failed one is
    never remembered. Whatever the file says changes, every remembered check is forgotten.
    """

    CHALLENGE = {hdrs.WWW_AUTHENTICATE: 'Basic realm="dynafast"'}

    def __init__(self, users: Users, ttl: float = 60.0, size: int = 256, concurrency: int = 2):
        self.users = users
        self.ttl = ttl
        self.size = size
        self._checks = asyncio.Semaphore(concurrency)
        # Remembered checks are keyed by a keyed hash of the password, never the password itself.
        self._key = os.urandom(32)
        self._known: dict[tuple[str, bytes], tuple[str, float]] = {}  # -> (role, expires)
        self._generation = users.generation

    async def require(self, request: web.Request, needed: str) -> None:
        """Return if the request's user may do what role ``needed`` may; raise 401 or 403 otherwise."""
        try:
            credentials = BasicAuth.decode(request.headers.get(hdrs.AUTHORIZATION, ""), encoding="utf-8")
        except ValueError:
            raise web.HTTPUnauthorized(headers=self.CHALLENGE, text="credentials needed") from None
        role = await self.role(credentials.login, credentials.password)
        if role is None:
            raise web.HTTPUnauthorized(headers=self.CHALLENGE, text="wrong user name or password")
        if not role_allows(role, needed):
            raise web.HTTPForbidden(text=f"role {role} may not do this (needs {needed})")

    async def role(self, name: str, password: str) -> str | None:
        try:
            self.users.refresh()  # one stat: a changed file is read before it is trusted
        except UsersFileError as exc:
            log.error("%s", exc)
            raise web.HTTPInternalServerError(text="the node's users file cannot be read") from None
        if self.users.generation != self._generation:
            self._known.clear()  # a removed user or a changed password ends what was remembered
            self._generation = self.users.generation
        key = (name, hmac.digest(self._key, password.encode(), hashlib.sha256))
        known = self._known.get(key)
        now = time.monotonic()
        if known is not None and known[1] > now:
            return known[0]
        async with self._checks:
            try:
                role = await asyncio.get_running_loop().run_in_executor(None, self.users.verify, name, password)
            except UsersFileError as exc:
                log.error("%s", exc)
                raise web.HTTPInternalServerError(text="the node's users file cannot be read") from None
        if role is not None:
            if len(self._known) >= self.size:
                self._known.pop(next(iter(self._known)))  # the oldest
            self._known[key] = (role, time.monotonic() + self.ttl)
        return role


async def start_http(node: NodeView, address: str, ssl=None) -> web.AppRunner:
    """Serve the node's HTTP side on ``address`` (HTTPS with ``ssl``, an SSLContext)."""
    metrics = NodeMetrics(node)

    async def health(request):
        return web.json_response({"status": "serving", "node": node.node_id})

    async def status(request):
        return web.json_response(node.status())

    async def prometheus(request):
        return web.Response(body=metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def antientropy_now(request):
        # On demand (after a disk was replaced, say): every owned partition against every other live replica.
        task = node.repair_all()
        return web.json_response({"started": task is not None}, status=202)

    guard = BasicAuthGuard(node.users) if node.users is not None else None

    def needs(role: str | None, handler):
        """``handler`` behind the guard: only a user whose role allows ``role`` gets through."""
        if guard is None or role is None:
            return handler

        async def guarded(request):
            await guard.require(request, role)
            return await handler(request)
        return guarded

    kv_limits = {}
    if node.kv is not None:
        from dynafast.httpkv import server_limits

        kv_limits = server_limits(node.kv)
    app = web.Application(handler_args=kv_limits)
    app.router.add_get("/health", health)  # always open: load balancers and orchestrators probe it
    app.router.add_get("/status", needs("read", status))
    app.router.add_get("/metrics", needs("read" if node.metrics_auth else None, prometheus))
    app.router.add_post("/antientropy", needs("admin", antientropy_now))
    if node.cluster is not None:
        from dynafast.console import add_routes as add_console

        add_console(app, node.cluster, node.node_id, lambda handler: needs("read", handler))
    if node.kv is not None:
        from dynafast.httpkv import add_routes

        add_routes(app, node.kv, guard)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    host, port = parse_address(address)
    await web.TCPSite(runner, host, port, ssl_context=ssl).start()
    return runner
