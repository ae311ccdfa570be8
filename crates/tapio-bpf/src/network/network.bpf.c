// SPDX-License-Identifier: GPL-2.0-only
/*
 * Tapio network observer, kernel side.
 *
 * Facts, from TCP tracepoints only:
 *  - a connect that leaves SYN_SENT for CLOSE with an error (refused / timed out /
 *    unreachable is decided in userspace from the recorded facts: RST seen, sk_err);
 *  - an RST received on a synchronized connection;
 *  - a connection whose retransmits within a window reach the configured count;
 *  - a service endpoint whose smoothed RTT, seen from its clients, crosses its learned
 *    baseline * ratio or a ceiling (once per degraded period).
 * State is a few bounded maps keyed by socket or destination; nothing here reasons.
 */
#include "tapio_bpf.h"
#include <bpf/bpf_endian.h>
#include "network.h"

#define IPPROTO_TCP 6

enum {
	TCP_ESTABLISHED = 1,
	TCP_SYN_SENT = 2,
	TCP_SYN_RECV = 3,
	TCP_FIN_WAIT1 = 4,
	TCP_FIN_WAIT2 = 5,
	TCP_TIME_WAIT = 6,
	TCP_CLOSE = 7,
	TCP_CLOSE_WAIT = 8,
	TCP_LAST_ACK = 9,
	TCP_LISTEN = 10,
	TCP_CLOSING = 11,
	TCP_NEW_SYN_RECV = 12,
};

char LICENSE[] SEC("license") = "GPL";

TAPIO_COUNTERS_MAP;
TAPIO_CONFIG_MAP(struct tapio_net_config);

/* One ring per CPU (every connect on the node may make a record, on any CPU), sharing
 * TAPIO_NET_EVENTS_RING_BYTES (network.h). */
TAPIO_EVENT_RINGS_PER_CPU(TAPIO_NET_EVENTS_RING_BYTES);

/* A connect in SYN_SENT: who started it, when, and whether an RST came back. */
struct connect_start {
	struct tapio_task task;
	__u64 start_ns;
	__u16 flags;
	__u16 _pad[3];
};

/*
 * Connects in SYN_SENT, exact (not LRU): an entry leaves only when its connect leaves
 * SYN_SENT. Two tables, one in use: where the kernel has BPF compare-and-swap (5.12 and
 * later) an array of one-line slots, else a hash. A kernel without it refuses a program
 * that holds the instruction at all, reachable or not, so the two hooks that keep the
 * table come twice: as `tapio_inet_sock_set_state` and `tapio_tcp_receive_reset` (slots)
 * and as their `_hashed` twins. The agent loads one pair, sizes its table at load and
 * leaves the other table at one entry. A hash insert and delete per connect (their bucket
 * and free-list locks) measured about 110 ns more per state change than a slot (bench
 * README, twenty-second round).
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1);
	__type(key, __u64);
	__type(value, struct connect_start);
} connects SEC(".maps");

/* A connect's slot: its socket's key (0: free), then its start. One cache line. */
struct connect_slot {
	__u64 owner;
	struct connect_start start;
};
_Static_assert(sizeof(struct connect_slot) == 64, "a connect slot is one cache line");

/* Mmapable only for its layout (see TAPIO_BPF_F_MMAPABLE): each slot is one line. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, TAPIO_NET_CONNECT_SLOTS);
	__uint(map_flags, TAPIO_BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, struct connect_slot);
} connect_slots SEC(".maps");

/* The slots less one, set by the agent at load (a power of two of them). */
const volatile __u32 connect_slots_mask = TAPIO_NET_CONNECT_SLOTS - 1;

/* A socket's slot is its home slot or one of the 15 after it. */
#define CONNECT_SLOT_PROBES 16

/* The socket's address as a number for the slots' hash: its distance from the slot array
 * (see request_key in the storage observer: the verifier allows a privileged loader this
 * subtraction on a typed pointer, and no other arithmetic). */
static __always_inline __u64 connect_slot_key(struct sock *sk)
{
	return (__u64)sk - (__u64)&connect_slots;
}

/*
 * The slot socket `key` owns; with `claim`, else the first free one, taken by
 * compare-and-swap (two sockets may find it free at once, on two CPUs). The first slot of
 * the probes that is the socket's or free is the one it gets, so a slot left behind by an
 * earlier socket at the same address (a state change the kernel skipped) is reused
 * before any further one, and the first slot a lookup finds is the live one. Only the
 * socket's own hooks write its slot once taken, and a socket's state changes are
 * serialized by its lock.
 */
