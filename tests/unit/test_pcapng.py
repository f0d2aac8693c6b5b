"""pcapng export: read back by tshark (every packet, every comment) and by scapy's independent reader."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from scapy.utils import PcapNgReader

from tracer.cli import main as cli
from tracer.events.decode import EVENT_SIZE, decode
from tracer.recording.pcapng import LINKTYPE_RAW, enhanced_packet, interface_description, network_bytes, original_length
from tracer.sources.replay import ReplaySource

V1 = Path(__file__).resolve().parent / "fixtures" / "recordings" / "v1.ptrec"


def export(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *extra: str) -> Path:
    if "tracer.cli.record" not in cli.COMMAND_MODULES:
        monkeypatch.setattr(cli, "COMMAND_MODULES", (*cli.COMMAND_MODULES, "tracer.cli.record"))
    out = tmp_path / f"v1{'-'.join(extra)}.pcapng"
    assert cli.main(["export", str(V1), *extra, "--pcapng", str(out)]) == 0
    capsys.readouterr()
    return out


@pytest.fixture
def exported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Path:
    """One frame per packet (the default)."""
    out = export(tmp_path, monkeypatch, capsys)
    return out


@pytest.fixture
def per_hop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Path:
    out = export(tmp_path, monkeypatch, capsys, "--per-hop")
    return out


def recorded_events() -> list:
    with ReplaySource(str(V1)) as source:
        return [decode(raw) for raw in source if len(raw) >= EVENT_SIZE]


def tshark(path: Path, *fields: str) -> list[list[str]]:
    argv = ["tshark", "-r", str(path)]
    if fields:
        argv += ["-T", "fields", "-E", "separator=|", *(arg for field in fields for arg in ("-e", field))]
    result = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=60)
    return [line.split("|") for line in result.stdout.splitlines()]


needs_tshark = pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark is not installed")


@needs_tshark
def test_one_frame_per_packet_with_its_hops_and_no_false_retransmission(exported: Path, per_hop: Path) -> None:
    """v1.ptrec: 25 dropped packets seen at rx and at their drop, 5 RSTs seen at 1-5 queue hops; 55 events."""
    fields = tshark(exported, "frame.comment", "ip.src", "ip.dst", "udp.dstport", "tcp.dstport",
                    "frame.interface_name")
    assert len(fields) == 30 and len(recorded_events()) == 55
    assert all(f[0].startswith("packet, ") for f in fields)
    drops = [f for f in fields if "; dropped: " in f[0]]
    assert len(drops) == 25
    netfilter = [f for f in drops if f[0].startswith("packet, 2 hops in ") and
                 ", +" in f[0] and "ptt-897b95-b/veth-b drop NETFILTER_DROP at nft_do_chain+0x46f" in f[0]]
    assert len(netfilter) == 13 and {f[3] for f in netfilter} == {"5001"}
    assert all(" ptt-897b95-b/veth-b rx, " in f[0] for f in drops)  # each drop's receive is in its frame
    syns = [f for f in drops if f[4] == "5003"]
    assert len(syns) == 5 and all("drop NO_SOCKET at tcp_v4_rcv+0x99" in f[0] for f in syns)
    assert all("service unknown" in f[0] for f in drops)  # recorded without the lab: no Service to name
    # each drop's cause as `podtrace report` gives it, saying how it is known (no rules were recorded: which rule
    # dropped the netfilter ones is not known)
    assert all("; cause: nothing listens on 198.18.2.2:5003 (tcp) in ptt-897b95-b (observed); fix: start the "
               "server" in f[0] for f in syns)
    assert all("; cause: a netfilter rule or conntrack dropped it; which one is not known" in f[0] and
               f[0].endswith("(unknown)") for f in netfilter)
    assert {f[5] for f in fields} == {"ptt-897b95-b/veth-b"}
    # Each SYN was received, then dropped: as two frames Wireshark calls the second a retransmission.
    summary = " ".join(" ".join(line) for line in tshark(exported))
    assert "TCP Retransmission" not in summary
    assert " ".join(" ".join(line) for line in tshark(per_hop)).count("TCP Retransmission") == 5


@needs_tshark
def test_per_hop_keeps_a_frame_per_event_on_an_interface_per_hop_point(per_hop: Path) -> None:
    fields = tshark(per_hop, "frame.comment", "udp.dstport", "frame.interface_name")
    assert len(fields) == len(recorded_events()) == 55
    drops = [f for f in fields if f[0].startswith("drop ")]
    assert len(drops) == 25 and {f[2] for f in drops} == {"ptt-897b95-b/veth-b drop"}
    netfilter = [f for f in drops if f[0].startswith("drop NETFILTER_DROP at nft_do_chain+0x46f;")]
    assert len(netfilter) == 13 and {f[1] for f in netfilter} == {"5001"}
    assert {f[2] for f in fields} == {"ptt-897b95-b/veth-b drop", "ptt-897b95-b/veth-b rx",
                                      "ptt-897b95-b/veth-b queue"}


def test_scapy_reads_the_same_packets_and_timestamps(exported: Path, per_hop: Path) -> None:
    events = recorded_events()
    with PcapNgReader(str(per_hop)) as reader:
        packets = list(reader)
    assert len(packets) == len(events)
    for packet, event in zip(packets, events):
        assert bytes(packet) == network_bytes(event) == event.snap
        assert packet.wirelen == original_length(event) == int.from_bytes(event.snap[2:4], "big")
        assert packet.comments and packet.comments[0].decode().startswith(("drop ", "path "))
    first = events[0]
    with ReplaySource(str(V1)) as source:
        offset = source.names.wall_offset_ns
    assert abs(float(packets[0].time) - (first.ts_ns + offset) / 1e9) < 1e-6
    with PcapNgReader(str(exported)) as reader:
        folded = list(reader)
    snaps = {event.snap for event in events}
    assert len(folded) == 30 and all(bytes(packet) in snaps for packet in folded)  # a hop's bytes, as recorded
    assert abs(float(folded[0].time) - (first.ts_ns + offset) / 1e9) < 1e-6  # the first hop's time


def test_blocks_are_32_bit_aligned_with_matching_lengths() -> None:
    block = enhanced_packet(0, 123, b"\x45abc", 60, "drop X")
    assert len(block) % 4 == 0
    assert block[4:8] == block[-4:]
    idb = interface_description("ns/eth0", "netns 1 ifindex 2")
    assert int.from_bytes(idb[8:10], "little") == LINKTYPE_RAW and len(idb) % 4 == 0
