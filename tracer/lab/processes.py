"""Starting and stopping the lab's processes (servers, background traffic, load) and remembering their pids."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tracer.lab import state
from tracer.output.errors import LabError

# Where `python -m tracer...` finds this package from inside `ip netns exec`.
PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])


def python_module(module: str, *args: str, netns: str | None = None, log: str = "") -> int:
    """Start `python -m module args` detached (own session), inside `netns` when given; return its pid."""
    argv = (["ip", "netns", "exec", netns] if netns else []) + [sys.executable, "-m", module, *args]
    env = dict(os.environ, PYTHONPATH=PACKAGE_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    state.STATE_DIR.mkdir(parents=True, exist_ok=True)
    out = open(state.STATE_DIR / log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 (handed to the child)
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True, cwd="/")
    except OSError as err:
        raise LabError(f"cannot start {module}: {err.strerror}") from err
    finally:
        if log:
            out.close()  # type: ignore[union-attr]
    return proc.pid


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of this process counts as gone.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def stop(pids: list[int], timeout: float = 3.0) -> None:
    """SIGTERM, then SIGKILL what is left; the pids' process groups go too (they are session leaders)."""
    for pid in pids:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(alive(p) for p in pids):
        _reap(pids)
        time.sleep(0.05)
    for pid in pids:
        if alive(pid):
            _signal(pid, signal.SIGKILL)
    _reap(pids)


def _signal(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def _reap(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)


READY_TIMEOUT_ENV = "PODTRACE_LAB_READY_TIMEOUT"
READY_TIMEOUT = 15.0  # seconds for the lab's servers to start; Python starts far slower under emulation (VM tier)


def ready_timeout() -> float:
    """The servers' start-up wait: $PODTRACE_LAB_READY_TIMEOUT seconds, or 15."""
    value = os.environ.get(READY_TIMEOUT_ENV, "").strip()
    if not value:
        return READY_TIMEOUT
    try:
        seconds = float(value)
    except ValueError:
        seconds = 0.0
    if not 0 < seconds < float("inf"):
        raise LabError(f"{READY_TIMEOUT_ENV}={value!r} is not a positive number of seconds",
                       f"unset it to use {READY_TIMEOUT:g} s")
    return seconds


def wait_for_files(paths: list[Path], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(p.exists() for p in paths):
            return
        time.sleep(0.05)
    missing = [p.name for p in paths if not p.exists()]
    raise LabError(f"{what} did not start within {timeout:g} s: {', '.join(missing)}",
                   f"see the logs in {state.STATE_DIR}")
