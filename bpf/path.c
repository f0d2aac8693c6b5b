// SPDX-License-Identifier: GPL-2.0
/*
 * Packet path: device receive, queue and driver transmit (include/trace/events/net.h) for packets that match
 * the trace filter, rate-limited per CPU (pt_rate_allows).
 * net_dev_xmit fires after the driver took the skb, which may already be freed, so its bytes cannot be read:
 * the packet's net_dev_queue event is kept in xmit_pending (pt_emit) and sent again as the xmit event, with the
 * time the packet waited in the qdisc and the driver's return code. A packet segmented in software after the
 * queue reaches the driver as new skbs and has no xmit event.
 */

TRACEPOINT_PROBE(net, netif_receive_skb)
{
	return pt_emit((void *)args->skbaddr, PT_EVENT_PATH, PT_POINT_RX, 0, 1);
}

TRACEPOINT_PROBE(net, net_dev_queue)
{
	return pt_emit((void *)args->skbaddr, PT_EVENT_PATH, PT_POINT_QUEUE, 0, 1);
}

/* (skb, rc, dev, skb_len): the raw tracepoint gives the device itself, whose ifindex keys xmit_pending. */
RAW_TRACEPOINT_PROBE(net_dev_xmit)
{
	struct pt_xmit_key key = {.skb = ctx->args[0]};
	void *dev = (void *)ctx->args[2];
	pt_count(PT_CNT_SEEN);
	if (!dev || PT_READ(key.ifindex, dev, PT_OFF_NET_DEVICE_IFINDEX) < 0) {
		pt_count(PT_CNT_FILTERED);
		return 0;
	}
	struct pt_packet_event *queued = xmit_pending.lookup(&key);
	if (!queued) { /* not traced when queued: filtered or sampled there */
		pt_count(PT_CNT_FILTERED);
		return 0;
	}
	__u64 now = bpf_ktime_get_ns();
	__u64 waited = now - queued->ts_ns;
	if (waited > PT_XMIT_STALE_NS) {
		xmit_pending.delete(&key);
		pt_count(PT_CNT_FILTERED);
		return 0;
	}
	struct pt_packet_event *ev = events.ringbuf_reserve(sizeof(struct pt_packet_event));
	if (!ev) {
		xmit_pending.delete(&key);
		pt_count(PT_CNT_LOST);
		return 0;
	}
	pt_copy_event(ev, queued);
	xmit_pending.delete(&key);
	ev->reason = PT_POINT_XMIT;
	ev->cpu = bpf_get_smp_processor_id();
	ev->ts_ns = now;
	ev->len = (__u32)ctx->args[3];
	ev->location = PT_XMIT_LOCATION(waited, (__u32)ctx->args[1]);
	events.ringbuf_submit(ev, pt_wakeup());
	pt_count(PT_CNT_EVENTS);
	return 0;
}
