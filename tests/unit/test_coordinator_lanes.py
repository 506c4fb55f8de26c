"""The coordinator lanes (the one-round last-write-wins put and RESP's quorum read, in C) answer what the general
paths answer.

Two clusters of three nodes (N=3), run in this process over real stores and real sockets, get the same random
puts and reads through random coordinators, with W and R of 1 to 3, while:
- versions their coordinators have not received are planted on replicas (a write acknowledged elsewhere a moment
  ago: the replicas holding it refuse the one round, and the put takes its second round; a read finds replicas
  that differ, and repairs them);
- puts of one key through one coordinator overlap;
- three quarters of the way through, one node stops (its peers' calls to it fail: puts with W=3 and reads with
  R=3 fail, the others go on without it).
One cluster's nodes run the compiled lanes, the other's the general paths. Every answer must be the same, every
replica must end up holding the same versions, byte for byte, and every node must have served the same replica
calls until the stop."""
import asyncio
import random
import time

import pytest

from dynafast import _impl
from dynafast.net.messages import Get, Msg, Put
from dynafast.testing.builds import compiled_or_skip
from dynafast.testing.inprocess import NOW, held, plant, quiet, start_cluster

KEYS = [b"k%d" % i for i in range(6)] + [b""]


def _compiled_lanes():
    """The tests need the compiled lanes running in the nodes: skipped in the reference build."""
    if _impl.PURE:
        pytest.skip("the reference build runs the general paths as its lanes")
    compiled_or_skip("lane")


def _ops(seed: int, count: int) -> list:
    rng = random.Random(seed)
    ops = []
    for i in range(count):
        key, value = rng.choice(KEYS), b"v%d" % i
        roll = rng.random()
        if roll < 0.15:
            ops.append(("plant", rng.randrange(3), key, value))
        elif roll < 0.25:
            ops.append(("overlap", rng.randrange(3), key, value))
        elif roll < 0.45:
            ops.append(("get", rng.randrange(3), key, rng.choice([None, 1, 2, 3])))
        else:
            ops.append(("put", rng.randrange(3), key, value, rng.choice([None, 1, 2, 3]), rng.choice([None, 1, 2, 3])))
    ops.insert(count * 3 // 4, ("stop",))
    return ops


async def _cluster(base, lane: bool) -> list:
    nodes = await start_cluster(base, n=3, r=2, w=2, dw=0)
    if not lane:
        for node in nodes:
            node.requests.replaces = node.requests.reads = None
    return nodes


async def _answer(node, request):
    try:
        if type(request) is Get:
            answer = node.requests.read_object(request)
        else:
            answer = node.requests.client_put(request)
        reply = answer if type(answer) is tuple else await asyncio.wait_for(answer, 10)
        if type(request) is Get:  # the object read, or None
            return ("ok", None if reply[1] is None else reply[1].to_bytes())
        return ("ok", reply[0])
    except Exception as exc:  # noqa: BLE001 - the error is part of the answer compared
        return (type(exc).__name__, str(exc))


async def _run(base, lane: bool, ops):
    nodes = await _cluster(base, lane)
    running = list(nodes)
    stored, counters = {}, None
    try:
        answers = []
        for op in ops:
            if op[0] != "stop" and nodes[op[1]] not in running:
                continue
            if op[0] == "stop":  # its peers' calls fail from now on: puts take their second round, or fail
                stored.update(held(nodes[2], KEYS))
                # (From here on, when the failure detector marks it down changes how many calls are made.)
                counters = [(n.requests.replica_puts, n.requests.replica_gets, n.requests.read_repairs)
                            for n in nodes]
                running.remove(nodes[2])
                await nodes[2].stop()
                continue
            if op[0] == "get":  # RESP's quorum read
                _, i, key, r = op
                answers.append(await _answer(nodes[i], Get(key, r, None, True)))
            elif op[0] == "put":
                _, i, key, value, w, r = op
                answers.append(await _answer(nodes[i], Put(key, value, None, w, None, None, True, None, r)))
            elif op[0] == "overlap":  # the second finds the first under way: it reads first
                # (Through one coordinator: two coordinators' puts would meet on the replicas in an order that
                # depends on timing, and so would the rounds they take.)
                _, i, key, value = op
                first = asyncio.ensure_future(_answer(nodes[i], Put(key, value + b"a", lww=True)))
                second = asyncio.ensure_future(_answer(nodes[i], Put(key, value + b"b", lww=True)))
                answers.append(tuple(await asyncio.gather(first, second)))
            else:  # a version stamped by a coordinator elsewhere over this replica's copy, not sent on yet
                _, i, key, value = op
                plant(nodes[i], key, value)
            await quiet(running)
        for node in running:
            stored.update(held(node, KEYS))
        served = (sum(getattr(n.requests.replaces, "served", 0) for n in nodes),
                  sum(getattr(n.requests.reads, "served", 0) for n in nodes))
        return answers, stored, counters, served
    finally:
        for node in running:
            await node.stop()


@pytest.mark.parametrize("seed", [1, 2])
def test_the_coordinator_lanes_answer_and_store_what_the_general_paths_do(tmp_path, seed):
    _compiled_lanes()
    ops = _ops(seed, 120)
    general = asyncio.run(_run(tmp_path / "general", False, ops))
    compiled = asyncio.run(_run(tmp_path / "compiled", True, ops))
    assert general[3] == (0, 0)
    assert compiled[3][0] >= 40 and compiled[3][1] >= 15  # most puts and reads took the lanes
    assert compiled[0] == general[0]
    assert compiled[1] == general[1]
    assert compiled[2] == general[2]


async def _refused_after_the_deadline(base) -> tuple:
    """A one-round put (W=2, a 100 ms timeout) through n1's lane: n2 refuses it (it holds a version n1 has not
    received), and the loop then stalls past the deadline, so the refusal is handled before the deadline's timer
    runs; n3 answers only after 0.8 s. What the put answered by 0.6 s, and the keys left under way."""
    nodes = await _cluster(base, True)
    loop = asyncio.get_running_loop()
    try:
        n1, n2, n3 = nodes
        key = b"refused-late"
        partition = n2.membership.state.ring.partition_of(key)
        n2.vnodes.write(partition, key, n2.requests.Siblings.new(b"elsewhere", None).update(None, b"elsewhere",
                                                                                           int(NOW)))
        check, handle, op = n2._dispatch[int(Msg.REPLICA_PUT)]

        def refuse_then_stall(fields):
            reply = handle(fields)
            loop.call_soon(time.sleep, 0.15)  # the whole process stalls just after n2 sent its refusal
            return reply

        n2._dispatch[int(Msg.REPLICA_PUT)] = (check, refuse_then_stall, op)
        check3, handle3, op3 = n3._dispatch[int(Msg.REPLICA_PUT)]

        async def slow(fields):
            await asyncio.sleep(0.8)
            return handle3(fields)

        n3._dispatch[int(Msg.REPLICA_PUT)] = (check3, slow, op3)
        answer = n1.requests.client_put(Put(key, b"new", None, 2, None, 100, True, None, 1))
        assert n1.requests.replaces.served == 1
        await asyncio.sleep(0.6)
        outcome = type(answer.exception()).__name__ if answer.done() else "pending"
        await asyncio.sleep(0.5)
        return outcome, dict(n1.requests._replacing)
    finally:
        for node in nodes:
            await node.stop()


def test_a_refusal_handled_after_the_deadline_passed_still_ends_the_put_at_its_deadline(tmp_path):
    """Handed over to the general path after its deadline passed (the deadline wheel runs up to a tick late, and a
    stalled loop handles replies before timers), the put still ends at its deadline, not when the last replica
    answers."""
    _compiled_lanes()
    assert asyncio.run(_refused_after_the_deadline(tmp_path)) == ("QuorumNotMet", {})


async def _lying_peer(base, lane: bool) -> tuple:
    """n2 answers every replica get and put with fields that do not fit the reply's record; a read with R=3 and a
    put with W=3 through n1 (a 10 s timeout each). What each answered within 5 s, and the callbacks that failed."""
    nodes = await _cluster(base, lane)
    failures = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _, context: failures.append(context.get("message")))
    try:
        n1, n2 = nodes[0], nodes[1]
        for msg, reply_type, fields in ((Msg.REPLICA_GET, Msg.REPLICA_GET_REPLY, (123,)),
                                        (Msg.REPLICA_PUT, Msg.REPLICA_PUT_REPLY, ())):
            check, _, op = n2._dispatch[int(msg)]
            n2._dispatch[int(msg)] = (check, lambda _fields, t=int(reply_type), f=fields: (t, f), op)
        answers = []
        for request in (Get(b"lied-to", 3, 10_000, True), Put(b"lied-to", b"v", None, 3, None, 10_000, True)):
            try:
                answer = n1.requests.read_object(request) if type(request) is Get else n1.requests.client_put(request)
                await asyncio.wait_for(answer, 5)
                answers.append("ok")
            except Exception as exc:  # noqa: BLE001 - the error is the answer
                answers.append(type(exc).__name__)
        return answers, failures
    finally:
        for node in nodes:
            await node.stop()


