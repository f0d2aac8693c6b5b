"""The built-in lab: a two-node Kubernetes node network in network namespaces (`podtrace lab ...`).

Python API: `names()` gives the running lab's pods, Services and nodes; `up()`, `down()`, `status()` manage it.
"""

from __future__ import annotations

from tracer.lab.state import LabNames, PodName, ServiceName, names

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
