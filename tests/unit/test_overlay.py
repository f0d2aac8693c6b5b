"""The VXLAN tunnel table: tunnels by (outer nodes, VNI, port), inner flows, underlay drops, fragments."""

from __future__ import annotations

import argparse
import json
import socket

from tracer.analysis.overlay import OVERLAY_FILTER, TunnelKey, TunnelTable, is_fragment
from tracer.events.decode import EVENT_DROP, EVENT_PATH, FLAG_INNER, FLAG_PARSED, PacketEvent, Tuple

N1, N2 = "192.168.77.1", "192.168.77.2"
CLIENT, WEB = "10.244.0.2", "10.244.1.2"


def v4(addr: str) -> bytes:
    return socket.inet_aton(addr) + bytes(12)


def tup(src: str, dst: str, sport: int = 0, dport: int = 0, proto: int = 17, frag: int = 0, ip_len: int = 60) -> Tuple:
    return Tuple(v4(src), v4(dst), sport, dport, 4, proto, 0, 0, frag, ip_len)


def vxlan(inner: Tuple | None, kind: int = EVENT_PATH, src: str = N1, dst: str = N2, port: int = 8472,
          vni: int = 1, outer_frag: int = 0) -> PacketEvent:
    outer = tup(src, dst, 40000, port, frag=outer_frag, ip_len=110)
    flags = FLAG_PARSED | (FLAG_INNER if inner else 0)
    return PacketEvent(kind, 0, 1, 0xFFFF0000, 0, 3 if kind == EVENT_PATH else 5, 1, 2, 110, 0, 0x0800, flags, 0,
                       vni, "eth0", outer, inner, b"")


def plain(outer: Tuple, kind: int = EVENT_PATH, ifname: str = "flannel.1") -> PacketEvent:
    return PacketEvent(kind, 0, 1, 0xFFFF0000, 0, 2, 1, 2, outer.ip_len, 0, 0x0800, FLAG_PARSED, 0, 0, ifname,
                       outer, None, b"")


def flow_in(table: TunnelTable, key: tuple = (N1, N2, 1, 8472)) -> dict:
    (tunnel,) = [t for t in table.to_json()["tunnels"] if (t["src"], t["dst"], t["vni"], t["port"]) == key]
    return tunnel


def test_is_fragment() -> None:
    assert not is_fragment(tup(CLIENT, WEB, frag=0x4000))  # DF only
    assert is_fragment(tup(CLIENT, WEB, frag=0x2000))  # MF
    assert is_fragment(tup(CLIENT, WEB, frag=0x00B9))  # offset
    assert not is_fragment(None)
    assert not is_fragment(Tuple(b"", b"", 0, 0, 0, 0, 0, 0, 0x2000, 0))  # not IP


def test_tunnel_key_and_inner_flow_counted_once_per_packet() -> None:
    table = TunnelTable()
    for sport in (1000, 1001, 1001):
        inner = tup(CLIENT, WEB, sport, 5353, ip_len=33)
        for where in ("pt-node1/eth0 queue", "pt-node1/eth0 xmit", "pt-node2/eth0 rx"):
            table.add(vxlan(inner), where)
    table.add(vxlan(tup(WEB, CLIENT, 5353, 1000), src=N2, dst=N1), "pt-node1/eth0 rx")
    table.add(vxlan(tup(CLIENT, WEB, 1, 2), port=4789, vni=7), "x")
    data = table.to_json()
    assert [(t["src"], t["dst"], t["vni"], t["port"]) for t in data["tunnels"]] == [
        (N1, N2, 1, 8472), (N1, N2, 7, 4789), (N2, N1, 1, 8472)]
    tunnel = flow_in(table)
    assert tunnel["packets"] == 3
    assert [(f["flow"], f["packets"], f["bytes"]) for f in tunnel["flows"]] == [
        (f"udp {CLIENT}:1001 > {WEB}:5353", 2, 66), (f"udp {CLIENT}:1000 > {WEB}:5353", 1, 33)]
    assert tunnel["flows"][0]["points"] == {"pt-node1/eth0 queue": 2, "pt-node1/eth0 xmit": 2,
                                            "pt-node2/eth0 rx": 2}
    assert TunnelKey(N1, N2, 1, 8472).describe() == f"{N1} -> {N2} vni 1 udp/8472"
    json.dumps(data)


