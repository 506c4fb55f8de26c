# cython: language_level=3
"""The fast lanes: the RESP one (GET, and SET without options, of the keys this node alone holds, N=1, in C from
the parsed request to the reply bytes), and the replica one (REPLICA_PUT of a primary's copy, ``ReplicaPuts``, the
message a coordinator sends each other replica of a write). The plain-Python reference is dynafast._ref.lane.

The general path is ``resp.commands`` -> ``RequestCoordinator.read_local`` / ``replace_local`` -> ``Vnodes``; the
lane takes the same steps for the common case, against the same store, and gives every other case back to it
(``serve`` stops at the first request it does not answer):
- a command other than GET and SET key value, or a connection without the right (see ``serve``);
- a key over max_key_size, a value over max_value_size or one whose first byte is expiry's MARK (its stored form
  is an envelope);
- a key this node is not the one replica of, a ring changing shape, a node with damaged records on record;
- a stored object that does not read (checksum, decoding), holds more than one version, or whose value is an
  envelope (an expiry to check);
- a SET whose result has siblings to check against the limits.
So the lane answers exactly what the general path would, and never an error: errors are the general path's.

Most stored sets are read where they lie, without the objects the general path makes of them (``vclock.view_set``),
and a SET encodes its new set from that view straight into the store's write buffer (``put_superseding``,
``LogStore._put_plain``). Sets of other shapes, and writes the Merkle tree of their partition must hear of, go
through the objects (``_supersede``); the bytes stored are the same either way.
"""
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.bytearray cimport PyByteArray_GET_SIZE
from cpython.list cimport PyList_GET_ITEM, PyList_GET_SIZE
from cpython.tuple cimport PyTuple_GET_SIZE
from cpython.ref cimport PyObject
from libc.string cimport memcmp, memcpy

from libc.stdint cimport uint32_t, uint64_t
from dynafast._core.logstore cimport (LogStore, df_hash, df_item, df_keydir, df_kd_find, df_kd_find_h,
                                      df_kd_prefetch_item, df_kd_prefetch_slot)
from dynafast._core.reply cimport _bulk, _put
from dynafast._core.ring cimport key_token
from dynafast._core.vclock cimport (SetView, Siblings, put_superseding, siblings_from_bytes, superseding_bound,
                                    view_set)

cdef enum:
    MARK = 0xF5  # dynafast.cluster.expiry.MARK
    UNKNOWN = 0
    LOCAL = 1
    ELSEWHERE = 2
    PREFIX = 3  # b"o" + partition:u16be: dynafast.cluster.vnode.object_key
    SCRATCH = 4096  # the largest set a SET encodes in place (the store's compress_threshold if lower)
    FRESH_ACTOR = 21  # what a fresh actor adds to the prefix: its epoch, at most 20 digits
    # Who follows a write (Vnodes.on_write): no one; the Merkle trees, for the partitions they hold; someone else
    NOT_FOLLOWED = 0
    TREES = 1
    FOLLOWED = 2

READ = 1  # the connection may read (GET)
WRITE = 2  # and may write with dw 0 (SET answered once in the store's write buffer)
QUORUM = 4  # and its R, W and DW are the node's (Quorum may take its GET and SET)

cdef extern from "Python.h":
    PyObject* _Py_None "Py_None"

cdef extern from *:
    void __builtin_prefetch(const void *p) nogil


cdef inline bint _is(object arg, const char *upper, const char *lower, Py_ssize_t n) noexcept:
    """Whether ``arg`` (bytes) is the command name ``upper`` in any case."""
    cdef const char *p
    cdef Py_ssize_t i
    if type(arg) is not bytes or PyBytes_GET_SIZE(arg) != n:
        return False
    p = PyBytes_AS_STRING(arg)
    for i in range(n):
        if p[i] != upper[i] and p[i] != lower[i]:
            return False
    return True


cdef bytes _stored_key(bytes key, Py_ssize_t partition):
    """dynafast.cluster.vnode.object_key."""
    cdef Py_ssize_t n = PyBytes_GET_SIZE(key)
    cdef bytes stored = PyBytes_FromStringAndSize(NULL, PREFIX + n)
    cdef char *p = PyBytes_AS_STRING(stored)
    p[0] = c'o'
    p[1] = <char>(partition >> 8)
    p[2] = <char>(partition & 0xFF)
    memcpy(p + PREFIX, PyBytes_AS_STRING(key), n)
    return stored


cdef object _read(LogStore engine, bytes stored_key):
    """The stored object of a key (None: absent); raises what the general path would turn into damage."""
    cdef df_item *it = df_kd_find(&engine.kd, <const unsigned char *>PyBytes_AS_STRING(stored_key),
                                  PyBytes_GET_SIZE(stored_key))
    if it == NULL:
        return None
    raw = engine._value_at(it.seg, it.off, it.size)
    if raw is None:
        return None
    return siblings_from_bytes(<const unsigned char *>PyBytes_AS_STRING(raw), PyBytes_GET_SIZE(raw))


cdef inline bint _ours(const char *actor, Py_ssize_t alen, bytes base, bytes dotted) noexcept:
    """Whether ``actor`` is ours (kv679): ``base``, or one of the fresh actors this incarnation handed out,
    ``dotted`` + digits (Actors.issued)."""
    cdef Py_ssize_t j, n = PyBytes_GET_SIZE(dotted)
    if alen == PyBytes_GET_SIZE(base) and memcmp(actor, PyBytes_AS_STRING(base), alen) == 0:
        return True
    if alen <= n or memcmp(actor, PyBytes_AS_STRING(dotted), n) != 0:
        return False
    for j in range(n, alen):
        if not c'0' <= actor[j] <= c'9':
            return False
    return True


cdef bytes _stamping_actor(Siblings existing, bytes base, bytes dotted, object actors):
    """RequestCoordinator._stamping_actor: an actor of ours that our copy carries, else a fresh one."""
    cdef Py_ssize_t i
    cdef bytes actor
    if existing is not None:
        for i in range(existing.n):
            actor = <bytes>existing.ents[i].actor
            if _ours(PyBytes_AS_STRING(actor), PyBytes_GET_SIZE(actor), base, dotted):
                return actor
    return actors.fresh()


