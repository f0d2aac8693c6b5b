"""Load for the softirq-load fault: CPU hogs and a UDP flood, each with a hard deadline.

  python -m tracer.lab.load hog --seconds 300 --cpus 1
  ip netns exec pt-client python -m tracer.lab.load flood --to 10.244.1.2:9 --seconds 300 --cpus 0
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time

MAX_SECONDS = 3600.0


def hog(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for _ in range(100_000):
            pass


def flood(host: str, port: int, seconds: float, size: int) -> int:
    """Send datagrams as fast as one core allows; return how many went out."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.connect((host, port))
    payload = b"f" * size
    sent = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for _ in range(1000):
            try:
                sock.send(payload)
                sent += 1
            except OSError:
                pass  # full queues and ICMP errors are the point of a flood
    return sent


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tracer.lab.load")
    ap.add_argument("mode", choices=("hog", "flood"))
    ap.add_argument("--seconds", type=float, default=300.0)
    ap.add_argument("--to", default="", help="flood target host:port")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--cpus", default="", help="run only on these CPUs, e.g. 0 or 0,2 (default: any)")
    args = ap.parse_args(argv)
    seconds = min(max(args.seconds, 0.0), MAX_SECONDS)
    if args.cpus:
        os.sched_setaffinity(0, {int(cpu) for cpu in args.cpus.split(",")})
    if args.mode == "hog":
        hog(seconds)
    else:
        host, port = args.to.rsplit(":", 1)
        flood(host, int(port), seconds, args.size)
    return 0


if __name__ == "__main__":
    sys.exit(main())
