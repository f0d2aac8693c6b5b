"""Why a packet died, in words, with a one-line fix: the drop's own facts plus what the node said about itself.

Pure: a drop row (tracer/report.drop_rows) and the NetnsState of the namespace it died in (tracer/node/cause_state.py
reads it) in, a Cause out. The kernel's drop reason and location say *what* failed (no route, reverse path,
netfilter, backlog, ...); the node state says *which* route, sysctl, rule, Service or CPU made it fail. When the
state needed is missing the cause says what is not known; when nothing explains the drop it is "unknown".

`known` says how: "observed" when the kernel's reason names the failure and the node's own answer (the FIB, a
sysctl, a counter) names the culprit; "matched" when the culprit is a rule found by matching the packet's fields
against the saved ruleset; "unknown" when podtrace cannot say.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from tracer.node.kubeproxy.model import NFT_TABLE, Rule, ServiceMap, ServicePort, host_port
from tracer.node.kubeproxy.names import service_name_from_comment

if TYPE_CHECKING:  # conntrack reads netlink: a cause needs only its type
    from tracer.node.conntrack import Health

OBSERVED, MATCHED, UNKNOWN = "observed", "matched", "unknown"
SPECIAL_ROUTES = ("blackhole", "unreachable", "prohibit")
# What `ip route get` answers for each kind of route that refuses a destination (the kernel's errno).
ROUTE_ERRORS = {"Invalid argument": "blackhole", "No route to host": "unreachable", "Permission denied": "prohibit",
                "Network is unreachable": "no route"}
ROUTE_REASONS = ("IP_INNOROUTES", "IP_OUTNOROUTES", "IP_INADDRERRORS", "IP_OUTADDRERRORS")
ROUTE_FUNCTIONS = ("ip_error", "ip6_pkt_discard", "ip6_pkt_prohibit", "ip6_pkt_blackhole", "dst_discard")
MTU_REASONS = ("PKT_TOO_BIG", "FRAG_REASM_TIMEOUT", "FRAG_TOO_FAR", "IP_FRAG_TOO_FAR")
RCVBUF_REASONS = ("SOCKET_RCVBUFF", "PROTO_MEM", "SOCKET_BACKLOG", "TCP_OFOMERGE")
NETFILTER_REASONS = ("NETFILTER_DROP", "NETFILTER_REJECT")
ICMP_RATELIMIT = ("OutRateLimitHost", "OutRateLimitGlobal")


@dataclass(frozen=True)
class Cause:
    kind: str  # route, rp_filter, no-endpoints, conntrack-full, mtu, rcvbuf, backlog, rule, kube-proxy, ...
    text: str
    fix: str = ""
    known: str = OBSERVED
    state: str = ""  # where the node state behind it came from, when not read live ("recorded at the end of ...")

    def to_json(self) -> dict[str, str]:
        data = {"kind": self.kind, "text": self.text, "fix": self.fix, "known": self.known}
        if self.state:
            data["state"] = self.state
        return data

    def how(self) -> str:
        """" (observed)", " (matched; rules recorded at the start of the recording)", or "" when unknown."""
        return "" if self.known == UNKNOWN else f" ({self.known}; {self.state})" if self.state else f" ({self.known})"

    def lines(self) -> list[str]:
        """Text output: what and how it is known, then the fix."""
        return [f"cause: {self.text}{self.how()}"] + ([f"fix: {self.fix}"] if self.fix else [])


UNKNOWN_CAUSE = Cause("unknown", "unknown", "", UNKNOWN)


@dataclass
class RouteAnswer:
    """What the namespace's FIB says about one destination: `ip route get` and the route that matched it."""

    dst: str
    error: str = ""  # the kernel's answer when the lookup fails ("Invalid argument" for a blackhole), else ""
    dev: str = ""  # the output device when it succeeds
    route: dict[str, Any] | None = None  # the most specific route covering dst (`ip -j route show table all match`)

    def special(self) -> str:
        """"blackhole"/"unreachable"/"prohibit", "no route", "error" (an answer not known here), or "" when the
        FIB routes it."""
        kind = str((self.route or {}).get("type", ""))
        if kind in SPECIAL_ROUTES:
            return kind
        return ROUTE_ERRORS.get(self.error, "error" if self.error else "")