cdef class Lane:
    """The lane of one node's RESP listener."""

    cdef object requests  # cluster.requests.RequestCoordinator: routes, the stamping rule, the node's clock
    cdef object vnodes
    cdef object membership
    cdef object actors
    cdef LogStore engine
    cdef bint one_replica  # N=1: else the lane never answers
    cdef Py_ssize_t max_key
    cdef Py_ssize_t max_value
    cdef Py_ssize_t sibling_check
    cdef object ring  # the ring and down set `_where` was filled for (replaced, never mutated: identity tells)
    cdef object down
    cdef bytearray _where  # per partition: UNKNOWN, LOCAL or ELSEWHERE
    cdef int shift
    cdef bytes base  # the node's own actor
    cdef bytes dotted  # the prefix of the actors this incarnation hands out (Actors.issued)
    cdef object dotted_base  # the Actors.base it was made of
    cdef object trees  # antientropy.VnodeTrees (or None): whose hook the writes of its partitions go to
    cdef object hook  # the Vnodes.on_write ``followed`` was worked out for
    cdef int followed  # NOT_FOLLOWED, TREES or FOLLOWED (worked out by _open)
    cdef object built  # TREES: the trees built so far (partition -> tree)
    cdef unsigned char scratch[SCRATCH]  # a SET's new set, encoded in place
    cdef readonly Py_ssize_t written_in_place  # SETs stored by _supersede_in_place

    def __init__(self, requests, vnodes, engine, config, trees=None):
        if not isinstance(engine, LogStore):
            raise TypeError("the lane needs the compiled store")
        self.requests = requests
        self.vnodes = vnodes
        self.trees = trees
        self.hook = self  # (not a hook: _open works ``followed`` out the first time)
        self.membership = requests.membership
        self.actors = requests.actors
        self.engine = engine
        self.one_replica = config.n == 1
        self.max_key = config.max_key_size
        self.max_value = config.max_value_size
        self.sibling_check = requests.sibling_check
        self.base = requests.actor
        self.ring = None

    cdef bint _open(self) except -1:
        """Whether the lane may answer now; refreshes the partition table when the ring or the down set changed."""
        if not self.one_replica or self.engine.closed:
            return False
        state = self.membership.state
        if state is None or state.next_ring is not None:
            return False
        # Our actors, read afresh: a damaged record gives the node a new incarnation, whose writes must not be
        # stamped by the old one's actors (kv679).
        self.base = self.requests.actor
        base = self.actors.base
        if base is not self.dotted_base:  # a new lease of actors
            self.dotted_base = base
            self.dotted = base + b"."
        ring = state.ring
        down = self.membership.down()
        if ring is not self.ring or down is not self.down:
            self.ring = ring
            self.down = down
            self._where = bytearray(ring.partitions)
            self.shift = 64 - (ring.partitions.bit_length() - 1)
        hook = self.vnodes.on_write
        if hook is not self.hook:  # (the same bound method while no one sets another)
            self.hook = hook
            if hook is None:
                self.followed = NOT_FOLLOWED
            elif self.trees is not None and hook == self.trees.on_write:
                self.followed = TREES
                self.built = self.trees.trees
            else:
                self.followed = FOLLOWED
        return True

    cdef bint _local(self, Py_ssize_t partition, bytes key) except -1:
        cdef unsigned char where = self._where[partition]
        if where == UNKNOWN:
            where = LOCAL if self.requests._local_partition(key) is not None else ELSEWHERE
            self._where[partition] = where
        return where == LOCAL

    cpdef Py_ssize_t serve(self, list requests, Py_ssize_t start, bytearray out, int rights, bint resp3,
                           Py_ssize_t limit) except -1:
        """Answer ``requests[start:]`` into ``out`` while the lane can; where it stopped (the first request it
        leaves to the general path, or ``len(requests)``). ``rights``: READ and WRITE bits of the connection.
        It also stops once ``out`` holds ``limit`` bytes, for the caller to send them."""
        cdef Py_ssize_t i = start, count = PyList_GET_SIZE(requests), fetched = start
        cdef list args
        cdef object item, name
        cdef bint damaged, done
        cdef object now = None
        cdef long long ts = -1  # now, for the in-place writer (-1: out of its range, the object path's)
        if not rights or not self._open():
            return start
        damaged = bool(self.vnodes.damaged)
        while i < count and PyByteArray_GET_SIZE(out) < limit:
            if i == fetched and count - i >= 4:  # a pipeline: what its requests read comes from memory together
                fetched = min(count, i + 32)
                self._prefetch(requests, i, fetched)
            item = <object>PyList_GET_ITEM(requests, i)
            if type(item) is not list or PyList_GET_SIZE(item) == 0:
                break  # not a request the parser makes: the general path's to judge
            args = <list>item
            name = <object>PyList_GET_ITEM(args, 0)
            # Whatever fails (a full disk, a lease of actors that cannot be written) is the general path's to
            # answer: it runs the request again and replies with the error.
            try:
                if PyList_GET_SIZE(args) == 2 and rights & READ and _is(name, b"GET", b"get", 3):
                    done = self._get(<object>PyList_GET_ITEM(args, 1), out, resp3)
                elif (PyList_GET_SIZE(args) == 3 and rights & WRITE and not damaged
                        and _is(name, b"SET", b"set", 3)):
                    if now is None:
                        now = int(self.requests.clock.wall())
                        ts = now if 0 <= now < 1 << 63 else -1
                    done = self._set(<object>PyList_GET_ITEM(args, 1), <object>PyList_GET_ITEM(args, 2), now, ts,
                                     out)
                else:
                    done = False
            except Exception:  # noqa
                done = False
            if not done:
                break
            i += 1
        return i

    cdef _prefetch(self, list requests, Py_ssize_t start, Py_ssize_t end):
        """Ask the CPU for what ``requests[start:end]`` (at most 32) will read, before they are served: each key's
        slot in the key directory, then its item, then its record. Served one by one, each request waits for
        those three misses in turn; asked for together, the batch waits for them about once. A hint only: it
        changes nothing, and whatever it cannot work out is left to the request itself."""
        cdef uint32_t hashes[32]
        cdef Py_ssize_t i, n = 0
        cdef df_item *it
        cdef const unsigned char *record
        cdef Py_ssize_t line, span
        cdef bytes stored
        cdef list keys = []
        for i in range(start, end):
            item = <object>PyList_GET_ITEM(requests, i)
            if type(item) is not list or PyList_GET_SIZE(item) < 2:
                continue
            key = <object>PyList_GET_ITEM(<list>item, 1)
            if type(key) is not bytes or PyBytes_GET_SIZE(key) > self.max_key:
                continue
            stored = _stored_key(key, <Py_ssize_t>(key_token(key) >> self.shift))
            hashes[n] = df_hash(<const unsigned char *>PyBytes_AS_STRING(stored), PyBytes_GET_SIZE(stored))
            df_kd_prefetch_slot(&self.engine.kd, hashes[n])
            keys.append(stored)
            n += 1
        for i in range(n):
            df_kd_prefetch_item(&self.engine.kd, hashes[i])
        for i in range(n):
            stored = <bytes>keys[i]
            it = df_kd_find_h(&self.engine.kd, <const unsigned char *>PyBytes_AS_STRING(stored),
                              PyBytes_GET_SIZE(stored), hashes[i])
            if it != NULL:
                try:
                    record = self.engine._locate(it.seg, it.off, it.size)
                except Exception:  # noqa - a record out of place: the read itself reports it
                    continue
                # Every line of it (its first 512 bytes): its checksum is the first to read them all.
                span = min(it.size, 512)
                for line in range(0, span, 64):
                    __builtin_prefetch(record + line)
                __builtin_prefetch(record + span - 1)  # the last, where the record does not start a line

    cdef bint _get(self, object key, bytearray out, bint resp3) except -1:
        cdef Py_ssize_t partition
        cdef Siblings found
        cdef PyObject *value
        cdef df_item *it
        cdef const unsigned char *record
        cdef size_t size
        cdef SetView view
        if type(key) is not bytes or PyBytes_GET_SIZE(key) > self.max_key:
            return False
        partition = <Py_ssize_t>(key_token(key) >> self.shift)
        if not self._local(partition, key):
            return False
        stored_key = _stored_key(key, partition)
        it = df_kd_find(&self.engine.kd, <const unsigned char *>PyBytes_AS_STRING(stored_key),
                        PyBytes_GET_SIZE(stored_key))
        try:
            if it == NULL:
                found = None
            elif self.engine._plain_value(it, &record, &size) and view_set(record, size, &view):
                # The common set, read where it lies.
                if view.ndots != 1:
                    return False  # siblings (or none): the general path picks the newest
                if view.value == NULL:
                    found = None  # a tombstone
                elif view.vlen and view.value[0] == MARK:
                    return False  # an envelope: an expiry to check, or an escaped value
                else:
                    _bulk(out, <const char *>view.value, view.vlen)
                    return True
            else:
                found = _read(self.engine, stored_key)
        except Exception:  # noqa - a damaged record: the general path records it and answers
            return False
        if found is None:
            value = _Py_None
        elif found.ndots + found.nanon != 1:
            return False
        else:
            value = found.dots[0].value if found.ndots else found.anon[0].value
        if value == _Py_None:
            if resp3:
                _put(out, b"_\r\n", 3)
            else:
                _put(out, b"$-1\r\n", 5)
            return True
        if PyBytes_GET_SIZE(<object>value) and <unsigned char>PyBytes_AS_STRING(<object>value)[0] == MARK:
            return False
        _bulk(out, PyBytes_AS_STRING(<object>value), PyBytes_GET_SIZE(<object>value))
        return True

    cdef bint _set(self, object key, object value, object now, long long ts, bytearray out) except -1:
        """RequestCoordinator.replace_local: read what is stored, supersede all of it, append."""
        cdef Py_ssize_t partition
        if (type(key) is not bytes or type(value) is not bytes or PyBytes_GET_SIZE(key) > self.max_key
                or PyBytes_GET_SIZE(value) > self.max_value):
            return False
        if PyBytes_GET_SIZE(value) and <unsigned char>PyBytes_AS_STRING(value)[0] == MARK:
            return False  # stored escaped
        partition = <Py_ssize_t>(key_token(key) >> self.shift)
        if not self._local(partition, key):
            return False
        stored_key = _stored_key(key, partition)
        if not ((ts >= 0 and self._supersede_in_place(stored_key, key, value, partition, now, <uint64_t>ts))
                or self._supersede(stored_key, key, value, partition, now, None)):
            return False
        _put(out, b"+OK\r\n", 5)
        return True

    cdef bint _supersede_in_place(self, bytes stored_key, bytes key, bytes value, Py_ssize_t partition,
                                  object now, uint64_t ts) except -1:
        """_supersede making no object, for what it nearly always meets: nothing stored, or a set the view
        holds (no anonymous value, fewer entries than prune's bound) that one of our actors has stamped, whose
        new encoding is stored as it is (not compressed), and a write no one but the Merkle trees follows, of a
        partition they have no tree of. False, with nothing done, for anything else."""
        cdef SetView view
        cdef df_item *it
        cdef const unsigned char *record
        cdef const unsigned char *actor
        cdef size_t size
        cdef Py_ssize_t stamp = -1, alen, vlen = PyBytes_GET_SIZE(value), limit
        cdef unsigned char *end
        if self.sibling_check < 1:
            return False
        if self.followed == FOLLOWED or (self.followed == TREES and self.built and partition in self.built):
            return False  # the hook needs the objects
        limit = min(<Py_ssize_t>SCRATCH, <Py_ssize_t>self.engine.compress_threshold)
        it = df_kd_find(&self.engine.kd, <const unsigned char *>PyBytes_AS_STRING(stored_key),
                        PyBytes_GET_SIZE(stored_key))
        if it == NULL:
            view.n = 0
            if superseding_bound(&view, PyBytes_GET_SIZE(self.dotted) + FRESH_ACTOR, vlen) > limit:
                return False
            fresh = self.actors.fresh()  # no pointer into the store is held across this Python call
            actor = <const unsigned char *>PyBytes_AS_STRING(fresh)
            alen = PyBytes_GET_SIZE(fresh)
            if superseding_bound(&view, alen, vlen) > limit:
                # An epoch past 20 digits (a lease file set so far on): the actor is handed out, so it stamps
                # this write, through the objects.
                return self._supersede(stored_key, key, value, partition, now, fresh)
        else:
            try:
                if not self.engine._plain_value(it, &record, &size) or not view_set(record, size, &view):
                    return False
            except Exception:  # noqa - a damaged record: _supersede leaves it to the general path
                return False
            stamp = self._stamp(&view)
            if stamp < 0 or view.ents[stamp].counter == 0xFFFFFFFFFFFFFFFF:
                return False  # a fresh actor to hand out, or a counter supersede refuses to move on
            actor = view.ents[stamp].actor
            alen = view.ents[stamp].alen
        if superseding_bound(&view, alen, vlen) > limit:
            return False  # (never for a fresh actor: checked above)
        end = put_superseding(self.scratch, &view, stamp, actor, alen, ts,
                              <const unsigned char *>PyBytes_AS_STRING(value), vlen)
        self.engine._put_plain(<const unsigned char *>PyBytes_AS_STRING(stored_key), PyBytes_GET_SIZE(stored_key),
                               self.scratch, end - self.scratch)
        self.written_in_place += 1
        return True

    cdef Py_ssize_t _stamp(self, SetView *view) noexcept:
        """_stamping_actor over a view: the first entry whose actor is ours, or -1."""
        cdef Py_ssize_t i
        for i in range(view.n):
            if _ours(<const char *>view.ents[i].actor, view.ents[i].alen, self.base, self.dotted):
                return i
        return -1

    cdef bint _supersede(self, bytes stored_key, bytes key, bytes value, Py_ssize_t partition,
                         object now, object actor) except -1:
        """RequestCoordinator.replace_local over the stored objects: False for a damaged record or siblings to
        check against the limits (the general path's). ``actor``: a fresh one already handed out for a key with
        nothing stored, or None."""
        cdef Siblings existing, stored
        try:
            existing = _read(self.engine, stored_key)
        except Exception:  # noqa - a damaged record: the general path replaces it and records the repair
            return False
        if actor is None or existing is not None:
            actor = _stamping_actor(existing, self.base, self.dotted, self.actors)
        if existing is None:
            stored = Siblings.new(value, None).update(None, actor, now).prune(now)
        else:
            stored = existing.supersede(value, actor, now)
        if len(stored) > self.sibling_check:
            return False  # the general path checks the limits (and warns)
        self.engine.put(stored_key, stored._encode())
        on_write = self.vnodes.on_write
        if on_write is not None:
            on_write(partition, key, existing, stored)
        return True


