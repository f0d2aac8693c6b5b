"""Formatters: the drop table, event lines, JSON objects and summaries, with a fixed Resolver and a buffer."""

from __future__ import annotations

import dataclasses
import io
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tracer.analysis.aggregate import DropTable
from tracer.events.decode import (
    EVENT_DROP,
    EVENT_PATH,
    FLAG_INNER,
    FLAG_PARSED,
    POINT_RX,
    POINT_XMIT,
    PacketEvent,
    Tuple,
    decode,
)
from tracer.output.report import (
    Resolver,
    describe_point,
    drop_rows,
    event_json,
    event_line,
    summary_json,
    summary_line,
    write_drop_table,
)

GOLDEN_DIR = Path(__file__).parent / "fixtures" / "events"
WALL = 1_700_000_000 * 10**9  # 2023-11-14T22:13:20Z at monotonic 0
HOST = 4026531840
POD = 4026532315
NODE2 = 4026532400


@pytest.fixture(autouse=True)
def utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def names() -> Resolver:
    netns = {HOST: "host", POD: "pt-node1", NODE2: "pt-node2"}
    symbols = {0xFFFFFFFF81A00000: "nf_hook_slow+0x8a", 0xFFFFFFFF81B00000: "__udp4_lib_rcv+0x4bc"}
    return Resolver(
        reasons={2: "NOT_SPECIFIED", 3: "NO_SOCKET", 5: "NETFILTER_DROP", 34: "TCP_INVALID_SEQUENCE",
                 74: "TCP_OLD_SEQUENCE"},
        netns=lambda inode: netns.get(inode, f"netns:{inode}"),
        symbol=lambda address: symbols.get(address, f"0x{address:x}"),
        wall_offset_ns=WALL,
    )


def v4(addr: str) -> bytes:
    return socket.inet_aton(addr) + bytes(12)


def event(
    *, kind: int = EVENT_DROP, reason: int = 5, location: int = 0xFFFFFFFF81A00000, src: str = "10.244.1.23",
    dst: str = "10.96.0.10", sport: int = 43210, dport: int = 443, proto: int = 6, netns: int = POD,
    ifname: str = "eth0", ts_ns: int = 1_500_000, inner: Tuple | None = None, vni: int = 0, icmp: tuple = (0, 0),
) -> PacketEvent:
    outer = Tuple(v4(src), v4(dst), sport, dport, 4, proto, icmp[0], icmp[1], 0x4000, 60)
    flags = FLAG_PARSED | (FLAG_INNER if inner else 0)
    return PacketEvent(kind, 2, ts_ns, 0xFFFF888012345600, location if kind == EVENT_DROP else 0, reason, netns, 3,
                       60, 0, 0x0800, flags, 0, vni, ifname, outer, inner, b"")


def table_of(events: list[PacketEvent]) -> DropTable:
    table = DropTable()
    table.add_all(events)
    return table


# -- drop rows and the table --


def test_drop_rows_fields() -> None:
    table = table_of([event(ts_ns=1_000_000, sport=1), event(ts_ns=3_000_000, sport=2)])
    (row,) = drop_rows(table, names())
    expected = {
        "reason": "NETFILTER_DROP", "location": "nf_hook_slow+0x8a", "count": 2, "bytes": 120, "proto": "tcp",
        "src": "10.244.1.23", "sport": 2, "dst": "10.96.0.10", "dport": 443, "netns": "pt-node1",
        "netns_inode": POD, "ifname": "eth0", "first_seen": 1_700_000_000.001, "last_seen": 1_700_000_000.003,
        "inner": None, "vni": None,
    }
    assert {key: row[key] for key in expected} == expected
    json.dumps(row)  # --json prints rows as they are


def test_drop_rows_unknown_reason_and_inner() -> None:
    inner = Tuple(v4("10.244.2.7"), v4("10.244.1.5"), 8080, 40000, 4, 6, 0, 0, 0, 52)
    (row,) = drop_rows(table_of([event(reason=99, inner=inner, vni=1, ifname="")]), names())
    assert row["reason"] == "reason 99"
    assert row["ifname"] == "-"
    assert (row["inner"], row["vni"]) == ("tcp 10.244.2.7:8080 > 10.244.1.5:40000", 1)


