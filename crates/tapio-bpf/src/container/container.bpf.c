// SPDX-License-Identifier: GPL-2.0-only
/*
 * Tapio container observer, kernel side.
 *
 * Facts:
 *  - the OOM killer kills a victim (sizes and memory cgroup read from the victim's own
 *    task_struct, not from the task that triggered the OOM);
 *  - a process (its last thread) exits with a non-zero status not on the ignore lists,
 *    read from the exiting task at exit time.
 *
 *  - a cgroup is created: its id and path, not evidence, but what names the workload of
 *    later evidence once the cgroup is gone.
 *
 * One fact, one event: an OOM victim's SIGKILL death is the OOM kill already reported, so
 * it is not also an abnormal exit. Its exit status says only "SIGKILL"; the OOM event
 * says who killed it and why, and a second event for the same death would read as a
 * second failure (or as someone's kill -9).
 */
#include "tapio_bpf.h"
#include "container.h"

#define SIGNAL_GROUP_EXIT 0x00000004
#define SIGKILL 9
/* The kernel's own "sent by the kernel" siginfo marker (SEND_SIG_PRIV). */
#define SEND_SIG_PRIV 1
#define NSEC_PER_SEC 1000000000ULL

struct kernel_siginfo;

char LICENSE[] SEC("license") = "GPL";

TAPIO_COUNTERS_MAP;
TAPIO_CONFIG_MAP(struct tapio_ctr_config);

#define EVENTS_RING_BYTES (1 << 18)

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, EVENTS_RING_BYTES);
} events SEC(".maps");

/* Evidence wakes the agent once an eighth of the ring is waiting. */
#define EVENTS_WAKEUP_BYTES (EVENTS_RING_BYTES / 8)
/*
 * Cgroup records (bookkeeping: 288 bytes, 544 for a path over 255 bytes) wake it only once
 * half the ring is waiting (or when it sleeps, tapio_submit): an awake agent drains every
 * 100 ms anyway, and the forced wake-ups at every eighth cost the cgroup hook more than the
 * rest of it together (measured by tapio-bench). A burst of new cgroups (455 short records)
 * still wakes it with half the ring, which exits and OOM kills share, left.
 */
#define CGROUP_WAKEUP_BYTES (EVENTS_RING_BYTES / 2)

/* A process that pid reuse cannot alias: its tgid and its leader's start time. */
struct exit_key {
	__u32 tgid;
	__u32 _pad;
	__u64 start_boottime;
};

/* Kernels without sched_process_exit's group_dead field: processes already reported, so
 * racing last threads cannot report one process twice. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, struct exit_key);
	__type(value, __u8);
} exits_reported SEC(".maps");

/*
 * Threads a multi-threaded process had when its group exit began, noted by the first of
 * its threads to leave. By the time the last one leaves, the others may already be
 * released and uncounted, so signal->nr_threads then says anything from 1 to the truth.
 * Consumed by the last thread; LRU-bounded if that exit is never seen.
 */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, struct exit_key);
	__type(value, __u32);
} group_exit_threads SEC(".maps");

/*
 * Processes the OOM killer killed (reported as oom_kill), until their SIGKILL exit, each in
 * one of the slots of the bucket its tgid picks (container.h), written and cleared with
 * plain stores: a hash map's insert (bucket lock, free list, element) on the OOM path's cold
 * memory had cost the kill's hook 3-4 us of its 6-7 (tapio-bench kernel). The kernel
 * serializes OOM kills (oom_lock), so only an exit clearing its own slot runs beside a
 * mark. A bucket whose slots all hold victims not yet seen exiting gives up its first one,
 * counted (oom_victim_slot_reused): if that victim still exits, its SIGKILL exit is
 * reported as an exit too.
 */
_Static_assert((TAPIO_CTR_OOM_VICTIM_WAYS & (TAPIO_CTR_OOM_VICTIM_WAYS - 1)) == 0,
	       "a slot index is masked with WAYS - 1 for the verifier");

