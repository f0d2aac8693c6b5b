"""Pod names from the node alone, without the Kubernetes API.

A pod's network namespace -> a process in it (/proc/PID/ns/net) -> that process's cgroup path, which the kubelet
names after the pod UID (`kubepods/besteffort/pod<UID>/...` with the cgroupfs driver,
`kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod<UID with _>.slice/...` with systemd) -> the
kubelet's own directories for that UID: `var/log/pods/<namespace>_<name>_<UID>` (the only place on the node that
spells namespace and name) and `var/lib/kubelet/pods/<UID>` (the UID is live, the name is not kept there).
Pod IPs are the global addresses of the namespace's interfaces, read with netlink from inside it.

The CRI's sandbox metadata (`crictl pods -o json`) would name pods whose log directory is gone; it is read only
when crictl is installed, and the resolver says when it is not.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from tracer.output.errors import PodtraceError

# A UID as the kubelet writes it into cgroup names: dashes, or underscores under the systemd driver (systemd
# reserves "-" for slice nesting).
_POD_UID = re.compile(r"pod([0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12})")
LOG_PODS = "var/log/pods"
KUBELET_PODS = "var/lib/kubelet/pods"
# Where the built-in lab lays out its kubelet tree; read beside the node's own root (it is absent on real nodes).
LAB_ROOT = "/run/podtrace-lab/root"
CRICTL_TIMEOUT_S = 3.0


def pod_uid_of_cgroup(text: str) -> str | None:
    """The pod UID in a /proc/PID/cgroup file (v1 or v2 lines), or None for a process outside kubepods."""
    for line in text.splitlines():
        path = line.split(":", 2)[-1]
        if "kubepods" not in path:
            continue
        found = _POD_UID.search(path)
        if found:
            return found.group(1).replace("_", "-")
    return None


@dataclass(frozen=True)
class PodMeta:
    namespace: str
    name: str
    how: str  # which node file said so, for "say how you know"


def pods_from_log_dirs(root: str) -> dict[str, PodMeta]:
    """UID -> namespace and name from `<root>/var/log/pods/<namespace>_<name>_<UID>` (neither a namespace nor a
    pod name may contain "_": both are DNS names)."""
    found: dict[str, PodMeta] = {}
    base = os.path.join(root, LOG_PODS)
    try:
        entries = os.listdir(base)
    except OSError:
        return found
    for entry in entries:
        parts = entry.split("_")
        if len(parts) == 3 and all(parts):
            found[parts[2]] = PodMeta(parts[0], parts[1], f"kubelet log dir {os.path.join(base, entry)}")
    return found


def live_pod_uids(root: str) -> set[str]:
    """UIDs the kubelet keeps a pod directory for (`<root>/var/lib/kubelet/pods/<UID>`)."""
    try:
        return set(os.listdir(os.path.join(root, KUBELET_PODS)))
    except OSError:
        return set()


def pods_from_crictl(output: str) -> dict[str, PodMeta]:
    """UID -> namespace and name from `crictl pods -o json` (the CRI's PodSandbox list: items[].metadata)."""
    found: dict[str, PodMeta] = {}
    try:
        items = json.loads(output).get("items") or []
    except (ValueError, AttributeError):
        return found
    for item in items:
        meta = item.get("metadata") or {} if isinstance(item, dict) else {}
        if meta.get("uid") and meta.get("name"):
            found[meta["uid"]] = PodMeta(meta.get("namespace", ""), meta["name"], f"crictl sandbox {item.get('id')}")
    return found


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read()
    except OSError:
        return None


def netns_processes(proc: str = "/proc") -> dict[int, list[int]]:
    """netns inode -> the pids in it, in /proc order (processes that vanish or hide their namespace are skipped)."""
    found: dict[int, list[int]] = {}
    for entry in os.listdir(proc):
        if not entry.isdigit():
            continue
        try:
            inode = os.stat(os.path.join(proc, entry, "ns", "net")).st_ino
        except OSError:
            continue
        found.setdefault(inode, []).append(int(entry))
    return found


def namespace_addresses(pid: int) -> tuple[str, ...]:
    """The global unicast addresses of the network namespace `pid` is in (loopback and link-local left out)."""
    from pyroute2 import IPRoute  # netlink only where the node is read

    from tracer.probes.netfilter import entered_netns

    with entered_netns(f"/proc/{pid}/ns/net"):
        ipr = IPRoute()  # its socket stays in the pod's namespace after the thread leaves it
    try:
        addrs = [a.get_attr("IFA_ADDRESS") for a in ipr.get_addr()]
    finally:
        ipr.close()
    out = []
    for addr in addrs:
        try:
            ip = ipaddress.ip_address(addr)
        except ValueError:
            continue
        if not (ip.is_loopback or ip.is_link_local or ip.is_multicast):
            out.append(str(ip))
    return tuple(out)


@dataclass(frozen=True)
class Pod:
    uid: str
    namespace: str  # "" when no node file named it
    name: str
    ips: tuple[str, ...]
    netns: int
    pid: int
    how: str

    @property
    def named(self) -> bool:
        return bool(self.name)

    @property
    def label(self) -> str:
        """`namespace/name`, or `pod <UID>` when the node keeps no name for it."""
        return f"{self.namespace}/{self.name}" if self.name else f"pod {self.uid}"

    def to_json(self) -> dict[str, object]:
        return {"uid": self.uid, "namespace": self.namespace, "name": self.name, "ips": list(self.ips),
                "netns": self.netns, "how": self.how}


@dataclass
class PodResolver:
    """Pods on this node by IP and by netns inode, from /proc, cgroups and the kubelet's directories under each
    of `roots`. Cached; a lookup of an unknown IP or namespace re-reads the node, at most every `refresh_every` s."""

    roots: tuple[str, ...] = ("/", LAB_ROOT)
    proc: str = "/proc"
    refresh_every: float = 2.0
    crictl: str | None = field(default_factory=lambda: shutil.which("crictl"))
    addresses: Callable[[int], tuple[str, ...]] = namespace_addresses
    notes: list[str] = field(default_factory=list)
    _by_ip: dict[str, Pod] = field(default_factory=dict)
    _by_netns: dict[int, Pod] = field(default_factory=dict)
    _loaded_at: float | None = None

    def refresh(self, keep_gone: bool = False) -> None:
        """Re-read the node; `keep_gone`: pods of the last read that are gone stay known (a one-shot report names
        a pod that lived during the trace even if it is deleted before the end), unless a new pod took their IP."""
        metas: dict[str, PodMeta] = {}
        live: set[str] = set()
        for root in self.roots:
            metas.update(pods_from_log_dirs(root))
            live |= live_pod_uids(root)
        notes = []
        if self.crictl:
            sandboxes = self._crictl_pods()
            metas = {**sandboxes, **metas}  # the log directory is the kubelet's own: it wins
        else:
            notes.append("crictl not installed: CRI sandbox metadata not read (names from the kubelet's directories)")
        by_netns: dict[int, Pod] = {}
        for inode, pids in netns_processes(self.proc).items():
            old = self._by_netns.get(inode)
            if old is not None and old.named and os.path.exists(os.path.join(self.proc, str(old.pid))):
                by_netns[inode] = old  # the same pause process, already named: nothing to re-read
                continue
            pod = self._pod_in(inode, pids, metas, live)
            if pod is not None:
                by_netns[inode] = pod
        gone = [pod for inode, pod in self._by_netns.items() if inode not in by_netns] if keep_gone else []
        self._by_netns = by_netns
        self._by_ip = {ip: pod for pod in (*gone, *by_netns.values()) for ip in pod.ips}
        self.notes = notes
        self._loaded_at = time.monotonic()

    def _pod_in(self, inode: int, pids: list[int], metas: dict[str, PodMeta], live: set[str]) -> Pod | None:
        for pid in pids:
            uid = pod_uid_of_cgroup(_read(os.path.join(self.proc, str(pid), "cgroup")) or "")
            if uid is None:
                continue
            meta = metas.get(uid)
            if meta is None:
                how = "cgroup only" + (" (kubelet pod dir present, no log dir)" if uid in live else "")
                meta = PodMeta("", "", how)
            try:
                ips = self.addresses(pid)
            except (OSError, PodtraceError):  # the process left, or its namespace cannot be entered
                ips = ()
            return Pod(uid, meta.namespace, meta.name, ips, inode, pid, f"cgroup of pid {pid}, {meta.how}")
        return None

    def _crictl_pods(self) -> dict[str, PodMeta]:
        try:
            result = subprocess.run([self.crictl or "crictl", "pods", "-o", "json"], capture_output=True,
                                    text=True, timeout=CRICTL_TIMEOUT_S, check=False)
        except (OSError, subprocess.TimeoutExpired):
            return {}
        return pods_from_crictl(result.stdout) if result.returncode == 0 else {}

    def _stale(self) -> bool:
        return self._loaded_at is None or time.monotonic() - self._loaded_at > self.refresh_every

    def _fresh(self, known: bool) -> None:
        if self._loaded_at is None or (not known and self._stale()):
            self.refresh()

    def by_ip(self, ip: str) -> Pod | None:
        self._fresh(ip in self._by_ip)
        return self._by_ip.get(ip)

    def by_netns(self, inode: int) -> Pod | None:
        self._fresh(inode in self._by_netns)
        return self._by_netns.get(inode)

    def pods(self) -> list[Pod]:
        """Every pod of the node, re-read when the last read is older than `refresh_every` (new pods appear)."""
        if self._stale():
            self.refresh()
        return sorted(self._by_netns.values(), key=lambda pod: pod.label)

    def pod_names(self) -> dict[str, str]:
        """Pod IP -> pod name, as flow tables label pods (named pods only)."""
        return {ip: pod.name for pod in self.pods() if pod.named for ip in pod.ips}

    def name_of_ip(self, ip: str) -> str | None:
        pod = self.by_ip(ip)
        return pod.name if pod is not None and pod.named else None

    def label_of_ip(self, ip: str) -> str | None:
        """`namespace/name` of the pod holding `ip` (`pod <UID>` when unnamed), None for no pod of this node."""
        pod = self.by_ip(ip)
        return pod.label if pod is not None else None

    def ip_labels(self) -> dict[str, str]:
        """Every pod IP -> its label, as a recording keeps them."""
        return {ip: pod.label for pod in self.pods() for ip in pod.ips}


def resolver_for(kubelet_root: str | None) -> PodResolver:
    """The resolver the commands use: `--kubelet-root DIR`, or the node's own / and the lab's root."""
    return PodResolver(roots=(kubelet_root,) if kubelet_root else ("/", LAB_ROOT))

