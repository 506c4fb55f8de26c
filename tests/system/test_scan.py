"""Cluster scans and batches against real node processes: every live key exactly once, through a join and a leave;
cursors that resume in another client; prefixes, limits, permissions; get_many and put_many."""
import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.request

import pytest

from dynafast import AsyncClient, Client, NotPermitted
from dynafast.net.messages import Msg
from dynafast.testing.cluster import LocalCluster, free_port
from test_cluster import wait_for, wait_members
from test_cluster_life import fast_config
from test_security import credentials, raw, secured_args

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]


def key_of(i: int) -> bytes:
    return b"scan-%06d" % i


async def bulk_load(addresses, count: int, w: int = 3) -> None:
    """``count`` keys written fast: an AsyncClient's put_many, in slices (every write on all replicas: a scan
    reads one replica per partition, so the test must not race replication)."""
    async with AsyncClient(addresses, timeout=10.0) as client:
        for start in range(0, count, 5000):
            items = [(key_of(i), b"value-%d" % i) for i in range(start, min(count, start + 5000))]
            failed = {k: e for k, e in (await client.put_many(items, w=w)).items() if e is not None}
            assert not failed, f"{len(failed)} puts failed: {list(failed.items())[:3]}"


def delete_some(addresses, count: int, every: int) -> set[bytes]:
    deleted = {key_of(i) for i in range(0, count, every)}
    with Client(addresses, timeout=10.0) as client:
        for key in deleted:
            client.delete(key, w=3)
    return deleted


def cluster_status(addresses):
    with Client(addresses, timeout=3.0) as client:
        for address in addresses:
            try:
                return client.status(address)
            except Exception:  # noqa: BLE001 - a node that left: ask the next
                continue
    return None


def settled(addresses, members: set[str]) -> bool:
    """Every node of ``members`` up, owning partitions, and no ring change pending."""
    status = cluster_status(addresses)
    if status is None or status["next_ring_version"] is not None:
        return False
    owners = {m["id"] for m in status["members"] if m["state"] == "up" and m["partitions"] > 0}
    return owners == members


def scan_through_join_and_leave(tmp_path, count: int, page_size: int):
    """Scan while n4 joins and then n2 leaves, each change starting and finishing while the scan runs."""
    args = fast_config(tmp_path, drop_grace=0.5)
    with LocalCluster(3, base_dir=tmp_path / "c", extra_args=args) as c:
        with Client(c.addresses) as client:
            wait_members(client, 3)
        started = time.monotonic()
        asyncio.run(bulk_load(c.addresses, count))
        loaded = time.monotonic() - started
        deleted = delete_some(c.addresses, count, every=97)
        live = {key_of(i) for i in range(count)} - deleted
        seen: list[bytes] = []
        served_by = set()
        # The scanning client keeps its ring for the default 10 s: it learns of each change from the nodes' refusals.
        with Client(c.addresses, timeout=5.0) as client:
            scan = client.scan(page_size=page_size)
            items = iter(scan)

            def consume(upto: float) -> None:
                while len(seen) < upto * len(live):
                    key, result = next(items)
                    assert result.values == [b"value-%d" % int(key[5:])], key
                    assert result.context
                    seen.append(key)
                    served_by.add(scan._address)

            def consume_during(change_done, upto: float, what: str) -> None:
                """Pages read while the change runs, a page at a time, until it is done (then up to ``upto``)."""
                deadline = time.monotonic() + 90
                while not change_done():
                    assert time.monotonic() < deadline, f"{what} did not finish"
                    if len(seen) < upto * len(live):
                        consume((len(seen) + page_size) / len(live))
                    time.sleep(0.1)
                consume(upto)

            consume(0.1)
            n4 = c.add_node()
            consume_during(lambda: settled(c.addresses, {"n1", "n2", "n3", "n4"}), 0.3, "n4's join")
            # The old owners of n4's partitions drop their copies after drop_grace: asked with the client's old
            # ring, they must turn the scan away, not answer for a vnode they no longer hold.
            time.sleep(1.5)
            consume(0.4)
            client.leave("n2", address=c.nodes[0].address)
            consume_during(lambda: settled(c.addresses, {"n1", "n3", "n4"}) and not c.node("n2").is_running(), 0.8,
                           "n2's leave")
            seen.extend(key for key, _ in items)
            assert scan.cursor is None
        assert n4.is_running()
    duplicates = len(seen) - len(set(seen))
    assert duplicates == 0, f"{duplicates} keys seen twice"
    assert not set(seen) & deleted, f"deleted keys seen: {sorted(set(seen) & deleted)[:5]}"
    missing = live - set(seen)
    assert not missing, f"{len(missing)} live keys missed: {sorted(missing)[:5]}"
    assert len(served_by) >= 2, served_by
    return loaded


def test_a_scan_sees_every_live_key_once_while_a_node_joins_and_another_leaves(tmp_path):
    scan_through_join_and_leave(tmp_path, 5000, page_size=100)


