"""What `report` and `export` say about a recording as they open it: parts cut short, parts missing, what it
is a recording of."""

from __future__ import annotations

import sys
import time

from tracer.output.errors import RecordingIncomplete
from tracer.sources.replay import ReplaySource


def warn_truncated(source: ReplaySource) -> None:
    merged = bool(source.header.get("merged"))  # a merged file cut short is an error, said once (run_report)
    for path in [] if merged else source.truncated_parts:
        sys.stderr.write(f"podtrace: warning: {path} was cut short (recorder killed?): read up to its last "
                         f"complete record\n")
    for problem in source.incomplete:
        sys.stderr.write(f"podtrace: warning: incomplete recording: {problem}\n")


def incomplete_error(source: ReplaySource) -> RecordingIncomplete | None:
    """The error (exit 4) of a recording with missing or foreign parts, once its warnings are written."""
    if not source.incomplete:
        return None
    return RecordingIncomplete(f"{source.path}: incomplete recording, {len(source.incomplete)} part(s) missing or "
                               "foreign", "the events of the parts found were read")


def describe(source: ReplaySource) -> str:
    header = source.header
    if not header:
        return f"{source.path}: cut short inside its header: nothing to report"
    started = header.get("clock", {}).get("wall_ns")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started / 1e9)) if started else "?"
    expression = header.get("filter", {}).get("expression") or "all drops"
    merged = header.get("merged")
    if merged:
        names = [str(node.get("name")) for node in merged.get("nodes", [])]
        nodes = " and ".join(names) if len(names) <= 2 else ", ".join(names)
        return f"merged recording of {nodes} from {when}, on the first one's clock"
    return (f"recording of {header.get('hostname', '?')} (kernel {header.get('kernel_release', '?')}) "
            f"from {when}, filter: {expression}")
