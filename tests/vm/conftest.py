"""tests/vm: on the host, test_vm.py boots one VM per session; inside it, PODTRACE_VM_INNER=1 selects inner/."""

from __future__ import annotations

import os

import pytest

INSIDE = os.environ.get("PODTRACE_VM_INNER") == "1"

# The inner suite only makes sense on the VM's kernel; the host runner must not run inside the VM.
collect_ignore = ["test_vm.py", "vm_runner.py"] if INSIDE else ["inner"]



def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if INSIDE:
        return
    from vm_runner import OUTCOME  # only on the host

    if OUTCOME.run is not None:
        terminalreporter.write_line(OUTCOME.run.summary())
        terminalreporter.write_line(f"vm: console log and junit in {OUTCOME.run.out_dir}")
    elif OUTCOME.skipped:
        terminalreporter.write_line(f"vm: SKIPPED, the VM tier did not run: {OUTCOME.skipped}")
