// SPDX-License-Identifier: GPL-2.0
/*
 * Tapio DNS observer, kernel side.
 *
 * Programs attached to the cgroup2 root see every socket's packets, whatever its network
 * namespace:
 *  - cgroup/connect4|6 and cgroup/sendmsg4|6 run in the caller's own context when a socket
 *    is connected to, or sends to, port 53: they record the socket's owner (pid, comm,
 *    cgroup) by socket cookie. They never change or refuse anything (always return 1).
 *  - cgroup_skb/egress parses a query leaving a socket for port 53 (UDP, or TCP with its
 *    length prefix: up to four queries a segment) and keeps it in a bounded table with the
 *    owner recorded for its socket.
 *  - cgroup_skb/ingress parses an answer arriving from port 53 (up to four a TCP segment),
 *    takes its query out of the table and judges it (error rcode, latency, answered after
 *    the timeout); a TCP segment not read whole as answers marks its connection
 *    (tcp_unread).
 * Unanswered queries are judged by the agent, which sweeps the table (see the agent's
 * observers/dns). Whoever deletes an entry first judges it, so a query is judged once.
 */
#include "tapio_bpf.h"
#include <bpf/bpf_endian.h>
#include "dns.h"

char LICENSE[] SEC("license") = "GPL";

/* The UAPI contexts of cgroup_skb and cgroup sock_addr programs (from linux/bpf.h; the
 * verifier rewrites these accesses by offset, so the layout is declared up to the last
 * field read). */
struct __sk_buff {
	__u32 len;
	__u32 pkt_type;
	__u32 mark;
	__u32 queue_mapping;
	__u32 protocol;
	__u32 vlan_present;
	__u32 vlan_tci;
	__u32 vlan_proto;
	__u32 priority;
	__u32 ingress_ifindex;
	__u32 ifindex;
	__u32 tc_index;
	__u32 cb[5];
	__u32 hash;
	__u32 tc_classid;
	__u32 data;
	__u32 data_end;
	__u32 napi_id;
	__u32 family;
	__u32 remote_ip4;
	__u32 local_ip4;
	__u32 remote_ip6[4];
	__u32 local_ip6[4];
	__u32 remote_port;
	__u32 local_port;
	__u32 data_meta;
	union {
		struct bpf_flow_keys *flow_keys;
		__u64 : 64;
	} __attribute__((aligned(8)));
	__u64 tstamp;
	__u32 wire_len;
	__u32 gso_segs;
	union {
		struct bpf_sock *sk;
		__u64 : 64;
	} __attribute__((aligned(8)));
};

/* The socket a packet program sees (5.10 declared dst_port as 32 bits; the two-byte load of
 * its first half reads the same port there). */
struct bpf_sock {
	__u32 bound_dev_if;
	__u32 family;
	__u32 type;
	__u32 protocol;
	__u32 mark;
	__u32 priority;
	__u32 src_ip4;
	__u32 src_ip6[4];
	__u32 src_port;
	__u16 dst_port;
};

/* A TCP socket's counters (bpf_tcp_sock), up to the last field read. */
struct bpf_tcp_sock {
	__u32 snd_cwnd;
	__u32 srtt_us;
	__u32 rtt_min;
	__u32 snd_ssthresh;
	__u32 rcv_nxt;
	__u32 snd_nxt;
};

struct bpf_sock_addr {
	__u32 user_family;
	__u32 user_ip4;
	__u32 user_ip6[4];
	__u32 user_port;
};

#define IPPROTO_TCP 6
#define IPPROTO_UDP 17
#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD
#define DNS_PORT 53
#define DNS_HEADER_LEN 12
/* A name on the wire is at most 255 bytes (RFC 1035 2.3.4), then qtype and qclass. */
#define DNS_NAME_WIRE_MAX 255
#define DNS_QUESTION_MAX (DNS_HEADER_LEN + DNS_NAME_WIRE_MAX + 4)
#define BUF_SIZE 512
#define BUF_MASK (BUF_SIZE - 1)

TAPIO_COUNTERS_MAP;
TAPIO_CONFIG_MAP(struct tapio_dns_config);

/* Only judged queries reach the ring (failures and slow answers; timeouts are read from
 * the query table by the agent's sweep), so a small ring holds a long burst of them; the
 * agent maps a ring twice, so every KiB here is two of its resident memory. */
#define EVENTS_RING_BYTES (1 << 16)

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, EVENTS_RING_BYTES);
} events SEC(".maps");