cdef class _Coordinating:
    """What the coordinator lanes share: the node's parts, and the keys they may coordinate: those whose targets
    are all primaries, this node among them, on a ring at rest (no next ring)."""

    cdef object requests
    cdef object vnodes
    cdef object membership
    cdef object transport
    cdef object general  # the general path the lane stands for
    cdef object msg_type  # of the replica calls it sends
    cdef object peer_timeout
    cdef object me
    cdef LogStore engine
    cdef object ring  # the ring and down set ``_others`` was filled for (replaced, never mutated: identity tells)
    cdef object down
    cdef list _others  # per partition: None (not worked out yet), False (not this lane's), or the other targets
    cdef int shift
    cdef readonly Py_ssize_t served  # requests this lane started (the others went to the general path)

    def __init__(self, requests, vnodes, engine, transport, msg_type, general):
        if not isinstance(engine, LogStore):
            raise TypeError("the coordinator lanes need the compiled store")
        self.requests = requests
        self.vnodes = vnodes
        self.membership = requests.membership
        self.transport = transport
        self.general = general
        self.msg_type = msg_type
        self.peer_timeout = requests.config.peer_timeout
        self.me = requests.me
        self.engine = engine
        self.ring = None

    cdef object _others_of(self, object key):
        """The key's targets other than this node when this lane may coordinate it, else None."""
        cdef Py_ssize_t partition
        state = self.membership.state
        if state is None or state.next_ring is not None:
            return None
        ring = state.ring
        down = self.membership.down()
        if ring is not self.ring or down is not self.down:
            self.ring = ring
            self.down = down
            self._others = [None] * ring.partitions
            self.shift = 64 - (ring.partitions.bit_length() - 1)
        partition = <Py_ssize_t>(key_token(key) >> self.shift)
        others = self._others[partition]
        if others is None:
            others = False
            _, _, targets, _ = self.requests._route(key)
            if targets is not None and all(hint_for is None for _, hint_for in targets) \
                    and any(node == self.me for node, _ in targets):
                others = tuple(node for node, _ in targets if node != self.me)
            self._others[partition] = others
        return others if others is not False else None

    cdef object _addresses(self, tuple others):
        """The others' addresses; None for a peer that left the cluster meanwhile (the general path raises it)."""
        try:
            return [self.membership.address_of(node) for node in others]
        except Exception:  # noqa
            return None


