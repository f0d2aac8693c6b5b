"""Attaching netfilter links at podtrace's points (tracer/probes/nf_points.py) inside a network namespace.

A BPF netfilter link belongs to the network namespace of the process (thread) that creates it, so for a
node namespace (the lab's pt-node1, or the root namespace on a real node) the creating thread enters it
with setns(2) for the duration of the link_create calls, and returns.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
from collections.abc import Iterator

from tracer.output.errors import KernelError
from tracer.probes import nflink
from tracer.probes.nf_points import POINTS, NfPoint

CLONE_NEWNET = 0x40000000


_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


@contextlib.contextmanager
def entered_netns(name: str | None) -> Iterator[None]:
    """Run the block with this thread inside `ip netns` NAME, or the namespace file NAME when it is a path
    (/proc/PID/ns/net); None: stay where we are."""
    if name is None or name == "host":
        yield
        return
    try:
        target = os.open(name if name.startswith("/") else f"/run/netns/{name}", os.O_RDONLY)
    except OSError as err:
        raise KernelError(f"cannot open network namespace {name!r}: {err.strerror}") from err
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        _setns(target)
        try:
            yield
        finally:
            _setns(home)
    finally:
        os.close(target)
        os.close(home)


# The kernel allows one BPF program per hook and priority (EBUSY): another podtrace (a `record` beside a live
# `flows`) or another tool may hold ours. Neighbouring priorities keep the point's meaning, as long as they stay
# clear of the kernel's own hooks (the nearest is 1 away from -99 and 99: DNAT -100, SNAT 100; so step away).
PRIORITY_TRIES = 16


def _attach_near(program_fd: int, point: NfPoint, family: int) -> nflink.NetfilterLink:
    step = 1 if point.priority < 0 else -1
    for offset in range(PRIORITY_TRIES - 1):
        try:
            return nflink.attach(program_fd, point.hook, point.priority + step * offset, family)
        except OSError as err:
            if err.errno != errno.EBUSY:
                raise
    return nflink.attach(program_fd, point.hook, point.priority + step * (PRIORITY_TRIES - 1), family)


def _attach_family(program_fds: dict[str, int], netns: str | None, family: int,
                   points: tuple[NfPoint, ...]) -> list[nflink.NetfilterLink]:
    """One link per point for one family; on a failure the family's links are closed and a KernelError says
    which point the kernel refused."""
    links: list[nflink.NetfilterLink] = []
    try:
        with entered_netns(netns):
            for point in points:
                links.append(_attach_near(program_fds[point.program], point, family))
    except OSError as err:
        for link in links:
            link.close()
        name = "IPv6 " if family == nflink.NFPROTO_IPV6 else ""
        raise KernelError(f"{name}netfilter link at {point.hook} {point.priority} refused: {err.strerror}",
                          "netfilter links need kernel 6.4 or later; see `podtrace doctor`") from err
    return links


def attach_all(program_fds: dict[str, int], netns: str | None,
               points: tuple[NfPoint, ...] = POINTS) -> tuple[list[nflink.NetfilterLink], str]:
    """One link per point and family, created inside `netns`: IPv4, then IPv6 (the hooks are per family, and
    kube-proxy's `ip6 kube-proxy` table and ip6tables NAT run on IPv6's). An IPv4 failure raises; an IPv6 one (a
    kernel without IPv6) leaves IPv4's links and is returned as text, "" when there was none."""
    links = _attach_family(program_fds, netns, nflink.NFPROTO_IPV4, points)
    try:
        return links + _attach_family(program_fds, netns, nflink.NFPROTO_IPV6, points), ""
    except KernelError as err:
        return links, err.message
