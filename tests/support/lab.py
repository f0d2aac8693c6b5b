"""The built-in lab for end-to-end tests: one user at a time across test processes.

The lab's namespaces have fixed names, so two test runs (a developer's and CI's, or two helpers') that bring it
up at once break each other. Every test module that needs the lab takes `lab_lock()` (an flock: other test
processes queue behind it) and, holding it, waits for a lab someone started by hand to go down before building
its own. It always takes its own lab down, faults and all, even when a test fails.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from tracer.lab import control, faults

LOCK_PATH = "/run/lock/podtrace-lab-tests.lock"
LOCK_WAIT_S = 1200  # a queued test module waits for whole modules of other runs (several minutes each)
FOREIGN_LAB_WAIT_S = 300  # a lab brought up outside the tests (`podtrace lab up`): wait for its owner
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
                    pytest.skip(f"another test run held the lab for {LOCK_WAIT_S} s")
                time.sleep(2)
        _held = 1
        try:
            yield
        finally:
            _held = 0
            fcntl.flock(handle, fcntl.LOCK_UN)


def wait_for_foreign_lab() -> None:
    """Holding the lock, a lab that is up belongs to no test: wait for its owner to take it down, or skip."""
    deadline = time.monotonic() + FOREIGN_LAB_WAIT_S
    while control.is_up():
        if time.monotonic() > deadline:
            status = control.status()
            pytest.skip(f"the lab is up outside the tests (proxy mode {status.get('proxy_mode')}) for "
                        f"{FOREIGN_LAB_WAIT_S} s: `podtrace lab status`, `podtrace lab down`")
        time.sleep(5)


def take_down() -> None:
    try:
        if control.is_up():
            faults.clear_all()
    finally:
        control.down()


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
            yield control.up(**up_options)
        finally:
            take_down()
