//! Real-kernel test: makes cgroups in the cgroup2 and the v1 memory hierarchy, resolves
//! their ids (their directories' inode numbers) and checks path, container id and pod UID.
//! Needs root: marked `#[ignore = "needs root"]` (run with `--include-ignored` as root, as
//! `scripts/test` does); run without root or without a needed hierarchy, it fails.
//!
//! This is the crate's one kernel test binary. Its tests take one process-wide turn (they
//! make and remove cgroups), so it is safe under any number of test threads; run it as
//! `flock /tmp/tapio-kernel-tests.lock cargo test -p tapio-identity --test kernel --
//! --include-ignored`, the lock keeping it apart from other crates' kernel tests.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use tapio_identity::{AccessMode, CgroupHierarchy, Config, Resolver, Workload};

/// Returns true when the test can run here. A test that was asked to run and cannot fails:
/// a skip reported as "ok" would claim a fact nobody checked.
fn can_run(what: &str, why_not: Option<String>) -> bool {
    if let Some(reason) = why_not {
        panic!("{what}: cannot run here: {reason}");
    }
    true
}

/// One kernel test at a time in this binary: see the module doc.
static ONE_KERNEL_TEST_AT_A_TIME: Mutex<()> = Mutex::new(());

/// cgroup directories this test made, removed deepest first on drop (also on panic).
/// Directories that already existed are used but never removed.
struct Cgroups(Vec<PathBuf>);

impl Cgroups {
    fn mkdir(&mut self, path: PathBuf) -> PathBuf {
        match fs::create_dir(&path) {
            Ok(()) => self.0.push(path.clone()),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => panic!("mkdir {}: {e}", path.display()),
        }
        path
    }

    fn rmdir(&mut self, path: &Path) {
        fs::remove_dir(path).unwrap_or_else(|e| panic!("rmdir {}: {e}", path.display()));
        self.0.retain(|p| p != path);
    }
}

impl Drop for Cgroups {
    fn drop(&mut self) {
        for dir in self.0.iter().rev() {
            if let Err(e) = fs::remove_dir(dir) {
                eprintln!("cleanup: rmdir {}: {e}", dir.display());
            }
        }
    }
}

fn ino(p: &Path) -> u64 {
    fs::metadata(p).unwrap_or_else(|e| panic!("stat {}: {e}", p.display())).ino()
}

/// Distinct per process and per call, so parallel runs do not collide.
fn unique() -> u64 {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    nanos ^ (u64::from(std::process::id()) << 40)
}

fn exercise(hierarchy: CgroupHierarchy) {
    let what = format!("kernel test for {hierarchy:?}");
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    if !can_run(&what, (euid != 0).then(|| format!("needs root (euid {euid})"))) {
        return;
    }
    // A test that panicked while holding the turn poisons it; the next test still runs.
    let _turn = ONE_KERNEL_TEST_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let mut resolver = Resolver::new(Config::default()).expect("read mountinfo");
    let Some(mount) = resolver.mount_point(&hierarchy).map(Path::to_path_buf) else {
        can_run(&what, Some(format!("{hierarchy:?} is not mounted")));
        return;
    };

    let u = unique();
    let name = format!("tapio-identity-test-{u:016x}");
    let uid = format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        u >> 32,
        u & 0xffff,
        (u >> 16) & 0xfff,
        (u >> 28) & 0xfff,
        u & 0xffff_ffff_ffff
    );
    let cid = format!("{u:016x}{:016x}{:016x}{:016x}", !u, u.rotate_left(17), u ^ 0x5a5a);
    let uid_us = uid.replace('-', "_");

    let mut dirs = Cgroups(Vec::new());
    let plain = dirs.mkdir(mount.join(&name));
    let gone = dirs.mkdir(plain.join("gone"));
    let kubepods = dirs.mkdir(mount.join("kubepods.slice"));
    let qos = dirs.mkdir(kubepods.join("kubepods-burstable.slice"));
    let pod = dirs.mkdir(qos.join(format!("kubepods-burstable-pod{uid_us}.slice")));
    let scope = dirs.mkdir(pod.join(format!("cri-containerd-{cid}.scope")));
    let nested = dirs.mkdir(scope.join("inner"));

    let pod_path = format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_us}.slice");
    let scope_path = format!("{pod_path}/cri-containerd-{cid}.scope");
    let expected = [
        Workload { cgroup_id: ino(&plain), cgroup_path: Some(format!("/{name}")), container_id: None, pod_uid: None },
        Workload { cgroup_id: ino(&pod), cgroup_path: Some(pod_path), container_id: None, pod_uid: Some(uid.clone()) },
        Workload {
            cgroup_id: ino(&scope),
            cgroup_path: Some(scope_path.clone()),
            container_id: Some(cid.clone()),
            pod_uid: Some(uid.clone()),
        },
        Workload {
            cgroup_id: ino(&nested),
            cgroup_path: Some(format!("{scope_path}/inner")),
            container_id: Some(cid.clone()),
            pod_uid: Some(uid.clone()),
        },
    ];

    for w in &expected {
        assert_eq!(&resolver.workload(&hierarchy, w.cgroup_id), w);
    }
    assert_eq!(
        resolver.access_mode(&hierarchy),
        Some(AccessMode::Handles),
        "root on Linux >= 5.5 should resolve cgroup ids through kernfs file handles"
    );
    let stats = resolver.stats();
    assert_eq!((stats.misses, stats.failed_resolutions), (4, 0));

    // The fallback walk must agree with the handles.
    let mut walker = Resolver::new(Config { use_handles: false, ..Config::default() }).expect("read mountinfo");
    for w in &expected {
        assert_eq!(&walker.workload(&hierarchy, w.cgroup_id), w, "walk");
    }
    assert_eq!(walker.access_mode(&hierarchy), Some(AccessMode::Walk));

    // A control file's inode number is not a cgroup.
    let file_id = ino(&plain.join("cgroup.procs"));
    assert_eq!(resolver.workload(&hierarchy, file_id), Workload::unknown(file_id));
    assert_eq!(walker.workload(&hierarchy, file_id), Workload::unknown(file_id));

    // A removed cgroup is unknown, not guessed, and asked about only once.
    let gone_id = ino(&gone);
    dirs.rmdir(&gone);
    for r in [&mut resolver, &mut walker] {
        let before = r.stats();
        assert_eq!(r.workload(&hierarchy, gone_id), Workload::unknown(gone_id));
        assert_eq!(r.workload(&hierarchy, gone_id), Workload::unknown(gone_id));
        let after = r.stats();
        assert_eq!(after.misses - before.misses, 1);
        assert_eq!(after.negative_hits - before.negative_hits, 1);
        assert_eq!(after.failed_resolutions - before.failed_resolutions, 1);
    }
}

#[test]
#[ignore = "needs root"]
fn cgroup2_ids_resolve() {
    exercise(CgroupHierarchy::Unified);
}

#[test]
#[ignore = "needs root"]
fn v1_memory_ids_resolve() {
    exercise(CgroupHierarchy::v1("memory"));
}
