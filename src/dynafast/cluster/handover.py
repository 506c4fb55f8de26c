"""Handing objects a node must not keep (a vnode it no longer owns, a hint whose owner is gone) to the nodes that
hold their partition now, before the node lets go of them.

The objects travel as a TRANSFER batch: the receiver reconciles each one with what it stores (siblings merged,
nothing newer replaced) and answers only once the batch is on disk, so an answered batch may be dropped here.
"""
from __future__ import annotations

import asyncio

from dynafast.cluster.preflist import primaries
from dynafast.errors import DynafastError, Unavailable
from dynafast.net.messages import Msg

REFUSED = -1  # TRANSFER_REPLY's count when an old owner's copy comes too late to be taken


class HandOffRefused(DynafastError):
    """A primary refused an old owner's copy: the ring change is older than its tombstones are held back."""


def live_primaries(membership, partition: int, me: str, exclude: str | None = None) -> list[str]:
    """The primaries of ``partition`` under the active ring that are up, other than ``me`` (and ``exclude``).

    A primary that is down is not waited for: its fellow primaries get the objects, and it catches up from them
    (anti-entropy, read repair) as after any outage.
    """
    ring = membership.state.ring
    return [node for node in primaries(ring, partition, ring.n)
            if node != me and node != exclude and membership.is_up(node)]


async def give(transport, membership, targets, partition: int, keys, raws, timeout: float, *,
               hints: bool = False) -> None:
    """Send one batch to every node of ``targets``; return once each acknowledged it durably, raise otherwise.
    ``hints``: the batch is hinted writes, which a primary takes however long after a ring change they come."""
    if not targets:
        raise Unavailable(f"no primary of partition {partition} is up to take its objects")
    fields = (partition, list(keys), list(raws), True) if hints else (partition, list(keys), list(raws))
    results = await asyncio.gather(
        *(transport.call(membership.address_of(node), Msg.TRANSFER, fields, timeout) for node in targets),
        return_exceptions=True)
    for node, result in zip(targets, results):
        if isinstance(result, BaseException):
            raise result
        if result[1][0] == REFUSED:
            raise HandOffRefused(f"{node} no longer takes copies of partition {partition}")
