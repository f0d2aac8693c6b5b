"""Link MTUs and conntrack tables in recordings (format minor 2): the MTU verdicts and conntrack states
`podtrace report` builds from them and from the recorded events, with no root and no netlink.

The links and conntrack readings are those of a real recording (fixtures/recordings/node-links.json, see the README
there); events are built with scapy."""

from __future__ import annotations

import copy
import json
import socket
from pathlib import Path
from typing import Any

import pytest
from scapy.layers.inet import ICMP, IP, UDP, fragment
from scapy.packet import Raw
from test_recording import header
from test_recording_fixture import V1, run_cli

from tracer.analysis.mtu_events import MtuEventCounter
from tracer.api import open_recording
from tracer.events.decode import EVENT_DROP, EVENT_PATH, POINT_QUEUE, POINT_RX, PacketEvent, Tuple, encode
from tracer.recording.fileformat import FORMAT_MINOR
from tracer.recording.recorded_node import MtuSummary, RecordedConntrack, node_paths, recorded_conntrack, relevant
from tracer.recording.recorder import Recorder
from tracer.sources.replay import ReplaySource

FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "recordings" / "node-links.json").read_text())
NODE, POD = "ptm-x1-node", "ptm-x1-pod"
NODE_INODE, POD_INODE, OTHER_INODE = 4026532677, 4026532603, 4026530001
POD_IP, CNI_IP, REMOTE = "198.18.200.2", "198.18.200.1", "198.18.203.5"
REASONS = {3: "NO_SOCKET", 12: "NETFILTER_DROP", 93: "PKT_TOO_BIG"}
SAVE = (Path(__file__).parent / "fixtures" / "kubeproxy" / "lab-iptables-node1.save").read_text()


def links(flannel_env: str | None = None) -> dict[str, Any]:
    data = copy.deepcopy(FIXTURE["links"])
    data["flannel_env"] = flannel_env
    return data


def event(packet: bytes, kind: int, reason: int, skb: int, ts: int, netns: int = NODE_INODE,
          ifname: str = "cni0") -> PacketEvent:
    """A packet or drop event as bpf/path.c and bpf/drops.c fill it, from real packet bytes."""
    ip = IP(packet)
    ports = (ip.sport, ip.dport) if ip.proto in (6, 17) and not ip.frag else (0, 0)
    icmp = (ip[ICMP].type, ip[ICMP].code) if ip.proto == 1 else (0, 0)
    outer = Tuple(socket.inet_aton(ip.src) + bytes(12), socket.inet_aton(ip.dst) + bytes(12), *ports, 4, ip.proto,
                  *icmp, int(ip.flags) << 13 | ip.frag, ip.len)
    return PacketEvent(kind, 0, ts, skb, 0, reason, netns, 2, len(packet), 0, 0x0800, 4, min(len(packet), 128), 0,
                       ifname, outer, None, packet[:128])


def too_big_datagram(ip_id: int) -> bytes:
    return bytes(IP(src=POD_IP, dst=REMOTE, flags="DF", id=ip_id) / UDP(sport=40000, dport=7001) / Raw(b"x" * 1472))


def frag_needed(ip_id: int) -> bytes:
    """The ICMP error the node sends back for a too-big DF datagram, quoting next-hop MTU 1450."""
    return bytes(IP(src=CNI_IP, dst=POD_IP, id=ip_id) / ICMP(type=3, code=4, nexthopmtu=1450)
                 / too_big_datagram(ip_id + 1000)[:28])


def mtu_burst(count: int) -> list[PacketEvent]:
    """`count` too-big datagrams as the kernel showed them: a drop each, and the frag-needed queued on cni0 and then
    on the bridge port; the ICMP skbs alternate between two addresses, as a freed skb is reused at once."""
    events = []
    for i in range(count):
        ts = 1_000_000 + i * 25_000
        skb = 0xFFFF888159B5CC00 if i % 2 == 0 else 0xFFFF888159B5C000
        events.append(event(too_big_datagram(100 + i), EVENT_DROP, 93, 0xFFFF888100000000 + i, ts))
        events.append(event(frag_needed(0x54BA + i), EVENT_PATH, POINT_QUEUE, skb, ts + 1000))
        events.append(event(frag_needed(0x54BA + i), EVENT_PATH, POINT_QUEUE, skb, ts + 2500, ifname="vethpod0"))
        events.append(event(frag_needed(0x54BA + i), EVENT_PATH, POINT_RX, skb, ts + 4000, POD_INODE, "eth0"))
    return events