@dataclass
class NetnsState:
    """What the causes read from one namespace; a source that could not be read is empty/None with an error."""

    netns: str
    rp_filter: dict[str, int] = field(default_factory=dict)  # interface (and "all") -> net.ipv4.conf.X.rp_filter
    icmp_before: dict[str, int] | None = None  # the Icmp: line of /proc/net/snmp at the start of the session
    icmp_after: dict[str, int] | None = None
    routes: dict[str, RouteAnswer] = field(default_factory=dict)
    rps: dict[str, list[int]] = field(default_factory=dict)  # device -> CPUs its receive is steered to (RPS)
    irqs: dict[str, list[int]] = field(default_factory=dict)  # device -> CPUs its IRQs are delivered to
    mtus: dict[str, int] = field(default_factory=dict)
    sysctls: dict[str, int] = field(default_factory=dict)  # net.core.netdev_max_backlog, net.core.rmem_max, ...
    conntrack: Health | None = None
    services: ServiceMap | None = None
    cpus: int = 0
    # source ("routes", "rp_filter", "rules", "conntrack", "rps", "icmp") -> why it is not known
    errors: dict[str, str] = field(default_factory=dict)
    # from a recording (tracer/sources/replay.py), not read live: the causes say when it was read
    recorded: bool = False

    def icmp_delta(self) -> dict[str, int]:
        if self.icmp_before is None or self.icmp_after is None:
            return {}
        return {k: self.icmp_after.get(k, 0) - self.icmp_before.get(k, 0) for k in ICMP_RATELIMIT
                if k in self.icmp_after}


def _function(location: str) -> str:
    return (location or "").split("+", 1)[0].strip()


def _endpoint(text: object) -> tuple[str, int] | None:
    if not isinstance(text, str) or ":" not in text:
        return None
    addr, _, port = text.rpartition(":")
    return addr.strip("[]"), int(port)


def cpus_text(cpus: list[int]) -> str:
    return "CPU " + ",".join(str(c) for c in cpus) if len(cpus) < 2 else "CPUs " + ",".join(str(c) for c in cpus)


def parse_cpu_mask(text: str) -> list[int]:
    """A sysfs CPU bitmap ("00000002", "ff,ffffffff") as CPU numbers; [] for 0 (not steered)."""
    value = int(text.strip().replace(",", "") or "0", 16)
    return [cpu for cpu in range(value.bit_length()) if value >> cpu & 1]


def mask_for(cpus: int) -> str:
    """The rps_cpus mask of every CPU."""
    return f"{(1 << max(cpus, 1)) - 1:x}"


# When a recording read what a cause's culprit comes from (docs/recording-format.md): the routes, sysctls, RPS
# masks and MTUs at its end (the trailer), kube-proxy's rules at its start (the header), the ICMP counters at both.
RECORDED_END = "node state recorded at the end of the recording"
RECORDED_RULES = "rules recorded at the start of the recording"
RECORDED_AT_END = ("route", "rp_filter", "backlog", "mtu", "rcvbuf")
RECORDED_AT_START = ("no-endpoints", "rule", "kube-proxy")


def explain(row: dict[str, Any], state: NetnsState | None) -> Cause:
    """The cause of one drop group, or UNKNOWN_CAUSE; from a recording's state it says when that was read."""
    cause = _explain(row, state)
    if state is None or not state.recorded or cause.known == UNKNOWN:
        return cause
    if cause.kind in RECORDED_AT_END:
        return replace(cause, state=RECORDED_END)
    if cause.kind in RECORDED_AT_START:
        icmp = cause.kind == "no-endpoints" and state.icmp_before is not None and state.icmp_after is not None
        return replace(cause, state=RECORDED_RULES + (", ICMP counters at its start and its end" if icmp else ""))
    return cause


