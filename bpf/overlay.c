// SPDX-License-Identifier: GPL-2.0
/*
 * Overlay kprobes, for kernels with kprobes and the vxlan module (6.1 signatures, drivers/net/vxlan/vxlan_core.c,
 * net/ipv4/ip_output.c):
 *   int vxlan_rcv(struct sock *sk, struct sk_buff *skb)          network header = outer IP, then UDP + VXLAN
 *   void vxlan_xmit_one(struct sk_buff *skb, struct net_device *dev, __be32 default_vni,
 *                       struct vxlan_rdst *rdst, bool did_rsc)    skb = the inner frame, not yet encapsulated
 *   int ip_do_fragment(struct net *net, struct sock *sk, struct sk_buff *skb, output)   skb longer than the MTU
 * Path events (PT_EVENT_PATH, rate-limited like every path event) with PT_POINT_VXLAN_RCV, _VXLAN_XMIT and
 * PT_POINT_FRAGMENT. On xmit the outer tuple is built from the tunnel's remote (struct vxlan_rdst) and its
 * local address (vxlan_dev.cfg.saddr, zero when the kernel picks it by route), the inner from the packet.
 */
#include <uapi/linux/ptrace.h>

/* pt_emit with a hook for what only the caller knows; returns the event to submit, or 0. */
static __always_inline struct pt_packet_event *pt_kp_event(void *skb, __u32 point, __u64 value)
{
	__u32 zero = 0;
	struct pt_skb_info info = {};
	pt_count(PT_CNT_SEEN);
	struct pt_scratch *s = scratch.lookup(&zero);
	if (!s)
		return 0;
	if (!pt_wanted(skb, &info)) {
		pt_count(PT_CNT_FILTERED);
		return 0;
	}
	__u32 avail = pt_snapshot(skb, s, &info);
#ifndef PT_KP_OVERLAY_UNFILTERED
	/* Skipped for `podtrace overlay`: its filter selects outer VXLAN packets and fragments, but vxlan_xmit_one
	 * sees the inner packet and ip_do_fragment the packet before it is cut; every event here is one it wants. */
	if (!pt_filter_match(s->buf, avail, info.len)) {
		pt_count(PT_CNT_FILTERED);
		return 0;
	}
#endif
	if (!pt_rate_allows())
		return 0;
	struct pt_packet_event *ev = events.ringbuf_reserve(sizeof(struct pt_packet_event));
	if (!ev) {
		pt_count(PT_CNT_LOST);
		return 0;
	}
	__u64 *words = (__u64 *)ev;
#pragma unroll
	for (int i = 0; i < sizeof(*ev) / 8; i++)
		words[i] = 0;
	ev->type = PT_EVENT_PATH;
	ev->reason = point;
	ev->location = value;
	pt_fill(ev, skb, s, &info, avail);
	return ev;
}

static __always_inline void pt_kp_submit(struct pt_packet_event *ev)
{
	events.ringbuf_submit(ev, pt_wakeup());
	pt_count(PT_CNT_EVENTS);
}

#ifdef PT_KP_VXLAN
int pt_kp_vxlan_rcv(struct pt_regs *ctx)
{
	struct pt_packet_event *ev = pt_kp_event((void *)PT_REGS_PARM2(ctx), PT_POINT_VXLAN_RCV, 0);
	if (ev)
		pt_kp_submit(ev);
	return 0;
}

/* union vxlan_addr (include/net/vxlan.h): struct sockaddr_in or sockaddr_in6, family first (socket ABI). */
static __always_inline void pt_kp_vxlan_addr(void *addr, __u8 *out, __u8 *family)
{
	__u16 sa_family = 0;
	PT_READ(sa_family, addr, 0);
	if (sa_family == 2) { /* AF_INET: sin_addr at 4 */
		bpf_probe_read_kernel(out, 4, (char *)addr + 4);
		*family = 4;
	} else if (sa_family == 10) { /* AF_INET6: sin6_addr at 8 */
		bpf_probe_read_kernel(out, 16, (char *)addr + 8);
		*family = 6;
	}
}

int pt_kp_vxlan_xmit(struct pt_regs *ctx)
{
	struct pt_packet_event *ev = pt_kp_event((void *)PT_REGS_PARM1(ctx), PT_POINT_VXLAN_XMIT, 0);
	if (!ev)
		return 0;
	/* The packet is the inner one: move its tuple to inner, then describe the tunnel as the outer. */
	__u32 *from = (__u32 *)&ev->outer, *to = (__u32 *)&ev->inner;
	/* struct pt_tuple is 44 bytes; inner sits at a 4-aligned offset: 32-bit words. */
#pragma unroll
	for (int i = 0; i < sizeof(struct pt_tuple) / 4; i++) {
		to[i] = from[i];
		from[i] = 0;
	}
	if (ev->inner.family)
		ev->flags |= PT_FLAG_INNER;
	__u32 vni = bpf_ntohl((__u32)PT_REGS_PARM3(ctx));
#ifdef PT_HAVE_VXLAN_RDST
	void *rdst = (void *)PT_REGS_PARM4(ctx);
	void *dev = (void *)PT_REGS_PARM2(ctx);
	if (rdst) {
		__u32 remote_vni = 0;
		__u16 port = 0;
		PT_READ(remote_vni, rdst, PT_OFF_VXLAN_RDST_REMOTE_VNI);
		if (remote_vni)
			vni = bpf_ntohl(remote_vni);
		PT_READ(port, rdst, PT_OFF_VXLAN_RDST_REMOTE_PORT);
		ev->outer.dport = bpf_ntohs(port);
		pt_kp_vxlan_addr((char *)rdst + PT_OFF_VXLAN_RDST_REMOTE_IP, ev->outer.daddr, &ev->outer.family);
	}
	if (dev) {
		__u8 family = 0;
		pt_kp_vxlan_addr((char *)dev + PT_NETDEV_PRIV + PT_OFF_VXLAN_DEV_SADDR, ev->outer.saddr, &family);
	}
	ev->outer.proto = 17;
#endif
	ev->vni = vni & 0xffffff;
	pt_kp_submit(ev);
	return 0;
}
#endif

#ifdef PT_KP_FRAG
int pt_kp_fragment(struct pt_regs *ctx)
{
	void *skb = (void *)PT_REGS_PARM3(ctx);
	__u64 mtu = 0;
#ifdef PT_HAVE_DEV_MTU
	void *dev = 0;
	__u32 dev_mtu = 0;
	PT_READ(dev, skb, PT_OFF_SK_BUFF_DEV);
	if (dev)
		PT_READ(dev_mtu, dev, PT_KP_OFF_NET_DEVICE_MTU);
	mtu = dev_mtu;
#endif
	struct pt_packet_event *ev = pt_kp_event(skb, PT_POINT_FRAGMENT, mtu);
	if (ev)
		pt_kp_submit(ev);
	return 0;
}
#endif
