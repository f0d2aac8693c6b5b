// SPDX-License-Identifier: GPL-2.0
/*
 * Conntrack-driven Service flows (`podtrace flows` by default; bpf/netfilter.c is the per-packet mode behind
 * --hook-timing). The kernel NATs a connection once, on its first packet, and keeps the translation in its
 * conntrack entry: so a packet's translation is read from skb->_nfct (nf_conn address | enum ip_conntrack_info,
 * include/linux/skbuff.h), not from a copy and parse of every packet at two points of a hook.
 *
 * Programs on BPF netfilter links (tracer/probes/nf_points.py CONNTRACK_POINTS):
 *  - pt_nfct_pre / pt_nfct_out at PREROUTING and OUTPUT -99, just after conntrack (-200) and DNAT (-100):
 *    every packet passes exactly one of them in a namespace. They count NAT'd packets per (conntrack entry,
 *    direction); the first packet of each, or of a recycled nf_conn address (an unconfirmed entry), reads the
 *    entry's tuples, runs the filter and keeps the verdict.
 * They also mark, in a per-CPU slot, that the packet passed after DNAT: a drop later on the same CPU with the same
 * skb says so. Which hook a netfilter drop died in comes from the drop's stack (bpf/drops.c, tracer/probes/nf_callers.py),
 * paid per drop rather than by a program at every hook on every packet.
 * Context and filters: bpf/nfhook.h.
 */

struct pt_ct_key {
	__u64 ct;  /* nf_conn address */
	__u32 dir; /* IP_CT_DIR_ORIGINAL 0, IP_CT_DIR_REPLY 1 */
	__u32 pad;
};

/* One direction of one connection: the translation as the per-packet links would record it, and its counts. */
struct pt_ct_flow {
	struct pt_nat_key key;
	__u64 packets;
	__u64 bytes;
	__u64 first_ns;
	__u32 wanted; /* NAT'd and the filter wanted its first packet: counted */
	__u32 pad;
};

/* Translations whose nf_conn was recycled by a later connection: their counts, folded here by the program that
 * saw the new connection (read by user space with ct_flows, tracer/sources/live.py). */
BPF_HASH(nat_flows, struct pt_nat_key, struct pt_nat_stats, 16384);
/* Live (connection, direction) entries; the reader takes out the idle ones, keeping their counts (tracer/sources/ct_sweep.py):
 * past PT_CT_FLOWS_MAX live at once, new connections are counted as lost. */
#ifndef PT_CT_FLOWS_MAX
#define PT_CT_FLOWS_MAX 65536
#endif
BPF_HASH(ct_flows, struct pt_ct_key, struct pt_ct_flow, PT_CT_FLOWS_MAX);
BPF_PERCPU_ARRAY(ct_flow_scratch, struct pt_ct_flow, 1);

#define PT_IP_CT_NEW 2
#define PT_IPS_NAT_MASK 0x30 /* IPS_SRC_NAT | IPS_DST_NAT (include/uapi/linux/netfilter/nf_conntrack_common.h) */
#define PT_IPS_DST_NAT 0x20
#define PT_IPS_CONFIRMED 0x08

static __always_inline void pt_nfct_mark(struct pt_nf_ctx *ctx, __u32 point)
{
	__u32 zero = 0;
	struct pt_nf_last *last = nf_last.lookup(&zero);
	if (last) {
		last->skb = (__u64)ctx->skb;
		last->len = PT_LOAD(__u32, ctx->skb, PT_OFF_SK_BUFF_LEN);
		last->point = point;
	}
}

/* The filter's verdict on this packet (the connection's first in this direction), as bpf/netfilter.c takes it. */
static __always_inline int pt_nfct_wanted(struct pt_nf_ctx *ctx, __u32 netns)
{
	__u32 zero = 0, len = 0;
	struct pt_scratch *s = scratch.lookup(&zero);
	return s && pt_nf_wanted_copy(ctx, netns, s, &len) != 0;
}

