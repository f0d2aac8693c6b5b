"""Every option a user may need is in `--help`; only the ones for scripts and tests are hidden."""

from __future__ import annotations

import argparse

from tracer.cli.main import build_parser

HIDDEN = {"--ready-file", "--dump-bpf", "--poll-interval"}  # for scripts and tests (CONVENTIONS.md)


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    found: dict[str, argparse.ArgumentParser] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            found.update(action.choices)
    return found


def test_only_the_script_options_are_hidden() -> None:
    for name, sub in _subcommands().items():
        for action in sub._actions:
            if action.help == argparse.SUPPRESS:
                assert set(action.option_strings) <= HIDDEN, (name, action.option_strings)


def test_the_lost_events_advice_is_an_option_users_can_find() -> None:
    subcommands = _subcommands()
    for name in ("drops", "watch", "flows", "record"):
        assert "--ringbuf-pages" in subcommands[name].format_help(), name


def test_path_rate_only_where_path_events_are_traced() -> None:
    subcommands = _subcommands()
    for name in ("watch", "record"):
        assert "--path-rate" in subcommands[name].format_help(), name
    for name in ("drops", "flows"):
        assert "--path-rate" not in subcommands[name].format_help(), name


def test_a_closed_pipe_ends_quietly() -> None:
    """`podtrace report FILE | head -1`: no BrokenPipeError traceback, SIGPIPE's exit status.

    The pipe's read end is closed before the command starts, so its first write fails: no race with
    a pipe buffer large enough to hold the whole report.
    """
    import os
    import subprocess
    import sys
    from pathlib import Path

    recording = Path(__file__).parent / "fixtures" / "recordings" / "v1.ptrec"
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        result = subprocess.run(
            [sys.executable, "-m", "tracer.cli.main", "report", str(recording)],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        os.close(write_end)
    assert "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr, result.stderr
    assert result.returncode == 141, (result.returncode, result.stderr)