def fragments(datagrams: int) -> list[PacketEvent]:
    """Non-DF 2000-byte datagrams fragmented for flannel.1 (1450): two fragments each, queued there."""
    events = []
    for i in range(datagrams):
        big = IP(src=POD_IP, dst=REMOTE, id=0x9EC4 + i) / UDP(sport=40001, dport=7002) / Raw(b"y" * 2000)
        for j, piece in enumerate(fragment(big, fragsize=1424)):
            events.append(event(bytes(piece), EVENT_PATH, POINT_QUEUE, 0xFFFF888159B5CC00 + j, 5_000_000 + i * 9000 + j,
                                ifname="flannel.1"))
    return events


def test_frag_needed_bursts_count_each_error_once_whatever_skb_they_reuse() -> None:
    counter = MtuEventCounter(REASONS)
    for item in mtu_burst(7) + fragments(5):
        counter.add(item)
    counts = counter.result(2.0)
    assert counts.frag_needed == {POD_IP: 7} and counts.frag_needed_mtu == {1450: 7}
    assert counts.too_big_drops == 7 and counts.fragments == 10


def test_the_recorded_node_gives_one_pod_path_with_every_hop() -> None:
    [path] = node_paths(links()["nodes"][0], 1450)
    assert path.pod == f"{POD}:eth0" and path.addresses[0] == POD_IP
    hops = [(h.name, h.mtu, h.netns) for h in (path.path.pod, path.path.host_veth, path.path.bridge,
                                                path.path.overlay, path.path.underlay) if h]
    assert hops == [("eth0", 1500, POD), ("vethpod0", 1500, NODE), ("cni0", 1500, NODE), ("flannel.1", 1450, NODE),
                    ("eth0", 1500, NODE)]
    assert path.path.overhead == 50 and path.path.flannel_mtu == 1450


def test_mtu_section_counts_the_node_and_its_pods_events_and_judges_the_path() -> None:
    summary = MtuSummary(links(), REASONS)
    elsewhere = event(frag_needed(7), EVENT_PATH, POINT_QUEUE, 0x1, 9_000_000, OTHER_INODE)
    for item in [*mtu_burst(7), *fragments(5), elsewhere]:
        summary.add(item)
    node, other = summary.nodes(10.0)
    assert (node.node, other.node) == (NODE, "other namespaces")
    assert node.counts.frag_needed == {POD_IP: 7} and node.counts.fragments == 10 and node.counts.too_big_drops == 7
    assert other.counts.frag_needed == {POD_IP: 1} and other.counts.too_big_drops == 0
    [(pods, _path, judged)] = node.verdicts
    assert pods == [f"{POD}:eth0"] and not judged.ok and not node.ok
    assert judged.text.startswith(f"pod MTU 1500 > overlay 1450: DF packets above 1450 dropped, ICMP frag-needed "
                                  f"sent to {POD_IP} (0.7/s); non-DF packets fragmented on the node before "
                                  "encapsulation (1.0/s fragments)"), judged.text
    text = node.text()
    assert text.splitlines()[:2] == [
        f"MTU {NODE}: cni0 1500 (bridge), flannel.1 1450 (vxlan over eth0), eth0 1500 (underlay)",
        f"  events over 10.0 s: 7 ICMP frag-needed sent (next-hop MTU 1450 x7; to {POD_IP} x7), 10 fragments, "
        "7 dropped as too big"]
    assert f"1 pod ({POD}:eth0): eth0 1500 -> vethpod0 1500 -> cni0 1500 -> flannel.1 1450 -> eth0 1500" in text
    data = node.to_json()
    assert data["mtu"] and data["frag_needed_mtu"] == {"1450": 7} and "lo" not in [x["name"] for x in data["links"]]
    assert json.loads(json.dumps(data))["paths"][0]["pods"] == [f"{POD}:eth0"]


