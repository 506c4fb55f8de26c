"""Attacks an outsider with a TCP connection to one node could make, replayed against real node processes.

A secured cluster (a cluster secret and users) refuses every one and keeps its data; the same frames against
an open cluster show what it exposes (docs/security.md says so too).
"""
import pytest

from dynafast import AuthenticationFailed, Client, NotPermitted
from dynafast._impl import vclock as versions
from dynafast.net.blocking import BlockingConnection
from dynafast.net.messages import Auth, Msg, parse
from dynafast.security.access import hello, peer_proof, write_secret
from dynafast.security.users import Users
from dynafast.testing.cluster import LocalCluster, NodeProcess, NodeStartError, free_port
from test_cluster import replica_copy, wait_for, wait_members

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(240)]

ADMIN = {"username": "root", "password": "root password"}


def raw(node) -> BlockingConnection:
    """A connection that never logs in: what anyone who reaches the port has."""
    host, port = node.address.rsplit(":", 1)
    return BlockingConnection(host, int(port), 5.0)


def credentials(base):
    secret = base / "secret"
    write_secret(secret)
    users = Users(base / "users.json", must_exist=False)
    users.add("root", ADMIN["password"], "admin")
    users.add("writer", "writer password", "readwrite")
    users.add("reader", "reader password", "read")
    return secret, base / "users.json"


def secured_args(secret, users_file):
    return ["--secret-file", str(secret), "--users-file", str(users_file)]


def forged_state(client, address, members_extra=(), version_jump=1000):
    """A well-formed cluster state, as a peer would push it, claiming a version far ahead."""
    _, fields = client._conn(address)[0].call(Msg.RING_GET, (), 5.0)
    fields = list(fields)
    fields[5] += version_jump
    return tuple(fields)


@pytest.fixture(scope="module")
def secured(tmp_path_factory):
    base = tmp_path_factory.mktemp("secured")
    secret, users_file = credentials(base)
    with LocalCluster(3, base_dir=base / "c", extra_args=secured_args(secret, users_file)) as c:
        with Client(c.addresses, **ADMIN) as client:
            wait_members(client, 3, timeout=60)
            for i in range(50):
                client.put(b"kept-%d" % i, b"value-%d" % i, w=3)
        c.secret = secret
        yield c


def all_kept(cluster) -> bool:
    with Client(cluster.addresses, **ADMIN) as client:
        return all(client.get(b"kept-%d" % i, r=3).values == [b"value-%d" % i] for i in range(50))


def test_peers_authenticate_and_replicate(secured):
    # w=3 puts were acknowledged in the fixture: every node accepted the others' REPLICA_PUTs.
    with Client(secured.addresses, **ADMIN) as client:
        status = client.status(secured.node("n1").address)
        assert status["security"]["peer_secret"] and status["security"]["users"]
        assert all(m["state"] == "up" for m in status["members"])
    assert all_kept(secured)


@pytest.mark.parametrize("msg_type, fields", [
    (Msg.REAP, (0, b"kept-1", b"x")),
    (Msg.REPLICA_PUT, (0, b"kept-2", b"forged", None)),
    (Msg.REPLICA_GET, (0, b"kept-3", None)),
    (Msg.LEAVE, ("n1",)),
    (Msg.JOIN, ("evil", "127.0.0.1:1", "")),
    (Msg.GOSSIP, ("evil", [], [], 0, b"", b"")),
    (Msg.HINT_PUSH, ("n1", [], [])),
    (Msg.TRANSFER, (0, [], [])),
    (Msg.TRANSFER_DONE, (0, "evil", 1)),
    (Msg.MERKLE_GET, (0, [])),
    (Msg.KEYS_GET, (0, 0)),
    (Msg.GET, (b"kept-4",)),
    (Msg.PUT, (b"kept-5", b"forged")),
    (Msg.DELETE, (b"kept-6",)),
    (Msg.STATUS, ()),
    (Msg.RING_GET, ()),
    (Msg.COMPACT, ()),
], ids=lambda v: v.name if isinstance(v, Msg) else "")
def test_an_anonymous_connection_is_refused_everything(secured, msg_type, fields):
    conn = raw(secured.node("n2"))
    try:
        with pytest.raises(NotPermitted):
            conn.call(msg_type, fields)
        conn.call(Msg.PING, ())  # refused, not cut off: the connection still answers
    finally:
        conn.close()


