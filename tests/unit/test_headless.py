"""The headless core: importing every tracer module never imports textual (nor the TUI, nor BCC)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

PROBE = """
import importlib, json, pkgutil, sys, traceback
import tracer
names, failed = [], {}
for info in pkgutil.walk_packages(tracer.__path__, "tracer.", onerror=lambda name: failed.setdefault(name, "walk")):
    names.append(info.name)
    try:
        importlib.import_module(info.name)
    except Exception:
        failed[info.name] = traceback.format_exc(limit=3)
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("textual", "tui", "bcc"))
print(json.dumps({"names": names, "failed": failed, "loaded": loaded}))
"""


def test_importing_every_tracer_module_leaves_textual_out() -> None:
    result = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, timeout=120,
                            check=False)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["failed"] == {}
    names = set(report["names"])
    # The walk reaches subpackages (the lab) and the modules this suite knows about.
    assert {"tracer.cli.main", "tracer.events.decode", "tracer.kernel.ladder", "tracer.lab", "tracer.lab.cli"} <= names
    assert len([name for name in names if name.startswith("tracer.lab.")]) >= 5
    assert report["loaded"] == [], "tracer must stay headless (no textual/tui) and import bcc only on demand"
