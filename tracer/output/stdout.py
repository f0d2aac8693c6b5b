"""Writing a batch of output lines whole, even when a signal interrupts the write.

Seen here: `watch --json` into a full pipe, SIGINT arriving mid-write; write(2) returned 42,112 of 54,400 bytes and
the buffered text layer did not write the rest, so a line was cut mid-object and the summary followed it. The
bytes go to the file descriptor directly, in a loop, so a partial write is always completed.
"""

from __future__ import annotations

import os
import sys


def write_whole(text: str) -> None:
    """Write `text` to stdout completely (after anything already buffered there)."""
    sys.stdout.flush()
    data = memoryview(text.encode(sys.stdout.encoding or "utf-8", errors="replace"))
    fd = sys.stdout.fileno()
    while data:
        written = os.write(fd, data)  # EINTR with nothing written is retried by Python (PEP 475)
        data = data[written:]
