"""Redis clients (redis-py sync and asyncio, RESP2 and RESP3, redis-cli) against a real 3-node cluster's RESP
listeners: commands, pipelines, errors, logins, and a SCAN that goes on while a node is killed."""
import asyncio
import functools
import shutil
import socket
import subprocess
import sys
import time

import pytest
import redis
import redis.asyncio
from redis.backoff import NoBackoff
from redis.retry import Retry

from dynafast import Client
from dynafast.security.users import Users
from dynafast.testing.cluster import LocalCluster
from test_cluster import wait_for, wait_members

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]


def connect(node, **options) -> redis.Redis:
    host, port = node.resp_address.rsplit(":", 1)
    return redis.Redis(host=host, port=int(port), socket_timeout=10, **options)


def raw_command(r, *args):
    """The reply as it comes (redis-py would run its COMMAND parser over every COMMAND subcommand's reply)."""
    conn = r.connection_pool.get_connection()
    try:
        conn.send_command(*args)
        return conn.read_response()
    finally:
        r.connection_pool.release(conn)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with LocalCluster(3, base_dir=tmp_path_factory.mktemp("resp"), resp=True) as c:
        with Client(c.addresses) as client:
            wait_members(client, 3, timeout=60)
        yield c


@pytest.mark.parametrize("protocol", [2, 3])
def test_string_and_key_commands_on_any_node(cluster, protocol):
    first, second = connect(cluster.nodes[0], protocol=protocol), connect(cluster.nodes[1], protocol=protocol)
    p = f"p{protocol}:"
    assert first.ping() is True
    assert first.echo("hi") == b"hi"
    assert first.set(p + "a", "1") is True
    assert second.get(p + "a") == b"1"  # any node coordinates any key
    assert first.set(p + "a", "2") and second.get(p + "a") == b"2"  # SET replaces, no sibling left
    assert second.execute_command("DF.GET", p + "a")[1] == [b"2"]
    assert first.mset({p + "b": "bee", p + "c": "sea"}) is True
    assert first.execute_command("MSET", p + "m", "1", p + "m", "2", p + "m", "3") in (True, b"OK", "OK")
    assert second.execute_command("DF.GET", p + "m")[1] == [b"3"]  # the last value, and no siblings
    assert second.mget(p + "a", p + "b", p + "nope", p + "c") == [b"2", b"bee", None, b"sea"]
    assert first.exists(p + "a", p + "b", p + "nope", p + "a") == 3
    assert first.type(p + "a") == b"string" and first.type(p + "nope") == b"none"
    assert first.strlen(p + "b") == 3 and first.strlen(p + "nope") == 0
    assert first.set(p + "r", "Hello World")
    assert [first.getrange(p + "r", *span) for span in ((0, 4), (-5, -1), (6, 100), (5, 2))] == \
        [b"Hello", b"World", b"World", b""]
    assert second.getdel(p + "b") == b"bee" and first.get(p + "b") is None and first.getdel(p + "b") is None
    assert first.delete(p + "a", p + "c", p + "nope", p + "a", p + "c") == 2  # each key counted once
    assert second.unlink(p + "r") == 1 and first.exists(p + "a", p + "c", p + "r") == 0
    assert first.execute_command("SELECT", 0) in (True, "OK", b"OK")
    t = first.time()
    assert abs(t[0] - time.time()) < 60 and 0 <= t[1] < 1_000_000
    info = first.info()
    assert info["redis_version"] == "7.0.0" and info["connected_clients"] >= 1
    assert info["total_commands_processed"] > 10 and info["used_memory"] > 1_000_000
    assert {"db0", "role", "uptime_in_seconds"} <= set(info)
    assert first.config_get("save") == {"save": ""} and first.config_get("databases") == {"databases": "1"}


