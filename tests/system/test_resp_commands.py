"""The RESP commands that write conditionally or handle expiry (SET's options, SETNX, GETSET, INCR and its kin,
APPEND, SETRANGE, RENAME, RENAMENX, COPY, MSETNX, SETEX, PSETEX, GETEX, the EXPIRE family, TTL and its kin,
PERSIST), with redis-py (sync and asyncio, RESP2 and RESP3) and redis-cli against a real 3-node cluster: Redis's
replies and error texts, expiry observed, and atomicity under concurrent clients on different nodes."""
import asyncio
import threading
import time

import pytest
import redis
import redis.asyncio

from dynafast import Client
from dynafast.testing.cluster import LocalCluster
from test_cluster import wait_for, wait_members
from test_resp import redis_cli

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]


def connect(node, **options) -> redis.Redis:
    host, port = node.resp_address.rsplit(":", 1)
    return redis.Redis(host=host, port=int(port), socket_timeout=20, **options)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """3 nodes, N=2: a node holds no replica of some keys, and forwards their reads (and proposes for them)."""
    with LocalCluster(3, base_dir=tmp_path_factory.mktemp("respcmd"), resp=True, n=2, r=1, w=2) as c:
        with Client(c.addresses) as client:
            wait_members(client, 3, timeout=60)
        yield c


@pytest.fixture(scope="module", params=[2, 3], ids=["resp2", "resp3"])
def nodes(cluster, request):
    """A connection to each node, speaking the protocol version of the test's parameter."""
    conns = [connect(node, protocol=request.param) for node in cluster.nodes]
    yield conns
    for conn in conns:
        conn.close()


def test_set_options_setnx_getset(nodes):
    a, b, c = nodes
    p = f"set{a.connection_pool.connection_kwargs.get('protocol')}:"
    assert a.set(p + "k", "1", nx=True) is True
    assert b.set(p + "k", "2", nx=True) is None  # exists: nothing written, a null reply
    assert c.set(p + "k", "3", xx=True) is True and a.get(p + "k") == b"3"
    assert b.set(p + "absent", "x", xx=True) is None and a.exists(p + "absent") == 0
    assert c.set(p + "k", "4", get=True) == b"3"
    assert a.set(p + "k", "5", nx=True, get=True) == b"4" and b.get(p + "k") == b"4"  # NX GET: the old value
    assert b.set(p + "new", "v", xx=True, get=True) is None and c.exists(p + "new") == 0
    assert c.setnx(p + "nx", "first") is True and a.setnx(p + "nx", "second") is False
    assert b.get(p + "nx") == b"first"
    assert a.getset(p + "nx", "third") == b"first" and c.get(p + "nx") == b"third"
    assert b.getset(p + "fresh", "v") is None and a.get(p + "fresh") == b"v"
    # Expiry options: EX, PX, EXAT, PXAT; KEEPTTL keeps it; a SET without KEEPTTL drops it.
    now = time.time()
    assert a.set(p + "e", "v", ex=100) and 98 <= b.ttl(p + "e") <= 100
    assert a.set(p + "e", "v", px=50_000) and 48_000 <= c.pttl(p + "e") <= 50_000
    assert a.set(p + "e", "v", exat=int(now) + 200) and b.expiretime(p + "e") == int(now) + 200
    assert a.set(p + "e", "v", pxat=int(now * 1000) + 300_000)
    assert c.execute_command("PEXPIRETIME", p + "e") == int(now * 1000) + 300_000
    assert b.set(p + "e", "w", keepttl=True) and a.get(p + "e") == b"w"
    assert c.execute_command("PEXPIRETIME", p + "e") == int(now * 1000) + 300_000
    assert c.set(p + "e", "x", xx=True, get=True, keepttl=True) == b"w" and 250 <= a.ttl(p + "e") <= 300
    assert a.set(p + "e", "plain") and b.ttl(p + "e") == -1 and c.get(p + "e") == b"plain"
    assert a.set(p + "e", "gone", exat=1) and b.get(p + "e") is None  # an expiry in the past deletes
    assert c.set(p + "e2", "v", nx=True, px=60_000) and 55_000 <= a.pttl(p + "e2") <= 60_000


