/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Every event struct and constant shared by podtrace's BPF programs and tracer/events.py, which mirrors
 * them field by field. Change both together; tests/e2e/test_event_layout.py cross-checks them.
 *
 * Kernel struct offsets are never taken from headers: tracer/probes.py reads them from BTF and passes
 * them as -DPT_OFF_<STRUCT>_<MEMBER>=<bytes>.
 */
#ifndef PODTRACE_H
#define PODTRACE_H

/* Bytes of the packet copied from its network header. A power of two: filters mask indices with it. */
#define PT_SNAP_LEN 256
/* Bytes of that snapshot carried in each event (headers, inner VXLAN headers included). */
#define PT_EVENT_SNAP 128
#define PT_IFNAMSIZ 16

/* pt_packet_event.type */
#define PT_EVENT_DROP 1
#define PT_EVENT_PATH 2
#define PT_EVENT_NAT 3

/* pt_packet_event.point for PT_EVENT_PATH */
#define PT_POINT_RX 1    /* net:netif_receive_skb */
#define PT_POINT_QUEUE 2 /* net:net_dev_queue */
#define PT_POINT_XMIT 3  /* net:net_dev_xmit */
#define PT_POINT_TC_INGRESS 4 /* tc clsact ingress on a chosen interface */
#define PT_POINT_TC_EGRESS 5  /* tc clsact egress */

/* pt_packet_event.flags */
#define PT_FLAG_INNER 0x01     /* inner holds the VXLAN-encapsulated packet's tuple */
#define PT_FLAG_SNAP_SKB 0x02  /* snapshot read from skb->data because network_header was unset */
#define PT_FLAG_PARSED 0x04    /* outer tuple parsed (IPv4 or IPv6 found) */

/* Index of the per-CPU counters array. */
#define PT_CNT_SEEN 0       /* packets the probes looked at */
#define PT_CNT_FILTERED 1   /* dropped by the filter before an event was built */
#define PT_CNT_EVENTS 2     /* events submitted */
#define PT_CNT_LOST 3       /* ring buffer full: event not built */
#define PT_CNT_SAMPLED 4    /* path events skipped by the rate limit */
#define PT_CNT_READ_FAIL 5  /* packet bytes could not be read */
#define PT_CNT_MAX 8

struct pt_tuple {
	__u8 saddr[16]; /* IPv4 in the first 4 bytes */
	__u8 daddr[16];
	__u16 sport;    /* host byte order; ICMP: id */
	__u16 dport;
	__u8 family;    /* 4, 6 or 0 when not IP */
	__u8 proto;     /* IPPROTO_* */
	__u8 icmp_type;
	__u8 icmp_code;
	__u16 frag;     /* IPv4: flags and fragment offset field as on the wire (DF 0x4000, MF 0x2000) */
	__u16 ip_len;   /* IP total length (IPv6: payload length + 40) */
};

struct pt_packet_event {
	__u32 type;      /* PT_EVENT_* */
	__u32 cpu;
	__u64 ts_ns;     /* bpf_ktime_get_ns(): CLOCK_MONOTONIC */
	__u64 skb;       /* skb address, to follow one packet across events */
	__u64 location;  /* drops: the kernel address that freed the skb */
	__u32 reason;    /* drops: enum skb_drop_reason; path: PT_POINT_* */
	__u32 netns;     /* network namespace inode of the device (or socket) */
	__u32 ifindex;
	__u32 len;       /* skb->len */
	__u32 mark;
	__u16 l3_proto;  /* skb->protocol, host byte order */
	__u8 flags;      /* PT_FLAG_* */
	__u8 snap_len;   /* valid bytes in snap (<= PT_EVENT_SNAP) */
	__u32 vni;       /* VXLAN network identifier when PT_FLAG_INNER */
	__u32 nf_point;  /* drops: last netfilter point passed + 1 (PT_NF_*), 0 when none or not traced */
	char ifname[PT_IFNAMSIZ];
	struct pt_tuple outer;
	struct pt_tuple inner;
	__u8 snap[PT_EVENT_SNAP]; /* packet bytes from the network header */
};

/* Netfilter link attach points (bpf/netfilter.c); tracer/netfilter.py holds hook and priority of each. */
#define PT_NF_PRE_FIRST 0        /* PREROUTING, first priority: before conntrack and DNAT */
#define PT_NF_PRE_AFTER_DNAT 1   /* PREROUTING -99: after kube-proxy's DNAT (-100) */
#define PT_NF_IN_FIRST 2
#define PT_NF_IN_LAST 3
#define PT_NF_FWD_FIRST 4
#define PT_NF_FWD_LAST 5
#define PT_NF_OUT_FIRST 6
#define PT_NF_OUT_AFTER_DNAT 7
#define PT_NF_OUT_LAST 8
#define PT_NF_POST_BEFORE_SNAT 9 /* POSTROUTING 99: before SNAT/masquerade (100) */
#define PT_NF_POST_LAST 10
#define PT_NF_POINTS 11
#define PT_NF_HIST_SLOTS 32      /* log2 nanoseconds */

/* A tuple rewritten between two points of one hook (DNAT, SNAT, reply un-NAT): one event per new pair. */
struct pt_nat_event {
	__u32 type;      /* PT_EVENT_NAT */
	__u32 cpu;
	__u64 ts_ns;
	__u64 skb;
	__u32 netns;
	__u32 point;     /* the PT_NF_* point where the rewrite was seen */
	__u64 hook_ns;   /* time from the hook's first point to this one, for this packet */
	struct pt_tuple before;
	struct pt_tuple after;
};

struct pt_nat_key {
	__u32 netns;
	__u32 point;
	struct pt_tuple before;
	struct pt_tuple after;
};

struct pt_nat_stats {
	__u64 packets;
	__u64 bytes;
	__u64 first_ns;
	__u64 last_ns;
	__u64 hook_ns_sum;
	__u64 hook_ns_max;
};

/* Per-skb netfilter state between points, kept in an LRU map keyed by skb address. */
struct pt_nf_state {
	__u64 entry_ns;  /* when the packet entered the current hook */
	__u64 last_ns;   /* when it passed its last point */
	__u32 point;     /* the last PT_NF_* point passed */
	__u32 netns;
	struct pt_tuple before;
};

/* Per-CPU scratch: the packet snapshot the filter and the parser read (+8: masked index + load stays inside). */
struct pt_scratch {
	__u8 buf[PT_SNAP_LEN + 8];
};

#endif /* PODTRACE_H */
