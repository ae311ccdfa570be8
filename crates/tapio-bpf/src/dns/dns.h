/* SPDX-License-Identifier: Apache-2.0 */
/* The DNS observer's kernel ABI: its config carrier, its query table and its event record. */
#ifndef TAPIO_DNS_H
#define TAPIO_DNS_H

#include "tapio_common.h"

/* Bits of tapio_dns_config.enabled. */
enum tapio_dns_enable {
	/* Answers with an error rcode (kernel.dns.failure). */
	TAPIO_DNS_EN_FAILURE = 1 << 0,
	/* NXDOMAIN answers are failures too (off by default: ndots search lists make them routine). */
	TAPIO_DNS_EN_NXDOMAIN = 1 << 1,
	/* Answers slower than the latency thresholds (kernel.dns.latency_spike). */
	TAPIO_DNS_EN_LATENCY = 1 << 2,
	/* Queries unanswered within timeout_ms (kernel.dns.timeout; judged by the agent, and
	 * by the kernel for an answer that arrives after the timeout but before the agent's sweep). */
	TAPIO_DNS_EN_TIMEOUT = 1 << 3,
};

struct tapio_dns_config {
	struct tapio_config_header hdr;
	__u32 enabled;
	__u32 latency_warning_ms;
	__u32 latency_critical_ms;
	__u32 timeout_ms;
	/* 1: also record the querying task's memory-cgroup id (hybrid/v1 nodes). */
	__u32 capture_memcg;
	__u32 _pad;
};

/* The query name in its wire form (length-prefixed labels, ending with a zero length) as
 * the query carried it: its first TAPIO_DNS_NAME_MAX bytes; a longer name is cut there and
 * flagged (TAPIO_DNS_Q_NAME_TRUNCATED). The agent turns it into dotted, lower-cased text. */
#define TAPIO_DNS_NAME_MAX 128

/* Transport of a query (tapio_dns_query.transport). */
enum tapio_dns_transport {
	TAPIO_DNS_UDP = 1,
	TAPIO_DNS_TCP = 2,
};

/* Bits of tapio_dns_query.flags. */
enum tapio_dns_query_flag {
	/* task was recorded from the socket's owner (its connect or send, in its own context). */
	TAPIO_DNS_Q_TASK_KNOWN = 1 << 0,
	TAPIO_DNS_Q_NAME_TRUNCATED = 1 << 1,
};

/*
 * Key of an outstanding query. The socket cookie names one socket for the life of the
 * system (and so its network namespace, client address and port); the id, qtype and a
 * hash of the whole question name, as sent (a server echoes the question byte for byte,
 * its case too), keep a reused id for another question from matching. The server is not part of it: the egress hook sees a query after the
 * OUTPUT hook's DNAT (a node process asking a Service address is seen asking the backend),
 * the ingress hook sees its answer after that NAT is undone (from the Service address),
 * so a key with the server would never match and every such answered query would time
 * out. The same query sent again on the same socket, to any server, is one query.
 */
struct tapio_dns_key {
	__u64 sock_cookie;
	__u16 txid;
	__u16 qtype;
	__u32 qname_hash;
};

/* One outstanding query: everything its evidence needs, whoever judges it (the kernel at
 * the answer, or the agent's sweep at the timeout). */
struct tapio_dns_query {
	struct tapio_task task;
	/* Boot-clock time of the first and of the latest transmission. */
	__u64 first_sent_ns;
	__u64 last_sent_ns;
	/* IPv4 addresses use the first 4 bytes. Ports in host byte order. */
	__u8 client[16];
	__u8 server[16];
	__u16 client_port;
	__u16 server_port;
	__u16 family;
	__u16 txid;
	__u16 qtype;
	__u8 transport;
	__u8 flags;
	/* Transmissions seen (1 + retransmissions of the same query). */
	__u32 transmissions;
	__u8 qname[TAPIO_DNS_NAME_MAX];
};

enum tapio_dns_kind {
	/* An answer the kernel judged evidence (flags say why). */
	TAPIO_DNS_ANSWER = 1,
};

/* Bits of tapio_dns_event.verdict. */
enum tapio_dns_verdict {
	TAPIO_DNS_V_FAILURE = 1 << 0,
	TAPIO_DNS_V_LATENCY_WARNING = 1 << 1,
	TAPIO_DNS_V_LATENCY_CRITICAL = 1 << 2,
	/* Answered, but only after timeout_ms: the query timed out. */
	TAPIO_DNS_V_LATE = 1 << 3,
};

struct tapio_dns_event {
	struct tapio_event_header hdr;
	struct tapio_dns_query query;
	/* Latest transmission to the answer. */
	__u64 latency_ns;
	/* The threshold the verdict crossed (latency or timeout), in ns; 0 for a failure. */
	__u64 threshold_ns;
	__u16 rcode;
	__u16 verdict;
	__u16 answer_count;
	__u16 _pad;
	__u32 _pad2;
};

/* Observer-specific counter slots (from TAPIO_CNT_OBSERVER_BASE). */
enum tapio_dns_counter {
	/* A port-53 packet that is not a DNS message this program can read (too short, no
	 * single question, a compression pointer or an over-long name in the question). An
	 * arriving TCP segment is not counted here: what does not start a message there is
	 * mostly the rest of a long one (see tcp_unread in dns.bpf.c). */
	TAPIO_DNS_CNT_UNPARSABLE = TAPIO_CNT_OBSERVER_BASE + 0,
	/* An answer no outstanding query matches (late after the agent's timeout, a second
	 * server's after the first one's was judged, a duplicate, or the query was sent
	 * before the agent started). */
	TAPIO_DNS_CNT_UNMATCHED_ANSWER = TAPIO_CNT_OBSERVER_BASE + 1,
	/* A query sent again on the same socket, to the same or another server, or a TCP
	 * segment of queries the kernel sent again (not read again; informational). */
	TAPIO_DNS_CNT_RETRANSMISSION = TAPIO_CNT_OBSERVER_BASE + 2,
	/* A query whose socket's owner was not seen (sent on a socket connected before the
	 * agent started, or on a kernel whose owner hooks did not attach): pid unknown. */
	TAPIO_DNS_CNT_OWNER_UNKNOWN = TAPIO_CNT_OBSERVER_BASE + 3,
	/* A query not read because another packet's program on the same CPU took the scratch
	 * it was being read in (see struct scratch in dns.bpf.c). An answer interrupted that
	 * way marks its socket instead, and the agent's sweep counts it when its query would
	 * have timed out (under this name for UDP, as tcp_answer_unread for TCP). */
	TAPIO_DNS_CNT_INTERRUPTED = TAPIO_CNT_OBSERVER_BASE + 4,
	/* A TCP segment's queries not read: past the messages one segment is read for, or on a
	 * connection whose message boundaries were lost (see tcp_query_resume in dns.bpf.c). */
	TAPIO_DNS_CNT_TCP_QUERY_UNREAD = TAPIO_CNT_OBSERVER_BASE + 5,
};

#endif