/* The record the per-packet links make for this direction: DNAT seen after DNAT (orig), the reply given its
 * Service address back after SNAT (reply). Both from the entry's tuples: orig = client -> VIP, reply =
 * backend -> client (or the masquerade address). */
static __always_inline void pt_nfct_key(struct pt_nat_key *key, const __u8 *copy, __u32 dir, __u32 netns, int local)
{
	struct pt_tuple orig = {}, reply = {};
	pt_ct_tuple(copy + PT_OFF_NF_CT_HASH_TUPLE, &orig);
	pt_ct_tuple(copy + PT_NF_CT_HASH_SIZE + PT_OFF_NF_CT_HASH_TUPLE, &reply);
	__builtin_memset(key, 0, sizeof(*key));
	key->netns = netns;
	if (dir == 0) {
		key->point = local ? PT_NF_OUT_AFTER_DNAT : PT_NF_PRE_AFTER_DNAT;
		key->before = orig;
		key->after = orig;
		__builtin_memcpy(key->after.daddr, reply.saddr, 16);
		key->after.dport = reply.sport;
	} else {
		key->point = PT_NF_POST_LAST;
		key->before = reply;
		__builtin_memcpy(key->before.daddr, orig.saddr, 16);
		key->before.dport = orig.sport;
		key->after = key->before;
		__builtin_memcpy(key->after.saddr, orig.daddr, 16);
		key->after.sport = orig.dport;
	}
}

static __always_inline int pt_ct_key_equal(const struct pt_nat_key *a, const struct pt_nat_key *b)
{
	const __u64 *x = (const __u64 *)a, *y = (const __u64 *)b;
#pragma unroll
	for (int i = 0; i < sizeof(*a) / 8; i++)
		if (x[i] != y[i])
			return 0;
	return 1;
}

/* A recycled nf_conn's old counts into nat_flows, so nothing counted is lost when the entry is reused. */
static __always_inline void pt_nfct_fold(struct pt_ct_flow *old)
{
	if (!old->wanted || !old->packets)
		return;
	struct pt_nat_stats *stats = nat_flows.lookup(&old->key);
	if (stats) {
		__sync_fetch_and_add(&stats->packets, old->packets);
		__sync_fetch_and_add(&stats->bytes, old->bytes);
		return;
	}
	struct pt_nat_stats fresh = {old->packets, old->bytes, old->first_ns, old->first_ns, 0, 0};
	nat_flows.update(&old->key, &fresh);
}

static __always_inline void pt_nfct_forget_reply(__u64 ct)
{
	struct pt_ct_key reply = {.ct = ct, .dir = 1};
	struct pt_ct_flow *old = ct_flows.lookup(&reply);
	if (old) {
		pt_nfct_fold(old);
		ct_flows.delete(&reply);
	}
}

