"""The BPF verifier accepts tracer.probes.pcapfilter's C, and the kernel counts what libpcap would match.

A socket filter program attached to `lo` in a network namespace this test creates copies each received packet,
from the network header on, into a per-CPU buffer of PT_SNAP_LEN + 8 bytes (as the probes do), calls
pt_filter_match and counts matches in a BPF array. Known packets are injected on that `lo` a prime number of
times each; the kernel's count must equal libpcap's own verdicts (pcap_offline_filter) times that number.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6, IPv6ExtHdrHopByHop
from scapy.packet import Raw

from tracer.probes import pcapfilter
from tracer.probes.netfilter import entered_netns
from tracer.probes.pcapfilter import BpfInsn, BpfProgram

pytestmark = pytest.mark.root

SNAP = 256
REPEAT = 7  # each packet is sent this many times: a prime, so a stray or lost packet shows in the count
ETH_P_IP, ETH_P_IPV6 = 0x0800, 0x86DD

EXPRESSIONS = [
    "",
    "tcp port 80",
    "src net 10.244.0.0/16 and dst port 53",
    "tcp[tcpflags] & (tcp-syn|tcp-ack) == tcp-syn",
    "ip[6:2] & 0x1fff != 0 or (ip6 and udp)",
    "len > 100 and not icmp",
    "ip6 net fd00:10:244::/48 or host 10.96.0.10",
    "(tcp or udp) and (port 53 or portrange 8000-8100 or port 443) and not src host 10.1.1.1",
    "ip[8] / (ip[9] - 6) > 0 or ip[1] >> (ip[0] & 0x3) == 4",
    "ip[ip[0] & 0xf] > 0 and tcp[4:4] > 1000 and ip[200] == 0x78",
    "icmp[icmptype] == icmp-echo or icmp6 and ip6[40] == 128",
    "ip6[4:2] + 40 == len and ip6[6] == 0 and ip6[48:2] == 53",
    "-ip[8] & 0xff == 1 or ip[8] % (ip[9] & 0x7) == 0 or ip[8] ^ 0xff == 0xc0",
]


def _unit_expressions() -> list[str]:
    """The expressions the unit tests check against libpcap, so the verifier sees each of them too."""
    path = Path(__file__).parent.parent / "unit" / "test_pcapfilter.py"
    spec = importlib.util.spec_from_file_location("unit_test_pcapfilter", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return list(module.EXPRESSIONS)


# Big filters: many branches, the shape that could exhaust the verifier's state budget.
BIG_EXPRESSIONS = [
    " or ".join(f"host 10.244.{i}.{i + 1}" for i in range(40)),
    " or ".join(f"tcp port {1000 + i}" for i in range(60)),
    "(" + " or ".join(f"host fd00::{i:x}" for i in range(1, 25)) + ") and (tcp[tcpflags] & tcp-syn != 0"
    " or udp[8:2] > 0x1000 or ip6[40:2] == 53)",
    " and ".join(f"ip[{i}] != {i}" for i in range(0, 200, 3)),
]


def _packets() -> list[bytes]:
    pkts = [
        IP(src="10.244.1.5", dst="10.96.0.10") / TCP(sport=1234, dport=80, flags="S"),
        IP(src="10.96.0.10", dst="10.244.1.5") / TCP(sport=80, dport=1234, flags="SA"),
        IP(src="10.244.1.5", dst="10.96.0.10", tos=0x10)
        / TCP(sport=1234, dport=80, flags="PA", seq=5000)
        / Raw(b"x" * 300),
        IP(src="10.244.2.3", dst="10.96.0.10") / UDP(sport=5353, dport=53) / Raw(b"q" * 20),
        IP(src="10.245.2.3", dst="10.96.0.11") / UDP(sport=40000, dport=53),
        IP(src="10.1.1.1", dst="10.2.2.2", ttl=63) / TCP(sport=443, dport=8050, flags="A", seq=999),
        IP(src="10.1.1.2", dst="10.2.2.2", ttl=255) / UDP(sport=4000, dport=8080) / Raw(b"u" * 150),
        IP(src="10.244.1.5", dst="10.244.2.7") / ICMP(type=8) / Raw(b"ping" * 20),
        IP(src="10.244.2.7", dst="10.244.1.5") / ICMP(type=0),
        IPv6(src="fd00:10:244:1::5", dst="fd00::1") / TCP(sport=40000, dport=8080, flags="S"),
        IPv6(src="fd00:10:244:2::3", dst="fd00::a") / UDP(sport=5353, dport=53) / Raw(b"dns" * 5),
        IPv6(src="fd00:10:245::3", dst="fd00::a") / UDP(sport=1111, dport=1999) / Raw(b"v" * 400),
        IPv6(src="fd00:10:244:1::5", dst="fd00::1") / ICMPv6EchoRequest(data=b"p" * 56),
        IPv6(src="fd00::1", dst="fd00::2") / IPv6ExtHdrHopByHop() / UDP(sport=53, dport=53),
    ]
    out = [bytes(p) for p in pkts]
    big = IP(src="10.244.1.5", dst="10.96.0.10", id=77) / UDP(sport=1234, dport=53) / Raw(b"f" * 600)
    out += [bytes(frag) for frag in big.fragment(fragsize=256)]
    return out


PACKETS = _packets()

BPF_TEXT = r"""
#include <uapi/linux/bpf.h>
#include <uapi/linux/if_packet.h>

struct pt_buf {
	__u8 data[PT_SNAP_LEN + 8];
};

BPF_PERCPU_ARRAY(pt_scratch, struct pt_buf, 1);
BPF_ARRAY(pt_counts, __u64, 2); /* 0: packets seen, 1: packets matched */

FILTER_SOURCE

