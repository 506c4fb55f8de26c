"""The load tool: key distribution, workload mixes, latency summaries, the runner on in-memory targets, the
options and the report table. Runs against real servers are in tests/system/test_bench_runs.py."""
import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from collections import Counter

import numpy as np
import pytest

from dynafast.bench import runner as bench
from dynafast.bench.targets import Read, Target, make_target
from dynafast.bench.zipf import (
    SCRAMBLED_ZETAN,
    ScrambledZipfianGenerator,
    ZipfianGenerator,
    fnvhash64,
    fnvhash64_array,
    zeta,
)

# ---------------------------------------------------------------- key distribution


def fnv1a_64_over_bytes(value):
    # Independent formulation: FNV-1a over the 8 little-endian bytes, then Java's Math.abs of the signed value.
    h = 0xCBF29CE484222325
    for octet in value.to_bytes(8, "little"):
        h = ((h ^ octet) * 0x100000001B3) % 2**64
    signed = h - 2**64 if h >= 2**63 else h
    return abs(signed)


@pytest.mark.parametrize("value", [0, 1, 255, 256, 12345, 2**32 + 7, 2**62 + 3, 2**63 - 1, 9_999_999_999])
def test_fnvhash64_matches_fnv1a_and_the_array_version(value):
    assert fnvhash64(value) == fnv1a_64_over_bytes(value)
    assert int(fnvhash64_array(np.array([value], dtype=np.int64))[0]) == fnvhash64(value)


def test_zeta_small_values():
    assert zeta(1, 0.99) == pytest.approx(1.0)
    assert zeta(3, 0.5) == pytest.approx(1 + 2**-0.5 + 3**-0.5)


@pytest.mark.parametrize("items", [1, 2, 3, 10, 1000])
def test_zipfian_stays_in_range_including_the_edges_of_the_uniform_draw(items):
    gen = ZipfianGenerator(items, seed=1)
    edges = np.array([0.0, 1e-12, 0.5, 1 - 1e-16, np.nextafter(1.0, 0.0)])
    for ranks in (gen.from_uniform(edges), gen.batch(20000)):
        assert ranks.min() >= 0
        assert ranks.max() < items
    assert 0 <= gen.next() < items


def test_zipfian_skew_matches_the_exact_probabilities_of_the_first_ranks():
    gen = ZipfianGenerator(1000, seed=7)
    draws = 200_000
    counts = np.bincount(gen.batch(draws), minlength=1000)
    # Ranks 0 and 1 are exact in Gray's method; the tail is approximate, so its check is looser.
    assert counts[0] / draws == pytest.approx(gen.probability(0), abs=0.005)
    assert counts[1] / draws == pytest.approx(gen.probability(1), abs=0.005)
    top10 = sum(gen.probability(k) for k in range(10))
    assert counts[:10].sum() / draws == pytest.approx(top10, abs=0.03)
    assert counts[0] > counts[1] > counts[5] > counts[100]


def test_zipfian_rejects_bad_parameters():
    with pytest.raises(ValueError):
        ZipfianGenerator(0)
    with pytest.raises(ValueError):
        ZipfianGenerator(10, theta=1.0)


@pytest.mark.parametrize("items", [1, 2, 7, 10000, 1_000_003])
def test_scrambled_zipfian_stays_in_range(items):
    gen = ScrambledZipfianGenerator(items, seed=3)
    keys = gen.batch(20000)
    assert keys.min() >= 0 and keys.max() < items
    assert all(0 <= gen.next() < items for _ in range(100))


def test_scrambled_zipfian_is_the_hash_of_a_zipfian_rank():
    gen = ScrambledZipfianGenerator(10000)
    u = np.random.default_rng(5).random(500)
    ranks = ZipfianGenerator(10**10, zetan=SCRAMBLED_ZETAN).from_uniform(u)
    expected = [fnvhash64(int(r)) % 10000 for r in ranks]
    assert gen.from_uniform(u).tolist() == expected