def test_pods_with_the_same_verdict_share_a_line_and_subnet_env_is_judged() -> None:
    data = links("FLANNEL_NETWORK=198.18.200.0/22\nFLANNEL_MTU=1400\n")
    node = data["nodes"][0]
    veth = next(link for link in node["links"] if link["name"] == "vethpod0")
    for index in range(2, 7):  # five more pods shaped like the recorded one
        twin = copy.deepcopy(veth)
        twin["name"], twin["peer"]["netns"], twin["peer"]["addresses"] = \
            f"vethpod{index}", f"ptm-x1-pod{index}", [f"198.18.200.{index + 1}"]
        node["links"].append(twin)
    [section] = MtuSummary(data, REASONS).nodes(1.0)
    [(pods, _path, judged)] = section.verdicts
    assert len(pods) == 6 and section.flannel_mtu == 1400
    assert "flannel subnet.env FLANNEL_MTU=1400 but flannel.1 has MTU 1450" in judged.text
    assert "6 pods (ptm-x1-pod:eth0, ptm-x1-pod2:eth0, ptm-x1-pod3:eth0, ptm-x1-pod4:eth0 and 2 more)" in section.text()


def test_a_node_at_the_right_mtu_is_ok_and_a_node_without_pods_is_judged_alone() -> None:
    data = links("FLANNEL_MTU=1450\n")
    node = data["nodes"][0]
    for link in node["links"]:
        if link["name"] in ("cni0", "vethpod0"):
            link["mtu"] = 1450
        if link["name"] == "vethpod0":
            link["peer"]["mtu"] = 1450
    [section] = MtuSummary(data, REASONS).nodes(1.0)
    assert section.ok and section.verdicts[0][2].text.startswith("no mismatch: pod MTU 1450 <= overlay 1450")
    node["links"] = [link for link in node["links"] if link["name"] != "vethpod0"]
    [alone] = MtuSummary(data, REASONS).nodes(1.0)
    [(pods, path, judged)] = alone.verdicts
    assert pods == [] and path.pod is None and judged.ok and "  node: flannel.1 1450 -> eth0 1500" in alone.text()


def test_links_that_could_not_be_read_say_why() -> None:
    data = {"nodes": [{"netns": "pt-gone", "links": [], "error": "no such netns"}], "flannel_env": None}
    [section] = MtuSummary(data, REASONS).nodes(1.0)
    assert section.text() == "MTU pt-gone: links not read (no such netns)\n" and section.to_json()["error"]


def test_conntrack_readings_give_the_table_state_podtrace_flows_judges() -> None:
    [table] = recorded_conntrack({"conntrack": FIXTURE["conntrack_start"]}, {"conntrack": FIXTURE["conntrack_end"]})
    state = table.state()
    assert state is not None and state.drops_during == 11
    assert state.cause == "conntrack table full (262144/262144)"
    assert table.text() == (f"conntrack {NODE}: 262144/262144 entries (100% full), insert_failed 0, drop 11 (11 during "
                            "the trace), early_drop 0 - TABLE FULL; at the start 0/262144")
    data = table.to_json()
    assert (data["conntrack"], data["count"], data["full"], data["at"], data["start"]["count"]) == (
        True, 262144, True, "end", 0)


def test_conntrack_of_a_cut_recording_is_the_start_reading_and_errors_are_kept() -> None:
    [cut] = recorded_conntrack({"conntrack": FIXTURE["conntrack_start"]}, None)
    assert cut.end is None and cut.state() is not None and cut.state().drops_during is None  # type: ignore[union-attr]
    assert cut.text().endswith("at the start (no reading at the end: the recording was cut short)")
    failed = RecordedConntrack("pt-node9", None, None, "cannot read conntrack in netns pt-node9: No such file")
    assert failed.state() is None and failed.text().startswith("conntrack pt-node9: not read (cannot read")
    assert recorded_conntrack({}, None) == []  # recordings made before format minor 2


def test_only_events_that_can_count_are_decoded() -> None:
    too_big = frozenset({93})
    assert relevant(encode(mtu_burst(1)[0]), too_big)  # the PKT_TOO_BIG drop
    assert relevant(encode(mtu_burst(1)[1]), too_big)  # the ICMP
    assert relevant(encode(fragments(1)[1]), too_big)  # a fragment
    plain = event(bytes(IP(src=POD_IP, dst=REMOTE) / UDP(sport=1, dport=53) / Raw(b"q")), EVENT_DROP, 3, 1, 1)
    assert not relevant(encode(plain), too_big)


