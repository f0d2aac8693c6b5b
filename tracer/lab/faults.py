"""The lab's faults: each breaks one thing a Kubernetes node can get wrong, and each can be switched off again.

A fault's `on` returns what it changed (kept in the state file) and its `off` undoes exactly that.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tracer.lab import ctfill, processes, proxy, sh, state
from tracer.lab.manifest import Endpoint, Manifest, Service, ServicePort
from tracer.lab.topology import UNDERLAY_DEV
from tracer.output.errors import LabError

COMMENT = "podtrace-lab fault drop-backend"
LOAD_SECONDS = 600  # softirq-load's processes stop by themselves after this, whatever happens to the lab
FLOODS = 2  # softirq-load's senders
# softirq-load's per-packet receive work: rules that match nothing (as on a node with thousands of kube-proxy or
# policy rules); with them one sender CPU outpaces the receive CPU (500 rules: backlog drops within a second).
LOAD_RULES = 500
LOAD_CHAIN = "PODTRACE-LAB-LOAD"
Details = dict[str, Any]


@dataclass(frozen=True)
class Fault:
    name: str
    breaks: str
    on: Callable[[Manifest, dict[str, Any]], Details]
    off: Callable[[Manifest, dict[str, Any], Details], None]


def _main_service(m: Manifest) -> tuple[Service, ServicePort, list[Endpoint]]:
    """The first Service with a TCP port backed by at least two pods: `default/web:http` in the default lab."""
    for svc in m.services:
        for port in svc.ports:
            eps = m.endpoints(svc, port)
            if port.protocol == "TCP" and len(eps) >= 2:
                return svc, port, eps
    raise LabError("the lab manifest has no TCP Service with two or more endpoints", "faults need one")


def _remote_endpoints(m: Manifest) -> list[Endpoint]:
    """Endpoints of the main Service that are not on the first client's node (their traffic crosses the overlay)."""
    client_node = m.clients()[0].node if m.clients() else m.nodes[0].name
    _, _, eps = _main_service(m)
    remote = [e for e in eps if e.node != client_node]
    return remote or eps


def _client_node(m: Manifest) -> str:
    return m.node(m.clients()[0].node if m.clients() else m.nodes[0].name).netns


# drop-backend -----------------------------------------------------------------------------------------------


def _drop_rule(ep: Endpoint, proto: str) -> list[str]:
    return ["FORWARD", "-d", f"{ep.ip}/32", "-p", proto.lower(), "--dport", str(ep.port), "-m", "comment",
            "--comment", COMMENT, "-j", "DROP"]


def drop_backend_on(m: Manifest, data: dict[str, Any]) -> Details:
    _, port, _ = _main_service(m)
    ep = _remote_endpoints(m)[0]
    netns = m.node(ep.node).netns
    rule = _drop_rule(ep, port.protocol)
    sh.run(["iptables", "-w", "5", "-I", rule[0], "1", *rule[1:]], netns=netns)
    return {"netns": netns, "pod": ep.pod, "ip": ep.ip, "port": ep.port, "proto": port.protocol}


def drop_backend_off(m: Manifest, data: dict[str, Any], d: Details) -> None:
    ep = Endpoint(d["pod"], d["ip"], d["port"], "")
    sh.run(["iptables", "-w", "5", "-D", *_drop_rule(ep, d["proto"])], netns=d["netns"], check=False)


# mtu-mismatch -----------------------------------------------------------------------------------------------


def _set_mtus(m: Manifest, mtu: int) -> None:
    for node in m.nodes:
        for pod in m.pods_on(node.name):
            sh.ip("link", "set", pod.host_veth, "mtu", str(mtu), netns=node.netns)
            sh.ip("link", "set", "eth0", "mtu", str(mtu), netns=pod.netns)
            # Forget learned path MTUs so the new link MTU is what senders use.
            sh.ip("route", "flush", "cache", netns=pod.netns, check=False)
        sh.ip("link", "set", "cni0", "mtu", str(mtu), netns=node.netns)
        sh.ip("route", "flush", "cache", netns=node.netns, check=False)


def mtu_on(m: Manifest, data: dict[str, Any]) -> Details:
    _set_mtus(m, m.underlay_mtu)
    return {"pod_mtu": m.underlay_mtu, "overlay_mtu": m.overlay_mtu}


def mtu_off(m: Manifest, data: dict[str, Any], d: Details) -> None:
    _set_mtus(m, m.overlay_mtu)


# conntrack-full ---------------------------------------------------------------------------------------------


def conntrack_on(m: Manifest, data: dict[str, Any]) -> Details:
    netns = _client_node(m)
    limit = ctfill.maximum(netns)
    # The lab's own entries (earlier traffic) expire or get early-dropped, each one opening a slot that lets a new
    # connection through: only the never-expiring assured fillers keep the table reliably full.
    ctfill.flush_all(netns)
    added = ctfill.fill(netns, max(0, limit - ctfill.count(netns)))
    return {"netns": netns, "nf_conntrack_max": limit, "filler_entries": added}