def test_scrambled_zipfian_skew_most_popular_keys_get_their_share():
    records = 10000
    gen = ScrambledZipfianGenerator(records, seed=11)
    draws = 200_000
    counts = Counter(gen.batch(draws).tolist())
    ranked = counts.most_common()
    # The most popular key is where rank 0 hashes to, with P = 1/zeta(10^10, 0.99) ~ 3.8% (not key 0).
    assert ranked[0][0] == fnvhash64(0) % records
    assert ranked[0][0] != 0
    assert ranked[0][1] / draws == pytest.approx(1 / SCRAMBLED_ZETAN, abs=0.006)
    top10_expected = sum((k + 1) ** -0.99 for k in range(10)) / SCRAMBLED_ZETAN
    top10 = sum(n for _, n in ranked[:10]) / draws
    assert top10 == pytest.approx(top10_expected, abs=0.02)
    # Skewed, but the tail is long: most of the key space is touched at least once.
    assert len(counts) > records // 2


def test_generators_are_reproducible_with_a_seed():
    a = ScrambledZipfianGenerator(5000, seed=42)
    b = ScrambledZipfianGenerator(5000, seed=42)
    assert [a.next() for _ in range(5000)] == [b.next() for _ in range(5000)]


# ---------------------------------------------------------------- workload mixes


@pytest.mark.parametrize("workload", sorted(bench.WORKLOADS))
def test_workload_mix_frequencies(workload):
    mix = bench.WORKLOADS[workload]
    assert sum(mix.values()) == pytest.approx(1.0)
    chooser = bench.OperationChooser(mix, seed=1)
    n = 40000
    counts = Counter(chooser.next() for _ in range(n))
    assert set(counts) <= set(mix)
    for op, share in mix.items():
        assert counts[op] / n == pytest.approx(share, abs=0.015)


def test_workload_definitions_follow_ycsb():
    assert bench.WORKLOADS["a"] == {"read": 0.5, "update": 0.5}
    assert bench.WORKLOADS["b"] == {"read": 0.95, "update": 0.05}
    assert bench.WORKLOADS["c"] == {"read": 1.0}
    assert bench.WORKLOADS["f"] == {"read": 0.5, "rmw": 0.5}


def test_operation_chooser_rejects_bad_mixes_and_skips_zero_shares():
    with pytest.raises(ValueError):
        bench.OperationChooser({})
    with pytest.raises(ValueError):
        bench.OperationChooser({"read": -1.0, "update": 2.0})
    chooser = bench.OperationChooser({"read": 0.0, "update": 3.0}, seed=2)
    assert {chooser.next() for _ in range(200)} == {"update"}


# ---------------------------------------------------------------- histogram summaries and results


def test_summarize_percentiles_and_throughput():
    h = bench.new_histogram()
    for _ in range(990):
        h.record_value(100)
    for _ in range(9):
        h.record_value(2000)
    h.record_value(50_000)
    s = bench.summarize(h, seconds=2.0)
    assert s["count"] == 1000
    assert s["ops_per_s"] == 500.0
    assert s["p50_us"] == 100
    assert s["p99_us"] == 100
    assert s["p999_us"] == pytest.approx(2000, rel=0.001)
    assert s["max_us"] == pytest.approx(50_000, rel=0.001)
    assert s["mean_us"] == pytest.approx((990 * 100 + 9 * 2000 + 50_000) / 1000, rel=0.01)


def test_summarize_empty_histogram():
    s = bench.summarize(bench.new_histogram(), seconds=1.0)
    assert s["count"] == 0 and s["ops_per_s"] == 0.0
    assert s["p50_us"] is None and s["max_us"] is None


def test_phase_results_survive_the_wire_and_merge():
    a = bench.PhaseResult({"read": bench.new_histogram()}, {"read": {"Timeout": 2}}, 1.5)
    b = bench.PhaseResult({"read": bench.new_histogram(), "update": bench.new_histogram()}, {}, 1.7)
    for v in (10, 20, 30):
        a.histograms["read"].record_value(v)
    b.histograms["read"].record_value(1000)
    b.histograms["update"].record_value(7)
    b.errors = {"read": {"Timeout": 1, "ConnectionError": 4}}
    wire = json.loads(json.dumps(b.to_wire()))  # what a worker process sends is plain JSON-able data
    a.merge(bench.PhaseResult.from_wire(wire))
    assert a.histograms["read"].get_total_count() == 4
    assert a.histograms["read"].get_max_value() == pytest.approx(1000, rel=0.001)
    assert a.histograms["update"].get_total_count() == 1
    assert a.errors == {"read": {"Timeout": 3, "ConnectionError": 4}}
    assert a.error_count() == 7
    assert a.seconds == 1.7