static __always_inline struct connect_slot *connect_slot_find(__u64 key, const int claim)
{
	__u32 home = tapio_home_slot(key);
#pragma clang loop unroll(disable)
	for (__u32 i = 0; i < CONNECT_SLOT_PROBES; i++) {
		__u32 idx = (home + i) & connect_slots_mask;
		struct connect_slot *slot = bpf_map_lookup_elem(&connect_slots, &idx);
		if (!slot)
			return NULL;
		__u64 owner = TAPIO_READ_ONCE_U64(&slot->owner);
		if (owner == key)
			return slot;
		if (claim && owner == 0 && __sync_val_compare_and_swap(&slot->owner, 0, key) == 0)
			return slot;
	}
	return NULL;
}

/* Frees a slot once its start has been copied out: an exchange, whose full ordering keeps
 * those reads before the slot can be taken (and rewritten) by another socket. */
static __always_inline void connect_slot_release(struct connect_slot *slot)
{
	__sync_lock_test_and_set(&slot->owner, 0);
}

/* Records a connect's start (or only an RST's mark) for socket `sk`; a full table is
 * counted. `slots` (a constant in each program) picks the table, here and below. */
static __always_inline void connect_remember(struct sock *sk, const struct connect_start *start, const int slots)
{
	if (slots) {
		struct connect_slot *slot = connect_slot_find(connect_slot_key(sk), 1);
		if (slot)
			slot->start = *start;
		else
			tapio_count(&counters, TAPIO_CNT_TABLE_FULL);
		return;
	}
	__u64 key = (__u64)sk;
	if (bpf_map_update_elem(&connects, &key, start, BPF_ANY))
		tapio_count(&counters, TAPIO_CNT_TABLE_FULL);
}

/* Takes socket `sk`'s connect start out of its table into *out: 1 if there was one. */
static __always_inline int connect_take(struct sock *sk, struct connect_start *out, const int slots)
{
	if (slots) {
		struct connect_slot *slot = connect_slot_find(connect_slot_key(sk), 0);
		if (!slot)
			return 0;
		*out = slot->start;
		connect_slot_release(slot);
		return 1;
	}
	__u64 key = (__u64)sk;
	struct connect_start *start = bpf_map_lookup_elem(&connects, &key);
	if (!start)
		return 0;
	*out = *start;
	bpf_map_delete_elem(&connects, &key);
	return 1;
}

/* Marks socket `sk`'s connect as refused by an RST, remembering the mark alone when its
 * start was not seen. */
static __always_inline void connect_mark_rst(struct sock *sk, const int slots)
{
	struct connect_start *start;
	if (slots) {
		struct connect_slot *slot = connect_slot_find(connect_slot_key(sk), 0);
		start = slot ? &slot->start : NULL;
	} else {
		__u64 key = (__u64)sk;
		start = bpf_map_lookup_elem(&connects, &key);
	}
	if (start) {
		start->flags |= TAPIO_NET_F_RST_IN_SYN_SENT;
		return;
	}
	struct connect_start fresh = {};
	fresh.flags = TAPIO_NET_F_RST_IN_SYN_SENT;
	connect_remember(sk, &fresh, slots);
}

/* Owner of an established active connection, for reset attribution. Losing one only
 * loses the attribution (the event then says the task is unknown). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, struct tapio_task);
} owners SEC(".maps");

/* A window counts the segments the kernel itself counts as retransmitted (the socket's
 * total_retrans, which RetransSegs sums): one retransmit call can carry many segments. */
struct retransmit_window {
	__u64 start_ns;
	/* total_retrans before the window's first retransmit. */
	__u32 base_total;
	__u32 reported;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, struct retransmit_window);
} retransmits SEC(".maps");

/* Baselines are per remote service endpoint (address plus port), never per connection:
 * two ports of one server are two baselines. */
struct rtt_key {
	__u8 addr[16];
	__u16 family;
	__u16 port;
};

struct rtt_baseline {
	__u64 srtt_x8; /* EWMA of srtt_us, scaled by 8 */
	__u32 samples;
	__u32 _pad;
};

/* A destination's degraded period: it began with the one event, and it ends (re-arms) only
 * after no sample above the re-arm level for a hold time (see tapio_tcp_probe). */
