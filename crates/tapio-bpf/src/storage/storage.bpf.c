// SPDX-License-Identifier: GPL-2.0-only
/*
 * Tapio storage observer, kernel side.
 *
 * Facts, from the BTF-typed block request tracepoints (they pass the struct request, so
 * one request is one key from submission to completion):
 *  - a block request completes with an error;
 *  - a block request takes longer than the configured threshold from issue to completion.
 *
 * Lifecycle of an in-flight entry (keyed by the request's address):
 *  block_io_start  the submitter's bio became this request: who submitted it (that task is
 *                  current here; at issue it may be kblockd or another task's plug flush);
 *  block_rq_issue  the driver got it: latency runs from the last issue;
 *  block_rq_requeue the driver gave it back: the next issue is the same request again;
 *  block_rq_merge  it was merged into another request and is freed without completing;
 *  block_rq_complete the one completion that judges it.
 * A request issued twice with no requeue or completion in between cannot be told apart
 * from two requests, so its completion is dropped and counted; so is a completion with no
 * entry. Nothing here reasons beyond the thresholds of the config it stamps.
 */
#include "tapio_bpf.h"
#include "storage.h"

#define REQ_OP_MASK 0xff
#define REQ_OP_FLUSH 2

char LICENSE[] SEC("license") = "GPL";

TAPIO_COUNTERS_MAP;
TAPIO_CONFIG_MAP(struct tapio_sto_config);

/* 128 KiB: only failed and slow requests are records, some 1,500 of them; the agent maps
 * the ring's data twice, so it costs twice that in the agent's resident set. */
#define EVENTS_RING_BYTES (1 << 17)

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, EVENTS_RING_BYTES);
} events SEC(".maps");

/* Wake the agent once an eighth of the ring is waiting (awake, it polls every 100 ms anyway;
 * asleep, any record wakes it: tapio_submit). */
#define EVENTS_WAKEUP_BYTES (EVENTS_RING_BYTES / 8)

/*
 * Exact, not LRU: an LRU could evict a live request and make its completion look
 * unmatched. A full table is counted.
 *
 * An entry belongs to one struct request, and the block layer serializes each request's
 * events, so entries are changed in place. A completed request's entry is marked completed
 * rather than deleted, and the next request built on the same struct reuses it in place:
 * inserts and deletes (an allocation and a bucket lock each) happen only the first time a
 * request struct is seen, and when the agent reclaims entries idle for a while. That holds
 * while the structs the node uses fit in the table, and they need not: each hardware queue
 * of each disk has a queue depth of them, and each CPU submitting to a disk cycles through
 * a word of its queue's tags (64 on a queue 256 deep or more; the allocator takes freed
 * tags back only once the word runs out), so a node with many CPUs and disks can use tens
 * of thousands. The agent sizes the table at load for twice the structs the node's disks
 * have (declared here at its largest: smaller is faster, its buckets and elements spread
 * over fewer pages). The first insert that finds the table full switches completions to
 * deleting their entries ("inflight_full"). Updates take a bucket lock that a program
 * interrupted on the same CPU may hold (a completion in a hard interrupt landing inside
 * another hook's insert): they then fail with -EBUSY, which is counted, and the request
 * gets its entry at its next event instead.
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, TAPIO_STO_INFLIGHT_ENTRIES);
	__type(key, __u64);
	__type(value, struct tapio_sto_inflight);
} inflight SEC(".maps");

/*
 * Entry 0 turns nonzero, for the life of the table, at the first insert that finds it full:
 * the entries kept for reuse have taken the room that requests on structs not seen yet
 * need, and from then on a completion deletes its request's entry, so the table holds
 * requests in flight (an insert and a delete per request, as if nothing were kept). Set by
 * the kernel, so the switch is immediate; the agent reads it to reclaim idle kept entries
 * sooner and to say so in its log.
 */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} inflight_full SEC(".maps");

#define EBUSY 16
#define E2BIG 7

static __always_inline __u32 *ran_full_flag(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&inflight_full, &zero);
}

static __always_inline int table_ran_full(void)
{
	__u32 *ran_full = ran_full_flag();
	return ran_full && *ran_full;
}

static __always_inline void count_insert_failure(long err)
{
	if (err == -EBUSY) {
		tapio_count(&counters, TAPIO_STO_CNT_INFLIGHT_BUSY);
		return;
	}
	tapio_count(&counters, TAPIO_STO_CNT_INFLIGHT_FULL);
	__u32 *ran_full = ran_full_flag();
	if (err == -E2BIG && ran_full)
		*ran_full = 1;
}

