"""The package's shape: services never see the Node, and the import graph has no cycles."""
from __future__ import annotations

import ast
import inspect
from pathlib import Path

import dynafast

SRC = Path(dynafast.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Modules imported at module level (imports inside functions are deliberate late imports)."""
    tree = ast.parse(path.read_text())
    found = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return {name for name in found if name.startswith("dynafast")}


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in SRC.rglob("*.py")}
    return {name: {i for i in _imports(path) if i in modules and i != name} for name, path in modules.items()}


def test_no_cluster_service_imports_the_node():
    graph = _graph()
    for name, imported in graph.items():
        if name.startswith("dynafast.cluster"):
            assert "dynafast.node" not in imported, name


def test_no_service_is_handed_the_node():
    from dynafast.cluster import antientropy, hints, membership, reaper, requests, transfers

    services = [requests.RequestCoordinator, reaper.Reaper, hints.HintedHandoff, transfers.Transfers,
                antientropy.AntiEntropy, membership.ClusterMembership]
    for service in services:
        assert "node" not in inspect.signature(service.__init__).parameters, service


def test_the_import_graph_has_no_cycles():
    graph = _graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(name, path):
        state[name] = 1
        for nxt in sorted(graph[name]):
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path + [name, nxt]))
            if nxt not in state:
                visit(nxt, path + [name])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [])
