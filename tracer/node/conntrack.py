"""Conntrack over netlink (ctnetlink, through pyroute2): entries with both tuples, which are NATed, and table health.

Every NATed flow (a Service VIP DNATed to a pod, masquerade) has a conntrack entry whose reply tuple shows what the
packets really became: for DNAT the reply comes *from* the backend, so `reply.src != orig.dst`. Health is the
entry count against `nf_conntrack_max` (both per netns, read inside it) and the per-CPU counters the kernel keeps:
`drop` is "table full, dropping packet", `insert_failed` the clash that makes parallel DNS queries time out,
`early_drop` an entry evicted to make room.

Decoding is pure (pyroute2 message objects or raw dump bytes in, dataclasses out); the functions taking a `netns`
open a ctnetlink socket inside that namespace (pyroute2 creates it in a child that entered the netns).
"""

from __future__ import annotations

import ctypes
import errno
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from typing import Any

from pyroute2.netlink.exceptions import NetlinkError

from tracer.output.errors import PodtraceError

# include/uapi/linux/netfilter/nf_conntrack_common.h, enum ip_conntrack_status
STATUS_BITS = ("EXPECTED", "SEEN_REPLY", "ASSURED", "CONFIRMED", "SRC_NAT", "DST_NAT", "SEQ_ADJUST", "SRC_NAT_DONE",
               "DST_NAT_DONE", "DYING", "FIXED_TIMEOUT", "TEMPLATE", "UNTRACKED", "HELPER", "OFFLOAD", "HW_OFFLOAD")
IPS_SRC_NAT, IPS_DST_NAT = 1 << 4, 1 << 5
PROTO_NAMES = {socket.IPPROTO_TCP: "tcp", socket.IPPROTO_UDP: "udp", socket.IPPROTO_ICMP: "icmp",
               socket.IPPROTO_ICMPV6: "icmpv6", 132: "sctp"}
PROTO_NUMBERS = {name: num for num, name in PROTO_NAMES.items()}
TCP_STATES = ("NONE", "SYN_SENT", "SYN_RECV", "ESTABLISHED", "FIN_WAIT", "CLOSE_WAIT", "LAST_ACK", "TIME_WAIT",
              "CLOSE", "SYN_SENT2")
SYSCTL = "/proc/sys/net/netfilter/"
CLONE_NEWNET = 0x40000000


@dataclass(frozen=True)
class CtTuple:
    """One direction of a connection: addresses, protocol (name) and ports (0 for ICMP and others)."""

    src: str
    dst: str
    proto: str
    sport: int = 0
    dport: int = 0

    def reversed(self) -> CtTuple:
        return CtTuple(self.dst, self.src, self.proto, self.dport, self.sport)

    def __str__(self) -> str:
        return f"{self.proto} {self.src}:{self.sport} -> {self.dst}:{self.dport}"


@dataclass(frozen=True)
class CtEntry:
    orig: CtTuple
    reply: CtTuple
    status: int = 0
    timeout: int | None = None
    mark: int = 0
    id: int | None = None
    zone: int = 0
    tcp_state: str = ""
    family: int = socket.AF_INET

    @property
    def dnat(self) -> bool:
        """The destination was rewritten: the reply comes from somewhere else than the original destination."""
        return (self.reply.src, self.reply.sport) != (self.orig.dst, self.orig.dport)

    @property
    def snat(self) -> bool:
        """The source was rewritten (masquerade): the reply goes to somewhere else than the original source."""
        return (self.reply.dst, self.reply.dport) != (self.orig.src, self.orig.sport)

    @property
    def nated(self) -> bool:
        return self.dnat or self.snat

    @property
    def backend(self) -> tuple[str, int]:
        """Where the connection really goes (the DNAT target): the reply's source."""
        return self.reply.src, self.reply.sport

    @property
    def status_names(self) -> list[str]:
        return [name for bit, name in enumerate(STATUS_BITS) if self.status & (1 << bit)]

    @property
    def assured(self) -> bool:
        return bool(self.status & (1 << 2))

    @property
    def seen_reply(self) -> bool:
        return bool(self.status & (1 << 1))


