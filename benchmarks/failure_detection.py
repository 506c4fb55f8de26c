"""How fast a frozen node is suspected and cleared: freeze one of 3 nodes (SIGSTOP), watch another node's view.

    python benchmarks/failure_detection.py [--trials 3]

Every process it starts is stopped by PID.
"""
import argparse
import sys
import tempfile
import time
from pathlib import Path

from dynafast import Client
from dynafast.testing.cluster import LocalCluster, wait_until


def state_of(client, observer, node_id):
    return {m["id"]: m["state"] for m in client.status(observer)["members"]}[node_id]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=3)
    args = parser.parse_args(argv)
    base = Path(tempfile.mkdtemp(prefix="dynafast-detect-"))
    with LocalCluster(3, base_dir=base) as cluster:
        observer = cluster.nodes[0].address
        with Client(cluster.addresses) as client:
            wait_until(lambda: all(state_of(client, observer, n) == "up" for n in ("n2", "n3")), 60)
            time.sleep(3)
            victim = cluster.node("n3")
            for trial in range(args.trials):
                victim.pause()
                started = time.monotonic()
                wait_until(lambda: state_of(client, observer, "n3") == "down", 60, 0.05)
                down = time.monotonic() - started
                victim.resume()
                started = time.monotonic()
                wait_until(lambda: state_of(client, observer, "n3") == "up", 60, 0.05)
                up = time.monotonic() - started
                print(f"trial {trial + 1}: marked down after {down:.2f} s of silence, up {up:.2f} s after resuming")
                time.sleep(3)
    return 0


if __name__ == "__main__":
    sys.exit(main())
