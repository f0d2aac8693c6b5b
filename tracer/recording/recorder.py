"""Writing a live session to a recording: header, event batches preceded by the names they need, counters,
trailer, and rotation into parts (`--max-size`). The format itself is tracer/recording/fileformat.py."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from tracer.events.decode import EVENT_SIZE, netns_of, packet_view
from tracer.output.errors import RecordingError
from tracer.recording.fileformat import (
    FILE_MODE,
    KIND_COUNTERS,
    KIND_HEADER,
    KIND_NAMES,
    KIND_NAT_FLOWS,
    KIND_SOFTIRQ,
    KIND_TRAILER,
    RecordWriter,
    part_path,
)
from tracer.recording.records_json import softirq_to_json

if TYPE_CHECKING:
    from tracer.analysis.softirq import SoftirqSnapshot


_LOCATION, _LOCATION_AT = packet_view("location")  # packet events only: the others have no kernel location


class Recorder:
    """Writes a live session: header, event batches preceded by the names they need, counters, trailer.

    `header` is the session's header (see docs/recording-format.md); each rotation part gets a copy with its own
    part index, the counters at its start and every name seen so far, so each part reads on its own.
    """

    def __init__(self, path: str, header: dict[str, Any], netns_name: Callable[[int], str],
                 symbol: Callable[[int], str], max_size: int | None = None, mode: int = FILE_MODE) -> None:
        self.path = path
        self.max_size = max_size
        self.mode = mode
        self.failed: RecordingError | None = None  # a write failed (disk full): nothing more is written
        self._netns_name = netns_name
        self._symbol = symbol
        self._header = header
        self.run_id = uuid.uuid4().hex  # every part carries it: a part of another recording is never merged in
        self.netns: dict[int, str] = {int(k): v for k, v in header.get("names", {}).get("netns", {}).items()}
        self.symbols: dict[int, str] = {}
        self.counters: dict[str, int] = {}
        self.probe_counters: dict[str, dict[str, int]] = {}  # probe -> counter (tracer.probes.registry.COUNTER_SLOTS)
        self.events = 0
        self.part_events = 0
        self.parts: list[str] = []
        self.bytes_written = 0
        self._writer = self._open(0)

    def _open(self, index: int) -> RecordWriter:
        path = part_path(self.path, index)
        writer = RecordWriter(path, self.mode)
        header = dict(self._header)
        header["part"] = {"index": index, "first": os.path.basename(self.path), "run_id": self.run_id}
        header["counters_at_start"] = dict(self.counters)
        header["probe_counters_at_start"] = {probe: dict(values) for probe, values in self.probe_counters.items()}
        names = dict(header.get("names", {}))
        names["netns"] = {str(k): v for k, v in sorted(self.netns.items())}
        names["symbols"] = {str(k): v for k, v in sorted(self.symbols.items())}
        header["names"] = names
        writer.write_json(KIND_HEADER, header)
        self.parts.append(path)
        self.part_events = 0
        return writer

    @contextlib.contextmanager
    def _writing(self) -> Iterator[bool]:
        """Yields False once a write has failed; a failure ends the recording with the file kept as it is."""
        if self.failed is not None:
            yield False
            return
        try:
            yield True
        except RecordingError as err:  # WriteFailed, or a part that could not be created
            self.failed = err
            with contextlib.suppress(OSError):
                self.bytes_written += os.path.getsize(self._writer.path)
            raise

    def add(self, raw_events: list[bytes]) -> None:
        with self._writing() as ok:
            if ok:
                self._add_all(raw_events)

    def _add_all(self, raw_events: list[bytes]) -> None:
        # With a size limit, batches are cut to an eighth of it so a part overshoots by at most that.
        step = max(1, self.max_size // (8 * EVENT_SIZE)) if self.max_size else len(raw_events) or 1
        for start in range(0, len(raw_events), step):
            self._add(raw_events[start : start + step])

    def _add(self, raw_events: list[bytes]) -> None:
        new_netns: dict[str, str] = {}
        new_symbols: dict[str, str] = {}
        for raw in raw_events:
            inode = netns_of(raw)  # each event type at its own offset (a verdict's is not a NAT event's)
            if inode is not None and inode not in self.netns:
                self.netns[inode] = new_netns[str(inode)] = self._netns_name(inode)
            if len(raw) < EVENT_SIZE:
                continue
            location, = _LOCATION.unpack_from(raw, _LOCATION_AT)
            if location and location not in self.symbols:
                self.symbols[location] = new_symbols[str(location)] = self._symbol(location)
        if new_netns or new_symbols:  # names go before the events that need them
            self._writer.write_json(KIND_NAMES, {"netns": new_netns, "symbols": new_symbols})
        self._writer.write_events(raw_events)
        self.events += len(raw_events)
        self.part_events += len(raw_events)
        if self.max_size and self._writer.size >= self.max_size:
            self._rotate()

    def _rotate(self) -> None:
        next_path = part_path(self.path, len(self.parts))
        self._finish(self._writer, {"next": os.path.basename(next_path)})
        self._writer = self._open(len(self.parts))

    def write_counters(self, counters: dict[str, int], monotonic_ns: int,
                       probes: dict[str, dict[str, int]] | None = None) -> None:
        """The kernel's counters (totals, and per probe when `probes` is given: LiveSource.probe_counters())."""
        self.counters = dict(counters)
        record: dict[str, Any] = {"counters": self.counters, "monotonic_ns": monotonic_ns}
        if probes is not None:
            self.probe_counters = {probe: dict(values) for probe, values in probes.items()}
            record["probe_counters"] = self.probe_counters
        with self._writing() as ok:
            if ok:
                self._writer.write_json(KIND_COUNTERS, record)

    def write_nat_flows(self, records: list[dict[str, Any]], monotonic_ns: int) -> None:
        """A snapshot of the kernel's nat_flows map (cumulative: the latest one read wins)."""
        with self._writing() as ok:
            if ok:
                self._writer.write_json(KIND_NAT_FLOWS, {"nat_flows": records, "monotonic_ns": monotonic_ns})

    def write_softirq(self, snapshot: SoftirqSnapshot) -> None:
        """A snapshot of the softirq/NAPI counters (cumulative: a report takes last minus first)."""
        with self._writing() as ok:
            if ok:
                self._writer.write_json(KIND_SOFTIRQ, softirq_to_json(snapshot))

    def flush(self) -> None:
        with self._writing() as ok:
            if not ok:
                return
            self._writer.flush()
            # Compressed output reaches the file at flushes: this is where a compressed part sees its real size.
            if self.max_size and self._writer.size >= self.max_size:
                self._rotate()

    def _finish(self, writer: RecordWriter, extra: dict[str, Any]) -> None:
        trailer = {"counters": self.counters, "events": self.part_events, "total_events": self.events, **extra}
        if self.probe_counters:
            trailer["probe_counters"] = self.probe_counters
        writer.write_json(KIND_TRAILER, trailer)
        writer.close()
        self.bytes_written += os.path.getsize(writer.path)

    def close(self, final_counters: dict[str, int], end_wall_ns: int, extra: dict[str, Any] | None = None,
              probes: dict[str, dict[str, int]] | None = None) -> None:
        """The last trailer; `extra` adds what was read at the end (e.g. "conntrack", format minor 2)."""
        if final_counters:
            self.counters = dict(final_counters)
        if probes:
            self.probe_counters = {probe: dict(values) for probe, values in probes.items()}
        with self._writing() as ok:
            if ok:
                self._finish(self._writer, {**(extra or {}), "next": None, "end_wall_ns": end_wall_ns})


def parse_size(text: str) -> int:
    """ "10M" -> 10485760; plain bytes, K, M, G (powers of 1024)."""
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    value = text.strip().upper().removesuffix("B").removesuffix("I")
    unit = value[-1:] if value[-1:] in "KMG" else ""
    number = value[: len(value) - len(unit)]
    try:
        size = int(float(number) * units[unit])
    except ValueError:
        size = 0
    if size <= 0:
        raise ValueError(f"{text!r} is not a size (e.g. 500K, 10M, 1G)")
    return size
