"""An asyncio event loop whose clock is simulated: waiting for a timer advances time at once.

It is the standard selector loop with a selector that never blocks and no file descriptor ever ready; when the
loop would sleep until its next timer, time jumps there instead. Callbacks run in the order the standard loop
runs them (ready queue first in, first out; timers by due time), so a run is a pure function of its inputs.
"""
from __future__ import annotations

import asyncio
import selectors


class _Selector(selectors.BaseSelector):
    def __init__(self, loop: "SimLoop"):
        self._loop = loop
        self._map: dict = {}

    def register(self, fileobj, events, data=None):
        key = selectors.SelectorKey(fileobj, fileobj if isinstance(fileobj, int) else fileobj.fileno(), events, data)
        self._map[fileobj] = key
        return key

    def unregister(self, fileobj):
        return self._map.pop(fileobj)

    def select(self, timeout=None):
        if timeout is None:
            raise RuntimeError("the simulation has nothing left to run (no timer and nothing ready)")
        self._loop.advance(timeout)
        return []

    def get_map(self):
        return self._map

    def close(self):
        self._map.clear()


class SimLoop(asyncio.SelectorEventLoop):
    def __init__(self, start: float = 0.0):
        self._now = start
        super().__init__(_Selector(self))
        self._clock_resolution = 1e-9

    def time(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        if seconds > 0:
            self._now += seconds
