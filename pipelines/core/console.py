"""What a tailor command prints: its own progress line, with Ray's native log lines kept off the console.

Ray's C++ core worker writes some lines straight to file descriptor 2 (an `E` line about actor constructor
arguments on every actor pool, `Failed to kill actor` at shutdown); no logging setting reaches them.
`native_stderr_to` points descriptor 2 at a file for the length of a command and gives Python's own
stderr (tracebacks, warnings, this module's progress line) the terminal back.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import TextIO


class ProgressLine:
    """One line: rows done/total, rows/s, ok share, ETA (at the pace since the first rows came: none on the
    first line). Redrawn in place on a terminal; on a pipe or a
    log file a new line every `every` seconds (and one at the end), so a long run shows it is alive."""

    def __init__(self, total: int, label: str = "rows", stream: TextIO | None = None, every: float = 10.0,
                 show_ok: bool = True, unit: str = "rows"):
        self.total, self.label, self.show_ok, self.unit = total, label, show_ok, unit
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.every = 0.5 if self.tty else every
        self.started = time.monotonic()
        self.last = -math.inf  # the first update draws, however long the machine has been up (monotonic)
        self.done = self.ok = 0
        self.drawn: tuple[int, int] | None = None  # (done, ok) of the last line written
        # (time, rows done) after the first update: the ETA takes the pace from there, not from the start, which
        # includes start-up (Ray, the first piece's latency) and would put a 20 s job's first ETA at minutes
        self.first: tuple[float, int] | None = None

    def update(self, rows: int, ok: int) -> None:
        now = time.monotonic()
        self.done += rows
        self.ok += ok
        if self.first is None:
            self.first = (now, self.done)
        if now - self.last >= self.every:
            self.last = now
            self._draw(now)

    def close(self) -> None:
        if self.tty or self.drawn != (self.done, self.ok):  # a log gets the final count once
            self._draw(time.monotonic())
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()

    def text(self, now: float) -> str:
        elapsed = max(now - self.started, 1e-9)
        rate = self.done / elapsed
        share = f"{self.ok / self.done:.1%}" if self.done else "-"
        left = self.total - self.done
        since, before = self.first or (now, self.done)
        pace = (self.done - before) / (now - since) if now > since and self.done > before else 0.0
        eta = duration(left / pace) if pace > 0 and left > 0 else ("-" if left > 0 else "0s")
        ok = f"  ok {share}" if self.show_ok else ""
        return (f"{self.label} {self.done:,}/{self.total:,} ({self.done / max(self.total, 1):.0%})  "
                f"{rate:,.1f} {self.unit}/s{ok}  elapsed {duration(elapsed)}  eta {eta}")

    def _draw(self, now: float) -> None:
        line = self.text(now)
        self.drawn = (self.done, self.ok)
        self.stream.write(f"\r\x1b[K{line}" if self.tty else f"{line}\n")
        self.stream.flush()


def duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


@contextlib.contextmanager
def native_stderr_to(path: str | None = None) -> Iterator[str]:
    """Descriptor 2 writes into `path` (a temporary file when None) inside the block; sys.stderr and the
    logging handlers that wrote to it keep writing to the terminal. Yields the file's path."""
    if path is None:
        fd, path = tempfile.mkstemp(prefix="tailor-native-", suffix=".log")
        os.close(fd)
    sys.stderr.flush()
    terminal_fd = os.dup(2)
    terminal = os.fdopen(terminal_fd, "w", buffering=1, encoding=sys.stderr.encoding, errors="backslashreplace")
    previous = sys.stderr
    handlers = [h for h in logging.getLogger().handlers
                if isinstance(h, logging.StreamHandler) and h.stream is previous]
    with open(path, "ab") as log_file:
        os.dup2(log_file.fileno(), 2)
    sys.stderr = terminal
    for handler in handlers:
        handler.setStream(terminal)
    try:
        yield path
    finally:
        terminal.flush()
        os.dup2(terminal_fd, 2)
        sys.stderr = previous
        for handler in handlers:
            handler.setStream(previous)
        terminal.close()