def test_client_and_connection_commands(cluster):
    r = connect(cluster.nodes[2], protocol=2)
    assert r.client_setname("worker-1") and r.client_getname() == "worker-1"
    me = r.client_id()
    assert any(c["id"] == str(me) and c["name"] == "worker-1" for c in r.client_list())
    assert r.client_info()["name"] == "worker-1"
    assert [c["id"] for c in r.client_list(client_id=[me])] == [str(me)]
    assert r.client_list(_type="pubsub") == [] and any(c["id"] == str(me) for c in r.client_list(_type="normal"))
    with pytest.raises(redis.ResponseError, match="Client names cannot contain spaces"):
        r.client_setname("two words")
    assert r.execute_command("RESET") == "RESET" and r.client_getname() is None
    assert raw_command(r, "COMMAND", "COUNT") > 30
    info = raw_command(r, "COMMAND", "INFO", "get", "nosuch")
    assert info[0][:6] == [b"get", 2, [b"readonly", b"fast"], 1, 1, 1] and info[1] is None
    assert b"get" in raw_command(r, "COMMAND", "DOCS", "get")
    with pytest.raises(redis.ResponseError, match="DB index is out of range"):
        r.execute_command("SELECT", 1)


def test_errors_answer_as_redis_does(cluster):
    r = connect(cluster.nodes[0])
    cases = [
        (("FOO", "bar", "baz"), "unknown command 'FOO', with args beginning with: 'bar' 'baz' "),
        (("GET",), "wrong number of arguments for 'get' command"),
        (("SET", "k"), "wrong number of arguments for 'set' command"),
        (("MSET", "a", "1", "b"), "wrong number of arguments for 'mset' command"),
        (("GETRANGE", "k", "x", "1"), "value is not an integer or out of range"),
        (("SET", "k", "v", "BOGUS"), "syntax error"),
        (("CLIENT", "NOPE"), "unknown subcommand 'NOPE'. Try CLIENT HELP."),
        (("EXEC",), "EXEC without MULTI"),
        (("DISCARD",), "DISCARD without MULTI"),
        (("WATCH", "k"), "WATCH is not supported"),
        (("CONFIG", "SET", "save", ""), "CONFIG SET is not supported"),
        (("SCAN", "notanumber"), "invalid cursor"),
        (("FLUSHALL", "ASYNC", "SYNC"), "syntax error"),
        (("COMMAND", "COUNT", "x"), "wrong number of arguments for 'command|count' command"),
        (("COMMAND", "GETKEYS"), "wrong number of arguments for 'command|getkeys' command"),
        (("COMMAND", "GETKEYS", "nosuch", "k"), "Invalid command specified"),
        (("COMMAND", "GETKEYS", "get", "a", "b"), "Invalid number of arguments specified for command"),
        (("CLIENT", "LIST", "x"), "syntax error"),
        (("CLIENT", "LIST", "TYPE", "foo"), "Unknown client type 'foo'"),
        (("CLIENT", "LIST", "ID", "abc"), "Invalid client ID"),
        (("CLIENT", "HELP", "x"), "wrong number of arguments for 'client|help' command"),
        (("GETRANGE", "k", " 1", "2"), "value is not an integer or out of range"),  # read as Redis's string2ll
        (("GETRANGE", "k", "1_0", "2"), "value is not an integer or out of range"),
        (("SELECT", "+0"), "value is not an integer or out of range"),
        (("SET", "k", "v", "EX", "10", "PX", "20"), "syntax error"),
        (("SET", "k", "v", "EX", "10", "EX", "20"), None),  # the last one wins, as in Redis
        (("SET", "k", "v", "KEEPTTL", "KEEPTTL"), None),
        (("KEYS", "pre[c-a]"), None),  # not an error: Redis swaps a range's ends (it was an internal error)
    ]
    for command, message in cases:
        if message is None:
            r.execute_command(*command)
            continue
        with pytest.raises(redis.ResponseError) as caught:
            r.execute_command(*command)
        assert str(caught.value) == message or str(caught.value).startswith(message), (command, caught.value)
    assert r.ping()  # errors leave the connection usable
    assert r.config_get("MAXMEMORY") == {"MAXMEMORY": "0"}  # a name is answered as asked
    # An unknown command quotes its arguments as redis-server does, byte for byte: until they take 128 bytes (each
    # argument, and the name, as C prints a string, up to a NUL byte; bytes that are not UTF-8 as they came).
    host, port = cluster.nodes[0].resp_address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(b"*4\r\n$3\r\nFOO\r\n$100\r\n" + b"a" * 100 + b"\r\n$100\r\n" + b"b" * 100 + b"\r\n$1\r\nc\r\n"
                  + b"*3\r\n$5\r\nF\xffO\x00O\r\n$3\r\nx\x00y\r\n$1\r\n\xff\r\nPING\r\n")
        replies = read_until(s, b"+PONG\r\n")
    assert replies == (b"-ERR unknown command 'FOO', with args beginning with: '" + b"a" * 100 + b"' '" + b"b" * 25
                       + b"' \r\n-ERR unknown command 'F\xffO', with args beginning with: 'x' '\xff' \r\n+PONG\r\n")


