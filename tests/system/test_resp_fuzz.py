"""Fuzzing a real node's RESP listener: random and mutated frames, huge bulk lengths, deep arrays, too many
arguments. The node never crashes and keeps serving; the limits answer Redis's protocol errors."""
import random
import socket
import time

import pytest
import redis

from dynafast.testing.cluster import LocalCluster

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]

MAX_VALUE = 64 * 1024


def frame(args) -> bytes:
    out = b"*%d\r\n" % len(args)
    for arg in args:
        out += b"$%d\r\n%s\r\n" % (len(arg), arg)
    return out


def exchange(address, data: bytes, wait: float = 3.0) -> bytes:
    """Send ``data``, close our side, and read what the node answers until it closes (bounded in time)."""
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=wait) as s:
        try:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the node closed already (a protocol error): read what it said
        out = b""
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                chunk = s.recv(65536)
            except (socket.timeout, OSError):
                break
            if not chunk:
                break
            out += chunk
        return out


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    base = tmp_path_factory.mktemp("resp-fuzz")
    config = base / "node.toml"
    config.write_text(f"max_value_size = {MAX_VALUE}\nmax_key_size = 1024\nmax_frame = {1 << 20}\n"
                      "idle_timeout = 2.0\n")
    with LocalCluster(1, base_dir=base / "c", n=1, r=1, w=1, resp=True, extra_args=["--config", str(config)]) as c:
        yield c.nodes[0]


def serves(node) -> bool:
    host, port = node.resp_address.rsplit(":", 1)
    r = redis.Redis(host=host, port=int(port), socket_timeout=10, protocol=2)
    try:
        return r.set("alive", "yes") and r.get("alive") == b"yes"
    finally:
        r.close()


@pytest.mark.parametrize("data, answer", [
    (b"*1\r\n$%d\r\n" % (MAX_VALUE + 1), b"-ERR Protocol error: invalid bulk length\r\n"),
    (b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$99999999999999999\r\n", b"-ERR Protocol error: invalid bulk length\r\n"),
    (b"*2000000\r\n", b"-ERR Protocol error: invalid multibulk length\r\n"),
    (b"*1\r\n" * 10000, b"-ERR Protocol error: expected '$', got '*'\r\n"),
    (b"*1\r\n$4\r\nPING\r\n*1\r\n$-5\r\n", b"+PONG\r\n-ERR Protocol error: invalid bulk length\r\n"),
    (b"x" * (70 * 1024), b"-ERR Protocol error: too big inline request\r\n"),
    (frame([b"SET", b"k", b"v" * (MAX_VALUE - 10)]) + frame([b"GET", b"k"]),
     b"+OK\r\n$%d\r\n%s\r\n" % (MAX_VALUE - 10, b"v" * (MAX_VALUE - 10))),
    (frame([b"SET", b"k" * 2000, b"v"]), b"-ERR key of 2000 bytes is over the limit of 1024 (max_key_size)\r\n"),
    (frame([b"GET"]) + b"PING\r\n", b"-ERR wrong number of arguments for 'get' command\r\n+PONG\r\n"),
], ids=["bulk-over-max-value", "huge-bulk-length", "too-many-args", "deep-arrays", "negative-bulk-after-ping",
        "huge-inline", "largest-value-set-and-get", "key-over-max-key", "arity-then-inline"])
def test_limits_answer_as_redis_does(node, data, answer):
    assert exchange(node.resp_address, data) == answer
    assert serves(node)


def pings(node) -> bool:
    """A new connection's PING is answered at once (not after a stall of the node's event loop)."""
    return exchange(node.resp_address, frame([b"PING"]), wait=3.0) == b"+PONG\r\n"


def reserved(node) -> int:
    """The most address space the node process has ever held (VmPeak), in bytes."""
    with open(f"/proc/{node.pid}/status") as f:
        for line in f:
            if line.startswith("VmPeak:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmPeak")


@pytest.mark.parametrize("data, answer", [
    (b"*2147483648\r\n", b"-ERR Protocol error: invalid multibulk length\r\n"),
    (b"*2147483648\r\n$-2\r\nab", b"-ERR Protocol error: invalid multibulk length\r\n"),
    (b"*1\r\n*2147483648\r\n", b"-ERR Protocol error: expected '$', got '*'\r\n"),
    # Redis reads a request that does not start with '*' as an inline one: this is an unknown command.
    (b"*1\r\n$4\r\nPING\r\n~2147483648\r\n",
     b"+PONG\r\n-ERR unknown command '~2147483648', with args beginning with: \r\n"),
], ids=["huge-array", "huge-array-then-bad-bulk", "huge-nested-array", "huge-set-after-ping"])
def test_a_huge_count_is_refused_before_anything_is_allocated(node, data, answer):
    # Each of these once had the node allocate an array of 2**31 entries (16 GiB of address space) and stall
    # its event loop for seconds when it freed it.
    assert exchange(node.resp_address, data) == answer
    assert pings(node)
    assert reserved(node) < 4 << 30


def test_a_request_larger_than_max_frame_is_refused_as_it_arrives(node):
    # Arguments each under the limit, together over max_frame (1 MiB here): refused before it is all held.
    args = [b"MSET"] + [b"x" * 60_000] * 40
    assert exchange(node.resp_address, frame(args)) == b"-ERR Protocol error: too big request\r\n"
    assert serves(node)


def test_random_and_mutated_frames_never_stop_the_node(node):
    rng = random.Random(1234)
    valid = b"".join(frame([rng.choice([b"SET", b"GET", b"DEL", b"MGET", b"PING", b"DF.PUT", b"SCAN"]),
                            *(rng.randbytes(rng.randint(0, 40)) for _ in range(rng.randint(0, 4)))])
                     for _ in range(40))
    for i in range(150):
        kind = i % 3
        if kind == 0:
            data = rng.randbytes(rng.randint(1, 2000))
        elif kind == 1:
            data = bytearray(valid[:rng.randint(1, len(valid))])
            for _ in range(rng.randint(1, 8)):
                data[rng.randrange(len(data))] = rng.choice(b"*$\r\n-0123456789:+%~_ \x00\xff")
            data = bytes(data)
        else:
            data = b"*%d\r\n" % rng.choice([0, 1, 3, 2**31, 2**63, -1]) + \
                b"$%d\r\n" % rng.choice([0, 4, 2**31, 2**62, -2]) + rng.randbytes(rng.randint(0, 50))
        exchange(node.resp_address, data, wait=1.0)
        if i % 25 == 0:
            assert node.is_running() and serves(node)
    assert node.is_running() and serves(node)
    assert "Traceback" not in node.stderr_tail(200_000)


def test_an_idle_connection_is_closed(node):
    host, port = node.resp_address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=15) as s:
        s.sendall(b"*1\r\n$4\r\nPING\r\n*2\r\n$3\r\nSET\r\n$1\r\n")  # half a request, then silence
        started = time.monotonic()
        received = b""
        while True:
            chunk = s.recv(1024)
            if not chunk:
                break
            received += chunk
        assert received == b"+PONG\r\n"
        assert time.monotonic() - started < 14  # closed after 1 to 1.5 idle timeouts (2 s here)
    assert serves(node)
