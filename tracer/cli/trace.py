"""`podtrace drops` (where packets die, as a table) and `podtrace watch` (events as they happen)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from tracer.analysis.aggregate import DropTable
from tracer.analysis.identity import ConnIdentities
from tracer.analysis.nfverdict import NfAttribution
from tracer.events.decode import PacketEvent
from tracer.node import cause_state
from tracer.output.layout import add_wide_option, table_width
from tracer.output.report import (
    Resolver,
    drop_rows,
    event_json,
    event_line,
    summary_json,
    summary_line,
    write_drop_table,
)
from tracer.output.stdout import write_whole
from tracer.sources.session import add_trace_options, run_session

DROPS_EPILOG = """\
exit codes: 0 ok, 1 error, 2 bad usage or filter, 3 drops matched and --fail-on-drops was given

examples:
  sudo podtrace drops --duration 10
  sudo podtrace drops --json 'tcp port 443' | jq 'select(.reason == "NETFILTER_DROP")'
  sudo podtrace drops --netns pt-node1 --fail-on-drops --duration 30 'host 10.96.0.10'
"""

WATCH_EPILOG = """\
Drops are always shown; path events (device receive and queue) only for packets matching FILTER,
capped per CPU per second. At the end, the drops seen are grouped with their causes as `podtrace drops`
prints them (on stderr; with --json, "kind": "drop_group" objects before the summary).

examples:
  sudo podtrace watch 'icmp'
  sudo podtrace watch --json --netns pt-client 'udp port 53'
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

    watch = subparsers.add_parser(
        "watch", help="stream drop and packet path events as they happen",
        description="Print drop events, and path events for packets matching FILTER, one line each.",
        epilog=WATCH_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_trace_options(watch)
    watch.set_defaults(func=run_watch)


class _DropGroups:
    """Drops grouped as `podtrace drops` groups them, with each group's cause read from its namespace at the end."""

    def __init__(self, netns: str | None) -> None:
        self.table = DropTable()
        self.verdicts = NfAttribution()  # netfilter table and chain of each drop, on kernels with kprobes
        self.identities = ConnIdentities()  # each drop's conntrack entry, read by the drop probe
        # ICMP counters before the trace: a REJECT's errors rate-limited during it turn "refused" into timeouts.
        self.icmp_before = cause_state.icmp_snapshot([netns] if netns else cause_state.named_namespaces())

    def add_raw(self, data: bytes) -> None:
        self.table.add_raw(data)
        self.verdicts.add_raw(data)
        self.identities.add_raw(data)

    def rows(self, names: Resolver) -> list[dict[str, Any]]:
        rows = drop_rows(self.table, names, self.verdicts, self.identities)
        cause_state.add_causes(rows, cause_state.collect(rows, self.icmp_before))
        return rows


def run_drops(args: argparse.Namespace) -> int:
    groups = _DropGroups(args.netns)
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


def run_watch(args: argparse.Namespace) -> int:
    # Fed before on_event sees the drop its conntrack event precedes; at the end the drops seen are grouped with
    # their causes (what the lines alone do not say: why), as `podtrace drops` prints them.
    groups = _DropGroups(args.netns)
    identities = groups.identities
    # Lines are written once per poll (at most 100 ms apart), not flushed one by one: a flush per line was
    # most of watch's cost and it fell behind the ring buffer at ~76k path events/s.
    pending: list[str] = []

    def on_event(event: PacketEvent, names: Resolver) -> None:
        identity = identities.for_drop(event) if event.is_drop else None
        pending.append(json.dumps(event_json(event, names, identity)) if args.json
                       else event_line(event, names, identity))

    def on_tick(_source: object) -> None:
        if pending:
            write_whole("\n".join(pending) + "\n")  # a signal mid-write must not cut a line
            pending.clear()

    source, names, count = run_session(args, path=bool(args.filter), on_event=on_event, on_tick=on_tick,
                                       on_raw=groups.add_raw)
    on_tick(source)
    rows = groups.rows(names)
    counters = source.final_counters
    if args.json:
        write_whole("".join(json.dumps({"kind": "drop_group", **row}) + "\n" for row in rows)
                    + json.dumps(summary_json(count, counters, groups.table.evicted)) + "\n")
    else:
        if rows:
            sys.stderr.write("\nthe drops above, grouped, with their causes:\n")
            write_drop_table(rows, sys.stderr, table_width(sys.stderr, False))
        sys.stderr.write(summary_line(count, counters, groups.table.evicted) + "\n")
    return 0
