"""Per-object TTL with real processes: the expiry is part of the version, so every path that copies versions
(read repair, anti-entropy, hints, transfers) keeps it, an expired value never comes back, and the reaper and
merges give its space back."""
import asyncio
import os
import time

import pytest

from dynafast import AsyncClient, Client
from dynafast.cluster import expiry
from dynafast.testing.cluster import LocalCluster
from test_cluster import replica_copy, wait_for, wait_members

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]


def config(tmp_path, **options):
    options = {"ae_interval": 0.2, "handoff_interval": 0.2, "gossip_interval": 0.3, **options}
    path = tmp_path / "node.toml"
    path.write_text("".join(f"{k} = {v!r}\n" for k, v in options.items()))
    return ["--config", str(path)]


def stored_values(node, key):
    """The sibling values ``node`` stores for ``key`` (envelopes and all), or None without a copy."""
    copy = replica_copy(node, key)
    return None if copy is None else sorted(copy.live_values())


def test_ttl_api_and_expiry_inside_the_version(tmp_path):
    with LocalCluster(3, base_dir=tmp_path / "c", extra_args=config(tmp_path)) as c:
        with Client(c.addresses) as client:
            wait_members(client, 3)
            client.put(b"short", b"s", ttl=1.5, w=3)
            client.put(b"long", b"l", ttl=600, w=3)
            client.put(b"plain", b"\xf5\x01looks like an envelope", w=3)  # any bytes are a plain value
            found = client.get(b"short", r=3)
            assert found.values == [b"s"] and 0 < found.ttls[0] <= 1.5
            assert 590 < client.ttl(b"long") <= 600 and client.ttl(b"plain") is None
            assert client.get(b"plain").values == [b"\xf5\x01looks like an envelope"]
            with pytest.raises(KeyError):
                client.ttl(b"absent")
            assert client.expire(b"absent", 5) is False and client.persist(b"absent") is False
            assert client.persist(b"long") is True and client.ttl(b"long") is None
            assert client.persist(b"long") is False
            assert client.expire(b"plain", 1.5) is True and 0 < client.ttl(b"plain") <= 1.5
            # The coordinator stamped one absolute expiry, and every replica holds that same version.
            copies = [stored_values(n, b"short") for n in c.nodes]
            assert copies[0] == copies[1] == copies[2] and expiry.expires_at(copies[0][0]) is not None
            time.sleep(1.6)
            for key in (b"short", b"plain"):
                assert client.get(key, r=3).values == []
                with pytest.raises(KeyError):
                    client.ttl(key)
            assert client.get(b"long").values == [b"l"]
            client.put(b"short", b"back", context=client.get(b"short").context)  # written again: live again
            assert client.get(b"short", r=3).values == [b"back"] and client.ttl(b"short") is None

            async def through_async():
                async with AsyncClient(c.addresses) as aclient:
                    await aclient.put(b"async", b"a", ttl=30)
                    assert 25 < await aclient.ttl(b"async") <= 30
                    assert await aclient.persist(b"async") is True and await aclient.ttl(b"async") is None
                    assert await aclient.expire(b"async", 0.5) is True
                    await asyncio.sleep(0.6)
                    assert (await aclient.get(b"async")).values == []
                    assert await aclient.expire(b"async", 5) is False

            asyncio.run(through_async())


def test_an_expired_value_does_not_come_back_from_a_replica_that_missed_it(tmp_path):
    """n3 holds the old value and misses the TTL put that replaced it. After the expiry, neither read repair
    nor anti-entropy nor n3's restart brings the old value back: the expired version descends from it."""
    with LocalCluster(3, base_dir=tmp_path / "c", extra_args=config(tmp_path)) as c:
        with Client(c.addresses) as client:
            wait_members(client, 3)
            read_key, ae_key = b"read-repaired", b"anti-entropy"
            for key in (read_key, ae_key):
                client.put(key, b"old", w=3)
            victim = c.node("n3")
            victim.stop()
            with Client([c.node("n1").address, c.node("n2").address], partition_aware=False) as others:
                for key in (read_key, ae_key):
                    others.put(key, b"new", context=others.get(key).context, ttl=1.0, w=2)
            time.sleep(1.1)
            victim.restart()
            wait_members(client, 3)
            assert stored_values(victim, read_key) in ([b"old"], stored_values(c.node("n1"), read_key))
            assert client.get(read_key, r=3).values == []  # n3's old value is older than the expired one
            for key in (read_key, ae_key):
                assert wait_for(lambda: stored_values(victim, key) == stored_values(c.node("n1"), key), 60, 0.3), \
                    f"{key!r}: n3 did not get the expired version"
                with Client([victim.address], partition_aware=False) as direct:
                    assert direct.get(key, r=1).values == []
                assert client.get(key, r=3).values == []


