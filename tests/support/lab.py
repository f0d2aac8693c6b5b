"""The built-in lab for end-to-end tests: one user at a time across test processes.

The lab's namespaces have fixed names, so two test runs (a developer's and CI's, or two helpers') that bring it
up at once break each other. Every test module that needs the lab takes `lab_lock()` (an flock: other test
processes queue behind it) and, holding it, waits for a lab someone started by hand to go down before building
its own. It always takes its own lab down, faults and all, even when a test fails.
"""

from __future__ import annotations

import fcntl
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tracer.lab import control, faults

LOCK_PATH = "/run/lock/podtrace-lab-tests.lock"
LOCK_WAIT_S = 1200  # a queued test module waits for whole modules of other runs (several minutes each)
FOREIGN_LAB_WAIT_S = 300  # a lab brought up outside the tests (`podtrace lab up`): wait for its owner
OWNER_FILE = Path("/run/lock/podtrace-lab-tests.owner")  # the pid of the test process whose lab is up
_held = 0  # this process's nesting depth: flock is per open file, so a second open here would deadlock


@contextmanager
def lab_lock() -> Iterator[None]:
    global _held
    if os.geteuid() != 0:
        pytest.skip("the lab needs root")
    if _held:
        _held += 1
        try:
            yield
        finally:
            _held -= 1
        return
    os.makedirs(os.path.dirname(LOCK_PATH), exist_ok=True)
    with open(LOCK_PATH, "w", encoding="utf-8") as handle:
        deadline = time.monotonic() + LOCK_WAIT_S
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    message = f"another test run held the lab for {LOCK_WAIT_S} s"
                    if os.environ.get("CI") == "true":
                        pytest.fail(message)
                    pytest.skip(message)
                time.sleep(2)
        _held = 1
        try:
            yield
        finally:
            _held = 0
            fcntl.flock(handle, fcntl.LOCK_UN)


def _owner_alive() -> bool | None:
    """Whether the test process that brought the lab up still runs; None when no test brought it up."""
    try:
        pid = int(OWNER_FILE.read_text().strip())
    except (OSError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def wait_for_foreign_lab() -> None:
    """Holding the lock, a lab that is up belongs to no running test.

    A lab left by a test run that died (its owner file names a dead process) is taken down, as is any lab under
    CI, where nothing else runs; a lab someone brought up by hand is waited for, and under CI that fails rather
    than skips, so a run cannot go green with the lab's tests unrun.
    """
    if control.is_up() and (os.environ.get("CI") == "true" or _owner_alive() is False):
        sys.stderr.write("tests: taking down a lab left up by an earlier run\n")
        take_down()
    deadline = time.monotonic() + FOREIGN_LAB_WAIT_S
    while control.is_up():
        if time.monotonic() > deadline:
            status = control.status()
            message = (f"the lab is up outside the tests (proxy mode {status.get('proxy_mode')}) for "
                       f"{FOREIGN_LAB_WAIT_S} s: `podtrace lab status`, `podtrace lab down`")
            if os.environ.get("CI") == "true":
                pytest.fail(message)
            pytest.skip(message)
        time.sleep(5)


def take_down() -> None:
    try:
        if control.is_up():
            faults.clear_all()
    finally:
        control.down()
        OWNER_FILE.unlink(missing_ok=True)


@contextmanager
def exclusive_lab(**up_options: Any) -> Iterator[dict[str, Any]]:
    """The lab up with `control.up(**up_options)` for the duration; yields what `up` returned.

    Nested in this process (a module fixture's lab is still up when a test builds one of its own), the lab that is
    up is this process's: it is replaced, not waited for.
    """
    nested = _held > 0
    with lab_lock():
        if nested:
            take_down()
        wait_for_foreign_lab()
        try:
            result = control.up(**up_options)
            OWNER_FILE.parent.mkdir(parents=True, exist_ok=True)
            OWNER_FILE.write_text(f"{os.getpid()}\n")
            yield result
        finally:
            take_down()


@pytest.fixture(scope="module")
def iptables_lab() -> Iterator[None]:
    """An iptables-mode lab for a test module (import it, and `faults_cleared`, into the module)."""
    with exclusive_lab(proxy_mode="iptables"):
        yield


@pytest.fixture
def faults_cleared(iptables_lab: None) -> Iterator[None]:
    """The module's lab, every fault cleared after the test whatever it switched on."""
    yield
    faults.clear_all()
