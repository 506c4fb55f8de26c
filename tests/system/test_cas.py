"""Conditional writes and locks end to end: real node processes, real kills, pauses and partitions."""
import subprocess
import sys
import threading
import time

import pytest

from dynafast import Client, ConditionFailed, LockHeld
from dynafast.errors import DynafastError, NotPermitted
from dynafast.testing.cluster import LocalCluster

from test_cluster import wait_for, wait_members

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]


def write_config(tmp_path, **options):
    options = {"gossip_interval": 0.3, **options}
    path = tmp_path / "node.toml"
    path.write_text("".join(f"{k} = {v!r}\n" for k, v in options.items()))
    return ["--config", str(path)]


# -- the counter history and its checks ------------------------------------------------------------------------
class Increment:
    __slots__ = ("read", "outcome", "start", "end")

    def __init__(self, read, start):
        self.read = read  # the value the increment read; it wrote read + 1
        self.outcome = ""  # ok | failed (condition) | unknown (timed out, no quorum: may have happened)
        self.start = start
        self.end = None


def check_counter(history, final):
    """The counter's invariants; returns the violations found (empty when linearizable as far as these see).

    - No two acknowledged increments read the same value (each would have written the same next value).
    - The final value is within [acknowledged, acknowledged + unknown].
    - Real-time order: an acknowledged increment that ended before another began wrote a smaller value; and an
      increment reads at least every value acknowledged before it began (nothing goes back).
    """
    acked = [op for op in history if op.outcome == "ok"]
    unknown = [op for op in history if op.outcome == "unknown"]
    problems = []
    reads = sorted(op.read for op in acked)
    dupes = {v for v in reads if reads.count(v) > 1}
    if dupes:
        problems.append(f"acknowledged increments read the same value: {sorted(dupes)[:10]}")
    if not len(acked) <= final <= len(acked) + len(unknown):
        problems.append(f"final {final} outside [{len(acked)}, {len(acked) + len(unknown)}]")
    by_end = sorted(acked, key=lambda op: op.end)
    for op in history:
        if op.outcome != "ok":
            continue
        before = [p for p in by_end if p.end < op.start]
        if before and max(p.read for p in before) >= op.read:
            problems.append(f"an increment from {op.read} began after one from "
                            f"{max(p.read for p in before)} was acknowledged")
            break
    return problems


def test_checker_finds_broken_histories():
    a = Increment(0, 0.0); a.outcome, a.end = "ok", 1.0
    b = Increment(0, 0.5); b.outcome, b.end = "ok", 1.5  # read the same value: a lost update
    assert check_counter([a, b], 2)
    c = Increment(1, 2.0); c.outcome, c.end = "ok", 3.0
    d = Increment(0, 4.0); d.outcome, d.end = "ok", 5.0  # began after c was acknowledged, read older
    assert check_counter([a, c, d], 3)
    assert check_counter([a, c], 5)  # more than acknowledged + unknown
    assert not check_counter([a, c], 2)


def counter_worker(addresses, key, history, lock, stop, first):
    """Increment ``key`` by CAS in a loop through the nodes in ``addresses`` (``first`` tried first)."""
    order = addresses[first:] + addresses[:first]
    with Client(order, timeout=2.0, connect_timeout=1.0, partition_aware=False) as client:
        context = None
        value = None
        while not stop.is_set():
            if context is None:
                try:
                    got = client.get(key)
                except DynafastError:
                    time.sleep(0.05)
                    continue
                value, context = int(got.values[0]) if got.values else 0, got.context
                if len(got.values) > 1:
                    context = None  # never here: only conditional writes touch the counter
                    time.sleep(0.05)
                    continue
            op = Increment(value, time.monotonic())
            with lock:
                history.append(op)
            try:
                context = client.put(key, str(value + 1).encode(), if_context=context)
                value += 1
                op.outcome = "ok"
            except ConditionFailed as exc:
                op.outcome = "failed"
                # The failure carries the current state, read linearizably: go on from it.
                value = int(exc.values[0]) if len(exc.values) == 1 else None
                context = exc.context if value is not None else None
            except DynafastError:
                op.outcome = "unknown"
                context = None
                time.sleep(0.05)
            op.end = time.monotonic()


def linearizable_read(client, key):
    """The key's value through a Paxos round: a conditional write that cannot hold reports what is there."""
    try:
        client.put(key, b"never", if_context=b"\xff")
    except ConditionFailed as exc:
        return exc.values
    raise AssertionError("a conditional write on an unreadable context was applied")