def test_incr_family_append_setrange(nodes):
    a, b, c = nodes
    p = f"num{a.connection_pool.connection_kwargs.get('protocol')}:"
    assert a.incr(p + "n") == 1 and b.incr(p + "n") == 2 and c.decr(p + "n") == 1
    assert a.incrby(p + "n", 100) == 101 and b.decrby(p + "n", 1) == 100 and c.incrby(p + "n", -200) == -100
    assert a.get(p + "n") == b"-100"
    assert b.set(p + "f", "10.50") and c.incrbyfloat(p + "f", 0.1) == 10.6
    assert a.execute_command("INCRBYFLOAT", p + "f", "-5") in (b"5.6", 5.6) and b.get(p + "f") == b"5.6"
    assert c.set(p + "f", "5.0e3") and a.execute_command("INCRBYFLOAT", p + "f", "2.0e2") in (b"5200", 5200)
    assert b.incrbyfloat(p + "new float", 0.1) == 0.1 and c.get(p + "new float") == b"0.1"
    assert c.set(p + "f", "0.1") and a.incrbyfloat(p + "f", 0.2) == 0.3 and b.get(p + "f") == b"0.3"
    # Out of a long double's range, or NaN: Redis's errors (they were internal errors, or 5,000-digit values).
    for start, by, error in (("-inf", "inf", "would produce NaN or Infinity"), ("1", "1e1000000", "not a valid float"),
                             ("1", "1e5000", "not a valid float"), ("1", "1e-5000", "not a valid float"),
                             ("1e4932", "1e4932", "would produce NaN or Infinity")):
        assert c.set(p + "big", start)
        with pytest.raises(redis.ResponseError, match=error):
            a.execute_command("INCRBYFLOAT", p + "big", by)
        assert b.get(p + "big") == start.encode()
    # Computed in a long double and written as Redis's %.17Lf, the figures as redis-server 7.0's (exact decimals
    # gave 1e20 + 1 = ...001, where a long double has no room for the 1).
    for start, by, want in (("1e20", "1", b"100000000000000000000"),
                            ("5850572100.7", "3e-4951", b"5850572100.70000000018626451"),
                            ("3e-4951", "0", b"0"), ("1.9e-4951", "-0", b"0"), ("-1e-30", "0", b"0"),
                            ("1e30", "0", b"1000000000000000000024696061952")):
        assert c.set(p + "ld", start)
        assert a.execute_command("INCRBYFLOAT", p + "ld", by) in (want, float(want))
        assert b.get(p + "ld") == want
    for start in ("1.8e-4951", "1.1897314953572317651e4932"):  # strtold's ERANGE: rounds to 0, or to infinity
        assert c.set(p + "ld", start)
        with pytest.raises(redis.ResponseError, match="not a valid float"):
            a.execute_command("INCRBYFLOAT", p + "ld", "0")
    # INCR keeps the expiry, as in Redis.
    assert a.set(p + "t", "41", ex=100) and b.incr(p + "t") == 42 and 95 <= c.ttl(p + "t") <= 100
    assert a.append(p + "s", "Hello") == 5 and b.append(p + "s", " World") == 11 and c.get(p + "s") == b"Hello World"
    assert a.setrange(p + "s", 6, "Redis") == 11 and b.get(p + "s") == b"Hello Redis"
    assert c.setrange(p + "pad", 5, "x") == 6 and a.get(p + "pad") == b"\x00" * 5 + b"x"
    assert b.setrange(p + "s", 0, "") == 11 and c.setrange(p + "nothing", 3, "") == 0
    assert a.exists(p + "nothing") == 0
    assert b.set(p + "t2", "a", px=100_000) and c.append(p + "t2", "b") == 2 and 95_000 <= a.pttl(p + "t2")
    assert b.set(p + "max", str(2 ** 63 - 1))
    with pytest.raises(redis.ResponseError, match="^increment or decrement would overflow$"):
        c.incr(p + "max")
    assert a.get(p + "max") == str(2 ** 63 - 1).encode()


