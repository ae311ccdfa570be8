// SPDX-License-Identifier: GPL-2.0-only
/*
 * Tapio storage observer, kernel side.
 *
 * Facts, from the BTF-typed block request tracepoints (they pass the struct request, so
 * one request is one key from submission to completion):
 *  - a block request completes with an error;
 *  - a block request takes longer than the configured threshold from issue to completion.
 *
 * Lifecycle of a request in the in-flight table (found by its struct request's address):
 *  block_io_start  the submitter's bio became this request: who submitted it (that task is
 *                  current here; at issue it may be kblockd or another task's plug flush);
 *  block_rq_issue  the driver got it: latency runs from the last issue;
 *  block_rq_requeue the driver gave it back: the next issue is the same request again;
 *  block_rq_merge  it was merged into another request and is freed without completing;
 *  block_rq_complete the one completion that judges it.
 * A request issued twice with no requeue or completion in between cannot be told apart
 * from two requests, so its completion is dropped and counted; so is a completion with no
 * slot. Nothing here reasons beyond the thresholds of the config it stamps.
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
 * The in-flight table: a slot per request struct, one cache line each (storage.h).
 *
 * Exact: a struct's slot is found from its address (its home slot, hashed, or one of the
 * TAPIO_STO_INFLIGHT_PROBES - 1 after it) and is its own, so a live request is never
 * evicted and never confused with another. A request struct is the block layer's, made
 * once per tag of each hardware queue and reused for request after request: its slot is
 * kept between requests and each new request rewrites it in place, so the cost per request
 * is the one line. The block layer serializes each request's events, so the owner's writes
 * need no lock.
 *
 * Claiming a free slot is the one step two structs may race for: a program cannot
 * compare-and-swap on every kernel Tapio supports (5.10 has no BPF atomics that return),
 * so a claim is the insert of the slot's index into "inflight_claims", which the kernel
 * lets only one of them make; only the winner then writes the slot and names itself its
 * owner. A struct claims a slot the first time it is seen (or after the agent took its
 * slot back), so claims are rare.
 *
 * Each hardware queue of each disk has a queue depth of structs, and each CPU submitting
 * to a disk cycles through a word of its queue's tags (64 on a queue 256 deep or more; the
 * allocator takes freed tags back only once the word runs out), so a node with many CPUs
 * and disks can use tens of thousands. The agent sizes the table at load for twice the
 * structs the node's disks have (declared here at its largest: smaller is faster, the slots
 * spread over fewer pages) and takes back slots idle for a while (storage/mod.rs), marking
 * them first (TAPIO_STO_OWNER_RETIRED) and freeing them a pass later, so that a hook that
 * found its slot just before the mark has long finished with it. A request whose struct
 * finds no free slot among its probes is counted, and switches completions to releasing
 * their slots ("inflight_full").
 */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, TAPIO_STO_INFLIGHT_ENTRIES);
	/* Page-aligned slots, so each is one line, read and marked by the agent in place. */
	__uint(map_flags, TAPIO_BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, struct tapio_sto_inflight);
} inflight SEC(".maps");

/* Slot indexes that have (or are being given) an owner; see "inflight" above. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, TAPIO_STO_INFLIGHT_ENTRIES);
	__type(key, __u32);
	__type(value, __u64);
} inflight_claims SEC(".maps");

/* Beside each slot, what only a judged completion needs (same index). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, TAPIO_STO_INFLIGHT_ENTRIES);
	__type(key, __u32);
	__type(value, struct tapio_sto_inflight_facts);
} inflight_facts SEC(".maps");

/* The table's slots less one (a power of two less one), set by the agent at load with the
 * size it gives the table. */
const volatile __u32 inflight_mask = TAPIO_STO_INFLIGHT_ENTRIES - 1;

/*
 * Entry 0 turns nonzero, for the life of the table, the first time a request's struct finds
 * no free slot: the slots kept for reuse have taken the room that structs not seen yet
 * need, and from then on a completion releases its request's slot, so the table holds
 * requests in flight (a claim and a release per request, as if nothing were kept). Set by
 * the kernel, so the switch is immediate; the agent reads it to take back idle slots sooner
 * and to say so in its log.
 */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} inflight_full SEC(".maps");

