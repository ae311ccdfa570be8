"""Measures what the agent container costs, for the DaemonSet's requests and limits: the
agent image run by podman with the DaemonSet's privileges, its memory cgroup's usage (what
a kubelet counts: process memory plus the eBPF maps it created, which the kernel charges to
that cgroup) and its CPU (cpuacct), idle and during a flood of refused connects.
Run: flock /tmp/tapio-kernel-tests.lock scripts/measure-agent-resources (root, cgroup v1
memory and cpuacct controllers, as on the project's VMs)."""

import json
import os
import socket
import sys
import threading
import time
from pathlib import Path

from support import REPO, AgentRun, Privileges, closed_local_port, committed_daemonset, run
from test_privileges import HOST_ONLY_ARGS, PODMAN

TAG = f"measure-i11d-{os.getpid()}"
IMAGE = f"localhost/tapio-agent:{TAG}"
IDLE_SECS = 20
FLOOD_SECS = 15
SENDERS = 3


def read_int(path):
    return int(Path(path).read_text().strip())


def flood(port, stop, counts, index):
    """Refused connects to `port` until `stop` is set."""
    made = 0
    while not stop.is_set():
        with socket.socket() as s:
            try:
                s.connect(("127.0.0.1", port))
            except ConnectionRefusedError:
                made += 1
    counts[index] = made


def main():
    build = run([REPO / "scripts" / "image", "agent", "--tag", TAG], cwd=REPO)
    if build.returncode != 0:
        sys.exit(build.stdout + build.stderr)
    name = f"tapio-i11d-measure-{os.getpid()}"
    privileges = Privileges(committed_daemonset())
    argv = PODMAN + ["run", "--rm", "--name", name] + HOST_ONLY_ARGS + privileges.podman_args()
    # Evidence goes to stdout, as in the DaemonSet (the runtime keeps it as the pod's log).
    argv += ["-e", "NODE_NAME=i11d-measure", IMAGE]
    agent = AgentRun(argv, stop=PODMAN + ["kill", "--signal", "INT", name], name="measure")
    try:
        agent.wait_ready()
        cgroup = run(["podman", "inspect", "--format", "{{.State.CgroupPath}}", name]).stdout.strip()
        mem = Path("/sys/fs/cgroup/memory") / cgroup.lstrip("/")
        cpu = Path("/sys/fs/cgroup/cpuacct") / cgroup.lstrip("/")
        time.sleep(5)  # let the loader's transient allocations go
        start_cpu = read_int(cpu / "cpuacct.usage")
        time.sleep(IDLE_SECS)
        idle_cpu = (read_int(cpu / "cpuacct.usage") - start_cpu) / (IDLE_SECS * 1e9)
        idle_mem = read_int(mem / "memory.usage_in_bytes")
        startup_peak = read_int(mem / "memory.max_usage_in_bytes")

        port = closed_local_port()
        stop, counts = threading.Event(), [0] * SENDERS
        threads = [threading.Thread(target=flood, args=(port, stop, counts, i)) for i in range(SENDERS)]
        before = read_int(cpu / "cpuacct.usage")
        t0 = time.monotonic()
        for t in threads:
            t.start()
        time.sleep(FLOOD_SECS)
        stop.set()
        for t in threads:
            t.join()
        elapsed = time.monotonic() - t0
        time.sleep(2)  # the agent catches up
        flood_cpu = (read_int(cpu / "cpuacct.usage") - before) / (elapsed * 1e9)
        peak = read_int(mem / "memory.max_usage_in_bytes")
        after_flood = read_int(mem / "memory.usage_in_bytes")
        stat = dict(line.split() for line in (mem / "memory.stat").read_text().splitlines())
        code = agent.stop()
        written = sum(1 for r in agent.records() if r["facts"].get("dst_port") == port)
        final = json.loads(agent.stderr().split("counters final ", 1)[1].splitlines()[0])
    finally:
        agent.cleanup()
        run(PODMAN + ["rm", "--force", "--ignore", name])
        run(["podman", "rmi", "--force", IMAGE])
    mib = 1024 * 1024
    print(f"agent container (podman, DaemonSet privileges), kernel {os.uname().release}, {os.cpu_count()} CPUs")
    print(f"idle:  memory cgroup usage {idle_mem / mib:.1f} MiB (rss {int(stat['rss']) / mib:.1f} MiB,"
          f" cache {int(stat['cache']) / mib:.1f} MiB), CPU {idle_cpu * 100:.2f} % of a core over {IDLE_SECS} s")
    print(f"start: peak memory cgroup usage {startup_peak / mib:.1f} MiB (loading the eBPF objects)")
    made = sum(counts)
    print(f"flood: {made} refused connects in {elapsed:.1f} s ({made / elapsed:,.0f}/s), CPU"
          f" {flood_cpu * 100:.1f} % of a core, peak memory {peak / mib:.1f} MiB, after {after_flood / mib:.1f} MiB")
    print(f"refused records written for the port {written}; losses the agent counted:"
          f" ring buffer {final['lost_events_total']}, queue overflow {final['queue_overflow_total']}"
          f" (unaccounted {made - written - final['lost_events_total'] - final['sink_drops_total']}); agent exit status {code}")


if __name__ == "__main__":
    main()
