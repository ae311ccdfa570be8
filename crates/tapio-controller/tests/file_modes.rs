//! The file sink's evidence files are not world-readable: each file it creates (the first,
//! every one after a rotation, a torn tail set aside) is 0640 even under a umask of 0, and a
//! file that already exists keeps the mode its operator gave it. The only test in this
//! binary: the umask it sets is the whole process's.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use tapio_controller::metrics::Metrics;
use tapio_controller::settings::{FileSinkConfig, FsyncPolicy};
use tapio_controller::sink::{start, SinkOptions};
use tapio_controller::SinkTarget;

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).permissions().mode() & 0o7777
}

#[tokio::test]
async fn files_the_sink_creates_are_0640_whatever_the_umask_and_existing_ones_keep_their_mode() {
    // SAFETY: umask only sets the process's file mode mask; nothing else runs in this binary.
    unsafe { libc::umask(0) };
    let dir = std::env::temp_dir().join(format!("tapio-controller-file-modes-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // The operator's file, 0600, ending in a record torn by a crash.
    let path = dir.join("events.jsonl");
    std::fs::write(&path, b"{\"a\":1}\n{\"to").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();

    let m = Metrics::new();
    let cfg = FileSinkConfig { path: path.clone(), max_bytes: 100, keep_files: 2, fsync: FsyncPolicy::Always };
    let opts = SinkOptions { queue_bytes: 1 << 20, ack_timeout: Duration::from_secs(5) };
    let (sinks, writers) = start(&[SinkTarget::File(cfg)], &opts, &m).await.unwrap();
    let aside: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains(".torn-"))
        .collect();
    assert_eq!(aside.len(), 1, "the torn tail set aside: {aside:?}");
    assert_eq!(mode(&aside[0]), 0o640, "the set-aside fragment");
    assert_eq!(mode(&path), 0o600, "opened, not chmodded");

    // 47-byte records after the repaired 8 bytes: two rotations.
    for n in 0..4 {
        sinks.deliver(format!("{{\"n\":{n:040}}}\n").into_bytes(), 1).await.unwrap();
    }
    writers.close(Duration::from_secs(5)).await;
    let rotated = |n| tapio_util::rotate::rotated(&path, n);
    assert_eq!(mode(&rotated(2)), 0o600, "the operator's file keeps its mode once rotated");
    assert_eq!(mode(&rotated(1)), 0o640, "a file a rotation created");
    assert_eq!(mode(&path), 0o640, "the live file a rotation created");
    assert_eq!(std::fs::read_to_string(rotated(2)).unwrap().lines().count(), 2, "the operator's record and one more");
    std::fs::remove_dir_all(&dir).unwrap();
}