#define EEXIST 17

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

/* A request's struct found no free slot among its probes: counted, and the table has run
 * full. */
static __always_inline void count_table_full(void)
{
	tapio_count(&counters, TAPIO_STO_CNT_INFLIGHT_FULL);
	__u32 *ran_full = ran_full_flag();
	if (ran_full)
		*ran_full = 1;
}

/* A request's slot, and where it is. */
struct slot {
	struct tapio_sto_inflight *e;
	__u32 idx;
};

/* The request's address as a number: its distance from this object's slot array. The
 * verifier allows no arithmetic but adding offsets on the tracepoint's typed pointer and,
 * for a privileged loader (as the agent is, for the typed tracepoints), subtracting
 * another pointer, which yields a plain scalar: one that names the struct as uniquely as
 * its address does, and can be hashed. */
static __always_inline __u64 request_key(struct request *rq)
{
	return (__u64)rq - (__u64)&inflight;
}

/* Struct `key`'s home slot, if the struct owns it: where most structs' slots are. */
static __always_inline struct slot owned_home_slot(__u64 key, __u32 home)
{
	struct slot s = {};
	__u32 idx = home & inflight_mask;
	struct tapio_sto_inflight *e = bpf_map_lookup_elem(&inflight, &idx);
	if (e && TAPIO_READ_ONCE_U64(&e->owner) == key) {
		s.e = e;
		s.idx = idx;
	}
	return s;
}

/*
 * Takes free slot `idx` (owner 0) for struct `key`: 1 if this program won it (the slot is
 * then cleared, with the struct its owner), 0 if another struct's claim came first, -1 if
 * the claim found its bucket locked (counted as busy). The claim's insert decides between
 * structs that find the same free slot at once.
 */
static __always_inline int take_free_slot(struct tapio_sto_inflight *e, __u32 idx, __u64 key)
{
	long err = bpf_map_update_elem(&inflight_claims, &idx, &key, BPF_NOEXIST);
	if (err == -EEXIST)
		return 0;
	if (err) {
		tapio_count(&counters, TAPIO_STO_CNT_INFLIGHT_BUSY);
		return -1;
	}
	__builtin_memset(e, 0, sizeof(*e));
	TAPIO_COMPILER_BARRIER();
	e->owner = key;
	return 1;
}

/*
 * The slot struct `key` owns among its probes, looked for from its home slot on; with
 * `claim`, the first free slot met before it is claimed instead, and none found is counted
 * (the table has run full). The home slot is tried first, in line; the rest in a loop, not
 * unrolled: the verifier bounds it (5.3 and later), and each of the five hooks stays small.
 * `claim` is a constant in each caller, so each gets only its own half.
 */
static __always_inline struct slot scan_slots(__u64 key, const int claim)
{
	__u32 home = tapio_home_slot(key);
	struct slot s = owned_home_slot(key, home);
	if (s.e)
		return s;
#pragma clang loop unroll(disable)
	for (__u32 i = claim ? 0 : 1; i < TAPIO_STO_INFLIGHT_PROBES; i++) {
		__u32 idx = (home + i) & inflight_mask;
		struct tapio_sto_inflight *e = bpf_map_lookup_elem(&inflight, &idx);
		if (!e)
			continue;
		__u64 owner = TAPIO_READ_ONCE_U64(&e->owner);
		if (owner != key) {
			if (!claim || owner != 0)
				continue;
			int taken = take_free_slot(e, idx, key);
			if (taken == 0)
				continue;
			if (taken < 0)
				return s;
		}
		s.e = e;
		s.idx = idx;
		return s;
	}
	if (claim)
		count_table_full();
	return s;
}

/* The slot that struct `key` owns, if any. */
static __always_inline struct slot find_slot(__u64 key)
{
	return scan_slots(key, 0);
}

/*
 * The slot a request starts in: its struct's, or, if the struct has none among its probes
 * before the first free slot, that free slot, claimed; none if every probe is taken
 * (counted: the table has run full) or the claim found its bucket locked. Stopping at the
 * first free slot saves a struct whose slot went (taken back, or released once the table
 * ran full) a scan of every probe before its claim. A slot of the struct's further on, if
 * any, is stale (its request is over: a new one is starting, or the caller looked for the
 * struct's slot first and found none), and the new slot comes first in the probes of every
 * later lookup, so the stale one is never matched again: it idles until the agent takes it
 * back.
 */
