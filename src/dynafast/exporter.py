"""The node's figures in Prometheus form, for GET /metrics.

Everything is read when /metrics is scraped: the node's published status (one ``status()`` per scrape), the
request counters and latency histograms the request path keeps (``dynafast.metrics``), the fsync histogram of
group commit, and prometheus_client's process and platform collectors. Nothing here runs per request.

Names follow Prometheus conventions: counters end in ``_total``, units are base units named last (``_seconds``,
``_bytes``), and what varies (node, operation, owner, state) is a label. docs/operations.md lists them all.
"""
from __future__ import annotations

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from dynafast.metrics import BOUNDS

_LE = [repr(bound) for bound in BOUNDS] + ["+Inf"]


def _histogram_buckets(counts) -> list[tuple[str, int]]:
    """Cumulative (le, count) pairs of per-bucket counts over ``BOUNDS`` and +Inf."""
    cumulative, buckets = 0, []
    for le, count in zip(_LE, counts):
        cumulative += count
        buckets.append((le, cumulative))
    return buckets


class RequestCollector:
    """Client requests this node coordinated: counts, errors by type, and latency histograms, per operation."""

    def __init__(self, view):
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
            latency.add_metric([nid, op], list(zip(_LE, stats.cumulative())), stats.total_seconds)
        yield requests
        yield errors
        yield latency


class FsyncCollector:
    """The store's fsyncs for durable writes (group commit): how many, and how long each took."""

    def __init__(self, view):
        self.view = view

    def collect(self):
        nid = self.view.node_id
        yield _one(CounterMetricFamily, "dynafast_group_commits", "Group-commit fsyncs done for durable writes",
                   nid, self.view.durable_syncs())
        histogram = self.view.fsync_seconds
        if histogram is not None:
            family = HistogramMetricFamily("dynafast_fsync_seconds", "Time of each group-commit fsync, from its "
                                           "start to the node collecting it", labels=["node"])
            family.add_metric([nid], _histogram_buckets(histogram.buckets), histogram.total_seconds)
            yield family


def _one(kind, name: str, documentation: str, node: str, value, **labels):
    """A family of one sample labelled with the node (and ``labels``)."""
    family = kind(name, documentation, labels=["node", *labels])
    family.add_metric([node, *labels.values()], value)
    return family


