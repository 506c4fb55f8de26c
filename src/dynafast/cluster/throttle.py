"""A byte-rate throttle for background work (transfers, hint replay, anti-entropy)."""
from __future__ import annotations

import asyncio
import time


class TokenBucket:
    """Bytes-per-second throttle; ``take`` sleeps when the bucket runs dry."""

    def __init__(self, rate: float, burst: float | None = None, clock=time.monotonic):
        self.rate = float(rate)
        self.capacity = float(burst if burst is not None else rate)
        self.tokens = self.capacity
        self.clock = clock
        self.stamp = clock()

    def _refill(self) -> None:
        now = self.clock()
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now

    def delay_for(self, amount: float) -> float:
        """Take ``amount`` tokens and return how long to wait before using them."""
        if self.rate <= 0:
            return 0.0
        self._refill()
        self.tokens -= amount
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate

    async def take(self, amount: float) -> None:
        delay = self.delay_for(amount)
        if delay > 0:
            await asyncio.sleep(delay)
