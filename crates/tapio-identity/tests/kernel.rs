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

/// A test's cgroups and ids: `mount` of `hierarchy`, a name no other run uses.
fn setup(hierarchy: &CgroupHierarchy, what: &str) -> (PathBuf, u64) {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    can_run(what, (euid != 0).then(|| format!("needs root (euid {euid})")));
    let resolver = Resolver::new(Config::default()).expect("read mountinfo");
    let mount = resolver.mount_point(hierarchy).map(Path::to_path_buf);
    can_run(what, mount.is_none().then(|| format!("{hierarchy:?} is not mounted")));
    (mount.unwrap_or_default(), unique())
}

/// cgroup2 refuses renames (what keeping a resolved id's path for good relies on; cgroup v1
/// allows them within one parent, and a renamed v1 cgroup keeps the name it was resolved
/// under). A cgroup made again under a removed one's path is a new id: the old id never
/// resolves to it, through handles or the walk.
#[test]
#[ignore = "needs root"]
fn cgroup2_refuses_rename_and_a_path_made_again_is_a_new_id() {
    let hierarchy = CgroupHierarchy::Unified;
    let (mount, u) = setup(&hierarchy, "rename and re-creation");
    let _turn = ONE_KERNEL_TEST_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let mut dirs = Cgroups(Vec::new());
    let name = format!("tapio-identity-test-{u:016x}");
    let first = dirs.mkdir(mount.join(&name));
    let first_id = ino(&first);
    let err = fs::rename(&first, mount.join(format!("{name}-renamed"))).expect_err("cgroup2 renamed a cgroup");
    assert_eq!(err.raw_os_error(), Some(libc::EPERM), "{err}");

    let mut cached = Resolver::new(Config::default()).expect("read mountinfo");
    let named = cached.workload(&hierarchy, first_id);
    assert_eq!(named.cgroup_path, Some(format!("/{name}")));
    dirs.rmdir(&first);
    let again = dirs.mkdir(mount.join(&name));
    let again_id = ino(&again);
    assert_ne!(again_id, first_id, "an id was reused");
    for use_handles in [true, false] {
        let mut fresh = Resolver::new(Config { use_handles, ..Config::default() }).expect("read mountinfo");
        assert_eq!(fresh.workload(&hierarchy, first_id), Workload::unknown(first_id), "handles: {use_handles}");
        assert_eq!(fresh.workload(&hierarchy, again_id).cgroup_path, Some(format!("/{name}")));
    }
    // What was resolved while the first one existed still names it (true of that cgroup).
    assert_eq!(cached.workload(&hierarchy, first_id), named);
}

/// A kind or k3d node on a cgroup v1 node (the host's cgroup namespace): its pods are made
/// below the node's Docker cgroup, and an agent in the node sees that cgroup mounted as
/// the hierarchy (mountinfo root `/docker/<node>`). Its pods are not the node container's.
fn pods_below_a_docker_node_are_not_named_after_it(hierarchy: CgroupHierarchy) {
    let what = format!("kind node pods in {hierarchy:?}");
    let (mount, u) = setup(&hierarchy, &what);
    let _turn = ONE_KERNEL_TEST_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let node = format!("{u:016x}{:016x}{:016x}{:016x}", !u, u.rotate_left(9), u ^ 0xa5);
    let cid = format!("{:016x}{u:016x}{:016x}{:016x}", !u, u.rotate_left(23), u ^ 0x3c);
    let uid =
        format!("{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}", u >> 32, u & 0xffff, u & 0xfff, (u >> 12) & 0xfff, u >> 16);
    let mut dirs = Cgroups(Vec::new());
    let docker = dirs.mkdir(mount.join("docker"));
    let node_dir = dirs.mkdir(docker.join(&node));
    let mut dir = node_dir.clone();
    for part in ["kubelet", "kubepods", "burstable", &format!("pod{uid}"), &cid] {
        dir = dirs.mkdir(dir.join(part));
    }
    let controllers = match &hierarchy {
        CgroupHierarchy::Unified => "- cgroup2 cgroup2 rw".to_owned(),
        CgroupHierarchy::V1(c) => format!("- cgroup cgroup rw,{c}"),
    };
    // The node's view: its own cgroup mounted as the hierarchy; and the host's view.
    let node_view = format!("99 1 0:99 /docker/{node} {} rw {controllers}\n", node_dir.display());
    let host_view = format!("99 1 0:99 / {} rw {controllers}\n", mount.display());
    let path = format!("/docker/{node}/kubelet/kubepods/burstable/pod{uid}/{cid}");
    for (view, mountinfo) in [("node", node_view), ("host", host_view)] {
        for use_handles in [true, false] {
            let mut r = Resolver::from_mountinfo(&mountinfo, Config { use_handles, ..Config::default() });
            let w = r.workload(&hierarchy, ino(&dir));
            let expected =
                Workload { cgroup_id: ino(&dir), cgroup_path: Some(path.clone()), container_id: None, pod_uid: None };
            assert_eq!(w, expected, "{view} view, handles {use_handles}");
            // The node's own cgroup is the node container.
            assert_eq!(r.workload(&hierarchy, ino(&node_dir)).container_id.as_deref(), Some(node.as_str()));
        }
    }
}