#define EVENTS_WAKEUP_BYTES (EVENTS_RING_BYTES / 8)

/* Owners of sockets that connected or sent to port 53, by socket cookie. LRU: losing one
 * loses only the attribution of that socket's queries (counted: owner_unknown). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 8192);
	__type(key, __u64);
	__type(value, struct tapio_task);
} owners SEC(".maps");

/* Outstanding queries. Exact, not LRU: an entry leaves only when its answer comes or the
 * agent judges it timed out, so no unanswered query is forgotten silently; a full table is
 * counted (correlation_table_full). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, struct tapio_dns_key);
	__type(value, struct tapio_dns_query);
} queries SEC(".maps");

/* TCP connections that brought bytes this program did not read as answers, by socket
 * cookie: the boot-clock time of the latest such segment. Messages are read from a
 * segment's first byte on, so one that starts inside a segment after a long answer
 * continued there, a fifth in one segment, or anything no query waits for is not read as
 * an answer. Also any socket, UDP too, whose answer's reading another packet's program
 * interrupted (see struct scratch). The agent's sweep does not judge a query timed out
 * when its socket brought such bytes after the query's latest transmission: its answer may
 * be among them (counted: dns.tcp_answer_unread, or dns.packet_interrupted for UDP). As
 * many as the query table can hold queries; the least recently marked socket goes first. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64);
	__type(value, __u64);
} tcp_unread SEC(".maps");

/* A tcp_unread mark: when, its lowest bit saying why (the agent names the count by it): 1
 * for a UDP datagram from the server that is no readable message, 0 for the rest. */
static __always_inline void mark_unread(__u64 cookie, __u64 now, __u64 unparsable_udp)
{
	__u64 mark = (now & ~1ULL) | unparsable_udp;
	bpf_map_update_elem(&tcp_unread, &cookie, &mark, BPF_ANY);
}

/*
 * TCP connections whose queries were read up to a message that goes on in a later segment,
 * by socket cookie: the sequence number where the next message begins, or TCP_RESUME_LOST
 * when that is not known (a length cut by the segment's end, more messages in a segment
 * than are followed, or bytes this program did not see). A segment is read from that
 * message on, never from a byte inside one: read from the segment's first byte, the rest of
 * a message would be taken for a length and a message, and bytes of a query (its name, an
 * option) can read as another query, a phantom nobody answers, judged `timeout` by the
 * sweep. A lost connection's queries are not read again (dns.tcp_query_unread). An LRU
 * map: a connection whose mark was pushed out is read from its next segment's first byte.
 */
#define TCP_RESUME_LOST (1ULL << 32)

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 1024);
	__type(key, __u64);
	__type(value, __u64);
} tcp_query_resume SEC(".maps");

/* What the IP and transport headers said. */
struct l4 {
	__u32 payload; /* offset of the DNS message */
	__u32 addrs; /* offset of the source address; the destination follows it */
	__u32 tcp; /* offset of the TCP header (TCP only) */
	__u16 sport;
	__u16 dport;
	__u16 family;
	__u8 transport;
};

/*
 * Per-CPU scratch: the packet bytes being parsed and the record being built (too large
 * for the 512-byte stack). One for queries leaving and one for answers arriving: a packet
 * program is not protected from another on its CPU. A query's program runs in the sending
 * task's context and a softirq can interrupt it, receive an answer and run the answer's
 * program there; with one scratch the answer's would overwrite the query being read, and
 * the query's program would then record the answer's name and addresses under its owner
 * (a false timeout of the wrong process). Answers arrive in softirq, which does not nest.
 * The rarer nestings left (a query sent from softirq while a task's query is being read,
 * or, on a fully preemptible kernel, a task preempted inside the program) are caught by
 * `token`: each packet writes a random one when it takes the scratch and checks it before
 * the table is touched; a query whose token was overwritten is not read, and counted
 * (`dns.packet_interrupted`); an answer marks its socket (see tcp_unread).
 */
#define SCRATCH_QUERIES 0
#define SCRATCH_ANSWERS 1

struct scratch {
	__u8 buf[BUF_SIZE];
	struct tapio_dns_key key;
	struct tapio_dns_event ev;
	/* The packet's headers, for the global functions below (they take scalars only). */
	struct l4 pkt;
	/* The question name's wire length, passed through memory on purpose (see below). */
	__u32 name_len;
	/* Written by the packet that took this scratch (see above). */
	__u32 token;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, struct scratch);
} scratch_map SEC(".maps");

/* ---- owners: process context ---- */

