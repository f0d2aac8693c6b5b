"""The lab in kube-proxy's IPVS mode on a kernel that has IPVS: kube-ipvs0 holds the VIPs, ipvsadm has one
virtual server per Service port with masquerading real servers, and traffic to a VIP reaches every endpoint."""

from __future__ import annotations

import subprocess

from tracer.lab import names, traffic

WEB = "default/web:http"


def _in(netns: str, *argv: str) -> str:
    return subprocess.run(["ip", "netns", "exec", netns, *argv], capture_output=True, text=True,
                          check=True, timeout=60).stdout


def test_vips_on_kube_ipvs0_and_virtual_servers_in_every_node(ipvs_lab: None) -> None:
    lab = names()
    assert lab.proxy_mode == "ipvs"
    web = lab.services[WEB]
    for netns in lab.nodes.values():
        assert f"{web.vip}/32" in _in(netns, "ip", "-o", "addr", "show", "dev", "kube-ipvs0")
        table = _in(netns, "ipvsadm", "-Ln")
        block = table.split(f"TCP  {web.vip}:{web.port} rr")[1].split("TCP  ")[0]
        endpoints = [line.split()[1] for line in block.splitlines() if line.strip().startswith("->")]
        assert sorted(endpoints) == sorted(f"{ip}:{port}" for _pod, ip, port in web.endpoints), table
        assert all("Masq" in line for line in block.splitlines() if line.strip().startswith("->")), table


def test_traffic_to_the_vip_reaches_every_endpoint(ipvs_lab: None) -> None:
    summary = traffic.probe(WEB, 30)
    assert (summary.ok, summary.failed) == (30, 0), summary.format()
    assert set(summary.stats(WEB).endpoints) == {"web-1", "web-2", "web-3"}


def test_nodeport_through_ipvs(ipvs_lab: None) -> None:
    """Sent to node2's address: endpoints on node1 answer only because node2 masqueraded the connection
    (KUBE-NODE-PORT -> KUBE-MARK-MASQ, net.ipv4.vs.conntrack=1), so the reply returns through node2's IPVS."""
    summary = traffic.probe("default/web-nodeport:http nodeport", 12)
    assert summary.failed == 0 and summary.ok == 12, summary.format()
