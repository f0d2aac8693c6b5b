"""Where the TUI's ingestion runs: beside the UI in a thread, or in a child process of its own.

In a thread (ThreadIngest: tests, small sources) decoding and aggregating share the UI's GIL, so under a drop storm
a key waits seconds behind the reader. In a process (ProcessIngest: `podtrace tui`, live and replay) the source, the
Model and the event-fed tables live in a forked child, which may use a core of its own; the UI process only draws
the snapshots it is sent and asks for timelines, filters and recordings over a pipe.

Both give the app the same few calls, so the app does not know which one it has.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import multiprocessing
import os
import signal
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any, Protocol

from textual.message import Message

from tracer.output.errors import PodtraceError
from tui.messages import PlanReady, SnapshotReady, SourceFailed, SourceStarted
from tui.model import ConnKey, FlowKey, Model, Snapshot, TimelineRow
from tui.pyfilter import Predicate, ViewFilter
from tui.recording import TuiRecording, basic_header
from tui.sources import Reader, SessionInfo, Source

CALL_TIMEOUT_S = 10.0  # a request waits at most one poll and one batch in the child; this only bounds a hung child
PR_SET_PDEATHSIG = 1


class Recording(Protocol):
    @property
    def path(self) -> str: ...

    @property
    def error(self) -> str: ...

    def stop(self) -> int: ...


class Ingest(Protocol):
    """What the app asks of its ingestion, wherever it runs."""

    @property
    def filter_text(self) -> str: ...

    def start(self) -> None: ...

    def request_stop(self) -> None: ...

    def stop(self, timeout: float = 5.0) -> None: ...

    def set_filter(self, expression: str, predicate: Predicate | None) -> None: ...

    def set_window(self, seconds: float | None) -> None: ...

    def snapshot(self, counters: dict[str, int], probe_counters: dict[str, dict[str, int]]) -> Snapshot: ...

    def timeline(self, ident: str) -> list[TimelineRow]: ...

    def cause(self, ident: str) -> dict[str, Any] | None: ...

    def flow_timeline(self, flow: FlowKey) -> list[TimelineRow]: ...

    def connection_timeline(self, conn: ConnKey) -> list[TimelineRow]: ...

    def record(self, path: str) -> Recording: ...


def _header_for(info: SessionInfo, model: Model) -> Callable[[], dict[str, Any]]:
    """A recording's header: the live session's own (`podtrace record`-like), else the basic one."""
    if info.record_header is not None:
        return info.record_header
    return lambda: basic_header(
        model.names,
        info.node,
        info.kernel,
        info.programs,
        info.attached,
        info.plan.to_json() if info.plan else None,
        info.kernel_filter,
    )


def _close_tables(model: Model) -> None:
    for table in model.tables.values():
        close = getattr(table, "close", None)
        if close is not None:
            close()


class ThreadIngest:
    """The Reader thread beside the UI, feeding a Model the app's thread reads directly."""

    def __init__(
        self, source: Source, model: Model, post: Callable[[Message], object], info: SessionInfo, interval: float = 0.25
    ) -> None:
        self.source = source
        self.model = model
        self.info = info
        self.reader = Reader(source, model, post, info, interval=interval)

    @property
    def filter_text(self) -> str:
        return self.model.filter_text

    def start(self) -> None:
        self.reader.start()

    def request_stop(self) -> None:
        self.reader.stopped.set()

    def stop(self, timeout: float = 5.0) -> None:
        self.reader.stop(timeout)  # detaches the probes (the source closes in the reader thread)
        _close_tables(self.model)

    def set_filter(self, expression: str, predicate: Predicate | None) -> None:
        self.model.set_filter(expression, predicate)

    def set_window(self, seconds: float | None) -> None:
        self.model.set_window(seconds)

    def snapshot(self, counters: dict[str, int], probe_counters: dict[str, dict[str, int]]) -> Snapshot:
        return self.model.snapshot(counters, probe_counters)

    def timeline(self, ident: str) -> list[TimelineRow]:
        return self.model.timeline(ident)

    def cause(self, ident: str) -> dict[str, Any] | None:
        return self.model.cause(ident)

    def flow_timeline(self, flow: FlowKey) -> list[TimelineRow]:
        return self.model.flow_timeline(flow)

    def connection_timeline(self, conn: ConnKey) -> list[TimelineRow]:
        return self.model.connection_timeline(conn)

    def record(self, path: str) -> Recording:
        recording = TuiRecording(
            path,
            _header_for(self.info, self.model),
            self.model.names,
            self.source.counters,
            getattr(self.source, "probe_counters", None),
        )
        self.reader.recording = recording
        return _ThreadRecording(recording, self.reader)


