/* SPDX-License-Identifier: Apache-2.0 */
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
 * Submits a reserved record. Waking the agent for every record costs more than the record
 * itself, so the agent is woken only once `wakeup_bytes` are waiting; it also polls the ring
 * every 100 ms, which bounds how long a lone record waits.
 */
static __always_inline void tapio_submit(void *ring, void *record, __u64 wakeup_bytes)
{
	__u64 waiting = bpf_ringbuf_query(ring, BPF_RB_AVAIL_DATA);
	bpf_ringbuf_submit(record, waiting >= wakeup_bytes ? BPF_RB_FORCE_WAKEUP : BPF_RB_NO_WAKEUP);
}

/* Fills *t with the current task: the right attribution only in process context.
 * with_memcg: also read its memory-cgroup id (a few pointer reads). */
static __always_inline void tapio_task_current(struct tapio_task *t, int with_memcg)
{
	__u64 id = bpf_get_current_pid_tgid();
	t->pid = id >> 32;
	t->tid = (__u32)id;
	t->cgroup_id = bpf_get_current_cgroup_id();
	if (with_memcg)
		t->mem_cgroup_id = tapio_task_memcg_id((struct task_struct *)bpf_get_current_task());
	bpf_get_current_comm(&t->comm, sizeof(t->comm));
}

#endif
