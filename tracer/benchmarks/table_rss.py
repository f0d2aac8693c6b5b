"""Child process: fill a DropTable with synthetic drop events and print its RSS growth as JSON.

    python -m tracer.benchmarks.table_rss --flows N --max-groups M [--decoded]
"""

from __future__ import annotations

import argparse
import gc
import json
import sys

from tracer.analysis.aggregate import DropTable
from tracer.benchmarks.pipeline import drop_event
from tracer.events.decode import decode, encode


def rss_bytes() -> int:
    with open("/proc/self/status", encoding="utf-8") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tracer.benchmarks.table_rss")
    parser.add_argument("--flows", type=int, required=True)
    parser.add_argument("--max-groups", type=int, default=100_000)
    parser.add_argument("--decoded", action="store_true", help="DropTable.add (decoded) instead of add_raw")
    args = parser.parse_args(argv)
    encode(drop_event(0, 1))  # warm imports and caches before the baseline
    gc.collect()
    before = rss_bytes()
    table = DropTable(args.max_groups)
    for index in range(args.flows):  # one event per distinct flow, generated on the fly (no event list held)
        raw = encode(drop_event(index, args.flows))
        if args.decoded:
            table.add(decode(raw))
        else:
            table.add_raw(raw)
    gc.collect()
    after = rss_bytes()
    sys.stdout.write(json.dumps({"before": before, "after": after, "groups": len(table.groups) +
                                 len(table.raw_groups), "evicted": table.evicted, "total": table.total}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