class _ThreadRecording:
    def __init__(self, recording: TuiRecording, reader: Reader) -> None:
        self.recording = recording
        self.reader = reader
        self.path = recording.path

    @property
    def error(self) -> str:
        return self.recording.error

    @property
    def ready(self) -> bool:
        return self.recording.ready

    def stop(self) -> int:
        self.reader.recording = None
        return self.recording.stop()


class ProcessIngest:
    """The Reader, the Model and the source in a forked child; snapshots and answers come back over a pipe.

    The child is forked before the source starts, so BCC compiles, the probes attach and the ring buffer is read
    there. It dies with the UI (PR_SET_PDEATHSIG), closing its source on the way out (tc filters are removed, links
    and programs go with its fds); if it dies first, the app is told in one line.
    """

    def __init__(
        self, source: Source, model: Model, post: Callable[[Message], object], info: SessionInfo, interval: float = 0.25
    ) -> None:
        self.source = source
        self.model = model  # the child's copy is the one fed; this one only holds names and the table set
        self.info = info
        self.post = post
        self.interval = interval
        self.filter_text = ""
        self.process: multiprocessing.process.BaseProcess | None = None
        self._conn: Connection | None = None
        self._send_lock = threading.Lock()
        self._ids = itertools.count(1)
        self._replies: dict[int, tuple[threading.Event, list[Any]]] = {}
        self._stopping = False
        self._failed = False
        self._recording: _RemoteRecording | None = None
        self._listener = threading.Thread(target=self._listen, name="podtrace-ingest-pipe", daemon=True)

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def start(self) -> None:
        context = multiprocessing.get_context("fork")  # the source and the tables are inherited, never pickled
        ours, theirs = context.Pipe()
        self.process = context.Process(
            target=_child,
            name="podtrace-ingest",
            daemon=True,
            args=(theirs, ours, self.source, self.model, self.info, self.interval, os.getpid()),
        )
        self.process.start()
        theirs.close()
        self._conn = ours
        self._listener.start()

    def request_stop(self) -> None:
        if self._stopping:
            return
        self._stopping = True
        with contextlib.suppress(OSError, ValueError):  # the child may be gone already
            self._send(("stop",))

    def stop(self, timeout: float = 5.0) -> None:
        self.request_stop()
        if self.process is None:
            return
        self.process.join(timeout)
        if self.process.is_alive():  # SIGTERM: the child still closes its source (its handler stops the loop)
            self.process.terminate()
            self.process.join(timeout)
        if self._conn is not None:
            self._conn.close()

    def set_filter(self, expression: str, predicate: Predicate | None) -> None:
        self._call("set_filter", expression)  # compiled again in the child: a predicate does not cross a pipe
        self.filter_text = expression

    def set_window(self, seconds: float | None) -> None:
        self._call("set_window", seconds)

    def snapshot(self, counters: dict[str, int], probe_counters: dict[str, dict[str, int]]) -> Snapshot:
        snapshot: Snapshot = self._call("snapshot", counters, probe_counters)
        return snapshot

    def timeline(self, ident: str) -> list[TimelineRow]:
        rows: list[TimelineRow] = self._call("timeline", ident)
        return rows

    def flow_timeline(self, flow: FlowKey) -> list[TimelineRow]:
        rows: list[TimelineRow] = self._call("flow_timeline", flow)
        return rows

    def cause(self, ident: str) -> dict[str, Any] | None:
        cause: dict[str, Any] | None = self._call("cause", ident)
        return cause

    def connection_timeline(self, conn: ConnKey) -> list[TimelineRow]:
        rows: list[TimelineRow] = self._call("connection_timeline", conn)
        return rows

    def record(self, path: str) -> Recording:
        self._call("record", path)
        self._recording = _RemoteRecording(path, self)
        return self._recording

    # -- the pipe --

    def _send(self, message: tuple[Any, ...]) -> None:
        assert self._conn is not None
        with self._send_lock:
            self._conn.send(message)

    def _call(self, method: str, *args: Any) -> Any:
        """One request answered by the child between two polls; a dead child raises RuntimeError."""
        ident = next(self._ids)
        done = threading.Event()
        answer: list[Any] = []
        self._replies[ident] = (done, answer)
        try:
            self._send(("call", ident, method, args))
            if not done.wait(CALL_TIMEOUT_S) or not answer:
                raise RuntimeError(f"the event reader did not answer {method} within {CALL_TIMEOUT_S:.0f} s")
        except (OSError, ValueError) as err:
            raise RuntimeError(f"the event reader is gone ({err})") from None
        finally:
            self._replies.pop(ident, None)
        ok, value = answer
        if not ok:
            raise RuntimeError(value)
        return value

    def _listen(self) -> None:
        assert self._conn is not None
        while True:
            try:
                message = self._conn.recv()
            except (EOFError, OSError):
                break
            kind = message[0]
            if kind == "reply":
                _, ident, ok, value = message
                waiting = self._replies.get(ident)
                if waiting is not None:
                    waiting[1].extend((ok, value))
                    waiting[0].set()
            elif kind == "snapshot":
                _, snapshot, recording = message
                if self._recording is not None and recording is not None:
                    self._recording.error, self._recording.events = recording
                self.post(SnapshotReady(snapshot))
            elif kind == "started":
                self.post(SourceStarted(message[1], message[2]))
            elif kind == "plan":
                self.info.plan = message[1]
                self.post(PlanReady(message[1], message[2]))
            elif kind == "failed":
                self._failed = True
                self.post(SourceFailed(message[1]))
        for done, _answer in list(self._replies.values()):
            done.set()  # no answer is coming: callers raise
        if not self._stopping and not self._failed:  # a failure it reported says more than its exit
            if self.process is not None:
                self.process.join(1.0)  # its pipe closes a moment before its exit status is known
            code = self.process.exitcode if self.process is not None else None
            self.post(SourceFailed(f"the event reader process ended unexpectedly (exit status {code})"))


