"""How long a wiped dynafast node takes to be whole again: a 3-node cluster, K keys on every replica, one node
stopped, its data directory deleted, and restarted.

The restarted node marks its vnodes "repairing" and pulls their data back from the other replicas at once
(Merkle-tree exchanges, cluster/repair.py). Measured from the restart:

- serving: the node printed its serving line;
- repair done: its status shows ``repair.vnodes_repairing == 0`` and no ``pending_ring``;
- whole: every key (or, above --full-check keys, a random sample of --sample keys) reads back from the node
  itself, as a primary (REPLICA_GET straight to it, no coordinator);

plus the node's ``keys_repaired``, its peak RSS and CPU time, and the CPU time the two other nodes spent serving
the repair. The keys are loaded first with w=3 (every replica acknowledged each write) from several processes.

    python benchmarks/repair_after_wipe.py --keys 100000
    python benchmarks/repair_after_wipe.py --keys 1000 --json -          # JSON report on stdout
    python benchmarks/repair_after_wipe.py --keys 100000 --profile repair.svg   # py-spy on the repairing node

Default node settings (anti-entropy rate limit, exchange interval) unless --config names a TOML file.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dynafast import AsyncClient, Client
from dynafast._impl import ring as rings
from dynafast.errors import DynafastError
from dynafast.net.blocking import BlockingConnection
from dynafast.net.connection import Connection
from dynafast.net.messages import Msg
from dynafast.testing.cluster import LocalCluster

VICTIM = "n2"  # not n1: the first node has no seeds, so wiped it would form a cluster of its own
IN_FLIGHT = 64  # presence checks in flight at once against the wiped node


def key_of(i: int) -> bytes:
    return b"repair-%09d" % i


# ---------------------------------------------------------------- /proc readings (no psutil)


def cpu_seconds(pid: int) -> float:
    """user + system CPU seconds of a process, from /proc/PID/stat (fields 14 and 15, in clock ticks)."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        data = f.read()
    fields = data[data.rindex(b")") + 2:].split()  # the command name may contain spaces
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def memory_mib(pid: int) -> dict:
    """Current and peak resident set size, from /proc/PID/status."""
    found = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                found[name] = round(int(value.split()[0]) / 1024, 1)  # kB
    return {"rss_mib": found.get("VmRSS"), "peak_rss_mib": found.get("VmHWM")}


# ---------------------------------------------------------------- loading


def _load_share(addresses, first, stop, value_size, clients, w, results) -> None:
    """One loader process: keys [first, stop) with `clients` concurrent puts; failed puts are retried."""
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    value = b"v" * value_size

    async def main():
        failed = []
        async with AsyncClient(addresses, timeout=10.0) as client:
            started = time.monotonic()
            todo = iter(range(first, stop))

            async def writer():
                for i in todo:  # the shared iterator hands each key to exactly one writer
                    for attempt in range(3):
                        try:
                            await client.put(key_of(i), value, w=w)
                            break
                        except DynafastError:
                            await asyncio.sleep(0.1 * (attempt + 1))
                    else:
                        failed.append(i)

            await asyncio.gather(*(writer() for _ in range(clients)))
            return failed, time.monotonic() - started

    results.put(asyncio.run(main()))


