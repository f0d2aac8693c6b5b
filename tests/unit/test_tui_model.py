"""The TUI's pure parts: aggregation into snapshots, timelines, the view filter, coalescing messages."""

from __future__ import annotations

import importlib.util
import socket
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from tracer.analysis.softirq import Log2Hist, SoftirqAggregator, SoftirqSnapshot, SoftnetRow
from tracer.node.kubeproxy.model import ServiceMap
from tracer.output.errors import KernelError, UsageError
from tui.messages import SnapshotReady
from tui.model import Model, sparkline
from tui.overlay import OverlayTable
from tui.pyfilter import ViewFilter
from tui.services import ServiceFlowsTable
from tui.softirq import SoftirqTable, softirq_rows

FIXTURE = Path(__file__).parent / "fixtures" / "tui" / "replay_fixture.py"
_spec = importlib.util.spec_from_file_location("tui_replay_fixture_model", FIXTURE)
assert _spec and _spec.loader
replay = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(replay)


def test_view_filter_runs_tcpdump_syntax_on_decoded_snapshots() -> None:
    events = replay.events()
    assert sum(ViewFilter("")(e) for e in events) == len(events) == 55
    assert sum(ViewFilter("udp port 5001")(e) for e in events) == 26  # 13 receives + 13 drops
    assert sum(ViewFilter("tcp dst port 5003")(e) for e in events) == 10
    assert not any(ViewFilter("icmp")(e) for e in events)
    with pytest.raises(UsageError, match="bad filter 'udp port'"):
        ViewFilter("udp port")


def test_model_groups_drops_and_refilters_its_history() -> None:
    model = Model(replay.resolver())
    model.add(replay.events())
    snap = model.snapshot({"lost": 0})
    # by count, benign frees last (none here)
    assert [(r["reason"], r["count"]) for r in snap.drops] == [("NETFILTER_DROP", 13), ("NO_SOCKET", 7),
                                                              ("NO_SOCKET", 5)]
    assert (snap.events, snap.drop_total, snap.path_events, snap.rate) == (55, 25, 30, 55.0)
    model.set_filter("tcp", ViewFilter("tcp"))
    snap = model.snapshot({})
    assert [(r["proto"], r["count"]) for r in snap.drops] == [("tcp", 5)]
    assert snap.received == 55 and snap.events == 15


def test_timeline_merges_drops_with_path_events_of_the_same_flow_and_is_bounded() -> None:
    model = Model(replay.resolver(), timeline_len=4)
    model.add(replay.events())
    ident = model.snapshot({}).drops[0]["key"]
    rows = model.timeline(ident)
    assert len(rows) == 8 and [r.is_drop for r in rows] == [False, True] * 4
    assert model.timeline("no-such-group") == []


def test_sparkline_scales_to_the_busiest_second() -> None:
    assert sparkline([0, 1, 2, 4, 8]) == " ▁▂▄█"
    assert sparkline([0, 0]) == "  "


def test_snapshot_messages_coalesce() -> None:
    model = Model(replay.resolver())
    first, second = SnapshotReady(model.snapshot({})), SnapshotReady(model.snapshot({}))
    assert second.can_replace(first)


def _nat_pair(client: str, vip: str, vport: int, backend: str, bport: int, packets: int) -> tuple[Any, Any]:
    def addr(ip: str) -> bytes:
        return socket.inet_aton(ip) + bytes(12)

    def tup(src: str, dst: str, dport: int) -> Any:
        return SimpleNamespace(saddr=addr(src), daddr=addr(dst), sport=40000, dport=dport, family=4, proto=6,
                               icmp_type=0, icmp_code=0, frag=0, ip_len=60)

    key = SimpleNamespace(point=1, netns=1, before=tup(client, vip, vport), after=tup(client, backend, bport))
    stats = SimpleNamespace(packets=packets, bytes=60 * packets, first_ns=1, last_ns=2, hook_ns_sum=4000 * packets,
                            hook_ns_max=9000)
    return key, stats


