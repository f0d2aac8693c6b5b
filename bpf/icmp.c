// SPDX-License-Identifier: GPL-2.0
/*
 * ICMP errors the node sends about MTU and reassembly: the icmp:icmp_send tracepoint
 * (include/trace/events/icmp.h, kernel 6.13+; TP_PROTO(skb, type, code)). It fires in __icmp_send just before
 * the error is pushed out, after the rate limits, so one event is one error sent. Its skb is the offending
 * packet, so the event is that packet (addresses, ports, IP id in the snapshot), not the ICMP error.
 *
 * The tracepoint does not carry the MTU the error quotes. For a forwarded packet, ip_forward quotes
 * ip_dst_mtu_maybe_forward(): the route's RTAX_MTU metric when set, else the egress device's MTU; both are read
 * from the packet's dst here (a PMTU learned on the route is not read). The event's `location` holds it.
 *
 * Only IPv4: ICMPv6 (icmp6_send) has no tracepoint; packet-too-big shows as PKT_TOO_BIG drops and ICMPv6
 * type 2 packets on the path.
 */

#define PT_ICMP_DEST_UNREACH 3
#define PT_ICMP_FRAG_NEEDED 4
#define PT_ICMP_TIME_EXCEEDED 11
#define PT_ICMP_EXC_FRAGTIME 1
#define PT_SKB_DST_PTRMASK (~1UL)     /* include/linux/skbuff.h: bit 0 of _skb_refdst is SKB_DST_NOREF */
#define PT_DST_METRICS_PTRMASK (~3UL) /* include/net/dst.h: DST_METRICS_FLAGS */
#define PT_RTAX_MTU_INDEX 1           /* metrics[RTAX_MTU - 1], RTAX_MTU == 2 */

static __always_inline __u32 pt_dst_mtu(void *skb)
{
	unsigned long refdst = 0, metrics = 0;
	void *dev = 0;
	__u32 mtu = 0;
	PT_READ(refdst, skb, PT_OFF_SK_BUFF_SKB_REFDST);
	void *dst = (void *)(refdst & PT_SKB_DST_PTRMASK);
	if (!dst)
		return 0;
	PT_READ(metrics, dst, PT_OFF_DST_ENTRY_METRICS);
	metrics &= PT_DST_METRICS_PTRMASK;
	if (metrics)
		bpf_probe_read_kernel(&mtu, sizeof(mtu), (const char *)metrics + PT_RTAX_MTU_INDEX * 4);
	if (mtu)
		return mtu;
	PT_READ(dev, dst, PT_OFF_DST_ENTRY_DEV);
	if (dev)
		PT_READ(mtu, dev, PT_OFF_NET_DEVICE_MTU);
	return mtu;
}

TRACEPOINT_PROBE(icmp, icmp_send)
{
	int type = args->type;
	int code = args->code;
	__u64 mtu = 0;
	/* Port and host unreachables would flood the ring buffer (one per closed-port probe): MTU and reassembly only. */
	if (type == PT_ICMP_DEST_UNREACH && code == PT_ICMP_FRAG_NEEDED)
		mtu = pt_dst_mtu((void *)args->skbaddr);
	else if (!(type == PT_ICMP_TIME_EXCEEDED && code == PT_ICMP_EXC_FRAGTIME))
		return 0;
	return pt_emit((void *)args->skbaddr, PT_EVENT_ICMP, (type << 8) | code, mtu, 0);
}
