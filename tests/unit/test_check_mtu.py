"""MTU consistency on recorded `ip -d -j link` output: the lab's flannel VXLAN node, a Calico IPIP node."""

from __future__ import annotations

import copy
import json
from pathlib import Path

from tracer.check import mtu, topology
from tracer.check.model import Finding, NodeState

FIXTURES = Path(__file__).parent / "fixtures" / "check"


def _state(name: str) -> NodeState:
    return NodeState.from_dict(json.loads((FIXTURES / name).read_text()))


def _one(findings: list[Finding], check: str) -> Finding:
    found = [f for f in findings if f.check == check]
    assert len(found) == 1, found
    return found[0]


def _set_mtu(state: NodeState, mtu_value: int, names: set[str], pod_ends: bool = True) -> NodeState:
    """What `lab fault mtu-mismatch` does: `names` (pod veths, cni0) and the pods' eth0 to `mtu_value`."""
    state = copy.deepcopy(state)
    for link in state.links:
        if link["ifname"] in names:
            link["mtu"] = mtu_value
    for _, links in state.peer_links.values() if pod_ends else ():
        for link in links:
            if link["ifname"] == "eth0":
                link["mtu"] = mtu_value
    return state


def test_topology_of_the_lab_node() -> None:
    topo = topology.analyse(_state("state-lab-node1-ok.json"))
    assert topo.underlay == ["eth0"]  # a veth, but the VXLAN rides on it and the default route uses it
    assert [(o.name, o.kind, o.mtu, o.underlay, o.overhead) for o in topo.overlays] == [
        ("flannel.1", "vxlan", 1450, "eth0", 50)]
    assert topo.pod_bridges == ["cni0"]
    assert len(topo.pod_veths) == 2 and all(v.startswith("veth") for v in topo.pod_veths)
    assert sorted(topo.pod_ends) == [("pt-client:eth0", 1450), ("pt-web-1:eth0", 1450)]


def test_lab_without_faults_is_consistent() -> None:
    findings = mtu.check(_state("state-lab-node1-ok.json"))
    assert {f.severity for f in findings} == {"ok"}
    assert _one(findings, "underlay").value == "eth0 1500"
    assert _one(findings, "overlay").value == "flannel.1 1450 (vxlan over eth0 1500: room for 1450)"
    assert _one(findings, "pods").value.startswith("5 pod interfaces at <= 1450")


def test_pods_at_1500_over_vxlan_fail_naming_devices_and_mtus() -> None:
    ok = _state("state-lab-node1-ok.json")
    veths = set(topology.analyse(ok).pod_veths)
    state = _set_mtu(ok, 1500, veths | {"cni0"})
    pods = _one(mtu.check(state), "pods")
    assert pods.severity == "fail"
    assert pods.value.startswith("cni0 1500, veth")
    for name in [*veths, "pt-client:eth0", "pt-web-1:eth0"]:
        assert f"{name} 1500" in pods.value
    assert pods.value.endswith("> 1450 carried by flannel.1 (vxlan)")
    assert "ip link set dev $d mtu 1450" in pods.fix and "ip -n pt-client link set dev eth0 mtu 1450" in pods.fix


def test_recorded_mtu_mismatch_fault() -> None:
    pods = _one(mtu.check(_state("state-lab-node1-mtu-mismatch.json")), "pods")
    assert pods.severity == "fail" and "cni0 1500" in pods.value and "pt-client:eth0 1500" in pods.value
    assert "> 1450" in pods.value


def test_overlay_device_too_big_for_its_underlay() -> None:
    state = _set_mtu(_state("state-lab-node1-ok.json"), 1500, {"flannel.1"}, pod_ends=False)
    overlay = _one(mtu.check(state), "overlay")
    assert overlay.severity == "fail"
    assert overlay.value == "flannel.1 1500 (vxlan over eth0 1500: room for 1450)"
    assert overlay.fix == "ip link set dev flannel.1 mtu 1450"
    # Pods at 1450 still fit: the limit is the smaller of the device MTU and the underlay's room.
    assert _one(mtu.check(state), "pods").severity == "ok"


def test_flannel_subnet_env() -> None:
    state = _state("state-lab-node1-ok.json")
    state.flannel_env = (FIXTURES / "flannel-subnet.env").read_text()
    assert mtu.parse_subnet_env(state.flannel_env)["FLANNEL_MTU"] == "1450"
    assert _one(mtu.check(state), "flannel").value == "FLANNEL_MTU=1450"
    state.flannel_env = state.flannel_env.replace("FLANNEL_MTU=1450", "FLANNEL_MTU=1500")
    flannel = _one(mtu.check(state), "flannel")
    assert flannel.severity == "fail" and flannel.value.startswith("FLANNEL_MTU=1500 > 1450")


def test_flannel_mtu_below_the_pods_is_the_limit() -> None:
    state = _state("state-lab-node1-ok.json")
    state.flannel_env = "FLANNEL_MTU=1400\n"
    pods = _one(mtu.check(state), "pods")
    assert pods.severity == "fail" and pods.value.endswith("> 1400 carried by FLANNEL_MTU")


def test_calico_ipip_on_jumbo_underlay() -> None:
    links = json.loads((FIXTURES / "links-calico-ipip.json").read_text())
    state = NodeState(links=links, default_routes=[{"dst": "default", "gateway": "10.0.0.1", "dev": "ens5"}])
    topo = topology.analyse(state)
    assert topo.underlay == ["ens5"] and topo.overlays[0].overhead == 20
    assert topo.pod_bridges == [] and topo.pod_veths == ["cali1a2b3c4d5e6", "cali9f8e7d6c5b4"]
    findings = mtu.check(state)
    assert _one(findings, "overlay").value == "tunl0 8981 (ipip over ens5 9001: room for 8981)"
    pods = _one(findings, "pods")
    assert pods.severity == "fail" and pods.value == "cali9f8e7d6c5b4 9001 > 8981 carried by tunl0 (ipip)"


def test_no_overlay_pods_limited_by_underlay() -> None:
    links = [{"ifindex": 2, "ifname": "ens5", "mtu": 1500},
             {"ifindex": 5, "ifname": "cali0", "mtu": 1500, "link_netnsid": 0, "link_index": 3,
              "linkinfo": {"info_kind": "veth"}}]
    state = NodeState(links=links, default_routes=[{"dev": "ens5"}])
    pods = _one(mtu.check(state), "pods")
    assert pods.severity == "ok" and "ens5 (no overlay) carries 1500" in pods.value


def test_geneve_over_ipv6_underlay() -> None:
    links = [{"ifindex": 2, "ifname": "eth0", "mtu": 1500},
             {"ifindex": 3, "ifname": "genev_sys_6081", "mtu": 1450,
              "linkinfo": {"info_kind": "geneve", "info_data": {"id": 0, "remote6": "fd00::2", "local": "fd00::1"}}}]
    state = NodeState(links=links, default_routes=[{"dev": "eth0"}])
    overlay = _one(mtu.check(state), "overlay")
    assert overlay.severity == "fail" and "room for 1430" in overlay.value


def test_host_without_pods() -> None:
    findings = mtu.check(_state("state-host.json"))
    assert [f.check for f in findings] == ["underlay"]
