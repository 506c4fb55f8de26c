"""The fast lanes in plain Python: the reference of dynafast._core.lane. The RESP lane gives the same answers and
leaves the same requests to the general path (its docstring says which), over the store's public ``get`` and
``put``, so it runs on either build of the engine; ``ReplicaPuts``, ``Replaces`` and ``Reads`` are the general
paths they stand for, as they are."""
from __future__ import annotations

import struct

READ = 1  # the connection may read (GET)
WRITE = 2  # and may write with dw 0 (SET answered once in the store's write buffer)
QUORUM = 4  # and its R, W and DW are the node's (Quorum may take its GET and SET)

_MARK = b"\xf5"  # dynafast.cluster.expiry.MARK
_PARTITION = struct.Struct(">H")  # dynafast.cluster.vnode.object_key: b"o" + partition + key
_UNKNOWN, _LOCAL, _ELSEWHERE = 0, 1, 2


class Lane:
    """The lane of one node's RESP listener."""

    def __init__(self, requests, vnodes, engine, config, trees=None):
        # ``trees``: the compiled lane writes in place while the Merkle trees have no tree to follow; this one
        # always goes through the objects and their hook.
        self.requests = requests
        self.vnodes = vnodes
        self.membership = requests.membership
        self.actors = requests.actors
        self.engine = engine
        self.one_replica = config.n == 1
        self.max_key = config.max_key_size
        self.max_value = config.max_value_size
        self.sibling_check = requests.sibling_check
        self.base = requests.actor
        self.siblings = requests.Siblings
        self.ring = self.down = None
        self._where = bytearray()
        self.partition_of = None

    def _open(self) -> bool:
        if not self.one_replica or self.engine.closed:
            return False
        state = self.membership.state
        if state is None or state.next_ring is not None:
            return False
        down = self.membership.down()
        if state.ring is not self.ring or down is not self.down:
            self.ring, self.down = state.ring, down
            self._where = bytearray(state.ring.partitions)
            self.partition_of = state.ring.partition_of
        return True

    def _local(self, partition: int, key: bytes) -> bool:
        where = self._where[partition]
        if where == _UNKNOWN:
            where = _LOCAL if self.requests._local_partition(key) is not None else _ELSEWHERE
            self._where[partition] = where
        return where == _LOCAL

    def serve(self, requests: list, start: int, out: bytearray, rights: int, resp3: bool, limit: int) -> int:
        i, count = start, len(requests)
        if not rights or not self._open():
            return start
        damaged = bool(self.vnodes.damaged)
        now = None
        while i < count and len(out) < limit:
            args = requests[i]
            name = args[0]
            try:  # what fails is the general path's to answer, as in the compiled lane
                if len(args) == 2 and rights & READ and name.upper() == b"GET":
                    done = self._get(args[1], out, resp3)
                elif len(args) == 3 and rights & WRITE and not damaged and name.upper() == b"SET":
                    if now is None:
                        now = int(self.requests.clock.wall())
                    done = self._set(args[1], args[2], now, out)
                else:
                    done = False
            except Exception:  # noqa: BLE001
                done = False
            if not done:
                break
            i += 1
        return i

    def _read(self, stored_key: bytes):
        raw = self.engine.get(stored_key)
        return None if raw is None else self.siblings.from_bytes(raw)

    def _get(self, key, out: bytearray, resp3: bool) -> bool:
        if type(key) is not bytes or len(key) > self.max_key:
            return False
        partition = self.partition_of(key)
        if not self._local(partition, key):
            return False
        try:
            found = self._read(b"o" + _PARTITION.pack(partition) + key)
        except Exception:  # noqa: BLE001 - a damaged record: the general path records it and answers
            return False
        if found is None:
            value = None
        elif len(found) != 1:
            return False
        else:
            value = found.values[0]
        if value is None:
            out += b"_\r\n" if resp3 else b"$-1\r\n"
            return True
        if value[:1] == _MARK:
            return False
        out += b"$%d\r\n%s\r\n" % (len(value), value)
        return True

    def _set(self, key, value, now: int, out: bytearray) -> bool:
        if (type(key) is not bytes or type(value) is not bytes or len(key) > self.max_key
                or len(value) > self.max_value or value[:1] == _MARK):
            return False
        partition = self.partition_of(key)
        if not self._local(partition, key):
            return False
        stored_key = b"o" + _PARTITION.pack(partition) + key
        try:
            existing = self._read(stored_key)
        except Exception:  # noqa: BLE001 - a damaged record: the general path replaces it
            return False
        actor = self.requests._stamping_actor(existing)
        if existing is None:
            stored = self.siblings.new(value, None).update(None, actor, now).prune(now)
        else:
            stored = existing.supersede(value, actor, now)
        if len(stored) > self.sibling_check:
            return False
        self.engine.put(stored_key, stored.to_bytes())
        if self.vnodes.on_write is not None:
            self.vnodes.on_write(partition, key, existing, stored)
        out += b"+OK\r\n"
        return True


