"""Service-flow reconstruction from NAT records and drop rows, on kube-proxy rules captured from the lab."""

from __future__ import annotations

import io
import socket
from pathlib import Path

import pytest

from tracer.analysis.flows import FlowTable, NatRecord, NodeConntrack, ServiceDrop, cluster_range, write_flow_table
from tracer.events.decode import Tuple
from tracer.node.conntrack import CpuStats, Health
from tracer.node.kubeproxy.iptables import parse_iptables_save
from tracer.node.kubeproxy.nftables import parse_nft_json

FIXTURES = Path(__file__).parent / "fixtures" / "kubeproxy"
PODS = {"10.244.0.2": "client", "10.244.0.3": "web-1", "10.244.1.2": "web-2", "10.244.1.3": "web-3"}


def _t(src: str, sport: int, dst: str, dport: int, proto: int = 17) -> Tuple:
    pad = bytes(12)
    return Tuple(socket.inet_aton(src) + pad, socket.inet_aton(dst) + pad, sport, dport, 4, proto, 0, 0, 0, 0)


def _nat(point: int, before: Tuple, after: Tuple, packets: int = 1) -> NatRecord:
    return NatRecord(point, 4026532000, before, after, packets, packets * 60, 1, 2, packets * 5000, 9000)


def _table() -> FlowTable:
    services = parse_iptables_save((FIXTURES / "lab-iptables-node1.save").read_text())
    return FlowTable(services, lambda ip: PODS.get(ip, "-"))


def test_dnat_and_reply_undnat_make_one_flow_per_backend() -> None:
    table = _table()
    table.add_nat([
        _nat(1, _t("10.244.0.2", 40000, "10.96.0.10", 53), _t("10.244.0.2", 40000, "10.244.1.2", 5353)),
        _nat(10, _t("10.244.1.2", 5353, "10.244.0.2", 40000), _t("10.96.0.10", 53, "10.244.0.2", 40000)),
        _nat(1, _t("10.244.0.2", 40001, "10.96.0.10", 53), _t("10.244.0.2", 40001, "10.244.0.3", 5353), 2),
    ])
    flows = {flow.backend_pod: flow for flow in table.rows()}
    assert set(flows) == {"web-1", "web-2"}
    web2 = flows["web-2"]
    assert (web2.service, web2.client_pod, web2.vip, web2.port) == ("default/web:dns", "client", "10.96.0.10", 53)
    assert (web2.packets_out, web2.packets_in, web2.to_json()["connections"]) == (1, 1, 1)
    assert flows["web-1"].packets_out == 2 and flows["web-1"].packets_in == 0
    assert flows["web-1"].to_json()["netfilter_ns_avg"] == 5000


def test_snat_only_records_are_kept_apart() -> None:
    table = _table()
    masquerade = _nat(10, _t("10.244.0.2", 40000, "192.168.77.2", 30080, 6),
                      _t("192.168.77.1", 40000, "192.168.77.2", 30080, 6))
    table.add_nat([masquerade])
    assert table.rows() == [] and table.other_nat == [masquerade]


def test_a_masqueraded_reply_getting_its_client_back_is_no_flow() -> None:
    """NodePort on node2 (masqueraded to 10.244.1.1): the reply web-2 -> 10.244.1.1 has its client's address put
    back at PREROUTING, which looks like a DNAT; it belongs to the forward flow, and is no client -> VIP flow."""
    table = _table()
    forward = _nat(1, _t("192.168.77.1", 40000, "192.168.77.2", 30080, 6),
                   _t("192.168.77.1", 40000, "10.244.1.2", 8080, 6))
    unmasq = _nat(1, _t("10.244.1.2", 8080, "10.244.1.1", 61000, 6), _t("10.244.1.2", 8080, "192.168.77.1", 40000, 6))
    table.add_nat([forward, unmasq])
    assert [(f.service, f.backend_pod, f.packets_out) for f in table.rows()] == [("default/web-nodeport:http",
                                                                                  "web-2", 1)]
    assert table.other_nat == [unmasq]


