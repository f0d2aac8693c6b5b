"""`podtrace drops`: where packets die, grouped by reason, location and flow, each group with its cause."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from tracer.analysis.aggregate import DropTable
from tracer.analysis.identity import ConnIdentities
from tracer.analysis.nfverdict import NfAttribution
from tracer.node import cause_state
from tracer.node.declared_names import declared
from tracer.output.layout import add_wide_option, table_width
from tracer.output.report import Resolver, drop_rows, summary_json, summary_line, write_drop_table
from tracer.sources.session import add_trace_options, run_session

DROPS_EPILOG = """\
exit codes: 0 ok, 1 error, 2 bad usage or filter, 3 drops matched and --fail-on-drops was given

examples:
  sudo podtrace drops --duration 10
  sudo podtrace drops --json 'tcp port 443' | jq 'select(.reason == "NETFILTER_DROP")'
  sudo podtrace drops --netns pt-node1 --fail-on-drops --duration 30 'host 10.96.0.10'
"""

def add_parser(subparsers: argparse._SubParsersAction) -> None:
    drops = subparsers.add_parser(
        "drops", help="where packets die: drops with kernel reason and location",
        description="Trace packet drops and print them grouped by reason, location and flow at exit.",
        epilog=DROPS_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_trace_options(drops, path=False)
    drops.add_argument("--fail-on-drops", action="store_true", help="exit 3 when any drop matched")
    add_wide_option(drops)
    drops.set_defaults(func=run_drops)


def _rule_namespaces(netns: str | None) -> list[str]:
    """Where kube-proxy's rules are read at the start: --netns, else the host (a real node's kube-proxy writes
    there) and the node namespaces the environment declares (the lab's)."""
    if netns:
        return [netns]
    found = declared()
    return ["host", *(node for node in (found.nodes.values() if found else ()) if node != "host")]


class DropGroups:
    """Drops grouped as `podtrace drops` groups them, with each group's cause read from its namespace at the end."""

    def __init__(self, netns: str | None) -> None:
        self.table = DropTable()
        self.verdicts = NfAttribution()  # netfilter table and chain of each drop, on kernels with kprobes
        self.identities = ConnIdentities()  # each drop's conntrack entry, read by the drop probe
        # ICMP counters before the trace: a REJECT's errors rate-limited during it turn "refused" into timeouts.
        self.icmp_before = cause_state.icmp_snapshot([netns] if netns else cause_state.named_namespaces())
        # The traced node's rules now, and again at the end: a rule matched at one end only is not named.
        self.rules_start = cause_state.rules_snapshot(_rule_namespaces(netns))

    def add_raw(self, data: bytes) -> None:
        self.table.add_raw(data)
        self.verdicts.add_raw(data)
        self.identities.add_raw(data)

    def rows(self, names: Resolver) -> list[dict[str, Any]]:
        rows = drop_rows(self.table, names, self.verdicts, self.identities)
        cause_state.add_causes(rows, cause_state.collect(rows, self.icmp_before, rules_start=self.rules_start))
        return rows


def run_drops(args: argparse.Namespace) -> int:
    groups = DropGroups(args.netns)
    source, names, count = run_session(args, path=False, on_raw=groups.add_raw)
    rows = groups.rows(names)
    counters = source.final_counters
    table = groups.table
    if args.json:
        for row in rows:
            sys.stdout.write(json.dumps(row) + "\n")
        sys.stdout.write(json.dumps(summary_json(count, counters, table.evicted)) + "\n")
    else:
        write_drop_table(rows, sys.stdout, table_width(sys.stdout, args.wide))
        sys.stdout.write(summary_line(count, counters, table.evicted) + "\n")
    sys.stdout.flush()
    return 3 if args.fail_on_drops and rows else 0
