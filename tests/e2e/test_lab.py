"""The built-in lab on the host kernel: real namespaces, real kube-proxy rules, real traffic, real faults.

Every test needs root. The module fixture brings the lab up once and always takes it down.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator

import pytest
from support.lab import exclusive_lab, lab_lock, wait_for_foreign_lab

from tracer.errors import LabError
from tracer.lab import control, faults, names, processes, proxy, state, traffic

pytestmark = pytest.mark.root

WEB = "default/web:http"


def _out(*cmd: str) -> str:
    return subprocess.run(cmd, capture_output=True, text=True, check=False).stdout


def _root_snapshot() -> dict[str, object]:
    """What the lab must never change in the root namespace (counters and timestamps stripped)."""
    rules = [line.split(" [")[0] for line in _out("iptables-save").splitlines() if not line.startswith("#")]
    return {
        "netns": {n for n in os.listdir("/run/netns")} if os.path.isdir("/run/netns") else set(),
        "links": sorted(line.split(":")[1].strip() for line in _out("ip", "-o", "link").splitlines()),
        "iptables": rules,
        "nft": _out("nft", "list", "ruleset"),
        "routes": _out("ip", "route", "show", "table", "all"),
    }


def _lab_netns(snapshot: dict[str, object]) -> set[str]:
    return {n for n in snapshot["netns"] if n.startswith("pt-")}  # type: ignore[union-attr]


@pytest.fixture
def no_lab() -> Iterator[None]:
    """The lab lock held and no lab up: for tests that bring it up and down themselves."""
    with lab_lock():
        wait_for_foreign_lab()
        yield


def test_up_down_leaves_nothing_behind(no_lab: None) -> None:
    """nftables mode, a fault and background traffic on; `down` (twice) leaves the host exactly as it was."""
    before = _root_snapshot()
    try:
        control.up(proxy_mode="nftables", services=20)
        with pytest.raises(LabError, match="already up"):
            control.up()
        assert control.up(if_down=True)["proxy_mode"] == "nftables"
        assert traffic.probe(WEB, 12).ok == 12
        faults.set_fault("drop-backend", True)
        pid = processes.python_module("tracer.lab.traffic", "--rate", "20", "--duration", "60", log="traffic.log")
        data = state.require()
        data["processes"]["traffic"] = [pid]
        state.save(data)
        during = _root_snapshot()
        assert during["links"] == before["links"] and during["iptables"] == before["iptables"]
        assert during["nft"] == before["nft"] and during["routes"] == before["routes"]
        assert len(_lab_netns(during) - _lab_netns(before)) == 6
    finally:
        assert control.down() is True
    assert control.down() is False
    after = _root_snapshot()
    assert after == before
    assert not processes.alive(pid)
    assert not state.state_file().exists()


def test_ipvs_mode(no_lab: None) -> None:
    if proxy.ipvs_available():
        pytest.skip("this kernel has IPVS: the VM tier tests the ipvs mode")
    with pytest.raises(LabError, match="IPVS is not in this kernel"):
        control.up(proxy_mode="ipvs")
    assert not control.is_up()


@pytest.fixture(scope="module")
def lab() -> Iterator[None]:
    with exclusive_lab():
        yield


@pytest.fixture
def fault_off(lab: None) -> Iterator[None]:
    """Every fault test leaves the lab fault-free, whatever happens."""
    yield
    faults.clear_all()


def test_names(lab: None) -> None:
    n = names()
    assert n.proxy_mode == "iptables"
    assert n.nodes == {"node1": "pt-node1", "node2": "pt-node2"}
    assert n.pods["web-2"].netns == "pt-web-2" and n.pods["web-2"].node == "node2"
    web = n.services[WEB]
    assert (web.vip, web.port, web.proto) == ("10.96.0.10", 80, "TCP")
    assert [e[0] for e in web.endpoints] == ["web-1", "web-2", "web-3"]
    assert n.services["default/web-nodeport:http"].node_port == 30080
    assert n.services["default/empty:http"].endpoints == ()


def test_lab_is_isolated(lab: None) -> None:
    """Lab links only join lab namespaces, and nothing in the lab reaches the host's own addresses."""
    root_links = {line.split(":")[1].strip().split("@")[0] for line in _out("ip", "-o", "link").splitlines()}
    for ns in [*names().nodes.values(), *(p.netns for p in names().pods.values())]:
        ids = _out("ip", "-n", ns, "netns", "list-id")
        for line in _out("ip", "-n", ns, "-o", "-d", "link").splitlines():
            name = line.split(":")[1].strip().split("@")[0]
            assert name in ("lo", "eth0", "flannel.1", "cni0") or name.startswith("veth"), line
            if "link-netns " in line:
                assert line.split("link-netns ")[1].startswith("pt-"), line
        # Every namespace this one has a peer in is a lab netns (the root netns would have no pt- name).
        for entry in ids.splitlines():
            assert "netns name: pt-" in entry, (ns, entry)
    host_ips = [w.split("/")[0] for w in _out("ip", "-4", "-o", "addr").split() if "/" in w]
    host_ips = [ip for ip in host_ips if not ip.startswith("127.")]
    assert root_links and host_ips
    for ip in host_ips[:3]:
        s = traffic.probe(f"tcp:{ip}:22", 2, timeout=0.5)
        assert s.ok == 0
        assert set(s.stats(f"tcp:{ip}:22").failures) <= {"timeout", "ehostunreach", "enetunreach"}


