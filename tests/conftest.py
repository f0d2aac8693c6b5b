"""Shared pytest set-up: root-marked tests need root and say so instead of passing silently."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# tests/support is importable as `support` from every test file.
sys.path.insert(0, str(Path(__file__).resolve().parent))

pytest_plugins = ["support.skipguard"]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.geteuid() == 0:
        return
    for item in items:
        if item.get_closest_marker("root"):
            item.add_marker(pytest.mark.skip(reason="needs root: run `sudo make test`"))
