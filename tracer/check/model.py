"""What a node check reports (Finding) and what it reads (NodeState): plain data, no IO.

Every check family takes a NodeState and returns Findings, so the unit tests feed recorded inputs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

SEVERITIES = ("ok", "warn", "fail")

# The order areas are shown in, and the check families that produce them.
AREAS = ("kube-proxy", "rules", "routes", "conntrack", "mtu", "bridging", "softirq", "sockets")


@dataclass(frozen=True)
class Finding:
    """One verdict: severity ok|warn|fail, the check's name, the measured value, why it matters, the fix."""

    severity: str
    check: str
    value: str
    why: str = ""
    fix: str = ""
    area: str = ""

    def __post_init__(self) -> None:
        if self.severity not in SEVERITIES:
            raise ValueError(f"severity must be one of {SEVERITIES}, not {self.severity!r}")

    def to_json(self) -> dict[str, Any]:
        return {"area": self.area, "check": self.check, "severity": self.severity, "value": self.value,
                "why": self.why, "fix": self.fix}


def summary(findings: list[Finding]) -> dict[str, Any]:
    counts = {sev: sum(1 for f in findings if f.severity == sev) for sev in SEVERITIES}
    return {"summary": True, **counts}


@dataclass
class NodeState:
    """Everything the checks read, as text or parsed JSON exactly as the tools print it.

    A source that could not be read is None, with the reason in `errors[source]`.
    """

    netns: str | None = None
    # Per-netns scalar sysctls, dotted names ("net.ipv4.ip_forward" -> "1"); absent when the key does not exist.
    sysctls: dict[str, str] = field(default_factory=dict)
    # net.ipv4.conf.<iface>.<key>, by interface name as the kernel spells it (dots kept: "flannel.1").
    ipv4_conf: dict[str, dict[str, str]] = field(default_factory=dict)
    links: list[dict[str, Any]] = field(default_factory=list)  # `ip -d -j link`
    default_routes: list[dict[str, Any]] = field(default_factory=list)  # `ip -j route show default`
    # `ip -j route show table all` without local/broadcast/multicast routes: pod subnets and special routes
    routes: list[dict[str, Any]] = field(default_factory=list)
    rps: dict[str, str] = field(default_factory=dict)  # "eth0/rx-0" -> /sys/class/net/eth0/queues/rx-0/rps_cpus
    irq_affinity: dict[str, str] = field(default_factory=dict)  # "eth0-TxRx-0" (/proc/interrupts) -> its mask
    cpus: int = 0
    # Links of other named namespaces holding this node's veth peers: netnsid (as seen here) -> (name, links).
    peer_links: dict[int, tuple[str, list[dict[str, Any]]]] = field(default_factory=dict)
    iptables_save: str | None = None
    ip6tables_save: str | None = None  # IPv6 Services (single-stack v6, the v6 half of dual-stack)
    nft_ruleset: dict[str, Any] | None = None  # `nft -j list ruleset`
    ipvsadm: str | None = None  # `ipvsadm -Ln`; None when IPVS is not loaded (no /proc/net/ip_vs)
    modules: list[str] = field(default_factory=list)  # loaded and built-in kernel modules
    conntrack_stat: str | None = None  # /proc/net/stat/nf_conntrack, or `conntrack -S` output
    sockstat: str | None = None  # /proc/net/sockstat
    flannel_env: str | None = None  # /run/flannel/subnet.env
    softnet_before: str | None = None  # /proc/net/softnet_stat at the start of the window
    softnet_after: str | None = None
    stat_before: str | None = None  # /proc/stat
    stat_after: str | None = None
    window: float = 1.0
    errors: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {k: (dict(v) if k == "peer_links" else v) for k, v in self.__dict__.items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NodeState:
        data = dict(data)
        data["peer_links"] = {int(k): (v[0], v[1]) for k, v in data.get("peer_links", {}).items()}
        return cls(**data)