def test_drop_rows_attach_to_their_flow_or_to_the_service() -> None:
    table = _table()
    table.add_nat([_nat(1, _t("10.244.0.2", 41000, "10.96.0.10", 80, 6),
                        _t("10.244.0.2", 41000, "10.244.1.2", 8080, 6))])
    table.add_drops([
        {"reason": "NETFILTER_DROP", "proto": "tcp", "src": "10.244.0.2", "dst": "10.244.1.2", "dport": 8080,
         "count": 3, "hook": "FORWARD first"},
        {"reason": "NETFILTER_DROP", "proto": "tcp", "src": "10.244.0.2", "dst": "10.96.0.30", "dport": 80,
         "count": 2, "hook": "FORWARD first"},
    ])
    flow = table.rows()[0]
    assert sum(flow.drops.values()) == 3 and all(label.startswith("NETFILTER_DROP at FORWARD first")
                                                 for label in flow.drops)
    [service_drop] = table.service_drops
    assert service_drop.service == "default/empty:http" and service_drop.count == 2
    assert "KUBE-SERVICES" in service_drop.rule


def test_a_backend_drop_shared_by_two_services_shows_on_both_flows_marked_shared() -> None:
    """web:http (ClusterIP) and web-nodeport both DNAT to web-2:8080: a drop after DNAT names only the backend."""
    table = _table()
    table.add_nat([
        _nat(1, _t("10.244.0.2", 41000, "10.96.0.10", 80, 6), _t("10.244.0.2", 41000, "10.244.1.2", 8080, 6)),
        _nat(1, _t("10.244.0.2", 41001, "192.168.77.1", 30080, 6), _t("10.244.0.2", 41001, "10.244.1.2", 8080, 6)),
        _nat(1, _t("10.244.0.2", 41002, "10.96.0.10", 80, 6), _t("10.244.0.2", 41002, "10.244.0.3", 8080, 6)),
    ])
    table.add_drops([_drop("10.244.1.2", 8080, 7, hook="FORWARD first"), _drop("10.96.0.10", 80, 2, hook="-")])
    web2 = [flow for flow in table.rows() if flow.backend_pod == "web-2"]
    assert {flow.service for flow in web2} == {"default/web:http", "default/web-nodeport:http"}
    for flow in web2:
        [(label, count)] = flow.drops.items()
        assert count == 7 and label.endswith("(one count shared by 2 flows to 10.244.1.2:8080)"), label
    # Dropped at the VIP, before DNAT chose web-1 or web-2: charged to the Service, not to a backend's flow.
    assert not [flow for flow in table.rows() if flow.backend_pod == "web-1" and flow.drops]
    assert [(drop.service, drop.count) for drop in table.service_drops] == [("default/web:http", 2)]


def test_a_backend_drop_with_its_conntrack_identity_goes_to_the_dialled_service_only() -> None:
    """The same backend behind two Services, the drop's conntrack entry says web:http was dialled: only that flow."""
    table = _table()
    table.add_nat([
        _nat(1, _t("10.244.0.2", 41000, "10.96.0.10", 80, 6), _t("10.244.0.2", 41000, "10.244.1.2", 8080, 6)),
        _nat(1, _t("10.244.0.2", 41001, "192.168.77.1", 30080, 6), _t("10.244.0.2", 41001, "10.244.1.2", 8080, 6)),
    ])
    row = _drop("10.244.1.2", 8080, 7, hook="FORWARD first")
    row.update({"ct_identity": "conntrack", "ct_client": "10.244.0.2:41000", "ct_dialled": "10.96.0.10:80",
                "ct_backend": "10.244.1.2:8080", "ct_dnat": True})
    table.add_drops([row])
    charged = {flow.service: sum(flow.drops.values()) for flow in table.rows()}
    assert charged == {"default/web:http": 7, "default/web-nodeport:http": 0}
    [label] = [label for flow in table.rows() for label in flow.drops]
    assert label.endswith("(conntrack)") and "shared" not in label


