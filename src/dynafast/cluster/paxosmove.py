"""Moving a partition's Paxos state with it when the cluster changes shape.

A transfer (``transfers``) streams a moving partition's objects from one of its old replicas. For conditional
writes that is not enough: a value Paxos chose was accepted by a quorum of the old replicas, not necessarily by
the one that streams, and a new replica must also keep the acceptors' promises and unfinished proposals. Without
them, a round after the change could prepare on the new replica and on an old one that missed the choice, find
both stale, and decide from a state without the chosen value: an acknowledged conditional write lost.

So before a transfer counts as done, its sender reads the partition's Paxos state from a quorum of its old
replicas, a page of keys at a time, merges it key by key (``paxos.merged``: the highest promise and commit, the
last accepted proposal; the objects reconciled) and installs it on the new replica, which merges it with what
rounds under way wrote there meanwhile. An old replica answers only once it holds the ring view with the next
ring, and from then on refuses rounds made for the old view (``paxos.RingViews``), so nothing can be chosen
behind the read's back; rounds made for the new view already count the new replica as a pending one
(``Paxos.participants``).

Why that suffices: a value chosen before the change was accepted by a quorum of the old replicas, which meets the
quorum read here; one chosen during the change was accepted by the new replica itself. Once the next ring is
active, a quorum of the new replicas either holds a new one, which holds what an old quorum held, or is made of
old replicas only, and then it is an old quorum.

The price: a ring change completes only once, for each moving partition, a majority of its old replicas answer.
"""
from __future__ import annotations

import asyncio
import heapq
import logging

from dynafast.cluster.paxos import PaxosState, merged, paxos_key, paxos_prefix, quorum_of
from dynafast.cluster.preflist import primaries
from dynafast.errors import CorruptionError, ProtocolError, Unavailable
from dynafast.net.messages import Msg, parse

log = logging.getLogger("dynafast.paxosmove")

PAGE_KEYS = 256
PAGE_BYTES = 1 << 20  # a page ends once its objects and states reach this many bytes


def combine(pages) -> tuple[list, bytes | None]:
    """Merge snapshot pages of several old replicas: ([(key, [states], [objects])...] in key order, the last key the
    merge covers, or None when it covers everything after the page start). A page that ended at its size limit
    bounds the merge: keys past its last one may be on that replica's next page."""
    ends = [page.keys[-1] for page in pages if page.more and page.keys]
    end = min(ends) if ends else None
    found: dict[bytes, tuple[list, list]] = {}
    for page in pages:
        for key, state, obj in zip(page.keys, page.states, page.objects, strict=True):
            if end is not None and key > end:
                break
            states, objects = found.setdefault(key, ([], []))
            states.append(state)
            if obj:
                objects.append(obj)
    return [(key, *found[key]) for key in sorted(found)], end