def test_services_view_counts_drops_on_the_flow_whose_client_and_backend_they_match() -> None:
    class Kernel:
        def nat_flows(self) -> list[tuple[Any, Any]]:
            return [_nat_pair("10.244.0.2", "10.96.0.10", 80, "10.244.1.2", 8080, 10),
                    _nat_pair("10.244.0.2", "10.96.0.10", 80, "10.244.0.3", 8080, 12)]

    table = ServiceFlowsTable(Kernel(), [None])
    table._services = ServiceMap()
    table._pods = {"10.244.0.2": "client", "10.244.1.2": "web-2", "10.244.0.3": "web-1"}
    drop = {"reason": "NETFILTER_DROP", "proto": "tcp", "src": "10.244.0.2", "dst": "10.244.1.2", "dport": 8080,
            "hook": "FORWARD", "count": 7}
    other = dict(drop, src="10.244.9.9", dport=9999, count=3)  # no flow and no Service: not shown
    rows = table.rows(drops=[drop, other])
    assert [(r["backend"], r["pkts_out"], r["drops"]) for r in rows] == [
        ("web-1:8080", 12, ""), ("web-2:8080", 10, "7 NETFILTER_DROP at FORWARD")]
    assert rows[0]["client"] == "client" and rows[0]["nf_us"] == 4.0



def test_the_model_hands_its_shown_drop_groups_to_a_table_that_uses_drops() -> None:
    seen: list[list[dict[str, Any]]] = []

    class Spy:
        columns = ["n"]
        uses_drops = True

        def rows(self, drops: list[dict[str, Any]]) -> list[dict[str, Any]]:
            seen.append(drops)
            return [{"n": len(drops)}]

    model = Model(replay.resolver())
    model.tables["flows"] = Spy()
    model.add(replay.events())
    snap = model.snapshot({})
    assert snap.tables["flows"] == [{"n": 3}] and seen[-1] == snap.drops


def _softirq_snapshot(ts: float, waits: list[int], squeezes: int, dropped: int = 0) -> SoftirqSnapshot:
    hist = Log2Hist.of_values(waits)
    return SoftirqSnapshot(ts, {0: {("NET_RX", "wait"): hist}}, {}, {0: SoftnetRow(0, len(waits), dropped, squeezes)})


def test_softirq_rows_show_p50_p99_squeezes_and_a_bar_of_the_buckets() -> None:
    aggregator = SoftirqAggregator()
    aggregator.add(_softirq_snapshot(0.0, [], 1, dropped=10))
    aggregator.add(_softirq_snapshot(1.0, [1500] * 90 + [40_000] * 10, 4, dropped=17))
    rows = softirq_rows(aggregator.report())
    assert [(r["cpu"], r["kind"], r["dropped"], r["squeezes"]) for r in rows] == [(0, "NET_RX wait", 7, 3),
                                                                                  ("all", "NET_RX wait", 7, 3)]
    assert rows[0]["p50"] == "1.6us" and rows[0]["p99"] == "39.3us"  # interpolated inside the log2 buckets
    assert rows[0]["histogram"] == "[1.0us..65.5us) █    ▁"  # 1024-2047 ns: 90, 32768-65535 ns: 10


def test_softirq_table_snapshots_its_probe_in_its_own_thread_and_says_why_not() -> None:
    snapshots = [_softirq_snapshot(float(i), [2000] * i * 10, i) for i in range(50)]

    class Probe:
        def start(self, progress: bool = True) -> None: ...

        def snapshot(self) -> SoftirqSnapshot:
            return snapshots.pop(0)

        def close(self) -> None: ...

    table = SoftirqTable(Probe, interval=0.01)
    assert table.rows() == []
    for _ in range(200):
        if table.rows():
            break
        time.sleep(0.01)
    table.close()
    assert table.rows()[0]["kind"] == "NET_RX wait"

    class Broken(Probe):
        def start(self, progress: bool = True) -> None:
            raise KernelError("this kernel has no tracepoint napi:napi_poll")

    broken = SoftirqTable(Broken)
    broken.rows()
    broken.close()
    assert broken.rows() == [{"cpu": "-", "kind": "unavailable: this kernel has no tracepoint napi:napi_poll"}]