/*
 * The request is done. Its entry stays, dead, for the next request on the same struct;
 * once the table has run full it is deleted instead, and not touched again (its element may
 * already hold another request). A delete that fails (-EBUSY, as above) leaves it dead, to
 * be reused or reclaimed.
 */
static __always_inline void finish(struct tapio_sto_inflight *e, struct request *rq)
{
	__u64 key = (__u64)rq;
	if (table_ran_full() && bpf_map_delete_elem(&inflight, &key) == 0)
		return;
	e->flags |= TAPIO_STO_IF_COMPLETED;
}

/* The full, consistent config: for the hook that judges. */
static __always_inline int config_on(struct tapio_sto_config *cfg)
{
	return TAPIO_READ_CONFIG(&config, &counters, cfg) && cfg->enabled;
}

/* The hooks that only track requests need no consistent copy: the switches, read in place
 * from the copy readers are directed to (NULL while unwritten, of another ABI, or off). */
static __always_inline const struct tapio_sto_config *config_live(void)
{
	const struct tapio_sto_config *cfg = TAPIO_CONFIG_LIVE(&config);
	if (!cfg || !cfg->enabled)
		return NULL;
	return cfg;
}

/* rq is the tracepoint's typed argument: plain loads (relocated by CO-RE and guarded by the
 * kernel's fault handling) instead of a helper call per field. */
static __always_inline void fill_request(struct tapio_sto_inflight *e, struct request *rq)
{
	struct gendisk *disk;
	if (bpf_core_field_exists(struct request_queue, disk))
		disk = rq->q->disk;
	else
		disk = ((struct request___old *)rq)->rq_disk;
	e->dev = disk ? ((__u32)disk->major << TAPIO_STO_MINOR_BITS) | (__u32)disk->first_minor : 0;
	e->sector = rq->__sector;
	e->bytes = rq->__data_len;
	e->cmd_flags = rq->cmd_flags;
}

static __always_inline int in_flush_sequence(struct request *rq)
{
	__u32 bit = 4;
	if (bpf_core_enum_value_exists(enum rqf_flags, __RQF_FLUSH_SEQ))
		bit = bpf_core_enum_value(enum rqf_flags, __RQF_FLUSH_SEQ);
	return (rq->rq_flags >> (bit & 31)) & 1;
}

/*
 * A request the block layer completes without ever issuing it, with an error, failed
 * because its flush sequence's flush failed; that flush is a request of its own, issued and
 * reported on its own completion, so this one is not reported a second time.
 */
static __always_inline int failed_with_its_flush(__u32 cmd_flags)
{
	if ((cmd_flags & REQ_OP_MASK) == REQ_OP_FLUSH)
		return 1;
	if (!bpf_core_enum_value_exists(enum req_flag_bits, __REQ_PREFLUSH) ||
	    !bpf_core_enum_value_exists(enum req_flag_bits, __REQ_FUA))
		return 0;
	__u32 preflush = bpf_core_enum_value(enum req_flag_bits, __REQ_PREFLUSH);
	__u32 fua = bpf_core_enum_value(enum req_flag_bits, __REQ_FUA);
	return ((cmd_flags >> (preflush & 31)) & 1) || ((cmd_flags >> (fua & 31)) & 1);
}

SEC("tp_btf/block_io_start")
int BPF_PROG(tapio_io_start, struct request *rq)
{
	const struct tapio_sto_config *cfg = config_live();
	if (!cfg)
		return 0;
	__u64 key = (__u64)rq;
	struct tapio_sto_inflight *old = bpf_map_lookup_elem(&inflight, &key);
	/* A request is only rebuilt after it completed; an issued entry still here means
	 * that completion was never seen. */
	if (old && (old->flags & TAPIO_STO_IF_ISSUED) &&
	    !(old->flags & (TAPIO_STO_IF_DATA_DONE | TAPIO_STO_IF_COMPLETED)))
		tapio_count(&counters, TAPIO_STO_CNT_INFLIGHT_REPLACED);

	struct tapio_sto_inflight *e = old;
	if (!e) {
		/* First request on this struct: make its entry, then fill it like a reused one. */
		struct tapio_sto_inflight fresh = {};
		long err = bpf_map_update_elem(&inflight, &key, &fresh, BPF_NOEXIST);
		if (err) {
			count_insert_failure(err);
			return 0;
		}
		e = bpf_map_lookup_elem(&inflight, &key);
		if (!e)
			return 0;
	}
	/* Written in place: no copy of a whole entry per I/O. */
	e->task.mem_cgroup_id = 0;
	tapio_task_current(&e->task, cfg->capture_memcg);
	e->flags = TAPIO_STO_F_TASK_KNOWN; /* not issued yet */
	e->stamp_ns = bpf_ktime_get_boot_ns();
	e->requeues = 0;
	/* The request's device, sector and size are read at its first completion, and only
	 * when that completion is judged (a bio merged in after this changes them; the
	 * completion tracepoint fires before a request is advanced, so they are still the
	 * whole request's there): not here, nor at its issue. */
	return 0;
}