class ReplicaPuts:
    """The reference of dynafast._core.lane.ReplicaPuts: the general path it stands for, as it is (the message's
    checks, then ``RequestCoordinator.replica_put``), which the compiled lane answers alike."""

    def __init__(self, requests, vnodes, engine, check, reply_type, durable_reply):
        self.general = requests.replica_put
        self.check = check

    def __call__(self, fields):
        return self.general(self.check(fields))


class ReplicaGets:
    """The reference of dynafast._core.lane.ReplicaGets: the general path it stands for, as it is
    (``RequestCoordinator.replica_get`` of the checked fields), which the compiled lane answers alike."""

    def __init__(self, requests, engine, check, reply_type):
        self.general = requests.replica_get
        self.check = check

    def __call__(self, fields):
        return self.general(self.check(fields))


class Replaces:
    """The reference of dynafast._core.lane.Replaces: the general path it stands for, as it is
    (``RequestCoordinator._replace_general``), which the compiled lane answers alike."""

    served = 0  # it starts none itself

    def __init__(self, requests, vnodes, engine, transport, put_type):
        self.general = requests._replace_general

    def __call__(self, key, value, r, w, timeout, reply_type):
        return self.general(key, value, b"", r, w, 0, timeout, reply_type, None)


class Reads:
    """The reference of dynafast._core.lane.Reads: the general path it stands for, as it is
    (``RequestCoordinator._read_object``), which the compiled lane answers alike."""

    served = 0  # it starts none itself

    def __init__(self, requests, vnodes, engine, transport, get_type, reply_type):
        self.general = requests._read_object

    def __call__(self, key, r, timeout, request):
        return self.general(key, r, timeout, request)


class Quorum:
    """The reference of dynafast._core.lane.Quorum: it takes no request itself. Its coordinator lanes are the
    general paths (``Replaces``, ``Reads`` above), so every GET and SET goes the general way, through the command,
    as the compiled one's requests would after it declines them."""

    taken = 0

    def __init__(self, requests, config, put_reply, mapped, ok, value):
        pass

    def take(self, args, rights):
        return None


class LaneConnection:
    """The read step of a RESP connection: the reference of dynafast._core.lane.LaneConnection (the same steps, in
    Python). While nothing else is under way on the connection, a read is parsed, answered by the lane and written
    back; everything else goes to the connection's general path (``_received``, ``_handle``, ``_run``)."""

    def data_received(self, data):
        if (self.closed or self._broken is not None or not self.rights or self._writing_paused or self._half_closed
                or self._unfinished or self._held or self._pending):
            self._received(data)
            return
        app = self.app
        lane = app.lane
        if lane is None:
            self._received(data)
            return
        self.active = True
        try:
            requests = self.parser.feed(data)
        except Exception as exc:  # noqa: BLE001 - a broken stream: the general path keeps what came before it
            requests = self._refused(exc)
        if self._broken is not None or self.parser.buffered:
            self._handle(requests)
            return
        stop = lane.serve(requests, 0, self._out, self.rights, self.resp3, self.high_water)
        if stop:
            app.commands += stop
            self.last_command = requests[stop - 1][0]
        if stop < len(requests):
            self._run(requests, stop, stop)  # not offering it to the lane again: it would be read twice
        self._flush()
        if self._broken is not None or self._half_closed:
            self._maybe_done()

    def _flush(self):
        self._flush_scheduled = False
        transport = self.transport
        if self._out and transport is not None:
            out, self._out = self._out, bytearray()
            transport.write(out)
            self._unsent = transport.get_write_buffer_size()
