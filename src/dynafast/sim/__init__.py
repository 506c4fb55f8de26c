"""A deterministic simulator: whole clusters of the real node and service code in one process.

Everything a node touches of the world is simulated (FoundationDB's and TigerBeetle's approach): an event loop
whose time is simulated (``loop``), a network with delays, loss, duplication, reordering, partitions and one-way
cuts (``network``), a disk that loses what was not fsync'd when its node crashes (``disk``), and per-node clocks
with skew and jumps (``clock``). One seed fixes every choice, so a failing seed replays exactly:

    python -m dynafast.sim --seeds 200            # seeds 0..199
    python -m dynafast.sim --seed 1234 --seeds 1  # replay one

``run(seed, ...)`` builds a cluster (``cluster``), drives a workload of clients and a fault plan against it
(``workload``), heals everything, lets it quiesce, and checks the invariants (``checker``).
"""
from dynafast.sim.runner import Result, run

__all__ = ["Result", "run"]
