"""record and report against what production does to files: floods at start-up, full disks, planted symlinks,
deleted rotation parts and trailers whose `next` points anywhere. Real probes, real drops, namespaces of our own."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import support.podtrace as podtrace
from support.netns import Pair, netns_pair, sh

from tracer.recording.fileformat import KIND_TRAILER, MAGIC, PREAMBLE, RecordReader, encode_record, part_path

pytestmark = pytest.mark.root

RATE = 3000  # drops per second, as the issue measured
# report run with an audit hook: every path the process opens is appended to $PT_OPENED.
AUDITED = [sys.executable, "-c", (
    "import os, sys\n"
    "log = open(os.environ['PT_OPENED'], 'a')\n"
    "sys.addaudithook(lambda e, a: log.write(f'{a[0]}\\n') if e == 'open' and isinstance(a[0], str) else None)\n"
    "from tracer.cli.main import main\n"
    "code = main(sys.argv[1:]); log.flush(); sys.exit(code)\n"
)]


@pytest.fixture(scope="module")
def pair() -> Iterator[Pair]:
    with netns_pair() as created:
        yield created


@contextmanager
def flood(pair: Pair, seconds: float, port: int = 5301) -> Iterator[None]:
    """RATE UDP datagrams a second from a to a closed port on b (each one a NO_SOCKET drop), from before the block
    starts until it ends (at most `seconds`)."""
    code = (f"import socket, time\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            f"start = time.monotonic(); sent = 0\n"
            f"while time.monotonic() - start < {seconds}:\n"
            f"    due = int((time.monotonic() - start) * {RATE})\n"
            f"    while sent < due:\n"
            f"        s.sendto(b'x' * 32, ('{pair.addr_b}', {port})); sent += 1\n"
            f"    time.sleep(0.002)\n"
            f"print(sent)\n")
    sender = subprocess.Popen(["ip", "netns", "exec", pair.a, sys.executable, "-c", code], stdout=subprocess.PIPE,
                              text=True)
    try:
        time.sleep(0.5)  # the flood runs before record starts
        yield
    finally:
        sender.terminate()
        sender.communicate(timeout=30)


def report(path: Path, *extra: str, opened: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PT_OPENED": str(opened or os.devnull)}
    return subprocess.run([*AUDITED, "report", "--json", str(path), *extra], capture_output=True, text=True,
                          timeout=120, env=env, check=False)


def summary(result: subprocess.CompletedProcess[str]) -> dict:
    return json.loads(result.stdout.splitlines()[-1])


def errors(result: subprocess.CompletedProcess[str]) -> list[str]:
    assert "Traceback" not in result.stderr, result.stderr
    return [line for line in result.stderr.splitlines() if line.startswith("podtrace: ")]


def test_start_under_a_flood_loses_nothing_and_the_file_is_0600(pair: Pair, tmp_path: Path) -> None:
    output = tmp_path / "flood.ptrec"
    with flood(pair, 60.0):
        recorded = podtrace.run("record", "-o", str(output), "--netns", pair.b, "--duration", "3", "--json")
    assert recorded.returncode == 0, recorded.stderr
    live = json.loads(recorded.stdout.splitlines()[-1])
    print("record under the flood:", live)  # the figures for the report (pytest -s)
    assert live["lost"] == 0 and live["events"] >= RATE * 2.5, live  # the flood ran through all 3 s
    assert stat.S_IMODE(os.stat(output).st_mode) == 0o600
    read = report(output)
    assert read.returncode == 0 and summary(read)["lost"] == 0
    assert summary(read)["events"] == live["events"]


def test_planted_symlink_and_node_with_netns_are_refused_in_one_line(pair: Pair, tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    (tmp_path / "trace.ptrec").symlink_to(victim)
    result = podtrace.run("record", "-o", str(tmp_path / "trace.ptrec"), "--duration", "1")
    assert result.returncode == 2 and errors(result) == [
        f"podtrace: cannot write {tmp_path / 'trace.ptrec'}: it is a symbolic link, refused (podtrace never "
        "overwrites or follows links) (remove it or choose another name)"]
    assert victim.read_text() == "precious\n"
    both = podtrace.run("record", "-o", str(tmp_path / "n.ptrec"), "--node", pair.b, "--netns", pair.b,
                        "--duration", "1")
    assert both.returncode == 2 and len(errors(both)) == 1 and "--node takes no --netns" in errors(both)[0]
    assert not (tmp_path / "n.ptrec").exists()


def test_a_full_disk_ends_the_recording_in_one_line_and_keeps_it_readable(pair: Pair) -> None:
    mount = Path(tempfile.mkdtemp(prefix="pt-full-"))
    sh("mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount))
    try:
        output = mount / "full.ptrec"
        with flood(pair, 60.0, port=5302):
            result = podtrace.run("record", "-o", str(output), "--netns", pair.b, "--duration", "6")
        assert result.returncode == 1
        assert errors(result) == [f"podtrace: cannot write {output}: the disk is full; the recording ends here "
                                  "(what was written before is readable: podtrace report reads it up to the last "
                                  "complete record)"], result.stderr
        read = report(output)
        assert read.returncode == 0, read.stderr
        assert "was cut short" in read.stderr and summary(read)["truncated"] is True
        assert summary(read)["events"] > 100
    finally:
        sh("umount", str(mount))
        mount.rmdir()


@pytest.fixture(scope="module")
def rotated(pair: Pair, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """A real recording in several parts, and a second one (another run) next to it."""
    base = tmp_path_factory.mktemp("rotated")
    for name in ("r.ptrec", "other.ptrec"):
        with flood(pair, 60.0, port=5303):
            done = podtrace.run("record", "-o", str(base / name), "--netns", pair.b, "--duration", "2",
                                "--max-size", "64K")
        assert done.returncode == 0, done.stderr
    parts = sorted(base.glob("r.ptrec*"), key=lambda p: (len(p.name), p.name))
    assert len(parts) >= 4
    return parts


def events_of(path: Path) -> int:
    result = report(path, "--no-follow")
    assert result.returncode == 0, result.stderr
    return int(summary(result)["events"])


def with_next(source: Path, target: Path, next_name: str) -> None:
    """A copy of one part whose trailer's `next` says `next_name` (checksum recomputed, so a reader reaches it)."""
    reader = RecordReader(str(source))
    records = [(record.kind, record.payload) for record in reader.records()]
    reader.close()
    kind, payload = records[-1]
    assert kind == KIND_TRAILER
    trailer = {**json.loads(payload), "next": next_name}
    data = PREAMBLE.pack(MAGIC, 1) + b"".join(encode_record(k, p) for k, p in records[:-1])
    target.write_bytes(data + encode_record(KIND_TRAILER, json.dumps(trailer).encode()))


