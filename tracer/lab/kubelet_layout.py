"""The lab's pods laid out as a kubelet lays them out, so the tracer names them from the node (tracer/node/podnames.py)
and not from the lab's manifest.

Each pod gets a pause process (`sleep infinity` in its namespace, as the pod sandbox's pause container), a cgroup v2
directory of the systemd driver's form under our own subtree
(`<cgroup2>/podtrace-lab/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod<UID_>.slice`) that its
processes are moved into, and the kubelet's directories under the lab root (`var/log/pods/<ns>_<name>_<UID>`,
`var/lib/kubelet/pods/<UID>`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import uuid
from pathlib import Path

from tracer.node.podnames import KUBELET_PODS, LAB_ROOT, LOG_PODS
from tracer.output.errors import LabError

CGROUP_SUBTREE = "podtrace-lab"
QOS_SLICES = ("kubepods.slice", "kubepods-besteffort.slice")


def cgroup2_mount(mounts: str = "/proc/self/mounts") -> str:
    """Where the unified (v2) hierarchy is mounted: /sys/fs/cgroup, or /sys/fs/cgroup/unified on hybrid hosts."""
    try:
        lines = Path(mounts).read_text().splitlines()
    except OSError as err:
        raise LabError(f"cannot read {mounts}: {err.strerror}") from err
    for line in lines:
        fields = line.split()
        if len(fields) > 2 and fields[2] == "cgroup2":
            return fields[1]
    raise LabError("no cgroup v2 hierarchy is mounted", "mount -t cgroup2 none /sys/fs/cgroup/unified")


def new_uid() -> str:
    return str(uuid.uuid4())


def pod_cgroup(uid: str, subtree: str = CGROUP_SUBTREE) -> Path:
    """The pod's cgroup directory in the systemd driver's naming (dashes of the UID become underscores)."""
    base = Path(cgroup2_mount(), subtree, *QOS_SLICES)
    return base / f"kubepods-besteffort-pod{uid.replace('-', '_')}.slice"


def add_pod(namespace: str, name: str, uid: str, root: str = LAB_ROOT, subtree: str = CGROUP_SUBTREE) -> None:
    """The pod's cgroup and kubelet directories (no processes yet)."""
    try:
        pod_cgroup(uid, subtree).mkdir(parents=True, exist_ok=True)
        (Path(root, LOG_PODS) / f"{namespace}_{name}_{uid}").mkdir(parents=True, exist_ok=True)
        (Path(root, KUBELET_PODS) / uid).mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise LabError(f"cannot lay out pod {namespace}/{name}: {err}") from err


def move_into(uid: str, pid: int, subtree: str = CGROUP_SUBTREE) -> None:
    """Put `pid` into the pod's cgroup (its later children are born there)."""
    try:
        (pod_cgroup(uid, subtree) / "cgroup.procs").write_text(f"{pid}\n")
    except OSError as err:
        raise LabError(f"cannot move pid {pid} into the cgroup of pod {uid}: {err.strerror}") from err


def start_pause(netns: str, uid: str, subtree: str = CGROUP_SUBTREE) -> int:
    """The pod's pause process, in its namespace and cgroup; its pid."""
    try:
        proc = subprocess.Popen(["ip", "netns", "exec", netns, "sleep", "infinity"], stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                                cwd="/")
    except OSError as err:
        raise LabError(f"cannot start the pause process of {netns}: {err.strerror}") from err
    move_into(uid, proc.pid, subtree)
    return proc.pid


def remove_pod(namespace: str, name: str, uid: str, root: str = LAB_ROOT, subtree: str = CGROUP_SUBTREE) -> None:
    """Remove one pod's directories; its processes must be gone (a cgroup with processes cannot be removed)."""
    shutil.rmtree(Path(root, LOG_PODS) / f"{namespace}_{name}_{uid}", ignore_errors=True)
    shutil.rmtree(Path(root, KUBELET_PODS) / uid, ignore_errors=True)
    try:
        pod_cgroup(uid, subtree).rmdir()
    except FileNotFoundError:
        pass
    except OSError as err:
        raise LabError(f"cannot remove the cgroup of pod {namespace}/{name}: {err.strerror}") from err


def remove_all(root: str | None = LAB_ROOT, subtree: str = CGROUP_SUBTREE) -> list[str]:
    """Remove the lab's whole cgroup subtree (deepest first) and kubelet tree; what could not go, as messages."""
    problems = []
    try:
        top = Path(cgroup2_mount(), subtree)
    except LabError:
        top = None
    if top is not None and top.exists():
        for dirpath, _dirs, _files in sorted(os.walk(top), key=lambda entry: -entry[0].count("/")):
            try:
                os.rmdir(dirpath)
            except OSError as err:
                problems.append(f"cgroup {dirpath}: {err.strerror}")
    if root is not None:
        shutil.rmtree(root, ignore_errors=True)
        with contextlib.suppress(OSError):
            os.rmdir(os.path.dirname(root))  # /run/podtrace-lab, when nothing else is in it
    return problems
