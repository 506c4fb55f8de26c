"""The node-process harness, driven with a stand-in node (tests/helpers/fake_node.py) that takes the real
node's arguments, prints the same serving line and echoes; plus one smoke test with the real node."""
import json
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from dynafast.address import parse_address
from dynafast.testing import LocalCluster, NodeProcess, NodeStartError, free_port, wait_until

FAKE_NODE = (sys.executable, str(Path(__file__).parents[1] / "helpers" / "fake_node.py"))


def fake(tmp_path, node_id="n1", **kwargs):
    kwargs.setdefault("ready_timeout", 15.0)
    return NodeProcess(node_id, tmp_path / node_id, command=FAKE_NODE, **kwargs)


def echo_once(address, payload=b"ping"):
    with socket.create_connection(parse_address(address), timeout=5.0) as sock:
        sock.sendall(payload)
        return sock.recv(100)


def recorded(node):
    return json.loads((node.data_dir / "fake_node.json").read_text())


def gone(pid, timeout=5.0):
    """True once no live process has this PID (a zombie waiting for its reaper counts as gone)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                    return True
        except FileNotFoundError:
            return True
        time.sleep(0.02)
    return False


@pytest.fixture
def node(tmp_path):
    node = fake(tmp_path, seeds=["127.0.0.1:1"], args=["--n", "3", "--r", "2", "--w", "2"])
    yield node
    node.kill()


def test_free_port_is_bindable():
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_start_serves_and_stop_ends_the_process(node):
    assert node.pid is None and not node.is_running()
    node.start()
    assert node.is_running()
    pid = node.pid
    assert node.served_address == node.address == f"127.0.0.1:{node.port}"
    assert echo_once(node.address) == b"ping"
    args = recorded(node)["args"]
    assert args["node_id"] == "n1"
    assert args["listen"] == node.address
    assert args["data_dir"] == str(node.data_dir)
    assert args["seeds"] == "127.0.0.1:1"
    assert (args["n"], args["r"], args["w"]) == (3, 2, 2)

    assert node.stop() == 0  # SIGTERM: the stand-in exits cleanly
    assert not node.is_running() and node.pid is None
    assert gone(pid)
    out = node.output()
    assert "dynafast node n1 serving on" in out
    assert "stopped cleanly" in out
    assert "fake node log line on stderr" in out
    assert node.stdout_path.parent == node.data_dir.parent


def test_kill_then_restart_keeps_id_port_and_data(node):
    node.start(extra_args=["--config", "x.toml"], env={"SOME_SETTING": "1"})
    port, first_pid = node.port, node.pid
    assert node.kill() == -9
    assert gone(first_pid)
    assert not node.is_running()
    with pytest.raises(ConnectionRefusedError):
        echo_once(node.address)

    node.restart()
    assert node.port == port and node.is_running() and node.pid != first_pid
    assert echo_once(node.address) == b"ping"
    assert (node.data_dir / "starts").read_text().count("start") == 2
    assert recorded(node)["args"]["config"] == "x.toml"  # the last start's arguments are reused
    assert node.output().count("serving on") == 2
    # restart() also works on a running node (stop, then start).
    node.restart()
    assert (node.data_dir / "starts").read_text().count("start") == 3
    node.stop()


def test_wipe_needs_a_stopped_node_and_gives_a_fresh_start(node):
    node.start()
    with pytest.raises(RuntimeError):
        node.wipe()
    node.stop()
    node.wipe()
    assert not node.data_dir.exists()
    node.start()
    assert (node.data_dir / "starts").read_text().count("start") == 1
    node.stop()


def test_start_twice_is_an_error(node):
    node.start()
    with pytest.raises(RuntimeError):
        node.start()


def test_pause_holds_answers_until_resume_and_stop_still_works(node):
    node.start()
    node.pause()
    with socket.create_connection(parse_address(node.address), timeout=5.0) as sock:  # the kernel still accepts
        sock.sendall(b"hung?")
        sock.settimeout(0.3)
        with pytest.raises(socket.timeout):
            sock.recv(100)
        node.resume()
        sock.settimeout(5.0)
        assert sock.recv(100) == b"hung?"
    node.pause()
    assert node.stop() == 0  # SIGTERM reaches a paused node too: it is continued


def test_wait_until_returns_the_value_or_times_out():
    calls = []

    def third_time():
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionRefusedError("not yet")
        return "ready"

    assert wait_until(third_time, timeout=5.0, interval=0.01) == "ready"
    with pytest.raises(TimeoutError, match="never") as info:
        wait_until(lambda: 1 / 0, timeout=0.1, interval=0.01, message="never")
    assert isinstance(info.value.__cause__, ZeroDivisionError)


def test_exit_before_serving_raises_with_stderr_tail(tmp_path):
    node = fake(tmp_path, env={"FAKE_NODE_MODE": "exit-early"})
    with pytest.raises(NodeStartError) as info:
        node.start()
    assert info.value.returncode == 3
    assert "refusing to start on purpose" in info.value.stderr_tail
    assert "refusing to start on purpose" in str(info.value)
    assert not info.value.address_in_use
    assert not node.is_running()


def test_silent_node_times_out_and_is_killed(tmp_path):
    node = fake(tmp_path, env={"FAKE_NODE_MODE": "silent"}, ready_timeout=1.0)
    node.start(wait=False)
    pid = node.pid
    with pytest.raises(NodeStartError, match="did not print its serving line"):
        node.wait_ready()
    assert not node.is_running()
    assert gone(pid)


def test_stop_escalates_to_sigkill(tmp_path):
    node = fake(tmp_path, env={"FAKE_NODE_MODE": "ignore-term"})
    node.start()
    pid = node.pid
    assert node.stop(timeout=0.5) == -9
    assert gone(pid)


def test_taken_port_is_replaced_when_the_harness_picked_it(tmp_path):
    node = fake(tmp_path)
    taken = node.port
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", taken))
        blocker.listen()
        node.start()
        try:
            assert node.port != taken
            assert echo_once(node.address) == b"ping"
            assert node.starts == 2
        finally:
            node.stop()


def test_taken_port_chosen_by_the_caller_is_an_error(tmp_path):
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        node = fake(tmp_path, port=port)
        with pytest.raises(NodeStartError) as info:
            node.start()
        assert info.value.address_in_use
        assert node.port == port


def test_forgotten_processes_are_killed_at_exit(tmp_path):
    script = textwrap.dedent(
        f"""
        from pathlib import Path
        from dynafast.testing import NodeProcess
        node = NodeProcess("n1", Path({str(tmp_path)!r}) / "n1", command={list(FAKE_NODE)!r},
                           env={{"FAKE_NODE_MODE": "ignore-term"}})
        node.start()
        print(node.pid, flush=True)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert gone(int(result.stdout.strip()))


