// SPDX-License-Identifier: GPL-2.0
/*
 * Tapio container observer, kernel side.
 *
 * Facts:
 *  - the OOM killer marks a victim (sizes and memory cgroup read from the victim's own
 *    task_struct, not from the task that triggered the OOM);
 *  - a process (its last thread) exits with a non-zero status not on the ignore lists,
 *    read from the exiting task at exit time.
 */
#include "tapio_bpf.h"
#include "container.h"

#define SIGNAL_GROUP_EXIT 0x00000004

char LICENSE[] SEC("license") = "GPL";

TAPIO_COUNTERS_MAP;
TAPIO_CONFIG_MAP(struct tapio_ctr_config);

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 18);
} events SEC(".maps");

/* Wake the agent once an eighth of the ring is waiting. */
#define EVENTS_WAKEUP_BYTES ((1 << 18) / 8)

/* Kernels without sched_process_exit's group_dead field: processes already reported, so
 * racing last threads cannot report one process twice. */
struct exit_key {
	__u32 tgid;
	__u32 _pad;
	__u64 start_boottime;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, struct exit_key);
	__type(value, __u8);
} exits_reported SEC(".maps");

static __always_inline void *reserve(__u64 size, __u32 kind, __u32 generation)
{
	struct tapio_event_header *hdr = bpf_ringbuf_reserve(&events, size, 0);
	if (!hdr) {
		tapio_count(&counters, TAPIO_CNT_RINGBUF_FULL);
		return NULL;
	}
	__builtin_memset(hdr, 0, size);
	hdr->boot_ns = bpf_ktime_get_boot_ns();
	hdr->kind = kind;
	hdr->generation = generation;
	return hdr;
}

static __always_inline __u64 mm_counter(struct mm_struct *mm, int member)
{
	if (bpf_core_type_exists(struct mm_rss_stat)) {
		struct mm_struct___pre62 *old = (void *)mm;
		return BPF_CORE_READ(old, rss_stat.count[member].counter);
	}
	__s64 v = BPF_CORE_READ(mm, rss_stat[member].count);
	return v > 0 ? v : 0; /* what percpu_counter_read_positive() reports */
}

SEC("tp_btf/mark_victim")
int BPF_PROG(tapio_mark_victim, struct task_struct *task, uid_t uid)
{
	struct tapio_ctr_config cfg;
	if (!TAPIO_READ_CONFIG(&config, &counters, &cfg))
		return 0;
	if (!(cfg.enabled & TAPIO_CTR_EN_OOM))
		return 0;
	/* Before 6.9 this tracepoint passed only a pid: no task to read facts from. */
	if (!bpf_core_field_exists(struct trace_event_raw_mark_victim, anon_rss)) {
		tapio_count(&counters, TAPIO_CNT_UNSUPPORTED);
		return 0;
	}

	struct tapio_oom_event *ev = reserve(sizeof(*ev), TAPIO_CTR_OOM_KILL, cfg.hdr.generation);
	if (!ev)
		return 0;
	ev->task.pid = BPF_CORE_READ(task, tgid);
	ev->task.tid = BPF_CORE_READ(task, pid);
	BPF_CORE_READ_INTO(&ev->task.comm, task, comm);
	ev->uid = uid;
	ev->oom_score_adj = BPF_CORE_READ(task, signal, oom_score_adj);

	struct mm_struct *mm = BPF_CORE_READ(task, mm);
	if (mm) {
		ev->total_vm_pages = BPF_CORE_READ(mm, total_vm);
		ev->file_rss_pages = mm_counter(mm, 0);  /* MM_FILEPAGES */
		ev->anon_rss_pages = mm_counter(mm, 1);  /* MM_ANONPAGES */
		ev->shmem_rss_pages = mm_counter(mm, 3); /* MM_SHMEMPAGES */
		ev->pgtables_bytes = BPF_CORE_READ(mm, pgtables_bytes.counter);
		ev->flags |= TAPIO_CTR_F_MM_KNOWN;
	}

	if (bpf_core_enum_value_exists(enum cgroup_subsys_id, memory_cgrp_id)) {
		int idx = bpf_core_enum_value(enum cgroup_subsys_id, memory_cgrp_id);
		struct css_set *cgroups = BPF_CORE_READ(task, cgroups);
		struct cgroup_subsys_state *css = NULL;
		if (idx >= 0 && idx < 16)
			bpf_core_read(&css, sizeof(css), &cgroups->subsys[idx]);
		if (css) {
			struct mem_cgroup *memcg =
				(void *)css - bpf_core_field_offset(struct mem_cgroup, css);
			ev->task.mem_cgroup_id = BPF_CORE_READ(css, cgroup, kn, id);
			ev->memcg_limit_pages = BPF_CORE_READ(memcg, memory.max);
			ev->memcg_usage_pages = BPF_CORE_READ(memcg, memory.usage.counter);
			ev->flags |= TAPIO_CTR_F_MEMCG_KNOWN;
		}
	}
	/* The victim's cgroup2 id (what bpf_get_current_cgroup_id() would say in its context). */
	ev->task.cgroup_id = BPF_CORE_READ(task, cgroups, dfl_cgrp, kn, id);
	tapio_submit(&events, ev, EVENTS_WAKEUP_BYTES);
	return 0;
}