class _RemoteRecording:
    def __init__(self, path: str, ingest: ProcessIngest) -> None:
        self.path = path
        self.error = ""
        self.events = 0
        self._ingest = ingest

    def stop(self) -> int:
        try:
            self.events, self.error = self._ingest._call("record_stop")
        except RuntimeError as err:
            self.error = f"recording failed: {err}"
        self._ingest._recording = None
        return self.events


# -- the child --


def _child(
    conn: Connection,
    parent_end: Connection,
    source: Source,
    model: Model,
    info: SessionInfo,
    interval: float,
    parent_pid: int,
) -> None:
    parent_end.close()
    with contextlib.suppress(OSError, AttributeError):  # not Linux: the pipe's EOF still stops it
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the UI owns the terminal and its keys
    send_lock = threading.Lock()
    state: dict[str, Any] = {"recording": None}

    def send(message: tuple[Any, ...]) -> None:
        with send_lock, contextlib.suppress(OSError, ValueError):  # the UI is gone: the loop ends on its own
            conn.send(message)

    def post(message: Message) -> None:
        if isinstance(message, SnapshotReady):
            recording: TuiRecording | None = state["recording"]
            send(("snapshot", message.snapshot, (recording.error, recording.events) if recording else None))
        elif isinstance(message, SourceStarted):
            send(("started", message.attached, message.seconds))
        elif isinstance(message, PlanReady):
            send(("plan", message.plan, message.error))
        elif isinstance(message, SourceFailed):
            send(("failed", message.message))

    reader = Reader(source, model, post, info, interval=interval)
    signal.signal(signal.SIGTERM, lambda _signum, _frame: reader.stopped.set())
    if os.getppid() != parent_pid:  # the UI died between fork and prctl
        return
    server = threading.Thread(
        target=_serve, args=(conn, send, reader, model, source, info, state), name="podtrace-ingest-serve", daemon=True
    )
    server.start()
    try:
        reader._run()  # this thread is the reader: the child has nothing else to do
    finally:
        recording = state["recording"]
        if recording is not None:
            recording.stop()
        _close_tables(model)


