"""One journey across a DNAT (tracer/analysis/dnat_join.py, tracer/analysis/journey.py), on recordings written with the
real Recorder from packets built with scapy: joined by the drop's conntrack entry (observed), by the same skb on one
node (inferred), and never by addresses alone."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from scapy.layers.inet import IP, TCP

from tests.support.merge_recordings import HOST, event, header, write
from tracer.cli import main as cli
from tracer.events.decode import (
    CT_ENTRY,
    EVENT_CT,
    EVENT_DROP,
    EVENT_PATH,
    IPS_DST_NAT,
    POINT_RX,
    POINT_XMIT,
    CtEvent,
    Tuple,
    encode_ct,
)

CLIENT, VIP, BACKEND = "10.244.0.2", "10.96.0.10", "10.244.1.2"
PODS = {"a": {CLIENT: "default/frontend-7"}, "b": {BACKEND: "default/web-2"}}
OFFSETS = {"a": 1_000_000_000, "b": 2_000_000_000}  # two machines: their own clocks (no boot id: estimated)
SKB = 0xFFFF888000002000


def _syn(dst: str, dport: int) -> IP:
    return IP(src=CLIENT, dst=dst, id=777, flags="DF") / TCP(sport=40100, dport=dport, flags="S", seq=4242)


def _tuple(src: str, dst: str, sport: int, dport: int) -> Tuple:
    return Tuple(socket.inet_aton(src).ljust(16, b"\0"), socket.inet_aton(dst).ljust(16, b"\0"), sport, dport, 4, 6,
                 0, 0, 0, 0)


def _dnat_entry(ts_ns: int, skb: int) -> bytes:
    """The drop's conntrack event: the entry node b's kernel had on the skb, DNAT client -> VIP to web-2."""
    return encode_ct(CtEvent(EVENT_CT, 0, ts_ns, skb, HOST, CT_ENTRY, 0, 0xFFFF888000777000, IPS_DST_NAT,
                             _tuple(CLIENT, VIP, 40100, 80), _tuple(BACKEND, CLIENT, 8080, 40100)))


def _write(tmp_path: Path, events: dict[str, list[bytes]]) -> list[str]:
    paths = []
    for node, raws in events.items():
        path = tmp_path / f"node-{node}.ptrec.gz"
        write(path, header(f"node-{node}", OFFSETS[node], {"3": "NETFILTER_DROP"}, PODS[node]), raws,
              "nft_do_chain+0x46f", 9 * 10**9)
        paths.append(str(path))
    return paths


def _merge(capsys: pytest.CaptureFixture[str], paths: list[str]) -> tuple[int, list[dict], str]:
    code = cli.main(["merge", "--json", *paths])
    out, err = capsys.readouterr()
    return code, [json.loads(line) for line in out.splitlines()], err


def test_the_drop_s_conntrack_entry_joins_the_packet_to_the_vip_and_the_one_to_the_backend(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # node a saw the SYN leave to the VIP (before any DNAT), node b saw it arrive at web-2 and dropped it: the
    # addresses differ, so only the nf_conn on the dropped skb (orig client -> VIP, reply web-2 -> client) says
    # they are one packet
    a = [event(_syn(VIP, 80), 1_000 + OFFSETS["a"], EVENT_PATH, POINT_XMIT, skb=SKB)]
    b = [event(_syn(BACKEND, 8080), 50_000 + OFFSETS["b"], EVENT_PATH, POINT_RX, skb=SKB + 0x100),
         _dnat_entry(60_000 + OFFSETS["b"], SKB + 0x100),
         event(_syn(BACKEND, 8080), 60_000 + OFFSETS["b"], EVENT_DROP, 3, skb=SKB + 0x100)]
    code, lines, err = _merge(capsys, _write(tmp_path, {"a": a, "b": b}))
    assert code == 0, err
    journey, = [line for line in lines if line.get("journey")]
    assert journey["flow"] == f"tcp {CLIENT}:40100 > {BACKEND}:8080"
    assert journey["dnat"] == {"node": "node-b/host", "dialled": f"{VIP}:80", "backend": f"{BACKEND}:8080",
                               "how": "conntrack", "observed": True,
                               "text": f"dialled {VIP}:80, DNAT to {BACKEND}:8080 on node-b/host "
                                       "(observed: conntrack entry)"}
    assert [(hop["node"], hop["at"]) for hop in journey["path"]] == [
        ("node-a/host", "xmit host/cni0"),
        ("node-b/host", f"DNAT {VIP}:80 > {BACKEND}:8080 (observed: conntrack entry)"),
        ("node-b/host", "rx host/cni0"), ("node-b/host", "dropped in host/cni0")]
    assert journey["died"]["node"] == "node-b/host" and journey["unjoined"] is None


def test_without_the_conntrack_entry_the_vip_and_the_backend_are_never_joined_by_their_addresses(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # the same packets, the same client port, IP id and sequence; no conntrack event: nothing the kernel said ties
    # them, so there is no packet both recordings saw and merge refuses, as for unrelated runs
    a = [event(_syn(VIP, 80), 1_000 + OFFSETS["a"], EVENT_PATH, POINT_XMIT, skb=SKB)]
    b = [event(_syn(BACKEND, 8080), 60_000 + OFFSETS["b"], EVENT_DROP, 3, skb=SKB + 0x100)]
    code, lines, err = _merge(capsys, _write(tmp_path, {"a": a, "b": b}))
    assert code == 1 and lines == [] and "share no packet" in err and err.count("\n") == 1, err


def _node_a_rewrites(second_skb: int, gap_ns: int) -> list[bytes]:
    """Node a receives the SYN to the VIP from the client pod and transmits it to web-2 over VXLAN."""
    return [event(_syn(VIP, 80), 1_000 + OFFSETS["a"], EVENT_PATH, POINT_RX, skb=SKB),
            event(_syn(BACKEND, 8080), 1_000 + gap_ns + OFFSETS["a"], EVENT_PATH, POINT_XMIT, vxlan=True,
                  skb=second_skb)]


def _client_view() -> list[bytes]:
    return [event(_syn(VIP, 80), 500 + OFFSETS["a"], EVENT_PATH, POINT_XMIT, skb=SKB + 0x900)]


@pytest.mark.parametrize(("second_skb", "gap_ns", "joined"), [
    (SKB, 20_000, True),  # one skb, 20 us later: inferred
    (SKB + 0x40, 20_000, False),  # another skb: nothing ties them
    (SKB, 5_000_000, False),  # the same address 5 ms later: a reused skb, not the same packet
])
def test_the_same_skb_on_the_node_within_its_window_joins_them_as_inferred(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], second_skb: int, gap_ns: int, joined: bool) -> None:
    OFFSETS["c"] = OFFSETS["a"]  # the client pod's own view on node a's machine
    PODS["c"] = {CLIENT: "default/frontend-7"}
    try:
        b = [event(_syn(BACKEND, 8080), 1_000 + gap_ns + 40_000 + OFFSETS["b"], EVENT_DROP, 3, skb=SKB + 0x500)]
        code, lines, err = _merge(capsys, _write(tmp_path, {"c": _client_view(), "a": _node_a_rewrites(
            second_skb, gap_ns), "b": b}))
    finally:
        del OFFSETS["c"], PODS["c"]
    assert code == 0, err
    journeys = {line["flow"]: line for line in lines if line.get("journey")}
    to_backend = journeys[f"tcp {CLIENT}:40100 > {BACKEND}:8080"]
    if joined:
        assert list(journeys) == [f"tcp {CLIENT}:40100 > {BACKEND}:8080"]
        assert to_backend["dnat"]["how"] == "same skb" and not to_backend["dnat"]["observed"]
        assert [hop["node"] for hop in to_backend["path"]] == ["node-c/host", "node-a/host", "node-a/host",
                                                               "node-a/host", "node-b/host"]
        assert to_backend["path"][2]["at"] == f"DNAT {VIP}:80 > {BACKEND}:8080 (inferred: same skb within 1 ms)"
    else:  # two journeys, kept apart, each saying why
        to_vip = journeys[f"tcp {CLIENT}:40100 > {VIP}:80"]
        assert to_backend["dnat"] is None and to_vip["dnat"] is None
        assert to_vip["unjoined"] == (f"not joined to {BACKEND}:8080 (the same client port): no conntrack entry, "
                                      "NAT record or skb seen both ways ties them")
        assert to_backend["unjoined"].startswith(f"not joined to {VIP}:80 ")


def test_a_nat_record_that_rewrote_the_destination_is_an_observed_dnat_and_wins_over_a_disagreeing_skb() -> None:
    from tracer.analysis.dnat_join import Translation, decide, from_nat

    before, after = _tuple(CLIENT, VIP, 40100, 80), _tuple(CLIENT, BACKEND, 40100, 8080)
    snat = _tuple("192.168.77.1", BACKEND, 61000, 8080)  # the source rewritten too: not a DNAT of this client
    found = from_nat([(before, after), (before, before), (before, snat)], 1)
    assert found == [Translation(6, (CLIENT, 40100), (VIP, 80), (BACKEND, 8080), 1, "nat record")]
    guessed = Translation(6, (CLIENT, 40100), (VIP, 80), ("10.244.1.3", 8080), 0, "same skb")
    joins = decide([guessed, *found])
    assert joins.canonical((6, CLIENT, 40100, VIP, 80)) == (6, CLIENT, 40100, BACKEND, 8080)
    assert joins.canonical((6, VIP, 80, CLIENT, 40100)) == (6, BACKEND, 8080, CLIENT, 40100)  # the reply
    assert joins.of_flow((6, BACKEND, 8080, CLIENT, 40100)) == found[0]
    # two observations that disagree: neither is believed, the flows stay apart
    other = Translation(6, (CLIENT, 40100), (VIP, 80), ("10.244.1.3", 8080), 0, "conntrack")
    apart = decide([*found, other])
    assert apart.canonical((6, CLIENT, 40100, VIP, 80)) == (6, CLIENT, 40100, VIP, 80)
    assert apart.of_flow((6, CLIENT, 40100, BACKEND, 8080)) is None
