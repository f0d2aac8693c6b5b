"""Where the TUI's events come from, and the reader thread that turns them into a few snapshots per second.

A Source is anything with `poll(timeout_ms) -> list[PacketEvent]` and `counters() -> dict`:
tracer.sources.live.LiveSource,
tracer.sources.replay.ReplaySource, or ListSource / RawListSource here (tests). Sources with `poll_raw` also feed `r`.
"""

from __future__ import annotations

import contextlib
import platform
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from textual.message import Message

from tracer.events.decode import EVENT_SIZE, EVENT_SIZES, PacketEvent, decode, decode_any
from tracer.kernel.ladder import AttachPlan
from tracer.output.errors import PodtraceError
from tracer.output.report import Resolver
from tui.messages import PlanReady, SnapshotReady, SourceFailed, SourceStarted
from tui.model import Model
from tui.recording import TuiRecording, default_save_dir


class Source(Protocol):
    def poll(self, timeout_ms: int = 100) -> list[PacketEvent]: ...

    def counters(self) -> dict[str, int]: ...


@dataclass
class SessionInfo:
    """What the header and the probes view say about where events come from."""

    names: Resolver
    node: str = field(default_factory=platform.node)
    kernel: str = field(default_factory=platform.release)
    mode: str = "live"  # or "replay FILE"
    kernel_filter: str = ""
    programs: list[str] = field(default_factory=list)
    attached: list[str] = field(default_factory=list)
    plan: AttachPlan | None = None  # known up front in replay
    probe_plan: Callable[[], AttachPlan] | None = None  # live: probe the kernel's ladder in a worker
    live_clock: bool = True  # rates against time.monotonic_ns (live) or the newest event (replay)
    save_dir: str = field(default_factory=default_save_dir)  # recordings (`r`) and screenshots go here
    tables: dict[str, Any] = field(default_factory=dict)  # view name -> TableSource (tui/model.py)
    record_header: Callable[[], dict[str, Any]] | None = None  # live: a recording header with the node's names
    # sets each drop row's "cause" (tracer/analysis/causes.py, as JSON): live from the namespaces now, replayed from
    # what the recording holds; None: no cause is shown
    explain: Callable[[list[dict[str, Any]]], None] | None = None
    # Set once the attach ladder is known: BCC must not compile two programs at once (it crashes), so other BCC
    # users (the Softirq view's probe) wait for it.
    plan_done: threading.Event = field(default_factory=threading.Event)


class ListSource:
    """Decoded events delivered in batches, then nothing: a replay that needs no recording format."""

    def __init__(self, events: Sequence[PacketEvent], counters: dict[str, int] | None = None,
                 batch: int = 1000) -> None:
        self._events = list(events)
        self._position = 0
        self._batch = batch
        self._counters = dict(counters or {"events": len(self._events), "lost": 0})

    def poll(self, timeout_ms: int = 100) -> list[PacketEvent]:
        if self._position >= len(self._events):
            time.sleep(timeout_ms / 1000)
            return []
        batch = self._events[self._position:self._position + self._batch]
        self._position += len(batch)
        return batch

    def counters(self) -> dict[str, int]:
        return dict(self._counters)

    @property
    def done(self) -> bool:
        return self._position >= len(self._events)


class RawListSource:
    """Raw event bytes delivered in batches (`poll_raw`, like LiveSource and ReplaySource), then nothing."""

    def __init__(self, raw_events: Sequence[bytes], counters: dict[str, int] | None = None, batch: int = 1000,
                 probe_counters: dict[str, dict[str, int]] | None = None) -> None:
        self.raw_events = list(raw_events)
        self._position = 0
        self._batch = batch
        self._counters = dict(counters or {"events": len(self.raw_events), "lost": 0})
        if probe_counters is not None:  # like LiveSource's; otherwise the source has none
            self.probe_counters = lambda: {probe: dict(values) for probe, values in probe_counters.items()}

    def poll_raw(self, timeout_ms: int = 100) -> list[bytes]:
        if self._position >= len(self.raw_events):
            time.sleep(timeout_ms / 1000)
            return []
        batch = self.raw_events[self._position:self._position + self._batch]
        self._position += len(batch)
        return batch

    def poll(self, timeout_ms: int = 100) -> list[PacketEvent]:
        return [decode(raw) for raw in self.poll_raw(timeout_ms) if len(raw) >= EVENT_SIZE]

    def counters(self) -> dict[str, int]:
        return dict(self._counters)

    @property
    def done(self) -> bool:
        return self._position >= len(self.raw_events)


