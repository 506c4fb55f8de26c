"""The request state machines of a coordinating node: quorum puts and gets, with sloppy quorum.

They do no I/O and read no clock: the node feeds them replies, failures and the deadline, and carries out the
``Send`` actions they return. That keeps every quorum rule testable without sockets (asyncpg's I/O-free
protocol core is the model).

Vocabulary: a *target* is ``(node, hint_for)``: ``hint_for`` is None for a primary replica and names the
primary a fallback stands in for (the fallback stores the write as a hint). *Spares* are further fallback nodes
to try, in order, when a target fails during the request.
"""
from __future__ import annotations

from typing import NamedTuple

from dynafast.errors import CorruptionError, QuorumNotMet


class Send(NamedTuple):
    """Send the request to ``node``; a fallback stores it as a hint for ``hint_for``.

    A named tuple rather than a frozen dataclass: two or three are made per request, and a frozen
    dataclass's __init__ costs several times more.
    """

    node: str
    hint_for: str | None = None
    durable: bool = False


class _Quorum:
    """What puts and gets share: targets, spares, and replacing a failed target by the next spare."""

    __slots__ = ("targets", "spares", "outstanding", "failed", "done", "error")

    def __init__(self, targets, spares):
        if not targets:
            raise ValueError("a request needs at least one target")
        self.targets: list[tuple[str, str | None]] = list(targets)
        if spares:
            used = {node for node, _ in self.targets}
            self.spares: list[str] = [node for node in spares if node not in used]
        else:
            self.spares = []  # N nodes or fewer: the usual case of a small cluster, made per request
        self.outstanding: dict[str, str | None] = {}
        self.failed: set[str] = set()
        self.done = False
        self.error: Exception | None = None

    def _replacement(self, hint_for: str | None, durable: bool) -> list[Send]:
        if not self.spares:
            return []
        node = self.spares.pop(0)
        self.outstanding[node] = hint_for
        return [Send(node, hint_for, durable)]


class PutCoordinator(_Quorum):
    """One coordinated put (or delete: a put of a tombstone).

    Answers after ``w`` acknowledgements of which ``dw`` were durable (fsync'd). The first ``dw`` targets are
    asked for a durable write (the coordinator's own, local write first); a durable target that fails hands its
    durability duty to the spare that replaces it. Late acks after the answer are still counted (``acks``) so
    the node can tell when every replica holds the write.
    """

    __slots__ = ("w", "dw", "acks", "durable_acks", "primary_acks", "_durable_targets")

    def __init__(self, targets, spares=(), *, w: int, dw: int = 0):
        super().__init__(targets, spares)
        if w < 1 or dw < 0 or dw > w:
            raise ValueError(f"bad quorum w={w} dw={dw}")
        self.w = w
        self.dw = dw
        self.acks = 0
        self.durable_acks = 0
        self.primary_acks = 0
        self._durable_targets = {node for node, _ in self.targets[:dw]} if dw else set()

    def start(self) -> list[Send]:
        sends = []
        outstanding = self.outstanding
        durable = self._durable_targets
        for node, hint_for in self.targets:
            outstanding[node] = hint_for
            sends.append(Send(node, hint_for, node in durable))
        if len(self.targets) < self.w:
            # Not even every target answering could meet the quorum; spares may still make it.
            sends += self._refill()
        return sends

    def _refill(self) -> list[Send]:
        sends = []
        while self.acks + len(self.outstanding) < self.w and self.spares:
            sends += self._replacement(None, self.durable_acks + self._pending_durable() < self.dw)
        return sends

    def _pending_durable(self) -> int:
        durable = self._durable_targets
        if not durable:
            return 0  # dw 0: no generator to run for every put
        return sum(1 for node in self.outstanding if node in durable)

    def on_ack(self, node: str, durable: bool) -> list[Send]:
        hint_for = self.outstanding.pop(node, None)
        if node in self.failed:
            return []
        self.acks += 1
        if durable:
            self.durable_acks += 1
        if hint_for is None:
            self.primary_acks += 1
        self._check()
        return []

    def on_failure(self, node: str, error: Exception | None = None) -> list[Send]:
        if node not in self.outstanding:
            return []
        hint_for = self.outstanding.pop(node)
        self.failed.add(node)
        # The fallback stands in for the same owner the failed node did (or for the failed primary itself).
        stand_in_for = hint_for if hint_for is not None else node
        durable = node in self._durable_targets
        sends = self._replacement(stand_in_for, durable)
        if durable and sends:
            self._durable_targets.add(sends[0].node)
        self._check()
        return sends

    def on_deadline(self) -> None:
        if not self.done:
            self._fail()

    def _check(self) -> None:
        if self.done:
            return
        if self.acks >= self.w and self.durable_acks >= self.dw:
            self.done = True
            return
        # Give up early when even every outstanding target and spare answering could not meet the quorum.
        possible = self.acks + len(self.outstanding) + len(self.spares)
        possible_durable = self.durable_acks + self._pending_durable() + len(self.spares)
        if possible < self.w or possible_durable < self.dw:
            self._fail()

    def _fail(self) -> None:
        self.done = True
        self.error = QuorumNotMet(
            f"put reached {self.acks} of w={self.w} replicas ({self.durable_acks} of dw={self.dw} durable)",
            replied=self.acks,
            required=self.w,
        )

    @property
    def ok(self) -> bool:
        return self.done and self.error is None

    @property
    def finished(self) -> bool:
        """No reply is still awaited."""
        return not self.outstanding


