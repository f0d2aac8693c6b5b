"""Filling a netns's conntrack table over ctnetlink, for the conntrack-full fault.

nf_conntrack_max is read-only outside the initial netns on this kernel family, but the table count it is compared
with is per-netns: so a node namespace is made "full" by inserting assured UDP entries up to the global max.
Assured UDP entries are never early-dropped, so new flows in that netns fail with "table full", as on a busy node.
"""

from __future__ import annotations

import errno
import socket
import struct

from tracer.lab import sh
from tracer.output.errors import LabError

NETLINK_NETFILTER = 12
CT_NEW, CT_DELETE = 0x100, 0x102  # NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_*
NLM_F_REQUEST, NLM_F_ACK, NLM_F_EXCL, NLM_F_CREATE = 0x1, 0x4, 0x200, 0x400
NLA_F_NESTED = 0x8000
CTA_TUPLE_ORIG, CTA_TUPLE_REPLY, CTA_STATUS, CTA_TIMEOUT, CTA_MARK, CTA_MARK_MASK = 1, 2, 3, 7, 8, 21
CTA_TUPLE_IP, CTA_TUPLE_PROTO = 1, 2
CTA_IP_V4_SRC, CTA_IP_V4_DST = 1, 2
CTA_PROTO_NUM, CTA_PROTO_SRC_PORT, CTA_PROTO_DST_PORT = 1, 2, 3
IPS_SEEN_REPLY_ASSURED_CONFIRMED = 0x2 | 0x4 | 0x8  # ctnetlink refuses a create without CONFIRMED (EBUSY)
FILL_MARK = 0x7A11C0DE
# Source/destination of the filler entries: the benchmarking range, never used by the lab's traffic.
FILL_BASE = struct.unpack("!I", socket.inet_aton("198.18.0.0"))[0]
FILL_DST = socket.inet_aton("198.19.255.254")


def _attr(kind: int, payload: bytes) -> bytes:
    raw = struct.pack("=HH", 4 + len(payload), kind) + payload
    return raw + b"\0" * (-len(raw) % 4)


def _tuple(kind: int, src: bytes, dst: bytes, sport: int, dport: int) -> bytes:
    ip = _attr(CTA_TUPLE_IP | NLA_F_NESTED, _attr(CTA_IP_V4_SRC, src) + _attr(CTA_IP_V4_DST, dst))
    proto = _attr(CTA_TUPLE_PROTO | NLA_F_NESTED, _attr(CTA_PROTO_NUM, bytes([socket.IPPROTO_UDP]))
                  + _attr(CTA_PROTO_SRC_PORT, struct.pack("!H", sport))
                  + _attr(CTA_PROTO_DST_PORT, struct.pack("!H", dport)))
    return _attr(kind | NLA_F_NESTED, ip + proto)


def _message(kind: int, flags: int, seq: int, attrs: bytes) -> bytes:
    body = struct.pack("=BBH", socket.AF_INET, 0, 0) + attrs
    return struct.pack("=IHHII", 16 + len(body), kind, flags, seq, 0) + body


def entry(i: int, timeout: int) -> bytes:
    src = struct.pack("!I", FILL_BASE + (i & 0xFFFF))
    sport = 1024 + (i >> 16)
    attrs = (_tuple(CTA_TUPLE_ORIG, src, FILL_DST, sport, 9) + _tuple(CTA_TUPLE_REPLY, FILL_DST, src, 9, sport)
             + _attr(CTA_STATUS, struct.pack("!I", IPS_SEEN_REPLY_ASSURED_CONFIRMED))
             + _attr(CTA_TIMEOUT, struct.pack("!I", timeout)) + _attr(CTA_MARK, struct.pack("!I", FILL_MARK)))
    return _message(CT_NEW, NLM_F_REQUEST | NLM_F_CREATE | NLM_F_EXCL, i + 1, attrs)


def _socket(netns: str) -> socket.socket:
    with sh.in_netns(netns):
        try:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        except OSError as err:
            raise LabError(f"cannot open ctnetlink in {netns}: {err.strerror}") from err
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
    sock.bind((0, 0))
    return sock


def _errors(sock: socket.socket) -> list[int]:
    """Drain pending NLMSG_ERROR replies (failed creates) without blocking; return their errnos."""
    found: list[int] = []
    while True:
        try:
            data = sock.recv(1 << 20, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return found
        except OSError as err:
            if err.errno == errno.ENOBUFS:
                found.append(errno.ENOBUFS)
                continue
            raise
        off = 0
        while off + 20 <= len(data):
            length, kind = struct.unpack_from("=IH", data, off)
            if kind == 2:  # NLMSG_ERROR
                code = -struct.unpack_from("=i", data, off + 16)[0]
                if code:
                    found.append(code)
            off += max(length, 16) + (-length % 4)


def fill(netns: str, entries: int, timeout: int = 3600) -> int:
    """Insert up to `entries` filler entries; stop early when the table refuses more. Returns how many went in."""
    sock = _socket(netns)
    sent = failed = 0
    try:
        batch: list[bytes] = []
        for i in range(entries):
            batch.append(entry(i, timeout))
            if len(batch) == 256 or i == entries - 1:
                sock.sendall(b"".join(batch))
                sent += len(batch)
                batch = []
                errs = _errors(sock)
                failed += len(errs)
                if errno.ENOMEM in errs or failed > 1000:
                    break
    finally:
        sock.close()
    return sent - failed


def flush_filler(netns: str) -> None:
    """Delete only the filler entries: a ctnetlink flush filtered by their mark."""
    _flush(netns, _attr(CTA_MARK, struct.pack("!I", FILL_MARK)) + _attr(CTA_MARK_MASK, struct.pack("!I", 0xFFFFFFFF)))


def flush_all(netns: str) -> None:
    """Delete every entry (a ctnetlink delete without a tuple flushes the table)."""
    _flush(netns, b"")


def _flush(netns: str, attrs: bytes) -> None:
    sock = _socket(netns)
    try:
        sock.sendall(_message(CT_DELETE, NLM_F_REQUEST | NLM_F_ACK, 1, attrs))
        sock.settimeout(30)
        reply = sock.recv(65536)
        code = -struct.unpack_from("=i", reply, 16)[0] if len(reply) >= 20 else 0
        if code and code != errno.ENOENT:
            raise LabError(f"conntrack flush in {netns} failed: {errno.errorcode.get(code, code)}")
    finally:
        sock.close()


def count(netns: str) -> int:
    return int(sh.read_sysctl(netns, "net.netfilter.nf_conntrack_count"))


def maximum(netns: str) -> int:
    return int(sh.read_sysctl(netns, "net.netfilter.nf_conntrack_max"))