struct oom_victim_bucket {
	struct exit_key slot[TAPIO_CTR_OOM_VICTIM_WAYS];
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, TAPIO_CTR_OOM_VICTIM_BUCKETS);
	__type(key, __u32);
	__type(value, struct oom_victim_bucket);
} oom_victims SEC(".maps");

/*
 * The last SIGKILL the kernel itself sent on this CPU. The OOM killer sends its SIGKILL and
 * marks the victim under one task_lock, so a kill is the note of the same CPU naming the
 * marked thread. mark_victim also fires without a kill: for a victim that is already
 * dying, which the kernel only lets finish (and does not log); that is not an OOM kill.
 */
struct kill_note {
	__u64 boot_ns;
	/* The victim's task_struct: on kernels whose mark_victim passes only a pid, the one
	 * place its facts can be read from (tapio_mark_victim_pid). */
	__u64 task;
	__u32 tid;
	__u32 _pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct kill_note);
} kernel_kills SEC(".maps");

/* Set once the signal hook has run: until then (or if it never attached) a mark cannot be
 * told from a kill and is reported as one. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} kill_hook_live SEC(".maps");

static __always_inline struct exit_key process_key(struct task_struct *task)
{
	struct exit_key k = { .tgid = BPF_CORE_READ(task, tgid) };
	if (bpf_core_field_exists(task->start_boottime))
		k.start_boottime = BPF_CORE_READ(task, group_leader, start_boottime);
	return k;
}

/* A record of `size` bytes whose first `zeroed` bytes are cleared (the rest the caller
 * fills, or the record says how much of it counts), with no time in its header. */
static __always_inline void *reserve_unstamped(__u64 size, __u64 zeroed, __u32 kind)
{
	struct tapio_event_header *hdr = bpf_ringbuf_reserve(&events, size, 0);
	if (!hdr) {
		tapio_count(&counters, TAPIO_CNT_RINGBUF_FULL);
		return NULL;
	}
	__builtin_memset(hdr, 0, zeroed);
	hdr->kind = kind;
	return hdr;
}

/* A cleared record of a fact: when it happened and under which config. */
static __always_inline void *reserve(__u64 size, __u32 kind, __u32 generation)
{
	struct tapio_event_header *hdr = reserve_unstamped(size, size, kind);
	if (hdr) {
		hdr->boot_ns = bpf_ktime_get_boot_ns();
		hdr->generation = generation;
	}
	return hdr;
}

static __always_inline __u64 positive(__s64 v)
{
	/* What the kernel's OOM line reports: percpu_counter_read_positive() from 6.2, and
	 * before it get_mm_counter(), which clamps a split counter's transient negative. */
	return v > 0 ? v : 0;
}

/* Indexes of mm->rss_stat[]. */
#define MM_FILEPAGES 0
#define MM_ANONPAGES 1
#define MM_SHMEMPAGES 3

/*
 * One rss counter of an mm. `member` must be a literal: CO-RE then steps through rss_stat[]
 * by the running kernel's sizeof(struct percpu_counter). Through a variable index it would
 * step by this header's (8 bytes), and every counter but the first reads the wrong bytes.
 */
#define MM_COUNTER(mm, member)                                                                     \
	(bpf_core_type_exists(struct mm_rss_stat)                                                  \
		 ? positive(BPF_CORE_READ((struct mm_struct___pre62 *)(mm), rss_stat.count[member].counter)) \
		 : positive(BPF_CORE_READ((mm), rss_stat[member].count)))

static __always_inline int same_process(const struct exit_key *a, const struct exit_key *b)
{
	return a->tgid == b->tgid && a->start_boottime == b->start_boottime;
}