def typical_rows() -> list[dict]:
    """Pod and Service addresses, ephemeral source ports, common reasons and names."""
    return drop_rows(table_of([
        event(),
        event(reason=3, location=0xFFFFFFFF81B00000, proto=17, src="10.244.1.2", dst="10.244.2.3",
              sport=54321, dport=53, netns=HOST, ifname="cni0"),
        event(reason=34, location=0xFFFFFFFF81C00000, src="10.244.2.15", dst="10.244.1.130",
              sport=61000, dport=8080, ifname="veth948fe603"),
        event(proto=1, icmp=(3, 4), src="10.244.1.2", dst="10.244.2.3"),
    ]), names())


def test_long_names_seen_on_the_lab_are_whole() -> None:
    """The lab's own names, cut at 99 columns before: TCP_OLD_SEQUEN, pt-node2/flanne."""
    rows = drop_rows(table_of([event(reason=74, ifname="flannel.1", netns=NODE2)]), names())
    out = io.StringIO()
    write_drop_table(rows, out)
    assert "TCP_OLD_SEQUENCE" in out.getvalue() and "pt-node2/flannel.1" in out.getvalue()


def test_drop_table_fits_a_99_column_terminal() -> None:
    out = io.StringIO()
    write_drop_table(typical_rows(), out, width=99)
    lines = out.getvalue().splitlines()
    assert len(lines) == 5
    assert lines[0].split() == ["COUNT", "REASON", "LOCATION", "NETNS/IF", "FLOW"]
    for line in lines:
        assert len(line) < 100, line
    assert "tcp 10.244.1.23:43210 > 10.96.0.10:443" in lines[1]
    assert "pt-node1/eth0" in lines[1]
    assert "NETFILTER_DROP" in lines[1] and "NO_SOCKET" in lines[2]
    assert "udp 10.244.1.2:54321 > 10.244.2.3:53" in out.getvalue()
    assert "tcp 10.244.2.15:61000 > 10.244.1.130:8080" in out.getvalue()
    assert "icmp 10.244.1.2 > 10.244.2.3" in out.getvalue()


def test_drop_table_short_names_leave_room() -> None:
    out = io.StringIO()
    write_drop_table(typical_rows()[:2], out, width=99)
    lines = out.getvalue().splitlines()
    assert "nf_hook_slow+0x8a" in lines[1] and "__udp4_lib_rcv+0x4bc" in lines[2]
    assert max(len(line) for line in lines) < 100


def long_rows() -> list[dict]:
    rows = typical_rows()
    rows[0]["reason"] = "A_VERY_LONG_DROP_REASON_NAME_FROM_A_NEW_KERNEL"
    rows[0]["location"] = "some_very_long_kernel_function_name+0x1234"
    rows[0]["netns"] = "a-very-long-namespace-name"
    rows[1].update(src="192.168.100.200", dst="192.168.100.201", sport=65535, dport=65535)  # the widest IPv4
    return rows


def test_drop_table_columns_line_up_and_long_values_are_cut_on_a_narrow_terminal() -> None:
    out = io.StringIO()
    write_drop_table(long_rows(), out, width=99)
    lines = out.getvalue().splitlines()
    flow_at = lines[0].index("FLOW")
    assert all(line[flow_at - 1] == " " and line[flow_at] != " " for line in lines)
    assert "A_VERY_LONG_DROP_REASON_" not in lines[1] and "A_VERY_LONG_D~" in lines[1]  # a cut is marked
    assert "udp 192.168.100.200:65535 > 192.168.100.201:65535" in lines[2]  # flows are never cut
    assert "NETFILTER_DROP" in lines[4]  # reasons keep 14 characters
    assert "pt-node1/eth0 " in lines[4]  # and netns/interface 13
    assert [len(line) < 100 for line in lines] == [True, True, False, True, True]  # only the widest flow overflows