def load(addresses, keys: int, value_size: int, procs: int, clients: int, w: int) -> dict:
    ctx = multiprocessing.get_context("spawn")  # a forked child would carry the cluster's exit hooks
    results = ctx.Queue()
    step = -(-keys // procs)
    workers = [ctx.Process(target=_load_share,
                           args=(addresses, lo, min(keys, lo + step), value_size, clients, w, results))
               for lo in range(0, keys, step)]
    started = time.monotonic()
    for p in workers:
        p.start()
    failed, busiest = [], 0.0
    try:
        for _ in workers:
            share_failed, share_seconds = results.get(timeout=max(600.0, keys / 200))  # bounded: >= 200 keys/s
            failed += share_failed
            busiest = max(busiest, share_seconds)
    finally:
        for p in workers:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
                p.join(timeout=5)
    seconds = time.monotonic() - started
    # The rate counts from the loaders' first put (their start-up, imports and ring fetch, is left out).
    return {"seconds": round(seconds, 2), "keys_per_second": round(keys / busiest), "failed_puts": len(failed),
            "processes": len(workers), "clients_per_process": clients, "w": w}


# ---------------------------------------------------------------- presence on the wiped node


async def _present(address: str, ring, keys: list[bytes]) -> set[bytes]:
    """The keys of ``keys`` that the node at ``address`` holds as a primary, read straight from it."""
    host, port = address.rsplit(":", 1)
    conn = await Connection.open(host, int(port), timeout=5.0)
    found = set()
    try:
        async def check(key):
            try:
                _, reply = await conn.call(Msg.REPLICA_GET, (ring.partition_of(key), key, None), 10.0)
            except DynafastError:
                return  # not serving that partition yet: missing for now
            if reply[0] is not None:
                found.add(key)

        for start in range(0, len(keys), IN_FLIGHT):
            await asyncio.gather(*(check(k) for k in keys[start:start + IN_FLIGHT]))
    finally:
        await conn.close()
    return found


def present(address: str, ring, keys: list[bytes]) -> set[bytes]:
    try:
        return asyncio.run(_present(address, ring, keys))
    except (DynafastError, OSError):
        return set()  # not accepting connections yet


def fetch_ring(address: str):
    host, port = address.rsplit(":", 1)
    conn = BlockingConnection(host, int(port), 5.0)
    try:
        _, fields = conn.call(Msg.RING_GET, (), 5.0)
    finally:
        conn.close()
    return rings.Ring.from_bytes(fields[0])


# ---------------------------------------------------------------- the run


def wait_members(client: Client, addresses, count: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if all(sum(m["state"] == "up" for m in client.status(a)["members"]) == count for a in addresses):
                return
        except DynafastError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"cluster of {count} did not form within {timeout} s")


def start_profile(pid: int, path: str, seconds: int):
    if not shutil.which("py-spy"):
        print("py-spy not found: no profile", file=sys.stderr)
        return None
    # A .txt path gets py-spy's raw format (collapsed stacks, one per line) instead of a flame graph.
    form = ["--format", "raw"] if path.endswith(".txt") else []
    return subprocess.Popen(["py-spy", "record", "--pid", str(pid), "--duration", str(seconds), "--rate", "50",
                             "--output", path, "--nonblocking", *form],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def run(args, base: Path) -> dict:
    extra = ["--config", args.config] if args.config else []
    report = {"keys": args.keys, "value_size": args.value_size, "partitions": args.partitions,
              "machine_cpus": os.cpu_count(), "load_average_before": os.getloadavg()[0]}
    with LocalCluster(3, base_dir=base, partitions=args.partitions, extra_args=extra) as cluster:
        with Client(cluster.addresses, timeout=10.0) as client:
            wait_members(client, cluster.addresses, 3, 60)
            print(f"loading {args.keys} keys of {args.value_size} B with w={args.w}", file=sys.stderr)
            report["load"] = load(cluster.addresses, args.keys, args.value_size, args.procs, args.clients, args.w)
            print(f"loaded at {report['load']['keys_per_second']} keys/s", file=sys.stderr)
            if args.w < 3:
                time.sleep(args.settle)  # let anti-entropy bring the third replicas up to date

            ring = fetch_ring(cluster.node("n1").address)
            keys = [key_of(i) for i in range(args.keys)]
            full = args.keys <= args.full_check
            checked = keys if full else random.Random(args.seed).sample(keys, args.sample)
            report["checked_keys"] = len(checked)
            report["checked"] = "all keys" if full else f"random sample of {len(checked)}"

            victim = cluster.node(VICTIM)
            peers = [n for n in cluster.nodes if n is not victim]
            victim.stop()
            victim.wipe()
            peer_cpu = {n.node_id: cpu_seconds(n.pid) for n in peers}
            started = time.monotonic()
            victim.restart(timeout=30.0)
            report["serving_s"] = round(time.monotonic() - started, 2)
            pid = victim.pid
            profiled = cluster.node(args.profile_node or VICTIM)
            profiler = start_profile(profiled.pid, args.profile, args.profile_seconds) if args.profile else None

            missing = set(checked)
            repair_done = whole = None
            status = {}
            peak_rss = 0.0
            deadline = started + args.timeout
            while time.monotonic() < deadline and (repair_done is None or whole is None):
                now = time.monotonic() - started
                if repair_done is None:
                    try:
                        status = client.status(victim.address)["repair"]
                    except DynafastError:
                        status = {}
                    if status.get("vnodes_repairing") == 0 and not status.get("pending_ring", True) \
                            and status.get("vnodes_repaired", 0) > 0:
                        repair_done = now
                if whole is None:
                    missing -= present(victim.address, ring, sorted(missing))
                    if not missing:
                        whole = time.monotonic() - started
                peak_rss = max(peak_rss, memory_mib(pid)["peak_rss_mib"] or 0.0)
                if args.progress:
                    print(f"  {now:7.1f} s  repair {status}  missing {len(missing)}/{len(checked)}",
                          file=sys.stderr)
                time.sleep(args.poll)

            report["repair_done_s"] = None if repair_done is None else round(repair_done, 2)
            report["whole_s"] = None if whole is None else round(whole, 2)
            report["missing_at_end"] = len(missing)
            victim_status = client.status(victim.address)
            report["repair"] = victim_status["repair"]
            # Keys repaired by every exchange each node ran, the repair's included. The scheduled rounds (every
            # ae_interval) go on meanwhile and may fill a vnode before the repair loop comes to it: such keys
            # count here (on whichever node ran the exchange), not in repair.keys_repaired.
            report["antientropy_keys_repaired"] = {
                n.node_id: client.status(n.address)["antientropy"]["keys_repaired"] for n in cluster.nodes}
            report["victim_cpu_s"] = round(cpu_seconds(pid), 2)
            report["victim_memory"] = memory_mib(pid)
            report["peers_cpu_s"] = {n.node_id: round(cpu_seconds(n.pid) - peer_cpu[n.node_id], 2) for n in peers}
            report["timed_out"] = repair_done is None or whole is None
            if args.verify_all and not full:
                found = present(victim.address, ring, keys)
                report["verify_all_missing"] = len(keys) - len(found)
            if profiler is not None:
                try:
                    _, err = profiler.communicate(timeout=args.profile_seconds + 60)
                    report["profile"] = args.profile if profiler.returncode == 0 else err.decode()[-300:]
                except subprocess.TimeoutExpired:
                    profiler.kill()
                    profiler.communicate(timeout=10)
                    report["profile"] = "py-spy did not finish"
    report["load_average_after"] = os.getloadavg()[0]
    return report


def summary(r: dict) -> str:
    def s(v):
        return "timeout" if v is None else f"{v:.1f} s"

    rate = f"{r['keys'] / r['repair_done_s']:,.0f} keys/s" if r.get("repair_done_s") else "-"
    return (f"{r['keys']} keys x {r['value_size']} B, {r['partitions']} partitions: load "
            f"{r['load']['keys_per_second']} keys/s (w={r['load']['w']}); wiped {VICTIM} serving "
            f"{s(r['serving_s'])}, repair done {s(r['repair_done_s'])} ({rate}), whole ({r['checked']}) "
            f"{s(r['whole_s'])} after restart; keys_repaired {r['repair']['keys_repaired']}, node CPU "
            f"{r['victim_cpu_s']} s, peak RSS {r['victim_memory']['peak_rss_mib']} MiB, peers' CPU "
            f"{r['peers_cpu_s']}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--value-size", type=int, default=100)
    parser.add_argument("--partitions", type=int, default=64, help="ring partitions")
    parser.add_argument("--w", type=int, default=3,
                        help="write quorum of the load (3: every replica has each key)")
    parser.add_argument("--settle", type=float, default=30.0, help="seconds to wait after a load with w < 3")
    parser.add_argument("--procs", type=int, default=2, help="loader processes")
    parser.add_argument("--clients", type=int, default=64, help="concurrent puts per loader process")
    parser.add_argument("--full-check", type=int, default=10_000,
                        help="check every key on the wiped node up to this many keys, a sample above")
    parser.add_argument("--sample", type=int, default=2000, help="keys checked above --full-check")
    parser.add_argument("--verify-all", action="store_true", help="after the timing, check every key once")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds to wait for the repair")
    parser.add_argument("--poll", type=float, default=0.25, help="seconds between polls")
    parser.add_argument("--config", help="TOML file of node settings (default: the defaults)")
    parser.add_argument("--profile", metavar="PATH",
                        help="py-spy profile of the wiped node after its restart (.svg flame graph, .txt raw)")
    parser.add_argument("--profile-seconds", type=int, default=20)
    parser.add_argument("--profile-node", choices=["n1", "n2", "n3"],
                        help=f"the node to profile (default {VICTIM}, the wiped one; n1 and n3 serve its repair)")
    parser.add_argument("--progress", action="store_true", help="print every poll to stderr")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", metavar="PATH", help="also write the report as JSON to PATH ('-': stdout)")
    args = parser.parse_args(argv)
    if args.keys < 1 or args.procs < 1 or args.clients < 1:
        parser.error("--keys, --procs and --clients must be positive")
    args.sample = min(args.sample, args.keys)

    with tempfile.TemporaryDirectory(prefix="dynafast-repair-") as tmp:
        report = run(args, Path(tmp) / "cluster")
    print(summary(report))
    if args.json == "-":
        print(json.dumps(report, indent=2))
    elif args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return 1 if report["timed_out"] else 0


if __name__ == "__main__":
    sys.exit(main())
