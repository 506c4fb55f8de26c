"""Node configuration: defaults, a TOML file, then command-line flags, each overriding the one before.

Every option is documented in docs/configuration.md; keep the two in step.
"""
from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from dynafast.address import parse_address


LOG_LEVELS = ("debug", "info", "warning", "error")


@dataclass
class NodeConfig:
    # identity and addresses
    node_id: str = ""
    listen: str = "127.0.0.1:7101"
    advertise: str = ""
    http: str = ""
    resp: str = ""  # HOST:PORT of the Redis protocol listener (docs/resp.md); empty: none
    data_dir: str = "./dynafast-data/node"
    seeds: list[str] = field(default_factory=list)
    zone: str = ""
    # cluster shape, fixed when the cluster is created
    partitions: int = 64
    # request defaults (each overridable per request)
    n: int = 3
    r: int = 2
    w: int = 2
    dw: int = 1
    request_timeout: float = 2.0
    peer_timeout: float = 1.0
    # limits
    max_key_size: int = 32 * 1024
    max_value_size: int = 8 * 1024 * 1024
    max_frame: int = 64 * 1024 * 1024
    # connections: bytes of frames still arriving (all connections together), and how long one may sit idle
    max_unfinished_frames: int = 256 * 1024 * 1024
    idle_timeout: float = 300.0
    # connections open at once (0: as many as the descriptor limit allows), the last peer_reserve for peers
    max_connections: int = 0
    peer_reserve: int = 32
    # siblings of one key: a warning in the log above siblings_warn, a refused put above max_siblings
    siblings_warn: int = 25
    max_siblings: int = 100
    # storage engine
    sync: str = "interval"
    sync_interval: float = 0.1
    segment_size: int = 256 * 1024 * 1024
    # deletes: how long a fully replicated tombstone is kept before it is removed; it must outlast every hint
    # (hint_window) or a hint replayed after the reap brings the deleted value back
    tombstone_delay: float = 4 * 3600.0
    # membership: gossip rounds and phi-accrual failure detection
    gossip_interval: float = 1.0
    phi_threshold: float = 8.0
    # join/leave: vnode transfers to new owners
    transfer_bytes_per_second: float = 8 * 1024 * 1024
    drop_grace: float = 5.0
    # hinted handoff
    handoff_interval: float = 1.0
    handoff_batch: int = 256
    handoff_bytes_per_second: float = 8 * 1024 * 1024
    hint_window: float = 3 * 3600.0
    # anti-entropy
    ae_interval: float = 10.0
    ae_bytes_per_second: float = 4 * 1024 * 1024
    merkle_leaves: int = 1024
    # security: the cluster secret file (peers prove it before any internal message); --insecure allows
    # listening beyond loopback with neither a secret nor users
    secret_file: str = ""
    insecure: bool = False
    # client users: the users file (dynafast user add ...); with one, every request but /health needs a user
    users_file: str = ""
    metrics_auth: bool = False  # /metrics needs a user (role read) too
    # peer_routes: node id -> "host:port" to use instead of that peer's advertised address
    peer_routes: dict[str, str] = field(default_factory=dict)
    # TLS on the native port and HTTP (PEM files; see docs/security.md): certificate and key, and the CA that
    # peers' certificates (and client certificates, when presented) must verify against
    tls_cert: str = ""
    tls_key: str = ""
    tls_ca: str = ""
    # logging (stderr): the least severe level logged, and text lines or one JSON object per line
    log_level: str = "info"
    log_format: str = "text"

    def __post_init__(self):
        if not self.node_id:
            self.node_id = "node-" + self.listen.replace(":", "-")
        if not self.advertise:
            self.advertise = self.listen
        self.validate()

    def validate(self) -> None:
        if self.partitions < 8 or self.partitions > 4096 or self.partitions & (self.partitions - 1):
            raise ValueError(f"partitions must be a power of two in 8..4096, not {self.partitions}")
        if not 1 <= self.n <= 16:
            raise ValueError(f"n must be in 1..16, not {self.n}")
        for name in ("r", "w"):
            value = getattr(self, name)
            if not 1 <= value <= self.n:
                raise ValueError(f"{name} must be in 1..n ({self.n}), not {value}")
        if not 0 <= self.dw <= self.w:
            raise ValueError(f"dw must be in 0..w ({self.w}), not {self.dw}")
        for name in ("siblings_warn", "max_siblings"):
            value = getattr(self, name)
            if type(value) is not int or value < 1:
                raise ValueError(f"{name} must be a positive integer, not {value!r}")
        if self.idle_timeout < 0:
            raise ValueError(f"idle_timeout must be 0 (none) or positive, not {self.idle_timeout}")
        if type(self.max_unfinished_frames) is not int or self.max_unfinished_frames < 1:
            raise ValueError(f"max_unfinished_frames must be a positive integer, not {self.max_unfinished_frames!r}")
        for name in ("max_connections", "peer_reserve"):
            value = getattr(self, name)
            if type(value) is not int or value < 0:
                raise ValueError(f"{name} must be a non-negative integer, not {value!r}")
        if self.max_connections and self.peer_reserve >= self.max_connections:
            raise ValueError(f"peer_reserve ({self.peer_reserve}) must be below max_connections "
                             f"({self.max_connections})")
        if self.log_level not in LOG_LEVELS:
            raise ValueError(f"log_level must be one of {', '.join(LOG_LEVELS)}, not {self.log_level!r}")
        if self.log_format not in ("text", "json"):
            raise ValueError(f"log_format must be text or json, not {self.log_format!r}")
        if self.sync not in ("none", "interval", "always"):
            raise ValueError(f"sync must be none, interval or always, not {self.sync!r}")
        if not self.sync_interval > 0:
            raise ValueError(f"sync_interval must be positive, not {self.sync_interval!r}")
        margin = 2 * self.request_timeout
        if self.tombstone_delay < self.hint_window + margin:
            raise ValueError(
                f"tombstone_delay ({self.tombstone_delay:g} s) must exceed hint_window ({self.hint_window:g} s) by "
                f"at least 2 x request_timeout ({margin:g} s): a hint replayed after its key's tombstone was "
                f"removed would bring the deleted value back")
        if not isinstance(self.users_file, str):
            raise ValueError(f"users_file must be a path, not {self.users_file!r}")
        if type(self.metrics_auth) is not bool:
            raise ValueError(f"metrics_auth must be true or false, not {self.metrics_auth!r}")
        if self.metrics_auth and not self.users_file:
            raise ValueError("metrics_auth needs users_file: there are no users to authenticate")
        for name in ("listen", "advertise"):
            parse_address(getattr(self, name))
        if self.http:
            parse_address(self.http)
        if self.resp:
            parse_address(self.resp)
        for seed in self.seeds:
            parse_address(seed)
        self._validate_tls()

    def _validate_tls(self) -> None:
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("tls_cert and tls_key go together: give both or neither")
        if self.tls_ca and not self.tls_cert:
            raise ValueError("tls_ca is the CA of a TLS node: it needs tls_cert and tls_key too")
        for name in ("tls_cert", "tls_key", "tls_ca"):
            path = getattr(self, name)
            if path and not os.path.isfile(path):
                raise ValueError(f"{name}: {path} is not a file")

    @classmethod
    def load(cls, path: str | os.PathLike | None = None, **overrides) -> "NodeConfig":
        """Defaults, then the TOML file at ``path`` (if any), then ``overrides`` whose value is not None."""
        values: dict = {}
        known = {f.name for f in dataclasses.fields(cls)}
        if path is not None:
            with open(path, "rb") as f:
                data = tomllib.load(f)
            unknown = set(data) - known
            if unknown:
                raise ValueError(f"unknown option(s) in {path}: {', '.join(sorted(unknown))}")
            values.update(data)
        for key, value in overrides.items():
            if key not in known:
                raise ValueError(f"unknown option {key}")
            if value is not None:
                values[key] = value
        routes = os.environ.get("DYNAFAST_PEER_ROUTES", "")
        if routes:
            values["peer_routes"] = {**values.get("peer_routes", {}), **parse_routes(routes)}
        return cls(**values)

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir)


def parse_routes(text: str) -> dict[str, str]:
    routes = {}
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        node, sep, address = item.partition("=")
        if not sep:
            raise ValueError(f"bad peer route {item!r}: expected NODE=HOST:PORT")
        parse_address(address)
        routes[node.strip()] = address.strip()
    return routes
