"""The command line as a user runs it: `dynafast local`, the client verbs, exit codes."""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from dynafast.testing.cluster import free_port

pytestmark = pytest.mark.timeout(120)


def run(*args, timeout=30, env=None):
    return subprocess.run([sys.executable, "-m", "dynafast.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def start_local(data_dir, *extra, base=None):
    """``dynafast local`` on 3 consecutive free ports: (process, its output up to "Ctrl-C stops", base port).
    No RESP listeners unless ``extra`` asks (their default ports, base minus 1000, were not checked free)."""
    base = consecutive_ports(3) if base is None else base
    resp = [] if "--resp-base-port" in extra else ["--resp-base-port", "0"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "dynafast.cli", "local", "--nodes", "3", "--base-port", str(base),
         "--http-base-port", "0", "--data-dir", str(data_dir), *resp, *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )
    deadline = time.monotonic() + 60
    lines = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if "Ctrl-C stops" in line:
            break
    return proc, lines, base


def stop_local(proc, pids):
    proc.send_signal(signal.SIGINT)
    assert proc.wait(30) == 0
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def kill_local(proc, data_dir, lines=()):
    """However a test ended: stop ``dynafast local`` and every node it started (by PID, checking each is a node
    of ``data_dir`` first), so that no process outlives the test."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    pids = {int(line.split("pid")[1].split()[0]) for line in lines if " pid " in line}
    try:
        pids |= {node["pid"] for node in json.loads((data_dir / "local.json").read_text())["nodes"].values()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass
    for pid in pids:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if str(data_dir).encode() not in f.read():
                    continue  # not ours (any more)
            os.kill(pid, signal.SIGKILL)
        except (FileNotFoundError, ProcessLookupError):
            pass


def consecutive_ports(count):
    for _ in range(50):
        base = free_port()
        socks = []
        try:
            for i in range(count):
                s = socket.socket()
                s.bind(("127.0.0.1", base + i))
                socks.append(s)
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no consecutive free ports")


def test_help_lists_every_verb():
    result = run("--help")
    assert result.returncode == 0
    for verb in ("node", "local", "put", "get", "delete", "status", "leave", "user", "bench"):
        assert verb in result.stdout
    for verb in ("node", "local", "put", "get", "delete", "status", "leave", "user", "bench"):
        assert run(verb, "--help").returncode == 0


def test_other_verbs_do_not_import_the_load_tool():
    # The load tool's package and its histogram and array libraries cost a third of a second per command.
    check = ("import sys; from dynafast.cli import build_parser; build_parser().parse_args(['get', 'k']); "
             "print(sorted(m for m in ('dynafast.bench', 'hdrh', 'numpy', 'tqdm') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_bench_without_its_extra_says_how_to_install_it():
    # None in sys.modules makes an import fail as a missing package does.
    script = ("import sys; sys.modules['hdrh'] = None; from dynafast.cli import main; "
              "sys.exit(main(['bench', '--cluster', '127.0.0.1:1']))")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "pip install 'dynafast[bench]'" in result.stderr


def test_bench_options_reach_the_load_tool():
    result = run("bench", "--workload", "e")
    assert result.returncode == 2 and "dynafast bench: error: argument --workload" in result.stderr
    assert run("get", "k", "--workload", "a").returncode == 2  # other verbs still reject unknown options


def test_client_verb_against_nothing_fails_with_one_line():
    port = free_port()
    result = run("get", "k", "--cluster", f"127.0.0.1:{port}", "--timeout", "1")
    assert result.returncode != 0
    assert result.stderr.strip().count("\n") == 0
    assert "error" in result.stderr


def test_bad_config_is_a_clear_error(tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text("no_such_option = 1\n")
    result = run("node", "--config", str(config), "--data-dir", str(tmp_path / "d"))
    assert result.returncode != 0
    assert "no_such_option" in result.stderr


def test_local_cluster_serves_the_client_verbs_and_stops(tmp_path):
    proc, lines, base = start_local(tmp_path / "data")
    try:
        assert any("Ctrl-C stops" in line for line in lines), "".join(lines) + proc.stderr.read()
        pids = [int(line.split("pid")[1].split()[0]) for line in lines if " pid " in line]
        assert len(pids) == 3
        cluster = f"127.0.0.1:{base}"

        def status_up():
            result = run("status", "--cluster", cluster, "--json")
            if result.returncode != 0:
                return False
            members = json.loads(result.stdout)["members"]
            return len(members) == 3 and all(m["state"] == "up" for m in members)

        for _ in range(100):
            if status_up():
                break
            time.sleep(0.2)
        assert status_up()
        assert run("put", "greeting", "hello", "--cluster", cluster).returncode == 0
        assert run("put", "greeting", "hello again", "--cluster", cluster).returncode == 0
        got = run("get", "greeting", "--cluster", f"127.0.0.1:{base + 1}")
        assert got.returncode == 0 and got.stdout == "hello again\n"
        assert run("delete", "greeting", "--cluster", cluster).returncode == 0
        missing = run("get", "greeting", "--cluster", cluster)
        assert missing.returncode == 1 and "not found" in missing.stderr
        table = run("status", "--cluster", cluster)
        assert table.returncode == 0 and "n3" in table.stdout
        # Its nodes prove a secret kept with their data to each other: an outsider is no peer.
        secret = tmp_path / "data" / "secret"
        assert secret.stat().st_mode & 0o777 == 0o600
        assert json.loads(run("status", "--cluster", cluster, "--json").stdout)["security"]["peer_secret"]
        stop_local(proc, pids)
    finally:
        kill_local(proc, tmp_path / "data", lines)


def test_local_cluster_with_users_needs_a_login(tmp_path):
    proc, lines, base = start_local(tmp_path / "data", "--users")
    try:
        text = "".join(lines)
        assert "Ctrl-C stops" in text, text + proc.stderr.read()
        pids = [int(line.split("pid")[1].split()[0]) for line in lines if " pid " in line]
        password = next(line for line in lines if "DYNAFAST_PASSWORD=" in line).split("'")[1]
        cluster = f"127.0.0.1:{base}"
        anonymous = run("put", "k", "v", "--cluster", cluster)
        assert anonymous.returncode == 1 and "needs a login" in anonymous.stderr
        admin = {"DYNAFAST_PASSWORD": password}
        assert run("put", "k", "v", "--cluster", cluster, "--user", "admin", env=admin).returncode == 0
        got = run("get", "k", "--cluster", f"127.0.0.1:{base + 2}", "--user", "admin", env=admin)
        assert got.returncode == 0 and got.stdout == "v\n"
        wrong = run("get", "k", "--cluster", cluster, "--user", "admin", env={"DYNAFAST_PASSWORD": "guess"})
        assert wrong.returncode == 1 and "wrong user name or password" in wrong.stderr
        stop_local(proc, pids)
    finally:
        kill_local(proc, tmp_path / "data", lines)
