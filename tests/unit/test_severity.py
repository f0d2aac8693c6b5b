"""Drop severity classes: the reasons the kernel reports, read against include/net/dropreason-core.h."""

from __future__ import annotations

import pytest

from tracer.analysis.severity import SEVERITIES, classify, rank


@pytest.mark.parametrize(("reason", "location", "expected"), [
    ("QUEUE_PURGE", "sk_stream_kill_queues+0x4f/0x120", "benign"),  # socket closed with unread data
    ("TCP_OLD_DATA", "tcp_data_queue+0x6a1/0xd40", "benign"),
    ("SKB_DROP_REASON_TCP_OLD_SEQUENCE", None, "benign"),
    ("NETFILTER_DROP", "nft_do_chain+0x46f", "policy"),
    ("IP_RPFILTER", "ip_rcv_finish_core+0x2f1", "policy"),
    ("TC_INGRESS", None, "policy"),
    ("NO_SOCKET", "__udp4_lib_rcv+0x4bc", "loss"),
    ("PKT_TOO_BIG", "ip_forward+0x1e0", "loss"),
    ("CPU_BACKLOG", "enqueue_to_backlog+0x12", "loss"),
    ("NOT_SPECIFIED", "ip_error+0x94", "loss"),  # a route lookup failure
    ("NOT_SPECIFIED", "skb_queue_purge_reason+0x1c", "benign"),  # pre-5.17 kernels: only the location tells
    ("NOT_SPECIFIED", None, "loss"),
    ("A_REASON_FROM_A_FUTURE_KERNEL", None, "loss"),  # unknown is never hidden as benign
])
def test_classify(reason: str, location: str | None, expected: str) -> None:
    assert classify(reason, location) == expected


def test_cause_overrides_reason() -> None:
    # A NETFILTER_DROP because the conntrack table was full is loss, not a rule's intent.
    assert classify("NETFILTER_DROP", "nf_hook_slow+0x9c", cause="loss") == "loss"


def test_rank_puts_problems_first() -> None:
    assert sorted(["benign", "policy", "loss", "mystery"], key=rank) == ["loss", "mystery", "policy", "benign"]
    assert SEVERITIES == ("loss", "policy", "benign")
