"""`podtrace setup-kernel`: mount tracefs/debugfs and prepare BCC's kernel headers (used by `make setup`)."""

from __future__ import annotations

import argparse

from tracer.kernel import headers, kernelfs


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "setup-kernel",
        help="mount tracefs/debugfs and prepare kernel headers for BCC",
        description="Mount tracefs and debugfs when missing and pick the kernel headers BCC compiles against.",
        epilog="examples:\n  sudo podtrace setup-kernel      (run by `make setup`)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    for line in kernelfs.ensure_mounted():
        print(f"    {line}")
    choice = headers.prepare()
    print(f"    headers: {choice.describe()}")
    return 0
