"""Kernel pseudo-filesystems that tracing needs: tracefs and debugfs.

BCC resolves its tracefs path when it is imported, so mount these before anything imports bcc.
"""

from __future__ import annotations

import os
import subprocess

from tracer.output.errors import KernelError

TRACEFS = "/sys/kernel/tracing"
DEBUGFS = "/sys/kernel/debug"


def _mounted_types() -> dict[str, str]:
    mounts: dict[str, str] = {}
    try:
        with open("/proc/mounts", encoding="utf-8") as handle:
            for line in handle:
                fields = line.split()
                if len(fields) >= 3:
                    mounts[fields[1]] = fields[2]
    except OSError:
        pass
    return mounts


def tracefs_path() -> str | None:
    """Where tracepoint definitions can be read, or None when tracefs is not mounted."""
    for candidate in (TRACEFS, os.path.join(DEBUGFS, "tracing")):
        if os.path.isdir(os.path.join(candidate, "events")):
            return candidate
    return None


def _mount(fstype: str, target: str) -> None:
    result = subprocess.run(
        ["mount", "-t", fstype, fstype, target], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        # mount(8) adds a second line ("dmesg(1) may have more information"); the error stays one line.
        detail = next((line.strip() for line in result.stderr.splitlines() if line.strip()), "mount failed")
        raise KernelError(
            f"cannot mount {fstype} on {target}: {detail}",
            f"mount it by hand: mount -t {fstype} {fstype} {target} (in a container: mount it on the host "
            "and bind it in, or grant CAP_SYS_ADMIN)",
        )


def ensure_mounted() -> list[str]:
    """Mount tracefs and debugfs when missing; return one line per filesystem saying what was done."""
    report = []
    mounts = _mounted_types()
    for fstype, target in (("tracefs", TRACEFS), ("debugfs", DEBUGFS)):
        if mounts.get(target) == fstype or (fstype == "tracefs" and tracefs_path()):
            report.append(f"{fstype}: mounted")
            continue
        if os.geteuid() != 0:
            raise KernelError(f"{fstype} is not mounted at {target}", "run podtrace with sudo so it can mount it")
        _mount(fstype, target)
        report.append(f"{fstype}: mounted now on {target}")
    return report