def _explain(row: dict[str, Any], state: NetnsState | None) -> Cause:
    reason = str(row.get("reason", "")).removeprefix("SKB_DROP_REASON_")
    function = _function(str(row.get("location", "")))
    if reason == "IP_RPFILTER":
        return _rp_filter(row, state)
    if reason in ROUTE_REASONS or function.startswith(ROUTE_FUNCTIONS):
        return _route(row, state)
    if reason in NETFILTER_REASONS:
        return _netfilter(row, state)
    if reason in MTU_REASONS:
        return _mtu(row, state)
    if reason in RCVBUF_REASONS:
        return _rcvbuf(row, state)
    if reason == "CPU_BACKLOG" or function == "enqueue_to_backlog":
        return _backlog(row, state)
    if reason == "NO_SOCKET" and row.get("proto") in ("tcp", "udp", "sctp"):
        return Cause("no-socket", f"nothing listens on {row.get('dst')}:{row.get('dport')} ({row.get('proto')}) in "
                     f"{row.get('netns')}", "start the server, or check the Service's targetPort", OBSERVED)
    return UNKNOWN_CAUSE


def _not_read(kind: str, what: str, state: NetnsState | None, source: str) -> Cause:
    why = state.errors.get(source, "not read") if state is not None else "node state not available"
    return Cause(kind, f"{what}; which one is not known ({why})", "", UNKNOWN)


# ---- routes ----------------------------------------------------------------------------------------------------


def _route(row: dict[str, Any], state: NetnsState | None) -> Cause:
    dst, netns = str(row.get("dst", "")), row.get("netns", "?")
    answer = state.routes.get(dst) if state is not None else None
    if answer is None:
        return _not_read("route", f"route lookup failed for {dst} in {netns}", state, "routes")
    kind = answer.special()
    route = answer.route or {}
    if kind in SPECIAL_ROUTES:
        prefix = str(route.get("dst", dst))
        prefix = prefix if "/" in prefix or prefix == "default" else f"{prefix}/32"
        table = f" table {route['table']}" if route.get("table") not in (None, "main") else ""
        return Cause("route", f"route lookup: `{kind} {prefix}`{table} in {netns} refuses {dst}",
                     f"ip -n {netns} route del {kind} {prefix}{table}  # if nobody meant it", OBSERVED)
    if kind == "no route":
        return Cause("route", f"route lookup: no route to {dst} in {netns} ({answer.error})",
                     f"ip -n {netns} route add {dst} via <gateway>  # or fix the CNI's routes", OBSERVED)
    if kind == "error":
        return Cause("route", f"route lookup failed for {dst} in {netns}; `ip route get` says: {answer.error}", "",
                     UNKNOWN)
    return Cause("route", f"route lookup failed for {dst} in {netns}, but the FIB routes it now (dev "
                 f"{answer.dev or '?'}): the route changed during the session?", "", UNKNOWN)


def _rp_filter(row: dict[str, Any], state: NetnsState | None) -> Cause:
    iface, netns, src = str(row.get("ifname", "-")), row.get("netns", "?"), str(row.get("src", ""))
    if state is None or not state.rp_filter:
        return _not_read("rp_filter", f"reverse-path filter on {netns}/{iface}", state, "rp_filter")
    all_value, own = state.rp_filter.get("all"), state.rp_filter.get(iface)
    effective = max(v for v in (all_value, own) if v is not None) if (all_value, own) != (None, None) else None
    mode = {0: "off", 1: "strict", 2: "loose"}.get(effective or 0, str(effective))
    back = state.routes.get(src)
    via = f"; replies to {src} would leave by {back.dev}" if back is not None and back.dev and back.dev != iface \
        else ""
    key = "all" if (all_value or 0) >= (own or 0) else iface
    return Cause("rp_filter", f"reverse-path filter: rp_filter={effective} ({mode}) on {netns}/{iface} "
                 f"(all={all_value}, {iface}={own}) dropped a packet from {src}{via}",
                 f"ip netns exec {netns} sysctl -w net.ipv4.conf.{key}.rp_filter=2  # loose; or make the path "
                 "symmetric", OBSERVED)


# ---- netfilter -------------------------------------------------------------------------------------------------