def test_underlay_drop_attributed_to_inner_flow() -> None:
    table = TunnelTable()
    inner = tup(CLIENT, WEB, 1000, 5353)
    table.add(vxlan(inner), "pt-node1/eth0 queue")
    table.add(vxlan(inner, kind=EVENT_DROP), "pt-node2/eth0", "NETFILTER_DROP")
    table.add(vxlan(inner, kind=EVENT_DROP), "pt-node2/eth0", "NETFILTER_DROP")
    table.add(vxlan(None, kind=EVENT_DROP), "pt-node2/eth0", "UDP_CSUM")
    tunnel = flow_in(table)
    assert tunnel["drops"] == 3 and tunnel["packets"] == 1  # drops are not packets seen on the path
    by_flow = {f["flow"]: f for f in tunnel["flows"]}
    named = by_flow[f"udp {CLIENT}:1000 > {WEB}:5353"]
    assert named["drops"] == 2
    assert named["drop_reasons"] == [{"reason": "NETFILTER_DROP", "where": "pt-node2/eth0", "count": 2}]
    assert by_flow["(inner not parsed)"]["drops"] == 1
    assert table.to_json()["unattributed_drops"] == 1
    text = table.format_text()
    assert f"tunnel {N1} -> {N2} vni 1 udp/8472: 1 packets, 3 drops" in text
    assert f"dropped 2 x NETFILTER_DROP at pt-node2/eth0: udp {WEB}:5353" in text


def test_flows_are_grouped_per_tunnel_and_service_not_per_ephemeral_port() -> None:
    """180 connections from ephemeral ports to two backends, replies included: two lines, one per Service end."""
    table = TunnelTable()
    for port in range(40000, 40180):
        backend = WEB if port % 2 else "10.244.1.3"
        out, back = tup(CLIENT, backend, port, 8080), tup(backend, CLIENT, 8080, port)
        table.add(vxlan(out), "pt-node1/eth0 xmit")
        table.add(vxlan(back), "pt-node2/eth0 xmit")
        if port % 30 == 1:
            table.add(vxlan(out, kind=EVENT_DROP), "pt-node2/cni0", "NETFILTER_DROP")
    frag = tup(CLIENT, WEB, frag=0x00B4, ip_len=76)
    table.add(vxlan(frag), "pt-node2/eth0 rx")
    services = {f"udp {WEB}:8080": "default/web:http", "udp 10.244.1.3:8080": "default/web:http"}
    text = table.format_text(services)
    lines = text.splitlines()
    assert len(lines) < 12, text
    # each connection is two flows (out and back), one packet each
    assert f"       180 pkts     6 drops     1 frags  default/web:http (udp {WEB}:8080), 180 flows" in lines
    assert "       180 pkts     0 drops     0 frags  default/web:http (udp 10.244.1.3:8080), 180 flows" in lines
    assert f"           dropped 6 x NETFILTER_DROP at pt-node2/cni0: udp {WEB}:8080" in lines
    [tunnel] = table.to_json(services)["tunnels"]
    assert [(g["server"], g["flows"], g["packets"]) for g in tunnel["groups"]] == [
        (f"udp {WEB}:8080", 180, 180), ("udp 10.244.1.3:8080", 180, 180),
        (f"udp {CLIENT} > {WEB}", 1, 1)]  # a later fragment has no ports: a group of its own
    assert len(tunnel["flows"]) == 361  # the JSON keeps every flow


