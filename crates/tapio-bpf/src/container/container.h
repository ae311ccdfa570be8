/* SPDX-License-Identifier: Apache-2.0 OR GPL-2.0-only */
/* The container observer's kernel ABI: its config carrier and its event records. */
#ifndef TAPIO_CONTAINER_H
#define TAPIO_CONTAINER_H

#include "tapio_common.h"

enum tapio_ctr_enable {
	TAPIO_CTR_EN_OOM = 1 << 0,
	TAPIO_CTR_EN_EXIT = 1 << 1,
};

struct tapio_ctr_config {
	struct tapio_config_header hdr;
	__u32 enabled;
	__u32 _pad;
	/* Bit n set: exit code n produces no event. Bit 0 is ignored (exit 0 never does). */
	__u64 ignored_exit_codes[4];
	/* Bit n set: death by signal n produces no event. */
	__u64 ignored_signals;
	__u32 generation_check;
	__u32 _pad2;
};

/* The table of reported OOM victims (oom_victims in container.bpf.c): a victim's slot is one
 * of the WAYS slots of bucket tgid % BUCKETS, each slot a process key (tgid, 4 bytes of
 * padding, its leader's start_boottime). */
#define TAPIO_CTR_OOM_VICTIM_BUCKETS 256
#define TAPIO_CTR_OOM_VICTIM_WAYS 4

/* The container object's own counter slots (after TAPIO_CNT_OBSERVER_BASE). */
enum tapio_ctr_counter {
	/* An OOM victim's bucket was full of victims not yet seen exiting: one of them was
	 * forgotten, and its SIGKILL exit, if it comes, is reported as an exit too. */
	TAPIO_CTR_CNT_OOM_VICTIM_SLOT_REUSED = TAPIO_CNT_OBSERVER_BASE,
};

enum tapio_ctr_kind {
	TAPIO_CTR_OOM_KILL = 1,
	TAPIO_CTR_EXIT = 2,
	/* Not evidence: a cgroup was created (its path, for workload identity). */
	TAPIO_CTR_CGROUP_MKDIR = 3,
};

/* Longest cgroup path (with its NUL) a cgroup record carries; a longer one is reported
 * with path_len 0 and TAPIO_CTR_F_NO_PATH, never cut short. Kubernetes paths are ~200. */
#define TAPIO_CGROUP_PATH_MAX 512
/* A path of at most this many bytes (with its NUL), or none, travels in a short record:
 * the first TAPIO_CGROUP_SHORT_BYTES of struct tapio_cgroup_event (the rest is not sent;
 * its path_len is under this). Half the ring space per cgroup, and each hook pays for the
 * ring pages its records touch (measured by tapio-bench). */
#define TAPIO_CGROUP_PATH_SHORT 256
#define TAPIO_CGROUP_SHORT_BYTES (__builtin_offsetof(struct tapio_cgroup_event, path) + TAPIO_CGROUP_PATH_SHORT)

/* Bits of the records' flags. */
enum tapio_ctr_flag {
	/* rss/total_vm/pgtables fields were read from the victim's mm. */
	TAPIO_CTR_F_MM_KNOWN = 1 << 0,
	/* mem_cgroup_id/limit/usage were read from the task's memory cgroup. */
	TAPIO_CTR_F_MEMCG_KNOWN = 1 << 1,
	/* start_boot_ns is the process start time. */
	TAPIO_CTR_F_START_KNOWN = 1 << 2,
	/* The cgroup record carries no path: it did not fit TAPIO_CGROUP_PATH_MAX or was unreadable. */
	TAPIO_CTR_F_NO_PATH = 1 << 3,
};

struct tapio_oom_event {
	struct tapio_event_header hdr;
	/* The victim, read from its task_struct at kill time. */
	struct tapio_task task;
	/* memory.max / memory.limit_in_bytes and usage, in pages. */
	__u64 memcg_limit_pages;
	__u64 memcg_usage_pages;
	/* Victim sizes in pages (pgtables in bytes), as the kernel's OOM report counts them. */
	__u64 total_vm_pages;
	__u64 anon_rss_pages;
	__u64 file_rss_pages;
	__u64 shmem_rss_pages;
	__u64 pgtables_bytes;
	__u32 uid;
	__s16 oom_score_adj;
	__u16 flags;
};

struct tapio_exit_event {
	struct tapio_event_header hdr;
	/* pid is the process (tgid); comm is the process's (group leader's) name. */
	struct tapio_task task;
	/* Process start (boot clock), for its lifetime. */
	__u64 start_boot_ns;
	/* The wait status the parent will see: code << 8, or signal | 0x80 if core dumped. */
	__u32 exit_status;
	/* Threads the process had when its exit began: in a group exit (exit_group, a fatal
	 * signal) as the first thread to leave saw them; otherwise the threads not yet
	 * released when the last one left (it and a zombie leader). */
	__u32 nr_threads;
	__u16 flags;
	__u16 _pad[3];
};

/*
 * A cgroup the kernel just created (cgroup:cgroup_mkdir), read while it exists: the agent
 * keeps its path so evidence about it still names the workload after the cgroup is removed
 * (runtimes remove a container's cgroup as soon as its last process is reaped). Bookkeeping,
 * not a fact in time: its header's boot_ns and generation are 0.
 */
struct tapio_cgroup_event {
	struct tapio_event_header hdr;
	/* The cgroup's kernfs id (what bpf_get_current_cgroup_id() / the memcg id report). */
	__u64 cgroup_id;
	/* The kernel's id of its hierarchy: 0 for cgroup2, else a v1 hierarchy (/proc/cgroups). */
	__u32 hierarchy_id;
	/* Bytes of path, without the NUL. */
	__u16 path_len;
	__u16 flags;
	/* The path from the hierarchy root, as the kernel's cgroup_path() writes it. */
	__u8 path[TAPIO_CGROUP_PATH_MAX];
};

#endif