static __always_inline int pt_nfct_step(struct pt_nf_ctx *ctx, __u32 point, int local)
{
	void *skb = ctx->skb;
	pt_nfct_mark(ctx, point);
	__u64 nfct = PT_LOAD(__u64, skb, PT_OFF_SK_BUFF_NFCT);
	__u32 ctinfo = nfct & PT_NFCT_INFOMASK;
	const char *ct = (const char *)(nfct & ~PT_NFCT_INFOMASK);
	if (!ct || ctinfo == PT_CT_INFO_UNTRACKED)
		return 1; /* NF_ACCEPT */
	struct pt_ct_key key = {.ct = (__u64)ct, .dir = ctinfo >= PT_CT_INFO_IS_REPLY};
	__u32 len = PT_LOAD(__u32, skb, PT_OFF_SK_BUFF_LEN);
	struct pt_ct_flow *flow = ct_flows.lookup(&key);
	if (flow && ctinfo != PT_IP_CT_NEW) {
		/* The common case: a known connection past its first packet. */
		if (flow->wanted) {
			__sync_fetch_and_add(&flow->packets, 1);
			__sync_fetch_and_add(&flow->bytes, len);
		}
		return 1;
	}
	/* A NEW packet of a known entry (UDP until its first reply, a SYN resent): the same connection while the
	 * entry is confirmed. A recycled nf_conn starts unconfirmed: its first packet passes here before the last
	 * hook confirms it (nf_conntrack_confirm at INT_MAX), so every packet of its netns passes this check first. */
	__u64 status = 0;
	if (bpf_probe_read_kernel(&status, sizeof(status), ct + PT_OFF_NF_CONN_STATUS) < 0) {
		pt_count(PT_CNT_READ_FAIL);
		return 1;
	}
	if (flow && (status & PT_IPS_CONFIRMED)) {
		if (flow->wanted) {
			__sync_fetch_and_add(&flow->packets, 1);
			__sync_fetch_and_add(&flow->bytes, len);
		}
		return 1;
	}
	if (!(status & PT_IPS_CONFIRMED) && key.dir == 0)
		pt_nfct_forget_reply(key.ct); /* a connection's first packet: what the address held before is over */
	if (!(status & PT_IPS_DST_NAT)) {
		if (flow) { /* a recycled address, now a connection without DNAT */
			pt_nfct_fold(flow);
			ct_flows.delete(&key);
		}
		return 1; /* not a Service translation: nothing to remember (SNAT alone is not a Service flow) */
	}
	__u32 zero = 0;
	struct pt_scratch *s = scratch.lookup(&zero);
	struct pt_ct_flow *fresh = ct_flow_scratch.lookup(&zero);
	if (!s || !fresh)
		return 1;
	/* Both tuples in one helper call: nf_conn comes from _nfct, an integer, so no direct loads. */
	if (bpf_probe_read_kernel(s->ct, 2 * PT_NF_CT_HASH_SIZE, ct + PT_OFF_NF_CONN_TUPLEHASH) < 0) {
		pt_count(PT_CNT_READ_FAIL);
		return 1;
	}
	void *net = PT_LOAD(void *, ctx->state, PT_OFF_NF_HOOK_STATE_NET);
	__u32 netns = net ? PT_LOAD(__u32, net, PT_OFF_NET_NS_INUM) : 0;
	pt_nfct_key(&fresh->key, s->ct, key.dir, netns, local);
	if (flow && (status & PT_IPS_DST_NAT) && pt_ct_key_equal(&flow->key, &fresh->key)) {
		if (flow->wanted) { /* the same translation at a recycled address: the counts stay together */
			__sync_fetch_and_add(&flow->packets, 1);
			__sync_fetch_and_add(&flow->bytes, len);
		}
		return 1;
	}
	pt_count(PT_CNT_SEEN);
	if (flow)
		pt_nfct_fold(flow);
	fresh->wanted = pt_nfct_wanted(ctx, netns);
	fresh->packets = fresh->wanted;
	fresh->bytes = fresh->wanted ? len : 0;
	fresh->first_ns = bpf_ktime_get_ns(); /* once per connection and direction */
	fresh->pad = 0;
	if (ct_flows.update(&key, fresh) != 0) {
		pt_count(PT_CNT_LOST); /* the table is full: this connection's counts are lost, and said so */
		return 1;
	}
	if (fresh->wanted)
		pt_nat_emit((__u64)skb, fresh->first_ns, netns, fresh->key.point, 0, &fresh->key.before,
			    &fresh->key.after);
	else
		pt_count(PT_CNT_FILTERED);
	return 1;
}

int pt_nfct_pre(struct pt_nf_ctx *ctx) { return pt_nfct_step(ctx, PT_NF_PRE_AFTER_DNAT, 0); }
int pt_nfct_out(struct pt_nf_ctx *ctx) { return pt_nfct_step(ctx, PT_NF_OUT_AFTER_DNAT, 1); }
