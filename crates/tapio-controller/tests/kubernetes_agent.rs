//! End to end on the real kernel: a real agent, in controller mode with a projected-style
//! token file, reports a refused connect made from a process in a kubepods-shaped cgroup;
//! the controller (`--auth kubernetes --k8s-pods`, against the stand-in API server) accepts
//! the agent for its node only and stores the record with the pod's Kubernetes names. The
//! token file is then rotated and the agent sends the new token without a restart.
//!
//! Needs root (eBPF, cgroups): `cargo test -p tapio-controller --test kubernetes_agent --
//! --include-ignored`, under `flock /tmp/tapio-kernel-tests.lock`. The agent binary is
//! built by `cargo build --workspace` (scripts/test does).

mod common;
mod fake_kube;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::TestServer;
use fake_kube::{jwt, pod, unix_now, FakeKube, TokenFixture};
use serde_json::Value;
use tapio_controller::k8s::tokenreview::ReviewSettings;
use tapio_controller::metrics::{RequestLabels, ResultLabels};
use tapio_controller::settings::PodWatchSettings;

const NODE: &str = "node-i11k";

fn agent_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("own path");
    // target/debug/deps/kubernetes_agent-… → target/debug/tapio-agent
    let bin = exe.parent().and_then(Path::parent).expect("target dir").join("tapio-agent");
    assert!(bin.exists(), "{} missing: run `cargo build --workspace` (scripts/test does)", bin.display());
    bin
}

/// The cgroup2 mount point (`/sys/fs/cgroup` on pure v2 hosts, `/sys/fs/cgroup/unified`
/// on hybrid ones such as this project's VMs).
fn cgroup2_mount() -> PathBuf {
    let info = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let mount = tapio_util::mountinfo::parse(&info).find(|m| m.fstype == "cgroup2").expect("a cgroup2 mount");
    mount.mount_point()
}

/// Directories made for the pod, removed (deepest first) when dropped; a directory that
/// existed before is left alone.
struct PodCgroup {
    made: Vec<PathBuf>,
    scope: PathBuf,
}

impl PodCgroup {
    fn create(uid: &str, container_id: &str) -> Self {
        let root = cgroup2_mount();
        let uid_us = uid.replace('-', "_");
        let mut made = Vec::new();
        let mut dir = root;
        for part in [
            "kubepods.slice".to_string(),
            "kubepods-besteffort.slice".to_string(),
            format!("kubepods-besteffort-pod{uid_us}.slice"),
            format!("cri-containerd-{container_id}.scope"),
        ] {
            dir = dir.join(part);
            if !dir.exists() {
                std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
                made.push(dir.clone());
            }
        }
        Self { made, scope: dir }
    }
}

