//! Cgroup paths learned while the cgroups exist: from the kernel when a cgroup is created
//! (the agent's `cgroup:cgroup_mkdir` hook) and from one walk of the mounts at start.
//!
//! A container runtime removes a container's cgroup as soon as its last process is reaped,
//! which is before the agent resolves that process's exit or OOM kill: asked then, the
//! kernel no longer knows the id. What was learned earlier still names it. Bounded (CLOCK
//! eviction, counted); shared between the thread that learns (the agent's drain) and the
//! resolver behind one mutex held only for a lookup or an insert.

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::{DirEntryExt, MetadataExt};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::cache::ClockCache;
use crate::Workload;

/// Counters of what was learned.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LearnedStats {
    /// Paths taken in (kernel reports and the start walk).
    pub learned: u64,
    /// Kernel reports about a hierarchy that workloads are not named by (ignored, by design).
    pub other_hierarchy: u64,
    /// Kernel reports about a hierarchy mounted from inside a cgroup namespace (ignored):
    /// the kernel's path is from the hierarchy root, the mount shows the namespace's root,
    /// and the path would name the namespace's container (e.g. a kind node) as the workload.
    pub namespace_relative: u64,
    /// Learned entries pushed out by the capacity before anything asked for them again.
    pub evictions: u64,
    /// Lookups answered from what was learned.
    pub hits: u64,
    /// Entries held now.
    pub entries: usize,
}

pub(crate) struct Learned {
    cache: ClockCache<(usize, u64), Workload>,
    stats: LearnedStats,
}

pub(crate) type Shared = Arc<Mutex<Learned>>;

pub(crate) fn shared(capacity: usize) -> Shared {
    Arc::new(Mutex::new(Learned { cache: ClockCache::new(capacity), stats: LearnedStats::default() }))
}

pub(crate) fn lock(shared: &Shared) -> MutexGuard<'_, Learned> {
    // A panicking holder leaves a consistent cache (every update is one insert): keep using it.
    shared.lock().unwrap_or_else(|p| p.into_inner())
}

impl Learned {
    pub(crate) fn insert(&mut self, key: (usize, u64), path: String) {
        self.stats.learned += 1;
        if self.cache.insert(key, Workload::from_path(key.1, path)) {
            self.stats.evictions += 1;
        }
    }

    pub(crate) fn get(&mut self, key: &(usize, u64)) -> Option<Workload> {
        let found = self.cache.get(key).cloned();
        if found.is_some() {
            self.stats.hits += 1;
        }
        found
    }

    pub(crate) fn stats(&self) -> LearnedStats {
        LearnedStats { entries: self.cache.len(), ..self.stats }
    }
}

/// What the learner does with a kernel report about one hierarchy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LearnTarget {
    /// Keep the path, under this resolver index of the hierarchy.
    Index(usize),
    /// Ignore it (counted): the hierarchy is mounted from inside a cgroup namespace, so the
    /// kernel's paths do not match the resolver's.
    NamespaceRelative,
}

/// The handle the agent's kernel-record reader uses to teach the resolver: cheap to clone
/// and `Send`.
#[derive(Clone)]
pub struct Learner {
    shared: Shared,
    /// Kernel hierarchy id (cgroup_root.hierarchy_id: 0 for cgroup2) → what to do with its
    /// reports, for the hierarchies workloads are named by.
    by_kernel_id: Arc<HashMap<u32, LearnTarget>>,
}

impl Learner {
    pub(crate) fn new(shared: Shared, by_kernel_id: HashMap<u32, LearnTarget>) -> Self {
        Learner { shared, by_kernel_id: Arc::new(by_kernel_id) }
    }

    /// Records that the cgroup with id `cgroup_id` in kernel hierarchy `hierarchy_id` has
    /// `path` (from the hierarchy root, as the kernel's `cgroup_mkdir` event gives it).
    /// Returns false when nothing was kept: that hierarchy is not one workloads are named
    /// by, or its mount is namespace-relative.
    pub fn learn(&self, hierarchy_id: u32, cgroup_id: u64, path: &str) -> bool {
        match self.by_kernel_id.get(&hierarchy_id) {
            Some(&LearnTarget::Index(index)) => {
                lock(&self.shared).insert((index, cgroup_id), path.to_owned());
                true
            }
            Some(LearnTarget::NamespaceRelative) => {
                lock(&self.shared).stats.namespace_relative += 1;
                false
            }
            None => {
                lock(&self.shared).stats.other_hierarchy += 1;
                false
            }
        }
    }

    pub fn stats(&self) -> LearnedStats {
        lock(&self.shared).stats()
    }
}

/// The kernel's hierarchy id of each v1 controller, from `/proc/cgroups` text
/// (`subsys_name hierarchy num_cgroups enabled`). Controllers on cgroup2 or unused say 0.
pub(crate) fn v1_hierarchy_ids(proc_cgroups: &str) -> HashMap<String, u32> {
    proc_cgroups
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let name = f.next()?;
            let id: u32 = f.next()?.parse().ok()?;
            (id != 0).then(|| (name.to_owned(), id))
        })
        .collect()
}

