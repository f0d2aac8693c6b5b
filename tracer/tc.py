"""tc (clsact) path programs on chosen interfaces, attached inside the interface's network namespace.

podtrace adds its own filters at a priority of its own and removes only those, so an existing clsact
qdisc (Cilium, Calico eBPF) is left as it was; the qdisc is deleted only when podtrace created it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tracer.errors import KernelError, UsageError
from tracer.netfilter import entered_netns

PRIORITY = 49001  # far from what CNIs use (they sit at 1 and at their own handles)
PARENTS = {"ingress": "ffff:fff2", "egress": "ffff:fff3"}


@dataclass
class TcAttachment:
    netns: str | None
    ifname: str
    index: int
    created_qdisc: bool


def parse_target(target: str) -> tuple[str | None, str]:
    """"IF" or "NETNS/IF" -> (netns or None, interface)."""
    netns, _, ifname = target.rpartition("/")
    if not ifname:
        raise UsageError(f"bad --tc target {target!r}", "use IF or NETNS/IF, e.g. --tc pt-node1/flannel.1")
    return (netns or None), ifname


def attach(target: str, fds: dict[str, int]) -> TcAttachment:
    from pyroute2 import IPRoute  # noqa: PLC0415 - only when tc is asked for
    from pyroute2.netlink.exceptions import NetlinkError  # noqa: PLC0415

    netns, ifname = parse_target(target)
    with entered_netns(netns), IPRoute() as ipr:
        found = ipr.link_lookup(ifname=ifname)
        if not found:
            raise UsageError(f"no interface {ifname!r} in {netns or 'this namespace'}")
        index = found[0]
        created = False
        try:
            ipr.tc("add", "clsact", index)
            created = True
        except NetlinkError as err:
            if err.code != 17:  # EEXIST: someone else's clsact, fine
                raise KernelError(f"cannot add a clsact qdisc on {target}: {err}") from err
        try:
            for direction, parent in PARENTS.items():
                ipr.tc("add-filter", "bpf", index, ":1", fd=fds[direction], name=f"podtrace-{direction}",
                       parent=parent, classid=1, direct_action=True, prio=PRIORITY)
        except NetlinkError as err:
            raise KernelError(f"cannot attach tc programs on {target}: {err}") from err
    return TcAttachment(netns, ifname, index, created)


def detach(attachment: TcAttachment) -> None:
    from pyroute2 import IPRoute  # noqa: PLC0415

    try:
        with entered_netns(attachment.netns), IPRoute() as ipr:
            if attachment.created_qdisc:
                ipr.tc("del", "clsact", attachment.index)
                return
            for parent in PARENTS.values():
                _quietly(ipr.tc, "del-filter", "bpf", attachment.index, ":1", parent=parent, prio=PRIORITY)
    except Exception:  # noqa: BLE001 - the interface or namespace may be gone already: nothing left to remove
        return


def _quietly(call: Any, *args: Any, **kwargs: Any) -> None:
    try:
        call(*args, **kwargs)
    except Exception:  # noqa: BLE001
        return
