"""Small dataclass messages from the reader and worker threads to the app. Snapshots coalesce: a newer one
replaces an older one still queued, so a burst of events never queues more than one redraw."""

from __future__ import annotations

from dataclasses import dataclass

from textual.message import Message

from tracer.kernel.ladder import AttachPlan
from tui.model import Snapshot


@dataclass
class SourceStarted(Message):
    """Probes are attached (live) or the recording is open (replay)."""

    attached: list[str]
    seconds: float


@dataclass
class SourceFailed(Message):
    """The source could not start or stopped with an error; `message` is one user-facing line."""

    message: str


@dataclass
class SnapshotReady(Message):
    snapshot: Snapshot

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, SnapshotReady)


@dataclass
class PlanReady(Message):
    """The attach ladder: probed on this kernel (live, ~2 s) or read from the recording."""

    plan: AttachPlan | None
    error: str = ""
