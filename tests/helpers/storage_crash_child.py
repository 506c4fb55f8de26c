"""Child process of test_storage_crash: writes with sync="always" and prints every acknowledged write.

usage: storage_crash_child.py PATH ENGINE(compiled|reference) MODE(write|merge) START

Each line printed is ``<key> <round>`` after put() returned, i.e. after the record was fsync'd; the
value written is derived from both, so the parent can check what it reads back.
"""
import sys

from dynafast import _impl
from dynafast.storage import Store


def value(key, rnd):
    return key + b"=" + str(rnd).encode() + b"." * (rnd % 97)


def main():
    path, engine, mode, start = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    mod = _impl.compiled("logstore") if engine == "compiled" else _impl.reference("logstore")
    db = Store(path, engine=mod, sync="always", segment_size=16 << 10, background_merge=False)
    out = sys.stdout
    i = start
    while True:
        if mode == "merge":
            key = b"m%d" % (i % 40)
            if i % 10 == 0:  # often, so that kills land inside merges too
                db.merge()
        else:
            key = b"w%d" % i
        if i % 17 == 0:
            db.write_batch([(key, value(key, i)), (key + b"-b", value(key + b"-b", i))])
            out.write(f"{(key + b'-b').decode()} {i}\n")
        else:
            db.put(key, value(key, i))
        out.write(f"{key.decode()} {i}\n")
        out.flush()
        i += 1


if __name__ == "__main__":
    main()
