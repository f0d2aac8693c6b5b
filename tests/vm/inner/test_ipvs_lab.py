"""The lab in kube-proxy's IPVS mode on a kernel that has IPVS: kube-ipvs0 holds the VIPs, ipvsadm has one
virtual server per Service port with masquerading real servers, and traffic to a VIP reaches every endpoint."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest

from tracer.lab import control, names, processes, traffic

WEB = "default/web:http"
# Python starts several times slower under software emulation: the lab's fixed 15 s wait for its servers'
# ready files is too short in the VM (seen: "lab servers did not start within 15 s: web-3.ready").
EMULATION_SLOWDOWN = 8


def _in(netns: str, *argv: str) -> str:
    return subprocess.run(["ip", "netns", "exec", netns, *argv], capture_output=True, text=True,
                          check=True, timeout=60).stdout


@pytest.fixture(scope="module")
def ipvs_lab(modules: tuple[str, ...]) -> Iterator[None]:
    wait = processes.wait_for_files
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(processes, "wait_for_files",
                      lambda paths, timeout, what: wait(paths, timeout * EMULATION_SLOWDOWN, what))
        control.down()
        try:
            control.up(proxy_mode="ipvs")
            yield
        finally:
            control.down()


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


@pytest.mark.xfail(
    strict=True,
    reason="lab bug found by this tier: in ipvs mode the lab masquerades only traffic to the service CIDR, so "
    "a NodePort connection DNATed to an endpoint on another node gets its reply straight from the pod (no "
    "KUBE-NODE-PORT -> KUBE-MARK-MASQ as kube-proxy installs): the remote endpoint's third times out",
)
def test_nodeport_through_ipvs(ipvs_lab: None) -> None:
    summary = traffic.probe("default/web-nodeport:http nodeport", 12)
    assert summary.failed == 0 and summary.ok == 12, summary.format()
