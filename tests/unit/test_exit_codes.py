"""One exit-code table (tracer/output/exitcodes.py): the README shows it, every command's --help keeps to it, and the
commands exit with it (a wrong namespace is 2 for every command, said before anything is compiled)."""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tracer.cli.main import build_parser
from tracer.output import exitcodes


def _subcommands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> dict[tuple[str, ...],
                                                                                       argparse.ArgumentParser]:
    found = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found[(*path, name)] = sub
                found.update(_subcommands(sub, (*path, name)))
    return found


SUBCOMMANDS = _subcommands(build_parser())

ROOT = Path(__file__).resolve().parents[2]
PODTRACE = [sys.executable, "-m", "tracer.cli.main"]
MISSING = "pt-no-such-namespace"  # never created: `ip netns` names the lab and tests use are pt-*, uuid-named
CODES = {code for code, _name, _meaning in exitcodes.TABLE}


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*PODTRACE, *args], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
                          env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})


def test_the_readme_has_the_table() -> None:
    assert exitcodes.markdown_table() in (ROOT / "README.md").read_text()


def test_top_level_help_gives_every_code() -> None:
    assert exitcodes.epilog_line() in build_parser().format_help().replace("\n", " ")


@pytest.mark.parametrize("path", list(SUBCOMMANDS), ids=" ".join)
def test_every_commands_help_names_only_codes_of_the_table(path: tuple[str, ...]) -> None:
    text = SUBCOMMANDS[path].format_help()
    for block in re.findall(r"exit codes?:(.*?)(?:\n\n|\Z)", text, re.S):
        named = {int(code) for code in re.findall(r"(?<![\w.-])(\d+) (?=[a-z(])", block)}
        assert named and named <= CODES, (path, block)


@pytest.mark.parametrize("path", list(SUBCOMMANDS), ids=" ".join)
def test_an_unknown_option_is_2_for_every_command(path: tuple[str, ...]) -> None:
    err = io.StringIO()
    with pytest.raises(SystemExit) as exit_, contextlib.redirect_stderr(err):
        build_parser().parse_args([*path, "--no-such-option"])
    assert exit_.value.code == exitcodes.USAGE
    assert err.getvalue().count("\n") == 1  # (about a missing required argument, where the command has one)


@pytest.mark.parametrize("argv", [
    ["drops", "--netns", MISSING, "--duration", "1"],
    ["watch", "--netns", MISSING, "--duration", "1"],
    ["flows", "--node", MISSING, "--duration", "1"],
    ["flows", "--netns", MISSING, "--duration", "1"],
    ["record", "-o", "{tmp}/x.ptrec", "--node", MISSING, "--duration", "1"],
    ["overlay", "--netns", MISSING, "--duration", "1"],
    ["check", "--netns", MISSING, "--window", "0"],
    ["mtu", "--from", MISSING, "--to", "127.0.0.1"],
    ["serve", "--node", MISSING, "--duration", "1"],
], ids=lambda argv: " ".join(argv[:3]))
def test_a_wrong_namespace_is_2_for_every_command_before_compiling(argv: list[str], tmp_path: Path) -> None:
    proc = run(*(arg.format(tmp=tmp_path) for arg in argv))
    assert proc.returncode == exitcodes.USAGE, proc.stderr
    assert proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and MISSING in proc.stderr, proc.stderr
    assert "compiling" not in proc.stderr  # the progress line of the probe build: it never started
    assert list(tmp_path.iterdir()) == []  # record wrote nothing


def test_a_missing_recording_is_1() -> None:
    for argv in (["report", "/nonexistent/x.ptrec"], ["export", "/nonexistent/x.ptrec", "--pcapng", "/dev/null"]):
        proc = run(*argv)
        assert proc.returncode == exitcodes.ERROR and proc.stderr.count("\n") == 1, proc.stderr
