"""The node state behind drop causes in a recording (format minor 6, tracer/recording/recorded_causes.py): written into
the last trailer, read back, and the causes `report` gives from it are those live `drops` gives from the same state.
Older recordings, parts and recordings cut short say which state is unknown and why, never a culprit.

The route, snmp and rps_cpus texts are real iproute2 and procfs/sysfs output, captured on the 6.18 development
kernel in a namespace with `ip route add blackhole 10.244.1.3/32` (h16-fix, removed after)."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import pytest
from test_recording import header
from test_recording_fixture import V1, run_cli

from tracer.analysis.causes import NetnsState, explain
from tracer.api import open_recording
from tracer.events.decode import EVENT_DROP, PacketEvent, Tuple, encode
from tracer.node.cause_state import add_causes, parse_icmp, parse_route_answer, parse_rps
from tracer.output.errors import RecordingError
from tracer.recording.fileformat import FORMAT_MINOR
from tracer.recording.recorded_causes import ORIGIN, from_json, state_to_json, to_json
from tracer.recording.recorder import Recorder
from tracer.recording.schema import TRAILER, check
from tracer.sources.replay import ReplaySource

NS, NS_INODE = "ptr-node", 4026532901
BLACKHOLED, SPOOFED = "10.244.1.3", "198.19.201.5"
MATCH_OUT = ('[{"dst":"10.244.1.0/24","dev":"d0","protocol":"kernel","scope":"link","prefsrc":"10.244.1.1",'
             '"flags":[]},{"type":"blackhole","dst":"10.244.1.3","flags":[]}]')
SNMP_HEAD = ("Icmp: InMsgs InErrors InCsumErrors InDestUnreachs InTimeExcds InParmProbs InSrcQuenchs InRedirects "
             "InEchos InEchoReps InTimestamps InTimestampReps InAddrMasks InAddrMaskReps OutMsgs OutErrors "
             "OutRateLimitGlobal OutRateLimitHost OutDestUnreachs OutTimeExcds OutParmProbs OutSrcQuenchs "
             "OutRedirects OutEchos OutEchoReps OutTimestamps OutTimestampReps OutAddrMasks OutAddrMaskReps")
RPS = ("/sys/class/net/eth0/queues/rx-0/rps_cpus:2\n/sys/class/net/eth1/queues/rx-0/rps_cpus:0\n"
       "/sys/class/net/lo/queues/rx-0/rps_cpus:0\n")
REASONS = {2: "NOT_SPECIFIED", 12: "NETFILTER_DROP", 30: "IP_RPFILTER", 60: "CPU_BACKLOG"}
SYMBOLS = {0x10: "ip_error+0x94", 0x20: "ip_rcv_finish_core+0x260", 0x30: "enqueue_to_backlog+0x2f1",
           0x40: "nf_hook_slow+0x8c"}


def _snmp(out_msgs: int, rate_limited: int) -> dict[str, int]:
    values = [0] * 29
    values[14], values[17] = out_msgs, rate_limited
    return parse_icmp(f"{SNMP_HEAD}\nIcmp: {' '.join(map(str, values))}\n")


def live_state() -> NetnsState:
    """What tracer/cause_state.collect reads from a node with a blackhole route, strict rp_filter and RPS on CPU 1."""
    state = NetnsState(NS, cpus=2, rp_filter={"all": 1, "default": 1, "eth0": 1, "lo": 0, "veth9": 2},
                       icmp_before=_snmp(10, 5), icmp_after=_snmp(60, 307), rps=parse_rps(RPS),
                       sysctls={"net.core.netdev_max_backlog": 1000, "net.core.rmem_max": 212992})
    state.routes[BLACKHOLED] = parse_route_answer(BLACKHOLED, "", "Invalid argument", MATCH_OUT)
    state.routes[SPOOFED] = parse_route_answer(SPOOFED, '[{"dst":"198.19.201.5","dev":"flannel.1","flags":[]}]', "",
                                               '[{"dst":"default","dev":"flannel.1","flags":[]}]')
    return state


def _row(reason: str, location: str, **fields: Any) -> dict[str, Any]:
    row = {"reason": reason, "location": location, "count": 3, "bytes": 180, "proto": "tcp", "src": "10.244.0.2",
           "sport": 40000, "dst": BLACKHOLED, "dport": 8080, "netns": NS, "ifname": "eth0", "hook": "-",
           "last_cpu": 0, "ct_identity": "not-traced"}
    row.update(fields)
    return row


ROWS = [_row("NOT_SPECIFIED", "ip_error+0x94"), _row("IP_RPFILTER", "ip_rcv_finish_core+0x260", src=SPOOFED),
        _row("CPU_BACKLOG", "enqueue_to_backlog+0x2f1")]


def _round_trip(state: NetnsState) -> NetnsState:
    data = to_json({state.netns: state}, ROWS)
    check({"counters": {}, "events": 0, "total_events": 0, "cause_state": data}, TRAILER, "trailer")
    return from_json(json.loads(json.dumps(data)))[state.netns]


def test_each_cause_from_the_recorded_state_is_the_live_one_and_says_when_it_was_read() -> None:
    live, recorded = live_state(), _round_trip(live_state())
    for row in ROWS:
        now, then = explain(row, live), explain(row, recorded)
        assert now.known == "observed" and now.kind in ("route", "rp_filter", "backlog"), now
        assert (then.kind, then.text, then.fix, then.known) == (now.kind, now.text, now.fix, now.known)
        assert now.state == "" and then.state == ORIGIN
        assert then.lines()[0].endswith(f"(observed; {ORIGIN})")
    assert explain(ROWS[0], recorded).text == (f"route lookup: `blackhole {BLACKHOLED}/32` in {NS} refuses "
                                               f"{BLACKHOLED}")
    assert "replies to 198.19.201.5 would leave by flannel.1" in explain(ROWS[1], recorded).text
    assert ": RPS sends all of ptr-node/eth0's receive to CPU 1 of 2" in explain(ROWS[2], recorded).text


def test_the_icmp_counters_of_both_ends_give_the_rate_limited_errors_of_the_window() -> None:
    recorded = _round_trip(live_state())
    assert recorded.icmp_delta() == live_state().icmp_delta() == {"OutRateLimitGlobal": 0, "OutRateLimitHost": 302}


def test_rp_filter_is_kept_for_the_interfaces_the_drops_came_in_by_only() -> None:
    [node] = to_json({NS: live_state()}, ROWS)["nodes"]
    assert node["rp_filter"] == {"all": 1, "default": 1, "eth0": 1}
    assert [route["route"] for route in node["routes"]][0] == {"type": "blackhole", "dst": BLACKHOLED}
    assert state_to_json(live_state())["rp_filter"] == {"all": 1, "default": 1}


def test_a_damaged_cause_state_is_a_recording_error_naming_the_field() -> None:
    [node] = to_json({NS: live_state()}, ROWS)["nodes"]
    node["rps"] = {"eth0": ["1"]}
    with pytest.raises(RecordingError, match=r"cause_state\.nodes\[0\]\.rps\.eth0\[0\] should be an integer"):
        check({"cause_state": {"nodes": [node]}}, TRAILER, "trailer")


def _drop(reason: int, location: int, src: str, dst: str, ts: int) -> bytes:
    outer = Tuple(socket.inet_aton(src) + bytes(12), socket.inet_aton(dst) + bytes(12), 40000, 8080, 4, 6, 0, 0,
                  0x4000, 60)
    return encode(PacketEvent(EVENT_DROP, 0, ts, 0x900 + ts, location, reason, NS_INODE, 2, 60, 0, 0x0800, 4, 0, 0,
                              "eth0", outer, None, b""))


EVENTS = [_drop(2, 0x10, "10.244.0.2", BLACKHOLED, 1), _drop(30, 0x20, SPOOFED, BLACKHOLED, 2),
          _drop(60, 0x30, "10.244.0.2", BLACKHOLED, 3)]


def write(path: Path, minor: int = FORMAT_MINOR, end: bool = True, max_size: int | None = None) -> None:
    """A recording of ROWS' drops; its last trailer holds live_state() as `record` writes it (minor 6 on)."""
    data = header()
    data.update({"format_minor": minor, "drop_reasons": {str(k): v for k, v in REASONS.items()}})
    recorder = Recorder(str(path), data, lambda inode: NS if inode == NS_INODE else "?",
                        lambda address: SYMBOLS[address], max_size)
    for raw in EVENTS:
        recorder.add([raw])
        recorder.flush()
    if end:
        extra = {"cause_state": to_json({NS: live_state()}, ROWS)} if minor >= 6 else {}
        recorder.close({"lost": 0}, 3_000_000_000, extra)
    else:
        recorder.flush()


