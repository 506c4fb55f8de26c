"""Phi-accrual failure detection (Hayashibara et al., 2004), as Cassandra and Akka use it.

Instead of a yes/no timeout, each peer gets a suspicion level phi from the history of its heartbeat
inter-arrival times: phi = -log10(P(a heartbeat arrives later than now)), the tail of a normal distribution
fitted to the recent intervals. phi = 8 means "the chance this silence is just a slow heartbeat is 1e-8".
A slow peer widens its own distribution, so one late reply does not flap it down.

No clock reads here: every method takes ``now`` (seconds), so tests drive it deterministically.
"""
from __future__ import annotations

import math
from collections import deque


class HeartbeatHistory:
    """A bounded window of inter-arrival times with a running sum and sum of squares."""

    __slots__ = ("intervals", "total", "squares")

    def __init__(self, size: int):
        self.intervals: deque[float] = deque(maxlen=size)
        self.total = 0.0
        self.squares = 0.0

    def add(self, interval: float) -> None:
        if len(self.intervals) == self.intervals.maxlen:
            old = self.intervals[0]
            self.total -= old
            self.squares -= old * old
        self.intervals.append(interval)
        self.total += interval
        self.squares += interval * interval

    @property
    def mean(self) -> float:
        return self.total / len(self.intervals)

    @property
    def std(self) -> float:
        n = len(self.intervals)
        variance = max(0.0, self.squares / n - (self.total / n) ** 2)
        return math.sqrt(variance)


class PhiAccrualDetector:
    """One detector per peer.

    ``first_interval`` seeds the history so a peer heard from once is not suspected at once;
    ``min_std`` keeps a perfectly regular peer from being suspected after a tiny delay;
    ``acceptable_pause`` is added to the mean to tolerate known pauses (GC, fsync stalls).
    """

    __slots__ = ("threshold", "min_std", "acceptable_pause", "history", "last", "first_interval", "max_sample")

    def __init__(self, threshold: float = 8.0, *, window: int = 200, min_std: float = 0.2,
                 acceptable_pause: float = 1.0, first_interval: float = 1.0):
        if threshold <= 0:
            raise ValueError("threshold must be positive")
        self.threshold = threshold
        self.min_std = min_std
        self.acceptable_pause = acceptable_pause
        self.first_interval = first_interval
        self.history = HeartbeatHistory(window)
        self.last: float | None = None
        # A silence longer than this (a pause, a partition) is an outage, not a sample of the heartbeat rhythm:
        # recording it would make the detector ever slower to suspect the next one (Cassandra does the same).
        self.max_sample = 4 * first_interval

    def heartbeat(self, now: float) -> None:
        if self.last is None:
            # Bootstrap with a guess of mean first_interval, std first_interval / 4.
            std = self.first_interval / 4
            self.history.add(self.first_interval - std)
            self.history.add(self.first_interval + std)
        else:
            interval = now - self.last
            if 0 <= interval <= self.max_sample:
                self.history.add(interval)
        self.last = now

    def phi(self, now: float) -> float:
        if self.last is None:
            return 0.0
        elapsed = now - self.last
        mean = self.history.mean + self.acceptable_pause
        std = max(self.history.std, self.min_std)
        y = (elapsed - mean) / std
        # Logistic approximation of the normal CDF's tail (Akka's), accurate to ~1e-4 and cheap.
        e = math.exp(-y * (1.5976 + 0.070566 * y * y))
        if elapsed > mean:
            p_later = e / (1.0 + e)
        else:
            p_later = 1.0 - 1.0 / (1.0 + e)
        if p_later <= 0.0:
            return float("inf")
        return -math.log10(p_later)

    def available(self, now: float) -> bool:
        return self.phi(now) < self.threshold


class LocalPause:
    """This process's own stalls, which are no evidence against its peers (Cassandra's MAX_LOCAL_PAUSE).

    While the process is stopped (SIGSTOP, a paused VM, an event loop blocked), it reads no heartbeat; on waking,
    every peer has been silent for the whole stall, and the detectors would mark them all down until gossip has
    run again. Meanwhile its coordinators route around live replicas and count fallbacks' answers. A gap longer
    than ``longest`` between two ``check`` calls (the caller checks several times a second) is such a stall: for
    ``grace`` seconds after it, silence is excused, and peers' heartbeats arrive in that time.
    """

    __slots__ = ("longest", "grace", "last", "until")

    def __init__(self, longest: float, grace: float):
        self.longest = longest
        self.grace = grace
        self.last: float | None = None
        self.until = -math.inf

    def check(self, now: float) -> float:
        """Record a check at ``now``; the length of the stall that ended with it (0.0 when there was none)."""
        gap = 0.0 if self.last is None else now - self.last
        self.last = now
        if gap <= self.longest:
            return 0.0
        self.until = now + self.grace
        return gap

    def excused(self, now: float) -> bool:
        """Whether a peer's silence proves nothing now (a stall of ours ended less than ``grace`` ago)."""
        return now < self.until


class FailureDetector:
    """Phi-accrual detectors for a set of peers."""

    def __init__(self, threshold: float = 8.0, **options):
        self.threshold = threshold
        self.options = options
        self.peers: dict[str, PhiAccrualDetector] = {}

    def heartbeat(self, peer: str, now: float) -> None:
        detector = self.peers.get(peer)
        if detector is None:
            detector = self.peers[peer] = PhiAccrualDetector(self.threshold, **self.options)
        detector.heartbeat(now)

    def phi(self, peer: str, now: float) -> float:
        detector = self.peers.get(peer)
        return 0.0 if detector is None else detector.phi(now)

    def available(self, peer: str, now: float) -> bool:
        detector = self.peers.get(peer)
        return True if detector is None else detector.available(now)

    def forget(self, peer: str) -> None:
        self.peers.pop(peer, None)
