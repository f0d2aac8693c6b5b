"""The `podtrace` command: subcommands live in their own modules, each with an `add_parser(subparsers)`."""

from __future__ import annotations

import signal

if __name__ == "__main__":  # `python -m tracer.cli.main`: Ctrl-C while this module's own imports run ends the process
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # as a signal does, not with a traceback; main() takes it back

import argparse  # after the handler above
import importlib
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from tracer import __version__
from tracer.output.errors import PodtraceError
from tracer.output.exitcodes import CLOSED_PIPE, INTERRUPTED, USAGE, epilog_line

# Each module defines add_parser(subparsers) and sets `func(args) -> int` on its parser.
COMMAND_MODULES = (
    "tracer.cli.setup",
    "tracer.cli.doctor",
    "tracer.cli.drops",
    "tracer.cli.watch",
    "tracer.cli.check",
    "tracer.lab.cli",
    "tracer.cli.flows",
    "tracer.cli.mtu",
    "tracer.cli.softirq",
    "tracer.cli.overlay",
    "tracer.cli.tui",
    "tracer.cli.record",
    "tracer.cli.report",
    "tracer.cli.export",
    "tracer.cli.merge",
    "tracer.cli.serve",
)

EPILOG = f"""\
{epilog_line()} (the README's table says when)

examples:
  sudo podtrace doctor                    what this kernel lets podtrace see
  sudo podtrace drops --duration 10       where packets die, for 10 seconds
  sudo podtrace lab up                    the built-in two-node lab in namespaces
"""


class OneLineErrorParser(argparse.ArgumentParser):
    """Usage errors as one line naming the command's --help, not argparse's usage block followed by the error."""

    def error(self, message: str) -> NoReturn:
        self.exit(USAGE, f"podtrace: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(
        prog="podtrace",
        description="eBPF packet tracer for Kubernetes worker nodes.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"podtrace {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    if signal.getsignal(signal.SIGINT) is signal.SIG_DFL:
        signal.signal(signal.SIGINT, signal.default_int_handler)  # KeyboardInterrupt again: 130 below
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
    except KeyboardInterrupt:  # Ctrl-C while the subcommands import (BCC, pyroute2, textual: up to a second)
        return INTERRUPTED
    except RuntimeError as err:  # the same, landing in a class body's __set_name__ (dataclasses), which wraps it
        if isinstance(err.__cause__, KeyboardInterrupt):
            return INTERRUPTED
        raise
    if not getattr(args, "func", None):
        if not sys.stdout.isatty():
            parser.print_help()
            return USAGE
        from tracer.cli.tui import run_tui  # `podtrace` alone opens the TUI on a terminal

        args.func = run_tui
    try:
        return int(args.func(args))
    except PodtraceError as err:
        print(f"podtrace: {err.one_line()}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        return INTERRUPTED
    except BrokenPipeError:
        return _closed_pipe()


def _closed_pipe() -> int:
    """`podtrace check | head`: the reader went away. Exit quietly, as other Unix tools do (SIGPIPE's 141).

    stdout is pointed at /dev/null first, so the interpreter's final flush of what is still buffered does not
    raise again at exit."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return CLOSED_PIPE


if __name__ == "__main__":
    sys.exit(main())
