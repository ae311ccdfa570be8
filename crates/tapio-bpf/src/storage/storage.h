/* SPDX-License-Identifier: Apache-2.0 OR GPL-2.0-only */
/* The storage observer's kernel ABI: its config carrier, its event record and its counters. */
#ifndef TAPIO_STORAGE_H
#define TAPIO_STORAGE_H

#include "tapio_common.h"

/* Bits of tapio_sto_config.enabled. */
enum tapio_sto_enable {
	TAPIO_STO_EN_ERRORS = 1 << 0,
	TAPIO_STO_EN_LATENCY = 1 << 1,
};

struct tapio_sto_config {
	struct tapio_config_header hdr;
	__u32 enabled;
	/* 1: also record the submitting task's memory-cgroup id. Only hybrid/v1 nodes need it
	 * (there every task's cgroup2 id is the root); it costs a few reads per request. */
	__u32 capture_memcg;
	/* Issue-to-completion latency above which a request is a warning / critical spike. */
	__u64 latency_warning_ns;
	__u64 latency_critical_ns;
	__u32 generation_check;
	__u32 _pad2;
};

enum tapio_sto_kind {
	/* A block request completed with an error. */
	TAPIO_STO_IO_ERROR = 1,
	/* A block request took longer than the warning threshold from issue to completion. */
	TAPIO_STO_LATENCY = 2,
};

/* Bits of tapio_sto_event.flags. */
enum tapio_sto_flag {
	/* task was captured when the request was built from the submitter's bio. */
	TAPIO_STO_F_TASK_KNOWN = 1 << 0,
	/* The request reached the driver: latency_ns runs from its last issue to completion. */
	TAPIO_STO_F_ISSUED = 1 << 1,
	/* latency_ns is above the critical threshold (threshold_ns is the critical one). */
	TAPIO_STO_F_CRITICAL = 1 << 2,
	/* error is a blk_status_t (newer kernels); otherwise a negative errno (older kernels). */
	TAPIO_STO_F_BLK_STATUS = 1 << 3,
	/* This completion covered only part of the request (done_bytes < bytes). */
	TAPIO_STO_F_PARTIAL = 1 << 4,
};

struct tapio_sto_event {
	struct tapio_event_header hdr;
	/* The task that submitted the request (valid with TAPIO_STO_F_TASK_KNOWN). */
	struct tapio_task task;
	/* The whole disk, as the block tracepoints name it. */
	__u32 dev_major;
	__u32 dev_minor;
	/* First sector and size of the request at its last issue. */
	__u64 sector;
	__u32 bytes;
	/* Bytes this completion covered. */
	__u32 done_bytes;
	/* Last issue to completion (valid with TAPIO_STO_F_ISSUED). */
	__u64 latency_ns;
	/* The threshold that judged a latency event (0 for errors). */
	__u64 threshold_ns;
	/* The request's operation and flags; the op is the low 8 bits. */
	__u32 cmd_flags;
	/* See TAPIO_STO_F_BLK_STATUS. */
	__s32 error;
	/* Times the driver handed the request back to be issued again. */
	__u32 requeues;
	__u16 flags;
	__u16 _pad;
};

/* Bits of tapio_sto_inflight.flags besides TAPIO_STO_F_TASK_KNOWN. */
enum tapio_sto_inflight_flag {
	/* Requeued since its last issue: the next issue is the same request again. */
	TAPIO_STO_IF_REQUEUED = 1 << 8,
	/* Issued twice with no requeue or completion in between (see the counters below). */
	TAPIO_STO_IF_AMBIGUOUS = 1 << 9,
	/* Part of a flush sequence whose data phase has completed and was judged; the block
	 * layer completes it once more when the sequence ends. */
	TAPIO_STO_IF_DATA_DONE = 1 << 10,
	/* The request completed (or was merged away): a dead entry, kept to be reused in
	 * place by the next request built on the same struct (until the table first runs
	 * full: see "inflight_full" in storage.bpf.c). */
	TAPIO_STO_IF_COMPLETED = 1 << 11,
	/* The request reached the driver: stamp_ns is its last issue (else its submission). */
	TAPIO_STO_IF_ISSUED = 1 << 12,
	/* dev, sector, bytes and cmd_flags hold this request's (read at its first completion,
	 * only when that completion is judged). */
	TAPIO_STO_IF_FACTS = 1 << 13,
};

