"""Running the real `podtrace` CLI from tests: start, wait for --ready-file, stop with a signal, read JSON."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

COMMAND = [sys.executable, "-m", "tracer.cli.main"]


@dataclass
class Running:
    process: subprocess.Popen[str]
    ready_file: str
    stdout: str = ""
    stderr: str = ""
    returncode: int | None = None
    lines: list[dict[str, Any]] = field(default_factory=list)

    def stop(self, timeout: float = 30) -> Running:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        self.stdout, self.stderr = self.process.communicate(timeout=timeout)
        self.returncode = self.process.returncode
        self.lines = [json.loads(line) for line in self.stdout.splitlines() if line.startswith("{")]
        return self

    @property
    def summary(self) -> dict[str, Any]:
        found = [line for line in self.lines if line.get("summary")]
        assert found, f"no summary object in output: {self.stdout!r} {self.stderr!r}"
        return found[-1]

    @property
    def rows(self) -> list[dict[str, Any]]:
        return [line for line in self.lines if not line.get("summary")]


def start(*args: str, timeout: float = 60, env: dict[str, str] | None = None) -> Running:
    """Start `podtrace ARGS --ready-file F` and return once probes are attached; `env` replaces the environment."""
    handle, ready = tempfile.mkstemp(prefix="podtrace-ready-")
    os.close(handle)
    os.unlink(ready)
    process = subprocess.Popen(
        [*COMMAND, *args, "--ready-file", ready], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    deadline = time.monotonic() + timeout
    while not os.path.exists(ready):
        if process.poll() is not None:
            out, err = process.communicate()
            raise AssertionError(f"podtrace exited early ({process.returncode}): {err.strip()} {out.strip()}")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError("podtrace did not attach its probes in time")
        time.sleep(0.05)
    os.unlink(ready)
    return Running(process, ready)


def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*COMMAND, *args], capture_output=True, text=True, timeout=timeout, check=False)
