/* SPDX-License-Identifier: Apache-2.0 OR GPL-2.0-only */
/*
 * The few kernel types Tapio's eBPF programs read, declared for CO-RE.
 *
 * Only the fields used are declared, and every type carries preserve_access_index, so
 * libbpf relocates each access against the running kernel's BTF at load time: offsets here
 * do not matter, names do. A small curated header keeps builds independent of the build
 * machine's kernel (a full vmlinux.h is 2.8 MB and ties the build to one kernel).
 */
#ifndef TAPIO_VMLINUX_H
#define TAPIO_VMLINUX_H

typedef signed char __s8;
typedef unsigned char __u8;
typedef short __s16;
typedef unsigned short __u16;
typedef int __s32;
typedef unsigned int __u32;
typedef long long __s64;
typedef unsigned long long __u64;
typedef __u16 __be16;
typedef __u32 __be32;
typedef __u32 __wsum;
typedef _Bool bool;
typedef __u32 uid_t;
typedef int pid_t;
#define true 1
#define false 0

enum bpf_map_type {
	BPF_MAP_TYPE_HASH = 1,
	BPF_MAP_TYPE_ARRAY = 2,
	BPF_MAP_TYPE_PERCPU_ARRAY = 6,
	BPF_MAP_TYPE_LRU_HASH = 9,
	BPF_MAP_TYPE_ARRAY_OF_MAPS = 12,
	BPF_MAP_TYPE_RINGBUF = 27,
};

enum {
	BPF_RB_NO_WAKEUP = 1,
	BPF_RB_FORCE_WAKEUP = 2,
};

enum {
	BPF_RB_AVAIL_DATA = 0,
	BPF_RB_RING_SIZE = 1,
};

enum {
	BPF_ANY = 0,
	BPF_NOEXIST = 1,
	BPF_EXIST = 2,
};

#pragma clang attribute push(__attribute__((preserve_access_index)), apply_to = record)

typedef struct {
	int counter;
} atomic_t;

typedef struct {
	long counter;
} atomic_long_t;

struct in6_addr {
	union {
		__u8 u6_addr8[16];
	} in6_u;
};

struct sock_common {
	__be32 skc_daddr;
	__be32 skc_rcv_saddr;
	__be16 skc_dport;
	__u16 skc_num;
	unsigned short skc_family;
	volatile unsigned char skc_state;
	struct in6_addr skc_v6_daddr;
	struct in6_addr skc_v6_rcv_saddr;
};

struct sock {
	struct sock_common __sk_common;
	int sk_err;
	int sk_err_soft;
	/* A plain byte on current kernels; read with BPF_CORE_READ_BITFIELD_PROBED so an
	 * older bitfield layout relocates too. */
	__u8 sk_shutdown;
	/* A whole u16 since 5.6 (older kernels, not supported, had a bitfield). */
	__u16 sk_protocol;
};

/* The local port a socket's segments carry. (skc_num is that port too, but the kernel
 * zeroes it when it releases the port: before the last state change is traced, on current
 * kernels.) */
struct inet_sock {
	struct sock sk;
	__be16 inet_sport;
};

struct inet_connection_sock {
	struct inet_sock icsk_inet;
};

struct tcp_sock {
	struct inet_connection_sock inet_conn;
	__u32 srtt_us;
	__u32 snd_nxt;
	__u32 snd_una;
	__u32 snd_cwnd;
	__u32 total_retrans;
	__u64 bytes_acked;
	__u64 bytes_received;
};

struct kernfs_node {
	__u64 id;
};

struct cgroup {
	struct kernfs_node *kn;
};

struct cgroup_subsys_state {
	struct cgroup *cgroup;
};

struct css_set {
	struct cgroup_subsys_state *subsys[16];
	struct cgroup *dfl_cgrp;
};

struct page_counter {
	atomic_long_t usage;
	unsigned long max;
};

struct mem_cgroup {
	struct cgroup_subsys_state css;
	struct page_counter memory;
};

