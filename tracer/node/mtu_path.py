"""The links along a pod's path to a destination, read with netlink (pyroute2) in the pod's and the node's
namespaces: pod eth0 -> its veth peer -> the bridge -> the overlay device -> the underlay device."""

from __future__ import annotations

import ipaddress
import os
from typing import Any

from tracer.analysis.mtu import OVERLAY_KINDS, LinkInfo, PathLinks
from tracer.node.flannel import SUBNET_ENV, parse_subnet_env
from tracer.output.errors import UsageError

NETNS_DIR = "/run/netns"

def flannel_mtu(path: str = SUBNET_ENV) -> int | None:
    try:
        with open(path, encoding="utf-8") as handle:
            value = parse_subnet_env(handle.read()).get("FLANNEL_MTU")
    except OSError:
        return None
    return int(value) if value and value.isdigit() else None


def _netns_handle(name: str) -> Any:
    from pyroute2 import IPRoute, NetNS  # netlink only where collection runs

    if name in ("", "host"):
        return IPRoute()
    return NetNS(name)


def _attr(msg: Any, name: str) -> Any:
    return msg.get_attr(name) if msg is not None else None


def _link(ipr: Any, index: int, netns: str) -> tuple[LinkInfo, Any]:
    msg = ipr.get_links(index)[0]
    info = _attr(msg, "IFLA_LINKINFO")
    kind = _attr(info, "IFLA_INFO_KIND") or ""
    return LinkInfo(msg.get_attr("IFLA_IFNAME"), int(msg.get_attr("IFLA_MTU")), kind, netns, index), msg


def _route(ipr: Any, target: str) -> tuple[int, str]:
    try:
        routes = ipr.route("get", dst=target)
    except Exception as err:  # pyroute2 raises NetlinkError for unreachable targets
        raise UsageError(f"no route to {target}: {err}") from err
    msg = routes[0]
    return int(msg.get_attr("RTA_OIF")), msg.get_attr("RTA_PREFSRC") or ""


def _namespace_file(name: str) -> str:
    return "/proc/1/ns/net" if name == "host" else os.path.join(NETNS_DIR, name)


def _is_link_netns(src: Any, name: str, link_nsid: int | None) -> bool:
    """Whether namespace `name` is the one the pod's veth names by IFLA_LINK_NETNSID (as the pod's namespace numbers
    it). Interface indexes repeat across namespaces (every pod's eth0 may be 2 with its peer at 2), so a matching
    index pair alone can name another pod's namespace; without an id to compare, the index match decides."""
    if link_nsid is None:
        return True
    try:
        fd = os.open(_namespace_file(name), os.O_RDONLY)
    except OSError:
        return False
    try:
        return int(src.get_netnsid(fd=fd).get("nsid", -1)) == link_nsid
    except Exception:  # an older kernel without RTM_GETNSID: fall back to the index match
        return True
    finally:
        os.close(fd)


def _find_veth_peer(pod_ifindex: int, peer_ifindex: int, skip: str, link_nsid: int | None = None
                    ) -> tuple[str, LinkInfo, Any] | None:
    """The namespace holding the veth peer: its ifindex is our IFLA_LINK, its IFLA_LINK is our ifindex, and it is
    the namespace our veth's IFLA_LINK_NETNSID names."""
    try:
        names = sorted(os.listdir(NETNS_DIR))
    except OSError:
        names = []
    src = _netns_handle(skip)
    try:
        candidates = [name for name in ["host", *names] if name != skip and _is_link_netns(src, name, link_nsid)]
    finally:
        src.close()
    for name in candidates:
        try:
            ipr = _netns_handle(name)
        except Exception:  # a namespace that vanished meanwhile
            continue
        try:
            found = ipr.get_links(peer_ifindex)
        except Exception:  # no such index there
            found = []
        try:
            for msg in found:
                if msg.get_attr("IFLA_LINK") == pod_ifindex:
                    kind = _attr(_attr(msg, "IFLA_LINKINFO"), "IFLA_INFO_KIND") or ""
                    if kind == "veth":
                        return name, LinkInfo(msg.get_attr("IFLA_IFNAME"), int(msg.get_attr("IFLA_MTU")), kind, name,
                                              peer_ifindex), msg
        finally:
            ipr.close()
    return None


def collect_path(src_netns: str, target: str, subnet_env: str = SUBNET_ENV) -> PathLinks:
    """Read link MTUs along src_netns -> target with netlink, in the pod's and then the node's namespace."""
    try:
        ipaddress.ip_address(target)
    except ValueError as err:
        raise UsageError(f"{target!r} is not an IP address") from err
    ipr = _netns_handle(src_netns)
    try:
        oif, src_ip = _route(ipr, target)
        pod, pod_msg = _link(ipr, oif, src_netns)
    finally:
        ipr.close()
    host_veth = bridge = overlay = underlay = None
    family = 4
    if pod.kind == "veth":
        peer_index = pod_msg.get_attr("IFLA_LINK")
        link_nsid = pod_msg.get_attr("IFLA_LINK_NETNSID")
        found = _find_veth_peer(pod.ifindex, peer_index, src_netns, link_nsid) if peer_index else None
        if found:
            node, host_veth, veth_msg = found
            master = veth_msg.get_attr("IFLA_MASTER")
            nipr = _netns_handle(node)
            try:
                if master:
                    bridge, _ = _link(nipr, master, node)
                out_index, _ = _route(nipr, target)
                out, out_msg = _link(nipr, out_index, node)
                if out.kind in OVERLAY_KINDS:
                    overlay = out
                    data = _attr(_attr(out_msg, "IFLA_LINKINFO"), "IFLA_INFO_DATA")
                    if _attr(data, "IFLA_VXLAN_LOCAL6") or _attr(data, "IFLA_VXLAN_GROUP6"):
                        family = 6
                    lower = _attr(data, "IFLA_VXLAN_LINK") or _attr(out_msg, "IFLA_LINK")
                    if lower and lower != out_index:
                        underlay, _ = _link(nipr, lower, node)
                    else:
                        # No lower device recorded: the one the node's default route uses (TEST-NET addresses).
                        under_index, _ = _route(nipr, "2001:db8::1" if family == 6 else "192.0.2.1")
                        underlay, _ = _link(nipr, under_index, node)
                elif bridge is None or out.ifindex != bridge.ifindex:
                    underlay = out  # routed without encapsulation (host-gw, Calico BGP)
            finally:
                nipr.close()
    return PathLinks(target, src_ip, pod, host_veth, bridge, overlay, underlay, family, flannel_mtu(subnet_env))
