"""A node's clocks in the simulation: the loop's time, offset per node, with wall-clock skew and jumps."""
from __future__ import annotations

EPOCH = 1_800_000_000.0  # wall-clock seconds at simulated time 0


class SimClock:
    def __init__(self, loop, *, skew: float = 0.0, boot: float = 0.0):
        self._loop = loop
        self.skew = skew          # wall clock minus true time; a jump changes it
        self._boot = boot         # a node's monotonic clock starts anywhere

    def monotonic(self) -> float:
        return self._loop.time() + self._boot

    def wall(self) -> float:
        return EPOCH + self._loop.time() + self.skew

    def jump(self, seconds: float) -> None:
        """An operator or NTP sets the wall clock: monotonic time is not affected."""
        self.skew += seconds
