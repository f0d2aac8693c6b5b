"""The lab's topology: nodes, pods and Services, read from a JSON manifest (the shipped default or the user's)."""

from __future__ import annotations

import hashlib
import ipaddress
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tracer.output.errors import LabError

DEFAULT_MANIFEST = Path(__file__).with_name("default.json")
# Shipped manifests by name (`lab up --manifest dualstack`): dualstack.json adds an IPv6 ClusterIP and a
# LoadBalancer Service with an ExternalIP, which the lab writes in nftables mode.
SHIPPED = {"default": DEFAULT_MANIFEST, "dualstack": Path(__file__).with_name("dualstack.json")}
NETNS_PREFIX = "pt-"
PROTOCOLS = ("TCP", "UDP")
SERVICE_TYPES = ("ClusterIP", "NodePort", "LoadBalancer")
# The lab's IPv6 ranges are unique-local or documentation addresses, and its ExternalIPs and LoadBalancer IPs are
# documentation addresses (RFC 4193, 3849, 5737): kube-proxy's DNAT catches them on the client's node, and nothing
# the lab sends to them could mean a real host.
LAB_V6_RANGES = tuple(ipaddress.IPv6Network(n) for n in ("fc00::/7", "2001:db8::/32"))
LAB_EXTERNAL_RANGES = tuple(ipaddress.IPv4Network(n) for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24"))


@dataclass(frozen=True)
class Node:
    name: str
    ip: str
    pod_cidr: str
    index: int
    pod_cidr_v6: str = ""  # dual-stack: the node's IPv6 pod subnet

    @property
    def netns(self) -> str:
        return NETNS_PREFIX + self.name

    @property
    def gateway6(self) -> str:
        """cni0's IPv6 address: the first host of the IPv6 pod subnet."""
        return str(ipaddress.ip_network(self.pod_cidr_v6)[1]) if self.pod_cidr_v6 else ""

    @property
    def vtep_ip6(self) -> str:
        """flannel's IPv6 VTEP address: the network address of the node's IPv6 subnet, as for IPv4."""
        return str(ipaddress.ip_network(self.pod_cidr_v6).network_address) if self.pod_cidr_v6 else ""

    @property
    def gateway(self) -> str:
        """cni0's address: the first host of the pod CIDR, as flannel's bridge plugin assigns it."""
        return str(ipaddress.ip_network(self.pod_cidr)[1])

    @property
    def vtep_ip(self) -> str:
        """flannel puts the network address of the node's subnet on flannel.1 (10.244.1.0/32)."""
        return str(ipaddress.ip_network(self.pod_cidr).network_address)

    @property
    def vtep_mac(self) -> str:
        # Locally administered and stable, so the peer's neighbour and FDB entries can be written up front.
        return f"0e:70:74:00:{self.index:02x}:01"


@dataclass(frozen=True)
class Pod:
    name: str
    node: str
    ip: str
    labels: dict[str, str] = field(default_factory=dict)
    namespace: str = "default"
    ip6: str = ""  # dual-stack: the same host number in the node's IPv6 pod subnet

    @property
    def netns(self) -> str:
        return NETNS_PREFIX + self.name

    @property
    def host_veth(self) -> str:
        """The node-side veth, named like the CNI plugins do: `veth` + 8 hex digits."""
        return "veth" + hashlib.sha256(self.name.encode()).hexdigest()[:8]


@dataclass(frozen=True)
class ServicePort:
    name: str
    port: int
    target_port: int
    protocol: str = "TCP"
    node_port: int | None = None


@dataclass(frozen=True)
class Endpoint:
    pod: str
    ip: str
    port: int
    node: str


@dataclass(frozen=True)
class Service:
    namespace: str
    name: str
    cluster_ip: str
    ports: tuple[ServicePort, ...]
    selector: dict[str, str] = field(default_factory=dict)
    type: str = "ClusterIP"
    cluster_ip6: str = ""  # dual-stack: spec.clusterIPs' IPv6 member (the IPv4 cluster_ip is the primary)
    external_ips: tuple[str, ...] = ()  # spec.externalIPs
    lb_ips: tuple[str, ...] = ()  # status.loadBalancer.ingress[].ip

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def needs_nftables(self) -> bool:
        """What only the lab's nftables-mode rules write: an IPv6 ClusterIP, ExternalIPs, LoadBalancer IPs."""
        return bool(self.cluster_ip6 or self.external_ips or self.lb_ips)

    def port_name(self, port: ServicePort) -> str:
        """kube-proxy's ServicePortName string: `namespace/name:port`, the text in its rule comments."""
        return f"{self.namespace}/{self.name}:{port.name}"


@dataclass(frozen=True)
class Manifest:
    name: str
    cluster_cidr: str
    service_cidr: str
    underlay_cidr: str
    underlay_mtu: int
    overlay_device: str
    vni: int
    vxlan_port: int
    overlay_mtu: int
    nodes: tuple[Node, ...]
    pods: tuple[Pod, ...]
    services: tuple[Service, ...]
    source: str = "default"
    cluster_cidr_v6: str = ""
    service_cidr_v6: str = ""

    @property
    def dual_stack(self) -> bool:
        return bool(self.cluster_cidr_v6)

    def node(self, name: str) -> Node:
        for node in self.nodes:
            if node.name == name:
                return node
        raise LabError(f"no node {name!r} in the lab manifest", "nodes: " + ", ".join(n.name for n in self.nodes))

    def pod(self, name: str) -> Pod:
        for pod in self.pods:
            if pod.name == name:
                return pod
        raise LabError(f"no pod {name!r} in the lab manifest", "pods: " + ", ".join(p.name for p in self.pods))

    def service(self, key: str) -> Service:
        for svc in self.services:
            if key in (svc.key, svc.name):
                return svc
        raise LabError(f"no Service {key!r} in the lab manifest", "Services: " + ", ".join(
            s.key for s in self.services[:10]))

    def pods_on(self, node: str) -> list[Pod]:
        return [p for p in self.pods if p.node == node]

    def endpoints(self, svc: Service, port: ServicePort, without: frozenset[str] = frozenset(),
                  family: int = 4) -> list[Endpoint]:
        """Ready endpoints in pod order, as EndpointSlices list them (one slice per address family); none when the
        Service is in `without`."""
        if svc.key in without or not svc.selector:
            return []
        return [Endpoint(p.name, p.ip if family == 4 else p.ip6, port.target_port, p.node) for p in self.pods
                if p.namespace == svc.namespace and all(p.labels.get(k) == v for k, v in svc.selector.items())
                and (family == 4 or p.ip6)]

    def clients(self) -> list[Pod]:
        """Pods that no Service selects: they send the lab's traffic."""
        selected = {ep.pod for svc in self.services for port in svc.ports for ep in self.endpoints(svc, port)}
        return [p for p in self.pods if p.name not in selected]

    def listeners(self, pod: Pod) -> dict[str, list[int]]:
        """Ports the pod's server must listen on, by protocol, so every Service port it backs answers."""
        ports: dict[str, set[int]] = {proto: set() for proto in PROTOCOLS}
        for svc in self.services:
            for port in svc.ports:
                if any(ep.pod == pod.name for ep in self.endpoints(svc, port)):
                    ports[port.protocol].add(port.target_port)
        return {proto: sorted(p) for proto, p in ports.items()}

    def with_dummy_services(self, count: int) -> Manifest:
        """Add `count` extra ClusterIP Services backed by the first Service's pods, for rule-count experiments."""
        if count <= 0:
            return self
        base = next((s for s in self.services if any(self.endpoints(s, p) for p in s.ports)), None)
        if base is None:
            raise LabError("--services needs a Service with endpoints to copy", "add one to the manifest")
        net = ipaddress.ip_network(self.service_cidr)
        used = {s.cluster_ip for s in self.services}
        first = 4096 if net.num_addresses > 4096 + count + 1 else 256
        if net.num_addresses < first + count + 1:
            raise LabError(f"--services {count} does not fit in the service CIDR {self.service_cidr}",
                           "use fewer Services or a larger service_cidr")
        extra = []
        for i in range(count):
            vip = str(net[first + i])
            if vip in used:
                raise LabError(f"dummy Service VIP {vip} collides with a manifest Service", "move that Service")
            port = base.ports[0]
            extra.append(Service(base.namespace, f"dummy-{i}", vip, (replace(port, node_port=None),),
                                 dict(base.selector)))
        return replace(self, services=self.services + tuple(extra))

    def to_dict(self) -> dict[str, Any]:
        v6 = {"cluster_cidr_v6": self.cluster_cidr_v6, "service_cidr_v6": self.service_cidr_v6} \
            if self.dual_stack else {}
        return {
            "name": self.name, "cluster_cidr": self.cluster_cidr, "service_cidr": self.service_cidr, **v6,
            "underlay": {"cidr": self.underlay_cidr, "mtu": self.underlay_mtu},
            "overlay": {"device": self.overlay_device, "vni": self.vni, "port": self.vxlan_port,
                        "mtu": self.overlay_mtu},
            "nodes": [{"name": n.name, "ip": n.ip, "pod_cidr": n.pod_cidr,
                       **({"pod_cidr_v6": n.pod_cidr_v6} if n.pod_cidr_v6 else {})} for n in self.nodes],
            "pods": [{"name": p.name, "node": p.node, "ip": p.ip, "labels": p.labels, "namespace": p.namespace,
                      **({"ip6": p.ip6} if p.ip6 else {})} for p in self.pods],
            "services": [{
                "namespace": s.namespace, "name": s.name, "type": s.type, "cluster_ip": s.cluster_ip,
                "selector": s.selector,
                **({"cluster_ip6": s.cluster_ip6} if s.cluster_ip6 else {}),
                **({"external_ips": list(s.external_ips)} if s.external_ips else {}),
                **({"lb_ips": list(s.lb_ips)} if s.lb_ips else {}),
                "ports": [{"name": p.name, "port": p.port, "target_port": p.target_port, "protocol": p.protocol,
                           **({"node_port": p.node_port} if p.node_port else {})} for p in s.ports],
            } for s in self.services],
        }


def load(path: str | Path | None = None) -> Manifest:
    """Read and check a manifest; `None` means the shipped default, a SHIPPED name (not a file here) that one."""
    shipped = str(path) in SHIPPED and not Path(str(path)).exists()
    where = SHIPPED[str(path)] if shipped else Path(path) if path else DEFAULT_MANIFEST
    try:
        data = json.loads(where.read_text())
    except OSError as err:
        raise LabError(f"cannot read lab manifest {where}: {err.strerror}", "check the --manifest path") from err
    except json.JSONDecodeError as err:
        raise LabError(f"lab manifest {where} is not valid JSON: {err}", "fix the file") from err
    return parse(data, source=str(path) if shipped else str(where) if path else "default")


def parse(data: Any, source: str = "<dict>") -> Manifest:
    try:
        return _parse(data, source)
    except (KeyError, TypeError, ValueError) as err:
        what = f"missing key {err}" if isinstance(err, KeyError) else str(err)
        raise LabError(f"lab manifest {source}: {what}", "see tracer/lab/default.json for the format") from err


def _parse(data: Any, source: str) -> Manifest:
    if not isinstance(data, dict):
        raise TypeError("the top level must be a JSON object")
    cluster = ipaddress.ip_network(data.get("cluster_cidr", "10.244.0.0/16"))
    service_cidr = ipaddress.ip_network(data.get("service_cidr", "10.96.0.0/16"))
    underlay = data.get("underlay", {})
    overlay = data.get("overlay", {})
    underlay_net = ipaddress.ip_network(underlay.get("cidr", "192.168.77.0/24"))
    cluster6 = _lab_v6(data.get("cluster_cidr_v6"), "cluster_cidr_v6")
    service6 = _lab_v6(data.get("service_cidr_v6"), "service_cidr_v6")
    if bool(cluster6) != bool(service6):
        raise ValueError("a dual-stack lab has both cluster_cidr_v6 and service_cidr_v6")

    nodes: list[Node] = []
    for i, raw in enumerate(data["nodes"], start=1):
        node = Node(_name(raw["name"], "node"), str(ipaddress.ip_address(raw["ip"])), raw["pod_cidr"], i,
                    str(ipaddress.IPv6Network(raw["pod_cidr_v6"])) if raw.get("pod_cidr_v6") else "")
        if bool(node.pod_cidr_v6) != bool(cluster6):
            raise ValueError(f"node {node.name}: pod_cidr_v6 goes with cluster_cidr_v6, on every node")
        if cluster6 and not ipaddress.IPv6Network(node.pod_cidr_v6).subnet_of(cluster6):
            raise ValueError(f"node {node.name}: pod_cidr_v6 {node.pod_cidr_v6} is outside cluster_cidr_v6 {cluster6}")
        pod_net = ipaddress.ip_network(node.pod_cidr)
        if not pod_net.subnet_of(cluster):  # type: ignore[arg-type]
            raise ValueError(f"node {node.name}: pod_cidr {pod_net} is outside cluster_cidr {cluster}")
        if ipaddress.ip_address(node.ip) not in underlay_net:
            raise ValueError(f"node {node.name}: ip {node.ip} is outside the underlay {underlay_net}")
        nodes.append(node)
    if len(nodes) != 2 or nodes[0].name == nodes[1].name:
        raise ValueError("the lab has exactly two nodes with different names (one underlay veth joins them)")

    pods: list[Pod] = []
    next_host: dict[str, int] = {n.name: 2 for n in nodes}
    by_node = {n.name: n for n in nodes}
    for raw in data["pods"]:
        name, node_name = _name(raw["name"], "pod"), raw["node"]
        if node_name not in by_node:
            raise ValueError(f"pod {name}: unknown node {node_name!r}")
        net = ipaddress.ip_network(by_node[node_name].pod_cidr)
        if "ip" in raw:
            ip = ipaddress.ip_address(raw["ip"])
        else:
            ip = net[next_host[node_name]]
            next_host[node_name] += 1
        if ip not in net or ip in (net[0], net[1], net.broadcast_address):
            raise ValueError(f"pod {name}: ip {ip} is not a usable address of {net}")
        ip6 = ""
        if cluster6:
            # The pod's host number in the IPv6 subnet is its host number in the IPv4 one.
            net6 = ipaddress.IPv6Network(by_node[node_name].pod_cidr_v6)
            ip6 = str(net6[int(ip) - int(net.network_address)])
        pods.append(Pod(name, node_name, str(ip), dict(raw.get("labels", {})), raw.get("namespace", "default"),
                        ip6))
    names = [p.name for p in pods] + [n.name for n in nodes]
    if len(set(names)) != len(names):
        raise ValueError("pod and node names must be unique (each becomes a netns pt-<name>)")
    if len({p.ip for p in pods}) != len(pods):
        raise ValueError("pod IPs must be unique")

    services: list[Service] = []
    for raw in data.get("services", []):
        kind = raw.get("type", "ClusterIP")
        if kind not in SERVICE_TYPES:
            raise ValueError(f"service {raw.get('name')}: type {kind!r} is not one of {', '.join(SERVICE_TYPES)}")
        ports = []
        for p in raw["ports"]:
            proto = p.get("protocol", "TCP").upper()
            if proto not in PROTOCOLS:
                raise ValueError(f"service {raw['name']}: protocol {proto!r} is not TCP or UDP")
            node_port = p.get("node_port")
            if node_port is not None and kind == "ClusterIP":
                raise ValueError(f"service {raw['name']}: node_port needs type NodePort or LoadBalancer")
            ports.append(ServicePort(p.get("name", str(p["port"])), int(p["port"]),
                                     int(p.get("target_port", p["port"])), proto,
                                     int(node_port) if node_port is not None else None))
        vip = ipaddress.ip_address(raw["cluster_ip"])
        if vip not in service_cidr:
            raise ValueError(f"service {raw['name']}: cluster_ip {vip} is outside service_cidr {service_cidr}")
        vip6 = ""
        if raw.get("cluster_ip6"):
            if not service6:
                raise ValueError(f"service {raw['name']}: cluster_ip6 needs a dual-stack lab (service_cidr_v6)")
            vip6 = str(ipaddress.IPv6Address(raw["cluster_ip6"]))
            if ipaddress.IPv6Address(vip6) not in service6:
                raise ValueError(f"service {raw['name']}: cluster_ip6 {vip6} is outside service_cidr_v6 {service6}")
        lb_ips = tuple(_lab_external(ip, raw["name"]) for ip in raw.get("lb_ips", []))
        if lb_ips and kind != "LoadBalancer":
            raise ValueError(f"service {raw['name']}: lb_ips need type LoadBalancer")
        services.append(Service(raw.get("namespace", "default"), raw["name"], str(vip), tuple(ports),
                                dict(raw.get("selector", {})), kind, vip6,
                                tuple(_lab_external(ip, raw["name"]) for ip in raw.get("external_ips", [])),
                                lb_ips))
    if len({s.key for s in services}) != len(services):
        raise ValueError("Service namespace/name pairs must be unique")

    return Manifest(
        name=data.get("name", "podtrace-lab"), cluster_cidr=str(cluster), service_cidr=str(service_cidr),
        underlay_cidr=str(underlay_net), underlay_mtu=int(underlay.get("mtu", 1500)),
        overlay_device=overlay.get("device", "flannel.1"), vni=int(overlay.get("vni", 1)),
        vxlan_port=int(overlay.get("port", 8472)), overlay_mtu=int(overlay.get("mtu", 1450)),
        nodes=tuple(nodes), pods=tuple(pods), services=tuple(services), source=source,
        cluster_cidr_v6=str(cluster6 or ""), service_cidr_v6=str(service6 or ""))


def _lab_v6(value: Any, what: str) -> ipaddress.IPv6Network | None:
    """An IPv6 range of the lab: unique-local or documentation addresses only."""
    if not value:
        return None
    net = ipaddress.IPv6Network(value)
    if not any(net.subnet_of(r) for r in LAB_V6_RANGES):
        raise ValueError(f"{what} {net} is not a unique-local (fc00::/7) or documentation (2001:db8::/32) range")
    return net


def _lab_external(value: Any, service: str) -> str:
    """An ExternalIP or LoadBalancer IP: IPv4 documentation addresses only (RFC 5737)."""
    ip = ipaddress.IPv4Address(value)
    if not any(ip in r for r in LAB_EXTERNAL_RANGES):
        raise ValueError(f"service {service}: {ip} is not in 192.0.2.0/24, 198.51.100.0/24 or 203.0.113.0/24")
    return str(ip)


def _name(value: Any, what: str) -> str:
    # Names become netns names and must be short, plain DNS labels like Kubernetes object names.
    if not isinstance(value, str) or not value or len(value) > 40 or not all(
            c.isalnum() or c == "-" for c in value):
        raise ValueError(f"{what} name {value!r} must be 1-40 letters, digits or '-'")
    return value.lower()
