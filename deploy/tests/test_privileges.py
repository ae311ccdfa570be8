"""The agent on the real kernel with exactly the privileges the DaemonSet grants: as a bare
process under setpriv, and as the image from scripts/image run by podman. Each run sees a
connect refused on the host as evidence and every observer with the status it has on bare
metal. Needs root (CI runs it as root; there a skip fails). Run under
flock /tmp/tapio-kernel-tests.lock (scripts/test-deploy does)."""

import os
import secrets
import shutil
import tempfile
import time
import unittest
import urllib.request
from pathlib import Path

from support import (AGENT_BINARY, REPO, AgentRun, Privileges, closed_local_port, committed_daemonset, find,
                     helm_template, kernel_test_allowed, refused_connect, run)

# linux/capability.h
CAP_NUMBERS = {
    "CHOWN": 0, "DAC_OVERRIDE": 1, "DAC_READ_SEARCH": 2, "FOWNER": 3, "FSETID": 4, "KILL": 5, "SETGID": 6,
    "SETUID": 7, "SETPCAP": 8, "LINUX_IMMUTABLE": 9, "NET_BIND_SERVICE": 10, "NET_BROADCAST": 11,
    "NET_ADMIN": 12, "NET_RAW": 13, "IPC_LOCK": 14, "IPC_OWNER": 15, "SYS_MODULE": 16, "SYS_RAWIO": 17,
    "SYS_CHROOT": 18, "SYS_PTRACE": 19, "SYS_PACCT": 20, "SYS_ADMIN": 21, "SYS_BOOT": 22, "SYS_NICE": 23,
    "SYS_RESOURCE": 24, "SYS_TIME": 25, "SYS_TTY_CONFIG": 26, "MKNOD": 27, "LEASE": 28, "AUDIT_WRITE": 29,
    "AUDIT_CONTROL": 30, "SETFCAP": 31, "MAC_OVERRIDE": 32, "MAC_ADMIN": 33, "SYSLOG": 34, "WAKE_ALARM": 35,
    "BLOCK_SUSPEND": 36, "AUDIT_READ": 37, "PERFMON": 38, "BPF": 39, "CHECKPOINT_RESTORE": 40,
}

IMAGE_TAG = f"test-i11d-{os.getpid()}"
IMAGE = f"localhost/tapio-agent:{IMAGE_TAG}"

# What this host needs besides the DaemonSet's privileges (not privileges themselves):
# crun refuses this host's hybrid cgroup layout, so runc; and root here lacks
# CAP_SYS_RESOURCE, so podman's default raise of the file and process limits is refused
# and explicit, lower limits are given (Kubernetes sets none; the runtime's apply).
PODMAN = ["podman", "--runtime", "runc"]
HOST_ONLY_ARGS = ["--ulimit", "nofile=4096:4096", "--ulimit", "nproc=4096:4096"]


def status_fields(pid):
    """CapEff, CapBnd, NoNewPrivs and Seccomp of a running process."""
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("CapEff", "CapBnd", "NoNewPrivs", "Seccomp"):
                fields[key] = value.strip()
    return fields


def mask(capabilities):
    return f"{sum(1 << CAP_NUMBERS[c] for c in capabilities):016x}"


