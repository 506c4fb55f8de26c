"""Flow control and gossip bounds against real node processes: a client that never reads its replies, frames
that never finish, idle connections, and gossip carrying made-up members."""
import socket
import struct
import time

import pytest

from dynafast import Client
from dynafast._impl import codec
from dynafast.errors import ProtocolError
from dynafast.net.blocking import BlockingConnection
from dynafast.net.messages import Msg
from dynafast.testing.cluster import LocalCluster
from test_cluster import wait_members

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(240)]

MIB = 1024 * 1024


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def raw_socket(address: str) -> socket.socket:
    host, port = address.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=10.0)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def config_args(tmp_path, **options):
    path = tmp_path / "node.toml"
    path.write_text("".join(f"{k} = {v!r}\n" for k, v in options.items()))
    return ["--config", str(path)]


def is_closed_by_peer(sock: socket.socket, timeout: float) -> bool:
    """Read (and drop) whatever arrives until the peer closes, for at most ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            if not sock.recv(65536):
                return True
        except TimeoutError:
            return False
        except ConnectionResetError:
            return True
    return False


def connection_error(sock: socket.socket, timeout: float = 10.0):
    """The first frame the server sends on ``sock`` (type, id, fields), or None if it sends none in time."""
    decoder = codec.Decoder()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            data = sock.recv(65536)
        except (TimeoutError, ConnectionResetError):
            return None
        if not data:
            return None
        frames = decoder.feed(data)
        if frames:
            return frames[0]
    return None


def test_clients_that_never_read_cannot_grow_the_node_and_others_are_still_served(tmp_path):
    with LocalCluster(3, base_dir=tmp_path / "c") as c:
        target = c.nodes[0]
        value = bytes(range(256)) * (MIB // 256)
        with Client([target.address], timeout=5.0) as client:
            wait_members(client, 3)
            client.put(b"big", value, w=3)
            for _ in range(5):  # warm up: the node has served the value before the baseline is taken
                assert client.get(b"big").values == [value]
            baseline = rss_bytes(target.pid)

            requests = bytearray()
            for request_id in range(1, 1001):
                codec.encode_into(requests, Msg.GET, request_id, (b"big", None, None))
            sockets = [raw_socket(target.address) for _ in range(3)]
            try:
                for sock in sockets:
                    sock.sendall(requests)  # about 20 KB: fits the kernel's buffers whatever the node does
                peak = baseline
                deadline = time.monotonic() + 10.0
                while time.monotonic() < deadline:
                    peak = max(peak, rss_bytes(target.pid))
                    if peak - baseline > 100 * MIB:
                        break  # no need to push the machine further: the bound is already broken
                    time.sleep(0.25)
                # A client that reads is still answered (within its request timeout; no timing claim beyond).
                assert client.get(b"big").values == [value]
                peak = max(peak, rss_bytes(target.pid))
            finally:
                for sock in sockets:
                    sock.close()
            assert peak - baseline <= 100 * MIB, f"RSS grew by {(peak - baseline) / MIB:.0f} MiB"
            # The connections are gone; the node still answers.
            assert client.get(b"big").values == [value]


def test_unfinished_frames_are_capped_across_connections(tmp_path):
    args = config_args(tmp_path, max_unfinished_frames=8 * MIB)
    with LocalCluster(1, base_dir=tmp_path / "c", n=1, r=1, w=1, extra_args=args) as c:
        node = c.nodes[0]
        with Client([node.address], timeout=5.0) as client:
            wait_members(client, 1)
        # Each connection announces a 6 MiB frame and sends 3 MiB of it: the third goes over 8 MiB.
        header = struct.pack(">IB", 6 * MIB, 1)
        sockets = [raw_socket(node.address) for _ in range(3)]
        try:
            for sock in sockets[:2]:
                sock.sendall(header + bytes(3 * MIB))
            time.sleep(0.5)  # the bytes of the first two are received before the third starts
            sockets[2].sendall(header + bytes(3 * MIB))
            frame = connection_error(sockets[2])
            assert frame is not None, "the connection over the cap got no error"
            msg_type, request_id, fields = frame
            assert (msg_type, request_id) == (Msg.ERROR, 0)
            assert is_closed_by_peer(sockets[2], 10.0)
            # The first two are within the cap and stay open.
            for sock in sockets[:2]:
                assert not is_closed_by_peer(sock, 0.5)
        finally:
            for sock in sockets:
                sock.close()
        with Client([node.address], timeout=5.0) as client:
            client.put(b"k", b"v")
            assert client.get(b"k").values == [b"v"]


def test_idle_connections_are_closed(tmp_path):
    args = config_args(tmp_path, idle_timeout=1.0)
    with LocalCluster(1, base_dir=tmp_path / "c", n=1, r=1, w=1, extra_args=args) as c:
        node = c.nodes[0]
        silent = raw_socket(node.address)
        unfinished = raw_socket(node.address)
        try:
            unfinished.sendall(struct.pack(">IB", 1000, 1) + b"x" * 10)  # a frame that never completes
            assert is_closed_by_peer(silent, 15.0), "a silent connection stayed open"
            assert is_closed_by_peer(unfinished, 15.0), "a connection with an unfinished frame stayed open"
        finally:
            silent.close()
            unfinished.close()
        # A client whose pooled connection the node closed while idle reconnects on its next request.
        with Client([node.address], timeout=5.0) as client:
            client.put(b"k", b"v")
            time.sleep(3.0)
            assert client.get(b"k").values == [b"v"]


def gossip_fields(state, heartbeat_ids, *, state_version=0, ids=None):
    """A GOSSIP request from "intruder" with the given heartbeat ids and the given cluster state."""
    ring, real_ids, addresses, zones, statuses, version, next_ring, done_p, done_t = state[:9]  # a RING_REPLY
    if ids is not None:
        extra = len(ids) - len(real_ids)
        addresses = addresses + ["127.0.0.1:1"] * extra
        zones = zones + [""] * extra
        statuses = statuses + ["valid"] * extra
    else:
        ids = real_ids
    return ("intruder", heartbeat_ids, [1] * len(heartbeat_ids), state_version, b"",
            ring, ids, addresses, zones, statuses, state_version, next_ring, done_p, done_t)


def test_gossip_with_made_up_members_is_refused_and_not_carried(tmp_path):
    with LocalCluster(3, base_dir=tmp_path / "c", extra_args=config_args(tmp_path, gossip_interval=0.2)) as c:
        with Client(c.addresses, timeout=5.0) as client:
            wait_members(client, 3)
            host, port = c.nodes[0].address.rsplit(":", 1)
            conn = BlockingConnection(host, int(port), 30.0)
            try:
                _, state = conn.call(Msg.RING_GET, ())
                real = set(state[1])
                made_up = [f"ghost-{i:06d}" for i in range(200_000)]
                # 200,000 heartbeats of members nobody admitted: refused.
                with pytest.raises(ProtocolError):
                    conn.call(Msg.GOSSIP, gossip_fields(state, made_up))
                # A newer state naming 200,000 members: refused too.
                with pytest.raises(ProtocolError):
                    conn.call(Msg.GOSSIP, gossip_fields(state, [], state_version=state[5] + 1,
                                                        ids=sorted(state[1]) + made_up))
                with pytest.raises(ProtocolError):
                    conn.call(Msg.RING_PUSH, gossip_fields(state, [], state_version=state[5] + 1,
                                                           ids=sorted(state[1]) + made_up)[5:])
                # A few made-up heartbeats (under the bound) are accepted and ignored: never passed on.
                _, reply = conn.call(Msg.GOSSIP, gossip_fields(state, made_up[:50]))
                assert set(reply[1]) <= real
            finally:
                conn.close()
            time.sleep(1.0)  # several gossip rounds: anything taken in would have spread by now
            for node in c.nodes:
                host, port = node.address.rsplit(":", 1)
                conn = BlockingConnection(host, int(port), 10.0)
                try:
                    _, state = conn.call(Msg.RING_GET, ())
                    _, reply = conn.call(Msg.GOSSIP, gossip_fields(state, []))
                finally:
                    conn.close()
                assert set(reply[1]) <= real, f"{node.node_id} carries heartbeats of made-up members"
                assert {m["id"] for m in client.status(node.address)["members"]} == real
