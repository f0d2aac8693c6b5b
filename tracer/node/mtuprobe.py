"""`podtrace mtu`: find the largest DF packet that gets from a namespace to a target, and where bigger ones die.

Two processes work together. A worker runs inside the source namespace (`ip netns exec NS python -m
tracer.node.mtuprobe`) and sends one DF probe per request with scapy (ICMP echo, UDP, or TCP SYN padded to the
asked IP total length, each with its own IP id), reporting what answered. The parent binary-searches the size
and traces in the kernel meanwhile (LiveSource, filter on the target and ICMP): drops of the probes (matched by
IP id) say where larger packets die, and ICMP frag-needed events say whether the error got back to the sender.
Where the kernel has kprobes, ip_do_fragment is traced too: non-DF packets to the target that a node cut itself
(the probes are DF and never are; the node's own traffic during --watch can be), counted in the verdict's live
figures with the MTU they were cut for.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from tracer.analysis.mtu import LiveCounts
from tracer.analysis.mtu_events import ICMP_FRAG_NEEDED, MtuEventCounter, icmp_sent, next_hop_mtu
from tracer.events.decode import EVENT_PATH, POINT_RX, PacketEvent
from tracer.node.mtu_path import collect_path
from tracer.node.mtu_snmp import SnmpWatch
from tracer.output.errors import PodtraceError, UsageError

HEADERS = {"icmp": 28, "udp": 28, "tcp": 40}  # IPv4 20 + ICMP 8 / UDP 8 / TCP 20
DEFAULT_PORTS = {"udp": 33434, "tcp": 80, "icmp": 0}
MIN_SIZE = 68  # RFC 791: every IPv4 host must forward a 68-byte datagram unfragmented
ARRIVED = frozenset({"echo-reply", "port-unreachable", "syn-ack", "rst", "udp-reply", "unreachable",
                     "seen-at-target"})


# The worker (runs inside the source namespace) -----------------------------------------------------------


def _classify(answer: Any, target: str) -> tuple[str, int | None, str]:
    """(kind, quoted MTU, answering address) of a scapy answer."""
    from scapy.layers.inet import ICMP, IP, TCP, UDP  # only the worker needs scapy

    if answer is None:
        return "none", None, ""
    src = answer[IP].src if IP in answer else ""
    if ICMP in answer:
        icmp = answer[ICMP]
        if icmp.type == 0:
            return "echo-reply", None, src
        if icmp.type == 3 and icmp.code == 4:
            return "frag-needed", int(icmp.nexthopmtu), src
        if icmp.type == 3 and icmp.code == 3 and src == target:
            return "port-unreachable", None, src
        if icmp.type == 3 and src == target:
            return "unreachable", None, src
        return f"icmp-{icmp.type}-{icmp.code}", None, src
    if TCP in answer:
        flags = int(answer[TCP].flags)
        return ("syn-ack" if flags & 0x12 == 0x12 else "rst" if flags & 0x04 else "tcp"), None, src
    if UDP in answer:
        return "udp-reply", None, src
    return "other", None, src


def worker(target: str, proto: str, port: int, timeout: float) -> int:
    """Read `SIZE IPID` lines on stdin, send one DF probe each, print one JSON answer line each."""
    from scapy.config import conf
    from scapy.layers.inet import ICMP, IP, TCP, UDP
    from scapy.packet import Raw
    from scapy.sendrecv import sr1

    conf.verb = 0
    src_ip = conf.route.route(target)[1]
    print(json.dumps({"ready": True, "src": src_ip}), flush=True)
    for line in sys.stdin:
        words = line.split()
        if len(words) != 2:
            continue
        size, ip_id = int(words[0]), int(words[1])
        pad = Raw(b"\x00" * max(0, size - HEADERS[proto]))
        ip = IP(dst=target, flags="DF", id=ip_id)
        if proto == "icmp":
            packet = ip / ICMP(id=ip_id, seq=1) / pad
        elif proto == "udp":
            packet = ip / UDP(sport=40000 + ip_id % 20000, dport=port) / pad
        else:
            packet = ip / TCP(sport=40000 + ip_id % 20000, dport=port, flags="S", seq=ip_id) / pad
        result: dict[str, Any] = {"size": size, "id": ip_id}
        try:
            answer = sr1(packet, timeout=timeout, verbose=0)
            kind, mtu, src = _classify(answer, target)
            result.update(answer=kind, mtu=mtu, src=src)
        except OSError as err:  # EMSGSIZE: larger than the source's own interface
            result.update(answer="error", error=str(err))
        print(json.dumps(result), flush=True)
    return 0


# The parent: search, kernel evidence, report ---------------------------------------------------------------


@dataclass
class Attempt:
    size: int
    ip_id: int
    answer: str
    mtu: int | None = None
    src: str = ""
    error: str = ""

    @property
    def arrived(self) -> bool:
        return self.answer in ARRIVED


@dataclass
class DeathSite:
    reason: str
    function: str
    device: str
    netns: str
    count: int = 0


@dataclass
class MtuProbeResult:
    source: str
    target: str
    proto: str
    port: int
    src_ip: str = ""
    largest: int | None = None  # the largest DF IP total length that arrived
    smallest_failed: int | None = None
    attempts: list[Attempt] = field(default_factory=list)
    dies_at: list[DeathSite] = field(default_factory=list)
    frag_needed_sent: int = 0  # ICMP frag-needed queued towards the sender (kernel)
    frag_needed_received: int = 0  # ... received on the sender's interface (kernel)
    frag_needed_answers: int = 0  # ... handed to the probe's socket (scapy saw them)
    frag_needed_mtu: int | None = None
    frag_needed_from: str = ""
    live: LiveCounts | None = None  # frag-needed, fragments, too-big drops, reassembly the kernel showed meanwhile
    stopped: str = ""  # why the search ended early, if it did
    seconds: float = 0.0
    watched: float = 0.0  # seconds traced after the search (--watch)
    warnings: list[str] = field(default_factory=list)  # hook points that did not attach and what that loses
    attached: list[str] = field(default_factory=list)  # what traced the run, e.g. "kprobe ip_do_fragment"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        lines = [f"{self.proto} {self.src_ip or self.source} -> {self.target}"
                 + (f":{self.port}" if self.proto != "icmp" else "")
                 + f": largest DF packet that arrives: {self.largest if self.largest else 'none'} bytes (IP total "
                 f"length), {len(self.attempts)} probes in {self.seconds:.1f} s"]
        if self.smallest_failed:
            lines.append(f"  {self.smallest_failed} bytes and larger do not arrive")
        for site in self.dies_at:
            lines.append(f"  dropped: reason {site.reason} in {site.function} on {site.device} (netns {site.netns}),"
                         f" {site.count} probes")
        if self.smallest_failed and not self.dies_at:
            lines.append("  no drop of the probes seen in this kernel: they die beyond this node")
        if self.frag_needed_sent or self.frag_needed_answers:
            back = ("reached the sender" if self.frag_needed_received or self.frag_needed_answers
                    else "did NOT reach the sender (PMTU black hole)")
            lines.append(f"  ICMP frag-needed (mtu {self.frag_needed_mtu}) from {self.frag_needed_from or '?'}: "
                         f"{self.frag_needed_sent} sent, {self.frag_needed_received} received by the sender's "
                         f"interface, {self.frag_needed_answers} seen by the probe: {back}")
        elif self.smallest_failed:
            lines.append("  no ICMP frag-needed came back: senders cannot learn the path MTU (black hole)")
        if self.stopped:
            lines.append(f"  search stopped early: {self.stopped}")
        lines.extend(f"  warning: {warning}" for warning in self.warnings)
        return "\n".join(lines)


def quoted_ip_id(event: PacketEvent) -> int | None:
    """The IP id of the packet an ICMP error quotes (IPv4 header, ICMP 8 bytes, then the original header)."""
    snap = event.snap
    if event.outer.family != 4 or not snap:
        return None
    at = (snap[0] & 0x0F) * 4 + 8
    return int.from_bytes(snap[at + 4:at + 6], "big") if len(snap) >= at + 6 else None


class BinarySearch:
    """Largest size in [low, high] for which `arrives(size)` is true, assuming it is monotonic. Pure."""

    def __init__(self, low: int, high: int) -> None:
        self.good = low - 1  # largest size known to arrive
        self.bad = high + 1  # smallest size known not to arrive
        self.low, self.high = low, high

    def next_size(self) -> int | None:
        if self.bad <= self.low:
            return None  # not even the smallest arrives
        if self.good < self.low:
            return self.low  # first check that small packets arrive at all
        if self.good >= self.high:
            return None
        if self.bad > self.high:
            return self.high  # then whether the largest does
        if self.bad - self.good <= 1:
            return None
        return (self.good + self.bad) // 2

    def record(self, size: int, arrived: bool) -> None:
        if arrived:
            self.good = max(self.good, size)
        else:
            self.bad = min(self.bad, size)

    @property
    def done(self) -> bool:
        return self.next_size() is None

    @property
    def largest(self) -> int | None:
        return self.good if self.good >= self.low else None


def _worker_command(source_netns: str, target: str, proto: str, port: int, timeout: float) -> list[str]:
    args = [sys.executable, "-m", "tracer.node.mtuprobe", "--to", target, "--proto", proto, "--port", str(port),
            "--timeout", str(timeout)]
    if source_netns.startswith("/"):  # a namespace file such as /proc/PID/ns/net
        return ["nsenter", f"--net={source_netns}", *args]
    return ["ip", "netns", "exec", source_netns, *args]


class _Worker:
    def __init__(self, command: list[str]) -> None:
        env = dict(os.environ)
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True, env=env)
        hello = self._line()
        if not hello.get("ready"):
            raise PodtraceError("the probe worker did not start", hello.get("error", ""))
        self.src_ip = str(hello.get("src", ""))

    def _line(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            err = self.process.stderr.read() if self.process.stderr else ""
            raise PodtraceError("the probe worker exited", err.strip().splitlines()[-1] if err.strip() else "")
        return dict(json.loads(line))

    def probe(self, size: int, ip_id: int) -> Attempt:
        assert self.process.stdin is not None
        self.process.stdin.write(f"{size} {ip_id}\n")
        self.process.stdin.flush()
        r = self._line()
        return Attempt(size, ip_id, r.get("answer", "none"), r.get("mtu"), r.get("src", ""), r.get("error", ""))

    def close(self) -> None:
        if self.process.stdin:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


Report = Callable[[str], None]


def run_probe(source_netns: str, target: str, proto: str = "icmp", port: int | None = None, *,
              max_size: int | None = None, max_probes: int = 40, max_seconds: float = 60.0,
              answer_timeout: float = 1.0, trace: bool = True, progress: Report | None = None,
              watch: float = 0.0, ready: Callable[[], None] | None = None) -> MtuProbeResult:
    """Search the largest DF size from `source_netns` to `target`; trace drops and ICMP errors meanwhile.

    watch: keep tracing that many seconds after the search, so the live counts (frag-needed, fragments,
    reassembly timeouts) cover the node's own traffic too. ready: called once the probes are attached.
    """
    if proto not in HEADERS:
        raise UsageError(f"unknown protocol {proto!r}", "use udp, tcp or icmp")
    port = DEFAULT_PORTS[proto] if port is None else port
    say = progress or (lambda _text: None)
    path = collect_path(source_netns, target) if not source_netns.startswith("/") else None
    if max_size is None:
        max_size = path.pod.mtu if path and path.pod else 1500
    result = MtuProbeResult(source_netns, target, proto, port)
    source = names = symbolize = None
    src_inode = _inode(source_netns)
    target_netns = netns_with_address(target)
    target_inode = _inode(target_netns) if target_netns else None
    # Reassembly happens where packets are delivered (the target), or in a node that defragments for conntrack.
    node = path.host_veth.netns if path and path.host_veth else None
    snmp = SnmpWatch([source_netns, *([node] if node else []), *([target_netns] if target_netns else [])])
    if trace:
        from tracer.node.names import NetnsNames, Symbolizer
        from tracer.probes.build import ProbeConfig
        from tracer.probes.kprobes import choose_live
        from tracer.probes.pcapfilter import compile_filter
        from tracer.sources.live import LiveSource  # BCC only when tracing

        # ip_do_fragment where kprobes exist (the ladder's choice): local fragmentation of non-DF packets
        source = LiveSource(ProbeConfig(filter=compile_filter(f"host {target} or icmp"), path=True, icmp=True,
                                        kprobes=choose_live(("fragmentation",))))
        result.warnings += source.warnings
        source.start()
        result.attached = list(source.attached)
        names, symbolize = NetnsNames(), Symbolizer()
    if ready is not None:
        ready()
    started = time.monotonic()
    events: list[PacketEvent] = []
    worker_proc = _Worker(_worker_command(source_netns, target, proto, port, answer_timeout))
    result.src_ip = worker_proc.src_ip
    search = BinarySearch(max(MIN_SIZE, HEADERS[proto]), max_size)
    ip_id = (os.getpid() * 7919) % 30000 + 1000
    try:
        while not search.done:
            if len(result.attempts) >= max_probes:
                result.stopped = f"{max_probes} probes sent"
                break
            if time.monotonic() - started > max_seconds:
                result.stopped = f"{max_seconds:.0f} s time limit"
                break
            size = search.next_size()
            assert size is not None
            attempt = None
            for _try in range(2):  # one retry: a lost probe is not a too-big probe
                ip_id += 1
                attempt = worker_proc.probe(size, ip_id)
                result.attempts.append(attempt)
                if attempt.arrived or attempt.answer in ("frag-needed", "error"):
                    break
                if source is not None and target_inode is not None:
                    # No answer (ICMP errors are rate-limited per destination): the kernel saw it arrive?
                    events += source.poll(20)
                    if _seen_at_target(events, ip_id, target_inode):
                        attempt.answer = "seen-at-target"
                        break
            assert attempt is not None
            if source is not None:
                events += source.poll(0)
            search.record(size, attempt.arrived)
            verdict = "arrives" if attempt.arrived else attempt.answer
            if attempt.mtu:
                verdict += f" (mtu {attempt.mtu})"
            say(f"probe {len(result.attempts):2d}: {size:5d} bytes {proto} DF -> {verdict}; "
                f"largest so far {search.largest or '-'}")
        watch_end = time.monotonic() + watch
        while source is not None and time.monotonic() < watch_end:
            events += source.poll(100)
        result.watched = watch
        if source is not None:
            time.sleep(0.2)
            events += source.poll(50)
    finally:
        worker_proc.close()
        if source is not None:
            source.close()
    result.seconds = time.monotonic() - started
    result.largest = search.largest
    result.smallest_failed = search.bad if search.bad <= max_size else None
    reasons = source.reasons if source else {}
    icmp_traced = source is not None and "icmp" in source.build.programs
    _evidence(result, events, reasons, names, symbolize, src_inode, icmp_traced)
    if source is not None:
        counter = MtuEventCounter(reasons, icmp_tracepoint=icmp_traced)
        for event in events:
            counter.add(event)
        result.live = counter.result(result.seconds)
        snmp.finish(result.live)
    return result


def netns_with_address(address: str) -> str | None:
    """The named namespace (`ip netns`, where containerd keeps pod namespaces) that owns `address`."""
    from pyroute2 import NetNS

    try:
        names = sorted(os.listdir("/run/netns"))
    except OSError:
        return None
    for name in names:
        try:
            ns = NetNS(name)
        except Exception:  # vanished meanwhile
            continue
        try:
            if any(msg.get_attr("IFA_ADDRESS") == address for msg in ns.get_addr()):
                return name
        finally:
            ns.close()
    return None


def _seen_at_target(events: list[PacketEvent], ip_id: int, target_inode: int) -> bool:
    return any(e.netns == target_inode and e.ip_id == ip_id and (e.is_drop or e.reason == POINT_RX)
               for e in events)


def _inode(netns: str) -> int | None:
    path = netns if netns.startswith("/") else f"/run/netns/{netns}"
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


def _evidence(result: MtuProbeResult, events: list[PacketEvent], reasons: dict[int, str], names: Any,
              symbolize: Any, src_inode: int | None, icmp_traced: bool = False) -> None:
    """Fill where failed probes died and what happened to the ICMP frag-needed they caused.

    icmp_traced: icmp:icmp_send was attached, so "sent" counts its events (one per error, about the offending
    probe) instead of frag-needed packets queued on the node's devices.
    """
    failed = {a.ip_id for a in result.attempts if not a.arrived}
    sites: dict[tuple[str, str, str, str], DeathSite] = {}
    seen_drops: set[int] = set()
    queued: set[int] = set()  # one frag-needed is queued on each device it crosses (bridge, then its port)
    for event in events:
        if icmp_sent(event) == ICMP_FRAG_NEEDED:
            if event.ip_id in failed and event.outer.dst == result.target:
                result.frag_needed_sent += 1
                result.frag_needed_mtu = event.location or result.frag_needed_mtu
                if not result.frag_needed_from and names:
                    result.frag_needed_from = names.name(event.netns)
            continue
        if event.is_drop and event.ip_id in failed and event.outer.dst == result.target:
            ident = event.ip_id
            assert ident is not None
            if ident in seen_drops:
                continue
            seen_drops.add(ident)
            reason = reasons.get(event.reason, str(event.reason))
            function = symbolize(event.location).split("+")[0] if symbolize else hex(event.location)
            netns = names.name(event.netns) if names else str(event.netns)
            key = (reason, function, event.ifname, netns)
            site = sites.setdefault(key, DeathSite(*key))
            site.count += 1
        elif event.type == EVENT_PATH and _is_frag_needed_to(event, result.src_ip):
            if quoted_ip_id(event) not in failed:
                continue
            result.frag_needed_mtu = next_hop_mtu(event) or result.frag_needed_mtu
            result.frag_needed_from = event.outer.src
            if event.reason == POINT_RX and src_inode is not None and event.netns == src_inode:
                result.frag_needed_received += 1
            elif event.reason != POINT_RX and not icmp_traced and (quoted_ip_id(event) or 0) not in queued:
                queued.add(quoted_ip_id(event) or 0)
                result.frag_needed_sent += 1
    result.dies_at = sorted(sites.values(), key=lambda s: -s.count)
    result.frag_needed_answers = sum(1 for a in result.attempts if a.answer == "frag-needed")
    if result.frag_needed_mtu is None:
        result.frag_needed_mtu = next((a.mtu for a in result.attempts if a.mtu), None)


def _is_frag_needed_to(event: PacketEvent, src_ip: str) -> bool:
    t = event.outer
    return t.proto == 1 and t.icmp_type == 3 and t.icmp_code == 4 and (not src_ip or t.dst == src_ip)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tracer.node.mtuprobe", description="podtrace mtu's probe worker")
    parser.add_argument("--to", required=True)
    parser.add_argument("--proto", choices=tuple(HEADERS), default="icmp")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=1.0)
    args = parser.parse_args(argv)
    return worker(args.to, args.proto, args.port, args.timeout)


if __name__ == "__main__":
    sys.exit(main())
