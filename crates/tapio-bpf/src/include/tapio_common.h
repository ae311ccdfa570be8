/* SPDX-License-Identifier: Apache-2.0 OR GPL-2.0-only */
/*
 * The fixed-layout ABI shared by every Tapio eBPF object and the agent.
 *
 * This header is the single declaration of these structs: the eBPF programs include it,
 * and the agent's Rust mirrors are generated from it by bindgen at build time, so the two
 * sides cannot drift. Only fixed-width fields with explicit padding belong here.
 */
#ifndef TAPIO_COMMON_H
#define TAPIO_COMMON_H

/* Bumped whenever any struct in an ABI header changes shape or meaning. */
#define TAPIO_ABI_VERSION 3

/*
 * Every observer's config starts with this header. Its carrier holds two copies behind a
 * latch sequence (TAPIO_CONFIG_MAP and TAPIO_READ_CONFIG in tapio_bpf.h), so a program
 * always copies one whole config. The configs' trailing generation_check fields date from
 * an earlier torn-read check; nothing reads them any more (the agent still fills them in).
 *
 * The maps start all-zero, and all-zero means inert: programs do nothing until the agent
 * writes a config whose abi_version matches the object's.
 */
struct tapio_config_header {
	__u32 abi_version;
	/* Config generation stamped on every event judged by this config (0 = local defaults). */
	__u32 generation;
};

/* Every ring-buffer record starts with this header. */
struct tapio_event_header {
	/* bpf_ktime_get_boot_ns() at the kernel moment the fact happened. */
	__u64 boot_ns;
	/* An observer-specific enum value saying which struct follows. */
	__u32 kind;
	__u32 generation;
};

/* The task a fact is about (not necessarily the task the hook ran in). */
struct tapio_task {
	/* Process id (tgid) and thread id; 0 when the task could not be attributed. */
	__u32 pid;
	__u32 tid;
	/* cgroup2 id of the task (bpf_get_current_cgroup_id() semantics). */
	__u64 cgroup_id;
	/* kernfs id of the task's memory cgroup: on hybrid/v1 nodes the cgroup2 id is the root
	 * for every task, and this is what names the container. 0 if unknown. */
	__u64 mem_cgroup_id;
	__u8 comm[16];
};

/*
 * Indexes of each object's per-CPU "counters" array: every place the kernel side can lose
 * or refuse evidence has one.
 */
enum tapio_counter {
	/* bpf_ringbuf_reserve failed: an event was lost in the kernel. */
	TAPIO_CNT_RINGBUF_FULL = 0,
	/* The config map holds another ABI version: the program stayed inert. */
	TAPIO_CNT_ABI_MISMATCH = 1,
	/* A bounded correlation table had no room for a new entry. */
	TAPIO_CNT_TABLE_FULL = 2,
	/* A fact could not be classified without guessing, so it was dropped. */
	TAPIO_CNT_AMBIGUOUS = 3,
	/* The running kernel lacks what this program needs (checked with CO-RE). */
	TAPIO_CNT_UNSUPPORTED = 4,
	/* The config changed under every copy a program made (TAPIO_CONFIG_TRIES): not used. */
	TAPIO_CNT_CONFIG_TORN = 5,
	/* Slots from here on are observer-specific: each observer's header names its own (e.g.
	 * one per correlation drop reason), and the agent reports them under those names. */
	TAPIO_CNT_OBSERVER_BASE = 8,
	TAPIO_CNT_MAX = 16,
};

#endif
