"""kube-proxy's IPVS mode: virtual servers named as Services, IPVS records (bpf/ipvs.c) as Service flows, and the
lab's IPVS-mode masquerade rules."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from tracer.analysis.flows import IPVS_CONN, IPVS_REPLY, IPVS_XMIT, FlowTable, NatRecord
from tracer.events.decode import Tuple
from tracer.lab import ipvs as lab_ipvs
from tracer.lab import manifest, processes
from tracer.node.ipvs import KnownService, NodeIpvs, name_virtual_servers, parse_dummy_addresses, read_node
from tracer.node.kubeproxy.ipvsadm import parse_ipvsadm
from tracer.node.kubeproxy.model import ServicePort
from tracer.output.errors import LabError

# `ipvsadm -Ln` of the lab's node1 in IPVS mode (tests/unit/fixtures/kubeproxy); node2 lists its own address.
NODE1_TABLE = (Path(__file__).parent / "fixtures" / "kubeproxy" / "ipvsadm-Ln.txt").read_text()
NODE2_TABLE = NODE1_TABLE.replace("192.168.77.1:30080", "192.168.77.2:30080")
VIPS = frozenset({"10.96.0.10", "10.96.0.20", "10.96.0.30"})
KNOWN = [
    KnownService("default/web:http", "tcp", "10.96.0.10", 80),
    KnownService("default/web:dns", "udp", "10.96.0.10", 53),
    KnownService("default/web-nodeport:http", "tcp", "10.96.0.20", 80, 30080),
    KnownService("default/empty:http", "tcp", "10.96.0.30", 80),
]
PODS = {"10.244.0.2": "client", "10.244.0.3": "web-1", "10.244.1.2": "web-2", "10.244.1.3": "web-3"}
# `ip -j addr show dev kube-ipvs0` in the lab's node1 (trimmed to the fields read).
DUMMY_JSON = json.dumps([{"ifname": "kube-ipvs0", "addr_info": [
    {"family": "inet", "local": ip, "prefixlen": 32} for ip in sorted(VIPS)]}])


def _nodes() -> list[NodeIpvs]:
    return [NodeIpvs("pt-node1", parse_ipvsadm(NODE1_TABLE), VIPS),
            NodeIpvs("pt-node2", parse_ipvsadm(NODE2_TABLE), VIPS)]


def test_cluster_ip_virtual_servers_get_their_service_names() -> None:
    services = name_virtual_servers(_nodes(), KNOWN)
    assert services.mode == "ipvs"
    web = services.lookup_vip("10.96.0.10", 80, "tcp")
    assert web is not None and web.name == "default/web:http"
    assert [str(ep) for ep in web.endpoints] == ["10.244.0.3:8080", "10.244.1.2:8080", "10.244.1.3:8080"]
    dns = services.lookup_vip("10.96.0.10", 53, "udp")
    assert dns is not None and dns.name == "default/web:dns"
    empty = services.by_name("default/empty:http")
    assert empty is not None and empty.no_endpoints
    assert services.service_count == 3 and services.port_count == 4, "one entry per Service port, both nodes merged"


def test_nodeport_virtual_servers_fold_into_their_service_on_every_node() -> None:
    services = name_virtual_servers(_nodes(), KNOWN)
    assert services.node_ips == ["192.168.77.1", "192.168.77.2"]
    for node_ip in services.node_ips:
        port = services.lookup_nodeport(30080, "tcp", node_ip)
        assert port is not None and (port.name, port.vip, port.port) == ("default/web-nodeport:http", "10.96.0.20", 80)
    assert services.lookup_nodeport(30080, "tcp", "192.168.77.9") is None
    assert services.lookup_vip("192.168.77.1", 30080, "tcp") is None, "a node address is not a VIP"


def test_without_names_the_structure_still_holds() -> None:
    """A real node without the lab: no names, but NodePorts are still told apart by kube-ipvs0."""
    services = name_virtual_servers(_nodes())
    assert {p.name for p in services.ports} == {""}
    port = services.lookup_nodeport(30080, "tcp", "192.168.77.2")
    assert port is not None and port.vip == "" and len(port.endpoints) == 3


def test_names_from_another_source_are_reused() -> None:
    named = [ServicePort("kube-system/kube-dns:dns", "udp", vip="10.96.0.10", port=53)]
    services = name_virtual_servers(_nodes(), (), named)
    dns = services.lookup_vip("10.96.0.10", 53, "udp")
    assert dns is not None and dns.name == "kube-system/kube-dns:dns"


def test_without_kube_ipvs0_only_known_nodeports_are_nodeports() -> None:
    nodes = [NodeIpvs(None, parse_ipvsadm(NODE1_TABLE), frozenset())]
    assert name_virtual_servers(nodes).lookup_vip("192.168.77.1", 30080, "tcp") is not None
    services = name_virtual_servers(nodes, KNOWN)
    assert services.lookup_nodeport(30080, "tcp", "192.168.77.1") is not None


def test_dummy_addresses_from_ip_json() -> None:
    assert parse_dummy_addresses(DUMMY_JSON) == VIPS
    assert parse_dummy_addresses("") == frozenset()
    assert parse_dummy_addresses("not json") == frozenset()


def test_read_node_runs_ipvsadm_and_ip_with_the_runner() -> None:
    asked = []

    def runner(argv: list[str]) -> str | None:
        asked.append(argv[0])
        return NODE1_TABLE if argv[0] == "ipvsadm" else DUMMY_JSON

    node = read_node("pt-node1", runner)
    assert node is not None and node.local_vips == VIPS and len(node.table.ports) == 5
    assert asked == ["ipvsadm", "ip"]
    assert read_node("pt-node1", lambda argv: None) is None, "ipvsadm not installed: no IPVS table"


def _t(src: str, sport: int, dst: str, dport: int, proto: int = 6) -> Tuple:
    pad = bytes(12)
    return Tuple(socket.inet_aton(src) + pad, socket.inet_aton(dst) + pad, sport, dport, 4, proto, 0, 0, 0, 0)


def _record(point: int, before: Tuple, after: Tuple, packets: int) -> NatRecord:
    return NatRecord(point, 4026532000, before, after, packets, packets * 60, 1, 2, 0, 0)


def test_ipvs_records_make_service_flows_like_netfilter_nat() -> None:
    """What bpf/ipvs.c records for two connections (web-2 twice over, web-1 once) and a NodePort connection."""
    table = FlowTable(name_virtual_servers(_nodes(), KNOWN), lambda ip: PODS.get(ip, "-"))
    client, vip, web2, web1 = "10.244.0.2", "10.96.0.10", "10.244.1.2", "10.244.0.3"
    table.add_nat([
        _record(IPVS_CONN, _t(client, 40000, vip, 80), _t(client, 40000, web2, 8080), 1),
        _record(IPVS_XMIT, _t(client, 40000, vip, 80), _t(client, 40000, web2, 8080), 5),
        _record(IPVS_REPLY, _t(web2, 8080, client, 40000), _t(vip, 80, client, 40000), 4),
        _record(IPVS_CONN, _t(client, 40001, vip, 80), _t(client, 40001, web2, 8080), 1),
        _record(IPVS_XMIT, _t(client, 40001, vip, 80), _t(client, 40001, web2, 8080), 5),
        _record(IPVS_CONN, _t(client, 40002, vip, 80), _t(client, 40002, web1, 8080), 1),
        _record(IPVS_CONN, _t(client, 40003, "192.168.77.2", 30080), _t(client, 40003, web1, 8080), 1),
        _record(IPVS_REPLY, _t(web1, 8080, client, 40003), _t("192.168.77.2", 30080, client, 40003), 3),
    ])
    flows = {(flow.service, flow.backend_pod): flow.to_json() for flow in table.rows()}
    assert set(flows) == {("default/web:http", "web-2"), ("default/web:http", "web-1"),
                          ("default/web-nodeport:http", "web-1")}
    two = flows[("default/web:http", "web-2")]
    assert (two["client_pod"], two["vip"], two["port"], two["backend_port"]) == ("client", vip, 80, 8080)
    assert (two["scheduled"], two["connections"], two["packets_out"], two["packets_in"]) == (2, 2, 10, 4)
    one = flows[("default/web:http", "web-1")]
    assert (one["scheduled"], one["packets_out"], one["packets_in"]) == (1, 0, 0), "scheduled, nothing sent yet"
    node_port = flows[("default/web-nodeport:http", "web-1")]
    assert (node_port["vip"], node_port["port"], node_port["packets_in"]) == ("192.168.77.2", 30080, 3)
    assert not table.other_nat


def test_lab_masquerades_nodeport_connections() -> None:
    rules = lab_ipvs._masquerade(manifest.load(None)).splitlines()
    assert any(rule.startswith("-A KUBE-SERVICES -m addrtype --dst-type LOCAL") and rule.endswith("-j KUBE-NODE-PORT")
               for rule in rules)
    assert any(rule.startswith("-A KUBE-NODE-PORT -p tcp -m multiport --dports 30080 ")
               and rule.endswith("-j KUBE-MARK-MASQ") for rule in rules), rules
    assert not any("-p udp" in rule for rule in rules), "the default lab has no UDP NodePort"
    assert rules.index(":KUBE-NODE-PORT - [0:0]") < rules.index("COMMIT")


def test_lab_ready_timeout_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(processes.READY_TIMEOUT_ENV, raising=False)
    assert processes.ready_timeout() == 15
    monkeypatch.setenv(processes.READY_TIMEOUT_ENV, "120")
    assert processes.ready_timeout() == 120
    for bad in ("soon", "0", "-3", "inf", "nan"):
        monkeypatch.setenv(processes.READY_TIMEOUT_ENV, bad)
        with pytest.raises(LabError, match="PODTRACE_LAB_READY_TIMEOUT"):
            processes.ready_timeout()
