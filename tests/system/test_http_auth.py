"""Users on the HTTP side of a real node: who may read which page, 401 and 403, and users added while it runs."""
import base64
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

from dynafast.testing.cluster import NodeProcess, NodeStartError, free_port, wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(180)]

CHALLENGE = 'Basic realm="dynafast"'


def user_cli(*args, password=None):
    env = {"DYNAFAST_PASSWORD": password} if password is not None else {}
    return subprocess.run([sys.executable, "-m", "dynafast.cli", "user", *args], capture_output=True, text=True,
                          timeout=60, env={**os.environ, **env})


def request(url, user=None, password=None, method="GET"):
    """(status, headers, body) of one request; errors are answers too."""
    req = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    if user is not None:
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        req.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as response:
            return response.status, response.headers, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read().decode()


def start_node(base, name, users_file, config_lines=()):
    http = f"127.0.0.1:{free_port()}"
    args = ["--http", http, "--n", "1", "--r", "1", "--w", "1", "--users-file", str(users_file)]
    if config_lines:
        config = base / f"{name}.toml"
        config.write_text("\n".join(config_lines) + "\n")
        args += ["--config", str(config)]
    proc = NodeProcess(name, base / name, args=args)
    proc.start()
    return proc, f"http://{http}"


@pytest.fixture(scope="module")
def users_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("users") / "users.json"
    assert user_cli("add", "root", "--role", "admin", "--users-file", str(path), password="root pw").returncode == 0
    assert user_cli("add", "viewer", "--role", "read", "--users-file", str(path), password="view pw").returncode == 0
    return path


@pytest.fixture(scope="module")
def node(tmp_path_factory, users_file):
    proc, url = start_node(tmp_path_factory.mktemp("node"), "a1", users_file)
    try:
        yield url
    finally:
        proc.stop()


def test_health_is_open(node):
    status, _, body = request(f"{node}/health")
    assert status == 200 and json.loads(body)["node"] == "a1"


@pytest.mark.parametrize("page", ["/status", "/", "/console/data", "/console/console.js"])
def test_pages_need_a_known_user(node, page):
    status, headers, _ = request(node + page)
    assert status == 401 and headers["WWW-Authenticate"] == CHALLENGE
    status, headers, _ = request(node + page, "viewer", "wrong pw")
    assert status == 401 and headers["WWW-Authenticate"] == CHALLENGE
    status, headers, _ = request(node + page, "nobody", "view pw")
    assert status == 401 and headers["WWW-Authenticate"] == CHALLENGE
    for _ in range(3):  # the first check is hashed, the next ones are remembered: same answer
        status, _, body = request(node + page, "viewer", "view pw")
        assert status == 200
    assert "a1" in body or page.endswith(".js")
    status, _, _ = request(node + page, "root", "root pw")
    assert status == 200


def test_malformed_credentials_are_refused(node):
    req = urllib.request.Request(f"{node}/status", headers={"Authorization": "Basic !!!not base64"})
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(req, timeout=10)
    assert info.value.code == 401
    req = urllib.request.Request(f"{node}/status", headers={"Authorization": "Bearer abc"})
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(req, timeout=10)
    assert info.value.code == 401


def test_antientropy_needs_admin(node):
    assert request(f"{node}/antientropy", method="POST")[0] == 401
    status, headers, _ = request(f"{node}/antientropy", "viewer", "view pw", method="POST")
    assert status == 403 and "WWW-Authenticate" not in headers
    status, _, body = request(f"{node}/antientropy", "root", "root pw", method="POST")
    assert status == 202 and "started" in json.loads(body)


def test_metrics_are_open_by_default(node):
    status, _, body = request(f"{node}/metrics")
    assert status == 200 and "dynafast_storage_keys" in body


def test_users_added_and_removed_while_the_node_runs(node, users_file):
    assert request(f"{node}/status", "late", "late pw")[0] == 401
    result = user_cli("add", "late", "--role", "read", "--users-file", str(users_file), password="late pw")
    assert result.returncode == 0, result.stderr
    assert request(f"{node}/status", "late", "late pw")[0] == 200
    # A password change and a removal end what the node remembered of the earlier check.
    result = user_cli("add", "late", "--role", "read", "--users-file", str(users_file), password="other pw")
    assert result.returncode == 0, result.stderr
    assert request(f"{node}/status", "late", "late pw")[0] == 401
    assert request(f"{node}/status", "late", "other pw")[0] == 200
    assert user_cli("remove", "late", "--users-file", str(users_file)).returncode == 0
    assert request(f"{node}/status", "late", "other pw")[0] == 401


def test_metrics_auth_protects_metrics(tmp_path, users_file):
    proc, url = start_node(tmp_path, "m1", users_file, ["metrics_auth = true"])
    try:
        status, headers, _ = request(f"{url}/metrics")
        assert status == 401 and headers["WWW-Authenticate"] == CHALLENGE
        assert request(f"{url}/metrics", "viewer", "wrong")[0] == 401
        status, _, body = request(f"{url}/metrics", "viewer", "view pw")
        assert status == 200 and "dynafast_storage_keys" in body
        assert request(f"{url}/health")[0] == 200
    finally:
        proc.stop()


@pytest.mark.parametrize("content", [None, "{broken"])
def test_a_missing_or_damaged_users_file_stops_the_start(tmp_path, content):
    path = tmp_path / "users.json"
    if content is not None:
        path.write_text(content)
    proc = NodeProcess("bad", tmp_path / "bad", args=["--users-file", str(path)], ready_timeout=30)
    with pytest.raises(NodeStartError) as info:
        proc.start()
    assert str(path) in info.value.stderr_tail
    wait_until(lambda: not proc.is_running(), timeout=30, message="the node exits")
    proc.stop()


def test_a_users_file_damaged_while_running_fails_closed(tmp_path, users_file):
    path = tmp_path / "users.json"
    path.write_bytes(users_file.read_bytes())
    proc, url = start_node(tmp_path, "d1", path)
    try:
        assert request(f"{url}/status", "viewer", "view pw")[0] == 200
        path.write_text("{damaged")
        assert request(f"{url}/status", "viewer", "view pw")[0] == 500  # even though that check was remembered
        assert request(f"{url}/status")[0] == 401
        assert request(f"{url}/health")[0] == 200
        path.write_bytes(users_file.read_bytes())
        assert request(f"{url}/status", "viewer", "view pw")[0] == 200
    finally:
        proc.stop()
    assert str(path) in proc.output()
