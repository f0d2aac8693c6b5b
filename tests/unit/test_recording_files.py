"""Files podtrace writes: 0600 unless --mode says otherwise, never over an existing file, never through a link."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from test_recording import header, make_event, replay_all

from tracer.cli.record import parse_mode
from tracer.output.errors import RecordingError, UsageError
from tracer.recording.fileformat import part_path
from tracer.recording.recorder import Recorder


def mode_of(path: str | Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def new_recorder(path: Path, **kwargs: object) -> Recorder:
    return Recorder(str(path), header(), lambda inode: "ns", lambda addr: "sym", **kwargs)  # type: ignore[arg-type]


def test_recordings_are_0600_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        recorder = new_recorder(tmp_path / "r.ptrec.gz")
        recorder.close({}, 1)
        assert mode_of(tmp_path / "r.ptrec.gz") == 0o600
        wide = new_recorder(tmp_path / "wide.ptrec", mode=0o640)
        wide.close({}, 1)
        assert mode_of(tmp_path / "wide.ptrec") == 0o640
    finally:
        os.umask(old)


def test_a_planted_symlink_or_an_existing_file_is_refused_and_left_alone(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    link = tmp_path / "trace.ptrec"
    link.symlink_to(victim)
    with pytest.raises(RecordingError, match="it is a symbolic link, refused"):
        new_recorder(link)
    with pytest.raises(RecordingError, match="it is an existing file, refused"):
        new_recorder(victim)
    assert victim.read_text() == "precious\n" and link.is_symlink()


def test_a_symlink_planted_at_a_rotation_part_ends_the_recording_with_the_parts_before(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    path = tmp_path / "trace.ptrec"
    Path(part_path(str(path), 1)).symlink_to(victim)
    recorder = new_recorder(path, max_size=2000)
    with pytest.raises(RecordingError, match="symbolic link, refused"):
        for index in range(40):
            recorder.add([make_event(index)])
            recorder.flush()
    assert recorder.failed is not None
    recorder.close({}, 1)  # after a failure: writes nothing, raises nothing
    assert victim.read_text() == "precious\n"
    source, events = replay_all(path, follow=False)
    assert events and source.trailer is not None  # the first part was finished before the next was refused


def test_mode_option() -> None:
    assert parse_mode("0640") == 0o640 and parse_mode("600") == 0o600
    for bad in ("0755", "rw", "-1", "01600"):
        with pytest.raises(UsageError):
            parse_mode(bad)