cdef class Replaces(_Coordinating):
    """The one-round last-write-wins put (``RequestCoordinator._replace``) in C, for the common case: from the key
    and value to the replica puts sent, and from their replies to the answer. Called as ``_replace`` calls it, it
    answers what the general path (``_replace_general``) would, and gives it every other case:
    - a node with damaged records on record, a closed store, a ring changing shape (a next ring);
    - a key whose targets are not all primaries with this node among them, or fewer than W; a partition being
      repaired after amnesia; a peer whose address is not known;
    - a stored object that does not read, or a result with siblings to check against the limits.
    The request it starts runs the same rules as the general path's state machine (``PutCoordinator``) while
    replicas store the write; on the first event that is anything else (a replica that refuses or fails, the
    deadline) it hands the request over to that machine (``requests._take_over_replace``), which decides the
    rest: the second round, the errors. The plain-Python reference is dynafast._ref.lane."""

    cdef object actors
    cdef object replacing  # requests._replacing: keys with a one-round put of ours under way
    cdef bytes base
    cdef bytes dotted
    cdef object dotted_base
    cdef Py_ssize_t sibling_check

    def __init__(self, requests, vnodes, engine, transport, put_type):
        _Coordinating.__init__(self, requests, vnodes, engine, transport, put_type, requests._replace_general)
        self.actors = requests.actors
        self.replacing = requests._replacing
        self.base = requests.actor
        self.sibling_check = requests.sibling_check

    def __call__(self, key, value, r, w, timeout, reply_type):
        """``_replace_general(key, value, b"", r, w, 0, timeout, reply_type, None)``: a put without a context, dw
        0 and no TTL, of a key no other one-round put of ours is under way for."""
        result = self._put(key, value, r, w, timeout, reply_type)
        if result is None:
            return self.general(key, value, b"", r, w, 0, timeout, reply_type, None)
        return result

    cdef object _put(self, object key, object value, object r, object w, object timeout, object reply_type):
        cdef Py_ssize_t partition, count
        cdef Siblings existing, stored
        cdef _Replacing request
        if type(key) is not bytes or type(value) is not bytes or type(w) is not int:
            return None
        if self.engine.closed or self.vnodes.damaged:
            return None
        others = self._others_of(key)
        if others is None:
            return None
        partition = <Py_ssize_t>(key_token(key) >> self.shift)
        count = PyTuple_GET_SIZE(others)
        if count + 1 < w or partition in self.requests.repairing:
            return None
        addresses = self._addresses(others)
        if addresses is None:
            return None
        stored_key = _stored_key(key, partition)
        try:
            existing = _read(self.engine, stored_key)
        except Exception:  # noqa - a damaged record: the general path reads the others instead
            return None
        self.base = self.requests.actor  # as Lane._open: the incarnation's, read afresh
        base = self.actors.base
        if base is not self.dotted_base:  # a new lease of actors
            self.dotted_base = base
            self.dotted = base + b"."
        actor = _stamping_actor(existing, self.base, self.dotted, self.actors)
        now = int(self.requests.clock.wall())
        if existing is None:
            stored = Siblings.new(value, None).update(None, actor, now).prune(now)
        else:
            stored = existing.supersede(value, actor, now)
        if len(stored) > self.sibling_check:
            return None  # the general path checks the limits (and warns)
        raw = stored._encode()
        # From here on the write is under way: what the general path's _replicate does, in its order.
        self.replacing[key] = self.replacing.get(key, 0) + 1
        try:
            self.engine.put(stored_key, raw)  # a full disk, a closed store: the caller's error, as in the general path
            on_write = self.vnodes.on_write
            if on_write is not None:
                on_write(partition, key, existing, stored)
        except BaseException:
            self.requests._replaced(key)
            raise
        self.served += 1
        request = _Replacing(self, partition, key, stored, actor, r, w, timeout, reply_type, others)
        fields = (partition, key, raw, False, None, True)
        try:
            for i in range(count):
                self.transport.request_then(addresses[i], self.msg_type, fields, self.peer_timeout,
                                            _Reply(request, others[i]))
            return request.arm()
        except BaseException:  # as the general path's: the key is no longer under way
            request._cancel_deadline()
            if not request.answered:
                self.requests._replaced(key)
            raise