/* A global function (verified once, shared by the four hooks below instead of inlined in
 * each): records the caller as the owner of a socket connecting or sending to port 53. */
__attribute__((noinline)) int tapio_dns_remember_owner(struct bpf_sock_addr *ctx)
{
	if (ctx->user_port != bpf_htons(DNS_PORT))
		return 0;
	struct tapio_dns_config *live = TAPIO_CONFIG_LIVE(&config);
	if (!live || !live->enabled)
		return 0;
	__u64 cookie = bpf_get_socket_cookie(ctx);
	struct tapio_task t = {};
	__u64 id = bpf_get_current_pid_tgid();
	t.pid = id >> 32;
	t.tid = (__u32)id;
	t.cgroup_id = bpf_get_current_cgroup_id();
	bpf_get_current_comm(&t.comm, sizeof(t.comm));
	if (live->capture_memcg && bpf_core_enum_value_exists(enum bpf_func_id, BPF_FUNC_get_current_task_btf))
		t.mem_cgroup_id = tapio_task_memcg_id(bpf_get_current_task_btf());
	bpf_map_update_elem(&owners, &cookie, &t, BPF_ANY);
	return 0;
}

SEC("cgroup/connect4")
int tapio_dns_conn4(struct bpf_sock_addr *ctx)
{
	tapio_dns_remember_owner(ctx);
	return 1;
}

SEC("cgroup/connect6")
int tapio_dns_conn6(struct bpf_sock_addr *ctx)
{
	tapio_dns_remember_owner(ctx);
	return 1;
}

SEC("cgroup/sendmsg4")
int tapio_dns_send4(struct bpf_sock_addr *ctx)
{
	tapio_dns_remember_owner(ctx);
	return 1;
}

SEC("cgroup/sendmsg6")
int tapio_dns_send6(struct bpf_sock_addr *ctx)
{
	tapio_dns_remember_owner(ctx);
	return 1;
}

/* ---- packets ---- */

/*
 * Reads the IP and transport headers; 0 when the packet is not UDP or TCP (IPv6 extension
 * headers are not followed: such packets are not read). Every packet on the node passes
 * here, so the common case is one helper call: an IPv4 header without options and the
 * ports that follow it are read together. Addresses are left in the packet until the port
 * says DNS (see `dns_packet`).
 */
static __always_inline int read_l4(struct __sk_buff *skb, struct l4 *l)
{
	struct {
		__u8 vihl, tos;
		__u16 tot_len, id, frag_off;
		__u8 ttl, protocol;
		__u16 check;
		__u32 saddr, daddr;
		__u16 ports[2]; /* when the header has no options */
	} head;
	if (bpf_skb_load_bytes(skb, 0, &head, sizeof(head)))
		return 0;
	__u32 off;
	__u8 proto;
	__u16 ports[2];
	if ((head.vihl >> 4) == 4) {
		/* Not a first fragment: no transport header. */
		if (bpf_ntohs(head.frag_off) & 0x1fff)
			return 0;
		off = (head.vihl & 0xf) * 4;
		proto = head.protocol;
		l->family = AF_INET;
		l->addrs = 12;
	} else if ((head.vihl >> 4) == 6) {
		/* next header: the seventh byte of an IPv6 header */
		off = 40;
		proto = ((__u8 *)&head)[6];
		l->family = AF_INET6;
		l->addrs = 8;
	} else {
		return 0;
	}
	if (proto != IPPROTO_UDP && proto != IPPROTO_TCP)
		return 0;
	if (off == 20) {
		ports[0] = head.ports[0];
		ports[1] = head.ports[1];
	} else if (bpf_skb_load_bytes(skb, off, ports, sizeof(ports))) {
		return 0;
	}
	l->sport = bpf_ntohs(ports[0]);
	l->dport = bpf_ntohs(ports[1]);
	if (proto == IPPROTO_UDP) {
		l->payload = off + 8;
		l->transport = TAPIO_DNS_UDP;
	} else {
		/* The data offset: the upper nibble of the TCP header's 13th byte. */
		__u8 doff_res;
		if (bpf_skb_load_bytes(skb, off + 12, &doff_res, 1))
			return 0;
		/* DNS over TCP: a two-byte length, then the message. */
		l->tcp = off;
		l->payload = off + (doff_res >> 4) * 4 + 2;
		l->transport = TAPIO_DNS_TCP;
	}
	return 1;
}

