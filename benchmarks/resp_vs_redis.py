"""redis-benchmark against Redis and against dynafast's RESP listener, in the same run: a single node, and a
3-node dynafast cluster against a Redis Cluster of 3 masters with 3 replicas.

    PYTHONPATH=src python3 benchmarks/resp_vs_redis.py [--requests 1000000] [--clients 50] [--what single,cluster] [--runs 5]

SET and GET, 100-byte values, random keys out of 100,000 (``-r``), ``--clients`` connections, pipeline 1 and 16.
One system runs at a time (the other is stopped), on 127.0.0.1, with the load generator on the same machine. Per
test: ops/s, p50/p99/p99.9 latency (redis-benchmark's summary and percentile lines) and the servers' CPU seconds
per operation (utime + stime from /proc/PID/stat around the test, summed over every server process).

- single: redis-server against one dynafast node (N=1).
- cluster: a Redis Cluster (6 redis-server with ``--cluster-enabled yes``, ``redis-cli --cluster create ...
  --cluster-replicas 1``; ``redis-benchmark --cluster``) against 3 dynafast nodes (N=3, R=2, W=2). dynafast
  speaks no CLUSTER command (any node coordinates any key), so three redis-benchmark processes run at once, one
  per node, with the connections and requests split between them: ops/s is their sum, a latency the worst of
  the three.

When ``memtier_benchmark`` is on the PATH (benchmarks/setup_memtier.sh builds it) each test also runs with it.
Against a Redis Cluster at pipeline 16 trust memtier's figure: redis-benchmark's ``--cluster`` mode tops out near
80,000 ops/s on the 2-vCPU box where memtier's cluster mode drives the same cluster at 350,000-400,000.

Durability: dynafast runs with dw=0 (a write is acknowledged once in the store's write buffer) and sync=interval
(the log is fsync'd every sync_interval, 0.1 s). Redis runs without RDB or AOF by default (nothing on disk: the
cheapest Redis there is); ``--redis-aof`` runs it with ``appendonly yes, appendfsync everysec`` instead, which is
the like-for-like setting (every write appended to a log, fsync'd once a second).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import socket
import subprocess
import sys
import tempfile
import time

STARTED: list[subprocess.Popen] = []
REDIS_PERSISTENCE = ["--appendonly", "no"]  # --redis-aof: ["--appendonly", "yes", "--appendfsync", "everysec"]
TICKS = os.sysconf("SC_CLK_TCK")
TESTS = [(pipeline, test) for pipeline in (1, 16) for test in ("set", "get")]


def free_port(also_plus: int = 0) -> int:
    """A free port on loopback (and, with ``also_plus``, port + also_plus free too: a Redis Cluster bus)."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if not also_plus or port + also_plus > 65535:
            if not also_plus:
                return port
            continue
        try:
            with socket.socket() as s:
                s.bind(("127.0.0.1", port + also_plus))
            return port
        except OSError:
            continue
    raise RuntimeError("no free port")


def cpu_seconds(pids) -> float:
    total = 0.0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime
    return total


def cli(port: int, *args: str) -> str:
    return subprocess.run(["redis-cli", "-p", str(port), *args], capture_output=True, text=True,
                          timeout=30).stdout.strip()


def wait_until(check, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise RuntimeError(f"timed out waiting for {what}")


def stop(procs) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


# -- the systems --------------------------------------------------------------------------------------
def redis_server(base: str, port: int, *extra: str) -> subprocess.Popen:
    directory = os.path.join(base, str(port))
    os.makedirs(directory, exist_ok=True)
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             *REDIS_PERSISTENCE, "--dir", directory, "--protected-mode", "no", *extra],
                            stdout=subprocess.DEVNULL)
    STARTED.append(proc)
    return proc


def start_redis(base: str):
    port = free_port()
    proc = redis_server(base, port)
    wait_until(lambda: cli(port, "SET", "warmup", "x") == "OK", f"redis-server on {port}")
    return [proc], [port], False