/* Notes a reported victim, so that its SIGKILL exit is not reported again. */
static __always_inline void remember_oom_victim(struct exit_key victim)
{
	__u32 idx = victim.tgid % TAPIO_CTR_OOM_VICTIM_BUCKETS;
	struct oom_victim_bucket *b = bpf_map_lookup_elem(&oom_victims, &idx);
	if (!b)
		return;
	int free = -1;
	for (int i = 0; i < TAPIO_CTR_OOM_VICTIM_WAYS; i++) {
		if (same_process(&b->slot[i], &victim))
			return;
		if (free < 0 && b->slot[i].tgid == 0)
			free = i;
	}
	if (free < 0) {
		tapio_count(&counters, TAPIO_CTR_CNT_OOM_VICTIM_SLOT_REUSED);
		free = 0;
	}
	b->slot[free & (TAPIO_CTR_OOM_VICTIM_WAYS - 1)] = victim;
}

/* Whether this exit is a reported victim's; its slot is cleared (one exit per victim). */
static __always_inline int forget_oom_victim(const struct exit_key *key)
{
	__u32 idx = key->tgid % TAPIO_CTR_OOM_VICTIM_BUCKETS;
	struct oom_victim_bucket *b = bpf_map_lookup_elem(&oom_victims, &idx);
	if (!b)
		return 0;
	for (int i = 0; i < TAPIO_CTR_OOM_VICTIM_WAYS; i++) {
		if (same_process(&b->slot[i], key)) {
			/* The slot is free once its tgid is 0, and a mark may take it at once (an
			 * earlier victim exits while the next one is marked): the time goes first,
			 * so a clear never lands on the new victim's slot. */
			b->slot[i].start_boottime = 0;
			TAPIO_COMPILER_BARRIER();
			b->slot[i].tgid = 0;
			return 1;
		}
	}
	return 0;
}

