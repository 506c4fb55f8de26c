"""The HTTP key-value API (/kv) on real node processes, through aiohttp's client and curl."""
import asyncio
import base64
import json
import os
import shutil
import subprocess
import sys
import time
from urllib.parse import quote, unquote_to_bytes

import aiohttp
import pytest

from dynafast import Client
from dynafast.testing import LocalCluster
from dynafast.testing.cluster import NodeProcess, free_port

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(240)]

CONTEXT = "X-Dynafast-Context"
MAX_VALUE = 4096


def b64(text):
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def wait_members(client, count, timeout=60.0):
    import time
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            members = client.status()["members"]
            if sum(m["state"] == "up" for m in members) == count:
                return
        except Exception:  # noqa: BLE001 - a node still starting
            pass
        time.sleep(0.2)
    raise AssertionError(f"{count} members not up within {timeout} s")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """3 nodes, n=2 (so no node holds every partition: scans read peers), each with HTTP."""
    base = tmp_path_factory.mktemp("httpkv")
    config = base / "node.toml"
    config.write_text(f"max_value_size = {MAX_VALUE}\nmax_key_size = 512\n")
    c = LocalCluster(3, base_dir=base / "c", n=2, r=1, w=2, extra_args=["--config", str(config)])
    c.http = {}
    for node in c.nodes:
        c.http[node.node_id] = f"http://127.0.0.1:{free_port()}"
        node.args = [*node.args, "--http", c.http[node.node_id][len("http://"):]]
    with c:
        with Client(c.addresses, timeout=10.0) as client:
            wait_members(client, 3)
        yield c


def run(coro):
    return asyncio.run(coro)


async def call(method, url, **kwargs):
    """(status, headers, body bytes) of one request."""
    async with aiohttp.ClientSession() as session:
        async with session.request(method, url, allow_redirects=False, **kwargs) as response:
            return response.status, response.headers, await response.read()


async def siblings_of(url):
    """The 300 answer's parts, read with aiohttp's multipart reader."""
    async with aiohttp.ClientSession() as session:
        async with session.get(url) as response:
            assert response.status == 300
            assert response.headers["Content-Type"].startswith("multipart/mixed")
            reader = aiohttp.MultipartReader.from_response(response)
            parts = []
            while (part := await reader.next()) is not None:
                parts.append(await part.read())
            return parts, response.headers[CONTEXT]


def test_put_get_delete_with_bytes_keys(cluster):
    key = b"user/1 \xff%"
    url = cluster.http["n1"] + "/kv/" + quote(key, safe="")
    status, _, _ = run(call("PUT", url, data=b"\x00value"))
    assert status == 204
    with Client(cluster.addresses) as client:  # the path's percent-decoded bytes are the key
        assert client.get(key).values == [b"\x00value"]
    for node in ("n1", "n2", "n3"):
        status, headers, body = run(call("GET", cluster.http[node] + "/kv/" + quote(key, safe="")))
        assert status == 200 and body == b"\x00value"
        assert headers["Content-Type"] == "application/octet-stream" and headers[CONTEXT]
    status, headers, body = run(call("GET", url, headers={"Accept": "application/json"}))
    assert status == 200 and [b64(v) for v in json.loads(body)["values"]] == [b"\x00value"]
    status, _, _ = run(call("DELETE", url))
    assert status == 204
    status, headers, body = run(call("GET", url))
    assert status == 404 and json.loads(body)["error"] == "not_found"
    assert headers["Content-Type"].startswith("application/json")


def test_siblings_as_multipart_and_json_then_resolved_with_the_context(cluster):
    url = cluster.http["n2"] + "/kv/sib"
    assert run(call("PUT", url, data=b"one"))[0] == 204
    assert run(call("PUT", cluster.http["n3"] + "/kv/sib", data=b"two"))[0] == 204  # blind: a sibling
    parts, context = run(siblings_of(url))
    assert sorted(parts) == [b"one", b"two"]
    status, headers, body = run(call("GET", url, headers={"Accept": "application/json"}))
    answer = json.loads(body)
    assert status == 300 and sorted(b64(v) for v in answer["values"]) == [b"one", b"two"]
    assert answer["context"] == headers[CONTEXT] == context
    # The context round trip: a write naming it replaces both siblings.
    assert run(call("PUT", url, data=b"merged", headers={CONTEXT: context}))[0] == 204
    status, _, body = run(call("GET", url))
    assert status == 200 and body == b"merged"
    with Client(cluster.addresses) as client:
        assert client.get(b"sib").values == [b"merged"]


