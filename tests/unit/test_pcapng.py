"""pcapng export: read back by tshark (every packet, every comment) and by scapy's independent reader."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from scapy.utils import PcapNgReader

from tracer import cli
from tracer.events import EVENT_SIZE, decode
from tracer.pcapng import LINKTYPE_RAW, enhanced_packet, interface_description, network_bytes, original_length
from tracer.replay import ReplaySource

V1 = Path(__file__).resolve().parent / "fixtures" / "recordings" / "v1.ptrec"


@pytest.fixture
def exported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Path:
    if "tracer.cmd_record" not in cli.COMMAND_MODULES:
        monkeypatch.setattr(cli, "COMMAND_MODULES", (*cli.COMMAND_MODULES, "tracer.cmd_record"))
    out = tmp_path / "v1.pcapng"
    assert cli.main(["export", str(V1), "--pcapng", str(out)]) == 0
    assert f"wrote 55 packets on 1 interfaces to {out}" in capsys.readouterr().err
    return out


def recorded_events() -> list:
    with ReplaySource(str(V1)) as source:
        return [decode(raw) for raw in source if len(raw) >= EVENT_SIZE]


@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark is not installed")
def test_tshark_reads_every_packet_with_its_comment(exported: Path) -> None:
    result = subprocess.run(
        ["tshark", "-r", str(exported), "-T", "fields", "-E", "separator=|", "-e", "frame.comment", "-e", "ip.src",
         "-e", "ip.dst", "-e", "udp.dstport", "-e", "tcp.dstport", "-e", "frame.interface_name"],
        capture_output=True, text=True, check=True, timeout=60,
    )
    lines = result.stdout.splitlines()
    assert len(lines) == len(recorded_events()) == 55
    fields = [line.split("|") for line in lines]
    assert all(comment for comment, *_rest in fields)
    drops = [f for f in fields if f[0].startswith("drop ")]
    assert len(drops) == 25
    netfilter = [f for f in drops if f[0].startswith("drop NETFILTER_DROP at nft_do_chain+0x46f;")]
    assert len(netfilter) == 13 and {f[3] for f in netfilter} == {"5001"}
    assert all("netns ptt-897b95-b; if veth-b" in f[0] for f in fields)
    assert {(f[1], f[2]) for f in fields} == {("198.18.2.1", "198.18.2.2"), ("198.18.2.2", "198.18.2.1")}  # RSTs
    assert len([f for f in drops if f[0].startswith("drop NO_SOCKET at tcp_v4_rcv") and f[4] == "5003"]) == 5
    assert {f[5] for f in fields} == {"ptt-897b95-b/veth-b"}
    assert "path rx" in {f[0].split(";")[0] for f in fields}


def test_scapy_reads_the_same_packets_and_timestamps(exported: Path) -> None:
    events = recorded_events()
    with PcapNgReader(str(exported)) as reader:
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


def test_blocks_are_32_bit_aligned_with_matching_lengths() -> None:
    block = enhanced_packet(0, 123, b"\x45abc", 60, "drop X")
    assert len(block) % 4 == 0
    assert block[4:8] == block[-4:]
    idb = interface_description("ns/eth0", "netns 1 ifindex 2")
    assert int.from_bytes(idb[8:10], "little") == LINKTYPE_RAW and len(idb) % 4 == 0