cdef class Reads(_Coordinating):
    """The quorum read of ``RequestCoordinator.read_object`` (RESP's GET) in C, for the common case: this node's
    copy read, the replica gets sent, and their replies counted to R while each holds exactly what this node's copy
    holds (the same bytes, or nothing where it holds nothing). Called as ``read_object`` calls the general path
    (``_read_object``), it answers what that would, and gives it every other case:
    - a closed store, a ring changing shape, a key whose targets are not all primaries with this node among them,
      a partition being repaired after amnesia, a peer whose address is not known;
    - a copy here that does not read.
    On the first reply that is anything else (another version, a failure, a "not found" that proves nothing) or the
    deadline it hands the request over to the general path's state machine (``requests._take_over_read``) with
    the replies so far, which decides the rest: the answer, read repair. Replies that all match need no repair.
    The plain-Python reference is dynafast._ref.lane."""

    cdef object reply_type  # GET_REPLY

    def __init__(self, requests, vnodes, engine, transport, get_type, reply_type):
        _Coordinating.__init__(self, requests, vnodes, engine, transport, get_type, requests._read_object)
        self.reply_type = reply_type

    def __call__(self, key, r, timeout, request):
        """``_read_object(key, r, timeout, request)``."""
        result = self._get(key, r, timeout, request)
        if result is None:
            return self.general(key, r, timeout, request)
        return result

    cdef object _get(self, object key, object r, object timeout, object request):
        cdef Py_ssize_t partition, count
        cdef df_item *it
        cdef _Reading reading
        if type(key) is not bytes or type(r) is not int or self.engine.closed:
            return None
        others = self._others_of(key)
        if others is None:
            return None
        partition = <Py_ssize_t>(key_token(key) >> self.shift)
        if PyTuple_GET_SIZE(others) + 1 < r or partition in self.requests.repairing:
            return None
        addresses = self._addresses(others)
        if addresses is None:
            return None
        stored_key = _stored_key(key, partition)
        try:
            it = df_kd_find(&self.engine.kd, <const unsigned char *>PyBytes_AS_STRING(stored_key),
                            PyBytes_GET_SIZE(stored_key))
            raw = None if it == NULL else self.engine._value_at(it.seg, it.off, it.size)
            local = None if raw is None else siblings_from_bytes(<const unsigned char *>PyBytes_AS_STRING(raw),
                                                                  PyBytes_GET_SIZE(raw))
        except Exception:  # noqa - a damaged record: the general path records it and reads the others
            return None
        self.served += 1
        reading = _Reading(self, partition, key, local, raw, r, timeout, others)
        fields = (partition, key, None)
        count = PyTuple_GET_SIZE(others)
        for i in range(count):
            self.transport.request_then(addresses[i], self.msg_type, fields, self.peer_timeout,
                                        _Reply(reading, others[i]))
        return reading.arm()


