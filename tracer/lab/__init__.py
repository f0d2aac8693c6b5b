"""The built-in lab: a two-node Kubernetes node network in network namespaces (`podtrace lab ...`).

Python API: `names()` gives the running lab's pods, Services and nodes; `up()`, `down()`, `status()` manage it.
"""

from __future__ import annotations

from tracer.lab.state import LabNames, PodName, ServiceName, names
from tracer.node import declared_names

__all__ = ["LabNames", "PodName", "ServiceName", "names", "up", "down", "status", "is_up"]


def up(**kwargs: object) -> dict[str, object]:
    from tracer.lab import control

    return control.up(**kwargs)  # type: ignore[arg-type]


def down() -> bool:
    from tracer.lab import control

    return control.down()


def status() -> dict[str, object]:
    from tracer.lab import control

    return control.status()


def is_up() -> bool:
    from tracer.lab import control

    return control.is_up()


def declared(include_dummies: bool = False) -> LabNames | None:
    """The lab as a name provider (tracer/node/declared_names.py): its names when it is up, None when it is down."""
    return names(include_dummies) if is_up() else None


declared_names.register(declared)  # importing the lab (its commands, its tests) lets the core name its pods
