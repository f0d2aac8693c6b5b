"""`lab up`, `lab down` and `lab status`: build the lab from a manifest, record it, remove all of it."""

from __future__ import annotations

import ipaddress
import os
import shutil
import time
from collections.abc import Callable
from typing import Any

from tracer.lab import kubelet_layout, processes, proxy, sh, state, topology
from tracer.lab import manifest as mf
from tracer.output.errors import LabError

Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


def is_up() -> bool:
    return state.load() is not None


def up(manifest_path: str | None = None, proxy_mode: str = "iptables", services: int = 0,
       if_down: bool = False, progress: Progress = _quiet) -> dict[str, Any]:
    """Build the lab; LabError if it is already up (unless `if_down`, which makes that a no-op)."""
    current = state.load()
    if current is not None:
        if if_down:
            progress("lab is already up")
            return current
        raise LabError(f"the lab is already up (proxy mode {current['proxy_mode']})",
                       "use `podtrace lab down` first, or `lab up --if-down`")
    sh.run(["id", "-u"])  # cheap check that commands run at all
    proxy.check_mode(proxy_mode)
    processes.ready_timeout()  # a bad $PODTRACE_LAB_READY_TIMEOUT is refused before anything is built
    _load_modules(progress)
    base = mf.load(manifest_path)
    proxy.check_manifest(proxy_mode, base)
    manifest = base.with_dummy_services(services)
    data: dict[str, Any] = {
        "version": state.STATE_VERSION, "manifest": base.to_dict(), "manifest_source": base.source,
        "dummy_services": services, "proxy_mode": proxy_mode, "started": time.time(),
        "netns": topology.netns_names(base), "processes": {}, "faults": {}, "without_endpoints": [],
        # Pod UIDs, as the kubelet's cgroups and directories name pods (tracer/node/podnames.py reads those, not this).
        "pod_uids": {pod.name: kubelet_layout.new_uid() for pod in base.pods},
    }
    # Recorded before anything is built, so `lab down` can clean up after a half-finished `up`.
    state.save(data)
    for old_log in state.STATE_DIR.glob("*.log"):  # logs of the previous run stay until the next `up`
        old_log.unlink(missing_ok=True)
    try:
        topology.build(base, progress)
        progress(f"kube-proxy ({proxy_mode} mode): {len(manifest.services)} Services in "
                 + ", ".join(n.netns for n in manifest.nodes))
        proxy.apply(manifest, proxy_mode)
        data["processes"] = _start_pauses(base, data["pod_uids"], progress)
        state.save(data)
        servers = _start_servers(base, progress)
        for pod in base.pods:
            for pid in servers.get(f"server:{pod.name}", []):
                kubelet_layout.move_into(data["pod_uids"][pod.name], pid)
        data["processes"].update(servers)
        state.save(data)
    except BaseException:
        progress("lab up failed: removing what was built")
        down(progress=_quiet)
        raise
    progress("lab is up")
    return data


# The lab sets net.bridge.bridge-nf-call-iptables, which exists only once br_netfilter is loaded (or built in).
MODULES = ("br_netfilter",)


def _load_modules(progress: Progress) -> None:
    """modprobe what the lab needs where the kernel has loadable modules; kernels without them (built in, or no
    module support at all) are left to the sysctls, which name what is missing."""
    if not os.path.isdir(f"/lib/modules/{os.uname().release}") or not shutil.which("modprobe"):
        return
    for module in MODULES:
        if not os.path.isdir(f"/sys/module/{module}"):
            sh.run(["modprobe", "-q", module], check=False)
            progress(f"modprobe {module}" + ("" if os.path.isdir(f"/sys/module/{module}") else ": not available"))


def _start_pauses(m: mf.Manifest, uids: dict[str, str], progress: Progress) -> dict[str, list[int]]:
    """Each pod's cgroup, kubelet directories and pause process, as a kubelet and its CRI leave them."""
    pids: dict[str, list[int]] = {}
    for pod in m.pods:
        kubelet_layout.add_pod(pod.namespace, pod.name, uids[pod.name])
        pids[f"pause:{pod.name}"] = [kubelet_layout.start_pause(pod.netns, uids[pod.name])]
    progress(f"pods laid out like a kubelet's: cgroups under {kubelet_layout.CGROUP_SUBTREE}/kubepods.slice, "
             f"directories under {kubelet_layout.LAB_ROOT}")
    return pids


