"""Running ip/iptables/nft/sysctl for the lab: every failure becomes one LabError line naming the command."""

from __future__ import annotations

import ctypes
import os
import shlex
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from tracer.output.errors import LabError

CLONE_NEWNET = 0x40000000


def run(cmd: Sequence[str], netns: str | None = None, stdin: str | None = None, check: bool = True,
        timeout: float = 60) -> str:
    """Run a command (inside `netns` when given) and return its stdout."""
    argv = (["ip", "netns", "exec", netns] if netns else []) + list(cmd)
    try:
        proc = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError as err:
        raise LabError(f"{cmd[0]} is not installed", f"install it to use the lab ({shlex.join(argv)})") from err
    except subprocess.TimeoutExpired as err:
        raise LabError(f"`{shlex.join(argv)}` did not finish in {timeout:g} s", "is the system overloaded?") from err
    if check and proc.returncode != 0:
        detail = (proc.stderr.strip() or proc.stdout.strip()).splitlines()
        errors = [line.strip() for line in detail if "error" in line.lower()]
        reason = (errors or detail or [f"exit status {proc.returncode}"])[0 if errors else -1]
        raise LabError(f"`{_short(argv)}` failed: {reason}")
    return proc.stdout


def ip(*args: str, netns: str | None = None, check: bool = True) -> str:
    return run(["ip", *(["-n", netns] if netns else []), *args], check=check)


def sysctl(netns: str, key: str, value: str | int) -> None:
    """Write a sysctl inside a netns (per-netns keys only: /proc/sys seen from that namespace)."""
    path = "/proc/sys/" + key.replace(".", "/")
    with in_netns(netns):
        try:
            with open(path, "w") as f:
                f.write(str(value))
        except OSError as err:
            raise LabError(f"cannot set {key}={value} in netns {netns}: {err.strerror}",
                           "this kernel may not make it per-netns writable") from err


def read_sysctl(netns: str, key: str) -> str:
    with in_netns(netns), open("/proc/sys/" + key.replace(".", "/")) as f:
        return f.read().strip()


def netns_exists(name: str) -> bool:
    return os.path.exists(f"/run/netns/{name}")


def list_netns() -> list[str]:
    try:
        return sorted(os.listdir("/run/netns"))
    except FileNotFoundError:
        return []


_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise LabError(f"setns failed: {os.strerror(err)}", "the lab needs root")


@contextmanager
def in_netns(name: str) -> Iterator[None]:
    """Switch this thread into a named netns; sockets opened inside stay there after the switch back."""
    try:
        target = os.open(f"/run/netns/{name}", os.O_RDONLY)
    except OSError as err:
        raise LabError(f"network namespace {name} does not exist", "is the lab up? (podtrace lab up)") from err
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        _setns(target)
        yield
    finally:
        _setns(home)
        os.close(home)
        os.close(target)


def _short(argv: Sequence[str]) -> str:
    text = shlex.join(argv)
    return text if len(text) < 160 else text[:157] + "..."
