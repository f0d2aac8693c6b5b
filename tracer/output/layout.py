"""How wide a human table may be, and fitting its text columns into that width.

On a terminal a table is sized to the terminal's columns; into a file or a pipe (or with --wide) nothing is cut,
since what is read there later (grep, a ticket, a paste) needs the full names.
"""

from __future__ import annotations

import argparse
import os
from typing import TextIO

CUT = "~"  # marks a value shortened to fit, so a cut name cannot pass for a whole one (ASCII: any locale)


def add_wide_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--wide", action="store_true",
                        help="never shorten names to fit the terminal (they are never shortened into a pipe or file)")


def table_width(stream: TextIO, wide: bool = False) -> int | None:
    """The columns a table written to `stream` may use: the terminal's width, or None (no limit)."""
    if wide:
        return None
    try:
        if not stream.isatty():
            return None
        return os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, OSError, ValueError):  # a StringIO, a closed or unsized stream: nothing to fit
        return None


def fit_columns(widths: list[int], floors: list[int], other: int, limit: int | None) -> list[int]:
    """Shrink the widest text column first, one column at a time down to its floor, until the line of `other`
    fixed characters plus these columns fits `limit`. No limit: the widths as they are."""
    widths = list(widths)
    if limit is None:
        return widths
    while other + sum(widths) > limit:
        shrinkable = [i for i, width in enumerate(widths) if width > floors[i]]
        if not shrinkable:
            break
        widths[max(shrinkable, key=lambda i: widths[i])] -= 1
    return widths


def cut(value: str, width: int) -> str:
    """`value` in at most `width` characters, its end replaced by CUT when it had to be shortened."""
    if len(value) <= width:
        return value
    return value[: max(width - 1, 0)] + CUT if width > 0 else ""
