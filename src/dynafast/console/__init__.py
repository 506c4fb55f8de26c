"""The management console: one page per cluster, served by every node's HTTP side.

The page (``static/``: plain HTML, CSS and JavaScript, no library, nothing from the internet) asks
``GET /console/data`` every two seconds and redraws in place. The answer is the serving node's view: the ring
map, its own status, and every other member's status asked over the native protocol (STATUS, all at once, each
bounded by ``PEER_TIMEOUT``), so a member that is down or hung shows as unreachable instead of stalling the page.
One gathering serves every page open within ``CACHE_SECONDS``: more tabs cost no more peer calls.
"""
from __future__ import annotations

import asyncio
import html
import json
import logging
import time
from importlib import resources

from dynafast.errors import DynafastError

log = logging.getLogger("dynafast.console")

PEER_TIMEOUT = 1.5  # seconds a member has to answer before the page shows it unreachable
CACHE_SECONDS = 1.0

_STATIC = {"console.js": "application/javascript", "console.css": "text/css"}


def ring_map(state, n: int) -> dict:
    """Which nodes hold each partition (``replicas[p]``: indexes into ``nodes``, primary first), the next ring's
    replicas while one is being moved to, and the partitions whose move is not finished (``moving``)."""
    ring, nxt = state.ring, state.next_ring
    names: dict[str, int] = {}

    def index(node_id):
        return names.setdefault(node_id, len(names))

    replicas = [[index(node) for node in ring.replicas(p, n)] for p in range(ring.partitions)]
    upcoming = None if nxt is None else [[index(node) for node in nxt.replicas(p, n)] for p in range(nxt.partitions)]
    moving = [] if nxt is None else sorted({p for p, _ in state.required_transfers() - state.done})
    return {"partitions": ring.partitions, "n": n, "version": ring.version, "nodes": list(names),
            "replicas": replicas, "next": upcoming, "moving": moving}


class ClusterView:
    """Gathers what ``/console/data`` answers. Ports: ``status()`` (this node's), ``ring_map()``, and
    ``peer_status(node_id, timeout)`` (async: a member's status, or an error)."""

    def __init__(self, status, ring_map, peer_status, timeout: float = PEER_TIMEOUT):
        self.status = status
        self.ring_map = ring_map
        self.peer_status = peer_status
        self.timeout = timeout
        self._last: tuple[float, asyncio.Future] | None = None

    async def data(self) -> dict:
        now = time.monotonic()
        if self._last is None or now - self._last[0] > CACHE_SECONDS:
            self._last = (now, asyncio.ensure_future(self._gather()))
        return await asyncio.shield(self._last[1])  # a page that goes away does not cancel the others' answer

    async def _gather(self) -> dict:
        own = self.status()
        me = own["node"]
        peers = [m for m in own["members"] if m["id"] != me and m["state"] != "left"]
        answers = await asyncio.gather(*(self._ask(m["id"]) for m in peers))
        nodes = [{"id": me, "reachable": True, "error": None, "status": own}]
        for member, (status, error) in zip(peers, answers):
            nodes.append({"id": member["id"], "reachable": status is not None, "error": error, "status": status})
        return {"node": me, "time": time.time(), "members": own["members"], "ring": self.ring_map(),
                "config": {k: own[k] for k in ("n", "r", "w", "dw", "partitions", "ring_version")},
                "nodes": nodes}

    async def _ask(self, node_id: str) -> tuple[dict | None, str | None]:
        try:
            return await asyncio.wait_for(self.peer_status(node_id, self.timeout), self.timeout), None
        except asyncio.TimeoutError:
            return None, f"no answer within {self.timeout:g} s"
        except (DynafastError, OSError, ValueError) as exc:
            return None, str(exc) or type(exc).__name__


def _read(name: str) -> str:
    return resources.files(__package__).joinpath("static", name).read_text(encoding="utf-8")


def add_routes(app, view: ClusterView, node_id: str, guard_read) -> None:
    """``GET /`` (the page), ``/console/data`` and the page's script and style; ``guard_read`` wraps a handler
    so that it needs a user allowed to read (or nothing, without users)."""
    from aiohttp import web

    page = _read("index.html").replace("{node}", html.escape(node_id))
    files = {name: (_read(name), kind) for name, kind in _STATIC.items()}

    async def index(request):
        return web.Response(text=page, content_type="text/html")

    async def data(request):
        return web.Response(text=json.dumps(await view.data()), content_type="application/json")

    async def static(request):
        text, kind = files[request.match_info["name"]]
        return web.Response(text=text, content_type=kind)

    app.router.add_get("/", guard_read(index))
    app.router.add_get("/console/data", guard_read(data))
    app.router.add_get(r"/console/{name:console\.(js|css)}", guard_read(static))
