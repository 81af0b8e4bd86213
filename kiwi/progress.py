"""A progress bar with bytes and speed on a terminal; silent when piped."""

from __future__ import annotations

import os
import sys
import time

from .sizes import format_size


class Progress:
    def __init__(self, label: str, stream=None):
        self.label = label
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty()
        self.start = time.monotonic()
        self.last = 0.0
        self.shown = False

    def __call__(self, done: int, total: int | None = None) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self.last < 0.1 and (total is None or done < total):
            return
        self.last = now
        speed = done / max(now - self.start, 1e-6)
        width = 30
        try:
            width = max(10, min(40, os.get_terminal_size(self.stream.fileno()).columns - 50))
        except OSError:
            pass
        if total:
            frac = min(done / total, 1.0)
            bar = "#" * int(frac * width) + "-" * (width - int(frac * width))
            text = f"\r{self.label} [{bar}] {format_size(done)}/{format_size(total)} {format_size(int(speed))}/s "
        else:
            text = f"\r{self.label} {format_size(done)} {format_size(int(speed))}/s "
        self.stream.write(text)
        self.stream.flush()
        self.shown = True

    def close(self) -> None:
        if self.shown:
            self.stream.write("\n")
            self.stream.flush()
            self.shown = False
