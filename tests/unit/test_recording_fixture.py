"""The format-version-1 fixture (a real recording, see fixtures/recordings/README.md) and `podtrace report` on it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tracer.cli import main as cli
from tracer.events.decode import EVENT_SIZE, decode
from tracer.sources.replay import ReplaySource

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "recordings"
V1 = FIXTURES / "v1.ptrec"
LIVE = json.loads((FIXTURES / "v1.drops.json").read_text())["drops"]
ROOT = Path(__file__).resolve().parents[2]


def run_cli(*argv: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    if "tracer.cli.record" not in cli.COMMAND_MODULES:  # until tracer/cli/main.py registers it
        monkeypatch.setattr(cli, "COMMAND_MODULES", (*cli.COMMAND_MODULES, "tracer.cli.record"))
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_v1_fixture_reads_completely() -> None:
    with ReplaySource(str(V1)) as source:
        raw = list(source)
    assert source.header["format_version"] == 1
    assert not source.truncated and source.trailer is not None
    assert len(raw) == 55 and all(len(item) == EVENT_SIZE for item in raw)
    events = [decode(item) for item in raw]
    assert sum(event.is_drop for event in events) == 25
    assert source.final_counters["lost"] == 0
    assert source.names.symbol(events[-1].location).startswith(("tcp_v4_rcv", "-"))


def test_report_json_on_the_fixture_gives_what_drops_printed_live(monkeypatch: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _err = run_cli("report", "--json", str(V1), monkeypatch=monkeypatch, capsys=capsys)
    assert code == 0
    lines = [json.loads(line) for line in out.splitlines()]
    rows, summary = lines[:-1], lines[-1]
    live_rows = [row for row in LIVE if not row.get("summary")]
    assert len(rows) == len(live_rows) == 3
    for row, live in zip(rows, live_rows):
        for key in live:
            if key in ("first_seen", "last_seen"):  # each process has its own monotonic -> wall offset
                assert abs(row[key] - live[key]) < 0.001, key
            else:
                assert row[key] == live[key], key
    assert [(row["reason"], row["dport"], row["count"]) for row in rows] == [
        ("NETFILTER_DROP", 5001, 13), ("NO_SOCKET", 5002, 7), ("NO_SOCKET", 5003, 5)]
    assert summary["summary"] and summary["lost"] == 0 and summary["events"] == 55
    assert summary["truncated"] is False


def test_report_table_on_the_fixture(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli("report", str(V1), monkeypatch=monkeypatch, capsys=capsys)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:2] == ["COUNT", "REASON"]
    assert lines[1].split()[:3] == ["13", "NETFILTER_DROP", "nft_do_chain+0x46f"]
    assert lines[-1] == "55 events, 0 lost"
    rows = [line for line in lines[1:] if line[:8].strip().isdigit()]  # drop rows, not their cause/fix lines
    assert len(rows) == 3 and all("ptt-897b95-b/veth-b " in line for line in rows)  # not a terminal: names whole
    assert "kernel 6.18" in err


def test_report_on_a_cut_fixture_warns_and_prints_the_prefix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    cut = tmp_path / "cut.ptrec"
    cut.write_bytes(V1.read_bytes()[:20000])
    code, out, err = run_cli("report", "--json", str(cut), monkeypatch=monkeypatch, capsys=capsys)
    assert code == 0
    assert f"warning: {cut} was cut short" in err
    summary = json.loads(out.splitlines()[-1])
    assert summary["truncated"] is True and 0 < summary["events"] < 55


def test_report_on_a_corrupt_fixture_prints_what_it_could_and_exits_1(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    data = bytearray(V1.read_bytes())
    data[20000] ^= 0x55  # inside the last events record
    bad = tmp_path / "bad.ptrec"
    bad.write_bytes(bytes(data))
    code, out, err = run_cli("report", str(bad), monkeypatch=monkeypatch, capsys=capsys)
    assert code == 1
    assert "NETFILTER_DROP" in out or "no drops seen" in out
    errors = [line for line in err.splitlines() if line.startswith("podtrace:")]
    assert len(errors) == 1 and "corrupt record at byte offset" in errors[0]


def test_report_errors_are_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli("report", str(tmp_path / "missing.ptrec"), monkeypatch=monkeypatch, capsys=capsys)
    assert (code, out) == (1, "")
    assert err == f"podtrace: {tmp_path / 'missing.ptrec'}: no such file\n"
    foreign = tmp_path / "foreign.bin"
    foreign.write_bytes(b"\x7fELF" + bytes(100))
    code, _out, err = run_cli("report", str(foreign), monkeypatch=monkeypatch, capsys=capsys)
    assert code == 1 and err == f"podtrace: {foreign} is not a podtrace recording\n"


def test_reading_a_recording_never_imports_bcc() -> None:
    code = (
        "import sys, io, contextlib\n"
        "import tracer.cli.record, tracer.api, tracer.sources.replay, tracer.recording.pcapng\n"
        f"rows = tracer.api.open_recording({str(V1)!r}).drop_rows()\n"
        "assert len(rows) == 3, rows\n"
        "assert 'bcc' not in sys.modules, 'bcc imported'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=False)
    assert result.returncode == 0, result.stderr