def _serve(
    conn: Connection,
    send: Callable[[tuple[Any, ...]], None],
    reader: Reader,
    model: Model,
    source: Source,
    info: SessionInfo,
    state: dict[str, Any],
) -> None:
    """Answers the UI's requests; "stop" or the UI's end stops the reader."""
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            break
        if message[0] == "stop":
            break
        _, ident, method, args = message
        if method == "cause":  # reads the namespace (seconds at worst): beside the requests, not in their way
            threading.Thread(target=_answer_cause, args=(send, ident, model, args), daemon=True).start()
            continue
        try:
            value = _answer(method, args, reader, model, source, info, state)
            send(("reply", ident, True, value))
        except PodtraceError as err:  # a bad filter: the UI shows its one line
            send(("reply", ident, False, err.one_line()))
        except Exception as err:  # the UI shows it; the reader keeps going
            send(("reply", ident, False, str(err)))
    reader.stopped.set()


def _answer_cause(send: Callable[[tuple[Any, ...]], None], ident: int, model: Model, args: tuple[Any, ...]) -> None:
    try:
        send(("reply", ident, True, model.cause(*args)))
    except Exception as err:  # the drill-down says it; the reader keeps going
        send(("reply", ident, False, str(err) or type(err).__name__))


def _answer(
    method: str,
    args: tuple[Any, ...],
    reader: Reader,
    model: Model,
    source: Source,
    info: SessionInfo,
    state: dict[str, Any],
) -> Any:
    if method == "set_filter":
        (expression,) = args
        model.set_filter(expression, ViewFilter(expression) if expression else None)
        return None
    if method == "set_window":
        model.set_window(*args)
        return None
    if method == "snapshot":
        return model.snapshot(*args)
    if method == "timeline":
        return model.timeline(*args)
    if method == "flow_timeline":
        return model.flow_timeline(*args)
    if method == "connection_timeline":
        return model.connection_timeline(*args)
    if method == "record":
        (path,) = args
        recording = TuiRecording(
            path, _header_for(info, model), model.names, source.counters, getattr(source, "probe_counters", None)
        )
        state["recording"] = reader.recording = recording
        return None
    if method == "record_stop":
        recording = state["recording"]
        state["recording"] = reader.recording = None
        if recording is None:
            return 0, ""
        events = recording.stop()
        return events, recording.error
    raise ValueError(f"unknown request {method}")


def ingest_for(
    kind: str, source: Source, model: Model, post: Callable[[Message], object], info: SessionInfo, interval: float
) -> ThreadIngest | ProcessIngest:
    if kind == "process":
        return ProcessIngest(source, model, post, info, interval)
    if kind == "thread":
        return ThreadIngest(source, model, post, info, interval)
    raise ValueError(f"ingest is 'thread' or 'process', not {kind!r}")
