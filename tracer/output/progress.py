"""A one-line progress indication on stderr for long steps (BCC compiles take seconds, a minute in a VM)."""

from __future__ import annotations

import sys
import threading
import time
from types import TracebackType
from typing import TextIO


class Progress:
    """`with Progress("compiling probes") as p: ...; p.done("3 programs")` prints "... done in 1.2 s".

    On a terminal a spinner shows elapsed time; elsewhere (CI, pipes) one line, begun at the start (so a step
    that hangs shows which) and finished at the end.
    """

    def __init__(self, what: str, stream: TextIO | None = None) -> None:
        self.what = what
        self.stream = stream or sys.stderr
        self.started = 0.0
        self.result = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Progress:
        self.started = time.monotonic()
        if self.stream.isatty():
            self._thread = threading.Thread(target=self._spin, daemon=True)
            self._thread.start()
        else:
            self.stream.write(f"{self.what} ... ")
            self.stream.flush()
        return self

    def _spin(self) -> None:
        frames = "|/-\\"
        index = 0
        while not self._stop.wait(0.2):
            elapsed = time.monotonic() - self.started
            self.stream.write(f"\r{frames[index % 4]} {self.what} ... {elapsed:4.1f} s")
            self.stream.flush()
            index += 1

    def done(self, result: str) -> None:
        self.result = result

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        lead = ""
        if self._thread:
            self._thread.join()
            self.stream.write("\r\x1b[K")
            lead = f"{self.what} ... "
        elapsed = time.monotonic() - self.started
        outcome = "failed" if kind else f"done in {elapsed:.1f} s"
        suffix = f": {self.result}" if self.result and not kind else ""
        self.stream.write(f"{lead}{outcome}{suffix}\n")
        self.stream.flush()
