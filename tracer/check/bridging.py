"""Bridging and filtering: bridge-nf-call-iptables where a bridge carries pods, ip_forward, rp_filter strictness
on the underlay, overlay and pod-facing interfaces.
"""

from __future__ import annotations

from tracer.check import kubeproxy
from tracer.check.model import Finding, NodeState
from tracer.check.topology import analyse

AREA = "bridging"
MAX_LISTED = 4


def conf_key(iface: str, key: str) -> str:
    """The sysctl name of net.ipv4.conf.<iface>.<key>: dots in interface names become slashes (flannel/1)."""
    return f"net.ipv4.conf.{iface.replace('.', '/')}.{key}"


def effective_rp_filter(state: NodeState, iface: str) -> tuple[int, str]:
    """The kernel applies max(conf.all, conf.<iface>): the value, and which setting made it."""
    def value(name: str) -> int:
        raw = state.ipv4_conf.get(name, {}).get("rp_filter", "0")
        return int(raw) if raw.isdigit() else 0

    own, every = value(iface), value("all")
    if every > own:
        return every, "all"
    return own, iface


def _bridge_nf(state: NodeState, bridges: list[str], proxy: bool) -> list[Finding]:
    out = []
    where = ", ".join(bridges)
    for family, sev_if_off in (("iptables", "fail" if proxy else "warn"), ("ip6tables", "warn")):
        key = f"net.bridge.bridge-nf-call-{family}"
        raw = state.sysctls.get(key)
        if raw is None:
            out.append(Finding(sev_if_off, f"bridge-nf-call-{family}", f"br_netfilter not loaded ({where})",
                               area=AREA, why="pod-to-pod traffic on the bridge skips iptables: Services between "
                                              "pods on the same bridge break",
                               fix=f"modprobe br_netfilter && sysctl -w {key}=1"))
        elif raw.strip() != "1":
            why = ("bridged pod traffic skips kube-proxy's rules: a pod reaching a Service backed by a pod on the "
                   "same bridge gets no DNAT or a reply from the wrong address")
            if family == "ip6tables":
                why = "bridged IPv6 pod traffic skips ip6tables: IPv6 Services between pods on one bridge break"
            out.append(Finding(sev_if_off, f"bridge-nf-call-{family}", f"{raw.strip()} ({where})", area=AREA,
                               why=why, fix=f"sysctl -w {key}=1"))
        else:
            out.append(Finding("ok", f"bridge-nf-call-{family}", f"1 ({where})", area=AREA))
    return out


def _rp_filter(state: NodeState) -> list[Finding]:
    topo = analyse(state)
    roles = [(d, "underlay") for d in topo.underlay] + [(o.name, "overlay") for o in topo.overlays]
    roles += [(b, "pod bridge") for b in topo.pod_bridges]
    out = []
    for iface, role in roles:
        level, source = effective_rp_filter(state, iface)
        value = f"{iface} ({role}) = {level}" + (" (from conf.all)" if source == "all" else "")
        if level == 1:
            keys = [k for k in ("all", iface) if state.ipv4_conf.get(k, {}).get("rp_filter") == "1"]
            out.append(Finding("warn", f"rp_filter {iface}", value, area=AREA,
                               why=f"strict reverse-path filtering on the {role} drops asymmetric packets "
                                   "(pod-sourced traffic arriving where the route back points elsewhere)",
                               fix="sysctl -w " + " ".join(f"{conf_key(k, 'rp_filter')}=2" for k in keys)))
        else:
            out.append(Finding("ok", f"rp_filter {iface}", value, area=AREA))
    strict = [v for v in topo.pod_veths if effective_rp_filter(state, v)[0] == 1]
    if strict:
        shown = ", ".join(strict[:MAX_LISTED]) + (f" and {len(strict) - MAX_LISTED} more"
                                                    if len(strict) > MAX_LISTED else "")
        keys = ["all"] if effective_rp_filter(state, strict[0])[1] == "all" else strict
        out.append(Finding("warn", "rp_filter pod veths", f"{shown} = 1", area=AREA,
                           why="strict reverse-path filtering on pod veths drops pod traffic with asymmetric paths",
                           fix="sysctl -w " + " ".join(f"{conf_key(k, 'rp_filter')}=2" for k in keys)))
    elif topo.pod_veths:
        out.append(Finding("ok", "rp_filter pod veths", f"{len(topo.pod_veths)} veths not strict", area=AREA))
    return out


def check(state: NodeState) -> list[Finding]:
    topo = analyse(state)
    proxy = kubeproxy.has_kube_proxy(state)
    out: list[Finding] = []
    if topo.pod_bridges:
        out += _bridge_nf(state, topo.pod_bridges, proxy)
    forward = state.sysctls.get("net.ipv4.ip_forward", "?").strip()
    if forward == "1":
        out.append(Finding("ok", "ip_forward", "1", area=AREA))
    elif topo.has_pods or proxy:
        pods = f"{len(topo.pod_veths)} pod veths" if topo.has_pods else "kube-proxy rules, no pods seen"
        out.append(Finding("fail" if topo.has_pods else "warn", "ip_forward", f"{forward} ({pods})", area=AREA,
                           why="the node does not route: pod traffic to other nodes and Services is dropped"
                               if topo.has_pods else "kubelet's preflight requires it; pods cannot leave the node",
                           fix="sysctl -w net.ipv4.ip_forward=1"))
    else:
        out.append(Finding("ok", "ip_forward", f"{forward} (no pods, no kube-proxy: not routing is fine)", area=AREA))
    out += _rp_filter(state)
    return out