def test_an_identified_drop_without_a_flow_goes_to_the_dialled_vips_service_never_a_backends() -> None:
    table = _table()
    row = _drop("10.244.1.2", 8080, 4, hook="FORWARD first")
    row.update({"ct_client": "10.244.0.2:41000", "ct_dialled": "10.96.0.10:80", "ct_backend": "10.244.1.2:8080",
                "ct_dnat": True})
    table.add_drops([row])
    assert [(drop.service, drop.count, drop.service_known) for drop in table.service_drops] == [
        ("default/web:http", 4, "observed")]


def test_a_drop_at_a_backend_two_services_share_names_both_never_the_first_alone() -> None:
    """No flow and no conntrack identity for the drop: web-2:8080 backs both web:http and web-nodeport:http in the
    lab's kube-proxy rules, so which one the client dialled is not known; a backend only one Service has is named."""
    table = _table()
    dns = {**_drop("10.244.1.2", 5353, 2, hook="FORWARD first"), "proto": "udp"}
    table.add_drops([_drop("10.244.1.2", 8080, 5, hook="FORWARD first"), dns])
    assert [(drop.service, drop.count, drop.service_known) for drop in table.service_drops] == [
        ("default/web-nodeport:http or default/web:http (shared backend: which was dialled is not known)", 5,
         "ambiguous"),
        ("default/web:dns", 2, "matched")]


FULL = NodeConntrack("pt-node1", Health(262144, 262144, (CpuStats(0, drop=7), CpuStats(1, drop=3))), 10)
EMPTY = NodeConntrack("pt-node2", Health(12, 262144, (CpuStats(0),)), 0)


def _drop(dst: str, dport: int, count: int, netns: str = "pt-node1", hook: str = "PREROUTING before conntrack",
          reason: str = "NETFILTER_DROP") -> dict:
    return {"reason": reason, "proto": "tcp", "src": "10.244.0.2", "dst": dst, "dport": dport, "count": count,
            "hook": hook, "netns": netns}


def test_drops_no_rule_explains_on_a_full_conntrack_table_are_charged_to_the_table() -> None:
    table = _table()
    table.add_conntrack([FULL, EMPTY])
    # conntrack refuses the entry before NAT: the packet still goes to the VIP, and no DROP rule matches it.
    table.add_drops([_drop("10.96.0.10", 80, 10), _drop("10.96.0.10", 80, 4, netns="pt-node2")])
    full, other = table.service_drops
    assert (full.service, full.count, full.rule, full.cause) == ("default/web:http", 10, "-",
                                                                  "conntrack table full (262144/262144)")
    assert full.text() == "NETFILTER_DROP at PREROUTING before conntrack: conntrack table full (262144/262144)"
    assert other.cause == "" and other.count == 4, "node2's table is not full: no cause claimed"
    assert table.out_of_sync == [], "a known VIP is never out of sync"
    out = io.StringIO()
    write_flow_table(table, out)
    text = out.getvalue()
    assert "10 x NETFILTER_DROP at PREROUTING before conntrack: conntrack table full (262144/262144)" in text
    assert "conntrack pt-node1: 262144/262144 entries (100% full), insert_failed 0, drop 10 (10 during" in text
    assert "TABLE FULL" in text and "conntrack pt-node2: 12/262144 entries (0% full)" in text


def test_in_nftables_mode_a_drop_before_conntrack_on_a_full_table_is_not_charged_to_a_cluster_ip_rule() -> None:
    """nftables kube-proxy's "invalid ports of ClusterIPs" REJECT matches the VIP on addresses alone, but it runs in
    filter-forward, after DNAT: a packet last seen before conntrack never got there."""
    table = FlowTable(parse_nft_json((FIXTURES / "lab-nft-node1.json").read_text()), lambda ip: PODS.get(ip, "-"))
    table.add_conntrack([FULL])
    table.add_drops([_drop("10.96.0.10", 80, 10), _drop("10.96.0.10", 80, 1, hook="FORWARD first")])
    by_hook = {drop.hook: drop for drop in table.service_drops}
    full = by_hook["PREROUTING before conntrack"]
    assert (full.service, full.rule, full.cause) == ("default/web:http", "-", "conntrack table full (262144/262144)")
    forwarded = by_hook["FORWARD first"]
    assert forwarded.cause == "" and "cluster-ips-check" in forwarded.rule, "past conntrack, the rule stands"


