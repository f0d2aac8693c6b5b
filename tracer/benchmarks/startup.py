"""Start-up: from `podtrace drops` being started to its --ready-file (probes compiled and attached)."""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable

from tracer.benchmarks.netns import python_module
from tracer.benchmarks.stats import Section, median


def _once(timeout: float = 120) -> float:
    handle, ready = tempfile.mkstemp(prefix="podtrace-bench-ready-")
    os.close(handle)
    os.unlink(ready)
    started = time.monotonic()
    process = subprocess.Popen(python_module("tracer.cli.main", "drops", "--ready-file", ready),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        while not os.path.exists(ready):
            if process.poll() is not None:
                raise RuntimeError(f"podtrace drops exited early ({process.returncode}): "
                                   f"{(process.stderr.read() if process.stderr else '').strip()[-300:]}")
            if time.monotonic() - started > timeout:
                raise RuntimeError(f"podtrace drops did not attach within {timeout:g} s")
            time.sleep(0.01)
        return time.monotonic() - started
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
        process.communicate(timeout=60)
        if os.path.exists(ready):
            os.unlink(ready)


def _import_seconds() -> float:
    started = time.monotonic()
    subprocess.run(python_module("tracer.cli.main", "--help"), capture_output=True, check=True)
    return time.monotonic() - started


def run(quick: bool, log: Callable[[str], None]) -> Section:
    repeats = 1 if quick else 5
    log(f"start-up: {repeats} runs of podtrace drops")
    runs = [_once() for _ in range(repeats)]
    cli = median([_import_seconds() for _ in range(repeats)])
    total = median(runs)
    return Section(
        "Start-up",
        f"Wall time from starting `podtrace drops` to its `--ready-file` (BTF read, BCC compile, probes attached), "
        f"median of {repeats} runs; beside it the cost of starting the CLI at all (`podtrace --help`).",
        ["step", "median", "runs"],
        [["`podtrace drops` to probes attached", f"{total:.2f} s", ", ".join(f"{r:.2f}" for r in runs)],
         ["`podtrace --help` (interpreter + imports)", f"{cli:.2f} s", ""],
         ["compile + attach (difference)", f"{total - cli:.2f} s", ""]],
    )
