"""dynafast's embedded engine side by side with lmdb, RocksDB (rocksdict), LevelDB (plyvel) and sqlite3.

    python benchmarks/engines.py [--keys 200000] [--value-size 100] [--durable-ops 2000] [--open-keys 1000000]

Every operation is one call from Python. Workloads: random puts (each engine's fastest non-durable
mode), random gets, a full scan, durable puts (each engine's fsync-per-acknowledgement mode) from 1 and
from 16 threads, reopen time of a store holding --open-keys keys with and without hint files, and keydir
memory per key. Prints a table of ops/s with dynafast's ratio against each peer. With --repeat N the
engines take turns N times and each figure is the best of its N rounds (the machine is shared and noisy).
"""
import argparse
import gc
import os
import random
import shutil
import sqlite3
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))

from dynafast.storage import Store  # noqa: E402 - after the path setup above


# -- engines: each returns an object with put/get/scan/close and durable_put/threads_ok -------------
class Dynafast:
    name = "dynafast"

    def __init__(self, path, durable=False):
        self.db = Store(path, sync="always" if durable else "none", background_merge=False)
        self.put = self.db.put
        self.get = self.db.get
        self.durable_put = self.db.put

    def begin(self):
        pass

    def end(self):
        self.db.flush()

    def scan(self):
        return self.db.items()

    def close(self):
        self.db.close()


class Lmdb:
    name = "lmdb"

    def __init__(self, path, durable=False):
        import lmdb

        self.env = lmdb.open(path, map_size=16 << 30, sync=durable, metasync=durable, writemap=not durable)
        self.txn = None
        self.lock = threading.Lock()

    def begin(self):
        # one write transaction around the bulk phase: lmdb's fastest way to take many single puts
        self.txn = self.env.begin(write=True)
        self.put = self.txn.put

    def end(self):
        self.txn.commit()
        self.txn = None

    def reader(self):
        self.rtxn = self.env.begin()
        self.get = self.rtxn.get

    def durable_put(self, k, v):
        with self.env.begin(write=True) as txn:  # commit = fsync; lmdb has a single writer
            txn.put(k, v)

    def scan(self):
        txn = self.env.begin()
        return iter(txn.cursor())

    def close(self):
        if getattr(self, "rtxn", None) is not None:
            self.rtxn.abort()
        self.env.close()


class Rocks:
    name = "rocksdb"

    def __init__(self, path, durable=False):
        import rocksdict

        self.db = rocksdict.Rdict(path)
        self.put = self.db.put
        self.get = self.db.get
        wo = rocksdict.WriteOptions()
        wo.sync = True
        self.wo = wo
        db = self.db
        self.durable_put = lambda k, v: db.put(k, v, wo)

    def begin(self):
        pass

    def end(self):
        pass

    def scan(self):
        return self.db.items()

    def close(self):
        self.db.close()


class Level:
    name = "leveldb"

    def __init__(self, path, durable=False):
        import plyvel

        self.db = plyvel.DB(path, create_if_missing=True)
        self.put = self.db.put
        self.get = self.db.get
        db = self.db
        self.durable_put = lambda k, v: db.put(k, v, sync=True)

    def begin(self):
        pass

    def end(self):
        pass

    def scan(self):
        return self.db.iterator()

    def close(self):
        self.db.close()


