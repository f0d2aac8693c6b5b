/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Reading an sk_buff through BTF offsets (PT_OFF_* from tracer/probes/build.py), copying its headers into the
 * per-CPU scratch buffer, running the filter and parsing IPv4/IPv6 + TCP/UDP/ICMP (and VXLAN's inner packet).
 * Expects before inclusion: podtrace.h, pt_filter_match() (tracer/probes/pcapfilter.py), and these maps:
 *   events (ring buffer), counters (per-CPU u64[PT_CNT_SLOTS]), scratch (per-CPU struct pt_scratch[1]).
 */
#ifndef PODTRACE_SKB_H
#define PODTRACE_SKB_H

#define PT_READ(dst, base, off) bpf_probe_read_kernel(&(dst), sizeof(dst), (const char *)(base) + (off))
/* A kernel struct field: a direct load where the program's pointers are BTF-typed (tp_btf), checked by the verifier
 * against the running kernel, else one helper call (raw tracepoints, kprobes: about 20-40 ns each on a VM).
 * `direct` is a constant at every call site: each program keeps one of the two. */
#define PT_GET(direct, dst, base, off)                                                    \
	do {                                                                              \
		if (direct)                                                               \
			(dst) = *(typeof(dst) *)((const char *)(base) + (off));           \
		else                                                                      \
			PT_READ(dst, base, off);                                          \
	} while (0)
#define PT_MASK(i) ((i) & (PT_SNAP_LEN - 1))
#define PT_U16(buf, i) ((__u16)(((__u16)(buf)[PT_MASK(i)] << 8) | (buf)[PT_MASK((i) + 1)]))

#ifndef PT_VXLAN_PORT_A
#define PT_VXLAN_PORT_A 8472 /* flannel */
#endif
#ifndef PT_VXLAN_PORT_B
#define PT_VXLAN_PORT_B 4789 /* IANA */
#endif

#ifndef PT_PROBE
#define PT_PROBE PT_PROBE_OTHER
#endif

/* One counter of one probe (PT_PROBE_*). Callers write pt_count(PT_CNT_*): the macro takes the probe of the
 * program source it appears in; helpers below take it as a parameter, passed on by their macros. */
static __always_inline void pt_count_in(__u32 probe, __u32 counter)
{
	__u32 index = probe * PT_CNT_MAX + counter;
	__u64 *value = counters.lookup(&index);
	if (value)
		*value += 1;
}
#define pt_count(counter) pt_count_in(PT_PROBE, counter)

struct pt_skb_info {
	__u32 len;
	__u32 mark;
	__u32 netns;
	__u32 ifindex;
	__u16 l3_proto;
	__u16 snap_len;
	__u8 flags;
	void *dev;
};

/* Network namespace of the skb: its device's, else its socket's (locally generated, no device yet). */
static __always_inline __u32 pt_netns_of(int direct, void *skb, void *dev)
{
	void *net = 0;
	void *sk = 0;
	__u32 inum = 0;
	if (dev)
		PT_GET(direct, net, dev, PT_OFF_NET_DEVICE_ND_NET);
	if (!net) {
		PT_GET(direct, sk, skb, PT_OFF_SK_BUFF_SK);
		if (sk)
			PT_GET(direct, net, sk, PT_OFF_SOCK_SKC_NET);
	}
	if (net)
		PT_GET(direct, inum, net, PT_OFF_NET_NS_INUM);
	return inum;
}

/* Copy up to PT_SNAP_LEN bytes from the network header into scratch; returns the byte count or 0. */
#define pt_snapshot(skb, s, info) pt_snapshot_in(PT_PROBE, 0, skb, s, info)
static __always_inline __u32 pt_snapshot_in(__u32 probe, int direct, void *skb, struct pt_scratch *s,
					    struct pt_skb_info *info)
{
	unsigned char *head = 0, *data = 0;
	__u16 network_header = 0, protocol = 0;
	__u32 tail = 0, len = 0;
	PT_GET(direct, head, skb, PT_OFF_SK_BUFF_HEAD);
	PT_GET(direct, data, skb, PT_OFF_SK_BUFF_DATA);
	PT_GET(direct, network_header, skb, PT_OFF_SK_BUFF_NETWORK_HEADER);
	PT_GET(direct, tail, skb, PT_OFF_SK_BUFF_TAIL);
	PT_GET(direct, len, skb, PT_OFF_SK_BUFF_LEN);
	PT_GET(direct, protocol, skb, PT_OFF_SK_BUFF_PROTOCOL);
	PT_GET(direct, info->mark, skb, PT_OFF_SK_BUFF_MARK);
	info->len = len;
	info->l3_proto = bpf_ntohs(protocol);

	unsigned char *start = head + network_header;
	__u32 offset = network_header;
	if (network_header == (__u16)~0U || !head) {
		/* Not set yet (early receive): skb->data is the network header after eth_type_trans. */
		start = data;
		offset = data - head;
		info->flags |= PT_FLAG_SNAP_SKB;
	}
	if (!start || tail <= offset)
		return 0;
	__u32 avail = tail - offset; /* linear bytes only: paged data needs skb_copy_bits */
	if (avail > PT_SNAP_LEN)
		avail = PT_SNAP_LEN;
	if (avail < 1)
		return 0;
	/* The packet's linear bytes only (avail bounds every parse and the filter): a drop of a 60-byte packet copies
	 * 60 bytes, not PT_SNAP_LEN. */
	if (bpf_probe_read_kernel(s->buf, ((avail - 1) & (PT_SNAP_LEN - 1)) + 1, start) < 0) { /* 1..256: verifiable */
		pt_count_in(probe, PT_CNT_READ_FAIL);
		return 0;
	}
	info->snap_len = avail;
	return avail;
}

/* Parse an IP packet at buf[at]; returns the L4 offset (0 when not IP). */
static __always_inline __u32 pt_parse_ip(const __u8 *buf, __u32 at, __u32 avail, struct pt_tuple *t)
{
	__u32 l4 = 0;
	__u8 version = buf[PT_MASK(at)] >> 4;
	if (version == 4 && at + 20 <= avail) {
		__u32 ihl = (buf[PT_MASK(at)] & 0x0f) * 4;
		t->family = 4;
		t->ip_len = PT_U16(buf, at + 2);
		t->frag = PT_U16(buf, at + 6);
		t->proto = buf[PT_MASK(at + 9)];
#pragma unroll
		for (int i = 0; i < 4; i++) {
			t->saddr[i] = buf[PT_MASK(at + 12 + i)];
			t->daddr[i] = buf[PT_MASK(at + 16 + i)];
		}
		l4 = at + ihl;
		if (t->frag & 0x1fff) /* a non-first fragment carries no L4 header */
			return 0;
	} else if (version == 6 && at + 40 <= avail) {
		t->family = 6;
		t->ip_len = PT_U16(buf, at + 4) + 40;
		t->proto = buf[PT_MASK(at + 6)];
#pragma unroll
		for (int i = 0; i < 16; i++) {
			t->saddr[i] = buf[PT_MASK(at + 8 + i)];
			t->daddr[i] = buf[PT_MASK(at + 24 + i)];
		}
		l4 = at + 40;
		if (t->proto == 44) { /* fragment header: next header in its first byte */
			t->frag = PT_U16(buf, l4 + 2);
			t->proto = buf[PT_MASK(l4)];
			l4 += 8;
			if (t->frag & 0xfff8)
				return 0;
		}
	} else {
		return 0;
	}
	if (l4 + 4 > avail)
		return 0;
	if (t->proto == 6 || t->proto == 17 || t->proto == 132) {
		t->sport = PT_U16(buf, l4);
		t->dport = PT_U16(buf, l4 + 2);
	} else if (t->proto == 1 || t->proto == 58) {
		t->icmp_type = buf[PT_MASK(l4)];
		t->icmp_code = buf[PT_MASK(l4 + 1)];
		if (l4 + 6 <= avail)
			t->sport = PT_U16(buf, l4 + 4); /* echo identifier */
	}
	return l4;
}

/* Copy a whole packet event word by word: a __builtin_memcpy this large becomes a libc call. */
static __always_inline void pt_copy_event(struct pt_packet_event *to, const struct pt_packet_event *from)
{
	__u64 *dst = (__u64 *)to;
	const __u64 *src = (const __u64 *)from;
#pragma unroll
	for (int i = 0; i < sizeof(*to) / 8; i++)
		dst[i] = src[i];
}

/* Fill a packet event from skb: device, netns, tuples, snapshot. Returns 0 when the filter rejects it. */
#define pt_fill(ev, skb, s, info, avail) pt_fill_in(0, ev, skb, s, info, avail, bpf_ktime_get_ns())
static __always_inline int pt_fill_in(int direct, struct pt_packet_event *ev, void *skb, struct pt_scratch *s,
				      struct pt_skb_info *info, __u32 avail, __u64 now)
{
	ev->cpu = bpf_get_smp_processor_id();
	ev->ts_ns = now;
	ev->skb = (__u64)skb;
	ev->len = info->len;
	ev->mark = info->mark;
	ev->l3_proto = info->l3_proto;
	ev->netns = info->netns;
	ev->ifindex = info->ifindex;
	ev->flags = info->flags;
	ev->snap_len = avail > PT_EVENT_SNAP ? PT_EVENT_SNAP : avail;
	/* Word copies (a large __builtin_memcpy becomes a libc call the verifier rejects). Bytes past the packet are
	 * other kernel memory: never let them leave in an event or a recording, so the word holding the last byte
	 * is masked (little-endian: lower addresses in lower bits) and the words after it are zero. */
	__u32 keep = ev->snap_len;
	__u64 *to = (__u64 *)ev->snap;
	const __u64 *from = (const __u64 *)s->buf;
#pragma unroll
	for (int i = 0; i < PT_EVENT_SNAP / 8; i++) {
		__u64 word = 0;
		if (i * 8 + 8 <= keep)
			word = from[i];
		else if (i * 8 < keep)
			word = from[i] & ((1ULL << ((keep - i * 8) * 8)) - 1);
		to[i] = word;
	}
	if (info->dev) {
		if (direct) {
			__u64 *name = (__u64 *)ev->ifname;
			name[0] = *(__u64 *)((char *)info->dev + PT_OFF_NET_DEVICE_NAME);
			name[1] = *(__u64 *)((char *)info->dev + PT_OFF_NET_DEVICE_NAME + 8);
		} else {
			bpf_probe_read_kernel(ev->ifname, PT_IFNAMSIZ, (char *)info->dev + PT_OFF_NET_DEVICE_NAME);
		}
	}

	__u32 l4 = pt_parse_ip(s->buf, 0, avail, &ev->outer);
	if (ev->outer.family)
		ev->flags |= PT_FLAG_PARSED;
	/* VXLAN: outer UDP to a VXLAN port, 8-byte VXLAN header, inner Ethernet, inner IP. */
	if (l4 && ev->outer.proto == 17 &&
	    (ev->outer.dport == PT_VXLAN_PORT_A || ev->outer.dport == PT_VXLAN_PORT_B)) {
		__u32 vx = l4 + 8;
		if (vx + 8 + 14 + 20 <= avail) {
			ev->vni = ((__u32)s->buf[PT_MASK(vx + 4)] << 16) | ((__u32)s->buf[PT_MASK(vx + 5)] << 8) |
				  s->buf[PT_MASK(vx + 6)];
			__u16 inner_type = PT_U16(s->buf, vx + 8 + 12);
			if (inner_type == 0x0800 || inner_type == 0x86DD) {
				pt_parse_ip(s->buf, vx + 8 + 14, avail, &ev->inner);
				if (ev->inner.family)
					ev->flags |= PT_FLAG_INNER;
			}
		}
	}
	return 1;
}

/* Device, netns and the netns/ifname filters. Returns 0 when the packet is not wanted. */
#define pt_wanted(skb, info) pt_wanted_in(0, skb, info)
static __always_inline int pt_wanted_in(int direct, void *skb, struct pt_skb_info *info)
{
	PT_GET(direct, info->dev, skb, PT_OFF_SK_BUFF_DEV);
	if (info->dev)
		PT_GET(direct, info->ifindex, info->dev, PT_OFF_NET_DEVICE_IFINDEX);
	info->netns = pt_netns_of(direct, skb, info->dev);
#ifdef PT_FILTER_NETNS
	if (info->netns != PT_FILTER_NETNS)
		return 0;
#endif
#ifdef PT_SCOPE
	/* A node and its pods (tracer/probes/scope.py): packets elsewhere on the host cost this lookup and no event. */
	if (!scope.lookup(&info->netns))
		return 0;
#endif
#ifdef PT_FILTER_IFNAME_LO
	{
		__u64 name[2] = {0, 0};
		if (!info->dev)
			return 0;
		bpf_probe_read_kernel(name, sizeof(name), (char *)info->dev + PT_OFF_NET_DEVICE_NAME);
		if (name[0] != PT_FILTER_IFNAME_LO || name[1] != PT_FILTER_IFNAME_HI)
			return 0;
	}
#endif
	return 1;
}

#ifndef PT_PATH_RATE
#define PT_PATH_RATE 20000
#endif

struct pt_rate {
	__u64 window_start;
	__u64 count;
};
BPF_PERCPU_ARRAY(path_rate, struct pt_rate, 1);

/* Per-CPU cap of PT_PATH_RATE sampled events per second; what it skips is counted (PT_CNT_SAMPLED).
 * Asked first (take = 0), before the packet is copied: over budget, a packet costs this lookup and no copy; asked
 * again (take = 1) once the filter wants the packet, so packets the filter rejects spend none of the budget. */
static __always_inline int pt_rate_allows_in(__u32 probe, int take)
{
	__u32 zero = 0;
	struct pt_rate *rate = path_rate.lookup(&zero);
	if (!rate)
		return 0;
	if (!take && rate->count < PT_PATH_RATE)
		return 1;
	__u64 now = bpf_ktime_get_ns();
	if (now - rate->window_start > 1000000000ULL) {
		rate->window_start = now;
		rate->count = 0;
	}
	if (rate->count >= PT_PATH_RATE) {
		pt_count_in(probe, PT_CNT_SAMPLED);
		return 0;
	}
	if (take)
		rate->count++;
	return 1;
}
#define pt_rate_allows() pt_rate_allows_in(PT_PROBE, 1)

#ifdef PT_NFKPROBE
/* Key of the nf_hook_slow call in progress (bpf/nfkprobe.c): the task, or the CPU for idle tasks (pid 0 on
 * every CPU), where received packets run in softirq. */
static __always_inline __u64 pt_nfk_key(void)
{
	__u64 id = bpf_get_current_pid_tgid();
	return (id >> 32) ? id : bpf_get_smp_processor_id();
}
#endif

/* floor(log2(v)) without a loop, capped at the last slot. */
static __always_inline __u32 pt_log2(__u64 v)
{
	__u32 r = 0, shift;
	shift = (v > 0xFFFFFFFFULL) << 5; v >>= shift; r |= shift;
	shift = (v > 0xFFFF) << 4; v >>= shift; r |= shift;
	shift = (v > 0xFF) << 3; v >>= shift; r |= shift;
	shift = (v > 0xF) << 2; v >>= shift; r |= shift;
	shift = (v > 0x3) << 1; v >>= shift; r |= shift;
	r |= (v >> 1);
	return r < PT_NF_HIST_SLOTS ? r : PT_NF_HIST_SLOTS - 1;
}

#ifndef PT_RB_WAKE_EVERY
#define PT_RB_WAKE_EVERY 64
#endif
BPF_PERCPU_ARRAY(rb_quiet, __u32, 1);

/* Wake the reader once per PT_RB_WAKE_EVERY events per CPU. The reader keeps up, so with the default flags nearly
 * every event finds it waiting and pays a wakeup (irq_work, an IPI). Measured by bpf_stats on a 2-CPU VM, a drop
 * event cost 500 ns waking every 64 events, 260 every 256 and 180 never: the wakeup, not the event, was most of
 * it. tracer/probes/build.py rb_wake_every() sets the largest count that keeps what all CPUs may hold unwoken under
 * half the ring; the reader also polls at least every 100 ms and drains the ring unwoken (tracer/sources/live.py).
 * This BCC has no ringbuf_query to wake on the fill level instead. */
static __always_inline __u64 pt_wakeup(void)
{
	__u32 zero = 0;
	__u32 *quiet = rb_quiet.lookup(&zero);
	if (!quiet)
		return 0;
	if (++*quiet < PT_RB_WAKE_EVERY)
		return BPF_RB_NO_WAKEUP;
	*quiet = 0;
	return BPF_RB_FORCE_WAKEUP;
}

#ifdef PT_NFKPROBE
/* One verdict event for a packet a table or chain dropped (bpf/nfkprobe.c); s/info/avail: its snapshot. */
#define pt_nfk_verdict(skb, t, verdict, key, s, info, avail) \
	pt_nfk_verdict_in(PT_PROBE, skb, t, verdict, key, s, info, avail)
static __always_inline void pt_nfk_verdict_in(__u32 probe, void *skb, struct pt_nfk_table *t, __u32 verdict,
					      __u64 key, struct pt_scratch *s, struct pt_skb_info *info, __u32 avail)
{
	struct pt_nf_verdict_event *ev = events.ringbuf_reserve(sizeof(struct pt_nf_verdict_event));
	if (!ev) {
		pt_count_in(probe, PT_CNT_LOST);
		return;
	}
	__u64 *words = (__u64 *)ev;
#pragma unroll
	for (int i = 0; i < sizeof(*ev) / 8; i++)
		words[i] = 0;
	ev->type = PT_EVENT_NF_VERDICT;
	ev->cpu = bpf_get_smp_processor_id();
	ev->ts_ns = bpf_ktime_get_ns();
	ev->skb = (__u64)skb;
	ev->netns = info->netns;
	ev->verdict = verdict;
	ev->source = t->source;
	ev->len = info->len;
	ev->hook = 0xf;
	struct pt_nfk_call *call = nfk_calls.lookup(&key);
	if (call && call->skb == (__u64)skb) {
		ev->hook = call->hook;
		ev->pf = call->pf;
		ev->hook_ns = ev->ts_ns - call->entry_ns;
	}
	/* Word copies: a 32-byte __builtin_memcpy may become a libc call. */
	__u64 *from = (__u64 *)t->table, *to = (__u64 *)ev->table;
#pragma unroll
	for (int i = 0; i < 2 * PT_NFK_NAME / 8; i++) /* table and chain are adjacent in both structs */
		to[i] = from[i];
	pt_parse_ip(s->buf, 0, avail, &ev->tuple);
	events.ringbuf_submit(ev, pt_wakeup());
	pt_count_in(probe, PT_CNT_EVENTS);
}
#endif

#ifdef PT_CT
/* One conntrack tuple from a copy of nf_conn.tuplehash[dir].tuple (offsets from BTF: tracer/probes/build.py
 * CT_OFFSETS); the copy is per-CPU scratch memory, so these are plain loads. */
static __always_inline void pt_ct_tuple(const __u8 *tuple, struct pt_tuple *t)
{
	__u16 l3num = *(const __u16 *)(tuple + PT_OFF_NF_CT_TUPLE_SRC_L3NUM);
	t->family = l3num == 2 ? 4 : l3num == 10 ? 6 : 0; /* AF_INET, AF_INET6 */
	__builtin_memcpy(t->saddr, tuple + PT_OFF_NF_CT_TUPLE_SRC_U3, 16);
	__builtin_memcpy(t->daddr, tuple + PT_OFF_NF_CT_TUPLE_DST_U3, 16);
	t->proto = *(const __u8 *)(tuple + PT_OFF_NF_CT_TUPLE_DST_PROTONUM);
	t->sport = bpf_ntohs(*(const __u16 *)(tuple + PT_OFF_NF_CT_TUPLE_SRC_U)); /* ICMP: the echo id */
	t->dport = bpf_ntohs(*(const __u16 *)(tuple + PT_OFF_NF_CT_TUPLE_DST_U)); /* ICMP: type and code */
}

/* The conntrack event of a drop: what skb->_nfct says about the packet's connection. */
static __always_inline void pt_ct_fill(int direct, struct pt_ct_event *ev, void *skb, struct pt_skb_info *info,
				       struct pt_scratch *s, __u64 now)
{
	__u64 nfct = 0;
	PT_GET(direct, nfct, skb, PT_OFF_SK_BUFF_NFCT);
	__u64 *words = (__u64 *)ev;
#pragma unroll
	for (int i = 0; i < sizeof(*ev) / 8; i++)
		words[i] = 0;
	ev->type = PT_EVENT_CT;
	ev->cpu = bpf_get_smp_processor_id();
	ev->ts_ns = now;
	ev->skb = (__u64)skb;
	ev->netns = info->netns;
	ev->ctinfo = nfct & PT_NFCT_INFOMASK;
	const char *ct = (const char *)(nfct & ~PT_NFCT_INFOMASK);
	if (ev->ctinfo == PT_CT_INFO_UNTRACKED) {
		ev->state = PT_CT_UNTRACKED;
	} else if (ct) {
		__u64 status = 0;
		ev->state = PT_CT_ENTRY;
		ev->ct = (__u64)ct;
		/* Both directions' tuples in one helper call, and status with them where it follows them
		 * (tracer/probes/build.py conntrack_cflags): nf_conn comes from _nfct, an integer, so no direct loads. */
#ifdef PT_CT_STATUS_AT
		if (bpf_probe_read_kernel(s->ct, PT_CT_SPAN, ct + PT_OFF_NF_CONN_TUPLEHASH) == 0) {
			status = *(__u64 *)(s->ct + PT_CT_STATUS_AT);
#else
		PT_READ(status, ct, PT_OFF_NF_CONN_STATUS);
		if (bpf_probe_read_kernel(s->ct, 2 * PT_NF_CT_HASH_SIZE, ct + PT_OFF_NF_CONN_TUPLEHASH) == 0) {
#endif
			pt_ct_tuple(s->ct + PT_OFF_NF_CT_HASH_TUPLE, &ev->orig);
			pt_ct_tuple(s->ct + PT_NF_CT_HASH_SIZE + PT_OFF_NF_CT_HASH_TUPLE, &ev->reply);
		}
		ev->status = (__u32)status;
	}
}
#endif

/* The whole per-packet step: filters first, then an event on the ring buffer. direct: skb is BTF-typed (tp_btf). */
#define pt_emit(skb, type, reason, location, sampled) pt_emit_in(PT_PROBE, 0, skb, type, reason, location, sampled)
static __always_inline int pt_emit_in(__u32 probe, int direct, void *skb, __u32 type, __u32 reason,
				      __u64 location, int sampled)
{
	__u32 zero = 0;
	struct pt_skb_info info = {};
	pt_count_in(probe, PT_CNT_SEEN);
	if (!pt_wanted_in(direct, skb, &info)) { /* scope first: a packet elsewhere costs nothing more */
		pt_count_in(probe, PT_CNT_FILTERED);
		return 0;
	}
	struct pt_scratch *s = scratch.lookup(&zero);
	if (!s)
		return 0;
	if (sampled && !pt_rate_allows_in(probe, 0))
		return 0;
	__u32 avail = pt_snapshot_in(probe, direct, skb, s, &info);
	if (!pt_filter_match(s->buf, avail, info.len)) {
		pt_count_in(probe, PT_CNT_FILTERED);
		return 0;
	}
	if (sampled && !pt_rate_allows_in(probe, 1))
		return 0;
#ifdef PT_NFKPROBE
	if (type == PT_EVENT_DROP) {
		__u64 key = pt_nfk_key();
		struct pt_nfk_table *t = nfk_tables.lookup(&key);
		if (t && t->skb == (__u64)skb) /* freed inside the table call (NF_DROP_REASON): its verdict first */
			pt_nfk_verdict_in(probe, skb, t, 0, key, s, &info, avail);
	}
#endif
	__u64 now = bpf_ktime_get_ns(); /* one clock read: a drop and its conntrack event share it */
	struct pt_packet_event *ev;
	void *record;
#ifdef PT_CT
	if (type == PT_EVENT_DROP) { /* the connection first, so a reader has it when the drop arrives */
		struct pt_drop_record *both = events.ringbuf_reserve(sizeof(struct pt_drop_record));
		if (!both) {
			pt_count_in(probe, PT_CNT_LOST);
			return 0;
		}
		pt_ct_fill(direct, &both->ct, skb, &info, s, now);
		record = both;
		ev = &both->drop;
	} else
#endif
	{
		ev = events.ringbuf_reserve(sizeof(struct pt_packet_event));
		if (!ev) {
			pt_count_in(probe, PT_CNT_LOST);
			return 0;
		}
		record = ev;
	}
	/* Ring buffer memory is not zeroed; an unrolled word loop, since a large memset becomes a libc call. The
	 * snapshot's words are all written by pt_fill_in (masked past the packet): only the fields before it. */
	__u64 *words = (__u64 *)ev;
#pragma unroll
	for (int i = 0; i < __builtin_offsetof(struct pt_packet_event, snap) / 8; i++)
		words[i] = 0;
	ev->type = type;
	ev->reason = reason;
	ev->location = location;
#ifdef PT_NETFILTER
	{
		__u64 key = (__u64)skb;
		struct pt_nf_state *st = nf_state.lookup(&key);
		/* Only a recent state belongs to this packet: skb addresses are reused. */
		if (st && st->netns == info.netns && now - st->last_ns < 100000000ULL)
			ev->nf_point = st->point + 1;
	}
#endif
#ifdef PT_NFCT
	{
		/* Conntrack flows mode: the point after DNAT when this skb passed it on this CPU (bpf/nfct.c), and for a
		 * netfilter drop the hook from the stack (bpf/drops.c): before conntrack when the skb has no entry. */
		struct pt_nf_last *last = nf_last.lookup(&zero);
		if (last) {
			__u32 point = last->skb == (__u64)skb && last->len == info.len ? last->point + 1 : 0;
			__u32 hook = last->drop_skb == (__u64)skb ? last->drop_hook : 0;
			__u64 nfct = 0;
			PT_GET(direct, nfct, skb, PT_OFF_SK_BUFF_NFCT);
			if (hook == 1 || hook == 4) { /* PREROUTING, OUTPUT: conntrack runs in them */
				__u32 first = hook == 1 ? PT_NF_PRE_FIRST : PT_NF_OUT_FIRST;
				__u32 dnat = hook == 1 ? PT_NF_PRE_AFTER_DNAT : PT_NF_OUT_AFTER_DNAT;
				if (!nfct)
					point = first + 1;
				else if (point != dnat + 1)
					point = PT_NFK_POINT(2, hook - 1);
			} else if (hook) {
				point = PT_NFK_POINT(2, hook - 1);
			}
			ev->nf_point = point;
			last->drop_skb = 0;
		}
	}
#endif
#ifdef PT_NFKPROBE
	if (type == PT_EVENT_DROP) {
		__u64 key = pt_nfk_key();
		struct pt_nfk_call *call = nfk_calls.lookup(&key);
		if (call && call->skb == (__u64)skb) /* freed by nf_hook_slow: a hook's verdict */
			ev->nf_point = PT_NFK_POINT(call->pf, call->hook);
	}
#endif
	pt_fill_in(direct, ev, skb, s, &info, avail, now);
#ifdef PT_PATH_XMIT
	if (type == PT_EVENT_PATH && reason == PT_POINT_QUEUE) {
		/* Kept for net_dev_xmit (bpf/path.c): by then the driver may have freed the skb. Copied through a
		 * per-CPU map value: before 6.2 a map update's value cannot be ring buffer memory. */
		struct pt_packet_event *copy = xmit_scratch.lookup(&zero);
		if (copy) {
			pt_copy_event(copy, ev);
			struct pt_xmit_key key = {.skb = (__u64)skb, .ifindex = info.ifindex};
			xmit_pending.update(&key, copy);
		}
	}
#endif
	events.ringbuf_submit(record, pt_wakeup());
	pt_count_in(probe, PT_CNT_EVENTS);
	return 0;
}

#endif /* PODTRACE_SKB_H */
