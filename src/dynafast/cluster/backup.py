"""A node's part of a cluster backup: a consistent copy of its store, and what is needed to read it.

``write`` puts into ``<directory>/<node id>/``:

- ``store/``: the store as of the request (``Store.copy_into``: sealed segments hard-linked, the segment being
  written copied up to its synced length, a MANIFEST), openable by ``dynafast.open`` as any store;
- ``node.json``, written last (a node directory without it is an unfinished copy): the node, when, the ring it
  had (hex of the ring's bytes), n, the partitions it was a primary of, and the figures of the copy.

What the store holds is every object of the vnodes the node keeps and the hints it keeps for other nodes; the
restore tool reads both (``dynafast.restore``).
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

from dynafast.cluster.preflist import primaries
from dynafast.cluster.vnode import OBJECT
from dynafast.errors import DynafastError

NODE_FILE = "node.json"
STORE_DIR = "store"
FORMAT = 1


def write(store, directory: str, node_id: str, ring, n: int) -> dict:
    """Copy ``store`` into ``directory``/``node_id``; the figures of BACKUP_REPLY, as a dict."""
    if not os.path.isabs(directory):
        raise DynafastError(f"the backup directory must be an absolute path on the node, not {directory!r}")
    target = Path(directory) / node_id
    try:
        keys = store.count(OBJECT)
        copied = store.copy_into(target / STORE_DIR)
        info = {
            "format": FORMAT,
            "node": node_id,
            "time": time.time(),
            "ring": ring.to_bytes().hex(),
            "ring_version": ring.version,
            "n": n,
            "partitions": [p for p in range(ring.partitions) if node_id in primaries(ring, p, n)],
            "keys": keys,
            **copied,
        }
        temporary = target / (NODE_FILE + ".tmp")
        temporary.write_text(json.dumps(info, indent=1))
        os.replace(temporary, target / NODE_FILE)
    except OSError as exc:  # FileExistsError included: a copy is never written over another
        raise DynafastError(f"backup of {node_id} into {target} failed: {exc}") from None
    return {"directory": str(target), "keys": keys, **copied}
