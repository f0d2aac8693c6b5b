"""Service port names as kube-proxy writes them: `namespace/name:portname` in iptables rule comments (current and
old forms) and in nftables chain names (`service-<hash>-<ns>/<name>/<proto>/<portname>`)."""

from __future__ import annotations

import re

PORT_NAME = re.compile(r"^(?P<ns>[^/\s]+)/(?P<name>[^:\s]+)(?::(?P<port>\S+))?$")
# kube-proxy nftables chain names: <kind>-<hash8>-<ns>/<name>/<proto>/<portname>[__<ip>/<port>]
NFT_CHAIN = re.compile(r"^(?P<kind>service|external|endpoint|firewall|local)-(?P<hash>[A-Z2-7]{8})-(?P<ns>[^/]+)/"
                       r"(?P<name>[^/]+)/(?P<proto>[a-z]+)/(?P<port>[^_/]*)(?:__(?P<ip>[^/]+)/(?P<epport>\d+))?$")

# Comments kube-proxy writes around a Service port name, old and new (pkg/proxy/iptables/proxier.go).
_COMMENT_FORMS = tuple(re.compile(f) for f in (
    r"^(?:masquerade |pod |masquerade LOCAL |route LOCAL )?traffic for (?P<n>\S+) external destinations$",
    r"^masquerade LOCAL traffic for (?P<n>\S+) LB IP$",
    r"^route LOCAL traffic for (?P<n>\S+) LB IP to service chain$",
    r"^other traffic to (?P<n>\S+) will be dropped by KUBE-PROXY-FIREWALL$",
    r"^(?P<n>\S+) traffic not accepted by KUBE-FW-\S+$",
    r"^(?P<n>\S+) health check node port$",
    r"^(?P<n>\S+?):? ?(?:cluster IP|external IP|loadbalancer IP|has no endpoints|has no local endpoints)$",
    r"^(?P<n>\S+?) -> \S+$",
    r"^(?P<n>\S+)$",
))


def service_name_from_comment(comment: str) -> str:
    """`default/web:http` from kube-proxy's comments ("... cluster IP", "... -> 10.0.0.1:80", "... has no endpoints",
    "masquerade traffic for ... external destinations"); "" when the comment names no Service.

    An unnamed port is `ns/name` in current kube-proxy and `ns/name:` in old ones ("kube-system/heapster: cluster
    IP"); both give `ns/name`."""
    text = comment.strip()
    for form in _COMMENT_FORMS:
        m = form.match(text)
        if m:
            name = m.group("n")
            name = name[:-1] if name.endswith(":") else name
            return name if PORT_NAME.match(name) else ""
    return ""


def name_from_chain(chain: str) -> str:
    m = NFT_CHAIN.match(chain)
    if not m:
        return ""
    return f"{m.group('ns')}/{m.group('name')}" + (f":{m.group('port')}" if m.group("port") else "")