def test_expiry_commands(nodes):
    a, b, c = nodes
    p = f"exp{a.connection_pool.connection_kwargs.get('protocol')}:"
    assert a.ttl(p + "none") == -2 and b.pttl(p + "none") == -2 and c.expiretime(p + "none") == -2
    assert a.expire(p + "none", 10) is False and b.persist(p + "none") is False
    assert c.set(p + "k", "v") and a.ttl(p + "k") == -1 and b.expiretime(p + "k") == -1
    assert c.persist(p + "k") is False
    assert a.expire(p + "k", 100, xx=True) is False and b.ttl(p + "k") == -1  # XX: only with an expiry
    assert a.expire(p + "k", 100, gt=True) is False  # GT: no expiry counts as infinite
    assert a.expire(p + "k", 100, nx=True) is True and 98 <= b.ttl(p + "k") <= 100
    assert c.expire(p + "k", 200, nx=True) is False
    assert c.expire(p + "k", 50, gt=True) is False and c.expire(p + "k", 200, gt=True) is True
    assert a.expire(p + "k", 300, lt=True) is False and a.expire(p + "k", 150, lt=True) is True
    assert 145 <= b.ttl(p + "k") <= 150
    assert b.pexpire(p + "k", 80_000, xx=True) is True and 75_000 <= c.pttl(p + "k") <= 80_000
    at = int(time.time()) + 1000
    assert c.expireat(p + "k", at) is True and a.expiretime(p + "k") == at
    assert a.pexpireat(p + "k", at * 1000 + 7) is True and b.execute_command("PEXPIRETIME", p + "k") == at * 1000 + 7
    assert b.persist(p + "k") is True and c.ttl(p + "k") == -1 and a.get(p + "k") == b"v"
    assert c.set(p + "lt", "v") and a.expire(p + "lt", 100, lt=True) is True  # LT: no expiry counts as infinite
    assert b.expire(p + "lt", -1) is True and c.get(p + "lt") is None  # an expiry in the past deletes
    # GETEX: without options a GET; with them it sets or removes the expiry.
    assert a.set(p + "g", "v") and b.getex(p + "g") == b"v" and c.ttl(p + "g") == -1
    assert a.getex(p + "g", ex=100) == b"v" and 95 <= b.ttl(p + "g") <= 100
    assert c.getex(p + "g", persist=True) == b"v" and a.ttl(p + "g") == -1
    assert b.getex(p + "g", pxat=int(time.time() * 1000) + 90_000) == b"v" and 85 <= c.ttl(p + "g") <= 90
    assert a.getex(p + "missing", ex=10) is None
    assert b.execute_command("SETEX", p + "sx", 100, "v") and 95 <= c.ttl(p + "sx") <= 100 and a.get(p + "sx") == b"v"
    assert c.psetex(p + "psx", 100_000, "v") and 95_000 <= a.pttl(p + "psx") <= 100_000
    # Expiry observed: short TTLs end, every node agrees, and TTL says -2 then.
    assert a.set(p + "short", "v", px=400) and b.execute_command("SETEX", p + "short2", 1, "v") and c.set(p + "short3", "v")
    assert a.pexpire(p + "short3", 400) is True
    for key in ("short", "short2", "short3"):
        assert wait_for(lambda: all(conn.get(p + key) is None for conn in nodes), timeout=20), key
        assert a.ttl(p + key) == -2 and b.exists(p + key) == 0


def test_rename_copy_msetnx(nodes):
    a, b, c = nodes
    p = f"mv{a.connection_pool.connection_kwargs.get('protocol')}:"
    assert a.set(p + "src", "v", ex=100) and b.set(p + "dst", "old")
    assert c.rename(p + "src", p + "dst") is True
    assert a.get(p + "src") is None and b.get(p + "dst") == b"v" and 95 <= c.ttl(p + "dst") <= 100
    with pytest.raises(redis.ResponseError, match="^no such key$"):
        a.rename(p + "src", p + "other")
    assert b.rename(p + "dst", p + "dst") is True and c.get(p + "dst") == b"v"  # same key: nothing to do
    assert a.set(p + "x", "1") and b.set(p + "y", "2")
    assert c.renamenx(p + "x", p + "y") is False and a.get(p + "x") == b"1" and b.get(p + "y") == b"2"
    assert c.renamenx(p + "x", p + "z") is True and a.get(p + "x") is None and b.get(p + "z") == b"1"
    assert c.copy(p + "z", p + "copy") is True and a.get(p + "copy") == b"1" and b.get(p + "z") == b"1"
    assert c.copy(p + "y", p + "copy") is False and a.get(p + "copy") == b"1"
    assert c.copy(p + "y", p + "copy", replace=True) is True and a.get(p + "copy") == b"2"
    assert b.copy(p + "nope", p + "copy2") is False and c.exists(p + "copy2") == 0
    assert a.execute_command("COPY", p + "dst", p + "copy3", "DB", "0") == 1 and 95 <= b.ttl(p + "copy3") <= 100
    assert a.msetnx({p + "m1": "1", p + "m2": "2"}) is True and b.mget(p + "m1", p + "m2") == [b"1", b"2"]
    assert c.msetnx({p + "m3": "3", p + "m2": "x"}) is False
    assert a.mget(p + "m1", p + "m2", p + "m3") == [b"1", b"2", None]  # none set, the one it wrote taken back