def test_lww_replaces_what_the_node_reads_and_delete_with_a_context(cluster):
    url = cluster.http["n1"] + "/kv/lww"
    run(call("PUT", url, data=b"a"))
    run(call("PUT", url, data=b"b"))
    assert run(call("PUT", url + "?lww=true&w=2&dw=1&timeout=5000&r=2", data=b"c"))[0] == 204
    status, headers, body = run(call("GET", url + "?r=2"))
    assert status == 200 and body == b"c"
    assert run(call("DELETE", url + "?w=2", headers={CONTEXT: headers[CONTEXT]}))[0] == 204
    assert run(call("GET", url))[0] == 404


def test_if_match_and_if_none_match(cluster):
    url = cluster.http["n3"] + "/kv/cas"
    assert run(call("PUT", url, data=b"v1", headers={"If-None-Match": "*"}))[0] == 204
    status, headers, body = run(call("PUT", url, data=b"again", headers={"If-None-Match": "*"}))
    assert status == 412 and json.loads(body)["error"] == "condition_failed"
    status, headers, _ = run(call("GET", url))
    first = headers[CONTEXT]
    assert headers["ETag"] == f'"{first}"'
    status, headers, _ = run(call("PUT", url, data=b"v2", headers={"If-Match": f'"{first}"'}))
    assert status == 204 and headers[CONTEXT] != first
    second = headers[CONTEXT]
    # The old context no longer matches: 412 with the current context, and nothing written.
    status, headers, body = run(call("PUT", url, data=b"v3", headers={"If-Match": first}))
    assert status == 412 and headers[CONTEXT] == second
    answer = json.loads(body)
    assert answer["context"] == second and [b64(v) for v in answer["values"]] == [b"v2"]
    assert run(call("GET", url))[2] == b"v2"
    # A conditional delete.
    assert run(call("DELETE", url, headers={"If-Match": first}))[0] == 412
    assert run(call("DELETE", url, headers={"If-Match": second}))[0] == 204
    assert run(call("GET", url))[0] == 404
    status, _, body = run(call("PUT", url, data=b"x", headers={"If-Match": second}, params={"w": "2"}))
    assert status == 400 and json.loads(body)["error"] == "bad_parameter"


@pytest.mark.parametrize("method,path,kwargs,status,error", [
    ("PUT", "/kv/big", {"data": b"x" * (MAX_VALUE + 1)}, 413, "value_too_large"),
    ("PUT", "/kv/k", {"data": b"v", "headers": {CONTEXT: "not base64!"}}, 400, "bad_context"),
    ("PUT", "/kv/k", {"data": b"v", "headers": {CONTEXT: "AAAA"}}, 400, "bad_context"),
    ("PUT", "/kv/k", {"data": b"v", "headers": {"If-Match": "*"}}, 400, "bad_precondition"),
    ("GET", "/kv/" + "k" * 513, {}, 400, "key_too_large"),
    ("GET", "/kv/k?r=many", {}, 400, "bad_parameter"),
    ("GET", "/kv/k?r=7", {}, 400, "bad_request"),
    ("GET", "/kv/k?colour=red", {}, 400, "bad_parameter"),
    ("PUT", "/kv/k?r=2", {"data": b"v"}, 400, "bad_parameter"),  # r is an lww put's (its read)
    ("PUT", "/kv/k?lww=true&r=3", {"data": b"v"}, 400, "bad_request"),  # more than the n=2 replicas
    ("GET", "/kv?cursor=AAAA", {}, 400, "bad_cursor"),
])
def test_errors_are_json_with_their_status(cluster, method, path, kwargs, status, error):
    got, headers, body = run(call(method, cluster.http["n1"] + path, **kwargs))
    assert got == status, body
    assert headers["Content-Type"].startswith("application/json")
    assert json.loads(body)["error"] == error


