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

SEC("tp_btf/mark_victim")
int BPF_PROG(floor_victim)
{
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