def test_keys_a_node_holds_no_replica_of_are_read_through_another(cluster):
    """With N=2 of 3 nodes each node forwards the reads of a third of the keys: GET, DF.GET and TTL answer alike
    from every node."""
    conns = [connect(node) for node in cluster.nodes]
    for i in range(12):
        key = f"fw:{i}"
        assert conns[i % 3].set(key, f"v{i}", ex=100)
        for r in conns:
            assert r.get(key) == f"v{i}".encode() and r.execute_command("DF.GET", key)[1] == [f"v{i}".encode()]
            assert 95 <= r.ttl(key) <= 100 and r.incr(f"fw:n{i}") >= 1
    assert [int(conns[0].get(f"fw:n{i}")) for i in range(12)] == [3] * 12


def test_every_node_answers_the_newest_sibling_also_when_it_forwards_the_read(cluster):
    """Siblings whose newest value is the smaller one bytewise: a node holding no replica of the key asks the
    owner for the newest value, so it answers what the replicas answer (not some other choice of its own)."""
    conns = [connect(node) for node in cluster.nodes]
    keys = [f"sib:{i}" for i in range(6)]  # with N=2 of 3 nodes, some node forwards the reads of each
    for key in keys:
        assert conns[0].execute_command("DF.PUT", key, "zz-older") == b"OK"  # no context: concurrent writes
    time.sleep(1.1)  # write timestamps are whole seconds
    for key in keys:
        assert conns[0].execute_command("DF.PUT", key, "aa-newer") == b"OK"
    for key in keys:
        for r in conns:
            assert r.get(key) == b"aa-newer"
            assert sorted(r.execute_command("DF.GET", key)[1]) == [b"aa-newer", b"zz-older"]


def test_errors_answer_as_redis_does(cluster):
    r = connect(cluster.nodes[1])
    assert r.set("err:s", "text") and r.set("err:n", "5")
    cases = [
        (("SET", "k", "v", "NX", "XX"), "syntax error"),
        (("SET", "k", "v", "EX", "10", "PX", "10"), "syntax error"),
        (("SET", "k", "v", "EX", "10", "KEEPTTL"), "syntax error"),
        (("SET", "k", "v", "EX"), "syntax error"),
        (("SET", "k", "v", "EX", "ten"), "value is not an integer or out of range"),
        (("SET", "k", "v", "EX", "0"), "invalid expire time in 'set' command"),
        (("SET", "k", "v", "PX", "-5"), "invalid expire time in 'set' command"),
        (("GETEX", "err:s", "EX", "0"), "invalid expire time in 'getex' command"),
        (("GETEX", "err:s", "PERSIST", "EX", "5"), "syntax error"),
        (("SETEX", "k", "0", "v"), "invalid expire time in 'setex' command"),
        (("PSETEX", "k", "abc", "v"), "value is not an integer or out of range"),
        (("INCR", "err:s"), "value is not an integer or out of range"),
        (("INCRBY", "err:n", "1.5"), "value is not an integer or out of range"),
        (("DECRBY", "err:n", str(-2 ** 63)), "decrement would overflow"),
        (("INCRBYFLOAT", "err:s", "1"), "value is not a valid float"),
        (("INCRBYFLOAT", "err:n", "one"), "value is not a valid float"),
        (("INCRBYFLOAT", "err:n", "inf"), "increment would produce NaN or Infinity"),
        (("SETRANGE", "err:s", "-1", "x"), "offset is out of range"),
        (("EXPIRE", "err:n", "10", "NX", "XX"), "NX and XX, GT or LT options at the same time are not compatible"),
        (("EXPIRE", "err:n", "10", "GT", "LT"), "GT and LT options at the same time are not compatible"),
        (("EXPIRE", "err:n", "10", "SOON"), "Unsupported option SOON"),
        (("EXPIRE", "err:n", "ten"), "value is not an integer or out of range"),
        (("PEXPIREAT", "err:n", str(2 ** 63 - 1), "GT"), None),  # valid: answered, not an error
        (("RENAME", "err:none", "x"), "no such key"),
        (("RENAMENX", "err:none", "x"), "no such key"),
        (("COPY", "err:s", "err:s"), "source and destination objects are the same"),
        (("COPY", "err:s", "x", "DB", "1"), "DB index is out of range"),
        (("COPY", "err:s", "x", "BOGUS"), "syntax error"),
        (("MSETNX", "a", "1", "b"), "wrong number of arguments for 'msetnx' command"),
        (("INCR",), "wrong number of arguments for 'incr' command"),
        (("TTL", "a", "b"), "wrong number of arguments for 'ttl' command"),
        (("EXPIRE", "a"), "wrong number of arguments for 'expire' command"),
    ]
    for command, message in cases:
        if message is None:
            r.execute_command(*command)
            continue
        with pytest.raises(redis.ResponseError) as caught:
            r.execute_command(*command)
        assert str(caught.value) == message, (command, caught.value)
    assert r.get("err:s") == b"text" and r.get("err:n") == b"5"  # failed commands wrote nothing
    assert r.ping()