class KernelRuns(unittest.TestCase):
    """Runs the agent and compares it with a bare-metal reference run (no tests of its own)."""

    @classmethod
    def setUpClass(cls):
        kernel_test_allowed()
        build = run(["cargo", "build", "--quiet", "--profile", "agent", "-p", "tapio-agent"], cwd=REPO)
        assert build.returncode == 0, build.stderr
        # The reference: the agent as root with every capability, on this kernel.
        bare = cls.observe(cls, [AGENT_BINARY, "--node", "i11d-bare"], "bare")
        cls.bare_statuses, cls.bare_workload = bare["statuses"], bare["record"]["workload"]

    def observe(self, argv, name, stop=None, pid_of=None):
        """Runs the agent, makes a refused connect from this process, stops the agent; returns
        its statuses, the record, the exit status and the agent's /proc status fields."""
        agent = AgentRun(argv, stop=stop, name=name)
        try:
            node, statuses = agent.wait_ready()
            proc = status_fields(pid_of() if pid_of else agent.proc.pid)
            port = closed_local_port()
            refused_connect(port)
            record = agent.wait_refused(port)
            code = agent.stop()
            return {"node": node, "statuses": statuses, "record": record, "code": code, "proc": proc,
                    "stderr": agent.stderr(), "in_container": stop is not None}
        finally:
            agent.cleanup()

    def assert_as_on_bare_metal(self, result):
        self.assertEqual(result["statuses"], self.bare_statuses, result["stderr"])
        for observer in ("network", "container", "storage"):
            self.assertEqual(result["statuses"].get(observer), "running", result["stderr"])
        facts = result["record"]["facts"]
        self.assertEqual(facts["pid"], os.getpid())
        # The same workload identity (this process's cgroup) as the bare agent found.
        self.assertEqual(result["record"]["workload"], self.bare_workload)
        self.assertEqual(result["record"]["error"]["code"], "ECONNREFUSED")
        self.assertEqual(result["code"], 0, result["stderr"])
        self.assertIn("counters final", result["stderr"])
        # The capabilities are enough for the drain's real-time scheduling: it runs
        # real-time, or, in a container on a kernel with real-time group scheduling (this
        # VM's), the container's cpu cgroup without a real-time budget is what refuses it.
        self.assertNotIn("it needs CAP_SYS_NICE", result["stderr"])
        if not result["in_container"]:
            self.assertIn("drain: real-time scheduling (SCHED_FIFO 1)", result["stderr"])
        elif "drain: real-time scheduling (SCHED_FIFO 1)" not in result["stderr"]:
            self.assertIn("no real-time budget", result["stderr"])


class AgentPrivilegesTest(KernelRuns):
    def test_bare_metal_reference(self):
        # The node observer may be degraded for lack of a hardware PMU (this VM); the others run.
        for observer in ("network", "container", "storage"):
            self.assertEqual(self.bare_statuses.get(observer), "running")
        self.assertIn(self.bare_statuses.get("node"), ("running", "degraded"))

    def test_agent_with_the_manifest_capabilities(self):
        privileges = Privileges(committed_daemonset())
        result = self.observe(privileges.setpriv_args() + [AGENT_BINARY, "--node", "i11d-setpriv"], "setpriv")
        self.assertEqual(result["proc"]["CapEff"], mask(privileges.capabilities))
        self.assertEqual(result["proc"]["NoNewPrivs"], "1" if privileges.no_new_privs else "0")
        self.assert_as_on_bare_metal(result)