def conntrack_off(m: Manifest, data: dict[str, Any], d: Details) -> None:
    if sh.netns_exists(d["netns"]):
        ctfill.flush_filler(d["netns"])


# no-endpoints -----------------------------------------------------------------------------------------------


def no_endpoints_on(m: Manifest, data: dict[str, Any]) -> Details:
    svc, _, _ = _main_service(m)
    data["without_endpoints"] = sorted(set(data.get("without_endpoints", [])) | {svc.key})
    proxy.apply(m, data["proxy_mode"], frozenset(data["without_endpoints"]), initial=False)
    return {"service": svc.key}


def no_endpoints_off(m: Manifest, data: dict[str, Any], d: Details) -> None:
    data["without_endpoints"] = sorted(set(data.get("without_endpoints", [])) - {d["service"]})
    proxy.apply(m, data["proxy_mode"], frozenset(data["without_endpoints"]), initial=False)


# rp-filter --------------------------------------------------------------------------------------------------


def rp_filter_on(m: Manifest, data: dict[str, Any]) -> Details:
    node = m.nodes[-1]
    keys = ["net.ipv4.conf.all.rp_filter", "net.ipv4.conf.eth0.rp_filter"]
    old = {k: sh.read_sysctl(node.netns, k) for k in keys}
    for k in keys:
        sh.sysctl(node.netns, k, 1)
    return {"netns": node.netns, "old": old}


def rp_filter_off(m: Manifest, data: dict[str, Any], d: Details) -> None:
    if sh.netns_exists(d["netns"]):
        for k, v in d["old"].items():
            sh.sysctl(d["netns"], k, v)


# blackhole-route --------------------------------------------------------------------------------------------


def blackhole_on(m: Manifest, data: dict[str, Any]) -> Details:
    ep = _remote_endpoints(m)[-1]
    netns = _client_node(m)
    sh.ip("route", "add", "blackhole", f"{ep.ip}/32", netns=netns)
    return {"netns": netns, "pod": ep.pod, "ip": ep.ip}


def blackhole_off(m: Manifest, data: dict[str, Any], d: Details) -> None:
    sh.ip("route", "del", "blackhole", f"{d['ip']}/32", netns=d["netns"], check=False)


# softirq-load -----------------------------------------------------------------------------------------------


