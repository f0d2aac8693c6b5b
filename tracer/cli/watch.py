"""`podtrace watch`: drop and packet path events, one line each as they happen; the drops grouped at the end."""

from __future__ import annotations

import argparse
import json
import sys

from tracer.cli.drops import DropGroups
from tracer.events.decode import PacketEvent
from tracer.output.layout import table_width
from tracer.output.report import Resolver, event_json, event_line, summary_json, summary_line, write_drop_table
from tracer.output.stdout import write_whole
from tracer.sources.session import add_trace_options, run_session

WATCH_EPILOG = """\
Drops are always shown; path events (device receive and queue) only for packets matching FILTER,
capped per CPU per second. At the end, the drops seen are grouped with their causes as `podtrace drops`
prints them (on stderr; with --json, "kind": "drop_group" objects before the summary).

examples:
  sudo podtrace watch 'icmp'
  sudo podtrace watch --json --netns pt-client 'udp port 53'
"""



def add_parser(subparsers: argparse._SubParsersAction) -> None:
    watch = subparsers.add_parser(
        "watch", help="stream drop and packet path events as they happen",
        description="Print drop events, and path events for packets matching FILTER, one line each.",
        epilog=WATCH_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_trace_options(watch)
    watch.set_defaults(func=run_watch)


def run_watch(args: argparse.Namespace) -> int:
    # Fed before on_event sees the drop its conntrack event precedes; at the end the drops seen are grouped with
    # their causes (what the lines alone do not say: why), as `podtrace drops` prints them.
    groups = DropGroups(args.netns)
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