def test_overlay_view_counts_tunnels_fragments_and_frag_needed_per_device_and_follows_the_filter() -> None:
    events = replay.events()
    path = next(e for e in events if not e.is_drop)
    vxlan = replace(path, ifname="flannel.1", vni=1, inner=replace(path.outer, dport=8080))
    fragment = replace(path, outer=replace(path.outer, frag=0x2000))  # MF set
    icmp = replace(path.outer, proto=1, icmp_type=3, icmp_code=4, sport=0, dport=0)
    needed = replace(path, outer=icmp, snap=bytes([0x45]) + bytes(25) + (1400).to_bytes(2, "big") + bytes(4))
    resolver = replay.resolver()
    model = Model(resolver)
    model.tables["overlay"] = OverlayTable(resolver.netns, resolver.reasons)
    model.add(events + [vxlan, vxlan, fragment, needed])
    rows = model.snapshot({}).tables["overlay"]
    where = f"{resolver.netns(path.netns)}/{path.ifname}"
    assert [(r["device"], r["vni"], r["packets"], r["fragments"], r["frag_needed"]) for r in rows] == [
        (f"{resolver.netns(path.netns)}/flannel.1", 1, 2, 0, 0), (where, "-", 2, 1, 1)]
    assert rows[1]["verdict"] == "frag-needed: path MTU 1400 is smaller than what is sent"
    assert rows[0]["verdict"] == "ok"
    model.set_filter("icmp", ViewFilter("icmp"))  # none of the fixture's packets: rebuilt from the history
    assert model.snapshot({}).tables["overlay"] == []
    model.set_filter("", None)
    assert model.snapshot({}).tables["overlay"] == rows


def test_overlay_view_counts_reassembly_timeouts_apart_from_too_big_and_names_packet_too_big() -> None:
    path = next(e for e in replay.events() if not e.is_drop)
    reasons = {93: "PKT_TOO_BIG", 95: "FRAG_REASM_TIMEOUT"}
    table = OverlayTable(lambda inode: "ns", reasons)
    timeout = replace(path, type=1, reason=95, ifname="veth-t")  # EVENT_DROP
    for _ in range(3):
        table.add(timeout)
    assert [(r["device"], r["packets"], r["verdict"]) for r in table.rows()] == [
        ("ns/veth-t", 3, "3 reassembly timeouts (fragments that never all arrived)")]
    table.add(replace(timeout, reason=93))
    assert table.rows()[0]["verdict"] == "1 dropped as too big; 3 reassembly timeouts"
    # ICMPv6 packet-too-big: IPv6 header, then type 2, code 0, checksum and the MTU (RFC 4443).
    v6 = replace(path.outer, family=6, proto=58, icmp_type=2, icmp_code=0, sport=0, dport=0)
    ptb = replace(path, ifname="veth-r", outer=v6, snap=bytes([0x60]) + bytes(43) + (1280).to_bytes(4, "big"))
    table.add(ptb)
    row = next(r for r in table.rows() if r["device"] == "ns/veth-r")
    assert row["frag_needed"] == 1
    assert row["verdict"] == "packet-too-big (ICMPv6): path MTU 1280 is smaller than what is sent"


def test_probe_ids_mirror_podtrace_h_and_each_program_counts_under_its_own() -> None:
    import re

    from tracer.events.decode import CNT_MAX
    from tracer.kernel.btf import Btf
    from tracer.probes.build import ProbeConfig, build
    from tracer.probes.pcapfilter import compile_filter
    from tracer.probes.registry import COUNTER_SLOTS as PROBES

    header = (Path(__file__).resolve().parents[2] / "bpf" / "podtrace.h").read_text()
    ids = {name.lower(): int(value) for name, value in re.findall(r"#define PT_PROBE_(\w+) (\d+)", header)}
    assert {name: ids[name] for name in PROBES} == {name: index for index, name in enumerate(PROBES)}
    assert f"#define PT_PROBES {len(PROBES)}" in header and f"#define PT_CNT_MAX {CNT_MAX}" in header
    vmlinux = Path("/sys/kernel/btf/vmlinux")  # world-readable, as tests/unit/test_probes_build.py uses it
    if not vmlinux.exists():
        pytest.skip("no kernel BTF here")
    text = build(Btf.load(str(vmlinux)), ProbeConfig(filter=compile_filter("udp"), path=True)).text
    drops, path = text.index("int pt_drop_btf("), text.index("TRACEPOINT_PROBE(net, netif_receive_skb)")
    assert text[text.rindex("#define PT_PROBE ", 0, drops):].startswith("#define PT_PROBE 1\n")  # drops
    assert text[text.rindex("#define PT_PROBE ", 0, path):].startswith("#define PT_PROBE 2\n")  # path
    assert "BPF_PERCPU_ARRAY(counters, __u64, PT_CNT_SLOTS);" in text


