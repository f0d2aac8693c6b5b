"""`podtrace softirq`: NET_RX/NET_TX softirq wait and run latency per CPU, from in-kernel histograms."""

from __future__ import annotations

import argparse
import json
import sys

from tracer.output.errors import UsageError

SOFTIRQ_EPILOG = """\
wait: from raise (irq:softirq_raise) to the handler starting (irq:softirq_entry); run: entry to exit.
defer (JSON net_rx_wait_ksoftirqd): the waits whose handler ran in ksoftirqd. Softirqs raised by an interrupt or
by a task sending packets run inline, at irq exit or local_bh_enable, so CPU load alone hardly changes their
wait. A CPU that cannot keep up with its receive work defers NET_RX behind busy tasks (to ksoftirqd or the next
tick): its own row shows waits of milliseconds, backlog drops and exhausted NAPI polls, which the all-CPU row can
hide. The findings at the end name such CPUs (JSON: "findings" in the all-CPU object).
p50/p99 are estimated from the kernel's log2 buckets (within a factor of two of the truth); max is exact.
napi exhausted: polls that used their whole budget; softnet dropped/squeezed: /proc/net/softnet_stat deltas.

examples:
  sudo podtrace softirq --duration 10
  sudo podtrace softirq --json --duration 5 | jq '.net_rx_wait.p99_us'
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    softirq = subparsers.add_parser(
        "softirq", help="NET_RX/NET_TX softirq wait and run latency, NAPI budget, softnet drops per CPU",
        description="Measure softirq latency per CPU with in-kernel log2 histograms.",
        epilog=SOFTIRQ_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    softirq.add_argument("--duration", type=float, default=5.0, metavar="S", help="measure for S seconds (5)")
    softirq.add_argument("--interval", type=float, default=0.5, metavar="S",
                         help="read the maps every S seconds, 0.1-1 (0.5)")
    softirq.add_argument("--json", action="store_true", help="one JSON object per CPU, then one for all CPUs")
    softirq.add_argument("--ready-file", metavar="PATH", help=argparse.SUPPRESS)
    softirq.set_defaults(func=run_softirq)


def run_softirq(args: argparse.Namespace) -> int:
    from tracer.analysis.softirq import SoftirqAggregator, findings, format_table
    from tracer.probes.softirq_probe import SoftirqProbe

    if args.duration <= 0:
        raise UsageError("--duration must be positive")
    interval = min(max(args.interval, 0.1), 1.0)
    import time

    probe = SoftirqProbe()
    probe.start()
    aggregator = SoftirqAggregator()
    try:
        aggregator.add(probe.snapshot())
        if args.ready_file:
            with open(args.ready_file, "w", encoding="utf-8") as handle:
                handle.write("ready\n")
        end = time.monotonic() + args.duration
        try:
            while (remaining := end - time.monotonic()) > 0:
                time.sleep(min(interval, remaining))
                aggregator.add(probe.snapshot())
        except KeyboardInterrupt:
            aggregator.add(probe.snapshot())
    finally:
        probe.close()
    rows = aggregator.report()
    if args.json:
        for row in rows:
            data = row.to_json()
            data["seconds"] = round(aggregator.seconds, 3)
            if row.cpu is None:
                data["findings"] = findings(rows, aggregator.seconds)
            sys.stdout.write(json.dumps(data) + "\n")
    else:
        sys.stdout.write(format_table(rows, aggregator.seconds))
    sys.stdout.flush()
    return 0
