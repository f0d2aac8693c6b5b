"""`podtrace merge` of three nodes' recordings (three machines, three clocks, written with the real Recorder from
packets built with scapy): clocks chained pair by pair onto the first node's, a packet's journey across all three
with the one-way latency of each segment, and a recording that joins none of the others refused by name.

True times (node A's wall clock is true; B's runs 5 ms ahead, C's 2 ms behind):
  flow 1  A's client 10.244.0.2 -> B's web 10.244.1.2: SYN A->B 40 us, SYN-ACK B->A 40 us
  flow 2  B's web -> C's db 10.244.2.2: SYN B->C 30 us, SYN-ACK C->B 30 us
  flow 3  A's client -> C's db through B (B receives it 40 us after A sent it, forwards it 5 us later, C drops it
          30 us after that): A and C share only this packet, one way
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from scapy.layers.inet import IP, TCP

from tests.support.merge_recordings import HOST, event, header, write
from tracer.api import merge, open_recording
from tracer.cli import main as cli
from tracer.events.decode import EVENT_DROP, EVENT_PATH, POINT_RX, POINT_XMIT, decode
from tracer.sources.replay import ReplaySource

US = 1_000
OFFSETS = {"a": 1_000_000_000, "b": 7_000_000_000, "c": 3_000_000_000}  # wall minus monotonic: each boot
SKEWS = {"a": 0, "b": 5_000_000, "c": -2_000_000}  # each wall clock minus the true time
PODS = {"a": {"10.244.0.2": "default/client"}, "b": {"10.244.1.2": "default/web-2"}, "c": {"10.244.2.2": "db/pg-0"}}
T1, T2, T3 = 10_000_000_000, 10_100_000_000, 10_200_000_000


def _ts(node: str, true_ns: int) -> int:
    return true_ns + SKEWS[node] - OFFSETS[node]


def _tcp(src: str, dst: str, sport: int, dport: int, ip_id: int, seq: int, flags: str = "S") -> IP:
    return IP(src=src, dst=dst, id=ip_id, flags="DF") / TCP(sport=sport, dport=dport, flags=flags, seq=seq)


def _events() -> dict[str, list[bytes]]:
    syn1 = _tcp("10.244.0.2", "10.244.1.2", 40001, 8080, 11, 1000)
    ack1 = _tcp("10.244.1.2", "10.244.0.2", 8080, 40001, 12, 5000, "SA")
    syn2 = _tcp("10.244.1.2", "10.244.2.2", 41002, 5432, 21, 2000)
    ack2 = _tcp("10.244.2.2", "10.244.1.2", 5432, 41002, 22, 6000, "SA")
    syn3 = _tcp("10.244.0.2", "10.244.2.2", 40003, 5432, 31, 3000)
    return {
        "a": [event(syn1, _ts("a", T1), EVENT_PATH, POINT_XMIT, vxlan=True),
              event(ack1, _ts("a", T1 + 140 * US), EVENT_PATH, POINT_RX, vxlan=True),
              event(syn3, _ts("a", T3), EVENT_PATH, POINT_XMIT, vxlan=True)],
        "b": [event(syn1, _ts("b", T1 + 40 * US), EVENT_PATH, POINT_RX, vxlan=True),
              event(ack1, _ts("b", T1 + 100 * US), EVENT_PATH, POINT_XMIT, vxlan=True),
              event(syn2, _ts("b", T2), EVENT_PATH, POINT_XMIT, vxlan=True),
              event(ack2, _ts("b", T2 + 110 * US), EVENT_PATH, POINT_RX, vxlan=True),
              event(syn3, _ts("b", T3 + 40 * US), EVENT_PATH, POINT_RX, vxlan=True),
              event(syn3, _ts("b", T3 + 45 * US), EVENT_PATH, POINT_XMIT, vxlan=True)],
        "c": [event(syn2, _ts("c", T2 + 30 * US), EVENT_PATH, POINT_RX, vxlan=True),
              event(ack2, _ts("c", T2 + 80 * US), EVENT_PATH, POINT_XMIT, vxlan=True),
              event(syn3, _ts("c", T3 + 75 * US), EVENT_DROP, 3, 0xFFFFFFFF81A2B3C4)],
    }


@pytest.fixture
def three(tmp_path: Path) -> list[Path]:
    paths = []
    for node, events in _events().items():
        path = tmp_path / f"node-{node}.ptrec.gz"
        write(path, header(f"node-{node}", OFFSETS[node], {"3": "NETFILTER_DROP"}, PODS[node]), events,
              "nft_do_chain+0x46f", T3 + 10**9)
        paths.append(path)
    return paths


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_three_nodes_clocks_are_chained_onto_the_first_and_a_journey_crosses_all_three(
        three: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "all.ptrec.gz"
    code, text, err = _cli(capsys, "merge", "--json", *map(str, three), "-o", str(out))
    assert code == 0, err
    assert err == f"wrote {out}: 12 events of node-a/host, node-b/host, node-c/host, 5 journeys\n"
    lines = [json.loads(line) for line in text.splitlines()]
    journeys = {line["flow"]: line for line in lines if line.get("journey")}
    assert set(journeys) == {"tcp 10.244.0.2:40001 > 10.244.1.2:8080", "tcp 10.244.1.2:8080 > 10.244.0.2:40001",
                             "tcp 10.244.1.2:41002 > 10.244.2.2:5432", "tcp 10.244.2.2:5432 > 10.244.1.2:41002",
                             "tcp 10.244.0.2:40003 > 10.244.2.2:5432"}
    across = journeys["tcp 10.244.0.2:40003 > 10.244.2.2:5432"]
    assert [(hop["node"], hop["at"], hop["t_us"]) for hop in across["path"]] == [
        ("node-a/host", "xmit host/eth0", 0.0), ("node-b/host", "rx host/eth0", 40.0),
        ("node-b/host", "xmit host/eth0", 45.0), ("node-c/host", "dropped in host/cni0", 75.0)]  # each node's names
    assert across["segments"] == [
        {"from": "node-a/host", "to": "node-b/host", "packets": 1, "one_way_us": 40.0, "one_way": "estimated"},
        {"from": "node-b/host", "to": "node-c/host", "packets": 1, "one_way_us": 30.0, "one_way": "estimated"}]
    assert across["one_way_us"] == 70.0 and across["one_way"] == "estimated"
    assert across["died"] == {"node": "node-c/host", "reason": "NETFILTER_DROP", "netns": "host", "packets": 1}
    assert journeys["tcp 10.244.1.2:41002 > 10.244.2.2:5432"]["segments"][0]["one_way_us"] == 30.0
    summary = lines[-1]
    assert summary["nodes"] == ["node-a/host", "node-b/host", "node-c/host"]
    assert summary["clock"] == ("clocks aligned on node-a/host: node-b/host on node-a/host from 3 matched packets, "
                                "both ways; node-c/host on node-b/host from 2 matched packets, both ways")

    source = ReplaySource(str(out))
    events = list(source)
    source.close()
    merged = source.header["merged"]
    # B's clock back by its 5 ms, C's (chained through B) forward by its 2 ms: every event at its true time
    assert [node["offset_ns"] for node in merged["nodes"]] == [0, -SKEWS["b"], -SKEWS["c"]]
    assert [(link["from"], link["to"]) for link in merged["clock"]["links"]] == [
        ("node-a/host", "node-b/host"), ("node-b/host", "node-c/host")]
    true_times = sorted([T1, T1 + 140 * US, T3, T1 + 40 * US, T1 + 100 * US, T2, T2 + 110 * US, T3 + 40 * US,
                         T3 + 45 * US, T2 + 30 * US, T2 + 80 * US, T3 + 75 * US])
    assert [decode(raw).ts_ns + OFFSETS["a"] for raw in events] == true_times
    inodes = [node["netns"] for node in merged["nodes"]]
    assert inodes[0] == [HOST] and len({inode for found in inodes for inode in found}) == 3  # b's and c's moved
    assert sorted(source.names.netns.values()) == ["node-a:host", "node-b:host", "node-c:host"]
    assert source.names.pods == {ip: name for pods in PODS.values() for ip, name in pods.items()}

    code, report, err = _cli(capsys, "report", str(out))
    assert code == 0, err
    assert err.startswith("merged recording of node-a/host, node-b/host, node-c/host from ")
    assert "cross-node journeys: merged recording of node-a/host (node-a.ptrec.gz), node-b/host" in report
    assert ("  tcp 10.244.0.2:40003 > 10.244.2.2:5432: 1 matched, client default/client (10.244.0.2) on node-a/host\n"
            "         +0.0 us  node-a/host  xmit host/eth0\n") in report
    assert ("    node-a/host -> node-b/host: one way 40.0 us (estimated)\n"
            "    node-b/host -> node-c/host: one way 30.0 us (estimated)\n"
            "    died at node-c/host (host): 1 x NETFILTER_DROP; one way 70.0 us (estimated)\n") in report
    assert open_recording(str(out)).journeys() == [line for line in lines if line.get("journey")]
    assert merge(*map(str, three)) == [line for line in lines if line.get("journey")]


def test_a_recording_that_shares_no_packet_with_the_others_is_refused_by_name(
        three: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    other = tmp_path / "node-d.ptrec"
    write(other, header("node-d", OFFSETS["b"], {"3": "NETFILTER_DROP"}, {}),
          [event(_tcp("10.9.0.1", "10.9.0.2", 3, 4, 5, 9), 5, EVENT_DROP, 3)], "x", 1)
    before = sorted(tmp_path.iterdir())
    code, out, err = _cli(capsys, "merge", *map(str, three), str(other), "-o", str(tmp_path / "all.ptrec"))
    assert code == 1 and out == "" and err.count("\n") == 1, err
    assert err.startswith(f"podtrace: {other} (1 identifiable packets) shares no packet with {three[0]}")
    assert sorted(tmp_path.iterdir()) == before  # no file, no temporary
    # two pairs that match only within themselves: the pair that does not reach the first recording is named
    code, out, err = _cli(capsys, "merge", str(three[0]), str(other), str(three[1]))
    assert code == 1 and err.count("\n") == 1 and f"{other} (1 identifiable packets) shares no packet" in err, err


def test_merge_needs_two_recordings(three: list[Path], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _cli(capsys, "merge", str(three[0]))
    assert code == 2 and out == "" and err.count("\n") == 1 and "two or more recordings" in err, err


def test_three_real_lab_recordings_chain_the_client_pod_s_view_through_node1_to_node2(
        capsys: pytest.CaptureFixture[str]) -> None:
    """The lab fixtures (capture_lab_merge.py): pt-client, pt-node1 and pt-node2 recorded at once during
    drop-backend. Anchored on the client pod's view, which shares packets with node1 only (its packets to the VIP,
    before node1's DNAT), node2's clock is chained through node1's. Each of web-2's dropped SYNs is one journey:
    the client pod -> node1, where the same skb goes from the VIP to web-2 (the DNAT, inferred: these recordings
    carry no conntrack entry or NAT record of it) -> VXLAN -> dropped in pt-node2."""
    from tests.support.lab_merged import RECORDINGS, lab_recording

    run = json.loads((RECORDINGS / "lab-merge.json").read_text())
    dropped = sum(row["count"] for row in run["node2_drops"] if row["reason"] == "NETFILTER_DROP")
    paths = [str(lab_recording(view)) for view in ("client", "node1", "node2")]
    code, text, err = _cli(capsys, "merge", "--json", *paths)
    assert code == 0, err
    lines = [json.loads(line) for line in text.splitlines()]
    summary = lines[-1]
    assert summary["nodes"] == ["vm/pt-client", "vm/pt-node1", "vm/pt-node2"]
    assert summary["clock"].startswith("clocks aligned on vm/pt-client: vm/pt-node1 on vm/pt-client from ")
    assert "; vm/pt-node2 on vm/pt-node1 from " in summary["clock"], summary["clock"]
    journeys = [line for line in lines if line.get("journey")]
    to_web2 = [j for j in journeys if j["dst"] == run["web2"] and j["died"]]
    assert sum(j["died"]["packets"] for j in to_web2) == dropped > 0  # every drop node2 recorded, on a journey
    assert len(to_web2) == run["failed"]  # one journey per failed connection, not two halves
    dnat = f"DNAT 10.96.0.10:80 > {run['web2']}:8080 (inferred: same skb within 1 ms)"
    for journey in to_web2:
        assert journey["src"] == run["client"] and journey["died"]["netns"] == "pt-node2"
        assert [(seg["from"], seg["to"]) for seg in journey["segments"]] == [
            ("vm/pt-client", "vm/pt-node1"), ("vm/pt-node1", "vm/pt-node2")]
        assert journey["segments"][1]["one_way"] == "estimated"
        hops = [(hop["node"], hop["at"]) for hop in journey["path"]]
        assert hops[0] == ("vm/pt-client", "queue pt-client/eth0") and hops[-1][0] == "vm/pt-node2"
        step = hops.index(("vm/pt-node1", dnat))  # once, on node1, after the VIP-addressed rx, before the VXLAN
        assert hops[step - 1] == ("vm/pt-node1", "rx pt-node1/veth948fe603"), hops
        assert ("vm/pt-node1", "xmit pt-node1/flannel.1") in hops[step:], hops
        assert journey["dnat"] == {"node": "vm/pt-node1", "dialled": "10.96.0.10:80",
                                   "backend": f"{run['web2']}:8080", "how": "same skb", "observed": False,
                                   "text": f"dialled 10.96.0.10:80, DNAT to {run['web2']}:8080 on vm/pt-node1 "
                                           "(inferred: same skb within 1 ms)"}
    # every connection to the VIP was joined to its backend, both ways: no half-journey to or from the VIP is left
    assert not [j for j in journeys if "10.96.0.10" in (j["src"], j["dst"])]
    replies = [j for j in journeys if j["src"] != run["client"]]
    assert replies and all(j["path"][-1]["node"] == "vm/pt-client" for j in replies)
    assert all(any(hop["at"].startswith("reply un-DNAT ") for hop in j["path"]) for j in replies)


def test_the_report_and_the_journeys_view_show_the_dnat_of_the_lab_journey(tmp_path: Path) -> None:
    """merge -o of the lab fixtures: `podtrace report` and the TUI's rows (one builder) name the VIP dialled and
    the backend chosen."""
    from tests.support.lab_merged import lab_recording
    from tracer.cli.merge import merge_files
    from tracer.output.merged_report import journey_views, section_text

    out = tmp_path / "all.ptrec.gz"
    merge_files([str(lab_recording(view)) for view in ("client", "node1", "node2")], str(out))
    source = ReplaySource(str(out))
    source.close()
    merged = source.header["merged"]
    text = section_text(merged, lambda _ip: None)
    assert ("    dialled 10.96.0.10:80, DNAT to 10.244.1.2:8080 on vm/pt-node1 (inferred: same skb within 1 ms)\n"
            in text), text
    died = [view for view in journey_views(merged, lambda _ip: None) if view.died]
    assert died and all(view.dnat and "DNAT to 10.244.1.2:8080" in view.dnat for view in died)
    assert all(view.nodes == ("vm/pt-client", "vm/pt-node1", "vm/pt-node2") for view in died)