def test_a_forged_ring_push_and_a_fake_join_change_nothing(secured):
    with Client(secured.addresses, **ADMIN) as client:
        state = forged_state(client, secured.node("n1").address)
        before = client.status(secured.node("n1").address)["ring_version"]
    for node in secured.nodes:
        conn = raw(node)
        try:
            with pytest.raises(NotPermitted):
                conn.call(Msg.RING_PUSH, state)
            with pytest.raises(NotPermitted):
                conn.call(Msg.JOIN, ("evil", "127.0.0.1:9", ""))
        finally:
            conn.close()
    with Client(secured.addresses, **ADMIN) as client:
        for node in secured.nodes:
            status = client.status(node.address)
            assert status["ring_version"] == before
            assert sorted(m["id"] for m in status["members"]) == ["n1", "n2", "n3"]
    assert all_kept(secured)


def test_a_wrong_secret_or_a_replayed_proof_does_not_log_in(secured):
    node = secured.node("n1")
    secret = secured.secret.read_bytes().strip()
    conn = raw(node)
    try:
        sent = hello()
        _, reply = conn.call(Msg.HELLO, sent)
        answer = parse(Msg.HELLO_REPLY, reply)
        assert answer.node_id == "n1" and answer.secured
        with pytest.raises(AuthenticationFailed):
            conn.call(Msg.AUTH, Auth("peer", "evil", peer_proof(b"not the secret at all!", answer.nonce,
                                                                 sent.nonce, "evil")))
        with pytest.raises(NotPermitted):
            conn.call(Msg.REAP, (0, b"kept-1", b"x"))
        # A proof recorded from a real login on one connection...
        _, reply = conn.call(Msg.HELLO, sent)
        recorded = peer_proof(secret, parse(Msg.HELLO_REPLY, reply).nonce, sent.nonce, "n9")
        conn.call(Msg.AUTH, Auth("peer", "n9", recorded))
    finally:
        conn.close()
    other = raw(node)
    try:
        # ...is worth nothing on another, even with the same client nonce: the node's nonce differs.
        other.call(Msg.HELLO, sent)
        with pytest.raises(AuthenticationFailed):
            other.call(Msg.AUTH, Auth("peer", "n9", recorded))
        with pytest.raises(AuthenticationFailed):  # and AUTH without a fresh HELLO is refused too
            other.call(Msg.AUTH, Auth("peer", "n9", recorded))
        with pytest.raises(NotPermitted):
            other.call(Msg.REPLICA_GET, (0, b"kept-1", None))
    finally:
        other.close()


def test_roles_decide_what_a_user_may_do(secured):
    key = b"role-key"
    with Client(secured.addresses, username="writer", password="writer password") as writer:
        writer.put(key, b"written")
        with pytest.raises(NotPermitted):
            writer.leave("n3", address=secured.node("n3").address)
    with Client(secured.addresses, username="reader", password="reader password") as reader:
        assert reader.get(key).values == [b"written"]
        with pytest.raises(NotPermitted):
            reader.put(key, b"overwritten")
    with pytest.raises(AuthenticationFailed):
        with Client(secured.addresses, username="reader", password="wrong") as wrong:
            wrong.get(key)
    with pytest.raises(NotPermitted, match="needs a login"):
        with Client(secured.addresses) as anonymous:
            anonymous.get(key)


def test_a_node_with_another_secret_cannot_join(secured, tmp_path):
    other_secret = tmp_path / "other-secret"
    write_secret(other_secret)
    users = secured.nodes[0].argv()[secured.nodes[0].argv().index("--users-file") + 1]
    port = free_port()
    stranger = NodeProcess("n9", tmp_path / "n9", args=[
        "--listen", f"127.0.0.1:{port}", "--seeds", secured.node("n1").address,
        "--secret-file", str(other_secret), "--users-file", users])
    try:
        stranger.start(wait=False)
        # It keeps trying; the cluster never admits it and never shows it, and says why in its log.
        assert not wait_for(lambda: _members(secured) != ["n1", "n2", "n3"], 8, 0.5)
        assert wait_for(lambda: "wrong cluster secret" in secured.node("n1").output(), 20, 0.5)
    finally:
        stranger.kill()


