"""Start the traced consumer (tracer.benchmarks.consumer) as a child, wait until attached, stop it, read its JSON."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from tracer.benchmarks.netns import python_module


@dataclass
class Traced:
    """The consumer's result, filled in when the context exits."""

    args: list[str]
    result: dict[str, Any] = field(default_factory=dict)
    pid: int = 0

    def cpu_seconds(self) -> float:
        """User + system CPU time the consumer process (all its threads) has used so far."""
        with open(f"/proc/{self.pid}/stat", encoding="ascii") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime (fields 14, 15)

    @property
    def counters(self) -> dict[str, int]:
        return dict(self.result.get("counters", {}))


def _wait_ready(process: subprocess.Popen[str], path: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if process.poll() is not None:
            _, err = process.communicate()
            raise RuntimeError(f"the traced consumer exited early ({process.returncode}): {err.strip()[-500:]}")
        if time.monotonic() > deadline:
            process.kill()
            process.communicate()
            raise RuntimeError(f"the traced consumer did not attach within {timeout:g} s")
        time.sleep(0.02)


@contextmanager
def traced(args: Sequence[str], timeout: float = 120, env: dict[str, str] | None = None,
           cwd: str | None = None) -> Iterator[Traced]:
    """podtrace's probes attached (per `args`, see consumer.py) for the duration of the block.

    env/cwd run another version's consumer (tracer.benchmarks.probecost: a baseline commit's tree)."""
    handle, ready = tempfile.mkstemp(prefix="podtrace-bench-ready-")
    os.close(handle)
    os.unlink(ready)
    process = subprocess.Popen(python_module("tracer.benchmarks.consumer", "--ready-file", ready, *args),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=cwd)
    handle_result = Traced(list(args), pid=process.pid)
    try:
        _wait_ready(process, ready, timeout)
        yield handle_result
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
        try:
            out, err = process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            out, err = process.communicate()
        if os.path.exists(ready):
            os.unlink(ready)
    lines = [line for line in out.splitlines() if line.startswith("{")]
    if process.returncode != 0 or not lines:
        raise RuntimeError(f"the traced consumer failed ({process.returncode}): {err.strip()[-500:]}")
    handle_result.result = json.loads(lines[-1])