def test_hints_and_transfers_keep_ttls(tmp_path):
    with LocalCluster(4, base_dir=tmp_path / "c", extra_args=config(tmp_path)) as c:
        with Client(c.addresses, timeout=5.0) as client:
            wait_members(client, 4)
            client.refresh_ring()
            ring = client._routing.ring
            victim = c.node("n4")
            keys = [k for k in (f"hinted-{i}".encode() for i in range(200))
                    if "n4" in ring.replicas(ring.partition_of(k))][:20]
            short = [k for k in (f"short-{i}".encode() for i in range(200))
                     if "n4" in ring.replicas(ring.partition_of(k))][:5]
            others = [n for n in c.nodes if n is not victim]
            victim.pause()

            def seen_down():
                return all(m["state"] == "down" for n in others for m in client.status(n.address)["members"]
                           if m["id"] == "n4")

            assert wait_for(seen_down, 60, 0.5)
            with Client([n.address for n in others], partition_aware=False, timeout=5.0) as around:
                for key in keys:
                    around.put(key, b"v", ttl=600, w=2)  # n4's copy goes to a fallback as a hint
                # Hinted too: an old value, then a short-lived one replacing it, expired before n4 is back.
                for key in short:
                    around.put(key, b"old", w=2)
                    around.put(key, b"new", context=around.get(key).context, ttl=1.0, w=2)
            time.sleep(1.1)
            victim.resume()
            wait_members(client, 4)

            def same_everywhere(key, nodes):
                copies = [stored_values(n, key) for n in nodes]
                return copies[0] is not None and all(x == copies[0] for x in copies)

            def holders(key, ring):
                return [c.node(n) for n in ring.replicas(ring.partition_of(key))]

            assert wait_for(lambda: all(same_everywhere(k, holders(k, ring)) for k in keys), 60, 0.5)
            assert all(expiry.expires_at(stored_values(victim, k)[0]) is not None for k in keys)
            assert wait_for(lambda: all(same_everywhere(k, holders(k, ring)) for k in short), 60, 0.5)
            with Client([victim.address], partition_aware=False) as direct:
                for key in short:  # the replayed hints brought the expired version, not the old value
                    assert direct.get(key, r=1).values == [] and client.get(key, r=3).values == []

            # Transfers: a new node receives the vnodes it now owns as they are, expiries included.
            moved = [f"moved-{i}".encode() for i in range(200)]
            for key in moved:
                client.put(key, b"m", ttl=600, w=3)
            n5 = c.add_node()

            def joined():
                status = client.status(c.nodes[0].address)
                return status["next_ring_version"] is None and any(
                    m["id"] == "n5" and m["partitions"] > 0 and m["state"] == "up" for m in status["members"])

            assert wait_for(joined, 90, 0.5), "n5 did not join"
            client.refresh_ring()
            ring = client._routing.ring
            owned = [k for k in moved if "n5" in ring.replicas(ring.partition_of(k))]
            assert owned
            assert wait_for(lambda: all(same_everywhere(k, holders(k, ring)) for k in owned), 60, 0.5)
            for key in owned:
                assert expiry.expires_at(stored_values(n5, key)[0]) is not None
                assert 500 < client.ttl(key) <= 600


def test_expired_objects_are_reaped_and_their_space_merged_away(tmp_path):
    args = config(tmp_path, hint_window=1.0, tombstone_delay=6.0, drop_grace=1.0, segment_size=256 * 1024)
    with LocalCluster(3, base_dir=tmp_path / "c", extra_args=args) as c:
        with Client(c.addresses) as client:
            wait_members(client, 3)
            keys = [f"big-{i}".encode() for i in range(150)]
            for key in keys:
                client.put(key, os.urandom(8000), ttl=1.0, w=3)
            client.put(b"kept", b"value", w=3)

            def data_bytes(node):
                store = node.data_dir / "store"
                return sum(f.stat().st_size for f in store.iterdir() if f.name.endswith(".data"))

            before = [data_bytes(n) for n in c.nodes]
            assert min(before) > len(keys) * 6000  # (some may still be buffered)
            time.sleep(1.1)
            assert all(client.get(k).values == [] for k in keys[:10])
            # Expired, then tombstone_delay later removed from every replica (as a fully replicated tombstone).
            assert wait_for(lambda: all(replica_copy(n, k) is None for n in c.nodes for k in keys), 90, 0.5), \
                "expired objects were not reaped"
            # The records are dead now: the stores' background merges give the space back.
            assert wait_for(lambda: all(data_bytes(n) < b / 4 for n, b in zip(c.nodes, before)), 60, 0.5), \
                ([data_bytes(n) for n in c.nodes], before)
            assert client.get(b"kept", r=3).values == [b"value"]
            assert all(client.get(k, r=3).values == [] for k in keys)


