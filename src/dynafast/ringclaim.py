"""The claim: which member owns each of the Q partitions of a ring.

Both builds of the ring (``dynafast._core.ring`` and its reference ``dynafast._ref.ring``) call ``claim``
here: it runs only when membership changes, so it is plain Python, and the rings keep only the lookups.

What the claim guarantees, for S members, replication factor N and Q partitions:

* Balance, always: every member owns floor(Q/S) or ceil(Q/S) partitions.
* Spread: any W consecutive partitions (wrapping) have W distinct owners, where
  ``W = min(N, S, Q // ceil(Q/S))`` (see ``spread_window``). W == N whenever S >= N and ceil(Q/S) * N <= Q,
  which is also the exact condition under which a balanced layout with N distinct can exist at all (a member
  owning ceil(Q/S) partitions needs N - 1 foreign partitions after each of its own); the claim reaching W
  for every fresh layout was checked for every power-of-two Q up to 4096, S up to 40 (and 50..300), N 2..5.
  When W < N the claim keeps the largest window that is possible, and ``replicas()`` still returns N
  distinct nodes by walking on.
* Zones: when zones are set and there are at least N distinct zones, the claim first looks for a layout in
  which any N consecutive partitions (W when W < N) belong to distinct zones; it finds one at least when the
  zones have equal numbers of members and Q is a multiple of S (tested). When it finds none it keeps the
  node guarantee above and zones are best effort.
* Movement: with ``previous``, members keep what they owned except what balance or spread forces them to
  give up. Adding one member moves exactly its share when W does not grow. Removing one member from a fresh
  ring moves exactly its share when S >= N + 4 (every member tried for power-of-two Q 64..1024, S up to 20)
  and at most 1.2x at S = N + 3; along a run of joins and leaves every step stays within 1.1x (tested, and
  1.00 in every measured case, see benchmarks/RESULTS.md). Two things make that possible: fresh layouts
  shuffle each lap (``_mix``), so a member's ring neighbours differ from lap to lap and the members left
  can take its partitions without clashing; and vacancies are filled by least-cost chains (``_Filler``).
  When W changes (S close to N) or no chain exists, the layout is rebuilt, turned and relabelled to keep
  as many owners as it can, and for S <= 5 (N = 3, Q <= 1024) also searched for the spread layout nearest
  the previous one (``_nearest``): 3 -> 4 moves 1.05-1.31x, 5 -> 4 1.44-1.62x, 3 -> 2 about 2x (two members
  must alternate).
* Determinism: the same inputs give the same layout (lap orders come from a fixed hash, not a random source).
"""
import itertools
import struct

import mmh3
import numpy


