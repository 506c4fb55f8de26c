"""The load tool against real servers: a Redis server and a dynafast node, with the report they produce."""
import json
import shutil
import socket
import subprocess
import time

import pytest

from dynafast.bench import runner as bench
from dynafast.testing.cluster import free_port

REPORT_KEYS = {"target", "address", "workload", "clients", "procs", "duration_s", "records", "value_size",
               "load", "elapsed_s", "operations", "overall", "server_cpu"}
SUMMARY_KEYS = {"count", "ops_per_s", "mean_us", "p50_us", "p99_us", "p999_us", "max_us", "errors"}


# ---------------------------------------------------------------- a real Redis server


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not on PATH")
    pytest.importorskip("redis")
    port = free_port()
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(tmp_path_factory.mktemp("redis"))],
        stdout=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    pytest.fail("redis-server did not start")
                time.sleep(0.05)
        yield proc.pid, f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_run_against_redis_json_report(redis_server, capsys):
    import redis

    pid, address = redis_server
    host, port = address.split(":")
    redis.Redis(host=host, port=int(port)).flushall()
    code = bench.main(["--target", "redis", "--redis", address, "--workload", "a", "--duration", "1",
                       "--clients", "4", "--records", "200", "--value-size", "64", "--json",
                       "--server-pids", str(pid), "--seed", "1"])
    out = capsys.readouterr().out
    assert code == 0
    report = json.loads(out)
    assert set(report) == REPORT_KEYS
    assert set(report["operations"]) == {"read", "update"}
    for summary in list(report["operations"].values()) + [report["overall"]]:
        assert set(summary) == SUMMARY_KEYS
        assert summary["count"] > 0
        assert summary["p50_us"] <= summary["p99_us"] <= summary["p999_us"] <= summary["max_us"]
    assert report["overall"]["count"] == sum(s["count"] for s in report["operations"].values())
    assert report["overall"]["errors"] == 0
    assert report["load"]["count"] == 200 and report["load"]["errors"] == {}
    assert report["server_cpu"]["pids"] == [pid] and report["server_cpu"]["us_per_op"] > 0
    r = redis.Redis(host=host, port=int(port))
    assert r.dbsize() == 200  # the load phase wrote every record, and the run touched no other key
    assert len(r.get(bench.record_key(0))) == 64


def test_run_against_redis_two_processes_workload_f(redis_server, capsys):
    pid, address = redis_server
    code = bench.main(["--target", "redis", "--redis", address, "--workload", "f", "--duration", "1",
                       "--clients", "4", "--procs", "2", "--records", "200", "--no-load", "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0
    assert "in 2 process(es)" in out
    lines = {line.split()[0]: line.split() for line in out.splitlines() if line and line.split()[0] in
             ("read", "rmw", "overall")}
    assert set(lines) == {"read", "rmw", "overall"}
    assert int(lines["overall"][1].replace(",", "")) > 0
    assert lines["overall"][-1] == "0"  # no errors


# ---------------------------------------------------------------- a real dynafast node


@pytest.mark.cluster
@pytest.mark.parametrize("workload", ["a", "f"])
def test_run_against_a_dynafast_node(workload, tmp_path, capsys):
    from dynafast.testing.cluster import LocalCluster, NodeStartError

    cluster = LocalCluster(1, base_dir=tmp_path, n=1, r=1, w=1, partitions=8)
    try:
        cluster.start()
    except NodeStartError as exc:
        # The node's own tests own its start-up; this test is about the load tool's dynafast target.
        pytest.skip(f"the dynafast node does not serve: {str(exc).splitlines()[0]}")
    try:
        pid = cluster.nodes[0].pid
        code = bench.main(["--cluster", cluster.addresses[0], "--workload", workload, "--duration", "1",
                           "--clients", "4", "--records", "100", "--json", "--server-pids", str(pid)])
    finally:
        cluster.stop()
    report = json.loads(capsys.readouterr().out)
    assert code == 0
    assert report["target"] == "dynafast"
    assert report["load"]["count"] == 100 and report["load"]["errors"] == {}
    assert set(report["operations"]) == set(bench.WORKLOADS[workload])
    assert all(s["count"] > 0 and s["errors"] == {} for s in report["operations"].values())
    assert report["server_cpu"]["pids"] == [pid]


@pytest.mark.cluster
def test_report_has_the_table_and_both_plots(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    import base64
    import re

    from dynafast.testing.cluster import LocalCluster

    out = tmp_path / "out.html"
    with LocalCluster(1, base_dir=tmp_path / "c", n=1, r=1, w=1, partitions=8) as cluster:
        code = bench.main(["--cluster", cluster.addresses[0], "--duration", "2", "--clients", "4", "--records",
                           "100", "--procs", "2", "--json", "--report", str(out)])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    # Per second of the run: what was done, and its latency.
    assert 2 <= len(report["timeline"]) <= 3
    assert sum(row["count"] for row in report["timeline"]) == report["overall"]["count"]
    assert all(row["p50_us"] <= row["p99_us"] <= row["max_us"] for row in report["timeline"] if row["count"])
    curve = report["percentiles"]["overall"]
    assert curve[0][0] < 51 and curve[-1] == [100.0, report["overall"]["max_us"]]
    assert [p for p, _ in curve] == sorted(p for p, _ in curve)
    page = out.read_text()
    assert page.startswith("<!doctype html>") and "<script" not in page and "http" not in page.split("<body>")[1]
    assert '<table id="summary">' in page and "<td>overall</td>" in page
    for plot in ("latency-over-time", "percentiles"):
        found = re.search(f'<img id="{plot}" alt="[^"]+" src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
        assert found, plot
        png = base64.b64decode(found.group(1))
        assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 5000