class Sqlite:
    name = "sqlite3"

    def __init__(self, path, durable=False):
        os.makedirs(path, exist_ok=True)
        self.file = os.path.join(path, "db.sqlite")
        self.conn = self._connect()
        self.conn.execute("CREATE TABLE IF NOT EXISTS kv (k BLOB PRIMARY KEY, v BLOB) WITHOUT ROWID")
        self.local = threading.local()

    def _connect(self):
        conn = sqlite3.connect(self.file, isolation_level=None, check_same_thread=False, timeout=60)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        return conn

    def begin(self):
        self.conn.execute("BEGIN")
        ex = self.conn.execute
        self.put = lambda k, v: ex("INSERT OR REPLACE INTO kv VALUES (?, ?)", (k, v))

    def end(self):
        self.conn.execute("COMMIT")

    def reader(self):
        ex = self.conn.execute

        def get(k):
            row = ex("SELECT v FROM kv WHERE k = ?", (k,)).fetchone()
            return row[0] if row else None

        self.get = get

    def durable_put(self, k, v):
        conn = getattr(self.local, "conn", None)
        if conn is None:
            conn = self.local.conn = self._connect()
        conn.execute("INSERT OR REPLACE INTO kv VALUES (?, ?)", (k, v))  # autocommit: fsync per put

    def scan(self):
        return self.conn.execute("SELECT k, v FROM kv")

    def close(self):
        self.conn.close()


ENGINES = [Dynafast, Lmdb, Rocks, Level, Sqlite]


# -- workloads ---------------------------------------------------------------------------------------
def timed(fn):
    gc.collect()
    gc.disable()
    try:
        t = time.perf_counter()
        n = fn()
        return n / (time.perf_counter() - t)
    finally:
        gc.enable()


def bench_engine(cls, base, keys, value):
    path = os.path.join(base, cls.name)
    eng = cls(path)
    out = {}
    order = list(keys)
    random.Random(1).shuffle(order)

    def puts():
        eng.begin()
        put = eng.put
        for k in keys:
            put(k, value)
        eng.end()
        return len(keys)

    out["random put"] = timed(puts)
    if hasattr(eng, "reader"):
        eng.reader()

    def gets():
        get = eng.get
        for k in order:
            get(k)
        return len(order)

    out["random get"] = timed(gets)
    assert eng.get(order[0]) == value, f"{cls.name}: read back failed"

    def scan():
        n = 0
        for _ in eng.scan():
            n += 1
        assert n == len(keys), (cls.name, n)
        return n

    out["full scan"] = timed(scan)
    eng.close()
    shutil.rmtree(path, ignore_errors=True)
    return out


