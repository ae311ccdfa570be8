/* SPDX-License-Identifier: Apache-2.0 OR GPL-2.0-only */
/* The network observer's kernel ABI: its config carrier and its one event record. */
#ifndef TAPIO_NETWORK_H
#define TAPIO_NETWORK_H

#include "tapio_common.h"

/* The network object's event rings together, shared by the CPUs' rings (the agent gives
 * each CPU a power-of-two share, `tapio_bpf::per_cpu_ring_bytes`). 512 KiB: 5,460 IPv4
 * connect failures (96 bytes each in a ring, 4,096 of the 128-byte others), tens of milliseconds of the fastest refused-connect
 * flood this project's machine makes. The agent maps a ring's data twice, so every byte is
 * two of its resident set. */
#define TAPIO_NET_EVENTS_RING_BYTES (1 << 19)

/* Entries of the table of connects in SYN_SENT (network.bpf.c: `connect_slots`, or the
 * `connects` hash on kernels without BPF compare-and-swap), as the agent sizes it at load. */
enum tapio_net_table {
	TAPIO_NET_CONNECT_SLOTS = 16384,
};

/* Bits of tapio_net_config.enabled: each evidence family can be switched off. */
enum tapio_net_enable {
	TAPIO_NET_EN_CONNECT = 1 << 0,
	TAPIO_NET_EN_RESET = 1 << 1,
	TAPIO_NET_EN_RETRANSMIT = 1 << 2,
	TAPIO_NET_EN_RTT = 1 << 3,
};

struct tapio_net_config {
	struct tapio_config_header hdr;
	__u32 enabled;
	/* Retransmit spike: this many retransmits of one connection within the window. */
	__u32 retransmit_window_ms;
	__u32 retransmit_count;
	/* RTT degradation: srtt > baseline * ratio_percent / 100, or > ceiling_us. */
	__u32 rtt_ratio_percent;
	__u32 rtt_ceiling_us;
	/* Samples a destination's baseline needs before it is judged. */
	__u32 rtt_min_samples;
	/* A ratio crossing also needs srtt >= baseline + this: microsecond-scale baselines
	 * (same-node traffic) jitter by multiples without anything being wrong. */
	__u32 rtt_min_increase_us;
	/* 1: also record the connecting task's memory-cgroup id. Only hybrid/v1 nodes need it
	 * (there every task's cgroup2 id is the root); it costs a few reads per connect. */
	__u32 capture_memcg;
	/* The local ephemeral port range: tells client sockets from server sockets. */
	__u16 ephemeral_port_min;
	__u16 ephemeral_port_max;
	__u32 generation_check;
	__u32 _pad;
};

enum tapio_net_kind {
	/* An active connect left SYN_SENT for CLOSE with an error. */
	TAPIO_NET_CONNECT_FAILED = 1,
	/* An RST arrived on a synchronized connection. */
	TAPIO_NET_RESET = 2,
	TAPIO_NET_RETRANSMIT_SPIKE = 3,
	TAPIO_NET_RTT_DEGRADED = 4,
	/* An IPv4 connect failure, as the compact struct tapio_net_connect4. */
	TAPIO_NET_CONNECT_FAILED_V4 = 5,
};

/* Bits of tapio_net_event.flags. */
enum tapio_net_flag {
	/* An RST was received while the connect was in SYN_SENT. */
	TAPIO_NET_F_RST_IN_SYN_SENT = 1 << 0,
	/* The task was recorded when the connect started (else task is zero). */
	TAPIO_NET_F_TASK_KNOWN = 1 << 1,
	/* The start of the connect was observed (duration_ns is meaningful). */
	TAPIO_NET_F_START_KNOWN = 1 << 2,
	/* sk_err was empty; sk_err holds the socket's soft error (an ICMP error the kernel
	 * recorded without ending the connect; the application then gave up). */
	TAPIO_NET_F_SOFT_ERROR = 1 << 3,
	/* Reset: the local application had already shut down reading, in FIN_WAIT1/2. Then
	 * the kernel itself calls tcp_reset() when data arrives (TCPAbortOnData), and this
	 * hook cannot tell that abort from an RST that came from the network. */
	TAPIO_NET_F_LOCAL_SHUTDOWN = 1 << 4,
};

/*
 * One record layout for every kind but the IPv4 connect failure (tapio_net_connect4, below).
 * An IPv6 connect failure (like the IPv4 one, a kind a flood makes, once per failed connect)
 * fills nothing past duration_ns, so its record is only the prefix that ends before
 * bytes_acked: 120 bytes instead of 168, and a ring holds 40 % more of them. The agent
 * decodes that kind from exactly that prefix (the rest reads as zero).
 */
struct tapio_net_event {
	struct tapio_event_header hdr;
	struct tapio_task task;
	/* IPv4 addresses use the first 4 bytes. Ports in host byte order. */
	__u8 saddr[16];
	__u8 daddr[16];
	__u16 sport;
	__u16 dport;
	__u16 family;
	__u16 flags;
	/* TCP state when the fact happened (reset) or that was left (connect failure). */
	__u32 state;
	/* sk_err (positive errno) when the connect ended. */
	__u32 sk_err;
	/* SYN retransmits of a failed connect. */
	__u32 syn_retries;
	/* connect() start to failure. */
	__u64 duration_ns;
	__u64 bytes_acked;
	__u64 bytes_received;
	/* Retransmit spike facts. */
	__u32 retransmits_in_window;
	__u32 window_ms;
	__u32 total_retransmits;
	__u32 cwnd;
	/* Smoothed RTT (all kinds where known), and the RTT baseline facts. */
	__u32 srtt_us;
	__u32 baseline_us;
	__u32 baseline_samples;
	__u32 _pad;
};

/*
 * An IPv4 connect failure: the facts of the prefix above with 4-byte addresses and without
 * the state (always SYN_SENT), 88 bytes instead of 120. A CPU's ring holds a third more of
 * these (2,730 against 2,048 in 256 KiB), so an agent kept off the CPU for a while loses
 * none of them for that much longer. The agent decodes it into the shared layout.
 */
struct tapio_net_connect4 {
	struct tapio_event_header hdr;
	struct tapio_task task;
	__u8 saddr[4];
	__u8 daddr[4];
	__u16 sport;
	__u16 dport;
	__u16 flags;
	__u16 _pad;
	__u32 sk_err;
	__u32 syn_retries;
	__u64 duration_ns;
};

#endif
