"""Embedded engine micro benchmarks: the hot calls on the compiled engine and on the reference.

    pytest -n 0 -m bench benchmarks/test_bench_storage.py
"""
import os
import random

import pytest

from dynafast import _impl
from dynafast.storage import Store

pytestmark = pytest.mark.bench

BUILDS = ["compiled", "reference"]
N = 50_000


def module(build):
    return _impl.compiled("logstore") if build == "compiled" else _impl.reference("logstore")


@pytest.fixture(params=BUILDS)
def filled(request, tmp_path):
    db = Store(tmp_path / "db", engine=module(request.param), background_merge=False, flush_interval=0)
    rng = random.Random(7)
    keys = [rng.randbytes(16) for _ in range(N)]
    value = rng.randbytes(100)
    for k in keys:
        db.put(k, value)
    yield request.param, db, keys, value
    db.close()


def test_put(benchmark, filled):
    build, db, keys, value = filled
    benchmark.group = "put 16B key, 100B value"
    it = iter(range(10**9))
    benchmark(lambda: db.put(b"new-%012d" % next(it), value))


def test_get(benchmark, filled):
    build, db, keys, value = filled
    benchmark.group = "get (hit)"
    order = iter(keys * 40)
    assert benchmark(lambda: db.get(next(order))) == value


def test_get_missing(benchmark, filled):
    build, db, keys, value = filled
    benchmark.group = "get (miss)"
    assert benchmark(db.get, b"absent-key-00000") is None


def test_contains(benchmark, filled):
    build, db, keys, value = filled
    benchmark.group = "contains"
    assert benchmark(db.__contains__, keys[123])


def test_scan_1000(benchmark, filled):
    build, db, keys, value = filled
    benchmark.group = "items() of 1000 keys with a prefix"
    for i in range(1000):
        db.put(b"pfx:%04d" % i, value)

    def scan():
        return sum(1 for _ in db.items(b"pfx:"))

    assert benchmark(scan) == 1000


def test_write_batch_10(benchmark, filled):
    build, db, keys, value = filled
    benchmark.group = "write_batch of 10"
    batch = [(os.urandom(16), value) for _ in range(10)]
    benchmark(db.write_batch, batch)


def test_durable_put(benchmark, tmp_path):
    db = Store(tmp_path / "dur", sync="always", background_merge=False)
    benchmark.group = "durable put (fsync per put, 1 thread)"
    it = iter(range(10**9))
    try:
        benchmark.pedantic(lambda: db.put(b"k%012d" % next(it), b"v" * 100), rounds=200, iterations=1)
    finally:
        db.close()