class StatusCollector:
    """The node's published status as gauges and counters: storage, members, hints, anti-entropy, repair,
    transfers, read repair, siblings, corrupt records, scans and the server's connection counters."""

    def __init__(self, view):
        self.view = view

    def collect(self):
        view = self.view
        nid = view.node_id
        status = view.status()

        def gauge(name, documentation, value, **labels):
            return _one(GaugeMetricFamily, name, documentation, nid, value, **labels)

        def counter(name, documentation, value, **labels):
            return _one(CounterMetricFamily, name, documentation, nid, value, **labels)

        def by_label(kind, name, documentation, label, values: dict):
            family = kind(name, documentation, labels=["node", label])
            for key, value in values.items():
                family.add_metric([nid, str(key)], value)
            return family

        storage = status["storage"]
        yield gauge("dynafast_storage_keys", "Live keys in the node's store", storage.get("keys", 0))
        yield gauge("dynafast_storage_live_bytes", "Live bytes in the store", storage.get("live_bytes", 0))
        yield gauge("dynafast_storage_dead_bytes", "Dead bytes awaiting merge", storage.get("dead_bytes", 0))
        yield gauge("dynafast_storage_disk_bytes", "Bytes of the store's segment files", storage.get("disk_bytes", 0))
        yield counter("dynafast_storage_fsyncs", "Fsyncs of the store, for any reason", storage.get("fsyncs", 0))
        yield counter("dynafast_storage_merges", "Merges (compactions) of the store", storage.get("merges", 0))

        states = dict.fromkeys(("up", "down", "joining", "leaving", "left"), 0)
        for member in status["members"]:
            states[member["state"]] = states.get(member["state"], 0) + 1
        yield by_label(GaugeMetricFamily, "dynafast_members", "Cluster members by state, as this node sees them",
                       "state", states)
        yield gauge("dynafast_ring_version", "Version of the ring this node holds", status["ring_version"])

        # Hints this node holds for others, and what became of those it held.
        yield by_label(GaugeMetricFamily, "dynafast_hints_pending", "Hints held for a replica that was down",
                       "owner", status.get("hints_pending", {}))
        yield counter("dynafast_hints_delivered", "Hints handed to their owner (or its partition's primaries)",
                      status["hints_delivered"])
        yield counter("dynafast_hints_dropped", "Hints dropped undelivered", status.get("hints_expired", 0),
                      reason="expired")

        ae = status["antientropy"]
        yield counter("dynafast_antientropy_exchanges", "Anti-entropy exchanges of a partition with a replica",
                      ae["exchanges"])
        yield counter("dynafast_antientropy_keys_repaired", "Keys anti-entropy repaired, here or on the peer",
                      ae["keys_repaired"])
        if ae.get("last_exchange_age") is not None:
            yield gauge("dynafast_antientropy_last_exchange_age_seconds", "Time since the last exchange ended",
                        ae["last_exchange_age"])
        repair = status["repair"]
        yield gauge("dynafast_repair_vnodes", "Vnodes being repaired after the node lost data",
                    repair["vnodes_repairing"])
        yield counter("dynafast_repair_keys", "Keys brought back by the repair after lost data",
                      repair["keys_repaired"])

        transfers = status["transfers"]
        yield gauge("dynafast_transfers_running", "Partition transfers this node is sending now",
                    transfers["running"])
        yield gauge("dynafast_transfers_pending", "Partition transfers the cluster still has to finish for the "
                    "next ring (0: no ring change)", transfers["pending_cluster_wide"])
        yield counter("dynafast_transfers_completed", "Partition transfers this node finished sending",
                      transfers["completed"])
        yield counter("dynafast_transfer_sent_bytes", "Bytes of objects sent in transfers and hand-offs",
                      transfers["bytes_sent"])
        yield by_label(CounterMetricFamily, "dynafast_transfer_objects", "Objects sent and received in transfers",
                       "direction", {"sent": transfers["objects_sent"], "received": transfers["objects_received"]})
        yield counter("dynafast_vnodes_handed_off", "Vnodes handed off to their new owners and dropped",
                      transfers["handed_off"])

        yield by_label(CounterMetricFamily, "dynafast_replica_requests", "Replica gets and puts this node served "
                       "for coordinators", "op", status.get("replica_requests", {}))
        yield counter("dynafast_read_repairs", "Stale replicas a read brought up to date", status["read_repairs"])
        siblings = status["siblings"]
        yield counter("dynafast_sibling_reads", "Client reads that returned more than one sibling",
                      siblings.get("reads", 0))
        yield counter("dynafast_sibling_warnings", "Writes that left more siblings than siblings_warn",
                      siblings["warnings"])
        yield counter("dynafast_siblings_refused", "Writes refused for leaving more than max_siblings",
                      siblings["refused"])
        yield by_label(GaugeMetricFamily, "dynafast_corrupt_records",
                       "Damaged records found, repaired, not yet repaired", "state", status["corrupt_records"])
        yield by_label(GaugeMetricFamily, "dynafast_scan", "Scan pages, keys and bytes served, pages refused",
                       "counter", status.get("scans", {}))
        yield by_label(GaugeMetricFamily, "dynafast_server", "Server connection and frame counters", "counter",
                       {k: v for k, v in view.server_stats().items() if isinstance(v, (int, float))})


class NodeMetrics:
    """A registry of this node's own (not the process-wide default one): /metrics renders it."""

    def __init__(self, view):
        self.view = view
        self.registry = CollectorRegistry()
        for collector in (StatusCollector(view), RequestCollector(view), FsyncCollector(view)):
            self.registry.register(collector)
        # CPU, memory, descriptors and start time of the node's process; Python's version.
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)

    def render(self) -> bytes:
        return generate_latest(self.registry)
