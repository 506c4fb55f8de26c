"""A plain-text progress bar on stderr, for the verbs that wait on long work (restore, repair).

On a terminal the bar is redrawn in place; otherwise (a pipe, a log, a test) a line is printed each time the
whole percent changes, so the output still shows how the work went and that it reached 100%.
"""
from __future__ import annotations

import sys


class Progress:
    WIDTH = 30

    def __init__(self, label: str, total: int, unit: str = "", stream=None):
        self.label = label
        self.total = max(0, total)
        self.unit = unit
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty()
        self._shown = None

    def update(self, done: int, total: int | None = None) -> None:
        if total is not None:
            self.total = max(0, total)
        done = min(done, self.total)
        percent = 100 if self.total == 0 else 100 * done // self.total
        if percent == self._shown:
            return
        self._shown = percent
        filled = self.WIDTH * percent // 100
        bar = "#" * filled + "." * (self.WIDTH - filled)
        unit = f" {self.unit}" if self.unit else ""
        line = f"{self.label} [{bar}] {percent:3d}% ({done:,}/{self.total:,}{unit})"
        self.stream.write(("\r" + line) if self.tty else line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty and self._shown is not None:
            self.stream.write("\n")
            self.stream.flush()