class AgentImageTest(KernelRuns):
    """The image, run by podman with the DaemonSet's privileges translated flag by flag."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        build = run([REPO / "scripts" / "image", "agent", "--tag", IMAGE_TAG], cwd=REPO)
        assert build.returncode == 0, build.stdout + build.stderr

    @classmethod
    def tearDownClass(cls):
        run(["podman", "rmi", "--force", IMAGE])

    def run_image(self, privileges, name, extra_args=()):
        container = f"tapio-i11d-{name}-{os.getpid()}"
        argv = PODMAN + ["run", "--rm", "--name", container] + HOST_ONLY_ARGS + privileges.podman_args()
        argv += list(extra_args)
        argv += ["-e", f"NODE_NAME=i11d-{name}", IMAGE]
        stop = PODMAN + ["kill", "--signal", "INT", container]

        def pid_of():
            out = run(["podman", "inspect", "--format", "{{.State.Pid}}", container])
            return int(out.stdout.strip())

        try:
            return self.observe(argv, name, stop=stop, pid_of=pid_of)
        finally:
            run(PODMAN + ["rm", "--force", "--ignore", container])

    def test_image_with_the_daemonset_privileges(self):
        privileges = Privileges(committed_daemonset())
        result = self.run_image(privileges, "podman")
        self.assertEqual(result["node"], "i11d-podman")
        self.assertEqual(result["proc"]["CapEff"], mask(privileges.capabilities))
        self.assertEqual(result["proc"]["CapBnd"], mask(privileges.capabilities))
        self.assertEqual(result["proc"]["NoNewPrivs"], "1")
        self.assertEqual(result["proc"]["Seccomp"], "0")  # seccompProfile Unconfined
        self.assert_as_on_bare_metal(result)

    def test_image_in_a_private_cgroup_namespace(self):
        # Kubernetes gives non-privileged containers their own cgroup namespace on cgroup v2
        # nodes; the host hierarchies mounted from the node then show roots like "/../..".
        privileges = Privileges(committed_daemonset())
        result = self.run_image(privileges, "podman-cgroupns", extra_args=["--cgroupns", "private"])
        self.assertIsNotNone(result["record"]["workload"]["cgroup_path"], result["stderr"])
        self.assert_as_on_bare_metal(result)

    def test_image_with_runtime_default_seccomp_and_sys_admin(self):
        # The chart's setting for runtimes whose seccomp profile allows bpf() and
        # perf_event_open() only with CAP_SYS_ADMIN, such as this podman 4.3.
        out, docs = helm_template("agent.seccompProfile=RuntimeDefault",
                                  "agent.capabilities={BPF,PERFMON,NET_ADMIN,DAC_READ_SEARCH,SYS_NICE,SYS_ADMIN}")
        self.assertEqual(out.returncode, 0, out.stderr)
        privileges = Privileges(find(docs, "DaemonSet", "tapio-agent"))
        result = self.run_image(privileges, "podman-sysadmin")
        self.assertEqual(result["proc"]["Seccomp"], "2")  # filtered by podman's profile
        self.assertEqual(result["proc"]["CapEff"], mask(privileges.capabilities))
        self.assert_as_on_bare_metal(result)

    def test_runtime_default_seccomp_without_sys_admin_is_refused_here(self):
        # Why the chart's default is Unconfined: podman 4.3's profile (containers-common
        # 0.50, Debian 12) answers bpf() with EPERM unless CAP_SYS_ADMIN is held, whatever
        # CAP_BPF says. If this starts passing, that runtime now gates bpf() on CAP_BPF:
        # update README "Capabilities and runtimes".
        out, docs = helm_template("agent.seccompProfile=RuntimeDefault")
        self.assertEqual(out.returncode, 0, out.stderr)
        privileges = Privileges(find(docs, "DaemonSet", "tapio-agent"))
        container = f"tapio-i11d-refused-{os.getpid()}"
        argv = PODMAN + ["run", "--rm", "--name", container] + HOST_ONLY_ARGS + privileges.podman_args()
        agent = AgentRun(argv + ["-e", "NODE_NAME=i11d-refused", IMAGE],
                         stop=PODMAN + ["kill", "--signal", "INT", container], name="refused")
        try:
            _, statuses = agent.wait_ready()
            for observer in ("network", "container", "storage"):
                self.assertEqual(statuses.get(observer), "failed", agent.stderr())
            self.assertIn("failed to create map", agent.stderr())
            self.assertIn("Operation not permitted", agent.stderr())
            # The agent says why: it holds CAP_BPF and CAP_PERFMON, and a filter is active.
            self.assertIn("a seccomp filter is active", agent.stderr())
            self.assertEqual(agent.stop(), 0)
        finally:
            agent.cleanup()
            run(PODMAN + ["rm", "--force", "--ignore", container])


class ImagesEndToEndTest(unittest.TestCase):
    """Both images as the chart runs them (auth.mode=token): the controller with the
    Deployment's args, user and profile ConfigMap, the agent with the DaemonSet's
    privileges and config, which reports a refused connect made on the host to the
    controller. The only change to the rendered objects: the controller's Service name
    becomes 127.0.0.1 (no cluster DNS here) and it listens on loopback only."""

    @classmethod
    def setUpClass(cls):
        kernel_test_allowed()
        tag = f"e2e-i11d-{os.getpid()}"
        build = run([REPO / "scripts" / "image", "--tag", tag], cwd=REPO)
        assert build.returncode == 0, build.stdout + build.stderr
        cls.images = {name: f"localhost/tapio-{name}:{tag}" for name in ("agent", "controller")}

    @classmethod
    def tearDownClass(cls):
        for image in getattr(cls, "images", {}).values():
            run(["podman", "rmi", "--force", image])

    def test_agent_image_reports_to_controller_image(self):
        port = closed_local_port()
        # No API server here: the pod watch stays off.
        out, docs = helm_template("auth.mode=token", f"controller.port={port}", "controller.podNames=false")
        self.assertEqual(out.returncode, 0, out.stderr)
        deployment = find(docs, "Deployment", "tapio-controller")["spec"]["template"]["spec"]
        (ctl,) = deployment["containers"]
        daemonset = find(docs, "DaemonSet", "tapio-agent")
        (agent_container,) = daemonset["spec"]["template"]["spec"]["containers"]
        service_url = f"http://tapio-controller.tapio-system.svc:{port}"

        work = Path(tempfile.mkdtemp(prefix="tapio-i11d-e2e-"))
        work.chmod(0o755)
        dirs = {}
        for name in ("profile", "token", "config", "state"):
            dirs[name] = work / name
            dirs[name].mkdir()
            dirs[name].chmod(0o755)
        (dirs["profile"] / "profile.yaml").write_text(find(docs, "ConfigMap", "tapio-profile")["data"]["profile.yaml"])
        token = dirs["token"] / "token"
        token.write_text(secrets.token_hex(24))
        token.chmod(0o644)  # the controller runs as the Deployment's non-root user
        agent_toml = find(docs, "ConfigMap", "tapio-agent")["data"]["agent.toml"]
        self.assertIn(service_url, agent_toml)
        (dirs["config"] / "agent.toml").write_text(agent_toml.replace(service_url, f"http://127.0.0.1:{port}"))

        pod_sc = deployment["securityContext"]
        ctl_args = [a.replace("--listen=0.0.0.0:", "--listen=127.0.0.1:") for a in ctl["args"]]
        ctl_name, agent_name = f"tapio-i11d-ctl-{os.getpid()}", f"tapio-i11d-e2e-{os.getpid()}"
        controller = AgentRun(
            PODMAN + ["run", "--rm", "--name", ctl_name] + HOST_ONLY_ARGS + [
                "--network", "host", "--user", f"{pod_sc['runAsUser']}:{pod_sc['runAsGroup']}",
                "--cap-drop", "ALL", "--security-opt", "no-new-privileges", "--read-only", "--read-only-tmpfs=false",
                "-v", f"{dirs['profile']}:/etc/tapio/profile:ro", "-v", f"{dirs['token']}:/var/run/secrets/tapio:ro",
                self.images["controller"]] + ctl_args,
            stop=PODMAN + ["kill", "--signal", "INT", ctl_name], name="controller")
        agent = None
        try:
            self.wait_ready_endpoint(port, ctl["readinessProbe"]["httpGet"]["path"], controller)
            privileges = Privileges(daemonset)
            agent = AgentRun(
                PODMAN + ["run", "--rm", "--name", agent_name] + HOST_ONLY_ARGS + privileges.podman_args() + [
                    "-e", "NODE_NAME=i11d-e2e-node",
                    "-v", f"{dirs['config']}:/etc/tapio:ro", "-v", f"{dirs['token']}:/var/run/secrets/tapio:ro",
                    "-v", f"{dirs['state']}:/var/lib/tapio:rw",
                    self.images["agent"]] + agent_container["args"],
                stop=PODMAN + ["kill", "--signal", "INT", agent_name], name="e2e-agent")
            node, statuses = agent.wait_ready()
            self.assertEqual(node, "i11d-e2e-node")
            target = closed_local_port()
            refused_connect(target)
            # The controller receives it in the agent's next batch (every 5 s by default).
            deadline = time.monotonic() + 60
            record = None
            while record is None and time.monotonic() < deadline:
                record = next((r for r in controller.records()
                               if r.get("type") == "kernel.network.connection_refused"
                               and r["facts"]["dst_port"] == target), None)
                time.sleep(0.5)
            self.assertIsNotNone(record, f"controller got no record:\n{controller.stderr()}\n{agent.stderr()}")
            self.assertEqual(record["node"], "i11d-e2e-node")
            self.assertEqual(record["facts"]["pid"], os.getpid())
            self.assertEqual(agent.stop(), 0, agent.stderr())
            self.assertEqual(controller.stop(), 0, controller.stderr())
            self.assertNotIn(token.read_text(), controller.stderr() + agent.stderr())
        finally:
            for proc in (agent, controller):
                if proc:
                    proc.cleanup()
            for name in (agent_name, ctl_name):
                run(PODMAN + ["rm", "--force", "--ignore", name])
            shutil.rmtree(work, ignore_errors=True)

    @staticmethod
    def wait_ready_endpoint(port, path, controller, timeout=60):
        """Polls the controller's `path` (the Deployment's readiness probe) until 200."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            if controller.proc.poll() is not None:
                raise AssertionError(f"controller exited ({controller.proc.returncode}):\n{controller.stderr()}")
            time.sleep(0.3)
        raise AssertionError(f"controller not ready within {timeout}s:\n{controller.stderr()}")


if __name__ == "__main__":
    unittest.main()