struct rtt_degraded_period {
	__u64 last_bad_ns;
	__u32 worst_srtt_us;
	__u32 _pad;
};

/* Destinations currently degraded. Many sockets (on many CPUs) share one destination, and
 * an insert with BPF_NOEXIST is atomic: the one that inserts reports the crossing. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, struct rtt_key);
	__type(value, struct rtt_degraded_period);
} rtt_degraded SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct rtt_key);
	__type(value, struct rtt_baseline);
} rtt_baselines SEC(".maps");

/* An IPv6 connect failure's record: the prefix of struct tapio_net_event before bytes_acked (see
 * network.h). The verifier refuses any write past what was reserved. */
#define CONNECT_FAILED_BYTES __builtin_offsetof(struct tapio_net_event, bytes_acked)

/* Reserves a cleared record of `size` bytes (a constant: a record struct or a kind's prefix)
 * in this CPU's ring, its header filled; *ring is the ring to submit it to. */
static __always_inline void *reserve_record(void **ring, __u32 kind, __u32 generation, __u64 size)
{
	void *cpu_ring = tapio_cpu_ring(&events);
	struct tapio_event_header *hdr = cpu_ring ? bpf_ringbuf_reserve(cpu_ring, size, 0) : NULL;
	if (!hdr) {
		tapio_count(&counters, TAPIO_CNT_RINGBUF_FULL);
		return NULL;
	}
	*ring = cpu_ring;
	__builtin_memset(hdr, 0, size);
	hdr->boot_ns = bpf_ktime_get_boot_ns();
	hdr->kind = kind;
	hdr->generation = generation;
	return hdr;
}

static __always_inline struct tapio_net_event *reserve_event(void **ring, __u32 kind, __u32 generation)
{
	return reserve_record(ring, kind, generation, sizeof(struct tapio_net_event));
}

/* The task that started the connection, when its connect was seen (else left unknown). */
static __always_inline void attach_owner(struct tapio_net_event *ev, __u64 sock)
{
	struct tapio_task *owner = bpf_map_lookup_elem(&owners, &sock);
	if (owner) {
		ev->task = *owner;
		ev->flags |= TAPIO_NET_F_TASK_KNOWN;
	}
}

/* Addresses and ports from the socket itself, through the helper (for a socket pointer
 * that is not typed). The local port is inet_sport, which stays set until the socket is
 * freed (see struct inet_sock in vmlinux.h). */
static __always_inline void fill_addrs_from_sock(struct tapio_net_event *ev, struct sock *sk)
{
	ev->family = BPF_CORE_READ(sk, __sk_common.skc_family);
	ev->sport = bpf_ntohs(BPF_CORE_READ((struct inet_sock *)sk, inet_sport));
	ev->dport = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
	if (ev->family == AF_INET6) {
		BPF_CORE_READ_INTO(&ev->saddr, sk, __sk_common.skc_v6_rcv_saddr);
		BPF_CORE_READ_INTO(&ev->daddr, sk, __sk_common.skc_v6_daddr);
	} else {
		BPF_CORE_READ_INTO((__u32 *)ev->saddr, sk, __sk_common.skc_rcv_saddr);
		BPF_CORE_READ_INTO((__u32 *)ev->daddr, sk, __sk_common.skc_daddr);
	}
}

static __always_inline void fill_tcp_facts(struct tapio_net_event *ev, struct sock *sk)
{
	struct tcp_sock *tp = (struct tcp_sock *)sk;
	ev->srtt_us = BPF_CORE_READ(tp, srtt_us) >> 3;
	ev->cwnd = BPF_CORE_READ(tp, snd_cwnd);
	ev->total_retransmits = BPF_CORE_READ(tp, total_retrans);
	ev->bytes_acked = BPF_CORE_READ(tp, bytes_acked);
	ev->bytes_received = BPF_CORE_READ(tp, bytes_received);
}

/* fill_tcp_facts through the typed pointer bpf_skc_to_tcp_sock gives: plain loads. */
static __always_inline void fill_tcp_facts_typed(struct tapio_net_event *ev, struct tcp_sock *tp)
{
	ev->srtt_us = tp->srtt_us >> 3;
	ev->cwnd = tp->snd_cwnd;
	ev->total_retransmits = tp->total_retrans;
	ev->bytes_acked = tp->bytes_acked;
	ev->bytes_received = tp->bytes_received;
}