def start_redis_cluster(base: str):
    ports = []
    while len(ports) < 6:
        port = free_port(also_plus=10000)
        if port not in ports:
            ports.append(port)
    procs = [redis_server(base, port, "--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{port}.conf",
                          "--cluster-node-timeout", "5000") for port in ports]
    for port in ports:
        wait_until(lambda: cli(port, "PING") == "PONG", f"redis-server on {port}")
    done = subprocess.run(["redis-cli", "--cluster", "create", *[f"127.0.0.1:{p}" for p in ports],
                           "--cluster-replicas", "1", "--cluster-yes"], capture_output=True, text=True,
                          timeout=120)
    if done.returncode:
        raise RuntimeError(f"redis-cli --cluster create failed: {done.stdout} {done.stderr}")
    for port in ports:
        wait_until(lambda: "cluster_state:ok" in cli(port, "CLUSTER", "INFO"), "the Redis Cluster")
    wait_until(lambda: cli(ports[0], "-c", "SET", "warmup", "x") == "OK", "a write to the Redis Cluster")
    return procs, ports[:1], True


def start_dynafast(base: str):
    port, resp = free_port(), free_port()
    proc = subprocess.Popen([sys.executable, "-m", "dynafast.cli", "node", "--listen", f"127.0.0.1:{port}",
                             "--resp", f"127.0.0.1:{resp}", "--data-dir", os.path.join(base, "node"),
                             "--n", "1", "--r", "1", "--w", "1", "--dw", "0", "--sync", "interval"],
                            stdout=subprocess.DEVNULL, stderr=open(os.path.join(base, "node.log"), "wb"))
    STARTED.append(proc)
    wait_until(lambda: cli(resp, "SET", "warmup", "x") == "OK", f"the dynafast node on {resp}")
    return [proc], [resp], False


def start_dynafast_cluster(base: str):
    ports, resps = [free_port() for _ in range(3)], [free_port() for _ in range(3)]
    procs = []
    for i in range(3):
        argv = [sys.executable, "-m", "dynafast.cli", "node", "--listen", f"127.0.0.1:{ports[i]}",
                "--resp", f"127.0.0.1:{resps[i]}", "--data-dir", os.path.join(base, f"n{i + 1}"),
                "--node-id", f"n{i + 1}", "--n", "3", "--r", "2", "--w", "2", "--dw", "0", "--sync", "interval"]
        if i:
            argv += ["--seeds", f"127.0.0.1:{ports[0]}"]
        procs.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL,
                                      stderr=open(os.path.join(base, f"n{i + 1}.log"), "wb")))
        STARTED.append(procs[-1])
        if not i:
            wait_until(lambda: cli(resps[0], "PING") == "PONG", "the first dynafast node")

    def formed():
        infos = [cli(port, "INFO", "replication") for port in resps]
        rings = {re.search(r"ring_version:(\d+)", info).group(1) if "ring_version" in info else None
                 for info in infos}
        return (all("cluster_members:3" in info and "cluster_members_down:0" in info for info in infos)
                and len(rings) == 1 and None not in rings)

    try:
        wait_until(formed, "the dynafast cluster to form", timeout=120)
    except RuntimeError:
        for i, port in enumerate(resps):  # what each node saw, before the scratch directory goes
            print(f"n{i + 1}: exit {procs[i].poll()}, {cli(port, 'INFO', 'replication')!r}", file=sys.stderr)
            with open(os.path.join(base, f"n{i + 1}.log"), "rb") as log:
                sys.stderr.write(log.read()[-3000:].decode("utf-8", "replace"))
        raise
    for port in resps:
        wait_until(lambda: cli(port, "SET", "warmup", "x") == "OK", f"a write through the node on {port}")
    time.sleep(3)  # partitions move to the new members just after they join
    return procs, resps, False