def test_a_pipeline_is_answered_in_order_and_sees_its_own_writes(cluster):
    r = connect(cluster.nodes[1])
    pipe = r.pipeline(transaction=False)
    for i in range(200):
        pipe.set(f"pipe-{i % 20}", i)
        pipe.get(f"pipe-{i % 20}")
    pipe.execute_command("FOO")
    pipe.ping()
    replies = pipe.execute(raise_on_error=False)
    assert replies[0:400:2] == [True] * 200
    assert replies[1:400:2] == [str(i).encode() for i in range(200)]
    assert isinstance(replies[400], redis.ResponseError) and replies[401] is True


def test_dynamo_extension_commands_and_the_newest_sibling_wins(cluster):
    r = connect(cluster.nodes[0], protocol=2)
    assert r.execute_command("DF.CONFIG", "GET") == [b"r", 2, b"w", 2, b"dw", 1, b"n", 3]
    assert connect(cluster.nodes[0], protocol=3).execute_command("DF.CONFIG", "GET") == \
        {b"r": 2, b"w": 2, b"dw": 1, b"n": 3}
    assert r.execute_command("DF.CONFIG", "SET", "r", 3) == b"OK"
    assert r.execute_command("DF.CONFIG", "GET")[1] == 3
    with pytest.raises(redis.ResponseError, match="must be in 1..3"):
        r.execute_command("DF.CONFIG", "SET", "w", 9)
    # Two writes without a context are concurrent: siblings. Timestamps are whole seconds: a second apart.
    assert r.execute_command("DF.PUT", "sib", "older") == b"OK"
    time.sleep(1.1)
    assert r.execute_command("DF.PUT", "sib", "newer", "W", 3) == b"OK"
    context, values = r.execute_command("DF.GET", "sib")
    assert sorted(values) == [b"newer", b"older"] and context
    assert connect(cluster.nodes[2]).get("sib") == b"newer"  # last write wins on a RESP read
    # A write with the read's context replaces both.
    assert r.execute_command("DF.PUT", "sib", "merged", "CONTEXT", context) == b"OK"
    assert r.execute_command("DF.GET", "sib")[1] == [b"merged"]


def test_asyncio_client_resp3_and_resp2(cluster):
    async def main():
        host, port = cluster.nodes[2].resp_address.rsplit(":", 1)
        for protocol in (2, 3):
            r = redis.asyncio.Redis(host=host, port=int(port), protocol=protocol)
            try:
                await r.set(f"async-{protocol}", "v")
                assert await r.get(f"async-{protocol}") == b"v"
                results = await asyncio.gather(*(r.set(f"many-{protocol}-{i}", i) for i in range(50)))
                assert all(results)
                assert await r.mget([f"many-{protocol}-{i}" for i in range(50)]) == \
                    [str(i).encode() for i in range(50)]
                async with r.pipeline(transaction=False) as pipe:
                    pipe.get(f"async-{protocol}").delete(f"async-{protocol}").exists(f"async-{protocol}")
                    assert await pipe.execute() == [b"v", 1, 0]
            finally:
                await r.aclose()
    asyncio.run(main())


