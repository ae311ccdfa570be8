/* SPDX-License-Identifier: Apache-2.0 OR GPL-2.0-only */
/*
 * Helpers shared by Tapio's eBPF programs (kernel side only): counters, config reads and
 * task attribution. Each program includes this after declaring its config type and maps.
 */
#ifndef TAPIO_BPF_H
#define TAPIO_BPF_H

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>
#include "tapio_common.h"

#define TAPIO_CAT_(a, b) a##b
#define TAPIO_CAT(a, b) TAPIO_CAT_(a, b)

/*
 * The object's ABI version, carried in a symbol whose name includes it: the agent sets
 * `tapio_abi_v<its version>` by name before loading, so an object built for another ABI
 * fails to load with a clear error instead of running with mismatched structs.
 */
const volatile __u32 TAPIO_CAT(tapio_abi_v, TAPIO_ABI_VERSION) = TAPIO_ABI_VERSION;

#define AF_INET 2
#define AF_INET6 10

/* Declares the per-CPU loss/refusal counters every object exposes as "counters". */
#define TAPIO_COUNTERS_MAP                                   \
	struct {                                             \
		__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);     \
		__uint(max_entries, TAPIO_CNT_MAX);          \
		__type(key, __u32);                          \
		__type(value, __u64);                        \
	} counters SEC(".maps")

/*
 * Declares the config carrier every object exposes: two copies of its config ("config",
 * entries 0 and 1) and the latch sequence ("config_seq") that says which copy readers use
 * (seq & 1). The agent, the only writer, moves readers to one copy while it rewrites the
 * other, then back (see TAPIO_READ_CONFIG): a reader never has to wait, and always has one
 * whole config to copy.
 */
#define TAPIO_CONFIG_MAP(type_)                              \
	struct {                                             \
		__uint(type, BPF_MAP_TYPE_ARRAY);            \
		__uint(max_entries, 2);                      \
		__type(key, __u32);                          \
		__type(value, type_);                        \
	} config SEC(".maps");                               \
	struct {                                             \
		__uint(type, BPF_MAP_TYPE_ARRAY);            \
		__uint(max_entries, 1);                      \
		__type(key, __u32);                          \
		__type(value, __u64);                        \
	} config_seq SEC(".maps")

static __always_inline void tapio_count(void *counters_map, __u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(counters_map, &idx);
	if (v)
		*v += 1; /* per-CPU slot: no atomics needed */
}

/* Reads that the compiler must not merge, drop or move across the barrier below. */
#define TAPIO_READ_ONCE_U64(p) (*(volatile __u64 *)(p))
#define TAPIO_COMPILER_BARRIER() asm volatile("" ::: "memory")

/* BPF_F_MMAPABLE (uapi bpf.h; the trimmed vmlinux.h lacks it): the kernel page-aligns such
 * an array's values, so a 64-byte value is one cache line. */
#define TAPIO_BPF_F_MMAPABLE (1U << 10)

/* The first slot of an object's probes in a table indexed by a hash of its key: the high
 * half of a multiplicative hash (kernel structs sit at a fixed stride in their slabs, which
 * the low bits would repeat). */
static __always_inline __u32 tapio_home_slot(__u64 key)
{
	return (__u32)((key * 0x9E3779B97F4A7C15ULL) >> 32);
}

/* Copies a reader makes before it gives up on a config that keeps changing under it (each
 * retry needs the agent to have rewritten the config during the previous copy). */
#define TAPIO_CONFIG_TRIES 4

/*
 * Copies the config into *out and returns 1 when it may judge events: the agent has written
 * it (abi_version != 0), with this object's ABI.
 *
 * The copy is one config by construction (a latch, the technique of the kernel's
 * seqcount_latch): the sequence is read, the copy it names (seq & 1) is copied, and the
 * sequence is read again. The agent bumps the sequence before rewriting each copy and
 * rewrites only the copy readers were just moved away from, so an unchanged sequence means
 * nobody wrote the copied slot meanwhile; a changed one means copy again. Ordering: x86-64
 * keeps loads in program order and stores in program order (TSO), so only the compiler
 * must be kept from reordering, which the volatile reads and the barriers do (BPF has no
 * read barrier before 6.15, so on a weakly ordered CPU such as arm64 a torn copy is unlikely
 * but not excluded). A config that changed under every try is counted (config_torn_read)
 * and not used.
 */