SEC("tp_btf/block_rq_issue")
int BPF_PROG(tapio_rq_issue, struct request *rq)
{
	if (!config_live())
		return 0;
	__u64 key = (__u64)rq;
	__u64 now = bpf_ktime_get_boot_ns();
	struct tapio_sto_inflight *e = bpf_map_lookup_elem(&inflight, &key);
	if (!e || (e->flags & TAPIO_STO_IF_COMPLETED)) {
		/* Not built from a bio we saw (a flush sequence's flush, passthrough, submitted
		 * before attach, or its entry could not be made then): the issuer is unknown, the
		 * latency is not. */
		struct tapio_sto_inflight fresh = {};
		fresh.flags = TAPIO_STO_IF_ISSUED;
		fresh.stamp_ns = now;
		if (e) {
			*e = fresh;
			return 0;
		}
		long err = bpf_map_update_elem(&inflight, &key, &fresh, BPF_NOEXIST);
		if (err)
			count_insert_failure(err);
		return 0;
	}
	/* Issued before, and neither requeued nor completed since: two issues of one live
	 * request, and no way to say which one the completion answers. */
	if ((e->flags & TAPIO_STO_IF_ISSUED) && !(e->flags & (TAPIO_STO_IF_REQUEUED | TAPIO_STO_IF_DATA_DONE)))
		e->flags |= TAPIO_STO_IF_AMBIGUOUS;
	/* A requeued request is the same request: its latency runs from this, its last issue. */
	e->flags = (e->flags & ~TAPIO_STO_IF_REQUEUED) | TAPIO_STO_IF_ISSUED;
	e->stamp_ns = now;
	return 0;
}

SEC("tp_btf/block_rq_requeue")
int BPF_PROG(tapio_rq_requeue, struct request *rq)
{
	if (!config_live())
		return 0;
	tapio_count(&counters, TAPIO_STO_CNT_REQUEUES);
	__u64 key = (__u64)rq;
	struct tapio_sto_inflight *e = bpf_map_lookup_elem(&inflight, &key);
	if (e && !(e->flags & TAPIO_STO_IF_COMPLETED)) {
		e->flags |= TAPIO_STO_IF_REQUEUED;
		if (e->requeues < 0xffff)
			e->requeues++;
	}
	return 0;
}

SEC("tp_btf/block_rq_merge")
int BPF_PROG(tapio_rq_merge, struct request *rq)
{
	if (!config_live())
		return 0;
	/* rq was merged into another request and is freed without a completion of its own. */
	__u64 key = (__u64)rq;
	struct tapio_sto_inflight *e = bpf_map_lookup_elem(&inflight, &key);
	if (e)
		finish(e, rq);
	return 0;
}

static __always_inline void emit(struct tapio_sto_inflight *e, const struct tapio_sto_config *cfg,
				 __u32 kind, __u64 now, int error, __u32 done_bytes, __u16 flags,
				 __u64 threshold_ns)
{
	struct tapio_sto_event *ev = bpf_ringbuf_reserve(&events, sizeof(*ev), 0);
	if (!ev) {
		tapio_count(&counters, TAPIO_CNT_RINGBUF_FULL);
		return;
	}
	__builtin_memset(ev, 0, sizeof(*ev));
	ev->hdr.boot_ns = now;
	ev->hdr.kind = kind;
	ev->hdr.generation = cfg->hdr.generation;
	ev->task = e->task;
	ev->dev_major = e->dev >> TAPIO_STO_MINOR_BITS;
	ev->dev_minor = e->dev & ((1U << TAPIO_STO_MINOR_BITS) - 1);
	ev->sector = e->sector;
	ev->bytes = e->bytes;
	ev->done_bytes = done_bytes;
	ev->cmd_flags = e->cmd_flags;
	ev->error = error;
	ev->requeues = e->requeues;
	ev->threshold_ns = threshold_ns;
	ev->flags = flags | (e->flags & TAPIO_STO_F_TASK_KNOWN);
	if (e->flags & TAPIO_STO_IF_ISSUED) {
		ev->latency_ns = now - e->stamp_ns;
		ev->flags |= TAPIO_STO_F_ISSUED;
	}
	tapio_submit(&events, ev, EVENTS_WAKEUP_BYTES);
}