def test_events_count_under_the_probe_that_emitted_them() -> None:
    from tui.model import probe_of

    events = replay.events()
    model = Model(replay.resolver())
    model.add(events)
    assert model.probe_events == {"drops": 25, "path": 30}
    assert {probe_of(e) for e in events if e.is_drop} == {"drops"}
    tc = replace(events[0], type=2, reason=4)
    assert probe_of(tc) == "tc" and probe_of(replace(events[0], type=4)) == "icmp"


def test_benign_drop_groups_go_last_whatever_their_count() -> None:
    """A socket's queue purged on close (QUEUE_PURGE, benign) counts more than the fixture's drops, yet shows last."""
    events = replay.events()
    drop = next(event for event in events if getattr(event, "is_drop", False))
    purge_code = 9999
    names = replay.resolver()
    names.reasons[purge_code] = "QUEUE_PURGE"
    model = Model(names)
    model.add(events)
    model.add([replace(drop, reason=purge_code, ts_ns=drop.ts_ns + i) for i in range(50)])
    snap = model.snapshot({"lost": 0})
    assert [(r["reason"], r["count"], r["severity"]) for r in snap.drops] == [
        ("NETFILTER_DROP", 13, "policy"), ("NO_SOCKET", 7, "loss"), ("NO_SOCKET", 5, "loss"),
        ("QUEUE_PURGE", 50, "benign")]


def test_a_time_window_counts_only_its_seconds_and_the_services_view_keeps_counting_since_the_start() -> None:
    events = replay.events()
    drops = [e for e in events if e.is_drop]
    late = {drops[-1].outer.dport}  # one group's drops happen 100 s after the others
    base = min(e.ts_ns for e in drops)
    moved = [replace(e, ts_ns=base + 100 * 1_000_000_000 + i) if e.outer.dport in late else e
             for i, e in enumerate(drops)]

    class Flows:
        columns = ["n"]
        uses_drops = True
        uses_window = True
        window: float | None = None

        def rows(self, drops: list[dict[str, Any]] = ()) -> list[dict[str, Any]]:  # type: ignore[assignment]
            self.seen = [(row["dport"], row["count"]) for row in drops]
            return []

    flows = Flows()
    model = Model(replay.resolver())  # no clock: now is the newest event's time, as in a replay
    model.tables["flows"] = flows
    model.add(moved)
    everything = [(r["dport"], r["count"]) for r in model.snapshot({}).drops]
    assert sorted(everything) == sorted(flows.seen) and len(everything) == 3
    model.set_window(10.0)
    snap = model.snapshot({})
    assert snap.window == 10.0 and flows.window == 10.0  # a windowed table is told the window
    late_count = next(count for port, count in everything if port in late)
    assert [(r["dport"], r["count"], r["total"]) for r in snap.drops] == [(next(iter(late)), late_count, late_count)]
    assert sorted(flows.seen) == sorted(everything)  # Service loss shares stay since the start, as packets are
    model.set_window(None)
    assert [(r["dport"], r["count"]) for r in model.snapshot({}).drops] == everything


