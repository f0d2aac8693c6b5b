"""The running lab's state file (/run/podtrace/lab/state.json) and the name maps the tracer reads from it."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from tracer.lab import manifest as mf
from tracer.node.declared_names import DeclaredNames, PodName, ServiceName
from tracer.output.errors import LabError

STATE_DIR = Path(os.environ.get("PODTRACE_LAB_DIR", "/run/podtrace/lab"))
STATE_VERSION = 1


def state_file() -> Path:
    return STATE_DIR / "state.json"


def load() -> dict[str, Any] | None:
    """The state of the running lab, or None when it is down."""
    try:
        data = json.loads(state_file().read_text())
    except FileNotFoundError:
        return None
    except (OSError, json.JSONDecodeError) as err:
        raise LabError(f"lab state {state_file()} is unreadable: {err}", "run `podtrace lab down` to reset") from err
    if not isinstance(data, dict) or data.get("version") != STATE_VERSION:
        raise LabError(f"lab state {state_file()} is from another podtrace version", "run `podtrace lab down`")
    return data


def require() -> dict[str, Any]:
    data = load()
    if data is None:
        raise LabError("the lab is not up", "run `sudo podtrace lab up`")
    return data


def save(data: dict[str, Any]) -> None:
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    tmp = state_file().with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    tmp.replace(state_file())


def remove() -> None:
    state_file().unlink(missing_ok=True)


def manifest_of(data: dict[str, Any]) -> mf.Manifest:
    """The manifest the lab was built from, with its --services dummies."""
    return mf.parse(data["manifest"], source="lab state").with_dummy_services(int(data.get("dummy_services", 0)))


# The lab's names are what it declares to podtrace (tracer/node/declared_names.py); LabNames is the lab API's name.
LabNames = DeclaredNames


def names(include_dummies: bool = False) -> LabNames:
    """Pod, Service and node names of the running lab, for labelling flows. Raises LabError when it is down."""
    data = require()
    m = manifest_of(data) if include_dummies else mf.parse(data["manifest"], source="lab state")
    without = frozenset(data.get("without_endpoints", []))
    services = {}
    for svc in m.services:
        for port in svc.ports:
            eps = tuple((e.pod, e.ip, e.port) for e in m.endpoints(svc, port, without))
            services[svc.port_name(port)] = ServiceName(svc.cluster_ip, port.port, port.protocol, port.node_port,
                                                        eps)
    return LabNames(
        pods={p.name: PodName(p.netns, p.ip, p.node, p.namespace) for p in m.pods},
        services=services,
        nodes={n.name: n.netns for n in m.nodes},
        node_ips={n.name: n.ip for n in m.nodes},
        proxy_mode=data["proxy_mode"],
    )
