"""Throw random and mutated frames at a running node process; afterwards it must still answer correctly."""
import random
import socket
import struct
import time

import pytest

from dynafast import Client
from dynafast._impl import codec
from dynafast.net.blocking import BlockingConnection
from dynafast.net.messages import Auth, Msg, parse
from dynafast.security.access import hello, peer_proof, write_secret
from dynafast.security.users import Users
from dynafast.testing.cluster import NodeProcess

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(180)]
# What is tested is that the node lives through the fuzz, not how fast it answers: on a loaded machine its first
# answer (a login, an argon2 hash in a worker thread) once took over the client's default 2 s.
CLIENT_TIMEOUT = 10.0
SEED = 424242
CASES = 400

# Messages that change the cluster's shape are left out of the random-field cases: a well-formed JOIN from
# anyone is a real join (the protocol has no authentication), not malformed input.
FUZZED_TYPES = [m for m in Msg if m not in (Msg.JOIN, Msg.LEAVE, Msg.RING_PUSH, Msg.GOSSIP, Msg.TRANSFER_DONE)]


def random_value(rng, depth=0):
    kind = rng.randrange(8 if depth == 0 else 6)
    if kind == 0:
        return None
    if kind == 1:
        return rng.randint(-2**63, 2**63 - 1)
    if kind == 2:
        return rng.choice([0, 1, 2, 3, 63, 64, 65535, -1])
    if kind == 3:
        return bytes(rng.getrandbits(8) for _ in range(rng.choice([0, 1, 16, 200])))
    if kind == 4:
        return rng.choice(["", "n1", "x" * 300, "127.0.0.1:1"])
    if kind == 5:
        return rng.random() * 1e6
    return [random_value(rng, 1) for _ in range(rng.randint(0, 4))]


def client_frames(rng):
    value = bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 200)))
    rid = rng.randint(1, 2**32 - 1)
    return [
        codec.encode(Msg.GET, rid, (b"fuzz-key", 2, 1000)),
        codec.encode(Msg.PUT, rid, (b"fuzz-key", value, None, 1, 0, 1000)),
        codec.encode(Msg.DELETE, rid, (b"fuzz-key", None, 1, 0, 1000)),
        codec.encode(Msg.REPLICA_PUT, rid, (3, b"fuzz-key", value, False, None)),
    ]


def mutate(rng, frame):
    data = bytearray(frame)
    kind = rng.randrange(4)
    if kind == 0:
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    elif kind == 1:
        del data[rng.randrange(len(data)):]
    elif kind == 2:
        struct.pack_into(">I", data, 0, rng.choice([0, 5, 6, 2**31, rng.randrange(2**32)]))
    else:
        pos = rng.randrange(10, len(data)) if len(data) > 10 else len(data)
        data[pos:pos] = bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 8)))
    return bytes(data)


def blast(address, payloads, sock=None):
    """Send payloads on one connection (a new one, or ``sock``), reading whatever comes back, until the node
    closes it or we finish."""
    if sock is None:
        host, port = address.rsplit(":", 1)
        sock = socket.create_connection((host, int(port)), timeout=5)
    with sock:
        sock.settimeout(0.05)
        for payload in payloads:
            try:
                sock.sendall(payload)
            except OSError:
                return
            try:
                if not sock.recv(65536):
                    return
            except socket.timeout:
                pass
            except OSError:
                return


def test_node_survives_random_and_mutated_frames(tmp_path):
    node = NodeProcess("f1", tmp_path / "f1", args=["--n", "1", "--r", "1", "--w", "1"])
    node.start()
    try:
        with Client([node.address], timeout=CLIENT_TIMEOUT) as client:
            for i in range(50):
                client.put(b"keep-%d" % i, b"value-%d" % i)
        rng = random.Random(SEED)
        deadline = time.monotonic() + 60
        for case in range(CASES):
            if time.monotonic() > deadline:
                break
            kind = case % 3
            if kind == 0:
                payloads = [bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 300)))]
            elif kind == 1:
                payloads = [mutate(rng, f) for f in client_frames(rng)]
            else:
                msg_type = rng.choice(FUZZED_TYPES)
                fields = tuple(random_value(rng) for _ in range(rng.randint(0, 7)))
                try:
                    payloads = [codec.encode(int(msg_type), rng.randint(0, 2**32 - 1), fields)]
                except (TypeError, OverflowError, ValueError):
                    continue
            blast(node.address, payloads)
        assert node.is_running(), node.stderr_tail()
        # Everything written before is intact, and the node serves new requests.
        with Client([node.address], timeout=CLIENT_TIMEOUT) as client:
            for i in range(50):
                assert client.get(b"keep-%d" % i).values == [b"value-%d" % i]
            client.put(b"after", b"fuzz")
            assert client.get(b"after").values == [b"fuzz"]
            status = client.status()
            assert [m["id"] for m in status["members"]] == ["f1"]
    finally:
        node.stop()


