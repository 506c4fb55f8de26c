"""One simulated run: build a cluster, drive clients and faults against it, heal, quiesce, check."""
from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import traceback
from dataclasses import dataclass, field

from dynafast import _impl
from dynafast.net.messages import Msg
from dynafast.sim.checker import Violation, check_counters, check_history, check_membership, check_replicas
from dynafast.sim.cluster import SimNode
from dynafast.sim.loop import SimLoop
from dynafast.sim.network import SimNetwork
from dynafast.sim.workload import CasClient, History, SimClient

FAULTS = ("crash", "wipe", "truncate", "corrupt", "pause", "partition", "one-way", "clock-jump", "join", "leave",
          "leave-cut", "lose-reaps", "hold-hints")

AMNESIA_GAP = 10.0  # simulated seconds between faults that make different nodes forget (repair runs meanwhile)


@dataclass
class Result:
    seed: int
    nodes: int
    ops: int = 0
    faults: list[str] = field(default_factory=list)
    violations: list[Violation] = field(default_factory=list)
    digest: str = ""
    simulated_seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.violations


def run(seed: int, *, nodes: int = 3, ops: int = 200, clients: int = 3, keys: int = 6,
        faults: tuple[str, ...] = FAULTS, debug: bool = False, cas: bool = False, lww: bool = False) -> Result:
    """Run one seed to the end and check it. Deterministic: the same arguments give the same result.
    ``cas``: the clients also increment two counter keys by compare-and-set (a third of their operations).
    ``lww``: half their puts without a context are last-write-wins puts."""
    loop = SimLoop()
    logger = logging.getLogger("dynafast")
    level = logger.level
    if not debug:
        logger.setLevel(logging.CRITICAL)
    try:
        return loop.run_until_complete(_Run(seed, nodes, ops, clients, keys, faults, cas, lww).main())
    finally:
        logger.setLevel(level)  # the caller's logging is its own (tests that count log records run after)
        loop.close()