def test_cluster_seeds_ids_and_stop(tmp_path):
    with LocalCluster(3, base_dir=tmp_path, command=FAKE_NODE, n=3, r=1, w=1, partitions=16) as cluster:
        assert cluster.node_ids == ["n1", "n2", "n3"]
        assert len(set(cluster.addresses)) == 3
        assert all(node.is_running() for node in cluster.nodes)
        seed = cluster.nodes[0]
        assert recorded(seed)["args"]["seeds"] == ""
        for node in cluster.nodes[1:]:
            args = recorded(node)["args"]
            assert args["seeds"] == seed.address
            assert (args["n"], args["r"], args["w"], args["partitions"]) == (3, 1, 1, 16)
            assert echo_once(node.address) == b"ping"
        assert cluster.node("n2") is cluster.nodes[1]
        with pytest.raises(RuntimeError):
            cluster.proxy("n1", "n2")
        added = cluster.add_node()
        assert added.node_id == "n4" and recorded(added)["args"]["seeds"] == seed.address
        pids = [node.pid for node in cluster.nodes]
    assert not any(node.is_running() for node in cluster.nodes)
    assert all(gone(pid) for pid in pids)


def test_cluster_failed_start_stops_what_it_started(tmp_path):
    cluster = LocalCluster(2, base_dir=tmp_path, command=FAKE_NODE)
    cluster.nodes[1].env = {"FAKE_NODE_MODE": "exit-early"}
    with pytest.raises(NodeStartError):
        cluster.start()
    assert not any(node.is_running() for node in cluster.nodes)


