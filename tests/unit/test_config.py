"""Node configuration: defaults, TOML file, overrides, validation, and the reference page staying in step."""
import dataclasses
import re
from pathlib import Path

import pytest

from dynafast.config import NodeConfig, parse_routes

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def test_every_option_is_documented_and_nothing_else():
    names = {f.name for f in dataclasses.fields(NodeConfig)}
    documented = set(re.findall(r"^\| `([a-z_]+)`", DOC.read_text(), re.M))
    assert names == documented


def test_file_then_overrides(tmp_path, monkeypatch):
    monkeypatch.delenv("DYNAFAST_PEER_ROUTES", raising=False)
    path = tmp_path / "node.toml"
    path.write_text('node_id = "a"\nlisten = "127.0.0.1:9001"\nn = 5\nr = 3\nseeds = ["127.0.0.1:9002"]\n')
    config = NodeConfig.load(path, r=2, w=None)
    assert (config.node_id, config.n, config.r, config.w) == ("a", 5, 2, 2)
    assert config.advertise == "127.0.0.1:9001" and config.seeds == ["127.0.0.1:9002"]


def test_unknown_and_invalid_options_are_refused(tmp_path):
    path = tmp_path / "node.toml"
    path.write_text("replicas = 3\n")
    with pytest.raises(ValueError, match="replicas"):
        NodeConfig.load(path)
    for bad in ({"partitions": 100}, {"n": 3, "r": 4}, {"w": 2, "dw": 3}, {"sync": "sometimes"},
                {"listen": "nohost"}, {"seeds": ["127.0.0.1:99999"]}, {"max_siblings": 0},
                {"siblings_warn": -1}, {"max_siblings": True}, {"max_siblings": 2.5}, {"siblings_warn": "25"},
                {"metrics_auth": True}, {"metrics_auth": "yes", "users_file": "u.json"}, {"users_file": 1},
                {"sync_interval": 0}):
        with pytest.raises(ValueError):
            NodeConfig(**bad)


def test_peer_routes_from_the_environment(monkeypatch):
    monkeypatch.setenv("DYNAFAST_PEER_ROUTES", "n2=127.0.0.1:7002, n3=127.0.0.1:7003")
    assert NodeConfig.load().peer_routes == {"n2": "127.0.0.1:7002", "n3": "127.0.0.1:7003"}
    with pytest.raises(ValueError):
        parse_routes("n2")
    assert parse_routes("n2=[::1]:7002") == {"n2": "[::1]:7002"}
