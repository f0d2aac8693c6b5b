/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Every event struct and constant shared by podtrace's BPF programs and tracer/events/decode.py, which mirrors
 * them field by field. Change both together; tests/e2e/test_foundation_e2e.py cross-checks them against the
 * struct BCC compiles (test_python_event_mirror_matches_the_struct_bcc_compiles).
 *
 * Kernel struct offsets are never taken from headers: tracer/probes/build.py reads them from BTF and passes
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
#define PT_EVENT_NF_VERDICT 5 /* struct pt_nf_verdict_event (bpf/nfkprobe.c) */
/* An ICMP error the node sent (bpf/icmp.c): the event is the offending packet; reason = type << 8 | code,
 * location = the MTU a frag-needed quotes (0 when not read). */
#define PT_EVENT_ICMP 4
/* The conntrack entry of the packet a drop event is about (struct pt_ct_event): submitted just before that drop
 * event, same skb and CPU, when the probes read conntrack (PT_CT). */
#define PT_EVENT_CT 6

/* pt_packet_event.point for PT_EVENT_PATH */
#define PT_POINT_RX 1    /* net:netif_receive_skb */
#define PT_POINT_QUEUE 2 /* net:net_dev_queue */
#define PT_POINT_XMIT 3  /* net_dev_xmit: the driver took a queued traced packet; the net_dev_queue event
                         * copied, with location = PT_XMIT_LOCATION(ns since queued, driver return code) */
#define PT_POINT_TC_INGRESS 4 /* tc clsact ingress on a chosen interface */
#define PT_POINT_TC_EGRESS 5  /* tc clsact egress */
/* Kprobe points (bpf/overlay.c). For these, pt_packet_event.location carries a point-specific value. */
#define PT_POINT_VXLAN_RCV 6  /* vxlan_rcv: outer packet with its VXLAN header and inner packet */
#define PT_POINT_VXLAN_XMIT 7 /* vxlan_xmit_one: inner packet; outer tuple = tunnel endpoints and port */
#define PT_POINT_FRAGMENT 8   /* ip_do_fragment: the oversize packet; location = MTU of the output device */

/* pt_packet_event.flags */
#define PT_FLAG_INNER 0x01     /* inner holds the VXLAN-encapsulated packet's tuple */
#define PT_FLAG_SNAP_SKB 0x02  /* snapshot read from skb->data because network_header was unset */
#define PT_FLAG_PARSED 0x04    /* outer tuple parsed (IPv4 or IPv6 found) */

/* Index of the per-CPU counters array. */
#define PT_CNT_SEEN 0       /* packets the probes looked at */
#define PT_CNT_FILTERED 1   /* dropped by the filter before an event was built */
#define PT_CNT_EVENTS 2     /* events submitted */
#define PT_CNT_LOST 3       /* ring buffer full: event not built */
#define PT_CNT_SAMPLED 4    /* path packets skipped by the rate limit: over budget, before the copy and the filter */
#define PT_CNT_READ_FAIL 5  /* packet bytes could not be read */
#define PT_CNT_MAX 8
/* The counters array holds PT_CNT_MAX counters per probe: index = probe * PT_CNT_MAX + PT_CNT_*.
 * tracer/probes/build.py defines PT_PROBE before each program's source, so pt_count() there counts under it;
 * code outside a program (or a program not listed here) counts under PT_PROBE_OTHER. */
#define PT_PROBE_OTHER 0
#define PT_PROBE_DROPS 1
#define PT_PROBE_PATH 2
#define PT_PROBE_NETFILTER 3
#define PT_PROBE_TC 4
#define PT_PROBE_ICMP 5
#define PT_PROBE_NF_KPROBE 6
#define PT_PROBE_OVERLAY_KPROBE 7
#define PT_PROBE_IPVS_KPROBE 8
#define PT_PROBES 9
#define PT_CNT_SLOTS (PT_PROBES * PT_CNT_MAX)

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
	__u32 nf_point;  /* drops: last netfilter point passed + 1 (PT_NF_*), 0 when none or not traced;
	                  * with kprobes PT_NFK_POINT(pf, hook) when freed inside nf_hook_slow */
	char ifname[PT_IFNAMSIZ];
	struct pt_tuple outer;
	struct pt_tuple inner;
	__u8 snap[PT_EVENT_SNAP]; /* packet bytes from the network header */
};

