//! Control groups the tests make and always remove: v1 groups a thread or process joins
//! (memory, blkio), a v1 memory group with a limit that kills what it holds on removal, a
//! v1 freezer, and Kubernetes-shaped container groups in either hierarchy. Names carry the
//! test process's pid (see `tmp::unique`), so concurrent runs do not collide.

use super::{gettid, tmp};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Whether the machine has swap on: a memory limit alone would then let a workload swap
/// instead of dying.
fn swap_on() -> bool {
    fs::read_to_string("/proc/swaps").map(|s| s.lines().count() > 1).unwrap_or(false)
}

/// A v1 cgroup in `controller` that the calling thread can join; on drop the thread that
/// joined goes back to the root group and the group is removed.
pub struct Cgroup {
    pub path: PathBuf,
    root: PathBuf,
    joined: Vec<u32>,
}

impl Cgroup {
    pub fn new(controller: &str, name: &str) -> Cgroup {
        let root = PathBuf::from("/sys/fs/cgroup").join(controller);
        assert!(root.join("tasks").exists(), "no cgroup v1 {controller} hierarchy at {}", root.display());
        let path = root.join(name);
        let _ = std::fs::remove_dir(&path);
        std::fs::create_dir(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        Cgroup { path, root, joined: Vec::new() }
    }

    pub fn set(&self, file: &str, value: &str) {
        std::fs::write(self.path.join(file), value).unwrap_or_else(|e| panic!("write {value:?} to {file}: {e}"));
    }

    /// Moves the calling thread (only it) into the group.
    pub fn join_this_thread(&mut self) {
        let tid = gettid();
        std::fs::write(self.path.join("tasks"), tid.to_string()).expect("join cgroup");
        self.joined.push(tid);
    }

    /// Moves a whole process into the group.
    pub fn add_process(&self, pid: u32) {
        std::fs::write(self.path.join("cgroup.procs"), pid.to_string()).expect("add process to cgroup");
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        for tid in &self.joined {
            let _ = std::fs::write(self.root.join("tasks"), tid.to_string());
        }
        if let Ok(tasks) = std::fs::read_to_string(self.path.join("tasks")) {
            for t in tasks.lines() {
                let _ = std::fs::write(self.root.join("tasks"), t);
            }
        }
        for _ in 0..50 {
            if std::fs::remove_dir(&self.path).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

pub const V1_MEMORY: &str = "/sys/fs/cgroup/memory";

/// A v1 memory cgroup with a limit, removed on drop after whatever this test left in it is
/// killed (only processes this test started are ever put there).
pub struct MemCgroup {
    pub dir: PathBuf,
    /// Its path in the memory hierarchy, as the agent should name it.
    pub path: String,
}

impl MemCgroup {
    pub fn new(tag: &str, limit: u64) -> MemCgroup {
        assert!(
            Path::new(V1_MEMORY).join("memory.limit_in_bytes").exists(),
            "these tests need the v1 memory controller at {V1_MEMORY} (the test-bed has it)"
        );
        let name = tmp::unique(tag);
        let cg = MemCgroup { dir: Path::new(V1_MEMORY).join(&name), path: format!("/{name}") };
        cg.remove();
        fs::create_dir(&cg.dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", cg.dir.display()));
        cg.write("memory.limit_in_bytes", &limit.to_string());
        // With swap on, the limit alone would let the workload swap instead of dying.
        if swap_on() && cg.dir.join("memory.memsw.limit_in_bytes").exists() {
            cg.write("memory.memsw.limit_in_bytes", &limit.to_string());
        }
        cg
    }

    pub fn write(&self, file: &str, value: &str) {
        fs::write(self.dir.join(file), value).unwrap_or_else(|e| panic!("write {value} to {file}: {e}"));
    }

    pub fn procs(&self) -> String {
        self.dir.join("cgroup.procs").display().to_string()
    }

    pub fn id(&self) -> u64 {
        // The kernfs id of a cgroup is its directory's inode number (64-bit kernels).
        fs::metadata(&self.dir).expect("stat cgroup").ino()
    }

    pub fn remove(&self) {
        if !self.dir.exists() {
            return;
        }
        for _ in 0..500 {
            let pids = fs::read_to_string(self.dir.join("cgroup.procs")).unwrap_or_default();
            if pids.trim().is_empty() && fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            for pid in pids.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                // SAFETY: signalling a process this test put in its own cgroup.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        eprintln!("could not remove {}", self.dir.display());
    }
}

impl Drop for MemCgroup {
    fn drop(&mut self) {
        self.remove();
    }
}

pub const V1_FREEZER: &str = "/sys/fs/cgroup/freezer";

/// A v1 freezer cgroup; thawed (so its members can die) and removed on drop.
pub struct Freezer {
    pub dir: PathBuf,
}

impl Freezer {
    pub fn new(tag: &str) -> Freezer {
        assert!(Path::new(V1_FREEZER).exists(), "this test needs the v1 freezer at {V1_FREEZER} (the test-bed has it)");
        let f = Freezer { dir: Path::new(V1_FREEZER).join(tmp::unique(tag)) };
        f.remove();
        fs::create_dir(&f.dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", f.dir.display()));
        f
    }

    pub fn state(&self) -> String {
        fs::read_to_string(self.dir.join("freezer.state")).unwrap_or_default().trim().to_string()
    }

    pub fn freeze(&self, pid: u32) {
        fs::write(self.dir.join("cgroup.procs"), pid.to_string()).expect("join freezer");
        fs::write(self.dir.join("freezer.state"), "FROZEN").expect("freeze");
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.state() != "FROZEN" {
            assert!(Instant::now() < deadline, "freezer stuck in {}", self.state());
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn remove(&self) {
        if !self.dir.exists() {
            return;
        }
        let _ = fs::write(self.dir.join("freezer.state"), "THAWED");
        for _ in 0..500 {
            if fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        eprintln!("could not remove {}", self.dir.display());
    }
}

impl Drop for Freezer {
    fn drop(&mut self) {
        self.remove();
    }
}

pub const V2_UNIFIED: &str = "/sys/fs/cgroup/unified";

/// A Kubernetes-shaped container cgroup made for one scenario: the cgroupfs driver's
/// `kubepods/burstable/pod<uid>/<id>` or the systemd driver's
/// `kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid>.slice/cri-containerd-<id>.scope`.
/// Pod UID and container id are unique to this test run; only the directories it made are
/// removed (the shared `kubepods` tops stay if they were there before).
#[derive(Debug)]
pub struct KubeCgroup {
    pub leaf: PathBuf,
    made: Vec<PathBuf>,
    /// From the hierarchy root, as the agent should name it.
    pub path: String,
    pub container_id: String,
    pub pod_uid: String,
}

impl KubeCgroup {
    pub fn new(mount: &str, systemd: bool, n: u32, memory_limit: Option<u64>) -> KubeCgroup {
        let pid = std::process::id();
        let wall_ns = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970").as_nanos() as u64;
        // "a14c": this branch's tag in hex, so nobody else's cgroups can have these names.
        let pod_uid =
            format!("{pid:08x}-a14c-4{n:03x}-8{:03x}-{:012x}", u32::from(systemd), wall_ns & 0xffff_ffff_ffff);
        let container_id = format!("{pid:08x}a14c{n:04x}{}", "0123456789abcdef".repeat(3));
        KubeCgroup::with_ids(mount, systemd, &pod_uid, &container_id, memory_limit)
    }

    /// The container cgroup of a pod UID and container id the caller chose: the same
    /// container in several hierarchies (v1 memory and cgroup2, as the kubelet makes it on a
    /// hybrid node) has one name in each.
    pub fn with_ids(
        mount: &str,
        systemd: bool,
        pod_uid: &str,
        container_id: &str,
        memory_limit: Option<u64>,
    ) -> KubeCgroup {
        assert!(Path::new(mount).join("cgroup.procs").exists(), "no cgroup hierarchy at {mount} (the test-bed has it)");
        let (pod_uid, container_id) = (pod_uid.to_string(), container_id.to_string());
        let segments: Vec<String> = if systemd {
            let pod = pod_uid.replace('-', "_");
            vec![
                "kubepods.slice".into(),
                "kubepods-burstable.slice".into(),
                format!("kubepods-burstable-pod{pod}.slice"),
                format!("cri-containerd-{container_id}.scope"),
            ]
        } else {
            vec!["kubepods".into(), "burstable".into(), format!("pod{pod_uid}"), container_id.clone()]
        };
        let mut dir = PathBuf::from(mount);
        let mut made = Vec::new();
        for segment in &segments {
            dir.push(segment);
            if !dir.exists() {
                fs::create_dir(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
                made.push(dir.clone());
            }
        }
        if let Some(limit) = memory_limit {
            fs::write(dir.join("memory.limit_in_bytes"), limit.to_string()).expect("memory.limit_in_bytes");
            if swap_on() {
                fs::write(dir.join("memory.memsw.limit_in_bytes"), limit.to_string()).expect("memsw limit");
            }
        }
        KubeCgroup { leaf: dir, made, path: format!("/{}", segments.join("/")), container_id, pod_uid }
    }

    pub fn procs(&self) -> String {
        self.leaf.join("cgroup.procs").display().to_string()
    }

    /// What a runtime does once the container's last process is reaped: removes its cgroup
    /// (and here the pod's, which this test made). Retries only while the kernel still
    /// finishes the exit (EBUSY), a few milliseconds.
    pub fn remove(&mut self) {
        while let Some(dir) = self.made.pop() {
            let deadline = Instant::now() + Duration::from_secs(2);
            while let Err(e) = fs::remove_dir(&dir) {
                if Instant::now() >= deadline || !dir.exists() {
                    eprintln!("could not remove {}: {e}", dir.display());
                    break;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
}

impl Drop for KubeCgroup {
    fn drop(&mut self) {
        if self.made.is_empty() {
            return;
        }
        // A failed test may leave members: kill them first.
        let pids = fs::read_to_string(self.leaf.join("cgroup.procs")).unwrap_or_default();
        for pid in pids.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
            // SAFETY: signalling a process this test put in its own cgroup.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        self.remove();
    }
}
