// SPDX-License-Identifier: GPL-2.0
/*
 * IPVS (kube-proxy's IPVS mode) through kprobes, for kernels with kprobes and the ip_vs module.
 * Signatures (6.1, net/netfilter/ipvs/ip_vs_conn.c, ip_vs_xmit.c, ip_vs_core.c):
 *   struct ip_vs_conn *ip_vs_conn_new(const struct ip_vs_conn_param *p, int dest_af, const union nf_inet_addr
 *                                     *daddr, __be16 dport, unsigned flags, struct ip_vs_dest *dest, __u32 fwmark)
 *   int ip_vs_nat_xmit(struct sk_buff *skb, struct ip_vs_conn *cp, struct ip_vs_protocol *pp,
 *                      struct ip_vs_iphdr *ipvsh)          skb = the client's packet, still addressed to the VIP
 *   static unsigned int handle_response(int af, struct sk_buff *skb, struct ip_vs_proto_data *pd,
 *                      struct ip_vs_conn *cp, struct ip_vs_iphdr *iph, unsigned int hooknum)
 *                                                           skb = the real server's reply, before its source
 *                                                           becomes the VIP again (ip_vs_out_hook's only call)
 * Each becomes a translation record in ipvs_flows, keyed like the netfilter links' nat_flows (struct pt_nat_key,
 * struct pt_nat_stats) so tracer/analysis/flows.py reads both the same way: PT_IPVS_CONN counts the scheduler's choices
 * (one record per connection: client -> VIP:port -> real server), PT_IPVS_XMIT the request packets NATed to the
 * real server, PT_IPVS_REPLY the replies given the VIP back. Offsets in struct ip_vs_conn and struct netns_ipvs
 * come from the ip_vs module's BTF (tracer/kernel/modbtf.py); without them nothing here is compiled.
 */
#include <uapi/linux/ptrace.h>

#ifdef PT_HAVE_IPVS_CONN

BPF_HASH(ipvs_flows, struct pt_nat_key, struct pt_nat_stats, 16384);
/* The key is 96 bytes: built in per-CPU memory, not on the 512-byte stack. */
BPF_PERCPU_ARRAY(ipvs_scratch, struct pt_nat_key, 1);

/* An IPVS address (union nf_inet_addr) into a pt_tuple address: IPv4 uses the first 4 bytes, the rest stays 0. */
static __always_inline void pt_ipvs_addr(__u8 *out, void *cp, __u32 offset, __u16 af)
{
	if (af == 10) /* AF_INET6 */
		bpf_probe_read_kernel(out, 16, (char *)cp + offset);
	else
		bpf_probe_read_kernel(out, 4, (char *)cp + offset);
}

static __always_inline void pt_ipvs_count(struct pt_nat_key *key, __u32 len)
{
	__u64 now = bpf_ktime_get_ns();
	struct pt_nat_stats *stats = ipvs_flows.lookup(key);
	if (stats) {
		__sync_fetch_and_add(&stats->packets, 1);
		__sync_fetch_and_add(&stats->bytes, len);
		stats->last_ns = now;
		return;
	}
	struct pt_nat_stats fresh = {1, len, now, now, 0, 0};
	ipvs_flows.update(key, &fresh);
}

/* The packet's tuple into key->before (filtered like every traced packet); 0 when not wanted or not IP. */
static __always_inline int pt_ipvs_packet(void *skb, struct pt_nat_key *key, __u32 *len)
{
	__u32 zero = 0;
	struct pt_skb_info info = {};
	struct pt_scratch *s = scratch.lookup(&zero);
	if (!s)
		return 0;
	pt_count(PT_CNT_SEEN);
	if (!pt_wanted(skb, &info))
		return 0;
	__u32 avail = pt_snapshot(skb, s, &info);
	if (!pt_filter_match(s->buf, avail, info.len)) {
		pt_count(PT_CNT_FILTERED);
		return 0;
	}
	__builtin_memset(key, 0, sizeof(*key));
	pt_parse_ip(s->buf, 0, avail, &key->before);
	if (!key->before.family)
		return 0;
	/* A translation is its addresses and ports: per-packet fields stay out of the key. */
	key->before.frag = key->before.ip_len = 0;
	key->netns = info.netns;
	key->after = key->before;
	*len = info.len;
	return 1;
}

