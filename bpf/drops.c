// SPDX-License-Identifier: GPL-2.0
/*
 * Drops: the kfree_skb raw tracepoint. Its arguments (include/trace/events/skb.h) are
 * (skb, location, reason) since 5.17 and (skb, location, reason, rx_sk) since 6.11; the raw tracepoint
 * avoids BCC generating a context struct from headers that lack the running kernel's enum skb_drop_reason.
 */

RAW_TRACEPOINT_PROBE(kfree_skb)
{
	void *skb = (void *)ctx->args[0];
	__u64 location = ctx->args[1];
	__u32 reason = 0;
#if PT_HAVE_DROP_REASON
	reason = (__u32)ctx->args[2];
	/* SKB_CONSUMED: freed after normal use, not a drop (kernels that route consume through kfree_skb). */
	if (reason == PT_REASON_CONSUMED)
		return 0;
#endif
	return pt_emit(skb, PT_EVENT_DROP, reason, location, 0);
}