cdef class Quorum:
    """RESP's GET and SET (no options) of a cluster's keys (N>1), from the parsed request straight into the
    coordinator lanes: what ``cmd_get`` -> ``read_value`` -> ``read_object`` and ``cmd_set`` -> ``set_value`` ->
    ``overwrite`` -> ``client_put`` -> ``_write`` -> ``_replace`` do with a connection's default R, W and DW, for
    the requests the lanes start; ``take`` declines (None, nothing done) every other one, which the connection
    then runs the general way:
    - a command other than GET key and SET key value, or a connection without the right (READ or WRITE, and
      QUORUM: its R, W and DW are the node's);
    - a key over max_key_size, a value over max_value_size or one whose first byte is expiry's MARK;
    - a SET where W < R, or of a key with a one-round put of ours under way (``_replace``'s read first);
    - whatever the lane itself leaves to the general path (``Replaces._put``, ``Reads._get``).
    A request it takes answers as the command's: ``mapped(reply or future, fn)`` with the command's own ``fn``."""

    cdef Replaces replaces
    cdef Reads reads
    cdef object replacing
    cdef object mapped  # resp.commands.Mapped
    cdef object ok  # the reply SET makes of a PUT_REPLY
    cdef object value  # the reply GET makes of a read_object reply
    cdef object put_reply
    cdef Py_ssize_t max_key
    cdef Py_ssize_t max_value
    cdef object r
    cdef object w
    cdef object timeout
    cdef readonly Py_ssize_t taken  # requests a lane started for it

    def __init__(self, requests, config, put_reply, mapped, ok, value):
        if type(requests.replaces) is not Replaces or type(requests.reads) is not Reads:
            raise TypeError("the quorum lane needs the compiled coordinator lanes")
        self.replaces = requests.replaces
        self.reads = requests.reads
        self.replacing = requests._replacing
        self.mapped = mapped
        self.ok = ok
        self.value = value
        self.put_reply = put_reply
        self.max_key = config.max_key_size
        self.max_value = config.max_value_size
        self.r = config.r or 1  # _write's and read_object's quorums when the connection sets none
        self.w = config.w or 1
        self.timeout = config.request_timeout

    cpdef object take(self, list args, int rights):
        """The reply of ``args`` (a ``Mapped``) when a coordinator lane started it; None when declined."""
        cdef Py_ssize_t n = PyList_GET_SIZE(args)
        if not rights & QUORUM or n < 2:
            return None
        name = <object>PyList_GET_ITEM(args, 0)
        key = <object>PyList_GET_ITEM(args, 1)
        if type(key) is not bytes or PyBytes_GET_SIZE(key) > self.max_key:
            return None
        if n == 2 and rights & READ and _is(name, b"GET", b"get", 3):
            result = self.reads._get(key, self.r, self.timeout, None)
            if result is None:
                return None
            self.taken += 1
            return self.mapped(result, self.value)
        if n != 3 or not rights & WRITE or not _is(name, b"SET", b"set", 3):
            return None
        value = <object>PyList_GET_ITEM(args, 2)
        if type(value) is not bytes or PyBytes_GET_SIZE(value) > self.max_value:
            return None
        if PyBytes_GET_SIZE(value) and <unsigned char>PyBytes_AS_STRING(value)[0] == MARK:
            return None  # stored escaped
        if self.w < self.r or key in self.replacing:
            return None
        result = self.replaces._put(key, value, self.r, self.w, self.timeout, self.put_reply)
        if result is None:
            return None
        self.taken += 1
        return self.mapped(result, self.ok)


cdef class _Counting:
    """One request of a coordinator lane while every replica that answered did what the lane counts on (stored the
    write, or holds this node's copy): ``needed`` such answers (this node's among them) answer it; the first other
    reply, a failure or the deadline hands it over to the general path's state machine (``take_over``), which
    then gets every later reply. Subclasses say what counts (``_counts``), what the answer is (``_reply``), and
    how the general path takes over (``_general``, ``_general_replied``)."""

    cdef _Coordinating lane
    cdef Py_ssize_t partition
    cdef object key
    cdef Py_ssize_t needed  # W or R
    cdef object timeout
    cdef object started
    cdef tuple others
    cdef list counted  # the nodes that answered as the lane counts on, this one first
    cdef Py_ssize_t outstanding
    cdef bint answered
    cdef object answer  # the future the caller waits on (None: answered at once)
    cdef object deadline
    cdef object general  # once handed over: the general path's request (``_Request``)

    cdef _start(self, _Coordinating lane, Py_ssize_t partition, key, Py_ssize_t needed, timeout, tuple others):
        self.lane = lane
        self.partition = partition
        self.key = key
        self.needed = needed
        self.timeout = timeout
        self.started = lane.requests.clock.monotonic()
        self.others = others
        self.counted = [lane.me]
        self.outstanding = PyTuple_GET_SIZE(others)

    cdef object arm(self):
        """What the general path returns: the reply when this node's answer is enough, else a future of it."""
        if self.outstanding:
            self.deadline = self.lane.requests.deadlines.add(self.timeout, self)  # calls this at the deadline
        if self.needed <= 1:
            return self._answer()
        self.answer = self.lane.requests.loop.create_future()
        return self.answer

    cdef object _answer(self):
        self.answered = True
        reply = self._reply()
        answer = self.answer
        if answer is not None and not answer.done():
            answer.set_result(reply)
        return reply

    cdef _cancel_deadline(self):
        deadline, self.deadline = self.deadline, None
        if deadline is not None:
            deadline.pop(self, None)  # DeadlineWheel.cancel

    cdef object take_over(self):
        """The general path's request for the rest of this one (made once)."""
        if self.general is None:
            self._cancel_deadline()
            left = self.timeout - (self.lane.requests.clock.monotonic() - self.started)
            self.general = self._general(left, (self.lane.me,) + self.others)
        return self.general

    cdef replied(self, node, call):
        if self.general is None:
            if not call.cancelled() and call.exception() is None and self._counts(call.result()[1]):
                self.lane.membership.mark_up(node)
                self.counted.append(node)
                self.outstanding -= 1
                if not self.answered and PyList_GET_SIZE(self.counted) >= self.needed:
                    self._answer()
                if not self.outstanding and self.answered:  # nothing left to decide
                    self._cancel_deadline()
                return
            self.take_over()
        self._general_replied(node, call)

    def __call__(self):
        """The deadline passed (the deadline wheel calls this)."""
        self.deadline = None
        self.take_over()()

    cdef bint _counts(self, reply) except -1:
        raise NotImplementedError

    cdef object _reply(self):
        raise NotImplementedError

    cdef object _general(self, left, tuple targets):
        raise NotImplementedError

    cdef _general_replied(self, node, call):
        raise NotImplementedError


