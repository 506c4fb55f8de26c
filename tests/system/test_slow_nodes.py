"""A hung node (SIGSTOPped: its connections stay open, nothing answers) on real processes: clients go round it.

Before, a client sent every request for a key to the key's first replica, waited for it until the timeout (plus a
second) and gave up without trying another replica, even after the cluster had marked the node down.
"""
import asyncio
import os
import subprocess
import sys

import pytest

from dynafast import AsyncClient, Client
from dynafast.errors import DynafastError, Timeout, Unavailable
from dynafast.testing.cluster import LocalCluster
from test_cluster import wait_for, wait_members
from test_cluster_life import fast_config

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]

KEYS = [f"slow-{i}".encode() for i in range(40)]


def cli(*args, timeout=60):
    return subprocess.run([sys.executable, "-m", "dynafast.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=dict(os.environ))


def shown_down(client, address) -> set:
    try:
        return {m["id"] for m in client.status(address)["members"] if m["state"] == "down"}
    except (Unavailable, Timeout):
        return set()


def test_clients_and_cli_read_and_write_every_key_with_a_node_paused(tmp_path):
    with LocalCluster(3, base_dir=tmp_path / "c", extra_args=fast_config(tmp_path)) as c:
        n1 = c.node("n1").address
        with Client(c.addresses, timeout=2.0, r=2, w=2) as client:
            wait_members(client, 3)
            for key in KEYS:
                client.put(key, b"before")
            assert all(client.get(key).value == b"before" for key in KEYS)
            paused = c.node("n3")
            paused.pause()
            try:
                with Client([n1], timeout=2.0) as observer:
                    assert wait_for(lambda: shown_down(observer, n1) == {"n3"}, 30), "n3 was never marked down"
                # n3 is a replica of every key (N=3 on 3 nodes), and the first one of about a third of them.
                errors = []
                for key in KEYS:
                    try:
                        found = client.get(key, timeout=2.0)
                        client.put(key, b"during", context=found.context, timeout=2.0)
                        if client.get(key, timeout=2.0).value != b"during":
                            errors.append((key, "stale read"))
                    except DynafastError as exc:
                        errors.append((key, exc))
                assert errors == [], f"{len(errors)} of {len(KEYS)} keys failed, first: {errors[:3]}"

                async def with_async_client():
                    failed = []
                    async with AsyncClient(c.addresses, timeout=2.0, r=2, w=2) as aclient:
                        for key in KEYS:
                            try:
                                found = await aclient.get(key)
                                await aclient.put(key, b"async", context=found.context)
                                if (await aclient.get(key)).value != b"async":
                                    failed.append((key, "stale read"))
                            except DynafastError as exc:
                                failed.append((key, exc))
                    return failed

                failed = asyncio.run(with_async_client())
                assert failed == [], f"{len(failed)} of {len(KEYS)} keys failed, first: {failed[:3]}"

                # A new process each time (the CLI): it learns that n3 is down with the ring it fetches.
                for key in KEYS[:6]:
                    put = cli("put", key.decode(), "cli", "--cluster", n1, "--timeout", "2", "--w", "2")
                    assert put.returncode == 0, put.stderr
                    got = cli("get", key.decode(), "--cluster", n1, "--timeout", "2", "--r", "2")
                    assert got.returncode == 0, got.stderr
                    assert got.stdout.strip() == "cli"
            finally:
                paused.resume()


def test_a_timeout_names_the_node_and_the_timeout_given(tmp_path):
    with LocalCluster(3, base_dir=tmp_path / "c", extra_args=fast_config(tmp_path)) as c:
        with Client(c.addresses, timeout=2.0) as client:
            wait_members(client, 3)
            client.put(b"k", b"v")
        hung = c.node("n3")
        hung.pause()
        try:
            # Pinned to the hung node alone: nothing else to try, the request's whole timeout goes to it.
            with Client([hung.address], timeout=1.5, partition_aware=False) as pinned:
                with pytest.raises(Timeout) as caught:
                    pinned.get(b"k")
            message = str(caught.value)
            assert hung.address in message and "1.5s" in message, message
            assert "2.5" not in message, message  # the timeout given, not one the client made up
            got = cli("get", "k", "--cluster", hung.address, "--timeout", "2")
            assert got.returncode != 0
            assert hung.address in got.stderr and "2" in got.stderr, got.stderr
        finally:
            hung.resume()


def coordinated(client, cluster) -> dict:
    """Client requests each node has coordinated so far."""
    return {node.node_id: sum(op["count"] for op in client.status(node.address)["requests"].values())
            for node in cluster.nodes}


def test_a_node_that_stalls_for_a_moment_keeps_its_share_of_requests(tmp_path):
    """A node that stops for a fraction of a second (a busy spell: here SIGSTOP, then SIGCONT) is slow, not hung:
    a single-threaded client goes on sending it the requests for the keys it is the first replica of.

    Before, a try with no reply within its budget (50 ms at the floor) set the node aside for 2 s, then twice as
    long after each further timeout within a minute, up to 30 s: a single-threaded client has no other request
    in flight that could show the node alive, so each busy spell counted as a hang. That is how the first node
    stopped coordinating after a join under load (its busy spells while it handed partitions over)."""
    with LocalCluster(3, base_dir=tmp_path / "c", partitions=64) as c:
        with Client(c.addresses, timeout=5.0) as client:
            wait_members(client, 3)
            keys = [b"share-%d" % i for i in range(200)]
            # More than 128 replies from each node, so that each try's budget comes down from the cap (1 s)
            # to its recent replies' (a stall is then longer than a try, and shorter than the cap).
            for _ in range(3):
                for key in keys:
                    client.put(key, b"v")
            ring = client._routing.ring
            first = {}
            for key in keys:
                first.setdefault(ring.replicas(ring.partition_of(key), 3)[0], []).append(key)
            assert sorted(first) == ["n1", "n2", "n3"] and all(len(group) >= 20 for group in first.values())
            # Counted before the stall: the status requests take their time on a loaded machine, and a try of n1
            # that ran out a second or more after the one in the stall would count as a second of silence.
            before = coordinated(client, c)
            stalled = c.node("n1")
            stalled.pause()
            try:
                assert client.get(first["n1"][0]).value == b"v"  # n1's try runs out, the next replica answers
            finally:
                stalled.resume()
            for node in ("n1", "n2", "n3"):
                for key in first[node][:20]:
                    assert client.get(key).value == b"v"
            after = coordinated(client, c)
            share = {node: after[node] - before[node] for node in after}
            # 20 each when every request goes to its key's first replica; n1 got none while set aside.
            assert all(count >= 10 for count in share.values()), share
