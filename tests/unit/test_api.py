"""The Python API on the v1 fixture, including the README's worked example run as a script."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tracer.api import TCP_SYN, open_recording, tcp_flags
from tracer.events.decode import PacketEvent
from tracer.output.errors import RecordingError

V1 = Path(__file__).resolve().parent / "fixtures" / "recordings" / "v1.ptrec"
ROOT = Path(__file__).resolve().parents[2]

# The README example: "did any backend drop SYNs?", exit 1 when it did.
EXAMPLE = '''
import sys
from tracer.api import TCP_SYN, open_recording, tcp_flags

rec = open_recording(sys.argv[1])
names = rec.resolver()
syn_drops = {}
for event in rec.drops():
    flags = tcp_flags(event)
    if flags is not None and flags & TCP_SYN and not flags & 0x10:  # SYN without ACK: a new connection
        key = (event.outer.dst, event.outer.dport, names.reason(event.reason))
        syn_drops[key] = syn_drops.get(key, 0) + 1
for (dst, port, reason), count in sorted(syn_drops.items()):
    print(f"{count} SYNs to {dst}:{port} dropped: {reason}")
if rec.truncated:
    print("warning: recording cut short", file=sys.stderr)
sys.exit(1 if syn_drops else 0)
'''


def test_open_recording_header_events_and_tables() -> None:
    rec = open_recording(str(V1))
    assert rec.header["kernel_release"].startswith("6.18")
    assert rec.header["attach_plan"]["hooks"][0]["name"] == "drops"
    events = list(rec)
    assert len(events) == 55 and all(isinstance(event, PacketEvent) for event in events)
    assert not rec.truncated and rec.summary()["lost"] == 0 and rec.summary()["events"] == 55
    assert rec.drop_table().sorted_groups()[0][1].count == 13
    rows = rec.drop_rows()
    assert [(row["reason"], row["count"]) for row in rows] == [("NETFILTER_DROP", 13), ("NO_SOCKET", 7),
                                                               ("NO_SOCKET", 5)]
    assert rows[0]["netns"] == "ptt-897b95-b"
    # each row's cause is the one `podtrace report --json` gives for the same recording
    report = subprocess.run([sys.executable, "-m", "tracer.cli.main", "report", "--json", str(V1)], capture_output=True,
                            text=True, cwd=ROOT, check=True).stdout.splitlines()
    reported = [json.loads(line) for line in report if '"reason"' in line]
    assert [row["cause"] for row in rows] == [row["cause"] for row in reported] and len(rows) == 3
    assert rows[1]["cause"]["kind"] == "no-socket", rows[1]["cause"]


def test_tcp_flags_from_the_snapshot() -> None:
    rec = open_recording(str(V1))
    syns = [e for e in rec.drops() if (tcp_flags(e) or 0) & TCP_SYN]
    assert len(syns) == 5 and {e.outer.dport for e in syns} == {5003}
    assert all(tcp_flags(e) is None for e in rec.drops() if e.outer.proto == 17)


def test_worked_example_exits_1_when_syns_were_dropped(tmp_path: Path) -> None:
    script = tmp_path / "syn_drops.py"
    script.write_text(EXAMPLE)
    result = subprocess.run([sys.executable, str(script), str(V1)], capture_output=True, text=True, cwd=ROOT,
                            check=False, env={"PYTHONPATH": str(ROOT)})
    assert result.returncode == 1, result.stderr
    assert result.stdout == "5 SYNs to 198.18.2.2:5003 dropped: NO_SOCKET\n"


def test_iterating_a_corrupt_recording_yields_the_events_before_then_raises(tmp_path: Path) -> None:
    data = bytearray(V1.read_bytes())
    data[20000] ^= 0x55
    bad = tmp_path / "bad.ptrec"
    bad.write_bytes(bytes(data))
    rec = open_recording(str(bad))
    seen = []
    with pytest.raises(RecordingError, match="corrupt record at byte offset 8075"):
        for event in rec:
            seen.append(event)
    assert len(seen) == 2  # the first events batch (7225) is whole; the second (8075) is damaged
