"""The VM tier, host side: boot the distro kernel once under virtme-ng, run tests/vm/inner there, and report
each inner test as one test here (pass, fail with the guest's message, or skip with its reason).

When the VM cannot be started (no kernel image, no qemu, no root, boot timeout) every test is skipped with the
reason, and the summary line says the tier did not run.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from vm_runner import OUTCOME, VmRun, VmUnavailable, inner_test_ids, run_vm

pytestmark = pytest.mark.vm


@pytest.fixture(scope="session")
def vm_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VmRun]:
    if OUTCOME.skipped:
        pytest.skip(f"VM tier not run: {OUTCOME.skipped}")
    if OUTCOME.run is None:
        out_dir: Path = tmp_path_factory.mktemp("vm")
        try:
            OUTCOME.run = run_vm(out_dir)
        except VmUnavailable as err:
            OUTCOME.skipped = str(err)
            pytest.skip(f"VM tier not run: {err}")
    yield OUTCOME.run


def test_vm_suite_completed(vm_run: VmRun) -> None:
    """The guest ran pytest to the end (no timeout, no crash before the junit report)."""
    assert not vm_run.timed_out, f"the VM run timed out after {vm_run.total_seconds:.0f} s:\n{vm_run.log_tail()}"
    assert vm_run.results, f"the inner suite wrote no results (vng exit {vm_run.returncode}):\n{vm_run.log_tail()}"


@pytest.mark.parametrize("test_id", inner_test_ids())
def test_in_vm(vm_run: VmRun, test_id: str) -> None:
    result = vm_run.results.get(test_id)
    if result is None:
        pytest.fail(f"{test_id} did not run in the VM:\n{vm_run.log_tail()}")
    if result.outcome == "skipped":
        pytest.skip(f"skipped in the VM: {result.message}")
    if result.outcome == "failed":
        pytest.fail(f"failed in the VM on {vm_run.kernel}:\n{result.message}", pytrace=False)