int pt_socket(struct __sk_buff *skb)
{
	__u32 zero = 0, one = 1;
	__u32 len, wirelen;
	struct pt_buf *buf;
	__u64 *count;

	/* lo shows each packet twice: as it leaves (PACKET_OUTGOING) and as it comes back in */
	if (skb->pkt_type != PACKET_HOST)
		return 0;
	buf = pt_scratch.lookup(&zero);
	if (!buf || skb->len < 14)
		return 0;
	wirelen = skb->len - 14; /* lo frames carry a 14-byte Ethernet header */
	len = wirelen < PT_SNAP_LEN ? wirelen : PT_SNAP_LEN;
	/* the masked size equals len for 1..PT_SNAP_LEN; it also proves to the verifier that it fits */
	if (len > 0 && bpf_skb_load_bytes(skb, 14, buf->data, ((len - 1) & (PT_SNAP_LEN - 1)) + 1) < 0)
		return 0;
	count = pt_counts.lookup(&zero);
	if (count)
		__sync_fetch_and_add(count, 1);
	if (pt_filter_match(buf->data, len, wirelen)) {
		count = pt_counts.lookup(&one);
		if (count)
			__sync_fetch_and_add(count, 1);
	}
	return 0;
}
"""


class PcapHdr(ctypes.Structure):
    _fields_ = [
        ("tv_sec", ctypes.c_long),
        ("tv_usec", ctypes.c_long),
        ("caplen", ctypes.c_uint32),
        ("len", ctypes.c_uint32),
    ]


def libpcap_matches(flt: pcapfilter.CompiledFilter, data: bytes) -> bool:
    lib = pcapfilter.libpcap()
    lib.pcap_offline_filter.restype = ctypes.c_int
    lib.pcap_offline_filter.argtypes = [ctypes.POINTER(BpfProgram), ctypes.POINTER(PcapHdr), ctypes.c_char_p]
    insns = (BpfInsn * len(flt.instructions))(*(BpfInsn(*i) for i in flt.instructions))
    prog = BpfProgram(len(flt.instructions), ctypes.cast(insns, ctypes.POINTER(BpfInsn)))
    hdr = PcapHdr(0, 0, min(len(data), SNAP), len(data))
    return lib.pcap_offline_filter(ctypes.byref(prog), ctypes.byref(hdr), data) != 0


@pytest.fixture(scope="module")
def netns() -> Iterator[str]:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    name = f"pt-pcapf-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False)


@pytest.fixture(scope="module")
def bcc_ready() -> None:
    try:
        from tracer.kernel import headers

        headers.prepare()
    except Exception:  # headers.py missing or no usable tree: the prepared tree on the dev machines
        os.environ.setdefault("BCC_KERNEL_SOURCE", "/tmp/kh/m")


def _send_all(packets: list[bytes]) -> None:
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as sock:
        sock.bind(("lo", 0))
        for _ in range(REPEAT):
            for pkt in packets:
                ethertype = ETH_P_IPV6 if pkt[0] >> 4 == 6 else ETH_P_IP
                sock.send(b"\0" * 12 + ethertype.to_bytes(2, "big") + pkt)


def _counts(bpf: object, want_seen: int) -> tuple[int, int]:
    table = bpf[b"pt_counts"]  # type: ignore[index]
    deadline = time.monotonic() + 5
    while True:  # lo delivers through the backlog softirq: wait until every packet came back in
        seen, matched = (table[ctypes.c_int(i)].value for i in (0, 1))
        if seen >= want_seen or time.monotonic() > deadline:
            return seen, matched
        time.sleep(0.02)


@pytest.mark.parametrize("expression", EXPRESSIONS)
def test_kernel_counts_what_libpcap_matches(expression: str, netns: str, bcc_ready: None) -> None:
    from bcc import BPF

    flt = pcapfilter.compile_filter(expression)
    want = REPEAT * sum(libpcap_matches(flt, pkt) for pkt in PACKETS)
    if expression:
        assert 0 < want < REPEAT * len(PACKETS), "the packet set should both match and miss this filter"
    with entered_netns(netns):
        bpf = BPF(
            text=BPF_TEXT.replace("FILTER_SOURCE", flt.c_source).encode(), cflags=[f"-DPT_SNAP_LEN={SNAP}"]
        )
        try:
            fn = bpf.load_func(b"pt_socket", BPF.SOCKET_FILTER)  # the verifier runs here
            BPF.attach_raw_socket(fn, b"lo")
            _send_all(PACKETS)
            seen, matched = _counts(bpf, REPEAT * len(PACKETS))
        finally:
            bpf.cleanup()
    assert seen == REPEAT * len(PACKETS)
    assert matched == want


def _load(bpf_text: str, snap: int) -> None:
    from bcc import BPF

    bpf = BPF(text=bpf_text.encode(), cflags=[f"-DPT_SNAP_LEN={snap}"])
    try:
        bpf.load_func(b"pt_socket", BPF.SOCKET_FILTER)  # raises if the verifier refuses
    finally:
        bpf.cleanup()


@pytest.mark.parametrize("expression", _unit_expressions() + BIG_EXPRESSIONS)
def test_verifier_accepts(expression: str, bcc_ready: None) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    _load(BPF_TEXT.replace("FILTER_SOURCE", pcapfilter.compile_filter(expression).c_source), SNAP)


@pytest.mark.parametrize("snap", [64, 128, 512, 1024])
def test_verifier_accepts_other_snap_lengths(snap: int, bcc_ready: None) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    expression = "ip[ip[0] & 0xf] > 0 and tcp[4:4] > 1000 or ip6[4:2] + 40 == len and ip6[60:4] != 0"
    _load(BPF_TEXT.replace("FILTER_SOURCE", pcapfilter.compile_filter(expression).c_source), snap)