struct percpu_counter {
	__s64 count;
};

/* Since 6.2 the rss counters are percpu_counters. */
struct mm_struct {
	struct percpu_counter rss_stat[4];
	unsigned long total_vm;
	atomic_long_t pgtables_bytes;
};

/* Before 6.2: an array of atomics (handled as a CO-RE flavour). */
struct mm_rss_stat {
	atomic_long_t count[4];
};

struct mm_struct___pre62 {
	struct mm_rss_stat rss_stat;
};

struct signal_struct {
	atomic_t live;
	int nr_threads;
	int group_exit_code;
	unsigned int flags;
	short oom_score_adj;
};

typedef struct {
	uid_t val;
} kuid_t;

struct cred {
	kuid_t uid;
};

struct task_struct {
	pid_t pid;
	pid_t tgid;
	char comm[16];
	int exit_code;
	__u64 start_boottime;
	struct task_struct *group_leader;
	struct signal_struct *signal;
	struct css_set *cgroups;
	struct mm_struct *mm;
	const struct cred *real_cred;
};

struct trace_entry {
	unsigned short type;
};

/* tcp:tcp_retransmit_skb since 6.11 (its own event, with err). */
struct trace_event_raw_tcp_retransmit_skb {
	struct trace_entry ent;
	const void *skbaddr;
	const void *skaddr;
	int state;
	int err;
};

/* tcp:tcp_retransmit_skb before 6.11 (event class tcp_event_sk_skb). */
struct trace_event_raw_tcp_event_sk_skb {
	struct trace_entry ent;
	const void *skbaddr;
	const void *skaddr;
	int state;
};

/* A socket buffer's segment count (tcp_skb_pcount): skb_shinfo(skb)->gso_segs, the shared
 * info living at head + end (end is an offset on 64-bit kernels). */
struct sk_buff {
	unsigned char *head;
	unsigned int end;
};

struct skb_shared_info {
	__u16 gso_segs;
};

/* sched:sched_process_exit: only group_dead's existence is asked (the program is tp_btf). */
struct trace_event_raw_sched_process_exit {
	struct trace_entry ent;
	char comm[16];
	pid_t pid;
	bool group_dead;
};

/* cgroup:cgroup_mkdir (and the other cgroup events of this class). */
struct trace_event_raw_cgroup {
	struct trace_entry ent;
	int root;
	int level;
	__u64 id;
	__u32 __data_loc_path;
};

struct trace_event_raw_mark_victim {
	struct trace_entry ent;
	int pid;
	unsigned long anon_rss;
};

/* Block layer (storage observer): only what identifies and sizes a request. */
struct gendisk {
	int major;
	int first_minor;
};

struct request_queue {
	struct gendisk *disk;
};

/* Only its flags, to tell a device-mapper clone (BIO_CLONED) from a request's own bio. */
struct bio {
	unsigned short bi_flags;
};

struct request {
	struct request_queue *q;
	unsigned int cmd_flags;
	unsigned int rq_flags;
	unsigned int __data_len;
	__u64 __sector;
	struct bio *bio;
	/* A function pointer in the kernel; only whether it is set is read. */
	void *end_io;
};

/* Older kernels named the disk in the request itself (rq_disk), not in its queue. */
struct request___old {
	struct gendisk *rq_disk;
};

#pragma clang attribute pop

/* Newer kernels number request flags in this enum; before it, RQF_FLUSH_SEQ was 1 << 4. */
enum rqf_flags {
	__RQF_FLUSH_SEQ = 1,
};

/* Helper ids, only to ask the running kernel's BTF whether a helper exists. */
enum bpf_func_id {
	BPF_FUNC_get_current_task_btf = 158,
};

/* Request flag bit numbers (relocated per kernel). */
enum req_flag_bits {
	__REQ_FUA = 17,
	__REQ_PREFLUSH = 18,
};

enum cgroup_subsys_id {
	memory_cgrp_id = 4,
};

#endif
