"""One exception hierarchy for every failure a user can cause or fix.

`main()` catches PodtraceError, prints `podtrace: <message> (<hint>)` on one line and exits with `exit_code`.
"""

from __future__ import annotations


class PodtraceError(Exception):
    """A failure with a user-facing message and, where there is one, the fix."""

    exit_code = 1

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def one_line(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class UsageError(PodtraceError):
    """Bad command-line input: a malformed filter, an unknown name."""

    exit_code = 2


class NotRootError(PodtraceError):
    def __init__(self, what: str = "tracing") -> None:
        super().__init__(f"{what} needs root", "run it with sudo")


class KernelError(PodtraceError):
    """The kernel cannot do what was asked: no BTF, no hook, no headers."""


class LabError(PodtraceError):
    """The built-in lab could not be set up, changed or torn down."""


class RecordingError(PodtraceError):
    """A recording is missing, truncated, corrupt or from a newer podtrace."""


class RecordingIncomplete(RecordingError):
    """A rotation part of a recording is missing or belongs to another recording: what was there was read."""

    exit_code = 4
