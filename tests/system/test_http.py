"""The node's HTTP side, served by a real node process."""
import json
import urllib.request

import pytest

from dynafast import Client
from dynafast.testing.cluster import NodeProcess, free_port

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(120)]


def fetch(url):
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.status, response.headers.get("Content-Type", ""), response.read().decode()


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    base = tmp_path_factory.mktemp("http")
    http = f"127.0.0.1:{free_port()}"
    proc = NodeProcess("h1", base / "h1", args=["--http", http, "--n", "1", "--r", "1", "--w", "1"])
    proc.start()
    try:
        yield proc, http
    finally:
        proc.stop()


def test_health_status_metrics_and_console(node):
    proc, http = node
    with Client([proc.address]) as client:
        client.put(b"k", b"v")
    status, _, body = fetch(f"http://{http}/health")
    assert status == 200 and json.loads(body)["node"] == "h1"

    status, content_type, body = fetch(f"http://{http}/status")
    data = json.loads(body)
    assert content_type.startswith("application/json")
    assert data["members"][0]["id"] == "h1" and data["members"][0]["state"] == "up"
    assert data["partitions"] == 64 and data["n"] == 1
    assert data["members"][0]["partitions"] == 64

    status, content_type, body = fetch(f"http://{http}/metrics")
    assert content_type.startswith("text/plain")
    keys = [line for line in body.splitlines() if line.startswith("dynafast_storage_keys{")]
    assert keys and float(keys[0].rsplit(" ", 1)[1]) >= 1
    puts = [line for line in body.splitlines() if line.startswith('dynafast_requests_total{node="h1",op="put"}')]
    assert puts and float(puts[0].rsplit(" ", 1)[1]) >= 1
    assert 'dynafast_request_seconds_bucket{le="+Inf",node="h1",op="put"}' in body

    status, content_type, body = fetch(f"http://{http}/")
    assert content_type.startswith("text/html") and "served by node h1" in body
    # The page's script and style come from the node itself (the console works offline).
    assert 'src="/console/console.js"' in body and 'href="/console/console.css"' in body
    status, content_type, body = fetch(f"http://{http}/console/console.js")
    assert content_type.startswith("application/javascript") and "/console/data" in body
    status, content_type, body = fetch(f"http://{http}/console/console.css")
    assert content_type.startswith("text/css")
    status, content_type, body = fetch(f"http://{http}/console/data")
    data = json.loads(body)
    assert data["node"] == "h1" and [n["id"] for n in data["nodes"]] == ["h1"] and data["nodes"][0]["reachable"]


def test_status_verb_matches_the_interface(node):
    proc, _ = node
    with Client([proc.address]) as client:
        status = client.status()
    for member in status["members"]:
        assert set(member) >= {"id", "address", "state", "partitions"}
        assert member["state"] in ("up", "down", "joining", "leaving")
    assert {"members", "partitions", "n"} <= set(status)
