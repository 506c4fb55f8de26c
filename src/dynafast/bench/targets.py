"""What the load tool talks to: the dynafast cluster client and Redis (single server or Redis Cluster).

Every target is built inside the process that drives it (worker processes get a plain description, not a
connection), and the client libraries are imported lazily so the tool runs without the ones it does not use.
"""
from __future__ import annotations

from typing import NamedTuple, Protocol, runtime_checkable

from dynafast.address import parse_address


class Read(NamedTuple):
    values: list  # list[bytes]: one per sibling, empty when the key is absent
    context: bytes | None  # the causal context to write back with, None where the store has none


@runtime_checkable
class Target(Protocol):
    name: str
    uses_context: bool  # True when writes should carry the context of a previous read

    async def connect(self) -> None: ...

    async def get(self, key: bytes) -> Read: ...

    async def put(self, key: bytes, value: bytes, context: bytes | None = None) -> None: ...

    async def read_modify_write(self, key: bytes, value: bytes) -> None: ...

    async def close(self) -> None: ...


class DynafastTarget:
    """A dynafast cluster through one AsyncClient per process; its pipelined connections carry all tasks."""

    name = "dynafast"
    uses_context = True

    def __init__(self, addresses: list[str]):
        self.addresses = list(addresses)
        self._client = None

    async def connect(self) -> None:
        from dynafast.client import AsyncClient  # lazy: the client is not needed to bench Redis

        self._client = AsyncClient(self.addresses)
        await self._client.connect()

    async def get(self, key: bytes) -> Read:
        r = await self._client.get(key)
        return Read(r.values, r.context)

    async def put(self, key: bytes, value: bytes, context: bytes | None = None) -> None:
        if context:
            await self._client.put(key, value, context=context)
        else:
            await self._client.put(key, value)

    async def read_modify_write(self, key: bytes, value: bytes) -> None:
        # YCSB's F: read, then write the new value with the read's context, which resolves any siblings.
        r = await self._client.get(key)
        await self.put(key, value, r.context)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None


class RedisTarget:
    """A Redis server (redis-py asyncio; hiredis parses replies when installed), or a Redis Cluster."""

    uses_context = False

    def __init__(self, address: str, cluster: bool = False):
        self.address = address
        self.cluster = cluster
        self.name = "redis-cluster" if cluster else "redis"
        self._r = None

    async def connect(self) -> None:
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        host, port = parse_address(self.address.split(",")[0], 6379)
        # No client-side retries: a failed request is counted as an error instead of showing up as latency.
        options = dict(host=host, port=port, retry=Retry(NoBackoff(), 0), socket_connect_timeout=5)
        if self.cluster:
            from redis.asyncio.cluster import RedisCluster

            self._r = RedisCluster(**options)
            await self._r.initialize()
        else:
            from redis.asyncio import Redis

            self._r = Redis(**options)
            await self._r.ping()

    async def get(self, key: bytes) -> Read:
        value = await self._r.get(key)
        return Read([] if value is None else [value], None)

    async def put(self, key: bytes, value: bytes, context: bytes | None = None) -> None:
        await self._r.set(key, value)

    async def read_modify_write(self, key: bytes, value: bytes) -> None:
        await self._r.get(key)
        await self._r.set(key, value)

    async def close(self) -> None:
        if self._r is not None:
            await self._r.aclose()
            self._r = None


TARGETS = ("dynafast", "redis", "redis-cluster")


def make_target(spec: dict) -> Target:
    """Build a target from a picklable description: {"target": name, "cluster": "h:p,...", "redis": "h:p"}."""
    kind = spec["target"]
    if kind == "dynafast":
        addresses = [a.strip() for a in spec["cluster"].split(",") if a.strip()]
        if not addresses:
            raise ValueError("--cluster needs at least one HOST:PORT")
        return DynafastTarget(addresses)
    if kind in ("redis", "redis-cluster"):
        return RedisTarget(spec["redis"], cluster=kind == "redis-cluster")
    raise ValueError(f"unknown target {kind!r} (choose from {', '.join(TARGETS)})")
