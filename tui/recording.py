"""`r` in the TUI: record the raw events the reader thread polls into a .ptrec file (tracer/recording/fileformat.py's
Recorder).

The reader hands every polled batch to `TuiRecording.add`; the header is built in a worker (live it probes the
attach ladder, ~2 s) while events already queue, so nothing between the key press and the open file is lost.
"""

from __future__ import annotations

import os
import platform
import socket
import stat
import threading
import time
from collections.abc import Callable
from typing import Any

from tracer import __version__
from tracer.events.decode import EVENT_SIZE
from tracer.output.report import Resolver
from tracer.recording.fileformat import FORMAT_VERSION
from tracer.recording.recorder import Recorder

BATCH = 1024  # events per EVENTS record, as `podtrace record`
TICK_S = 1.0  # counters record and flush


def recording_name(now: float | None = None, suffix: str = ".ptrec") -> str:
    return time.strftime("podtrace-%Y%m%d-%H%M%S", time.localtime(now)) + suffix


def default_save_dir() -> str:
    """Where `r` and the screenshot key write: $PODTRACE_DIR, else $XDG_STATE_HOME/podtrace, else
    ~/.local/state/podtrace. Never the cwd (BCC changes it while compiling, and it may be anyone's)."""
    if os.environ.get("PODTRACE_DIR"):
        return os.environ["PODTRACE_DIR"]
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(state, "podtrace")


def private_dir(path: str) -> str:
    """Make (0700) or check the save directory: a real directory, not a symlink to somewhere else."""
    os.makedirs(path, mode=0o700, exist_ok=True)
    info = os.lstat(path)
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        raise OSError(f"{path} is not a directory (a symlink is not followed)")
    return path


def create_private(path: str) -> str:
    """Create a new 0600 file at path, never following a symlink or replacing an existing file."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    os.close(fd)
    return path


def new_file(directory: str, suffix: str, create: bool = True) -> str:
    """A fresh private file in the save directory, named after the time (-2, -3, ... when the second is taken).
    create=False only picks the free name, for a writer that creates the file itself with O_EXCL|O_NOFOLLOW
    (tracer.recording.recorder.Recorder)."""
    private_dir(directory)
    base = os.path.join(directory, recording_name(suffix=""))
    for attempt in range(1, 100):
        path = f"{base}{'' if attempt == 1 else f'-{attempt}'}{suffix}"
        if not create:
            if not os.path.lexists(path):
                return path
            continue
        try:
            return create_private(path)
        except FileExistsError:
            continue
    raise FileExistsError(f"{base}{suffix}: 99 files already exist for this second")


def since(baseline: dict[str, int], now: dict[str, int]) -> dict[str, int]:
    """Counters counted since the baseline: a recording's own events and losses, not the session's totals."""
    return {name: value - baseline.get(name, 0) for name, value in now.items()}


def basic_header(names: Resolver, node: str, kernel: str, programs: list[str], attached: list[str],
                 plan: dict[str, Any] | None, kernel_filter: str) -> dict[str, Any]:
    """A header from what the TUI knows (replay, or live without `podtrace record`'s header builder)."""
    wall, mono = time.time_ns(), time.monotonic_ns()
    return {
        "format_version": FORMAT_VERSION,
        "podtrace_version": __version__,
        "kernel_release": kernel,
        "machine": platform.machine(),
        "hostname": node or socket.gethostname(),
        # keep the source's clock: recorded ts_ns + wall_offset_ns is still the wall time the source said
        "clock": {"wall_ns": wall, "monotonic_ns": mono, "wall_offset_ns": names.wall_offset_ns},
        "attach_plan": plan,
        "attach_plan_error": "" if plan else "not known to the TUI",
        "attached": list(attached),
        "programs": list(programs),
        "drop_reasons": {str(value): name for value, name in sorted(names.reasons.items())},
        "filter": {"expression": kernel_filter, "netns": None, "netns_inode": 0, "ifname": None},
        "event_size": EVENT_SIZE,
        "names": {"netns": {}, "lab": None},
        "recorded_by": "podtrace tui",
    }


class TuiRecording:
    """One recording started with `r`: thread-safe `add` from the reader, `stop` from the app."""

    def __init__(self, path: str, header: Callable[[], dict[str, Any]], names: Resolver,
                 counters: Callable[[], dict[str, int]],
                 probe_counters: Callable[[], dict[str, dict[str, int]]] | None = None) -> None:
        self.path = path
        self.error = ""
        self.events = 0
        self._header = header
        self._names = names
        # The kernel's counters are the session's running totals: the recording keeps what happened while it ran.
        start = counters()
        self._counters = lambda: since(start, counters())
        self._probe_counters = None
        if probe_counters is not None:  # sources that count per probe (LiveSource, recent recordings)
            probe_start = probe_counters()
            self._probe_counters = lambda: {probe: since(probe_start.get(probe, {}), values)
                                            for probe, values in probe_counters().items()}
        self._lock = threading.Lock()
        self._pending: list[bytes] = []
        self._recorder: Recorder | None = None
        self._closed = False
        self._next_tick = 0.0
        self._opener = threading.Thread(target=self._open, name="podtrace-rec-open", daemon=True)
        self._opener.start()

    def _open(self) -> None:
        try:
            recorder = Recorder(self.path, self._header(), self._names.netns, self._names.symbol)
            recorder.write_counters(self._counters(), time.monotonic_ns(), self._probes())
            recorder.flush()
        except Exception as err:  # header probes and file IO fail broadly; the header says it
            self.error = f"recording failed: {err}"
            return
        with self._lock:
            self._recorder = recorder
            self._next_tick = time.monotonic() + TICK_S

    def _probes(self) -> dict[str, dict[str, int]] | None:
        return self._probe_counters() if self._probe_counters is not None else None

    @property
    def ready(self) -> bool:
        return self._recorder is not None

    def add(self, raw_events: list[bytes]) -> None:
        with self._lock:
            if self._closed or self.error:
                return
            self._pending.extend(raw_events)
            if self._recorder is None:
                return
            if len(self._pending) >= BATCH:
                self._write()
            if time.monotonic() >= self._next_tick:
                self._next_tick = time.monotonic() + TICK_S
                self._write()
                self._recorder.write_counters(self._counters(), time.monotonic_ns(), self._probes())
                self._recorder.flush()  # a killed TUI loses at most the last second

    def _write(self) -> None:
        assert self._recorder is not None
        if self._pending:
            self._recorder.add(self._pending)
            self._pending = []
        self.events = self._recorder.events

    def stop(self, timeout: float = 30.0) -> int:
        """Write what is queued and close the file; the number of events recorded."""
        self._opener.join(timeout)
        with self._lock:
            self._closed = True
            if self._recorder is None:
                return 0
            self._write()
            self._recorder.close(self._counters(), time.time_ns(), probes=self._probes())
            return self._recorder.events