def _report(path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
            *extra: str) -> dict[str, dict[str, str]]:
    code, out, _err = run_cli("report", "--json", *extra, str(path), monkeypatch=monkeypatch, capsys=capsys)
    assert code == 0, out
    return {line["reason"]: line["cause"] for line in map(json.loads, out.splitlines()) if "cause" in line}


def test_report_names_the_route_rp_filter_and_rps_causes_as_drops_does(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "causes.ptrec.gz"
    write(path)
    causes = _report(path, monkeypatch, capsys)
    for row in ROWS:
        assert causes[row["reason"]] == {**explain(row, live_state()).to_json(), "state": ORIGIN}
    code, out, _err = run_cli("report", str(path), monkeypatch=monkeypatch, capsys=capsys)
    assert code == 0
    text = " ".join(out.split())
    assert f"cause: route lookup: `blackhole {BLACKHOLED}/32` in {NS} refuses {BLACKHOLED} (observed; node state " \
           "recorded at the end of the recording)" in text, out
    rows = open_recording(str(path)).drop_rows()  # the API: the same causes
    assert {row["reason"]: row["cause"] for row in rows} == causes


def _unknown(causes: dict[str, dict[str, str]], why: str) -> None:
    assert causes["NOT_SPECIFIED"] == {"kind": "route", "known": "unknown", "fix": "",
                                       "text": f"route lookup failed for {BLACKHOLED} in {NS}; which one is not known "
                                               f"({why})"}
    for reason in ("IP_RPFILTER", "CPU_BACKLOG"):
        if reason in causes:  # a first rotation part holds only the first drop
            assert causes[reason]["known"] == "unknown" and causes[reason]["text"].endswith(f"({why})"), causes


def test_an_older_minor_says_the_state_is_not_in_the_recording(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "minor5.ptrec"
    write(path, minor=5)
    _unknown(_report(path, monkeypatch, capsys), "not in the recording: format minor 5, made before podtrace "
                                                 "recorded it")
    with ReplaySource(str(V1)) as source:  # the real version-1 fixture: no minor at all
        list(source)
        state = source.cause_states().get("pt-node1")
    assert state.errors["routes"] == "not in the recording: format minor 0, made before podtrace recorded it"


def test_a_recording_cut_before_its_trailer_says_which_state_is_unknown(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "cut.ptrec"
    write(path, end=False)
    assert len(_report(path, monkeypatch, capsys)) == 3
    _unknown(_report(path, monkeypatch, capsys), "not in the recording: it ends before its trailer (cut short), "
                                                 "where this is recorded")


def test_a_part_read_alone_points_to_the_last_part(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "parts.ptrec"
    write(path, max_size=1)  # a part per events record
    assert (tmp_path / "parts.ptrec.2").exists()
    alone = _report(path, monkeypatch, capsys, "--no-follow")
    assert list(alone) == ["NOT_SPECIFIED"]
    _unknown(alone, "not in this part: the recording's last part holds it")
    causes = _report(path, monkeypatch, capsys)  # followed to the last part: known
    assert causes["NOT_SPECIFIED"]["state"] == ORIGIN and causes["NOT_SPECIFIED"]["known"] == "observed"


def test_a_replay_explains_with_the_trailer_only_once_it_has_been_read(tmp_path: Path) -> None:
    """tui --replay asks while its reader is still reading: before the trailer the state is "not read yet"."""
    path = tmp_path / "replay.ptrec"
    write(path)
    with ReplaySource(str(path), batch=1) as source:
        source.poll_raw(0)
        early = [dict(ROWS[0])]
        add_causes(early, source.cause_states())
        list(source)
        late = [dict(ROWS[0])]
        add_causes(late, source.cause_states())
    assert early[0]["cause"]["text"].endswith("(recorded at the end of the recording, not read yet)")
    assert late[0]["cause"]["known"] == "observed" and late[0]["cause"]["state"] == ORIGIN


def test_tui_replay_drill_down_gives_the_recorded_cause(tmp_path: Path) -> None:
    from tui.sources import open_replay

    path = tmp_path / "tui.ptrec"
    write(path)
    source, info = open_replay(str(path))
    assert info.explain is not None
    list(source)  # the reader process reads it to the end while the view is up
    rows = [dict(row) for row in ROWS]
    info.explain(rows)
    assert [row["cause"] for row in rows] == [{**explain(row, live_state()).to_json(), "state": ORIGIN}
                                              for row in ROWS]


def test_a_rule_from_the_recording_is_said_to_be_of_its_start_and_the_icmp_of_both_ends() -> None:
    from test_causes import NODE2_FAULTS, _row

    live = NetnsState("pt-node2", services=NODE2_FAULTS, icmp_before=_snmp(10, 5), icmp_after=_snmp(60, 307))
    recorded = _round_trip(NetnsState("pt-node2", icmp_before=_snmp(10, 5), icmp_after=_snmp(60, 307)))
    recorded.services = NODE2_FAULTS  # from the header's `services`, as ReplaySource.cause_states merges them
    now, then = explain(_row(), live), explain(_row(), recorded)
    assert now.kind == "no-endpoints" and "302 ICMP errors were rate-limited in pt-node2" in now.text
    assert (then.kind, then.text, then.fix, then.known) == (now.kind, now.text, now.fix, now.known)
    assert then.state == "rules recorded at the start of the recording, ICMP counters at its start and its end"
    assert now.state == ""
    rule = explain(_row(dst="10.244.1.2", dport=8080, hook="FORWARD after filter"), recorded)
    assert (rule.kind, rule.state) == ("rule", "rules recorded at the start of the recording")


def test_export_comments_carry_the_recorded_causes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """The trailer comes after the packets: export reads it first, so each dropped packet's comment has its cause."""
    from test_pcapng import needs_tshark, tshark

    if needs_tshark.args[0]:
        pytest.skip("tshark is not installed")
    path, out = tmp_path / "causes.ptrec.gz", tmp_path / "causes.pcapng"
    write(path)
    code, _out, _err = run_cli("export", str(path), "--pcapng", str(out), monkeypatch=monkeypatch, capsys=capsys)
    assert code == 0
    comments = [fields[0] for fields in tshark(out, "frame.comment")]
    assert len(comments) == len(ROWS)
    for comment, row in zip(comments, ROWS):
        cause = explain(row, live_state())
        assert f"cause: {cause.text} (observed; {ORIGIN}); fix: {cause.fix}" in comment, comment


def test_record_keeps_one_drop_of_each_kind_for_the_end_reading() -> None:
    """The record loop keeps a drop per (location, reason, netns, device, addresses): the rows the node state is
    read for are those `drops` would read it for, whatever the counts."""
    import argparse

    from tracer.analysis.aggregate import DropTable
    from tracer.cli.record import _RecordLoop
    from tracer.events.decode import EVENT_PATH
    from tracer.node.cause_state import _needs
    from tracer.output.report import drop_rows
    from tracer.sources.replay import RecordedNames

    loop = _RecordLoop(argparse.Namespace(), None)
    path_event = bytes([EVENT_PATH]) + EVENTS[0][1:]
    for raw in EVENTS * 5 + [path_event]:
        loop.on_raw(raw)
    assert sorted(loop.drop_kinds.values()) == sorted(EVENTS)
    names = RecordedNames(reasons=REASONS, netns={NS_INODE: NS}, symbols=SYMBOLS).resolver()
    every, kinds = DropTable(), DropTable()
    for raw in EVENTS * 5:
        every.add_raw(raw)
    for raw in loop.drop_kinds.values():
        kinds.add_raw(raw)
    assert _needs(drop_rows(kinds, names)) == _needs(drop_rows(every, names)) == {
        NS: {f"route:{BLACKHOLED}", "rp", f"route:{SPOOFED}", "rps"}}


def test_the_report_flow_table_says_when_a_recorded_cause_was_read() -> None:
    """A drop charged to its flow in `report`'s flow table carries its cause as `drops` words it, and when it
    was recorded (the blackhole route to web-3, web-3 the backend its conntrack entry names)."""
    from test_flows import _nat, _t, _table

    table = _table()
    table.add_nat([_nat(1, _t("10.244.0.2", 41000, "10.96.0.10", 80, 6), _t("10.244.0.2", 41000, BLACKHOLED, 8080, 6))])
    row = {**ROWS[0], "src": "10.244.0.2", "sport": 41000, "count": 4, "ct_identity": "conntrack",
           "ct_client": "10.244.0.2:41000", "ct_dialled": "10.96.0.10:80", "ct_backend": f"{BLACKHOLED}:8080",
           "ct_dnat": True}
    row["cause"] = explain(row, _round_trip(live_state())).to_json()
    table.add_drops([row])
    [(label, count)] = [item for flow in table.rows() for item in flow.drops.items()]
    assert count == 4 and (f": route lookup: `blackhole {BLACKHOLED}/32` in {NS} refuses {BLACKHOLED} (observed; "
                           f"{ORIGIN})") in label, label