def test_cas_counter_is_linearizable_under_kill_pause_and_partition(tmp_path):
    key = b"counter"
    args = write_config(tmp_path, peer_timeout=1.0, request_timeout=2.0)
    with LocalCluster(3, base_dir=tmp_path / "c", proxied=True, extra_args=args) as c:
        with Client(c.addresses) as client:
            wait_members(client, 3)
            client.put(key, b"0", if_absent=True)
        history, lock, stop = [], threading.Lock(), threading.Event()
        workers = [threading.Thread(target=counter_worker, args=(c.addresses, key, history, lock, stop, i % 3))
                   for i in range(20)]
        for t in workers:
            t.start()
        try:
            time.sleep(2.0)
            c.node("n2").kill()
            time.sleep(3.0)
            c.node("n2").restart()
            time.sleep(2.0)
            c.node("n3").pause()
            time.sleep(3.0)
            c.node("n3").resume()
            time.sleep(2.0)
            c.partition(["n1"], ["n2", "n3"])
            time.sleep(3.0)
            c.heal()
            time.sleep(3.0)
        finally:
            stop.set()
            for t in workers:
                t.join(30)
        assert not any(t.is_alive() for t in workers)
        with Client(c.addresses, timeout=5.0) as client:
            wait_members(client, 3, timeout=30)
            values = wait_for(lambda: _try(linearizable_read, client, key), 20)
        assert values and len(values) == 1, values
        final = int(values[0])
        acked = sum(1 for op in history if op.outcome == "ok")
        unknown = sum(1 for op in history if op.outcome == "unknown")
        assert acked >= 20, f"only {acked} increments acknowledged ({unknown} unknown): the test proved little"
        assert check_counter(history, final) == []


def test_cas_counters_stay_linearizable_while_a_node_joins_and_leaves(tmp_path):
    """Conditional writes through a join and a leave between real processes, with a cluster secret: the rounds
    carry ring views, and each moving partition's Paxos state goes to its new primary over PAXOS_SNAPSHOT and
    PAXOS_INSTALL (the simulator checks the cases where that matters; this checks the messages end to end)."""
    from dynafast.security.access import write_secret

    write_secret(tmp_path / "secret")
    args = ["--secret-file", str(tmp_path / "secret")] + write_config(tmp_path, request_timeout=3.0)
    keys = [b"counter-%d" % i for i in range(8)]
    with LocalCluster(3, base_dir=tmp_path / "c", extra_args=args) as c:
        with Client(c.addresses) as client:
            wait_members(client, 3)
            for key in keys:
                client.put(key, b"0", if_absent=True)
        histories = {key: [] for key in keys}
        lock, stop = threading.Lock(), threading.Event()
        workers = [threading.Thread(target=counter_worker, args=(c.addresses, key, histories[key], lock, stop, i % 3))
                   for i, key in enumerate(keys + keys)]
        for t in workers:
            t.start()
        moved = 0
        try:
            time.sleep(1.0)
            n4 = c.add_node()
            with Client(c.addresses[:3]) as client:
                def settled(members):
                    status = client.status(c.nodes[0].address)
                    ring = {m["id"] for m in status["members"] if m["partitions"] > 0}
                    return ring == members and status["next_ring_version"] is None

                assert wait_for(lambda: settled({"n1", "n2", "n3", "n4"}), 90, 0.3), "n4 did not join"
                moved += sum(client.status(a)["paxos"]["keys_moved"] for a in c.addresses[:3])
                time.sleep(1.0)
                client.leave("n4", address=c.nodes[0].address)
                assert wait_for(lambda: settled({"n1", "n2", "n3"}), 90, 0.3), "n4 did not leave"
                assert wait_for(lambda: not n4.is_running(), 30, 0.3)
        finally:
            stop.set()
            for t in workers:
                t.join(30)
        assert not any(t.is_alive() for t in workers)
        assert moved > 0, "no Paxos state moved with the partitions n4 took"
        with Client(c.addresses[:3], timeout=5.0) as client:
            for key in keys:
                values = wait_for(lambda: _try(linearizable_read, client, key), 20)
                assert values and len(values) == 1, (key, values)
                history = histories[key]
                assert sum(1 for op in history if op.outcome == "ok") >= 3, f"{key}: too few increments"
                assert check_counter(history, int(values[0])) == [], key


def _try(read, client, key):
    try:
        return read(client, key)
    except DynafastError:
        return None


# -- the rule for plain writes, deletes, and the read-only role ------------------------------------------------
@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    base = tmp_path_factory.mktemp("cas")
    with LocalCluster(3, base_dir=base / "c", extra_args=write_config(base)) as c:
        with Client(c.addresses) as client:
            wait_members(client, 3)
        yield c


def test_conditions_and_the_plain_write_rule(cluster):
    with Client(cluster.addresses, timeout=5.0) as client:
        first = client.put(b"rule", b"a", if_absent=True)
        with pytest.raises(ConditionFailed) as failed:
            client.put(b"rule", b"b", if_absent=True)
        assert failed.value.values == [b"a"] and failed.value.context == first
        second = client.put(b"rule", b"b", if_context=first)
        with pytest.raises(ConditionFailed):
            client.put(b"rule", b"c", if_context=first)  # stale: names a version that was replaced
        # A plain write without context after a CAS is a sibling, which the next CAS sees and must name.
        client.put(b"rule", b"plain")
        assert sorted(client.get(b"rule", r=3).values) == [b"b", b"plain"]
        with pytest.raises(ConditionFailed) as failed:
            client.put(b"rule", b"c", if_context=second)
        assert sorted(failed.value.values) == [b"b", b"plain"]
        client.put(b"rule", b"c", if_context=failed.value.context)
        assert client.get(b"rule", r=3).values == [b"c"]
        # Conditional delete, then the key counts as absent.
        client.delete(b"rule", if_context=client.get(b"rule").context)
        assert client.get(b"rule").values == []
        client.put(b"rule", b"again", if_absent=True)