class GetCoordinator(_Quorum):
    """One coordinated get: answers after ``r`` replies, then keeps listening for read repair.

    ``versions`` is the vclock implementation module (compiled or reference); replies are its ``Siblings``
    objects, or None for a replica that does not have the key. A replica whose copy is damaged
    (CorruptionError) fails like an unreachable one, but it is there: read repair writes it a good copy.
    """

    __slots__ = ("r", "versions", "replies", "result", "damaged", "_primaries", "weak")

    def __init__(self, targets, spares=(), *, r: int, versions):
        super().__init__(targets, spares)
        if r < 1:
            raise ValueError(f"bad quorum r={r}")
        self.r = r
        self.versions = versions
        self.replies: dict[str, object] = {}
        self.result = None
        self.damaged: list[str] = []
        self._primaries = {node for node, hint_for in self.targets if hint_for is None}
        self.weak = 0  # "not found" replies that prove nothing: from fallbacks, or replicas repairing after amnesia

    def start(self) -> list[Send]:
        sends = []
        for node, hint_for in self.targets:
            self.outstanding[node] = hint_for
            sends.append(Send(node, hint_for))
        while len(self.outstanding) < self.r and self.spares:
            # Not even every target answering could make the quorum (the down primaries are spares): ask them.
            sends += self._replacement(None, False)
        return sends

    def on_reply(self, node: str, siblings, weak: bool = False) -> list[Send]:
        """``weak``: a "not found" from a replica that may have forgotten the key (it repairs after amnesia).

        A fallback's "not found" is weak too: it holds only the writes made while the primary it stands in for
        was down, so it says nothing of the key. Counted as a strong one, it and a primary that missed the
        writes (one just back from an outage, its hints not delivered yet) answered "not found" for a key the
        third primary holds: the read's empty context made a delete delete nothing, and the hints then brought
        the value back.
        """
        if node not in self.outstanding:
            return []
        hint_for = self.outstanding.pop(node)
        self.replies[node] = siblings
        if weak or (siblings is None and hint_for is not None):
            self.weak += 1
        if not self.done and len(self.replies) >= self.r:
            self._conclude(final=False)
        return []

    def _conclude(self, final: bool) -> None:
        result = self.reconciled()
        if result is None and self.weak and self.outstanding and not final:
            return  # a forgetful replica's "not found" must not outvote one that has the key: wait for it
        self.done = True
        self.result = result

    def on_failure(self, node: str, error: Exception | None = None) -> list[Send]:
        if node not in self.outstanding:
            return []
        hint_for = self.outstanding.pop(node)
        self.failed.add(node)
        if isinstance(error, CorruptionError) and node in self._primaries:
            self.damaged.append(node)
        sends = self._replacement(hint_for if hint_for is not None else node, False)
        if not self.done:
            if len(self.replies) + len(self.outstanding) < self.r:
                self._fail()
            elif len(self.replies) >= self.r:
                self._conclude(final=False)
        return sends

    def on_deadline(self) -> None:
        if not self.done:
            if len(self.replies) >= self.r:
                self._conclude(final=True)  # only forgetful replicas said "not found": that is all we know
            else:
                self._fail()

    def _fail(self) -> None:
        self.done = True
        self.error = QuorumNotMet(
            f"get heard from {len(self.replies)} of r={self.r} replicas",
            replied=len(self.replies),
            required=self.r,
        )

    def reconciled(self):
        """The merge of every reply so far (None when no replica has the key)."""
        found = [s for s in self.replies.values() if s is not None]
        if not found:
            return None
        first = found[0]
        for other in found:
            if other != first:
                return self.versions.reconcile(found)
        return first  # every replica holds the same: the usual read, with nothing to merge

    @property
    def finished(self) -> bool:
        return not self.outstanding

    def repairs(self) -> tuple[object, list[str]]:
        """Read repair: the reconciled object and the primaries that answered with something older or nothing,
        or whose copy was damaged.

        Call once every reply is in (or at the deadline); replicas that did not answer are left to hinted
        handoff and anti-entropy.
        """
        merged = self.reconciled()
        if merged is None:
            return None, []
        stale = list(self.damaged)
        for node, siblings in self.replies.items():
            if node not in self._primaries:
                continue
            if siblings is None or siblings != merged:
                stale.append(node)
        return merged, stale