def cpu_mask(cpu: int) -> str:
    """The sysfs bitmap (rps_cpus) of one CPU: hex in comma-separated 32-bit groups, as bitmap_parse reads it."""
    digits = f"{1 << cpu:x}"
    digits = digits.zfill(-(-len(digits) // 8) * 8)
    return ",".join(digits[i:i + 8] for i in range(0, len(digits), 8))


def _rps_path(dev: str) -> str:
    return f"/sys/class/net/{dev}/queues/rx-0/rps_cpus"


def softirq_on(m: Manifest, data: dict[str, Any]) -> Details:
    """A node whose receive CPU is saturated: its underlay RX is steered to one CPU (RPS, as a NIC's IRQ affinity
    would on a real node), every packet walks LOAD_RULES iptables rules there, a CPU hog runs there, and UDP floods
    from the other CPUs arrive across the overlay.

    The receive CPU cannot keep up: the backlog overflows (softnet dropped), NAPI polls exhaust their budget, and
    NET_RX deferred out of net_rx_action waits behind the hog until ksoftirqd or the next tick runs it
    (milliseconds). CPU load alone does not do this: NET_RX raised by a sending task or an interrupt runs inline
    at local_bh_enable or irq exit, and a receive CPU with spare time drains its backlog at once.
    """
    cpus = sorted(os.sched_getaffinity(0))
    receive_cpu = cpus[-1]
    senders = ",".join(str(c) for c in cpus if c != receive_cpu) or str(receive_cpu)
    client = m.clients()[0] if m.clients() else m.pods[0]
    target = _remote_endpoints(m)[0]
    node = m.node(target.node).netns
    steered = len(cpus) > 1  # with one CPU the senders share it: no queue builds up, no deferral
    details: Details = {
        "hog_cpu": receive_cpu, "netns": node, "rules": f"{LOAD_RULES} in raw {LOAD_CHAIN}",
        "rps": f"{node}/{UNDERLAY_DEV} receive steered to CPU {receive_cpu} (RPS)" if steered else "",
        "flood": f"{FLOODS} x {client.name} -> {target.pod} {target.ip}:9/udp from CPU {senders}",
        "seconds": LOAD_SECONDS,
    }
    pids: list[int] = []
    try:
        sh.run(["iptables-restore", "--noflush"], netns=node, stdin=_load_rules())
        if details["rps"]:
            sh.run(["sh", "-c", f"echo {cpu_mask(receive_cpu)} > {_rps_path(UNDERLAY_DEV)}"], netns=node)
        pids.append(processes.python_module("tracer.lab.load", "hog", "--seconds", str(LOAD_SECONDS), "--cpus",
                                            str(receive_cpu), log="softirq-load.log"))
        pids += [processes.python_module("tracer.lab.load", "flood", "--to", f"{target.ip}:9", "--seconds",
                                         str(LOAD_SECONDS), "--cpus", senders, netns=client.netns,
                                         log="softirq-load.log") for _ in range(FLOODS)]
    except LabError:
        processes.stop(pids)
        softirq_off(m, {}, details)  # half a fault is worse than none
        raise
    data.setdefault("processes", {})["fault:softirq-load"] = pids
    return details


def _load_rules() -> str:
    """LOAD_RULES rules that match nothing, walked by every packet the node receives (raw PREROUTING)."""
    rules = [f"-A {LOAD_CHAIN} -s 192.0.2.{i % 254 + 1}/32 -p udp --dport {1024 + i} -j DROP"
             for i in range(LOAD_RULES)]
    return "\n".join(["*raw", f":{LOAD_CHAIN} - [0:0]", f"-I PREROUTING -j {LOAD_CHAIN}", *rules, "COMMIT", ""])


def softirq_off(m: Manifest, data: dict[str, Any], d: Details) -> None:
    processes.stop(data.get("processes", {}).pop("fault:softirq-load", []))
    if not sh.netns_exists(d.get("netns", "")):
        return
    sh.run(["iptables", "-t", "raw", "-D", "PREROUTING", "-j", LOAD_CHAIN], netns=d["netns"], check=False)
    sh.run(["iptables", "-t", "raw", "-F", LOAD_CHAIN], netns=d["netns"], check=False)
    sh.run(["iptables", "-t", "raw", "-X", LOAD_CHAIN], netns=d["netns"], check=False)
    if d.get("rps"):
        sh.run(["sh", "-c", f"echo 0 > {_rps_path(UNDERLAY_DEV)}"], netns=d["netns"], check=False)


FAULTS: dict[str, Fault] = {f.name: f for f in (
    Fault("drop-backend", "iptables DROP in node2's FORWARD chain for one endpoint (web-2's TCP port): about 1/3 of "
          "new connections to each Service it backs (default/web:http, web-nodeport) time out; its UDP port and the "
          "other endpoints are untouched", drop_backend_on, drop_backend_off),
    Fault("mtu-mismatch", "pod veths and cni0 at MTU 1500 over the 1450 VXLAN overlay: DF packets over 1450 "
          "between nodes are dropped (ICMP frag-needed), small ones pass", mtu_on, mtu_off),
    Fault("conntrack-full", "the client node's conntrack table flushed, then filled to nf_conntrack_max: new flows "
          "through that node are dropped (table full), other nodes unaffected", conntrack_on, conntrack_off),
    Fault("no-endpoints", "default/web loses all endpoints: kube-proxy REJECTs its ClusterIP ports (connection "
          "refused); other Services keep working", no_endpoints_on, no_endpoints_off),
    Fault("rp-filter", "strict rp_filter on node2: asymmetric packets are dropped, so NodePort via node2's IP from "
          "node1's pods times out; ClusterIP traffic still works", rp_filter_on, rp_filter_off),
    Fault("blackhole-route", "a blackhole route on the client node for one remote web pod's IP: everything node1 "
          "sends that pod is dropped, so about 1/3 of connections to each web Service time out; NodePorts on node2 "
          "and the other pods are untouched", blackhole_on, blackhole_off),
    Fault("softirq-load", f"node2's receive steered to one CPU (RPS) with a CPU hog and {LOAD_RULES} iptables rules "
          "per packet, UDP floods across the overlay: that CPU's NET_RX waits milliseconds, its backlog drops "
          "packets, many new connections to node2's pods time out; stops after "
          f"{LOAD_SECONDS} s at most",
          softirq_on, softirq_off),
)}


def get(name: str) -> Fault:
    if name not in FAULTS:
        raise LabError(f"unknown fault {name!r}", "faults: " + ", ".join(FAULTS))
    return FAULTS[name]


def set_fault(name: str, enable: bool) -> tuple[bool, Details]:
    """Switch a fault on or off in the running lab; returns (changed, details). Idempotent."""
    fault = get(name)
    data = state.require()
    m = state.manifest_of(data)
    active = data.setdefault("faults", {})
    if enable == (name in active):
        return False, active.get(name, {})
    if enable:
        details = fault.on(m, data)
        active[name] = details
    else:
        details = active.pop(name)
        fault.off(m, data, details)
    state.save(data)
    return True, details


def clear_all() -> list[str]:
    """Switch every active fault off (used by tests; `lab down` removes them with the namespaces)."""
    data = state.load()
    names = sorted(data.get("faults", {})) if data else []
    for name in names:
        set_fault(name, False)
    return names
