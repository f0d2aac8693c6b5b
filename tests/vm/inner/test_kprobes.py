"""The kprobe programs on Debian's 6.1 kernel (no netfilter links there): netfilter verdicts with hook, table and
chain (bpf/nfkprobe.c), VXLAN encap/decap and local fragmentation (bpf/overlay.c).

One LiveSource (one BCC compile, about a minute under emulation) watches while every scenario sends its known
traffic into namespaces this module creates; the tests assert on what it saw.
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from support.netns import Pair, netns_pair, sh
from vmfacts import timed

from tracer.analysis.aggregate import DropTable
from tracer.analysis.nfverdict import NfAttribution, hook_label
from tracer.events.decode import (
    EVENT_NF_VERDICT,
    EVENT_PATH,
    POINT_FRAGMENT,
    POINT_VXLAN_RCV,
    POINT_VXLAN_XMIT,
    PacketEvent,
    decode,
    decode_verdict,
)
from tracer.kernel.ksyms import KernelSymbols
from tracer.node.names import NetnsNames
from tracer.output.report import Resolver, drop_rows
from tracer.probes.build import ProbeConfig
from tracer.recording.recorder import Recorder
from tracer.sources.live import LiveSource
from tracer.sources.replay import ReplaySource
from tracer.sources.session import probe_config

LEGACY_PORT, NFT_PORT, FRAG_PORT, VXLAN_PORT = 6001, 6002, 6003, 7000
LEGACY_COUNT, NFT_COUNT, FRAG_COUNT, VXLAN_COUNT = 7, 5, 3, 11
FRAG_MTU, FRAG_PAYLOAD = 1400, 2000
VNI = 4242


@dataclass
class Seen:
    raws: list[bytes] = field(default_factory=list)
    attached: list[str] = field(default_factory=list)
    histograms: dict[tuple[int, int], list[int]] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)
    nft: bool = False
    pair: Pair | None = None
    vxlan: tuple[str, str, str, str] = ("", "", "", "")  # netns a, netns b, underlay a, underlay b

    nft_table: str = ""
    cflags: list[str] = field(default_factory=list)
    # Table calls whose return was never seen (nfk_tables entries left over): tells an entry probe that fired
    # from one whose kretprobe did not, when a verdict is missing.
    unreturned: list[tuple[int, bytes, bytes, int]] = field(default_factory=list)

    def kinds(self) -> dict[int, int]:
        """Events seen per type, for failure messages."""
        counts: dict[int, int] = {}
        for raw in self.raws:
            counts[raw[0]] = counts.get(raw[0], 0) + 1
        return counts

    def packets(self, point: int) -> list[PacketEvent]:
        path = [decode(raw) for raw in self.raws if raw[0] == EVENT_PATH]
        return [event for event in path if event.reason == point]


def send(netns: str, dst: str, port: int, count: int, size: int, dont_fragment: bool = True) -> None:
    """UDP datagrams from inside `netns`; dont_fragment=False lets the kernel fragment oversize ones."""
    code = (
        "import socket\n"
        "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
        f"s.setsockopt(socket.IPPROTO_IP, 10, {2 if dont_fragment else 0})\n"  # IP_MTU_DISCOVER: DO 2, DONT 0"
        f"[s.sendto(b'x'*{size},('{dst}',{port})) for _ in range({count})]\n"
    )
    sh(sys.executable, "-c", code, netns=netns)


@contextmanager
def vxlan_pair() -> Iterator[tuple[str, str, str, str]]:
    """Two namespaces whose veth underlay carries a VXLAN tunnel (VNI 4242, UDP 4789): overlay 198.19.42.0/24."""
    with netns_pair() as under:
        for ns, local, remote, overlay in ((under.a, under.addr_a, under.addr_b, "198.19.42.1"),
                                           (under.b, under.addr_b, under.addr_a, "198.19.42.2")):
            dev = "veth-a" if ns == under.a else "veth-b"
            sh("ip", "-n", ns, "link", "add", "vx0", "type", "vxlan", "id", str(VNI), "local", local, "remote",
               remote, "dstport", "4789", "dev", dev)
            sh("ip", "-n", ns, "addr", "add", f"{overlay}/24", "dev", "vx0")
            sh("ip", "-n", ns, "link", "set", "vx0", "up")
        yield under.a, under.b, under.addr_a, under.addr_b


def _poll_until_quiet(source: LiveSource, into: list[bytes], quiet_s: float = 3.0) -> None:
    last = time.monotonic()
    while time.monotonic() - last < quiet_s:
        batch = source.poll_raw(200)
        if batch:
            into += batch
            last = time.monotonic()


@pytest.fixture(scope="module")
def seen(modules: tuple[str, ...]) -> Iterator[Seen]:
    result = Seen()
    with ExitStack() as stack:
        pair = stack.enter_context(netns_pair())
        result.pair = pair
        sh("iptables-legacy", "-A", "INPUT", "-p", "udp", "--dport", str(LEGACY_PORT), "-j", "DROP", netns=pair.b)
        table = f"pt_kp_{uuid.uuid4().hex[:6]}"
        try:
            sh("nft", "add", "table", "inet", table, netns=pair.b)
            sh("nft", "add", "chain", "inet", table, "input",
               "{ type filter hook input priority 10; }", netns=pair.b)
            sh("nft", "add", "rule", "inet", table, "input", "udp", "dport", str(NFT_PORT), "drop", netns=pair.b)
            result.nft = True
        except RuntimeError:
            result.nft = False
        sh("ip", "-n", pair.a, "link", "set", "veth-a", "mtu", str(FRAG_MTU))
        result.vxlan = stack.enter_context(vxlan_pair())
        result.nft_table = table

        started = time.monotonic()
        source = LiveSource(ProbeConfig(kprobes=("netfilter", "vxlan", "fragmentation")))
        result.cflags = list(source.build.cflags)
        source.start(progress=False)
        timed("kprobes compile+attach", time.monotonic() - started)
        try:
            send(pair.a, pair.addr_b, LEGACY_PORT, LEGACY_COUNT, 32)
            send(pair.a, pair.addr_b, NFT_PORT, NFT_COUNT, 32)
            send(pair.a, pair.addr_b, FRAG_PORT, FRAG_COUNT, FRAG_PAYLOAD, dont_fragment=False)
            send(result.vxlan[0], "198.19.42.2", VXLAN_PORT, VXLAN_COUNT, 64)
            _poll_until_quiet(source, result.raws)
            result.histograms = source.nfk_histograms()
            result.unreturned = [(int(v.source), bytes(v.table).rstrip(b"\0"), bytes(v.chain).rstrip(b"\0"),
                                  int(v.skb)) for v in source._bpf["nfk_tables"].values()]
            result.attached = list(source.attached)
        finally:
            source.close()
        result.counters = source.final_counters
        yield result


def _drop_rows(seen: Seen) -> list[dict[str, Any]]:
    table = DropTable()
    verdicts = NfAttribution()
    for raw in seen.raws:
        table.add_raw(raw)
        verdicts.add_raw(raw)
    symbols = KernelSymbols.load()
    return drop_rows(table, Resolver({}, str, symbols.symbolize), verdicts)


def _row(rows: list[dict[str, Any]], dport: int) -> dict[str, Any]:
    found = [row for row in rows if row["dport"] == dport and row["proto"] == "udp"]
    assert len(found) == 1, f"one drop row for udp port {dport} expected: {found} (all: {rows})"
    return found[0]


def test_every_kprobe_attached(seen: Seen) -> None:
    attached = set(seen.attached)
    for expected in ("kprobe nf_hook_slow", "kretprobe nf_hook_slow", "kprobe ipt_do_table",
                     "kretprobe ipt_do_table", "kprobe nft_do_chain", "kretprobe nft_do_chain", "kprobe vxlan_rcv",
                     "kprobe vxlan_xmit_one", "kprobe ip_do_fragment"):
        assert expected in attached, (seen.attached, seen.cflags)
    assert seen.counters["lost"] == 0, seen.counters


def test_iptables_legacy_drop_names_hook_and_table(seen: Seen) -> None:
    assert seen.pair is not None
    row = _row(_drop_rows(seen), LEGACY_PORT)
    assert row["count"] == LEGACY_COUNT
    assert row["location"].startswith("nf_hook_slow"), row
    assert (row["hook"], row["nf_source"], row["table"], row["chain"], row["verdict"]) == (
        "INPUT", "iptables", "filter", "INPUT", "DROP"), row
    assert (row["src"], row["dst"]) == (seen.pair.addr_a, seen.pair.addr_b)
    assert row["nf_hook_us"] > 0


def test_nftables_drop_names_table_and_chain(seen: Seen) -> None:
    if not seen.nft:
        pytest.skip("nft could not create a table in the namespace (nf_tables missing)")
    row = _row(_drop_rows(seen), NFT_PORT)
    assert row["count"] == NFT_COUNT
    assert (row["hook"], row["nf_source"], row["table"], row["chain"], row["verdict"]) == (
        "INPUT", "nftables", seen.nft_table, "input", "DROP"), row


def test_one_verdict_event_per_dropped_packet(seen: Seen) -> None:
    verdicts = NfAttribution()
    for raw in seen.raws:
        verdicts.add_raw(raw)
    by_port: dict[int, int] = {}
    for verdict in verdicts.verdicts:
        if verdict.tuple.proto == 17:
            by_port[verdict.tuple.dport] = by_port.get(verdict.tuple.dport, 0) + 1
    assert by_port.get(LEGACY_PORT) == LEGACY_COUNT, (by_port, seen.kinds(), verdicts.verdicts[:3])
    assert by_port.get(NFT_PORT) == (NFT_COUNT if seen.nft else None), (by_port, seen.unreturned[:5])


def test_time_in_hooks_recorded_per_hook(seen: Seen) -> None:
    # IPv4 (row 0) INPUT (hook 1) of the receiving namespace ran for every dropped packet; the sender's namespace
    # has no netfilter hooks registered, so nothing is counted for its OUTPUT unless another namespace has them.
    assert sum(seen.histograms.get((0, 1), [])) >= LEGACY_COUNT + NFT_COUNT, seen.histograms
    assert hook_label(0x100 | (2 << 4) | 1) == "INPUT"


def test_vxlan_xmit_carries_vni_inner_and_outer(seen: Seen) -> None:
    _a, _b, under_a, under_b = seen.vxlan
    events = [e for e in seen.packets(POINT_VXLAN_XMIT) if e.inner and e.inner.dport == VXLAN_PORT]
    assert len(events) == VXLAN_COUNT, [str(e) for e in seen.packets(POINT_VXLAN_XMIT)]
    for event in events:
        assert event.vni == VNI
        assert (event.outer.src, event.outer.dst, event.outer.dport, event.outer.proto) == (under_a, under_b,
                                                                                              4789, 17)
        assert event.inner is not None
        assert (event.inner.src, event.inner.dst) == ("198.19.42.1", "198.19.42.2")
        assert event.ifname == "vx0"


def test_vxlan_rcv_carries_vni_inner_and_outer(seen: Seen) -> None:
    _a, _b, under_a, under_b = seen.vxlan
    events = [e for e in seen.packets(POINT_VXLAN_RCV) if e.inner and e.inner.dport == VXLAN_PORT]
    assert len(events) == VXLAN_COUNT
    for event in events:
        assert event.vni == VNI
        assert (event.outer.src, event.outer.dst, event.outer.dport) == (under_a, under_b, 4789)
        assert event.inner is not None
        assert (event.inner.src, event.inner.dst) == ("198.19.42.1", "198.19.42.2")


def test_oversize_non_df_packets_are_fragmented(seen: Seen) -> None:
    assert seen.pair is not None
    events = [e for e in seen.packets(POINT_FRAGMENT)
              if e.outer.dst == seen.pair.addr_b and e.outer.dport == FRAG_PORT]
    assert len(events) == FRAG_COUNT, [(e.outer.describe(), e.len) for e in seen.packets(POINT_FRAGMENT)]
    for event in events:
        assert event.location == FRAG_MTU, "the MTU of the output device"
        assert event.len == FRAG_PAYLOAD + 8 + 20
        assert event.ifname == "veth-a"
        assert not event.outer.dont_fragment


def test_flows_on_6_1_uses_kprobes_instead_of_links() -> None:
    """No BPF netfilter links before 6.4: `podtrace flows` says so and keeps running with kprobe verdicts."""
    args = argparse.Namespace(filter=[], ringbuf_pages=256, duration=None, netns=None, ifname=None, tc=[],
                              node=None)
    config = probe_config(args, path=False, netfilter=True)
    assert config.netfilter is False
    assert "netfilter" in config.kprobes and "vxlan" not in config.kprobes
    assert {"netfilter", "vxlan", "fragmentation"} <= set(probe_config(args, path=True).kprobes)


def test_a_recording_of_real_verdict_events_names_their_namespaces(seen: Seen, tmp_path: Path) -> None:
    """The kernel's own verdict events (netns after hook_ns, at 32: not where NAT and conntrack events keep it)
    recorded as `podtrace record` records them: the recording names each verdict's namespace, pair.b's."""
    assert seen.pair is not None
    verdicts = [decode_verdict(raw) for raw in seen.raws if raw[0] == EVENT_NF_VERDICT]
    assert verdicts, seen.kinds()
    header = {"format_version": 1, "kernel_release": "vm", "hostname": "vm",
              "clock": {"wall_ns": 0, "monotonic_ns": 0, "wall_offset_ns": 0}, "drop_reasons": {}, "attached": [],
              "names": {"netns": {}, "lab": None}}
    path = tmp_path / "verdicts.ptrec"
    recorder = Recorder(str(path), header, NetnsNames().name, hex)
    recorder.add(seen.raws)
    recorder.close({}, 0)
    source = ReplaySource(str(path))
    assert sum(1 for raw in source if raw[0] == EVENT_NF_VERDICT) == len(verdicts)
    source.close()
    assert all(verdict.netns in source.names.netns for verdict in verdicts)
    dropped = [verdict for verdict in verdicts if verdict.tuple.dport in (LEGACY_PORT, NFT_PORT)]
    assert dropped and {source.names.netns[verdict.netns] for verdict in dropped} == {seen.pair.b}
