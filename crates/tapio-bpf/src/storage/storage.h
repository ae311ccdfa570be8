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
	/* The request completed (or was merged away): the slot waits, still its struct's, for
	 * the next request built on that struct (until the table first runs full: see
	 * "inflight_full" in storage.bpf.c). */
	TAPIO_STO_IF_COMPLETED = 1 << 11,
	/* The request reached the driver: stamp_ns is its last issue (else its submission). */
	TAPIO_STO_IF_ISSUED = 1 << 12,
	/* dev and the slot's inflight_facts hold this request's (read at its first
	 * completion, only when that completion is judged). */
	TAPIO_STO_IF_FACTS = 1 << 13,
};

/* Slots of the in-flight table ("inflight" below) at most: the agent sizes it at load for
 * the node's disks (observers/storage/table_size.rs), a power of two from 4,096 up to this. */
enum tapio_sto_table {
	TAPIO_STO_INFLIGHT_ENTRIES = 16384,
	/* Slots a request struct may take, from its home slot on (a lookup that finds the struct
	 * stops there, at its home slot or the next one, mostly). With the table sized for twice
	 * the node's structs, at most half its slots are taken; a simulation of that many
	 * structs given slots at random, each in the first free one of its probes, found all
	 * of a struct's probes taken 222 times per filling of 16,384 slots with 4 probes, 3.2
	 * times with 16 and 0.05 with 32 (and none with 16 at 35 % taken). */
	TAPIO_STO_INFLIGHT_PROBES = 32,
};

/* tapio_sto_inflight.owner: the sweeper's mark on a slot it is taking back (request structs
 * are 8-byte aligned, so no owner has this bit). No hook matches a marked slot; the sweeper
 * frees it at its next pass. */
#define TAPIO_STO_OWNER_RETIRED 1ULL

/*
 * One request struct's slot in the "inflight" array, found from the struct's address
 * (storage.bpf.c): one cache line, holding everything the hooks of an unremarkable request
 * read and write, so the first touch of a request costs one line where a hash element
 * cost its bucket and two. The slot belongs to its struct (its owner) from the first
 * request built on it until the struct idles long enough for the agent to take it back; each
 * request on the struct reuses it in place. The agent reads slots, in place, only to take
 * back idle ones and to age out requests whose completion never comes.
 */
struct tapio_sto_inflight {
	/* The struct request's address; 0 while the slot is free. */
	__u64 owner;
	/* Saturates at 65535. */
	__u16 requeues;
	__u16 flags;
	/* The whole disk, packed as the kernel's own dev_t: major << 20 | minor. */
	__u32 dev;
	struct tapio_task task;
	/* The last issue to the driver with TAPIO_STO_IF_ISSUED; else when the submitter's bio
	 * became this request (0 if neither was seen). */
	__u64 stamp_ns;
};

_Static_assert(sizeof(struct tapio_sto_inflight) == 64, "an in-flight slot is one cache line");

/* What only a judged completion needs of its request, beside its slot ("inflight_facts",
 * same index): read at the request's first completion, when that completion is judged. */
struct tapio_sto_inflight_facts {
	__u64 sector;
	__u32 bytes;
	__u32 cmd_flags;
};

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
	/* No slot of the in-flight table was free for a request's struct; that request's
	 * completion counts as unmatched. The first time, completed requests start freeing
	 * their slots (storage.bpf.c). */
	TAPIO_STO_CNT_INFLIGHT_FULL = TAPIO_CNT_OBSERVER_BASE + 3,
	/* Requeues seen (the driver gave a request back; not a loss). */
	TAPIO_STO_CNT_REQUEUES = TAPIO_CNT_OBSERVER_BASE + 4,
	/* A slot's claim found its bucket locked by the program this hook interrupted on the
	 * same CPU (a completion in an interrupt). Not a loss by itself: a request whose slot
	 * could not be claimed at submission claims one at issue (its submitter then unknown). */
	TAPIO_STO_CNT_INFLIGHT_BUSY = TAPIO_CNT_OBSERVER_BASE + 5,
	/* A flush or a PREFLUSH/FUA write completed with an error without ever being issued:
	 * not reported, since its flush sequence's failed flush may be (a request of its own);
	 * but it may also have failed at its own dispatch (a device gone offline), so each one
	 * is counted as evidence that may be missing. */
	TAPIO_STO_CNT_UNISSUED_FLUSH_FAILURE = TAPIO_CNT_OBSERVER_BASE + 6,
};

#endif