static __always_inline struct slot start_slot(__u64 key)
{
	return scan_slots(key, 1);
}

/*
 * The request is done. Its slot stays its struct's, for the struct's next request; once the
 * table has run full it is released instead (the claim goes first, so no other struct can
 * claim the slot before its owner is cleared), and not touched again. A release whose
 * claim cannot be deleted (its bucket locked, as above) leaves the slot to the struct.
 */
static __always_inline void finish(struct slot s)
{
	if (table_ran_full() && bpf_map_delete_elem(&inflight_claims, &s.idx) == 0) {
		TAPIO_COMPILER_BARRIER();
		s.e->owner = 0;
		return;
	}
	s.e->flags |= TAPIO_STO_IF_COMPLETED;
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
static __always_inline void fill_request(struct tapio_sto_inflight *e, struct tapio_sto_inflight_facts *facts,
					 struct request *rq)
{
	struct gendisk *disk;
	if (bpf_core_field_exists(struct request_queue, disk))
		disk = rq->q->disk;
	else
		disk = ((struct request___old *)rq)->rq_disk;
	e->dev = disk ? ((__u32)disk->major << TAPIO_STO_MINOR_BITS) | (__u32)disk->first_minor : 0;
	facts->sector = rq->__sector;
	facts->bytes = rq->__data_len;
	facts->cmd_flags = rq->cmd_flags;
}

/*
 * The bit of RQF_FLUSH_SEQ in rq_flags: 4 while the flags were plain bits (to 6.11); from
 * 6.12 an enumerator, in an enum CO-RE can name only from when it became `rqf_flags`. For
 * the anonymous one (6.12 to 6.14) the agent reads the value from the kernel's BTF and sets
 * this global at load (tapio_bpf::kernel_btf).
 */
const volatile __u32 rqf_flush_seq_bit = 4;

static __always_inline int in_flush_sequence(struct request *rq)
{
	__u32 bit = rqf_flush_seq_bit;
	if (bpf_core_enum_value_exists(enum rqf_flags, __RQF_FLUSH_SEQ))
		bit = bpf_core_enum_value(enum rqf_flags, __RQF_FLUSH_SEQ);
	return (rq->rq_flags >> (bit & 31)) & 1;
}

/*
 * A request the block layer completes without ever issuing it, with an error, most often
 * failed because its flush sequence's flush failed; that flush is a request of its own,
 * issued and reported on its own completion, so this one is not reported a second time. It
 * may also have failed at its own dispatch, which nothing else reports: each one is counted
 * (TAPIO_STO_CNT_UNISSUED_FLUSH_FAILURE).
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

/*
 * A request-based device-mapper clone (dm-multipath's request on a path device): dm set its
 * end_io and cloned every bio of the original request (blk_rq_prep_clone, which only dm
 * calls). It starts when dm dispatches it, in whatever task runs that dispatch, so the
 * current task is not the one whose bio it carries. Other requests with an end_io
 * (passthrough) carry bios of their own, not clones; plain ones have none. BIO_CLONED is
 * bit 1 of bi_flags in every kernel that has block_io_start (6.5+).
 */
static __always_inline int dm_clone(struct request *rq)
{
	if (!rq->end_io)
		return 0;
	struct bio *bio = rq->bio;
	return bio && ((bio->bi_flags >> 1) & 1);
}

SEC("tp_btf/block_io_start")
int BPF_PROG(tapio_io_start, struct request *rq)
{
	const struct tapio_sto_config *cfg = config_live();
	if (!cfg)
		return 0;
	struct slot s = start_slot(request_key(rq));
	if (!s.e)
		return 0;
	/* A request is only rebuilt after it completed; an issued one still here means that
	 * completion was never seen. (A slot just claimed has no flags.) */
	if ((s.e->flags & TAPIO_STO_IF_ISSUED) && !(s.e->flags & (TAPIO_STO_IF_DATA_DONE | TAPIO_STO_IF_COMPLETED)))
		tapio_count(&counters, TAPIO_STO_CNT_INFLIGHT_REPLACED);
	/* Written in place: no copy of a whole slot per I/O. */
	if (dm_clone(rq)) {
		__builtin_memset(&s.e->task, 0, sizeof(s.e->task));
		s.e->flags = 0; /* not issued yet, submitter unknown */
	} else {
		s.e->task.mem_cgroup_id = 0;
		tapio_task_current(&s.e->task, cfg->capture_memcg);
		s.e->flags = TAPIO_STO_F_TASK_KNOWN; /* not issued yet */
	}
	s.e->stamp_ns = bpf_ktime_get_boot_ns();
	s.e->requeues = 0;
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
	__u64 key = request_key(rq);
	__u64 now = bpf_ktime_get_boot_ns();
	struct slot s = find_slot(key);
	if (!s.e || (s.e->flags & TAPIO_STO_IF_COMPLETED)) {
		/* Not built from a bio we saw (a flush sequence's flush, passthrough, submitted
		 * before attach, or its slot could not be claimed then): the issuer is unknown,
		 * the latency is not. */
		if (!s.e) {
			s = start_slot(key);
			if (!s.e)
				return 0;
		}
		s.e->requeues = 0;
		s.e->dev = 0;
		__builtin_memset(&s.e->task, 0, sizeof(s.e->task));
		s.e->flags = TAPIO_STO_IF_ISSUED;
		s.e->stamp_ns = now;
		return 0;
	}
	/* Issued before, and neither requeued nor completed since: two issues of one live
	 * request, and no way to say which one the completion answers. */
	if ((s.e->flags & TAPIO_STO_IF_ISSUED) && !(s.e->flags & (TAPIO_STO_IF_REQUEUED | TAPIO_STO_IF_DATA_DONE)))
		s.e->flags |= TAPIO_STO_IF_AMBIGUOUS;
	/* A requeued request is the same request: its latency runs from this, its last issue. */
	s.e->flags = (s.e->flags & ~TAPIO_STO_IF_REQUEUED) | TAPIO_STO_IF_ISSUED;
	s.e->stamp_ns = now;
	return 0;
}

SEC("tp_btf/block_rq_requeue")
int BPF_PROG(tapio_rq_requeue, struct request *rq)
{
	if (!config_live())
		return 0;
	tapio_count(&counters, TAPIO_STO_CNT_REQUEUES);
	struct slot s = find_slot(request_key(rq));
	if (s.e && !(s.e->flags & TAPIO_STO_IF_COMPLETED)) {
		s.e->flags |= TAPIO_STO_IF_REQUEUED;
		if (s.e->requeues < 0xffff)
			s.e->requeues++;
	}
	return 0;
}

SEC("tp_btf/block_rq_merge")
int BPF_PROG(tapio_rq_merge, struct request *rq)
{
	if (!config_live())
		return 0;
	/* rq was merged into another request and is freed without a completion of its own. */
	struct slot s = find_slot(request_key(rq));
	if (s.e && !(s.e->flags & TAPIO_STO_IF_COMPLETED))
		finish(s);
	return 0;
}

static __always_inline void emit(struct tapio_sto_inflight *e, const struct tapio_sto_inflight_facts *facts,
				 const struct tapio_sto_config *cfg, __u32 kind, __u64 now, int error,
				 __u32 done_bytes, __u16 flags, __u64 threshold_ns)
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
	ev->sector = facts->sector;
	ev->bytes = facts->bytes;
	ev->done_bytes = done_bytes;
	ev->cmd_flags = facts->cmd_flags;
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
 * tracepoint, and a negative errno before: the sign tells which one arrived. It comes with
 * the slot's index in one argument (`error_and_slot`: the index above the status' 32 bits),
 * as a BPF function takes five.
 */
