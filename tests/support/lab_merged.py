"""The merged recording of the lab fixtures (tests/unit/fixtures/recordings/lab-*.ptrec.gz, capture_lab_merge.py:
pt-node1, pt-node2 and pt-client recorded at once during drop-backend), made by `podtrace merge`'s own code."""

from __future__ import annotations

from pathlib import Path

from tracer.cli.merge import merge_files

RECORDINGS = Path(__file__).resolve().parents[1] / "unit" / "fixtures" / "recordings"
VIEWS = ("node1", "node2", "client")


def lab_recording(view: str) -> Path:
    return RECORDINGS / f"lab-{view}.ptrec.gz"


def merge_lab(views: tuple[str, ...] = ("node1", "node2"), name: str = "lab.ptrec.gz") -> str:
    """The merged file, written as `name` in the working directory (the TUI's header names the file as given: run
    from a temporary directory, pictures of it do not depend on where pytest put it)."""
    merge_files([str(lab_recording(view)) for view in views], name)
    return name
