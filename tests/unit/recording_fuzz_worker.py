"""Reads recordings the way podtrace's readers do and says how each went, one JSON line per file.

Run as `python recording_fuzz_worker.py FILE...` by tests/unit/test_recording_fuzz.py, in its own process so its
peak RSS is the readers' (the last line: {"maxrss_kib": N}). For each file, every reader in turn: `podtrace report`
and `podtrace export` through tracer.cli.main.main (their exit code and stderr), tracer.api.open_recording, and the
TUI's replay (tui.sources.open_replay, its tables, and the model fed every event). An exception other than what main()
turns into one line is a "traceback"; a file still being read after ALARM_S seconds is a "hang".
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import resource
import signal
import sys
import tempfile
import traceback
from typing import Any

ALARM_S = 20


class Hang(Exception):
    pass


def _alarm(_signum: int, _frame: Any) -> None:
    raise Hang


def _cli(argv: list[str]) -> tuple[int, str]:
    from tracer.cli.main import main

    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 1
    return code, err.getvalue()


def _export(path: str, out: str) -> tuple[int, str]:
    try:
        return _cli(["export", path, "--pcapng", out])
    finally:
        if os.path.exists(out):  # export never overwrites: each file gets a fresh output name
            os.unlink(out)


def _api(path: str) -> str:
    from tracer.api import open_recording
    from tracer.output.errors import RecordingError

    try:
        recording = open_recording(path)
        recording.drop_rows()
        recording.flow_rows()
        recording.conntrack_rows()
        recording.mtu_rows()
        recording.softirq_rows()
        recording.summary()
    except RecordingError as err:
        return f"error: {err.one_line()}"
    return "ok"


def _tui(path: str) -> str:
    from tracer.events.decode import decode_any
    from tracer.output.errors import PodtraceError
    from tui.model import Model
    from tui.sources import open_replay

    try:
        source, info = open_replay(path)
        replay: Any = source  # a tracer.sources.replay.ReplaySource
        model = Model(info.names)
        for table in info.tables.values():
            table.rows()
        while not replay.done:
            model.add(decode_any(raw) for raw in replay.poll_raw(0))
        model.snapshot(replay.counters())
        info.tables["flows"].rows()
    except PodtraceError as err:
        return f"error: {err.one_line()}"
    return "ok"


def check(path: str, out_dir: str) -> dict[str, Any]:
    result: dict[str, Any] = {"file": os.path.basename(path)}
    for name, run in (("report", lambda: _cli(["report", path])),
                      ("export", lambda: _export(path, os.path.join(out_dir, "out.pcapng"))),
                      ("api", lambda: _api(path)), ("tui", lambda: _tui(path))):
        signal.alarm(ALARM_S)
        try:
            outcome: Any = run()
        except Hang:
            outcome = "hang"
        except BaseException:  # exactly what this worker is here to catch
            outcome = "traceback: " + traceback.format_exc(limit=-3).replace("\n", " | ")
        finally:
            signal.alarm(0)
        if isinstance(outcome, tuple):
            code, stderr = outcome
            lines = [line for line in stderr.splitlines() if line.strip()]
            outcome = {"code": code, "stderr": lines}
        result[name] = outcome
    return result


def main() -> None:
    signal.signal(signal.SIGALRM, _alarm)
    with tempfile.TemporaryDirectory() as out_dir:
        for path in sys.argv[1:]:
            sys.stdout.write(json.dumps(check(path, out_dir)) + "\n")
            sys.stdout.flush()
    sys.stdout.write(json.dumps({"maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}) + "\n")


if __name__ == "__main__":
    main()
