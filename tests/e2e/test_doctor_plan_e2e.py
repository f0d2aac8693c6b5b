"""`podtrace doctor` says what a session attaches, on this kernel: no mechanism without a program behind it."""

from __future__ import annotations

import json

import pytest
from support.plan import assert_plan_matches_session, session_attachments
from support.podtrace import run

pytestmark = pytest.mark.root


def test_doctors_plan_is_what_a_session_attaches() -> None:
    result = run("doctor", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    attached = session_attachments()
    assert attached, "the session attached nothing"
    assert_plan_matches_session(report, attached)
    assert not any(hook["chosen"] == "fentry" for hook in report["hooks"])