def test_proxied_cluster_routes_partition_and_heal(tmp_path):
    with LocalCluster(3, base_dir=tmp_path, command=FAKE_NODE, proxied=True) as cluster:
        assert len(cluster.proxies) == 6
        for node in cluster.nodes:
            routes = dict(item.split("=") for item in recorded(node)["routes"].split(","))
            others = [other.node_id for other in cluster.nodes if other is not node]
            assert routes == {dst: cluster.proxy(node.node_id, dst).address for dst in others}
        # n2 and n3 are seeded through their proxy towards n1.
        assert recorded(cluster.nodes[1])["args"]["seeds"] == cluster.proxy("n2", "n1").address
        assert cluster.proxy("n1", "n2").target == cluster.node("n2").address
        assert echo_once(cluster.proxy("n1", "n2").address) == b"ping"

        cluster.partition(["n1"], ["n2", "n3"])
        for pair in [("n1", "n2"), ("n2", "n1"), ("n1", "n3"), ("n3", "n1")]:
            assert cluster.proxy(*pair).state == "cut"
        assert cluster.proxy("n2", "n3").state == "normal"
        with pytest.raises((ConnectionResetError, BrokenPipeError, ConnectionAbortedError)):
            reply = echo_once(cluster.proxy("n1", "n2").address)
            if not reply:
                raise ConnectionResetError("closed")  # end of stream is a refusal too
        assert echo_once(cluster.proxy("n2", "n3").address) == b"ping"

        cluster.heal()
        assert echo_once(cluster.proxy("n3", "n1").address) == b"ping"
        proxies = list(cluster.proxies.values())
    assert not any(proxy.running for proxy in proxies)
    # Started again: fresh proxies, routes pointing at them, same node ports and data.
    with cluster:
        assert all(proxy.running for proxy in cluster.proxies.values())
        assert not set(cluster.proxies.values()) & set(proxies)
        route = recorded(cluster.nodes[0])["routes"].split(",")[0].split("=")[1]
        assert route == cluster.proxy("n1", "n2").address
        assert echo_once(route) == b"ping"
        assert (cluster.nodes[0].data_dir / "starts").read_text().count("start") == 2
    assert not any(node.is_running() for node in cluster.nodes)


def member_states(address):
    result = subprocess.run(
        [sys.executable, "-m", "dynafast.cli", "status", "--cluster", address, "--json"],
        capture_output=True, text=True, timeout=30,
    )
    assert result.returncode == 0, result.stderr
    return {member["id"]: member["state"] for member in json.loads(result.stdout)["members"]}


@pytest.mark.cluster
def test_real_nodes_talk_through_proxies_and_see_a_partition(tmp_path):
    pytest.importorskip("dynafast.node")
    pytest.importorskip("dynafast.cli")
    with LocalCluster(3, base_dir=tmp_path, proxied=True, ready_timeout=60.0) as cluster:
        assert [node.served_address for node in cluster.nodes] == cluster.addresses
        # Every directed pair talks, and only through its proxy.
        wait_until(lambda: all(p.bytes_forwarded > 0 for p in cluster.proxies.values()), timeout=30.0,
                   message="traffic through every proxy")
        seen_by_n1 = cluster.addresses[0]
        wait_until(lambda: set(member_states(seen_by_n1).values()) == {"up"}, timeout=30.0, message="all up")

        cluster.partition(["n3"], ["n1", "n2"])
        wait_until(lambda: member_states(seen_by_n1)["n3"] == "down", timeout=30.0, message="n3 seen down")
        cluster.heal()
        wait_until(lambda: member_states(seen_by_n1)["n3"] == "up", timeout=30.0, message="n3 seen up again")
        assert all(proxy.errors == [] for proxy in cluster.proxies.values())
    assert not any(node.is_running() for node in cluster.nodes)
    assert "serving on" in cluster.nodes[2].output()