def bench_durable(cls, base, threads, ops, value):
    path = os.path.join(base, f"{cls.name}-durable-{threads}")
    eng = cls(path, durable=True)
    per = max(1, ops // threads) if threads > 1 else ops
    keysets = [[b"d%02d-%012d" % (t, i) for i in range(per)] for t in range(threads)]

    def worker(ks):
        put = eng.durable_put
        for k in ks:
            put(k, value)

    def run():
        if threads == 1:
            worker(keysets[0])
        else:
            ts = [threading.Thread(target=worker, args=(ks,)) for ks in keysets]
            for t in ts:
                t.start()
            for t in ts:
                t.join()
        return per * threads

    rate = timed(run)
    eng.close()
    shutil.rmtree(path, ignore_errors=True)
    return rate


def bench_open(base, n, value):
    path = os.path.join(base, "dynafast-open")
    keys = [random.randbytes(16) for _ in range(n)]
    db = Store(path, background_merge=False)
    put = db.put
    for k in keys:
        put(k, value)
    db.close()
    t = time.perf_counter()
    db = Store(path, background_merge=False)
    with_hints = time.perf_counter() - t
    stats = db.stats()
    db.close()
    for name in os.listdir(path):
        if name.endswith(".hint"):
            os.unlink(os.path.join(path, name))
    t = time.perf_counter()
    db = Store(path, background_merge=False)
    without = time.perf_counter() - t
    assert len(db) == n
    db.close()
    shutil.rmtree(path, ignore_errors=True)
    return with_hints, without, stats


def fmt_rate(r):
    return f"{r / 1e6:.2f}M" if r >= 1e6 else f"{r / 1e3:.1f}k"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--keys", type=int, default=200_000)
    ap.add_argument("--key-size", type=int, default=16)
    ap.add_argument("--value-size", type=int, default=100)
    ap.add_argument("--durable-ops", type=int, default=2000, help="durable puts per run (split over threads)")
    ap.add_argument("--open-keys", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=1, help="rounds; the best round of each figure is kept")
    ap.add_argument("--dir", default=None, help="scratch directory (default: a temporary one here)")
    ap.add_argument("--engines", default=",".join(c.name for c in ENGINES))
    ap.add_argument("--skip", default="", help="comma list of: ops,durable,open")
    args = ap.parse_args(argv)
    want = set(args.engines.split(","))
    engines = [c for c in ENGINES if c.name in want]
    skip = set(filter(None, args.skip.split(",")))
    base = tempfile.mkdtemp(prefix="engines-", dir=args.dir or os.getcwd())
    rng = random.Random(42)
    keys = list({rng.randbytes(args.key_size) for _ in range(args.keys)})
    value = rng.randbytes(args.value_size)
    results = {}
    try:
        def keep_best(name, workload, rate):
            # the machine is shared: the best of the rounds is the least disturbed one
            r = results.setdefault(name, {})
            r[workload] = max(r.get(workload, 0.0), rate)

        for round_ in range(args.repeat):
            if "ops" not in skip:
                for cls in engines:
                    print(f"  [{round_ + 1}/{args.repeat}] {cls.name}: puts/gets/scan of {len(keys)} keys ...",
                          file=sys.stderr)
                    for w, rate in bench_engine(cls, base, keys, value).items():
                        keep_best(cls.name, w, rate)
            if "durable" not in skip:
                for cls in engines:
                    for threads in (1, 16):
                        print(f"  [{round_ + 1}/{args.repeat}] {cls.name}: durable puts, {threads} thread(s) ...",
                              file=sys.stderr)
                        keep_best(cls.name, f"durable put x{threads}",
                                  bench_durable(cls, base, threads, args.durable_ops, value))
        rows = sorted({w for r in results.values() for w in r}, key=lambda w: list(results["dynafast"]).index(w)
                      if "dynafast" in results and w in results["dynafast"] else 99)
        names = [c.name for c in engines]
        print(f"\n{len(keys)} keys, {args.key_size}-byte keys, {args.value_size}-byte values; ops/s "
              f"(ratio = dynafast / peer)")
        header = f"| {'workload':<16} | " + " | ".join(f"{n:>10}" for n in names)
        header += " | " + " | ".join(f"vs {n:<8}" for n in names if n != "dynafast") + " |"
        print(header)
        print("|" + "---|" * (1 + len(names) + len(names) - 1))
        for w in rows:
            cells = [fmt_rate(results[n][w]) if w in results.get(n, {}) else "-" for n in names]
            d = results.get("dynafast", {}).get(w)
            ratios = [f"{d / results[n][w]:.2f}x" if d and w in results.get(n, {}) else "-"
                      for n in names if n != "dynafast"]
            print(f"| {w:<16} | " + " | ".join(f"{c:>10}" for c in cells) + " | "
                  + " | ".join(f"{r:<10}" for r in ratios) + " |")
        d = results.get("dynafast", {})
        if "durable put x1" in d and "durable put x16" in d:
            print(f"\ndynafast durable puts, 16 threads vs 1: {d['durable put x16'] / d['durable put x1']:.1f}x")
        if "open" not in skip:
            print(f"  dynafast: open of {args.open_keys} keys ...", file=sys.stderr)
            hinted, unhinted, stats = bench_open(base, args.open_keys, value)
            print(f"open of {args.open_keys} keys: {hinted:.3f} s with hints, {unhinted:.3f} s without")
            print(f"keydir: {stats['keydir_bytes_per_key']:.1f} bytes/key in use "
                  f"({stats['keydir_overhead_per_key']:.1f} + the {args.key_size}-byte key), "
                  f"{stats['keydir_bytes'] / 2**20:.1f} MiB for {stats['keys']} keys")
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
