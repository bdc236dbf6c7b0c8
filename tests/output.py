"""Reading the output of a process started by a test, line by line, as it comes."""

from __future__ import annotations

import queue
import subprocess
import threading
import time
from typing import IO


class Output:
    """Collects a process's stdout in a thread, so that waiting for a line never misses one.

    (Waiting with select() on the pipe misses lines that a buffered readline() has already
    read ahead.)
    """

    def __init__(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        self.seen: list[str] = []
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._read, args=(process.stdout,), daemon=True)
        self._thread.start()

    def _read(self, stream: IO[str]) -> None:
        try:
            for line in stream:
                self._lines.put(line)
        except (OSError, ValueError):  # closed while reading: the test is over
            pass
        finally:
            self._lines.put(None)

    def _next(self, deadline: float) -> str | None:
        try:
            return self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise AssertionError(f"timed out; lines so far: {self.seen!r}") from None

    def wait_for(self, text: str, timeout: float = 30) -> str:
        """Return the first line (from now on) that contains ``text``; fail after ``timeout``."""
        deadline = time.monotonic() + timeout
        while (line := self._next(deadline)) is not None:
            self.seen.append(line)
            if text in line:
                return line
        raise AssertionError(f"the output ended without {text!r}: {self.seen!r}")

    def rest(self, timeout: float = 30) -> list[str]:
        """Return the lines still to come, until the process closes its output."""
        deadline = time.monotonic() + timeout
        lines = []
        while (line := self._next(deadline)) is not None:
            self.seen.append(line)
            lines.append(line.rstrip("\n"))
        return lines