/* Entries of the in-flight table ("inflight" below) at most: the agent sizes it at load for
 * the node's disks (observers/storage/table_size.rs), from 4,096 up to this. */
enum tapio_sto_table {
	TAPIO_STO_INFLIGHT_ENTRIES = 16384,
};

/*
 * One request, in the "inflight" hash map keyed by the address of its struct request:
 * unique while the request lives, and unchanged when the driver requeues it. The agent
 * reads entries only to reclaim completed ones that sit idle and to age out those whose
 * completion never comes.
 *
 * 72 bytes: the kernel's hash element (a 48-byte header, the 8-byte key, this) is then 128
 * bytes, and the table's 16,384 preallocated elements lock 2 MiB of kernel memory instead
 * of the 2.25 MiB an 88-byte value did (one stamp serves submission and issue, the disk is
 * one dev_t, requeues count to 65,535). The first 8 bytes share the element's first cache
 * line with its key: the flags every hook tests first sit there, so testing them needs only
 * the line the lookup has just read.
 */
struct tapio_sto_inflight {
	/* Saturates at 65535. */
	__u16 requeues;
	__u16 flags;
	/* The whole disk, packed as the kernel's own dev_t: major << 20 | minor. */
	__u32 dev;
	struct tapio_task task;
	/* The last issue to the driver with TAPIO_STO_IF_ISSUED; else when the submitter's bio
	 * became this request (0 if neither was seen). */
	__u64 stamp_ns;
	__u64 sector;
	__u32 bytes;
	__u32 cmd_flags;
};

_Static_assert(sizeof(struct tapio_sto_inflight) == 72, "the inflight table's memory budget assumes 72-byte values");

/* The kernel's dev_t packing (MINORBITS). */
#define TAPIO_STO_MINOR_BITS 20

/*
 * The storage object's own counter slots (after TAPIO_CNT_OBSERVER_BASE). The first three
 * are correlation drops; the last two only describe what happened.
 */
enum tapio_sto_counter {
	/* A request was issued again with neither a requeue nor a completion in between: which
	 * issue its completion belongs to cannot be told, so the completion was dropped. */
	TAPIO_STO_CNT_AMBIGUOUS_INFLIGHT = TAPIO_CNT_OBSERVER_BASE,
	/* A completion whose request was never seen issued or submitted. */
	TAPIO_STO_CNT_UNMATCHED_COMPLETION = TAPIO_CNT_OBSERVER_BASE + 1,
	/* A request was reused for new I/O while its previous issue had no completion. */
	TAPIO_STO_CNT_INFLIGHT_REPLACED = TAPIO_CNT_OBSERVER_BASE + 2,
	/* The in-flight table was full; that request's completion counts as unmatched. The
	 * first time, completed requests start freeing their entries (storage.bpf.c). */
	TAPIO_STO_CNT_INFLIGHT_FULL = TAPIO_CNT_OBSERVER_BASE + 3,
	/* Requeues seen (the driver gave a request back; not a loss). */
	TAPIO_STO_CNT_REQUEUES = TAPIO_CNT_OBSERVER_BASE + 4,
	/* An insert found its bucket locked by the program this hook interrupted on the same
	 * CPU (a completion in an interrupt). Not a loss by itself: a request whose entry could
	 * not be made at submission gets one at issue (its submitter then unknown). */
	TAPIO_STO_CNT_INFLIGHT_BUSY = TAPIO_CNT_OBSERVER_BASE + 5,
};

#endif