/* fill_addrs_from_sock through the typed pointers: plain loads. A connected or connecting
 * socket's bound address is the one its segments carry (connect() and accept set it with
 * the route's source address, and it stays set when the socket closes). */
static __always_inline void fill_addrs_typed(struct tapio_net_event *ev, struct sock *sk, struct tcp_sock *tp)
{
	ev->family = sk->__sk_common.skc_family;
	ev->sport = bpf_ntohs(tp->inet_conn.icsk_inet.inet_sport);
	ev->dport = bpf_ntohs(sk->__sk_common.skc_dport);
	if (ev->family == AF_INET6) {
		__builtin_memcpy(ev->saddr, &sk->__sk_common.skc_v6_rcv_saddr, 16);
		__builtin_memcpy(ev->daddr, &sk->__sk_common.skc_v6_daddr, 16);
	} else {
		__u32 saddr = sk->__sk_common.skc_rcv_saddr;
		__u32 daddr = sk->__sk_common.skc_daddr;
		__builtin_memcpy(ev->saddr, &saddr, 4);
		__builtin_memcpy(ev->daddr, &daddr, 4);
	}
}

/* What both connect-failure records say about the connect itself (the two structs name
 * these members alike): its error, and who started it and when, if that was seen. */
#define FILL_CONNECT_OUTCOME(ev, start, sk_err_, flags_)                          \
	do {                                                                       \
		(ev)->sk_err = (sk_err_);                                          \
		(ev)->flags = (flags_);                                            \
		if (start) {                                                       \
			(ev)->task = (start)->task;                                \
			(ev)->flags |= (start)->flags;                             \
			/* An entry made by the RST mark alone has no start. */   \
			if ((start)->start_ns) {                                   \
				(ev)->flags |= TAPIO_NET_F_START_KNOWN;            \
				(ev)->duration_ns =                                \
					(ev)->hdr.boot_ns - (start)->start_ns;     \
			}                                                          \
		}                                                                  \
	} while (0)

/* An IPv4 connect failure, in its compact record (network.h). */
static __always_inline void emit_connect4_failed(struct sock *sk, const struct tapio_net_config *cfg,
						 struct connect_start *start, int sk_err, __u16 flags)
{
	void *ring;
	struct tapio_net_connect4 *ev =
		reserve_record(&ring, TAPIO_NET_CONNECT_FAILED_V4, cfg->hdr.generation, sizeof(*ev));
	if (!ev)
		return;
	__u32 saddr = sk->__sk_common.skc_rcv_saddr;
	__u32 daddr = sk->__sk_common.skc_daddr;
	__builtin_memcpy(ev->saddr, &saddr, 4);
	__builtin_memcpy(ev->daddr, &daddr, 4);
	ev->dport = bpf_ntohs(sk->__sk_common.skc_dport);
	/* As in emit_connect_failed: the checked cast, with the helper reads kept for the case
	 * it would fail. */
	struct tcp_sock *tp = bpf_skc_to_tcp_sock(sk);
	if (tp) {
		ev->sport = bpf_ntohs(tp->inet_conn.icsk_inet.inet_sport);
		ev->syn_retries = tp->total_retrans;
	} else {
		ev->sport = bpf_ntohs(BPF_CORE_READ((struct inet_sock *)sk, inet_sport));
		ev->syn_retries = BPF_CORE_READ((struct tcp_sock *)sk, total_retrans);
	}
	FILL_CONNECT_OUTCOME(ev, start, sk_err, flags);
	tapio_submit_to_cpu_ring(ring, ev);
}

static __always_inline void emit_connect_failed(struct sock *sk, const struct tapio_net_config *cfg,
						struct connect_start *start, int sk_err, __u16 flags)
{
	if (sk->__sk_common.skc_family == AF_INET) {
		emit_connect4_failed(sk, cfg, start, sk_err, flags);
		return;
	}
	void *ring;
	struct tapio_net_event *ev =
		reserve_record(&ring, TAPIO_NET_CONNECT_FAILED, cfg->hdr.generation, CONNECT_FAILED_BYTES);
	if (!ev)
		return;
	/* Segments retransmitted on a socket that never left SYN_SENT are its SYNs. (The
	 * checked cast never fails for the TCP sockets that reach here; the helper reads
	 * remain for the case it would.) */
	struct tcp_sock *tp = bpf_skc_to_tcp_sock(sk);
	if (tp) {
		fill_addrs_typed(ev, sk, tp);
		ev->syn_retries = tp->total_retrans;
	} else {
		fill_addrs_from_sock(ev, sk);
		ev->syn_retries = BPF_CORE_READ((struct tcp_sock *)sk, total_retrans);
	}
	ev->state = TCP_SYN_SENT;
	FILL_CONNECT_OUTCOME(ev, start, sk_err, flags);
	tapio_submit_cpu_ring_sized(ring, ev, CONNECT_FAILED_BYTES);
}