/// Every directory below `root` (included) with its path relative to `root` ("" for the
/// root), reading at most `max_dirs` directories. Returns false if it stopped at the bound.
/// Stays on `root`'s filesystem: below a directory where something else is mounted (a
/// runtime's bind mount, a tmpfs), inode numbers are another filesystem's and would name
/// cgroup ids after unrelated paths; the mount point itself is still a cgroup.
pub(crate) fn each_dir(root: &Path, max_dirs: usize, mut f: impl FnMut(u64, &str)) -> bool {
    let Ok(meta) = fs::symlink_metadata(root) else { return true };
    let root_dev = meta.dev();
    f(meta.ino(), "");
    let mut pending = vec![root.to_path_buf()];
    let mut visited = 0usize;
    while let Some(dir) = pending.pop() {
        if visited >= max_dirs {
            return false;
        }
        visited += 1;
        let Ok(entries) = fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let path = entry.path();
            if let Some(rel) = path.strip_prefix(root).ok().and_then(|r| r.to_str()) {
                f(entry.ino(), rel);
            }
            // d_ino is the mount point's own inode; a stat crosses into what is mounted there.
            // A bind mount of this filesystem (a kind node mounts its cgroup below itself)
            // keeps the device but not the inode: its cgroups would be learned again, under a
            // path that is not theirs.
            if entry.metadata().is_ok_and(|m| m.dev() == root_dev && m.ino() == entry.ino()) {
                pending.push(path);
            }
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_cgroups_gives_v1_hierarchy_ids_only() {
        let text = "#subsys_name\thierarchy\tnum_cgroups\tenabled\ncpu\t1\t3\t1\nmemory\t4\t33\t1\nhugetlb\t0\t2\t1\n";
        let ids = v1_hierarchy_ids(text);
        assert_eq!(ids.get("memory"), Some(&4));
        assert_eq!(ids.get("cpu"), Some(&1));
        assert_eq!(ids.get("hugetlb"), None, "a controller on cgroup2 has no v1 hierarchy");
    }

    /// Below a mount inside the tree, inode numbers are another filesystem's: the walk
    /// reports the mount point (a cgroup of the tree) and does not go in.
    #[test]
    #[ignore = "needs root"]
    fn the_walk_stays_on_the_roots_filesystem() {
        use std::ffi::CString;
        use std::os::unix::ffi::OsStrExt;
        // SAFETY: geteuid has no preconditions.
        assert_eq!(unsafe { libc::geteuid() }, 0, "needs root (it mounts a tmpfs)");
        let tree = crate::testdir::TestDir::new("xdev");
        tree.mkdirs("a/b");
        let mount_point = tree.mkdirs("a/m");
        let target = CString::new(mount_point.as_os_str().as_bytes()).unwrap();
        // SAFETY: valid NUL-terminated strings; a null data pointer is allowed for tmpfs.
        let mounted =
            unsafe { libc::mount(c"tmpfs".as_ptr(), target.as_ptr(), c"tmpfs".as_ptr(), 0, std::ptr::null()) };
        assert_eq!(mounted, 0, "mount tmpfs: {}", std::io::Error::last_os_error());
        struct Unmount(CString);
        impl Drop for Unmount {
            fn drop(&mut self) {
                // SAFETY: a valid NUL-terminated path; MNT_DETACH even if something is busy.
                unsafe { libc::umount2(self.0.as_ptr(), libc::MNT_DETACH) };
            }
        }
        let _unmount = Unmount(target);
        fs::create_dir_all(mount_point.join("inside/deeper")).unwrap();

        let mut seen = Vec::new();
        assert!(each_dir(tree.path(), 100, |_, rel| seen.push(rel.to_owned())));
        seen.sort();
        assert_eq!(seen, ["", "a", "a/b", "a/m"]);
    }

    #[test]
    fn learning_is_bounded_and_counted() {
        let shared = shared(2);
        let learner = Learner::new(
            shared.clone(),
            HashMap::from([(0, LearnTarget::Index(0)), (4, LearnTarget::NamespaceRelative)]),
        );
        assert!(learner.learn(0, 10, "/a"));
        assert!(learner.learn(0, 11, "/b"));
        assert!(learner.learn(0, 12, "/c"));
        assert!(!learner.learn(7, 13, "/d"), "hierarchy 7 names no workloads");
        assert!(!learner.learn(4, 14, "/system.slice/docker-x.scope/e"), "hierarchy 4 is namespace-relative");
        let s = learner.stats();
        assert_eq!((s.learned, s.evictions, s.other_hierarchy, s.namespace_relative, s.entries), (3, 1, 1, 1, 2));
        assert_eq!(lock(&shared).get(&(0, 12)).and_then(|w| w.cgroup_path).as_deref(), Some("/c"));
        assert_eq!(lock(&shared).get(&(0, 99)), None);
        assert_eq!(learner.stats().hits, 1);
    }
}