def test_drop_table_in_a_pipe_or_with_wide_shows_every_name_whole() -> None:
    out = io.StringIO()
    write_drop_table(long_rows(), out, width=None)
    text = out.getvalue()
    assert "~" not in text
    for whole in ("A_VERY_LONG_DROP_REASON_NAME_FROM_A_NEW_KERNEL", "some_very_long_kernel_function_name+0x1234",
                  "a-very-long-namespace-name/eth0"):
        assert whole in text, whole


@pytest.mark.parametrize("width", [60, 80, 100, 120, 160, 200])
def test_drop_table_at_terminal_widths(width: int) -> None:
    """Every line fits whenever the floors and the widest flow allow it; a wider terminal cuts less."""
    out = io.StringIO()
    write_drop_table(long_rows(), out, width=width)
    lines = out.getvalue().splitlines()
    widest_flow = len("udp 192.168.100.200:65535 > 192.168.100.201:65535")
    floor_line = 8 + 14 + 1 + 20 + 1 + 13 + 1 + widest_flow
    assert max(len(line) for line in lines) == max(min(width, len(_whole_line())), floor_line)
    cuts = out.getvalue().count("~")
    narrower = io.StringIO()
    write_drop_table(long_rows(), narrower, width=width - 20)
    assert cuts <= narrower.getvalue().count("~")
    assert (cuts == 0) == (width >= len(_whole_line()))


def _whole_line() -> str:
    out = io.StringIO()
    write_drop_table(long_rows(), out, width=None)
    return max(out.getvalue().splitlines(), key=len)


def test_drop_table_inner_and_ipv6() -> None:
    inner = Tuple(v4("10.244.2.7"), v4("10.244.1.5"), 8080, 40000, 4, 6, 0, 0, 0, 52)
    rows = drop_rows(table_of([event(inner=inner, vni=1, proto=17, dport=8472)]), names())
    table = DropTable()
    for path in sorted(GOLDEN_DIR.glob("*drop-ipv6*.bin")):
        table.add(decode(path.read_bytes()))
    rows += drop_rows(table, names())
    out = io.StringIO()
    write_drop_table(rows, out, width=99)
    lines = out.getvalue().splitlines()
    assert lines[2].strip() == "inner (VNI 1): tcp 10.244.2.7:8080 > 10.244.1.5:40000"
    assert all(len(line) < 100 for line in lines)
    v6 = lines[3]
    assert "udp [::1]:" in v6 and v6.endswith(" > [::1]:9")


def test_empty_drop_table() -> None:
    out = io.StringIO()
    write_drop_table([], out)
    assert out.getvalue() == "no drops seen\n"


# -- per-event output --


def test_event_line_drop() -> None:
    line = event_line(event(ts_ns=1_234_567_000), names())
    assert line == ("22:13:21.234567 DROP NETFILTER_DROP at nf_hook_slow+0x8a pt-node1/eth0 "
                    "tcp 10.244.1.23:43210 > 10.96.0.10:443 len 60")


def test_event_line_path_and_vxlan() -> None:
    inner = Tuple(v4("10.244.2.7"), v4("10.244.1.5"), 0, 0, 4, 1, 8, 0, 0, 84)
    line = event_line(event(kind=EVENT_PATH, reason=POINT_RX, ts_ns=0, inner=inner, vni=42, ifname=""), names())
    assert line == ("22:13:20.000000    rx pt-node1/- tcp 10.244.1.23:43210 > 10.96.0.10:443 len 60 "
                    "[vxlan 42: icmp 10.244.2.7 > 10.244.1.5 type 8 code 0]")


