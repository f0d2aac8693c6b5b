"""The merged recording (`podtrace merge A B -o BOTH`, tracer/recording/merged_recording.py) read back by the report,
export, the API and the TUI's replay. Two recordings of two machines written with the real Recorder, packets built with
scapy: node A (host netns 4026531840, boot 1 s before the epoch used here) transmits three SYNs over VXLAN from pod
10.244.0.2; node B (also netns 4026531840, its wall clock 5 ms ahead, another boot, another drop-reason numbering
and symbol layout) drops each, after 40, 50 and 60 us.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import pytest
from scapy.layers.inet import IP, TCP

from tests.support.merge_recordings import HOST, conntrack, event, header, write
from tracer.api import merge, open_recording
from tracer.cli import main as cli
from tracer.events.decode import (
    EVENT_CT,
    EVENT_DROP,
    EVENT_PATH,
    EVENT_SIZE,
    POINT_XMIT,
    decode,
)
from tracer.output.errors import RecordingError
from tracer.recording.fileformat import FORMAT_MINOR, KIND_HEADER, KIND_TRAILER, RecordWriter
from tracer.recording.recorder import Recorder
from tracer.sources.replay import ReplaySource

SKEW_NS = 5_000_000  # node B's wall clock runs 5 ms ahead
OFFSET_A = 1_000_000_000  # wall minus monotonic: when each machine booted
OFFSET_B = 7_000_000_000
SENT_WALL = [10_000_000_000 + k * 1_000_000 for k in range(3)]  # true wall times A sent each SYN
LATENCY_NS = [40_000, 50_000, 60_000]
LOCATION = 0xFFFFFFFF81A2B3C4  # both kernels have a symbol here, not the same one


def _syn(k: int) -> IP:
    return IP(src="10.244.0.2", dst="10.244.1.2", id=100 + k, flags="DF") / TCP(sport=40000 + k, dport=8080,
                                                                                 flags="S", seq=7000 + k)


A_EVENTS = [event(_syn(k), SENT_WALL[k] - OFFSET_A, EVENT_PATH, POINT_XMIT, vxlan=True) for k in range(3)]
A_EVENTS.append(event(IP(src="10.244.0.9", dst="10.244.0.2", id=9) / TCP(sport=1, dport=2, seq=1),
                       SENT_WALL[2] + 500_000 - OFFSET_A, EVENT_DROP, 2, LOCATION))  # NO_SOCKET on node A
B_EVENTS: list[bytes] = []
for _k in range(3):
    _ts = SENT_WALL[_k] + LATENCY_NS[_k] + SKEW_NS - OFFSET_B
    B_EVENTS += [conntrack(_ts, 0xFFFF888000002000 + _k),
                 event(_syn(_k), _ts, EVENT_DROP, 5, LOCATION, skb=0xFFFF888000002000 + _k)]


@pytest.fixture
def recordings(tmp_path: Path) -> tuple[Path, Path]:
    a, b = tmp_path / "node-a.ptrec.gz", tmp_path / "node-b.ptrec"
    write(a, header("node-a", OFFSET_A, {"2": "NO_SOCKET", "3": "NETFILTER_DROP"},
                      {"10.244.0.2": "default/frontend-7"}), A_EVENTS, "tcp_v4_rcv+0x99", SENT_WALL[2] + 10**9)
    write(b, header("node-b", OFFSET_B, {"5": "NETFILTER_DROP"}, {"10.244.1.2": "default/web-2"}), B_EVENTS,
           "nft_do_chain+0x46f", SENT_WALL[2] + SKEW_NS + 10**9)
    return a, b


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def both(recordings: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    out = tmp_path / "both.ptrec"
    code, _out, err = run_cli(capsys, "merge", str(recordings[0]), str(recordings[1]), "-o", str(out))
    assert code == 0, err
    assert err == f"wrote {out}: 10 events of node-a/host and node-b/host, 3 journeys\n"
    return out


def _read(path: Path) -> tuple[ReplaySource, list[bytes]]:
    source = ReplaySource(str(path))
    events = list(source)
    source.close()
    return source, events


def test_both_nodes_events_are_on_the_first_clock_and_each_attributable_to_its_node(both: Path) -> None:
    source, events = _read(both)
    merged = source.header["merged"]
    assert source.header["format_minor"] == FORMAT_MINOR and not source.truncated
    assert [node["name"] for node in merged["nodes"]] == ["node-a/host", "node-b/host"]
    # one inode on both machines: node b's moves, both names say their node
    moved = merged["nodes"][1]["netns"]
    assert merged["nodes"][0]["netns"] == [HOST] and len(moved) == 1 and moved[0] != HOST
    assert source.names.netns == {HOST: "node-a:host", moved[0]: "node-b:host"}
    assert len(events) == len(A_EVENTS) + len(B_EVENTS)
    a_events = [raw for raw in events if int.from_bytes(raw[36 if len(raw) == EVENT_SIZE else 24:][:4],
                                                        "little") == HOST]
    assert a_events == A_EVENTS  # node a's events byte for byte
    timestamps = [int.from_bytes(raw[8:16], "little") for raw in events]
    assert timestamps == sorted(timestamps)
    drops = [decode(raw) for raw in events if raw[0] == EVENT_DROP and decode(raw).netns == moved[0]]
    # one way only: the fastest SYN (40 us) is taken as instant, the others 10 and 20 us slower
    assert [d.ts_ns for d in drops] == [SENT_WALL[k] - OFFSET_A + LATENCY_NS[k] - LATENCY_NS[0] for k in range(3)]
    assert {source.names.reasons[d.reason] for d in drops} == {"NETFILTER_DROP"}
    assert {source.names.symbol(d.location) for d in drops} == {"nft_do_chain+0x46f"}  # moved off a's address
    assert source.names.symbol(LOCATION) == "tcp_v4_rcv+0x99"
    for index, raw in enumerate(events):  # each drop's conntrack event still right before it, same skb
        if raw[0] == EVENT_CT:
            assert events[index + 1][0] == EVENT_DROP and events[index + 1][16:24] == raw[16:24]
    assert source.counters()["lost"] == 2  # both nodes' lost events
    clock = merged["clock"]
    assert clock["offset_ns"] == -(SKEW_NS + LATENCY_NS[0])  # b's wall clock back by its skew and the fastest SYN
    assert not clock["both_ways"] and clock["pairs"] == 3 and merged["matched_packets"] == 3


def test_report_shows_the_cross_node_journeys_and_each_node_s_drops(both: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, "report", str(both))
    assert code == 0, err
    assert err.startswith("merged recording of node-a/host and node-b/host from ")
    assert "cross-node journeys: merged recording of node-a/host (node-a.ptrec.gz) and node-b/host" in out
    assert ("clocks aligned from 3 matched packets, packets one way only: latencies are relative to the fastest "
            "packet; no clock is assumed synchronised, so this is an estimate") in " ".join(out.split())
    assert "3 packets matched in 3 flows, 3 of them dropped" in out
    assert out.count("1 matched, client default/frontend-7 (10.244.0.2) on node-a/host\n"
                     "         +0.0 us  node-a/host  xmit host/eth0\n") == 3
    assert "       +20.0 us  node-b/host  dropped in host/cni0\n" in out
    assert out.count("died at node-b/host (host): 1 x NETFILTER_DROP") == 3
    assert "one way 20.0 us (relative to the fastest packet)" in out
    # the drop tables, one per node: node a's NO_SOCKET under it, node b's NETFILTER_DROPs under b
    section_a = out.split("drops on node-a/host:\n", 1)[1].split("drops on node-b/host:\n", 1)
    assert "NO_SOCKET" in section_a[0] and "node-a:host/cni0" in section_a[0] and "NETFILTER" not in section_a[0]
    assert "NETFILTER_DROP" in section_a[1] and "node-b:host/cni0" in section_a[1] and "NO_SOCKET" not in \
        section_a[1].split("conntrack ", 1)[0]

    code, out, err = run_cli(capsys, "report", "--json", str(both))
    assert code == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    journeys = [line for line in lines if line.get("journey")]
    assert [(j["src"], j["dst"], j["client_pod"], j["died"]["reason"], j["one_way_us"]) for j in journeys] == [
        ("10.244.0.2", "10.244.1.2", "default/frontend-7", "NETFILTER_DROP", float(k * 10)) for k in range(3)]
    rows = {(row["reason"], row["netns"]): row for row in lines if "reason" in row and "count" in row}
    assert rows[("NETFILTER_DROP", "node-b:host")]["count"] == 3
    assert rows[("NETFILTER_DROP", "node-b:host")]["dst_pod"] == "default/web-2"  # both nodes' pod names
    assert rows[("NO_SOCKET", "node-a:host")]["count"] == 1
    assert rows[("NO_SOCKET", "node-a:host")]["node"] == "node-a/host"
    assert rows[("NETFILTER_DROP", "node-b:host")]["node"] == "node-b/host"
    assert lines[-1]["events"] == 7 and lines[-1]["lost"] == 2  # conntrack events are part of their drops
    merged = next(line for line in lines if line.get("merged"))
    assert merged["clock"]["estimate"] and not merged["clock"]["both_ways"]


def test_export_and_the_api_read_it(both: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _out, err = run_cli(capsys, "export", str(both), "--pcapng", str(tmp_path / "both.pcapng"))
    assert code == 0, err
    assert "wrote 7 packets" in err  # 4 of node a, 3 of node b
    recording = open_recording(str(both))
    assert recording.merged is not None and [j["packets"] for j in recording.journeys()] == [1, 1, 1]
    assert sum(row["count"] for row in recording.drop_rows()) == 4


def test_the_api_merges_as_the_command_does(recordings: tuple[Path, Path], tmp_path: Path) -> None:
    found = merge(str(recordings[0]), str(recordings[1]))
    assert [j["died"]["node"] for j in found] == ["node-b/host"] * 3
    out = tmp_path / "api.ptrec.gz"
    assert merge(str(recordings[0]), str(recordings[1]), output=str(out)) == found
    assert open_recording(str(out)).journeys() == found


def test_an_existing_output_is_refused_and_left_alone(recordings: tuple[Path, Path], tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "both.ptrec"
    out.write_bytes(b"keep me")
    code, _out, err = run_cli(capsys, "merge", str(recordings[0]), str(recordings[1]), "-o", str(out))
    assert code == 2 and err.count("\n") == 1 and "an existing file, refused" in err
    assert out.read_bytes() == b"keep me"


def test_recordings_sharing_no_packet_write_no_file(recordings: tuple[Path, Path], tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    other = tmp_path / "other.ptrec"
    write(other, header("node-c", OFFSET_B, {"5": "NETFILTER_DROP"}, {}),
           [event(IP(src="10.9.0.1", dst="10.9.0.2", id=5) / TCP(sport=3, dport=4, seq=9), 5, EVENT_DROP, 5)], "x", 1)
    before = set(os.listdir(tmp_path))
    code, out, err = run_cli(capsys, "merge", str(recordings[0]), str(other), "-o", str(tmp_path / "both.ptrec"))
    assert code == 1 and out == "" and err.count("\n") == 1 and "share no packet" in err
    assert set(os.listdir(tmp_path)) == before  # no file, no temporary


def test_a_merged_recording_is_not_merged_again(both: Path, recordings: tuple[Path, Path],
                                                capsys: pytest.CaptureFixture[str]) -> None:
    code, _out, err = run_cli(capsys, "merge", str(both), str(recordings[1]))
    assert code == 2 and err.count("\n") == 1 and "already a merged recording (of 2 nodes)" in err


def test_a_truncated_merged_file_is_one_line_error_after_what_it_held(both: Path, tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    cut = tmp_path / "cut.ptrec"
    data = both.read_bytes()
    cut.write_bytes(data[: len(data) - 200])  # inside the last events record and its trailer
    code, out, err = run_cli(capsys, "report", str(cut))
    assert code == 1
    assert "cross-node journeys" in out  # the header and what came before the cut
    lines = err.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("merged recording of")  # the description, then the error
    assert lines[1].startswith(f"podtrace: {cut}: merged recording cut short") and "Traceback" not in err


def _with_merged(path: Path, merged: Any) -> None:
    writer = RecordWriter(str(path))
    writer.write_json(KIND_HEADER, {"format_version": 1, "format_minor": 5, "merged": merged})
    writer.write_json(KIND_TRAILER, {"counters": {}, "events": 0, "total_events": 0, "next": None})
    writer.close()


def test_the_merged_header_is_schema_checked(both: Path, tmp_path: Path) -> None:
    good = ReplaySource(str(both)).header["merged"]
    one = tmp_path / "one.ptrec"
    _with_merged(one, {**good, "nodes": good["nodes"][:1]})
    with pytest.raises(RecordingError, match=r"merged\.nodes should be a list of 2 to 256"):
        ReplaySource(str(one))
    hop = tmp_path / "hop.ptrec"
    journey = {**good["journeys"][0], "path": [{"node": "a", "at": "x", "t_us": "soon"}]}
    _with_merged(hop, {**good, "journeys": [journey]})
    with pytest.raises(RecordingError, match=r"merged\.journeys\[0\]\.path\[0\]\.t_us should be a finite number"):
        ReplaySource(str(hop))


def test_tui_replay_opens_the_merged_file_with_both_nodes_drops(both: Path) -> None:
    from tui.app import PodtraceApp
    from tui.sources import open_replay

    source, info = open_replay(str(both))
    app = PodtraceApp(source, info)

    async def drops() -> list[tuple[str, str, int]]:
        async with app.run_test(size=(100, 30)) as pilot:
            for _ in range(100):
                if app.snapshot is not None and len(app.snapshot.drops) == 2:
                    break
                await pilot.pause(0.05)
            assert app.snapshot is not None
            return [(row["reason"], row["netns"], row["count"]) for row in app.snapshot.drops]

    assert sorted(asyncio.run(drops())) == [("NETFILTER_DROP", "node-b:host", 3), ("NO_SOCKET", "node-a:host", 1)]


def test_two_recordings_of_one_machine_share_its_namespaces_and_an_event_both_saw_is_written_once(
        recordings: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # a second recorder on node a (same host, same boot): the SYNs' drops, and node a's own NO_SOCKET drop again
    drops = [event(_syn(k), SENT_WALL[k] + LATENCY_NS[k] - OFFSET_A, EVENT_DROP, 3, LOCATION) for k in range(3)]
    again = tmp_path / "node-a-again.ptrec"
    write(again, header("node-a", OFFSET_A + 300, {"2": "NO_SOCKET", "3": "NETFILTER_DROP"}, {}),
           [*drops, A_EVENTS[3]], "tcp_v4_rcv+0x99", SENT_WALL[2] + 10**9)
    out = tmp_path / "same.ptrec"
    code, _out, err = run_cli(capsys, "merge", str(recordings[0]), str(again), "-o", str(out))
    assert code == 0, err
    source, events = _read(out)
    assert [node["netns"] for node in source.header["merged"]["nodes"]] == [[HOST], [HOST]]
    assert source.names.netns == {HOST: "host"}  # one namespace: nothing renamed
    assert len(events) == len(A_EVENTS) + len(drops)  # the NO_SOCKET drop both recorded, once
    assert events.count(A_EVENTS[3]) == 1


FIXTURES = Path(__file__).resolve().parent / "fixtures" / "recordings"


def test_real_recordings_of_two_namespaces_merge_into_the_journeys_of_the_dropped_syns(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """merge-a/merge-b.ptrec.gz (fixtures/recordings/README.md): 3 connection attempts, their SYNs dropped by an
    INPUT DROP rule in the second namespace; merge.drops.json is what `podtrace drops` printed live there."""
    run = json.loads((FIXTURES / "merge.drops.json").read_text())
    live = sum(row["count"] for row in run["drops"] if row.get("reason") == "NETFILTER_DROP")
    out = tmp_path / "both.ptrec.gz"
    code, _out, err = run_cli(capsys, "merge", str(FIXTURES / "merge-a.ptrec.gz"), str(FIXTURES / "merge-b.ptrec.gz"),
                              "-o", str(out))
    assert code == 0, err
    code, text, err = run_cli(capsys, "report", "--json", str(out))
    assert code == 0, err
    lines = [json.loads(line) for line in text.splitlines()]
    client, server, port = run["client"], run["server"], run["port"]
    drops = [row for row in lines if row.get("reason") == "NETFILTER_DROP" and "count" in row]
    assert [row["netns"] for row in drops] == [run["nodes"][1]] and sum(row["count"] for row in drops) == live
    journeys = [line for line in lines if line.get("journey")]
    assert len(journeys) == run["attempts"]  # one flow per attempt (its own source port)
    for journey in journeys:
        assert (journey["src"], journey["dst"], journey["flow"].endswith(f":{port}")) == (client, server, True)
        assert journey["path"][0]["node"].endswith(f"/{run['nodes'][0]}")
        assert journey["died"]["reason"] == "NETFILTER_DROP" and journey["died"]["netns"] == run["nodes"][1]
    assert sum(journey["died"]["packets"] for journey in journeys) == live  # every dropped SYN was matched
    merged = next(line for line in lines if line.get("merged"))
    assert not merged["clock"]["both_ways"] and merged["matched_packets"] == live


def test_both_nodes_cause_state_is_kept_under_their_merged_names(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """Each node's node state behind its drops' causes (trailer cause_state, minor 6) travels into the merged
    trailer, under the netns names the merged file gives it; the report then reads each node's from it."""
    paths = []
    for host, offset, events, symbol in (("node-a", OFFSET_A, A_EVENTS, "tcp_v4_rcv+0x99"),
                                         ("node-b", OFFSET_B, B_EVENTS, "nft_do_chain+0x46f")):
        path = tmp_path / f"{host}.ptrec"
        recorder = Recorder(str(path), header(host, offset, {"2": "NO_SOCKET", "5": "NETFILTER_DROP"}, {}),
                            lambda inode: "host", lambda address, symbol=symbol: symbol)
        recorder.add(events)
        state = {"netns": "host", "cpus": 2, "rps": {"eth0": [1 if host == "node-b" else 0]}}
        # kube-proxy's rules at the end where netfilter dropped (minor 8): node-b's NETFILTER_DROP
        rules = {"rules": {"nodes": [{"netns": None, "commands": {}, "error": "iptables-save: not found"}]}} \
            if host == "node-b" else {}
        recorder.close({"lost": 0}, SENT_WALL[2] + 10**9, {"cause_state": {"nodes": [state], "error": "", **rules}})
        paths.append(path)
    out = tmp_path / "both.ptrec"
    code, _out, err = run_cli(capsys, "merge", str(paths[0]), str(paths[1]), "-o", str(out))
    assert code == 0, err
    source, _events = _read(out)
    assert source.trailer is not None
    assert [(node["netns"], node["rps"]) for node in source.trailer["cause_state"]["nodes"]] == [
        ("node-a:host", {"eth0": [0]}), ("node-b:host", {"eth0": [1]})]
    assert source.trailer["cause_state"]["rules"] == {"nodes": [
        {"netns": "node-b:host", "commands": {}, "error": "iptables-save: not found"}]}
    states = source.cause_states()
    assert states["node-b:host"].rps == {"eth0": [1]} and states["node-b:host"].recorded