static __noinline int complete_judged(struct tapio_sto_inflight *e, struct request *rq, __u64 error_and_slot,
				      unsigned int nr_bytes, __u64 now)
{
	struct tapio_sto_config cfg;
	int error = (int)(__u32)error_and_slot;
	struct slot s = { .e = e, .idx = (__u32)(error_and_slot >> 32) };
	if (!e || !config_on(&cfg))
		return 0;
	struct tapio_sto_inflight_facts *facts = bpf_map_lookup_elem(&inflight_facts, &s.idx);
	if (!facts) {
		/* Sized with the slots, so never; the request is let go unjudged. */
		finish(s);
		return 0;
	}
	__u16 status_flag = error > 0 ? TAPIO_STO_F_BLK_STATUS : 0;
	int issued = e->flags & TAPIO_STO_IF_ISSUED;
	/* Its first completion: the facts are still the whole request's (the tracepoint fires
	 * before the request is advanced). A partial completion's rest keeps them. */
	if (!(e->flags & TAPIO_STO_IF_FACTS)) {
		fill_request(e, facts, rq);
		e->flags |= TAPIO_STO_IF_FACTS;
	}

	if (e->flags & TAPIO_STO_IF_DATA_DONE) {
		/* The end of a flush sequence whose data phase was judged already: its flush was
		 * a request of its own, judged on its own completion. */
		finish(s);
		return 0;
	}
	if (e->flags & TAPIO_STO_IF_AMBIGUOUS) {
		tapio_count(&counters, TAPIO_STO_CNT_AMBIGUOUS_INFLIGHT);
		finish(s);
		return 0;
	}

	/* A partial completion (the kernel completes the rest later) keeps the slot. */
	int partial = nr_bytes < rq->__data_len;
	int keep = partial;
	if (!partial && issued && in_flush_sequence(rq)) {
		e->flags |= TAPIO_STO_IF_DATA_DONE;
		keep = 1;
	}

	if (error != 0) {
		if (!(cfg.enabled & TAPIO_STO_EN_ERRORS))
			goto done;
		if (issued || !failed_with_its_flush(facts->cmd_flags))
			emit(e, facts, &cfg, TAPIO_STO_IO_ERROR, now, error, nr_bytes,
			     status_flag | (partial ? TAPIO_STO_F_PARTIAL : 0), 0);
		else
			tapio_count(&counters, TAPIO_STO_CNT_UNISSUED_FLUSH_FAILURE);
	} else if (!partial && issued && (cfg.enabled & TAPIO_STO_EN_LATENCY)) {
		__u64 latency = now - e->stamp_ns;
		if (latency > cfg.latency_warning_ns) {
			int critical = latency > cfg.latency_critical_ns;
			emit(e, facts, &cfg, TAPIO_STO_LATENCY, now, 0, nr_bytes,
			     critical ? TAPIO_STO_F_CRITICAL : 0,
			     critical ? cfg.latency_critical_ns : cfg.latency_warning_ns);
		}
	}
done:
	if (!keep)
		finish(s);
	return 0;
}

