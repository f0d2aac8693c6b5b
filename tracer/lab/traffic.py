"""Pod -> Service traffic for the lab: TCP connections and UDP datagrams from client pods, bounded in count and time.

Each attempt uses a fresh socket (a new conntrack entry, so kube-proxy's load balancing picks again) created
inside the client pod's netns; the backend's server answers with its pod name, so replies say which endpoint
answered.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import json
import socket
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from tracer.lab import manifest as mf
from tracer.lab import sh, state
from tracer.lab.manifest import Manifest, Pod
from tracer.output.errors import LabError, PodtraceError

MAX_RATE = 5000.0
MAX_DURATION = 24 * 3600.0
MAX_COUNT = 10_000_000
IP_MTU_DISCOVER, IP_PMTUDISC_DO, IP_PMTUDISC_DONT = 10, 2, 0


@dataclass(frozen=True)
class Target:
    name: str
    host: str
    port: int
    proto: str = "TCP"


@dataclass
class TargetStats:
    target: Target
    attempts: int = 0
    endpoints: Counter[str] = field(default_factory=Counter)
    failures: Counter[str] = field(default_factory=Counter)

    @property
    def ok(self) -> int:
        return sum(self.endpoints.values())

    @property
    def failed(self) -> int:
        return sum(self.failures.values())


@dataclass
class Summary:
    clients: list[str]
    seconds: float = 0.0
    per_target: dict[str, TargetStats] = field(default_factory=dict)

    @property
    def attempts(self) -> int:
        return sum(s.attempts for s in self.per_target.values())

    @property
    def ok(self) -> int:
        return sum(s.ok for s in self.per_target.values())

    @property
    def failed(self) -> int:
        return sum(s.failed for s in self.per_target.values())

    def stats(self, name: str) -> TargetStats:
        return self.per_target[name]

    def to_dict(self) -> dict[str, Any]:
        return {
            "clients": self.clients, "seconds": round(self.seconds, 3), "attempts": self.attempts,
            "ok": self.ok, "failed": self.failed,
            "targets": {n: {"host": s.target.host, "port": s.target.port, "proto": s.target.proto,
                            "attempts": s.attempts, "endpoints": dict(s.endpoints), "failures": dict(s.failures)}
                        for n, s in self.per_target.items()},
        }

    def format(self) -> str:
        lines = [f"traffic from {', '.join(self.clients)} for {self.seconds:.1f} s: {self.attempts} attempts,"
                 f" {self.ok} ok, {self.failed} failed"]
        for name, s in self.per_target.items():
            eps = ", ".join(f"{ep} {n}" for ep, n in sorted(s.endpoints.items())) or "-"
            fails = ", ".join(f"{why} {n}" for why, n in sorted(s.failures.items())) or "none"
            where = f"{s.target.proto.lower()} {s.target.host}:{s.target.port}"
            lines.append(f"  {name:<28} {where:<24} {s.attempts:>6} sent  ok: {eps}  failed: {fails}")
        return "\n".join(lines)


def targets(manifest: Manifest, names: list[str] | None = None) -> list[Target]:
    """Every Service port of the manifest (ClusterIP; its IPv6 ClusterIP, ExternalIPs and LoadBalancer IPs as
    `<port> ipv6`, `<port> external <ip>`, `<port> loadbalancer <ip>`), plus NodePorts on the last node's IP."""
    out = []
    node_ip = manifest.nodes[-1].ip
    for svc in manifest.services:
        for port in svc.ports:
            key = svc.port_name(port)
            out.append(Target(key, svc.cluster_ip, port.port, port.protocol))
            if svc.cluster_ip6:
                out.append(Target(f"{key} ipv6", svc.cluster_ip6, port.port, port.protocol))
            out += [Target(f"{key} external {ip}", ip, port.port, port.protocol) for ip in svc.external_ips]
            out += [Target(f"{key} loadbalancer {ip}", ip, port.port, port.protocol) for ip in svc.lb_ips]
            if port.node_port:
                out.append(Target(f"{key} nodeport", node_ip, port.node_port, port.protocol))
    if names:
        wanted = [t for t in out if t.name in names or t.name.split(":")[0] in names]
        if not wanted:
            raise LabError(f"no Service port matches {', '.join(names)}", "see `podtrace lab status`")
        return wanted
    return out


def _why(err: BaseException) -> str:
    if isinstance(err, (asyncio.TimeoutError, TimeoutError)):
        return "timeout"
    if isinstance(err, ConnectionRefusedError):
        return "refused"
    if isinstance(err, ConnectionResetError):
        return "reset"
    if isinstance(err, OSError) and err.errno:
        return errno.errorcode.get(err.errno, str(err.errno)).lower()
    return type(err).__name__


def _socket(netns: str, kind: int, host: str) -> socket.socket:
    with sh.in_netns(netns):
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, kind)
    sock.setblocking(False)
    return sock


async def _tcp(loop: asyncio.AbstractEventLoop, sock: socket.socket, t: Target, timeout: float,
               size: int) -> str:
    await asyncio.wait_for(loop.sock_connect(sock, (t.host, t.port)), timeout)
    await loop.sock_sendall(sock, f"GET {size}\n".encode() if size else b"hello\n")
    data = b""
    deadline = loop.time() + timeout
    while b"\n" not in data or len(data) < data.index(b"\n") + 1 + size:
        chunk = await asyncio.wait_for(loop.sock_recv(sock, 65536), max(0.01, deadline - loop.time()))
        if not chunk:
            break
        data += chunk
    if b"\n" not in data:
        raise ConnectionResetError(errno.ECONNRESET, "short reply")
    return data.split(b"\n", 1)[0].decode(errors="replace")


