"""A ruleset that changed during a session: when the rule a drop *matches* is not the same at both ends, say so.

A netfilter drop's rule is matched (tracer/kubeproxy/model.ServiceMap.rule_for_drop) against a ruleset read once,
at the start or at the end of the session. kube-proxy resyncs in between: a Service's endpoints replaced (its
KUBE-SEP chains renamed), a rule inserted or deleted, the chains renumbered. A match against one end is then a
guess about a packet that may have met the other. With both ends read, a drop whose match is the same at both
(the same rule text in the same table and chain: a rule only renumbered is the same rule) is still "matched";
one whose match differs, or whose Service gained or lost its endpoints, has a rule that is not known, and says
why. What the kernel observed (the reason, the hook, the drop's conntrack identity) is not touched. Pure.
"""

from __future__ import annotations

from typing import Any

from tracer.node.kubeproxy.model import DropMatch, Rule, ServiceMap, host_port


def _endpoint(text: object) -> tuple[str, int] | None:
    if not isinstance(text, str) or ":" not in text:
        return None
    addr, _, port = text.rpartition(":")
    return (addr.strip("[]"), int(port)) if port.isdigit() else None


def dialled(row: dict[str, Any]) -> tuple[str, int]:
    """The address the client dialled (the drop's conntrack entry), else the packet's own destination."""
    found = _endpoint(row.get("ct_dialled")) if row.get("ct_dialled") else None
    return found if found is not None else (str(row.get("dst", "")), int(row.get("dport") or 0))


def match(services: ServiceMap, row: dict[str, Any]) -> DropMatch | None:
    """The rule a drop row matches in one ruleset (the match tracer/analysis/causes.py uses)."""
    return services.rule_for_drop(str(row.get("dst", "")), row.get("dport"), str(row.get("proto", "")),
                                  src=row.get("src"), table=row.get("table") or None, vip=dialled(row))


def same_rule(a: Rule | None, b: Rule | None) -> bool:
    """One rule at both ends: its text in its table and chain (its number may have moved: renumbered)."""
    if a is None or b is None:
        return a is b
    return (a.source, a.table, a.chain, a.text) == (b.source, b.table, b.chain, b.text)


def _rule_text(found: DropMatch | None) -> str:
    return f"{found.rule.where()} `{found.rule.text}`" if found is not None else "no DROP/REJECT rule"


def _endpoints_state(services: ServiceMap, row: dict[str, Any]) -> tuple[str, bool] | None:
    vip, port = dialled(row)
    service = services.lookup_vip(vip, port, str(row.get("proto", "")))
    return (service.name, service.no_endpoints) if service is not None else None


def drift(row: dict[str, Any], start: ServiceMap | None, end: ServiceMap | None) -> str:
    """"" when both ends agree on what dropped the row's packets (or one end was not read), else why not known."""
    if start is None or end is None:
        return ""
    before, after = match(start, row), match(end, row)
    changed = not same_rule(before.rule if before else None, after.rule if after else None)
    if not changed and before is not None and after is not None:
        names = (before.service and before.service.name, after.service and after.service.name)
        changed = names[0] != names[1]
    if changed:
        return (f"the ruleset changed during the session: this packet matches {_rule_text(before)} in the rules "
                f"read at the start and {_rule_text(after)} in those read at the end; which one dropped it is not "
                "known")
    ends = _endpoints_state(start, row), _endpoints_state(end, row)
    if ends[0] is not None and ends[1] is not None and ends[0][1] != ends[1][1]:
        vip, port = dialled(row)
        had = "had no endpoints at the start and has some at the end" if ends[0][1] else \
            "had endpoints at the start and none at the end"
        return (f"the ruleset changed during the session: Service {ends[1][0]} ({host_port(vip, port)}) {had}; "
                "what dropped this packet is not known")
    return ""
