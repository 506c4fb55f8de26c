"""Following a ring change from the command line: `dynafast leave` until the node has left, and
`dynafast transfers --watch` until no transfer is left. Both poll STATUS (once a second by default) and stop at
a deadline: nothing here waits unbounded.
"""
from __future__ import annotations

import json
import sys
import time

from dynafast.errors import DynafastError


class ProgressLine:
    """One line of progress: rewritten in place on a terminal; elsewhere (a log, a pipe) printed anew each
    time it changes."""

    def __init__(self, out=None):
        self.out = out or sys.stdout
        self.tty = self.out.isatty()
        self.last: str | None = None

    def show(self, text: str) -> None:
        if text == self.last:
            return
        self.last = text
        self.out.write(f"\r\x1b[K{text}" if self.tty else f"{text}\n")
        self.out.flush()

    def close(self) -> None:
        if self.tty and self.last is not None:
            self.out.write("\n")
            self.out.flush()


def bar(done: int, total: int, width: int = 30) -> str:
    filled = width * done // total if total else width
    return f"[{'#' * filled}{'.' * (width - filled)}] {done:,}/{total:,}"


def leave_progress(node_id: str, seen: dict | None, leaver: dict | None) -> tuple[bool, str]:
    """(left, a line saying how far it got) from another member's status (``seen``) and the leaver's own
    (None when it does not answer: it may have stopped, having left)."""
    if seen is None:
        return False, f"{node_id}: no other node answers"
    member = {m["id"]: m for m in seen["members"]}.get(node_id)
    handing_off = leaver is not None and leaver.get("transfers", {}).get("handing_off")
    if member is None or member["state"] == "left":
        if handing_off:
            # Out of the ring: it gives each vnode it still holds to the new owners, then its hints, then stops.
            done, left = leaver["transfers"].get("handed_off", 0), leaver["transfers"].get("to_hand_off", 0)
            if done + left:
                return False, f"{node_id} out of the ring: {bar(done, done + left)} vnodes handed off"
            return False, f"{node_id} is out of the ring: handing off what it still holds"
        return True, f"{node_id} has left"
    if member["state"] != "leaving":
        return False, f"{node_id} is {member['state']}: waiting for the leave to be planned"
    transfers = seen.get("transfers", {})
    total = transfers.get("required_cluster_wide", 0)
    waiting = "" if leaver is not None else f" (waiting for {node_id} to answer: its data has to leave first)"
    if seen.get("next_ring_version") is None or not total:
        return False, f"{node_id} is leaving: waiting for the new ring{waiting}"
    done = total - transfers.get("pending_cluster_wide", 0)
    return False, f"{node_id} leaving: {bar(done, total)} partition transfers done{waiting}"


def watch_leave(client, node_id: str, leaver_address: str, others: list[str], wait: float,
                interval: float = 1.0, out=None) -> bool:
    """Show how the leave of ``node_id`` goes until it has left (True) or ``wait`` seconds passed (False).
    ``others``: addresses of the other members, whose status tells what the cluster did."""
    line = ProgressLine(out)
    deadline = time.monotonic() + wait
    try:
        while True:
            seen = None
            for address in others:
                try:
                    seen = client.status(address)
                    break
                except DynafastError:
                    continue
            try:
                leaver = client.status(leaver_address)
            except DynafastError:
                leaver = None
            left, text = leave_progress(node_id, seen, leaver)
            line.show(text)
            if left:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(interval)
    finally:
        line.close()


def transfers_left(report: dict) -> bool:
    """Is any transfer left: a ring change under way, or a node still sending or handing off?"""
    if report["next_ring_version"] is not None:
        return True
    return any(not node.get("error") and (node.get("running") or node.get("handing_off"))
               for node in report["nodes"].values())


def transfers_line(report: dict) -> str:
    """The ring change's progress over the whole cluster, as the nodes report it."""
    totals = [(t.get("required_cluster_wide", 0), t.get("pending_cluster_wide", 0))
              for t in report["nodes"].values() if "error" not in t]
    total, pending = max(totals, default=(0, 0))
    if report["next_ring_version"] is None or not total:
        return "transfers left: none" if not transfers_left(report) else "transfers left: hand-offs"
    return f"partition transfers: {bar(total - pending, total)} done"


def watch_transfers(fetch, format_report, wait: float, interval: float = 1.0, as_json: bool = False,
                    out=None) -> bool:
    """Show ``fetch()``'s transfers report every ``interval`` seconds until no transfer is left (True) or
    ``wait`` seconds passed (False). On a terminal the screen is redrawn; elsewhere a report is printed
    whenever it changed (as one JSON object per line with ``as_json``)."""
    out = out or sys.stdout
    tty = out.isatty() and not as_json
    deadline = time.monotonic() + wait
    last = None
    while True:
        report = fetch()
        text = json.dumps(report) if as_json else f"{format_report(report)}\n{transfers_line(report)}"
        if text != last:
            out.write(f"\x1b[H\x1b[J{text}\n" if tty else f"{text}\n" if as_json else f"{text}\n\n")
            out.flush()
            last = text
        if not transfers_left(report):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
