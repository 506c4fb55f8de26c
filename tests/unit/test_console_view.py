"""The console's figures: fine latency buckets, the per-second window, recent events, and the cluster view's
answer when members are down or hung (real sockets, real peer pool)."""
from __future__ import annotations

import asyncio
import json
import socket
import time
from bisect import bisect_left

from hypothesis import given, settings
from hypothesis import strategies as st

from dynafast import _impl
from dynafast.cluster.membership import ClusterState
from dynafast.console import ClusterView, ring_map
from dynafast.errors import Timeout
from dynafast.metrics import BOUNDS, FINE_BOUNDS, RequestStats
from dynafast.net.connection import PeerPool
from dynafast.net.messages import Msg
from dynafast.recent import RecentActivity, RecentEvents, percentile
from dynafast.sim.clock import SimClock


class Time:
    """A time source the test moves (what the simulator's loop is to SimClock)."""

    def __init__(self):
        self.now = 0.0

    def time(self):
        return self.now


def record(stats, op, seconds, error=None):
    stats.finished(op, time.perf_counter() - seconds, error)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(min_value=1e-6, max_value=20.0), max_size=60))
def test_prometheus_buckets_are_exact_sums_of_the_fine_ones(latencies):
    stats = RequestStats(["get"])
    op = stats.ops["get"]
    # Record through the fine buckets as the request path does, with the elapsed times given.
    for seconds in latencies:
        op.buckets[bisect_left(FINE_BOUNDS, seconds)] += 1
    coarse = [0] * (len(BOUNDS) + 1)
    for seconds in latencies:
        coarse[bisect_left(BOUNDS, seconds)] += 1
    expected, total = [], 0
    for count in coarse:
        total += count
        expected.append(total)
    assert op.cumulative() == expected


def test_every_prometheus_bound_is_a_fine_bound():
    assert set(BOUNDS) <= set(FINE_BOUNDS)
    assert list(FINE_BOUNDS) == sorted(FINE_BOUNDS)
    # Steps of at most 28%: the percentiles the console shows are that close.
    assert all(b / a <= 1.28 for a, b in zip(FINE_BOUNDS, FINE_BOUNDS[1:]))


def test_percentile_falls_in_the_bucket_of_the_rank():
    counts = [0] * (len(FINE_BOUNDS) + 1)
    counts[bisect_left(FINE_BOUNDS, 0.0009)] = 90   # 90 requests of about 0.9 ms
    counts[bisect_left(FINE_BOUNDS, 0.045)] = 10    # 10 of about 45 ms
    assert 0.0008 <= percentile(counts, 0.50) <= 0.001
    assert 0.04 <= percentile(counts, 0.99) <= 0.05
    assert percentile([0] * len(counts), 0.5) is None


def test_each_tick_is_one_slot_of_rates_and_percentiles():
    source = Time()
    clock = SimClock(source)
    stats = RequestStats(["get", "put"])
    events = RecentEvents(clock)
    recent = RecentActivity(stats, clock, events, size=3)
    for _ in range(8):
        record(stats, "get", 0.0022)  # in the bucket (2 ms, 2.5 ms]
    for _ in range(2):
        record(stats, "put", 0.028, Timeout("no reply"))  # (25 ms, 31.5 ms]
    source.now = 2.0  # two seconds since the last tick
    recent.tick()
    (slot,) = recent.status()["slots"]
    when, ops, errors, p50, p99, top = slot
    assert when == clock.wall()
    assert ops == 5.0 and errors == 1.0  # 10 requests and 2 failures over 2 s
    assert 2.0 <= p50 <= 2.5 and 25 <= p99 <= 31.5 and top == 31.5
    assert [e["message"] for e in events.snapshot()] == ["2 put requests failed: Timeout"]

    source.now = 3.0
    recent.tick()  # a quiet second: no latency to show
    assert recent.status()["slots"][-1][1:] == [0.0, 0.0, None, None, None]
    for _ in range(3):
        source.now += 1
        recent.tick()
    assert len(recent.status()["slots"]) == 3  # bounded


