"""Progress of a ring change as an operator follows it: `dynafast leave` shows the partition transfers until
the node has left, `dynafast transfers --watch` refreshes until no transfer is left. Real nodes, the real CLI
(its output is a pipe here, so each change is a line of its own)."""
import re

import pytest

from dynafast import Client
from dynafast.testing.cluster import LocalCluster
from test_cli import run
from test_cluster import wait_for, wait_members

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(240)]

BAR = re.compile(r"\[[#.]{30}\] (\d+)/(\d+) ")


def test_leave_and_transfers_watch_show_progress_until_done(tmp_path):
    # Slow transfers (64 KB/s per sender, after a burst of 128 KB): moving 1.5 MB takes a few seconds.
    config = tmp_path / "node.toml"
    config.write_text("handoff_interval = 0.2\ngossip_interval = 0.3\ndrop_grace = 0.5\n"
                      "transfer_bytes_per_second = 65536.0\n")
    with LocalCluster(4, base_dir=tmp_path / "c", extra_args=["--config", str(config)]) as c:
        with Client(c.addresses) as client:
            wait_members(client, 4)
            for i in range(200):
                client.put(f"p-{i}".encode(), b"x" * 10_000, w=3)
        n1 = c.addresses[0]

        # The leave waits for the node to have left, one line per change of its progress.
        result = run("leave", "--node", "n4", "--cluster", n1, "--wait", "120", timeout=150)
        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        assert lines[0] == "n4 is leaving: its partitions are handed off, then it stops"
        assert lines[-1] == "n4 has left"
        # Four nodes, n=3: the replicas n4 held move to the node that lacked them, (partition, target) pairs.
        bars = [tuple(map(int, m.groups())) for m in map(BAR.search, lines)
                if m and "partition transfers done" in m.string]
        assert len(bars) >= 2, result.stdout
        assert all(done <= total for done, total in bars) and len({total for _, total in bars}) == 1
        assert [done for done, _ in bars] == sorted(done for done, _ in bars)  # it only moves forward
        assert wait_for(lambda: not c.node("n4").is_running(), 60), "n4 did not stop after leaving"

        # A node joins: transfers --watch follows the partitions moving to it until nothing is left to move.
        n5 = c.add_node()
        with Client([n1]) as client:
            assert wait_for(lambda: client.status(n1)["next_ring_version"] is not None, 60), "n5 did not join"
        result = run("transfers", "--watch", "120", "--cluster", n1, timeout=150)
        assert result.returncode == 0, result.stderr
        reports = result.stdout.strip().split("\n\n")
        moving = [r for r in reports if "partition transfers: [" in r]
        assert moving and "moving from ring version" in moving[0], reports[0]
        assert reports[-1].startswith("no ring change in progress")
        assert reports[-1].endswith("transfers left: none")
        with Client([n1]) as client:
            owned = {m["id"]: m["partitions"] for m in client.status(n1)["members"]}
            assert owned["n5"] > 0 and owned["n4"] == 0
            assert client.get(b"p-7").values == [b"x" * 10_000]
        assert n5.is_running()
