"""Tables sized to a real terminal (a pty with a set window size), whole in a pipe or with --wide."""

from __future__ import annotations

import fcntl
import io
import os
import pty
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest

from tracer.output.layout import cut, fit_columns, table_width

RECORDING = Path(__file__).parent / "fixtures" / "recordings" / "v1.ptrec"  # a real recording (see its README)
PODTRACE = [sys.executable, "-m", "tracer.cli.main"]


def _pty(columns: int) -> tuple[int, int]:
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    return leader, follower


def _read_all(fd: int) -> str:
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: the other side is closed and everything was read
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks).decode().replace("\r\n", "\n")


def _report_on_a_terminal(columns: int, *extra: str) -> str:
    leader, follower = _pty(columns)
    try:
        env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
        proc = subprocess.run([*PODTRACE, "report", str(RECORDING), *extra], stdout=follower,
                              stderr=subprocess.PIPE, env=env, check=False, timeout=120)
        os.close(follower)
        follower = -1
        assert proc.returncode == 0, proc.stderr
        return _read_all(leader)
    finally:
        if follower >= 0:
            os.close(follower)
        os.close(leader)


def test_table_width_is_the_terminals_and_none_elsewhere() -> None:
    for columns in (40, 80, 132):
        leader, follower = _pty(columns)
        with open(follower, "w", closefd=True) as stream:
            assert table_width(stream) == columns
            assert table_width(stream, wide=True) is None
        os.close(leader)
    read, write = os.pipe()
    with open(write, "w") as stream:
        assert table_width(stream) is None
    os.close(read)
    assert table_width(io.StringIO()) is None


@pytest.mark.parametrize("columns", [60, 80])
def test_report_on_a_narrow_terminal_cuts_and_marks_and_wide_does_not(columns: int) -> None:
    # drop rows (each may be followed by its cause and fix lines, which are not cut)
    lines = [line for line in _report_on_a_terminal(columns).splitlines() if line[:8].strip().isdigit()]
    assert len(lines) == 3 and all("ptt-897b95-b~" in line for line in lines)
    assert all(line.endswith(("> 198.18.2.2:5001", "> 198.18.2.2:5002", "> 198.18.2.2:5003")) for line in lines)
    wide = [line for line in _report_on_a_terminal(columns, "--wide").splitlines() if line[:8].strip().isdigit()]
    assert all("ptt-897b95-b/veth-b " in line for line in wide)


def test_report_into_a_pipe_has_every_name_whole() -> None:
    proc = subprocess.run([*PODTRACE, "report", str(RECORDING)], capture_output=True, text=True, check=False,
                          timeout=120, env={**os.environ, "COLUMNS": "40"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("ptt-897b95-b/veth-b ") == 3 and "~" not in proc.stdout


def test_fit_columns_and_cut() -> None:
    assert fit_columns([30, 10, 20], [10, 10, 10], 10, None) == [30, 10, 20]
    assert fit_columns([30, 10, 20], [10, 10, 10], 10, 60) == [20, 10, 20]  # the widest gives way first
    assert fit_columns([30, 10, 20], [10, 10, 10], 10, 45) == [12, 10, 13]
    assert fit_columns([30, 10, 20], [10, 10, 10], 10, 5) == [10, 10, 10]  # never under the floors
    assert (cut("flannel.1", 9), cut("flannel.1", 6), cut("abc", 0)) == ("flannel.1", "flann~", "")