def redis_cli(address):
    """``run(*args)``: redis-cli's output for one command against ``address`` (the test skips without redis-cli)."""
    cli = shutil.which("redis-cli")
    if cli is None:
        pytest.skip("redis-cli is not installed")
    host, port = address.rsplit(":", 1)

    def run(*args):
        done = subprocess.run([cli, "-h", host, "-p", port, *args], capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()
    return run


def test_redis_cli(cluster):
    run = redis_cli(cluster.nodes[0].resp_address)
    assert run("PING") == "PONG"
    assert run("SET", "cli-key", "cli value") == "OK"
    assert run("GET", "cli-key") == "cli value"
    assert run("-3", "GET", "cli-key") == "cli value"
    assert run("EXISTS", "cli-key") == "1"
    assert "unknown command 'NOPE'" in run("NOPE")
    assert "redis_version:7.0.0" in run("INFO", "server")
    assert "cli-key" in run("--scan", "--pattern", "cli-*").split()
    assert run("DEL", "cli-key") == "1"


def refused_transaction(r, prefix: str) -> None:
    pipe = r.pipeline()  # MULTI, the commands and EXEC, sent at once
    pipe.set(prefix + "a", "1")
    pipe.incr(prefix + "n")
    with pytest.raises(redis.ResponseError, match="MULTI is not supported"):
        pipe.execute()
    assert r.get(prefix + "a") is None and r.get(prefix + "n") is None
    with pytest.raises(redis.ResponseError, match="MULTI is not supported"):
        r.execute_command("MULTI")
    with pytest.raises(redis.ResponseError, match="not run: MULTI was refused"):
        r.execute_command("SET", prefix + "a", "2")
    with pytest.raises(redis.ResponseError, match="not run: MULTI was refused"):
        r.execute_command("GET", prefix + "a")
    assert r.execute_command("DISCARD") in (True, b"OK", "OK")
    assert r.set(prefix + "a", "3") and r.get(prefix + "a") == b"3"  # the connection serves again


def test_a_refused_transaction_runs_none_of_its_commands(cluster, tmp_path):
    """Found by comparing with redis-server: MULTI was refused, but the commands sent after it (redis-py's
    pipeline() sends MULTI, the commands and EXEC in one go) ran all the same, so a client that saw the error and
    tried again applied its writes twice. On a cluster, and on a single node (whose GET and SET take the lane)."""
    refused_transaction(connect(cluster.nodes[0]), "tx:")
    with LocalCluster(1, base_dir=tmp_path, n=1, r=1, w=1, resp=True) as c:
        refused_transaction(connect(c.nodes[0]), "tx:")


def test_info_keyspace_counts_the_keys_and_those_with_a_ttl(tmp_path):
    """It said expires=0 whatever the keys were, and counted tombstones as keys."""
    with LocalCluster(1, base_dir=tmp_path, n=1, r=1, w=1, resp=True) as c:
        r = connect(c.nodes[0])
        pipe = r.pipeline(transaction=False)
        for i in range(20):
            pipe.set(f"plain-{i}", b"x")
        for i in range(10):
            pipe.set(f"ttl-{i}", b"x", ex=100)
        assert all(pipe.execute())
        db0 = r.info("keyspace")["db0"]
        assert db0["keys"] == 30 and db0["expires"] == 10 and 90_000 < db0["avg_ttl"] <= 100_000
        assert r.delete("plain-0", "ttl-0") == 2 and r.persist("ttl-1")
        db0 = r.info("keyspace")["db0"]
        assert db0["keys"] == 28 and db0["expires"] == 8


def test_scan_keys_dbsize_and_flushall_across_nodes_while_one_is_killed(tmp_path):
    with LocalCluster(3, base_dir=tmp_path, resp=True) as c:
        with Client(c.addresses) as client:
            wait_members(client, 3, timeout=60)
        r = connect(c.nodes[0])
        keys = {f"scan-{i}".encode() for i in range(300)}
        pipe = r.pipeline(transaction=False)
        for key in keys:
            pipe.set(key, b"x")
        assert all(pipe.execute())
        assert set(r.scan_iter(count=50)) == keys
        assert set(r.scan_iter(match="scan-1?")) == {b"scan-1%d" % i for i in range(10)}
        assert list(r.scan_iter(_type="hash")) == []
        assert r.dbsize() == 300 and r.randomkey() in keys
        assert set(r.keys("scan-2*")) == {k for k in keys if k.startswith(b"scan-2")}
        # Half a scan, then a node dies: the scan goes on from the cursor, reading the other replicas.
        cursor, seen = 0, set()
        for _ in range(3):
            cursor, page = r.scan(cursor, count=40)
            seen.update(page)
        c.node("n2").kill()
        while True:
            cursor, page = r.scan(cursor, count=40)
            seen.update(page)
            if cursor == 0:
                break
        assert seen == keys
        assert connect(c.nodes[2]).dbsize() == 300
        assert r.flushall() is True
        assert wait_for(lambda: r.dbsize() == 0, timeout=30)


def read_until(sock, end: bytes, limit: int = 1 << 20) -> bytes:
    data = b""
    while not data.endswith(end) and len(data) < limit:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def _users(base):
    users = Users(base / "users.json", must_exist=False)
    users.add("root", "root pw", "admin")
    users.add("writer", "writer pw", "readwrite")
    users.add("reader", "reader pw", "read")
    return base / "users.json"


def test_logins_and_roles(tmp_path):
    users_file = _users(tmp_path)
    # dw 0 and N=1: GET and SET take the node's fast lane, which must keep to the roles as the general path does.
    with LocalCluster(1, base_dir=tmp_path / "c", n=1, r=1, w=1, resp=True,
                      extra_args=["--users-file", str(users_file), "--dw", "0"]) as c:
        node = c.nodes[0]
        # redis-py retries a refused login (an AuthenticationError is a ConnectionError to it) with backoff
        login = functools.partial(connect, retry=Retry(NoBackoff(), 0))
        anonymous = login(node, protocol=2)
        with pytest.raises(redis.AuthenticationError, match="^Authentication required.$"):
            anonymous.get("k")
        with pytest.raises(redis.AuthenticationError, match="^Authentication required.$"):
            anonymous.ping()
        with pytest.raises(redis.AuthenticationError, match="HELLO must be called with the client already auth"):
            login(node, protocol=3).ping()
        with pytest.raises(redis.AuthenticationError, match="invalid username-password pair"):
            login(node, username="root", password="wrong").ping()
        # The single-password form logs in as "default", which this users file does not have.
        with pytest.raises(redis.AuthenticationError, match="invalid username-password pair"):
            login(node, password="root pw").ping()
        writer = login(node, username="writer", password="writer pw")
        assert writer.set("k", "v") and writer.get("k") == b"v"
        with pytest.raises(redis.exceptions.NoPermissionError, match="no permissions to run the 'flushall'"):
            writer.flushall()
        reader = login(node, username="reader", password="reader pw", protocol=3)
        assert reader.get("k") == b"v" and reader.exists("k") == 1
        for command in (("SET", "k", "x"), ("DEL", "k"), ("MSET", "k", "x"), ("GETDEL", "k"),
                        ("DF.PUT", "k", "x"), ("SET", "k", "x", "NX"), ("INCR", "n"), ("EXPIRE", "k", "10"),
                        ("PERSIST", "k"), ("RENAME", "k", "k2"), ("MSETNX", "k3", "x")):
            with pytest.raises(redis.exceptions.NoPermissionError):
                reader.execute_command(*command)
        assert reader.get("k") == b"v" and reader.ttl("k") == -1 and reader.exists("n", "k2", "k3") == 0
        assert writer.incr("n") == 1 and writer.expire("n", 100) and 95 <= reader.ttl("n") <= 100  # N=1 too
        root = login(node, username="root", password="root pw")
        assert root.flushall() and root.dbsize() == 0
        # HELLO with AUTH logs in and picks the protocol at once (redis-py's protocol=3 login did too, above).
        host, port = node.resp_address.rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=10) as s:
            s.sendall(b"HELLO 3 AUTH reader 'reader pw' SETNAME r1\r\nCLIENT GETNAME\r\nHELLO 2\r\nGET k\r\n")
            replies = read_until(s, b"$-1\r\n")  # k was flushed: a RESP2 nil
        assert replies.startswith(b"%8\r\n$6\r\nserver\r\n") and b"$5\r\nproto\r\n:3\r\n" in replies
        assert b"$2\r\nr1\r\n*16\r\n" in replies  # the name, then HELLO 2's reply as a flat array


