// SPDX-License-Identifier: GPL-2.0
/*
 * Netfilter: BPF_PROG_TYPE_NETFILTER programs on BPF netfilter links (kernel >= 6.4), one program per
 * attach point (PT_NF_* in podtrace.h; hooks and priorities in tracer/probes/netfilter.py). Each returns NF_ACCEPT:
 * podtrace only watches. Between the first and the last point of a hook it measures the time the packet
 * spent in that hook's chains (kube-proxy's rules), and when the tuple changed it records a NAT rewrite.
 * Context and filters: bpf/nfhook.h.
 */

/* nf_state (LRU hash, skb address -> struct pt_nf_state) is declared by tracer/probes/build.py before skb.h,
 * so the drop probe can read the last point a dropped packet passed. */
BPF_HASH(nat_flows, struct pt_nat_key, struct pt_nat_stats, 16384);
/* Per hook (PT_NF_POINTS indexes by the hook's closing point), log2 of ns spent in the hook. */
BPF_PERCPU_ARRAY(nf_hist, __u64, PT_NF_POINTS * PT_NF_HIST_SLOTS);

/* Per-CPU room for what does not fit the 512-byte BPF stack. */
struct pt_nf_scratch {
	struct pt_nat_key key;
	struct pt_nf_state st;
	struct pt_tuple t;
};
BPF_PERCPU_ARRAY(nf_scratch, struct pt_nf_scratch, 1);

static __always_inline int pt_tuple_equal(const struct pt_tuple *a, const struct pt_tuple *b)
{
	const __u32 *x = (const __u32 *)a, *y = (const __u32 *)b;
#pragma unroll
	for (int i = 0; i < 9; i++) /* the first 36 bytes: addresses and ports */
		if (x[i] != y[i])
			return 0;
	return a->proto == b->proto;
}

/* Parse the packet's current tuple into t; 0 when it is not IP or the filter does not want it. */
static __always_inline int pt_nf_tuple(struct pt_nf_ctx *ctx, struct pt_tuple *t, __u32 *netns, __u32 *len)
{
	__u32 zero = 0;
	void *net = PT_LOAD(void *, ctx->state, PT_OFF_NF_HOOK_STATE_NET);
	if (!net)
		return 0;
	*netns = PT_LOAD(__u32, net, PT_OFF_NET_NS_INUM);
	struct pt_scratch *s = scratch.lookup(&zero);
	if (!s)
		return 0;
	__u32 avail = pt_nf_wanted_copy(ctx, *netns, s, len);
	if (!avail)
		return 0;
	pt_parse_ip(s->buf, 0, avail, t);
	return t->family != 0;
}

static __always_inline void pt_nat_seen(__u64 skb, struct pt_nf_state *st, struct pt_tuple *after, __u32 point,
					__u64 now, __u64 hook_ns, __u32 len, struct pt_nat_key *key)
{
	__builtin_memset(key, 0, sizeof(*key));
	key->netns = st->netns;
	key->point = point;
	key->before = st->before;
	key->after = *after;
	/* A translation is its addresses and ports: per-packet fields stay out of the key. */
	key->before.frag = key->before.ip_len = key->after.frag = key->after.ip_len = 0;
	struct pt_nat_stats *stats = nat_flows.lookup(key);
	if (stats) {
		__sync_fetch_and_add(&stats->packets, 1);
		__sync_fetch_and_add(&stats->bytes, len);
		stats->last_ns = now;
		stats->hook_ns_sum += hook_ns;
		if (hook_ns > stats->hook_ns_max)
			stats->hook_ns_max = hook_ns;
		return;
	}
	struct pt_nat_stats fresh = {1, len, now, now, hook_ns, hook_ns};
	nat_flows.update(key, &fresh);
	pt_nat_emit(skb, now, st->netns, point, hook_ns, &st->before, after); /* the translation's first packet */
}

/* first: the hook's first point (remember entry time and tuple); otherwise a later point of the same hook. */
static __always_inline int pt_nf_step(struct pt_nf_ctx *ctx, __u32 point, int first, __u32 first_point)
{
	void *skb = ctx->skb;
	__u64 key = (__u64)skb;
	__u64 now = bpf_ktime_get_ns();
	__u32 zero = 0, netns = 0, len = 0;
	struct pt_nf_scratch *sc = nf_scratch.lookup(&zero);
	if (!sc)
		return 1;
	struct pt_tuple *t = &sc->t;
	__builtin_memset(t, 0, sizeof(*t));
	if (!pt_nf_tuple(ctx, t, &netns, &len))
		return 1; /* NF_ACCEPT */
	if (first) {
		/* skb addresses recycle quickly (slab): rewriting the entry a previous packet left costs a lookup,
		 * where an LRU update allocates and links a new element every time (several times the cost). */
		struct pt_nf_state *fresh = nf_state.lookup(&key);
		int found = fresh != 0;
		if (!fresh)
			fresh = &sc->st;
		__builtin_memset(fresh, 0, sizeof(*fresh));
		fresh->entry_ns = now;
		fresh->last_ns = now;
		fresh->point = point;
		fresh->netns = netns;
		fresh->before = *t;
		if (!found)
			nf_state.update(&key, fresh);
		return 1;
	}
	struct pt_nf_state *st = nf_state.lookup(&key);
	if (!st || st->point != first_point)
		return 1; /* not seen entering this hook (filtered, or an skb address reused) */
	__u64 hook_ns = now - st->entry_ns;
	__u32 slot = point * PT_NF_HIST_SLOTS + pt_log2(hook_ns);
	__u64 *bucket = nf_hist.lookup(&slot);
	if (bucket)
		*bucket += 1;
	if (!pt_tuple_equal(&st->before, t))
		pt_nat_seen(key, st, t, point, now, hook_ns, len, &sc->key);
	st->before = *t; /* the next point compares against what this one saw */
	st->point = point;
	st->last_ns = now;
	return 1;
}

#define PT_NF_FIRST(name, point) \
	int name(struct pt_nf_ctx *ctx) { return pt_nf_step(ctx, point, 1, point); }
#define PT_NF_LATER(name, point, first_point) \
	int name(struct pt_nf_ctx *ctx) { return pt_nf_step(ctx, point, 0, first_point); }

PT_NF_FIRST(pt_nf_pre_first, PT_NF_PRE_FIRST)
PT_NF_LATER(pt_nf_pre_after_dnat, PT_NF_PRE_AFTER_DNAT, PT_NF_PRE_FIRST)
PT_NF_FIRST(pt_nf_in_first, PT_NF_IN_FIRST)
PT_NF_LATER(pt_nf_in_last, PT_NF_IN_LAST, PT_NF_IN_FIRST)
PT_NF_FIRST(pt_nf_fwd_first, PT_NF_FWD_FIRST)
PT_NF_LATER(pt_nf_fwd_last, PT_NF_FWD_LAST, PT_NF_FWD_FIRST)
PT_NF_FIRST(pt_nf_out_first, PT_NF_OUT_FIRST)
PT_NF_LATER(pt_nf_out_after_dnat, PT_NF_OUT_AFTER_DNAT, PT_NF_OUT_FIRST)
PT_NF_LATER(pt_nf_out_last, PT_NF_OUT_LAST, PT_NF_OUT_AFTER_DNAT)
PT_NF_FIRST(pt_nf_post_before_snat, PT_NF_POST_BEFORE_SNAT)
PT_NF_LATER(pt_nf_post_last, PT_NF_POST_LAST, PT_NF_POST_BEFORE_SNAT)