def record_node(path: Path, with_end: bool = True) -> None:
    """A recording of the fixture's node: Services, a full conntrack table, too-big drops and refused flows."""
    data = header()
    data.update({"format_minor": FORMAT_MINOR, "links": links("FLANNEL_MTU=1450\n"),
                 "conntrack": FIXTURE["conntrack_start"],
                 "drop_reasons": {str(k): v for k, v in REASONS.items()},
                 "services": {"nodes": [{"netns": NODE, "error": "", "commands": {"iptables-save": SAVE}}]}})
    recorder = Recorder(str(path), data, lambda inode: {NODE_INODE: NODE, POD_INODE: POD}.get(inode, "?"),
                        lambda addr: "nf_hook_slow+0x7d")
    recorder.add([encode(item) for item in mtu_burst(7) + fragments(5)])
    refused = [event(bytes(IP(src="10.244.0.2", dst="10.96.0.10") / UDP(sport=41000 + i, dport=53) / Raw(b"q")),
                     EVENT_DROP, 12, 0x500 + i, 9_000_000 + i) for i in range(11)]
    recorder.add([encode(item) for item in refused])
    recorder.write_counters({"lost": 0}, 10)
    if with_end:
        recorder.close({"lost": 0}, 12_000_000_000, {"conntrack": FIXTURE["conntrack_end"]})
    else:
        recorder.flush()


def test_report_charges_refused_flows_to_the_full_table_and_prints_every_section(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "node.ptrec"
    record_node(path)
    code, out, _err = run_cli("report", "--json", str(path), monkeypatch=monkeypatch, capsys=capsys)
    assert code == 0
    lines = [json.loads(line) for line in out.splitlines()]
    charged = [line for line in lines if line.get("service_drop")]
    assert [(row["service"], row["count"], row["cause"]) for row in charged] == [
        ("default/web:dns", 11, "conntrack table full (262144/262144)")]
    [table] = [line for line in lines if line.get("conntrack")]
    assert table["drops_during"] == 11 and table["start"]["count"] == 0
    [mtu] = [line for line in lines if line.get("mtu")]
    assert mtu["frag_needed"] == {POD_IP: 7} and mtu["seconds"] == 10.0 and mtu["flannel_mtu"] == 1450
    code, out, _err = run_cli("report", str(path), monkeypatch=monkeypatch, capsys=capsys)
    assert code == 0
    assert out.count("TABLE FULL") == 1, "each table once, with its start reading"
    assert "conntrack table full (262144/262144)" in out and f"MTU {NODE}: cni0 1500 (bridge)" in out
    assert "MISMATCH: pod MTU 1500 > overlay 1450" in out


def test_api_gives_the_conntrack_and_mtu_rows(tmp_path: Path) -> None:
    path = tmp_path / "node.ptrec.gz"
    record_node(path)
    recording = open_recording(str(path))
    [table] = recording.conntrack_rows()
    assert table["node"] == NODE and table["full"] and table["drops_during"] == 11
    [mtu] = recording.mtu_rows()
    assert mtu["ok"] is False and mtu["too_big_drops"] == 7 and mtu["fragments"] == 10


def test_a_recording_cut_before_its_trailer_reports_the_start_table(tmp_path: Path) -> None:
    path = tmp_path / "cut.ptrec"
    record_node(path, with_end=False)
    with ReplaySource(str(path)) as source:
        list(source)
    assert source.truncated
    [table] = source.conntrack()
    assert table.end is None and table.start is not None and table.start.count == 0


def test_recordings_before_minor_2_have_no_node_sections() -> None:
    with ReplaySource(str(V1)) as source:
        list(source)
    assert "format_minor" not in source.header and source.conntrack() == []
    assert source.mtu_summary().nodes(1.0) == []


def test_a_veth_to_another_recorded_node_is_not_a_pod() -> None:
    node = links()["nodes"][0]
    node["links"] = [link for link in node["links"] if link["name"] != "flannel.1"]  # routed, no tunnel lower
    assert sorted(p.pod for p in node_paths(node, None)) == ["ptm-x1-peer:eth0", f"{POD}:eth0"]
    assert [p.pod for p in node_paths(node, None, ["ptm-x1-peer"])] == [f"{POD}:eth0"]