#[test]
#[ignore = "needs root"]
fn cgroup2_pods_below_a_docker_node_are_not_named_after_it() {
    pods_below_a_docker_node_are_not_named_after_it(CgroupHierarchy::Unified);
}

#[test]
#[ignore = "needs root"]
fn v1_memory_pods_below_a_docker_node_are_not_named_after_it() {
    pods_below_a_docker_node_are_not_named_after_it(CgroupHierarchy::v1("memory"));
}

/// Leaves this thread's mount namespace private to it, so what the test mounts is seen by
/// nothing else and is gone with the thread even if the test is killed.
fn private_mount_namespace() {
    // SAFETY: plain syscalls with valid arguments; CLONE_NEWNS only affects this thread.
    unsafe {
        assert_eq!(libc::unshare(libc::CLONE_NEWNS), 0, "unshare: {}", std::io::Error::last_os_error());
        let private = libc::mount(
            std::ptr::null(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        );
        assert_eq!(private, 0, "make / private: {}", std::io::Error::last_os_error());
    }
}

/// Unmounts on drop (also on panic), before the cgroups below it are removed.
struct Unmount(std::ffi::CString);

impl Drop for Unmount {
    fn drop(&mut self) {
        // SAFETY: a valid NUL-terminated path.
        unsafe { libc::umount2(self.0.as_ptr(), libc::MNT_DETACH) };
    }
}

/// A kind node on cgroup v1 bind-mounts its cgroup onto `docker/<node>` below itself (so
/// its kubelet finds the path `/proc/self/cgroup` shows). Neither the start walk nor the
/// lookup walk goes into it: they would find the node's cgroups again, under paths that
/// are not theirs.
fn walks_do_not_enter_a_bind_mount_of_the_hierarchy(hierarchy: CgroupHierarchy) {
    use std::os::unix::ffi::OsStrExt;
    let what = format!("bind mount loop in {hierarchy:?}");
    let (mount, u) = setup(&hierarchy, &what);
    let _turn = ONE_KERNEL_TEST_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    private_mount_namespace();
    let node_id = format!("{u:016x}{:016x}{:016x}{:016x}", !u, u.rotate_left(5), u ^ 0x77);
    let cid = format!("{:016x}{u:016x}{:016x}{:016x}", u ^ 0x11, !u, u.rotate_left(31));
    let uid =
        format!("{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}", u >> 32, u & 0xffff, u & 0xfff, (u >> 12) & 0xfff, u >> 16);
    let mut dirs = Cgroups(Vec::new());
    let node = dirs.mkdir(mount.join(format!("tapio-identity-test-{u:016x}")));
    let docker = dirs.mkdir(node.join("docker"));
    let target = dirs.mkdir(docker.join(&node_id));
    let mut dir = node.clone();
    for part in ["kubepods", &format!("pod{uid}"), &cid] {
        dir = dirs.mkdir(dir.join(part));
    }
    let target_c = std::ffi::CString::new(target.as_os_str().as_bytes()).unwrap_or_default();
    let source_c = std::ffi::CString::new(node.as_os_str().as_bytes()).unwrap_or_default();
    // SAFETY: valid NUL-terminated paths; a bind mount takes no type or data.
    let bound =
        unsafe { libc::mount(source_c.as_ptr(), target_c.as_ptr(), std::ptr::null(), libc::MS_BIND, std::ptr::null()) };
    assert_eq!(bound, 0, "bind mount: {}", std::io::Error::last_os_error());
    let _unmount = Unmount(target_c);

    let controllers = match &hierarchy {
        CgroupHierarchy::Unified => "- cgroup2 cgroup2 rw".to_owned(),
        CgroupHierarchy::V1(c) => format!("- cgroup cgroup rw,{c}"),
    };
    // The node's view: its cgroup is the hierarchy's root (trusted as such here).
    let mountinfo = format!("99 1 0:99 / {} rw {controllers}\n", node.display());
    let path = format!("/kubepods/pod{uid}/{cid}");
    let config = Config { use_handles: false, max_walk_dirs: 256, ..Config::default() };

    let mut learner = Resolver::from_mountinfo(&mountinfo, config.clone());
    // The node, docker, its <node> (the mount point: a cgroup itself), kubepods, pod, container.
    assert_eq!(learner.learn_existing(std::slice::from_ref(&hierarchy)), (6, true), "the walk went round the mount");
    let id = ino(&dir);
    let w = learner.workload(&hierarchy, id);
    assert_eq!((w.cgroup_path.as_deref(), w.container_id.as_deref()), (Some(path.as_str()), Some(cid.as_str())));
    assert_eq!(learner.stats().misses, 0, "answered from what the walk learned");

    let mut walker = Resolver::from_mountinfo(&mountinfo, config);
    assert_eq!(walker.workload(&hierarchy, id).cgroup_path, Some(path));
}

#[test]
#[ignore = "needs root"]
fn cgroup2_walks_do_not_enter_a_bind_mount_of_the_hierarchy() {
    walks_do_not_enter_a_bind_mount_of_the_hierarchy(CgroupHierarchy::Unified);
}

#[test]
#[ignore = "needs root"]
fn v1_memory_walks_do_not_enter_a_bind_mount_of_the_hierarchy() {
    walks_do_not_enter_a_bind_mount_of_the_hierarchy(CgroupHierarchy::v1("memory"));
}