class _Run:
    def __init__(self, seed, nodes, ops, clients, keys, faults, cas=False, lww=False):
        self.seed = seed
        self.lww = lww
        self.counters = [b"ctr0", b"ctr1"] if cas else []
        self.rng = random.Random(seed)
        self.node_count = nodes
        self.op_count = ops
        self.client_count = clients
        self.keys = [b"k%d" % i for i in range(keys)]
        self.allowed = faults
        self.result = Result(seed, nodes)
        self.sims: dict[str, SimNode] = {}
        self.history = History()
        self.errors: list[str] = []
        self.wiped = False
        self.last_amnesia: tuple[float, str | None] = (0.0, None)  # when, and which node, last forgot something
        self.leaving: set[str] = set()  # told to leave (the request may still fail)
        self.starting: list[asyncio.Future] = []  # nodes joining in the background

    def _child(self) -> random.Random:
        return random.Random(self.rng.getrandbits(64))

    async def main(self) -> Result:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(self._loop_error)
        rng = self.rng
        self.network = SimNetwork(loop, self._child(), loss=rng.choice((0.0, 0.0, 0.005, 0.02)),
                                  duplicate=rng.choice((0.0, 0.0, 0.01, 0.03)))
        first = await self._add_node(seeds=())
        for _ in range(self.node_count - 1):
            await self._add_node(seeds=(first.address,))
        await self._settle(60.0)
        kind = CasClient if self.counters else SimClient
        clients = [kind(i, self.network, self.history, self._child()) for i in range(self.client_count)]
        workload = [asyncio.ensure_future(self._client(c, self.op_count // self.client_count)) for c in clients]
        chaos = asyncio.ensure_future(self._faults())
        await asyncio.gather(*workload)
        chaos.cancel()
        try:
            await chaos
        except asyncio.CancelledError:
            pass
        await self._heal()
        await self._check(clients[0])
        await self._shutdown()
        self.result.ops = len(self.history.ops)
        self.result.simulated_seconds = round(loop.time(), 3)
        self.result.digest = self._digest()
        return self.result

    def _loop_error(self, loop, context) -> None:
        exc = context.get("exception")
        message = context.get("message", "")
        if exc is not None and type(exc).__name__ in ("StoreClosed", "CancelledError", "Unavailable", "Timeout"):
            return  # a crashed node's leftovers
        where = ""
        if exc is not None and exc.__traceback__ is not None:
            frame = traceback.extract_tb(exc.__traceback__)[-1]
            where = f" at {frame.filename.rsplit('/dynafast/', 1)[-1]}:{frame.lineno} in {frame.name}"
        self.errors.append(f"{message}: {exc!r}{where}")

    # -- nodes -----------------------------------------------------------------------------------------------
    def _new_node(self, seeds) -> SimNode:
        name = f"n{len(self.sims) + 1}"
        sim = SimNode(name, self.network, self._child(), seeds=seeds, skew=self.rng.uniform(-1.0, 1.0))
        self.sims[name] = sim
        return sim

    async def _add_node(self, seeds) -> SimNode:
        sim = self._new_node(seeds)
        await sim.start()
        return sim

    def _running(self) -> list[SimNode]:
        return [s for s in self.sims.values() if s.running]

    def _addresses(self) -> list[str]:
        return [s.address for s in self.sims.values() if not s.left]

    async def _reap_leavers(self) -> None:
        for sim in self._running():
            if sim.node.stopped.is_set():
                sim.left = True
                await sim.stop()

    async def _settle(self, limit: float) -> bool:
        """Wait (bounded) until every running node holds one cluster state with nothing pending."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit
        while loop.time() < deadline:
            await self._reap_leavers()
            if not check_membership(self._states()):
                return True
            await asyncio.sleep(0.25)
        return False

    def _states(self) -> dict:
        states = {}
        for sim in self._running():
            state = sim.node.membership.state
            if state is None:
                states[sim.name] = (-1, b"", True, {})  # not (re)joined yet
                continue
            states[sim.name] = (state.version, state.digest(), state.next_ring is not None,
                                {m.id: m.status for m in state.members.values()})
        return states

    # -- workload ----------------------------------------------------------------------------------------------
    async def _client(self, client: SimClient, count: int) -> None:
        rng = client.rng
        for _ in range(count):
            await asyncio.sleep(rng.expovariate(1 / 0.05))
            if self.counters and rng.random() < 0.35:
                await client.increment(self._addresses(), rng.choice(self.counters))
                continue
            key = rng.choice(self.keys)
            nodes = self._addresses()
            draw = rng.random()
            if draw < 0.35 or (draw < 0.75 and key not in client.contexts):
                await client.get(nodes, key)
            elif draw < 0.75:
                await client.put(nodes, key, with_context=True)
            elif draw < 0.9:
                # Only with lww does this draw again: the runs without it stay as they were.
                await client.put(nodes, key, with_context=False, lww=self.lww and rng.random() < 0.5)
            else:
                if key in client.contexts:
                    await client.delete(nodes, key)
                else:
                    await client.get(nodes, key)

    # -- faults ----------------------------------------------------------------------------------------------
    async def _faults(self) -> None:
        rng = self._child()
        while True:
            await asyncio.sleep(rng.uniform(0.3, 2.0))
            await self._reap_leavers()
            kind = rng.choice(self.allowed)
            applied = await self._fault(kind, rng)
            if applied:
                self.result.faults.append(f"t={asyncio.get_running_loop().time():.3f} {applied}")

    async def _fault(self, kind: str, rng) -> str | None:
        running = self._running()
        members = [s for s in running if not s.left and s.ready]
        down = [s for s in self.sims.values() if not s.ready and not s.left]
        if not members:
            return None
        name = lambda: rng.choice(members).name  # noqa: E731
        if kind in ("crash", "wipe", "truncate", "corrupt"):
            # Each of these makes a node forget something (a crash: what it had not fsync'd). Two on different
            # nodes close together could take every copy of a write, which no setting promises to survive: so
            # they are AMNESIA_GAP apart unless they hit the same node, and a wipe or truncation once a run.
            sim = self.sims[name()]
            now = asyncio.get_running_loop().time()
            last_time, last_node = self.last_amnesia
            if last_node not in (None, sim.name) and now - last_time < AMNESIA_GAP:
                return None
        if kind == "corrupt":
            damaged = sim.disk.corrupt(rng)
            if damaged is None:
                return None
            self.last_amnesia = (now, sim.name)
            return f"corrupt {sim.name} {damaged!r}"
        if kind in ("crash", "wipe", "truncate"):
            if down or len(members) < 2 or (kind != "crash" and self.wiped):
                return None
            self.last_amnesia = (now, sim.name)
            await sim.crash()
            detail = ""
            if kind == "wipe":
                sim.wipe()
                self.wiped = True
            elif kind == "truncate":
                detail = f" (lost its last {sim.disk.truncate(rng.randint(1, 12))} records)"
                self.wiped = True
            self._later(rng.uniform(0.5, 5.0), self._restart, sim)
            return f"{kind} {sim.name}{detail}"
        if kind in ("lose-reaps", "hold-hints"):
            # A reap that reaches some replicas only; hints held back so that they are still in flight when the
            # keys they carry are deleted (and their tombstones come due).
            lost = Msg.REAP if kind == "lose-reaps" else Msg.HINT_PUSH
            target = self.sims[name()].address
            rule = lambda source, dest, msg_type: msg_type == lost and dest == target  # noqa: E731
            self.network.drop_rules.append(rule)
            self._later(rng.uniform(1.0, 8.0), self._drop_rule_ends, rule)
            return f"{kind} to {target}"
        if kind == "pause":
            sim = self.sims[name()]
            self.network.pause(sim.address)
            self._later(rng.uniform(0.2, 6.0), self._resume, sim)
            return f"pause {sim.name}"
        if kind == "partition":
            if self.network.cut:
                return None
            shuffled = [s.address for s in members]
            rng.shuffle(shuffled)
            cut = rng.randint(1, max(1, len(shuffled) - 1))
            self.network.partition(shuffled[:cut], shuffled[cut:])
            self._later(rng.uniform(0.5, 6.0), self._heal_network)
            return "partition " + ",".join(shuffled[:cut]) + " | " + ",".join(shuffled[cut:])
        if kind == "one-way":
            if self.network.cut or len(members) < 2:
                return None
            a, b = rng.sample([s.address for s in members], 2)
            self.network.cut_one_way(a, b)
            self._later(rng.uniform(0.5, 6.0), self._heal_network)
            return f"one-way cut {a} -> {b}"
        if kind == "clock-jump":
            sim = self.sims[name()]
            seconds = rng.choice((-1, 1)) * rng.uniform(1.0, 3600.0)
            sim.clock.jump(seconds)
            return f"clock jump {sim.name} {seconds:+.1f}s"
        if kind == "join":
            if len(self.sims) >= 7 or down:
                return None
            # Joining takes a while (it retries its seeds): it goes on after the fault plan ends.
            # Several seeds, as an operator lists them: with one, a joiner whose seed then left retried it forever.
            first = rng.choice(members)
            sim = self._new_node(seeds=(first.address,) + tuple(s.address for s in members if s is not first))
            self.starting.append(asyncio.ensure_future(sim.start()))
            return f"join {sim.name}"
        if kind in ("leave", "leave-cut"):
            staying = [s for s in members if s.name not in self.leaving]
            if len(staying) <= 3 or down or (kind == "leave-cut" and self.network.cut):
                return None
            leaver = rng.choice(staying).name
            via = self.sims[name()]
            if kind == "leave-cut":
                # Told to leave while cut off from everyone: clients still reach it, the other nodes do not.
                via = rng.choice([s for s in members if s.name != leaver])
                self.network.partition([self.sims[leaver].address], [s.address for s in members if s.name != leaver])
                self._later(rng.uniform(2.0, 10.0), self._heal_network)
            self.leaving.add(leaver)
            future = via.transport.request(via.address, Msg.LEAVE, (leaver,), 2.0)
            future.add_done_callback(lambda f: f.cancelled() or f.exception())
            return f"{kind} {leaver} via {via.name}"
        raise ValueError(f"unknown fault {kind!r}")

    def _later(self, delay, job, *args) -> None:
        async def later():
            await asyncio.sleep(delay)
            await job(*args)
        asyncio.ensure_future(later())

    async def _restart(self, sim: SimNode) -> None:
        if not sim.running and not sim.left:
            # As an operator would: a node restarts with the others as seeds (a wiped one then rejoins).
            sim.config.seeds = [s.address for s in self.sims.values() if s is not sim and not s.left]
            await sim.start()

    async def _drop_rule_ends(self, rule) -> None:
        if rule in self.network.drop_rules:
            self.network.drop_rules.remove(rule)

    async def _resume(self, sim: SimNode) -> None:
        self.network.resume(sim.address)

    async def _heal_network(self) -> None:
        self.network.heal()

    # -- the end -----------------------------------------------------------------------------------------------
    async def _heal(self) -> None:
        """Every fault ends: links heal, paused nodes resume, crashed ones restart; then repair and wait."""
        self.network.heal()
        self.network.drop_rules.clear()
        for sim in self.sims.values():
            self.network.resume(sim.address)
        for start in self.starting:
            try:
                await start
            except Exception as exc:  # noqa: BLE001 - reported: a node that cannot join is a finding
                self.result.violations.append(Violation("membership", f"a joining node failed to start: {exc!r}"))
        for sim in self.sims.values():
            await self._restart(sim)
        self.network.loss = self.network.duplicate = 0.0
        if not await self._settle(120.0):
            self.result.violations.extend(check_membership(self._states()))
        await asyncio.sleep(2.0)  # hints go out (every handoff interval)
        for _ in range(2):
            for sim in self._running():
                await sim.node.antientropy.exchange_all()
            await asyncio.sleep(1.0)

    async def _check(self, client: SimClient) -> None:
        result = self.result
        result.violations.extend(check_membership(self._states()))
        running = self._running()
        if not running:
            result.violations.append(Violation("membership", "no node is running"))
            return
        versions = _impl.vclock
        ring = running[0].node.membership.ring
        n = min(running[0].config.n, len(ring.members))
        final, copies = {}, {}
        for key in self.keys:
            read = await client.get([running[0].address], key, r=n)
            if read.outcome != "ok":
                result.violations.append(Violation("unreadable", f"{key!r}: a full read failed at the end"))
                continue
            final[key] = read.result
            partition = ring.partition_of(key)
            copies[key] = {}
            for owner in ring.replicas(partition, n):
                sim = self.sims[owner]
                try:
                    _, reply = await client.transport.call(sim.address, Msg.REPLICA_GET, (partition, key, None), 2.0)
                    obj = None if reply[0] is None else versions.Siblings.from_bytes(reply[0])
                    copies[key][owner] = sorted(obj.live_values()) if obj is not None else []
                except Exception:  # noqa: BLE001 - reported as unreadable
                    copies[key][owner] = None
        finals = {}
        for key in self.counters:
            known = None
            for _ in range(5):  # a round may lose to nothing but a retry's own backoff; bounded
                known = await client.read_counter([s.address for s in running], key)
                if known is not None:
                    break
            finals[key] = None if known is None else known[0]
        result.violations.extend(check_counters(self.history, finals))
        # Reads during the run are checked too; the final reads above are part of the history.
        result.violations.extend(check_history(self.history, final, sibling_bound=self._sibling_bound()))
        result.violations.extend(check_replicas(copies))
        result.violations.extend(Violation("error", e) for e in self.errors[:5])

    def _sibling_bound(self) -> int:
        # Dotted version vectors bound siblings by the number of truly concurrent writers: each client has at
        # most one write in flight, and a blind write is concurrent with everything.
        blind = sum(1 for op in self.history.ops if op.kind == "put" and op.blind)
        return self.client_count + blind

    async def _shutdown(self) -> None:
        for sim in self._running():
            await sim.stop()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _digest(self) -> str:
        h = hashlib.blake2b(digest_size=8)
        for op in self.history.ops:
            h.update(repr((op.client, op.kind, op.key, op.value, op.outcome, op.result, round(op.end, 9))).encode())
        for fault in self.result.faults:
            h.update(fault.encode())
        h.update(repr((self.network.sent, self.network.dropped)).encode())
        return h.hexdigest()
