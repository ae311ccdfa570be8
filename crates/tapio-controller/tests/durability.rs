//! A 200 from /v1/events means safe: the real controller binary is SIGKILLed during
//! sustained ingest and right after a 200, restarted on the same file, and every event
//! ever acknowledged must be in the file, every line of which must parse. A full disk
//! (a small tmpfs, so root) must refuse batches rather than acknowledge them, count
//! exactly what is in the file, and fail /readyz until it can write again.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::ingest::{check_all_kept, id_batch, try_post, Ingest};
use common::servers::{controller, free_port, http_get, scrape};
use common::{temp_dir, TestServer};
use serde_json::{json, Value};

fn file_sink_args(path: &Path, fsync: &str) -> Vec<String> {
    ["--sink", "file", "--sink-path", path.to_str().unwrap(), "--sink-fsync", fsync, "--max-batch-events", "512"]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

/// Ids of the file's records; panics on a line that does not parse.
fn stored_ids(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    assert!(text.is_empty() || text.ends_with('\n'), "the file ends on a whole record");
    text.lines()
        .enumerate()
        .map(|(n, l)| {
            let v: Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("line {} does not parse ({e}): {l:?}", n + 1));
            v["id"].as_str().expect("every record has its id").to_string()
        })
        .collect()
}

async fn crash_cycles(fsync: &str) {
    let dir = temp_dir(&format!("i12-crash-{fsync}"));
    let path = dir.join("events.jsonl");
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let args = file_sink_args(&path, fsync);
    let mut acked: Vec<String> = Vec::new();
    let mut torn = 0.0;
    // Killed during sustained ingest: 8 agents × 128-event batches, killed mid-stream.
    for round in 0..4 {
        let mut c = controller(&dir, "controller.log", addr, &args);
        torn += scrape(addr, "tapio_controller_sink_torn_tails_total{sink=\"file\"}").await.unwrap_or(0.0);
        let ingest = Ingest::start(vec![addr], &format!("{fsync}-r{round}"), 8, 128);
        let until = Instant::now() + Duration::from_secs(20);
        while ingest.acked_now() < 5_000 + round * 1_000 && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        c.kill();
        let ids = ingest.stop().await;
        assert!(ids.len() >= 1_000, "round {round}: ingest was sustained ({} acknowledged)", ids.len());
        acked.extend(ids);
    }
    // Killed right after a 200.
    for round in 0..3 {
        let mut c = controller(&dir, "controller.log", addr, &args);
        torn += scrape(addr, "tapio_controller_sink_torn_tails_total{sink=\"file\"}").await.unwrap_or(0.0);
        let (body, ids) = id_batch("after-200", round + 1, &format!("{fsync}-after-200-{round}"), 256);
        assert_eq!(try_post(addr, &body).await, Some(200));
        c.kill();
        acked.extend(ids);
    }
    // A last start repairs any torn tail; then a clean stop.
    let mut c = controller(&dir, "controller.log", addr, &args);
    torn += scrape(addr, "tapio_controller_sink_torn_tails_total{sink=\"file\"}").await.unwrap_or(0.0);
    assert!(c.terminate(Duration::from_secs(20)), "SIGTERM stops cleanly");
    let stored = stored_ids(&path);
    let duplicates = check_all_kept(&acked, &stored);
    eprintln!(
        "crash test (--sink-fsync {fsync}): 7 SIGKILLs, {} events acknowledged, all in the file ({} records, {duplicates} duplicates by id, {torn} torn tails set aside)",
        acked.len(),
        stored.len()
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_loses_no_acknowledged_event_with_fsync_always() {
    crash_cycles("always").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_loses_no_acknowledged_event_with_fsync_interval() {
    crash_cycles("interval").await;
}

/// A tmpfs mounted for one test, unmounted on drop.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Self {
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tapio-i12-fulldisk"])
            .arg(dir)
            .status()
            .expect("mount runs");
        assert!(ok.success(), "mounting a tmpfs needs root");
        Self(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root"]
async fn a_full_disk_refuses_batches_counts_exactly_and_fails_readiness() {
    let base = temp_dir("i12-fulldisk");
    let mnt = base.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let _fs = Tmpfs::mount(&mnt, "512k");
    // Most of the space goes to a filler, freed later to show the sink recovers.
    std::fs::write(mnt.join("filler"), vec![0u8; 384 * 1024]).unwrap();
    let sink = mnt.join("events.jsonl");
    let t = TestServer::start_with("i12-fulldisk-srv", |s| {
        if let [tapio_controller::SinkTarget::File(f)] = &mut s.sinks[..] {
            f.path = sink.clone();
        }
    })
    .await;
    let addr = t.server.addr;
    let mut acked = Vec::new();
    let mut refused_events = 0u64;
    let mut seq = 0;
    while refused_events < 3 * 40 && seq < 2_000 {
        seq += 1;
        let (body, ids) = id_batch("disk", seq, &format!("disk-{seq}"), 40);
        match try_post(addr, &body).await {
            Some(200) => acked.extend(ids),
            Some(503) => refused_events += 40,
            other => panic!("unexpected answer {other:?}"),
        }
    }
    assert!(refused_events > 0 && !acked.is_empty(), "the disk filled up after some batches");
    let (status, body) = http_get(addr, "/readyz").await.unwrap();
    assert_eq!(status, 503, "not ready while the sink cannot write: {body}");
    assert!(body.contains("NOT_READY") && body.contains("file"), "{body}");
    let (_, status) = http_get(addr, "/v1/status").await.unwrap();
    let status: Value = serde_json::from_str(&status).unwrap();
    let sink_status = &status["sinks"][0];
    assert_eq!(
        (&sink_status["name"], &sink_status["durable"], &sink_status["ready"]),
        (&json!("file"), &json!(true), &json!(false))
    );
    assert!(sink_status["last_error"].as_str().unwrap().contains("space"), "{sink_status}");

    let stored = stored_ids(&sink);
    let written = scrape(addr, "tapio_controller_sink_records_written_total{sink=\"file\"}").await.unwrap();
    let write_errors =
        scrape(addr, "tapio_controller_sink_records_dropped_total{sink=\"file\",reason=\"write_error\"}")
            .await
            .unwrap();
    assert_eq!(written as usize, stored.len(), "counted written = records in the file");
    assert_eq!(stored.len(), acked.len(), "exactly the acknowledged records are in the file");
    assert_eq!(check_all_kept(&acked, &stored), 0);
    assert_eq!(write_errors as u64, refused_events, "every record of a failed write is counted");
    let accepted = scrape(addr, "tapio_controller_events_accepted_total").await.unwrap();
    assert_eq!(accepted as usize, acked.len(), "refused batches are not counted accepted");

    // Space comes back: readiness returns by itself (a replica out of its Service's
    // endpoints gets no batch to find out with), and batches are acknowledged again.
    std::fs::remove_file(mnt.join("filler")).unwrap();
    let until = Instant::now() + Duration::from_secs(10);
    while http_get(addr, "/readyz").await.unwrap().0 != 200 {
        assert!(Instant::now() < until, "readiness did not return once space was free");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (body, ids) = id_batch("disk", seq + 1, "disk-after", 40);
    assert_eq!(try_post(addr, &body).await, Some(200));
    acked.extend(ids);
    let (_, status) = http_get(addr, "/v1/status").await.unwrap();
    assert!(status.contains(r#""sinks":[{"name":"file","durable":true,"ready":true}]"#), "{status}");
    t.server.stop().await.unwrap();
    let stored = stored_ids(&sink);
    assert_eq!(check_all_kept(&acked, &stored), 0);
    eprintln!(
        "full disk: {} events acknowledged and in the file, {refused_events} refused and counted as write errors",
        acked.len()
    );
    drop(_fs);
    let _ = std::fs::remove_dir_all(base);
    let _ = std::fs::remove_dir_all(&t.dir);
}

#[test]
fn bad_sink_settings_stop_the_controller_at_start_with_the_reason() {
    let dir = temp_dir("i12-bad-sinks");
    let secret = dir.join("password");
    std::fs::write(&secret, "hunter2-i12\n").unwrap();
    let dead_nats = format!("nats://127.0.0.1:{}", free_port());
    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec!["--sink".into(), "otlp".into()], "--otlp-endpoint"),
        (
            vec!["--sink".into(), "file".into(), "--sink".into(), "file".into(), "--sink-path".into(), "/tmp/x".into()],
            "twice",
        ),
        (
            vec![
                "--sink".into(),
                "file".into(),
                "--sink-path".into(),
                dir.join("absent/dir/e.jsonl").display().to_string(),
            ],
            "No such file",
        ),
        (
            vec![
                "--sink".into(),
                "nats".into(),
                "--nats-url".into(),
                dead_nats,
                "--nats-user".into(),
                "u".into(),
                "--nats-password-file".into(),
                secret.display().to_string(),
            ],
            "cannot connect to NATS",
        ),
    ];
    for (args, reason) in cases {
        let out = Command::new(env!("CARGO_BIN_EXE_tapio-controller"))
            .args(["--listen", "127.0.0.1:0"])
            .args(&args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} must not start");
        assert!(stderr.contains(reason), "{args:?}: {stderr}");
        assert!(!stderr.contains("hunter2"), "no secret in the log: {stderr}");
    }
    let _ = std::fs::remove_dir_all(dir);
}
