"""Asynchronous sync (sync_request / sync_poll / durable_seq / sync_fd) on both builds, and the node's
DurabilityBatcher over it."""
import asyncio
import errno
import select
import threading
import time

import pytest

from dynafast import StorageFull, StoreClosed
from dynafast.cluster.durability import DurabilityBatcher
from dynafast.storage import Store
from dynafast.testing.builds import compiled_or_skip

from conftest import implementations

impl = implementations("logstore")


def open_store(path, impl, **kw):
    kw.setdefault("background_merge", False)
    kw.setdefault("flush_interval", 0)
    return Store(path, engine=impl, **kw)


def poll_until(db, ticket):
    """Collect finished fsyncs until ticket is durable; returns every durable_seq seen."""
    seen = []
    for _ in range(50):
        if select.select([db.sync_fd()], [], [], 5.0)[0]:
            seen.append(db.sync_poll())
            if seen[-1] >= ticket:
                return seen
    raise AssertionError(f"ticket {ticket} never became durable (saw {seen})")


def test_tickets_complete_in_order_and_share_one_fsync(tmp_path, impl):
    with open_store(tmp_path / "db", impl) as db:
        fsyncs = db.stats()["fsyncs"]
        db.put(b"a", b"1")
        t1 = db.sync_request()  # starts an fsync at once
        db.put(b"b", b"2")
        t2 = db.sync_request()  # these two wait for the first to be collected...
        db.put(b"c", b"3")
        t3 = db.sync_request()
        assert 0 < t1 < t2 < t3
        assert db.durable_seq() < t1
        seen = poll_until(db, t3)
        assert seen == sorted(seen) and seen[-1] >= t3
        assert seen[0] >= t1
        # ...and then share one: two fsyncs for three tickets.
        assert db.stats()["fsyncs"] - fsyncs == 2
        # Nothing new written: the ticket is already durable and no fsync is started.
        assert db.sync_request() <= db.durable_seq()
        assert db.stats()["fsyncs"] - fsyncs == 2


def test_many_tickets_in_random_order_of_polls(tmp_path, impl):
    with open_store(tmp_path / "db", impl, segment_size=4096) as db:  # rolls happen in between
        tickets, last = [], 0
        for i in range(300):
            db.put(b"k%d" % (i % 50), b"v%d" % i * 5)
            if i % 7 == 0:
                tickets.append(db.sync_request())
            if i % 31 == 0 and select.select([db.sync_fd()], [], [], 0)[0]:
                durable = db.sync_poll()
                assert durable >= last
                last = durable
        assert tickets == sorted(tickets)
        poll_until(db, tickets[-1])
        assert db.durable_seq() >= tickets[-1]


@pytest.mark.parametrize("err, exc", [(errno.ENOSPC, StorageFull), (errno.EIO, OSError)])
def test_fsync_failure_fails_the_ticket_and_store_stays_usable(tmp_path, impl, err, exc):
    path = tmp_path / "db"
    db = open_store(path, impl)
    try:
        db.put(b"safe", b"1")
        safe = db.sync_request()
        poll_until(db, safe)
        db.put(b"k", b"v")
        # The flush gets through exactly, then the fsync fails.
        impl.set_io_fault(err, after_bytes=db.stats()["buffer_bytes"])
        ticket = db.sync_request()
        with pytest.raises(exc):
            poll_until(db, ticket)
        assert safe <= db.durable_seq() < ticket
        impl.clear_io_fault()
        assert db.get(b"k") == b"v"
        db.put(b"k2", b"v2")
        again = db.sync_request()
        assert again > ticket
        poll_until(db, again)
        assert db.durable_seq() >= again
    finally:
        impl.clear_io_fault()
        db.close()
    with open_store(path, impl) as db:
        assert (db[b"safe"], db[b"k"], db[b"k2"]) == (b"1", b"v", b"v2")


def test_flush_failure_raises_from_sync_request(tmp_path, impl):
    db = open_store(tmp_path / "db", impl)
    try:
        db.put(b"k", b"v")
        impl.set_io_fault(errno.ENOSPC)
        with pytest.raises(StorageFull):
            db.sync_request()
        impl.clear_io_fault()
        ticket = db.sync_request()
        poll_until(db, ticket)
        assert db.get(b"k") == b"v"
    finally:
        impl.clear_io_fault()
        db.close()


