// SPDX-License-Identifier: GPL-2.0
/*
 * Netfilter through kprobes, for kernels without BPF netfilter links (before 6.4) that have kprobes.
 * Signatures (6.1, include/linux/netfilter.h, netfilter_ipv4/ip_tables.h, net/netfilter/nf_tables.h):
 *   int nf_hook_slow(struct sk_buff *skb, struct nf_hook_state *state, const struct nf_hook_entries *e, unsigned s)
 *   unsigned int ipt_do_table(void *priv (struct xt_table *), struct sk_buff *skb, const struct nf_hook_state *)
 *   unsigned int nft_do_chain(struct nft_pktinfo *pkt, void *priv (struct nft_chain *: the base chain))
 * nf_hook_slow runs every hook function of one hook (iptables tables, nftables base chains, conntrack, NAT) and
 * frees the skb itself on NF_DROP, so the drop probe, running inside it, reads the call in progress (nfk_calls,
 * declared by tracer/probes/build.py before skb.h) to name the hook. A table or chain returning NF_DROP emits a
 * struct pt_nf_verdict_event just before that drop event, with the table and chain names. Kernels with
 * NF_DROP_REASON (6.10+, and Debian's 6.1 as a backport: nft_do_chain calls kfree_skb_reason and returns
 * NF_STOLEN | errno << 16) free the skb inside the table call: there the drop probe emits the verdict event.
 * Struct offsets come from BTF: vmlinux for nf_hook_state, the modules' BTF for xt_table and nft_chain
 * (tracer/kernel/modbtf.py); without them the names stay empty.
 */
#include <uapi/linux/ptrace.h>

/* nfk_tables (struct pt_nfk_table by call key) is declared before skb.h too: the drop probe reads it. */
/* Time spent in nf_hook_slow per (family, hook): PT_NFK_HIST_ROWS rows of PT_NF_HIST_SLOTS log2-ns slots. */
BPF_PERCPU_ARRAY(nfk_hist, __u64, PT_NFK_HIST_ROWS * PT_NF_HIST_SLOTS);

int pt_nfk_hook_entry(struct pt_regs *ctx)
{
	struct pt_nfk_call call = {};
	call.skb = PT_REGS_PARM1(ctx);
	call.entry_ns = bpf_ktime_get_ns();
	call.hook = 0xf; /* unknown until read from nf_hook_state */
#ifdef PT_HAVE_NF_STATE
	void *state = (void *)PT_REGS_PARM2(ctx);
	PT_READ(call.hook, state, PT_OFF_NF_HOOK_STATE_HOOK);
	PT_READ(call.pf, state, PT_OFF_NF_HOOK_STATE_PF);
#endif
	__u64 key = pt_nfk_key();
	nfk_calls.update(&key, &call);
	return 0;
}

int pt_nfk_hook_return(struct pt_regs *ctx)
{
	__u64 key = pt_nfk_key();
	struct pt_nfk_call *call = nfk_calls.lookup(&key);
	if (!call)
		return 0;
	__u32 row = call->pf == 2 ? 0 : (call->pf == 10 ? 1 : 2);
	if (call->hook < 5) {
		__u32 slot = (row * 5 + call->hook) * PT_NF_HIST_SLOTS + pt_log2(bpf_ktime_get_ns() - call->entry_ns);
		__u64 *bucket = nfk_hist.lookup(&slot);
		if (bucket)
			*bucket += 1;
	}
	nfk_calls.delete(&key);
	return 0;
}

static __always_inline void pt_nfk_remember(void *skb, struct pt_nfk_table *t)
{
	__u64 key = pt_nfk_key();
	t->skb = (__u64)skb;
	nfk_tables.update(&key, t);
}

#ifdef PT_HAVE_XT_TABLE
int pt_nfk_ipt_entry(struct pt_regs *ctx)
{
	struct pt_nfk_table t = {};
	void *table = (void *)PT_REGS_PARM1(ctx);
	t.source = PT_NFK_IPTABLES;
	bpf_probe_read_kernel_str(t.table, sizeof(t.table), (char *)table + PT_OFF_XT_TABLE_NAME);
	pt_nfk_remember((void *)PT_REGS_PARM2(ctx), &t);
	return 0;
}
#endif

#ifdef PT_HAVE_NFT_CHAIN
int pt_nfk_nft_entry(struct pt_regs *ctx)
{
	struct pt_nfk_table t = {};
	void *pkt = (void *)PT_REGS_PARM1(ctx);
	void *chain = (void *)PT_REGS_PARM2(ctx);
	void *skb = 0, *table = 0;
	char *name = 0;
	t.source = PT_NFK_NFTABLES;
	PT_READ(skb, pkt, PT_OFF_NFT_PKTINFO_SKB);
	PT_READ(name, chain, PT_OFF_NFT_CHAIN_NAME);
	if (name)
		bpf_probe_read_kernel_str(t.chain, sizeof(t.chain), name);
	PT_READ(table, chain, PT_OFF_NFT_CHAIN_TABLE);
	name = 0;
	if (table)
		PT_READ(name, table, PT_OFF_NFT_TABLE_NAME);
	if (name)
		bpf_probe_read_kernel_str(t.table, sizeof(t.table), name);
	pt_nfk_remember(skb, &t);
	return 0;
}
#endif

/* kretprobe of ipt_do_table and nft_do_chain: on NF_DROP (the skb is still alive; nf_hook_slow frees it next),
 * one verdict event for a packet the filters want. NF_STOLEN with error bits is NF_DROP_REASON: the table freed
 * the skb itself and the drop probe already emitted the verdict (bpf/skb.h). */
int pt_nfk_table_return(struct pt_regs *ctx)
{
	__u64 key = pt_nfk_key();
	struct pt_nfk_table *t = nfk_tables.lookup(&key);
	if (!t)
		return 0;
	__u32 verdict = (__u32)PT_REGS_RC(ctx) & 0xff; /* NF_VERDICT_MASK: errno bits live above */
	void *skb = (void *)t->skb;
	if (verdict != 0 || !skb) /* NF_DROP */
		goto out;
	__u32 zero = 0;
	struct pt_scratch *s = scratch.lookup(&zero);
	struct pt_skb_info info = {};
	if (!s)
		goto out;
	if (!pt_wanted(skb, &info))
		goto out;
	__u32 avail = pt_snapshot(skb, s, &info);
	if (!pt_filter_match(s->buf, avail, info.len))
		goto out;
	pt_nfk_verdict(skb, t, verdict, key, s, &info, avail);
out:
	nfk_tables.delete(&key);
	return 0;
}