class Reader:
    """Starts the source, polls it, feeds the model and posts one SnapshotReady every `interval` seconds."""

    def __init__(self, source: Source, model: Model, post: Callable[[Message], object], info: SessionInfo,
                 interval: float = 0.25, poll_ms: int = 50) -> None:
        self.source = source
        self.model = model
        self.post = post
        self.info = info
        self.interval = interval
        self.poll_ms = poll_ms
        self.stopped = threading.Event()
        self.started = threading.Event()
        self.recording: TuiRecording | None = None  # set and cleared by the app (`r`)
        self._thread = threading.Thread(target=self._run, name="podtrace-reader", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self.stopped.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        began = time.monotonic()
        try:
            start: Any = getattr(self.source, "start", None)
            if start is not None:
                start(progress=False)
            attached = list(getattr(self.source, "attached", []) or self.info.attached)
            self.info.attached = attached
            self.post(SourceStarted(attached, time.monotonic() - began))
            self.started.set()
            if self.info.probe_plan is not None and self.info.plan is None:
                threading.Thread(target=self._probe_plan, name="podtrace-ladder", daemon=True).start()
            else:
                if self.info.plan is not None:
                    self.post(PlanReady(self.info.plan))
                self.info.plan_done.set()
            self._loop()
        except PodtraceError as err:
            self.post(SourceFailed(err.one_line()))
        except Exception as err:  # shown in the TUI rather than lost in a dead thread
            self.post(SourceFailed(f"the event source failed: {err}"))
        finally:
            close = getattr(self.source, "close", None)
            if close is not None:
                with contextlib.suppress(Exception):  # closing on the way out; nothing left to tell
                    close()

    def _poll(self) -> list[Any]:
        """Decoded events (packet, NAT and the other kinds, by their type); raw bytes too when the source has them,
        for a recording started with `r`."""
        poll_raw = getattr(self.source, "poll_raw", None)
        if poll_raw is None:
            return list(self.source.poll(self.poll_ms))
        raws: list[bytes] = poll_raw(self.poll_ms)
        recording = self.recording
        if recording is not None and raws:
            recording.add(raws)
        return [decode_any(raw) for raw in raws if len(raw) >= EVENT_SIZES.get(raw[0], EVENT_SIZE)]

    def _counters(self) -> tuple[dict[str, int], dict[str, dict[str, int]]]:
        """The kernel's counters, totals and per probe (sources without per-probe counters: none)."""
        per_probe = getattr(self.source, "probe_counters", None)
        return self.source.counters(), (per_probe() if per_probe is not None else {})

    def _loop(self) -> None:
        next_post = 0.0
        while not self.stopped.is_set():
            events = self._poll()
            if events:
                self.model.add(events)
            now = time.monotonic()
            if now >= next_post:
                self.post(SnapshotReady(self.model.snapshot(*self._counters())))
                next_post = now + self.interval

    def _probe_plan(self) -> None:
        assert self.info.probe_plan is not None
        try:
            plan = self.info.probe_plan()
        except Exception as err:  # BCC and netlink raise broadly; the view says what failed
            self.post(PlanReady(None, f"could not probe the attach ladder: {err}"))
            return
        finally:
            self.info.plan_done.set()
        self.info.plan = plan
        self.post(PlanReady(plan))


def open_replay(path: str) -> tuple[Source, SessionInfo]:
    """A recording through tracer.sources.replay.ReplaySource (the recordings work), with its names and attach plan."""
    try:
        from tracer.sources.replay import ReplaySource
    except ImportError:
        raise PodtraceError("--replay needs recordings (tracer/sources/replay.py), which this build does not have yet",
                            "run `podtrace tui` live on the node") from None
    from tracer.check.table import RecordedNodeFindings
    from tracer.node.cause_state import add_causes
    from tui.journeys import RecordedJourneysTable
    from tui.services import RecordedFlowsTable
    from tui.softirq import RecordedSoftirqTable

    source = ReplaySource(path)
    header = source.header
    tables: dict[str, Any] = {  # every section the recording holds
        "flows": RecordedFlowsTable(source), "node": RecordedNodeFindings(header.get("node_checks")),
        "softirq": RecordedSoftirqTable(source)}
    if header.get("merged"):  # `podtrace merge -o`: the journeys across its nodes
        tables["journeys"] = RecordedJourneysTable(header["merged"], source.names.pod_of_ip)
    info = SessionInfo(
        source.resolver(),
        node=str(header.get("hostname") or "?"),
        kernel=str(header.get("kernel_release") or "?"),
        mode=f"replay {path}",
        programs=list(header.get("programs") or []),
        attached=list(source.attached),
        plan=source.plan(),
        live_clock=False,
        tables=tables,
        # what `report` explains drops from: the header's rules, the trailer's node state once the reader has
        # reached it (a drill-down before then says the state is not read yet)
        explain=lambda rows: add_causes(rows, source.cause_states()),
    )
    return source, info
