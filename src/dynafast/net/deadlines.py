"""Deadlines for many short requests on one event loop, with one loop timer per tick instead of one per request.

A loop timer per request (``loop.call_at``) costs more than the rest of a local request. The wheel puts every
deadline that falls in the same tick (5 ms by default) into one bucket with one timer; a deadline fires up to
one tick late, never early. A request that finishes cancels its deadline, which leaves the bucket at once: its
callback (and whatever that holds) is freed then, not seconds later when the bucket's timer runs. Every request
and every replica call adds one: the wheel is compiled with the peer connections that use it most.
"""
from dynafast._impl import peer

DeadlineWheel = peer.DeadlineWheel  # the build's: dynafast._core.peer, or its reference in _ref.peer

__all__ = ["DeadlineWheel"]
