// SPDX-License-Identifier: GPL-2.0
/*
 * softirq and NAPI latency, aggregated in the kernel: per-CPU log2 histograms of NET_RX and NET_TX
 * wait (softirq_raise -> softirq_entry) and run (softirq_entry -> softirq_exit), and napi_poll work
 * against budget. Userspace (tracer/analysis/softirq.py) reads the maps at a few Hz; no per-event traffic.
 *
 * Tracepoints: include/trace/events/irq.h (softirq_raise/entry/exit carry `unsigned int vec`) and
 * include/trace/events/napi.h (napi_poll: napi, dev_name, work, budget). Their context structs come from
 * tracefs format files, not from kernel headers, so they compile on any kernel that has the tracepoints.
 */

#define PT_SIRQ_SLOTS 48 /* slot s > 0 holds [2^(s-1), 2^s) ns; 2^47 ns is about 39 hours */
#define PT_SIRQ_VEC_NET_TX 2 /* enum { HI_SOFTIRQ, TIMER_SOFTIRQ, NET_TX_SOFTIRQ, NET_RX_SOFTIRQ, ... } */
#define PT_SIRQ_VEC_NET_RX 3

/* hists index: (vec == NET_RX) * 2 + (run ? 1 : 0) */
#define PT_SIRQ_TX_WAIT 0
#define PT_SIRQ_TX_RUN 1
#define PT_SIRQ_RX_WAIT 2
#define PT_SIRQ_RX_RUN 3
/* The subset of waits whose handler ran in ksoftirqd: deferred work that competes with tasks for the CPU, so the
 * only waits CPU starvation lengthens (irq exit and local_bh_enable run softirqs inline). 4 + (vec == NET_RX). */
#define PT_SIRQ_TX_WAIT_KSOFTIRQD 4
#define PT_SIRQ_HISTS 6

/* napi index */
#define PT_NAPI_POLLS 0
#define PT_NAPI_WORK 1
#define PT_NAPI_EXHAUSTED 2 /* work == budget: net_rx_action keeps the NAPI instance scheduled */
#define PT_NAPI_IDLE 3      /* work == 0 */
#define PT_NAPI_MAX 4

struct pt_sirq_hist {
	__u64 slots[PT_SIRQ_SLOTS];
	__u64 count;
	__u64 sum_ns;
	__u64 max_ns;
};

struct pt_sirq_times {
	__u64 raised[2]; /* [0] NET_TX, [1] NET_RX: first raise not yet followed by an entry, 0 when none */
	__u64 entered[2];
};

/* Per-CPU: a softirq raised on a CPU runs on that CPU (raise sets the local pending bit), so no locking. */
BPF_PERCPU_ARRAY(sirq_hists, struct pt_sirq_hist, PT_SIRQ_HISTS);
BPF_PERCPU_ARRAY(sirq_times, struct pt_sirq_times, 1);
BPF_PERCPU_ARRAY(napi_stats, __u64, PT_NAPI_MAX);

/* floor(log2(v)) + 1 for v > 0, 0 for v == 0; shifts only (no __builtin_clz: not every BPF target has it). */
static __always_inline __u32 pt_log2_slot(__u64 v)
{
	__u32 r = 0;
	if (!v)
		return 0;
	if (v >> 32) { v >>= 32; r += 32; }
	if (v >> 16) { v >>= 16; r += 16; }
	if (v >> 8) { v >>= 8; r += 8; }
	if (v >> 4) { v >>= 4; r += 4; }
	if (v >> 2) { v >>= 2; r += 2; }
	if (v >> 1) { r += 1; }
	r += 1;
	return r < PT_SIRQ_SLOTS ? r : PT_SIRQ_SLOTS - 1;
}