/* Netfilter link attach points (bpf/netfilter.c); tracer/probes/netfilter.py holds hook and priority of each. */
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
/* pt_nat_key.point of IPVS records (bpf/ipvs.c, kprobes), numbered apart from the PT_NF_* link points. */
#define PT_IPVS_CONN 32  /* ip_vs_conn_new: one record per connection the scheduler placed (packets = 1) */
#define PT_IPVS_XMIT 33  /* ip_vs_nat_xmit: request packets NATed from the VIP to the real server */
#define PT_IPVS_REPLY 34 /* handle_response: real server replies given the VIP back as their source */

/* A queued traced packet waiting for net_dev_xmit (bpf/path.c). The device is part of the key: a VXLAN
 * device's transmit queues the same skb again on the underlay before its own net_dev_xmit fires. */
struct pt_xmit_key {
	__u64 skb;
	__u32 ifindex;
	__u32 pad;
};
#define PT_XMIT_STALE_NS 1000000000ULL /* older entries belong to a packet that never reached the driver */
#define PT_XMIT_LOCATION(waited_ns, rc) (((waited_ns) & 0xFFFFFFFFFFFFULL) | ((__u64)((rc) & 0xFFFF) << 48))

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

/* The last netfilter point a packet passed on this CPU (bpf/nfct.c, conntrack mode): a hook and a drop inside it
 * run on one CPU with the same skb, so the drop probe takes the point when skb address and length match. */
struct pt_nf_last {
	__u64 skb;
	__u32 len;
	__u32 point;
	__u64 drop_skb;  /* the NETFILTER_DROP being reported on this CPU (bpf/drops.c) */
	__u32 drop_hook; /* its hook + 1 from nf_hook_slow's caller on the stack, 0 when not found */
	__u32 pad;
};

/* Netfilter verdicts seen by kprobes (bpf/nfkprobe.c, kernels with kprobes): one event per packet an
 * iptables table or nftables base chain dropped (drop events carry the hook: PT_NFK_POINT). */
#define PT_NFK_IPTABLES 1 /* ipt_do_table: table = struct xt_table.name, chain = the hook's built-in chain */
#define PT_NFK_NFTABLES 2 /* nft_do_chain: table and base chain names */
#define PT_NFK_NAME 32
/* A drop event freed inside nf_hook_slow gets nf_point = PT_NFK_POINT(pf, hook): the hook it died in. */
#define PT_NFK_POINT_FLAG 0x100
#define PT_NFK_POINT(pf, hook) (PT_NFK_POINT_FLAG | (((pf) & 0xf) << 4) | ((hook) & 0xf))
#define PT_NFK_HIST_ROWS 15 /* (IPv4, IPv6, other) x 5 hooks; PT_NF_HIST_SLOTS log2-ns slots each */

/* The nf_hook_slow call in progress on a CPU/task (bpf/nfkprobe.c), read by the drop probe. */
struct pt_nfk_call {
	__u64 skb;
	__u64 entry_ns;
	__u8 hook;
	__u8 pf;
	__u8 pad[6];
};

/* The iptables table or nftables chain call in progress, keyed like pt_nfk_call (a kretprobe sees only the
 * return value). nft_do_chain frees a dropped skb itself on kernels with NF_DROP_REASON (Debian's 6.1 has it) and
 * returns NF_STOLEN: the drop probe then finds this entry and emits the verdict event. */
struct pt_nfk_table {
	__u64 skb;
	__u64 source; /* PT_NFK_* */
	char table[PT_NFK_NAME];
	char chain[PT_NFK_NAME];
};