cdef class _Replacing(_Counting):
    """A request of the replace lane: a replica's reply counts when it stored the write (``(durable, True)``)."""

    cdef Siblings stored
    cdef object actor
    cdef object r
    cdef object reply_type

    def __init__(self, Replaces lane, Py_ssize_t partition, key, Siblings stored, actor, r, Py_ssize_t w, timeout,
                 reply_type, tuple others):
        self._start(lane, partition, key, w, timeout, others)
        self.stored = stored
        self.actor = actor
        self.r = r
        self.reply_type = reply_type

    cdef bint _counts(self, reply) except -1:
        return type(reply) is tuple and PyTuple_GET_SIZE(reply) >= 2 and reply[1] is True

    cdef object _reply(self):
        self.lane.requests._replaced(self.key)
        return (self.reply_type, (self.lane.membership.state.ring.version,))

    cdef object _general(self, left, tuple targets):
        return self.lane.requests._take_over_replace(self.partition, self.key, self.stored, self.actor, self.r,
                                                     self.needed, left, self.reply_type, targets, self.counted,
                                                     self.answer, self.answered)

    cdef _general_replied(self, node, call):
        self.lane.requests._put_replied(self.general, node, call)


cdef class _Reading(_Counting):
    """A request of the read lane: a replica's reply counts when it holds exactly this node's copy."""

    cdef object local  # this node's copy (a Siblings, or None)
    cdef object raw  # its bytes (None: nothing held)

    def __init__(self, Reads lane, Py_ssize_t partition, key, local, raw, Py_ssize_t r, timeout, tuple others):
        self._start(lane, partition, key, r, timeout, others)
        self.local = local
        self.raw = raw

    cdef bint _counts(self, reply) except -1:
        if type(reply) is not tuple or PyTuple_GET_SIZE(reply) != 1:
            return False  # (None, True): a "not found" that proves nothing
        held = reply[0]
        if held is None:
            return self.raw is None
        return type(held) is bytes and self.raw is not None and held == self.raw

    cdef object _reply(self):
        return ((<Reads>self.lane).reply_type, self.local)

    cdef object _general(self, left, tuple targets):
        return self.lane.requests._take_over_read(self.partition, self.key, self.needed, left, targets, self.counted,
                                                  self.local, self.answer, self.answered)

    cdef _general_replied(self, node, call):
        self.lane.requests._get_replied(self.general, node, call)


cdef class _Reply:
    """The reply callback of one replica call of a coordinator lane's request (``transport.request_then``)."""

    cdef _Counting request
    cdef object node

    def __init__(self, _Counting request, node):
        self.request = request
        self.node = node

    def __call__(self, call):
        self.request.replied(self.node, call)


cdef class _Replicating:
    """What the replica lanes share: the node's parts, and their call: answer the decoded fields in C (``_serve``),
    or, where that gives None, hand them to the general path (``general(check(fields))``), which then answers them,
    errors included."""

    cdef object requests
    cdef object membership
    cdef object ownership
    cdef object general
    cdef object check
    cdef object reply_type
    cdef LogStore engine

    def __init__(self, requests, engine, general, check, reply_type):
        if not isinstance(engine, LogStore):
            raise TypeError("the replica lane needs the compiled store")
        self.requests = requests
        self.membership = requests.membership
        self.ownership = requests.ownership
        self.general = general
        self.check = check
        self.reply_type = reply_type
        self.engine = engine

    def __call__(self, fields):
        result = self._serve(fields)
        if result is None:
            return self.general(self.check(fields))
        return result

    cdef object _serve(self, object fields):
        raise NotImplementedError


cdef class ReplicaPuts(_Replicating):
    """REPLICA_PUT of a primary's copy in C: what ``messages.parse`` checks of it, then
    ``RequestCoordinator.replica_put`` with ``Vnodes.merge_in`` or ``Vnodes.replace_if_covering``, for the common
    case. Called with the decoded fields, it answers what the general path (``general(check(fields))``) would, and
    gives it every other case, which then answers it, errors included:
    - fields not of the expected types, or a hinted put (``hint_for``);
    - a node with damaged records on record, a closed store, a partition this node does not hold;
    - a one-round put (``replace``) to a partition being repaired after amnesia;
    - an incoming object that does not decode, or a stored one that does not read."""

    cdef object vnodes
    cdef object durable_reply

    def __init__(self, requests, vnodes, engine, check, reply_type, durable_reply):
        _Replicating.__init__(self, requests, engine, requests.replica_put, check, reply_type)
        self.vnodes = vnodes
        self.durable_reply = durable_reply  # (fields) -> a future of the reply, once what was written is on disk

    cdef object _serve(self, object fields):
        cdef Py_ssize_t size, partition
        cdef Siblings incoming, existing, merged
        cdef bytes key, raw, stored_key
        if type(fields) is not tuple:
            return None
        size = PyTuple_GET_SIZE(fields)
        if size < 5:
            return None
        number, key_, raw_, durable = fields[0], fields[1], fields[2], fields[3]
        replace = fields[5] if size > 5 else None
        if (type(number) is not int or type(key_) is not bytes or type(raw_) is not bytes or fields[4] is not None
                or (durable is not True and durable is not False)
                or (replace is not None and replace is not True and replace is not False)):
            return None
        if self.engine.closed or self.vnodes.damaged:
            return None
        key, raw = <bytes>key_, <bytes>raw_
        try:
            self.ownership.check_member(self.membership, number)
        except Exception:  # noqa - the general path raises it again, as it answers it
            return None
        partition = number
        if replace and partition in self.requests.repairing:
            return None
        try:
            incoming = siblings_from_bytes(<const unsigned char *>PyBytes_AS_STRING(raw), PyBytes_GET_SIZE(raw))
            stored_key = _stored_key(key, partition)
            existing = _read(self.engine, stored_key)
        except Exception:  # noqa - bytes that do not decode, a damaged record: the general path's
            return None
        self.requests.replica_puts += 1
        if replace:
            if existing is not None:
                merged = incoming._sync(existing)
                if merged.values != incoming.values:  # a version held survives the merge: not covered
                    return (self.reply_type, (False, False))
                if merged != incoming:  # entries the writer pruned come back
                    incoming, raw = merged, None
            if existing is None or incoming != existing:
                self._write(partition, key, stored_key, existing, incoming, raw)
            reply = (True, True) if durable else (False, True)
        else:
            if existing is None:
                self._write(partition, key, stored_key, None, incoming, raw)
            else:
                merged = incoming._sync(existing)
                if merged != existing:
                    self._write(partition, key, stored_key, existing, merged, None)
            reply = (True,) if durable else (False,)
        if durable:
            return self.durable_reply(reply)
        return (self.reply_type, reply)

    cdef _write(self, Py_ssize_t partition, bytes key, bytes stored_key, Siblings previous, Siblings stored,
                bytes raw):
        """Vnodes.write of a primary's object (no damaged record is on record: none to clear)."""
        self.engine.put(stored_key, raw if raw is not None else stored._encode())
        on_write = self.vnodes.on_write
        if on_write is not None:
            on_write(partition, key, previous, stored)


