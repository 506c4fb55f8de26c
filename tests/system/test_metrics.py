"""/metrics of real nodes scraped over HTTP while a load runs and a node is killed: the counters move and the
text is valid Prometheus exposition (prometheus_client's own parser reads it)."""
import threading
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from dynafast import Client
from dynafast._impl import ring as rings, vclock as versions
from dynafast.cluster import preflist
from dynafast.net.blocking import BlockingConnection
from dynafast.net.messages import Msg
from dynafast.testing.cluster import LocalCluster, free_port
from test_cluster import replica_copy, wait_for, wait_members

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(180)]


def scrape(http: str) -> dict:
    """{(sample name, sorted labels without node): value} of one node's /metrics."""
    with urllib.request.urlopen(f"http://{http}/metrics", timeout=10) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = tuple(sorted((k, v) for k, v in sample.labels.items() if k != "node"))
            samples[(sample.name, labels)] = sample.value
    return samples


def total(scrapes, name, **labels) -> float:
    wanted = tuple(sorted(labels.items()))
    return sum(s.get((name, wanted), 0.0) for s in scrapes)


def replica_put(node, key: bytes, obj) -> None:
    """Store ``obj`` as ``node``'s copy of ``key`` (a replica write, as a coordinator sends it)."""
    host, port = node.address.rsplit(":", 1)
    conn = BlockingConnection(host, int(port), 5.0)
    try:
        _, fields = conn.call(Msg.RING_GET, (), 5.0)
        partition = rings.Ring.from_bytes(fields[0]).partition_of(key)
        conn.call(Msg.REPLICA_PUT, (partition, key, obj.to_bytes(), False, None), 5.0)
    finally:
        conn.close()


def primaries_of(node, key: bytes) -> list[str]:
    host, port = node.address.rsplit(":", 1)
    conn = BlockingConnection(host, int(port), 5.0)
    try:
        _, fields = conn.call(Msg.RING_GET, (), 5.0)
    finally:
        conn.close()
    ring = rings.Ring.from_bytes(fields[0])
    return list(preflist.primaries(ring, ring.partition_of(key), 3))


class Writer(threading.Thread):
    """Puts (w=2) of fresh keys until stopped; counts what was acknowledged."""

    def __init__(self, addresses, prefix: str):
        super().__init__(daemon=True)
        self.addresses, self.prefix = addresses, prefix
        self.stop = threading.Event()
        self.acknowledged = 0

    def run(self):
        with Client(self.addresses, timeout=3.0) as client:
            i = 0
            while not self.stop.is_set() and i < 100_000:
                try:
                    client.put(f"{self.prefix}-{i}".encode(), b"x" * 100, w=2)
                    self.acknowledged += 1
                except Exception:  # noqa: BLE001 - a put failing while a node dies is not what is checked here
                    pass
                i += 1


@pytest.fixture
def cluster(tmp_path):
    config = tmp_path / "node.toml"
    config.write_text("handoff_interval = 0.2\ngossip_interval = 0.3\nae_interval = 0.5\n")
    c = LocalCluster(4, base_dir=tmp_path / "c", extra_args=["--config", str(config)])
    for node in c.nodes:
        node.http = f"127.0.0.1:{free_port()}"
        node.args += ["--http", node.http]
    with c:
        with Client(c.addresses) as client:
            wait_members(client, 4, timeout=60)
        yield c


def test_metrics_move_during_a_load_with_a_node_killed(cluster):
    live = cluster.nodes[:3]
    victim = cluster.node("n4")
    before = [scrape(node.http) for node in live]
    assert total(before, "dynafast_hints_pending", owner="n4") == 0
    # Every process exposes its process figures and Python's version, on the node's own registry.
    for name in ("process_cpu_seconds_total", "process_resident_memory_bytes", "process_open_fds"):
        assert (name, ()) in before[0], name
    assert any(name == "python_info" for name, _ in before[0])

    writer = Writer(cluster.addresses[:3], "load")
    writer.start()
    try:
        assert wait_for(lambda: writer.acknowledged >= 50, 30)
        victim.kill()
        # Writes for n4's keys go to fallbacks as hints: scraped while the load goes on.
        assert wait_for(lambda: total([scrape(n.http) for n in live], "dynafast_hints_pending", owner="n4") > 0,
                        30), "no hint for the killed node showed in /metrics"
        during = [scrape(node.http) for node in live]
    finally:
        writer.stop.set()
        writer.join(30)
    assert writer.acknowledged > 50

    puts = total(during, "dynafast_requests_total", op="put") - total(before, "dynafast_requests_total", op="put")
    assert puts >= writer.acknowledged * 0.5  # the client spreads its puts over the three nodes scraped
    assert total(during, "dynafast_request_seconds_count", op="put") == total(during, "dynafast_requests_total",
                                                                                op="put")
    assert total(during, "dynafast_request_seconds_bucket", op="put", le="+Inf") > 0
    # Durable writes (dw=1) wait for group-commit fsyncs, each timed.
    assert total(during, "dynafast_fsync_seconds_count") > total(before, "dynafast_fsync_seconds_count")
    assert total(during, "dynafast_fsync_seconds_sum") > 0
    assert total(during, "dynafast_group_commits_total") > total(before, "dynafast_group_commits_total")
    exchanges = total(before, "dynafast_antientropy_exchanges_total")
    assert wait_for(lambda: total([scrape(n.http) for n in live], "dynafast_antientropy_exchanges_total")
                    > exchanges, 30)
    assert total(during, "process_cpu_seconds_total") > 0

    # The killed node comes back: its hints are delivered and none is left pending.
    victim.restart()
    assert wait_for(lambda: total([scrape(n.http) for n in live], "dynafast_hints_pending", owner="n4") == 0, 60)
    after = [scrape(node.http) for node in live]
    assert total(after, "dynafast_hints_delivered_total") > total(before, "dynafast_hints_delivered_total")
    assert total(after, "dynafast_hints_dropped_total", reason="expired") == 0

    with Client(cluster.addresses) as client:
        # Two writes without a context: a read returns both values (siblings).
        client.put(b"blind", b"one")
        client.put(b"blind", b"two")
        assert sorted(client.get(b"blind").values) == [b"one", b"two"]
        # A newer version on two of a key's three replicas only: a read of all three repairs the third.
        for i in range(5):
            key = f"stale-{i}".encode()
            client.put(key, b"old", w=3)
            holders = [cluster.node(node_id) for node_id in primaries_of(cluster.nodes[0], key)]
            current = replica_copy(holders[0], key)
            newer = versions.Siblings.new(b"new", current.context()).update(current, b"test.1")
            for node in holders[:2]:
                replica_put(node, key, newer)
            assert client.get(key, r=3).values == [b"new"]
    last = [scrape(node.http) for node in cluster.nodes]
    assert total(last, "dynafast_sibling_reads_total") > total(after, "dynafast_sibling_reads_total")
    assert total(last, "dynafast_read_repairs_total") >= 1