def test_nftables_drop_of_an_unallocated_cluster_ip_is_flagged_with_its_rule() -> None:
    table = FlowTable(parse_nft_json((FIXTURES / "lab-nft-node1.json").read_text()), lambda ip: PODS.get(ip, "-"))
    table.add_drops([_drop("10.96.0.99", 80, 3, hook="FORWARD first")])
    [flagged] = table.out_of_sync
    assert (flagged.vip, flagged.packets) == ("10.96.0.99", 3)
    assert flagged.seen.startswith("NETFILTER_DROP at FORWARD first by ip kube-proxy cluster-ips-check"), flagged
    assert table.service_drops == []


def test_conntrack_drops_join_the_flow_that_lost_them_and_rule_drops_keep_their_rule() -> None:
    table = _table()
    table.add_nat([_nat(1, _t("10.244.0.2", 41000, "10.96.0.10", 80, 6),
                        _t("10.244.0.2", 41000, "10.244.1.2", 8080, 6))])
    table.add_conntrack([FULL])
    table.add_drops([_drop("10.96.0.10", 80, 6),
                     _drop("10.96.0.30", 80, 2, hook="FORWARD first")])  # default/empty's REJECT rule
    [flow] = table.rows()
    assert flow.drops == {"NETFILTER_DROP at PREROUTING before conntrack: conntrack table full (262144/262144)": 6}
    [reject] = table.service_drops
    assert reject.service == "default/empty:http" and reject.cause == "" and "KUBE-SERVICES" in reject.rule


def test_conntrack_state_as_json_and_a_table_that_dropped_without_being_full() -> None:
    assert FULL.to_json() == {"conntrack": True, "node": "pt-node1", "count": 262144, "max": 262144, "fill": 1.0,
                              "full": True, "drop": 10, "insert_failed": 0, "early_drop": 0, "drops_during": 10}
    emptied = NodeConntrack("host", Health(100, 262144), 5)
    assert emptied.cause == "conntrack dropped 5 new connections (table 100/262144)"
    assert EMPTY.cause == "" and NodeConntrack("host", Health(1, 10)).cause == ""


def test_cluster_range_is_guessed_from_the_vips_and_never_narrower_than_a_24() -> None:
    assert str(cluster_range(_table().services)) == "10.96.0.0/24"
    table = FlowTable(parse_iptables_save(""), lambda ip: "-")
    assert cluster_range(table.services) is None and not table._unknown_vip("10.96.0.10")


def test_traffic_to_a_vip_no_rule_knows_is_flagged_out_of_sync() -> None:
    table = _table()
    table.add_nat([
        # DNATed by something kube-proxy's current rules do not have (stale rules on this node, or a stale entry)
        _nat(1, _t("10.244.0.2", 42000, "10.96.0.77", 80, 6), _t("10.244.0.2", 42000, "10.244.1.3", 8080, 6), 3),
        _nat(1, _t("10.244.0.2", 42001, "10.96.0.10", 80, 6), _t("10.244.0.2", 42001, "10.244.1.3", 8080, 6)),
    ])
    table.add_drops([
        _drop("10.96.0.99", 80, 2, netns="pt-node2", hook="FORWARD first"),  # no rule: routed away and dropped
        _drop("10.96.0.99", 80, 1, netns="pt-node2", hook="FORWARD first"),
        _drop("10.96.0.10", 8443, 5, netns="pt-node2"),  # a known VIP on a port it does not serve: not out of sync
        _drop("192.168.1.9", 80, 5, netns="pt-node2"),  # outside the ClusterIP range
    ])
    flagged = {(f.vip, f.port, f.seen): f for f in table.out_of_sync}
    assert set(flagged) == {("10.96.0.77", 80, "DNATed to 10.244.1.3:8080"),
                            ("10.96.0.99", 80, "NETFILTER_DROP at FORWARD first")}
    dropped = flagged["10.96.0.99", 80, "NETFILTER_DROP at FORWARD first"]
    assert dropped.packets == 3 and dropped.src == "10.244.0.2" and dropped.cluster_range == "10.96.0.0/24"
    assert dropped.to_json()["out_of_sync"] is True
    assert dropped.note == "VIP with no kube-proxy rules: out of sync?"
    assert flagged["10.96.0.77", 80, "DNATed to 10.244.1.3:8080"].packets == 3
    out = io.StringIO()
    write_flow_table(table, out)
    assert "tcp 10.244.0.2 > 10.96.0.99:80: 3 packets, NETFILTER_DROP at FORWARD first; VIP with no kube-proxy " \
           "rules: out of sync?" in out.getvalue()


