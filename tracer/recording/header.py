"""The header of a recording: what `record` (and serve's flight recorder) writes first, about the machine, the
kernel, the probes and the node state at the start; the slow parts are read before the probes attach."""

from __future__ import annotations

import argparse
import platform
import socket
import time
from typing import Any

from tracer import __version__
from tracer.events.decode import EVENT_SIZE
from tracer.node.declared_names import declared_json
from tracer.node.flannel import SUBNET_ENV
from tracer.node.podnames import resolver_for
from tracer.output.errors import PodtraceError
from tracer.recording.fileformat import FORMAT_MINOR, FORMAT_VERSION
from tracer.recording.recorded_rules import capture as capture_rules


def _attach_plan() -> tuple[dict[str, Any] | None, str]:
    """The attach ladder's plan for the header; a recording is still worth making without it."""
    try:
        from tracer.kernel.capabilities import probe_kernel

        plan, _trials = probe_kernel()
        return plan.to_json(), ""
    except Exception as err:  # any failure here only costs the header its plan
        return None, str(err) or type(err).__name__


def node_namespaces(args: argparse.Namespace) -> list[str | None]:
    """The namespaces whose links and conntrack a recording keeps: the --node list, else --netns, else our own."""
    return list(getattr(args, "node", None) or [getattr(args, "netns", None)])


def prepare_header(args: argparse.Namespace) -> dict[str, Any]:
    """The slow parts of the header that do not need the probes (the attach ladder loads test programs, the checks
    watch for 0.2 s, kube-proxy's rules take a while on a large node): read before the probes attach, so nothing
    waits in the ring buffer meanwhile."""
    from tracer.recording.recorded_node import collect_conntrack, collect_links

    plan, plan_error = _attach_plan()
    nodes = node_namespaces(args)
    return {
        "attach_plan": plan,
        "attach_plan_error": plan_error,
        "node_checks": _node_checks(args.netns),
        "links": collect_links(nodes, getattr(args, "subnet_env", SUBNET_ENV)),
        "conntrack": collect_conntrack(nodes),  # each node's table at the start (the last trailer has the end)
        "lab": declared_json(),
        # pod IP -> namespace/name, from the node's cgroups and kubelet directories
        "pods": resolver_for(getattr(args, "kubelet_root", None)).ip_labels(),
        **({"services": capture_rules(args.node)} if getattr(args, "node", None) else {}),
    }


def boot_id() -> str | None:
    """The kernel's random id of this boot (None when /proc does not say)."""
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as file:
            return file.read(64).strip() or None
    except (OSError, UnicodeDecodeError):
        return None


def build_header(args: argparse.Namespace, source: Any, netns: dict[int, str],
                 prepared: dict[str, Any] | None = None) -> dict[str, Any]:
    found = dict(prepared if prepared is not None else prepare_header(args))
    wall, mono = time.time_ns(), time.monotonic_ns()
    lab = found.pop("lab")
    pods = found.pop("pods", {})
    return {
        "format_version": FORMAT_VERSION,
        "format_minor": FORMAT_MINOR,
        "podtrace_version": __version__,
        "kernel_release": platform.release(),
        "machine": platform.machine(),
        "hostname": socket.gethostname(),
        "boot_id": boot_id(),  # recordings of one boot share CLOCK_MONOTONIC (podtrace merge: offset 0)
        # events carry bpf_ktime_get_ns (CLOCK_MONOTONIC): wall = ts_ns + wall_offset_ns
        "clock": {"wall_ns": wall, "monotonic_ns": mono, "wall_offset_ns": wall - mono},
        "attached": list(source.attached),
        "programs": list(source.build.programs),
        "drop_reasons": {str(value): name for value, name in sorted(source.reasons.items())},
        "filter": {"expression": " ".join(args.filter), "netns": args.netns, "netns_inode": source.config.netns_inode,
                   "ifname": args.ifname},
        "event_size": EVENT_SIZE,
        "names": {"netns": {str(k): v for k, v in netns.items()}, "lab": lab, "pods": pods},
        **found,  # attach plan, node checks, links (the MTU section), conntrack at the start, kube-proxy's rules
    }


def _node_checks(netns: str | None) -> list[dict[str, Any]] | dict[str, str]:
    """`podtrace check` findings at the start of the recording (a short window: it delays the ready file)."""
    from tracer.check import run_checks

    try:
        return [finding.to_json() for finding in run_checks(netns, window=0.2)]
    except PodtraceError as err:
        return {"error": err.one_line()}