#define TAPIO_READ_CONFIG(config_map, counters_map, out)                                    \
	({                                                                                  \
		__u32 zero_ = 0;                                                            \
		int ok_ = 0;                                                                \
		int copied_ = 0;                                                            \
		__u64 *seq_ = bpf_map_lookup_elem(&config_seq, &zero_);                     \
		for (int try_ = 0; seq_ && try_ < TAPIO_CONFIG_TRIES && !copied_; try_++) { \
			__u64 before_ = TAPIO_READ_ONCE_U64(seq_);                          \
			TAPIO_COMPILER_BARRIER();                                           \
			__u32 slot_ = before_ & 1;                                          \
			void *cfg_ = bpf_map_lookup_elem(config_map, &slot_);               \
			if (!cfg_)                                                          \
				break;                                                      \
			__builtin_memcpy(out, cfg_, sizeof(*(out)));                        \
			TAPIO_COMPILER_BARRIER();                                           \
			copied_ = TAPIO_READ_ONCE_U64(seq_) == before_;                     \
		}                                                                           \
		if (!seq_)                                                                  \
			ok_ = 0;                                                            \
		else if (!copied_)                                                          \
			tapio_count(counters_map, TAPIO_CNT_CONFIG_TORN);                   \
		else if ((out)->hdr.abi_version == 0)                                       \
			ok_ = 0;                                                            \
		else if ((out)->hdr.abi_version != TAPIO_ABI_VERSION)                       \
			tapio_count(counters_map, TAPIO_CNT_ABI_MISMATCH);                  \
		else                                                                        \
			ok_ = 1;                                                            \
		ok_;                                                                        \
	})

/*
 * The config copy readers are currently directed to, read in place, or NULL while it is
 * unwritten or of another ABI. For hooks that only read single switches to decide how much
 * bookkeeping to do (one aligned word is never torn): no copy, no retry loop. A hook that
 * judges evidence by several fields together must use TAPIO_READ_CONFIG.
 */
#define TAPIO_CONFIG_LIVE(config_map)                                                      \
	({                                                                                 \
		__u32 zero_ = 0;                                                           \
		void *live_ = NULL;                                                        \
		__u64 *seq_ = bpf_map_lookup_elem(&config_seq, &zero_);                    \
		if (seq_) {                                                                \
			__u32 slot_ = TAPIO_READ_ONCE_U64(seq_) & 1;                       \
			struct tapio_config_header *h_ = bpf_map_lookup_elem(config_map, &slot_); \
			if (h_ && h_->abi_version == TAPIO_ABI_VERSION)                    \
				live_ = h_;                                                \
		}                                                                          \
		live_;                                                                     \
	})

/*
 * One word of the config, read in place for a hot path's first decision, by the same latch
 * as TAPIO_READ_CONFIG with a copy of one field and no retry: the field of the copy readers
 * are directed to if the sequence was the same after the read as before it (nobody rewrote
 * that copy meanwhile), else `fallback`. A hook must only use it for a decision it takes
 * again on a full copy whenever the word (or the fallback) does not settle it.
 */
#define TAPIO_CONFIG_WORD(config_map, type_, field, fallback)                                      \
	({                                                                                         \
		__u32 zero_ = 0;                                                                   \
		__u64 word_ = (fallback);                                                          \
		__u64 *seq_ = bpf_map_lookup_elem(&config_seq, &zero_);                            \
		if (seq_) {                                                                        \
			__u64 before_ = TAPIO_READ_ONCE_U64(seq_);                                 \
			TAPIO_COMPILER_BARRIER();                                                  \
			__u32 slot_ = before_ & 1;                                                 \
			type_ *c_ = bpf_map_lookup_elem(config_map, &slot_);                       \
			if (c_ && c_->hdr.abi_version == TAPIO_ABI_VERSION) {                      \
				_Static_assert(sizeof(c_->field) == sizeof(__u64), "one aligned word"); \
				__u64 read_ = TAPIO_READ_ONCE_U64(&c_->field);                     \
				TAPIO_COMPILER_BARRIER();                                          \
				if (TAPIO_READ_ONCE_U64(seq_) == before_)                          \
					word_ = read_;                                             \
			}                                                                          \
		}                                                                                  \
		word_;                                                                             \
	})

