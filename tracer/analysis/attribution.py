"""How podtrace knows what it says about a drop: observed (the kernel reported it) or matched (inferred).

One function for every output (drops, watch, report, the TUI's Drops view, pcapng comments), over a drop row of
tracer/report.drop_rows or an event_json object:

- connection ("whose packet"): observed when the drop's own conntrack entry was read (ct_identity "conntrack");
  matched when only the packet's addresses can be compared with Services (no entry, or none traced).
- hook/table ("where"): observed when a verdict kprobe named the table (kernels with kprobes) or the netfilter-link
  bracket placed the drop between two of podtrace's points; unknown otherwise.
- rule: always matched here; a rule number is found by matching the packet against the saved ruleset (flows).
"""

from __future__ import annotations

from typing import Any

OBSERVED = "observed"
MATCHED = "matched"
UNKNOWN = "unknown"


def knowledge(row: dict[str, Any]) -> dict[str, str]:
    """{"connection_known": ..., "hook_known": ...} for one drop row or event object."""
    if row.get("ct_identity") == "conntrack":
        connection = OBSERVED
    elif row.get("src") not in (None, "-"):
        connection = MATCHED  # only its (possibly post-DNAT) addresses say whose it is
    else:
        connection = UNKNOWN
    hook = row.get("hook", "-")
    hook_known = OBSERVED if row.get("table") or (hook and hook != "-") else UNKNOWN
    return {"connection_known": connection, "hook_known": hook_known}