async def _udp(loop: asyncio.AbstractEventLoop, sock: socket.socket, t: Target, timeout: float, size: int,
               df: bool | None) -> str:
    if df is not None:
        sock.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DO if df else IP_PMTUDISC_DONT)
    await loop.sock_connect(sock, (t.host, t.port))
    await loop.sock_sendall(sock, b"p" * max(size, 1))
    data = await asyncio.wait_for(loop.sock_recv(sock, 65535), timeout)
    return data.decode(errors="replace").split()[0]


async def _run(plan: list[tuple[Pod, Target]], rate: float, timeout: float, size: int, df: bool | None,
               concurrency: int, summary: Summary, stop_at: float) -> None:
    loop = asyncio.get_running_loop()
    gate = asyncio.Semaphore(concurrency)

    async def one(pod: Pod, t: Target) -> None:
        stats = summary.per_target[t.name]
        stats.attempts += 1
        sock = None
        try:
            sock = _socket(pod.netns, socket.SOCK_STREAM if t.proto == "TCP" else socket.SOCK_DGRAM, t.host)
            if t.proto == "TCP":
                endpoint = await _tcp(loop, sock, t, timeout, size)
            else:
                endpoint = await _udp(loop, sock, t, timeout, size, df)
            stats.endpoints[endpoint] += 1
        except (OSError, asyncio.TimeoutError) as err:
            stats.failures[_why(err)] += 1
        finally:
            if sock is not None:
                sock.close()
            gate.release()

    tasks = []
    start = loop.time()
    for i, (pod, t) in enumerate(plan):
        if time.monotonic() >= stop_at:
            break
        if rate > 0:
            delay = start + i / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
        await gate.acquire()
        tasks.append(asyncio.ensure_future(one(pod, t)))
    if tasks:
        await asyncio.wait(tasks)


def send(manifest: Manifest, to: list[Target], count: int, rate: float = 0.0, clients: list[str] | None = None,
         timeout: float = 1.0, size: int = 0, df: bool | None = None, concurrency: int = 64,
         duration: float | None = None) -> Summary:
    """Send `count` attempts round-robin over targets and client pods; rate 0 means as fast as `concurrency`
    allows. Stops after `duration` seconds if given; never runs longer than MAX_DURATION."""
    if not to:
        raise LabError("no traffic targets")
    pods = [manifest.pod(c) for c in clients] if clients else manifest.clients()
    if not pods:
        raise LabError("the lab manifest has no client pod (a pod no Service selects)", "add one")
    count = max(0, min(count, MAX_COUNT))
    rate = min(max(rate, 0.0), MAX_RATE)
    limit = min(duration if duration is not None else MAX_DURATION, MAX_DURATION)
    summary = Summary([p.name for p in pods])
    for t in to:
        summary.per_target[t.name] = TargetStats(t)
    plan = [(pods[i % len(pods)], to[i % len(to)]) for i in range(count)]
    began = time.monotonic()
    asyncio.run(_run(plan, rate, timeout, size, df, concurrency, summary, began + limit))
    summary.seconds = time.monotonic() - began
    return summary


def probe(target: str, count: int = 30, **kwargs: Any) -> Summary:
    """Send `count` attempts to one Service port of the running lab (`default/web:http`, `... nodeport`) or to
    `proto:ip:port` (e.g. `udp:10.244.1.2:5353`)."""
    manifest = state.manifest_of(state.require())
    if target.count(":") == 2 and target.split(":")[0].upper() in ("TCP", "UDP"):  # IPv6: use a Service name
        proto, host, port = target.split(":")
        to = [Target(target, host, int(port), proto.upper())]
    else:
        to = [t for t in targets(manifest) if t.name == target]
        if not to:
            raise LabError(f"no Service port {target!r} in the lab", "names look like default/web:http")
    return send(manifest, to, count, **kwargs)


def run(rate: float = 20.0, duration: float = 10.0, services: list[str] | None = None) -> Summary:
    """What `lab traffic` does: `rate` attempts per second for `duration` seconds over every Service port."""
    if rate <= 0 or duration <= 0:
        raise LabError("--rate and --duration must be positive")
    data = state.require()
    # The manifest's own Services by default; --services dummies only when asked for by name.
    manifest = state.manifest_of(data) if services else mf.parse(data["manifest"], source="lab state")
    return send(manifest, targets(manifest, services), int(rate * duration), rate=rate, duration=duration + 5)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the detached `lab traffic --background` process."""
    ap = argparse.ArgumentParser(prog="python -m tracer.lab.traffic")
    ap.add_argument("--rate", type=float, default=20.0)
    ap.add_argument("--duration", type=float, default=3600.0)
    ap.add_argument("--service", action="append")
    args = ap.parse_args(argv)
    try:
        summary = run(args.rate, args.duration, args.service)
    except PodtraceError as err:
        print(f"podtrace lab traffic: {err.one_line()}", file=sys.stderr)
        return 1
    print(json.dumps(summary.to_dict()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
