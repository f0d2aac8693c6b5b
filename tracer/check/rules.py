"""Rules that drop pod or Service traffic: DROP/REJECT rules kube-proxy did not write that match pod or Service
addresses, and Services kube-proxy REJECTs because they have no endpoints.

A foreign rule is judged by its address matches only (a rule without addresses is not claimed to hit pods).
"""

from __future__ import annotations

from tracer.analysis.causes import delete_command, kube_proxy_rule
from tracer.check.model import Finding, NodeState
from tracer.check.ranges import node_ranges, service_map

AREA = "rules"
SHOWN = 3  # rules named in one finding's value


def check(state: NodeState) -> list[Finding]:
    if state.iptables_save is None and state.nft_ruleset is None:
        return []  # the kube-proxy family already says the rules could not be read
    services = service_map(state)
    ranges = node_ranges(state, services)
    netns = state.netns or "host"
    foreign = []
    for rule in services.rules:
        if rule.drops and not kube_proxy_rule(rule) and not (rule.match.dst_neg and rule.match.src_neg):
            hit = ranges.hit(() if rule.match.dst_neg else rule.match.dst) or \
                ranges.hit(() if rule.match.src_neg else rule.match.src)
            if hit:
                foreign.append((rule, hit))
    out = []
    if foreign:
        rule, hit = foreign[0]
        named = "; ".join(f"{r.where()} `{r.text}` hits {h}" for r, h in foreign[:SHOWN])
        more = f" (+{len(foreign) - SHOWN} more)" if len(foreign) > SHOWN else ""
        out.append(Finding("fail", "foreign drop rules", f"{len(foreign)}: {named}{more}", area=AREA,
                           why="a DROP/REJECT rule kube-proxy did not write drops pod or Service traffic: "
                               "connections to those addresses time out or are refused",
                           fix=delete_command(rule, netns) + "  # after asking who added it"))
    else:
        out.append(Finding("ok", "foreign drop rules", "none on pod or Service addresses", area=AREA))
    empty = sorted({port.name for port in services.no_endpoint_services if port.name})
    if empty:
        ns, _, name = empty[0].split(":", 1)[0].partition("/")
        out.append(Finding("warn", "no endpoints", ", ".join(empty), area=AREA,
                           why="kube-proxy REJECTs their VIPs: clients get 'connection refused' (or time out when "
                               "the ICMP errors are rate-limited)",
                           fix=f"kubectl -n {ns} get endpointslices -l kubernetes.io/service-name={name}  "
                               "# pods ready? selector right?"))
    else:
        out.append(Finding("ok", "no endpoints", "none", area=AREA))
    return out