/*
 * Parses the DNS header and the single question of the message at `payload` into this
 * CPU's scratch `which` (key fields, query name, qtype, answer count). Returns the header's flags
 * word, or -1 when the message cannot be read.
 *
 * A global (not inlined) function: the verifier checks it once, on its own, instead of once
 * per combination of what the caller knows (family, transport, …), which multiplied the
 * bounded name walk past the verifier's budget.
 */
/* Labels a name can have: 255 bytes on the wire hold at most 127 one-byte labels. */
#define DNS_LABELS_MAX 128

__attribute__((noinline)) int tapio_dns_parse(struct __sk_buff *skb, __u32 payload, __u32 which)
{
	struct scratch *s = bpf_map_lookup_elem(&scratch_map, &which);
	if (!s)
		return -1;
	__u32 len = skb->len;
	if (len <= payload)
		return -1;
	__u64 avail = len - payload; /* 64-bit: bounds checked on the register itself */
	if (avail > DNS_QUESTION_MAX)
		avail = DNS_QUESTION_MAX;
	/* A no-op the compiler must keep: the verifier needs to see the bounds on the register
	 * the helper gets (the compiler would otherwise test a copy). */
	asm volatile("%[v] &= 511" : [v] "+r"(avail));
	/* Header, a one-byte root name, qtype and qclass at the least. */
	if (avail < DNS_HEADER_LEN + 5)
		return -1;
	if (bpf_skb_load_bytes(skb, payload, s->buf, avail))
		return -1;
	__u8 *b = s->buf;
	__u16 flags = ((__u16)b[2] << 8) | b[3];
	__u16 qdcount = ((__u16)b[4] << 8) | b[5];
	if (qdcount != 1)
		return -1;
	s->key.txid = ((__u16)b[0] << 8) | b[1];
	s->ev.query.txid = s->key.txid;
	s->ev.answer_count = ((__u16)b[6] << 8) | b[7];

	/* Walk the labels to the name's end: lengths only, a few branches per label. */
	__u32 pos = DNS_HEADER_LEN;
	int done = 0;
	for (int i = 0; i < DNS_LABELS_MAX; i++) {
		__u8 label = b[pos & BUF_MASK];
		if (label == 0) {
			done = 1;
			break;
		}
		/* A compression pointer (or a reserved label type) in the question: refused. */
		if (label & 0xc0)
			return -1;
		pos += label + 1;
		if (pos >= avail)
			return -1;
	}
	if (!done)
		return -1;
	/* The name on the wire, terminating zero included. It is read back from memory: each
	 * label count would otherwise bring its own range of `pos` into the rest, and the
	 * verifier would walk the loop below once per count. */
	s->name_len = pos + 1 - DNS_HEADER_LEN;
	__u32 name_len = *(volatile __u32 *)&s->name_len;
	pos = DNS_HEADER_LEN + name_len - 1;
	if (name_len > DNS_NAME_WIRE_MAX || pos + 5 > avail)
		return -1;
	/* Matching uses the name exactly as sent: a server echoes the question byte for byte
	 * (also its mixed case, where a resolver randomizes it). One exit per step, no other
	 * branch: the verifier walks it once. */
	__u32 hash = 2166136261u; /* FNV-1a */
	for (int i = 0; i < DNS_NAME_WIRE_MAX; i++) {
		if (i >= name_len)
			break;
		hash = (hash ^ b[(DNS_HEADER_LEN + i) & BUF_MASK]) * 16777619u;
	}
	/* The agent turns the wire form into text (dotted, lower-cased). */
	__builtin_memcpy(s->ev.query.qname, b + DNS_HEADER_LEN, TAPIO_DNS_NAME_MAX);
	if (name_len > TAPIO_DNS_NAME_MAX)
		s->ev.query.flags |= TAPIO_DNS_Q_NAME_TRUNCATED;
	pos += 1;
	__u16 qtype = ((__u16)b[pos & BUF_MASK] << 8) | b[(pos + 1) & BUF_MASK];
	s->key.qtype = qtype;
	s->key.qname_hash = hash;
	s->ev.query.qtype = qtype;
	return flags;
}

/*
 * The start both packet programs share: this CPU's scratch for the direction, cleared,
 * with the packet's addresses in the query record and a new token (also in *token), when
 * the packet is DNS in the direction asked (a query to port 53, or an answer from it) and
 * carries a message; NULL for anything else. The port is judged before anything is
 * cleared or copied: almost no packet is DNS.
 */
