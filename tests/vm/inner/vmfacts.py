"""Facts and timings the inner suite reports to the host ($PODTRACE_VM_OUT/facts.json)."""

from __future__ import annotations

import platform
from typing import Any

FACTS: dict[str, Any] = {"kernel": platform.release(), "timings": {}}


def timed(name: str, seconds: float) -> None:
    FACTS["timings"][name] = round(seconds, 1)
