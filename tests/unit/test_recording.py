"""The recording format: round trips, compression, rotation, truncation at every byte, and each kind of damage."""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from dataclasses import replace
from pathlib import Path

import pytest
from scapy.layers.inet import IP, TCP, UDP

from tracer.events.decode import EVENT_DROP, EVENT_PATH, PacketEvent, Tuple, decode, encode
from tracer.output.errors import RecordingError
from tracer.recording.fileformat import (
    FORMAT_VERSION,
    KIND_EVENTS,
    KIND_HEADER,
    MAGIC,
    PREAMBLE,
    RECORD_HEAD,
    RecordReader,
    RecordWriter,
    encode_record,
    part_path,
    split_events,
)
from tracer.recording.recorder import Recorder, parse_size
from tracer.sources.replay import ReplaySource

NETNS = 4026532001
LOCATION = 0xFFFFFFFF81A2B3C4


def make_event(index: int, kind: int = EVENT_DROP, dport: int = 5002, syn: bool = False) -> bytes:
    """A drop (reason 3) or rx path event carrying a real IPv4 packet built with scapy."""
    layer = TCP(sport=40000 + index, dport=dport, flags="S" if syn else "A") if syn else UDP(
        sport=40000 + index, dport=dport) / (b"x" * 16)
    packet = bytes(IP(src="198.18.7.1", dst="198.18.7.2") / layer)
    proto = 6 if syn else 17
    outer = Tuple(bytes([198, 18, 7, 1]) + bytes(12), bytes([198, 18, 7, 2]) + bytes(12), 40000 + index, dport, 4,
                  proto, 0, 0, 0x4000, len(packet))
    event = PacketEvent(kind, 0, 1_000_000_000 + index * 1000, 0xFFFF888000000000 + index,
                        LOCATION if kind == EVENT_DROP else 0, 3 if kind == EVENT_DROP else 1, NETNS, 2, len(packet),
                        0, 0x0800, 0x04, min(len(packet), 128), 0, "veth-b", outer, None, packet[:128])
    return encode(event)


def header() -> dict:
    return {"format_version": FORMAT_VERSION, "kernel_release": "6.18.0-test", "hostname": "unit",
            "clock": {"wall_ns": 2_000_000_000, "monotonic_ns": 1_000_000_000, "wall_offset_ns": 1_000_000_000},
            "drop_reasons": {"3": "NO_SOCKET"}, "attached": ["raw tracepoint kfree_skb"],
            "names": {"netns": {}, "lab": None}}


def record(path: Path, events: list[bytes], batch: int = 4, max_size: int | None = None,
           counters: dict | None = None) -> Recorder:
    recorder = Recorder(str(path), header(), lambda inode: f"ns-{inode}", lambda addr: "__udp4_lib_rcv+0x4bc",
                        max_size)
    for start in range(0, len(events), batch):
        recorder.add(events[start : start + batch])
        recorder.write_counters({"lost": 0, "events": start + batch}, start)
        recorder.flush()  # as the record loop does every second
    recorder.close(counters or {"lost": 2, "events": len(events) + 2}, 3_000_000_000)
    return recorder


def replay_all(path: Path, follow: bool = True) -> tuple[ReplaySource, list[bytes]]:
    source = ReplaySource(str(path), follow=follow)
    events = list(source)
    source.close()
    return source, events


EVENTS = [make_event(i) for i in range(10)] + [make_event(10, EVENT_PATH, 80)]


def test_round_trip_keeps_every_event_byte_for_byte_and_the_names(tmp_path: Path) -> None:
    path = tmp_path / "trace.ptrec"
    record(path, EVENTS)
    source, events = replay_all(path)
    assert events == EVENTS
    assert decode(events[0]).outer.dport == 5002
    assert not source.truncated
    assert source.header["kernel_release"] == "6.18.0-test"
    assert source.names.netns_name(NETNS) == f"ns-{NETNS}"
    assert source.names.symbol(LOCATION) == "__udp4_lib_rcv+0x4bc"
    assert source.reasons == {3: "NO_SOCKET"}
    assert source.final_counters == {"lost": 2, "events": 13}
    assert source.resolver().wall(1_000_000_000) == 2.0


def test_gzip_recording_is_a_gzip_file_and_reads_back(tmp_path: Path) -> None:
    path = tmp_path / "trace.ptrec.gz"
    record(path, EVENTS * 20)
    assert gzip.decompress(path.read_bytes())[: len(MAGIC)] == MAGIC
    assert path.stat().st_size < len(EVENTS) * 20 * 296 / 4
    assert replay_all(path)[1] == EVENTS * 20