SEC("tp_btf/block_rq_complete")
int BPF_PROG(tapio_rq_complete, struct request *rq, int error, unsigned int nr_bytes)
{
	if (!config_live())
		return 0;
	__u64 now = bpf_ktime_get_boot_ns();
	struct slot s = find_slot(request_key(rq));
	struct tapio_sto_inflight *e = s.e;
	if (!e || (e->flags & TAPIO_STO_IF_COMPLETED)) {
		tapio_count(&counters, TAPIO_STO_CNT_UNMATCHED_COMPLETION);
		return 0;
	}
	/* The common completion: whole, successful, issued once, outside a flush sequence, and
	 * under the warning threshold (read in place; 0 while the config is being replaced, so
	 * that anything not plainly under it is judged on a consistent copy). Nothing to say;
	 * the slot waits for its struct's next request. */
	if (error == 0 && (e->flags & TAPIO_STO_IF_ISSUED) &&
	    !(e->flags & (TAPIO_STO_IF_DATA_DONE | TAPIO_STO_IF_AMBIGUOUS)) && nr_bytes >= rq->__data_len &&
	    !in_flush_sequence(rq) &&
	    now - e->stamp_ns <= TAPIO_CONFIG_WORD(&config, struct tapio_sto_config, latency_warning_ns, 0)) {
		finish(s);
		return 0;
	}
	return complete_judged(e, rq, ((__u64)s.idx << 32) | (__u32)error, nr_bytes, now);
}
