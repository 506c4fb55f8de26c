"""Restore a cluster backup into a running cluster of any size (``dynafast restore``).

Every node's copy is read offline with the storage engine (``dynafast.backup``) and the versions of each key are
merged with the vector clocks. Each key then goes, with its clock, to every replica of its partition under the
target cluster's ring (RESTORE: reconciled into the replica as a partition transfer is, durable before the
reply), in batches per partition, a bounded number in flight. Keys whose merged version is a delete are not
written: the target is a new cluster, where an absent key reads as a deleted one.
"""
from __future__ import annotations

import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

from dynafast.backup import merged_objects
from dynafast.errors import DynafastError, Timeout, Unavailable

BATCH_KEYS = 256
BATCH_BYTES = 1 << 20
ATTEMPTS = 3


def batches(merged: dict, ring, n: int):
    """(partition, keys, encoded objects) per partition of ``ring``, each at most BATCH_KEYS keys or about
    BATCH_BYTES; deleted keys left out."""
    by_partition: dict[int, list] = {}
    for key, obj in merged.items():
        if not obj.is_deleted():
            by_partition.setdefault(ring.partition_of(key), []).append((key, obj.to_bytes()))
    for partition, items in sorted(by_partition.items()):
        keys, raws, size = [], [], 0
        for key, raw in items:
            keys.append(key)
            raws.append(raw)
            size += len(key) + len(raw)
            if len(keys) >= BATCH_KEYS or size >= BATCH_BYTES:
                yield partition, keys, raws
                keys, raws, size = [], [], 0
        if keys:
            yield partition, keys, raws


def restore(client, directory, *, timeout: float, in_flight: int = 8, on_read=None, progress=None) -> dict:
    """Write the backup in ``directory`` into the cluster ``client`` talks to; a summary dict.

    ``on_read(node, records)`` after each node's copy is read; ``progress(keys_done, keys_total)`` as batches
    are acknowledged by all their replicas.
    """
    from dynafast.net.messages import Msg, Restore

    started = time.monotonic()
    merged = merged_objects(directory, on_read)
    read_seconds = time.monotonic() - started
    client.refresh_ring()
    ring, addresses = client._routing.ring, client._routing.addresses
    n = min(client.status()["n"], len(ring.members))
    work = list(batches(merged, ring, n))
    total = sum(len(keys) for _, keys, _ in work)
    deleted = sum(1 for obj in merged.values() if obj.is_deleted())
    siblings = sum(1 for obj in merged.values() if len(obj.live_values()) > 1)

    def send(partition, keys, raws):
        """The batch to every replica of its partition, each tried a few times."""
        for node in ring.replicas(partition, n):
            for attempt in range(ATTEMPTS):
                try:
                    client._call(addresses[node], Msg.RESTORE, Restore(partition, keys, raws), timeout)
                    break
                except (Unavailable, Timeout) as exc:
                    if attempt == ATTEMPTS - 1:
                        raise DynafastError(f"restore of partition {partition} into {node} failed: {exc}") from None
                    time.sleep(0.5 * (attempt + 1))
        return len(keys)

    done = 0
    if progress is not None:
        progress(done, total)
    with ThreadPoolExecutor(max_workers=in_flight) as pool:
        pending = set()
        for batch in work:
            if len(pending) >= in_flight:  # bounded: at most in_flight batches sent and not yet acknowledged
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                done += sum(f.result() for f in finished)
                if progress is not None:
                    progress(done, total)
            pending.add(pool.submit(send, *batch))
        for future in pending:
            done += future.result()
            if progress is not None:
                progress(done, total)
    return {
        "directory": str(directory),
        "keys": len(merged),
        "written": done,
        "deleted": deleted,
        "with_siblings": siblings,
        "batches": len(work),
        "replicas": n,
        "partitions": ring.partitions,
        "read_seconds": round(read_seconds, 3),
        "seconds": round(time.monotonic() - started, 3),
    }