def test_xmit_events_carry_the_qdisc_wait_and_the_driver_result() -> None:
    # bpf/podtrace.h PT_XMIT_LOCATION: ns since net_dev_queue in the low 48 bits, the driver's return code above.
    sent = dataclasses.replace(event(kind=EVENT_PATH, reason=POINT_XMIT, ts_ns=0), location=4_067_600)
    busy = dataclasses.replace(sent, location=0x10 << 48 | 16_200)
    assert (sent.queued_ns, sent.xmit_result, busy.queued_ns, busy.xmit_result) == (4_067_600, "ok", 16_200, "busy")
    assert describe_point(sent) == "xmit qdisc 4.1ms driver ok"
    assert describe_point(dataclasses.replace(sent, location=7 << 48)) == "xmit qdisc 0.0us driver rc 7"
    assert event_line(busy, names()).endswith("len 60 qdisc 16.2us driver busy")
    data = event_json(sent, names())
    assert (data["point"], data["qdisc_ns"], data["xmit"]) == ("xmit", 4_067_600, "ok")
    assert "qdisc_ns" not in event_json(event(kind=EVENT_PATH, reason=POINT_RX), names())


def test_a_packet_mark_is_shown_only_when_set() -> None:
    marked = dataclasses.replace(event(), mark=0x4000)
    assert event_json(marked, names())["mark"] == "0x4000" and "mark" not in event_json(event(), names())
    assert event_line(marked, names()).endswith("len 60 mark 0x4000") and "mark" not in event_line(event(), names())


def test_event_json_drop() -> None:
    data = event_json(event(proto=1, icmp=(3, 4), ts_ns=2_500_000), names())
    assert data == {
        "time": 1_700_000_000.0025, "kind": "drop", "proto": "icmp", "src": "10.244.1.23", "sport": 43210,
        "dst": "10.96.0.10", "dport": 443, "len": 60, "netns": "pt-node1", "ifname": "eth0", "cpu": 2,
        "skb": "0xffff888012345600", "reason": "NETFILTER_DROP", "location": "nf_hook_slow+0x8a",
        "icmp_type": 3, "icmp_code": 4, "severity": "policy", "ct_state": "unknown", "ct_identity": "not-traced",
    }
    assert json.loads(json.dumps(data)) == data


def test_event_json_path_with_inner() -> None:
    inner = Tuple(v4("10.244.2.7"), v4("10.244.1.5"), 8080, 40000, 4, 6, 0, 0, 0, 52)
    data = event_json(event(kind=EVENT_PATH, reason=70, inner=inner, vni=9, netns=12345), names())
    assert data["kind"] == "path"
    assert data["point"] == "70"
    assert "reason" not in data and "location" not in data and "icmp_type" not in data
    assert (data["inner"], data["vni"], data["netns"]) == ("tcp 10.244.2.7:8080 > 10.244.1.5:40000", 9,
                                                           "netns:12345")


def test_event_json_golden() -> None:
    data = event_json(decode((GOLDEN_DIR / "03-drop-ipv4-udp.bin").read_bytes()), names())
    assert (data["kind"], data["reason"], data["proto"], data["dport"], data["ifname"]) == (
        "drop", "NO_SOCKET", "udp", 9, "lo")


# -- summaries --


def test_summary_json() -> None:
    counters = {"seen": 10, "filtered": 4, "events": 5, "lost": 1, "sampled": 2, "read_fail": 0}
    assert summary_json(5, counters, evicted=3) == {
        "summary": True, "events": 5, "lost": 1, "sampled": 2, "filtered": 4, "evicted": 3,
    }
    assert summary_json(0, {}) == {"summary": True, "events": 0, "lost": 0, "sampled": 0, "filtered": 0,
                                   "evicted": 0}


def test_summary_line() -> None:
    assert summary_line(12, {"lost": 0}) == "12 events, 0 lost"
    lost = summary_line(12, {"lost": 3})
    assert lost.startswith("12 events, 3 lost")
    assert "ring buffer full" in lost and "--ringbuf-pages" in lost
    full = summary_line(1, {"lost": 0, "sampled": 5}, evicted=2)
    assert full == ("1 events, 0 lost, 5 path packets skipped by the rate limit (before the filter), "
                    "2 drop groups evicted (table full)")


def test_resolver_defaults() -> None:
    resolver = Resolver({}, str, str)
    assert resolver.reason(7) == "reason 7"
    assert abs(resolver.wall(time.monotonic_ns()) - time.time()) < 5
