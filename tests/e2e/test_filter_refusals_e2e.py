"""Filters the probes' snapshot (a packet from its IP header, no skb metadata) cannot answer are refused by the
commands themselves: one line on stderr, exit 2, nothing attached and nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest
from support import podtrace

pytestmark = pytest.mark.root


@pytest.mark.parametrize("expression", ["inbound", "not outbound", "ifindex 2", "ether[12:2] = 0x800", "link[0] = 1"])
def test_drops_refuses(expression: str) -> None:
    result = podtrace.run("drops", "--duration", "1", expression)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and lines[0].startswith(f"podtrace: bad filter {expression!r}: "), lines
    assert result.stdout == ""


def test_record_refuses_and_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "t.ptrec"
    result = podtrace.run("record", "-o", str(out), "--duration", "1", "tcp", "and", "inbound")
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "inbound/outbound needs the packet's direction" in result.stderr
    assert not out.exists()