# ---------------------------------------------------------------- the runner, with in-memory targets


class MemoryTarget:
    """A versioned in-memory store: an example of a pluggable target, and a witness of what the runner sends."""

    name = "memory"
    uses_context = True

    def __init__(self, fail_every=0):
        self.data = {}
        self.version = {}
        self.puts_with_context = 0
        self.stale_puts = 0
        self.fail_every = fail_every
        self.calls = 0

    async def connect(self):
        pass

    async def get(self, key):
        self.calls += 1
        await asyncio.sleep(0)
        if self.fail_every and self.calls % self.fail_every == 0:
            raise KeyError(key)
        if key not in self.data:
            return Read([], None)
        return Read([self.data[key]], b"%d" % self.version[key])

    async def put(self, key, value, context=None):
        await asyncio.sleep(0)
        if context is not None:
            self.puts_with_context += 1
            if int(context) != self.version[key]:
                self.stale_puts += 1
        self.data[key] = value
        self.version[key] = self.version.get(key, 0) + 1

    async def read_modify_write(self, key, value):
        r = await self.get(key)
        await self.put(key, value, r.context)

    async def close(self):
        pass


def runner_config(**over):
    config = {"workload": "a", "records": 300, "value_size": 40, "clients": 8, "duration": 0.3}
    config.update(over)
    return config


def test_memory_target_follows_the_protocol():
    assert isinstance(MemoryTarget(), Target)
    assert isinstance(make_target({"target": "redis", "redis": "127.0.0.1:1"}), Target)
    assert isinstance(make_target({"target": "dynafast", "cluster": "127.0.0.1:1,127.0.0.1:2"}), Target)
    with pytest.raises(ValueError):
        make_target({"target": "nope"})


def test_load_inserts_every_record_once_with_the_value_size():
    target = MemoryTarget()
    runner = bench.LoadRunner(target, runner_config(), seed=1)
    result = asyncio.run(runner.load(0, 300, bench.Counter()))
    assert sorted(target.data) == sorted(bench.record_key(n) for n in range(300))
    assert all(v == 1 for v in target.version.values())
    assert {len(v) for v in target.data.values()} == {40}
    assert result.histograms["insert"].get_total_count() == 300
    assert result.error_count() == 0


@pytest.mark.parametrize("workload", sorted(bench.WORKLOADS))
def test_run_issues_the_workload_operations(workload):
    target = MemoryTarget()
    config = runner_config(workload=workload)
    runner = bench.LoadRunner(target, config, seed=2)
    asyncio.run(runner.load(0, 300, bench.Counter()))
    counter = bench.Counter()
    result = asyncio.run(runner.run(8, 0.3, counter))
    done = {op: h.get_total_count() for op, h in result.histograms.items()}
    assert set(done) == set(bench.WORKLOADS[workload])
    assert all(n > 0 for n in done.values())
    assert sum(done.values()) == counter.value
    assert result.error_count() == 0
    if workload == "c":
        assert all(v == 1 for v in target.version.values())  # read only: nothing written
    if workload == "f":
        assert target.puts_with_context == done["rmw"]  # every write of F carries the context it read


def test_updates_write_back_the_context_they_read_unless_blind():
    target = MemoryTarget()
    runner = bench.LoadRunner(target, runner_config(records=20), seed=3)
    asyncio.run(runner.load(0, 20, bench.Counter()))
    asyncio.run(runner.run(1, 0.3, bench.Counter()))  # one client: no races, so no context can be stale
    assert target.puts_with_context > 0
    assert target.stale_puts == 0

    blind = MemoryTarget()
    runner = bench.LoadRunner(blind, runner_config(records=20, blind_updates=True), seed=3)
    asyncio.run(runner.load(0, 20, bench.Counter()))
    result = asyncio.run(runner.run(1, 0.3, bench.Counter()))
    assert result.histograms["update"].get_total_count() > 0
    assert blind.puts_with_context == 0