def test_zstd_without_the_package_names_the_fix(tmp_path: Path) -> None:
    try:
        import zstandard  # noqa: F401
    except ImportError:
        with pytest.raises(RecordingError) as error:
            RecordWriter(str(tmp_path / "trace.zst"))
        assert "zstandard" in error.value.one_line()
        assert not (tmp_path / "trace.zst").exists()
    else:
        path = tmp_path / "trace.zst"
        record(path, EVENTS)
        assert replay_all(path)[1] == EVENTS


@pytest.mark.parametrize(("name", "max_size"), [("trace.ptrec", 2000), ("trace.ptrec.gz", 600)])
def test_rotation_writes_self_contained_parts_read_in_order(tmp_path: Path, name: str, max_size: int) -> None:
    path = tmp_path / name
    events = [make_event(i) for i in range(60)]
    recorder = record(path, events, batch=5, max_size=max_size)
    assert len(recorder.parts) > 2
    assert recorder.parts[1] == part_path(str(path), 1)
    assert all(Path(part).exists() for part in recorder.parts)
    assert replay_all(path)[1] == events  # follows FILE -> FILE.1 -> ...
    seen = []
    for part in recorder.parts:  # each part alone, with its own header and names
        source, part_events = replay_all(Path(part), follow=False)
        assert source.header["part"]["index"] == recorder.parts.index(part)
        assert source.names.symbol(LOCATION) == "__udp4_lib_rcv+0x4bc"
        assert not source.truncated
        seen += part_events
    assert seen == events


def test_part_names_keep_the_compression_suffix_last() -> None:
    assert part_path("/x/trace.ptrec", 2) == "/x/trace.ptrec.2"
    assert part_path("/x/trace.gz", 1) == "/x/trace.1.gz"
    assert part_path("/x/trace.zst", 0) == "/x/trace.zst"


def test_parse_size() -> None:
    assert parse_size("10M") == 10 << 20
    assert parse_size("512k") == 512 << 10
    assert parse_size("1GiB") == 1 << 30
    assert parse_size("4096") == 4096
    with pytest.raises(ValueError):
        parse_size("lots")


def _complete_prefixes(path: Path) -> dict[int, list[bytes]]:
    """Stream offset where each record ends -> the events before it."""
    ends: dict[int, list[bytes]] = {}
    reader = RecordReader(str(path))
    seen: list[bytes] = []
    for rec in reader.records():
        if rec.kind == KIND_EVENTS:
            seen = seen + split_events(rec)
        ends[reader.bytes_read] = seen
    reader.close()
    return ends


def test_truncation_at_every_byte_reads_the_complete_prefix(tmp_path: Path) -> None:
    path = tmp_path / "full.ptrec"
    record(path, [make_event(i) for i in range(6)], batch=2)
    data = path.read_bytes()
    ends = _complete_prefixes(path)
    cut = tmp_path / "cut.ptrec"
    header_end = min(ends)
    for size in range(1, len(data)):
        cut.write_bytes(data[:size])
        source, events = replay_all(cut)
        assert source.truncated, size
        expected = max((events for end, events in ends.items() if end <= size), key=len, default=[])
        assert events == (expected if size >= header_end else []), size
    cut.write_bytes(b"")
    with pytest.raises(RecordingError, match="is not a podtrace recording"):
        ReplaySource(str(cut))


def test_gzip_cut_short_after_a_flush_reads_what_was_flushed(tmp_path: Path) -> None:
    path = tmp_path / "killed.ptrec.gz"
    recorder = Recorder(str(path), header(), str, hex)
    recorder.add(EVENTS[:5])
    recorder.flush()  # what the recorder does every second
    flushed = path.stat().st_size
    recorder.add(EVENTS[5:])
    recorder.close({}, 0)
    data = path.read_bytes()
    for size in (flushed, flushed + 7, len(data) - 3):
        (tmp_path / "cut.gz").write_bytes(data[:size])
        source, events = replay_all(tmp_path / "cut.gz")
        assert source.truncated
        assert events[:5] == EVENTS[:5] and events == EVENTS[: len(events)]


