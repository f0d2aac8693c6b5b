"""conntrack: table fill (nf_conntrack_count vs nf_conntrack_max) and the per-CPU statistics counters.

Every NATed flow needs an entry; at the max new flows are dropped ("nf_conntrack: table full, dropping packet").
insert_failed grows with clashing inserts (parallel A/AAAA DNS queries over UDP: 5 s DNS timeouts).
"""

from __future__ import annotations

from tracer.check.model import Finding, NodeState

AREA = "conntrack"
WARN_PERCENT = 75.0
FAIL_PERCENT = 90.0
COUNTERS = ("insert_failed", "drop", "early_drop")


def parse_stats(text: str) -> dict[str, int]:
    """Sum the per-CPU counters of /proc/net/stat/nf_conntrack (hex columns) or `conntrack -S` (key=value)."""
    totals: dict[str, int] = {}
    lines = [line for line in text.splitlines() if line.strip()]
    if lines and lines[0].split()[0] == "entries":
        header = lines[0].split()
        for line in lines[1:]:
            for key, raw in zip(header, line.split()):
                if key != "entries":  # the table size, repeated on every CPU's line
                    totals[key] = totals.get(key, 0) + int(raw, 16)
        return totals
    for line in lines:
        for token in line.split():
            key, sep, raw = token.partition("=")
            if sep and key != "cpu" and raw.isdigit():
                totals[key] = totals.get(key, 0) + int(raw)
    return totals


def _table_finding(count: int, limit: int, buckets: int | None) -> Finding:
    percent = 100.0 * count / limit if limit else 100.0
    value = f"{count}/{limit} entries ({percent:.0f}% full)"
    bigger = max(limit * 2, 262144)
    fix = f"sysctl -w net.netfilter.nf_conntrack_max={bigger}"
    if buckets:
        fix += f"  # and nf_conntrack_buckets={bigger // 4} (hashsize)"
    if count >= limit or percent >= FAIL_PERCENT:
        severity = "fail"
        why = ("the table is full: new flows are dropped (nf_conntrack: table full), random loss under load"
               if count >= limit else f"over {FAIL_PERCENT:.0f}% full: a burst of new flows will hit the limit and "
               "be dropped")
    elif percent >= WARN_PERCENT:
        severity, why = "warn", f"over {WARN_PERCENT:.0f}% full: little headroom before new flows are dropped"
    else:
        severity, why, fix = "ok", f"warns at {WARN_PERCENT:.0f}%, fails at {FAIL_PERCENT:.0f}%", ""
    return Finding(severity, "table", value, why=why, fix=fix, area=AREA)


def check(state: NodeState) -> list[Finding]:
    count, limit = state.sysctls.get("net.netfilter.nf_conntrack_count"), state.sysctls.get(
        "net.netfilter.nf_conntrack_max")
    if count is None or limit is None:
        return [Finding("ok", "table", "nf_conntrack not loaded", area=AREA,
                        why="no conntrack in this namespace: nothing is NATed here (kube-proxy would load it)")]
    buckets = state.sysctls.get("net.netfilter.nf_conntrack_buckets")
    out = [_table_finding(int(count), int(limit), int(buckets) if buckets else None)]
    stats = parse_stats(state.conntrack_stat) if state.conntrack_stat else {}
    if not stats:
        out.append(Finding("warn", "counters", "unreadable", area=AREA,
                           why="no /proc/net/stat/nf_conntrack and no `conntrack -S`",
                           fix="apt install conntrack  # then: conntrack -S"))
        return out
    value = " ".join(f"{k}={stats.get(k, 0)}" for k in COUNTERS)
    since = "since the table was created (boot, or the namespace's creation)"
    if stats.get("drop", 0) or stats.get("early_drop", 0):
        out.append(Finding("warn", "counters", value, area=AREA,
                           why=f"new flows were dropped or evicted because the table was full, {since}",
                           fix=f"sysctl -w net.netfilter.nf_conntrack_max={max(int(limit) * 2, 262144)}"))
    elif stats.get("insert_failed", 0):
        out.append(Finding("warn", "counters", value, area=AREA,
                           why=f"clashing inserts {since}: typical of parallel A/AAAA DNS over UDP (5 s timeouts)",
                           fix="add `options single-request-reopen` to pods' resolv.conf (dnsConfig) or use "
                               "NodeLocal DNSCache"))
    else:
        out.append(Finding("ok", "counters", value, area=AREA))
    return out