def test_errors_are_counted_by_type_and_the_run_goes_on():
    target = MemoryTarget(fail_every=3)
    runner = bench.LoadRunner(target, runner_config(workload="c"), seed=4)
    result = asyncio.run(runner.run(4, 0.3, bench.Counter()))
    failed = result.errors["read"]["KeyError"]
    ok = result.histograms["read"].get_total_count()
    assert failed > 0 and ok > 0
    assert set(result.errors["read"]) == {"KeyError"}
    assert failed == pytest.approx((failed + ok) / 3, abs=2)


# ---------------------------------------------------------------- server CPU


BUSY = """
import sys, time
end = time.process_time() + 0.3
while time.process_time() < end:
    pass
print("done", flush=True)
sys.stdin.read()
"""


def test_process_cpu_seconds_of_a_process_with_parentheses_in_its_name(tmp_path):
    # The command field of /proc/PID/stat may hold spaces and ')': the parser must split after the last one.
    # The field is the name of the executed file, so run Python through a link with an awkward name.
    odd = tmp_path / "odd) 1 2 (x"
    odd.symlink_to(sys.executable)
    proc = subprocess.Popen([str(odd), "-c", BUSY], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert proc.stdout.readline() == b"done\n"
        with open(f"/proc/{proc.pid}/stat", "rb") as f:
            assert b"(odd) 1 2 (x)" in f.read()
        with open(f"/proc/{proc.pid}/schedstat") as f:
            ran = int(f.read().split()[0]) / 1e9  # time on the CPU, in ns: an independent measure
        cpu = bench.process_cpu_seconds(proc.pid)
        assert cpu >= 0.3
        assert cpu == pytest.approx(ran, abs=0.1)
        assert set(bench.cpu_snapshot([proc.pid])) == {proc.pid}
    finally:
        proc.kill()
        proc.wait()
        proc.stdin.close()
        proc.stdout.close()
    assert bench.cpu_snapshot([proc.pid]) == {}  # gone: left out, not an error


def test_process_cpu_seconds_grows_with_work():
    before = bench.process_cpu_seconds(os.getpid())
    end = time.process_time() + 0.1
    while time.process_time() < end:
        pass
    assert bench.process_cpu_seconds(os.getpid()) > before


# ---------------------------------------------------------------- command line and report


def parse(argv):
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    return parser.parse_args(argv)


def test_cli_defaults():
    args = parse(["--cluster", "127.0.0.1:7101"])
    assert (args.workload, args.clients, args.duration, args.records, args.value_size, args.procs) == (
        "a", 50, 30.0, 10000, 100, 1)
    assert args.target == "dynafast" and not args.json and not args.no_load
    assert args.redis == "127.0.0.1:6379"
    assert parse(["--server-pids", "1,22"]).server_pids == [1, 22]


@pytest.mark.parametrize("argv", [["--cluster", "nohost"], ["--workload", "e"], ["--clients", "0"],
                                  ["--target", "mysql"]])
def test_cli_rejects_bad_options(argv, capsys):
    with pytest.raises(SystemExit):
        parse(argv)


def test_the_cluster_defaults_to_the_environment_then_the_local_one(monkeypatch, capsys):
    monkeypatch.delenv("DYNAFAST_CLUSTER", raising=False)
    assert parse([]).cluster == "127.0.0.1:7101"
    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    monkeypatch.setenv("DYNAFAST_CLUSTER", address)
    assert parse([]).cluster == address
    assert bench.run(parse(["--duration", "1"])) == 1  # a clear error, not a traceback
    assert "no node answered" in capsys.readouterr().err


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_server_is_a_one_line_error(capsys):
    code = bench.main(["--target", "redis", "--redis", f"127.0.0.1:{free_port()}", "--duration", "0.2",
                       "--clients", "2", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith("dynafast bench: ") and err.count("\n") == 1


def test_table_lists_every_operation_and_the_errors():
    h = bench.new_histogram()
    h.record_value(120)
    op = dict(bench.summarize(h, 1.0), errors={"Timeout": 3})
    report = {"target": "redis", "address": "x:1", "workload": "a", "clients": 1, "procs": 1, "records": 5,
              "value_size": 100, "elapsed_s": 1.0, "load": None, "server_cpu": None,
              "operations": {"read": op}, "overall": dict(bench.summarize(h, 1.0), errors=3)}
    table = bench.format_table(report)
    assert "read" in table and "overall" in table and "p99.9 us" in table
    assert "error: read Timeout x3" in table