static __always_inline struct scratch *dns_packet(struct __sk_buff *skb, struct l4 *l,
						  int answer, __u32 *token)
{
	/* A TCP connection's segments all go to, and come from, its peer's port: a connection
	 * whose peer port is not 53 carries no query and no answer, and is told from its socket
	 * without reading the packet. (Request and time-wait sockets are not full sockets and
	 * take the parse below; so does every UDP socket, as a connected one may still send to
	 * another address.) */
	struct bpf_sock *sk = skb->sk;
	if (sk) {
		struct bpf_sock *full = bpf_sk_fullsock(sk);
		if (full && full->protocol == IPPROTO_TCP && full->dst_port != bpf_htons(DNS_PORT))
			return NULL;
	}
	struct tapio_dns_config *live = TAPIO_CONFIG_LIVE(&config);
	if (!live || !live->enabled)
		return NULL;
	if (!read_l4(skb, l) || (answer ? l->sport : l->dport) != DNS_PORT)
		return NULL;
	/* A TCP segment without data (handshake, acknowledgements) is not a message. */
	if (l->transport == TAPIO_DNS_TCP && skb->len <= l->payload)
		return NULL;
	__u32 which = answer ? SCRATCH_ANSWERS : SCRATCH_QUERIES;
	struct scratch *s = bpf_map_lookup_elem(&scratch_map, &which);
	if (!s)
		return NULL;
	*token = bpf_get_prandom_u32();
	s->token = *token;
	__builtin_memset(&s->key, 0, sizeof(s->key));
	__builtin_memset(&s->ev, 0, sizeof(s->ev));
	s->pkt = *l;
	/* An answer comes from the server (source) to the client (destination). */
	__u8 *src = answer ? s->ev.query.server : s->ev.query.client;
	__u8 *dst = answer ? s->ev.query.client : s->ev.query.server;
	__u32 alen = l->family == AF_INET ? 4 : 16;
	if (bpf_skb_load_bytes(skb, l->addrs, src, alen) ||
	    bpf_skb_load_bytes(skb, l->addrs + alen, dst, alen))
		return NULL;
	return s;
}

/* Messages read from one TCP segment: a client may write pipelined queries together (glibc
 * writes its A and AAAA queries at once), a server their answers, and GRO merges segments.
 * What a segment holds beyond them is not read (an answer among it is counted by the
 * agent's sweep, see tcp_unread). */
#define TCP_MESSAGES_MAX 4
/* The loops over a segment's messages are unrolled: 5.10 and 6.1 refuse a loop whose way
 * back is a helper call's fall-through ("back-edge from insn …"), however bounded. */

/* The offset where the TCP message whose body starts at `payload` ends (by its length
 * prefix, the two bytes before), or 0 when the prefix cannot be read. */
static __always_inline __u64 tcp_message_end(struct __sk_buff *skb, __u32 payload)
{
	__u16 prefix;
	if (bpf_skb_load_bytes(skb, payload - 2, &prefix, sizeof(prefix)))
		return 0;
	return (__u64)payload + bpf_ntohs(prefix);
}

/*
 * Where the TCP message at `payload` ends: 0 when the segment ends with it, the offset of
 * the next message when one follows in the segment, -1 when the segment does not end at a
 * message's end (the message goes on in a later segment, or the next one's length is cut).
 */
static __always_inline long tcp_next_message(struct __sk_buff *skb, __u32 payload)
{
	__u64 end = tcp_message_end(skb, payload);
	if (!end)
		return -1;
	if (end == skb->len)
		return 0;
	if (end + 2 >= skb->len)
		return -1;
	return end + 2;
}

/*
 * Records the query at `payload` in the table (or a retransmission of one it holds). A
 * global function, verified once whatever calls it: the unrolled loop over a segment's
 * messages stays a few calls. The packet's headers are in this CPU's scratch.
 */