def test_recent_events_are_bounded_and_a_repeat_is_counted_once():
    source = Time()
    events = RecentEvents(SimClock(source), size=4)
    for i in range(10):
        events.add("warning", "dynafast.membership", f"peer n{i} marked down")
    events.add("warning", "dynafast.membership", "peer n9 marked down")
    kept = events.snapshot()
    assert len(kept) == 4
    assert kept[-1]["message"] == "peer n9 marked down" and kept[-1]["count"] == 2


def _status(me, members):
    return {"node": me, "members": members, "n": 3, "r": 2, "w": 2, "dw": 1, "partitions": 8, "ring_version": 1}


async def _hung_server():
    """A peer that accepts connections and never answers (a SIGSTOPped node, as far as its socket goes)."""
    async def silent(reader, writer):
        await reader.read()  # until the client goes away
        writer.close()
    return await asyncio.start_server(silent, "127.0.0.1", 0)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cluster_view_shows_down_and_hung_members_without_waiting_on_them():
    async def scenario():
        hung = await _hung_server()
        hung_address = "127.0.0.1:%d" % hung.sockets[0].getsockname()[1]
        pool = PeerPool(connect_timeout=0.5)
        members = [{"id": "a", "address": "127.0.0.1:1", "state": "up", "partitions": 8},
                   {"id": "b", "address": f"127.0.0.1:{_closed_port()}", "state": "down", "partitions": 0},
                   {"id": "c", "address": hung_address, "state": "up", "partitions": 0}]

        addresses = {m["id"]: m["address"] for m in members}

        async def peer_status(node_id, timeout):
            _, (text,) = await pool.call(addresses[node_id], Msg.STATUS, (), timeout)
            return json.loads(text)

        view = ClusterView(status=lambda: _status("a", members), ring_map=lambda: {"partitions": 8},
                           peer_status=peer_status, timeout=0.5)
        try:
            started = time.monotonic()
            data = await asyncio.wait_for(view.data(), 10)
            took = time.monotonic() - started
            again = await view.data()  # within the cache time: the same answer, no second round of calls
        finally:
            await pool.close()
            hung.close()
        return data, took, again

    data, took, again = asyncio.run(scenario())
    assert took < 5  # bounded by the peer timeout, not by the hung member
    assert again is data
    assert set(data) == {"node", "time", "members", "ring", "config", "nodes"}
    assert data["config"] == {"n": 3, "r": 2, "w": 2, "dw": 1, "partitions": 8, "ring_version": 1}
    nodes = {n["id"]: n for n in data["nodes"]}
    assert nodes["a"]["reachable"] and nodes["a"]["status"]["node"] == "a"
    for down in ("b", "c"):
        assert nodes[down]["reachable"] is False and nodes[down]["status"] is None and nodes[down]["error"]


def test_ring_map_lists_replicas_and_the_partitions_still_to_move():
    ring = _impl.ring.Ring(16, ["n1", "n2", "n3"], n=3)
    grown = _impl.ring.Ring(16, ["n1", "n2", "n3", "n4"], n=3, previous=ring)
    state = ClusterState(version=2, members={}, ring=ring, next_ring=grown)
    needed = state.required_transfers()
    state.done = {min(needed)}  # one finished already
    mapped = ring_map(state, 3)
    assert mapped["partitions"] == 16 and set(mapped["nodes"]) == {"n1", "n2", "n3", "n4"}
    names = [[mapped["nodes"][i] for i in r] for r in mapped["replicas"]]
    assert names == [list(ring.replicas(p, 3)) for p in range(16)]
    assert [[mapped["nodes"][i] for i in r] for r in mapped["next"]] == [list(grown.replicas(p, 3)) for p in range(16)]
    assert mapped["moving"] == sorted({p for p, _ in needed - state.done}) and mapped["moving"]
