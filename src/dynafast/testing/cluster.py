"""Real dynafast node processes on 127.0.0.1 for tests: start, wait until serving, crash, restart, wipe, stop.

Each node is ``python -m dynafast.cli node --listen 127.0.0.1:PORT --data-dir DIR --node-id ID ...`` in its
own session (so a Ctrl-C aimed at the test run does not reach it), with stdout and stderr appended to
``<id>.stdout.log`` / ``<id>.stderr.log`` next to its data directory. A node counts as started once it printed
``dynafast node <id> serving on <host:port>``. Processes are stopped by PID: SIGTERM, then SIGKILL after a
timeout; anything a test forgot is killed at interpreter exit.
"""
from __future__ import annotations

import atexit
import itertools
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import weakref
from pathlib import Path
from typing import Mapping, Sequence

from dynafast.testing.proxy import FaultProxy

__all__ = ["LocalCluster", "NodeProcess", "NodeStartError", "free_port", "wait_until", "DEFAULT_COMMAND"]

DEFAULT_COMMAND: tuple[str, ...] = (sys.executable, "-m", "dynafast.cli")
SERVING_LINE = re.compile(rb"^dynafast node (\S+) serving on (\S+)(?: \(RESP on (\S+)\))?\s*$", re.MULTILINE)
# How a bind failure shows up in a Python traceback or a one-line CLI error, on Linux and macOS.
_ADDRESS_IN_USE = re.compile(r"EADDRINUSE|[Aa]ddress already in use|\[Errno (?:98|48)\]")
_PORT_ATTEMPTS = 3
_POLL = 0.02


def wait_until(predicate, timeout: float = 30.0, interval: float = 0.05, message: str = "condition"):
    """Call ``predicate`` until it returns something truthy, and return that; TimeoutError after ``timeout``.

    Exceptions from ``predicate`` count as "not yet" (a node still starting refuses connections), and the last
    one is chained to the TimeoutError.
    """
    deadline = time.monotonic() + timeout
    last_error = None
    while True:
        try:
            result = predicate()
        except Exception as exc:  # noqa: BLE001 - retried until the deadline
            result, last_error = None, exc
        if result:
            return result
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{message} not met within {timeout:.1f}s") from last_error
        time.sleep(interval)


class NodeStartError(RuntimeError):
    """A node process exited, or stayed silent, before printing its serving line."""

    def __init__(self, message: str, *, node_id: str, returncode: int | None, stderr_tail: str):
        super().__init__(f"{message}\n--- stderr tail of {node_id} ---\n{stderr_tail}")
        self.node_id = node_id
        self.returncode = returncode
        self.stderr_tail = stderr_tail

    @property
    def address_in_use(self) -> bool:
        return bool(_ADDRESS_IN_USE.search(self.stderr_tail))


_handed_out: set[int] = set()  # every port free_port gave this process


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago, and not one this process was given before: ports picked for one cluster
    before any of its nodes binds would otherwise repeat (a node's --http port was another's --listen port).
    Someone else may still take it before it is used: callers retry on EADDRINUSE."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            port = sock.getsockname()[1]
        if port not in _handed_out:
            break
    _handed_out.add(port)
    return port


# Every NodeProcess that may have a live process, for the exit hook.
_live: "weakref.WeakSet[NodeProcess]" = weakref.WeakSet()
_live_proxies: "weakref.WeakSet[FaultProxy]" = weakref.WeakSet()
_live_lock = threading.Lock()


@atexit.register
def _kill_leftovers() -> None:
    with _live_lock:
        nodes, proxies = list(_live), list(_live_proxies)
    for node in nodes:
        try:
            node.kill()
        except Exception:  # noqa: BLE001 - best effort at exit
            pass
    for proxy in proxies:
        try:
            proxy.stop(timeout=2.0)
        except Exception:  # noqa: BLE001
            pass


