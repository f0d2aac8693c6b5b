"""Conntrack decoding against raw ctnetlink dumps from the lab (tests/unit/fixtures/kubeproxy/README.md)."""

from __future__ import annotations

import re
import socket
from pathlib import Path

import pytest

from tracer.node import conntrack as ct

FIX = Path(__file__).parent / "fixtures" / "kubeproxy"


@pytest.fixture(scope="module")
def entries() -> list[ct.CtEntry]:
    return ct.parse_entries((FIX / "lab-conntrack-node1.nl").read_bytes())


def _conntrack_l() -> dict[int, str]:
    """`conntrack -L -o id` lines by entry id: the reference decode by conntrack-tools."""
    out = {}
    for line in (FIX / "lab-conntrack-L-node1.txt").read_text().splitlines():
        m = re.search(r"id=(\d+)", line)
        if m:
            out[int(m.group(1))] = line
    return out


def test_every_entry_decodes_as_conntrack_tools_does(entries: list[ct.CtEntry]) -> None:
    ref = _conntrack_l()
    assert len(entries) == 131
    matched = 0
    for e in entries:
        line = ref.get(e.id or -1)
        if line is None:  # came or went between the two captures
            continue
        matched += 1
        addrs = re.findall(r"src=(\S+) dst=(\S+)", line)
        assert addrs == [(e.orig.src, e.orig.dst), (e.reply.src, e.reply.dst)]
        ports = re.findall(r"sport=(\d+) dport=(\d+)", line)
        if ports:
            assert [(int(a), int(b)) for a, b in ports] == [(e.orig.sport, e.orig.dport),
                                                            (e.reply.sport, e.reply.dport)]
        assert line.split()[0] in (e.orig.proto, "unknown")
        if e.tcp_state:
            assert f" {e.tcp_state} " in line
        assert ("[UNREPLIED]" in line) == (not e.seen_reply)
    assert matched > 120


def test_service_dnat(entries: list[ct.CtEntry]) -> None:
    """Client pod 10.244.0.2 -> default/web ClusterIP 10.96.0.10:80, DNATed to a web pod on 8080."""
    to_vip = [e for e in entries if e.orig.dst == "10.96.0.10" and e.orig.dport == 80]
    assert to_vip
    for e in to_vip:
        assert e.orig.src == "10.244.0.2" and e.dnat and not e.snat and e.nated
        assert e.backend in {("10.244.0.3", 8080), ("10.244.1.2", 8080), ("10.244.1.3", 8080)}
        assert "DST_NAT" in e.status_names and e.orig.proto == "tcp"
    vxlan = [e for e in entries if e.orig.dport == 8472]
    assert vxlan and not any(e.nated for e in vxlan)


def test_nat_table(entries: list[ct.CtEntry]) -> None:
    table = ct.NatTable(entries)
    first = next(e for e in entries if e.orig.dst == "10.96.0.10" and e.orig.proto == "udp")
    assert table.lookup(first.orig) == first.reply
    assert table.entry_for_reply(first.reply) == first
    assert table.lookup(first.orig.reversed()) is None
    assert len(table) == sum(1 for e in entries if e.nated)


def test_tuple_helpers() -> None:
    t = ct.CtTuple("10.244.0.2", "10.96.0.10", "tcp", 40000, 80)
    assert t.reversed() == ct.CtTuple("10.96.0.10", "10.244.0.2", "tcp", 80, 40000)
    assert str(t) == "tcp 10.244.0.2:40000 -> 10.96.0.10:80"
    e = ct.CtEntry(t, ct.CtTuple("10.244.1.2", "192.168.77.1", "tcp", 8080, 40000))
    assert e.dnat and e.snat
    assert not ct.CtEntry(t, t.reversed(), family=socket.AF_INET).nated


def test_stats_netlink_matches_conntrack_s() -> None:
    for nl, text in (("lab-conntrack-stats-cpu-node1-full.nl", "lab-conntrack-S-node1-full.txt"),
                     ("lab-conntrack-stats-cpu-node1.nl", "lab-conntrack-S-node1.txt")):
        from_netlink = ct.parse_stats_cpu((FIX / nl).read_bytes())
        from_text = ct.parse_conntrack_s((FIX / text).read_text())
        assert from_netlink == from_text and len(from_text) == 2


def test_table_full_health() -> None:
    cpus = ct.parse_conntrack_s((FIX / "lab-conntrack-S-node1-full.txt").read_text())
    h = ct.Health(262144, 262144, tuple(cpus))
    assert h.full and h.fill == 1.0
    assert (h.drop, h.insert_failed, h.early_drop) == (20, 0, 0)
    assert cpus[1].insert == 262059
    assert h.to_dict() == {"count": 262144, "max": 262144, "fill": 1.0, "full": True, "drop": 20,
                           "insert_failed": 0, "early_drop": 0}
    assert not ct.Health(10, 0).full and ct.Health(10, 0).fill == 0.0


def test_conntrack_s_older_format() -> None:
    text = ("cpu=0   \tfound=12 invalid=3 ignore=40 insert=0 insert_failed=7 drop=1 early_drop=2 error=0 "
            "search_restart=5\n")
    (cpu,) = ct.parse_conntrack_s(text)
    assert (cpu.cpu, cpu.found, cpu.invalid, cpu.insert_failed, cpu.drop, cpu.early_drop, cpu.search_restart) == \
        (0, 12, 3, 7, 1, 2, 5)
