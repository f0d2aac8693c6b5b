"""The progress indication: one line when stderr is not a terminal (CI logs, pipes), begun before the step."""

from __future__ import annotations

import io

import pytest

from tracer.output.progress import Progress


def test_one_line_when_not_a_terminal() -> None:
    stream = io.StringIO()
    with Progress("compiling probes", stream) as step:
        assert stream.getvalue() == "compiling probes ... "  # a step that hangs shows which it is
        step.done("3 programs")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("compiling probes ... done in ") and lines[0].endswith(" s: 3 programs")


def test_a_failed_step_says_so_on_its_line() -> None:
    stream = io.StringIO()
    with pytest.raises(RuntimeError), Progress("attaching", stream):
        raise RuntimeError("no")
    assert stream.getvalue() == "attaching ... failed\n"