cdef class ReplicaGets(_Replicating):
    """REPLICA_GET of a primary's copy in C: what ``messages.parse`` checks of it, then
    ``RequestCoordinator.replica_get`` with ``Vnodes.get_raw``, for the common case. Called with the decoded fields,
    it answers what the general path (``general(check(fields))``) would, and gives it every other case, which then
    answers it, errors included:
    - fields not of the expected types, or a hinted get (``hint_for``);
    - a closed store, a partition this node does not hold;
    - a record that does not read (the general path records the damage);
    - nothing stored, in a partition being repaired after amnesia (a "not found" that proves nothing)."""

    def __init__(self, requests, engine, check, reply_type):
        _Replicating.__init__(self, requests, engine, requests.replica_get, check, reply_type)

    cdef object _serve(self, object fields):
        cdef Py_ssize_t partition
        cdef df_item *it
        if type(fields) is not tuple or PyTuple_GET_SIZE(fields) != 3:
            return None
        number, key, hint_for = fields
        if type(number) is not int or type(key) is not bytes or hint_for is not None or self.engine.closed:
            return None
        try:
            self.ownership.check_member(self.membership, number)
        except Exception:  # noqa - the general path raises it again, as it answers it
            return None
        partition = number
        stored_key = _stored_key(key, partition)
        it = df_kd_find(&self.engine.kd, <const unsigned char *>PyBytes_AS_STRING(stored_key),
                        PyBytes_GET_SIZE(stored_key))
        raw = None
        if it != NULL:
            try:
                raw = self.engine._value_at(it.seg, it.off, it.size)
            except Exception:  # noqa - a damaged record: the general path records it
                return None
        if raw is None and partition in self.requests.repairing:
            return None
        self.requests.replica_gets += 1
        return (self.reply_type, (raw,))


cdef class LaneConnection:
    """The read step of a RESP connection (``dynafast.resp.server.RespConnection`` derives from it): while nothing
    else is under way on the connection, what a read brings is parsed, answered by the lane and written back in C,
    with no Python frame between the socket and the store. The requests the lane leaves, and every read that finds
    the connection otherwise (requests in flight or held, paused, broken, closing, half a request buffered), go to
    the connection's general path in Python (``_received``, ``_handle``, ``_run``), which holds every rule; this
    skips only bookkeeping that has nothing to do. The plain-Python reference is dynafast._ref.lane."""

    cdef public object app  # the RespApp: its lane, its command count
    cdef public object parser
    cdef public object transport
    cdef public bytearray _out  # replies not written yet
    cdef public int rights  # READ and WRITE bits (RespApp.lane_rights)
    cdef public bint resp3
    cdef public bint closed
    cdef public bint active  # something arrived since the idle check last looked
    cdef public object last_command
    cdef public object _broken  # the protocol error to send once the requests before it are answered
    cdef public object _held  # requests parsed but not run yet
    cdef public object _pending  # commands in flight
    cdef public bint _writing_paused
    cdef public bint _half_closed
    cdef public bint _flush_scheduled
    cdef public Py_ssize_t _unfinished  # bytes of a request under way counted against the server's budget
    cdef public Py_ssize_t _unsent  # bytes the transport still held after our last write
    cdef public Py_ssize_t high_water  # reply bytes the lane writes before they are sent

    def data_received(self, data):
        cdef Py_ssize_t stop
        cdef list requests
        if (self.closed or self._broken is not None or not self.rights or self._writing_paused or self._half_closed
                or self._unfinished or self._held or self._pending):
            self._received(data)
            return
        app = self.app
        lane = app.lane
        if type(lane) is not Lane:
            self._received(data)
            return
        self.active = True
        try:
            requests = self.parser.feed(data)
        except Exception as exc:  # noqa - a broken stream: the general path keeps what came before the error
            requests = self._refused(exc)
        if self._broken is not None or self.parser.buffered:
            self._handle(requests)
            return
        stop = (<Lane>lane).serve(requests, 0, self._out, self.rights, self.resp3, self.high_water)
        if stop:
            app.commands += stop
            self.last_command = (<list>requests[stop - 1])[0]
        if stop < PyList_GET_SIZE(requests):
            self._run(requests, stop, stop)  # not offering it to the lane again: it would be read twice
        self._flush()
        if self._broken is not None or self._half_closed:
            self._maybe_done()

    def _flush(self):
        self._flush_scheduled = False
        transport = self.transport
        if PyByteArray_GET_SIZE(self._out) and transport is not None:
            out = self._out
            self._out = bytearray()
            transport.write(out)
            self._unsent = transport.get_write_buffer_size()
