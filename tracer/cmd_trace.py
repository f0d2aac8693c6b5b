"""`podtrace drops` (where packets die, as a table) and `podtrace watch` (events as they happen)."""

from __future__ import annotations

import argparse
import json
import sys

from tracer import cause_state
from tracer.aggregate import DropTable
from tracer.events import PacketEvent
from tracer.identity import ConnIdentities
from tracer.layout import add_wide_option, table_width
from tracer.nfverdict import NfAttribution
from tracer.report import Resolver, drop_rows, event_json, event_line, summary_json, summary_line, write_drop_table
from tracer.session import add_trace_options, run_session
from tracer.stdout import write_whole

DROPS_EPILOG = """\
exit codes: 0 ok, 1 error, 2 bad usage or filter, 3 drops matched and --fail-on-drops was given

examples:
  sudo podtrace drops --duration 10
  sudo podtrace drops --json 'tcp port 443' | jq 'select(.reason == "NETFILTER_DROP")'
  sudo podtrace drops --netns pt-node1 --fail-on-drops --duration 30 'host 10.96.0.10'
"""

WATCH_EPILOG = """\
Drops are always shown; path events (device receive and queue) only for packets matching FILTER,
capped per CPU per second.

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


def run_drops(args: argparse.Namespace) -> int:
    table = DropTable()
    verdicts = NfAttribution()  # netfilter table and chain of each drop, on kernels with kprobes
    identities = ConnIdentities()  # each drop's conntrack entry, read by the drop probe

    def on_raw(data: bytes) -> None:
        table.add_raw(data)
        verdicts.add_raw(data)
        identities.add_raw(data)

    # ICMP counters before the trace: a REJECT's errors rate-limited during it turn "refused" into timeouts.
    icmp_before = cause_state.icmp_snapshot([args.netns] if args.netns else cause_state.named_namespaces())
    source, names, count = run_session(args, path=False, on_raw=on_raw)
    rows = drop_rows(table, names, verdicts, identities)
    cause_state.add_causes(rows, cause_state.collect(rows, icmp_before))
    counters = source.final_counters
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
    identities = ConnIdentities()  # fed before on_event sees the drop its conntrack event precedes
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

    source, _names, count = run_session(args, path=bool(args.filter), on_event=on_event, on_tick=on_tick,
                                        on_raw=identities.add_raw)
    on_tick(source)
    counters = source.final_counters
    if args.json:
        sys.stdout.write(json.dumps(summary_json(count, counters)) + "\n")
    else:
        sys.stderr.write(summary_line(count, counters) + "\n")
    return 0