def spread_window(partitions, members, n):
    """W: the number of consecutive partitions the claim makes distinct (see the module docstring)."""
    most = -(-partitions // members)  # ceil
    return max(1, min(n, members, partitions // most))


def zone_window(partitions, members, n, zones):
    """How many consecutive partitions the claim tries to put in distinct zones (0: zones not honoured)."""
    distinct = len(set(zones[m] for m in members))
    if distinct < n or n < 2:
        return 0
    return min(n, spread_window(partitions, len(members), n))


def _conflicts_at(owner, keys, p, key, w, q, skip=-1):
    """Does giving partition p an owner with ``key`` clash with another owner within w - 1 either side?"""
    for d in range(1, w):
        for r in ((p - d) % q, (p + d) % q):
            if r != skip:
                o = owner[r]
                if o >= 0 and keys[o] == key:
                    return True
    return False


def _repair(owner, keys, w, q, budget):
    """Swap owners of partition pairs (which keeps every count) until no window of w has a repeated key."""
    if w < 2:
        return True
    for _ in range(budget):
        bad = -1
        for p in range(q):
            if _conflicts_at(owner, keys, p, keys[owner[p]], w, q):
                bad = p
                break
        if bad < 0:
            return True
        a = owner[bad]
        fixed = False
        # Search partners outward from the clash so repairs stay local and deterministic.
        for d in range(1, q):
            r = (bad + d) % q
            b = owner[r]
            if keys[b] == keys[a]:
                continue
            owner[bad], owner[r] = b, a
            if not _conflicts_at(owner, keys, bad, keys[b], w, q) and not _conflicts_at(
                owner, keys, r, keys[a], w, q
            ):
                fixed = True
                break
            owner[bad], owner[r] = a, b
        if not fixed:
            # No clean swap: accept one that lowers the local clash count, else give up.
            before = _local(owner, keys, bad, w, q)
            for d in range(1, q):
                r = (bad + d) % q
                b = owner[r]
                if keys[b] == keys[a]:
                    continue
                old = before + _local(owner, keys, r, w, q)
                owner[bad], owner[r] = b, a
                if _local(owner, keys, bad, w, q) + _local(owner, keys, r, w, q) < old:
                    fixed = True
                    break
                owner[bad], owner[r] = a, b
            if not fixed:
                return False
    return False


def _local(owner, keys, p, w, q):
    k = keys[owner[p]]
    return sum(1 for d in range(1, w) for r in ((p - d) % q, (p + d) % q) if keys[owner[r]] == k)


def _laps(q, counts, w):
    """The direct construction: L = max(counts) laps over the keys in order, keys with L - 1 turns sitting
    out one lap each. Lap 0 is full and the sit-outs of laps 1..L-1 are runs of increasing keys, so between
    two turns of a key at most max(run) = m others sit out: every gap is >= k - m >= w when runs are <= m.
    Covers every case with K <= (L - 1) * (k - w) (K keys sitting out); None otherwise.
    """
    k = len(counts)
    laps = max(counts)
    if any(c not in (laps, laps - 1) for c in counts):
        return None
    out_keys = [i for i in range(k) if counts[i] < laps]
    room = k - w
    if out_keys and (laps < 2 or len(out_keys) > (laps - 1) * room):
        return None
    sit_out = {}
    blocks = laps - 1
    for j, i in enumerate(out_keys):
        sit_out[i] = 1 + (j * blocks) // len(out_keys)  # even runs over laps 1..L-1, increasing keys
    rows = [[i for i in range(k) if sit_out.get(i) != lap] for lap in range(laps)]
    seq = [i for row in rows for i in row]
    if not _spread_ok(seq, w):
        return None
    mixed = _mix(rows, w)
    return mixed if mixed is not None and _spread_ok(mixed, w) else seq


def _mix(rows, w):
    """The laps of ``_laps`` each in its own fixed pseudo-random order, or None.

    In plain laps a key has the same ring neighbours in every lap, so when it leaves, the few members beside
    it can take none of its partitions and each needs an extra swap. Shuffled laps give every key different
    neighbours in each lap. Each lap tries a few orders until the windows across the join with the previous
    lap (and, for the last lap, with the first) are distinct.
    """
    out = []
    for lap, row in enumerate(rows):
        for attempt in range(64):
            order = sorted(row, key=lambda i: mmh3.hash64(struct.pack("<III", lap, attempt, i), seed=1)[0])
            tail = out[-(w - 1) :] if w > 1 and out else []
            if not _seam_ok(tail, order, w):
                continue
            if lap == len(rows) - 1 and not _seam_ok((out + order)[-(w - 1) :], out[: w - 1], w):
                continue
            out.extend(order)
            break
        else:
            return None
    return out


def _seam_ok(tail, head, w):
    joined = list(tail) + list(head[: w - 1])
    return all(len(set(joined[p : p + w])) == len(joined[p : p + w]) for p in range(len(joined)))


def _spread_ok(seq, w):
    q = len(seq)
    for p in range(q):
        if len(set(seq[(p + d) % q] for d in range(w))) != w:
            return False
    return True


def _sequence(q, counts, w, budget):
    """A cyclic sequence of length q holding key i counts[i] times, no key twice within any w consecutive.

    Depth-first search, most urgent key first (the one with the least room left for its remaining turns,
    counting the wrap back to its first turn), with that room as the pruning test. Returns None when the
    step budget runs out.
    """
    k = len(counts)
    rem = list(counts)
    never = -(q + w)
    last = [never] * k
    first = [-1] * k
    seq = []
    undo = []  # per position: (key, its previous last, whether it was its first turn)
    stack = []
    steps = 0

    def candidates(p):
        out = []
        for i in range(k):
            c = rem[i]
            if not c:
                continue
            start = first[i] if first[i] >= 0 else p
            limit = start + q - w  # latest position of its last turn, so the wrap keeps a gap of w
            earliest = max(p, last[i] + w)
            if earliest + (c - 1) * w > limit:
                return []  # some key can no longer fit its turns: dead end
            if earliest == p:
                out.append((limit - (p + (c - 1) * w), -c, i))
        out.sort()
        return [i for _, _, i in out]

    stack.append(candidates(0))
    while True:
        steps += 1
        if steps > budget:
            return None
        cands = stack[-1]
        if not cands:
            stack.pop()
            if not undo:
                return None
            i, prev_last, was_first = undo.pop()
            seq.pop()
            rem[i] += 1
            last[i] = prev_last
            if was_first:
                first[i] = -1
            continue
        i = cands.pop(0)
        p = len(seq)
        undo.append((i, last[i], first[i] < 0))
        if first[i] < 0:
            first[i] = p
        last[i] = p
        rem[i] -= 1
        seq.append(i)
        if len(seq) == q:
            return seq
        stack.append(candidates(p + 1))


def _fresh(q, s, targets, keys, w):
    """A layout built from scratch: a key sequence from ``_sequence``, then members dealt into their key's
    turns in rotation. Falls back to round robin laps (balanced, spread left to ``_repair``)."""
    groups = {}
    for m in range(s):
        if targets[m]:
            groups.setdefault(keys[m], []).append(m)
    order = sorted(groups)
    counts = [sum(targets[m] for m in groups[key]) for key in order]
    seq = None
    if w >= 2:
        seq = _laps(q, counts, w)
        if seq is None:
            seq = _sequence(q, counts, w, budget=20 * q + 1000)
    if seq is None:
        seq = []
        rem = list(counts)
        while len(seq) < q:
            for i in range(len(order)):
                if rem[i]:
                    rem[i] -= 1
                    seq.append(i)
    left = {key: {m: targets[m] for m in groups[key]} for key in order}
    turn = {key: 0 for key in order}
    owner = []
    for i in seq:
        key = order[i]
        members = groups[key]
        # Rotate through the key's members, skipping those already at their target.
        while True:
            m = members[turn[key] % len(members)]
            turn[key] += 1
            if left[key][m]:
                left[key][m] -= 1
                owner.append(m)
                break
    return owner


def claim(partitions, members, n, zones, previous=None):
    """Owner index (into ``members``) of each partition.

    ``members`` is the sorted tuple of node ids, ``zones`` maps every member to its zone label, ``previous``
    is the previous owner (node id) of each partition or None.
    """
    q = partitions
    s = len(members)
    index = {m: i for i, m in enumerate(members)}
    w = spread_window(q, s, n)
    zw = zone_window(q, members, n, zones)
    zone_ids = {}
    zone_of = [zone_ids.setdefault(zones[m], len(zone_ids)) for m in members]
    node_keys = list(range(s))

    # Targets: floor(Q/S) each, the Q mod S extra partitions go to those who already hold the most.
    base, extra = divmod(q, s)
    held = [0] * s
    owner = [-1] * q
    if previous is not None:
        for p, node in enumerate(previous):
            i = index.get(node, -1)
            owner[p] = i
            if i >= 0:
                held[i] += 1
    rank = sorted(range(s), key=lambda i: (-held[i], i))
    targets = [base] * s
    for i in rank[:extra]:
        targets[i] += 1

    attempts = []
    if zw >= 2:
        attempts.append((zone_of, zw))
    attempts.append((node_keys, w))

    best = None
    for keys, win in attempts:
        layout = _incremental(q, s, owner, held, targets, keys, win) if previous is not None else None
        if layout is not None:
            return layout
        fresh = _fresh(q, s, targets, keys, win)
        ok = _repair(fresh, keys, win, q, budget=4 * q)
        if ok:
            if previous is not None:
                fresh = _align(fresh, owner, targets, keys)
                near = _nearest(q, s, owner, targets, keys, win, fresh)
                if near is not None and _kept(near, owner) > _kept(fresh, owner):
                    return near
            return fresh
        if best is None:
            best = fresh
    # Should not happen for the node window (W is always achievable); keep the balanced layout regardless.
    return best


def _incremental(q, s, prev, held, targets, keys, w):
    """Start from the previous layout and move as little as possible; None when repair fails."""
    owner = list(prev)
    count = list(held)
    # 1. Give up partitions that now clash (e.g. the window grew or zones changed).
    if w >= 2:
        for p in range(q):
            o = owner[p]
            if o >= 0 and _conflicts_at(owner, keys, p, keys[o], w, q):
                owner[p] = -1
                count[o] -= 1
    # 2. Members above target give up partitions, chosen far from other vacancies so that the members
    #    filling them (typically one new member) can take them without clashing.
    excess = [max(0, count[i] - targets[i]) for i in range(s)]
    if sum(excess):
        dist = _distances(owner, q)
        for _ in range(sum(excess)):
            best, best_key = -1, None
            for p in range(q):
                o = owner[p]
                if o >= 0 and excess[o] > 0:
                    k = (dist[p], -p)
                    if best_key is None or k > best_key:
                        best, best_key = p, k
            o = owner[best]
            owner[best] = -1
            count[o] -= 1
            excess[o] -= 1
            _update_distances(dist, best, q)
    # 3. Fill the vacancies (see _Filler); whatever it cannot place goes to the neediest member and repair
    #    swaps it away.
    filler = _Filler(q, s, owner, prev, count, held, targets, keys, w)
    left = filler.fill()
    for p in left:
        i = filler.neediest()
        owner[p] = i
        count[i] += 1
    if _repair(owner, keys, w, q, budget=2 * q):
        return owner
    return None


class _Filler:
    """Fill vacancies with as few moves as possible, keeping balance and the spread window.

    Each vacancy is filled by a chain: member y0 (clash-free there) takes it, gives up one of its own
    partitions to y1, ... until a member that may still grow takes the last one. A link through a partition
    that has already moved in this claim is free (a vacancy is reassigned), a link through a partition still
    with its previous owner costs one move; the chain of least cost is found by 0-1 breadth-first search.
    Pass one allows only free links (a maximum matching of vacancies to members), pass two any link.

    Which members end at ceil(Q/S) is left open where balance allows: members that held more than floor(Q/S)
    keep their extra one, and the rest of the extras go to whichever members the chains reach.
    """

    def __init__(self, q, s, owner, prev, count, held, targets, keys, w):
        self.q, self.s, self.owner, self.prev, self.count, self.keys, self.w = q, s, owner, prev, count, keys, w
        base = min(targets)
        self.base = base
        # Fixed at base + 1: those that keep an extra partition they already had; the others may take one
        # of the remaining extras ("pool") if the chains need it.
        self.fixed = [targets[i] > base and held[i] > base for i in range(s)]
        self.pool = sum(1 for i in range(s) if targets[i] > base) - sum(self.fixed)
        self.parts = [set() for _ in range(s)]
        for p, o in enumerate(owner):
            if o >= 0:
                self.parts[o].add(p)

    def _room(self, i):
        """0: full; 1: below its floor (or its fixed target); 2: may take one of the pooled extras."""
        c = self.count[i]
        low = self.base + 1 if self.fixed[i] else self.base
        if c < low:
            return 1
        if not self.fixed[i] and c == self.base and self.pool > 0:
            return 2
        return 0

    def neediest(self):
        i = max(range(self.s), key=lambda i: (self._room(i) == 1, self._room(i) > 0, -self.count[i], -i))
        if self._room(i) == 2:
            self.pool -= 1
        return i

    def _moved(self, p):
        return self.owner[p] != self.prev[p]

    def fill(self):
        vacant = [p for p in range(self.q) if self.owner[p] < 0]
        left = [p for p in vacant if not self._chain(p, free_only=True)]
        return [p for p in left if not self._chain(p, free_only=False)]

    def _chain(self, v, free_only):
        owner, keys, w, q, s = self.owner, self.keys, self.w, self.q, self.s
        parent = {}
        cost = {}
        front, back = [], []  # two lists as a 0-1 deque of members
        for y in range(s):
            if not _conflicts_at(owner, keys, v, keys[y], w, q):
                parent[y] = (-1, v)
                cost[y] = 0
                front.append(y)
        front.reverse()  # pop() takes the lowest index first
        done = set()
        level = 0
        found = -1
        while front or back:
            if not front:
                front = back[::-1]
                back = []
                level += 1
            y = front.pop()
            if y in done or cost[y] != level:
                continue
            done.add(y)
            if self._room(y):
                found = y
                break
            for r in sorted(self.parts[y]):
                step = 0 if self._moved(r) else 1
                if step and free_only:
                    continue
                for z in range(s):
                    if z == y or z in done:
                        continue
                    c = level + step
                    if z in cost and cost[z] <= c:
                        continue
                    if _conflicts_at(owner, keys, r, keys[z], w, q):
                        continue
                    cost[z] = c
                    parent[z] = (y, r)
                    if step:
                        back.append(z)
                    else:
                        front.append(z)
        if found < 0:
            return False
        # Apply the chain, then check it: links close together on the ring can clash with each other.
        undo = []
        z = found
        while True:
            y, r = parent[z]
            undo.append((r, owner[r]))
            owner[r] = z
            if y < 0:
                break
            z = y
        if any(_conflicts_at(owner, keys, r, keys[owner[r]], w, q) for r, _ in undo):
            for r, old in reversed(undo):
                owner[r] = old
            return False
        for r, old in undo:
            if old >= 0:
                self.parts[old].discard(r)
            self.parts[owner[r]].add(r)
        if self._room(found) == 2:
            self.pool -= 1
        self.count[found] += 1
        return True


def _distances(owner, q):
    """Cyclic distance of each partition to the nearest vacancy (q when there is none)."""
    dist = [q] * q
    for p in range(q):
        if owner[p] < 0:
            _update_distances(dist, p, q)
    return dist


def _update_distances(dist, v, q):
    dist[v] = 0
    for d in range(1, q // 2 + 1):
        changed = False
        for r in ((v + d) % q, (v - d) % q):
            if dist[r] > d:
                dist[r] = d
                changed = True
        if not changed:
            break


def _kept(layout, prev):
    return sum(1 for a, b in zip(layout, prev) if a == b)


def _nearest(q, s, prev, targets, keys, w, start):
    """For few members (S close to N, where the window changes): the layout with the spread window closest
    to ``prev``, by dynamic programming over the last w - 1 owners (counts ignored), then balanced like an
    incremental claim. None when the state space is too large or balancing fails.
    """
    if w < 2 or s > 6 or any(keys[i] != i for i in range(s)):
        return None
    states = list(itertools.permutations(range(s), w - 1))
    if len(states) * s * q > 120_000:  # keeps the claim near 0.2 s; covers S <= 5, N = 3 up to Q = 1024
        return None
    first = tuple(start[: w - 1])  # the rebuilt layout's opening is known to close the cycle
    cost = {first: sum(1 for i, a in enumerate(first) if prev[i] != a)}
    back = []
    for p in range(w - 1, q):
        nxt, link = {}, {}
        for st in states:
            c = cost.get(st)
            if c is None:
                continue
            for x in range(s):
                if x in st:
                    continue
                ns = st[1:] + (x,)
                nc = c + (prev[p] != x)
                if nc < nxt.get(ns, q + 1):
                    nxt[ns] = nc
                    link[ns] = st
        cost = nxt
        back.append(link)
    end, best = None, q + 1
    for st in states:
        c = cost.get(st)
        if c is None or c >= best:
            continue
        joined = st + first
        if all(len(set(joined[i : i + w])) == w for i in range(len(joined) - w + 1)):
            end, best = st, c
    if end is None:
        return None
    out = [0] * q
    st = end
    for p in range(q - 1, w - 2, -1):
        out[p] = st[-1]
        st = back[p - w + 1][st]
    out[: w - 1] = list(first)
    held = [0] * s
    for o in out:
        held[o] += 1
    return _incremental(q, s, out, held, targets, keys, w)


def _align(layout, prev, targets, keys):
    """Turn (rotate, mirror) and relabel a fresh layout to keep as many previous owners as possible.

    Turning keeps balance and spread, and a rebuilt layout lines up with the old one far better at some
    offsets than at others. Each offset is scored by the best previous owner of each fresh member (an upper
    bound on what relabelling keeps); the best few are relabelled for real.
    """
    q, s = len(layout), len(targets)
    if s > 64:  # the score tables grow as S squared; large S rebuilds are rare (W < N only when S > Q / N)
        return _relabel(layout, prev, targets, keys)
    prev_arr = numpy.asarray(prev, dtype=numpy.int64)
    known = prev_arr >= 0
    base = numpy.asarray(layout, dtype=numpy.int64)
    scored = []
    for mirror in (False, True):
        seq = base[::-1] if mirror else base
        for k in range(q):
            turned = numpy.roll(seq, -k)
            table = numpy.bincount(turned[known] * s + prev_arr[known], minlength=s * s).reshape(s, s)
            scored.append((-int(table.max(axis=1).sum()), mirror, k))
    scored.sort()
    best, best_kept = None, -1
    for _, mirror, k in scored[:8]:
        seq = layout[::-1] if mirror else layout
        cand = _relabel(seq[k:] + seq[:k], prev, targets, keys)
        kept = sum(1 for a, b in zip(cand, prev) if a == b)
        if kept > best_kept:
            best, best_kept = cand, kept
    return best


def _relabel(layout, prev, targets, keys):
    """Rename members of a fresh layout so that as many partitions as possible keep their previous owner.

    Only members with the same target and the same key class (zone or self) are exchanged when keys are
    zones, and any equal-target members otherwise, so balance and spread are unchanged.
    """
    s = len(targets)
    node_keyed = all(keys[i] == i for i in range(s))
    overlap = {}
    for p, a in enumerate(layout):
        b = prev[p]
        if b >= 0:
            overlap[(a, b)] = overlap.get((a, b), 0) + 1
    pairs = sorted(overlap.items(), key=lambda kv: (-kv[1], kv[0]))
    rename = {}
    used = set()
    for (a, b), _ in pairs:
        if a in rename or b in used:
            continue
        if targets[a] != targets[b]:
            continue
        if not node_keyed and keys[a] != keys[b]:
            continue
        rename[a] = b
        used.add(b)
    # Everyone else maps within their own class, in order.
    free = sorted(i for i in range(s) if i not in used)
    for a in sorted(i for i in range(s) if i not in rename):
        for b in free:
            if targets[a] == targets[b] and (node_keyed or keys[a] == keys[b]):
                rename[a] = b
                free.remove(b)
                break
        else:  # cannot happen: the identity is always available
            rename[a] = a
    return [rename[a] for a in layout]