class PaxosMoves:
    """Both sides of moving a partition's Paxos state: the old replicas' PAXOS_SNAPSHOT, the new replica's
    PAXOS_INSTALL, and ``move``, which the transfer's sender runs.

    Ports: the node's id, a membership view, the acceptor check and the ring views of Paxos (the same rules
    fence these messages as its rounds), versions (to reconcile objects), the vnodes and their store, durability
    and the transport.
    """

    def __init__(self, *, me, membership, check, views, versions, vnodes, durability, transport,
                 peer_timeout: float = 5.0):
        self.me = me
        self.membership = membership
        self._check = check  # (partition, view): raises unless this node may answer as an acceptor
        self.views = views
        self.versions = versions
        self.vnodes = vnodes
        self.store = vnodes.store
        self.durability = durability
        self.transport = transport
        self.peer_timeout = peer_timeout
        self.keys_moved = 0

    # -- an old replica: a page of its Paxos state ---------------------------------------------------------
    async def handle_snapshot(self, request):
        partition, view, after = request
        self._check(partition, view)
        prefix = paxos_prefix(partition)
        cut = len(prefix)
        names = (bytes(stored[cut:]) for stored in self.store.keys(prefix=prefix))
        page = heapq.nsmallest(PAGE_KEYS + 1, (k for k in names if after is None or k > after))
        keys, states, objects, size = [], [], [], 0
        more = False
        for key in page:
            if len(keys) == PAGE_KEYS or size >= PAGE_BYTES:
                more = True
                break
            state = self.store.get(paxos_key(partition, key))
            if state is None:
                continue
            try:
                obj = self.vnodes.get_raw(partition, key)
            except CorruptionError:
                obj = None  # the other old replicas' copies stand in; anti-entropy mends this one
            keys.append(key)
            states.append(bytes(state))
            objects.append(b"" if obj is None else bytes(obj))
            size += len(key) + len(state) + len(objects[-1])
        return Msg.PAXOS_SNAPSHOT_REPLY, (keys, states, objects, more)

    # -- the new replica: merge what a quorum of the old ones held ---------------------------------------------
    async def handle_install(self, request):
        partition, view, keys, states, objects = request
        self._check(partition, view)
        if not len(keys) == len(states) == len(objects):
            raise ProtocolError("a Paxos install needs a state and an object (or none) for each key")
        try:
            incoming = [PaxosState.from_bytes(raw) for raw in states]
            decoded = [self.versions.Siblings.from_bytes(obj) if obj else None for obj in objects]
        except Exception as exc:  # noqa: BLE001 - whatever does not decode is refused whole, before any write
            raise ProtocolError(f"a Paxos install that does not decode: {exc}") from exc
        for key, state, obj in zip(keys, incoming, decoded):
            # The object first, then the state, as a commit writes them: a crash between keeps the value.
            if obj is not None:
                self.vnodes.merge_in(partition, key, obj)
            name = paxos_key(partition, key)
            held = self.store.get(name)
            if held is not None:
                state = merged([state, PaxosState.from_bytes(held)])
            self.store.put(name, state.to_bytes())
        await self.durability.wait()
        return Msg.PAXOS_INSTALL_REPLY, (len(keys),)

    # -- the transfer's sender ------------------------------------------------------------------------------
    async def move(self, partition: int, target: str, state) -> int:
        """Install on ``target`` the Paxos state of ``partition`` merged from a quorum of its replicas under
        ``state``'s ring; return how many keys that was. Unavailable when too few of them answer (the transfer
        is retried later)."""
        view = self.views.of(state)
        old = list(primaries(state.ring, partition, state.ring.n))
        required = quorum_of(len(old))
        after = None
        moved = 0
        while True:
            pages = await self._pages(old, required, partition, view, after)
            entries, end = combine(pages)
            if entries:
                keys, states, objects = [], [], []
                for key, key_states, key_objects in entries:
                    keys.append(key)
                    states.append(merged([PaxosState.from_bytes(raw) for raw in key_states]).to_bytes())
                    found = [self.versions.Siblings.from_bytes(obj) for obj in key_objects]
                    objects.append(self.versions.reconcile(found).to_bytes() if found else b"")
                fields = (partition, view, keys, states, objects)
                if target == self.me:
                    await self.handle_install(parse(Msg.PAXOS_INSTALL, fields))
                else:
                    await self.transport.call(self.membership.address_of(target), Msg.PAXOS_INSTALL, fields,
                                              self.peer_timeout)
                moved += len(keys)
            if end is None:
                self.keys_moved += moved
                return moved
            after = end

    async def _pages(self, old, required, partition, view, after) -> list:
        fields = (partition, view, after)

        async def page(node):
            if node == self.me:
                reply_type, reply = await self.handle_snapshot(parse(Msg.PAXOS_SNAPSHOT, fields))
            else:
                reply_type, reply = await self.transport.call(self.membership.address_of(node), Msg.PAXOS_SNAPSHOT,
                                                              fields, self.peer_timeout)
            return parse(Msg.PAXOS_SNAPSHOT_REPLY, reply)

        results = await asyncio.gather(*(page(node) for node in old), return_exceptions=True)
        pages = [r for r in results if not isinstance(r, BaseException)]
        if len(pages) < required:
            errors = "; ".join(f"{node}: {r}" for node, r in zip(old, results) if isinstance(r, BaseException))
            raise Unavailable(f"the Paxos state of partition {partition}: {len(pages)} of its {len(old)} replicas "
                              f"answered, {required} needed ({errors})")
        return pages