def test_softirq_windows_subtract_the_snapshot_that_old_and_the_worst_cpu_is_marked() -> None:
    from tracer.analysis.softirq import worst_cpu

    def snap(ts: float, slow: int) -> SoftirqSnapshot:
        # CPU 0: 100 quick waits per second; CPU 1: `slow` waits of 2 ms so far (cumulative, as the kernel keeps)
        quick = Log2Hist.of_values([1500] * int(ts * 100))
        starved = Log2Hist.of_values([2_000_000] * slow + [1500] * int(ts * 100))
        return SoftirqSnapshot(ts, {0: {("NET_RX", "wait"): quick}, 1: {("NET_RX", "wait"): starved}}, {},
                               {0: SoftnetRow(0, int(ts), 0, 0), 1: SoftnetRow(1, int(ts), 0, 0)})

    aggregator = SoftirqAggregator(keep_seconds=62)
    for second in range(0, 121):
        aggregator.add(snap(float(second), 50 if second >= 5 else 0))  # CPU 1 starved once, around 5 s
    whole = aggregator.report()
    recent = aggregator.report(window=10.0)
    assert aggregator.seconds_in(None) == 120 and aggregator.seconds_in(10.0) == 10
    assert whole[1].stats(("NET_RX", "wait"))["count"] == 120 * 100 + 50
    assert recent[1].stats(("NET_RX", "wait"))["count"] == 10 * 100  # the starvation is older than 10 s
    assert worst_cpu(whole) == 1
    rows = softirq_rows(whole)
    assert [r["cpu"] for r in rows] == [0, "1 worst", "all"] and rows[1]["_style"] == "bold red"
    assert aggregator.seconds_in(600.0) == 62  # longer than kept: back to the oldest snapshot kept
    assert len(aggregator.recent) <= 64  # bounded


def test_a_service_flows_timeline_leaves_out_another_services_connections_to_the_same_backend() -> None:
    from tracer.events.decode import NatEvent, decode_any
    from tui.model import ip_flow
    from tui.sources import open_replay

    source, info = open_replay(str(Path(__file__).parent / "fixtures" / "tui" / "services.ptrec"))
    source.start(progress=False)
    events: list[Any] = []
    for _ in range(100):
        batch = [decode_any(raw) for raw in source.poll_raw(10)]  # NAT events come only raw
        if not batch and events:
            break
        events += batch
    source.close()
    # The db Service's seven connections (DNAT 10.96.0.11:5432 -> 198.18.2.2:5001, dropped in INPUT), and the same
    # seven again as if dialled to another Service's VIP with the same backend (other source ports).
    vip, other = socket.inet_aton("10.96.0.11"), socket.inet_aton("10.96.0.99")
    db = [e for e in events if isinstance(e, NatEvent) and e.before.daddr[:4] == vip]
    assert len(db) == 7
    ports = {e.before.sport for e in db}

    def moved(event: Any) -> Any:
        shift = {"sport": event.outer.sport + 1000} if not isinstance(event, NatEvent) else {}
        if isinstance(event, NatEvent):
            return replace(event, before=replace(event.before, daddr=other + event.before.daddr[4:],
                                                 sport=event.before.sport + 1000),
                           after=replace(event.after, sport=event.after.sport + 1000))
        outer = replace(event.outer, **shift)
        if outer.daddr[:4] == vip:
            outer = replace(outer, daddr=other + outer.daddr[4:])
        return replace(event, outer=outer)

    twins = [moved(e) for e in events
             if (e.before.sport if isinstance(e, NatEvent) else e.outer.sport) in ports]
    model = Model(info.names)
    model.add(events + twins)
    client = db[0].before.src
    rows = model.flow_timeline(ip_flow("udp", client, "10.96.0.11", 5432))
    assert sum(row.is_drop for row in rows) == 7 and sum(row.is_nat for row in rows) == 7
    assert {row.conn[4] for row in rows if row.conn is not None} == ports  # none of the twins' source ports
    twin_rows = model.flow_timeline(ip_flow("udp", client, "10.96.0.99", 5432))
    assert {row.conn[4] for row in twin_rows if row.conn is not None} == {port + 1000 for port in ports}
    # the backend's own flow (after DNAT) is every connection to it, from both Services
    backend = model.flow_timeline(ip_flow("udp", client, "198.18.2.2", 5001))
    assert sum(row.is_drop for row in backend) == 14