def test_inner_fragments_in_and_outside_the_tunnel() -> None:
    table = TunnelTable()
    first = tup(CLIENT, WEB, 1000, 5353, frag=0x2000, ip_len=1444)
    rest = tup(CLIENT, WEB, frag=0x00B4, ip_len=76)  # no L4 header: no ports
    for where in ("pt-node1/eth0 queue", "pt-node2/eth0 rx"):
        table.add(vxlan(first), where)
        table.add(vxlan(rest), where)
    table.add(plain(first), "pt-node1/flannel.1 queue")
    table.add(plain(rest), "pt-node1/flannel.1 queue")
    data = table.to_json()
    tunnel = flow_in(table)
    assert tunnel["inner_fragments"] == 2 and tunnel["outer_fragments"] == 0
    assert tunnel["inner_fragment_flows"] == {f"udp {CLIENT} > {WEB}": 2}
    assert data["inner_fragments_outside_tunnels"] == 2 and data["outer_fragments"] == 0
    assert data["fragments_outside_tunnels"] == [
        {"flow": f"udp {CLIENT} > {WEB}", "fragments": 2, "points": {"pt-node1/flannel.1 queue": 2}}]


def test_outer_fragments_first_by_port_rest_by_node_pair() -> None:
    table = TunnelTable()
    inner = tup(CLIENT, WEB, 1000, 5353, ip_len=1500)
    table.add(vxlan(inner, outer_frag=0x2000), "pt-node1/eth0 queue")  # first outer fragment: VXLAN header there
    table.add(plain(tup(N1, N2, frag=0x00B9, ip_len=70), ifname="eth0"), "pt-node1/eth0 queue")
    table.add(plain(tup(N1, N2, frag=0x00B9), kind=EVENT_DROP, ifname="eth0"), "pt-node2/eth0", "IP_FRAG_TIMEOUT")
    data = table.to_json()
    tunnel = flow_in(table)
    assert tunnel["outer_fragments"] == 2 and data["outer_fragments"] == 2
    assert tunnel["flows"][0]["packets"] == 1
    assert data["fragments_outside_tunnels"] == []
    assert data["fragment_drops"] == [{"src": N1, "dst": N2, "reason": "IP_FRAG_TIMEOUT", "where": "pt-node2/eth0",
                                       "count": 1, "underlay": True}]
    assert "fragment dropped 1 x IP_FRAG_TIMEOUT" in table.format_text()


def test_non_ip_and_unrelated_events_ignored() -> None:
    table = TunnelTable()
    table.add(plain(Tuple(b"", b"", 0, 0, 0, 0, 0, 0, 0, 0)))
    table.add(plain(tup(CLIENT, WEB, 1, 53)))
    data = table.to_json()
    assert data["tunnels"] == [] and data["fragments_outside_tunnels"] == [] and data["events"] == 2
    assert table.format_text().startswith("no VXLAN tunnel traffic seen")


def test_overlay_filter_compiles() -> None:
    from tracer.probes.pcapfilter import compile_filter

    assert compile_filter(OVERLAY_FILTER).instructions


def test_overlay_cli_parses() -> None:
    from tracer.cli import overlay as cmd_overlay

    parser = argparse.ArgumentParser()
    cmd_overlay.add_parser(parser.add_subparsers())
    args = parser.parse_args(["overlay", "--duration", "3", "--json", "--netns", "pt-node2"])
    assert (args.duration, args.json, args.netns, args.func) == (3.0, True, "pt-node2", cmd_overlay.run_overlay)
    assert args.filter == [] and args.tc == [] and args.ringbuf_pages == 256


def _with_ip_id(event: PacketEvent, ip_id: int) -> PacketEvent:
    """The snapshot starts at the IPv4 header: bytes 4-5 are the identification."""
    snap = bytes([0x45, 0, 0, 0]) + ip_id.to_bytes(2, "big") + bytes(14)
    return PacketEvent(*[snap if name == "snap" else getattr(event, name) for name in PacketEvent.__dataclass_fields__])