impl Drop for PodCgroup {
    fn drop(&mut self) {
        for dir in self.made.iter().rev() {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

struct AgentProcess(Child);

impl Drop for AgentProcess {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn write_token(path: &Path, token: &str) {
    // As the kubelet does: a new file swapped in, never an edit in place.
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, token).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root"]
async fn a_real_agent_is_authenticated_bound_to_its_node_and_its_evidence_carries_pod_names() {
    // SAFETY: geteuid takes no arguments and cannot fail.
    assert_eq!(unsafe { libc::geteuid() }, 0, "this kernel test needs root");
    let u = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64 ^ u64::from(std::process::id());
    let uid = format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        u >> 32,
        u & 0xffff,
        (u >> 16) & 0xfff,
        (u >> 28) & 0xfff,
        u & 0xffff_ffff_ffff
    );
    let container_id = format!("{u:016x}{:016x}{:016x}{:016x}", !u, u.rotate_left(17), u ^ 0x5a5a);

    let api = FakeKube::start().await;
    api.put_replicaset("i11k-shop", "checkout-i11k-5d8f7c", Some("checkout-i11k"));
    api.put_pod(pod(
        "i11k-shop",
        "checkout-i11k-5d8f7c-qz2lp",
        &uid,
        NODE,
        &[("server", &container_id)],
        Some(("ReplicaSet", "checkout-i11k-5d8f7c")),
    ));
    let first = jwt("i11k-first", unix_now() + 3_600);
    let second = jwt("i11k-second", unix_now() + 3_600);
    let fixture = TokenFixture {
        username: "system:serviceaccount:tapio-system:tapio-agent".into(),
        audiences: vec!["tapio".into()],
        exp: unix_now() + 3_600,
        node: Some(NODE.into()),
        pod_uid: None,
    };
    api.put_token(&first, fixture.clone());
    api.put_token(&second, fixture);

    let url = api.url();
    let t = TestServer::start_with("k8s-agent-i11k", |s| {
        s.send_interval_ms = 200;
        s.k8s_api_server = Some(url);
        s.pod_watch =
            Some(PodWatchSettings { max_pods: 100, deleted_grace: Duration::from_secs(60), owner_cache_entries: 10 });
        s.kubernetes_auth = Some(ReviewSettings {
            audience: "tapio".into(),
            service_account: "tapio-system:tapio-agent".into(),
            cache_ttl: Duration::from_secs(300),
            cache_entries: 100,
        });
    })
    .await;
    let metrics = std::sync::Arc::clone(&t.server.state.metrics);
    wait_until("the pod list", Duration::from_secs(10), || metrics.k8s.synced.get() == 1).await;

    let token_file = t.dir.join("token");
    write_token(&token_file, &first);
    // No agent_id: the agent's default, its node's name, the only id node-bound auth accepts.
    let config = format!(
        "node_name = \"{NODE}\"\n[sinks]\nstdout = false\n[controller]\nurl = \"http://{}\"\n\
         token_file = \"{}\"\nstate_file = \"{}\"\nheartbeat_interval_secs = 1\nconfig_poll_interval_secs = 1\n\
         connect_timeout_ms = 500\nio_timeout_ms = 2000\nmax_backoff_ms = 1000\n",
        t.server.addr,
        token_file.display(),
        t.dir.join("agent-state.json").display()
    );
    let config_path = t.dir.join("agent.toml");
    std::fs::write(&config_path, config).unwrap();
    let agent = AgentProcess(
        Command::new(agent_bin())
            .arg("--config")
            .arg(&config_path)
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(t.dir.join("agent.log")).unwrap()))
            .spawn()
            .expect("spawn tapio-agent"),
    );
    let registered = || metrics.hellos.get_or_create(&ResultLabels { result: "accepted" }).get() >= 1;
    let log = || std::fs::read_to_string(t.dir.join("agent.log")).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !registered() {
        assert!(Instant::now() < deadline, "agent did not register; its log:\n{}", log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Give the observers a moment past registration to be attached.
    tokio::time::sleep(Duration::from_secs(2)).await;

    // A refused connect from a process in the pod's container cgroup.
    let cgroup = PodCgroup::create(&uid, &container_id);
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let script = format!(
        "echo $$ > {}/cgroup.procs && exec bash -c 'exec 3<>/dev/tcp/127.0.0.1/{port}' 2>/dev/null",
        cgroup.scope.display()
    );
    let status = Command::new("sh").args(["-c", &script]).status().unwrap();
    assert!(!status.success(), "the connect must be refused");

    let refused = |lines: &[Value]| {
        lines
            .iter()
            .find(|e| e["type"] == "kernel.network.connection_refused" && e["facts"]["dst_port"] == port)
            .cloned()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let record = loop {
        if let Some(r) = refused(&common::read_lines(&t.sink_path)) {
            break r;
        }
        assert!(Instant::now() < deadline, "no refused connect in the sink; agent log:\n{}", log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(record["workload"]["pod_uid"], uid.as_str(), "{record}");
    assert_eq!(record["workload"]["container_id"], container_id.as_str());
    let k = &record["k8s"];
    assert_eq!(k["k8s.namespace.name"], "i11k-shop", "{record}");
    assert_eq!(k["k8s.pod.name"], "checkout-i11k-5d8f7c-qz2lp");
    assert_eq!(k["k8s.pod.uid"], uid.as_str());
    assert_eq!(k["k8s.container.name"], "server");
    assert_eq!(k["k8s.node.name"], NODE);
    assert_eq!(k["k8s.replicaset.name"], "checkout-i11k-5d8f7c");
    assert_eq!(k["k8s.deployment.name"], "checkout-i11k");
    assert_eq!(record["node"], NODE);

    // Rotation: the kubelet swaps in a new token; the agent sends it from its next
    // request on, without a restart and without first being refused.
    assert!(!api.was_reviewed(&second));
    write_token(&token_file, &second);
    wait_until("the rotated token to be presented", Duration::from_secs(10), || api.was_reviewed(&second)).await;
    let heartbeats = |status| metrics.requests.get_or_create(&RequestLabels { operation: "heartbeat", status }).get();
    let ok_before = heartbeats(200);
    wait_until("a heartbeat with the new token", Duration::from_secs(10), || heartbeats(200) > ok_before).await;
    assert_eq!(heartbeats(401), 0, "the agent was never refused");
    assert_eq!(heartbeats(403), 0);
    // One TokenReview per token; every other request of the agent came from the cache.
    let (hits, misses) = (metrics.k8s.token_cache_hits.get(), metrics.k8s.token_cache_misses.get());
    assert_eq!(misses, 2, "one review per token");
    assert!(hits >= 5, "hits {hits}");
    eprintln!(
        "token cache: {hits} hits, {misses} misses ({:.1}% hit rate)",
        100.0 * hits as f64 / (hits + misses) as f64
    );
    drop(agent);
    drop(cgroup);
    t.stop().await;
}
