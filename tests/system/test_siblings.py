"""Siblings on real node processes: bounded by ``max_siblings``, collapsed by a read-modify-write or a
last-write-wins put, and removed by a delete without a context."""
import pytest

from dynafast import Client, TooManySiblings
from dynafast.testing.cluster import LocalCluster

from test_cluster import replica_copy, wait_for, wait_members

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(180)]

MAX_SIBLINGS = 50
SIBLINGS_WARN = 10


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    base = tmp_path_factory.mktemp("siblings")
    config = base / "node.toml"
    config.write_text(f"max_siblings = {MAX_SIBLINGS}\nsiblings_warn = {SIBLINGS_WARN}\n")
    with LocalCluster(3, base_dir=base, extra_args=["--config", str(config)]) as c:
        with Client(c.addresses) as client:
            wait_members(client, 3)
        yield c


@pytest.fixture
def client(cluster):
    with Client(cluster.addresses) as c:
        yield c


def live_copies(cluster, key):
    """The live values each node stores for ``key`` as a primary (None where it holds nothing)."""
    copies = {}
    for node in cluster.nodes:
        obj = replica_copy(node, key)
        copies[node.node_id] = None if obj is None else sorted(obj.live_values())
    return copies


def test_blind_puts_are_refused_past_max_siblings(cluster, client):
    key = b"blind-loop"
    refused = []
    for i in range(200):
        try:
            client.put(key, b"v%d" % i)
        except TooManySiblings as exc:
            refused.append((i, exc))
    assert [i for i, _ in refused] == list(range(MAX_SIBLINGS, 200)), "the 51st blind put must be the first refused"
    first = refused[0][1]
    assert (first.siblings, first.limit) == (MAX_SIBLINGS + 1, MAX_SIBLINGS)
    assert "context" in str(first) and f"{MAX_SIBLINGS + 1} siblings" in str(first)
    # Nothing refused was written: every replica holds exactly the accepted values.
    accepted = sorted(b"v%d" % i for i in range(MAX_SIBLINGS))
    assert sorted(client.get(key, r=3).values) == accepted
    assert wait_for(lambda: all(v == accepted for v in live_copies(cluster, key).values())), \
        live_copies(cluster, key)
    totals = [client.status(node.address)["siblings"] for node in cluster.nodes]
    assert sum(t["refused"] for t in totals) == 200 - MAX_SIBLINGS
    assert sum(t["warnings"] for t in totals) == MAX_SIBLINGS - SIBLINGS_WARN
    assert wait_for(lambda: any("blind-loop" in node.output() and "siblings" in node.output()
                                for node in cluster.nodes)), "no warning naming the key was logged"
    # The way out the error names: read, merge, write with the context.
    read = client.get(key)
    client.put(key, b"merged", context=read.context)
    assert client.get(key, r=3).values == [b"merged"]


def test_the_readme_read_modify_write_loop_keeps_one_value(client):
    key = b"cart:readme"
    for i in range(60):
        r = client.get(key)  # as README's example: read, resolve the siblings, write with the context
        items = set(b",".join(r.values).split(b",")) - {b""}
        client.put(key, b",".join(sorted(items | {b"item%02d" % i})), context=r.context)
    assert client.get(key, r=3).values == [b",".join(b"item%02d" % i for i in range(60))]


def test_an_lww_put_collapses_siblings(cluster, client):
    key = b"lww"
    for i in range(5):
        client.put(key, b"blind-%d" % i)
    assert len(client.get(key, r=3).values) == 5
    client.put(key, b"winner", lww=True)
    assert client.get(key, r=3).values == [b"winner"]
    assert wait_for(lambda: all(v == [b"winner"] for v in live_copies(cluster, key).values())), \
        live_copies(cluster, key)
    # An lww put also resolves a key that is over the sibling limit.
    crowded = b"lww-crowded"
    for i in range(MAX_SIBLINGS):
        client.put(crowded, b"c%d" % i)
    with pytest.raises(TooManySiblings):
        client.put(crowded, b"one more")
    client.put(crowded, b"resolved", lww=True)
    assert client.get(crowded, r=3).values == [b"resolved"]


def test_a_delete_without_a_context_deletes(cluster, client):
    key = b"blind-delete"
    for i in range(3):
        client.put(key, b"d%d" % i)
    client.delete(key)
    assert client.get(key).values == []
    assert client.get(key, r=3).values == []
    # The tombstone covers every version: each replica holds nothing but it (or nothing at all, once reaped).
    def deleted_everywhere():
        copies = [replica_copy(node, key) for node in cluster.nodes]
        return all(obj is None or obj.is_deleted() for obj in copies)

    assert wait_for(deleted_everywhere), live_copies(cluster, key)
    client.delete(b"never-written")  # nothing to delete: acknowledged, nothing stored
    assert client.get(b"never-written", r=3).values == []
    assert all(v is None for v in live_copies(cluster, b"never-written").values())


def test_the_async_client_has_lww_too(cluster, client):
    import asyncio

    from dynafast import AsyncClient

    key = b"async-lww"
    for i in range(3):
        client.put(key, b"a%d" % i)

    async def overwrite():
        async with AsyncClient(cluster.addresses) as c:
            await c.put(key, b"async winner", lww=True)
            return (await c.get(key, r=3)).values

    assert asyncio.run(overwrite()) == [b"async winner"]