@dataclass(frozen=True)
class CpuStats:
    """Per-CPU conntrack counters (CTA_STATS_*, the same as `conntrack -S`)."""

    cpu: int
    found: int = 0
    invalid: int = 0
    insert: int = 0
    insert_failed: int = 0
    drop: int = 0
    early_drop: int = 0
    error: int = 0
    search_restart: int = 0
    clash_resolve: int = 0
    chain_toolong: int = 0


@dataclass(frozen=True)
class Health:
    count: int
    max: int
    cpus: tuple[CpuStats, ...] = field(default_factory=tuple)

    @property
    def fill(self) -> float:
        return self.count / self.max if self.max else 0.0

    @property
    def full(self) -> bool:
        return self.max > 0 and self.count >= self.max

    def total(self, counter: str) -> int:
        return sum(int(getattr(c, counter)) for c in self.cpus)

    @property
    def drop(self) -> int:
        return self.total("drop")

    @property
    def insert_failed(self) -> int:
        return self.total("insert_failed")

    @property
    def early_drop(self) -> int:
        return self.total("early_drop")

    def to_dict(self) -> dict[str, Any]:
        return {"count": self.count, "max": self.max, "fill": round(self.fill, 4), "full": self.full,
                "drop": self.drop, "insert_failed": self.insert_failed, "early_drop": self.early_drop}


# ---- pure decoding ---------------------------------------------------------------------------------------------


def _tuple_from_nla(nla: Any, family: int) -> CtTuple:
    ip = nla.get_attr("CTA_TUPLE_IP")
    proto_attrs = nla.get_attr("CTA_TUPLE_PROTO")
    v = "V6" if family == socket.AF_INET6 else "V4"
    num = proto_attrs.get_attr("CTA_PROTO_NUM") if proto_attrs is not None else 0
    sport = dport = 0
    if proto_attrs is not None and num not in (socket.IPPROTO_ICMP, socket.IPPROTO_ICMPV6):
        sport = proto_attrs.get_attr("CTA_PROTO_SRC_PORT") or 0
        dport = proto_attrs.get_attr("CTA_PROTO_DST_PORT") or 0
    return CtTuple(str(ip.get_attr(f"CTA_IP_{v}_SRC")), str(ip.get_attr(f"CTA_IP_{v}_DST")),
                   PROTO_NAMES.get(num, str(num)), int(sport), int(dport))


def entry_from_msg(msg: Any) -> CtEntry:
    """A CtEntry from one decoded pyroute2 `nfct_msg` (IPCTNL_MSG_CT_NEW reply)."""
    family = msg["nfgen_family"]
    orig = _tuple_from_nla(msg.get_attr("CTA_TUPLE_ORIG"), family)
    reply = _tuple_from_nla(msg.get_attr("CTA_TUPLE_REPLY"), family)
    state = ""
    info = msg.get_attr("CTA_PROTOINFO")
    if info is not None:
        tcp = info.get_attr("CTA_PROTOINFO_TCP")
        if tcp is not None:
            num = tcp.get_attr("CTA_PROTOINFO_TCP_STATE")
            state = TCP_STATES[num] if num is not None and num < len(TCP_STATES) else ""
    return CtEntry(orig, reply, msg.get_attr("CTA_STATUS") or 0, msg.get_attr("CTA_TIMEOUT"),
                   msg.get_attr("CTA_MARK") or 0, msg.get_attr("CTA_ID"), msg.get_attr("CTA_ZONE") or 0, state,
                   family)


def stats_from_msg(msg: Any) -> CpuStats:
    """CpuStats from one decoded `nfct_stats_cpu` message (the CPU number is the nfgenmsg res_id)."""
    values = {k[len("CTA_STATS_"):].lower(): v for k, v in msg["attrs"] if k.startswith("CTA_STATS_")}
    known = {f.name for f in fields(CpuStats)}
    return CpuStats(cpu=int(msg["res_id"]), **{k: int(v) for k, v in values.items() if k in known})


