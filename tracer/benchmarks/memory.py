"""Memory: RSS of a process holding a DropTable of 100k distinct flows, and a bounded table under 200k flows."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable

from tracer.benchmarks.netns import python_module
from tracer.benchmarks.stats import Section, fmt_bytes

BOUND = 100_000


def _measure(flows: int, bound: int, decoded: bool) -> dict[str, int]:
    args = ["--flows", str(flows), "--max-groups", str(bound)] + (["--decoded"] if decoded else [])
    proc = subprocess.run(python_module("tracer.benchmarks.table_rss", *args), capture_output=True, text=True,
                          timeout=600, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"table_rss failed: {proc.stderr.strip()[-300:]}")
    return dict(json.loads(proc.stdout.splitlines()[-1]))


def run(quick: bool, log: Callable[[str], None]) -> Section:
    scale = 10 if quick else 1
    bound = BOUND // scale
    section = Section(
        "Memory",
        f"RSS of a child process before and after adding one drop event per distinct flow to a "
        f"`DropTable(max_groups={bound:,})`: the raw fast path (`add_raw`, what `podtrace drops` uses) and decoded "
        f"rows (`add`). Tables are bounded: past `max_groups` the oldest group is evicted and counted.",
        ["path", "distinct flows", "groups kept", "evicted", "process RSS", "table growth", "per group"],
    )
    for decoded in (False, True):
        for flows in (bound, 2 * bound):
            log(f"memory: {flows} flows into a {bound}-bounded table ({'decoded' if decoded else 'raw'})")
            m = _measure(flows, bound, decoded)
            growth = m["after"] - m["before"]
            section.rows.append([
                "add (decoded)" if decoded else "add_raw", f"{flows:,}", f"{m['groups']:,}", f"{m['evicted']:,}",
                fmt_bytes(m["after"]), fmt_bytes(growth), f"{growth / max(m['groups'], 1):,.0f} B"])
    section.notes.append("With twice the bound in distinct flows the table stays at the bound and RSS does not "
                         "double: what it dropped is counted in `evicted` (shown in the CLI summary).")
    return section
