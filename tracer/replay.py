"""ReplaySource: a recording read back with LiveSource's interface (poll/poll_raw/counters/close), so the same
aggregation, reports and TUI run on it. No BPF, no root: importing this never imports bcc.
"""

from __future__ import annotations

import os
import time
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from typing import Any

from tracer.errors import RecordingError
from tracer.events import EVENT_SIZE, PacketEvent, decode
from tracer.ladder import AttachPlan
from tracer.recording import (
    KIND_COUNTERS,
    KIND_EVENTS,
    KIND_HEADER,
    KIND_NAMES,
    KIND_TRAILER,
    RecordReader,
    split_events,
)
from tracer.report import Resolver


@dataclass
class RecordedNames:
    """The names a recording carries: drop reasons, netns, kernel symbols, the lab's pods and Services."""

    reasons: dict[int, str] = field(default_factory=dict)
    netns: dict[int, str] = field(default_factory=dict)
    symbols: dict[int, str] = field(default_factory=dict)
    lab: dict[str, Any] | None = None
    wall_offset_ns: int = 0

    @classmethod
    def from_header(cls, header: dict[str, Any]) -> RecordedNames:
        names = header.get("names", {})
        return cls(
            reasons={int(k): v for k, v in header.get("drop_reasons", {}).items()},
            netns={int(k): v for k, v in names.get("netns", {}).items()},
            symbols={int(k): v for k, v in names.get("symbols", {}).items()},
            lab=names.get("lab"),
            wall_offset_ns=int(header.get("clock", {}).get("wall_offset_ns", 0)),
        )

    def update(self, names: dict[str, Any]) -> None:
        self.netns.update({int(k): v for k, v in names.get("netns", {}).items()})
        self.symbols.update({int(k): v for k, v in names.get("symbols", {}).items()})

    def netns_name(self, inode: int) -> str:
        if inode == 0:
            return "-"
        return self.netns.get(inode) or f"netns:{inode}"

    def symbol(self, address: int) -> str:
        if address == 0:
            return "-"
        return self.symbols.get(address) or f"0x{address:x}"

    def resolver(self) -> Resolver:
        # The dicts are shared: names read later in the file resolve through the same Resolver.
        return Resolver(self.reasons, self.netns_name, self.symbol, self.wall_offset_ns)

    def pod_of_ip(self, ip: str) -> str | None:
        for name, pod in (self.lab or {}).get("pods", {}).items():
            if pod.get("ip") == ip:
                return f"{pod.get('namespace', 'default')}/{name}"
        return None

    def service_of(self, ip: str, port: int) -> str | None:
        lab = self.lab or {}
        on_node = ip in lab.get("node_ips", {}).values()
        for name, svc in lab.get("services", {}).items():
            node_port = on_node and port and svc.get("node_port") == port
            if (svc.get("vip") == ip and svc.get("port") == port) or node_port:
                return str(name)
        return None


def counter_delta(now: dict[str, int], base: dict[str, int]) -> dict[str, int]:
    return {name: value - base.get(name, 0) for name, value in now.items()}


