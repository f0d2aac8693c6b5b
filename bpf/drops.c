// SPDX-License-Identifier: GPL-2.0
/*
 * Drops: the kfree_skb tracepoint. Its arguments (include/trace/events/skb.h) are (skb, location, reason) since
 * 5.17 and (skb, location, reason, rx_sk) since 6.11. Two programs, one attached (tracer/sources/live.py, the drops ladder
 * in tracer/kernel/hookpoints.py):
 *  - pt_drop_btf on tp_btf/kfree_skb (BPF_TRACE_RAW_TP, loaded by tracer/probes/tpbtf.py): the arguments are typed by
 *    btf_trace_kfree_skb, so skb's fields, its device's and its namespace's load directly;
 *  - pt_drop_raw_tp on raw_tracepoint/kfree_skb, where tp_btf is refused: untyped arguments, one helper read per field.
 * Neither needs BCC to generate a context struct from headers that lack the running kernel's enum skb_drop_reason.
 */

/* Before 5.17 the tracepoint has two arguments, and a raw tracepoint program reading a third does not attach. */
#if PT_HAVE_DROP_REASON
#define PT_DROP_REASON(args) ((__u32)(args)[2])
#else
#define PT_DROP_REASON(args) 0
#endif

#ifdef PT_NF_CALLERS
/* The unwinder's cost grows with each frame it walks, skipped ones included: skip the frames above the free
 * (this program, bpf_trace_run4, sk_skb_reason_drop) and the one below it, and read only as far as the caller sits.
 * Seen on this kernel: nft drops inside nft_do_chain (NF_DROP_REASON), so nft_do_chain_ipv4, nf_hook_slow and the
 * caller follow (index 2); x_tables returns NF_DROP and nf_hook_slow frees (the caller at index 0); the list
 * receive path puts nf_hook_slow_list between (index 3). */
#define PT_NFC_SKIP 4
#ifndef PT_NFC_FRAMES
#define PT_NFC_FRAMES 4
#endif
#define PT_NFC_TEST(i) \
	if (ip >= PT_NFC_LO_##i && ip < PT_NFC_HI_##i) \
		return PT_NFC_HOOK_##i + 1;
/* The hook a netfilter drop died in (conntrack flows mode, no program at every hook): the function that called
 * nf_hook_slow, the first return address on the stack inside one of tracer/probes/nf_callers.py's ranges. The stack goes
 * into the per-CPU scratch's conntrack bytes, which the drop's own conntrack event fills only later. */
static __always_inline __u32 pt_nf_caller_hook(void *ctx)
{
	__u32 zero = 0;
	struct pt_scratch *s = scratch.lookup(&zero);
	if (!s)
		return 0;
	__u64 *ips = (__u64 *)s->ct;
	long size = bpf_get_stack(ctx, ips, PT_NFC_FRAMES * 8, PT_NFC_SKIP & BPF_F_SKIP_FIELD_MASK);
#pragma unroll
	for (int i = 0; i < PT_NFC_FRAMES; i++) {
		if (i * 8 >= size)
			break;
		__u64 ip = ips[i];
#ifdef PT_NFC_LO_0
		PT_NFC_TEST(0)
#endif
#ifdef PT_NFC_LO_1
		PT_NFC_TEST(1)
#endif
#ifdef PT_NFC_LO_2
		PT_NFC_TEST(2)
#endif
#ifdef PT_NFC_LO_3
		PT_NFC_TEST(3)
#endif
#ifdef PT_NFC_LO_4
		PT_NFC_TEST(4)
#endif
#ifdef PT_NFC_LO_5
		PT_NFC_TEST(5)
#endif
#ifdef PT_NFC_LO_6
		PT_NFC_TEST(6)
#endif
#ifdef PT_NFC_LO_7
		PT_NFC_TEST(7)
#endif
#ifdef PT_NFC_LO_8
		PT_NFC_TEST(8)
#endif
#ifdef PT_NFC_LO_9
		PT_NFC_TEST(9)
#endif
#ifdef PT_NFC_LO_10
		PT_NFC_TEST(10)
#endif
#ifdef PT_NFC_LO_11
		PT_NFC_TEST(11)
#endif
#ifdef PT_NFC_LO_12
		PT_NFC_TEST(12)
#endif
#ifdef PT_NFC_LO_13
		PT_NFC_TEST(13)
#endif
#ifdef PT_NFC_LO_14
		PT_NFC_TEST(14)
#endif
#ifdef PT_NFC_LO_15
		PT_NFC_TEST(15)
#endif
	}
	return 0;
}
#endif

static __always_inline int pt_drop(void *ctx, int direct, void *skb, __u64 location, __u32 reason)
{
	/* SKB_CONSUMED: freed after normal use, not a drop (kernels that route consume through kfree_skb). */
	if (PT_HAVE_DROP_REASON && reason == PT_REASON_CONSUMED)
		return 0;
#ifdef PT_NF_CALLERS
	{
		/* Set for this drop alone: a filtered one must not leave its hook to a later skb at its address. */
		__u32 zero = 0;
		struct pt_nf_last *last = nf_last.lookup(&zero);
		if (last) {
			/* The stack walk (about 2.5 us) only for drops the session traces: scope and namespace first,
			 * so a drop storm elsewhere on the host costs what any drop outside the scope costs. */
			struct pt_skb_info info = {};
			int netfilter = reason == PT_REASON_NETFILTER_DROP && pt_wanted_in(direct, skb, &info);
			last->drop_skb = netfilter ? (__u64)skb : 0;
			last->drop_hook = netfilter ? pt_nf_caller_hook(ctx) : 0;
		}
	}
#endif
	return pt_emit_in(PT_PROBE, direct, skb, PT_EVENT_DROP, reason, location, 0);
}

/* tp_btf context: the tracepoint's arguments as u64s, args[0] a struct sk_buff * the verifier knows. */
int pt_drop_btf(__u64 *ctx)
{
	return pt_drop(ctx, 1, (void *)ctx[0], ctx[1], PT_DROP_REASON(ctx));
}

int pt_drop_raw_tp(struct bpf_raw_tracepoint_args *ctx)
{
	return pt_drop(ctx, 0, (void *)ctx->args[0], ctx->args[1], PT_DROP_REASON(ctx->args));
}
