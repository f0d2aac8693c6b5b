"""The backend pods' workload: TCP and UDP servers that answer with the pod's name.

Run inside a pod's netns by `lab up`:  ip netns exec pt-web-1 python -m tracer.lab.server --name web-1 ...
TCP: reads one request line and answers `<name>\\n`; a request `GET <n>` adds n bytes of padding (large replies).
UDP: answers each datagram with `<name> <bytes received>`; datagrams to --discard ports are dropped unanswered.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import socket
import socketserver
import sys
import threading
from pathlib import Path

MAX_PADDING = 1 << 20


class _TCP(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    address_family = socket.AF_INET
    daemon_threads = True
    request_queue_size = 512
    pod_name = ""


class _TCP6(_TCP):
    address_family = socket.AF_INET6

    def server_bind(self) -> None:
        # IPv6 only: the IPv4 listener on the same port is a socket of its own.
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        super().server_bind()


class _TCPHandler(socketserver.StreamRequestHandler):
    timeout = 5

    def handle(self) -> None:
        try:
            line = self.rfile.readline(256).decode(errors="replace").split()
        except OSError:
            return
        pad = 0
        if len(line) == 2 and line[0] == "GET" and line[1].isdigit():
            pad = min(int(line[1]), MAX_PADDING)
        name = self.server.pod_name  # type: ignore[attr-defined]
        with contextlib.suppress(OSError):
            self.wfile.write(f"{name}\n".encode() + b"x" * pad)


def _udp_loop(sock: socket.socket, name: str, discard: bool) -> None:
    while True:
        try:
            data, peer = sock.recvfrom(65535)
            if not discard:
                sock.sendto(f"{name} {len(data)}".encode(), peer)
        except OSError:
            continue


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tracer.lab.server")
    ap.add_argument("--name", required=True)
    ap.add_argument("--tcp", type=int, action="append", default=[])
    ap.add_argument("--udp", type=int, action="append", default=[])
    ap.add_argument("--discard", type=int, action="append", default=[])
    ap.add_argument("--ready-file")
    ap.add_argument("--ipv6", action="store_true", help="listen on IPv6 too (a dual-stack pod)")
    args = ap.parse_args(argv)

    threads = []
    families = [(socket.AF_INET, "0.0.0.0")] + ([(socket.AF_INET6, "::")] if args.ipv6 else [])
    for family, anywhere in families:
        for port in args.tcp:
            srv = (_TCP6 if family == socket.AF_INET6 else _TCP)((anywhere, port), _TCPHandler)
            srv.pod_name = args.name
            threads.append(threading.Thread(target=srv.serve_forever, daemon=True))
        for port, discard in [(p, False) for p in args.udp] + [(p, True) for p in args.discard]:
            sock = socket.socket(family, socket.SOCK_DGRAM)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            sock.bind((anywhere, port))
            threads.append(threading.Thread(target=_udp_loop, args=(sock, args.name, discard), daemon=True))
    for t in threads:
        t.start()
    if args.ready_file:
        Path(args.ready_file).write_text("ready\n")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
