"""TLS end to end: real node processes with certificates from `dynafast certs`, real handshakes."""
import asyncio
import json
import os
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from dynafast import AsyncClient, Client
from dynafast._impl import ring as rings, vclock as versions
from dynafast.errors import AuthenticationFailed, DynafastError, Unavailable
from dynafast.net.connection import Connection
from dynafast.net.messages import Msg
from dynafast.security.access import login_peer, read_secrets, write_secret
from dynafast.security.certs import write_dev_certs
from dynafast.security.tls import client_context
from dynafast.security.users import Users
from dynafast.testing.cluster import LocalCluster, NodeProcess, free_port

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(180)]


def cli(*args, timeout=60):
    return subprocess.run([sys.executable, "-m", "dynafast.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


def wait_for(predicate, timeout=30.0, interval=0.1):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    directory = tmp_path_factory.mktemp("certs")
    result = cli("certs", str(directory), "--hosts", "127.0.0.1,localhost", "--nodes", "n1,n2,n3")
    assert result.returncode == 0, result.stderr
    return directory


@pytest.fixture(scope="module")
def tls(certs):
    return client_context(str(certs / "ca.pem"))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, certs, tls):
    # The CA and the cluster secret go to every node through extra_args; each node serves its own certificate.
    # Peers log in to each other (the secret's handshake) inside TLS.
    base = tmp_path_factory.mktemp("tls")
    secret = base / "secret"
    write_secret(secret)
    c = LocalCluster(3, base_dir=base / "c",
                     extra_args=["--tls-ca", str(certs / "ca.pem"), "--secret-file", str(secret)])
    c.secret = secret
    for node in c.nodes:
        node.args += ["--tls-cert", str(certs / f"{node.node_id}.pem"),
                      "--tls-key", str(certs / f"{node.node_id}-key.pem")]
    http = f"127.0.0.1:{free_port()}"
    c.nodes[0].args += ["--http", http]
    c.http = http
    with c:
        with Client(c.addresses, tls=tls) as client:
            def formed():
                try:
                    return all(len([m for m in client.status(a)["members"] if m["state"] == "up"]) == 3
                               for a in c.addresses)
                except DynafastError:
                    return False
            assert wait_for(formed), "the TLS cluster did not form"
        yield c


def replica_copies(address, keys, tls, secret):
    """What one node stores for each of ``keys`` as a primary, read straight from it over TLS, logged in as
    a peer (replica reads are internal messages)."""
    async def read():
        host, port = address.rsplit(":", 1)
        conn = await Connection.open(host, int(port), ssl=tls, timeout=5.0)
        try:
            await login_peer(conn, "tester", read_secrets(secret), 5.0)
            _, fields = await conn.call(Msg.RING_GET, (), 5.0)
            ring = rings.Ring.from_bytes(fields[0])
            copies = []
            for key in keys:
                _, reply = await conn.call(Msg.REPLICA_GET, (ring.partition_of(key), key, None), 5.0)
                copies.append(None if reply[0] is None else versions.Siblings.from_bytes(reply[0]).live_values())
            return copies
        finally:
            await conn.close()
    return asyncio.run(read())


def test_puts_and_gets_over_tls_replicate_to_every_replica(cluster, tls):
    with Client(cluster.addresses, tls=tls, timeout=5.0) as client:
        for i in range(20):
            client.put(b"tls-%d" % i, b"value-%d" % i)
        for i in range(20):
            assert client.get(b"tls-%d" % i).values == [b"value-%d" % i]
        assert client.status()["security"]["peer_secret"]
    # n=3 on 3 nodes: every node holds every key, and the copies travelled between nodes over TLS (the nodes
    # serve nothing else).
    keys = [b"tls-%d" % i for i in range(20)]
    expected = [[b"value-%d" % i] for i in range(20)]
    for address in cluster.addresses:
        assert wait_for(lambda: replica_copies(address, keys, tls, cluster.secret) == expected), address


def test_async_client_over_tls(cluster, tls):
    async def main():
        async with AsyncClient(cluster.addresses, tls=tls) as client:
            await asyncio.gather(*(client.put(b"async-%d" % i, b"v%d" % i) for i in range(20)))
            return [(await client.get(b"async-%d" % i)).values for i in range(20)]

    assert asyncio.run(main()) == [[b"v%d" % i] for i in range(20)]


def test_a_client_trusting_another_ca_is_refused(cluster, tmp_path):
    write_dev_certs(tmp_path, nodes=["x1"])
    wrong = client_context(str(tmp_path / "ca.pem"))
    address = cluster.addresses[0]
    with Client([address], tls=wrong, timeout=2.0) as client:
        with pytest.raises(Unavailable) as caught:
            client.put(b"k", b"v")
    assert address in str(caught.value) and "certificate verify failed" in str(caught.value)

    async def async_put():
        async with AsyncClient([address], tls=wrong, timeout=2.0) as client:
            await client.put(b"k", b"v")

    with pytest.raises(Unavailable) as caught:
        asyncio.run(async_put())
    assert address in str(caught.value) and "certificate verify failed" in str(caught.value)


def test_a_certificate_for_other_hosts_is_refused(cluster, tmp_path):
    # Signed by the cluster's CA, so only the name check can refuse it: a node serving it at 127.0.0.1
    # must not be trusted.
    other = tmp_path / "other"
    write_dev_certs(other, hosts=["10.9.8.7"], nodes=["o1"])
    node = NodeProcess("o1", tmp_path / "o1", args=["--n", "1", "--r", "1", "--w", "1",
                                             "--tls-cert", str(other / "o1.pem"),
                                             "--tls-key", str(other / "o1-key.pem")])
    node.start()
    try:
        with Client([node.address], tls=client_context(str(other / "ca.pem")), timeout=2.0) as client:
            with pytest.raises(Unavailable) as caught:
                client.put(b"k", b"v")
        result = str(caught.value)
    finally:
        node.stop()
    assert node.address in result and "certificate verify failed" in result and "IP address mismatch" in result


def test_a_plaintext_client_fails_cleanly_and_the_node_keeps_serving(cluster, tls):
    address = cluster.addresses[0]
    with Client([address], timeout=2.0, connect_timeout=2.0) as client:
        with pytest.raises(Unavailable):
            client.put(b"plain", b"v")

    async def async_put():
        async with AsyncClient([address], timeout=2.0, connect_timeout=2.0) as client:
            await client.put(b"plain", b"v")

    with pytest.raises(Unavailable):
        asyncio.run(async_put())
    with Client([address], tls=tls) as client:
        client.put(b"after-plain", b"v")
        assert client.get(b"after-plain").values == [b"v"]
    assert cluster.nodes[0].is_running()


def test_a_stalled_handshake_does_not_hold_up_others_and_is_dropped(cluster, tls):
    address = cluster.addresses[1]
    host, port = address.rsplit(":", 1)
    stalled = [socket.create_connection((host, int(port)), timeout=5.0) for _ in range(5)]
    try:
        stalled[0].sendall(b"\x16\x03\x01\x02\x00\x01")  # the start of a ClientHello, and then nothing
        with Client([address], tls=tls, partition_aware=False, timeout=5.0) as client:
            for i in range(10):
                client.put(b"stall-%d" % i, b"v")
                assert client.get(b"stall-%d" % i).values == [b"v"]
        # The node gives up on them after SSL_HANDSHAKE_TIMEOUT (10 s; asyncio's own default would be 60 s):
        # each sees its connection closed.
        deadline = time.monotonic() + 30.0
        for sock in stalled:
            sock.settimeout(max(0.1, deadline - time.monotonic()))
            try:
                assert sock.recv(4096) == b""
            except ConnectionResetError:
                pass
    finally:
        for sock in stalled:
            sock.close()


def test_https_health_with_the_ca(cluster, certs):
    context = ssl.create_default_context(cafile=str(certs / "ca.pem"))
    with urllib.request.urlopen(f"https://{cluster.http}/health", timeout=10, context=context) as response:
        assert response.status == 200 and json.loads(response.read())["node"] == "n1"
    with pytest.raises(urllib.error.URLError) as caught:
        urllib.request.urlopen(f"https://{cluster.http}/health", timeout=10,
                               context=ssl.create_default_context())
    assert "CERTIFICATE_VERIFY_FAILED" in str(caught.value)


def test_client_verbs_take_the_ca(cluster, certs):
    address = cluster.addresses[2]
    ca = str(certs / "ca.pem")
    result = cli("put", "cli-key", "cli-value", "--cluster", address, "--tls-ca", ca)
    assert result.returncode == 0, result.stderr
    result = cli("get", "cli-key", "--cluster", address, "--tls-ca", ca)
    assert result.returncode == 0 and result.stdout == "cli-value\n", result.stderr
    result = cli("status", "--json", "--cluster", address, "--tls-ca", ca)
    assert result.returncode == 0 and len(json.loads(result.stdout)["members"]) == 3
    result = cli("get", "cli-key", "--cluster", address, "--timeout", "2")
    assert result.returncode == 1 and "error" in result.stderr


def test_a_key_that_does_not_fit_the_certificate_stops_the_node_with_a_clear_error(certs, tmp_path):
    result = cli("node", "--listen", f"127.0.0.1:{free_port()}", "--data-dir", str(tmp_path / "d"),
                 "--tls-cert", str(certs / "n1.pem"), "--tls-key", str(certs / "n2-key.pem"))
    assert result.returncode == 1
    assert "n2-key.pem does not match the certificate" in result.stderr and "n1.pem" in result.stderr
    assert not (tmp_path / "d").exists()  # refused before the node touched its data directory
    result = cli("node", "--listen", f"127.0.0.1:{free_port()}", "--data-dir", str(tmp_path / "d"),
                 "--tls-cert", str(certs / "n1.pem"), "--tls-key", str(tmp_path / "missing.pem"))
    assert result.returncode == 1 and "missing.pem" in result.stderr


def test_users_log_in_over_tls(certs, tls, tmp_path):
    # The public surface: Client(nodes, username=..., password=..., tls=...), blocking and async, and the CLI.
    users = Users(tmp_path / "users.json", must_exist=False)
    users.add("alice", "alice's password", "readwrite")
    node = NodeProcess("u1", tmp_path / "u1", args=["--n", "1", "--r", "1", "--w", "1",
                                                    "--users-file", str(tmp_path / "users.json"),
                                                    "--tls-cert", str(certs / "n1.pem"),
                                                    "--tls-key", str(certs / "n1-key.pem")])
    node.start()
    try:
        with Client([node.address], username="alice", password="alice's password", tls=tls) as client:
            client.put(b"k", b"v")
            assert client.get(b"k").values == [b"v"]
        with Client([node.address], username="alice", password="wrong", tls=tls) as client:
            with pytest.raises(AuthenticationFailed):
                client.get(b"k")

        async def async_get():
            async with AsyncClient([node.address], username="alice", password="alice's password", tls=tls) as c:
                return (await c.get(b"k")).values

        assert asyncio.run(async_get()) == [b"v"]
        result = subprocess.run([sys.executable, "-m", "dynafast.cli", "get", "k", "--cluster", node.address,
                                 "--user", "alice", "--tls-ca", str(certs / "ca.pem")], capture_output=True,
                                text=True, timeout=60, env={**os.environ, "DYNAFAST_PASSWORD": "alice's password"})
        assert result.returncode == 0 and result.stdout == "v\n", result.stderr
    finally:
        node.stop()
