"""How bad a drop is: loss, policy or benign, from the kernel's drop reason and where it was freed.

- loss: a packet its sender wanted delivered, and was not (no socket, a full queue, a bad route, MTU, ...).
- policy: something configured meant it (a netfilter rule, a socket or cgroup BPF filter, rp_filter, a tc program).
- benign: normal kernel frees that look like drops in kfree_skb: queues purged when a socket closes with unread
  data, duplicates of TCP data that was already delivered, packets for another host seen on a shared segment.

Meanings follow the comments on `enum skb_drop_reason` in the kernel's include/net/dropreason-core.h. A reason
not listed is loss: an unknown drop is treated as a real one, never hidden. Callers that know more (a conntrack
table that was full at a NETFILTER_DROP) pass `cause` to override the reason's class.
"""

from __future__ import annotations

from typing import Literal

Severity = Literal["loss", "policy", "benign"]
SEVERITIES: tuple[Severity, ...] = ("loss", "policy", "benign")
# Problems first: loss, then policy, benign last.
RANK: dict[str, int] = {"loss": 0, "policy": 1, "benign": 2}

POLICY_REASONS = frozenset({
    "NETFILTER_DROP",  # a netfilter verdict: iptables/nftables DROP or REJECT (refined by cause)
    "SOCKET_FILTER",  # the socket's BPF filter (SO_ATTACH_FILTER) refused it
    "XFRM_POLICY",  # IPsec policy
    "IP_RPFILTER",  # reverse-path filter (the rp_filter sysctl)
    "BPF_CGROUP_EGRESS",  # a cgroup BPF program refused the egress packet
    "TC_EGRESS", "TC_INGRESS",  # a tc program returned TC_ACT_SHOT
    "SECURITY_HOOK",  # an LSM
    "TAP_FILTER", "TAP_TXFILTER",
    "IPV6DISABLED",
})

BENIGN_REASONS = frozenset({
    "QUEUE_PURGE",  # a socket's queue freed on close: data the application never read, not network loss
    "TCP_OLD_DATA",  # a retransmit of data the receiver already has
    "TCP_OLD_SEQUENCE",  # an old duplicate segment
    "TCP_OLD_ACK",  # an old but in-window ACK
    "TCP_TOO_OLD_ACK",
    "DUP_FRAG",  # a duplicate IP fragment
    "OTHERHOST",  # addressed to another host's MAC (promiscuous or shared segment)
    "UNICAST_IN_L2_MULTICAST",
    "SOCKET_CLOSE",  # freed because its socket is closing
    "TCP_CLOSE",  # a segment for a socket already in CLOSE
    "TCP_RESET",  # freed after the RST it carried was processed
    "UNIX_DISCONNECT", "UNIX_SKIP_OOB",
})

# Functions that free queued packets as part of normal teardown; kernels before drop reasons (< 5.17) report
# NOT_SPECIFIED there, so the location is the only clue.
BENIGN_LOCATIONS = (
    "sk_stream_kill_queues",
    "skb_queue_purge",
    "__skb_queue_purge",
    "inet_csk_destroy_sock",
    "tcp_write_queue_purge",
)


def _function(location: str | None) -> str:
    """`tcp_v4_rcv+0x1a2/0x9f0` -> `tcp_v4_rcv`."""
    return (location or "").split("+", 1)[0].strip()


def classify(reason: str, location: str | None = None, cause: Severity | None = None) -> Severity:
    """The class of one drop. `reason` is the short name (`NETFILTER_DROP`), `location` `func+0xoff` if known."""
    if cause is not None:
        return cause
    name = reason.removeprefix("SKB_DROP_REASON_")
    if name in BENIGN_REASONS:
        return "benign"
    if name in POLICY_REASONS:
        return "policy"
    if name in ("NOT_SPECIFIED", "") and _function(location).startswith(BENIGN_LOCATIONS):
        return "benign"
    return "loss"


def rank(severity: str) -> int:
    """Sort key: loss first, benign last; anything unknown sorts with loss."""
    return RANK.get(severity, 0)
