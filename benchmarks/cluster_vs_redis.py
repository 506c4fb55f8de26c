"""dynafast (one node, and a 3-node N=3 R=2 W=2 cluster) against Redis (one server, and a 3-master Redis Cluster).

Every system runs on 127.0.0.1 with free ports and temporary directories, one system at a time (the others
are stopped first, so they do not compete for the CPU), under the same client load from the load tool
(`dynafast.bench`: closed loop, YCSB workload, scrambled zipfian keys). The table compares throughput,
latency percentiles and the servers' CPU time per operation, with ratios dynafast / Redis.

    python benchmarks/cluster_vs_redis.py --duration 20 --clients 50 --workload a
    python benchmarks/cluster_vs_redis.py --only redis      # the Redis half alone

Redis persistence is off (no RDB, no AOF); dynafast nodes run with their default sync policy. redis-server is
installed from the OS packages when missing, and the redis/hiredis Python packages with pip.
"""
from __future__ import annotations

import argparse
import atexit
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

from dynafast.bench.runner import format_number, run_benchmark

# Every process this script starts, so that all of them are stopped by PID whatever happens.
STARTED: list[subprocess.Popen] = []


def stop(procs) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        if proc in STARTED:
            STARTED.remove(proc)


def stop_all() -> None:
    stop(list(STARTED))


def spawn(argv, log_path) -> subprocess.Popen:
    log = open(log_path, "wb")
    try:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    finally:
        log.close()  # the child holds its own descriptor
    STARTED.append(proc)
    return proc


