"""Names the environment declares about itself (nodes, pods, Services) where the node alone cannot tell them.

The built-in lab is such a provider: its manifest names its pods and Services. Providers register here (importing
tracer.lab registers the lab's); commands and analysis ask `declared()` and never import the lab, so the core does
not depend on the demo. A provider answers None when it has nothing to say (the lab is down).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from tracer.output.errors import PodtraceError


@dataclass(frozen=True)
class PodName:
    netns: str
    ip: str
    node: str
    namespace: str


@dataclass(frozen=True)
class ServiceName:
    """One Service port, keyed like kube-proxy's comments: `namespace/name:port`."""

    vip: str
    port: int
    proto: str
    node_port: int | None
    endpoints: tuple[tuple[str, str, int], ...]  # (pod, ip, port)


@dataclass(frozen=True)
class DeclaredNames:
    pods: dict[str, PodName]
    services: dict[str, ServiceName]
    nodes: dict[str, str]  # node name -> netns
    node_ips: dict[str, str]  # node name -> underlay IP
    proxy_mode: str


# include_dummies: also the Services that exist only to make a big ruleset (the lab's --services)
Provider = Callable[[bool], "DeclaredNames | None"]
_providers: list[Provider] = []


def register(provider: Provider) -> None:
    if provider not in _providers:
        _providers.append(provider)


def declared(include_dummies: bool = False) -> DeclaredNames | None:
    """The first registered provider's names, None when no provider knows any (or a provider cannot be read)."""
    for provider in _providers:
        try:
            found = provider(include_dummies)
        except PodtraceError:  # a provider's state that cannot be read names nothing; its own command says why
            continue
        if found is not None:
            return found
    return None


def declared_json() -> dict[str, Any] | None:
    """declared() as a recording header keeps it (names.lab)."""
    found = declared()
    return asdict(found) if found is not None else None