/* The OOM kill of `task`, with its facts read from its own task_struct. */
static __always_inline void emit_oom_kill(struct task_struct *task, uid_t uid, const struct tapio_ctr_config *cfg)
{
	struct tapio_oom_event *ev = reserve(sizeof(*ev), TAPIO_CTR_OOM_KILL, cfg->hdr.generation);
	if (!ev)
		return; /* counted; the victim's exit then stays its only evidence */
	/* Exits not reported at all need no guard (and would never clear their slot). */
	if (cfg->enabled & TAPIO_CTR_EN_EXIT)
		remember_oom_victim(process_key(task));
	ev->task.pid = BPF_CORE_READ(task, tgid);
	ev->task.tid = BPF_CORE_READ(task, pid);
	BPF_CORE_READ_INTO(&ev->task.comm, task, comm);
	ev->uid = uid;
	ev->oom_score_adj = BPF_CORE_READ(task, signal, oom_score_adj);

	struct mm_struct *mm = BPF_CORE_READ(task, mm);
	if (mm) {
		ev->total_vm_pages = BPF_CORE_READ(mm, total_vm);
		ev->file_rss_pages = MM_COUNTER(mm, MM_FILEPAGES);
		ev->anon_rss_pages = MM_COUNTER(mm, MM_ANONPAGES);
		ev->shmem_rss_pages = MM_COUNTER(mm, MM_SHMEMPAGES);
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

	__u32 zero = 0;
	__u32 *hook_live = bpf_map_lookup_elem(&kill_hook_live, &zero);
	struct kill_note *note = bpf_map_lookup_elem(&kernel_kills, &zero);
	if (hook_live && *hook_live && note) {
		/* The kill and the mark happen under one spinlock: a second is generous, and
		 * only keeps an old note from matching. */
		int killed = note->tid == (__u32)BPF_CORE_READ(task, pid) && note->boot_ns &&
			     bpf_ktime_get_boot_ns() - note->boot_ns < NSEC_PER_SEC;
		note->boot_ns = 0;
		note->tid = 0;
		if (!killed)
			return 0;
	}

	emit_oom_kill(task, uid, &cfg);
	return 0;
}

/*
 * Kernels whose oom:mark_victim passes only the victim's pid (mainline before 6.9, and
 * stable releases without that change backported; Debian's 5.10.262 and 6.1.192 have it):
 * the victim's task is the one the kernel's SIGKILL just went to, noted on this CPU by
 * tapio_signal_generate under the same task_lock. The agent attaches this program or tapio_mark_victim, never
 * both (see observers/container in the agent). Without a matching note there was no kill:
 * an already dying victim is only marked.
 */
SEC("tracepoint/oom/mark_victim")
int tapio_mark_victim_pid(struct trace_event_raw_mark_victim *ctx)
{
	struct tapio_ctr_config cfg;
	if (!TAPIO_READ_CONFIG(&config, &counters, &cfg))
		return 0;
	if (!(cfg.enabled & TAPIO_CTR_EN_OOM))
		return 0;
	__u32 zero = 0;
	__u32 *hook_live = bpf_map_lookup_elem(&kill_hook_live, &zero);
	if (!hook_live || !*hook_live) {
		/* The signal hook never ran (not attached): no victim task can be known here, and
		 * a kill that cannot be reported is counted rather than silently missed. */
		tapio_count(&counters, TAPIO_CNT_UNSUPPORTED);
		return 0;
	}
	struct kill_note *note = bpf_map_lookup_elem(&kernel_kills, &zero);
	if (!note)
		return 0;
	int killed = note->tid == (__u32)ctx->pid && note->boot_ns && note->task &&
		     bpf_ktime_get_boot_ns() - note->boot_ns < NSEC_PER_SEC;
	struct task_struct *task = (struct task_struct *)note->task;
	note->boot_ns = 0;
	note->tid = 0;
	note->task = 0;
	if (!killed)
		return 0;
	/* What the kernel's own report prints: the victim's real uid in the initial namespace. */
	uid_t uid = BPF_CORE_READ(task, real_cred, uid.val);
	emit_oom_kill(task, uid, &cfg);
	return 0;
}

/* Notes each SIGKILL the kernel sends (see kernel_kills). Not evidence itself. */
SEC("tp_btf/signal_generate")
int BPF_PROG(tapio_signal_generate, int sig, struct kernel_siginfo *info, struct task_struct *task, int group,
	     int result)
{
	__u32 zero = 0;
	/* Any signal proves the hook runs (SIGCHLD alone is constant on a live node). */
	__u32 *hook_live = bpf_map_lookup_elem(&kill_hook_live, &zero);
	if (hook_live && !*hook_live)
		*hook_live = 1;
	if (sig != SIGKILL || (unsigned long)info != SEND_SIG_PRIV)
		return 0;
	struct kill_note *note = bpf_map_lookup_elem(&kernel_kills, &zero);
	if (note) {
		note->boot_ns = bpf_ktime_get_boot_ns();
		note->task = (__u64)task;
		note->tid = BPF_CORE_READ(task, pid);
	}
	return 0;
}

/* Whether the running kernel's sched_process_exit passes group_dead (6.16+): the raw
 * tracepoint's second argument and the classic event's field came in together. */
#define HAS_GROUP_DEAD bpf_core_field_exists(struct trace_event_raw_sched_process_exit, group_dead)

/*
 * Whether this exit cannot be evidence, decided from the exiting task alone: a last thread
 * whose process leaves with status 0, or a thread that is not the last and whose group exit
 * (if any) carries no code to remember. Nearly every exit on a node is one of those, so
 * they leave after a few plain loads through the typed task pointer, before any helper,
 * map or config access. The values are the ones the full path below reads.
 */
static __always_inline int exit_is_clean(struct task_struct *task, int last)
{
	struct signal_struct *signal = task->signal;
	/* A group exit's status is its group code, for the last thread (the status) and for the
	 * others (the code worth remembering) alike; otherwise only the last thread counts. */
	if (signal->flags & SIGNAL_GROUP_EXIT)
		return signal->group_exit_code == 0;
	if (last < 0)
		last = signal->live.counter == 0;
	return !last || task->group_leader->exit_code == 0;
}

static __noinline int exit_judged(struct task_struct *task, int last);

/*
 * Every exit on the node passes here, so it is a BTF tracepoint: the kernel builds no
 * tracepoint record (comm copy, pid and priority lookups) for it, and the exiting task
 * (which is current) comes as a typed pointer.
 */
SEC("tp_btf/sched_process_exit")
int BPF_PROG(tapio_sched_process_exit, struct task_struct *task)
{
	/* group_dead, where the kernel passes it; -1 where the thread count must decide. */
	int last = -1;
	if (HAS_GROUP_DEAD) {
		/* Kept below the existence check: where the argument is missing the verifier
		 * rejects the load, and only this branch being dead keeps it unverified. */
		TAPIO_COMPILER_BARRIER();
		last = (__u8)ctx[1];
	}
	if (exit_is_clean(task, last))
		return 0;
	return exit_judged(task, last);
}

/*
 * Every exit that may be evidence. A function of its own, not inlined: the JIT compiles it
 * apart, and the code every exit runs is only the clean test above. Measured (`tapio-bench
 * kernel`, three alternating runs): clean exits 78-93 ns in the hook against 115-132 ns
 * with this inlined; abnormal exits, each one evidence, took 990-1,036 ns against 843-981.
 */
static __noinline int exit_judged(struct task_struct *task, int last)
{
	struct tapio_ctr_config cfg;
	if (!TAPIO_READ_CONFIG(&config, &counters, &cfg))
		return 0;
	if (!(cfg.enabled & TAPIO_CTR_EN_EXIT))
		return 0;

	/* Plain loads through the typed task, as in exit_is_clean. */
	struct signal_struct *signal = task->signal;
	int group_exit = signal->flags & SIGNAL_GROUP_EXIT;

	/* One event per process: only its last thread reports. */
	if (last < 0)
		last = signal->live.counter == 0;
	if (!last) {
		/* A code-0 group exit never becomes evidence: nothing to remember for it. */
		if (group_exit && signal->group_exit_code != 0) {
			struct exit_key k = process_key(task);
			__u32 threads = signal->nr_threads;
			bpf_map_update_elem(&group_exit_threads, &k, &threads, BPF_NOEXIST);
		}
		return 0;
	}

	/*
	 * The status the parent's wait() will see: the group exit code, else the leader's exit
	 * code (wait() reads the leader). When the leader left first with its own code, 6.18
	 * reports the last thread's instead, and by this tracepoint these reads already say so
	 * (checked by the kernel tests against wait()).
	 */
	struct task_struct *leader = task->group_leader;
	__u32 status = group_exit ? signal->group_exit_code : leader->exit_code;
	if (status == 0)
		return 0;
	struct exit_key key = process_key(task);
	/*
	 * Without group_dead, two threads can both see live == 0. Only the first past this
	 * insert decides anything for the process: it must come before every other outcome
	 * (the OOM victim's entry is consumed once, so a second thread past it would report
	 * the OOM kill's SIGKILL again as an abnormal exit; the first thread's thread count
	 * is consumed once too).
	 */
	if (!HAS_GROUP_DEAD) {
		__u8 one = 1;
		if (bpf_map_update_elem(&exits_reported, &key, &one, BPF_NOEXIST))
			return 0;
	}
	__u32 threads = signal->nr_threads;
	if (group_exit) {
		__u32 *first = bpf_map_lookup_elem(&group_exit_threads, &key);
		if (first) {
			threads = *first;
			bpf_map_delete_elem(&group_exit_threads, &key);
		}
	}
	__u32 sig = status & 0x7f;
	/* Already reported as the OOM kill that caused it. */
	if (sig == SIGKILL && forget_oom_victim(&key))
		return 0;
	if (sig == 0) {
		__u32 code = (status >> 8) & 0xff;
		if (cfg.ignored_exit_codes[(code >> 6) & 3] & (1ULL << (code & 63)))
			return 0;
	} else if (cfg.ignored_signals & (1ULL << (sig & 63))) {
		return 0;
	}

	struct tapio_exit_event *ev = reserve(sizeof(*ev), TAPIO_CTR_EXIT, cfg.hdr.generation);
	if (!ev)
		return 0;
	tapio_task_current(&ev->task, 1);
	/* The process's name, not whichever thread happened to exit last. */
	__builtin_memcpy(ev->task.comm, leader->comm, sizeof(ev->task.comm));
	ev->exit_status = status;
	ev->nr_threads = threads;
	if (bpf_core_field_exists(leader->start_boottime)) {
		ev->start_boot_ns = key.start_boottime;
		ev->flags |= TAPIO_CTR_F_START_KNOWN;
	}
	tapio_submit(&events, ev, EVENTS_WAKEUP_BYTES);
	return 0;
}

/*
 * Reserves a cgroup record with `path_room` path bytes (a constant at each call: the
 * verifier checks the copy against the reservation), fills it and submits it. The path is
 * the tracepoint's (`len` bytes with its NUL), copied as one block of that length (a
 * string copy goes a byte at a time), or, when it does not fit, none: the record says so.
 */
static __always_inline void emit_cgroup(struct trace_event_raw_cgroup *ctx, const char *path, __u32 len,
					__u32 path_room)
{
	__u32 path_at = __builtin_offsetof(struct tapio_cgroup_event, path);
	/* The path is not cleared first: it counts only up to path_len. */
	struct tapio_cgroup_event *ev = reserve_unstamped(path_at + path_room, path_at, TAPIO_CTR_CGROUP_MKDIR);
	if (!ev)
		return;
	/* The record is this program's context: plain loads. */
	ev->cgroup_id = ctx->id;
	ev->hierarchy_id = ctx->root;
	long err = -1;
	if (len >= 1 && len <= path_room) {
		__u64 last = len - 1;
		__u64 mask = path_room - 1;
		/* The room is a power of two, so this is a no-op; the compiler must keep it, as the
		 * verifier needs the bound on this register. */
		asm volatile("%[v] &= %[m]" : [v] "+r"(last) : [m] "r"(mask));
		err = bpf_probe_read_kernel(ev->path, last + 1, path);
		if (!err && ev->path[last] != 0)
			err = -1;
	}
	if (err) {
		/* Too long (or unreadable): say so rather than carry a cut path. */
		__builtin_memset(ev->path, 0, path_room);
		ev->flags |= TAPIO_CTR_F_NO_PATH;
	} else {
		ev->path_len = len - 1;
	}
	tapio_submit(&events, ev, CGROUP_WAKEUP_BYTES);
}

/*
 * Every cgroup the kernel creates, with its path, while it exists. Not judged by the config
 * (identity is bookkeeping, not evidence): a cgroup missed here is one whose later evidence
 * may carry no workload names once the cgroup is removed. For the same reason the record
 * carries no time (its header's boot_ns is 0): nothing orders or dates it.
 */
SEC("tracepoint/cgroup/cgroup_mkdir")
int tapio_cgroup_mkdir(struct trace_event_raw_cgroup *ctx)
{
	_Static_assert(TAPIO_CGROUP_PATH_SHORT < TAPIO_CGROUP_PATH_MAX, "two record sizes");
	_Static_assert(sizeof(((struct tapio_cgroup_event *)0)->path) == TAPIO_CGROUP_PATH_MAX, "the full record");
	/* __data_loc: offset from the record's start in the low 16 bits, length above (the
	 * path's bytes with its NUL). */
	__u32 loc = ctx->__data_loc_path;
	const char *path = (const char *)ctx + (loc & 0xffff);
	__u32 len = loc >> 16;
	/* A path that fits the short record, or none at all, travels in one. */
	if (len > TAPIO_CGROUP_PATH_SHORT && len <= TAPIO_CGROUP_PATH_MAX)
		emit_cgroup(ctx, path, len, TAPIO_CGROUP_PATH_MAX);
	else
		emit_cgroup(ctx, path, len, TAPIO_CGROUP_PATH_SHORT);
	return 0;
}