def add_pod(name: str, node: str, namespace: str = "default") -> dict[str, str]:
    """A pod the manifest does not know, on `node` of the running lab: namespace, veth on cni0, the next free IP,
    cgroup, kubelet directories and pause process. `lab down` removes it with the rest. Its netns, IP and UID."""
    data = state.require()
    m = mf.parse(data["manifest"], source="lab state")
    host = m.node(node)
    extra = data.setdefault("extra_pods", {})
    used = {p.ip for p in m.pods} | {p["ip"] for p in extra.values()}
    network = ipaddress.ip_network(host.pod_cidr)
    ip = next(str(a) for a in list(network.hosts())[10:] if str(a) not in used)
    pod = mf.Pod(name=name, node=node, ip=ip, namespace=namespace)
    if pod.netns in data["netns"] or name in {p.name for p in m.pods}:
        raise LabError(f"the lab already has a pod named {name}")
    uid = kubelet_layout.new_uid()
    data["netns"].insert(0, pod.netns)  # recorded first, so `lab down` removes a half-made pod
    extra[name] = {"netns": pod.netns, "ip": ip, "node": node, "namespace": namespace, "uid": uid}
    state.save(data)
    topology.add_pod(m, host, pod)
    kubelet_layout.add_pod(namespace, name, uid)
    data.setdefault("processes", {})[f"pause:{name}"] = [kubelet_layout.start_pause(pod.netns, uid)]
    state.save(data)
    return {"netns": pod.netns, "ip": ip, "uid": uid}


def _start_servers(m: mf.Manifest, progress: Progress) -> dict[str, list[int]]:
    pids: dict[str, list[int]] = {}
    ready = []
    for pod in m.pods:
        ports = m.listeners(pod)
        if not any(ports.values()):
            continue
        flag = state.STATE_DIR / f"{pod.name}.ready"
        flag.unlink(missing_ok=True)
        args = ["--name", pod.name, "--ready-file", str(flag), "--discard", "9"] + (["--ipv6"] if pod.ip6 else [])
        for port in ports["TCP"]:
            args += ["--tcp", str(port)]
        for port in ports["UDP"]:
            args += ["--udp", str(port)]
        progress(f"server in {pod.name}: tcp {ports['TCP']} udp {ports['UDP']}")
        pids[f"server:{pod.name}"] = [processes.python_module("tracer.lab.server", *args, netns=pod.netns,
                                                              log=f"{pod.name}.log")]
        ready.append(flag)
    processes.wait_for_files(ready, processes.ready_timeout(), "lab servers")
    for flag in ready:
        flag.unlink(missing_ok=True)
    return pids


def down(progress: Progress = _quiet) -> bool:
    """Remove every process, namespace and link the lab made; True if there was something to remove."""
    try:
        data = state.load()
    except LabError:
        data = None
    names = list(data.get("netns", [])) if data else []
    if data:
        pids = [p for group in data.get("processes", {}).values() for p in group]
        if pids:
            progress(f"stopping {len(pids)} lab processes")
            processes.stop(pids)
    else:
        # No state: clean up the default lab's namespaces, if an earlier run left any.
        names = [n for n in topology.netns_names(mf.load(None)) if sh.netns_exists(n)]
    existed = bool(data) or bool(names)
    topology.destroy(names, progress)
    for problem in kubelet_layout.remove_all():
        progress(f"left behind: {problem}")
    state.remove()
    if state.STATE_DIR.exists():
        for leftover in state.STATE_DIR.glob("*.ready"):
            leftover.unlink(missing_ok=True)
    progress("lab is down" if existed else "lab was not up")
    return existed


def status() -> dict[str, Any]:
    data = state.load()
    if data is None:
        return {"up": False}
    m = state.manifest_of(data)
    procs = {name: [p for p in pids if processes.alive(p)] for name, pids in data.get("processes", {}).items()}
    return {
        "up": True,
        "proxy_mode": data["proxy_mode"],
        "manifest": data.get("manifest_source", "default"),
        "started": data.get("started"),
        "nodes": {n.name: {"netns": n.netns, "ip": n.ip, "pod_cidr": n.pod_cidr,
                           "present": sh.netns_exists(n.netns)} for n in m.nodes},
        "pods": {p.name: {"netns": p.netns, "ip": p.ip, "node": p.node, "present": sh.netns_exists(p.netns)}
                 for p in m.pods},
        "services": len(m.services),
        "dummy_services": data.get("dummy_services", 0),
        "faults": sorted(data.get("faults", {})),
        "processes": {name: {"pids": data["processes"][name], "running": len(alive)}
                      for name, alive in procs.items()},
    }