def kube_proxy_rule(rule: Rule) -> bool:
    """A rule kube-proxy wrote: its KUBE-* chains, its nftables table, or its comment naming a Service."""
    return rule.chain.startswith("KUBE-") or rule.table.endswith(" " + NFT_TABLE) or \
        bool(service_name_from_comment(rule.comment))


def delete_command(rule: Rule, netns: str) -> str:
    prefix = f"ip netns exec {netns} " if netns not in ("host", "?") else ""
    if rule.source == "nftables":
        return f"{prefix}nft delete rule {rule.table} {rule.chain} handle {rule.position}"
    return f"{prefix}iptables -t {rule.table} -D {rule.chain} {rule.position}"


def _dialled(row: dict[str, Any]) -> tuple[str, int]:
    found = _endpoint(row.get("ct_dialled")) if row.get("ct_dnat") or row.get("ct_dialled") else None
    return found if found is not None else (str(row.get("dst", "")), int(row.get("dport") or 0))


def _ratelimited(state: NetnsState) -> str:
    if "icmp" in state.errors:
        return f"; whether its ICMP errors were rate-limited is not known ({state.errors['icmp']})"
    delta = {k: v for k, v in state.icmp_delta().items() if v > 0}
    if not delta:
        return ""
    counts = ", ".join(f"Icmp{k} +{v}" for k, v in delta.items())
    return (f"; {sum(delta.values())} ICMP errors were rate-limited in {state.netns} during the session ({counts}): "
            "those clients saw timeouts, not 'connection refused'")


def _netfilter(row: dict[str, Any], state: NetnsState | None) -> Cause:
    netns = str(row.get("netns", "?"))
    if state is None:
        return _not_read("netfilter", "a netfilter rule or conntrack dropped it", None, "")
    services = state.services
    proto, dst, dport, src = str(row.get("proto", "")), str(row.get("dst", "")), row.get("dport"), row.get("src")
    vip = _dialled(row)
    # The table a verdict kprobe saw narrows the match; its chain is the base chain, not the one with the rule.
    match = services.rule_for_drop(dst, dport, proto, src=src, table=row.get("table") or None,
                                   vip=vip) if services is not None else None
    table = state.conntrack
    before_conntrack = str(row.get("hook", "")).endswith("before conntrack")
    if table is not None and table.full and (match is None or before_conntrack):
        return Cause("conntrack-full", f"conntrack table full in {netns} ({table.count}/{table.max}): new "
                     "connections are dropped before NAT",
                     f"ip netns exec {netns} sysctl -w net.netfilter.nf_conntrack_max={table.max * 2}"
                     if netns != "host" else f"sysctl -w net.netfilter.nf_conntrack_max={table.max * 2}", OBSERVED)
    if services is None:  # conntrack too, when its table is not known either
        what = "a netfilter rule dropped it" if table is not None else "a netfilter rule or conntrack dropped it"
        return _not_read("netfilter", what, state, "rules")
    service = services.lookup_vip(vip[0], vip[1], proto) or (match.service if match else None)
    if service is not None and (service.no_endpoints or (match and match.rule.comment.endswith("has no endpoints"))):
        return _no_endpoints(service, match.rule if match else None, state)
    if match is None:
        return Cause("netfilter", f"netfilter dropped it in {netns}, and no DROP/REJECT rule in the ruleset read at "
                     "the end matches the packet (the rules changed during the session?)", "", UNKNOWN)
    rule = match.rule
    if not kube_proxy_rule(rule):
        return Cause("rule", f"a {rule.verdict} rule not written by kube-proxy: {rule.where()} `{rule.text}`",
                     delete_command(rule, netns) + "  # after asking who added it", MATCHED)
    return Cause("kube-proxy", f"kube-proxy's {rule.verdict} rule {rule.where()}"
                 + (f" ({rule.comment})" if rule.comment else ""), "", MATCHED)