def test_incr_under_concurrency_from_every_node_gives_the_exact_total(cluster):
    """The atomicity test: a read-then-write INCR would lose increments when two connections interleave."""
    threads, each = 6, 15
    replies, failures = [], []

    def work(i):
        r = connect(cluster.nodes[i % 3])
        try:
            for _ in range(each):
                replies.append(r.incr("race:counter"))
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            failures.append(exc)
        finally:
            r.close()

    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    assert not failures and not any(w.is_alive() for w in workers), [str(e) for e in failures]
    # Every INCR saw a different value: the replies are exactly 1..total, and the total is exact.
    assert sorted(replies) == list(range(1, threads * each + 1))
    assert all(int(connect(node).get("race:counter")) == threads * each for node in cluster.nodes)


def test_nx_races_have_one_winner(cluster):
    rounds, racers = 4, 6
    for n in range(rounds):
        key = f"race:lock{n}"
        barrier = threading.Barrier(racers)
        won = []

        def race(i):
            r = connect(cluster.nodes[i % 3])
            try:
                barrier.wait(timeout=30)
                if (r.set(key, f"racer{i}", nx=True) if n % 2 else r.setnx(key, f"racer{i}")):
                    won.append(i)
            finally:
                r.close()

        workers = [threading.Thread(target=race, args=(i,)) for i in range(racers)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(timeout=60)
        assert len(won) == 1, won
        assert connect(cluster.nodes[n % 3]).get(key) == f"racer{won[0]}".encode()


def test_asyncio_clients_resp2_and_resp3(cluster):
    async def main():
        clients = []
        for protocol in (2, 3):
            for node in cluster.nodes:
                host, port = node.resp_address.rsplit(":", 1)
                clients.append(redis.asyncio.Redis(host=host, port=int(port), protocol=protocol))
        try:
            first = clients[0]
            # Concurrent INCRBYs through six connections (both protocols, every node): an exact sum.
            await asyncio.gather(*(r.incrby("async:sum", 3) for r in clients for _ in range(5)))
            assert int(await first.get("async:sum")) == 3 * 5 * len(clients)
            assert await clients[4].set("async:k", "v", nx=True, ex=100) is True
            assert 95 <= await clients[5].ttl("async:k") <= 100
            assert await clients[1].getset("async:k", "w") == b"v" and await first.ttl("async:k") == -1
            assert await clients[3].incrbyfloat("async:f", 1.5) == 1.5
            assert await clients[2].append("async:k", "!") == 2
            async with clients[3].pipeline(transaction=False) as pipe:
                pipe.set("async:p", "1", px=60_000).incr("async:p").pttl("async:p").persist("async:p").ttl("async:p")
                done = await pipe.execute()
            assert done[:2] == [True, 2] and 55_000 <= done[2] <= 60_000 and done[3:] == [True, -1]
            assert await clients[5].rename("async:p", "async:q") is True and await first.get("async:q") == b"2"
        finally:
            for r in clients:
                await r.aclose()
    asyncio.run(main())


def test_redis_cli(cluster):
    run = redis_cli(cluster.nodes[2].resp_address)
    assert run("SET", "cli:k", "v", "NX", "EX", "100") == "OK"
    assert run("SET", "cli:k", "v", "NX") == ""  # a null reply prints nothing when not on a terminal
    assert 95 <= int(run("TTL", "cli:k")) <= 100
    assert run("INCR", "cli:n") == "1" and run("INCRBYFLOAT", "cli:n", "0.5") == "1.5"
    assert run("INCR", "cli:k") == "ERR value is not an integer or out of range"
    assert run("EXPIRE", "cli:k", "10", "NX") == "0" and run("PERSIST", "cli:k") == "1"
    assert run("TTL", "cli:k") == "-1" and run("TTL", "cli:none") == "-2"
