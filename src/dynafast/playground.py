"""The node processes of ``dynafast local``, kept under watch: a node that exits is reported and stays down
until someone asks for it back (``dynafast node-restart NODE`` from another terminal), so the cluster can be
watched coping with a failure.

The supervisor and ``node-restart`` talk through files in the data directory, which both already know and
which only the user owns: ``local.json`` says which supervisor runs (its pid) and its nodes; a restart request
is a file ``control/NODE.restart`` holding a token, answered by ``control/NODE.TOKEN.done`` (JSON: ok,
message). Files need no port, and a supervisor that died is recognised by its pid.
"""
from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

from dynafast.errors import DynafastError

STATE_FILE = "local.json"
CONTROL_DIR = "control"


class LocalNode:
    def __init__(self, node_id: str, address: str, cmd: list[str]):
        self.node_id = node_id
        self.address = address
        self.cmd = cmd
        self.proc: subprocess.Popen | None = None
        self.reported = False  # its exit was reported

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class LocalNodes:
    """Start, watch, restart and stop the node processes of a local cluster whose data is in ``base``."""

    def __init__(self, base: Path, out=None):
        self.base = base
        self.out = out or sys.stdout
        self.nodes: dict[str, LocalNode] = {}
        (base / CONTROL_DIR).mkdir(exist_ok=True)
        for stale in (base / CONTROL_DIR).iterdir():  # requests left by an earlier run are not for us
            stale.unlink(missing_ok=True)

    def start(self, node_id: str, address: str, cmd: list[str]) -> None:
        """Start a node and wait until it serves; DynafastError if it does not."""
        node = self.nodes.get(node_id) or LocalNode(node_id, address, cmd)
        self.nodes[node_id] = node
        log = open(self.base / f"{node_id}.log", "ab")
        try:
            # Every flag is in cmd: variables an operator's shell exports for `dynafast node` must not count.
            env = dict(os.environ, DYNAFAST_FLAGS_FROM_ENV="0")
            node.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, start_new_session=True, env=env)
        finally:
            log.close()
        node.reported = False
        self.save()  # from now on stop_all() takes care of it
        line = node.proc.stdout.readline().decode(errors="replace").strip()
        if "serving on" not in line:
            raise DynafastError(f"node {node_id} did not start; see {self.base / (node_id + '.log')}")

    def watch(self) -> None:
        """One round: report nodes that exited, and serve restart requests."""
        for node in self.nodes.values():
            if node.proc is not None and not node.reported and node.proc.poll() is not None:
                node.reported = True
                self.say(f"node {node.node_id} (pid {node.proc.pid}) exited with code "
                         f"{_exit_text(node.proc.returncode)}; the others go on. Bring it back with: "
                         f"dynafast node-restart {node.node_id}{self._data_dir_option()}")
                self.save()
        for request in sorted((self.base / CONTROL_DIR).glob("*.restart")):
            self._serve_restart(request)

    def _serve_restart(self, request: Path) -> None:
        node_id = request.name[:-len(".restart")]
        try:
            token = request.read_text().strip()
        except OSError:
            return
        request.unlink(missing_ok=True)
        node = self.nodes.get(node_id)
        if node is None:
            ok, message = False, f"no node {node_id} here (nodes: {', '.join(self.nodes)})"
        else:
            self.say(f"restarting node {node_id} (asked by dynafast node-restart)")
            try:
                self._stop(node)
                self.start(node_id, node.address, node.cmd)
                ok, message = True, f"node {node_id} is serving on {node.address} again (pid {node.proc.pid})"
            except DynafastError as exc:
                ok, message = False, str(exc)
            self.say(message)
        done = self.base / CONTROL_DIR / f"{node_id}.{token}.done"
        temporary = done.with_suffix(".tmp")
        temporary.write_text(json.dumps({"ok": ok, "message": message}))
        os.replace(temporary, done)

    def _stop(self, node: LocalNode, timeout: float = 15.0) -> None:
        if node.proc is None:
            return
        if node.proc.poll() is None:
            node.proc.send_signal(signal.SIGTERM)
            try:
                node.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                node.proc.kill()
                node.proc.wait()
        node.proc.stdout.close()
        node.reported = True  # stopped on purpose: nothing to report

    def stop_all(self) -> None:
        for node in self.nodes.values():
            if node.running:
                node.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 15
        for node in self.nodes.values():
            self._stop(node, timeout=max(0.1, deadline - time.monotonic()))
        (self.base / STATE_FILE).unlink(missing_ok=True)

    def save(self) -> None:
        """Record who supervises the nodes, for ``dynafast node-restart``."""
        state = {"pid": os.getpid(), "nodes": {
            node.node_id: {"address": node.address, "pid": node.proc.pid if node.proc else None,
                           "running": node.running} for node in self.nodes.values()}}
        temporary = self.base / (STATE_FILE + ".tmp")
        temporary.write_text(json.dumps(state))
        os.replace(temporary, self.base / STATE_FILE)

    def say(self, line: str) -> None:
        print(line, file=self.out, flush=True)

    def _data_dir_option(self) -> str:
        return "" if self.base == Path("./dynafast-data").resolve() else f" --data-dir {self.base}"


def _exit_text(code: int) -> str:
    if code < 0:
        try:
            return f"{code} (killed by {signal.Signals(-code).name})"
        except ValueError:
            return str(code)
    return str(code)


def request_restart(base: Path, node_id: str, wait: float) -> str:
    """Ask the ``dynafast local`` whose data is in ``base`` to restart ``node_id``; its answer, or
    DynafastError."""
    try:
        state = json.loads((base / STATE_FILE).read_text())
    except (OSError, ValueError):
        raise DynafastError(f"no dynafast local is running with its data in {base}") from None
    try:
        os.kill(state["pid"], 0)
    except ProcessLookupError:
        raise DynafastError(f"the dynafast local of {base} (pid {state['pid']}) is gone") from None
    except PermissionError:
        pass  # alive, another user's
    if node_id not in state["nodes"]:
        raise DynafastError(f"no node {node_id} in the dynafast local of {base} "
                            f"(nodes: {', '.join(state['nodes'])})")
    token = secrets.token_hex(8)
    control = base / CONTROL_DIR
    temporary = control / f"{node_id}.{token}.tmp"
    temporary.write_text(token)
    os.replace(temporary, control / f"{node_id}.restart")
    done = control / f"{node_id}.{token}.done"
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if done.exists():
            answer = json.loads(done.read_text())
            done.unlink(missing_ok=True)
            if not answer["ok"]:
                raise DynafastError(answer["message"])
            return answer["message"]
        time.sleep(0.1)
    raise DynafastError(f"dynafast local did not restart {node_id} within {wait:g}s")