# -- the load generators --------------------------------------------------------------------------------------
def _redis_benchmark(port, test, requests, clients, pipeline, cluster):
    argv = ["redis-benchmark", "-p", str(port), "-t", test, "-n", str(requests), "-c", str(clients),
            "-P", str(pipeline), "-d", "100", "-r", "100000"]
    return subprocess.Popen(argv + (["--cluster"] if cluster else []), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _parse_redis_benchmark(text: str) -> dict:
    text = text.replace("\r", "\n")
    ops = re.search(r"throughput summary: ([\d.]+) requests per second", text)
    summary = re.search(r"avg\s+min\s+p50\s+p95\s+p99\s+max\s*\n\s*([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+"
                        r"([\d.]+)\s+([\d.]+)", text)
    if ops is None or summary is None:
        raise RuntimeError(f"redis-benchmark printed no result: {text[-2000:]}")
    p999 = None
    for percent, value in re.findall(r"^([\d.]+)% <= ([\d.]+) milliseconds", text, re.M):
        if float(percent) >= 99.9:
            p999 = float(value)  # the first step of the percentile distribution at or past 99.9%
            break
    return {"ops": float(ops.group(1)), "p50": float(summary.group(3)), "p99": float(summary.group(5)),
            "p999": p999 if p999 is not None else float(summary.group(6))}


def _memtier(port, test, requests, clients, pipeline, cluster, out_file):
    threads = 2
    argv = ["memtier_benchmark", "-s", "127.0.0.1", "-p", str(port), "--protocol=redis", "-t", str(threads),
            "-c", str(max(clients // threads, 1)), f"--pipeline={pipeline}", "-d", "100",
            f"--ratio={'1:0' if test == 'set' else '0:1'}", "--key-pattern=R:R", "--key-maximum=100000",
            "-n", str(max(requests // clients, 1)), "--hide-histogram", f"--json-out-file={out_file}"]
    return subprocess.Popen(argv + (["--cluster-mode"] if cluster else []), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, text=True)


def _parse_memtier(out_file: str, test: str) -> dict:
    with open(out_file) as f:
        stats = json.load(f)["ALL STATS"]["Sets" if test == "set" else "Gets"]
    latencies = stats["Percentile Latencies"]
    return {"ops": float(stats["Ops/sec"]), "p50": float(latencies["p50.00"]), "p99": float(latencies["p99.00"]),
            "p999": float(latencies["p99.90"])}


def run(tool, ports, test, requests, clients, pipeline, pids, cluster_mode, scratch) -> dict:
    """One test: one load generator per port (the connections and requests split), at once."""
    before = cpu_seconds(pids)
    shares = [(clients * (i + 1)) // len(ports) - (clients * i) // len(ports) for i in range(len(ports))]
    procs, files = [], []
    for port, share in zip(ports, shares):
        part = requests * share // clients
        if tool == "redis-benchmark":
            procs.append(_redis_benchmark(port, test, part, share, pipeline, cluster_mode))
        else:
            files.append(os.path.join(scratch, f"memtier-{port}-{test}-{pipeline}.json"))
            procs.append(_memtier(port, test, part, share, pipeline, cluster_mode, files[-1]))
    outputs = [proc.communicate(timeout=1800)[0] for proc in procs]
    cpu = cpu_seconds(pids) - before
    results = ([_parse_redis_benchmark(text) for text in outputs] if tool == "redis-benchmark"
               else [_parse_memtier(path, test) for path in files])
    return {"ops": sum(r["ops"] for r in results), "p50": max(r["p50"] for r in results),
            "p99": max(r["p99"] for r in results), "p999": max(r["p999"] for r in results),
            "cpu_us": cpu / requests * 1e6}


def compare(label, systems, tools, requests, clients, base) -> dict:
    """One run of every test against both systems, printed as a table; returns {(tool, test, pipeline): (ops
    ratio, CPU-per-operation ratio)}, ours over the reference's."""
    results = {}
    for system, start in systems:
        procs, ports, cluster_mode = start(tempfile.mkdtemp(dir=base))
        try:
            pids = [proc.pid for proc in procs]
            for tool in tools:
                for pipeline, test in TESTS:
                    results[(system, tool, test, pipeline)] = run(tool, ports, test, requests, clients, pipeline,
                                                                  pids, cluster_mode, base)
        finally:
            stop(procs)
    (ref, _), (ours, _) = systems
    print(f"\n{label}: {requests} requests, {clients} connections, 100-byte values, keys out of 100,000")
    print(f"{'tool':15} {'test':4} {'P':>2} | {ref + ' ops/s':>19} {'p50':>6} {'p99':>6} {'p99.9':>6} {'cpu us':>6} | "
          f"{ours + ' ops/s':>22} {'p50':>6} {'p99':>6} {'p99.9':>6} {'cpu us':>6} | {'ops x':>5} {'cpu x':>5}")
    ratios = {}
    for tool in tools:
        for pipeline, test in TESTS:
            r, d = results[(ref, tool, test, pipeline)], results[(ours, tool, test, pipeline)]
            ratios[(tool, test, pipeline)] = (d["ops"] / r["ops"], d["cpu_us"] / r["cpu_us"])
            print(f"{tool:15} {test.upper():4} {pipeline:>2} | {r['ops']:>19,.0f} {r['p50']:>6.2f} {r['p99']:>6.2f} "
                  f"{r['p999']:>6.2f} {r['cpu_us']:>6.1f} | {d['ops']:>22,.0f} {d['p50']:>6.2f} {d['p99']:>6.2f} "
                  f"{d['p999']:>6.2f} {d['cpu_us']:>6.1f} | {d['ops'] / r['ops']:>5.2f} "
                  f"{d['cpu_us'] / r['cpu_us']:>5.2f}")
    return ratios


def print_medians(label, runs) -> None:
    """The median over the runs of each test's two ratios: one run on a shared machine moves by 10-20%."""
    print(f"\n{label}: medians of {len(runs)} runs (each run's own ratios, ours over the reference's)")
    print(f"{'tool':15} {'test':4} {'P':>2} | {'ops x':>5} {'range':>11} | {'cpu x':>5} {'range':>11}")
    for key in runs[0]:
        ops = sorted(run[key][0] for run in runs)
        cpu = sorted(run[key][1] for run in runs)
        tool, test, pipeline = key
        print(f"{tool:15} {test.upper():4} {pipeline:>2} | {statistics.median(ops):>5.2f} "
              f"{ops[0]:>5.2f}-{ops[-1]:<5.2f} | {statistics.median(cpu):>5.2f} {cpu[0]:>5.2f}-{cpu[-1]:<5.2f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=1_000_000,
                        help="requests per test (at least a million against a single node: a shorter test may or "
                             "may not hold the store's periodic work, a segment sealed every 64 MiB and its merge)")
    parser.add_argument("--cluster-requests", type=int, default=None,
                        help="requests per test against the clusters (default: --requests)")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--what", default="single,cluster", help="single, cluster or both (comma-separated)")
    parser.add_argument("--runs", type=int, default=1,
                        help="run everything this many times and print each test's median ratios too")
    parser.add_argument("--redis-aof", action="store_true",
                        help="Redis with appendonly yes, appendfsync everysec (default: no persistence)")
    args = parser.parse_args()
    if args.redis_aof:
        REDIS_PERSISTENCE[:] = ["--appendonly", "yes", "--appendfsync", "everysec"]
    for tool in ("redis-server", "redis-benchmark", "redis-cli"):
        if shutil.which(tool) is None:
            print(f"{tool} is not installed", file=sys.stderr)
            return 1
    tools = ["redis-benchmark"] + (["memtier_benchmark"] if shutil.which("memtier_benchmark") else [])
    what = set(args.what.split(","))
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}; "
          f"tools: {', '.join(tools)}; Redis {' '.join(REDIS_PERSISTENCE)}")
    single, cluster = "single node: redis-server against a dynafast node (N=1)", \
        "3 nodes: a Redis Cluster (3 masters + 3 replicas) against dynafast (N=3, R=2, W=2)"
    runs = {single: [], cluster: []}
    with tempfile.TemporaryDirectory() as base:
        for _ in range(max(args.runs, 1)):
            if "single" in what:
                runs[single].append(compare(single, [("redis-server", start_redis), ("dynafast", start_dynafast)],
                                            tools, args.requests, args.clients, base))
            if "cluster" in what:
                runs[cluster].append(compare(
                    cluster, [("Redis Cluster", start_redis_cluster), ("dynafast cluster", start_dynafast_cluster)],
                    tools, args.cluster_requests or args.requests, args.clients, base))
    if args.runs > 1:
        for label, done in runs.items():
            if done:
                print_medians(label, done)
    return 0


if __name__ == "__main__":
    # A SIGTERM ends the run as an exception does: the servers it started are stopped below.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        sys.exit(main())
    finally:
        for proc in STARTED:
            if proc.poll() is None:
                proc.kill()