def _no_endpoints(service: ServicePort, rule: Rule | None, state: NetnsState) -> Cause:
    ns, _, name = service.service.partition("/")
    by = f" ({rule.where()})" if rule is not None else ""
    return Cause("no-endpoints", f"Service {service.name} has no endpoints: kube-proxy rejects its VIP "
                 f"{host_port(service.vip, service.port)}/{service.proto}{by}{_ratelimited(state)}",
                 f"kubectl -n {ns} get endpointslices -l kubernetes.io/service-name={name}  # pods ready? selector "
                 "right?", MATCHED)


# ---- MTU, sockets, backlog -------------------------------------------------------------------------------------


def _mtu(row: dict[str, Any], state: NetnsState | None) -> Cause:
    dst, netns = str(row.get("dst", "")), row.get("netns", "?")
    size = int(row.get("bytes", 0)) // max(int(row.get("count", 1)), 1)
    answer = state.routes.get(dst) if state is not None else None
    dev = answer.dev if answer is not None else ""
    mtu = state.mtus.get(dev) if state is not None and dev else None
    if mtu is None:
        return Cause("mtu", f"packets of ~{size} bytes to {dst} are larger than the path MTU (next hop not read)",
                     "set the pod MTU to the overlay's (1450 for VXLAN on a 1500 underlay)", OBSERVED)
    return Cause("mtu", f"packets of ~{size} bytes to {dst} are larger than {netns}/{dev}'s MTU {mtu} (DF set: "
                 "ICMP frag-needed goes back; NAT or a firewall may eat it)",
                 f"set the pod MTU to {mtu} or less (the CNI's MTU setting; 1450 for VXLAN on a 1500 underlay)",
                 OBSERVED)


def _rcvbuf(row: dict[str, Any], state: NetnsState | None) -> Cause:
    rmem = state.sysctls.get("net.core.rmem_max") if state is not None else None
    limit = f" (net.core.rmem_max {rmem})" if rmem is not None else ""
    return Cause("rcvbuf", f"socket receive buffer full at {row.get('dst')}:{row.get('dport')}: the application "
                 "reads more slowly than packets arrive",
                 f"read faster, or raise SO_RCVBUF and net.core.rmem_max{limit}", OBSERVED)


def _backlog(row: dict[str, Any], state: NetnsState | None) -> Cause:
    netns, iface, cpu = row.get("netns", "?"), str(row.get("ifname", "-")), row.get("last_cpu")
    # The drop's CPU is the one that enqueued (RPS enqueues onto another CPU's backlog), not whose backlog was full.
    seen = f", dropped on CPU {cpu}" if cpu is not None else ""
    limit = state.sysctls.get("net.core.netdev_max_backlog") if state is not None else None
    text = f"the input backlog was full (netdev_max_backlog {limit if limit is not None else '?'}{seen})"
    if state is None or "rps" in state.errors:
        return _not_read("backlog", text + ": receive steering", state, "rps")
    cpus = state.cpus
    steered = [(dev, got, "RPS") for dev, got in state.rps.items() if got and len(got) == 1 and cpus > 1]
    steered += [(dev, got, "IRQ affinity") for dev, got in state.irqs.items() if got and len(got) == 1 and cpus > 1]
    steered.sort(key=lambda item: item[0] != iface)  # the drop's own device first
    if steered:
        dev, got, how = steered[0]
        fix = (f"echo {mask_for(cpus)} > /sys/class/net/{dev}/queues/rx-0/rps_cpus" if how == "RPS" else
               f"spread {dev}'s IRQs: echo {mask_for(cpus)} > /proc/irq/<n>/smp_affinity (or run irqbalance)")
        prefix = f"ip netns exec {netns} sh -c '" if how == "RPS" and netns != "host" else ""
        return Cause("backlog", f"{text}: {how} sends all of {netns}/{dev}'s receive to {cpus_text(got)} of {cpus}, "
                     "whose backlog overflows",
                     prefix + fix + ("'" if prefix else "") + "  # all CPUs", OBSERVED)
    return Cause("backlog", f"{text}; receive is not steered to one CPU (RPS and IRQ affinity read)",
                 f"sysctl -w net.core.netdev_max_backlog={(limit or 1000) * 2}  # and find what keeps that CPU busy",
                 OBSERVED)

