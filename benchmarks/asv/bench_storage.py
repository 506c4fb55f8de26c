"""asv suite for the embedded engine: puts, gets, scan, merge, open (compiled build)."""
import os
import random
import shutil
import tempfile

from dynafast.storage import Store

N = 100_000


def _keys(n, seed=3):
    rng = random.Random(seed)
    return [rng.randbytes(16) for _ in range(n)]


class Ops:
    """Random puts and gets, full scan, on a store of N keys with 100-byte values."""

    def setup(self):
        self.dir = tempfile.mkdtemp(prefix="asv-storage-")
        self.db = Store(os.path.join(self.dir, "db"), background_merge=False, flush_interval=0)
        self.keys = _keys(N)
        self.value = b"v" * 100
        for k in self.keys:
            self.db.put(k, self.value)
        self.order = list(self.keys)
        random.Random(5).shuffle(self.order)

    def teardown(self):
        self.db.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def time_put(self):
        put, v = self.db.put, self.value
        for k in self.order:
            put(k, v)

    def time_get(self):
        get = self.db.get
        for k in self.order:
            get(k)

    def time_scan(self):
        for _ in self.db.items():
            pass

    def time_count_prefix(self):
        self.db.count(b"\x00")


class Merge:
    """Merge of a store where every key was overwritten 4 times."""

    number = 1
    repeat = 5

    def setup(self):
        self.dir = tempfile.mkdtemp(prefix="asv-merge-")
        self.db = Store(os.path.join(self.dir, "db"), background_merge=False, segment_size=4 << 20)
        keys = _keys(N // 2)
        for round_ in range(4):
            for k in keys:
                self.db.put(k, b"%d" % round_ * 50)

    def teardown(self):
        self.db.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def time_merge(self):
        self.db.merge()


class Open:
    """Reopen of a store of N keys, from hint files and from the data files alone."""

    number = 1
    repeat = 5
    params = [True, False]
    param_names = ["hints"]

    def setup(self, hints):
        self.dir = tempfile.mkdtemp(prefix="asv-open-")
        self.path = os.path.join(self.dir, "db")
        db = Store(self.path, background_merge=False)
        for k in _keys(N):
            db.put(k, b"v" * 100)
        db.close()
        if not hints:
            for name in os.listdir(self.path):
                if name.endswith(".hint"):
                    os.unlink(os.path.join(self.path, name))

    def teardown(self, hints):
        shutil.rmtree(self.dir, ignore_errors=True)

    def time_open(self, hints):
        Store(self.path, background_merge=False).close()

    def track_keydir_bytes_per_key(self, hints):
        db = Store(self.path, background_merge=False)
        try:
            return db.stats()["keydir_bytes_per_key"]
        finally:
            db.close()