@pytest.mark.soak
def test_a_scan_of_100k_keys_sees_each_once_while_a_node_joins_and_another_leaves(tmp_path):
    scan_through_join_and_leave(tmp_path, 100_000, page_size=1000)


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    """3 nodes with /metrics on n1: 600 keys under a:, 400 under b:, some deleted, one with two siblings."""
    base = tmp_path_factory.mktemp("scan")
    http = f"127.0.0.1:{free_port()}"
    with LocalCluster(3, base_dir=base / "c", extra_args=fast_config(base)) as c:
        c.node("n1").stop()
        c.node("n1").args = [*c.node("n1").args, "--http", http]
        c.node("n1").restart()
        with Client(c.addresses, timeout=10.0) as client:
            wait_members(client, 3, timeout=60)
            items = [(b"a:%04d" % i, b"A%d" % i) for i in range(600)]
            items += [(b"b:%04d" % i, b"B%d" % i) for i in range(400)]
            assert all(e is None for e in client.put_many(items, w=3).values())
            for i in range(0, 600, 50):
                client.delete(b"a:%04d" % i, w=3)
            client.put(b"b:0001", b"B1-other", w=3)  # blind: a sibling of B1
        c.http = http
        c.live_a = {b"a:%04d" % i for i in range(600) if i % 50}
        yield c


def test_prefix_limit_siblings_and_contexts(loaded):
    with Client(loaded.addresses) as client:
        scanned = dict(client.scan(prefix=b"a:"))
        assert set(scanned) == loaded.live_a
        assert all(r.values == [b"A%d" % int(k[2:])] for k, r in scanned.items())
        bs = dict(client.scan(prefix=b"b:", page_size=7))
        assert len(bs) == 400
        assert sorted(bs[b"b:0001"].values) == [b"B1", b"B1-other"]
        # The scanned context resolves the siblings, as a get's does.
        client.put(b"b:0001", b"B1-merged", context=bs[b"b:0001"].context, w=3)
        assert client.get(b"b:0001", r=3).values == [b"B1-merged"]

        limited = client.scan(prefix=b"a:", limit=25)
        first = [k for k, _ in limited]
        assert len(first) == 25 and set(first) <= loaded.live_a
        assert limited.cursor is not None
        assert list(client.scan(prefix=b"zz:")) == []
        # Partition by partition, each in key order.
        with Client(loaded.addresses) as fresh:
            fresh.refresh_ring()
            ring = fresh._routing.ring
        order = [(ring.partition_of(k), k) for k in scanned]
        assert order == sorted(order)


