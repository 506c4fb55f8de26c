"""What the admin verbs of the command line show: ring ownership, a key's preference list, per-node tables.

Each report is a plain dict (what ``--json`` prints) built from what nodes already publish (the ring from
RING_GET, STATUS of each node), and a ``format_*`` function turns it into text for a terminal.
"""
from __future__ import annotations

from dynafast.errors import DynafastError


def human_bytes(count) -> str:
    """``1536`` -> ``"1.5 KiB"``: sizes an operator reads at a glance."""
    if count is None:
        return "-"
    size = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def _table(header: list[str], rows: list[list]) -> str:
    """Left-aligned columns two spaces apart; numbers right-aligned."""
    cells = [header] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    numeric = [any(_is_number(row[i]) for row in rows) and all(_is_number(row[i]) or row[i] is None for row in rows)
               for i in range(len(header))]
    lines = []
    for row in cells:
        lines.append("  ".join(c.rjust(w) if num else c.ljust(w)
                               for c, w, num in zip(row, widths, numeric)).rstrip())
    return "\n".join(lines)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.1f}"
    return str(value)


def _states(status: dict) -> dict[str, dict]:
    return {member["id"]: member for member in status["members"]}


# -- ring -------------------------------------------------------------------------------------------------
def ring_report(ring, status: dict) -> dict:
    """Ownership per node: partitions it owns (first replica) and replicas it holds, each as a share."""
    members = _states(status)
    n = min(status["n"], len(ring.members))
    owned = {node: 0 for node in ring.members}
    held = {node: 0 for node in ring.members}
    for partition, owner in enumerate(ring.owners()):
        owned[owner] += 1
        for node in ring.replicas(partition, n):
            held[node] += 1
    partitions = ring.partitions
    ideal = partitions / len(ring.members)
    nodes = []
    for node in ring.members:
        member = members.get(node, {})
        nodes.append({
            "id": node,
            "address": member.get("address"),
            "state": member.get("state", "unknown"),
            "partitions": owned[node],
            "percent": round(100.0 * owned[node] / partitions, 2),
            "replicas": held[node],
            "replica_percent": round(100.0 * held[node] / (partitions * n), 2),
        })
    return {
        "partitions": partitions,
        "n": n,
        "ring_version": ring.version,
        "next_ring_version": status.get("next_ring_version"),
        "nodes": nodes,
        # The most loaded node against an even split: 1.0 is perfect balance.
        "balance": round(max(owned.values()) / ideal, 3),
        "ideal_partitions": round(ideal, 2),
    }


def format_ring(report: dict) -> str:
    rows = [[node["id"], node["address"], node["state"], node["partitions"], f"{node['percent']:.1f}%",
             node["replicas"], f"{node['replica_percent']:.1f}%"] for node in report["nodes"]]
    lines = [f"ring version {report['ring_version']}: {report['partitions']:,} partitions, n={report['n']}",
             _table(["node", "address", "state", "owns", "share", "replicas", "of replicas"], rows),
             f"balance: the most loaded node owns {report['balance']:.2f}x an even share "
             f"({report['ideal_partitions']:g} partitions)"]
    if report["next_ring_version"] is not None:
        lines.append(f"a new ring (version {report['next_ring_version']}) is being moved to: see dynafast transfers")
    return "\n".join(lines)


# -- preflist ---------------------------------------------------------------------------------------------
def preflist_report(ring, status: dict, key: bytes) -> dict:
    """The key's partition, its primaries with their state, and the nodes a coordinator writes to now."""
    members = _states(status)
    n = min(status["n"], len(ring.members))
    partition = ring.partition_of(key)
    # Joining and leaving nodes still serve their replicas; down and departed ones do not.
    serving = ("up", "joining", "leaving")
    down = frozenset(node for node in ring.members if members.get(node, {}).get("state") not in serving)
    primaries = [{"node": node, "address": members.get(node, {}).get("address"),
                  "state": members.get(node, {}).get("state", "unknown")} for node in ring.replicas(partition, n)]
    targets = [{"node": node, "hint_for": hint_for} for node, hint_for in ring.preference_list(partition, n, down)]
    return {"key": key.decode(errors="backslashreplace"), "partition": partition, "partitions": ring.partitions,
            "ring_version": ring.version, "n": n, "primaries": primaries, "preference_list": targets}


def format_preflist(report: dict) -> str:
    rows = [[i + 1, p["node"], p["address"], p["state"]] for i, p in enumerate(report["primaries"])]
    lines = [f"key {report['key']!r}: partition {report['partition']} of {report['partitions']:,} "
             f"(ring version {report['ring_version']})",
             _table(["#", "node", "address", "state"], rows)]
    stand_ins = [f"{t['node']} for {t['hint_for']}" for t in report["preference_list"] if t["hint_for"]]
    writes = ", ".join(t["node"] for t in report["preference_list"]) or "nobody"
    lines.append(f"writes go to: {writes}" + (f" (standing in: {'; '.join(stand_ins)})" if stand_ins else ""))
    return "\n".join(lines)


