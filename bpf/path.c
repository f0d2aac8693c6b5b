// SPDX-License-Identifier: GPL-2.0
/*
 * Packet path: device receive and queue tracepoints (include/trace/events/net.h) for packets that match
 * the trace filter, rate-limited per CPU (pt_rate_allows). net:net_dev_xmit is not used: it fires after
 * the driver took the skb, which may already be freed, so its bytes cannot be trusted.
 */

TRACEPOINT_PROBE(net, netif_receive_skb)
{
	return pt_emit((void *)args->skbaddr, PT_EVENT_PATH, PT_POINT_RX, 0, 1);
}

TRACEPOINT_PROBE(net, net_dev_queue)
{
	return pt_emit((void *)args->skbaddr, PT_EVENT_PATH, PT_POINT_QUEUE, 0, 1);
}
