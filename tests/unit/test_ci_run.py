"""`.ci/run` is red when a test fails and when a pytest run tested nothing (scripts/tests-ran.sh).

The logs fed to the check are the output of real pytest runs on throwaway test files, not hand-written text.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHECK = ROOT / "scripts" / "tests-ran.sh"

PASSING = "def test_one():\n    assert 1 + 1 == 2\n"
SKIPPING = "import pytest\n\n@pytest.mark.skip(reason='needs root')\ndef test_one():\n    pass\n"


def _pytest_log(tmp_path: Path, source: str, *args: str) -> str:
    (tmp_path / "test_sample.py").write_text(source)
    result = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args, "test_sample.py"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False)
    return result.stdout


def _check(log: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(CHECK)], input=log, capture_output=True, text=True, timeout=30, check=False)


@pytest.mark.parametrize("quiet", [["-q"], []])
def test_a_run_that_passed_tests_is_green(tmp_path: Path, quiet: list[str]) -> None:
    result = _check(_pytest_log(tmp_path, PASSING, *quiet))
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("quiet", [["-q"], []])
def test_a_run_where_everything_was_skipped_is_red(tmp_path: Path, quiet: list[str]) -> None:
    log = _pytest_log(tmp_path, PASSING, *quiet) + _pytest_log(tmp_path, SKIPPING, *quiet)
    result = _check(log)
    assert result.returncode == 1
    assert "passed no test" in result.stderr and "1 skipped" in result.stderr


def test_a_run_that_deselected_everything_is_red(tmp_path: Path) -> None:
    result = _check(_pytest_log(tmp_path, PASSING, "-q", "-k", "no_such_test"))
    assert result.returncode == 1 and "1 deselected" in result.stderr


def test_output_without_any_pytest_run_is_red() -> None:
    result = _check("make: *** [Makefile:20: test] Error 2\n")
    assert result.returncode == 1 and "no tests ran" in result.stderr


def test_ci_runs_make_test_and_the_check() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    assert "set -euo pipefail" in ci  # a failing `make test` fails the pipe into tee
    assert re.search(r"^make test 2>&1 \| tee", ci, re.M)
    assert "scripts/tests-ran.sh" in ci
    makefile = (ROOT / "Makefile").read_text()
    test_target = re.search(r"^test: (.*)$", makefile, re.M)
    assert test_target is not None
    assert test_target.group(1).split() == ["setup", "check", "test-e2e", "test-vm"]


def _guarded_run(tmp_path: Path, ci: bool) -> subprocess.CompletedProcess[str]:
    """Real pytest, with the skip guard plugin, on one passing module and one whose tests all skip."""
    (tmp_path / "test_ran.py").write_text(PASSING)
    (tmp_path / "test_skipped.py").write_text(SKIPPING)
    env = {**__import__("os").environ, "PYTHONPATH": str(ROOT / "tests"), "CI": "true" if ci else "false"}
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "support.skipguard", "-q",
                           "test_ran.py", "test_skipped.py"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=60, check=False, env=env)


def test_under_ci_a_module_skipped_as_a_whole_fails_the_run(tmp_path: Path) -> None:
    result = _guarded_run(tmp_path, ci=True)
    assert result.returncode == 1, result.stdout
    assert "skipguard: every test of test_skipped.py skipped under CI: needs root" in result.stdout
    assert "1 passed, 1 skipped" in result.stdout


def test_outside_ci_whole_module_skips_are_allowed(tmp_path: Path) -> None:
    result = _guarded_run(tmp_path, ci=False)
    assert result.returncode == 0, result.stdout
    assert "skipguard" not in result.stdout
