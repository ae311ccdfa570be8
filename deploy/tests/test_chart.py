"""The Helm chart and the plain manifests: lint, rendering under several value sets, offline
validation of every object against the Kubernetes schemas (kubernetes-validate --strict),
drift between the chart and deploy/manifests, and the shape of what the agent and the
controller are granted. No cluster and no root needed."""

import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
import unittest
from pathlib import Path

import yaml

from support import (AGENT_BINARY, CHART, HELM, MANIFESTS, REPO, VALIDATE, find, helm_template, load_all, run)

# Value sets the chart must render into valid objects (each a list of --set arguments).
VALUE_SETS = {
    "defaults": [],
    "plain-manifests": ["createNamespace=true"],
    "auth-token": ["auth.mode=token", "auth.tokenSecret=my-token"],
    "auth-none": ["auth.mode=none", "controller.podNames=false"],
    "runtime-default-seccomp": [
        "agent.seccompProfile=RuntimeDefault",
        "agent.capabilities={BPF,PERFMON,NET_ADMIN,DAC_READ_SEARCH,SYS_NICE,SYS_ADMIN}",
    ],
    # Top-level keys ahead of a table: they must stay top-level, not land in [controller].
    "extra-top-level-keys": ["agent.extraConfig=queue_capacity = 8192\ndrain_realtime = false\n[network]\nretransmit_count = 15"],
    "agent-only": ["controller.enabled=false"],
    "controller-only": ["agent.enabled=false"],
    # RBAC without the pod watch: TokenReviews cluster-wide, pods get in a namespaced Role.
    "kubernetes-auth-without-pod-names": ["controller.podNames=false"],
    # Nothing left for the controller to read from the API: no RBAC objects.
    "token-auth-without-pod-names": ["auth.mode=token", "controller.podNames=false"],
    "no-priority-class": ["agent.priorityClassName="],
    "registry-pinned": [
        "image.agent.repository=registry.example.com/tapio/agent",
        f"image.agent.digest=sha256:{'a' * 64}",
        "image.controller.repository=registry.example.com/tapio/controller",
        f"image.controller.digest=sha256:{'b' * 64}",
        "image.pullSecrets[0].name=regcred",
    ],
    "custom-priority-class": ["agent.priorityClassName=tapio-node", "agent.priorityClassQuota.pods=20000"],
    "controller-priority-class": ["controller.priorityClassName=system-cluster-critical"],
    "tuned": [
        "controller.allowFrom[0].ipBlock.cidr=10.0.0.0/16",
        "controller.allowFrom[1].ipBlock.cidr=10.244.0.0/16",
        "agent.extraConfig=[network]\nretransmit_count = 15",
        "image.agent.tag=dev",
        "agent.nodeSelector.tapio\\.dev/agent=enabled",
        "controller.extraArgs={--max-agents=5000}",
        "agent.maxUnavailable=10%",
    ],
    # A durable file sink on a claim: the read-only root needs a volume for it.
    "file-sink": [
        "controller.extraArgs={--sink=file,--sink-path=/var/lib/tapio-events/events.jsonl}",
        "controller.extraVolumes[0].name=events",
        "controller.extraVolumes[0].persistentVolumeClaim.claimName=tapio-events",
        "controller.extraVolumeMounts[0].name=events",
        "controller.extraVolumeMounts[0].mountPath=/var/lib/tapio-events",
    ],
    # An IPv6 single-stack cluster: the pod has no IPv4 address to listen on.
    "ipv6-single-stack": ["controller.listenAddress=::"],
    # The Prometheus Operator's objects (kinds kubernetes-validate has no schema for: their
    # shape is asserted in MonitoringTest).
    "prometheus-operator": [
        "metrics.serviceMonitor.enabled=true",
        "metrics.serviceMonitor.labels.release=kube-prometheus-stack",
        "metrics.prometheusRule.enabled=true",
        "metrics.prometheusRule.labels.release=kube-prometheus-stack",
    ],
}

ALERTS = REPO / "deploy" / "prometheus" / "tapio-alerts.yaml"

MIB = 1024 * 1024
QUANTITY_SUFFIXES = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30}


def quantity(value):
    """A Kubernetes quantity without a fraction ("512Mi", "100k", 20000) as a number."""
    m = re.fullmatch(r"(\d+)([kMG]i?|Ki)?", str(value))
    if not m:
        raise AssertionError(f"quantity {value!r} not understood")
    return int(m.group(1)) * QUANTITY_SUFFIXES[m.group(2) or ""]


def rust_default(path, field):
    """The clap `default_value_t` of the `usize` field `field` in a Rust source file."""
    m = re.search(r"default_value_t = ([0-9_ *]+)\)\]\s*pub " + field + r": usize", path.read_text())
    if not m:
        raise AssertionError(f"no default_value_t for {field} in {path}")
    product = 1
    for factor in m.group(1).split("*"):
        product *= int(factor.strip().replace("_", ""))
    return product


def rbac_grants(docs):
    """(scope, API group, resource, verb) of every rule of the controller's roles: scope is
    "cluster" for the ClusterRole, else the Role's namespace."""
    grants = set()
    for d in docs:
        if d["kind"] in ("ClusterRole", "Role") and d["metadata"]["name"].startswith("tapio-controller"):
            scope = d["metadata"].get("namespace", "cluster")
            for rule in d["rules"]:
                for group in rule["apiGroups"]:
                    for resource in rule["resources"]:
                        for verb in rule["verbs"]:
                            grants.add((scope, group, resource, verb))
    return grants

# Oldest Kubernetes the chart declares (Chart.yaml kubeVersion), kubectl's, and the newest
# schema kubernetes-validate ships.
KUBERNETES_VERSIONS = ["1.25.0", "1.33.0", "1.37.0"]


def validate(text):
    """kubernetes-validate --strict on `text` against every version; returns failures."""
    failures = []
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", prefix="tapio-i11d-") as f:
        f.write(text)
        f.flush()
        for version in KUBERNETES_VERSIONS:
            out = run([VALIDATE, "--strict", "--quiet", "-k", version, f.name])
            if out.returncode != 0:
                failures.append(f"{version}: {out.stdout}{out.stderr}")
    return failures



