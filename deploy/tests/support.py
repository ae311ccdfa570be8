"""Shared helpers of the deployment tests: the tools scripts/setup installs, rendering the
chart, reading the DaemonSet's privileges, and running the agent and reading its output."""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import unittest
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "deploy" / "helm" / "tapio"
MANIFESTS = REPO / "deploy" / "manifests" / "tapio.yaml"
TOOLS = Path(subprocess.run([REPO / "scripts" / "tools-dir"], capture_output=True, text=True, check=True).stdout.strip())
HELM = TOOLS / "bin" / "helm"
VALIDATE = TOOLS / "venv" / "bin" / "kubernetes-validate"
AGENT_BINARY = REPO / "target" / "agent" / "tapio-agent"


class StrictLoader(yaml.SafeLoader):
    """A safe loader that refuses a mapping with a key twice: PyYAML keeps the last one
    silently, while the API server's decoder and kubectl's strict mode refuse or warn."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, StrictLoader.construct_mapping)


def load_all(text):
    """Every non-empty YAML document of `text`, duplicate keys refused."""
    return [d for d in yaml.load_all(text, Loader=StrictLoader) if d]


def run(args, **kwargs):
    """Runs a command, returning the CompletedProcess (text, output captured)."""
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, **kwargs)


def helm_template(*set_args, namespace="tapio-system"):
    """Renders the chart with `--set` arguments; returns (CompletedProcess, [objects])."""
    args = [HELM, "template", "tapio", CHART, "--namespace", namespace]
    for s in set_args:
        args += ["--set", s]
    out = run(args)
    docs = load_all(out.stdout) if out.returncode == 0 else []
    return out, docs


def find(docs, kind, name):
    """The one object of `kind` named `name` among `docs`."""
    hits = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    if len(hits) != 1:
        raise AssertionError(f"expected one {kind}/{name}, found {len(hits)}")
    return hits[0]


def committed_daemonset():
    """The agent DaemonSet of the committed plain manifests (the drift test keeps them equal
    to the chart's default rendering)."""
    return find(load_all(MANIFESTS.read_text()), "DaemonSet", "tapio-agent")


class Privileges:
    """What a DaemonSet grants its agent container, read field by field. Anything that
    grants privileges and is not understood here fails, so a run "with the DaemonSet's
    privileges" cannot silently grant fewer or more than the manifest does."""

    KNOWN_POD = {"hostNetwork", "hostPID", "hostIPC"}
    KNOWN_CONTAINER_SC = {
        "runAsUser", "runAsNonRoot", "privileged", "allowPrivilegeEscalation",
        "readOnlyRootFilesystem", "capabilities", "seccompProfile",
    }

    def __init__(self, daemonset):
        pod = daemonset["spec"]["template"]["spec"]
        if pod.get("securityContext"):
            raise AssertionError(f"pod securityContext not translated: {pod['securityContext']}")
        (container,) = pod["containers"]
        sc = container["securityContext"]
        unknown = set(sc) - self.KNOWN_CONTAINER_SC
        if unknown:
            raise AssertionError(f"container securityContext fields not translated: {sorted(unknown)}")
        caps = sc["capabilities"]
        if caps.get("drop") != ["ALL"]:
            raise AssertionError(f"capabilities.drop must be [ALL], is {caps.get('drop')}")
        self.capabilities = list(caps.get("add", []))
        self.privileged = bool(sc.get("privileged", False))
        self.no_new_privs = sc.get("allowPrivilegeEscalation") is False
        self.read_only_root = bool(sc.get("readOnlyRootFilesystem", False))
        self.uid = sc["runAsUser"]
        self.seccomp = sc["seccompProfile"]["type"]
        self.host_network = bool(pod.get("hostNetwork", False))
        self.host_pid = bool(pod.get("hostPID", False))
        self.host_ipc = bool(pod.get("hostIPC", False))
        host_paths = {v["name"]: v["hostPath"]["path"] for v in pod["volumes"] if "hostPath" in v}
        self.host_mounts = [
            (host_paths[m["name"]], m["mountPath"], bool(m.get("readOnly", False)))
            for m in container["volumeMounts"]
            if m["name"] in host_paths
        ]

    def podman_args(self):
        """podman run flags granting exactly these privileges."""
        args = ["--cap-drop", "ALL"]
        if self.capabilities:
            args += ["--cap-add", ",".join(self.capabilities)]
        if self.privileged:
            args.append("--privileged")
        if self.no_new_privs:
            args += ["--security-opt", "no-new-privileges"]
        if self.seccomp == "Unconfined":
            args += ["--security-opt", "seccomp=unconfined"]
        elif self.seccomp != "RuntimeDefault":
            raise AssertionError(f"seccompProfile {self.seccomp} not translated")
        if self.read_only_root:
            # Kubernetes mounts no tmpfs of its own on a read-only root; podman would.
            args += ["--read-only", "--read-only-tmpfs=false"]
        args += ["--user", str(self.uid)]
        args += ["--network", "host" if self.host_network else "none"]
        if self.host_pid:
            args += ["--pid", "host"]
        if self.host_ipc:
            args += ["--ipc", "host"]
        for host, mount, ro in self.host_mounts:
            args += ["-v", f"{host}:{mount}:{'ro' if ro else 'rw'}"]
        return args

    def setpriv_args(self):
        """setpriv flags that leave a uid-0 process exactly these capabilities (no seccomp
        filter: that is the container runtime's part)."""
        if self.uid != 0:
            raise AssertionError("setpriv translation assumes the agent runs as uid 0")
        caps = ",".join(["-all"] + [f"+{c.lower()}" for c in self.capabilities])
        args = ["setpriv", "--inh-caps", "-all", "--bounding-set", caps]
        if self.no_new_privs:
            args.append("--no-new-privs")
        return args + ["--"]


def kernel_test_allowed():
    """Root runs kernel tests; without root they skip with the reason, except under CI
    (CI runs as root), where a skip is a failure."""
    if os.geteuid() == 0:
        return
    if os.environ.get("CI"):
        raise AssertionError("kernel tests must run as root in CI, and this run is not root")
    raise unittest.SkipTest("not root: the real-kernel deployment tests need root")


def closed_local_port():
    """A loopback TCP port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def refused_connect(port):
    """Makes one connect that the kernel refuses, from this (host) process."""
    with socket.socket() as s:
        try:
            s.connect(("127.0.0.1", port))
        except ConnectionRefusedError:
            return
    raise AssertionError(f"connect to 127.0.0.1:{port} was not refused")


READY = re.compile(r"ready: node (\S+), observers \[([^\]]*)\]")


class AgentRun:
    """One agent process (bare, under setpriv, or in a container): waits for its ready
    line, makes a refused connect on the host, waits for that evidence, stops it with
    SIGINT and keeps its output."""

    def __init__(self, argv, stop=None, name="agent"):
        self.dir = Path(tempfile.mkdtemp(prefix=f"tapio-i11d-{name}-"))
        self.stdout_path = self.dir / "stdout"
        self.stderr_path = self.dir / "stderr"
        self.stop_cmd = stop
        with open(self.stdout_path, "w") as out, open(self.stderr_path, "w") as err:
            self.proc = subprocess.Popen([str(a) for a in argv], stdout=out, stderr=err)

    def stderr(self):
        return self.stderr_path.read_text(errors="replace")

    def records(self):
        return [json.loads(l) for l in self.stdout_path.read_text().splitlines() if l.startswith("{")]

    def wait_ready(self, timeout=90):
        """The observers' statuses from the ready line, e.g. {"network": "running", …}."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = READY.search(self.stderr())
            if m:
                return m.group(1), dict(kv.split("=", 1) for kv in m.group(2).split(", ") if kv)
            if self.proc.poll() is not None:
                raise AssertionError(f"agent exited ({self.proc.returncode}) before ready:\n{self.stderr()}")
            time.sleep(0.2)
        raise AssertionError(f"agent not ready within {timeout}s:\n{self.stderr()}")

    def wait_refused(self, port, timeout=30):
        """The connection_refused record of this process's connect to `port`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for r in self.records():
                if r["type"] == "kernel.network.connection_refused" and r["facts"]["dst_port"] == port:
                    return r
            time.sleep(0.2)
        raise AssertionError(f"no connection_refused for port {port} within {timeout}s:\n{self.stderr()}")

    def stop(self, timeout=60):
        """SIGINT (the agent flushes and exits 0); returns the exit status."""
        if self.proc.poll() is None:
            if self.stop_cmd:
                run(self.stop_cmd)
            else:
                self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"agent did not exit within {timeout}s of SIGINT")

    def cleanup(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)
