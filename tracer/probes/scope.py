"""Which network namespaces a session traces, so the kernel drops everything else before building an event.

A node (`--node`) is its own namespace plus its pods': the namespaces at the far end of the node's veths. The
node side names them: each veth's `link_netnsid` is the node's id for the peer's namespace, and `ip netns list-id`
maps those ids to `ip netns` names (CNI plugins name pod namespaces under /run/netns, as the lab does). A peer
that has veths into other namespaces too is another node joined by a veth (the lab's underlay), not a pod.
`--netns` scopes to exactly that namespace. The set is kept in a BPF map and refreshed while the session runs,
so a pod created after the start joins it.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass

from tracer.node.names import NETNS_DIR, netns_inode

IP_TIMEOUT_S = 10


def _ip_json(netns: str | None, *argv: str) -> list[dict[str, object]]:
    command = ["ip", "-j", *(["-n", netns] if netns else []), *argv]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=IP_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return []
    if result.returncode != 0 or not result.stdout.strip():
        return []
    try:
        parsed = json.loads(result.stdout)
    except ValueError:
        return []
    return [item for item in parsed if isinstance(item, dict)] if isinstance(parsed, list) else []


def _peer_namespaces(netns: str | None) -> set[str]:
    """`ip netns` names of the namespaces at the far end of this namespace's veths."""
    ids = {entry.get("nsid"): entry.get("name") for entry in _ip_json(netns, "netns", "list-id")}
    peers = set()
    for link in _ip_json(netns, "link", "show", "type", "veth"):
        name = ids.get(link.get("link_netnsid"))
        if isinstance(name, str):
            peers.add(name)
    return peers


def pods_of(node: str | None) -> set[str]:
    """The pod namespaces of a node (None: podtrace's own namespace, the node itself on a real worker)."""
    pods = set()
    for peer in _peer_namespaces(node):
        if peer == node:
            continue
        # A pod's veths all lead back to its node; a namespace with veths elsewhere is another node.
        others = _peer_namespaces(peer)
        if node is None:
            if not others:  # peers of the root namespace name none of it: the root has no `ip netns` name
                pods.add(peer)
        elif others <= {node}:
            pods.add(peer)
    return pods


@dataclass(frozen=True)
class Scope:
    """nodes: node namespaces (None = our own) traced with their pods; exact: namespaces traced alone."""

    nodes: tuple[str | None, ...] = ()
    exact: tuple[str, ...] = ()

    def inodes(self) -> set[int]:
        found = {netns_inode(name) for name in self.exact}
        for node in self.nodes:
            found.add(netns_inode(node or "host"))
            for pod in pods_of(node):
                try:
                    found.add(os.stat(os.path.join(NETNS_DIR, pod)).st_ino)
                except OSError:  # removed since we listed it
                    continue
        return found


class ScopeWatch:
    """Recomputes a scope's namespaces when /run/netns changes (a pod namespace added or removed)."""

    def __init__(self, scope: Scope) -> None:
        self.scope = scope
        self._stamp: float | None = None
        self.current: set[int] = set()

    def _mtime(self) -> float:
        try:
            return os.stat(NETNS_DIR).st_mtime
        except OSError:
            return 0.0

    def changed(self) -> tuple[set[int], set[int]] | None:
        """(added, removed) inodes since the last call, or None when /run/netns did not change."""
        stamp = self._mtime()
        if stamp == self._stamp:
            return None
        self._stamp = stamp
        fresh = self.scope.inodes()
        added, removed = fresh - self.current, self.current - fresh
        self.current = fresh
        return added, removed