def wait_listening_or_exit(proc, within):
    """Waits until `proc` logs "listening on" (then stops it) or exits, at most `within`
    seconds (a slow start on a loaded machine is not an exit). Returns (listening, stderr)."""
    lines, listening = [], threading.Event()

    def read():
        for line in proc.stderr:
            lines.append(line)
            if "listening on" in line:
                listening.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    deadline = time.monotonic() + within
    while not listening.is_set() and proc.poll() is None:
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait(timeout=10)
            raise AssertionError(f"neither listening nor exited within {within} s: {''.join(lines)}")
        time.sleep(0.05)
    if listening.is_set():
        proc.terminate()
    proc.wait(timeout=10)
    reader.join(timeout=10)
    return listening.is_set(), "".join(lines)

class ChartTest(unittest.TestCase):
    def test_lint_under_every_value_set(self):
        for name, sets in VALUE_SETS.items():
            with self.subTest(values=name):
                args = [HELM, "lint", "--strict", CHART]
                for s in sets:
                    args += ["--set", s]
                out = run(args)
                self.assertEqual(out.returncode, 0, out.stdout + out.stderr)

    def test_every_rendered_object_passes_the_kubernetes_schemas(self):
        for name, sets in VALUE_SETS.items():
            with self.subTest(values=name):
                out, docs = helm_template(*sets)
                self.assertEqual(out.returncode, 0, out.stderr)
                self.assertGreaterEqual(len(docs), 3, "too few objects rendered")
                self.assertEqual(validate(out.stdout), [])

    def test_the_validator_rejects_an_unknown_field(self):
        # The schema check above can fail: an unknown field in the agent's securityContext
        # is refused under --strict.
        ds = find(load_all(MANIFESTS.read_text()), "DaemonSet", "tapio-agent")
        ds["spec"]["template"]["spec"]["containers"][0]["securityContext"]["privilegedd"] = True
        failures = validate(yaml.safe_dump(ds))
        self.assertEqual(len(failures), len(KUBERNETES_VERSIONS))
        self.assertIn("privilegedd", failures[0])

    def test_committed_manifests_are_the_chart_rendered(self):
        out = run([REPO / "scripts" / "render-manifests", "--stdout"])
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertTrue(
            out.stdout == MANIFESTS.read_text(),
            "deploy/manifests/tapio.yaml differs from the chart: run scripts/render-manifests",
        )
        # The chart's copy of the alert rules (its PrometheusRule reads no file outside it).
        self.assertTrue(
            (CHART / "files" / "tapio-alerts.yaml").read_text() == ALERTS.read_text(),
            "deploy/helm/tapio/files/tapio-alerts.yaml differs from deploy/prometheus: run scripts/render-manifests",
        )

    def test_values_schema_refuses_what_the_chart_would_ignore_or_the_cluster_refuse(self):
        # Without a schema Helm renders a misspelt key as if it were absent: the defaults
        # apply and nothing says so (an agent without the toleration asked for, say).
        for sets, named in [
            (["agent.tolerationz[0].operator=Exists"], "'tolerationz'"),
            (["controler.podNames=false"], "'controler'"),
            (["controller.podName=false"], "'podName'"),
            (["image.agent.tags=v2"], "'tags'"),
            (["auth.tokenExpirationSecond=7200"], "'tokenExpirationSecond'"),
            (["metrics.serviceMonitor.enable=true"], "'enable'"),
            (["agent.priorityClassQuota.pod=10"], "'pod'"),
            # The agent reads an unknown TAPIO_LOG as info, the controller exits at once.
            (["agent.logLevel=warning"], "/agent/logLevel"),
            (["controller.logLevel=warning"], "/controller/logLevel"),
            # The API server refuses a projected token valid for under 10 minutes.
            (["auth.tokenExpirationSeconds=300"], "/auth/tokenExpirationSeconds"),
            (["controller.port=70000"], "/controller/port"),
            (["metrics.serviceMonitor.interval=30"], "/metrics/serviceMonitor/interval"),
            # The API server refuses a DaemonSet that may replace no agent (maxSurge is 0).
            (["agent.maxUnavailable=0"], "/agent/maxUnavailable"),
            (["agent.maxUnavailable=0%"], "/agent/maxUnavailable"),
            (["agent.maxUnavailable=150%"], "/agent/maxUnavailable"),
        ]:
            with self.subTest(sets=sets):
                out, _ = helm_template(*sets)
                self.assertNotEqual(out.returncode, 0, f"{sets} rendered")
                self.assertIn(named, out.stderr)
        # What the schema must still let through: a removed selector, a numeric tag.
        for sets in (["agent.nodeSelector=null"], ["image.agent.tag=2"], ["image.controller.tag=1.2"],
                     ["auth.tokenExpirationSeconds=600"]):
            with self.subTest(sets=sets):
                out, _ = helm_template(*sets)
                self.assertEqual(out.returncode, 0, out.stderr)

    def test_recommended_labels_on_every_object(self):
        # Kubernetes' recommended labels, so `kubectl get -l app.kubernetes.io/component=agent`
        # and dashboards find each part; label values stay within 63 characters with the
        # longest release name Helm allows (53).
        version = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
        release = "r" * 53
        for name, sets in VALUE_SETS.items():
            with self.subTest(values=name):
                args = [HELM, "template", release, CHART, "--namespace", "tapio-system"]
                for s in sets:
                    args += ["--set", s]
                out = run(args)
                self.assertEqual(out.returncode, 0, out.stderr)
                for d in load_all(out.stdout):
                    labels = d["metadata"]["labels"]
                    for value in labels.values():
                        self.assertLessEqual(len(value), 63, (d["kind"], value))
                    self.assertEqual(labels["app.kubernetes.io/instance"], release)
                    self.assertEqual(labels["app.kubernetes.io/version"], version)
                    self.assertEqual(labels["app.kubernetes.io/part-of"], "tapio")
                    self.assertEqual(labels["app.kubernetes.io/managed-by"], "Helm")
                    if d["kind"] == "Namespace":
                        continue
                    self.assertIn(labels["app.kubernetes.io/component"], ("agent", "controller"), d["kind"])
                    self.assertEqual(labels["app.kubernetes.io/name"], "tapio-" + labels["app.kubernetes.io/component"])
                    if d["kind"] in ("DaemonSet", "Deployment"):
                        pod_labels = d["spec"]["template"]["metadata"]["labels"]
                        self.assertEqual({k: v for k, v in pod_labels.items() if k.startswith("app.kubernetes.io/")},
                                         {k: v for k, v in labels.items() if k.startswith("app.kubernetes.io/")})
                        self.assertLessEqual(d["spec"]["selector"]["matchLabels"].items(), pod_labels.items())

    def test_every_value_in_the_schema_is_in_values_yaml(self):
        # Every key the schema allows is documented by a default in values.yaml, and every
        # default is allowed (helm template of the defaults would fail otherwise).
        schema = json.loads((CHART / "values.schema.json").read_text())
        values = yaml.safe_load((CHART / "values.yaml").read_text())

        def resolve(node):
            ref = node.get("$ref")
            return schema["definitions"][ref.rsplit("/", 1)[1]] if ref else node

        def walk(node, value, path):
            node = resolve(node)
            if "properties" not in node or node.get("additionalProperties", True) is not False:
                return
            self.assertIsInstance(value, dict, path)
            for key, sub in node["properties"].items():
                if path == "" and key == "global":
                    continue  # Helm's own, for parent charts
                self.assertIn(key, value, f"{path}.{key} is in values.schema.json, not in values.yaml")
                walk(sub, value[key], f"{path}.{key}")
            for key in value:
                self.assertIn(key, node["properties"], f"{path}.{key} is in values.yaml, not in values.schema.json")

        walk(schema, values, "")

    def test_both_workloads_run_on_linux_nodes_only(self):
        # The agent tolerates every taint: without the selector it would land on Windows and
        # virtual-kubelet nodes, never become Ready there, and (maxUnavailable: 1) block
        # every later rollout of the DaemonSet.
        for sets, expected in [
            ([], {"kubernetes.io/os": "linux"}),
            (["agent.nodeSelector.tapio\\.dev/agent=enabled"], {"kubernetes.io/os": "linux", "tapio.dev/agent": "enabled"}),
        ]:
            with self.subTest(sets=sets):
                out, docs = helm_template(*sets)
                self.assertEqual(out.returncode, 0, out.stderr)
                ds = find(docs, "DaemonSet", "tapio-agent")
                self.assertEqual(ds["spec"]["template"]["spec"]["nodeSelector"], expected)
                self.assertEqual(ds["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"], 1)
                ctl = find(docs, "Deployment", "tapio-controller")["spec"]["template"]["spec"]
                self.assertEqual(ctl["nodeSelector"], {"kubernetes.io/os": "linux"})
        # Faster rollouts on large clusters, by number or share of the nodes.
        for value, expected in (("3", 3), ("10%", "10%")):
            _, docs = helm_template(f"agent.maxUnavailable={value}")
            self.assertEqual(find(docs, "DaemonSet", "tapio-agent")["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"], expected)
        # Removable when a cluster labels its nodes otherwise.
        _, docs = helm_template("agent.nodeSelector=null")
        self.assertNotIn("nodeSelector", find(docs, "DaemonSet", "tapio-agent")["spec"]["template"]["spec"])

    def test_images_by_tag_or_pinned_by_digest_with_pull_secrets(self):
        def pods(*sets):
            out, docs = helm_template(*sets)
            self.assertEqual(out.returncode, 0, out.stderr)
            return [find(docs, kind, name)["spec"]["template"]["spec"]
                    for kind, name in [("DaemonSet", "tapio-agent"), ("Deployment", "tapio-controller")]]

        agent, controller = pods()
        version = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
        self.assertEqual(agent["containers"][0]["image"], f"localhost/tapio-agent:{version}")
        self.assertEqual(controller["containers"][0]["image"], f"localhost/tapio-controller:{version}")
        self.assertNotIn("imagePullSecrets", agent)
        self.assertNotIn("imagePullSecrets", controller)

        agent, controller = pods(*VALUE_SETS["registry-pinned"], "image.agent.tag=ignored")
        self.assertEqual(agent["containers"][0]["image"], f"registry.example.com/tapio/agent@sha256:{'a' * 64}")
        self.assertEqual(controller["containers"][0]["image"], f"registry.example.com/tapio/controller@sha256:{'b' * 64}")
        self.assertEqual(agent["imagePullSecrets"], [{"name": "regcred"}])
        self.assertEqual(controller["imagePullSecrets"], [{"name": "regcred"}])

    def test_namespace_advice_keeps_the_pod_security_label(self):
        # Helm's --create-namespace makes a namespace without the label the agent needs:
        # the advice is to create and label it, as README shows, with the label the
        # rendered Namespace carries.
        values = (CHART / "values.yaml").read_text()
        advice = re.search(r"((?:# .*\n)+)createNamespace: false", values).group(1)
        self.assertIn("create and label the namespace first", advice)
        self.assertNotRegex(advice, r"with Helm use --create-namespace")
        _, docs = helm_template("createNamespace=true")
        labels = find(docs, "Namespace", "tapio-system")["metadata"]["labels"]
        self.assertEqual(labels["pod-security.kubernetes.io/enforce"], "privileged")
        self.assertIn("pod-security.kubernetes.io/enforce=privileged", advice)
        readme = (REPO / "README.md").read_text()
        self.assertIn("kubectl label namespace tapio-system pod-security.kubernetes.io/enforce=privileged", readme)

    def test_readme_counts_the_value_sets(self):
        words = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
                 "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen",
                 "eighteen", "nineteen", "twenty"]
        readme = (REPO / "README.md").read_text()
        m = re.search(r"under (\w+) value sets", readme)
        self.assertIsNotNone(m, "README no longer says how many value sets the chart is rendered under")
        self.assertEqual(m.group(1), words[len(VALUE_SETS)])

    def test_bad_values_fail_with_the_value_named(self):
        for sets, message in [
            (["auth.mode=oidc"], "auth.mode must be kubernetes, token or none"),
            (["agent.seccompProfile=Localhost"], "agent.seccompProfile must be Unconfined or RuntimeDefault"),
            # A tag in the digest field, or a digest without its algorithm, would render an
            # image reference the runtime refuses only when the pod is scheduled.
            (["image.agent.digest=v1.2"], "image.agent.digest must be sha256:"),
            ([f"image.controller.digest={'c' * 64}"], "image.controller.digest must be sha256:"),
        ]:
            with self.subTest(sets=sets):
                out, _ = helm_template(*sets)
                self.assertNotEqual(out.returncode, 0)
                self.assertIn(message, out.stderr)


class AgentDaemonSetTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        out, cls.docs = helm_template()
        assert out.returncode == 0, out.stderr
        cls.ds = find(cls.docs, "DaemonSet", "tapio-agent")
        cls.pod = cls.ds["spec"]["template"]["spec"]
        (cls.container,) = cls.pod["containers"]

    def test_node_name_comes_from_the_pod_spec(self):
        env = {e["name"]: e for e in self.container["env"]}
        self.assertEqual(env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"], "spec.nodeName")

    def test_least_privilege(self):
        sc = self.container["securityContext"]
        self.assertEqual(sc["capabilities"]["drop"], ["ALL"])
        self.assertEqual(sc["capabilities"]["add"], ["BPF", "PERFMON", "NET_ADMIN", "DAC_READ_SEARCH", "SYS_NICE"])
        self.assertIs(sc["privileged"], False)
        self.assertIs(sc["allowPrivilegeEscalation"], False)
        self.assertIs(sc["readOnlyRootFilesystem"], True)
        self.assertEqual(sc["seccompProfile"], {"type": "Unconfined"})
        self.assertNotIn("hostPID", self.pod)
        self.assertIs(self.pod["automountServiceAccountToken"], False)
        sa = find(self.docs, "ServiceAccount", "tapio-agent")
        self.assertIs(sa["automountServiceAccountToken"], False)
        # The agent calls no API: nothing binds a role to its ServiceAccount.
        for d in self.docs:
            if d["kind"] in ("RoleBinding", "ClusterRoleBinding"):
                self.assertNotIn("tapio-agent", [s["name"] for s in d["subjects"]])

    def test_host_facts_the_agent_reads(self):
        self.assertIs(self.pod["hostNetwork"], True)  # ip_local_port_range is per netns
        self.assertEqual(self.pod["dnsPolicy"], "ClusterFirstWithHostNet")
        host = {v["name"]: v["hostPath"]["path"] for v in self.pod["volumes"] if "hostPath" in v}
        mounts = {m["name"]: m for m in self.container["volumeMounts"]}
        self.assertEqual(set(host.values()), {"/sys/kernel/btf", "/sys/kernel/tracing", "/sys/fs/cgroup"})
        for name, path in host.items():
            self.assertEqual(mounts[name]["mountPath"], path)
            self.assertIs(mounts[name]["readOnly"], True)

    def test_every_node_at_node_critical_priority(self):
        self.assertEqual(self.pod["tolerations"], [{"operator": "Exists"}])
        self.assertEqual(self.pod["priorityClassName"], "system-node-critical")

    def test_state_volume_holds_a_saved_config_and_its_temporary_copy(self):
        # The saved config may be up to CONFIG_BYTES as received, is written as pretty JSON
        # (larger), and the durable replace writes a temporary copy beside it: room for two
        # files of twice the cap, or the kubelet evicts the agent for using its emptyDir.
        m = re.search(r"CONFIG_BYTES: u64 = ([0-9 *]+);", (REPO / "crates/tapio-wire/src/capped.rs").read_text())
        config_bytes = 1
        for factor in m.group(1).split("*"):
            config_bytes *= int(factor)
        state = next(v for v in self.pod["volumes"] if v["name"] == "state")
        self.assertGreaterEqual(quantity(state["emptyDir"]["sizeLimit"]), 2 * 2 * config_bytes)
        mount = next(m for m in self.container["volumeMounts"] if m["name"] == "state")
        config = find(self.docs, "ConfigMap", "tapio-agent")["data"]["agent.toml"]
        self.assertIn(f'state_file = "{mount["mountPath"]}/controller-state.json"', config)

    def test_requests_and_limits(self):
        res = self.container["resources"]
        for kind in ("requests", "limits"):
            self.assertEqual(set(res[kind]), {"cpu", "memory"})

    def test_projected_token_with_the_tapio_audience(self):
        token = next(v for v in self.pod["volumes"] if v["name"] == "token")
        (source,) = token["projected"]["sources"]
        self.assertEqual(source["serviceAccountToken"]["audience"], "tapio")
        self.assertEqual(source["serviceAccountToken"]["path"], "token")
        mount = next(m for m in self.container["volumeMounts"] if m["name"] == "token")
        self.assertEqual(mount["mountPath"], "/var/run/secrets/tapio")
        config = find(self.docs, "ConfigMap", "tapio-agent")["data"]["agent.toml"]
        self.assertIn('token_file = "/var/run/secrets/tapio/token"', config)
        self.assertIn('url = "http://tapio-controller.tapio-system.svc:7470"', config)

    def test_rendered_agent_config_passes_the_agents_own_check(self):
        build = run(["cargo", "build", "--quiet", "--profile", "agent", "-p", "tapio-agent"], cwd=REPO)
        self.assertEqual(build.returncode, 0, build.stderr)
        for name, sets in VALUE_SETS.items():
            out, docs = helm_template(*sets)
            self.assertEqual(out.returncode, 0, f"{name}: {out.stderr}")
            configs = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "tapio-agent"]
            # One config wherever the agent is rendered: an empty list would check nothing.
            self.assertEqual(len(configs), 0 if "agent.enabled=false" in sets else 1, name)
            for cm in configs:
                with self.subTest(values=name), tempfile.TemporaryDirectory(prefix="tapio-i11d-") as tmp:
                    path = Path(tmp) / "agent.toml"
                    path.write_text(cm["data"]["agent.toml"])
                    check = run([AGENT_BINARY, "--check-config", "--config", path])
                    self.assertEqual(check.returncode, 0, check.stdout + check.stderr)
                    self.assertIn("config ok", check.stdout + check.stderr)

    def test_rendered_controller_args_are_the_controllers_own(self):
        # The controller is started with exactly the rendered arguments (files the pod
        # mounts replaced by local copies, the listen address by a free loopback port).
        # A flag it does not know, or settings it refuses, end it at once with exit 2
        # ("invalid configuration"); accepted ones get past that to binding and, in the
        # Kubernetes modes, to looking for in-cluster credentials, which this host lacks.
        build = run(["cargo", "build", "--quiet", "-p", "tapio-controller"], cwd=REPO)
        self.assertEqual(build.returncode, 0, build.stderr)
        binary = REPO / "target" / "debug" / "tapio-controller"
        for name, sets in VALUE_SETS.items():
            out, docs = helm_template(*sets)
            self.assertEqual(out.returncode, 0, f"{name}: {out.stderr}")
            deployments = [d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "tapio-controller"]
            self.assertEqual(len(deployments), 0 if "controller.enabled=false" in sets else 1, name)
            for deployment in deployments:
                args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
                with self.subTest(values=name), tempfile.TemporaryDirectory(prefix="tapio-i11d-") as tmp:
                    profile = Path(tmp) / "profile.yaml"
                    profile.write_text(find(docs, "ConfigMap", "tapio-profile")["data"]["profile.yaml"])
                    token = Path(tmp) / "token"
                    token.write_text("local-test-token\n")
                    local = []
                    for a in args:
                        if a.startswith("--listen="):
                            a = "--listen=127.0.0.1:0"
                        elif a.startswith("--profile="):
                            a = f"--profile={profile}"
                        elif a.startswith("--auth-token-file="):
                            a = f"--auth-token-file={token}"
                        elif a.startswith("--sink-path="):
                            a = f"--sink-path={Path(tmp) / 'events.jsonl'}"
                        local.append(a)
                    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBERNETES_")}
                    env["KUBECONFIG"] = str(Path(tmp) / "no-kubeconfig")
                    proc = subprocess.Popen([str(binary), *local], stdout=subprocess.DEVNULL,
                                            stderr=subprocess.PIPE, text=True, env=env)
                    listening, stderr = wait_listening_or_exit(proc, within=30)
                    if listening:
                        continue
                    code = proc.returncode
                    self.assertNotEqual(code, 2, f"{local}: {stderr}")
                    self.assertNotIn("invalid configuration", stderr)
                    self.assertNotIn("unexpected argument", stderr)
                    # It got as far as the Kubernetes client, which only these modes build.
                    self.assertTrue("--k8s-pods" in local or "--auth=kubernetes" in local, f"{local}: {stderr}")

    def test_config_change_rolls_the_agents(self):
        _, tuned = helm_template("agent.extraConfig=[network]\nretransmit_count = 15")
        before = self.ds["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
        after = find(tuned, "DaemonSet", "tapio-agent")["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
        self.assertNotEqual(before, after)


class AuthModesTest(unittest.TestCase):
    def render(self, mode):
        out, docs = helm_template(f"auth.mode={mode}")
        self.assertEqual(out.returncode, 0, out.stderr)
        ds = find(docs, "DaemonSet", "tapio-agent")["spec"]["template"]["spec"]
        ctl = find(docs, "Deployment", "tapio-controller")["spec"]["template"]["spec"]
        config = find(docs, "ConfigMap", "tapio-agent")["data"]["agent.toml"]
        return ds, ctl, config

    def test_kubernetes_mode(self):
        ds, ctl, _ = self.render("kubernetes")
        args = ctl["containers"][0]["args"]
        self.assertIn("--auth=kubernetes", args)
        # Only the agents' ServiceAccount, with the audience their tokens are projected with.
        self.assertIn("--agent-service-account=tapio-system:tapio-agent", args)
        self.assertIn("--token-audience=tapio", args)
        token = next(v for v in ds["volumes"] if v["name"] == "token")
        self.assertIn("serviceAccountToken", token["projected"]["sources"][0])

    def test_token_mode_shares_one_secret(self):
        ds, ctl, config = self.render("token")
        args = ctl["containers"][0]["args"]
        self.assertIn("--auth-token-file=/var/run/secrets/tapio/token", args)
        self.assertFalse([a for a in args if a.startswith("--auth=")])
        agent_token = next(v for v in ds["volumes"] if v["name"] == "token")
        self.assertEqual(agent_token["projected"]["sources"][0]["secret"]["name"], "tapio-token")
        ctl_token = next(v for v in ctl["volumes"] if v["name"] == "token")
        self.assertEqual(ctl_token["secret"]["secretName"], "tapio-token")
        self.assertIn("token_file", config)

    def test_none_mode_mounts_no_token(self):
        ds, ctl, config = self.render("none")
        self.assertFalse([a for a in ctl["containers"][0]["args"] if a.startswith("--auth")])
        self.assertNotIn("token", [v["name"] for v in ds["volumes"]])
        self.assertNotIn("token_file", config)


class PriorityClassQuotaTest(unittest.TestCase):
    """GKE admits system-node-critical pods only in namespaces with a ResourceQuota scoped to
    that class ("insufficient quota to match these scopes" elsewhere): the chart brings one."""

    def quotas(self, *sets, namespace="tapio-system"):
        out, docs = helm_template(*sets, namespace=namespace)
        self.assertEqual(out.returncode, 0, out.stderr)
        return docs, [d for d in docs if d["kind"] == "ResourceQuota"]

    def assert_scoped_to(self, quota, priority_class, namespace, pods):
        self.assertEqual(quota["metadata"]["namespace"], namespace)
        self.assertEqual(quota["spec"]["scopeSelector"], {"matchExpressions": [
            {"operator": "In", "scopeName": "PriorityClass", "values": [priority_class]},
        ]})
        # Pods only: a quota on cpu or memory would make every pod in scope declare them.
        self.assertEqual(list(quota["spec"]["hard"]), ["pods"])
        self.assertEqual(quantity(quota["spec"]["hard"]["pods"]), pods)

    def test_the_agents_class_is_allowed_by_default(self):
        docs, (quota,) = self.quotas()
        pod = find(docs, "DaemonSet", "tapio-agent")["spec"]["template"]["spec"]
        self.assert_scoped_to(quota, pod["priorityClassName"], "tapio-system", 100_000)
        # More than the largest clusters' nodes (one agent each): never what keeps an agent off.
        self.assertGreater(quantity(quota["spec"]["hard"]["pods"]), 65_000)
        # The plain manifests create it before the DaemonSet whose pods it admits.
        kinds = [d["kind"] for d in load_all(MANIFESTS.read_text())]
        self.assertLess(kinds.index("ResourceQuota"), kinds.index("DaemonSet"))

    def test_quota_follows_the_class_and_namespace(self):
        _, (quota,) = self.quotas("agent.priorityClassName=tapio-node", "agent.priorityClassQuota.pods=20000",
                                  namespace="observability")
        self.assert_scoped_to(quota, "tapio-node", "observability", 20_000)

    def test_the_controllers_class_is_allowed_when_it_has_one(self):
        # None by default; a class given to the controller (system-cluster-critical is as
        # restricted on GKE as the agents') is in the same quota's scope.
        docs, (quota,) = self.quotas()
        self.assertNotIn("priorityClassName", find(docs, "Deployment", "tapio-controller")["spec"]["template"]["spec"])
        for sets, classes in [
            (VALUE_SETS["controller-priority-class"], ["system-node-critical", "system-cluster-critical"]),
            (["controller.priorityClassName=system-node-critical"], ["system-node-critical"]),
            (["agent.enabled=false", "controller.priorityClassName=tapio-control"], ["tapio-control"]),
            (["agent.priorityClassName=", "controller.priorityClassName=tapio-control"], ["tapio-control"]),
        ]:
            with self.subTest(sets=sets):
                docs, (quota,) = self.quotas(*sets)
                pod = find(docs, "Deployment", "tapio-controller")["spec"]["template"]["spec"]
                self.assertEqual(pod["priorityClassName"], sets[-1].split("=", 1)[1])
                (expression,) = quota["spec"]["scopeSelector"]["matchExpressions"]
                self.assertEqual(expression, {"operator": "In", "scopeName": "PriorityClass", "values": classes})
                self.assertEqual(list(quota["spec"]["hard"]), ["pods"])
        docs, quotas = self.quotas("controller.priorityClassName=x", "agent.priorityClassQuota.enabled=false")
        self.assertEqual(quotas, [])

    def test_no_quota_without_a_class_or_an_agent_or_when_disabled(self):
        for sets in (["agent.priorityClassName="], ["agent.priorityClassQuota.enabled=false"],
                     ["agent.enabled=false"]):
            with self.subTest(sets=sets):
                docs, quotas = self.quotas(*sets)
                self.assertEqual(quotas, [])
        docs, _ = self.quotas("agent.priorityClassName=")
        self.assertNotIn("priorityClassName", find(docs, "DaemonSet", "tapio-agent")["spec"]["template"]["spec"])


class ControllerTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        out, cls.docs = helm_template()
        assert out.returncode == 0, out.stderr
        cls.deploy = find(cls.docs, "Deployment", "tapio-controller")
        cls.pod = cls.deploy["spec"]["template"]["spec"]
        (cls.container,) = cls.pod["containers"]

    def test_the_one_replica_stays_in_its_service_while_a_sink_fails(self):
        # /readyz fails while a durable sink's last write failed. As readiness it would take
        # the only endpoint out of the Service: every agent's heartbeat would fail
        # (TapioAgentSilent for all) and the refusals TapioSinkRefusingBatches counts would
        # stop. Readiness is "serving" (/healthz); the Service keeps only ready endpoints.
        self.assertEqual(self.deploy["spec"]["replicas"], 1)
        self.assertEqual(self.container["livenessProbe"]["httpGet"]["path"], "/healthz")
        self.assertEqual(self.container["readinessProbe"]["httpGet"]["path"], "/healthz")
        self.assertNotIn("publishNotReadyAddresses", find(self.docs, "Service", "tapio-controller")["spec"])
        self.assertEqual(set(self.container["resources"]), {"requests", "limits"})

    def test_extra_volumes_are_rendered_as_given_and_absent_by_default(self):
        # The root filesystem is read-only: a file sink (or NATS credentials) needs a volume.
        self.assertEqual([v["name"] for v in self.pod["volumes"]], ["profile"])
        self.assertEqual([m["name"] for m in self.container["volumeMounts"]], ["profile"])
        out, docs = helm_template(*VALUE_SETS["file-sink"])
        self.assertEqual(out.returncode, 0, out.stderr)
        pod = find(docs, "Deployment", "tapio-controller")["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        self.assertEqual(pod["volumes"][1:], [{"name": "events", "persistentVolumeClaim": {"claimName": "tapio-events"}}])
        self.assertEqual(container["volumeMounts"][1:], [{"name": "events", "mountPath": "/var/lib/tapio-events"}])
        sink_path = next(a.split("=", 1)[1] for a in container["args"] if a.startswith("--sink-path="))
        self.assertTrue(sink_path.startswith(container["volumeMounts"][1]["mountPath"] + "/"), sink_path)
        # A claim's root is often root's: the controller's group gets it (uid/gid 65532).
        self.assertEqual(pod["securityContext"]["fsGroup"], pod["securityContext"]["runAsGroup"])
        # The example in values.yaml is the one tested here.
        values = (CHART / "values.yaml").read_text()
        for line in ("extraArgs: [--sink=file, --sink-path=/var/lib/tapio-events/events.jsonl]",
                     "extraVolumes: [{name: events, persistentVolumeClaim: {claimName: tapio-events}}]",
                     "extraVolumeMounts: [{name: events, mountPath: /var/lib/tapio-events}]"):
            self.assertIn(f"  #   {line}\n", values)

    def test_unprivileged(self):
        sc = self.container["securityContext"]
        self.assertEqual(sc["capabilities"], {"drop": ["ALL"]})
        self.assertIs(sc["readOnlyRootFilesystem"], True)
        self.assertIs(sc["allowPrivilegeEscalation"], False)
        self.assertIs(self.pod["securityContext"]["runAsNonRoot"], True)
        self.assertEqual(self.pod["securityContext"]["seccompProfile"], {"type": "RuntimeDefault"})

    def test_listen_address_for_ipv4_and_ipv6_clusters(self):
        # The pod's IPv4 wildcard by default; "::" for a pod with only an IPv6 address (a
        # second --listen in extraArgs is refused by the controller, so this is the way).
        build = run(["cargo", "build", "--quiet", "-p", "tapio-controller"], cwd=REPO)
        self.assertEqual(build.returncode, 0, build.stderr)
        binary = REPO / "target" / "debug" / "tapio-controller"
        for sets, expected in [([], "--listen=0.0.0.0:7470"), (VALUE_SETS["ipv6-single-stack"], "--listen=[::]:7470"),
                               (["controller.listenAddress=fd00::7", "controller.port=9000"], "--listen=[fd00::7]:9000")]:
            with self.subTest(sets=sets):
                out, docs = helm_template(*sets)
                self.assertEqual(out.returncode, 0, out.stderr)
                args = find(docs, "Deployment", "tapio-controller")["spec"]["template"]["spec"]["containers"][0]["args"]
                self.assertIn(expected, args)
                # The controller takes the address: it gets past its flags to the (missing)
                # profile, which it reads before it binds.
                check = run([binary, expected, "--profile=/nonexistent/tapio-profile.yaml"])
                self.assertIn("cannot read profile", check.stderr)
        for bad in ("[::]", "localhost"):
            with self.subTest(bad=bad):
                out, _ = helm_template(f"controller.listenAddress={bad}")
                self.assertNotEqual(out.returncode, 0)
                self.assertIn("/controller/listenAddress", out.stderr)

    def test_pod_names_on_by_default(self):
        self.assertIn("--k8s-pods", self.container["args"])
        _, docs = helm_template("controller.podNames=false")
        args = find(docs, "Deployment", "tapio-controller")["spec"]["template"]["spec"]["containers"][0]["args"]
        self.assertNotIn("--k8s-pods", args)

    def test_profile_is_reloadable(self):
        # A subPath mount would never see ConfigMap edits; the directory mount does.
        mount = next(m for m in self.container["volumeMounts"] if m["name"] == "profile")
        self.assertNotIn("subPath", mount)
        self.assertIn(f"--profile={mount['mountPath']}/profile.yaml", self.container["args"])
        profile = yaml.safe_load(find(self.docs, "ConfigMap", "tapio-profile")["data"]["profile.yaml"])
        self.assertEqual(profile["kind"], "EvidenceProfile")
        self.assertEqual(profile["base"], "production-default")

    def test_rbac_is_exactly_what_the_controller_reads(self):
        role = find(self.docs, "ClusterRole", "tapio-controller-tapio-system")
        rules = {(r["apiGroups"][0], tuple(r["resources"]), tuple(r["verbs"])) for r in role["rules"]}
        self.assertEqual(rules, {
            ("", ("pods",), ("get", "list", "watch")),
            ("apps", ("replicasets",), ("get",)),
            ("batch", ("jobs",), ("get",)),
            ("authentication.k8s.io", ("tokenreviews",), ("create",)),
        })
        binding = find(self.docs, "ClusterRoleBinding", "tapio-controller-tapio-system")
        self.assertEqual(binding["subjects"], [
            {"kind": "ServiceAccount", "name": "tapio-controller", "namespace": "tapio-system"},
        ])

    def test_memory_limit_covers_what_the_defaults_hold(self):
        # crates/tapio-controller/README.md: ~930 bytes per stored pod (up to --k8s-max-pods)
        # over a baseline measured without the pod watch, plus up to --sink-queue-bytes of
        # records per sink; the limit must hold that with headroom, or the controller is
        # OOM-killed in the large clusters its defaults are made for.
        readme = (REPO / "crates/tapio-controller/README.md").read_text()
        per_pod = int(re.search(r"about ([\d,]+) bytes per pod", readme).group(1).replace(",", ""))
        baseline = float(re.search(r"\| without `--k8s-pods` \| ([\d.]+) MiB", readme).group(1)) * MIB
        settings = REPO / "crates/tapio-controller/src/settings.rs"
        max_pods = rust_default(settings, "k8s_max_pods")
        queue_bytes = rust_default(settings, "sink_queue_bytes")
        args = self.container["args"]

        def flag(name):
            values = [a.split("=", 1)[1] for a in args if a.startswith(name + "=")]
            values += [args[i + 1] for i, a in enumerate(args[:-1]) if a == name]
            return values

        pods = int((flag("--k8s-max-pods") or [max_pods])[-1]) if "--k8s-pods" in args else 0
        sinks = len(flag("--sink")) or 1  # stdout alone by default
        queue_bytes = int((flag("--sink-queue-bytes") or [queue_bytes])[-1])
        need = baseline + per_pod * pods + sinks * queue_bytes
        limit = quantity(self.container["resources"]["limits"]["memory"])
        self.assertGreaterEqual(limit, 1.5 * need,
                                f"limit {limit / MIB:.0f} MiB, defaults hold {need / MIB:.0f} MiB")

    def test_rbac_follows_pod_names_and_auth_mode(self):
        cluster_pods = {("cluster", "", "pods", v) for v in ("list", "watch")}
        owners = {("cluster", "apps", "replicasets", "get"), ("cluster", "batch", "jobs", "get")}
        reviews = {("cluster", "authentication.k8s.io", "tokenreviews", "create")}
        for pod_names, mode, expected in [
            (True, "kubernetes", cluster_pods | owners | reviews | {("cluster", "", "pods", "get")}),
            (True, "token", cluster_pods | owners),
            (True, "none", cluster_pods | owners),
            # The TokenReview path GETs only the agent's own pod, in the release namespace.
            (False, "kubernetes", reviews | {("tapio-system", "", "pods", "get")}),
            (False, "token", set()),
            (False, "none", set()),
        ]:
            with self.subTest(podNames=pod_names, auth=mode):
                out, docs = helm_template(f"controller.podNames={str(pod_names).lower()}", f"auth.mode={mode}")
                self.assertEqual(out.returncode, 0, out.stderr)
                self.assertEqual(rbac_grants(docs), expected)
                # An API token only where there is API access to use it with.
                pod = find(docs, "Deployment", "tapio-controller")["spec"]["template"]["spec"]
                self.assertIs(pod["automountServiceAccountToken"], bool(expected))
                roles = {(d["kind"], d["metadata"]["name"]) for d in docs if d["kind"] in ("ClusterRole", "Role")}
                bindings = [d for d in docs if d["kind"] in ("ClusterRoleBinding", "RoleBinding")]
                # Every role bound to the controller alone, and no binding without a role.
                self.assertEqual({(b["roleRef"]["kind"], b["roleRef"]["name"]) for b in bindings}, roles)
                for b in bindings:
                    self.assertEqual(b["subjects"], [
                        {"kind": "ServiceAccount", "name": "tapio-controller", "namespace": "tapio-system"},
                    ])
                if not expected:
                    self.assertEqual(roles, set())

    def test_allow_from_advice_covers_overlays_and_cilium(self):
        # hostNetwork agents on other nodes may arrive from tunnel addresses in the pod CIDR,
        # and Cilium's ipBlock ignores node addresses unless told: advising node CIDRs alone
        # cut agents off. The advice says so, and an empty list allows any source.
        values = (CHART / "values.yaml").read_text()
        advice = re.search(r"((?:  #.*\n)+)  allowFrom: \[\]", values).group(1)
        for needed in ("any source", "pod CIDR", "flannel", "Calico", "policy-cidr-match-mode=nodes"):
            self.assertIn(needed, advice)
        (rule,) = find(self.docs, "NetworkPolicy", "tapio-controller")["spec"]["ingress"]
        self.assertNotIn("from", rule)
        _, docs = helm_template("controller.allowFrom[0].ipBlock.cidr=10.0.0.0/16",
                                "controller.allowFrom[1].ipBlock.cidr=10.244.0.0/16")
        (rule,) = find(docs, "NetworkPolicy", "tapio-controller")["spec"]["ingress"]
        self.assertEqual(rule["from"], [{"ipBlock": {"cidr": "10.0.0.0/16"}}, {"ipBlock": {"cidr": "10.244.0.0/16"}}])

    def test_network_policy_opens_only_the_controller_port(self):
        policy = find(self.docs, "NetworkPolicy", "tapio-controller")["spec"]
        self.assertEqual(policy["policyTypes"], ["Ingress"])
        (rule,) = policy["ingress"]
        self.assertEqual(rule["ports"], [{"port": 7470, "protocol": "TCP"}])
        service = find(self.docs, "Service", "tapio-controller")["spec"]
        self.assertEqual(service["ports"][0]["port"], 7470)


class MonitoringTest(unittest.TestCase):
    """The Prometheus Operator's ServiceMonitor and PrometheusRule: off by default, and when
    on, scraping the controller's Service and carrying exactly deploy/prometheus's rules."""

    def test_off_by_default_and_without_a_controller(self):
        for sets in ([], ["controller.enabled=false", *VALUE_SETS["prometheus-operator"]]):
            with self.subTest(sets=sets):
                out, docs = helm_template(*sets)
                self.assertEqual(out.returncode, 0, out.stderr)
                self.assertEqual([d for d in docs if d["apiVersion"].startswith("monitoring.coreos.com/")], [])

    def test_service_monitor_scrapes_the_controllers_service(self):
        out, docs = helm_template(*VALUE_SETS["prometheus-operator"], "metrics.serviceMonitor.interval=15s")
        self.assertEqual(out.returncode, 0, out.stderr)
        monitor = find(docs, "ServiceMonitor", "tapio-controller")
        self.assertEqual(monitor["apiVersion"], "monitoring.coreos.com/v1")
        self.assertEqual(monitor["metadata"]["namespace"], "tapio-system")
        self.assertEqual(monitor["metadata"]["labels"]["release"], "kube-prometheus-stack")
        service = find(docs, "Service", "tapio-controller")
        selector = monitor["spec"]["selector"]["matchLabels"]
        # It selects the controller's Service and nothing else the chart renders.
        self.assertLessEqual(selector.items(), service["metadata"]["labels"].items())
        for d in docs:
            if d["kind"] == "Service" and d is not service:
                self.assertFalse(selector.items() <= d["metadata"].get("labels", {}).items())
        (endpoint,) = monitor["spec"]["endpoints"]
        self.assertIn(endpoint["port"], [p["name"] for p in service["spec"]["ports"]])
        self.assertEqual(endpoint["path"], "/metrics")
        self.assertEqual(endpoint["interval"], "15s")

    def test_prometheus_rule_carries_the_alert_rules_as_they_are(self):
        out, docs = helm_template(*VALUE_SETS["prometheus-operator"], namespace="observability")
        self.assertEqual(out.returncode, 0, out.stderr)
        rule = find(docs, "PrometheusRule", "tapio")
        self.assertEqual(rule["apiVersion"], "monitoring.coreos.com/v1")
        self.assertEqual(rule["metadata"]["namespace"], "observability")
        self.assertEqual(rule["metadata"]["labels"]["release"], "kube-prometheus-stack")
        groups = yaml.safe_load(ALERTS.read_text())["groups"]
        self.assertEqual(rule["spec"]["groups"], groups)
        self.assertGreater(sum(len(g["rules"]) for g in groups), 0)
        # Prometheus loads the rendered rules (promtool checks them as a rule file).
        promtool = shutil.which("promtool")
        self.assertIsNotNone(promtool, "promtool not found: run scripts/setup")
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", prefix="tapio-i11d-") as f:
            yaml.safe_dump({"groups": rule["spec"]["groups"]}, f)
            f.flush()
            check = run([promtool, "check", "rules", f.name])
            self.assertEqual(check.returncode, 0, check.stdout + check.stderr)


if __name__ == "__main__":
    unittest.main()