@pytest.mark.parametrize("lane", [False, True])
def test_a_replica_that_answers_with_malformed_fields_counts_as_failed(tmp_path, lane):
    """A peer's reply is checked as its record before it counts: one that does not fit fails that replica at once
    (the quorum is then short), instead of failing in a reply callback and leaving the request to its deadline."""
    if lane:
        _compiled_lanes()
    answers, failures = asyncio.run(_lying_peer(tmp_path, lane))
    assert answers == ["QuorumNotMet", "QuorumNotMet"]
    assert failures == []


def test_a_new_incarnation_does_not_stamp_with_the_old_ones_actor(tmp_path):
    """After a damaged record gave the coordinator a new incarnation (kv679), its lane's one-round put of a key
    whose copy was stamped by the old incarnation's actor takes a fresh actor, as the general path does, instead
    of moving the old one's counter on."""
    _compiled_lanes()

    async def run():
        nodes = await _cluster(tmp_path, True)
        try:
            n1, key = nodes[0], b"k0"
            old, partition = n1.requests.actor, n1.membership.state.ring.partition_of(key)
            for node in nodes:  # every replica holds the version the old incarnation stamped
                node.vnodes.write(partition, key, node.requests.Siblings.new(b"old", None).update(None, old, int(NOW)))
            answer = n1.requests.client_put(Put(b"k1", b"opens the lane", None, 2, None, 2000, True, None, 1))
            await asyncio.wait_for(answer, 10)
            n1._found_damaged(n1.membership.state.ring.partition_of(b"elsewhere"))
            assert n1.requests.actor != old
            answer = n1.requests.client_put(Put(key, b"new", None, 2, None, 2000, True, None, 1))
            await asyncio.wait_for(answer, 10)
            assert n1.requests.replaces.served == 2
            await quiet(nodes)
            stored = n1.vnodes.get(partition, key)
            clock = {actor: counter for actor, counter, _ in stored.clock().entries()}
            assert stored.values == [b"new"]
            assert clock[old] == 1, clock  # the old incarnation's counter stays where it was
            assert [a for a in clock if n1.requests.actors.issued(a)], clock  # a fresh actor stamped it
        finally:
            for node in nodes:
                await node.stop()
    asyncio.run(run())