static __always_inline void pt_sirq_record(__u32 index, __u64 delta)
{
	struct pt_sirq_hist *h = sirq_hists.lookup(&index);
	if (!h)
		return;
	__u32 slot = pt_log2_slot(delta);
	if (slot < PT_SIRQ_SLOTS)
		h->slots[slot] += 1;
	h->count += 1;
	h->sum_ns += delta;
	if (delta > h->max_ns)
		h->max_ns = delta;
}

/* The prologue every softirq handler shares: NET_TX/NET_RX only, this CPU's timestamps, the [0]/[1] index.
 * Returns 0 for other vectors (or a failed lookup, which cannot happen for index 0 of a per-CPU array). */
static __always_inline struct pt_sirq_times *pt_sirq_net(__u32 vec, __u32 *i)
{
	__u32 zero = 0;
	if (vec != PT_SIRQ_VEC_NET_TX && vec != PT_SIRQ_VEC_NET_RX)
		return 0;
	*i = vec == PT_SIRQ_VEC_NET_RX;
	return sirq_times.lookup(&zero);
}

/* handle_softirqs runs in the ksoftirqd/N thread (run_ksoftirqd) or inline in whatever task was interrupted. */
static __always_inline int pt_in_ksoftirqd(void)
{
	char comm[16] = {};
	bpf_get_current_comm(comm, sizeof(comm));
	return comm[0] == 'k' && comm[1] == 's' && comm[2] == 'o' && comm[3] == 'f' && comm[4] == 't' &&
	       comm[5] == 'i' && comm[6] == 'r' && comm[7] == 'q' && comm[8] == 'd' && comm[9] == '/';
}

TRACEPOINT_PROBE(irq, softirq_raise)
{
	__u32 i = 0;
	struct pt_sirq_times *t = pt_sirq_net(args->vec, &i);
	if (!t)
		return 0;
	/* Raising an already pending softirq is a no-op for the kernel: the wait starts at the first raise. */
	if (!t->raised[i])
		t->raised[i] = bpf_ktime_get_ns();
	return 0;
}

TRACEPOINT_PROBE(irq, softirq_entry)
{
	__u32 i = 0;
	struct pt_sirq_times *t = pt_sirq_net(args->vec, &i);
	if (!t)
		return 0;
	__u64 now = bpf_ktime_get_ns();
	__u64 raised = t->raised[i];
	/* The pending bit is cleared before handlers run (handle_softirqs), so a raise from now on is a new wait. */
	t->raised[i] = 0;
	t->entered[i] = now;
	if (raised && now >= raised) {
		pt_sirq_record(i * 2 + PT_SIRQ_TX_WAIT, now - raised);
		if (pt_in_ksoftirqd())
			pt_sirq_record(PT_SIRQ_TX_WAIT_KSOFTIRQD + i, now - raised);
	}
	return 0;
}

TRACEPOINT_PROBE(irq, softirq_exit)
{
	__u32 i = 0;
	struct pt_sirq_times *t = pt_sirq_net(args->vec, &i);
	if (!t)
		return 0;
	__u64 entered = t->entered[i];
	t->entered[i] = 0;
	__u64 now = bpf_ktime_get_ns();
	if (entered && now >= entered)
		pt_sirq_record(i * 2 + PT_SIRQ_TX_RUN, now - entered);
	return 0;
}

static __always_inline void pt_napi_add(__u32 index, __u64 value)
{
	__u64 *v = napi_stats.lookup(&index);
	if (v)
		*v += value;
}

TRACEPOINT_PROBE(napi, napi_poll)
{
	int work = args->work;
	int budget = args->budget;
	pt_napi_add(PT_NAPI_POLLS, 1);
	if (work > 0)
		pt_napi_add(PT_NAPI_WORK, work);
	else
		pt_napi_add(PT_NAPI_IDLE, 1);
	/* __napi_poll: work == weight means the instance had more packets and stays on the poll list. */
	if (budget > 0 && work >= budget)
		pt_napi_add(PT_NAPI_EXHAUSTED, 1);
	return 0;
}