class ReplaySource:
    """Events from a recording, following its rotation parts (FILE, FILE.1, ...) unless `follow` is False.

    `speed=None` replays as fast as the reader asks; `speed=1.0` paces events by their recorded timestamps.
    A corrupt record ends the replay with RecordingError, raised by the poll after the one that returned the
    last good events.
    """

    def __init__(self, path: str, follow: bool = True, batch: int = 4096, speed: float | None = None) -> None:
        self.path = path
        self.follow = follow
        self.batch = batch
        self.speed = speed
        self.parts: list[str] = []
        self.truncated_parts: list[str] = []
        self.trailer: dict[str, Any] | None = None
        self._latest: dict[str, int] = {}
        self._base: dict[str, int] | None = None
        self._records = self._all_records()
        self.header: dict[str, Any] = self._read_header()
        self.names = RecordedNames.from_header(self.header)
        self.reasons = self.names.reasons
        self.attached: list[str] = list(self.header.get("attached", []))
        self.final_counters: dict[str, int] = {}
        self.decode_errors = 0
        self.finished = False
        self._error: RecordingError | None = None
        self._lookahead: list[bytes] = []
        self._pace: tuple[float, int] | None = None  # (monotonic at first event, its ts_ns)

    @property
    def done(self) -> bool:
        """Every event has been delivered (the TUI's ListSource spelling)."""
        return self.finished and not self._lookahead

    def plan(self) -> AttachPlan | None:
        """The attach plan recorded in the header (None when the recorder could not probe it)."""
        data = self.header.get("attach_plan")
        return AttachPlan.from_json(data) if data else None

    @property
    def truncated(self) -> bool:
        return bool(self.truncated_parts)

    def _all_records(self) -> Generator[tuple[int, dict[str, Any] | list[bytes]], None, None]:
        path: str | None = self.path
        while path is not None:
            reader = RecordReader(path)
            self.parts.append(path)
            next_name: str | None = None
            ended = False  # a trailer was read: a part without one was cut short, even at a record boundary
            try:
                for record in reader.records():
                    if record.kind == KIND_EVENTS:
                        yield record.kind, split_events(record)
                    elif record.kind in (KIND_HEADER, KIND_NAMES, KIND_COUNTERS, KIND_TRAILER):
                        data = record.json()
                        if record.kind == KIND_TRAILER:
                            next_name, ended = data.get("next"), True
                        yield record.kind, data
                    # unknown kinds are skipped: a newer minor addition an older reader can ignore
            finally:
                reader.close()
            if reader.truncated or not ended:
                self.truncated_parts.append(path)
            path = None
            if self.follow and next_name:
                candidate = os.path.join(os.path.dirname(self.path), next_name)
                if os.path.exists(candidate):
                    path = candidate

    def _read_header(self) -> dict[str, Any]:
        for kind, data in self._records:
            if kind != KIND_HEADER or not isinstance(data, dict):
                raise RecordingError(f"{self.path} does not start with a header record")
            self._base = dict(data.get("counters_at_start", {}))
            return data
        # A valid preamble and no complete header: cut short before anything could be replayed.
        if self.path not in self.truncated_parts:
            self.truncated_parts.append(self.path)
        return {}

    def _handle(self, kind: int, data: dict[str, Any]) -> None:
        if kind == KIND_NAMES:
            self.names.update(data)
        elif kind == KIND_COUNTERS:
            self._latest = dict(data.get("counters", {}))
        elif kind == KIND_TRAILER:
            self.trailer = data
            self._latest = dict(data.get("counters", {}))
        elif kind == KIND_HEADER:  # the next rotation part: names it repeats are already known
            self.names.update(data.get("names", {}))

    def start(self, progress: bool = True) -> None:
        return None

    def _fill(self) -> None:
        """Read records until `batch` events are buffered or the recording ends."""
        while len(self._lookahead) < self.batch and not self.finished and self._error is None:
            try:
                kind, data = next(self._records)
            except StopIteration:
                self.finished = True
                break
            except RecordingError as err:
                self._error = err
                break
            if isinstance(data, list):
                self._lookahead += data
            else:
                self._handle(kind, data)

    def poll_raw(self, timeout_ms: int = 100) -> list[bytes]:
        if not self._lookahead:
            if self._error is not None:
                error, self._error = self._error, None
                self.finished = True
                raise error
            self._fill()
        if not self._lookahead and self.finished:
            self.final_counters = self.counters()
            time.sleep(timeout_ms / 1000)  # like a quiet ring buffer: pollers do not spin at the end
            return []
        if self.speed is None:
            batch, self._lookahead = self._lookahead, []
        else:
            batch = self._paced(timeout_ms)
        if self.finished and not self._lookahead and self._error is None:
            self.final_counters = self.counters()
        return batch

    def _paced(self, timeout_ms: int) -> list[bytes]:
        speed = self.speed or 1.0
        ts = [int.from_bytes(raw[8:16], "little") for raw in self._lookahead]
        if self._pace is None:
            self._pace = (time.monotonic(), ts[0])
        started, first_ts = self._pace
        due_by = time.monotonic() + timeout_ms / 1000
        cut = 0
        while cut < len(ts) and started + (ts[cut] - first_ts) / 1e9 / speed <= due_by:
            cut += 1
        if cut == 0:  # nothing due within the timeout: wait it out like a quiet ring buffer
            time.sleep(timeout_ms / 1000)
            return []
        wait = started + (ts[cut - 1] - first_ts) / 1e9 / speed - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        batch, self._lookahead = self._lookahead[:cut], self._lookahead[cut:]
        return batch

    def poll(self, timeout_ms: int = 100) -> list[PacketEvent]:
        """Packet events (drop and path); other event kinds (NAT) only come through poll_raw."""
        return [decode(raw) for raw in self.poll_raw(timeout_ms) if len(raw) >= EVENT_SIZE]

    def __iter__(self) -> Iterator[bytes]:
        """Every raw event to the end (raises RecordingError at a corrupt record, after the events before it)."""
        while not self.finished or self._lookahead or self._error is not None:
            yield from self.poll_raw(0)

    def counters(self) -> dict[str, int]:
        """Counters of the recorded span so far (the kernel's counters minus those at the first part's start)."""
        return counter_delta(self._latest, self._base or {})

    def resolver(self) -> Resolver:
        return self.names.resolver()

    def close(self) -> None:
        self._records.close()
        if not self.final_counters:
            self.final_counters = self.counters()

    def __enter__(self) -> ReplaySource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