__attribute__((noinline)) int tapio_dns_query_out(struct __sk_buff *skb, __u32 payload, __u64 now, __u64 cookie,
					      __u32 token)
{
	__u32 which = SCRATCH_QUERIES;
	struct scratch *s = bpf_map_lookup_elem(&scratch_map, &which);
	if (!s)
		return 0;
	struct l4 *l = &s->pkt;
	struct tapio_dns_query *q = &s->ev.query;
	q->flags = 0;
	int flags = tapio_dns_parse(skb, payload, SCRATCH_QUERIES);
	if (flags < 0) {
		tapio_count(&counters, TAPIO_DNS_CNT_UNPARSABLE);
		return 0;
	}
	/* Only standard queries (QR = 0, opcode QUERY) are timed. */
	if (flags & 0xf800)
		return 0;

	s->key.sock_cookie = cookie;
	q->client_port = l->sport;
	q->server_port = l->dport;
	q->family = l->family;
	q->transport = l->transport;
	q->first_sent_ns = now;
	q->last_sent_ns = now;
	q->transmissions = 1;

	/* Another packet's program took the scratch meanwhile (see struct scratch): what it
	 * holds may be that packet's. */
	if (s->token != token) {
		tapio_count(&counters, TAPIO_DNS_CNT_INTERRUPTED);
		return 0;
	}
	struct tapio_dns_query *known = bpf_map_lookup_elem(&queries, &s->key);
	if (known) {
		/* The same query again on the same socket: one query. */
		__sync_fetch_and_add(&known->transmissions, 1);
		known->last_sent_ns = now;
		tapio_count(&counters, TAPIO_DNS_CNT_RETRANSMISSION);
		return 1;
	}
	struct tapio_task *owner = bpf_map_lookup_elem(&owners, &cookie);
	if (owner) {
		q->task = *owner;
		q->flags |= TAPIO_DNS_Q_TASK_KNOWN;
	} else {
		/* The socket's own cgroup (set when it was created), never the current task's. */
		__builtin_memset(&q->task, 0, sizeof(q->task));
		q->task.cgroup_id = bpf_skb_cgroup_id(skb);
		tapio_count(&counters, TAPIO_DNS_CNT_OWNER_UNKNOWN);
	}
	long err = bpf_map_update_elem(&queries, &s->key, q, BPF_NOEXIST);
	if (err == -17 /* EEXIST: a copy on another CPU won the race */) {
		known = bpf_map_lookup_elem(&queries, &s->key);
		if (known)
			__sync_fetch_and_add(&known->transmissions, 1);
		tapio_count(&counters, TAPIO_DNS_CNT_RETRANSMISSION);
	} else if (err) {
		tapio_count(&counters, TAPIO_CNT_TABLE_FULL);
	}
	return 1;
}

/*
 * Whether a TCP segment leaving, starting at sequence number `seq`, is one the kernel
 * sends again: it starts before the socket's next new byte (the hook runs inside the
 * transmission, before a new segment advances snd_nxt). The application wrote its queries once; read again, a retransmission
 * would move their latency's start, and one sent after its query was judged `timeout`
 * (a server gone mid-connection is retransmitted to for minutes) would be a new query
 * and another timeout. Unknown (no full socket) counts as new.
 */
static __always_inline int tcp_sent_again(struct __sk_buff *skb, __u32 seq)
{
	struct bpf_sock *sk = skb->sk;
	if (!sk)
		return 0;
	sk = bpf_sk_fullsock(sk);
	if (!sk)
		return 0;
	struct bpf_tcp_sock *tp = bpf_tcp_sock(sk);
	if (!tp)
		return 0;
	return (__s32)(seq - tp->snd_nxt) < 0;
}

/* Messages of a segment past the TCP_MESSAGES_MAX read whose lengths are followed (not
 * read, counted), so that the next segment is still read from a message's start. */
#define TCP_MESSAGES_SKIPPED_MAX 12

/* Marks connection `cookie`'s queries as no longer followed (see tcp_query_resume). */
static __always_inline void tcp_queries_lost(__u64 cookie)
{
	__u64 lost = TCP_RESUME_LOST;
	bpf_map_update_elem(&tcp_query_resume, &cookie, &lost, BPF_ANY);
	tapio_count(&counters, TAPIO_DNS_CNT_TCP_QUERY_UNREAD);
}

/*
 * Records the queries of a TCP segment sent for the first time, message after message
 * from where the connection's last message ended (tcp_query_resume), and marks where the
 * next segment's first message begins when this one ends inside a message.
 */