/*
 * Every TCP state change of every socket on the node passes here, so it is a BTF tracepoint
 * (a raw tracepoint with typed arguments): the kernel builds no tracepoint record for it,
 * and the socket's fields are plain loads instead of helper calls.
 */
static __always_inline int on_set_state(struct sock *sk, int oldstate, int newstate, const int slots)
{
	/* Most transitions of a connection's life neither start, end nor close a connect. */
	if (newstate != TCP_SYN_SENT && oldstate != TCP_SYN_SENT && newstate != TCP_CLOSE)
		return 0;
	if (sk->sk_protocol != IPPROTO_TCP)
		return 0;
	/* Bookkeeping (the connects/owners/retransmits entries) never depends on the config:
	 * an unreadable config only withholds judgement, it must not leak entries or leave a
	 * stale owner for the next socket at the same address. The config is read only where
	 * it is needed. */
	struct tapio_net_config cfg;
	__u64 key = (__u64)sk;

	if (newstate == TCP_SYN_SENT) {
		/* connect() runs in the caller's context: the one moment the task is known. Only
		 * one switch is needed here, read in place (no config copy per connect). */
		struct connect_start start = {};
		const struct tapio_net_config *live = TAPIO_CONFIG_LIVE(&config);
		tapio_task_current(&start.task, live && live->capture_memcg);
		start.start_ns = bpf_ktime_get_boot_ns();
		start.flags = TAPIO_NET_F_TASK_KNOWN;
		connect_remember(sk, &start, slots);
		return 0;
	}

	if (oldstate == TCP_SYN_SENT) {
		struct connect_start taken;
		struct connect_start *start = connect_take(sk, &taken, slots) ? &taken : NULL;
		if (newstate == TCP_CLOSE) {
			int sk_err = sk->sk_err;
			__u16 flags = 0;
			if (sk_err == 0) {
				/* An ICMP error that arrived while the socket was locked is kept as a
				 * soft error; the application reads it (SO_ERROR) and closes. */
				sk_err = sk->sk_err_soft;
				flags = TAPIO_NET_F_SOFT_ERROR;
			}
			/* No error at all: the application gave up its own connect; not evidence. */
			if (sk_err != 0 && TAPIO_READ_CONFIG(&config, &counters, &cfg) &&
			    (cfg.enabled & TAPIO_NET_EN_CONNECT))
				emit_connect_failed(sk, &cfg, start, sk_err, flags);
		} else if (newstate == TCP_ESTABLISHED && start) {
			bpf_map_update_elem(&owners, &key, &start->task, BPF_ANY);
		}
	}

	/* A connect that never left SYN_SENT has no owner or retransmit state to forget. Most
	 * closing sockets have neither (server sides, connections that never retransmitted):
	 * the lock-free lookup spares them the delete's bucket lock. A socket's transitions
	 * are serialized by its lock, so nothing inserts between the lookup and the delete. */
	if (newstate == TCP_CLOSE && oldstate != TCP_SYN_SENT) {
		if (bpf_map_lookup_elem(&owners, &key))
			bpf_map_delete_elem(&owners, &key);
		if (bpf_map_lookup_elem(&retransmits, &key))
			bpf_map_delete_elem(&retransmits, &key);
	}
	return 0;
}

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(tapio_inet_sock_set_state, struct sock *sk, int oldstate, int newstate)
{
	return on_set_state(sk, oldstate, newstate, 1);
}

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(tapio_inet_sock_set_state_hashed, struct sock *sk, int oldstate, int newstate)
{
	return on_set_state(sk, oldstate, newstate, 0);
}

#define RCV_SHUTDOWN 1

/* Every RST a socket accepts, including the refusal of each refused connect: a BTF
 * tracepoint, so the kernel builds no record for it (the classic one, on current kernels,
 * also generates the socket's cookie). */
