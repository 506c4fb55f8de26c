"""Backup, restore and repair as an operator runs them (`dynafast backup|restore|repair`), against real nodes."""
import contextlib
import json
import threading
import time

import pytest

from dynafast import Client
from dynafast.security.access import write_secret
from dynafast.security.users import Users
from dynafast.testing.cluster import LocalCluster
from test_cli import run
from test_cluster import wait_for, wait_members

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]


def ok(*args, timeout=120, env=None):
    result = run(*args, timeout=timeout, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def write_keys(client, count, prefix=b"k", pad=0):
    items = [(prefix + b"%d" % i, b"value-%d" % i + b"." * pad) for i in range(count)]
    failed = {k: e for k, e in client.put_many(items, timeout=30).items() if e is not None}
    assert not failed, list(failed.items())[:3]
    return dict(items)


def read_back(client, expected):
    results = client.get_many(list(expected), timeout=30)
    wrong = {k: r for k, r in results.items() if isinstance(r, Exception) or r.values != [expected[k]]}
    return wrong


@contextlib.contextmanager
def new_cluster(base, size, extra_args=()):
    with LocalCluster(size, base_dir=base, n=min(3, size), r=min(2, size), w=min(2, size),
                      extra_args=extra_args) as cluster:
        with Client(cluster.addresses) as client:
            wait_members(client, size, timeout=60)
        yield cluster


@pytest.fixture(scope="module")
def backup(tmp_path_factory):
    """A backup of a 3-node cluster taken while a writer goes on: (its directory, the keys and values it must
    hold, a deleted key, a key with two siblings)."""
    base = tmp_path_factory.mktemp("backup")
    with new_cluster(base / "source", 3) as source, Client(source.addresses) as client:
        expected = write_keys(client, 3000)
        client.delete(b"k7")
        del expected[b"k7"]
        client.put(b"both", b"left")
        client.put(b"both", b"right")  # no context: a sibling of the first
        assert sorted(client.get(b"both").values) == [b"left", b"right"]
        stop = threading.Event()
        written = []

        def writer():  # writes go on during the backup: it must neither stop them nor break on them
            with Client(source.addresses) as other:
                i = 0
                while not stop.is_set() and i < 100000:
                    other.put(b"live%d" % i, b"x")
                    written.append(i)
                    i += 1

        thread = threading.Thread(target=writer)
        thread.start()
        try:
            wait_for(lambda: len(written) > 20, timeout=30)
            result = ok("backup", str(base / "bk"), "--json", "--cluster", source.addresses[0])
        finally:
            stop.set()
            thread.join(timeout=60)
        assert len(written) > 20
    manifest = json.loads(result.stdout)
    return base / "bk", expected, manifest


def test_backup_writes_every_node_and_a_manifest(backup):
    directory, expected, manifest = backup
    assert sorted(node["id"] for node in manifest["nodes"]) == ["n1", "n2", "n3"]
    assert manifest["n"] == 3 and manifest["partitions"] == 64 and not manifest["skipped"]
    on_disk = json.loads((directory / "backup.json").read_text())
    assert on_disk["keys"] == manifest["keys"]
    for node in manifest["nodes"]:
        # n=3 of 3 nodes: every node holds every key
        assert node["keys"] >= len(expected)
        info = json.loads((directory / node["id"] / "node.json").read_text())
        assert info["node"] == node["id"] and len(info["partitions"]) == 64
        assert (directory / node["id"] / "store" / "MANIFEST").exists()
    # A second backup never writes over the first.
    again = run("backup", str(directory), "--cluster", "127.0.0.1:1")
    assert again.returncode == 1 and "already holds a backup" in again.stderr


@pytest.mark.parametrize("size", [2, 4])
def test_restore_into_a_new_cluster_of_another_size(backup, tmp_path, size):
    directory, expected, _ = backup
    with new_cluster(tmp_path, size) as target:
        result = ok("restore", str(directory), "--json", "--cluster", target.addresses[0])
        summary = json.loads(result.stdout)
        assert "100% (" in result.stderr  # the progress bar reached the end
        assert summary["deleted"] >= 1 and summary["with_siblings"] >= 1
        with Client(target.addresses) as client:
            assert read_back(client, expected) == {}
            assert client.get(b"k7").values == []  # deleted before the backup: it stays deleted
            assert sorted(client.get(b"both").values) == [b"left", b"right"]  # siblings survive
            assert client.get(b"live0").values == [b"x"]  # written (and acknowledged) before the backup


def test_a_read_role_user_is_refused_backup_restore_and_repair(tmp_path):
    secret = tmp_path / "secret"
    write_secret(secret)
    users = Users(tmp_path / "users.json", must_exist=False)
    users.add("reader", "reader password", "read")
    args = ["--secret-file", str(secret), "--users-file", str(tmp_path / "users.json")]
    env = {"DYNAFAST_PASSWORD": "reader password"}
    with LocalCluster(1, base_dir=tmp_path / "c", n=1, r=1, w=1, extra_args=args) as c:
        address = c.addresses[0]
        refused = run("backup", str(tmp_path / "bk"), "--cluster", address, "--user", "reader", env=env)
        assert refused.returncode == 1 and "BACKUP is not allowed for 'reader'" in refused.stderr
        assert not (tmp_path / "bk" / "n1").exists()
        refused = run("repair", "--cluster", address, "--user", "reader", env=env)
        assert refused.returncode == 1 and "REPAIR is not allowed for 'reader'" in refused.stderr
        # A restore needs a backup to read first: one of a node with no users.
        with LocalCluster(1, base_dir=tmp_path / "open", n=1, r=1, w=1) as plain:
            with Client(plain.addresses) as client:
                client.put(b"a", b"1")
            ok("backup", str(tmp_path / "bk"), "--cluster", plain.addresses[0])
        refused = run("restore", str(tmp_path / "bk"), "--cluster", address, "--user", "reader", env=env)
        assert refused.returncode == 1 and "RESTORE is not allowed for 'reader'" in refused.stderr


def test_repair_of_a_wiped_node_shows_its_progress_to_the_end(tmp_path):
    # Anti-entropy held to 200 KB/s: the repair of 3,000 keys of 300 bytes lasts a few seconds, long enough for
    # the progress bar to show its way there.
    config = tmp_path / "node.toml"
    config.write_text("ae_bytes_per_second = 200000\n")
    with new_cluster(tmp_path, 3, ["--config", str(config)]) as cluster, Client(cluster.addresses) as client:
        expected = write_keys(client, 3000, pad=300)
        victim = cluster.node("n3")
        victim.stop()
        victim.wipe()
        victim.restart()
        result = ok("repair", "--node", "n3", "--json", "--cluster", cluster.addresses[0], timeout=240)
        percents = [int(line.split("]")[1].split("%")[0]) for line in result.stderr.splitlines()
                    if line.startswith("repair [")]
        assert percents[-1] == 100 and any(0 < p < 100 for p in percents), result.stderr
        figures = json.loads(result.stdout)
        assert figures["pending"] == 0
        assert figures["nodes"]["n3"]["keys_repaired"] > 0
        # Every key is back on n3 itself: read from it alone.
        with Client([victim.address], partition_aware=False) as only:
            assert read_back(only, {k: expected[k] for k in list(expected)[:200]}) == {}


def test_repair_verbs_check_their_arguments(tmp_path):
    with new_cluster(tmp_path, 1) as cluster:
        result = run("repair", "--partition", "9999", "--cluster", cluster.addresses[0])
        assert result.returncode == 1 and "partition must be in 0..63" in result.stderr
        for verb in ("backup", "restore", "repair"):
            helped = run(verb, "--help")
            assert helped.returncode == 0 and "examples:\n  dynafast " + verb in helped.stdout


@pytest.mark.soak
def test_restore_of_100k_keys(tmp_path):
    """35 to 70 s on 2 shared vCPUs, most of it writing and reading back the keys (the restore takes ~5 s):
    on demand (pytest -n 0 -m soak); the default suite restores 10,000."""
    _restore_many(tmp_path, 100_000)


def test_restore_of_10k_keys(tmp_path):
    _restore_many(tmp_path, 10_000)


def _restore_many(tmp_path, count):
    with new_cluster(tmp_path / "source", 3) as source, Client(source.addresses) as client:
        expected = write_keys(client, count)
        ok("backup", str(tmp_path / "bk"), "--cluster", source.addresses[0])
    with new_cluster(tmp_path / "target", 3) as target:
        started = time.monotonic()
        summary = json.loads(ok("restore", str(tmp_path / "bk"), "--json", "--cluster", target.addresses[0],
                                timeout=600).stdout)
        print(f"restored {count} keys in {time.monotonic() - started:.1f}s: {summary}")
        assert summary["written"] == count
        with Client(target.addresses) as client:
            assert read_back(client, expected) == {}