def test_foreign_file_is_not_a_recording(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("hello, this is text and not a trace\n")
    with pytest.raises(RecordingError, match=f"{path} is not a podtrace recording"):
        ReplaySource(str(path))
    gz = tmp_path / "other.gz"
    gz.write_bytes(gzip.compress(b"some other gzip content"))
    with pytest.raises(RecordingError, match="is not a podtrace recording"):
        ReplaySource(str(gz))


def test_missing_file_is_one_clear_line(tmp_path: Path) -> None:
    with pytest.raises(RecordingError) as error:
        ReplaySource(str(tmp_path / "nope.ptrec"))
    assert error.value.one_line() == f"{tmp_path / 'nope.ptrec'}: no such file"


def test_newer_format_version_names_both_versions(tmp_path: Path) -> None:
    path = tmp_path / "future.ptrec"
    path.write_bytes(PREAMBLE.pack(MAGIC, FORMAT_VERSION + 1) + encode_record(KIND_HEADER, b"{}"))
    with pytest.raises(RecordingError) as error:
        ReplaySource(str(path))
    message = error.value.one_line()
    assert f"version {FORMAT_VERSION + 1}" in message and f"up to version {FORMAT_VERSION}" in message


def test_unknown_record_kinds_are_skipped(tmp_path: Path) -> None:
    path = tmp_path / "extra.ptrec"
    record(path, EVENTS)
    data = path.read_bytes()
    at = PREAMBLE.size + RECORD_HEAD.size + struct.unpack_from("<I", data, PREAMBLE.size)[0] + 4  # after header
    path.write_bytes(data[:at] + encode_record(99, b"from the future") + data[at:])
    assert replay_all(path)[1] == EVENTS


def test_bad_crc_names_the_offset_and_delivers_everything_before(tmp_path: Path) -> None:
    path = tmp_path / "corrupt.ptrec"
    record(path, [make_event(i) for i in range(8)], batch=2)
    reader = RecordReader(str(path))
    event_offsets = [rec.offset for rec in reader.records() if rec.kind == KIND_EVENTS]
    reader.close()
    start = event_offsets[2]  # damage the third batch: the two before it still arrive
    data = bytearray(path.read_bytes())
    data[start + RECORD_HEAD.size + 40] ^= 0xFF
    path.write_bytes(bytes(data))
    source = ReplaySource(str(path))
    got: list[bytes] = []
    with pytest.raises(RecordingError) as error:
        for raw in source:
            got.append(raw)
    assert got == [make_event(i) for i in range(4)]
    assert f"{path}: corrupt record at byte offset {start} (checksum mismatch)" in error.value.one_line()


def test_bad_crc_in_a_gzip_recording_names_the_decompressed_offset(tmp_path: Path) -> None:
    plain = tmp_path / "plain.ptrec"
    record(plain, EVENTS)
    data = bytearray(plain.read_bytes())
    data[-10] ^= 0x01  # inside the trailer
    gz = tmp_path / "corrupt.ptrec.gz"
    gz.write_bytes(gzip.compress(bytes(data)))
    with pytest.raises(RecordingError, match="of the decompressed stream"):
        replay_all(gz)


def test_impossible_length_is_corruption_not_truncation(tmp_path: Path) -> None:
    path = tmp_path / "len.ptrec"
    record(path, EVENTS)
    data = bytearray(path.read_bytes())
    struct.pack_into("<I", data, PREAMBLE.size, 0xFFFFFFF0)
    path.write_bytes(bytes(data))
    with pytest.raises(RecordingError, match=f"byte offset {PREAMBLE.size} .*impossible"):
        ReplaySource(str(path))


def test_writer_crc_covers_length_and_kind() -> None:
    raw = encode_record(KIND_EVENTS, b"abc")
    assert struct.unpack("<I", raw[-4:])[0] == zlib.crc32(raw[:-4])


def test_writer_fsyncs_and_closes(tmp_path: Path) -> None:
    path = tmp_path / "t.ptrec"
    writer = RecordWriter(str(path))
    writer.write_json(KIND_HEADER, header())
    writer.close()
    writer.close()  # idempotent
    assert os.path.getsize(path) == writer.uncompressed


def test_replay_source_has_the_live_source_interface(tmp_path: Path) -> None:
    path = tmp_path / "t.ptrec"
    record(path, EVENTS)
    source = ReplaySource(str(path), batch=4)
    source.start()
    batches = []
    while not source.done:
        batches.append(source.poll(0))
    assert [len(batch) for batch in batches] == [4, 4, 3]
    assert source.poll(10) == [] and source.counters() == {"lost": 2, "events": 13}
    assert source.plan() is None and source.attached == ["raw tracepoint kfree_skb"]
    source.close()


def test_paced_replay_follows_the_recorded_gaps(tmp_path: Path) -> None:
    import time

    path = tmp_path / "t.ptrec"
    spaced = [encode(replace(decode(make_event(i)), ts_ns=i * 100_000_000)) for i in range(3)]  # 100 ms apart
    record(path, spaced)
    source = ReplaySource(str(path), speed=2.0)
    started = time.monotonic()
    got: list[bytes] = []
    while len(got) < 3:
        got += source.poll_raw(20)
    assert 0.08 <= time.monotonic() - started < 0.5  # 200 ms recorded at 2x
    assert got == spaced