def _messages(data: bytes, cls: type) -> Iterator[Any]:
    off = 0
    while off + 16 <= len(data):
        length = int.from_bytes(data[off:off + 4], sys.byteorder)
        if length < 16:
            break
        msg = cls(data[off:off + length])
        msg.decode()
        yield msg
        off += (length + 3) & ~3


def parse_entries(data: bytes) -> list[CtEntry]:
    """Entries from raw ctnetlink dump messages (IPCTNL_MSG_CT_GET replies, host byte order headers)."""
    from pyroute2.netlink.nfnetlink.nfctsocket import nfct_msg

    return [entry_from_msg(m) for m in _messages(data, nfct_msg)]


def parse_stats_cpu(data: bytes) -> list[CpuStats]:
    """Per-CPU counters from raw IPCTNL_MSG_CT_GET_STATS_CPU replies."""
    from pyroute2.netlink.nfnetlink.nfctsocket import nfct_stats_cpu

    return [stats_from_msg(m) for m in _messages(data, nfct_stats_cpu)]


_S_LINE = re.compile(r"^cpu=(\d+)\s+(.*)$")


def parse_conntrack_s(text: str) -> list[CpuStats]:
    """`conntrack -S` output: `cpu=0 found=0 invalid=3 insert=0 insert_failed=0 drop=10 early_drop=0 ...`."""
    known = {f.name for f in fields(CpuStats)}
    out = []
    for line in text.splitlines():
        m = _S_LINE.match(line.strip())
        if not m:
            continue
        values: dict[str, int] = {}
        for pair in m.group(2).split():
            key, _, value = pair.partition("=")
            key = "chain_toolong" if key == "chaintoolong" else key
            if key in known and value.isdigit():
                values[key] = int(value)
        out.append(CpuStats(cpu=int(m.group(1)), **values))
    return out


class NatTable:
    """Original tuple -> reply tuple for the NATed entries of a snapshot (pure; build it from `entries()`)."""

    def __init__(self, entries: Iterable[CtEntry]) -> None:
        self._by_orig: dict[CtTuple, CtEntry] = {}
        self._by_reply: dict[CtTuple, CtEntry] = {}
        for e in entries:
            if e.nated:
                self._by_orig[e.orig] = e
                self._by_reply[e.reply] = e

    def __len__(self) -> int:
        return len(self._by_orig)

    def lookup(self, orig: CtTuple) -> CtTuple | None:
        """The reply tuple of the NATed connection whose original tuple is `orig`."""
        e = self._by_orig.get(orig)
        return e.reply if e else None

    def entry_for_reply(self, reply: CtTuple) -> CtEntry | None:
        """The entry whose reply tuple is `reply` (a packet seen after DNAT, on its way back or to the backend)."""
        return self._by_reply.get(reply)

    def entries(self) -> list[CtEntry]:
        return list(self._by_orig.values())


# ---- netlink and /proc (IO) ------------------------------------------------------------------------------------


def _check_netns(netns: str | None) -> None:
    if netns is not None and not os.path.exists(f"/run/netns/{netns}"):
        raise PodtraceError(f"network namespace {netns} does not exist", "see `ip netns list`")


def _socket(netns: str | None) -> Any:
    _check_netns(netns)
    from pyroute2.conntrack import Conntrack

    try:
        # flags=0: never create the netns (pyroute2's default O_CREAT would).
        return Conntrack(**({"netns": netns, "flags": 0} if netns else {}))
    except OSError as err:
        raise _netlink_error(err, netns) from err


def _netlink_error(err: OSError, netns: str | None) -> PodtraceError:
    where = f" in netns {netns}" if netns else ""
    hint = "conntrack over netlink needs root (CAP_NET_ADMIN)" if os.geteuid() else \
        "is nf_conntrack loaded? (modprobe nf_conntrack)"
    return PodtraceError(f"cannot read conntrack{where}: {err.strerror or err}", hint)


def entries(netns: str | None = None, nat_only: bool = False) -> list[CtEntry]:
    """Every conntrack entry (IPv4) of the node or of `netns`; only NATed ones with `nat_only`."""
    ct = _socket(netns)
    try:
        msgs = list(ct.dump())
    except NetlinkError as err:
        raise _netlink_error(OSError(err.code, os.strerror(err.code)), netns) from err
    except OSError as err:
        raise _netlink_error(err, netns) from err
    finally:
        ct.close()
    out = [entry_from_msg(m) for m in msgs if m.get_attr("CTA_TUPLE_ORIG") is not None]
    return [e for e in out if e.nated] if nat_only else out


