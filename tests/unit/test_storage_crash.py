"""Crash safety: a child writing with sync="always" is SIGKILLed at random moments (also during merges);
every write it acknowledged must be there after reopening, and recovery must not report anything lost."""
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from dynafast.storage import Store

from conftest import implementations

impl = implementations("logstore")

CHILD = os.path.join(os.path.dirname(os.path.dirname(__file__)), "helpers", "storage_crash_child.py")


def run_and_kill(path, engine, mode, start, rng):
    proc = subprocess.Popen(
        [sys.executable, CHILD, str(path), engine, mode, str(start)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    acked = []
    want = rng.randint(20, 250)
    try:
        deadline = time.monotonic() + 60
        while len(acked) < want and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            key, rnd = line.split()
            acked.append((key.encode(), int(rnd)))
        time.sleep(rng.random() * 0.03)  # land the kill anywhere: mid-put, mid-fsync, mid-merge
    finally:
        proc.send_signal(signal.SIGKILL)
        out, err = proc.communicate(timeout=30)
    for line in out.splitlines():  # acknowledged before the kill landed
        if line.count(" ") == 1 and line.endswith(tuple("0123456789")):
            key, rnd = line.split()
            acked.append((key.encode(), int(rnd)))
    assert acked, f"child produced no output: {err[-2000:]}"
    return acked


@pytest.mark.parametrize("mode", ["write", "merge"])
def test_acknowledged_writes_survive_sigkill(tmp_path, impl, mode):
    engine = "compiled" if impl.__name__.startswith("dynafast._core") else "reference"
    rng = random.Random(f"{engine}-{mode}-{os.getpid()}")
    path = tmp_path / "db"
    latest = {}  # key -> highest acknowledged round
    start = 0
    for _ in range(4):
        for key, rnd in run_and_kill(path, engine, mode, start, rng):
            latest[key] = max(latest.get(key, -1), rnd)
            start = max(start, rnd + 1)
        start += 1000  # rounds the killed child may have written unacknowledged stay distinguishable
        with Store(path, engine=impl, background_merge=False) as db:
            # A kill loses no fsync'd record: recovery must not report amnesia (a torn tail is fine).
            rec = db.recovery
            assert not rec["lost"], rec
            for key, rnd in latest.items():
                got = db.get(key)
                assert got is not None, f"acknowledged {key!r} (round {rnd}) is missing"
                k, _, rest = got.partition(b"=")
                assert k == key
                # a write can be durable without its acknowledgement having been printed
                assert int(rest.rstrip(b".")) >= rnd
            assert not [n for n in os.listdir(path) if n.endswith(".tmp")]