struct pt_nf_verdict_event {
	__u32 type;      /* PT_EVENT_NF_VERDICT */
	__u32 cpu;
	__u64 ts_ns;
	__u64 skb;       /* the drop event of the same packet carries the same skb address, just after */
	__u64 hook_ns;   /* time from nf_hook_slow's entry to this verdict */
	__u32 netns;
	__u32 verdict;   /* NF_DROP 0, NF_ACCEPT 1, NF_STOLEN 2, NF_QUEUE 3 (low byte of the return value) */
	__u8 hook;       /* NF_INET_PRE_ROUTING 0 .. NF_INET_POST_ROUTING 4 */
	__u8 pf;         /* NFPROTO_IPV4 2, NFPROTO_IPV6 10 */
	__u8 source;     /* PT_NFK_* */
	__u8 pad;
	__u32 len;       /* skb->len */
	char table[PT_NFK_NAME];
	char chain[PT_NFK_NAME];
	struct pt_tuple tuple; /* family 0 when the packet is not IP */
	__u32 pad2;
};

/* pt_ct_event.state */
#define PT_CT_NONE 0      /* skb->_nfct empty: not tracked yet (dropped before conntrack) or conntrack not loaded */
#define PT_CT_UNTRACKED 1 /* IP_CT_UNTRACKED: a NOTRACK rule exempted it */
#define PT_CT_ENTRY 2     /* an nf_conn: orig and reply tuples read from it */
/* skb->_nfct is the nf_conn address with enum ip_conntrack_info in its low 3 bits (NFCT_INFOMASK,
 * include/linux/skbuff.h); IP_CT_UNTRACKED is 7, ctinfo >= IP_CT_IS_REPLY (3) is the reply direction. */
#define PT_NFCT_INFOMASK 7ULL
#define PT_CT_INFO_UNTRACKED 7
#define PT_CT_INFO_IS_REPLY 3

/* The connection a dropped packet belongs to, read from its own skb->_nfct at the moment of the drop, so it
 * holds even for an entry not yet confirmed (a first SYN) or gone by the time user space looks. */
struct pt_ct_event {
	__u32 type;      /* PT_EVENT_CT */
	__u32 cpu;
	__u64 ts_ns;
	__u64 skb;       /* the drop event that follows carries the same skb address */
	__u32 netns;
	__u8 state;      /* PT_CT_* */
	__u8 ctinfo;     /* enum ip_conntrack_info; direction = ctinfo >= 3 ? reply : original */
	__u16 pad;
	__u64 ct;        /* nf_conn address: one connection's identity while it lives */
	__u32 status;    /* nf_conn.status low word (IPS_*: SRC_NAT 0x10, DST_NAT 0x20, CONFIRMED 0x08) */
	__u32 pad2;
	struct pt_tuple orig;  /* tuplehash[IP_CT_DIR_ORIGINAL]: client -> address it dialled (the VIP) */
	struct pt_tuple reply; /* tuplehash[IP_CT_DIR_REPLY]: backend chosen -> address the reply goes to */
};

/* A drop and its conntrack event in one ring buffer record, the connection first (bpf/skb.h pt_emit_in): one
 * reservation and one commit where two cost about a third of a drop. The reader splits it into the two events
 * (tracer/events/decode.py split_records), so everything after it sees them as before. A full ring loses both, counted
 * once, as the drop's. */
struct pt_drop_record {
	struct pt_ct_event ct;
	struct pt_packet_event drop;
};

/* Bytes of nf_conn.tuplehash (both directions) the drop probe copies at once; tracer/probes/build.py checks they fit. */
#define PT_CT_COPY 128

/* Per-CPU scratch: the packet snapshot the filter and the parser read (+8: masked index + load stays inside). */
struct pt_scratch {
	__u8 buf[PT_SNAP_LEN + 8];
	__u8 ct[PT_CT_COPY];  /* nf_conn.tuplehash[2] of a drop's conntrack event (bpf/skb.h pt_ct_emit_in) */
};

#endif /* PODTRACE_H */