def test_later_outer_fragments_follow_their_first_fragment_when_two_tunnels_join_the_same_nodes() -> None:
    table = TunnelTable()
    inner = tup(CLIENT, WEB, 1000, 5353, ip_len=1500)
    for vni, ip_id in ((1, 500), (2, 501)):
        table.add(_with_ip_id(vxlan(inner, vni=vni, outer_frag=0x2000), ip_id), "pt-node1/eth0 queue")
        table.add(_with_ip_id(plain(tup(N1, N2, frag=0x00B9, ip_len=70), ifname="eth0"), ip_id), "pt-node1/eth0 queue")
    table.add(_with_ip_id(plain(tup(N1, N2, frag=0x00B9, ip_len=70), ifname="eth0"), 777), "pt-node1/eth0 queue")
    data = table.to_json()
    assert flow_in(table, (N1, N2, 1, 8472))["outer_fragments"] == 2  # not 3: vni 2's later fragment is not its
    assert flow_in(table, (N1, N2, 2, 8472))["outer_fragments"] == 2
    assert data["outer_fragments_unplaced"] == 1 and data["outer_fragments"] == 5
    assert "first fragment not seen: 1" in table.format_text()


def test_service_names_come_from_kube_proxys_endpoints() -> None:
    """The lab's own iptables-save (tests/unit/fixtures/kubeproxy): a backend of two Services is named by both."""
    from pathlib import Path

    from tracer.analysis.overlay import services_by_server
    from tracer.node.kubeproxy.iptables import parse_iptables_save

    rules = (Path(__file__).parent / "fixtures" / "kubeproxy" / "lab-iptables-node1.save").read_text()
    names = services_by_server(parse_iptables_save(rules).ports)
    assert names["tcp 10.244.1.2:8080"] == "default/web-nodeport:http, default/web:http"
    assert names["tcp 10.96.0.10:80"] == "default/web:http"
    assert "tcp 10.96.0.30:80" in names  # a Service without endpoints still names its VIP


def test_a_reply_to_a_masqueraded_client_groups_with_its_service() -> None:
    """Seen on the lab: NodePort replies to node2's flannel address with SNATed ports under 32768
    (10.244.1.2:8080 > 10.244.1.0:11382): grouped by kube-proxy's backend end, not by the low client port."""
    table = TunnelTable()
    for port in (11382, 15988, 1615):
        table.add(vxlan(tup(WEB, "10.244.1.0", 8080, port)), "pt-node2/eth0 xmit")
    services = {f"udp {WEB}:8080": "default/web:http"}
    groups = table.to_json(services)["tunnels"][0]["groups"]
    assert [(g["server"], g["service"], g["flows"]) for g in groups] == [(f"udp {WEB}:8080", "default/web:http", 3)]
    unnamed = table.to_json()["tunnels"][0]["groups"]  # no rules read: by ports alone, a group per SNATed port
    assert len(unnamed) == 3


def test_a_pod_mtu_over_the_overlay_is_said_with_where_the_drop_happens() -> None:
    """The lab's node1 recorded with mtu-mismatch on (tests/unit/fixtures/check): the drop is before
    encapsulation, so `overlay` says so, from the links, and points at `podtrace mtu`."""
    import json as json_
    from pathlib import Path

    from tracer.analysis.overlay import mtu_notes
    from tracer.check import NodeState, evaluate

    fixtures = Path(__file__).parent / "fixtures" / "check"
    bad = evaluate(NodeState.from_dict(json_.loads((fixtures / "state-lab-node1-mtu-mismatch.json").read_text())))
    good = evaluate(NodeState.from_dict(json_.loads((fixtures / "state-lab-node1-ok.json").read_text())))
    [note] = mtu_notes({"pt-node1": bad, "pt-node2": good})
    assert note.startswith("pt-node1: pods MTU cni0 1500, ") and "> 1450 carried by flannel.1 (vxlan)" in note
    assert "(read from the links, not traced)" in note and "before encapsulation" in note
    assert note.endswith("`podtrace mtu --from POD --to IP` probes the path")
    assert mtu_notes({"pt-node1": good}) == []