def _members(cluster):
    with Client(cluster.addresses, **ADMIN) as client:
        return sorted(m["id"] for m in client.status(cluster.node("n1").address)["members"])


def test_an_open_cluster_takes_forged_frames(tmp_path):
    # What --insecure (or a loopback node without a secret) exposes: anyone who reaches a port is a peer.
    with LocalCluster(3, base_dir=tmp_path / "c") as c:
        with Client(c.addresses) as client:
            wait_members(client, 3)
            client.put(b"open", b"real", w=3)
            client.refresh_ring()
            ring = client._routing.ring
            partition = ring.partition_of(b"open")
            owner = c.node(ring.replicas(partition)[0])
            forged = versions.Siblings.new(b"forged").update(None, b"evil.1", 1)
            conn = raw(owner)
            try:
                conn.call(Msg.REPLICA_PUT, (partition, b"open", forged.to_bytes(), False, None))
            finally:
                conn.close()
            assert b"forged" in replica_copy(owner, b"open").live_values()


def test_protected_mode_refuses_a_wide_listen_without_a_secret(tmp_path):
    node = NodeProcess("p1", tmp_path / "p1", args=["--listen", f"0.0.0.0:{free_port()}"])
    with pytest.raises(NodeStartError) as failed:
        node.start()  # refused before it binds anything
    assert "--insecure" in failed.value.stderr_tail


def test_protected_mode_rules():
    from dynafast.config import NodeConfig
    from dynafast.security.access import protected_mode

    protected_mode(NodeConfig(listen="127.0.0.1:7101", http="[::1]:8101"))
    protected_mode(NodeConfig(listen="localhost:7101"))
    for config in (NodeConfig(listen="0.0.0.0:7101"), NodeConfig(listen="10.1.2.3:7101"),
                   NodeConfig(listen="127.0.0.1:7101", http="0.0.0.0:8101"),
                   NodeConfig(listen="db1.example:7101")):
        with pytest.raises(ValueError, match="beyond loopback"):
            protected_mode(config)
    protected_mode(NodeConfig(listen="0.0.0.0:7101", insecure=True))
    protected_mode(NodeConfig(listen="0.0.0.0:7101", secret_file="/any/secret"))
    protected_mode(NodeConfig(listen="0.0.0.0:7101", users_file="/any/users.json"))


def test_clients_that_take_every_connection_leave_the_peers_theirs(tmp_path):
    secret, users_file = credentials(tmp_path)
    limits = tmp_path / "limits.toml"
    limits.write_text("max_connections = 24\npeer_reserve = 8\n")
    held = []
    with LocalCluster(3, base_dir=tmp_path / "c",
                      extra_args=secured_args(secret, users_file) + ["--config", str(limits)]) as c:
        with Client(c.addresses, **ADMIN) as client:
            wait_members(client, 3, timeout=60)
        n1 = c.node("n1")
        try:
            # Take every connection n1 has for clients, and try for more: they are refused, not queued.
            refused = 0
            for _ in range(40):
                conn = raw(n1)
                held.append(conn)
                try:
                    conn.call(Msg.PING, ())
                except Exception:  # noqa: BLE001 - closed with OVERLOADED: at the limit
                    refused += 1
            assert refused >= 40 - 24
            # A connection in the peers' reserve may not act as a client, even logged in as one.
            status = None
            with pytest.raises(Exception):
                with Client([n1.address], **ADMIN) as late:
                    status = late.status(n1.address)
            assert status is None
            # Another node restarted now reconnects to n1 through the reserve: puts it coordinates still reach
            # every replica.
            c.node("n2").stop()
            c.node("n2").start()
            with Client([c.node("n2").address], partition_aware=False, **ADMIN) as client:
                assert wait_for(lambda: _put_w3(client), 60, 1.0), "w=3 puts never succeeded again"
        finally:
            for conn in held:
                conn.close()
        with Client(c.addresses, **ADMIN) as client:
            assert client.status(n1.address)["requests"] is not None  # n1 serves clients again


def _put_w3(client) -> bool:
    try:
        for i in range(20):
            client.put(b"reserve-%d" % i, b"v", w=3)
        return True
    except Exception:  # noqa: BLE001 - not yet: peers still reconnecting
        return False
