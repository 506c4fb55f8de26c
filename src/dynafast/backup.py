"""Cluster backups: asking every node for its copy, and reading a backup back (what ``dynafast restore`` merges).

A cluster backup is a directory every node can write to: each node puts a consistent copy of its store in
``<node id>/`` (``dynafast.cluster.backup``), and ``backup.json`` here says when, which nodes, the ring, n and
the keys per node. Every node's copy is taken, so each partition is in it as many times as it has replicas that
were up (at least once, or the backup fails); the copies are taken one node after the other, so they are not
one instant of the cluster: the restore merges them by version, as the replicas themselves would.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from dynafast import _impl
from dynafast.cluster.backup import NODE_FILE, STORE_DIR
from dynafast.cluster.preflist import primaries
from dynafast.cluster.vnode import HINT, OBJECT, hint_object
from dynafast.errors import CorruptionError, DynafastError

MANIFEST = "backup.json"


def backup_cluster(client, directory, *, timeout: float, on_node=None) -> dict:
    """Ask every member that is up to copy its store into ``directory`` (absolute, as the nodes see it), then
    write ``backup.json``; the manifest as a dict. DynafastError when a partition has no copy at all."""
    directory = os.path.abspath(directory)
    if os.path.exists(os.path.join(directory, MANIFEST)):
        raise DynafastError(f"{directory} already holds a backup ({MANIFEST})")
    from dynafast.net.messages import Backup, Msg

    client.refresh_ring()
    ring = client._routing.ring
    status = client.status()
    nodes, skipped = [], []
    for member in status["members"]:
        if member["state"] in ("down", "left"):
            skipped.append(member["id"])
            continue
        reply = client._call(member["address"], Msg.BACKUP, Backup(directory), timeout)
        node = {"id": member["id"], "address": member["address"], **reply._asdict()}
        nodes.append(node)
        if on_node is not None:
            on_node(node)
    n = min(status["n"], len(ring.members))
    copied = {node["id"] for node in nodes}
    uncovered = [p for p in range(ring.partitions) if not copied & set(primaries(ring, p, n))]
    manifest = {
        "format": 1,
        "time": time.time(),
        "ring": ring.to_bytes().hex(),
        "ring_version": ring.version,
        "partitions": ring.partitions,
        "n": n,
        "nodes": nodes,
        "keys": {node["id"]: node["keys"] for node in nodes},
        "skipped": skipped,
    }
    Path(directory).mkdir(parents=True, exist_ok=True)
    (Path(directory) / MANIFEST).write_text(json.dumps(manifest, indent=1))
    if uncovered:
        raise DynafastError(f"no node holding partition(s) {uncovered[:10]} was up ({', '.join(skipped)} down): "
                            f"the backup in {directory} lacks them")
    return manifest


def read_manifest(directory) -> dict:
    path = Path(directory) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise DynafastError(f"{directory} holds no backup ({MANIFEST} is missing)") from None
    except ValueError as exc:
        raise DynafastError(f"{path} is damaged: {exc}") from None
    for node in manifest["nodes"]:
        if not (Path(directory) / node["id"] / NODE_FILE).exists():
            raise DynafastError(f"the copy of {node['id']} in {directory} is unfinished ({NODE_FILE} is missing)")
    return manifest


def node_objects(node_dir):
    """(key, Siblings) of every object and hint in one node's copy, read with the storage engine.

    The copy is opened through a scratch directory of hard links: opening a store writes (a new active segment,
    the manifest, hint files), and the backup must stay as it was. The one file the engine may cut (the segment
    that was being written, when its tail is torn) is copied rather than linked.
    """
    source = Path(node_dir) / STORE_DIR
    try:
        scratch = tempfile.mkdtemp(prefix=".read-", dir=node_dir)
    except OSError:  # a read-only backup: the files are copied to the temporary directory instead of linked
        scratch = tempfile.mkdtemp(prefix="dynafast-read-")
    try:
        data = sorted(name for name in os.listdir(source) if name.endswith(".data"))
        for name in os.listdir(source):
            if data and name == data[-1]:
                shutil.copyfile(source / name, os.path.join(scratch, name))
            elif name.endswith((".data", ".hint")) or name == "MANIFEST":
                try:
                    os.link(source / name, os.path.join(scratch, name))
                except OSError:
                    shutil.copyfile(source / name, os.path.join(scratch, name))
        siblings = _impl.vclock.Siblings
        store = _open(scratch)
        try:
            for stored_key in store.keys():
                stored_key = bytes(stored_key)
                try:
                    raw = store.get(stored_key)
                except CorruptionError:
                    continue  # another node's copy, or none: what a damaged replica would have served
                if raw is None:
                    continue
                if stored_key[:1] == OBJECT:
                    yield stored_key[3:], siblings.from_bytes(raw)
                elif stored_key[:1] == HINT:
                    yield bytes(stored_key[stored_key.index(b"\0") + 3:]), siblings.from_bytes(hint_object(raw))
        finally:
            store.close()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _open(path):
    import dynafast

    return dynafast.open(path, background_merge=False, flush_interval=0, max_key_size=0xFFFF,
                         max_value_size=0x7FFFFFFF)


def merged_objects(directory, on_node=None) -> dict:
    """key -> Siblings: every version of every key in every node's copy, reconciled with the vector clocks
    (concurrent versions stay siblings; a delete newer than a value wins)."""
    manifest = read_manifest(directory)
    merged: dict[bytes, object] = {}
    for node in manifest["nodes"]:
        records = 0
        for key, obj in node_objects(Path(directory) / node["id"]):
            records += 1
            found = merged.get(key)
            merged[key] = obj if found is None else obj.sync(found)
        if on_node is not None:
            on_node(node["id"], records)
    return merged
