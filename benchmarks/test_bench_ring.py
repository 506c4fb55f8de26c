"""Ring lookups, compiled beside the plain-Python reference.

Run: pytest -n 0 -m bench benchmarks/test_bench_ring.py
Claim movement tables (fresh ring +-1 member, then runs of joins and leaves): python benchmarks/test_bench_ring.py
"""
import os

import numpy
import pytest

from dynafast import _impl

BUILDS = ["compiled", "reference"]
KEYS = [os.urandom(16) for _ in range(10_000)]
MEMBERS = [f"node-{i:02d}" for i in range(12)]


def _module(build):
    if build == "compiled":
        try:
            return _impl.compiled("ring")
        except ImportError:
            pytest.skip("dynafast._core.ring is not built")
    return _impl.reference("ring")


def _ring(build):
    return _module(build).Ring(1024, MEMBERS, n=3)


@pytest.mark.bench
@pytest.mark.parametrize("build", BUILDS)
def test_bench_single_lookup(benchmark, build):
    """One key -> partition -> its 3 replicas, the per-request routing step (100 keys per round)."""
    ring = _ring(build)
    keys = KEYS[:100]

    def run():
        for key in keys:
            ring.replicas(ring.partition_of(key))

    benchmark(run)


@pytest.mark.bench
@pytest.mark.parametrize("build", BUILDS)
def test_bench_preference_list_one_down(benchmark, build):
    ring = _ring(build)
    keys = KEYS[:100]
    down = frozenset({MEMBERS[3]})

    def run():
        for key in keys:
            ring.preference_list(ring.partition_of(key), None, down)

    benchmark(run)


@pytest.mark.bench
@pytest.mark.parametrize("build", BUILDS)
def test_bench_batch_keys(benchmark, build):
    """10 000 keys -> partitions in one call."""
    ring = _ring(build)
    benchmark(ring.partitions_of, KEYS)


@pytest.mark.bench
@pytest.mark.parametrize("build", BUILDS)
def test_bench_batch_tokens(benchmark, build):
    """100 000 uint64 tokens -> partitions in one call."""
    ring = _ring(build)
    toks = numpy.random.default_rng(1).integers(0, 2**64 - 1, 100_000, dtype=numpy.uint64)
    benchmark(ring.partitions_of, toks)


@pytest.mark.bench
@pytest.mark.parametrize("build", BUILDS)
def test_bench_claim_add_member(benchmark, build):
    """Claim after one member joins (Q=1024, 12 -> 13 members): runs on membership change only."""
    ring = _ring(build)
    benchmark(ring.with_members, MEMBERS + ["joiner"])


def movement_table(partitions=(64, 256, 1024), sizes=range(3, 21), n=3):
    """Moved/ideal when one member joins (S -> S+1) or the first leaves (S -> S-1), as a Markdown table."""
    ref = _impl.reference("ring")  # the claim is shared by both builds
    rows = {}
    for q in partitions:
        for s in sizes:
            members = [f"node-{i:02d}" for i in range(s)]
            ring = ref.Ring(q, members, n=n)
            joined = ring.with_members(members + ["joiner"])
            left = ring.with_members(members[1:])
            rows[q, s] = (
                ring.moved_partitions(joined) / len(joined.partitions_owned("joiner")),
                ring.moved_partitions(left) / len(ring.partitions_owned(members[0])),
            )
    head = [f"add Q={q}" for q in partitions] + [f"remove Q={q}" for q in partitions]
    lines = ["| S | " + " | ".join(head) + " |", "|---" * (len(head) + 1) + "|"]
    for s in sizes:
        cells = [f"{rows[q, s][0]:.2f}" for q in partitions] + [f"{rows[q, s][1]:.2f}" for q in partitions]
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def churn_summary(partitions=(64, 256, 1024), runs=3, steps=30, n=3):
    """Moved/ideal along runs of random joins and leaves (S 7..24, from 12 members with random names)."""
    ref = _impl.reference("ring")
    lines = ["| Q | joins | mean | max | leaves | mean | max |", "|---|---|---|---|---|---|---|"]
    for q in partitions:
        ratios = {"join": [], "leave": []}
        for run in range(runs):
            rng = numpy.random.default_rng(run)
            ring = ref.Ring(q, [f"m{x:06d}" for x in rng.integers(0, 10**6, 12)], n=n)
            for step in range(steps):
                cur = list(ring.members)
                if (rng.random() < 0.5 and len(cur) > 7) or len(cur) >= 24:
                    who = cur[int(rng.integers(0, len(cur)))]
                    after = ring.with_members([m for m in cur if m != who])
                    kind, ideal = "leave", len(ring.partitions_owned(who))
                else:
                    who = f"joiner-{run}-{step:02d}"
                    after = ring.with_members(cur + [who])
                    kind, ideal = "join", len(after.partitions_owned(who))
                ratios[kind].append(ring.moved_partitions(after) / ideal)
                ring = after
        cells = []
        for kind in ("join", "leave"):
            r = ratios[kind]
            cells += [str(len(r)), f"{sum(r) / len(r):.2f}", f"{max(r):.2f}"]
        lines.append(f"| {q} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(movement_table())
    print()
    print(churn_summary())