/* The kernfs id of a task's cgroup in the memory controller's hierarchy (v1 or v2); 0 if none. */
static __always_inline __u64 tapio_task_memcg_id(struct task_struct *task)
{
	if (!bpf_core_enum_value_exists(enum cgroup_subsys_id, memory_cgrp_id))
		return 0;
	int idx = bpf_core_enum_value(enum cgroup_subsys_id, memory_cgrp_id);
	if (idx < 0 || idx >= 16)
		return 0;
	struct css_set *cgroups = BPF_CORE_READ(task, cgroups);
	struct cgroup_subsys_state *css = NULL;
	bpf_core_read(&css, sizeof(css), &cgroups->subsys[idx]);
	if (!css)
		return 0;
	return BPF_CORE_READ(css, cgroup, kn, id);
}

/*
 * "drain_asleep": entry 0 is nonzero while the agent's drain sleeps without a timer (it
 * does after a second without records). Then any record wakes it, whatever the marks
 * below say: the first record after a quiet spell pays one wake-up, and an idle agent
 * need not wake ten times a second to look for lone records. The agent clears it once
 * awake. (A record whose flag read is ordered before the agent's raising of the flag
 * waits for the drain's backstop, one second: late, never lost.)
 */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} drain_asleep SEC(".maps");

static __always_inline int tapio_drain_asleep(void)
{
	__u32 zero = 0;
	__u32 *asleep = bpf_map_lookup_elem(&drain_asleep, &zero);
	return asleep && *asleep;
}

/*
 * Submits a reserved record. Waking the agent costs far more than the record itself (an
 * interrupt, and in a VM an exit to the hypervisor: about 3 us), so a record wakes it only
 * when it carries the waiting bytes across a multiple of `wakeup_bytes` (once per that much
 * data, not once per record while the agent is behind), or when the drain is asleep. Past
 * half the ring (4 x wakeup_bytes) the marks are sixteen times closer: a crossing missed
 * because other CPUs reserved at the same moment then costs a little latency, never data,
 * and an agent that is behind because it is busy (already awake) is not interrupted for
 * every record. An awake drain polls every 100 ms, which bounds how long a lone record
 * waits.
 */
#define tapio_submit(ring, record, wakeup_bytes) \
	tapio_submit_sized(ring, record, sizeof(*(record)), wakeup_bytes)

static __always_inline void tapio_submit_sized(void *ring, void *record, __u64 size, __u64 wakeup_bytes)
{
	/* What this record occupies: its 8-byte header plus its size rounded up to 8. */
	__u64 occupies = 8 + ((size + 7) & ~7ULL);
	__u64 waiting = bpf_ringbuf_query(ring, BPF_RB_AVAIL_DATA);
	__u64 before = waiting > occupies ? waiting - occupies : 0;
	__u64 mark = waiting >= 4 * wakeup_bytes ? wakeup_bytes / 16 : wakeup_bytes;
	int wake = waiting / mark != before / mark || tapio_drain_asleep();
	bpf_ringbuf_submit(record, wake ? BPF_RB_FORCE_WAKEUP : BPF_RB_NO_WAKEUP);
}

/*
 * Declares the object's event rings as one ring per CPU ("events", an array of ring
 * buffers): a record goes to the ring of the CPU that made it, so producers on different
 * CPUs never take the same ring's lock or write the same position words (on a busy node
 * that contention cost more than the hook that produced the record). Programs cannot create
 * maps: the agent sizes the array to the possible CPUs, creates each CPU's ring (its share
 * of `total_bytes`, `tapio_bpf::per_cpu_ring_bytes`) and puts it in its slot. The template
 * below only gives the rings' type to the verifier.
 */
#define TAPIO_EVENT_RINGS_PER_CPU(total_bytes)                       \
	struct tapio_event_ring {                                    \
		__uint(type, BPF_MAP_TYPE_RINGBUF);                  \
		__uint(max_entries, total_bytes);                    \
	};                                                           \
	struct {                                                     \
		__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);            \
		__uint(max_entries, 1);                              \
		__type(key, __u32);                                  \
		__array(values, struct tapio_event_ring);            \
	} events SEC(".maps")

