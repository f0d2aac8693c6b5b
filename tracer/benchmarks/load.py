"""UDP load generators, run inside a namespace as child processes; each prints one JSON object.

    python -m tracer.benchmarks.load flood --dst IP --port P --rate PPS --duration S
        paced datagrams on one socket (to a closed port: one drop per datagram at the receiver)
    python -m tracer.benchmarks.load rr --dst IP --port P --duration S
        request/response, a fresh socket (so a new conntrack entry and a new NAT decision) per request
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import time


def flood(dst: str, port: int, rate: float, duration: float, size: int) -> dict[str, float]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    payload = b"x" * size
    target = (dst, port)
    send = sock.sendto
    batch = 50
    sent = errors = 0
    started = time.monotonic()
    end = started + duration
    while True:
        now = time.monotonic()
        if now >= end:
            break
        due = int((now - started) * rate) if rate > 0 else sent + batch
        if sent >= due:
            time.sleep(min(0.0005, end - now))
            continue
        for _ in range(min(batch, due - sent)):
            try:
                send(payload, target)
            except OSError:
                errors += 1
            sent += 1
    seconds = time.monotonic() - started
    return {"sent": sent, "errors": errors, "seconds": seconds, "rate": sent / seconds}


def request_response(dst: str, port: int, duration: float, timeout: float) -> dict[str, float]:
    ok = failed = 0
    target = (dst, port)
    started = time.monotonic()
    end = started + duration
    while time.monotonic() < end:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.settimeout(timeout)
        try:
            sock.sendto(b"ping", target)
            sock.recv(512)
            ok += 1
        except OSError:
            failed += 1
        finally:
            sock.close()
    seconds = time.monotonic() - started
    return {"ok": ok, "failed": failed, "seconds": seconds, "rate": ok / seconds}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tracer.benchmarks.load")
    parser.add_argument("mode", choices=("flood", "rr"))
    parser.add_argument("--dst", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--rate", type=float, default=0.0, help="datagrams/s for flood (0: as fast as possible)")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--timeout", type=float, default=0.2)
    args = parser.parse_args(argv)
    if args.mode == "flood":
        result = flood(args.dst, args.port, args.rate, args.duration, args.size)
    else:
        result = request_response(args.dst, args.port, args.duration, args.timeout)
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
