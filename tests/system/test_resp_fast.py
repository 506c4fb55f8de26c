"""RESP SET on a node that is the key's one replica (N=1) is one local step: it must mean what the read then
write it replaces meant (supersede every version stored, wait for dw), and a damaged record must not block it."""
import socket
import time

import pytest
import redis

from dynafast import Client
from dynafast.cluster import expiry
from dynafast.errors import DynafastError
from dynafast.testing.cluster import LocalCluster
from test_cluster import wait_members
from test_corrupt_records import copy_or_error, flip_value_byte
from test_resp import connect

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(120)]


@pytest.fixture
def one_node(tmp_path):
    with LocalCluster(1, base_dir=tmp_path / "c", n=1, r=1, w=1, resp=True) as c:
        yield c


def test_set_supersedes_every_sibling_and_answers_in_order(one_node):
    r = connect(one_node.nodes[0], protocol=2, single_connection_client=True)
    with Client(one_node.addresses, timeout=5.0) as client:
        client.put(b"k", b"one")
        client.put(b"k", b"two")  # blind: a sibling of the first
        assert sorted(client.get(b"k").values) == [b"one", b"two"]
        assert r.set("k", "three")
        assert client.get(b"k").values == [b"three"]
        assert r.execute_command("DF.GET", "k")[1] == [b"three"]
        # A value that begins as the store's envelopes do is stored escaped and read back as sent.
        odd = expiry.MARK + b"not an envelope"
        assert r.set("odd", odd) and r.get("odd") == odd
        assert client.get(b"odd").values == [odd]
    # Acknowledged once durable (dw 1, the default) and at once (dw 0): both supersede, in pipeline order.
    for dw in (1, 0):
        assert r.execute_command("DF.CONFIG", "SET", "dw", str(dw)) == b"OK"
        pipe = r.pipeline(transaction=False)
        pipe.set("p", f"a{dw}").get("p").set("p", f"b{dw}").get("p")
        assert pipe.execute() == [True, f"a{dw}".encode(), True, f"b{dw}".encode()]
        assert r.execute_command("DF.GET", "p")[1] == [f"b{dw}".encode()]


def test_set_replaces_a_damaged_record(one_node):
    node = one_node.nodes[0]
    r = connect(node, protocol=2)
    value = b"soon-damaged:" + b"d" * 64
    assert r.set("k", value)
    flip_value_byte(node, b"k", value)
    assert isinstance(copy_or_error(node, b"k"), DynafastError)  # the premise: the record cannot be read
    with pytest.raises(redis.ResponseError):
        r.get("k")  # a read says so (no other replica has it) ...
    # ... and a SET writes over it, as a put does: with N=1 nothing else could ever repair the key.
    assert r.set("k", "fresh")
    assert r.get("k") == b"fresh"


def _peak_rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def _growth_while_a_client_never_reads(node, requests: bytes, r, key: str, value: bytes, checks: int,
                                       busy_replicas: bool = False) -> int:
    """Send ``requests`` on a connection that never reads its replies; meanwhile ``r`` must still read ``key``
    (``checks`` times, 0.1 s apart). Returns how much the node's peak memory grew. ``busy_replicas``: the requests
    have the other nodes send this one more than the peer timeout lets through on a loaded machine (hundreds of
    MiB), so a read of theirs may be answered NOREPLICAS meanwhile: an answer, not a hang; most must still read."""
    before = _peak_rss(node.pid)
    host, port = node.resp_address.rsplit(":", 1)
    greedy = socket.socket()
    greedy.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    greedy.connect((host, int(port)))
    read = 0
    try:
        greedy.sendall(requests)
        for _ in range(checks):  # the node takes what it can of the requests meanwhile
            try:
                assert r.get(key) == value  # and serves the others
                read += 1
            except redis.ResponseError as exc:
                if not (busy_replicas and str(exc).startswith("NOREPLICAS")):
                    raise
            time.sleep(0.1)
        assert read > checks // 2, f"only {read} of {checks} reads answered"
        return _peak_rss(node.pid) - before
    finally:
        greedy.close()