static __always_inline int on_receive_reset(struct sock *sk, const int slots)
{
	__u64 key = (__u64)sk;
	int state = sk->__sk_common.skc_state;

	if (state == TCP_SYN_SENT) {
		/* Mark it, config or not (the mark is what tells a refusal from an ICMP error);
		 * the one event comes when the connect leaves SYN_SENT. */
		connect_mark_rst(sk, slots);
		return 0;
	}
	/* Only synchronized connections are "reset by the peer". */
	if (state != TCP_ESTABLISHED && state != TCP_FIN_WAIT1 && state != TCP_FIN_WAIT2 &&
	    state != TCP_CLOSE_WAIT && state != TCP_CLOSING && state != TCP_LAST_ACK)
		return 0;
	struct tapio_net_config cfg;
	if (!TAPIO_READ_CONFIG(&config, &counters, &cfg))
		return 0;
	if (!(cfg.enabled & TAPIO_NET_EN_RESET))
		return 0;

	void *ring;
	struct tapio_net_event *ev = reserve_event(&ring, TAPIO_NET_RESET, cfg.hdr.generation);
	if (!ev)
		return 0;
	struct tcp_sock *tp = bpf_skc_to_tcp_sock(sk);
	if (tp) {
		fill_addrs_typed(ev, sk, tp);
		fill_tcp_facts_typed(ev, tp);
	} else {
		fill_addrs_from_sock(ev, sk);
		fill_tcp_facts(ev, sk);
	}
	ev->state = state;
	/* tcp_reset() is also the kernel's own abort when data arrives after the application
	 * shut down reading (FIN_WAIT1/2 only; the tracepoint carries no segment to tell).
	 * Userspace decides; the kernel only records the fact. */
	if (state == TCP_FIN_WAIT1 || state == TCP_FIN_WAIT2) {
		__u8 shutdown = BPF_CORE_READ_BITFIELD_PROBED(sk, sk_shutdown);
		if (shutdown & RCV_SHUTDOWN)
			ev->flags |= TAPIO_NET_F_LOCAL_SHUTDOWN;
	}
	attach_owner(ev, key);
	tapio_submit_to_cpu_ring(ring, ev);
	return 0;
}

SEC("tp_btf/tcp_receive_reset")
int BPF_PROG(tapio_tcp_receive_reset, struct sock *sk)
{
	return on_receive_reset(sk, 1);
}

SEC("tp_btf/tcp_receive_reset")
int BPF_PROG(tapio_tcp_receive_reset_hashed, struct sock *sk)
{
	return on_receive_reset(sk, 0);
}

static __always_inline int on_retransmit(struct sock *sk, int state, struct sk_buff *skb)
{
	struct tapio_net_config cfg;
	if (!TAPIO_READ_CONFIG(&config, &counters, &cfg))
		return 0;
	if (!(cfg.enabled & TAPIO_NET_EN_RETRANSMIT) || cfg.retransmit_count == 0)
		return 0;
	/* SYN retransmits belong to the connect's own outcome (connection_timeout). */
	if (state == TCP_SYN_SENT || state == TCP_SYN_RECV || state == TCP_NEW_SYN_RECV)
		return 0;

	__u64 key = (__u64)sk;
	__u64 now = bpf_ktime_get_boot_ns();
	__u64 window_ns = (__u64)cfg.retransmit_window_ms * 1000000ULL;
	/* The kernel has added this retransmit's segments before the tracepoint fires. */
	__u32 total = BPF_CORE_READ((struct tcp_sock *)sk, total_retrans);
	struct retransmit_window *w = bpf_map_lookup_elem(&retransmits, &key);
	if (!w || now - w->start_ns > window_ns) {
		/* A window starts with this retransmit: its base is the count before it. */
		unsigned char *head = BPF_CORE_READ(skb, head);
		unsigned int end = BPF_CORE_READ(skb, end);
		__u16 segs = BPF_CORE_READ((struct skb_shared_info *)(head + end), gso_segs);
		if (segs == 0)
			segs = 1;
		struct retransmit_window fresh = { .start_ns = now, .base_total = total - segs };
		if (w) {
			*w = fresh;
		} else {
			bpf_map_update_elem(&retransmits, &key, &fresh, BPF_ANY);
			w = bpf_map_lookup_elem(&retransmits, &key);
			if (!w)
				return 0;
		}
	}
	/* A socket's retransmits are serialized by its lock: plain updates suffice (and keep
	 * the program loadable on kernels without atomic fetch operations). */
	__u32 count = total - w->base_total;
	if (count < cfg.retransmit_count || w->reported)
		return 0;
	/* One event per window, however many retransmits follow in it. */
	w->reported = 1;

	void *ring;
	struct tapio_net_event *ev = reserve_event(&ring, TAPIO_NET_RETRANSMIT_SPIKE, cfg.hdr.generation);
	if (!ev)
		return 0;
	fill_addrs_from_sock(ev, sk);
	fill_tcp_facts(ev, sk);
	ev->state = state;
	ev->retransmits_in_window = count;
	ev->window_ms = cfg.retransmit_window_ms;
	attach_owner(ev, key);
	tapio_submit_to_cpu_ring(ring, ev);
	return 0;
}