SEC("tracepoint/sched/sched_process_exit")
int tapio_sched_process_exit(struct trace_event_raw_sched_process_exit *ctx)
{
	struct tapio_ctr_config cfg;
	if (!TAPIO_READ_CONFIG(&config, &counters, &cfg))
		return 0;
	if (!(cfg.enabled & TAPIO_CTR_EN_EXIT))
		return 0;

	/* The exiting task is current here. */
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct signal_struct *signal = BPF_CORE_READ(task, signal);

	/* One event per process: only its last thread reports. */
	int use_group_dead = bpf_core_field_exists(ctx->group_dead);
	if (use_group_dead) {
		if (!BPF_CORE_READ(ctx, group_dead))
			return 0;
	} else if (BPF_CORE_READ(signal, live.counter) != 0) {
		return 0;
	}

	unsigned int flags = BPF_CORE_READ(signal, flags);
	__u32 status = (flags & SIGNAL_GROUP_EXIT) ? BPF_CORE_READ(signal, group_exit_code)
						   : BPF_CORE_READ(task, exit_code);
	if (status == 0)
		return 0;
	__u32 sig = status & 0x7f;
	if (sig == 0) {
		__u32 code = (status >> 8) & 0xff;
		if (cfg.ignored_exit_codes[(code >> 6) & 3] & (1ULL << (code & 63)))
			return 0;
	} else if (cfg.ignored_signals & (1ULL << (sig & 63))) {
		return 0;
	}

	struct task_struct *leader = BPF_CORE_READ(task, group_leader);
	__u64 start = BPF_CORE_READ(leader, start_boottime);
	if (!use_group_dead) {
		struct exit_key k = { .tgid = BPF_CORE_READ(task, tgid), .start_boottime = start };
		__u8 one = 1;
		if (bpf_map_update_elem(&exits_reported, &k, &one, BPF_NOEXIST))
			return 0;
	}

	struct tapio_exit_event *ev = reserve(sizeof(*ev), TAPIO_CTR_EXIT, cfg.hdr.generation);
	if (!ev)
		return 0;
	tapio_task_current(&ev->task, 1);
	/* The process's name, not whichever thread happened to exit last. */
	BPF_CORE_READ_INTO(&ev->task.comm, leader, comm);
	ev->exit_status = status;
	ev->nr_threads = BPF_CORE_READ(signal, nr_threads);
	if (bpf_core_field_exists(leader->start_boottime)) {
		ev->start_boot_ns = start;
		ev->flags |= TAPIO_CTR_F_START_KNOWN;
	}
	tapio_submit(&events, ev, EVENTS_WAKEUP_BYTES);
	return 0;
}