def test_a_client_that_never_reads_its_big_replies_cannot_grow_the_node(one_node):
    """1,200 GETs of 512 KiB values in one write, never read: 600 MiB of replies. They go out (and are held back)
    as they are made, through the lane and through the general path alike, instead of all at once."""
    node = one_node.nodes[0]
    r = connect(node, protocol=2)
    value = b"x" * (512 * 1024)
    assert r.set("big", value) and r.set("big-ttl", value, ex=1000)  # the second: the general path answers it
    grown = _growth_while_a_client_never_reads(node, b"GET big\r\nGET big-ttl\r\n" * 600, r, "big", value, 20)
    assert grown < 150 * 1024 * 1024
    assert r.ping()


@pytest.fixture(scope="module")
def big_values(tmp_path_factory):
    """A 3-node cluster holding 300 different 1 MiB values and a small one (a GET there waits for another node)."""
    with LocalCluster(3, base_dir=tmp_path_factory.mktemp("big") / "c", resp=True) as c:
        with Client(c.addresses, timeout=10.0) as client:
            wait_members(client, 3, timeout=60)
        r = connect(c.nodes[0], protocol=2)
        value = b"x" * (1024 * 1024)
        keys = [f"big-{i}" for i in range(300)]
        for start in range(0, len(keys), 20):
            pipe = r.pipeline(transaction=False)
            for key in keys[start:start + 20]:
                pipe.set(key, value)
            assert all(pipe.execute())
        assert r.get(keys[-1]) == value and r.set("small", "s")
        for i in range(12):  # the largest values a node takes (max_value_size, 8 MiB)
            assert r.set(f"huge-{i}", b"h" * (8 * 1024 * 1024 - 64))
        yield c, keys, value


def test_a_client_that_never_reads_big_replies_from_other_nodes_cannot_grow_the_node(big_values):
    """On a cluster a GET waits for another node (R=2): its reply comes later, through a future. 300 GETs of
    different 1 MiB values in one write, never read, were all started at once (up to 1,024 per connection) and
    every reply kept: 300 MiB. Now a connection has as many in flight as its replies' size allows."""
    c, keys, value = big_values
    node = c.nodes[0]
    r = connect(node, protocol=2)
    requests = b"".join(b"GET %s\r\n" % key.encode() for key in keys)
    assert _growth_while_a_client_never_reads(node, requests, r, keys[0], value, 30) < 100 * 1024 * 1024
    assert r.ping()


def test_a_client_that_never_reads_big_replies_after_small_ones_cannot_grow_the_node(big_values):
    """Small replies first widened the window of commands in flight (up to 1,024), then 300 GETs of 1 MiB values
    all started before the first of them answered, and the replica calls queued behind them timed out for the
    node's other clients (NOREPLICAS). At most 32 commands of a connection now wait for other nodes at once."""
    c, keys, value = big_values
    node = c.nodes[1]  # not the node the test above grew
    r = connect(node, protocol=2)
    requests = b"GET small\r\n" * 2000 + b"".join(b"GET %s\r\n" % key.encode() for key in keys)
    assert _growth_while_a_client_never_reads(node, requests, r, keys[0], value, 30) < 200 * 1024 * 1024
    assert r.ping()


def test_a_client_that_leaves_64_mib_of_replies_unsent_is_disconnected(big_values):
    """After small replies, GETs of the largest values a node takes (8 MiB) all start at once: 96 MiB of replies
    for a client that reads none. Past 64 MiB unsent the node closes the connection, as Redis's
    client-output-buffer-limit does, and counts it in INFO stats. (Their replica reads bring 192 MiB from the
    other nodes meanwhile: on a loaded machine another client's read may find its replicas late for a moment.)"""
    c, keys, value = big_values
    node = c.nodes[2]
    r = connect(node, protocol=2)
    before = r.info("stats")["client_output_buffer_limit_disconnections"]
    requests = b"GET small\r\n" * 2000 + b"".join(b"GET huge-%d\r\n" % i for i in range(12))
    grown = _growth_while_a_client_never_reads(node, requests, r, keys[0], value, 30, busy_replicas=True)
    assert r.info("stats")["client_output_buffer_limit_disconnections"] == before + 1
    assert grown < 250 * 1024 * 1024, grown
    assert r.ping()