SEC("tracepoint/tcp/tcp_retransmit_skb")
int tapio_tcp_retransmit_skb(void *ctx)
{
	/* The event's context struct changed name and layout in 6.11; read either. Since then
	 * it also fires for a retransmit that failed (err), which the kernel did not send. */
	if (bpf_core_type_exists(struct trace_event_raw_tcp_retransmit_skb)) {
		struct trace_event_raw_tcp_retransmit_skb *c = ctx;
		if (bpf_core_field_exists(c->err) && BPF_CORE_READ(c, err) != 0)
			return 0;
		return on_retransmit((struct sock *)BPF_CORE_READ(c, skaddr), BPF_CORE_READ(c, state),
				     (struct sk_buff *)BPF_CORE_READ(c, skbaddr));
	}
	struct trace_event_raw_tcp_event_sk_skb *c = ctx;
	return on_retransmit((struct sock *)BPF_CORE_READ(c, skaddr), BPF_CORE_READ(c, state),
			     (struct sk_buff *)BPF_CORE_READ(c, skbaddr));
}

/* A degraded period lasts until no sample has been above the re-arm level for this long:
 * a second, or four of the worst srtt seen in it (a slow path's samples come about once
 * per its RTT, so a shorter hold would re-arm between two of them). */
#define RTT_HOLD_MIN_NS 1000000000ULL
#define RTT_HOLD_SRTTS 4

/* Every segment an established socket receives passes here: a BTF tracepoint, so the kernel
 * builds no record for it (the classic one reads a dozen socket fields and, on current
 * kernels, generates the socket's cookie), and the socket's fields are plain loads. */