def test_a_deleted_part_is_reported_with_exit_4(rotated: list[Path], tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(rotated[0].parent, copy)
    total = summary(report(copy / "r.ptrec"))["events"]
    missing = copy / rotated[2].name
    lost = events_of(missing)
    missing.unlink()
    result = report(copy / "r.ptrec")
    assert result.returncode == 4
    assert errors(result) == [
        f"podtrace: warning: incomplete recording: part 2 ({missing}) is missing",
        f"podtrace: {copy / 'r.ptrec'}: incomplete recording, 1 part(s) missing or foreign (the events of the parts "
        "found were read)"]
    assert summary(result)["events"] == total - lost and summary(result)["incomplete"]


@pytest.mark.parametrize("target", ["itself", "other", "passwd", "fifo"])
def test_a_next_pointing_anywhere_is_never_opened(rotated: list[Path], tmp_path: Path, target: str) -> None:
    first = tmp_path / "r.ptrec"
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    other = rotated[0].parent / "other.ptrec"
    names = {"itself": "r.ptrec", "other": str(other), "passwd": "/etc/passwd", "fifo": "fifo"}
    with_next(rotated[0], first, names[target])
    opened = tmp_path / "opened"
    result = report(first, opened=opened)
    assert result.returncode == 4
    assert errors(result)[0] == f"podtrace: warning: incomplete recording: part 1 ({part_path(str(first), 1)}) is " \
                                "missing"
    assert len(errors(result)) == 2
    assert summary(result)["events"] == events_of(rotated[0])
    paths = set(opened.read_text().splitlines())
    assert str(first) in paths
    assert not paths & {"/etc/passwd", str(fifo), str(other), str(tmp_path / "fifo")}


def test_a_part_of_another_recording_or_a_fifo_at_the_parts_name(rotated: list[Path], tmp_path: Path) -> None:
    shutil.copy(rotated[0], tmp_path / "r.ptrec")
    shutil.copy(rotated[0].parent / "other.ptrec.1", tmp_path / "r.ptrec.1")
    result = report(tmp_path / "r.ptrec")
    assert result.returncode == 4
    assert errors(result)[0].startswith(f"podtrace: warning: incomplete recording: {tmp_path / 'r.ptrec.1'} belongs "
                                        "to another recording (run ")
    assert summary(result)["events"] == events_of(rotated[0])
    (tmp_path / "r.ptrec.1").unlink()
    os.mkfifo(tmp_path / "r.ptrec.1")
    result = report(tmp_path / "r.ptrec")
    assert result.returncode == 4
    assert errors(result)[0] == (f"podtrace: warning: incomplete recording: {tmp_path / 'r.ptrec.1'} is a FIFO, "
                                 "not a podtrace recording")
    fifo_direct = report(tmp_path / "r.ptrec.1")
    assert fifo_direct.returncode == 1 and errors(fifo_direct) == [
        f"podtrace: {tmp_path / 'r.ptrec.1'} is a FIFO, not a podtrace recording"]
