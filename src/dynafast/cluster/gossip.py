"""The I/O-free core of gossip: heartbeats, a versioned cluster state, and push-pull merging.

Each round a node bumps its own heartbeat counter and exchanges a digest with one random peer: both sides keep
the larger heartbeat of every member (a heartbeat that grew is one for the failure detector, even when it
arrived second-hand) and the newer of the two cluster states, ordered by (version, digest). A change made at one
node reaches all n members in O(log n) rounds, which the simulation test shows for n = 1,000.

A heartbeat is (generation, counter), compared in that order: the generation counts the node's starts (kept in
its metadata files, so a restarted node beats above everything its previous lives sent, whatever its wall clock
says), the counter its gossip rounds in this life. Both travel as one int, ``generation << GENERATION_SHIFT |
counter``, so that comparing heartbeats stays comparing ints; older nodes, which sent their start time in
milliseconds plus the rounds, read as generation 0 and compare below any generation of ours.

The state itself is opaque here: anything with ``version`` and ``digest()`` works, so the simulation uses a tiny
stand-in and the node uses its real ``ClusterState``.
"""
from __future__ import annotations

import random

from dynafast.cluster.failure import FailureDetector


# 2**42 rounds outlast any process (139 years at 1,000 rounds a second); generations up to 2**21 - 1 keep the
# heartbeat a signed 64-bit int, and 2**42 ms lies in the year 2109, so every heartbeat an older node sent from
# the wall clock is generation 0.
GENERATION_SHIFT = 42
MAX_GENERATION = (1 << (63 - GENERATION_SHIFT)) - 1


def generation_of(heartbeat: int) -> int:
    return heartbeat >> GENERATION_SHIFT


def state_order(state) -> tuple:
    return (state.version, state.digest()) if state is not None else (-1, b"")


class GossipCore:
    """``generation``: this life's start count, written durably by the caller before it is used here."""

    def __init__(self, node_id: str, state=None, *, detector: FailureDetector | None = None,
                 rng: random.Random | None = None, generation: int = 1):
        self.node_id = node_id
        self.state = state
        self.detector = detector if detector is not None else FailureDetector()
        self.rng = rng if rng is not None else random.Random()
        self.heartbeats: dict[str, int] = {}
        self.start_generation(generation)

    def start_generation(self, generation: int) -> None:
        if not 1 <= generation <= MAX_GENERATION:
            raise ValueError(f"heartbeat generation {generation} out of range 1..{MAX_GENERATION}")
        self.generation = generation
        self.heartbeat = generation << GENERATION_SHIFT
        self.heartbeats[self.node_id] = self.heartbeat

    def tick(self) -> None:
        """Start a round: our own heartbeat goes up."""
        self.heartbeat += 1
        self.heartbeats[self.node_id] = self.heartbeat

    def choose_peer(self, members) -> str | None:
        peers = [m for m in members if m != self.node_id]
        return self.rng.choice(peers) if peers else None

    def message(self) -> tuple[list[str], list[int], object]:
        ids = list(self.heartbeats)
        return ids, [self.heartbeats[i] for i in ids], self.state

    def receive(self, ids, counters, state, now: float, members=None) -> bool:
        """Merge a peer's message; returns True when its state replaced ours.

        ``members`` (a container of ids): heartbeats of anyone else are ignored, so a peer cannot make us
        carry ids that are no members."""
        for node_id, counter in zip(ids, counters):
            if members is not None and node_id not in members:
                continue
            if node_id == self.node_id:
                if counter > self.heartbeat and generation_of(counter) < MAX_GENERATION:
                    # A previous life of ours beat higher: its generation was lost with our data directory.
                    # Move past it (the caller persists the new generation before the next message goes out).
                    self.start_generation(generation_of(counter) + 1)
                continue
            if counter > self.heartbeats.get(node_id, -1):
                self.heartbeats[node_id] = counter
                self.detector.heartbeat(node_id, now)
        if state is not None and state_order(state) > state_order(self.state):
            self.state = state
            return True
        return False

    def forget(self, node_id: str) -> None:
        self.heartbeats.pop(node_id, None)
        self.detector.forget(node_id)


def exchange(a: GossipCore, b: GossipCore, now: float) -> None:
    """One push-pull round between two cores (what a GOSSIP request and its reply do over the wire)."""
    ids, counters, state = a.message()
    b.receive(ids, counters, state, now)
    ids, counters, state = b.message()
    a.receive(ids, counters, state, now)
