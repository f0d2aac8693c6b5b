"""The exit codes every podtrace command uses: one table, shown by `podtrace --help` and the README (a unit
test holds the README, each command's --help and each command's behaviour to it)."""

from __future__ import annotations

OK = 0
ERROR = 1
USAGE = 2
FOUND = 3
INCOMPLETE = 4
INTERRUPTED = 130  # 128 + SIGINT
CLOSED_PIPE = 141  # 128 + SIGPIPE, as other Unix tools exit into `| head`

TABLE: tuple[tuple[int, str, str], ...] = (
    (OK, "ok", "the command did what was asked; `check`: no check failed; `doctor`: the core probes can attach"),
    (ERROR, "error", "one line on stderr, never a traceback: not root, the kernel cannot, the lab failed, an "
                     "unreadable or corrupt recording, `doctor`: the core probes cannot attach"),
    (USAGE, "bad usage", "an unknown option, a malformed filter or value, a `--netns`/`--node`/`--from` that names "
                         "no namespace; said before anything is compiled or attached"),
    (FOUND, "found", "what was asked to fail on: `drops --fail-on-drops` saw drops, `mtu "
                     "--fail-on-mismatch` found a mismatch, `check` found a failed check"),
    (INCOMPLETE, "incomplete recording", "`report`/`export`: a rotation part is missing or belongs to another "
                                         "recording (the parts found are still read)"),
    (INTERRUPTED, "interrupted", "Ctrl-C before the command had started (once tracing, Ctrl-C ends it normally: 0)"),
    (CLOSED_PIPE, "closed pipe", "the reader of stdout went away (`head` had its lines, `less` quit): quietly"),
)


def markdown_table() -> str:
    rows = [f"| {code} | {name} | {meaning} |" for code, name, meaning in TABLE]
    return "\n".join(["| exit | means | when |", "| --- | --- | --- |", *rows]) + "\n"


def epilog_line() -> str:
    return "exit codes: " + ", ".join(f"{code} {name}" for code, name, _ in TABLE)