# -- every node's status ----------------------------------------------------------------------------------
def node_statuses(client, status: dict) -> dict[str, dict]:
    """STATUS of every member (``{"error": ...}`` for one that does not answer), keyed by node id."""
    result = {}
    for member in status["members"]:
        if member["id"] == status["node"]:
            result[member["id"]] = status
            continue
        if member["state"] == "left":
            # One that left answers while it hands off what it still holds, then stops.
            try:
                answer = client.status(member["address"])
            except DynafastError:
                answer = {}
            handing_off = answer.get("transfers", {}).get("handing_off")
            result[member["id"]] = answer if handing_off else {"error": "left the cluster"}
            continue
        try:
            result[member["id"]] = client.status(member["address"])
        except DynafastError as exc:
            result[member["id"]] = {"error": str(exc)}
    return result


def _age(seconds) -> str:
    if seconds is None:
        return "never"
    if seconds < 120:
        return f"{seconds:.0f}s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m ago"
    return f"{seconds / 3600:.1f}h ago"


def format_status(status: dict, statuses: dict[str, dict]) -> str:
    """Members as the node asked sees them, then one row of figures per node as that node reports them."""
    lines = [f"ring: {status['partitions']:,} partitions, n={status['n']}, r={status['r']}, w={status['w']}, "
             f"version {status['ring_version']}"
             + (f" (moving to {status['next_ring_version']})" if status.get("next_ring_version") else "")]
    rows = []
    for member in status["members"]:
        node = statuses.get(member["id"], {})
        storage = node.get("storage", {})
        ae = node.get("antientropy", {})
        repair = node.get("repair", {})
        transfers = node.get("transfers", {})
        if "error" in node:
            figures = [None] * 7
        else:
            figures = [storage.get("keys"), human_bytes(storage.get("disk_bytes")),
                       ",".join(node.get("hints_for") or []) or "-", node.get("hints_delivered"),
                       f"{ae.get('exchanges', 0):,} / {_age(ae.get('last_exchange_age'))}",
                       repair.get("vnodes_repairing"), transfers.get("running")]
        rows.append([member["id"], member["address"], member["state"], member["partitions"], *figures])
    lines.append(_table(["node", "address", "state", "partitions", "keys", "disk", "hints for", "hints sent",
                         "anti-entropy", "repairing", "transfers"], rows))
    for node_id, node in statuses.items():
        if "error" in node:
            lines.append(f"{node_id}: no status ({node['error']})")
    return "\n".join(lines)


def transfers_report(status: dict, statuses: dict[str, dict]) -> dict:
    nodes = {}
    for node_id, node in statuses.items():
        nodes[node_id] = {"error": node["error"]} if "error" in node else node.get("transfers", {})
    return {"ring_version": status["ring_version"], "next_ring_version": status.get("next_ring_version"),
            "nodes": nodes}


def format_transfers(report: dict) -> str:
    if report["next_ring_version"] is None:
        head = f"no ring change in progress (ring version {report['ring_version']})"
    else:
        head = f"moving from ring version {report['ring_version']} to {report['next_ring_version']}"
    rows, moving = [], []
    for node_id, t in report["nodes"].items():
        if "error" in t:
            rows.append([node_id, None, None, None, None, None, None, None])
            continue
        rows.append([node_id, t.get("running"), t.get("pending_cluster_wide"), t.get("completed"),
                     t.get("objects_sent"), t.get("objects_received"), human_bytes(t.get("bytes_sent")),
                     t.get("handing_off")])
        moving += [f"  {node_id} -> {item['target']}: partition {item['partition']}"
                   for item in t.get("in_progress", [])]
    lines = [head, _table(["node", "running", "pending", "completed", "objects sent", "objects received",
                           "bytes sent", "handing off"], rows)]
    if moving:
        lines += ["in progress:"] + moving
    lines += [f"{node_id}: no status ({t['error']})" for node_id, t in report["nodes"].items() if "error" in t]
    return "\n".join(lines)


def format_config(node_id: str, config: dict) -> str:
    """The settings as TOML lines (what a node.toml holding them would say)."""
    import json

    lines = [f"# effective settings of node {node_id}"]
    for name, value in config.items():
        if isinstance(value, dict):
            value = "{" + ", ".join(f"{json.dumps(k)} = {json.dumps(v)}" for k, v in value.items()) + "}"
        else:
            value = json.dumps(value)
        lines.append(f"{name} = {value}")
    return "\n".join(lines)