def test_ttl_plain_and_conditional(cluster):
    base = cluster.http["n1"] + "/kv/"
    assert run(call("PUT", base + "ttl?ttl=soon", data=b"v"))[0] == 400
    assert run(call("PUT", base + "ttl?ttl=30", data=b"v"))[0] == 204
    assert run(call("GET", cluster.http["n2"] + "/kv/ttl"))[2] == b"v"
    # A conditional write carries a TTL too: create-only with If-None-Match, then a replace with If-Match.
    status, headers, _ = run(call("PUT", base + "ttl-cas?ttl=30", data=b"first", headers={"If-None-Match": "*"}))
    assert status == 204
    with Client(cluster.addresses) as client:
        assert 25 < client.ttl(b"ttl-cas") <= 30
        assert run(call("PUT", base + "ttl-cas?ttl=30", data=b"x", headers={"If-None-Match": "*"}))[0] == 412
        status, _, _ = run(call("PUT", base + "ttl-cas?ttl=0.5", data=b"second",
                                headers={"If-Match": headers[CONTEXT]}))
        assert status == 204 and client.get(b"ttl-cas").value == b"second"
        deadline = time.monotonic() + 20
        while run(call("GET", cluster.http["n3"] + "/kv/ttl-cas"))[0] != 404 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert run(call("GET", cluster.http["n3"] + "/kv/ttl-cas"))[0] == 404
        # Expired is absent: create-only succeeds over it.
        assert run(call("PUT", base + "ttl-cas", data=b"third", headers={"If-None-Match": "*"}))[0] == 204
        assert client.ttl(b"ttl-cas") is None


def scan(base, **params):
    """Every line of one streamed scan: (items, last line)."""
    async def go():
        async with aiohttp.ClientSession() as session:
            async with session.get(base + "/kv", params={k: str(v) for k, v in params.items()}) as response:
                assert response.status == 200
                assert response.headers["Content-Type"] == "application/x-ndjson"
                lines = [json.loads(line) async for line in response.content]
        return lines[:-1], lines[-1]
    return run(go())


def scan_pages(cluster):
    total = 0
    for node in ("n1", "n2", "n3"):
        status, _, body = run(call("GET", cluster.http[node] + "/status"))
        total += json.loads(body)["scans"]["pages"]
    return total


def test_scans_with_prefix_limit_and_cursor_across_nodes(cluster):
    with Client(cluster.addresses) as client:
        expected = {b"scan:%03d" % i: b"v%d" % i for i in range(250)}
        assert all(e is None for e in client.put_many(list(expected.items()), w=2).values())
        client.put(b"other", b"x")
        served_before = {node: json.loads(run(call("GET", cluster.http[node] + "/status"))[2])["scans"]["pages"]
                         for node in ("n1", "n2", "n3")}
    seen = {}
    cursor = None
    for _ in range(10):
        params = {"prefix": "scan:", "limit": 100, "values": "true"}
        if cursor is not None:
            params["cursor"] = cursor
        items, last = scan(cluster.http["n1"], **params)
        assert len(items) <= 100 and last["count"] == len(items)
        for item in items:
            key = unquote_to_bytes(item["key"])
            assert key not in seen
            seen[key] = [b64(v) for v in item["values"]]
            assert item["context"]
        cursor = last["cursor"]
        if cursor is None:
            break
    assert seen == {k: [v] for k, v in expected.items()}
    # n1 holds about 2/3 of the partitions: the rest came from its peers' SCAN_PAGE.
    served = {node: json.loads(run(call("GET", cluster.http[node] + "/status"))[2])["scans"]["pages"]
              for node in ("n1", "n2", "n3")}
    assert any(served[node] > served_before[node] for node in ("n2", "n3"))
    # Keys alone, and percent-encoded so that they can be named in /kv/{key}.
    items, last = scan(cluster.http["n2"], prefix="scan:00")
    assert sorted(item["key"] for item in items) == [f"scan:00{i}" for i in range(10)]
    assert "values" not in items[0] and last == {"cursor": None, "count": 10}


