"""Service-flow reconstruction from NAT records and drop rows, on kube-proxy rules captured from the lab."""

from __future__ import annotations

import socket
from pathlib import Path

from tracer.events import Tuple
from tracer.flows import FlowTable, NatRecord
from tracer.kubeproxy import parse_iptables_save

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