def handshake_frames(rng, secret):
    """Random, half-right and out-of-order handshakes: HELLO with odd nonces, AUTH of every kind."""
    rid = rng.randint(1, 2**32 - 1)
    nonce = bytes(rng.getrandbits(8) for _ in range(rng.choice([0, 1, 15, 16, 32, 64, 65, 300])))
    kind = rng.choice(["peer", "user", "", "root", "peer\0", "x" * 500])
    name = rng.choice(["n1", "root", "", "\u00e9" * 70, "a" * 5000])
    proof = rng.choice([b"", bytes(32), peer_proof(secret, nonce, nonce, "n1"),
                        bytes(rng.getrandbits(8) for _ in range(rng.choice([1, 32, 2000])))])
    frames = [codec.encode(Msg.HELLO, rid, (nonce,)), codec.encode(Msg.AUTH, rid + 1, (kind, name, proof))]
    if rng.random() < 0.3:
        frames.reverse()  # AUTH before HELLO
    if rng.random() < 0.3:
        frames.append(codec.encode(Msg.AUTH, rid + 2, (kind, name, proof)))  # AUTH twice
    if rng.random() < 0.3:
        frames = [mutate(rng, f) for f in frames]
    return frames


def logged_in(address, login):
    """A raw socket that has logged in (``login(conn)``), to fuzz an authenticated session."""
    host, port = address.rsplit(":", 1)
    conn = BlockingConnection(host, int(port), 10.0)
    login(conn)
    sock, conn._sock = conn._sock, None
    return sock


def test_secured_node_survives_fuzzed_handshakes_and_sessions(tmp_path):
    secret_file = tmp_path / "secret"
    secret = write_secret(secret_file)
    users = Users(tmp_path / "users.json", must_exist=False)
    users.add("root", "root password", "admin")
    users.add("rw", "rw password", "readwrite")
    node = NodeProcess("s1", tmp_path / "s1", args=["--n", "1", "--r", "1", "--w", "1", "--secret-file",
                                                      str(secret_file), "--users-file", str(tmp_path / "users.json")])
    node.start()

    def as_user(name, password):
        def login(conn):
            conn.call(Msg.HELLO, hello())
            conn.call(Msg.AUTH, Auth("user", name, password.encode()))
        return login

    def as_peer(conn):
        sent = hello()
        _, reply = conn.call(Msg.HELLO, sent)
        conn.call(Msg.AUTH, Auth("peer", "p9", peer_proof(secret, parse(Msg.HELLO_REPLY, reply).nonce,
                                                            sent.nonce, "p9")))

    try:
        with Client([node.address], username="root", password="root password", timeout=CLIENT_TIMEOUT) as client:
            for i in range(50):
                client.put(b"keep-%d" % i, b"value-%d" % i)
        rng = random.Random(SEED + 1)
        deadline = time.monotonic() + 90
        for case in range(CASES):
            if time.monotonic() > deadline:
                break
            kind = case % 4
            if kind == 0:  # the handshake itself, from an anonymous connection
                blast(node.address, handshake_frames(rng, secret))
                continue
            msg_type = rng.choice(FUZZED_TYPES)
            fields = tuple(random_value(rng) for _ in range(rng.randint(0, 7)))
            try:
                payloads = [codec.encode(int(msg_type), rng.randint(0, 2**32 - 1), fields)]
            except (TypeError, OverflowError, ValueError):
                continue
            payloads += [mutate(rng, f) for f in client_frames(rng)]
            if kind == 1:  # anonymous: every frame refused or malformed
                blast(node.address, payloads)
            else:  # a session that logged in, as a user or as a peer
                login = as_user("rw", "rw password") if kind == 2 else as_peer
                blast(node.address, payloads, sock=logged_in(node.address, login))
        assert node.is_running(), node.stderr_tail()
        with Client([node.address], username="root", password="root password", timeout=CLIENT_TIMEOUT) as client:
            for i in range(50):
                assert client.get(b"keep-%d" % i).values == [b"value-%d" % i]
            client.put(b"after", b"fuzz")
            assert client.get(b"after").values == [b"fuzz"]
            status = client.status()
            assert [m["id"] for m in status["members"]] == ["s1"]
            assert status["security"]["login_failures"] > 0 and status["security"]["refused"] > 0
        assert "Traceback" not in node.output()  # every bad frame was an answered error, none a crash
    finally:
        node.stop()
