"""Key choosers for the load tool: YCSB's zipfian and scrambled zipfian generators.

The zipfian generator is the rejection-free method of Gray et al., "Quickly Generating Billion-Record
Synthetic Databases" (SIGMOD 1994), which YCSB uses: ranks 0 and 1 get their exact probabilities, the tail is
approximated. The scrambled variant draws a rank from a zipfian over a huge item space and hashes it (FNV-1a
64 over the 8 bytes of the rank) onto the record range, so the popular keys are spread over the key space
instead of being the first records. Like YCSB it uses the fixed zeta of 10^10 items at theta 0.99, so the
popularity of a key does not depend on the record count.

Draws are made in numpy batches: the load generator, not the server, is usually the bottleneck on a small
machine, and a scalar Python draw costs several times a batched one.
"""
from __future__ import annotations

import numpy as np

ZIPFIAN_CONSTANT = 0.99
# The item space and its zeta(10^10, 0.99) that YCSB's scrambled zipfian draws ranks from.
SCRAMBLED_ITEM_COUNT = 10_000_000_000
SCRAMBLED_ZETAN = 26.46902820178302

FNV_OFFSET_BASIS_64 = 0xCBF29CE484222325
FNV_PRIME_64 = 0x100000001B3
_MASK64 = (1 << 64) - 1

_BATCH = 4096


def zeta(n: int, theta: float) -> float:
    """sum(1 / i**theta for i in 1..n), in chunks so a large n does not allocate n floats at once."""
    total = 0.0
    chunk = 1 << 20
    for start in range(1, n + 1, chunk):
        i = np.arange(start, min(start + chunk, n + 1), dtype=np.float64)
        total += float(np.sum(i ** -theta))
    return total


def fnvhash64(value: int) -> int:
    """YCSB's FNV hash of a 64-bit integer (xor-then-multiply over its 8 bytes, low byte first), made positive."""
    h = FNV_OFFSET_BASIS_64
    value &= _MASK64
    for _ in range(8):
        h ^= value & 0xFF
        h = (h * FNV_PRIME_64) & _MASK64
        value >>= 8
    if h >= 1 << 63:  # Java's Math.abs of the signed 64-bit value
        h = (1 << 64) - h
    return h


def fnvhash64_array(values: np.ndarray) -> np.ndarray:
    """fnvhash64 over an array of non-negative int64, as int64 (uint64 arithmetic wraps mod 2**64)."""
    v = values.astype(np.uint64)
    h = np.full(v.shape, FNV_OFFSET_BASIS_64, dtype=np.uint64)
    prime = np.uint64(FNV_PRIME_64)
    low = np.uint64(0xFF)
    eight = np.uint64(8)
    for _ in range(8):
        h ^= v & low
        h *= prime
        v >>= eight
    return np.abs(h.view(np.int64))


class ZipfianGenerator:
    """Integers in [0, items) with P(rank k) proportional to 1 / (k + 1)**theta; rank 0 is the most popular."""

    def __init__(self, items: int, theta: float = ZIPFIAN_CONSTANT, zetan: float | None = None, seed=None):
        if items < 1:
            raise ValueError("items must be at least 1")
        if not 0 < theta < 1:
            raise ValueError("theta must be in (0, 1)")
        self.items = items
        self.theta = theta
        self.zetan = zeta(items, theta) if zetan is None else zetan
        self.zeta2theta = zeta(2, theta)
        self.alpha = 1.0 / (1.0 - theta)
        # With one or two items every draw is decided by the exact rank 0/1 tests and eta is unused (and
        # would divide by zero at two items).
        self.eta = 0.0 if items <= 2 else (1 - (2.0 / items) ** (1 - theta)) / (1 - self.zeta2theta / self.zetan)
        self._rng = np.random.default_rng(seed)
        self._buffer: list[int] = []

    def probability(self, rank: int) -> float:
        """The exact zipfian probability of ``rank`` (what the generator approximates beyond rank 1)."""
        return (rank + 1) ** -self.theta / self.zetan

    def from_uniform(self, u: np.ndarray) -> np.ndarray:
        """Map uniform draws in [0, 1) to ranks (deterministic: the tests feed it known draws)."""
        u = np.asarray(u, dtype=np.float64)
        uz = u * self.zetan
        ranks = (self.items * (self.eta * u - self.eta + 1.0) ** self.alpha).astype(np.int64)
        ranks = np.where(uz < 1.0 + 0.5 ** self.theta, 1, ranks)
        ranks = np.where(uz < 1.0, 0, ranks)
        # Float rounding at u -> 1 can reach `items`; keep the range closed.
        return np.minimum(ranks, self.items - 1)

    def batch(self, n: int) -> np.ndarray:
        return self.from_uniform(self._rng.random(n))

    def next(self) -> int:
        if not self._buffer:
            self._buffer = self.batch(_BATCH).tolist()
            self._buffer.reverse()
        return self._buffer.pop()


class ScrambledZipfianGenerator:
    """Integers in [0, items), zipfian popular but with the popular ones scattered (YCSB's request distribution)."""

    def __init__(self, items: int, seed=None):
        if items < 1:
            raise ValueError("items must be at least 1")
        self.items = items
        self._zipf = ZipfianGenerator(SCRAMBLED_ITEM_COUNT, ZIPFIAN_CONSTANT, zetan=SCRAMBLED_ZETAN, seed=seed)
        self._buffer: list[int] = []

    def from_uniform(self, u: np.ndarray) -> np.ndarray:
        return fnvhash64_array(self._zipf.from_uniform(u)) % self.items

    def batch(self, n: int) -> np.ndarray:
        return self.from_uniform(self._zipf._rng.random(n))

    def next(self) -> int:
        if not self._buffer:
            self._buffer = self.batch(_BATCH).tolist()
            self._buffer.reverse()
        return self._buffer.pop()
