"""The README's short tour, pasted in order on the lab: each line is run as the README gives it (as root, so
without sudo) and must print what its comment says."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest
from support.lab import lab_lock, take_down, wait_for_foreign_lab

ROOT = Path(__file__).resolve().parents[2]
PODTRACE = str(ROOT / ".venv" / "bin" / "podtrace")

pytestmark = pytest.mark.root


def tour() -> list[str]:
    """The lines of the ```sh block under "## A short tour", comments and all."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## A short tour", 1)[1]
    block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line.strip()]


# What each line's comment promises, as a pattern its output must match (stdout and stderr together).
PROMISES = {
    "doctor": r"ok: the core probes attach",
    "lab up": r"pt-node1",
    "lab fault": r"drop-backend",
    "lab traffic": r".",
    "drops": r"NETFILTER_DROP +\S+ +pt-node2/\S+ +tcp \S+ > 10\.244\.1\.2:8080",
    "flows": r"default/web:http .*web-2:8080 .*\n\s+\d+ x NETFILTER_DROP",
    "record": r"recorded \d+ events, 0 lost to tour\.ptrec\.gz",
    "report": r"(?s)NETFILTER_DROP .*default/web:http",
    "export": r"wrote \d+ packets on \d+ interfaces to tour\.pcapng",
    "lab down": r".",
}


def _promise(argv: list[str]) -> str:
    words = " ".join(argv[1:3])
    for key, pattern in PROMISES.items():
        if words.startswith(key):
            return pattern
    raise AssertionError(f"the tour has a line this test does not know: {argv}")


def test_the_tour_pasted_in_order(tmp_path: Path) -> None:
    lines = tour()
    assert [shlex.split(line, comments=True)[1] for line in lines] == [
        "doctor", "lab", "lab", "lab", "drops", "flows", "record", "report", "export", "lab"]
    with lab_lock():
        wait_for_foreign_lab()
        try:
            for line in lines:
                argv = shlex.split(line, comments=True)
                assert argv[0] == ".venv/bin/podtrace", line  # pasted from the repository's directory
                result = subprocess.run([PODTRACE, *argv[1:]], cwd=tmp_path, capture_output=True, text=True,
                                        timeout=300, check=False, env={**os.environ, "COLUMNS": "100"})
                said = result.stdout + result.stderr
                assert result.returncode == 0, (line, said)
                assert "Traceback" not in said, (line, said)
                assert re.search(_promise(argv), said), (line, said)
        finally:
            take_down()
    assert (tmp_path / "tour.ptrec.gz").exists() and (tmp_path / "tour.pcapng").exists()
    # The API example, saved as the README names it and run the way it says, on the tour's recording: the SYNs
    # that drop-backend dropped, and exit 1.
    text = (ROOT / "README.md").read_text()
    script = text.split("### Scripting: the Python API", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    (tmp_path / "syn_drops.py").write_text(script)
    assert "`.venv/bin/python syn_drops.py tour.ptrec.gz`" in text
    api = subprocess.run([str(ROOT / ".venv" / "bin" / "python"), "syn_drops.py", "tour.ptrec.gz"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120, check=False)
    assert api.returncode == 1, api.stderr
    assert re.search(r"^\d+ SYNs to 10\.244\.1\.2:8080 dropped: NETFILTER_DROP$", api.stdout, re.M), api.stdout
