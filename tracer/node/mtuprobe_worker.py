"""`podtrace mtu`'s probe worker, run inside the source namespace (`ip netns exec NS python -m
tracer.node.mtuprobe_worker`): it reads `SIZE IPID` lines, sends one DF probe each with scapy (ICMP echo, UDP, or
a TCP SYN padded to the asked IP total length) and prints what answered, one JSON line each. The search and the
kernel's evidence are tracer/node/mtuprobe.py's."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

HEADERS = {"icmp": 28, "udp": 28, "tcp": 40}  # IPv4 20 + ICMP 8 / UDP 8 / TCP 20


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tracer.node.mtuprobe_worker",
                                     description="podtrace mtu's probe worker")
    parser.add_argument("--to", required=True)
    parser.add_argument("--proto", choices=tuple(HEADERS), default="icmp")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=1.0)
    args = parser.parse_args(argv)
    return worker(args.to, args.proto, args.port, args.timeout)


if __name__ == "__main__":
    sys.exit(main())