def test_service_reaches_all_endpoints(lab: None) -> None:
    tcp = traffic.probe(WEB, 60)
    assert tcp.failed == 0
    assert set(tcp.stats(WEB).endpoints) == {"web-1", "web-2", "web-3"}
    udp = traffic.probe("default/web:dns", 45)
    assert udp.failed == 0
    assert set(udp.stats("default/web:dns").endpoints) == {"web-1", "web-2", "web-3"}


def test_nodeport_answers(lab: None) -> None:
    s = traffic.probe("default/web-nodeport:http nodeport", 30)
    assert s.failed == 0 and s.ok == 30
    s = traffic.probe("tcp:192.168.77.1:30080", 10)
    assert s.ok == 10


def test_no_endpoints_service_is_rejected(lab: None) -> None:
    s = traffic.probe("default/empty:http", 10)
    assert s.ok == 0
    # REJECT answers with ICMP port unreachable, which the kernel rate-limits: some attempts just time out.
    assert s.stats("default/empty:http").failures["refused"] >= 1


def test_traffic_summary(lab: None) -> None:
    s = traffic.run(rate=100, duration=1)
    assert s.attempts == 100
    d = s.to_dict()
    assert d["targets"][WEB]["failures"] == {}
    assert "default/web:http" in s.format()


def _failed_fraction(s: traffic.Summary) -> float:
    return s.failed / s.attempts


def test_fault_list_covers_all() -> None:
    assert list(faults.FAULTS) == ["drop-backend", "mtu-mismatch", "conntrack-full", "no-endpoints", "rp-filter",
                                   "blackhole-route", "softirq-load"]
    with pytest.raises(LabError, match="unknown fault"):
        faults.get("nope")


def test_drop_backend(fault_off: None) -> None:
    faults.set_fault("drop-backend", True)
    s = traffic.probe(WEB, 90)
    assert 0.15 <= _failed_fraction(s) <= 0.55
    assert set(s.stats(WEB).failures) == {"timeout"}
    assert "web-2" not in s.stats(WEB).endpoints
    assert traffic.probe("default/web:dns", 20).failed == 0  # UDP to the same pods is untouched
    assert traffic.probe("udp:10.244.1.2:5353", 5).ok == 5
    faults.set_fault("drop-backend", False)
    assert traffic.probe(WEB, 30).failed == 0