static __always_inline void tcp_queries_out(struct __sk_buff *skb, const struct l4 *l, __u32 seq,
					    __u64 now, __u64 cookie, __u32 token)
{
	/* Offsets in the packet: where the segment's data begins, and the next message. */
	__u32 data = l->payload - 2;
	__u64 len = skb->len;
	__u64 at = data;
	__u64 *mark = bpf_map_lookup_elem(&tcp_query_resume, &cookie);
	if (mark) {
		__u64 resume = *mark;
		if (resume & TCP_RESUME_LOST) {
			tapio_count(&counters, TAPIO_DNS_CNT_TCP_QUERY_UNREAD);
			return;
		}
		__s32 ahead = (__s32)((__u32)resume - seq);
		if (ahead < 0) {
			/* The message began in bytes not seen here. */
			tcp_queries_lost(cookie);
			return;
		}
		/* The whole segment is inside the message that goes on: the mark stands. */
		if ((__u64)ahead >= len - data)
			return;
		at = data + ahead;
		bpf_map_delete_elem(&tcp_query_resume, &cookie);
	}
	int goes_on = 0;
#pragma unroll
	for (int i = 0; i < TCP_MESSAGES_MAX + TCP_MESSAGES_SKIPPED_MAX; i++) {
		if (at == len)
			return;
		/* The next message's length is cut: it begins at `at`. */
		if (at + 2 > len) {
			goes_on = 1;
			break;
		}
		if (i < TCP_MESSAGES_MAX)
			tapio_dns_query_out(skb, at + 2, now, cookie, token);
		else
			tapio_count(&counters, TAPIO_DNS_CNT_TCP_QUERY_UNREAD);
		__u64 end = tcp_message_end(skb, at + 2);
		if (!end)
			break;
		at = end;
		/* The message goes on in a later segment; the next one begins at its end. */
		if (end > len) {
			goes_on = 1;
			break;
		}
	}
	if (at == len)
		return;
	if (!goes_on) {
		tcp_queries_lost(cookie);
		return;
	}
	__u64 next = (__u32)(seq + (__u32)(at - data));
	bpf_map_update_elem(&tcp_query_resume, &cookie, &next, BPF_ANY);
}

SEC("cgroup_skb/egress")
int tapio_dns_out(struct __sk_buff *skb)
{
	struct l4 l = {};
	__u32 token = 0;
	struct scratch *s = dns_packet(skb, &l, 0, &token);
	if (!s)
		return 1;
	__u64 now = bpf_ktime_get_boot_ns();
	__u64 cookie = bpf_get_socket_cookie(skb);
	if (l.transport != TAPIO_DNS_TCP) {
		tapio_dns_query_out(skb, l.payload, now, cookie, token);
		return 1;
	}
	/* The segment's sequence number, read once for both tests below. */
	__u32 seq;
	if (bpf_skb_load_bytes(skb, l.tcp + 4, &seq, sizeof(seq)))
		return 1;
	seq = bpf_ntohl(seq);
	if (tcp_sent_again(skb, seq)) {
		tapio_count(&counters, TAPIO_DNS_CNT_RETRANSMISSION);
		return 1;
	}
	tcp_queries_out(skb, &l, seq, now, cookie, token);
	return 1;
}

/*
 * Reads the answer at `payload` in an ingress packet, takes its query out of the table and
 * judges it. Returns 1 when the message was an answer to an outstanding query (judged here,
 * or by the sweep that won the race for its entry), 0 for anything else. A global function,
 * as tapio_dns_query_out.
 */