/* kretprobe ip_vs_conn_new: the scheduler picked cp->daddr:dport for the client's connection to the VIP. */
int pt_ipvs_conn_new(struct pt_regs *ctx)
{
	void *cp = (void *)PT_REGS_RC(ctx);
	__u32 zero = 0;
	__u16 af = 0, protocol = 0, cport = 0, vport = 0, dport = 0;
	void *ipvs = 0, *net = 0;
	if (!cp)
		return 0;
	struct pt_nat_key *key = ipvs_scratch.lookup(&zero);
	if (!key)
		return 0;
	__builtin_memset(key, 0, sizeof(*key));
	PT_READ(af, cp, PT_OFF_IP_VS_CONN_AF);
	PT_READ(protocol, cp, PT_OFF_IP_VS_CONN_PROTOCOL);
	PT_READ(cport, cp, PT_OFF_IP_VS_CONN_CPORT);
	PT_READ(vport, cp, PT_OFF_IP_VS_CONN_VPORT);
	PT_READ(dport, cp, PT_OFF_IP_VS_CONN_DPORT);
	PT_READ(ipvs, cp, PT_OFF_IP_VS_CONN_IPVS);
	if (ipvs)
		PT_READ(net, ipvs, PT_OFF_NETNS_IPVS_NET);
	if (net)
		PT_READ(key->netns, net, PT_OFF_NET_NS_INUM);
	key->point = PT_IPVS_CONN;
	key->before.family = key->after.family = af == 10 ? 6 : 4;
	key->before.proto = key->after.proto = protocol;
	pt_ipvs_addr(key->before.saddr, cp, PT_OFF_IP_VS_CONN_CADDR, af);
	pt_ipvs_addr(key->before.daddr, cp, PT_OFF_IP_VS_CONN_VADDR, af);
	key->before.sport = key->after.sport = bpf_ntohs(cport);
	key->before.dport = bpf_ntohs(vport);
	pt_ipvs_addr(key->after.saddr, cp, PT_OFF_IP_VS_CONN_CADDR, af);
	pt_ipvs_addr(key->after.daddr, cp, PT_OFF_IP_VS_CONN_DADDR, af);
	key->after.dport = bpf_ntohs(dport);
	pt_ipvs_count(key, 0);
	return 0;
}

/* kprobe ip_vs_nat_xmit: a request packet about to get the real server as its destination. */
int pt_ipvs_nat_xmit(struct pt_regs *ctx)
{
	void *skb = (void *)PT_REGS_PARM1(ctx);
	void *cp = (void *)PT_REGS_PARM2(ctx);
	__u32 zero = 0, len = 0;
	__u16 af = 0, dport = 0;
	struct pt_nat_key *key = ipvs_scratch.lookup(&zero);
	if (!key || !cp || !pt_ipvs_packet(skb, key, &len))
		return 0;
	PT_READ(af, cp, PT_OFF_IP_VS_CONN_AF);
	PT_READ(dport, cp, PT_OFF_IP_VS_CONN_DPORT);
	__builtin_memset(key->after.daddr, 0, sizeof(key->after.daddr));
	pt_ipvs_addr(key->after.daddr, cp, PT_OFF_IP_VS_CONN_DADDR, af);
	key->after.dport = bpf_ntohs(dport);
	key->point = PT_IPVS_XMIT;
	pt_ipvs_count(key, len);
	return 0;
}

/* kprobe handle_response: a real server's reply about to get the VIP back as its source. */
int pt_ipvs_response(struct pt_regs *ctx)
{
	void *skb = (void *)PT_REGS_PARM2(ctx);
	void *cp = (void *)PT_REGS_PARM4(ctx);
	__u32 zero = 0, len = 0;
	__u16 af = 0, vport = 0;
	struct pt_nat_key *key = ipvs_scratch.lookup(&zero);
	if (!key || !cp || !pt_ipvs_packet(skb, key, &len))
		return 0;
	PT_READ(af, cp, PT_OFF_IP_VS_CONN_AF);
	PT_READ(vport, cp, PT_OFF_IP_VS_CONN_VPORT);
	__builtin_memset(key->after.saddr, 0, sizeof(key->after.saddr));
	pt_ipvs_addr(key->after.saddr, cp, PT_OFF_IP_VS_CONN_VADDR, af);
	key->after.sport = bpf_ntohs(vport);
	key->point = PT_IPVS_REPLY;
	pt_ipvs_count(key, len);
	return 0;
}

#endif /* PT_HAVE_IPVS_CONN */
