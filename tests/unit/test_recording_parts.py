"""Rotation parts are found by the recording's own identity (run id and part index in each header), never by the
path a trailer's `next` names; missing and foreign parts are reported and the read goes on past a gap."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from recording_mutate import encode, records_of
from test_recording import make_event, record, replay_all

from tracer.output.errors import RecordingError
from tracer.recording.fileformat import KIND_TRAILER, part_path

EVENTS = [make_event(i) for i in range(60)]


def rotated(directory: Path, name: str = "trace.ptrec") -> list[str]:
    directory.mkdir(exist_ok=True)
    recorder = record(directory / name, EVENTS, batch=5, max_size=3000)
    assert len(recorder.parts) >= 4
    return recorder.parts


def part_events(path: str) -> list[bytes]:
    return replay_all(Path(path), follow=False)[1]


def test_each_part_carries_the_run_id_and_its_index(tmp_path: Path) -> None:
    parts = rotated(tmp_path)
    headers = [replay_all(Path(part), follow=False)[0].header["part"] for part in parts]
    assert [h["index"] for h in headers] == list(range(len(parts)))
    assert len({h["run_id"] for h in headers}) == 1 and len(headers[0]["run_id"]) == 32


def test_a_deleted_part_is_reported_and_the_parts_after_it_are_read(tmp_path: Path) -> None:
    parts = rotated(tmp_path)
    missing = part_events(parts[2])
    os.unlink(parts[2])
    source, events = replay_all(tmp_path / "trace.ptrec")
    assert source.incomplete == [f"part 2 ({parts[2]}) is missing"]
    assert events == [raw for raw in EVENTS if raw not in missing] and len(events) < len(EVENTS)
    assert source.parts == [p for p in parts if p != parts[2]]


def test_a_part_of_another_recording_is_not_merged_in(tmp_path: Path) -> None:
    parts = rotated(tmp_path / "a")
    other = rotated(tmp_path / "b")
    shutil.copy(other[1], parts[1])  # same name, same index, another run
    source, events = replay_all(tmp_path / "a" / "trace.ptrec")
    assert len(source.incomplete) == 1 and "belongs to another recording" in source.incomplete[0]
    assert events == part_events(parts[0])  # nothing of b's part, and nothing after it
    assert source.parts == [parts[0]]


def test_the_trailers_next_is_never_opened(tmp_path: Path) -> None:
    parts = rotated(tmp_path)
    for part in parts[1:]:
        os.unlink(part)
    records = records_of(parts[0])
    kind, payload = records[-1]
    assert kind == KIND_TRAILER
    for target in ("/etc/passwd", "trace.ptrec", "../b/trace.ptrec"):
        trailer = {**json.loads(payload), "next": target}
        Path(parts[0]).write_bytes(encode([*records[:-1], (KIND_TRAILER, json.dumps(trailer).encode())]))
        source, events = replay_all(Path(parts[0]))
        assert source.parts == [parts[0]] and events == EVENTS[: len(events)]
        assert source.incomplete == [f"part 1 ({part_path(parts[0], 1)}) is missing"], target


def test_a_fifo_or_a_symlink_as_a_part_is_refused_without_reading_it(tmp_path: Path) -> None:
    parts = rotated(tmp_path)
    os.unlink(parts[1])
    os.mkfifo(parts[1])
    source, _events = replay_all(tmp_path / "trace.ptrec")
    assert source.incomplete == [f"{parts[1]} is a FIFO, not a podtrace recording"]
    os.unlink(parts[1])
    os.symlink("/etc/passwd", parts[1])
    source, _events = replay_all(tmp_path / "trace.ptrec")
    assert source.incomplete == [f"{parts[1]} is a symbolic link: refused as a rotation part"]


def test_a_fifo_given_as_the_recording_is_one_error(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo.ptrec"
    os.mkfifo(fifo)
    with pytest.raises(RecordingError, match="is a FIFO, not a podtrace recording"):
        replay_all(fifo)


def test_a_renamed_first_part_still_finds_its_siblings_by_its_new_name(tmp_path: Path) -> None:
    parts = rotated(tmp_path)
    for index, part in enumerate(parts):
        os.rename(part, part_path(str(tmp_path / "renamed.ptrec"), index))
    source, events = replay_all(tmp_path / "renamed.ptrec")
    assert events == EVENTS and source.incomplete == []


def test_files_from_before_run_ids_still_follow_by_index(tmp_path: Path) -> None:
    parts = rotated(tmp_path)
    for part in parts:  # as minor-3 writers wrote them: no run_id
        records = records_of(part)
        header = json.loads(records[0][1])
        del header["part"]["run_id"]
        Path(part).write_bytes(encode([(records[0][0], json.dumps(header).encode()), *records[1:]]))
    source, events = replay_all(tmp_path / "trace.ptrec")
    assert events == EVENTS and source.incomplete == []