__attribute__((noinline)) int tapio_dns_answer(struct __sk_buff *skb, __u32 payload, __u64 now, __u64 cookie,
					   __u32 token)
{
	__u32 which = SCRATCH_ANSWERS;
	struct scratch *s = bpf_map_lookup_elem(&scratch_map, &which);
	if (!s)
		return 0;
	struct l4 *l = &s->pkt;
	int flags = tapio_dns_parse(skb, payload, SCRATCH_ANSWERS);
	if (flags < 0) {
		/* Over TCP, bytes that do not start a message are mostly the rest of a long one, not
		 * a loss: they only mark the connection (the caller), and an answer among them is
		 * counted when its query would time out. */
		if (l->transport != TAPIO_DNS_TCP) {
			tapio_count(&counters, TAPIO_DNS_CNT_UNPARSABLE);
			/* It may be the answer its socket's query waits for (an error answer
			 * without the question, as a server sends for a query it could not read):
			 * the socket is marked, so that the sweep counts that query rather than
			 * judge it timed out. */
			mark_unread(cookie, now, 1);
		}
		return 0;
	}
	/* Only answers (QR = 1) to standard queries. */
	if (!(flags & 0x8000) || (flags & 0x7800))
		return 0;
	s->key.sock_cookie = cookie;
	/* Its reading interrupted (see struct scratch): the answer is not judged, and its
	 * socket is marked, so that the sweep does not judge its query timed out (it counts
	 * it). A TCP caller marks the connection as well. */
	if (s->token != token) {
		mark_unread(cookie, now, 0);
		return 0;
	}

	struct tapio_dns_query *known = bpf_map_lookup_elem(&queries, &s->key);
	if (!known) {
		tapio_count(&counters, TAPIO_DNS_CNT_UNMATCHED_ANSWER);
		return 0;
	}
	struct tapio_dns_config cfg;
	if (!TAPIO_READ_CONFIG(&config, &counters, &cfg)) {
		bpf_map_delete_elem(&queries, &s->key);
		return 1;
	}
	__u64 last_sent = known->last_sent_ns;
	__u64 latency = now > last_sent ? now - last_sent : 0;
	__u16 rcode = flags & 0xf;
	__u16 verdict = 0;
	__u64 threshold = 0;
	__u64 timeout_ns = (__u64)cfg.timeout_ms * 1000000;
	__u64 warning_ns = (__u64)cfg.latency_warning_ms * 1000000;
	__u64 critical_ns = (__u64)cfg.latency_critical_ms * 1000000;
	if ((cfg.enabled & TAPIO_DNS_EN_TIMEOUT) && latency >= timeout_ns) {
		verdict = TAPIO_DNS_V_LATE;
		threshold = timeout_ns;
	} else if (rcode != 0 && (cfg.enabled & TAPIO_DNS_EN_FAILURE) &&
		   (rcode != 3 || (cfg.enabled & TAPIO_DNS_EN_NXDOMAIN))) {
		verdict = TAPIO_DNS_V_FAILURE;
	} else if ((cfg.enabled & TAPIO_DNS_EN_LATENCY) && latency >= critical_ns) {
		verdict = TAPIO_DNS_V_LATENCY_CRITICAL;
		threshold = critical_ns;
	} else if ((cfg.enabled & TAPIO_DNS_EN_LATENCY) && latency >= warning_ns) {
		verdict = TAPIO_DNS_V_LATENCY_WARNING;
		threshold = warning_ns;
	}
	if (!verdict) {
		bpf_map_delete_elem(&queries, &s->key);
		return 1;
	}
	struct tapio_dns_event *ev = bpf_ringbuf_reserve(&events, sizeof(*ev), 0);
	if (!ev) {
		bpf_map_delete_elem(&queries, &s->key);
		tapio_count(&counters, TAPIO_CNT_RINGBUF_FULL);
		return 1;
	}
	__builtin_memcpy(&ev->query, known, sizeof(*known));
	/* The server is the one that answered, as the client saw it: after NAT in the OUTPUT
	 * hook the query went to a backend and the answer came from the address asked. */
	__builtin_memcpy(ev->query.server, s->ev.query.server, sizeof(ev->query.server));
	ev->query.server_port = l->sport;
	/* Whoever deletes the entry judges the query (the agent's timeout sweep races this). */
	if (bpf_map_delete_elem(&queries, &s->key)) {
		bpf_ringbuf_discard(ev, BPF_RB_NO_WAKEUP);
		return 1;
	}
	ev->hdr.boot_ns = now;
	ev->hdr.kind = TAPIO_DNS_ANSWER;
	ev->hdr.generation = cfg.hdr.generation;
	ev->latency_ns = latency;
	ev->threshold_ns = threshold;
	ev->rcode = rcode;
	ev->verdict = verdict;
	ev->answer_count = s->ev.answer_count;
	ev->_pad = 0;
	ev->_pad2 = 0;
	tapio_submit(&events, ev, EVENTS_WAKEUP_BYTES);
	return 1;
}

SEC("cgroup_skb/ingress")
int tapio_dns_in(struct __sk_buff *skb)
{
	struct l4 l = {};
	__u32 token = 0;
	struct scratch *s = dns_packet(skb, &l, 1, &token);
	if (!s)
		return 1;
	__u64 now = bpf_ktime_get_boot_ns();
	__u64 cookie = bpf_get_socket_cookie(skb);
	/* Whether every byte of a TCP segment was read as answers to outstanding queries. */
	int all_read = 1;
	__u32 payload = l.payload;
#pragma unroll
	for (int i = 0; i < TCP_MESSAGES_MAX; i++) {
		if (!tapio_dns_answer(skb, payload, now, cookie, token))
			all_read = 0;
		if (l.transport != TAPIO_DNS_TCP)
			return 1;
		long next = tcp_next_message(skb, payload);
		if (next <= 0) {
			if (next < 0)
				all_read = 0;
			break;
		}
		/* More messages than are read. */
		if (i == TCP_MESSAGES_MAX - 1)
			all_read = 0;
		payload = next;
	}
	if (!all_read)
		mark_unread(cookie, now, 0);
	return 1;
}
