// SPDX-License-Identifier: GPL-2.0
/*
 * Drops: the kfree_skb tracepoint. Its arguments (include/trace/events/skb.h) are (skb, location, reason) since
 * 5.17 and (skb, location, reason, rx_sk) since 6.11. Two programs, one attached (tracer/live.py, the drops ladder
 * in tracer/hookpoints.py):
 *  - pt_drop_btf on tp_btf/kfree_skb (BPF_TRACE_RAW_TP, loaded by tracer/tpbtf.py): the arguments are typed by
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

static __always_inline int pt_drop(int direct, void *skb, __u64 location, __u32 reason)
{
	/* SKB_CONSUMED: freed after normal use, not a drop (kernels that route consume through kfree_skb). */
	if (PT_HAVE_DROP_REASON && reason == PT_REASON_CONSUMED)
		return 0;
	return pt_emit_in(PT_PROBE, direct, skb, PT_EVENT_DROP, reason, location, 0);
}

/* tp_btf context: the tracepoint's arguments as u64s, args[0] a struct sk_buff * the verifier knows. */
int pt_drop_btf(__u64 *ctx)
{
	return pt_drop(1, (void *)ctx[0], ctx[1], PT_DROP_REASON(ctx));
}

int pt_drop_raw_tp(struct bpf_raw_tracepoint_args *ctx)
{
	return pt_drop(0, (void *)ctx->args[0], ctx->args[1], PT_DROP_REASON(ctx->args));
}