def test_curl(cluster):
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl is not installed")
    base = cluster.http["n2"] + "/kv"

    def do(*args):
        out = subprocess.run([curl, "-s", "-D", "-", *args], capture_output=True, timeout=60)
        head, _, body = out.stdout.partition(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        headers = {k.lower(): v for k, _, v in (line.partition(": ") for line in lines[1:])}
        return int(lines[0].split()[1]), headers, body

    status, _, _ = do("-X", "PUT", "--data-binary", "from curl", f"{base}/curl%20key")
    assert status == 204
    status, headers, body = do(f"{base}/curl%20key")
    assert status == 200 and body == b"from curl"
    context = headers[CONTEXT.lower()]
    status, headers, body = do("-X", "PUT", "--data-binary", "lost", "-H", "If-Match: AQ", f"{base}/curl%20key")
    assert status == 400
    status, headers, _ = do("-X", "PUT", "--data-binary", "second", "-H", f"If-Match: {context}",
                            f"{base}/curl%20key")
    assert status == 204
    status, headers, body = do("-X", "PUT", "--data-binary", "late", "-H", f"If-Match: {context}",
                               f"{base}/curl%20key")
    assert status == 412 and json.loads(body)["error"] == "condition_failed"
    do("-X", "PUT", "--data-binary", "sibling", f"{base}/curl%20key")
    status, headers, body = do(f"{base}/curl%20key")
    assert status == 300 and headers["content-type"].startswith("multipart/mixed")
    assert b"second" in body and b"sibling" in body
    status, _, body = do("-H", "Accept: application/json", f"{base}/curl%20key")
    assert status == 300 and sorted(b64(v) for v in json.loads(body)["values"]) == [b"second", b"sibling"]
    status, _, body = do(f"{base}?prefix=curl")
    assert status == 200 and json.loads(body.splitlines()[0])["key"] == "curl%20key"
    assert do("-X", "DELETE", f"{base}/curl%20key")[0] == 204
    assert do(f"{base}/curl%20key")[0] == 404
    status, _, body = do("-X", "PUT", "--data-binary", "x" * (MAX_VALUE + 10), f"{base}/big")
    assert status == 413 and json.loads(body)["error"] == "value_too_large"


def test_quorum_not_met_is_503(cluster):
    """Last in this module: it stops two of the three nodes."""
    cluster.node("n2").stop()
    cluster.node("n3").stop()
    status, _, body = run(call("PUT", cluster.http["n1"] + "/kv/q?w=2&timeout=3000", data=b"v"))
    answer = json.loads(body)
    assert (status, answer["error"]) in ((503, "quorum_not_met"), (503, "unavailable"), (504, "timeout")), answer


# -- users ---------------------------------------------------------------------------------------------------
def user_cli(*args, password):
    return subprocess.run([sys.executable, "-m", "dynafast.cli", "user", *args], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "DYNAFAST_PASSWORD": password})


def basic(user, password):
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_users_and_roles(tmp_path):
    users = tmp_path / "users.json"
    assert user_cli("add", "writer", "--role", "readwrite", "--users-file", str(users), password="w pw").returncode == 0
    assert user_cli("add", "viewer", "--role", "read", "--users-file", str(users), password="v pw").returncode == 0
    http = f"127.0.0.1:{free_port()}"
    proc = NodeProcess("u1", tmp_path / "u1", args=["--http", http, "--n", "1", "--r", "1", "--w", "1",
                                                     "--users-file", str(users)])
    proc.start()
    try:
        url = f"http://{http}/kv/secret"
        writer, viewer = basic("writer", "w pw"), basic("viewer", "v pw")
        status, headers, body = run(call("GET", url))
        assert status == 401 and headers["WWW-Authenticate"] == 'Basic realm="dynafast"'
        assert json.loads(body)["error"] == "unauthorized"
        assert run(call("GET", url, headers=basic("viewer", "wrong")))[0] == 401
        status, _, body = run(call("PUT", url, data=b"v", headers=viewer))
        assert status == 403 and json.loads(body)["error"] == "forbidden"
        assert run(call("DELETE", url, headers=viewer))[0] == 403
        assert run(call("PUT", url, data=b"v", headers=writer))[0] == 204
        status, _, body = run(call("GET", url, headers=viewer))
        assert status == 200 and body == b"v"
        assert run(call("GET", f"http://{http}/kv", headers=viewer))[0] == 200
        assert run(call("GET", f"http://{http}/kv"))[0] == 401
        assert run(call("DELETE", url, headers=writer))[0] == 204
    finally:
        proc.stop()
