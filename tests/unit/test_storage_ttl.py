"""Per-key TTL in the embedded engine (Store over the compiled logstore and over its reference), on real files."""
import os
import time

import pytest

from dynafast._ref import logstore as fmt
from dynafast.storage import Store

from conftest import implementations

impl = implementations("logstore")


def open_store(path, impl, **kw):
    kw.setdefault("background_merge", False)
    kw.setdefault("flush_interval", 0)
    return Store(path, engine=impl, **kw)


def wait_past(seconds):
    time.sleep(seconds + 0.05)


def disk_bytes(path):
    return sum(os.path.getsize(os.path.join(path, n)) for n in os.listdir(path) if n.endswith(".data"))


def test_expired_keys_vanish_at_once_from_every_read(tmp_path, impl):
    with open_store(tmp_path / "db", impl) as db:
        db.put(b"p:short", b"1", ttl=0.3)
        db.put(b"p:long", b"2", ttl=60)
        db.put(b"p:plain", b"3")
        db.put(b"q:short", b"4", ttl=0.3)
        assert db.get(b"p:short") == b"1" and b"p:short" in db and len(db) == 4 and db.count(b"p:") == 3
        wait_past(0.3)
        assert db.get(b"p:short") is None and db.get(b"q:short") is None
        assert b"p:short" not in db
        assert len(db) == 2 and db.count(b"p:") == 2 and db.count(b"q:") == 0
        assert sorted(db.keys()) == [b"p:long", b"p:plain"]
        assert sorted(db.items(b"p:")) == [(b"p:long", b"2"), (b"p:plain", b"3")]


def test_ttl_expire_persist(tmp_path, impl):
    with open_store(tmp_path / "db", impl) as db:
        db.put(b"k", b"v", ttl=30)
        assert 29 < db.ttl(b"k") <= 30
        db.put(b"plain", b"v")
        assert db.ttl(b"plain") is None
        with pytest.raises(KeyError):
            db.ttl(b"absent")
        assert db.expire(b"plain", 0.3) is True and db.get(b"plain") == b"v"
        assert db.persist(b"k") is True and db.ttl(b"k") is None and db.get(b"k") == b"v"
        assert db.persist(b"k") is False  # nothing to persist
        assert db.expire(b"absent", 5) is False and db.persist(b"absent") is False
        db.put(b"k", b"again")  # a plain put of a key that had a TTL removes it
        assert db.ttl(b"k") is None
        for bad in (0, -1, "5", True):
            with pytest.raises(ValueError):
                db.put(b"x", b"v", ttl=bad)
        assert db.get(b"x") is None
        wait_past(0.3)
        assert db.get(b"plain") is None
        with pytest.raises(KeyError):
            db.ttl(b"plain")
        db.delete(b"plain")  # an expired key deletes like an absent one
        assert db.get(b"plain") is None


@pytest.mark.parametrize("hints", [True, False], ids=["hint-files", "data-scan"])
def test_expiry_survives_a_restart(tmp_path, impl, hints):
    path = tmp_path / "db"
    with open_store(path, impl, segment_size=4096) as db:
        for i in range(50):  # several segments: most are loaded from their hint files
            db.put(b"short-%d" % i, os.urandom(200), ttl=0.5)
            db.put(b"long-%d" % i, b"L", ttl=3600)
            db.put(b"plain-%d" % i, b"P")
        db.put(b"big", os.urandom(10_000), ttl=0.5)  # past compress_threshold: compressed or not, it expires
    if not hints:
        for name in os.listdir(path):
            if name.endswith(".hint"):
                os.unlink(path / name)
    else:
        # The expiry is in the hint entry itself (not only in the data file).
        hint = next(n for n in sorted(os.listdir(path)) if n.endswith(".hint"))
        data = (path / hint).read_bytes()
        entries, _ = fmt.decode_hint(data, os.path.getsize(path / (hint[:-5] + ".data")))
        assert any(e[2] & fmt.FLAG_EXPIRES and e[4] > fmt.now_ms() for e in entries)
    with open_store(path, impl) as db:
        assert db.get(b"short-3") is not None and 3500 < db.ttl(b"long-3") <= 3600 and db.ttl(b"plain-3") is None
    wait_past(0.5)
    with open_store(path, impl) as db:
        assert db.get(b"short-3") is None and db.get(b"big") is None
        assert len(db) == 100 and db.get(b"long-49") == b"L" and db.get(b"plain-0") == b"P"


def test_merge_reclaims_the_space_of_expired_keys(tmp_path, impl):
    path = tmp_path / "db"
    with open_store(path, impl, segment_size=64 * 1024) as db:
        for i in range(200):
            db.put(b"gone-%d" % i, os.urandom(4000), ttl=0.5)
        db.put(b"kept", b"value")
        db.flush()
        before = disk_bytes(path)
        assert before > 200 * 4000
        wait_past(0.5)
        db.merge()
        after = disk_bytes(path)
        assert after < 10_000, (before, after)
        assert len(db) == 1 and db.get(b"kept") == b"value"
    with open_store(path, impl) as db:
        assert len(db) == 1 and db.get(b"gone-7") is None and db.get(b"kept") == b"value"


def test_merge_leaves_a_tombstone_where_an_older_value_stays_behind(tmp_path, impl):
    """An expired record dropped by a merge must not uncover an older value of its key held by a segment the
    merge kept: after a restart that value would be back."""
    path = tmp_path / "db"
    with open_store(path, impl, segment_size=16 * 1024) as db:
        db.put(b"k", b"old value")
        for i in range(20):  # fill the first segment with data that stays live: no merge picks it
            db.put(b"keep-%d" % i, os.urandom(1000))
        db.put(b"k", b"new value", ttl=0.5)
        for i in range(20):  # a second segment, then made mostly dead so that a merge picks it
            db.put(b"churn-%d" % i, os.urandom(1000))
        for i in range(20):
            db.delete(b"churn-%d" % i)
        db.flush()
        wait_past(0.5)
        assert db.get(b"k") is None
        engine = db._engine
        merged = engine.merge(0.5)  # only the segments that are mostly dead
        assert merged >= 1
        assert db.get(b"k") is None
    with open_store(path, impl) as db:
        assert db.get(b"k") is None, "the value the expired one replaced came back after a merge and a restart"
        assert db.get(b"keep-3") is not None


def test_each_build_reads_the_other_builds_expiries(tmp_path):
    from dynafast import _impl

    try:
        compiled = _impl.compiled("logstore")
    except ImportError:
        pytest.skip("the compiled engine is not built")
    builds = [compiled, _impl.reference("logstore")]
    for writer, reader in (builds, builds[::-1]):
        path = tmp_path / writer.__name__
        with open_store(path, writer, segment_size=4096) as db:
            for i in range(40):
                db.put(b"t-%d" % i, b"x" * 100, ttl=0.5 if i % 2 else 3600)
        with open_store(path, reader) as db:
            assert len(db) == 40 and 3500 < db.ttl(b"t-0") <= 3600
        wait_past(0.5)
        with open_store(path, reader) as db:
            assert sorted(db.keys()) == sorted(b"t-%d" % i for i in range(0, 40, 2))
