// SPDX-License-Identifier: GPL-2.0-only
/*
 * The floor of the kernel measurement: programs that do nothing, one per hook whose Tapio
 * program is judged in a window of its own. Alone on its hook and under the same load, an
 * empty program's mean run time is what BPF run-time statistics charge for merely being
 * attached there on this machine (the program's entry and exit, the two clock reads around
 * it, and whatever of that is cold in that context): the part of a Tapio figure no program
 * could remove. The bench's own object; the agent never embeds it.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include "container.h"

char LICENSE[] SEC("license") = "GPL";

SEC("tp_btf/sched_process_exit")
int BPF_PROG(floor_exit)
{
	return 0;
}

SEC("tracepoint/cgroup/cgroup_mkdir")
int floor_mkdir(void *ctx)
{
	return 0;
}

/* Cgroup records fill a ring faster: 1 MiB holds the five windows' 1,000, never read. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20);
} floor_cgroups SEC(".maps");

/* The floor of a hook that reports a cgroup: its record reserved (the short one, which
 * Tapio writes for any path under 256 bytes: Kubernetes' are), its header cleared (as
 * Tapio's is; the path after it is written only as far as it goes) and submitted without
 * waking anyone, and no path copied. */
SEC("tracepoint/cgroup/cgroup_mkdir")
int floor_mkdir_rec(void *ctx)
{
	struct tapio_cgroup_event *ev = bpf_ringbuf_reserve(&floor_cgroups, TAPIO_CGROUP_SHORT_BYTES, 0);
	if (!ev)
		return 0;
	__builtin_memset(ev, 0, __builtin_offsetof(struct tapio_cgroup_event, path));
	ev->hdr.kind = TAPIO_CTR_CGROUP_MKDIR;
	bpf_ringbuf_submit(ev, BPF_RB_NO_WAKEUP);
	return 0;
}

SEC("tp_btf/mark_victim")
int BPF_PROG(floor_victim)
{
	return 0;
}

/* A ring of the container ring's size, never read. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 18);
} floor_events SEC(".maps");

/*
 * The floor of a hook that reports, where the context leaves the ring cold: an OOM kill's
 * record reserved, cleared, stamped and submitted (without waking anyone), and nothing else:
 * what any program that puts one such record in a ring there pays, before it reads a fact.
 */
SEC("tp_btf/mark_victim")
int BPF_PROG(floor_oom_rec)
{
	struct tapio_oom_event *ev = bpf_ringbuf_reserve(&floor_events, sizeof(*ev), 0);
	if (!ev)
		return 0;
	__builtin_memset(ev, 0, sizeof(*ev));
	ev->hdr.boot_ns = bpf_ktime_get_boot_ns();
	ev->hdr.kind = TAPIO_CTR_OOM_KILL;
	bpf_ringbuf_submit(ev, BPF_RB_NO_WAKEUP);
	return 0;
}

SEC("tp_btf/block_io_start")
int BPF_PROG(floor_io_start)
{
	return 0;
}

SEC("tp_btf/block_rq_issue")
int BPF_PROG(floor_rq_issue)
{
	return 0;
}

SEC("tp_btf/block_rq_complete")
int BPF_PROG(floor_rq_done)
{
	return 0;
}

/* The hooks every refused IPv4 connect passes with the agent running (the connect-heavy
 * part): the network observer's two tracepoints and the DNS observer's cgroup programs,
 * which let everything through as the agent's do. */
SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(floor_set_state)
{
	return 0;
}

SEC("tp_btf/tcp_receive_reset")
int BPF_PROG(floor_rst)
{
	return 0;
}

SEC("cgroup/connect4")
int floor_conn4(void *ctx)
{
	return 1;
}

SEC("cgroup_skb/ingress")
int floor_skb_in(void *ctx)
{
	return 1;
}

SEC("cgroup_skb/egress")
int floor_skb_out(void *ctx)
{
	return 1;
}