def free_port(with_bus: bool = False) -> int:
    """A free loopback port; with_bus also needs port + 10000 free (the Redis Cluster bus port)."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if not with_bus:
            return port
        if port + 10000 < 65536:
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port + 10000))
                    return port
                except OSError:
                    continue
    raise RuntimeError("no free port")


def wait_until(check, what: str, timeout: float, procs=()) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        for proc in procs:
            if proc.poll() is not None:
                raise RuntimeError(f"{what}: process {proc.pid} exited with {proc.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not ready after {timeout} s")
        time.sleep(0.1)


def port_open(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


# ---------------------------------------------------------------- dependencies


def ensure_redis_server() -> None:
    if shutil.which("redis-server") and shutil.which("redis-cli"):
        return
    print("redis-server not found: installing it from the OS packages", file=sys.stderr)
    install = ["apt-get", "install", "-y", "redis-server"]
    if os.geteuid() != 0 and shutil.which("sudo"):
        install.insert(0, "sudo")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    if subprocess.run(install, env=env).returncode != 0:
        subprocess.run(install[:-3] + ["update"], env=env, check=True)
        subprocess.run(install, env=env, check=True)
    if not shutil.which("redis-server"):
        raise RuntimeError("redis-server is still not on PATH")


def ensure_redis_py() -> None:
    try:
        import hiredis  # noqa: F401
        import redis  # noqa: F401
    except ImportError:
        print("installing the redis and hiredis Python packages", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "pip", "install", "redis", "hiredis"], check=True)


# ---------------------------------------------------------------- the systems


def redis_argv(port: int, data_dir: str) -> list[str]:
    return ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--dir", data_dir, "--protected-mode", "no", "--daemonize", "no"]


def start_redis(tmp: str):
    port = free_port()
    data = os.path.join(tmp, "redis")
    os.makedirs(data)
    proc = spawn(redis_argv(port, data), os.path.join(data, "log"))
    wait_until(lambda: port_open(port), "redis-server", 20, [proc])
    return [proc], f"127.0.0.1:{port}"


def start_redis_cluster(tmp: str, masters: int = 3):
    procs, ports = [], []
    for i in range(masters):
        port = free_port(with_bus=True)
        data = os.path.join(tmp, f"redis-cluster-{i}")
        os.makedirs(data)
        argv = redis_argv(port, data) + ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                                         "--cluster-node-timeout", "5000"]
        procs.append(spawn(argv, os.path.join(data, "log")))
        ports.append(port)
    for port in ports:
        wait_until(lambda: port_open(port), "redis cluster node", 20, procs)
    create = ["redis-cli", "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports),
              "--cluster-replicas", "0", "--cluster-yes"]
    subprocess.run(create, check=True, stdout=subprocess.DEVNULL, timeout=60)

    def all_ok():
        for port in ports:
            out = subprocess.run(["redis-cli", "-p", str(port), "cluster", "info"], capture_output=True,
                                 text=True, timeout=10).stdout
            if "cluster_state:ok" not in out:
                return False
        return True

    wait_until(all_ok, "redis cluster state", 30, procs)
    return procs, ",".join(f"127.0.0.1:{p}" for p in ports)


def start_dynafast_node(tmp: str, name: str, port: int, seeds: list[str], n: int, r: int, w: int,
                        partitions: int) -> subprocess.Popen:
    data = os.path.join(tmp, name)
    os.makedirs(data)
    argv = [sys.executable, "-m", "dynafast.cli", "node", "--listen", f"127.0.0.1:{port}", "--data-dir", data,
            "--node-id", name, "--n", str(n), "--r", str(r), "--w", str(w), "--partitions", str(partitions)]
    if seeds:
        argv += ["--seeds", ",".join(seeds)]
    log = os.path.join(tmp, f"{name}.log")
    proc = spawn(argv, log)

    def serving():
        with open(log, "rb") as f:
            return b"serving on" in f.read()

    try:
        wait_until(serving, f"dynafast node {name}", 30, [proc])
    except RuntimeError as exc:
        with open(log, "rb") as f:
            tail = f.read().decode(errors="replace").strip().splitlines()[-3:]
        raise RuntimeError(f"{exc}: {' | '.join(tail)}") from None
    return proc


def wait_members(address: str, count: int, timeout: float) -> None:
    """Wait until `status --json` shows `count` members up; a status verb that fails only costs the wait."""

    def converged():
        out = subprocess.run([sys.executable, "-m", "dynafast.cli", "status", "--cluster", address, "--json"],
                             capture_output=True, text=True, timeout=10)
        if out.returncode != 0:
            return False
        members = json.loads(out.stdout).get("members", [])
        return sum(1 for m in members if m.get("state") == "up") >= count

    try:
        wait_until(converged, "dynafast cluster membership", timeout)
    except (RuntimeError, ValueError, subprocess.TimeoutExpired) as exc:
        print(f"warning: {exc}; benchmarking anyway", file=sys.stderr)


def start_dynafast_single(tmp: str, partitions: int):
    port = free_port()
    proc = start_dynafast_node(tmp, "single", port, [], n=1, r=1, w=1, partitions=partitions)
    return [proc], f"127.0.0.1:{port}"


def start_dynafast_cluster(tmp: str, partitions: int, nodes: int = 3):
    procs, addresses = [], []
    for i in range(nodes):
        port = free_port()
        procs.append(start_dynafast_node(tmp, f"node{i + 1}", port, addresses[:1], n=3, r=2, w=2,
                                         partitions=partitions))
        addresses.append(f"127.0.0.1:{port}")
    wait_members(addresses[0], nodes, 30)
    return procs, ",".join(addresses)


SYSTEMS = {
    # name: (starter, load tool target, family)
    "redis": (lambda tmp, a: start_redis(tmp), "redis", "redis"),
    "redis-cluster": (lambda tmp, a: start_redis_cluster(tmp), "redis-cluster", "redis"),
    "dynafast": (lambda tmp, a: start_dynafast_single(tmp, a.partitions), "dynafast", "dynafast"),
    "dynafast-cluster": (lambda tmp, a: start_dynafast_cluster(tmp, a.partitions), "dynafast", "dynafast"),
}
# The columns compared in the ratio columns: dynafast system / Redis system.
PAIRS = [("dynafast", "redis"), ("dynafast-cluster", "redis-cluster")]


def bench_system(name: str, args, tmp: str) -> dict:
    starter, target, _ = SYSTEMS[name]
    procs, address = starter(tmp, args)
    try:
        config = {
            "target": target,
            "cluster": address if target == "dynafast" else "",
            "redis": address if target != "dynafast" else "",
            "workload": args.workload,
            "clients": args.clients,
            "duration": args.duration,
            "records": args.records,
            "value_size": args.value_size,
            "procs": args.procs,
            "load": True,
            "blind_updates": False,
            "server_pids": [p.pid for p in procs],
            "progress": sys.stderr.isatty(),
            "uvloop": True,
            "seed": args.seed,
        }
        print(f"== {name} at {address}: workload {args.workload}, {args.duration} s", file=sys.stderr)
        return run_benchmark(config)
    finally:
        stop(procs)


# ---------------------------------------------------------------- the comparison table

ROWS = [
    ("ops/s", lambda r: r["overall"]["ops_per_s"]),
    ("p50 us", lambda r: r["overall"]["p50_us"]),
    ("p99 us", lambda r: r["overall"]["p99_us"]),
    ("p99.9 us", lambda r: r["overall"]["p999_us"]),
    ("max us", lambda r: r["overall"]["max_us"]),
    ("server CPU us/op", lambda r: (r.get("server_cpu") or {}).get("us_per_op")),
    ("errors", lambda r: r["overall"]["errors"]),
]


def comparison_table(reports: dict) -> str:
    names = [n for n in SYSTEMS if n in reports]
    pairs = [(a, b) for a, b in PAIRS if a in reports and b in reports and "error" not in reports[a]
             and "error" not in reports[b]]
    header = ["", *names, *(f"{a}/{b}" for a, b in pairs)]
    rows = [header]
    for label, get in ROWS:
        row = [label]
        for n in names:
            row.append("failed" if "error" in reports[n] else format_number(get(reports[n])))
        for a, b in pairs:
            va, vb = get(reports[a]), get(reports[b])
            row.append(f"{va / vb:.2f}x" if va is not None and vb and label != "errors" else "-")
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = []
    for k, row in enumerate(rows):
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    for n in names:
        if "error" in reports[n]:
            lines.append(f"{n} failed: {reports[n]['error']}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=["all", "redis", "dynafast"], default="all",
                        help="run only one family of systems (default all)")
    parser.add_argument("--systems", help=f"comma-separated subset of {','.join(SYSTEMS)}")
    parser.add_argument("--workload", choices=["a", "b", "c", "f"], default="a")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of timed load per system")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--procs", type=int, default=1, help="load generator processes")
    parser.add_argument("--records", type=int, default=10000)
    parser.add_argument("--value-size", type=int, default=100)
    parser.add_argument("--partitions", type=int, default=64, help="dynafast ring partitions")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", metavar="PATH", help="also write every report to this JSON file")
    args = parser.parse_args(argv)

    if args.systems:
        names = [n.strip() for n in args.systems.split(",") if n.strip()]
        unknown = set(names) - set(SYSTEMS)
        if unknown:
            parser.error(f"unknown systems: {', '.join(sorted(unknown))}")
    else:
        names = [n for n, (_, _, family) in SYSTEMS.items() if args.only in ("all", family)]
    if any(SYSTEMS[n][2] == "redis" for n in names):
        ensure_redis_server()
        ensure_redis_py()

    atexit.register(stop_all)
    reports = {}
    with tempfile.TemporaryDirectory(prefix="dynafast-vs-redis-") as tmp:
        try:
            for name in names:
                try:
                    reports[name] = bench_system(name, args, tmp)
                except Exception as exc:  # noqa: BLE001 - one system failing must not hide the others
                    reports[name] = {"error": f"{type(exc).__name__}: {exc}"}
                    print(f"{name} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        finally:
            stop_all()
    print(f"workload {args.workload}, {args.clients} clients in {args.procs} process(es), {args.duration} s per "
          f"system, {args.records} records, {args.value_size} B values")
    print(comparison_table(reports))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(reports, f, indent=2)
    return 0 if all("error" not in r for r in reports.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
