"""The flight recorder: the last minutes of per-packet events in a bounded on-disk ring of recording segments,
and incidents sealed from it into normal self-contained recordings (`podtrace report`, the TUI, tracer.api).

    DIR/segments/seg-<wall>-<pid>-<seq>.ptrec.gz   one recording each (tracer/recording.Recorder), flushed every
                                                   tick, so a SIGKILLed serve leaves every segment readable up to
                                                   its last second
    DIR/incidents/incident-<wall>-<slug>.ptrec.gz  the window [trigger - before, trigger + after], written under a
                                                   temporary name and renamed when complete

Retention: segments rotate every `segment_s` or at a quarter of `ring_bytes`; the oldest go when the ring passes
`ring_bytes` or is older than `ring_s`; incidents beyond `incident_bytes` go oldest first. After a trigger opens an
incident, further firings until it is sealed join it, and none opens another for `cooldown_s` after the seal.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tracer.events.decode import EVENT_DROP, packet_view
from tracer.output.errors import RecordingError
from tracer.recording.fileformat import (
    FORMAT_MINOR,
    FORMAT_VERSION,
    KIND_COUNTERS,
    KIND_EVENTS,
    KIND_HEADER,
    KIND_NAMES,
    KIND_NAT_FLOWS,
    KIND_SOFTIRQ,
    KIND_TRAILER,
    RecordReader,
    RecordWriter,
    split_events,
)
from tracer.recording.recorder import Recorder
from tracer.serve.incident_causes import MAX_DROP_KINDS, IncidentCauses, drop_kind

SEGMENT_SUFFIX = ".ptrec.gz"
# every event kind starts type, cpu, ts_ns (bpf/podtrace.h): the packet event's ts_ns is everyone's
_TS, _TS_AT = packet_view("ts_ns")
COPY_BATCH = 1024


@dataclass
class Segment:
    path: str
    start_ns: int  # monotonic, when opened
    end_ns: int  # monotonic, last flush (or close)
    size: int = 0
    ours: bool = True  # False: left by an earlier serve (after a kill): pruned, never sealed
    icmp: dict[str, dict[str, int]] | None = None  # ICMP counters when it opened (an incident's start, for causes)


@dataclass
class Incident:
    trigger: str
    what: str
    at_ns: int
    seal_ns: int
    firings: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class Retention:
    ring_bytes: int = 256 << 20
    ring_s: float = 600.0
    segment_s: float = 60.0
    before_s: float = 120.0
    after_s: float = 30.0
    incident_bytes: int = 1 << 30
    cooldown_s: float = 60.0


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-")[:40] or "trigger"


class FlightRecorder:
    def __init__(self, directory: str, retention: Retention, header: Callable[[], dict[str, Any]],
                 netns_name: Callable[[int], str], symbol: Callable[[int], str],
                 log: Callable[[str], None], clock: Callable[[], int] = time.monotonic_ns,
                 causes: IncidentCauses | None = None) -> None:
        self.retention = retention
        self.segments_dir = os.path.join(directory, "segments")
        self.incidents_dir = os.path.join(directory, "incidents")
        for path in (self.segments_dir, self.incidents_dir):
            os.makedirs(path, mode=0o700, exist_ok=True)
        self._header = header
        self._netns_name = netns_name
        self._symbol = symbol
        self._log = log
        self._clock = clock
        self._causes = causes  # the node state behind an incident's causes, read when it seals
        self._seq = 0
        self.segments: list[Segment] = [Segment(path, 0, 0, os.path.getsize(path), ours=False)
                                        for path in self._listing(self.segments_dir)]
        self.pending: Incident | None = None
        self.cooldown_until = 0
        self.incidents: list[str] = []  # sealed paths, this run
        self.sealed: dict[str, int] = {}  # trigger -> incidents sealed
        self.fired: dict[str, int] = {}  # trigger -> firings
        # (monotonic_ns, counters, probe counters) as written: an incident's counters at its start.
        self._counter_log: deque[tuple[int, dict[str, int], dict[str, dict[str, int]]]] = deque()
        self._recorder: Recorder | None = None
        self._netns: dict[int, str] = {}
        self._open()
        self._prune_segments()

    @staticmethod
    def _listing(directory: str) -> list[str]:
        names = sorted(name for name in os.listdir(directory) if name.endswith(SEGMENT_SUFFIX)
                       and not name.startswith("."))
        return [os.path.join(directory, name) for name in names]

    # --- the ring -----------------------------------------------------------------------------------------

    def _open(self) -> None:
        now = self._clock()
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        while True:  # never over a file already in the ring (a reused pid in the same second)
            path = os.path.join(self.segments_dir, f"seg-{stamp}-{os.getpid()}-{self._seq:06d}{SEGMENT_SUFFIX}")
            self._seq += 1
            if not os.path.exists(path):
                break
        header = self._header()
        names = dict(header.get("names", {}))
        names["netns"] = {**names.get("netns", {}), **{str(k): v for k, v in self._netns.items()}}
        header["names"] = names
        header["flight_recorder"] = {"segment": self._seq - 1}
        self._recorder = Recorder(path, header, self._netns_name, self._symbol)
        if self._counter_log:
            _, counters, probes = self._counter_log[-1]
            self._recorder.write_counters(counters, now, probes)
        self._recorder.flush()
        icmp = self._causes.icmp() if self._causes is not None else None
        self.segments.append(Segment(path, now, now, os.path.getsize(path), icmp=icmp))

    def _close_current(self) -> None:
        recorder = self._recorder
        if recorder is None:
            return
        self._netns = dict(recorder.netns)
        recorder.close({}, time.time_ns())
        current = self.segments[-1]
        current.end_ns = self._clock()
        current.size = os.path.getsize(current.path)
        self._recorder = None

    def add(self, raw_events: list[bytes]) -> None:
        if raw_events and self._recorder is not None:
            self._recorder.add(raw_events)

    def write_counters(self, counters: dict[str, int], probes: dict[str, dict[str, int]]) -> None:
        now = self._clock()
        self._counter_log.append((now, dict(counters), {p: dict(v) for p, v in probes.items()}))
        horizon = now - int(self.retention.ring_s * 1e9)
        while len(self._counter_log) > 1 and self._counter_log[1][0] < horizon:
            self._counter_log.popleft()
        if self._recorder is not None:
            self._recorder.write_counters(counters, now, probes)

    def write_nat_flows(self, records: list[dict[str, Any]]) -> None:
        if self._recorder is not None:
            self._recorder.write_nat_flows(records, self._clock())

    def write_softirq(self, snapshot: Any) -> None:
        if self._recorder is not None:
            self._recorder.write_softirq(snapshot)

    def flush(self) -> None:
        """Once a tick: everything so far reaches the file; rotation and retention."""
        if self._recorder is None:
            return
        self._recorder.flush()
        current = self.segments[-1]
        current.end_ns = self._clock()
        current.size = os.path.getsize(current.path)
        age = (current.end_ns - current.start_ns) / 1e9
        if age >= self.retention.segment_s or current.size >= self.retention.ring_bytes // 4:
            self._close_current()
            self._open()
        self._prune_segments()  # every tick: the ring is over its cap for at most one tick's events

    def _prune_segments(self) -> None:
        horizon = self._clock() - int(self.retention.ring_s * 1e9)
        while len(self.segments) > 1:
            oldest = self.segments[0]
            too_old = oldest.ours and oldest.end_ns < horizon
            if self.ring_bytes() <= self.retention.ring_bytes and not too_old:
                break
            with contextlib.suppress(FileNotFoundError):
                os.unlink(oldest.path)
            self.segments.pop(0)

    def ring_bytes(self) -> int:
        return sum(segment.size for segment in self.segments)

    def incident_bytes(self) -> int:
        total = 0
        for path in self._listing(self.incidents_dir):
            with contextlib.suppress(FileNotFoundError):
                total += os.path.getsize(path)
        return total

    # --- triggers and sealing ---------------------------------------------------------------------------

    def trigger(self, name: str, what: str) -> None:
        now = self._clock()
        self.fired[name] = self.fired.get(name, 0) + 1
        firing = {"trigger": name, "what": what, "monotonic_ns": now, "wall_ns": time.time_ns()}
        if self.pending is not None:
            self.pending.firings.append(firing)
            return
        if now < self.cooldown_until:
            return
        self.pending = Incident(name, what, now, now + int(self.retention.after_s * 1e9), [firing])
        self._log(f"trigger {name!r} fired ({what}): sealing the window in {self.retention.after_s:g} s")

    def tick(self, force: bool = False) -> str | None:
        """Seal the pending incident once its window after the trigger has passed (or now, with force)."""
        pending = self.pending
        if pending is None or (self._clock() < pending.seal_ns and not force):
            return None
        self.pending = None
        self.flush()
        path = self._seal(pending)
        self.cooldown_until = self._clock() + int(self.retention.cooldown_s * 1e9)
        self.sealed[pending.trigger] = self.sealed.get(pending.trigger, 0) + 1
        self._prune_incidents(path)
        return path

    def _seal(self, incident: Incident) -> str:
        lo = incident.at_ns - int(self.retention.before_s * 1e9)
        hi = max(incident.seal_ns, self._clock())
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(incident.firings[0]["wall_ns"] / 1e9))
        final = os.path.join(self.incidents_dir, f"incident-{stamp}-{_slug(incident.trigger)}{SEGMENT_SUFFIX}")
        # Hidden until complete; the same suffix, so it is compressed the same way (tracer/recording/fileformat.py).
        partial = os.path.join(self.incidents_dir, f".partial-{os.path.basename(final)}")
        chosen = [s for s in self.segments if s.ours and s.end_ns >= lo and s.start_ns <= hi]
        base = next(((c, p) for ts, c, p in reversed(self._counter_log) if ts <= lo), None) or \
            ((self._counter_log[0][1], self._counter_log[0][2]) if self._counter_log else ({}, {}))
        header = self._incident_header(chosen, incident, lo, hi, base)
        writer = RecordWriter(partial)
        events = 0
        counters: dict[str, int] = dict(base[0])
        probes: dict[str, dict[str, int]] = dict(base[1])
        nat: dict[str, dict[str, Any]] = {}
        kinds: dict[bytes, bytes] = {}  # one drop of each kind in the window: what the causes read the node for
        damaged: list[str] = []
        try:
            writer.write_json(KIND_HEADER, header)
            for segment in chosen:
                try:
                    events += self._copy(segment.path, writer, lo, hi, nat, kinds)
                except RecordingError as err:
                    damaged.append(err.one_line())
            for ts, logged, logged_probes in self._counter_log:
                if lo <= ts <= hi:
                    counters, probes = logged, logged_probes
            if nat:  # the union of the window's snapshots: the latest NAT_FLOWS record is the one a report reads
                writer.write_json(KIND_NAT_FLOWS, {"nat_flows": list(nat.values()), "monotonic_ns": hi})
            trailer: dict[str, Any] = {"counters": counters, "events": events, "total_events": events, "next": None,
                                       "end_wall_ns": time.time_ns(), "probe_counters": probes}
            if damaged:
                trailer["segment_errors"] = damaged
            if self._causes is not None:  # as `record` writes it when it ends (tracer/serve/incident_causes.py)
                trailer["cause_state"] = self._causes.read(kinds.values(), (chosen[0].icmp if chosen else None) or {})
            writer.write_json(KIND_TRAILER, trailer)
        finally:
            writer.close()
        os.replace(partial, final)
        self.incidents.append(final)
        self._log(f"sealed incident {final}: {events} events from {len(chosen)} segments "
                  f"({len(incident.firings)} firings)")
        return final

    def _incident_header(self, chosen: list[Segment], incident: Incident, lo: int, hi: int,
                         base: tuple[dict[str, int], dict[str, dict[str, int]]]) -> dict[str, Any]:
        header: dict[str, Any] = {}
        if chosen:
            reader = RecordReader(chosen[0].path)
            try:
                first = next(iter(reader.records()), None)
                if first is not None and first.kind == KIND_HEADER:
                    header = first.json()
            finally:
                reader.close()
        if not header:
            header = self._header()
        header = dict(header)
        header.update({"format_version": FORMAT_VERSION, "format_minor": FORMAT_MINOR,
                       "part": {"index": 0, "first": "incident"},
                       "counters_at_start": dict(base[0]),
                       "probe_counters_at_start": {p: dict(v) for p, v in base[1].items()}})
        names = dict(header.get("names", {}))
        netns = dict(names.get("netns", {}))
        current = self._recorder.netns if self._recorder is not None else self._netns
        netns.update({str(k): v for k, v in current.items()})
        names["netns"] = netns
        header["names"] = names
        header["flight_recorder"] = {"incident": {
            "trigger": incident.trigger, "what": incident.what, "firings": incident.firings,
            "window_monotonic_ns": [lo, hi], "before_s": self.retention.before_s, "after_s": self.retention.after_s,
            "segments": [os.path.basename(s.path) for s in chosen]}}
        return header

    @staticmethod
    def _copy(path: str, writer: RecordWriter, lo: int, hi: int, nat: dict[str, dict[str, Any]],
              kinds: dict[bytes, bytes]) -> int:
        """The records of one segment inside [lo, hi] into the incident; returns the events copied."""
        import json

        reader = RecordReader(path)
        copied = 0
        try:
            for record in reader.records():
                if record.kind == KIND_EVENTS:
                    kept = [raw for raw in split_events(record) if len(raw) >= 16
                            and lo <= _TS.unpack_from(raw, _TS_AT)[0] <= hi]
                    for start in range(0, len(kept), COPY_BATCH):
                        writer.write_events(kept[start : start + COPY_BATCH])
                    copied += len(kept)
                    for raw in kept:
                        if raw[0] == EVENT_DROP and len(kinds) < MAX_DROP_KINDS:
                            kinds.setdefault(drop_kind(raw), raw)
                elif record.kind == KIND_NAMES:
                    writer.write_json(KIND_NAMES, record.json())
                elif record.kind == KIND_COUNTERS:
                    data = record.json()
                    if lo <= int(data.get("monotonic_ns", 0)) <= hi:
                        writer.write_json(KIND_COUNTERS, data)
                elif record.kind == KIND_SOFTIRQ:
                    data = record.json()
                    if lo <= float(data.get("ts", 0)) * 1e9 <= hi:
                        writer.write_json(KIND_SOFTIRQ, data)
                elif record.kind == KIND_NAT_FLOWS:
                    for entry in record.json().get("nat_flows", []):
                        key = json.dumps([entry.get("point"), entry.get("netns"), entry.get("before"),
                                          entry.get("after")], sort_keys=True)
                        if key not in nat or int(entry.get("packets", 0)) >= int(nat[key].get("packets", 0)):
                            nat[key] = entry
        finally:
            reader.close()
        return copied

    def _prune_incidents(self, newest: str) -> None:
        cap = self.retention.incident_bytes
        paths = self._listing(self.incidents_dir)
        total = self.incident_bytes()
        for path in paths:
            if total <= cap:
                break
            with contextlib.suppress(FileNotFoundError):
                size = os.path.getsize(path)
                os.unlink(path)
                total -= size
                if path == newest:
                    self._log(f"incident {path} alone is larger than the incidents cap ({cap} bytes): removed")

    def close(self) -> None:
        """Seal an open incident with what there is, then close the current segment (its trailer)."""
        if self.pending is not None:
            self.tick(force=True)
        self._close_current()
        self._prune_segments()  # the trailer just written counts against the cap too