/* This CPU's ring of a TAPIO_EVENT_RINGS_PER_CPU array; NULL only if the agent made none
 * for this CPU (the caller counts the record as not reserved). */
static __always_inline void *tapio_cpu_ring(void *rings)
{
	__u32 cpu = bpf_get_smp_processor_id();
	return bpf_map_lookup_elem(rings, &cpu);
}

/*
 * Submits a record reserved in this CPU's ring (tapio_cpu_ring). It wakes the agent when it
 * carries the waiting bytes across a multiple of a quarter of the ring (the agent sized the
 * ring at load): a CPU's ring is a share of what one shared ring would be, and a quarter
 * of it keeps the forced wake-ups (about 3 us each in a VM, inside the program's run time)
 * as rare per record as an eighth of the shared ring did. Only this CPU reserves in this
 * ring, so no crossing goes unseen between the reservation and this count, and the closer
 * marks a shared ring needs past its half (tapio_submit) are not needed: an agent behind on
 * its rings is not interrupted more often than once per quarter of a ring.
 */
#define tapio_submit_to_cpu_ring(ring, record) tapio_submit_cpu_ring_sized(ring, record, sizeof(*(record)))

static __always_inline void tapio_submit_cpu_ring_sized(void *ring, void *record, __u64 size)
{
	__u64 occupies = 8 + ((size + 7) & ~7ULL);
	__u64 mark = bpf_ringbuf_query(ring, BPF_RB_RING_SIZE) / 4;
	__u64 waiting = bpf_ringbuf_query(ring, BPF_RB_AVAIL_DATA);
	__u64 before = waiting > occupies ? waiting - occupies : 0;
	/* A ring's size is a power of two (the kernel refuses others), so is the mark, and two
	 * counts lie in different multiples of it exactly when they differ in a bit at or above
	 * it. The mark is only known at run time, so dividing by it was two 64-bit divisions
	 * per record (tens of cycles each on older CPUs; on the test VM's the difference was
	 * within tapio-bench's noise). */
	int wake = (mark && (waiting ^ before) >= mark) || tapio_drain_asleep();
	bpf_ringbuf_submit(record, wake ? BPF_RB_FORCE_WAKEUP : BPF_RB_NO_WAKEUP);
}

/* Fills *t with the current task: the right attribution only in process context.
 * with_memcg: also read its memory-cgroup id (a few pointer reads).
 *
 * Where the kernel has bpf_get_current_task_btf (5.11+) every fact is a plain load through
 * the task's typed pointers (the same values the pid/cgroup/comm helpers return: tgid and
 * pid, the default hierarchy's cgroup kernfs id, the NUL-padded comm), which costs a
 * fraction of the three helper calls; older kernels take the helpers. */
static __always_inline void tapio_task_current(struct tapio_task *t, int with_memcg)
{
	if (bpf_core_enum_value_exists(enum bpf_func_id, BPF_FUNC_get_current_task_btf)) {
		struct task_struct *task = bpf_get_current_task_btf();
		struct css_set *cgroups = task->cgroups;
		t->pid = task->tgid;
		t->tid = task->pid;
		t->cgroup_id = cgroups->dfl_cgrp->kn->id;
		__builtin_memcpy(t->comm, task->comm, sizeof(t->comm));
		if (!with_memcg || !bpf_core_enum_value_exists(enum cgroup_subsys_id, memory_cgrp_id))
			return;
		int idx = bpf_core_enum_value(enum cgroup_subsys_id, memory_cgrp_id);
		if (idx < 0 || idx >= 16)
			return;
		struct cgroup_subsys_state *css = cgroups->subsys[idx];
		if (css)
			t->mem_cgroup_id = css->cgroup->kn->id;
		return;
	}
	__u64 id = bpf_get_current_pid_tgid();
	t->pid = id >> 32;
	t->tid = (__u32)id;
	t->cgroup_id = bpf_get_current_cgroup_id();
	if (with_memcg)
		t->mem_cgroup_id = tapio_task_memcg_id((struct task_struct *)bpf_get_current_task());
	bpf_get_current_comm(&t->comm, sizeof(t->comm));
}

#endif
