"""The `podtrace` command as a user runs it: one clean line on errors, meaningful exit codes, examples in help.

Root-sensitive cases run as an unprivileged user (nobody) so they behave the same when the suite runs as root.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.unprivileged import AS_NOBODY

from tracer.cli.main import build_parser

ROOT = Path(__file__).resolve().parents[2]
PODTRACE = [sys.executable, "-m", "tracer.cli.main"]


def _as_nobody() -> list[str]:
    if os.geteuid() != 0:
        return []  # already unprivileged
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv is needed to drop root for this test")
    return AS_NOBODY


def run(*args: str, unprivileged: bool = False) -> subprocess.CompletedProcess[str]:
    prefix = _as_nobody() if unprivileged else []
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "PODTRACE_CACHE": "/nonexistent/podtrace-cache"}
    return subprocess.run([*prefix, *PODTRACE, *args], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env=env, check=False)


def assert_one_line(result: subprocess.CompletedProcess[str], code: int) -> str:
    assert result.returncode == code, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("podtrace: ")
    return lines[0]


@pytest.mark.parametrize("command", [["doctor"], ["drops"], ["drops", "--duration", "1", "udp port 53"],
                                     ["watch", "icmp"], ["drops", "--ifname", "lo"]])
def test_needs_root(command: list[str]) -> None:
    line = assert_one_line(run(*command, unprivileged=True), 1)
    assert "needs root" in line and "sudo" in line


@pytest.mark.parametrize("unprivileged", [True, False])
def test_bad_filter_is_a_usage_error_before_the_root_check(unprivileged: bool) -> None:
    """session.run_session builds the probe config (the filter) before require_root: exit 2 as any user."""
    line = assert_one_line(run("drops", "tcp port", unprivileged=unprivileged), 2)
    assert "bad filter 'tcp port'" in line and "tcpdump syntax" in line


@pytest.mark.parametrize("args", [["--ringbuf-pages", "3"], ["--duration", "0"], ["--netns", "no-such-ns-x"],
                                  ["--path-rate", "0"], ["--path-rate", "many"]])
def test_bad_options_are_usage_errors(args: list[str]) -> None:
    assert_one_line(run("drops", *args, unprivileged=True), 2)


def test_no_arguments_prints_help_and_exits_2() -> None:
    result = run()
    assert result.returncode == 2
    assert result.stdout.startswith("usage: podtrace")
    assert "examples:" in result.stdout and "exit codes:" in result.stdout
    assert result.stderr == ""


def test_unknown_subcommand_is_usage() -> None:
    result = run("frobnicate")
    assert result.returncode == 2
    assert "invalid choice" in result.stderr and "Traceback" not in result.stderr


def test_console_script_matches_the_module() -> None:
    script = Path(sys.executable).with_name("podtrace")
    if not script.exists():
        pytest.skip("podtrace is not installed in this environment")
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0
    assert result.stdout == run("--help").stdout


# -- help texts --


def subcommands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> Iterator[
        tuple[tuple[str, ...], argparse.ArgumentParser]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*path, name), sub
                yield from subcommands(sub, (*path, name))


SUBCOMMANDS = dict(subcommands(build_parser()))
# Known gaps, outside the files this suite may change: strict, so the mark must go once they get examples.
NO_EXAMPLES_YET: set[tuple[str, ...]] = set()


@pytest.mark.parametrize("path", [
    pytest.param(path, marks=pytest.mark.xfail(strict=True, reason="no examples epilog yet"))
    if path in NO_EXAMPLES_YET else path
    for path in SUBCOMMANDS
], ids=" ".join)
def test_help_has_examples(path: tuple[str, ...]) -> None:
    text = SUBCOMMANDS[path].format_help()
    assert "\nexamples:\n" in text
    examples = text.split("\nexamples:\n", 1)[1]
    assert "podtrace " + " ".join(path) in examples


def test_top_level_commands_exist() -> None:
    assert {("doctor",), ("drops",), ("watch",), ("lab",)} <= set(SUBCOMMANDS)


@pytest.mark.parametrize("command", ["doctor", "drops", "watch"])
def test_help_runs_without_root(command: str) -> None:
    result = run(command, "--help", unprivileged=True)
    assert result.returncode == 0
    assert "examples:" in result.stdout and result.stderr == ""


def test_tui_without_a_terminal_is_refused_in_one_line() -> None:
    """Nobody could read its screen or press q: a failed source would leave it running (it spun at 60% CPU)."""
    recording = str(ROOT / "tests" / "unit" / "fixtures" / "recordings" / "v1.ptrec")
    result = subprocess.run([*PODTRACE, "tui", "--replay", recording], cwd=ROOT, capture_output=True, text=True,
                            timeout=60, stdin=subprocess.DEVNULL, check=False)
    line = assert_one_line(result, 2)
    assert "needs a terminal" in line and "podtrace watch" in line