def test_a_cursor_resumes_in_another_client_and_process(loaded):
    seen = []
    with Client(loaded.addresses) as client:
        scan = client.scan(prefix=b"a:", limit=200, page_size=64)
        seen += [k for k, _ in scan]
        cursor = scan.cursor
    with Client(loaded.addresses[1:]) as other:
        scan = other.scan(prefix=b"a:", cursor=cursor, limit=150)
        seen += [k for k, _ in scan]
        cursor = scan.cursor
        with pytest.raises(ValueError, match="prefix"):
            next(iter(other.scan(prefix=b"b:", cursor=cursor)))
    # The rest from another process, through the command line's --cursor.
    result = subprocess.run(
        [sys.executable, "-m", "dynafast.cli", "scan", "--prefix", "a:", "--keys-only", "--cursor", cursor.hex(),
         "--cluster", loaded.addresses[2]],
        capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert result.returncode == 0, result.stderr
    seen += [line.encode() for line in result.stdout.splitlines()]
    assert "more" not in result.stderr
    assert len(seen) == len(set(seen)) == len(loaded.live_a)
    assert set(seen) == loaded.live_a


def test_cli_scan_prints_values_and_keys(loaded):
    def cli(*args):
        result = subprocess.run([sys.executable, "-m", "dynafast.cli", "scan", *args, "--cluster", loaded.addresses[0]],
                                capture_output=True, text=True, timeout=60,
                                env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
        assert result.returncode == 0, result.stderr
        return result
    lines = cli("--prefix", "a:00").stdout.splitlines()
    assert sorted(lines) == sorted(f"{k.decode()}\tA{int(k[2:])}" for k in loaded.live_a if k.startswith(b"a:00"))
    limited = cli("--prefix", "b:", "--keys-only", "--limit", "3")
    assert len(limited.stdout.splitlines()) == 3 and "--cursor" in limited.stderr


def test_scans_are_counted_in_status_and_metrics(loaded):
    n1 = loaded.node("n1")
    with Client(loaded.addresses) as client:
        before = client.status(n1.address)["scans"]
        with Client([n1.address]) as one:
            pages = sum(1 for _ in one.scan(prefix=b"a:", page_size=50))
        assert pages
        after = client.status(n1.address)
    assert after["scans"]["pages"] > before["pages"]
    assert after["scans"]["keys"] > before["keys"]
    assert after["requests"]["scan"]["count"] >= after["scans"]["pages"]
    with urllib.request.urlopen(f"http://{loaded.http}/metrics", timeout=10) as response:
        text = response.read().decode()
    assert 'dynafast_requests_total{node="n1",op="scan"}' in text
    assert 'dynafast_scan{counter="pages",node="n1"}' in text


def test_async_scan_and_batches(loaded):
    async def main():
        async with AsyncClient(loaded.addresses) as client:
            keys = [k async for k, _ in client.scan(prefix=b"a:", page_size=33)]
            assert sorted(keys) == sorted(loaded.live_a)
            scan = client.scan(prefix=b"a:", limit=10)
            first = [k async for k, _ in scan]
            rest = [k async for k, _ in client.scan(prefix=b"a:", cursor=scan.cursor)]
            assert sorted(first + rest) == sorted(loaded.live_a)

            written = await client.put_many([(b"c:%d" % i, b"C%d" % i) for i in range(300)] + [(b"c:bad", None)])
            assert isinstance(written.pop(b"c:bad"), TypeError)
            assert written == {b"c:%d" % i: None for i in range(300)}
            got = await client.get_many([b"c:%d" % i for i in range(300)] + [b"a:0000", b"x" * 100_000])
            assert isinstance(got.pop(b"x" * 100_000), ValueError)  # KeyTooLarge, refused before sending
            assert not got.pop(b"a:0000").found  # deleted
            assert {k: r.values for k, r in got.items()} == {b"c:%d" % i: [b"C%d" % i] for i in range(300)}
    asyncio.run(main())


def test_blocking_batches_group_by_coordinator_and_survive_a_down_node(loaded):
    with Client(loaded.addresses, timeout=3.0) as client:
        got = client.get_many([b"b:%04d" % i for i in range(2, 400)])
        assert all(r.values == [b"B%d" % int(k[2:])] for k, r in got.items())
        assert len(got) == 398
        first = client.get(b"b:0002")
        result = client.put_many([(b"b:0002", b"B2-new", first.context), (b"d:1", b"D1"), (b"d:2", b"D2")], w=3)
        assert result == {b"b:0002": None, b"d:1": None, b"d:2": None}
        assert client.get(b"b:0002", r=3).values == [b"B2-new"]  # the context replaced the old version
        n3 = loaded.node("n3")
        n3.stop()  # its connections refused: each key it coordinated goes to the next node of its list
        try:
            with Client(loaded.addresses, timeout=2.0) as other:
                got = other.get_many([b"a:%04d" % i for i in range(1, 50)], r=1)
            assert all(not isinstance(r, Exception) and r.found for r in got.values()), got
        finally:
            n3.restart()


def test_a_read_user_can_scan_an_anonymous_connection_cannot(tmp_path):
    secret, users_file = credentials(tmp_path)
    with LocalCluster(3, base_dir=tmp_path / "c", extra_args=secured_args(secret, users_file)) as c:
        with Client(c.addresses, username="writer", password="writer password") as writer:
            wait_members(writer, 3, timeout=60)
            assert all(e is None for e in writer.put_many([(b"s:%d" % i, b"v") for i in range(200)], w=3).values())
        with Client(c.addresses, username="reader", password="reader password") as reader:
            assert sorted(k for k, _ in reader.scan(prefix=b"s:")) == sorted(b"s:%d" % i for i in range(200))
            assert reader.get_many([b"s:1"])[b"s:1"].values == [b"v"]
            refused = reader.put_many([(b"s:1", b"w")])[b"s:1"]
            assert isinstance(refused, NotPermitted)
        with raw(c.node("n1")) as anonymous:
            with pytest.raises(NotPermitted):
                anonymous.call(Msg.SCAN_PAGE, (0, b"", None, 10, None), 5.0)
        with Client(c.addresses) as nobody:
            with pytest.raises(NotPermitted):
                list(nobody.scan())


def test_status_reports_scans_as_json(loaded):
    with Client(loaded.addresses) as client:
        status = client.status()
    json.dumps(status["scans"])
    assert set(status["scans"]) == {"pages", "keys", "bytes", "refused"}


def test_a_scan_reads_around_a_node_that_is_repairing_after_losing_its_data(tmp_path):
    """n3 comes back with an empty data directory and repairs its vnodes slowly (anti-entropy throttled): its
    vnodes with holes must not answer for their partitions; the scan reads the other replicas instead."""
    args = fast_config(tmp_path, ae_interval=0.0, ae_bytes_per_second=20000)
    with LocalCluster(3, base_dir=tmp_path / "c", extra_args=args) as c:
        with Client(c.addresses, timeout=10.0) as client:
            wait_members(client, 3)
            keys = {b"r:%05d" % i for i in range(3000)}
            assert all(e is None for e in client.put_many([(k, b"x" * 1000) for k in keys], w=3).values())
        n3 = c.node("n3")
        n3.stop()
        n3.wipe()
        n3.restart()
        with Client([n3.address], timeout=5.0) as direct:
            assert wait_for(lambda: direct.status(n3.address)["repair"]["vnodes_repairing"] > 0, 30, 0.1)
        with Client(c.addresses, timeout=5.0) as client:
            seen = [k for k, _ in client.scan(prefix=b"r:")]
            status = client.status(n3.address)
        assert status["repair"]["vnodes_repairing"] > 0, "n3 finished repairing before the scan: nothing tested"
        assert len(seen) == len(set(seen)) and set(seen) == keys, f"{len(keys - set(seen))} keys missed"
        assert status["scans"]["refused"] > 0