/*
 * The rest of a completion, for the uncommon ones: an error, a partial completion, a flush
 * sequence, an ambiguous or never-issued request, or one over the warning threshold as the
 * config read in place says. It judges on a consistent copy of the config. A function of
 * its own, not inlined, so the common completion copies no config and runs none of this:
 * `tapio-bench storage` measured the hook at 206-238 ns against 241-285 ns before (six and
 * three alternating runs).
 *
 * The kernel passes a blk_status_t (a small positive number) since it converted this
 * tracepoint, and a negative errno before: the sign tells which one arrived.
 */
static __noinline int complete_judged(struct tapio_sto_inflight *e, struct request *rq, int error,
				      unsigned int nr_bytes, __u64 now)
{
	struct tapio_sto_config cfg;
	if (!e || !config_on(&cfg))
		return 0;
	__u16 status_flag = error > 0 ? TAPIO_STO_F_BLK_STATUS : 0;
	int issued = e->flags & TAPIO_STO_IF_ISSUED;
	/* Its first completion: the facts are still the whole request's (the tracepoint fires
	 * before the request is advanced). A partial completion's rest keeps them. */
	if (!(e->flags & TAPIO_STO_IF_FACTS)) {
		fill_request(e, rq);
		e->flags |= TAPIO_STO_IF_FACTS;
	}

	if (e->flags & TAPIO_STO_IF_DATA_DONE) {
		/* The end of a flush sequence whose data phase was judged already: its flush was
		 * a request of its own, judged on its own completion. */
		finish(e, rq);
		return 0;
	}
	if (e->flags & TAPIO_STO_IF_AMBIGUOUS) {
		tapio_count(&counters, TAPIO_STO_CNT_AMBIGUOUS_INFLIGHT);
		finish(e, rq);
		return 0;
	}

	/* A partial completion (the kernel completes the rest later) keeps the entry. */
	int partial = nr_bytes < rq->__data_len;
	int keep = partial;
	if (!partial && issued && in_flush_sequence(rq)) {
		e->flags |= TAPIO_STO_IF_DATA_DONE;
		keep = 1;
	}

	if (error != 0) {
		if ((cfg.enabled & TAPIO_STO_EN_ERRORS) && (issued || !failed_with_its_flush(e->cmd_flags)))
			emit(e, &cfg, TAPIO_STO_IO_ERROR, now, error, nr_bytes,
			     status_flag | (partial ? TAPIO_STO_F_PARTIAL : 0), 0);
	} else if (!partial && issued && (cfg.enabled & TAPIO_STO_EN_LATENCY)) {
		__u64 latency = now - e->stamp_ns;
		if (latency > cfg.latency_warning_ns) {
			int critical = latency > cfg.latency_critical_ns;
			emit(e, &cfg, TAPIO_STO_LATENCY, now, 0, nr_bytes,
			     critical ? TAPIO_STO_F_CRITICAL : 0,
			     critical ? cfg.latency_critical_ns : cfg.latency_warning_ns);
		}
	}
	if (!keep)
		finish(e, rq);
	return 0;
}

SEC("tp_btf/block_rq_complete")
int BPF_PROG(tapio_rq_complete, struct request *rq, int error, unsigned int nr_bytes)
{
	if (!config_live())
		return 0;
	__u64 key = (__u64)rq;
	__u64 now = bpf_ktime_get_boot_ns();
	struct tapio_sto_inflight *e = bpf_map_lookup_elem(&inflight, &key);
	if (!e || (e->flags & TAPIO_STO_IF_COMPLETED)) {
		tapio_count(&counters, TAPIO_STO_CNT_UNMATCHED_COMPLETION);
		return 0;
	}
	/* The common completion: whole, successful, issued once, outside a flush sequence, and
	 * under the warning threshold (read in place; 0 while the config is being replaced, so
	 * that anything not plainly under it is judged on a consistent copy). Nothing to say;
	 * the entry waits for its struct's next request. */
	if (error == 0 && (e->flags & TAPIO_STO_IF_ISSUED) &&
	    !(e->flags & (TAPIO_STO_IF_DATA_DONE | TAPIO_STO_IF_AMBIGUOUS)) && nr_bytes >= rq->__data_len &&
	    !in_flush_sequence(rq) &&
	    now - e->stamp_ns <= TAPIO_CONFIG_WORD(&config, struct tapio_sto_config, latency_warning_ns, 0)) {
		finish(e, rq);
		return 0;
	}
	return complete_judged(e, rq, error, nr_bytes, now);
}
