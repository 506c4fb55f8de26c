"""The node's HTTP side: /health, /status (as `status --json`), /metrics (Prometheus), a small console, and
POST /antientropy to start a full anti-entropy pass now."""
from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Callable

from aiohttp import web
from prometheus_client import CollectorRegistry, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from dynafast.address import parse_address
from dynafast.metrics import BOUNDS

_CONSOLE = """<!doctype html>
<html><head><meta charset="utf-8"><title>dynafast {node}</title>
<meta http-equiv="refresh" content="2">
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 10px;text-align:left}}.down{{color:#b00}}.up{{color:#070}}</style>
</head><body>
<h1>dynafast node {node}</h1>
<p>ring version {ring_version}: {partitions} partitions, n={n}, r={r}, w={w}, dw={dw}; uptime {uptime}s</p>
<table><tr><th>id</th><th>address</th><th>state</th><th>partitions</th></tr>
{rows}
</table>
<h2>storage</h2><table>{storage}</table>
<p><a href="/status">/status</a> · <a href="/metrics">/metrics</a> · <a href="/health">/health</a></p>
</body></html>
"""


@dataclass
class NodeView:
    """What the HTTP side reads and may do: the status the services publish, counters, and an on-demand repair."""

    node_id: str
    status: Callable[[], dict]
    request_stats: object
    server_stats: Callable[[], dict]
    durable_syncs: Callable[[], int]
    repair_all: Callable[[], object]


class RequestCollector:
    """Client requests this node coordinated: counts, errors by type, and latency histograms."""

    def __init__(self, view: NodeView):
        self.view = view

    def collect(self):
        nid = self.view.node_id
        requests = CounterMetricFamily("dynafast_requests", "Client requests coordinated", labels=["node", "op"])
        errors = CounterMetricFamily("dynafast_request_errors", "Client requests that failed",
                                     labels=["node", "op", "error"])
        latency = HistogramMetricFamily("dynafast_request_seconds", "Client request latency at the coordinator",
                                        labels=["node", "op"])
        for op, stats in self.view.request_stats.ops.items():
            requests.add_metric([nid, op], stats.count)
            for name, count in stats.errors.items():
                errors.add_metric([nid, op, name], count)
            cumulative, buckets = 0, []
            for bound, count in zip(list(BOUNDS) + [float("inf")], stats.buckets):
                cumulative += count
                buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
            latency.add_metric([nid, op], buckets, stats.total_seconds)
        yield requests
        yield errors
        yield latency


class NodeMetrics:
    """Prometheus gauges read from the node's published status when scraped (no cost on the request path)."""

    def __init__(self, view: NodeView):
        self.view = view
        self.registry = CollectorRegistry()
        labels = ["node"]
        self.keys = Gauge("dynafast_storage_keys", "Live keys in the node's store", labels, registry=self.registry)
        self.live = Gauge("dynafast_storage_live_bytes", "Live bytes in the store", labels, registry=self.registry)
        self.dead = Gauge("dynafast_storage_dead_bytes", "Dead bytes awaiting merge", labels, registry=self.registry)
        self.members = Gauge("dynafast_members", "Cluster members by state", ["node", "state"],
                             registry=self.registry)
        self.ring_version = Gauge("dynafast_ring_version", "Version of the ring this node holds", labels,
                                  registry=self.registry)
        self.syncs = Gauge("dynafast_group_commits", "Group-commit fsyncs done for durable writes", labels,
                           registry=self.registry)
        self.server = Gauge("dynafast_server", "Server counters", ["node", "counter"], registry=self.registry)
        self.corrupt = Gauge("dynafast_corrupt_records", "Damaged records found, repaired, not yet repaired",
                             ["node", "state"], registry=self.registry)
        self.registry.register(RequestCollector(view))

    def render(self) -> bytes:
        view = self.view
        nid = view.node_id
        status = view.status()
        stats = status["storage"]
        self.keys.labels(nid).set(stats.get("keys", 0))
        self.live.labels(nid).set(stats.get("live_bytes", 0))
        self.dead.labels(nid).set(stats.get("dead_bytes", 0))
        counts: dict[str, int] = dict.fromkeys(("up", "down", "joining", "leaving", "left"), 0)
        for member in status["members"]:
            counts[member["state"]] = counts.get(member["state"], 0) + 1
        for state, count in counts.items():
            self.members.labels(nid, state).set(count)
        self.ring_version.labels(nid).set(status["ring_version"])
        self.syncs.labels(nid).set(view.durable_syncs())
        for state, count in status["corrupt_records"].items():
            self.corrupt.labels(nid, state).set(count)
        for name, value in view.server_stats().items():
            if isinstance(value, (int, float)):
                self.server.labels(nid, name).set(value)
        return generate_latest(self.registry)


async def start_http(node: NodeView, address: str, ssl=None) -> web.AppRunner:
    """Serve the node's HTTP side on ``address`` (HTTPS with ``ssl``, an SSLContext)."""
    metrics = NodeMetrics(node)

    async def health(request):
        return web.json_response({"status": "serving", "node": node.node_id})

    async def status(request):
        return web.json_response(node.status())

    async def prometheus(request):
        return web.Response(body=metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def console(request):
        s = node.status()
        rows = "\n".join(
            f"<tr><td>{html.escape(m['id'])}</td><td>{html.escape(m['address'])}</td>"
            f"<td class=\"{m['state']}\">{m['state']}</td><td>{m['partitions']}</td></tr>"
            for m in s["members"]
        )
        storage = "".join(
            f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(str(v))}</td></tr>" for k, v in s["storage"].items()
        )
        page = _CONSOLE.format(node=html.escape(s["node"]), rows=rows, storage=storage,
                               **{k: s[k] for k in ("ring_version", "partitions", "n", "r", "w", "dw", "uptime")})
        return web.Response(text=page, content_type="text/html")

    async def antientropy_now(request):
        # On demand (after a disk was replaced, say): every owned partition against every other live replica.
        task = node.repair_all()
        return web.json_response({"started": task is not None}, status=202)

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_get("/status", status)
    app.router.add_get("/metrics", prometheus)
    app.router.add_post("/antientropy", antientropy_now)
    app.router.add_get("/", console)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    host, port = parse_address(address)
    await web.TCPSite(runner, host, port, ssl_context=ssl).start()
    return runner
