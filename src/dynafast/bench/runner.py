"""The load tool behind `dynafast bench`: YCSB-style closed-loop load against a dynafast cluster or Redis.

Many client tasks (optionally spread over several processes with --procs) each issue one request at a time,
choosing the operation from the workload mix and the key from YCSB's scrambled zipfian over --records keys.
Latencies go into HDR histograms (microseconds) per operation type; at the end the tool prints throughput and
p50/p99/p99.9/max per operation and overall, as a table or as JSON. Errors are counted by type and the run
goes on. With --server-pids it also reports the servers' CPU time per operation (user+system from
/proc/PID/stat), the fairer figure when the Python load generator saturates a small machine. With --report it
also keeps a histogram per second of the run and writes an HTML page with latency over time and the
percentile distribution (``dynafast.bench.report``).

    python -m dynafast.bench --target redis --redis 127.0.0.1:6379 --workload a --duration 10
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import json
import multiprocessing
import os
import random
import sys
import time
from dataclasses import dataclass, field

from hdrh.histogram import HdrHistogram

from dynafast.address import parse_address
from dynafast.bench.targets import TARGETS, make_target
from dynafast.bench.zipf import ScrambledZipfianGenerator

# YCSB core workloads: operation proportions. F's "rmw" reads then writes with the read's context.
WORKLOADS = {
    "a": {"read": 0.5, "update": 0.5},
    "b": {"read": 0.95, "update": 0.05},
    "c": {"read": 1.0},
    "f": {"read": 0.5, "rmw": 0.5},
}
OPERATIONS = ("read", "update", "rmw")

# Histogram range in microseconds: 1 us to 100 s at 3 significant digits.
HIST_LOWEST_US = 1
HIST_HIGHEST_US = 100_000_000
HIST_DIGITS = 3


def new_histogram() -> HdrHistogram:
    return HdrHistogram(HIST_LOWEST_US, HIST_HIGHEST_US, HIST_DIGITS)


def new_second_histogram() -> HdrHistogram:
    """One second of the run's timeline: 2 significant digits (1%) is plenty for a plot, at a seventh of the
    memory of a full histogram (21 KB a second)."""
    return HdrHistogram(HIST_LOWEST_US, HIST_HIGHEST_US, 2)


def record_key(n: int) -> bytes:
    return b"user%d" % n


class OperationChooser:
    """Picks the next operation name of a workload mix (proportions are normalised)."""

    def __init__(self, mix: dict[str, float], seed=None):
        if not mix or any(p < 0 for p in mix.values()) or sum(mix.values()) <= 0:
            raise ValueError(f"bad operation mix {mix!r}")
        total = sum(mix.values())
        self.names = [name for name, p in mix.items() if p > 0]
        self._cumulative = []
        acc = 0.0
        for name in self.names:
            acc += mix[name] / total
            self._cumulative.append(acc)
        self._cumulative[-1] = 1.0
        self._random = random.Random(seed).random

    def next(self) -> str:
        u = self._random()
        for name, bound in zip(self.names, self._cumulative):
            if u < bound:
                return name
        return self.names[-1]


def summarize(hist: HdrHistogram, seconds: float | None = None) -> dict:
    """count, throughput and latency figures (microseconds) of one histogram."""
    count = hist.get_total_count()
    out = {"count": count}
    if seconds is not None:
        out["ops_per_s"] = round(count / seconds, 1) if seconds > 0 else 0.0
    if count:
        out.update(
            mean_us=round(hist.get_mean_value(), 1),
            p50_us=hist.get_value_at_percentile(50),
            p99_us=hist.get_value_at_percentile(99),
            p999_us=hist.get_value_at_percentile(99.9),
            max_us=hist.get_max_value(),
        )
    else:
        out.update(mean_us=None, p50_us=None, p99_us=None, p999_us=None, max_us=None)
    return out


# ---------------------------------------------------------------- server CPU


def process_cpu_seconds(pid: int) -> float:
    """user + system CPU seconds of a process, from /proc/PID/stat (fields 14 and 15, in clock ticks)."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        data = f.read()
    # The command name (field 2) may contain spaces and parentheses: split after its last ')'.
    fields = data[data.rindex(b")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / os.sysconf("SC_CLK_TCK")


def cpu_snapshot(pids: list[int]) -> dict[int, float]:
    snap = {}
    for pid in pids:
        try:
            snap[pid] = process_cpu_seconds(pid)
        except (OSError, ValueError, IndexError):
            pass  # a server that exited is left out rather than failing the run
    return snap


# ---------------------------------------------------------------- one process's share of the load


@dataclass
class PhaseResult:
    histograms: dict = field(default_factory=dict)  # op name -> HdrHistogram
    errors: dict = field(default_factory=dict)  # op name -> {exception type name: count}
    seconds: float = 0.0
    # With a report: every operation's latency, and the errors, per second of the run (index = second).
    timeline: list = field(default_factory=list)
    timeline_errors: list = field(default_factory=list)

    def error_count(self) -> int:
        return sum(sum(by_type.values()) for by_type in self.errors.values())

    def to_wire(self) -> dict:
        return {
            "histograms": {op: base64.b64encode(h.encode()).decode() for op, h in self.histograms.items()},
            "errors": self.errors,
            "seconds": self.seconds,
            "timeline": [base64.b64encode(h.encode()).decode() for h in self.timeline],
            "timeline_errors": self.timeline_errors,
        }

    @classmethod
    def from_wire(cls, data: dict) -> PhaseResult:
        hists = {}
        for op, payload in data["histograms"].items():
            h = new_histogram()
            h.decode_and_add(base64.b64decode(payload))
            hists[op] = h
        timeline = []
        for payload in data["timeline"]:
            h = new_second_histogram()
            h.decode_and_add(base64.b64decode(payload))
            timeline.append(h)
        return cls(hists, data["errors"], data["seconds"], timeline, data["timeline_errors"])

    def merge(self, other: PhaseResult) -> None:
        for op, h in other.histograms.items():
            self.histograms.setdefault(op, new_histogram()).add(h)
        for op, by_type in other.errors.items():
            mine = self.errors.setdefault(op, {})
            for kind, n in by_type.items():
                mine[kind] = mine.get(kind, 0) + n
        self.seconds = max(self.seconds, other.seconds)
        # Processes start together (they wait for one signal), so their seconds line up.
        for second, h in enumerate(other.timeline):
            if second < len(self.timeline):
                self.timeline[second].add(h)
            else:
                self.timeline.append(h)
        for second, n in enumerate(other.timeline_errors):
            if second < len(self.timeline_errors):
                self.timeline_errors[second] += n
            else:
                self.timeline_errors.append(n)


class Counter:
    """Completed operations, read by the progress display (a shared multiprocessing value across processes)."""

    def __init__(self):
        self.value = 0


class LoadRunner:
    """Drives one target with `clients` concurrent tasks in this process's event loop."""

    def __init__(self, target, config: dict, seed=None):
        self.target = target
        self.config = config
        self.records = config["records"]
        rng = random.Random(seed)
        self.keys = ScrambledZipfianGenerator(self.records, seed=rng.getrandbits(63))
        self.chooser = OperationChooser(WORKLOADS[config["workload"]], seed=rng.getrandbits(63))
        # One random buffer twice the value size: values are slices of it, so they differ without costing a
        # random draw per request.
        self._value_pool = rng.randbytes(max(1, config["value_size"]) * 2)
        self._value_random = rng.randrange
        # Contexts last seen per key, so updates supersede what they read instead of piling up siblings
        # (a client of a versioned store writes back what it read; --blind-updates turns this off).
        self.contexts: dict[bytes, bytes] = {}
        self.remember_contexts = target.uses_context and not config.get("blind_updates", False)

    def value(self) -> bytes:
        size = self.config["value_size"]
        start = self._value_random(len(self._value_pool) - size + 1)
        return self._value_pool[start : start + size]

    @staticmethod
    def _count_error(errors: dict, op: str, exc: BaseException) -> None:
        by_type = errors.setdefault(op, {})
        kind = type(exc).__name__
        by_type[kind] = by_type.get(kind, 0) + 1

    async def load(self, first: int, stop: int, counter: Counter) -> PhaseResult:
        """Insert records [first, stop) with `clients` concurrent writers."""
        result = PhaseResult({"insert": new_histogram()})
        hist = result.histograms["insert"]
        next_key = iter(range(first, stop))
        put = self.target.put
        clock = time.perf_counter_ns

        async def writer():
            for n in next_key:  # the shared iterator hands each record to exactly one writer
                t0 = clock()
                try:
                    await put(record_key(n), self.value(), None)
                except Exception as exc:  # noqa: BLE001 - errors are counted, not fatal
                    self._count_error(result.errors, "insert", exc)
                else:
                    hist.record_value(max(1, (clock() - t0) // 1000))
                counter.value += 1

        started = time.perf_counter()
        await asyncio.gather(*(writer() for _ in range(max(1, self.config["clients"]))))
        result.seconds = time.perf_counter() - started
        return result

    async def run(self, clients: int, duration: float, counter: Counter) -> PhaseResult:
        """Closed loop: each task issues its next request when the previous one completes, until `duration`."""
        result = PhaseResult({op: new_histogram() for op in self.chooser.names})
        hists = result.histograms
        errors = result.errors
        target = self.target
        contexts = self.contexts
        remember = self.remember_contexts
        next_key = self.keys.next
        next_op = self.chooser.next
        clock = time.perf_counter_ns
        deadline = time.monotonic() + duration
        timeline = result.timeline if self.config.get("timeline") else None
        timeline_errors = result.timeline_errors
        start_ns = clock()

        def second_of(now_ns: int) -> int:
            """The run's second ``now_ns`` falls in, its histogram and error count made if new."""
            second = (now_ns - start_ns) // 1_000_000_000
            while len(timeline) <= second:
                timeline.append(new_second_histogram())
                timeline_errors.append(0)
            return second

        async def client():
            while time.monotonic() < deadline:
                op = next_op()
                key = record_key(next_key())
                t0 = clock()
                try:
                    if op == "read":
                        r = await target.get(key)
                        if remember and r.context:
                            contexts[key] = r.context
                    elif op == "update":
                        await target.put(key, self.value(), contexts.pop(key, None) if remember else None)
                    else:
                        await target.read_modify_write(key, self.value())
                except Exception as exc:  # noqa: BLE001 - errors are counted, not fatal
                    self._count_error(errors, op, exc)
                    if timeline is not None:
                        timeline_errors[second_of(clock())] += 1
                else:
                    now = clock()
                    latency = max(1, (now - t0) // 1000)
                    hists[op].record_value(latency)
                    if timeline is not None:
                        timeline[second_of(now)].record_value(latency)
                counter.value += 1

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        result.seconds = time.perf_counter() - started
        return result


# ---------------------------------------------------------------- processes and progress


def _install_loop(config: dict) -> None:
    if config.get("uvloop", True):
        try:
            import uvloop

            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
        except ImportError:
            pass


async def _connected(config: dict):
    target = make_target(config)
    await target.connect()
    return target


async def _phase_in_process(config: dict, phase: str, share: tuple, counter, seed, progress=None) -> PhaseResult:
    target = await _connected(config)
    try:
        runner = LoadRunner(target, config, seed=seed)
        if phase == "load":
            work = runner.load(share[0], share[1], counter)
        else:
            work = runner.run(share[0], config["duration"], counter)
        if progress is None:
            return await work
        ticker = asyncio.create_task(_tick(progress, counter))
        try:
            return await work
        finally:
            ticker.cancel()
    finally:
        await target.close()


async def _tick(progress, counter) -> None:
    while True:
        await asyncio.sleep(0.5)
        progress(counter.value)


def _worker(config, phase, share, seed, shared_count, ready, go, results) -> None:
    """Entry point of a worker process: connect, wait for the common start, run, send back the result."""
    _install_loop(config)

    class SharedCounter:
        # Increment a plain int and publish it to the parent now and then: a lock per request would cost more
        # than the request.
        def __init__(self):
            self._n = 0

        @property
        def value(self):
            return self._n

        @value.setter
        def value(self, n):
            self._n = n
            if n & 63 == 0:
                shared_count.value = n

    async def main():
        try:
            target = await _connected(config)
        except Exception as exc:  # noqa: BLE001 - reported to the parent as the run's failure
            ready.put(f"{type(exc).__name__}: {exc}")
            return None
        counter = SharedCounter()
        try:
            runner = LoadRunner(target, config, seed=seed)
            ready.put(None)
            await asyncio.get_running_loop().run_in_executor(None, go.wait)
            if phase == "load":
                result = await runner.load(share[0], share[1], counter)
            else:
                result = await runner.run(share[0], config["duration"], counter)
        finally:
            await target.close()
        shared_count.value = counter.value
        return result

    result = asyncio.run(main())
    results.put(None if result is None else result.to_wire())


def _split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def _progress_bar(config: dict, phase: str, total: float | None):
    if not config.get("progress", True):
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    if phase == "load":
        return tqdm(total=total, desc="load", unit="rec", file=sys.stderr, leave=False, disable=None)
    return tqdm(
        total=round(total, 1),
        desc=f"workload {config['workload']}",
        unit="s",
        file=sys.stderr,
        leave=False,
        disable=None,
        bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.1f}/{total:.1f} s {postfix}",
    )


class _Progress:
    def __init__(self, bar, phase: str):
        self.bar = bar
        self.phase = phase
        self.started = time.monotonic()

    def __call__(self, done: int) -> None:
        if self.bar is None:
            return
        if self.phase == "load":
            self.bar.update(done - self.bar.n)
            return
        elapsed = time.monotonic() - self.started
        self.bar.n = min(elapsed, self.bar.total)
        self.bar.set_postfix_str(f"{done} ops, {done / max(elapsed, 1e-9):,.0f} ops/s", refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run_phase(config: dict, phase: str) -> PhaseResult:
    """Run the load ("load") or the timed workload ("run") over config["procs"] processes; merged result."""
    procs = max(1, config.get("procs", 1))
    clients = max(1, config["clients"])
    procs = min(procs, clients)
    if phase == "load":
        ranges, first = [], 0
        for n in _split(config["records"], procs):
            ranges.append((first, first + n))
            first += n
        shares = ranges
        total = config["records"]
        # Each process's writers split its records; keep the concurrency at `clients` overall.
        configs = [dict(config, clients=c) for c in _split(clients, procs)]
    else:
        shares = [(c, None) for c in _split(clients, procs)]
        total = config["duration"]
        configs = [config] * procs
    seed = config.get("seed")
    seeds = [None if seed is None else seed * 1000 + i for i in range(procs)]
    progress = _Progress(_progress_bar(config, phase, total), phase)
    try:
        if procs == 1:
            _install_loop(config)
            return asyncio.run(_phase_in_process(configs[0], phase, shares[0], Counter(), seeds[0], progress))
        return _run_processes(configs, phase, shares, seeds, progress)
    finally:
        progress.close()


def _run_processes(configs, phase, shares, seeds, progress) -> PhaseResult:
    # spawn, not fork: the parent may hold an event loop and client sockets.
    ctx = multiprocessing.get_context("spawn")
    ready, results, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    counts = [ctx.Value("q", 0, lock=False) for _ in configs]
    workers = [
        ctx.Process(
            target=_worker,
            args=(cfg, phase, share, seed, count, ready, go, results),
            daemon=True,
        )
        for cfg, share, seed, count in zip(configs, shares, seeds, counts)
    ]
    try:
        for w in workers:
            w.start()
        failures = [ready.get(timeout=60) for _ in workers]
        failures = [f for f in failures if f is not None]
        if failures:
            for w in workers:
                w.terminate()
            raise ConnectionError(failures[0])
        go.set()  # every worker is connected: start together so the merged duration is honest
        progress.started = time.monotonic()
        merged = PhaseResult()
        pending = len(workers)
        while pending:
            try:
                data = results.get(timeout=0.5)
            except Exception:  # noqa: BLE001 - queue.Empty: just a progress tick
                if not any(w.is_alive() for w in workers) and results.empty():
                    raise RuntimeError("a load worker process died without a result") from None
                progress(sum(c.value for c in counts))
                continue
            pending -= 1
            if data is not None:
                merged.merge(PhaseResult.from_wire(data))
        return merged
    finally:
        for w in workers:
            w.join(timeout=10)
            if w.is_alive():
                w.terminate()
                w.join(timeout=5)


# ---------------------------------------------------------------- the whole benchmark and its report


def config_from_args(args) -> dict:
    return {
        "target": args.target,
        "cluster": args.cluster or "",
        "redis": args.redis,
        "workload": args.workload,
        "clients": args.clients,
        "duration": args.duration,
        "records": args.records,
        "value_size": args.value_size,
        "procs": args.procs,
        "load": not args.no_load,
        "blind_updates": args.blind_updates,
        "server_pids": list(args.server_pids or []),
        "progress": not args.no_progress and not args.json,
        "uvloop": not args.no_uvloop,
        "seed": args.seed,
        "timeline": bool(args.report),
    }


def run_benchmark(config: dict) -> dict:
    """Load (unless config["load"] is false), run the workload, and return the report as a dict."""
    if config["workload"] not in WORKLOADS:
        raise ValueError(f"unknown workload {config['workload']!r}")
    if config["records"] < 1 or config["value_size"] < 0 or config["duration"] <= 0:
        raise ValueError("records must be >= 1, value size >= 0 and duration > 0")
    report = {
        "target": config["target"],
        "address": config["cluster"] if config["target"] == "dynafast" else config["redis"],
        "workload": config["workload"],
        "clients": config["clients"],
        "procs": min(max(1, config["procs"]), max(1, config["clients"])),
        "duration_s": config["duration"],
        "records": config["records"],
        "value_size": config["value_size"],
        "load": None,
    }
    if config.get("load", True):
        loaded = run_phase(config, "load")
        report["load"] = summarize(loaded.histograms.get("insert", new_histogram()), loaded.seconds)
        report["load"]["seconds"] = round(loaded.seconds, 3)
        report["load"]["errors"] = loaded.errors.get("insert", {})

    pids = config.get("server_pids") or []
    cpu_before = cpu_snapshot(pids)
    result = run_phase(config, "run")
    cpu_after = cpu_snapshot(pids)

    overall = new_histogram()
    operations = {}
    for op in OPERATIONS:
        if op in result.histograms:
            overall.add(result.histograms[op])
            operations[op] = summarize(result.histograms[op], result.seconds)
            operations[op]["errors"] = result.errors.get(op, {})
    report["elapsed_s"] = round(result.seconds, 3)
    report["operations"] = operations
    report["overall"] = summarize(overall, result.seconds)
    report["overall"]["errors"] = result.error_count()
    report["server_cpu"] = None
    if config.get("timeline"):
        report["timeline"] = timeline_rows(result)
        curves = {op: percentile_curve(result.histograms[op]) for op in operations}
        report["percentiles"] = {**curves, "overall": percentile_curve(overall)}
    if pids:
        per_pid = {pid: cpu_after[pid] - cpu_before[pid] for pid in cpu_before if pid in cpu_after}
        cpu_s = sum(per_pid.values())
        ops = overall.get_total_count()
        report["server_cpu"] = {
            "pids": sorted(per_pid),
            "cpu_s": round(cpu_s, 3),
            "per_pid_cpu_s": {str(pid): round(s, 3) for pid, s in sorted(per_pid.items())},
            "us_per_op": round(cpu_s * 1e6 / ops, 2) if ops else None,
        }
    return report


def timeline_rows(result: PhaseResult) -> list[dict]:
    """Per second of the run: operations done, errors, and p50/p99/max latency (microseconds)."""
    rows = []
    for second, (h, errors) in enumerate(zip(result.timeline, result.timeline_errors)):
        count = h.get_total_count()
        rows.append({"second": second, "count": count, "errors": errors,
                     "p50_us": h.get_value_at_percentile(50) if count else None,
                     "p99_us": h.get_value_at_percentile(99) if count else None,
                     "max_us": h.get_max_value() if count else None})
    return rows


def percentile_curve(hist: HdrHistogram) -> list[tuple[float, int]]:
    """(percentile, latency in microseconds) from the median to the maximum, evenly spaced in "nines"
    (50, 90, 99, 99.9, ... are equally far apart): the points of an HDR percentile plot."""
    count = hist.get_total_count()
    if not count:
        return []
    points = []
    nines = 0.3  # 100 * (1 - 10 ** -0.3) = 49.9
    # Beyond 1/count the histogram has nothing new to say: the last point is the maximum.
    while 10 ** -nines > 1 / count:
        percentile = 100 * (1 - 10 ** -nines)
        points.append((round(percentile, 5), hist.get_value_at_percentile(percentile)))
        nines += 0.05
    points.append((100.0, hist.get_max_value()))
    return points


def format_number(v) -> str:
    """A table cell: '-' for missing, thousands separators, one decimal for floats."""
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.1f}"
    return f"{v:,}"


def format_table(report: dict) -> str:
    lines = [
        f"target {report['target']} ({report['address']}), workload {report['workload']}, "
        f"{report['clients']} clients in {report['procs']} process(es), {report['records']} records, "
        f"{report['value_size']} B values, {report['elapsed_s']} s"
    ]
    if report.get("load"):
        ld = report["load"]
        lines.append(f"load: {ld['count']} records in {ld['seconds']} s ({format_number(ld['ops_per_s'])} ops/s)")
    header = ("op", "count", "ops/s", "p50 us", "p99 us", "p99.9 us", "max us", "errors")
    rows = []
    for op, s in list(report["operations"].items()) + [("overall", report["overall"])]:
        errs = s["errors"] if isinstance(s["errors"], int) else sum(s["errors"].values())
        rows.append((op, s["count"], s["ops_per_s"], s["p50_us"], s["p99_us"], s["p999_us"], s["max_us"], errs))
    cells = [header] + [tuple(format_number(v) if i else v for i, v in enumerate(row)) for row in rows]
    widths = [max(len(str(r[i])) for r in cells) for i in range(len(header))]
    for n, row in enumerate(cells):
        lines.append("  ".join(str(v).ljust(w) if i == 0 else str(v).rjust(w) for i, (v, w) in enumerate(zip(row, widths))))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    for op, s in report["operations"].items():
        for kind, n in sorted(s["errors"].items()):
            lines.append(f"error: {op} {kind} x{n}")
    cpu = report.get("server_cpu")
    if cpu:
        lines.append(f"server CPU: {cpu['cpu_s']} s over pids {cpu['pids']} = {format_number(cpu['us_per_op'])} us/op")
    return "\n".join(lines)


def _address(text: str) -> str:
    for part in text.split(","):
        try:
            parse_address(part)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"expected HOST:PORT[,HOST:PORT...]: {exc}") from None
    return text


def _positive_int(text: str) -> int:
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return n


def _pids(text: str) -> list[int]:
    return [int(p) for p in text.split(",") if p.strip()]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `dynafast bench`."""
    parser.add_argument("--cluster", type=_address, metavar="HOST:PORT[,...]",
                        default=os.environ.get("DYNAFAST_CLUSTER", "127.0.0.1:7101"),
                        help="dynafast nodes to connect to (default: $DYNAFAST_CLUSTER, else 127.0.0.1:7101)")
    parser.add_argument("--target", choices=TARGETS, default="dynafast", help="what to load (default dynafast)")
    parser.add_argument("--redis", type=_address, default="127.0.0.1:6379", metavar="HOST:PORT",
                        help="Redis server, or one node of a Redis Cluster (default 127.0.0.1:6379)")
    parser.add_argument("--workload", choices=sorted(WORKLOADS), default="a",
                        help="YCSB core workload: a 50/50 read/update, b 95/5, c read only, f read-modify-write")
    parser.add_argument("--clients", type=_positive_int, default=50, help="concurrent clients (default 50)")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of timed load (default 30)")
    parser.add_argument("--records", type=_positive_int, default=10000, help="key space size (default 10000)")
    parser.add_argument("--value-size", type=int, default=100, help="bytes per value (default 100)")
    parser.add_argument("--procs", type=_positive_int, default=1,
                        help="load generator processes; clients are split among them (default 1)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--no-load", action="store_true", help="skip inserting the records first")
    parser.add_argument("--blind-updates", action="store_true",
                        help="write updates without the context of an earlier read")
    parser.add_argument("--server-pids", type=_pids, metavar="PID[,...]",
                        help="server processes whose CPU time per operation to report")
    parser.add_argument("--no-progress", action="store_true", help="no progress display")
    parser.add_argument("--no-uvloop", action="store_true", help="use the default asyncio event loop")
    parser.add_argument("--seed", type=int, help="seed the key and operation choices")
    parser.add_argument("--report", metavar="PATH.html",
                        help="also write a self-contained HTML report: the summary table, latency over time (p50, "
                             "p99, max per second) and the percentile distribution (needs matplotlib)")


def run(args) -> int:
    """Run `dynafast bench` with parsed arguments; prints the report, returns the exit code."""
    if args.target == "dynafast" and not args.cluster:
        print("dynafast bench: --cluster HOST:PORT is required with --target dynafast", file=sys.stderr)
        return 2
    if args.report:
        try:
            from dynafast.bench import report as html_report
        except ImportError as exc:  # checked before the run, not after it
            print(f"dynafast bench: --report needs matplotlib (no module {exc.name!r}): "
                  "pip install 'dynafast[bench]'", file=sys.stderr)
            return 1
    try:
        report = run_benchmark(config_from_args(args))
    except Exception as exc:  # noqa: BLE001 - one line on stderr, as every verb does
        print(f"dynafast bench: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    if args.report:
        html_report.write(args.report, report)
        print(f"report written to {args.report}", file=sys.stderr)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(format_table(report))
    if report["overall"]["count"] == 0:
        print("dynafast bench: no operation succeeded", file=sys.stderr)
        return 1
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="dynafast bench", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
