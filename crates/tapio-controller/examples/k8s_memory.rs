//! Load script: the controller's memory with 100,000 pods in its store.
//!
//! Serves a cluster shaped like a real one from the test stand-in API server (5,000
//! Deployments of 20 pods, 2 containers each, on 1,000 nodes, in 200 namespaces), runs the
//! release `tapio-controller` binary against it twice, once without and once with
//! `--k8s-pods`, waits until the second has listed every pod, and prints both processes'
//! resident memory (VmRSS) and peak (VmHWM) from /proc.
//!
//! ```sh
//! cargo build --release -p tapio-controller
//! cargo run -p tapio-controller --example k8s_memory [PODS]
//! ```

#[path = "../tests/fake_kube/mod.rs"]
mod fake_kube;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const PODS_PER_DEPLOYMENT: usize = 20;

fn controller_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("own path");
    // target/<profile>/examples/k8s_memory → target/release/tapio-controller: the figure is
    // the release binary's whatever profile this script itself was built with.
    let target = exe.parent().and_then(|p| p.parent()).and_then(|p| p.parent()).expect("target dir");
    let bin = target.join("release").join("tapio-controller");
    assert!(bin.exists(), "{} missing: cargo build --release -p tapio-controller", bin.display());
    bin
}

fn metrics(port: u16) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
}

fn status_kib(pid: u32, key: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn start(port: u16, extra: &[&str]) -> Child {
    Command::new(controller_bin())
        .args(["--listen", &format!("127.0.0.1:{port}"), "--sink", "stdout", "--log-level", "warn"])
        .args(extra)
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn tapio-controller")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[tokio::main]
async fn main() {
    let pods: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let api = fake_kube::FakeKube::start().await;
    let deployments = pods.div_ceil(PODS_PER_DEPLOYMENT);
    let mut n = 0;
    'outer: for d in 0..deployments {
        let ns = format!("team-{:03}", d % 200);
        let deploy = format!("service-{d:05}");
        let rs = format!("{deploy}-{:010x}", d * 7919);
        api.put_replicaset(&ns, &rs, Some(&deploy));
        for i in 0..PODS_PER_DEPLOYMENT {
            if n == pods {
                break 'outer;
            }
            let uid = format!("{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}", n, d & 0xffff, i, n & 0xfff, n * 31);
            let app = format!("{n:016x}{:048x}", d);
            let sidecar = format!("{:016x}{n:048x}", d + 1);
            let name = format!("{rs}-{:05x}", n & 0xfffff);
            let node = format!("node-{:04}", n % 1_000);
            api.put_pod(fake_kube::pod(
                &ns,
                &name,
                &uid,
                &node,
                &[("app", &app), ("istio-proxy", &sidecar)],
                Some(("ReplicaSet", &rs)),
            ));
            n += 1;
        }
    }
    api.compact(); // the stand-in's own watch history is not what is measured
    eprintln!("serving {n} pods of {deployments} Deployments");

    let base_port = free_port();
    let mut base = start(base_port, &[]);
    let k8s_port = free_port();
    let url = api.url();
    let mut k8s = start(k8s_port, &["--k8s-pods", "--k8s-api-server", &url]);
    let t0 = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let text = tokio::task::spawn_blocking(move || metrics(k8s_port)).await.unwrap_or_default().unwrap_or_default();
        let live = metric(&text, "tapio_controller_k8s_pods_live").unwrap_or(0.0);
        if metric(&text, "tapio_controller_k8s_synced") == Some(1.0) && live as usize == n {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(600), "no full sync in 10 minutes (live {live})");
    }
    let synced_in = t0.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (b_rss, b_hwm) = (status_kib(base.id(), "VmRSS:"), status_kib(base.id(), "VmHWM:"));
    let (k_rss, k_hwm) = (status_kib(k8s.id(), "VmRSS:"), status_kib(k8s.id(), "VmHWM:"));
    println!("pods in store: {n} (listed and stored in {:.1} s)", synced_in.as_secs_f64());
    println!("controller without --k8s-pods: VmRSS {b_rss} KiB, VmHWM {b_hwm} KiB");
    println!("controller with --k8s-pods:    VmRSS {k_rss} KiB, VmHWM {k_hwm} KiB");
    println!(
        "difference: {} KiB resident ({:.0} bytes per pod), peak {} KiB",
        k_rss.saturating_sub(b_rss),
        k_rss.saturating_sub(b_rss) as f64 * 1024.0 / n as f64,
        k_hwm.saturating_sub(b_hwm)
    );
    let _ = base.kill();
    let _ = k8s.kill();
    let _ = base.wait();
    let _ = k8s.wait();
}
