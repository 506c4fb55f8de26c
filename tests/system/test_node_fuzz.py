"""Throw random and mutated frames at a running node process; afterwards it must still answer correctly."""
import random
import socket
import struct
import time

import pytest

from dynafast import Client
from dynafast._impl import codec
from dynafast.net.messages import Msg
from dynafast.testing.cluster import NodeProcess

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(180)]
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


def blast(address, payloads):
    """Send payloads on one connection, reading whatever comes back, until the node closes it or we finish."""
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as sock:
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
        with Client([node.address]) as client:
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
        with Client([node.address]) as client:
            for i in range(50):
                assert client.get(b"keep-%d" % i).values == [b"value-%d" % i]
            client.put(b"after", b"fuzz")
            assert client.get(b"after").values == [b"fuzz"]
            status = client.status()
            assert [m["id"] for m in status["members"]] == ["f1"]
    finally:
        node.stop()
