"""The console, served by real nodes and looked at in a real browser (headless Chromium driven by playwright).

Three nodes with HTTP and a fourth joining under a slow transfer throttle (so transfers are on screen): every
section renders, the throughput figures move while a load runs, and a killed node turns red. Screenshots go to the
test's tmp dir; with DYNAFAST_CONSOLE_SCREENSHOT=PATH the one with the killed node is also copied there (that is
how docs/console.png is made).
"""
from __future__ import annotations

import json
import os
import shutil
import threading
import urllib.request

import pytest

from dynafast import Client
from dynafast.errors import DynafastError
from dynafast.testing import LocalCluster
from dynafast.testing.cluster import free_port

from test_cluster import wait_for, wait_members

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(120)]

PARTITIONS = 64


def fetch_json(url):
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.headers.get("Content-Type", "").startswith("application/json")
        return json.loads(response.read())


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    base = tmp_path_factory.mktemp("console")
    config = base / "node.toml"
    # Transfers to a joining node crawl, so the page shows them in progress.
    config.write_text("transfer_bytes_per_second = 100000\n")
    c = LocalCluster(3, base_dir=base / "c", partitions=PARTITIONS, extra_args=["--config", str(config)])
    c.http = {}
    for node in c.nodes:
        c.http[node.node_id] = f"http://127.0.0.1:{free_port()}"
        node.args = [*node.args, "--http", c.http[node.node_id][len("http://"):]]
    with c:
        with Client(c.addresses, timeout=10.0) as client:
            wait_members(client, 3)
        c.shots = base / "screenshots"
        c.shots.mkdir()
        yield c


def test_console_data_has_every_members_view(cluster):
    with Client(cluster.addresses, timeout=10.0) as client:
        for i in range(20):
            client.put(b"shape%d" % i, b"v")
    # Asked of n2: its own view first, then the others it gathered over the native protocol.
    data = fetch_json(cluster.http["n2"] + "/console/data")
    assert data["node"] == "n2" and data["config"]["partitions"] == PARTITIONS
    assert [n["id"] for n in data["nodes"]][0] == "n2"
    assert sorted(n["id"] for n in data["nodes"]) == ["n1", "n2", "n3"]
    assert sorted(m["id"] for m in data["members"]) == ["n1", "n2", "n3"]
    ring = data["ring"]
    assert len(ring["replicas"]) == PARTITIONS and all(len(set(r)) == 3 for r in ring["replicas"])
    assert sorted(ring["nodes"]) == ["n1", "n2", "n3"] and ring["moving"] == []
    for node in data["nodes"]:
        assert node["reachable"] and node["error"] is None
        status = node["status"]
        assert status["node"] == node["id"]
        recent = status["recent"]
        assert recent["fields"] == ["time", "ops", "errors", "p50_ms", "p99_ms", "max_ms"]
        assert all(len(slot) == 6 for slot in recent["slots"]) and isinstance(recent["events"], list)
        assert isinstance(status["hints_pending"], dict)
        assert {"exchanges", "keys_repaired", "partitions_exchanged", "last_exchange_age"} <= set(status["antientropy"])
        assert {"in_progress", "pending_cluster_wide", "completed"} <= set(status["transfers"])
        assert {"keys", "live_bytes", "dead_bytes", "disk_bytes"} <= set(status["storage"])
    # The slots fill once a second: the puts above show up in some node's last minute.
    assert wait_for(lambda: any(slot[1] > 0 for n in fetch_json(cluster.http["n2"] + "/console/data")["nodes"]
                                for slot in n["status"]["recent"]["slots"]), timeout=15)


def _browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the console's browser test needs the playwright package (pip install playwright)")
    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    if executable is None:
        pytest.skip("the console's browser test needs Chromium (apt-get install chromium)")
    return sync_playwright, executable


class Load:
    """Writes from a thread until stopped (errors while a node dies are expected and counted)."""

    def __init__(self, addresses):
        self.addresses = addresses
        self.stop = threading.Event()
        self.done = 0
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        with Client(self.addresses, timeout=3.0) as client:
            i = 0
            while not self.stop.is_set():
                try:
                    client.put(b"load%d" % (i % 2000), b"x" * 2000)
                    self.done += 1
                except DynafastError:
                    pass
                i += 1

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(15)


def test_console_in_a_browser(cluster):
    sync_playwright, executable = _browser()
    errors = []
    with sync_playwright() as p, Load(cluster.addresses) as load:
        browser = p.chromium.launch(executable_path=executable)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(cluster.http["n1"] + "/")

            def polls():
                return int(page.get_attribute("body", "data-polls") or 0)

            page.wait_for_function("Number(document.body.dataset.polls) >= 1", timeout=15_000)
            # Every section is there and filled.
            assert page.locator("#members tbody tr[data-node]").count() == 3
            assert page.locator("#members tbody tr.up").count() == 3
            assert page.locator("#ring-map path[data-partition]").count() == PARTITIONS * 3
            assert page.locator("#storage tbody tr[data-node]").count() == 3
            assert page.locator("#antientropy tbody tr[data-node]").count() == 3
            for section in ("#throughput canvas", "#latency canvas", "#hints tbody tr", "#transfers tbody tr",
                            "#errors tbody tr", "#legend-ops [data-node]", "#legend-latency [data-node]"):
                assert page.locator(section).count() >= 1, section
            assert "ops/s" in page.inner_text("#legend-ops")

            # The throughput figures move under load: they differ between two polls and are not all zero.
            def ops_figures():
                return [page.inner_text(f'#legend-ops [data-node="{n}"] .value') for n in ("n1", "n2", "n3")]

            seen = []

            def moved():
                before = polls()
                page.wait_for_function(f"Number(document.body.dataset.polls) > {before}", timeout=10_000)
                seen.append(ops_figures())
                busy = [f for f in seen[-1] if f.endswith(" ops/s") and f != "0 ops/s"]
                return len(seen) >= 2 and seen[-1] != seen[-2] and busy

            assert wait_for(moved, timeout=30), f"the throughput figures did not move: {seen}"
            assert load.done > 0

            # A node joins: its transfers show, and the ring marks the partitions on the move.
            cluster.add_node()
            page.wait_for_function(
                "document.querySelectorAll('#ring-map path[data-moving]').length > 0"
                " && document.querySelectorAll('#transfers tbody tr[data-partition]').length > 0",
                timeout=20_000)
            page.screenshot(path=str(cluster.shots / "joining.png"), full_page=True)

            # A killed node turns red.
            cluster.node("n3").kill()
            page.wait_for_selector('#members tbody tr[data-node="n3"].down', timeout=20_000)
            assert page.locator("#members tbody tr.down").count() == 1
            assert "n3" in page.inner_text("#errors tbody")
            page.screenshot(path=str(cluster.shots / "node-down.png"), full_page=True)
            target = os.environ.get("DYNAFAST_CONSOLE_SCREENSHOT")
            if target:
                shutil.copyfile(cluster.shots / "node-down.png", target)
        finally:
            browser.close()
    assert not errors, errors
    assert (cluster.shots / "node-down.png").stat().st_size > 10_000