def lookup_nat(orig: CtTuple, netns: str | None = None) -> CtTuple | None:
    """The reply tuple the kernel holds for original tuple `orig` (a CT_GET, no dump); None if no such entry."""
    from pyroute2.netlink.nfnetlink.nfctsocket import NFCTAttrTuple

    proto = PROTO_NUMBERS.get(orig.proto, int(orig.proto) if orig.proto.isdigit() else 0)
    key = NFCTAttrTuple(saddr=orig.src, daddr=orig.dst, proto=proto, sport=orig.sport, dport=orig.dport)
    ct = _socket(netns)
    try:
        msgs = ct.entry("get", tuple_orig=key)
    except NetlinkError as err:
        if err.code == errno.ENOENT:  # no such connection
            return None
        raise _netlink_error(OSError(err.code, os.strerror(err.code)), netns) from err
    except OSError as err:
        raise _netlink_error(err, netns) from err
    finally:
        ct.close()
    for m in msgs if isinstance(msgs, list) else [msgs]:
        if m is not None and m.get_attr("CTA_TUPLE_REPLY") is not None:
            return entry_from_msg(m).reply
    return None


def cpu_stats(netns: str | None = None) -> list[CpuStats]:
    """Per-CPU counters over netlink; falls back to `conntrack -S` when the netlink request fails."""
    ct = _socket(netns)
    try:
        return [_stats_from_dict(d) for d in ct.stat()]
    except (OSError, NetlinkError):
        return parse_conntrack_s(_conntrack_s(netns))
    finally:
        ct.close()


def _stats_from_dict(d: Mapping[str, Any]) -> CpuStats:
    known = {f.name for f in fields(CpuStats)}
    return CpuStats(**{k: int(v) for k, v in d.items() if k in known})


def _conntrack_s(netns: str | None) -> str:
    argv = (["ip", "netns", "exec", netns] if netns else []) + ["conntrack", "-S"]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    except FileNotFoundError as err:
        raise PodtraceError("conntrack statistics unavailable: netlink failed and `conntrack` is not installed",
                            "install conntrack-tools") from err
    if proc.returncode != 0:
        raise PodtraceError(f"`{' '.join(argv)}` failed: {proc.stderr.strip() or proc.returncode}")
    return proc.stdout


def read_sysctl(name: str, netns: str | None = None) -> int:
    """An integer from /proc/sys/net/netfilter/NAME as seen inside `netns` (these are per-netns)."""
    try:
        with in_netns(netns), open(SYSCTL + name) as f:
            return int(f.read().strip())
    except FileNotFoundError as err:
        raise PodtraceError(f"{SYSCTL}{name} is missing", "is nf_conntrack loaded? (modprobe nf_conntrack)") from err
    except OSError as err:
        raise PodtraceError(f"cannot read {SYSCTL}{name}: {err.strerror}") from err


def health(netns: str | None = None) -> Health:
    """Entry count vs nf_conntrack_max (read inside the netns) and the per-CPU counters."""
    return Health(read_sysctl("nf_conntrack_count", netns), read_sysctl("nf_conntrack_max", netns),
                  tuple(cpu_stats(netns)))


_libc = ctypes.CDLL(None, use_errno=True)


@contextmanager
def in_netns(netns: str | None) -> Iterator[None]:
    """Run the block with this thread in `netns` (/proc/sys/net is resolved by the opener's netns)."""
    if netns is None:
        yield
        return
    _check_netns(netns)
    target = os.open(f"/run/netns/{netns}", os.O_RDONLY)
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        if _libc.setns(target, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise PodtraceError(f"cannot enter netns {netns}: {os.strerror(err)}", "this needs root")
        try:
            yield
        finally:
            _libc.setns(home, CLONE_NEWNET)
    finally:
        os.close(home)
        os.close(target)
