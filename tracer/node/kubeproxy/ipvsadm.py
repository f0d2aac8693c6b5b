"""kube-proxy's IPVS mode read from `ipvsadm -Ln`: one virtual server per VIP:port with its real servers. IPVS
carries no Service names."""

from __future__ import annotations

import re

from tracer.node.kubeproxy.model import Endpoint, ServiceMap, ServicePort

_IPVS_VS = re.compile(r"^(?P<proto>TCP|UDP|SCTP)\s+(?P<addr>\S+):(?P<port>\d+)\s+(?P<sched>\S+)")
_IPVS_RS = re.compile(r"^\s+->\s+(?P<addr>\S+):(?P<port>\d+)\s+(?P<fwd>\w+)\s+(?P<weight>\d+)")


def parse_ipvsadm(text: str) -> ServiceMap:
    """Virtual servers and real servers from `ipvsadm -Ln`. IPVS keeps no Service names: `name` stays ""."""
    smap = ServiceMap()
    current: ServicePort | None = None
    for line in text.splitlines():
        vs = _IPVS_VS.match(line)
        if vs:
            current = ServicePort("", vs.group("proto").lower(), vip=vs.group("addr").strip("[]"),
                                  port=int(vs.group("port")))
            smap.ports.append(current)
            continue
        rs = _IPVS_RS.match(line)
        if rs and current is not None and rs.group("addr") != "RemoteAddress":
            current.endpoints.append(Endpoint(rs.group("addr").strip("[]"), int(rs.group("port"))))
    for p in smap.ports:
        p.no_endpoints = not p.endpoints
    if smap.ports:
        smap.mode = "ipvs"
        smap.modes = ("ipvs",)
    return smap
