"""tc (clsact) path programs on chosen interfaces, attached inside the interface's network namespace.

podtrace adds its own filters at a priority of its own and removes only those, so an existing clsact
qdisc (Cilium, Calico eBPF) is left as it was; the qdisc is deleted only when podtrace created it.

Every filter carries an owner mark: priority PRIORITY, the name `podtrace-ingress`/`podtrace-egress`
(TCA_BPF_NAME) and the owning process's PID as its handle. A session killed with SIGKILL cannot remove its
filters, so the next session on an interface removes those whose owner is no longer running (and only
those: a live session's filters, or anyone else's, are never touched); `podtrace doctor` lists them.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from tracer.output.errors import KernelError, UsageError
from tracer.probes.netfilter import entered_netns

PRIORITY = 49001  # far from what CNIs use (they sit at 1 and at their own handles)
PARENTS = {"ingress": "ffff:fff2", "egress": "ffff:fff3"}
PARENT_IDS = {"ingress": 0xFFFFFFF2, "egress": 0xFFFFFFF3}
NAME_PREFIX = "podtrace-"
LEGACY_HANDLE = 1  # podtrace before owner marks used handle 1 for every filter: the owner is unknown


@dataclass
class TcAttachment:
    netns: str | None
    ifname: str
    index: int
    created_qdisc: bool
    handle: int = 0


@dataclass(frozen=True)
class TcFilter:
    """A podtrace tc filter found on an interface: where, which direction and whose."""

    netns: str | None
    ifname: str
    index: int
    direction: str
    handle: int  # the owner's PID (LEGACY_HANDLE: an older podtrace, owner unknown)

    @property
    def owner_alive(self) -> bool:
        """The owner PID runs podtrace (a reused PID running something else, or ourselves, is not the owner)."""
        if self.handle in (LEGACY_HANDLE, os.getpid()):
            return False
        try:
            with open(f"/proc/{self.handle}/cmdline", "rb") as cmdline:
                words = cmdline.read().split(b"\0")
        except OSError:
            return False
        return any(b"podtrace" in word or b"tracer" in word for word in words)

    @property
    def owner(self) -> str:
        return "an older podtrace" if self.handle == LEGACY_HANDLE else f"pid {self.handle}"

    def describe(self) -> str:
        state = "running" if self.owner_alive else "no longer running"
        return f"{self.netns or 'host'}/{self.ifname} {self.direction} (owner {self.owner}, {state})"


def parse_target(target: str) -> tuple[str | None, str]:
    """"IF" or "NETNS/IF" -> (netns or None, interface)."""
    netns, _, ifname = target.rpartition("/")
    if not ifname:
        raise UsageError(f"bad --tc target {target!r}", "use IF or NETNS/IF, e.g. --tc pt-node1/flannel.1")
    return (netns or None), ifname


def _words(err: Any) -> str:
    """A NetlinkError's errno in words (its str() is a raw tuple such as "(17, 'File exists')")."""
    code = getattr(err, "code", 0)
    return os.strerror(code) if code else str(err)


def _ours(ipr: Any, netns: str | None, ifname: str, index: int) -> Iterator[TcFilter]:
    """podtrace's filters on an interface: the priority and the name prefix, in the clsact hooks."""
    from pyroute2.netlink.exceptions import NetlinkError

    for direction, parent in PARENT_IDS.items():
        try:
            found = ipr.get_filters(index=index, parent=parent)
        except NetlinkError:  # no clsact qdisc: nothing attached there
            continue
        for message in found:
            options = message.get_attr("TCA_OPTIONS")
            name = options.get_attr("TCA_BPF_NAME") if options is not None else None
            prio = message["info"] >> 16
            if message["handle"] and prio == PRIORITY and str(name or "").startswith(NAME_PREFIX):
                yield TcFilter(netns, ifname, index, direction, int(message["handle"]))


def _remove(ipr: Any, stale: TcFilter) -> None:
    ipr.tc("del-filter", "bpf", stale.index, stale.handle, parent=PARENTS[stale.direction], prio=PRIORITY)


def attach(target: str, fds: dict[str, int]) -> TcAttachment:
    from pyroute2 import IPRoute  # only when tc is asked for
    from pyroute2.netlink.exceptions import NetlinkError

    netns, ifname = parse_target(target)
    handle = os.getpid()
    with entered_netns(netns), IPRoute() as ipr:
        found = ipr.link_lookup(ifname=ifname)
        if not found:
            raise UsageError(f"no interface {ifname!r} in {netns or 'this namespace'}")
        index = found[0]
        stale = [f for f in _ours(ipr, netns, ifname, index) if not f.owner_alive]
        for leftover in stale:
            try:
                _remove(ipr, leftover)
            except NetlinkError as err:
                raise KernelError(f"cannot remove a stale podtrace tc filter on {target}: {_words(err)}") from err
        if stale:
            owners = sorted({f.owner for f in stale})
            sys.stderr.write(f"podtrace: removed {len(stale)} stale podtrace tc filter(s) on {target} left by "
                             f"{', '.join(owners)} (killed?)\n")
        created = False
        try:
            ipr.tc("add", "clsact", index)
            created = True
        except NetlinkError as err:
            if err.code != 17:  # EEXIST: someone else's clsact, fine
                raise KernelError(f"cannot add a clsact qdisc on {target}: {_words(err)}") from err
        try:
            for direction, parent in PARENTS.items():
                ipr.tc("add-filter", "bpf", index, handle, fd=fds[direction], name=f"{NAME_PREFIX}{direction}",
                       parent=parent, classid=1, direct_action=True, prio=PRIORITY)
        except NetlinkError as err:
            raise KernelError(f"cannot attach tc programs on {target}: {_words(err)}",
                              "run `podtrace doctor` to list podtrace's tc filters") from err
    return TcAttachment(netns, ifname, index, created, handle)


def detach(attachment: TcAttachment) -> None:
    from pyroute2 import IPRoute

    try:
        with entered_netns(attachment.netns), IPRoute() as ipr:
            others = [f for f in _ours(ipr, attachment.netns, attachment.ifname, attachment.index)
                      if f.handle != attachment.handle]
            if attachment.created_qdisc and not others:
                ipr.tc("del", "clsact", attachment.index)
                return
            for parent in PARENTS.values():
                _quietly(ipr.tc, "del-filter", "bpf", attachment.index, attachment.handle, parent=parent,
                         prio=PRIORITY)
    except Exception:  # the interface or namespace may be gone already: nothing left to remove
        return


def leftovers() -> list[TcFilter]:
    """podtrace's tc filters whose owner is no longer running, in this namespace and every `ip netns` one."""
    from pyroute2 import IPRoute

    from tracer.node.names import named_netns

    found: list[TcFilter] = []
    for netns in [None, *named_netns()]:
        try:
            with entered_netns(netns), IPRoute() as ipr:
                for link in ipr.get_links():
                    ifname = str(link.get_attr("IFLA_IFNAME"))
                    found += [f for f in _ours(ipr, netns, ifname, link["index"]) if not f.owner_alive]
        except Exception:  # a namespace that vanished while we looked has no filters
            continue
    return found


def _quietly(call: Any, *args: Any, **kwargs: Any) -> None:
    try:
        call(*args, **kwargs)
    except Exception:
        return