def test_a_node_with_its_clock_ahead_hides_values_early_and_resurrects_nothing(tmp_path):
    """n3's wall clock runs 30 s ahead. A value it coordinates lives 30 s longer on the others' clocks; one
    the others coordinate it sees expired 30 s early. Either way all replicas hold the same version, and the
    value it replaced never comes back, whichever node answers."""
    with LocalCluster(3, base_dir=tmp_path / "c", extra_args=config(tmp_path)) as c:
        with Client(c.addresses) as client:
            wait_members(client, 3)
            ahead = c.node("n3")
            ahead.stop()
            ahead.start(env={"DYNAFAST_CLOCK_OFFSET": "30"})
            wait_members(client, 3, timeout=60)
            via = {n.node_id: Client([n.address], partition_aware=False) for n in c.nodes}
            try:
                for key in (b"by-n1", b"by-n3"):
                    client.put(key, b"old", w=3)
                coordinator = {b"by-n1": "n1", b"by-n3": "n3"}
                for key, node in coordinator.items():
                    via[node].put(key, b"new", context=client.get(key, r=3).context, ttl=10, w=3)
                # n1's stamp is 30 s in n3's past: already expired there, live for n1 and n2.
                assert via["n3"].get(b"by-n1", r=1).values == []
                assert via["n1"].get(b"by-n1", r=1).values == [b"new"]
                # n3's stamp is 40 s into the others' future: the value outlives its TTL there.
                assert 35 < via["n1"].ttl(b"by-n3") <= 40
                for key in coordinator:
                    copies = [stored_values(n, key) for n in c.nodes]
                    assert copies[0] == copies[1] == copies[2]
                    for node in via.values():  # whatever each thinks of the expiry, the old value is gone
                        assert b"old" not in node.get(key, r=3).values
                time.sleep(10.1)
                assert via["n1"].get(b"by-n1", r=3).values == []
                assert via["n2"].get(b"by-n3", r=1).values == [b"new"]
                assert via["n3"].get(b"by-n3", r=1).values == []
            finally:
                for node in via.values():
                    node.close()


def test_scans_batches_and_conditional_writes_see_expired_values_as_absent(tmp_path):
    with LocalCluster(3, base_dir=tmp_path / "c", extra_args=config(tmp_path)) as c:
        with Client(c.addresses) as client:
            wait_members(client, 3)
            for i in range(30):
                client.put(b"s:%02d" % i, b"v%d" % i, ttl=1.0 if i % 3 == 0 else None, w=3)
            client.put(b"s:mixed", b"keeps", w=3)
            client.put(b"s:mixed", b"goes", ttl=1.0, w=3)  # a blind put: a sibling that expires
            assert {k for k, _ in client.scan(prefix=b"s:")} == {b"s:%02d" % i for i in range(30)} | {b"s:mixed"}
            assert client.get_many([b"s:00"])[b"s:00"].ttls is not None
            time.sleep(1.1)
            scanned = dict(client.scan(prefix=b"s:"))
            assert set(scanned) == {b"s:%02d" % i for i in range(30) if i % 3} | {b"s:mixed"}
            assert scanned[b"s:mixed"].values == [b"keeps"]
            batch = client.get_many([b"s:00", b"s:01"])
            assert batch[b"s:00"].values == [] and batch[b"s:01"].values == [b"v1"]
            # A conditional put: an expired value is absent, and a value that looks like an envelope is plain.
            client.put(b"s:00", b"\xf5\x01" + b"\xff" * 8 + b"not a ttl", if_absent=True)
            assert client.get(b"s:00", r=3).values == [b"\xf5\x01" + b"\xff" * 8 + b"not a ttl"]
            assert client.ttl(b"s:00") is None
            # A conditional put takes a TTL as a plain one does.
            context = client.put(b"s:cas", b"v", if_absent=True, ttl=30)
            assert 25 < client.ttl(b"s:cas") <= 30
            client.put(b"s:cas", b"w", if_context=context, ttl=0.5)
            assert wait_for(lambda: client.get(b"s:cas").values == [], timeout=20)