def test_mtu_mismatch(fault_off: None) -> None:
    big, small = 1472, 1400  # 1472 + 28 = a 1500-byte IP packet; the overlay carries 1450
    faults.set_fault("mtu-mismatch", True)
    assert traffic.probe("udp:10.244.1.2:5353", 5, size=big, df=True).ok == 0  # across nodes: dropped
    assert traffic.probe("udp:10.244.1.2:5353", 5, size=small, df=True).ok == 5
    assert traffic.probe("udp:10.244.0.3:5353", 5, size=big, df=True).ok == 5  # same node: no overlay
    assert traffic.probe(WEB, 30).failed == 0
    faults.set_fault("mtu-mismatch", False)
    assert _out("ip", "-n", "pt-client", "-o", "link", "show", "eth0").split("mtu ")[1].split()[0] == "1450"
    off = traffic.probe("udp:10.244.1.2:5353", 5, size=big, df=True)
    assert off.ok == 0 and set(off.stats("udp:10.244.1.2:5353").failures) == {"emsgsize"}  # refused locally
    assert traffic.probe("udp:10.244.1.2:5353", 5, size=small, df=True).ok == 5


def test_conntrack_full(fault_off: None) -> None:
    _, details = faults.set_fault("conntrack-full", True)
    assert details["netns"] == "pt-node1"
    s = traffic.probe(WEB, 20)
    assert s.ok == 0
    assert traffic.probe("udp:10.244.1.3:5353", 5, clients=["web-2"]).ok == 5  # node2 keeps working
    faults.set_fault("conntrack-full", False)
    assert traffic.probe(WEB, 20).failed == 0


def test_no_endpoints_fault(fault_off: None) -> None:
    faults.set_fault("no-endpoints", True)
    assert names().services[WEB].endpoints == ()
    s = traffic.probe(WEB, 10)
    assert s.ok == 0 and s.stats(WEB).failures["refused"] >= 1
    assert traffic.probe("default/web-nodeport:http", 15).failed == 0
    faults.set_fault("no-endpoints", False)
    assert set(traffic.probe(WEB, 45).stats(WEB).endpoints) == {"web-1", "web-2", "web-3"}


def test_rp_filter(fault_off: None) -> None:
    faults.set_fault("rp-filter", True)
    assert traffic.probe("default/web-nodeport:http nodeport", 10).ok == 0
    assert traffic.probe(WEB, 30).failed == 0
    faults.set_fault("rp-filter", False)
    assert traffic.probe("default/web-nodeport:http nodeport", 10).failed == 0


def test_blackhole_route(fault_off: None) -> None:
    _, details = faults.set_fault("blackhole-route", True)
    s = traffic.probe(WEB, 90)
    assert 0.15 <= _failed_fraction(s) <= 0.55
    assert details["pod"] not in s.stats(WEB).endpoints
    assert traffic.probe(f"udp:{details['ip']}:5353", 3).ok == 0
    assert traffic.probe("udp:10.244.1.2:5353" if details["pod"] != "web-2" else "udp:10.244.0.3:5353", 5).ok == 5
    faults.set_fault("blackhole-route", False)
    assert traffic.probe(WEB, 30).failed == 0


def test_softirq_load(fault_off: None) -> None:
    faults.set_fault("softirq-load", True)
    pids = state.require()["processes"]["fault:softirq-load"]
    assert pids and all(processes.alive(p) for p in pids)
    s = traffic.probe(WEB, 20, timeout=3.0)
    assert s.ok > 0
    faults.set_fault("softirq-load", False)
    assert not any(processes.alive(p) for p in pids)
    assert "fault:softirq-load" not in state.require()["processes"]
    assert traffic.probe(WEB, 20).failed == 0


def test_status(lab: None) -> None:
    st = control.status()
    assert st["up"] and st["proxy_mode"] == "iptables" and st["faults"] == []
    assert all(p["present"] for p in st["pods"].values())
    assert all(proc["running"] == 1 for proc in st["processes"].values())
