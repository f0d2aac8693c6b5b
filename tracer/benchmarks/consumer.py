"""A traced consumer, run as a child process: LiveSource + DropTable.add_raw, as `podtrace drops` does.

    python -m tracer.benchmarks.consumer --ready-file F [--path --filter EXPR] [--netfilter-netns NS ...]
        [--node NS ...]

Attaches, writes the ready file, polls until SIGINT/SIGTERM, then prints one JSON object: the kernel counters
(seen, events, lost, ...), the events read and the table's groups.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from types import FrameType

from tracer.analysis.aggregate import DropTable
from tracer.probes.build import ProbeConfig
from tracer.probes.pcapfilter import compile_filter
from tracer.probes.scope import Scope
from tracer.sources.live import LiveSource

_stop = False


def _handle(_signum: int, _frame: FrameType | None) -> None:
    global _stop
    _stop = True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tracer.benchmarks.consumer")
    parser.add_argument("--ready-file", required=True)
    parser.add_argument("--path", action="store_true")
    parser.add_argument("--filter", default="")
    parser.add_argument("--netfilter-netns", action="append", default=[])
    parser.add_argument("--ringbuf-pages", type=int, default=256)
    parser.add_argument("--node", action="append", default=[], help="scope to these nodes and their pods")
    parser.add_argument("--conntrack-flows", action="store_true",
                        help="Service flows from conntrack entries (bpf/nfct.c), `podtrace flows`' default")
    args = parser.parse_args(argv)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _handle)
    config = ProbeConfig(filter=compile_filter(args.filter), path=args.path,
                         netfilter=bool(args.netfilter_netns), netfilter_conntrack=args.conntrack_flows,
                         netfilter_netns=tuple(args.netfilter_netns) or (None,), ringbuf_pages=args.ringbuf_pages,
                         scope=Scope(nodes=tuple(args.node)) if args.node else None)
    source = LiveSource(config)
    started = time.monotonic()
    source.start(progress=False)
    attach_s = time.monotonic() - started
    table = DropTable()
    events = 0
    try:
        with open(args.ready_file, "w", encoding="utf-8") as handle:
            handle.write("ready\n")
        while not _stop:
            batch = source.poll_raw(100)
            events += len(batch)
            for raw in batch:
                table.add_raw(raw)
        batch = source.poll_raw(0)
        events += len(batch)
        for raw in batch:
            table.add_raw(raw)
        # what the NAT programs counted: (point, packets) per translation
        nat = sorted([int(key.point), int(stats.packets)] for key, stats in source.nat_flows())
    finally:
        source.close()
    by_netns: dict[str, int] = {}
    for key, row in table.sorted_groups():  # DropKey: (reason, location, netns, ...)
        by_netns[str(key[2])] = by_netns.get(str(key[2]), 0) + row.count
    result = {"counters": source.final_counters, "events_read": events, "drops": table.total,
              "drops_by_netns": by_netns,
              "groups": len(table.raw_groups) + len(table.groups), "attach_s": attach_s,
              "attached": source.attached, "nat": nat}
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
