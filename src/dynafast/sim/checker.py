"""The invariants a simulated run must keep, checked against the clients' history and the final state.

- No acknowledged write is lost: its value is readable at the end unless some write or delete that saw it
  (carried a context in which it was read) replaced it, or an overwrite (an lww put or a delete without a
  context) may have: one that had not answered before the write began. What an overwrite replaced is whatever
  its coordinator read, which the client never learns, so it counts as having seen nothing.
- No acknowledged delete or overwrite is undone: a value that an acknowledged write or delete saw and replaced
  never reads back afterwards.
- Nothing is made up: every value read was written by some client.
- After healing and quiescence every primary replica of a key holds the same live values, and every key reads
  back through the cluster.
- Siblings stay bounded.
- The ring and the membership converge: every running node holds the same cluster state and no change is pending.
- Counters incremented by compare-and-set (``check_counters``) are linearizable as far as their history shows:
  no two acknowledged increments read the same value, the final value lies between the acknowledged count and
  that plus the increments whose outcome is unknown, and an increment never reads less than one acknowledged
  before it began wrote.
"""
from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass


@dataclass
class Violation:
    kind: str
    detail: str

    def __str__(self) -> str:
        return f"{self.kind}: {self.detail}"


def check_history(history, final: dict, *, sibling_bound: int) -> list[Violation]:
    """``final``: key -> the live values a full read returned at the end (after quiescence)."""
    violations = []
    written = set()
    replaced = defaultdict(set)       # key -> values some write or delete (acknowledged or not) saw
    undone_if_read = defaultdict(set)  # key -> values an acknowledged write or delete saw
    acked = defaultdict(set)          # key -> values of acknowledged puts
    began = {}                        # value -> when its put was sent
    overwritten = defaultdict(lambda: -math.inf)  # key -> until when an overwrite may have read the key
    for op in history.ops:
        if op.kind == "put":
            written.add(op.value)
            began[op.value] = op.start
            if op.outcome == "ok":
                acked[op.key].add(op.value)
        if op.overwrite:
            # Answered: it read before it answered. Not answered: it may still be happening.
            until = op.end if op.outcome == "ok" else math.inf
            overwritten[op.key] = max(overwritten[op.key], until)
        if op.kind in ("put", "delete"):
            replaced[op.key] |= op.seen
            if op.outcome == "ok":
                undone_if_read[op.key] |= op.seen
    for op in history.ops:
        if op.kind == "get" and op.outcome == "ok":
            for value in op.result:
                if value not in written:
                    violations.append(Violation("made up", f"{op.key!r} read {value!r}, which nobody wrote"))
            if len(op.result) > sibling_bound:
                violations.append(Violation("siblings", f"{op.key!r} had {len(op.result)} siblings at "
                                                        f"t={op.end:.3f} (bound {sibling_bound})"))
    for key in sorted(set(acked) | set(undone_if_read) | set(final)):
        values = set(final.get(key, ()))
        lost = {v for v in acked[key] - replaced[key] - values if began[v] >= overwritten[key]}
        for value in sorted(lost):
            violations.append(Violation("lost write", f"{key!r}: acknowledged {value!r} is gone"))
        back = values & undone_if_read[key]
        for value in sorted(back):
            violations.append(Violation("undone", f"{key!r}: {value!r} was replaced or deleted (acknowledged) "
                                                  "and reads back"))
        if len(values) > sibling_bound:
            violations.append(Violation("siblings", f"{key!r} ends with {len(values)} siblings"))
    return violations


def check_replicas(copies: dict) -> list[Violation]:
    """``copies``: key -> {node: sorted live values or None when unreadable} of every primary replica."""
    violations = []
    for key in sorted(copies):
        seen = {tuple(v) for v in copies[key].values() if v is not None}
        if len(seen) > 1:
            violations.append(Violation("diverged", f"{key!r}: replicas differ: {copies[key]}"))
        missing = [node for node, v in copies[key].items() if v is None]
        if missing:
            violations.append(Violation("unreadable", f"{key!r}: no answer from {missing}"))
    return violations


def check_membership(states: dict) -> list[Violation]:
    """``states``: node -> (state version, digest, next ring pending, {member: status})."""
    violations = []
    if len({(v, d) for v, d, _, _ in states.values()}) > 1:
        violations.append(Violation("membership", "nodes hold different cluster states: " + ", ".join(
            f"{node}=v{v}" for node, (v, _, _, _) in sorted(states.items()))))
    for node, (_, _, pending, members) in sorted(states.items()):
        if pending:
            violations.append(Violation("membership", f"{node} still has a ring change pending"))
        unsettled = sorted(m for m, status in members.items() if status not in ("valid", "left"))
        if unsettled:
            violations.append(Violation("membership", f"{node} sees unsettled members {unsettled}"))
    return violations


def check_counters(history, finals: dict) -> list[Violation]:
    """``finals``: counter key -> its value read linearizably at the end (None when that read failed)."""
    violations = []
    ops = defaultdict(list)
    for op in history.ops:
        if op.kind == "cas":
            ops[op.key].append(op)
    for key in sorted(set(ops) | set(finals)):
        acked = [op for op in ops[key] if op.outcome == "ok"]
        unknown = sum(1 for op in ops[key] if op.outcome == "unknown")
        reads = defaultdict(int)
        for op in acked:
            reads[op.read] += 1
        for value, count in sorted(reads.items()):
            if count > 1:
                violations.append(Violation("lost update", f"{key!r}: {count} acknowledged increments read {value}"))
        final = finals.get(key)
        if final is None:
            violations.append(Violation("unreadable", f"counter {key!r} could not be read at the end"))
        elif not len(acked) <= final <= len(acked) + unknown:
            violations.append(Violation("counter", f"{key!r} ends at {final}, outside [{len(acked)}, "
                                                   f"{len(acked) + unknown}] (acknowledged, + unknown)"))
        done = sorted(acked, key=lambda op: op.end)
        for op in acked:
            before = [p.read for p in done if p.end < op.start]
            if before and max(before) >= op.read:
                violations.append(Violation("stale read", f"{key!r}: an increment from {op.read} began after one "
                                                          f"from {max(before)} was acknowledged"))
                break
    return violations