def test_close_with_pending_tickets(tmp_path, impl):
    path = tmp_path / "db"
    db = open_store(path, impl)
    fd = db.sync_fd()
    db.put(b"a", b"1")
    t1 = db.sync_request()
    db.put(b"b", b"2")
    t2 = db.sync_request()  # queued behind t1, never collected
    db.close()
    # The watcher still wakes up and learns that everything is durable.
    assert select.select([fd], [], [], 5.0)[0]
    assert db.sync_poll() >= t2 > t1
    assert db.durable_seq() >= t2
    with pytest.raises(StoreClosed):
        db.sync_request()
    with open_store(path, impl) as db:
        assert (db[b"a"], db[b"b"]) == (b"1", b"2")


def test_batcher_resolves_concurrent_writers(tmp_path, impl):
    async def main(db):
        batcher = DurabilityBatcher(db)
        try:
            for round_ in range(5):
                waiters = []
                for i in range(20):
                    db.put(b"r%d-%d" % (round_, i), b"v")
                    waiters.append(batcher.waiter())
                    if i % 5 == 0:
                        await asyncio.sleep(0)  # spread the writers over several loop turns
                await asyncio.wait_for(asyncio.gather(*waiters), 10)
            return batcher.syncs, batcher.fsync_seconds
        finally:
            batcher.close()

    with open_store(tmp_path / "db", impl) as db:
        fsyncs = db.stats()["fsyncs"]
        syncs, timed = asyncio.run(main(db))
        assert 1 <= syncs <= db.stats()["fsyncs"] - fsyncs <= 100
        # Each fsync the writers waited for is timed once (for /metrics' dynafast_fsync_seconds).
        assert timed.count == sum(timed.buckets) == syncs
        assert 0 < timed.total_seconds < 10 * syncs


def test_batcher_fails_writers_of_a_failed_fsync(tmp_path, impl):
    async def main(db):
        batcher = DurabilityBatcher(db)
        try:
            db.put(b"a", b"1")
            await asyncio.wait_for(batcher.wait(), 10)
            db.put(b"b", b"2")
            impl.set_io_fault(errno.ENOSPC, after_bytes=db.stats()["buffer_bytes"])
            with pytest.raises(StorageFull):
                await asyncio.wait_for(batcher.wait(), 10)
            impl.clear_io_fault()
            db.put(b"c", b"3")
            await asyncio.wait_for(batcher.wait(), 10)
        finally:
            impl.clear_io_fault()
            batcher.close()

    with open_store(tmp_path / "db", impl) as db:
        asyncio.run(main(db))
        assert (db[b"a"], db[b"b"], db[b"c"]) == (b"1", b"2", b"3")


def test_writes_go_on_while_a_sync_waits_for_the_disk(tmp_path):
    """A sync() waiting for a slow disk (its fsync held here) must not hold up writes: a put whose write buffer is
    full hands the buffer to the file (a write, not an fsync) meanwhile. An event loop writing to the store, as a
    node's does while its background thread syncs every interval, used to stop for as long as the disk took: tens
    to hundreds of milliseconds while a merge's output was being written back."""
    core = compiled_or_skip("logstore")
    store = core.LogStore(str(tmp_path / "db"), write_buffer_size=4096)
    store.put(b"k", b"v")
    core.hold_fsyncs()
    syncing = threading.Thread(target=store.sync)
    writing = threading.Thread(target=lambda: [store.put(b"k%d" % i, b"x" * 1000) for i in range(20)])
    try:
        syncing.start()
        for _ in range(1000):
            if core.fsyncs_waiting():
                break
            time.sleep(0.01)
        assert core.fsyncs_waiting() == 1
        writing.start()
        writing.join(timeout=10)
        written_meanwhile = not writing.is_alive()
    finally:
        core.release_fsyncs()
        syncing.join()
        writing.join()
    assert written_meanwhile, "the puts waited for the fsync"
    assert store.get(b"k19") == b"x" * 1000
    store.sync()
    store.close()
