"""Ctrl-C at any moment of start-up (interpreter, imports of every subcommand, reading a recording) ends podtrace
without a traceback: exit 130, or the default SIGINT death before Python's handler exists."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

RECORDING = Path(__file__).parent / "fixtures" / "recordings" / "v1.ptrec"
ROOT = Path(__file__).parents[2]


def test_sigint_during_start_up_never_prints_a_traceback() -> None:
    outcomes = set()
    for step in range(16):  # 0 to 0.68 s after exec: interpreter start, imports, the report itself
        process = subprocess.Popen([sys.executable, "-m", "tracer.cli", "report", str(RECORDING)], cwd=ROOT,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        time.sleep(step * 0.045)
        process.send_signal(signal.SIGINT)
        _out, err = process.communicate(timeout=60)
        if err.startswith("Fatal Python error: init_import_site") or (
                "KeyboardInterrupt" in err and "tracer/" not in err):
            # The interpreter was still importing `site`, or runpy still compiling tracer/cli.py (seen at 45 ms
            # on a loaded machine, PYTHONDONTWRITEBYTECODE set): Python's own start-up, no podtrace frame in the
            # traceback, before any podtrace line runs, so nothing podtrace can catch.
            continue
        assert "Traceback" not in err and "KeyboardInterrupt" not in err, (step, err)
        assert process.returncode in (0, 130, -signal.SIGINT), (step, process.returncode, err)
        outcomes.add(process.returncode)
    assert 130 in outcomes  # some of the signals did land inside podtrace's own start-up
