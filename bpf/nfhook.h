/* SPDX-License-Identifier: GPL-2.0 */
/*
 * What the BPF netfilter link programs share (bpf/netfilter.c per packet, bpf/nfct.c per connection): their
 * context, direct loads from it, and the filters a packet passes before it is remembered. The context is
 * struct bpf_nf_ctx { const struct nf_hook_state *state; struct sk_buff *skb; } (include/linux/filter.h); the
 * verifier allows reading both pointers directly. Inlined by tracer/probes/build.py after skb.h.
 */
#ifndef PODTRACE_NFHOOK_H
#define PODTRACE_NFHOOK_H

struct pt_nf_ctx {
	void *state;
	void *skb;
};

/* The program's context pointers are BTF-typed (trusted): fields load directly at their BTF offsets, checked
 * by the verifier against the running kernel, where skb.h's shared code needs one helper call per field
 * (about 40 ns each on a VM). */
#define PT_LOAD(type, base, off) (*(type *)((char *)(base) + (off)))

/* Scope, interface, then the pcap filter on the packet's linear bytes from the network header (as pt_snapshot),
 * copied into s->buf. Returns the bytes copied for the parser, 0 when the packet is not wanted. */
static __always_inline __u32 pt_nf_wanted_copy(struct pt_nf_ctx *ctx, __u32 netns, struct pt_scratch *s, __u32 *len)
{
	void *skb = ctx->skb;
#ifdef PT_FILTER_NETNS
	if (netns != PT_FILTER_NETNS)
		return 0;
#endif
#ifdef PT_SCOPE
	if (!scope.lookup(&netns))
		return 0;
#endif
#ifdef PT_FILTER_IFNAME_LO
	struct pt_skb_info info = {};
	if (!pt_wanted(skb, &info))
		return 0;
#endif
	unsigned char *head = PT_LOAD(unsigned char *, skb, PT_OFF_SK_BUFF_HEAD);
	__u16 network_header = PT_LOAD(__u16, skb, PT_OFF_SK_BUFF_NETWORK_HEADER);
	__u32 tail = PT_LOAD(__u32, skb, PT_OFF_SK_BUFF_TAIL);
	*len = PT_LOAD(__u32, skb, PT_OFF_SK_BUFF_LEN);
	/* Netfilter always sees the network header set; linear bytes only, as in pt_snapshot. */
	if (!head || network_header == (__u16)~0U || tail <= network_header)
		return 0;
	__u32 avail = tail - network_header;
	if (avail > PT_SNAP_LEN)
		avail = PT_SNAP_LEN;
	if (bpf_probe_read_kernel(s->buf, PT_SNAP_LEN, head + network_header) < 0)
		return 0;
	return pt_filter_match(s->buf, avail, *len) ? avail : 0;
}

/* A translation's first packet: one event a human can read (hook_ns 0 where the mode does not time hooks). */
static __always_inline void pt_nat_emit(__u64 skb, __u64 ts_ns, __u32 netns, __u32 point, __u64 hook_ns,
					const struct pt_tuple *before, const struct pt_tuple *after)
{
	struct pt_nat_event *ev = events.ringbuf_reserve(sizeof(struct pt_nat_event));
	if (!ev) {
		pt_count_in(PT_PROBE_NETFILTER, PT_CNT_LOST);
		return;
	}
	ev->type = PT_EVENT_NAT;
	ev->cpu = bpf_get_smp_processor_id();
	ev->ts_ns = ts_ns;
	ev->skb = skb;
	ev->netns = netns;
	ev->point = point;
	ev->hook_ns = hook_ns;
	ev->before = *before;
	ev->after = *after;
	events.ringbuf_submit(ev, pt_wakeup());
	pt_count_in(PT_PROBE_NETFILTER, PT_CNT_EVENTS);
}

#endif /* PODTRACE_NFHOOK_H */