SEC("tp_btf/tcp_probe")
int BPF_PROG(tapio_tcp_probe, struct sock *sk, struct sk_buff *skb)
{
	struct tcp_sock *tp = bpf_skc_to_tcp_sock(sk);
	if (!tp)
		return 0;
	/* What the classic event calls srtt: the smoothed RTT in microseconds. */
	__u32 srtt = tp->srtt_us >> 3;
	if (srtt == 0)
		return 0;
	/* Nothing of ours in flight: this segment acknowledges nothing, so the srtt it shows
	 * is not a fresh measurement (a socket that only receives keeps a stale one). */
	if (tp->snd_nxt == tp->snd_una)
		return 0;
	struct tapio_net_config cfg;
	if (!TAPIO_READ_CONFIG(&config, &counters, &cfg))
		return 0;
	if (!(cfg.enabled & TAPIO_NET_EN_RTT) || cfg.rtt_ratio_percent == 0)
		return 0;
	__u16 sport = sk->__sk_common.skc_num;
	__u16 dport = bpf_ntohs(sk->__sk_common.skc_dport);
	/* A server-side socket is not judged: its srtt is the time its client takes to
	 * acknowledge a response, which a delayed ACK or the client's own pause between
	 * requests sets, not the path. The path is judged from the client's side, per service
	 * endpoint, and only a socket seen making its own connect (it has an owner) is known to
	 * be a client: ports cannot say it. A client behind NAT, on another OS (Windows and
	 * macOS take 49152-65535) or with a port range of its own connects from outside this
	 * node's ephemeral range, and a service may listen inside it (gRPC's 50051 under the
	 * default 32768-60999). A socket without an owner (a server's, or a client's that
	 * connected before the agent started) is left unjudged. The plain server socket
	 * (remote port ephemeral, local not) is let go on its ports, before the lookup. */
	int local_ephemeral = sport >= cfg.ephemeral_port_min && sport <= cfg.ephemeral_port_max;
	int remote_ephemeral = dport >= cfg.ephemeral_port_min && dport <= cfg.ephemeral_port_max;
	if (remote_ephemeral && !local_ephemeral)
		return 0;
	__u64 sock = (__u64)sk;
	if (!bpf_map_lookup_elem(&owners, &sock))
		return 0;

	struct rtt_key key = {};
	__u16 family = sk->__sk_common.skc_family;
	key.family = family;
	if (family == AF_INET) {
		__u32 daddr = sk->__sk_common.skc_daddr;
		__builtin_memcpy(key.addr, &daddr, 4);
	} else if (family == AF_INET6) {
		__builtin_memcpy(key.addr, &sk->__sk_common.skc_v6_daddr, 16);
	} else {
		return 0;
	}
	key.port = dport;

	struct rtt_baseline *b = bpf_map_lookup_elem(&rtt_baselines, &key);
	if (!b) {
		struct rtt_baseline fresh = { .srtt_x8 = (__u64)srtt << 3, .samples = 1 };
		bpf_map_update_elem(&rtt_baselines, &key, &fresh, BPF_NOEXIST);
		return 0;
	}
	if (b->samples < cfg.rtt_min_samples) {
		b->srtt_x8 = b->srtt_x8 - (b->srtt_x8 >> 3) + srtt;
		b->samples++;
		return 0;
	}

	__u64 baseline = b->srtt_x8 >> 3;
	/* Degraded above the threshold; healthy again (re-armed) only at or below the level
	 * half-way between baseline and threshold (three quarters of the ceiling): an srtt
	 * hovering at the threshold is one crossing, not one per wobble. */
	__u64 threshold = baseline * cfg.rtt_ratio_percent / 100;
	if (threshold < baseline + cfg.rtt_min_increase_us)
		threshold = baseline + cfg.rtt_min_increase_us;
	__u64 rearm = baseline + (threshold - baseline) / 2;
	int bad = srtt > threshold;
	if (cfg.rtt_ceiling_us) {
		__u64 ceiling_rearm = (__u64)cfg.rtt_ceiling_us - cfg.rtt_ceiling_us / 4;
		if (srtt > cfg.rtt_ceiling_us)
			bad = 1;
		if (rearm > ceiling_rearm)
			rearm = ceiling_rearm;
	}
	__u64 now = bpf_ktime_get_boot_ns();
	struct rtt_degraded_period *period = bpf_map_lookup_elem(&rtt_degraded, &key);
	if (period) {
		/* Degraded: nothing is learned, and any sample above the re-arm level (from any
		 * socket to this endpoint) extends the period. */
		if (srtt > rearm) {
			period->last_bad_ns = now;
			if (srtt > period->worst_srtt_us)
				period->worst_srtt_us = srtt;
			return 0;
		}
		__u64 hold = (__u64)period->worst_srtt_us * 1000 * RTT_HOLD_SRTTS;
		if (hold < RTT_HOLD_MIN_NS)
			hold = RTT_HOLD_MIN_NS;
		if (now - period->last_bad_ns < hold)
			return 0;
		bpf_map_delete_elem(&rtt_degraded, &key);
	} else if (bad) {
		struct rtt_degraded_period fresh = { .last_bad_ns = now, .worst_srtt_us = srtt };
		if (bpf_map_update_elem(&rtt_degraded, &key, &fresh, BPF_NOEXIST))
			return 0;
		void *ring;
		struct tapio_net_event *ev = reserve_event(&ring, TAPIO_NET_RTT_DEGRADED, cfg.hdr.generation);
		if (!ev)
			return 0;
		fill_addrs_typed(ev, sk, tp);
		ev->srtt_us = srtt;
		ev->cwnd = tp->snd_cwnd;
		ev->baseline_us = baseline;
		ev->baseline_samples = b->samples;
		ev->state = TCP_ESTABLISHED;
		attach_owner(ev, (__u64)sk);
		tapio_submit_to_cpu_ring(ring, ev);
		return 0;
	}
	/* Only healthy samples teach the baseline: a slow period that stays under the
	 * threshold must not walk it up to the degraded level. */
	if (srtt <= rearm) {
		b->srtt_x8 = b->srtt_x8 - (b->srtt_x8 >> 3) + srtt;
		if (b->samples < 0xffffffff)
			b->samples++;
	}
	return 0;
}