def test_secured_cluster_runs_paxos_and_read_only_users_cannot_write(tmp_path):
    from dynafast.security.access import write_secret
    from dynafast.security.users import Users

    secret = tmp_path / "secret"
    write_secret(secret)
    users = Users(tmp_path / "users.json", must_exist=False)
    users.add("writer", "writer password", "readwrite")
    users.add("reader", "reader password", "read")
    args = ["--secret-file", str(secret), "--users-file", str(tmp_path / "users.json")]
    with LocalCluster(3, base_dir=tmp_path / "c", extra_args=args) as c:
        with Client(c.addresses, timeout=5.0, username="writer", password="writer password") as writer:
            wait_members(writer, 3, timeout=60)
            # The Paxos messages between nodes pass the gate of a node with a cluster secret.
            writer.put(b"k", b"v", if_absent=True)
            with writer.lock(b"name", ttl=1.0) as token:
                assert token.fencing == 1
        with Client(c.addresses, timeout=5.0, username="reader", password="reader password") as reader:
            with pytest.raises(NotPermitted):
                reader.put(b"k", b"w", if_context=reader.get(b"k").context)
            with pytest.raises(NotPermitted):
                reader.acquire(b"name", ttl=1.0)
            assert reader.get(b"k").values == [b"v"]


# -- locks ----------------------------------------------------------------------------------------------------
def test_two_holders_never_hold_a_lock_at_once_and_tokens_grow(cluster):
    holding, grants, problems = [], [], []
    guard = threading.Lock()

    def contender(index):
        with Client(cluster.addresses[index % 3:] + cluster.addresses[:index % 3], timeout=5.0,
                    partition_aware=False) as client:
            for _ in range(5):
                try:
                    with client.lock(b"mutex", ttl=10.0, wait=30.0) as token:
                        with guard:
                            if holding:
                                problems.append(f"{token.fencing} granted while {holding} held it")
                            holding.append(token.fencing)
                            grants.append(token.fencing)
                        time.sleep(0.01)
                        with guard:
                            holding.remove(token.fencing)
                except LockHeld as exc:
                    problems.append(f"not granted within 30 s: {exc}")

    threads = [threading.Thread(target=contender, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not problems
    assert len(grants) == 20
    assert grants == sorted(grants) and len(set(grants)) == len(grants), grants


HOLDER = """
import sys, time
from dynafast import Client
client = Client(sys.argv[1].split(","), timeout=5.0)
token = client.acquire(b"lease", ttl=float(sys.argv[2]))
print(token.fencing, flush=True)
time.sleep(600)
"""


def test_a_killed_holders_lease_expires_and_another_client_gets_it(cluster, tmp_path):
    script = tmp_path / "holder.py"
    script.write_text(HOLDER)
    holder = subprocess.Popen([sys.executable, str(script), ",".join(cluster.addresses), "2.0"],
                              stdout=subprocess.PIPE, text=True)
    try:
        first = int(holder.stdout.readline())
        with Client(cluster.addresses, timeout=5.0) as client:
            with pytest.raises(LockHeld) as held:
                with client.lock(b"lease", ttl=2.0, wait=0.0):
                    pass
            assert 0 < held.value.remaining <= 2.0
            holder.kill()
            holder.wait(10)
            with client.lock(b"lease", ttl=2.0, wait=15.0) as token:
                assert token.fencing > first
                assert token.valid
            # Released: the next one gets it at once, with a higher token still.
            with client.lock(b"lease", ttl=2.0) as again:
                assert again.fencing > token.fencing
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait(10)


def test_async_client_conditional_writes_and_lock(cluster):
    import asyncio

    from dynafast import AsyncClient

    async def main():
        async with AsyncClient(cluster.addresses, timeout=5.0) as client:
            context = await client.put(b"async-cas", b"1", if_absent=True)
            with pytest.raises(ConditionFailed) as failed:
                await client.put(b"async-cas", b"x", if_context=b"")
            assert failed.value.context == context and failed.value.values == [b"1"]
            await client.delete(b"async-cas", if_context=context)
            assert (await client.get(b"async-cas")).values == []
            async with client.lock(b"async-lock", ttl=5.0) as token:
                with pytest.raises(LockHeld):
                    async with client.lock(b"async-lock", ttl=5.0, wait=0.1):
                        pass
            async with client.lock(b"async-lock", ttl=5.0) as again:
                assert again.fencing > token.fencing

    asyncio.run(main())
