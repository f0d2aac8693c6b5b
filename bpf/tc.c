// SPDX-License-Identifier: GPL-2.0
/*
 * Packet path on chosen interfaces: tc (clsact) ingress and egress programs, for kernels or devices the
 * tracepoints do not cover. A tc program's context is the kernel's struct sk_buff itself (the verifier
 * rewrites __sk_buff field accesses), so pt_emit reads it through the same BTF offsets as everywhere else.
 * Always TC_ACT_OK: podtrace only watches.
 */

int pt_tc_ingress(struct __sk_buff *ctx)
{
	pt_emit((void *)ctx, PT_EVENT_PATH, PT_POINT_TC_INGRESS, 0, 1);
	return 0; /* TC_ACT_OK */
}

int pt_tc_egress(struct __sk_buff *ctx)
{
	pt_emit((void *)ctx, PT_EVENT_PATH, PT_POINT_TC_EGRESS, 0, 1);
	return 0;
}