def test_auth_without_users_answers_as_redis_does(cluster):
    r = connect(cluster.nodes[0])
    with pytest.raises(redis.AuthenticationError, match="called without any password configured"):
        r.execute_command("AUTH", "secret")
    # "default" is the user without a password: any password logs it in (a redis://default:pw@host URL), as in
    # Redis; it used to answer WRONGPASS. Other users do not exist.
    assert r.execute_command("AUTH", "default", "anything") in (True, b"OK", "OK")
    assert connect(cluster.nodes[1], username="default", password="pw", protocol=3).ping()
    with pytest.raises(redis.AuthenticationError, match="invalid username-password pair"):
        r.execute_command("AUTH", "someone", "anything")
    assert r.set("auth:k", "v")  # still allowed what it was


def test_tls_on_the_resp_port(tmp_path):
    certs = tmp_path / "certs"
    made = subprocess.run([sys.executable, "-m", "dynafast.cli", "certs", str(certs), "--hosts", "127.0.0.1",
                           "--nodes", "n1"], capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    with LocalCluster(1, base_dir=tmp_path / "c", n=1, r=1, w=1, resp=True,
                      extra_args=["--tls-cert", str(certs / "n1.pem"), "--tls-key", str(certs / "n1-key.pem")]) as c:
        host, port = c.nodes[0].resp_address.rsplit(":", 1)
        secure = redis.Redis(host=host, port=int(port), ssl=True, ssl_ca_certs=str(certs / "ca.pem"),
                             socket_timeout=10)
        assert secure.set("tls-key", "v") and secure.get("tls-key") == b"v"
        with pytest.raises(redis.ConnectionError):
            redis.Redis(host=host, port=int(port), socket_timeout=5, protocol=2, retry_on_timeout=False).ping()


def test_dynafast_local_serves_resp_and_prints_the_addresses(tmp_path):
    from test_cli import consecutive_ports, kill_local, start_local, stop_local

    base = consecutive_ports(6)  # three native ports, then three RESP ports
    resp = base + 3
    proc, lines, base = start_local(tmp_path / "data", "--resp-base-port", str(resp), base=base)
    try:
        assert any("Ctrl-C stops" in line for line in lines), "".join(lines) + proc.stderr.read()
        pids = [int(line.split("pid")[1].split()[0]) for line in lines if " pid " in line]
        for i in range(3):
            assert any(f"redis 127.0.0.1:{resp + i}" in line for line in lines), "".join(lines)
        first = redis.Redis(port=resp, socket_timeout=10, protocol=2)
        third = redis.Redis(port=resp + 2, socket_timeout=10, protocol=2)
        assert wait_for(lambda: _try(lambda: first.set("local", "yes")), timeout=30)
        assert third.get("local") == b"yes"
        stop_local(proc, pids)
    finally:
        kill_local(proc, tmp_path / "data", lines)


def _try(fn):
    try:
        return fn()
    except redis.RedisError:
        return False


def test_protected_mode_covers_the_resp_address():
    from dynafast.config import NodeConfig
    from dynafast.security.access import protected_mode

    with pytest.raises(ValueError, match="0.0.0.0:6379"):
        protected_mode(NodeConfig(resp="0.0.0.0:6379"))
    protected_mode(NodeConfig(resp="127.0.0.1:6379"))
    protected_mode(NodeConfig(resp="0.0.0.0:6379", insecure=True))


def test_values_that_look_like_envelopes_and_values_with_a_ttl(cluster):
    r = connect(cluster.nodes[0], protocol=2)
    odd = b"\xf5\x01" + bytes(8) + b"not an expiry"
    assert r.set("odd", odd) and connect(cluster.nodes[1]).get("odd") == odd
    assert r.execute_command("DF.GET", "odd")[1] == [odd]
    with Client(cluster.addresses) as client:
        client.put(b"short-lived", b"soon gone", ttl=1.0)
    assert r.get("short-lived") == b"soon gone"
    assert wait_for(lambda: r.get("short-lived") is None, timeout=20)
    assert r.exists("short-lived") == 0 and r.execute_command("DF.GET", "short-lived")[1] == []