def _tail(path: Path, limit: int = 4000) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - limit))
            return f.read().decode("utf-8", "replace")
    except FileNotFoundError:
        return ""


class NodeProcess:
    """One node process. ``port=None`` picks a free port (and another one if that was taken meanwhile)."""

    def __init__(
        self,
        node_id: str,
        data_dir: Path | str,
        *,
        port: int | None = None,
        host: str = "127.0.0.1",
        seeds: Sequence[str] = (),
        args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        command: Sequence[str] | None = None,
        log_dir: Path | str | None = None,
        ready_timeout: float = 30.0,
        resp: bool = False,
    ):
        self.node_id = node_id
        self.data_dir = Path(data_dir)
        self.host = host
        self._port_is_ours = port is None
        self.port = free_port(host) if port is None else int(port)
        # With ``resp``: a Redis protocol listener too, on a port of its own (``resp_address``).
        self.resp_port = free_port(host) if resp else None
        self.seeds = list(seeds)
        self.args = list(args)
        self.env = dict(env or {})
        self.command = tuple(command) if command is not None else DEFAULT_COMMAND
        self.log_dir = Path(log_dir) if log_dir is not None else self.data_dir.parent
        self.ready_timeout = ready_timeout
        self.served_address: str | None = None  # as printed in the serving line
        self.starts = 0
        self._popen: subprocess.Popen | None = None
        self._last_extra_args: tuple[str, ...] = ()
        self._last_env: dict[str, str] = {}
        self._stdout_offset = 0
        self._served = False  # has any start of this node served? Then its port is fixed for good.

    # -- what tests look at -----------------------------------------------------------------------------
    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def resp_address(self) -> str:
        if self.resp_port is None:
            raise RuntimeError(f"node {self.node_id} was started without a RESP listener")
        return f"{self.host}:{self.resp_port}"

    @property
    def pid(self) -> int | None:
        """The PID of the running process, None when it is not running."""
        return self._popen.pid if self.is_running() else None

    @property
    def returncode(self) -> int | None:
        """Exit status of the last process (negative: killed by that signal); None while it runs."""
        return None if self._popen is None else self._popen.poll()

    @property
    def stdout_path(self) -> Path:
        return self.log_dir / f"{self.node_id}.stdout.log"

    @property
    def stderr_path(self) -> Path:
        return self.log_dir / f"{self.node_id}.stderr.log"

    def is_running(self) -> bool:
        return self._popen is not None and self._popen.poll() is None

    def output(self) -> str:
        """Everything the node printed so far, over all its starts: stdout, then stderr."""
        parts = []
        for path in (self.stdout_path, self.stderr_path):
            try:
                parts.append(path.read_bytes().decode("utf-8", "replace"))
            except FileNotFoundError:
                pass
        return "".join(parts)

    def stderr_tail(self, limit: int = 4000) -> str:
        return _tail(self.stderr_path, limit)

    def argv(self, extra_args: Sequence[str] = ()) -> list[str]:
        argv = [*self.command, "node", "--listen", self.address, "--data-dir", str(self.data_dir)]
        argv += ["--node-id", self.node_id]
        if self.resp_port is not None:
            argv += ["--resp", self.resp_address]
        if self.seeds:
            argv += ["--seeds", ",".join(self.seeds)]
        return argv + self.args + list(extra_args)

    # -- life cycle -------------------------------------------------------------------------------------
    def start(self, extra_args: Sequence[str] = (), env: Mapping[str, str] | None = None, wait: bool = True):
        """Launch the process; with ``wait``, return once it serves (see ``wait_ready``)."""
        if self.is_running():
            raise RuntimeError(f"node {self.node_id} is already running (pid {self._popen.pid})")
        self._last_extra_args = tuple(extra_args)
        self._last_env = dict(env or {})
        self._launch()
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float | None = None) -> str:
        """Wait for the serving line and return the address it names.

        Raises NodeStartError (with the stderr tail) when the process exits first or the time runs out; the
        process is killed in the latter case. When the port picked for this node was taken meanwhile, another
        one is picked and the node launched again (a few times) - only before the node ever served.
        """
        for attempt in itertools.count(1):
            try:
                return self._wait_serving(self.ready_timeout if timeout is None else timeout)
            except NodeStartError as exc:
                if not (exc.address_in_use and self._port_is_ours and not self._served):
                    raise
                if attempt >= _PORT_ATTEMPTS:
                    raise
                self.port = free_port(self.host)
                if self.resp_port is not None:
                    self.resp_port = free_port(self.host)
                self._launch()
        raise AssertionError("unreachable")

    def _launch(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        # The serving line must reach the log file now, not when a block buffer fills.
        env["PYTHONUNBUFFERED"] = "1"
        # The flags given here are the node's, whatever the shell exports (a test that configures a node through
        # its environment passes DYNAFAST_FLAGS_FROM_ENV=1 with the variables).
        env["DYNAFAST_FLAGS_FROM_ENV"] = "0"
        env.update(self.env)
        env.update(self._last_env)
        with open(self.stdout_path, "ab") as out, open(self.stderr_path, "ab") as err:
            self._stdout_offset = out.tell()
            banner = f"--- start {self.starts + 1} of {self.node_id}: {' '.join(self.argv(self._last_extra_args))}\n"
            err.write(banner.encode())
            err.flush()
            self._popen = subprocess.Popen(
                self.argv(self._last_extra_args),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env=env,
                start_new_session=True,  # a Ctrl-C of the test run must not hit the nodes first
                close_fds=True,
            )
        self.starts += 1
        self.served_address = None
        with _live_lock:
            _live.add(self)

    def _wait_serving(self, timeout: float) -> str:
        popen = self._popen
        if popen is None:
            raise RuntimeError(f"node {self.node_id} was never started")
        deadline = time.monotonic() + timeout
        while True:
            match = self._find_serving_line()
            if match is not None:
                self._served = True
                self.served_address = match.group(2).decode()
                return self.served_address
            if popen.poll() is not None:
                # It may have printed the line just before exiting: look once more, then report.
                if self._find_serving_line() is None:
                    raise NodeStartError(
                        f"node {self.node_id} exited with status {popen.returncode} before serving",
                        node_id=self.node_id,
                        returncode=popen.returncode,
                        stderr_tail=self.stderr_tail(),
                    )
                continue
            if time.monotonic() >= deadline:
                self.kill()
                raise NodeStartError(
                    f"node {self.node_id} did not print its serving line within {timeout:.1f}s (killed)",
                    node_id=self.node_id,
                    returncode=popen.returncode,
                    stderr_tail=self.stderr_tail(),
                )
            time.sleep(_POLL)

    def _find_serving_line(self):
        try:
            with open(self.stdout_path, "rb") as f:
                f.seek(self._stdout_offset)
                data = f.read()
        except FileNotFoundError:
            return None
        for match in SERVING_LINE.finditer(data):
            if match.group(1).decode() == self.node_id:
                return match
        return None

    def terminate(self) -> None:
        """Send SIGTERM without waiting (to stop many nodes at once; follow with stop())."""
        if self.is_running():
            self._popen.send_signal(signal.SIGTERM)
            self._popen.send_signal(signal.SIGCONT)

    def pause(self) -> None:
        """SIGSTOP: the process stays alive with its sockets open but answers nothing (a hung node)."""
        if not self.is_running():
            raise RuntimeError(f"node {self.node_id} is not running")
        self._popen.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after pause()."""
        if self.is_running():
            self._popen.send_signal(signal.SIGCONT)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL if it has not exited after ``timeout`` seconds. Returns the exit status."""
        popen = self._popen
        if popen is None:
            return None
        if popen.poll() is None:
            popen.send_signal(signal.SIGTERM)
            popen.send_signal(signal.SIGCONT)  # a paused node handles the SIGTERM only once continued
            try:
                popen.wait(timeout)
            except subprocess.TimeoutExpired:
                popen.kill()
                popen.wait(10.0)
        with _live_lock:
            _live.discard(self)
        return popen.returncode

    def kill(self) -> int | None:
        """SIGKILL now, as a crash would; returns the exit status (-9 when it was running)."""
        popen = self._popen
        if popen is None:
            return None
        if popen.poll() is None:
            popen.kill()
            popen.wait(10.0)
        with _live_lock:
            _live.discard(self)
        return popen.returncode

    def restart(self, wait: bool = True, timeout: float = 10.0):
        """Stop if running, then start again with the same id, port, data dir, arguments and environment."""
        self.stop(timeout)
        self._launch()
        if wait:
            self.wait_ready()
        return self

    def wipe(self) -> None:
        """Delete the data directory (the node must be stopped): the next start is a fresh node."""
        if self.is_running():
            raise RuntimeError(f"node {self.node_id} is running: stop it before wiping its data")
        shutil.rmtree(self.data_dir, ignore_errors=True)

    def __repr__(self) -> str:
        state = f"pid {self.pid}" if self.is_running() else f"stopped ({self.returncode})"
        return f"<NodeProcess {self.node_id} {self.address} {state}>"


class LocalCluster:
    """``size`` nodes n1..nS on loopback, n1 the seed of the others; a context manager that always stops them.

    With ``proxied=True`` there is one FaultProxy per directed pair (A, B), and node A reaches node B only
    through it: A is started with ``DYNAFAST_PEER_ROUTES="B=<proxy address>,..."`` and its ``--seeds`` also
    names the proxy towards the seed. Clients and tests still reach each node directly at ``node.address``.
    """

    def __init__(
        self,
        size: int = 3,
        *,
        base_dir: Path | str,
        n: int = 3,
        r: int = 2,
        w: int = 2,
        partitions: int = 64,
        proxied: bool = False,
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        command: Sequence[str] | None = None,
        ready_timeout: float = 30.0,
        resp: bool = False,
    ):
        if size < 1:
            raise ValueError("a cluster needs at least one node")
        self.base_dir = Path(base_dir)
        self.n, self.r, self.w, self.partitions = n, r, w, partitions
        self.proxied = proxied
        self.extra_args = list(extra_args)
        self.env = dict(env or {})
        self.command = command
        self.ready_timeout = ready_timeout
        self.resp = resp  # every node serves RESP too (NodeProcess.resp_address)
        self.nodes: list[NodeProcess] = []
        self._proxies: dict[tuple[str, str], FaultProxy] = {}
        for _ in range(size):
            self._new_node()

    # -- lookups ----------------------------------------------------------------------------------------
    @property
    def addresses(self) -> list[str]:
        return [node.address for node in self.nodes]

    @property
    def node_ids(self) -> list[str]:
        return [node.node_id for node in self.nodes]

    def node(self, node_id: str) -> NodeProcess:
        for node in self.nodes:
            if node.node_id == node_id:
                return node
        raise KeyError(node_id)

    def proxy(self, src_id: str, dst_id: str) -> FaultProxy:
        """The proxy carrying the traffic that node ``src_id`` sends to node ``dst_id``."""
        if not self.proxied:
            raise RuntimeError("this cluster was created with proxied=False")
        return self._proxies[(src_id, dst_id)]

    @property
    def proxies(self) -> dict[tuple[str, str], FaultProxy]:
        return dict(self._proxies)

    # -- life cycle -------------------------------------------------------------------------------------
    def start(self) -> "LocalCluster":
        try:
            if self.proxied:
                for src in self.nodes:
                    for dst in self.nodes:
                        self._ensure_proxy(src, dst)
                for node in self.nodes:
                    self._route(node)
            seed, rest = self.nodes[0], self.nodes[1:]
            seed.start()
            self._retarget(seed)
            # The others start together (their imports overlap) and are waited for one by one.
            for node in rest:
                node.seeds = [self._seed_address(node)]
                node.start(wait=False)
            for node in rest:
                node.wait_ready()
                self._retarget(node)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop every node (SIGTERM to all, then wait; SIGKILL after ``timeout``) and every proxy."""
        errors = []
        for node in self.nodes:
            node.terminate()
        for node in self.nodes:
            try:
                node.stop(timeout)
            except Exception as exc:  # noqa: BLE001 - keep stopping the others
                errors.append(exc)
        for proxy in self._proxies.values():
            try:
                proxy.stop()
            except Exception as exc:  # noqa: BLE001
                errors.append(exc)
            with _live_lock:
                _live_proxies.discard(proxy)
        # A later start() makes fresh proxies (and routes to them).
        self._proxies.clear()
        if errors:
            raise errors[0]

    def __enter__(self) -> "LocalCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def add_node(self, wait: bool = True) -> NodeProcess:
        """Start one more node, seeded from the first.

        In a proxied cluster its traffic to the others goes through new proxies; the nodes already running
        had their routes fixed when they started, so they reach the new node directly until restarted.
        """
        node = self._new_node()
        if self.proxied:
            for other in self.nodes:
                self._ensure_proxy(node, other)
                self._ensure_proxy(other, node)
            for other in self.nodes:
                self._route(other)  # takes effect at their next restart
        node.seeds = [self._seed_address(node)]
        node.start(wait=wait)
        if wait:
            self._retarget(node)
        return node

    # -- faults -----------------------------------------------------------------------------------------
    def partition(self, group_a: Sequence[str], group_b: Sequence[str]) -> None:
        """Cut every proxy between the two groups, both directions."""
        for a in group_a:
            for b in group_b:
                if a != b:
                    self.proxy(a, b).cut()
                    self.proxy(b, a).cut()

    def heal(self) -> None:
        """Every proxy back to normal."""
        for proxy in self._proxies.values():
            proxy.heal()

    # -- internals --------------------------------------------------------------------------------------
    def _new_node(self) -> NodeProcess:
        node_id = f"n{len(self.nodes) + 1}"
        node = NodeProcess(
            node_id,
            self.base_dir / node_id,
            args=[
                "--n", str(self.n), "--r", str(self.r), "--w", str(self.w),
                "--partitions", str(self.partitions), *self.extra_args,
            ],
            env=self.env,
            command=self.command,
            log_dir=self.base_dir,
            ready_timeout=self.ready_timeout,
            resp=self.resp,
        )
        # Two quick bind-to-0 calls can return the same port; distinct ones save a retry.
        taken = {other.port for other in self.nodes}
        for _ in range(10):
            if node.port not in taken:
                break
            node.port = free_port(node.host)
        self.nodes.append(node)
        return node

    def _ensure_proxy(self, src: NodeProcess, dst: NodeProcess) -> None:
        if src is dst or (src.node_id, dst.node_id) in self._proxies:
            return
        proxy = FaultProxy(dst.address).start()
        self._proxies[(src.node_id, dst.node_id)] = proxy
        with _live_lock:
            _live_proxies.add(proxy)

    def _route(self, node: NodeProcess) -> None:
        routes = [
            f"{dst}={proxy.address}" for (src, dst), proxy in self._proxies.items() if src == node.node_id
        ]
        node.env = {**node.env, "DYNAFAST_PEER_ROUTES": ",".join(routes)}  # keeps what a test set for this node

    def _retarget(self, node: NodeProcess) -> None:
        # The node may have moved to another port when its first one was taken meanwhile.
        for (src, dst), proxy in self._proxies.items():
            if dst == node.node_id:
                proxy.set_target(node.address)

    def _seed_address(self, node: NodeProcess) -> str:
        seed = self.nodes[0]
        if self.proxied:
            return self._proxies[(node.node_id, seed.node_id)].address
        return seed.address