def _long_named_table() -> FlowTable:
    """Pod names as a Deployment makes them (name-<replicaset hash>-<5 chars>), cut at 18 columns before."""
    services = parse_iptables_save((FIXTURES / "lab-iptables-node1.save").read_text())
    pods = {"10.244.0.2": "checkout-frontend-7d9f8b6c5d-x2k4p", "10.244.1.2": "payments-backend-5c8d7f9b4-qwz8r"}
    table = FlowTable(services, lambda ip: pods.get(ip, "-"))
    table.add_nat([_nat(1, _t("10.244.0.2", 40000, "10.96.0.10", 53), _t("10.244.0.2", 40000, "10.244.1.2", 5353))])
    return table


@pytest.mark.parametrize("width", [None, 70, 90, 120, 200])
def test_flow_table_sized_to_the_terminal(width: int | None) -> None:
    out = io.StringIO()
    write_flow_table(_long_named_table(), out, width)
    head, row = out.getvalue().splitlines()[:2]
    whole = ("checkout-frontend-7d9f8b6c5d-x2k4p", "payments-backend-5c8d7f9b4-qwz8r:5353")
    fixed = 3 + 7 * 3 + len("DROPS")  # three separators, three counts with theirs, and DROPS
    natural = len("default/web:dns") + len(whole[0]) + len(whole[1]) + fixed
    if width is None or width >= natural:  # a pipe, --wide or a wide terminal: names whole
        assert all(name in row for name in whole) and "~" not in row
        assert len(head) == natural
    else:  # shortened to fit, down to the floors (the Service's 15 is under its 16, 12, 16), marked as shortened
        assert "~" in row
        assert len(head) == max(width, len("default/web:dns") + 12 + 16 + fixed)
    assert row.split()[-4:] == ["1", "0", "5.0", "0"]  # the counts are never cut


def test_a_service_drop_names_its_matched_rule_once() -> None:
    rule = "filter KUBE-SERVICES #1"
    by_rule = ServiceDrop("default/web:http", "NETFILTER_DROP", "FORWARD", rule, 3, "10.244.0.2", "10.96.0.10", 80)
    assert by_rule.text() == "NETFILTER_DROP at FORWARD by filter KUBE-SERVICES #1 (matched)"
    cause = "Service default/web:http has no endpoints: kube-proxy rejects its VIP 10.96.0.10:80/tcp " \
            "(filter KUBE-SERVICES #1) (matched)"
    named = ServiceDrop("default/web:http", "NETFILTER_DROP", "FORWARD", rule, 3, "10.244.0.2", "10.96.0.10", 80, cause)
    assert named.text() == f"NETFILTER_DROP at FORWARD: {cause}"
    assert named.text().count("(matched)") == 1 and named.text().count(rule) == 1


def test_flows_counted_from_conntrack_say_their_hook_time_is_unknown() -> None:
    services = parse_iptables_save((FIXTURES / "lab-iptables-node1.save").read_text())
    table = FlowTable(services, lambda ip: PODS.get(ip, "-"), timed=False)
    table.add_nat([_nat(1, _t("10.244.0.2", 40000, "10.96.0.10", 53), _t("10.244.0.2", 40000, "10.244.1.2", 5353), 3)])
    (flow,) = table.rows()
    row = flow.to_json()
    assert row["packets_out"] == 3 and row["netfilter_ns_avg"] is None and row["netfilter_ns_max"] is None
    out = io.StringIO()
    write_flow_table(table, out)
    line = out.getvalue().splitlines()[1].split()
    assert line[-4:] == ["3", "0", "-", "0"], line  # PKTS> <PKTS, NF us unknown ("-", not 0.0), drops
