"""RESP's GET and SET taken straight into the coordinator lanes (``dynafast._core.lane.Quorum``) answer what the
commands answer.

Two clusters of three nodes (N=3, R=2, W=2), run in this process over real stores and real sockets, get the same
random pipelines from redis-py through random nodes, while versions their coordinators have not received are
planted on replicas (refusals, second rounds, read repair), connections change their quorums (DF.CONFIG, RESET),
and three quarters of the way through one node stops. The pipelines mix GET and SET of a few keys (a GET after a
SET of its key in one pipeline must see it), with requests the lanes must leave to the commands: a value that
starts with expiry's mark, a key over max_key_size, SET with options. One cluster's RESP listeners take GET and
SET into the lanes, the other's run every request through its command and the general paths. Every reply must
be the same, and every replica must end up holding the same bytes."""
import asyncio
import random

import pytest
import redis.asyncio

from dynafast import _impl
from dynafast.testing.builds import compiled_or_skip
from dynafast.testing.inprocess import held, plant, quiet, replies_in_order, start_cluster

KEYS = [b"k%d" % i for i in range(6)] + [b""]

MAX_KEY = 16


def _command(rng) -> list:
    key = rng.choice(KEYS)
    roll = rng.random()
    if roll < 0.5:
        return ["SET", key, b"v%d" % rng.randrange(10**6)]
    if roll < 0.85:
        return ["GET", key]
    if roll < 0.9:
        return ["SET", key, b"\xf5\x00escaped"]  # stored in an envelope: the command's
    if roll < 0.95:
        return [rng.choice(["GET", "SET"]), b"L" * (MAX_KEY + 1)] + ([b"x"] if roll < 0.925 else [])
    return ["SET", key, b"opt", "XX"]


def _ops(seed: int, count: int) -> list:
    rng = random.Random(seed)
    ops = []
    for _ in range(count):
        roll = rng.random()
        if roll < 0.12:
            ops.append(("plant", rng.randrange(3), rng.choice(KEYS), b"p%d" % rng.randrange(10**6)))
        elif roll < 0.17:
            ops.append(("pipe", rng.randrange(3), [["DF.CONFIG", "SET", rng.choice(["R", "W"]), rng.randint(1, 3)]]))
        elif roll < 0.22:
            ops.append(("pipe", rng.randrange(3), [["RESET"]]))
        else:
            ops.append(("pipe", rng.randrange(3), [_command(rng) for _ in range(rng.randint(1, 6))]))
    ops.insert(count * 3 // 4, ("stop",))
    return ops


async def _cluster(base, quorum: bool) -> list:
    nodes = await start_cluster(base, n=3, r=2, w=2, dw=0, max_key_size=MAX_KEY, resp=True)
    replies_in_order(nodes)
    if not quorum:
        for node in nodes:
            node.resp.app.quorum = None
            node.requests.replaces = node.requests.reads = None
    return nodes


def _reply(value):
    return f"{type(value).__name__}: {value}" if isinstance(value, Exception) else value


async def _run(base, quorum: bool, ops):
    nodes = await _cluster(base, quorum)
    running = list(nodes)
    clients = []
    stored = {}
    try:
        for node in nodes:
            host, port = node.config.resp.rsplit(":", 1)
            clients.append(redis.asyncio.Redis(host=host, port=int(port), protocol=2, socket_timeout=10))
        answers = []
        for op in ops:
            if op[0] == "stop":  # its peers' calls fail from now on
                stored.update(held(nodes[2], KEYS))
                running.remove(nodes[2])
                await clients[2].aclose()
                await nodes[2].stop()
                continue
            if nodes[op[1]] not in running:
                continue
            if op[0] == "plant":  # a version stamped by a coordinator elsewhere, not sent on yet
                plant(nodes[op[1]], op[2], op[3])
            else:
                pipe = clients[op[1]].pipeline(transaction=False)
                for command in op[2]:
                    pipe.execute_command(*command)
                answers.append([_reply(value) for value in await pipe.execute(raise_on_error=False)])
            await quiet(running)
        for node in running:
            stored.update(held(node, KEYS))
        return answers, stored, sum(node.resp.app.quorum.taken for node in nodes if node.resp.app.quorum)
    finally:
        for client in clients:
            await client.aclose()
        for node in running:
            await node.stop()


@pytest.mark.parametrize("seed", [1, 2])
def test_resp_get_and_set_through_the_lanes_answer_and_store_what_the_commands_do(tmp_path, seed):
    if _impl.PURE:
        pytest.skip("the reference build takes no request into its lanes")
    compiled_or_skip("lane")
    ops = _ops(seed, 150)
    general = asyncio.run(_run(tmp_path / "general", False, ops))
    taken = asyncio.run(_run(tmp_path / "taken", True, ops))
    assert general[2] == 0
    assert taken[2] >= 150  # most GETs and SETs went straight into the lanes
    assert taken[0] == general[0]
    assert taken[1] == general[1]
    # The pipelines met every case: errors, refusals taken over, found and missing keys.
    replies = [reply for answer in general[0] for reply in answer]
    assert any(isinstance(reply, str) and "max_key_size" in reply for reply in replies)
    assert any(reply is None for reply in replies) and b"OK" in replies
