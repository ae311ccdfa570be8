//! The resolver: cgroup id → `Workload`, from the caches when possible, else from the
//! kernel (file handle or bounded walk), counting what it does.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::cache::ClockCache;
use crate::handle::{self, HandleError};
use crate::learned::{self, LearnTarget, LearnedStats, Learner};
use crate::mounts::{self, CgroupHierarchy, CgroupMount};
use crate::walk::{self, WalkOutcome};
use crate::Workload;

/// Resolver limits. Every one of them bounds memory or kernel work.
#[derive(Debug, Clone)]
pub struct Config {
    /// Resolved ids kept.
    pub capacity: usize,
    /// Unresolvable ids remembered, so repeats cost no syscalls.
    pub negative_capacity: usize,
    /// How long an unresolvable id is remembered (errors may be transient).
    pub negative_ttl: Duration,
    /// Directories a fallback walk may read for one lookup.
    pub max_walk_dirs: usize,
    /// Try kernfs file handles before walking. Off only to force the walk (tests).
    pub use_handles: bool,
    /// Paths learned while their cgroups existed (kernel reports at creation and the walk
    /// at start), kept for when a cgroup is gone by the time its evidence is resolved.
    pub learned_capacity: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            capacity: 4096,
            negative_capacity: 1024,
            negative_ttl: Duration::from_secs(5),
            max_walk_dirs: 65_536,
            use_handles: true,
            learned_capacity: 4096,
        }
    }
}

/// How ids of one hierarchy are turned into paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessMode {
    /// Not decided yet: no lookup has needed the kernel.
    Unprobed,
    /// `open_by_handle_at`: one syscall per lookup.
    Handles,
    /// Bounded directory walk comparing inode numbers.
    Walk,
}

/// Counters since the resolver was made, plus current cache sizes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Lookups answered from the cache of resolved ids.
    pub hits: u64,
    /// Lookups answered from the cache of unresolvable ids (no syscall).
    pub negative_hits: u64,
    /// Lookups that asked the kernel.
    pub misses: u64,
    /// Entries pushed out of either cache by its capacity.
    pub evictions: u64,
    /// Lookups that produced no path: cgroup gone, hierarchy not mounted, id 0, a kernel
    /// error or a walk that hit its limit (negative-cache hits are not counted again).
    pub failed_resolutions: u64,
    pub entries: usize,
    pub negative_entries: usize,
}

enum Access {
    Unprobed,
    Handles { mount: File, dev: u64 },
    Walk { dev: u64 },
}

struct Hierarchy {
    mount: CgroupMount,
    access: Access,
    /// Mounted from inside a cgroup namespace: mountinfo says "/", but the mount point is
    /// the namespace's root cgroup. Paths read through the mount are from that cgroup, the
    /// kernel's `cgroup_mkdir` paths from the hierarchy root, so the latter are not learned.
    namespace_relative: bool,
}

/// Resolves cgroup ids to workloads. Not thread-safe by itself (`&mut self`); one per
/// draining thread, or behind a mutex.
pub struct Resolver {
    /// In `parse_mountinfo` order: the first mount that serves a hierarchy is the one to use.
    hierarchies: Vec<Hierarchy>,
    positive: ClockCache<(usize, u64), Workload>,
    negative: ClockCache<(usize, u64), Instant>,
    learned: learned::Shared,
    /// v1 controller → the kernel's id of its hierarchy (`/proc/cgroups`).
    v1_kernel_ids: HashMap<String, u32>,
    config: Config,
    stats: Stats,
}

impl Resolver {
    /// A resolver for the cgroup mounts in `/proc/self/mountinfo`.
    pub fn new(config: Config) -> io::Result<Self> {
        let mountinfo = fs::read_to_string("/proc/self/mountinfo")?;
        let mut resolver = Self::with_root_check(&mountinfo, config, &mounts::is_hierarchy_root);
        // Unreadable: nothing is learned for v1 hierarchies, which only costs those misses.
        resolver.v1_kernel_ids = learned::v1_hierarchy_ids(&fs::read_to_string("/proc/cgroups").unwrap_or_default());
        Ok(resolver)
    }

    /// A resolver for the cgroup mounts listed in `mountinfo` (the format of
    /// `/proc/<pid>/mountinfo`; mount points must be valid in this process). A mount whose
    /// root is "/" is taken to be its hierarchy's root, as mountinfo says: unlike
    /// [`Resolver::new`], no check that it is not a cgroup namespace's root.
    pub fn from_mountinfo(mountinfo: &str, config: Config) -> Self {
        Self::with_root_check(mountinfo, config, &|_: &Path| true)
    }

    /// [`Resolver::from_mountinfo`], with `is_root` telling whether a mount point whose
    /// mountinfo root is "/" really is its hierarchy's root (else: namespace-relative).
    pub(crate) fn with_root_check(mountinfo: &str, config: Config, is_root: &dyn Fn(&Path) -> bool) -> Self {
        Resolver {
            hierarchies: mounts::parse_mountinfo(mountinfo)
                .into_iter()
                .map(|mount| {
                    let namespace_relative = mount.root == "/" && !is_root(&mount.mount_point);
                    Hierarchy { mount, access: Access::Unprobed, namespace_relative }
                })
                .collect(),
            positive: ClockCache::new(config.capacity),
            negative: ClockCache::new(config.negative_capacity),
            learned: learned::shared(config.learned_capacity),
            v1_kernel_ids: HashMap::new(),
            config,
            stats: Stats::default(),
        }
    }

    /// The workload of cgroup `cgroup_id` of `hierarchy`. Never fails: what cannot be
    /// found out is `None` in the result (and counted in [`Stats::failed_resolutions`]).
    pub fn workload(&mut self, hierarchy: &CgroupHierarchy, cgroup_id: u64) -> Workload {
        self.workload_at(hierarchy, cgroup_id, Instant::now())
    }

    pub fn stats(&self) -> Stats {
        Stats { entries: self.positive.len(), negative_entries: self.negative.len(), ..self.stats }
    }

    /// What was learned while cgroups existed (see [`Resolver::learner`]).
    pub fn learned_stats(&self) -> LearnedStats {
        learned::lock(&self.learned).stats()
    }

    /// A handle that teaches this resolver the paths of cgroups the kernel reports as
    /// created, for the `hierarchies` workloads are named by (mounted ones only; others
    /// are ignored when reported, and so are those [mounted inside a cgroup namespace]).
    ///
    /// [mounted inside a cgroup namespace]: Resolver::mounted_in_cgroup_namespace
    pub fn learner(&self, hierarchies: &[CgroupHierarchy]) -> Learner {
        let mut by_kernel_id = HashMap::new();
        for hierarchy in hierarchies {
            let kernel_id = match hierarchy {
                // The kernel's default hierarchy (cgroup2) always has id 0.
                CgroupHierarchy::Unified => Some(0),
                CgroupHierarchy::V1(controller) => self.v1_kernel_ids.get(controller).copied(),
            };
            let Some(kernel_id) = kernel_id else { continue };
            let Some(index) = self.index_of(hierarchy) else { continue };
            let namespace_relative = self.hierarchies.get(index).is_some_and(|h| h.namespace_relative);
            let target = if namespace_relative { LearnTarget::NamespaceRelative } else { LearnTarget::Index(index) };
            by_kernel_id.insert(kernel_id, target);
        }
        Learner::new(self.learned.clone(), by_kernel_id)
    }

    /// Learns every cgroup that exists now in the mounted `hierarchies` (whole-hierarchy
    /// mounts; at most `max_walk_dirs` directories each), so a workload that started before
    /// the agent is still named after its cgroup is removed. Returns how many were learned,
    /// and false if a walk stopped at its bound.
    pub fn learn_existing(&mut self, hierarchies: &[CgroupHierarchy]) -> (usize, bool) {
        let mut count = 0;
        let mut all_read = true;
        for hierarchy in hierarchies {
            let Some(index) = self.index_of(hierarchy) else { continue };
            let Some(h) = self.hierarchies.get(index) else { continue };
            let mut learned = learned::lock(&self.learned);
            let root = h.mount.root.trim_end_matches('/');
            let complete = learned::each_dir(&h.mount.mount_point, self.config.max_walk_dirs, |id, rel| {
                let path = if rel.is_empty() { format!("{root}/") } else { format!("{root}/{rel}") };
                let path = if path.len() > 1 { path.trim_end_matches('/').to_owned() } else { path };
                learned.insert((index, id), path);
                count += 1;
            });
            all_read &= complete;
        }
        (count, all_read)
    }

    /// How ids of `hierarchy` are looked up; `None` if it is not mounted.
    pub fn access_mode(&self, hierarchy: &CgroupHierarchy) -> Option<AccessMode> {
        let h = self.hierarchies.get(self.index_of(hierarchy)?)?;
        Some(match h.access {
            Access::Unprobed => AccessMode::Unprobed,
            Access::Handles { .. } => AccessMode::Handles,
            Access::Walk { .. } => AccessMode::Walk,
        })
    }

    /// True when `hierarchy` is mounted from inside a cgroup namespace (the agent in a
    /// container with a private cgroupns, e.g. a kind node): its ids still resolve through
    /// the mount, but cgroup paths the kernel reports for it are not learned.
    pub fn mounted_in_cgroup_namespace(&self, hierarchy: &CgroupHierarchy) -> bool {
        self.index_of(hierarchy).and_then(|i| self.hierarchies.get(i)).is_some_and(|h| h.namespace_relative)
    }

    /// Where `hierarchy` is mounted; `None` if it is not.
    pub fn mount_point(&self, hierarchy: &CgroupHierarchy) -> Option<&Path> {
        let h = self.hierarchies.get(self.index_of(hierarchy)?)?;
        Some(&h.mount.mount_point)
    }

    fn index_of(&self, hierarchy: &CgroupHierarchy) -> Option<usize> {
        // Linear, but over a handful of mounts: cheaper than hashing the hierarchy name.
        self.hierarchies.iter().position(|h| h.mount.serves(hierarchy))
    }

    pub(crate) fn workload_at(&mut self, hierarchy: &CgroupHierarchy, cgroup_id: u64, now: Instant) -> Workload {
        // No cgroup has id 0; asking the kernel would only cost a syscall or a walk.
        let Some(index) = self.index_of(hierarchy).filter(|_| cgroup_id != 0) else {
            self.stats.failed_resolutions += 1;
            return Workload::unknown(cgroup_id);
        };
        let key = (index, cgroup_id);
        if let Some(workload) = self.positive.get(&key) {
            self.stats.hits += 1;
            return workload.clone();
        }
        // Learned while the cgroup existed: right even if it is gone now (ids are not reused).
        if let Some(workload) = learned::lock(&self.learned).get(&key) {
            return workload;
        }
        if self.negative.get(&key).is_some_and(|&until| now < until) {
            self.stats.negative_hits += 1;
            return Workload::unknown(cgroup_id);
        }
        self.stats.misses += 1;
        match self.lookup(index, cgroup_id) {
            Some(path) => {
                let workload = Workload::from_path(cgroup_id, path);
                // Kernfs ids are 64-bit and never reused, so a resolved id stays true; it
                // is kept even after the cgroup is removed (late events still name it).
                if self.positive.insert(key, workload.clone()) {
                    self.stats.evictions += 1;
                }
                workload
            }
            None => {
                self.stats.failed_resolutions += 1;
                let until = now.checked_add(self.config.negative_ttl).unwrap_or(now);
                if self.negative.insert(key, until) {
                    self.stats.evictions += 1;
                }
                Workload::unknown(cgroup_id)
            }
        }
    }

    /// The path of `id` from the hierarchy root, asking the kernel.
    fn lookup(&mut self, index: usize, id: u64) -> Option<String> {
        let use_handles = self.config.use_handles;
        let max_walk_dirs = self.config.max_walk_dirs;
        let h = self.hierarchies.get_mut(index)?;
        if matches!(h.access, Access::Unprobed) {
            h.access = probe(&h.mount, use_handles)?;
        }
        let dev = match &h.access {
            Access::Unprobed => return None,
            Access::Walk { dev } => *dev,
            Access::Handles { mount, dev } => match handle::path_by_id(mount.as_fd(), id) {
                Ok(abs) => return verified_relative(&h.mount, *dev, id, &abs),
                Err(HandleError::Gone | HandleError::Other) => return None,
                Err(HandleError::Unsupported) => {
                    // E.g. the capability was dropped after probing: walk from now on.
                    let dev = *dev;
                    h.access = Access::Walk { dev };
                    dev
                }
            },
        };
        match walk::find_dir(&h.mount.mount_point, dev, id, max_walk_dirs) {
            Ok(WalkOutcome::Found(abs)) => relative(&h.mount, &abs),
            Ok(WalkOutcome::NotFound | WalkOutcome::Truncated) | Err(_) => None,
        }
    }
}

/// Decides how a mount is accessed: handles if resolving the mount root's own id through
/// a handle leads back to the mount point, else the walk. `None` (stay unprobed, retry
/// later) if the mount cannot be opened now.
fn probe(mount: &CgroupMount, use_handles: bool) -> Option<Access> {
    let file = File::open(&mount.mount_point).ok()?;
    let meta = file.metadata().ok()?;
    let dev = meta.dev();
    if use_handles {
        match handle::path_by_id(file.as_fd(), meta.ino()) {
            Ok(p) if p == mount.mount_point => return Some(Access::Handles { mount: file, dev }),
            Err(HandleError::Other) => return None,
            _ => {}
        }
    }
    Some(Access::Walk { dev })
}

/// `abs` as a hierarchy path, after checking it still is the directory with this id: a
/// cgroup removed after the handle was opened reads back as "<path> (deleted)", and one
/// re-created under the same name has a new id.
fn verified_relative(mount: &CgroupMount, dev: u64, id: u64, abs: &Path) -> Option<String> {
    let meta = fs::symlink_metadata(abs).ok()?;
    if !meta.is_dir() || meta.ino() != id || meta.dev() != dev {
        return None;
    }
    relative(mount, abs)
}

/// The hierarchy path of `abs`, a path under the mount point. Non-UTF-8 names give `None`:
/// a lossy path would name a cgroup that does not exist.
fn relative(mount: &CgroupMount, abs: &Path) -> Option<String> {
    let below = abs.strip_prefix(&mount.mount_point).ok()?;
    let below = std::str::from_utf8(below.as_os_str().as_bytes()).ok()?;
    Some(match (mount.root.as_str(), below) {
        (root, "") => root.to_owned(),
        ("/", below) => format!("/{below}"),
        (root, below) => format!("{root}/{below}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdir::TestDir;

    const CID: &str = "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210";
    const UID: &str = "0a1b2c3d-4e5f-4061-8293-a4b5c6d7e8f9";

    fn ino(p: &Path) -> u64 {
        fs::metadata(p).unwrap().ino()
    }

    /// A resolver whose "cgroup2 mount" is a plain temporary directory, walked.
    fn resolver_on(dir: &TestDir, root: &str, config: Config) -> Resolver {
        let mountinfo = format!("99 1 0:99 {root} {} rw - cgroup2 cgroup2 rw\n", dir.path().display());
        Resolver::from_mountinfo(&mountinfo, config)
    }

    fn walk_config() -> Config {
        Config { use_handles: false, ..Config::default() }
    }

    #[test]
    fn resolves_through_the_walk_and_caches() {
        let t = TestDir::new("res");
        let scope = t.mkdirs(&format!("kubepods/burstable/pod{UID}/{CID}"));
        let mut r = resolver_on(&t, "/", walk_config());
        assert_eq!(r.access_mode(&CgroupHierarchy::Unified), Some(AccessMode::Unprobed));
        let id = ino(&scope);
        let expected = Workload {
            cgroup_id: id,
            cgroup_path: Some(format!("/kubepods/burstable/pod{UID}/{CID}")),
            container_id: Some(CID.to_owned()),
            pod_uid: Some(UID.to_owned()),
        };
        assert_eq!(r.workload(&CgroupHierarchy::Unified, id), expected);
        assert_eq!(r.access_mode(&CgroupHierarchy::Unified), Some(AccessMode::Walk));
        // Second time from the cache, even once the directory is gone (ids are not reused).
        fs::remove_dir(&scope).unwrap();
        assert_eq!(r.workload(&CgroupHierarchy::Unified, id), expected);
        let s = r.stats();
        assert_eq!((s.hits, s.misses, s.failed_resolutions), (1, 1, 0));
        assert_eq!(s.entries, 1);
    }

    #[test]
    fn learned_paths_name_cgroups_that_are_gone() {
        let t = TestDir::new("res-learned");
        let before = t.mkdirs(&format!("kubepods/pod{UID}/{CID}"));
        let mut r = resolver_on(&t, "/", walk_config());
        let h = CgroupHierarchy::Unified;
        // Existing at start: learned by the walk (root, kubepods, the pod, the container).
        assert_eq!(r.learn_existing(&[h.clone(), CgroupHierarchy::v1("memory")]), (4, true));
        // Created later: as the kernel's cgroup_mkdir reports it (id, path from the root).
        let later = t.mkdirs(&format!("kubepods/pod{UID}/{}", "cd".repeat(32)));
        let learner = r.learner(std::slice::from_ref(&h));
        assert!(learner.learn(0, ino(&later), &format!("/kubepods/pod{UID}/{}", "cd".repeat(32))));
        let (before_id, later_id) = (ino(&before), ino(&later));
        // Made while the others still exist, so the filesystem cannot hand it an inode number
        // of theirs (inode reuse after their removal made this test flaky).
        let gone = t.mkdirs("gone");
        let gone_id = ino(&gone);
        fs::remove_dir(&before).unwrap();
        fs::remove_dir(&later).unwrap();
        let w = r.workload(&h, before_id);
        assert_eq!((w.container_id.as_deref(), w.pod_uid.as_deref()), (Some(CID), Some(UID)));
        assert_eq!(w.cgroup_path, Some(format!("/kubepods/pod{UID}/{CID}")));
        assert_eq!(r.workload(&h, later_id).container_id, Some("cd".repeat(32)));
        let s = r.stats();
        assert_eq!((s.misses, s.failed_resolutions), (0, 0), "the kernel was not asked");
        assert_eq!(r.learned_stats().hits, 2);
        // Never learned and gone: unknown, as before.
        fs::remove_dir(&gone).unwrap();
        assert_eq!(r.workload(&h, gone_id), Workload::unknown(gone_id));
    }

    /// A kind node's pod cgroup below the node's cgroup namespace root.
    fn kind_pod_scope(cid: &str) -> String {
        let uid = UID.replace('-', "_");
        format!(
            "kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{uid}.slice/cri-containerd-{cid}.scope"
        )
    }

    #[test]
    fn namespace_relative_mount_learns_nothing_from_the_kernel_but_still_resolves() {
        let t = TestDir::new("res-cgroupns");
        let before = t.mkdirs(&kind_pod_scope(CID));
        let mountinfo = format!("99 1 0:99 / {} rw - cgroup2 cgroup2 rw\n", t.path().display());
        // The check Resolver::new makes: the mount point is not inode 1 of its hierarchy.
        let mut r = Resolver::with_root_check(&mountinfo, walk_config(), &|_: &Path| false);
        let h = CgroupHierarchy::Unified;
        assert!(r.mounted_in_cgroup_namespace(&h));
        // The start walk reads through the mount: its paths are the namespace's, consistently.
        assert_eq!(r.learn_existing(std::slice::from_ref(&h)), (6, true), "the root and five below it");
        // A pod made later, as the kernel reports it: from the real hierarchy root, through
        // the node's own container scope, which would be named as the pod's container.
        let later_cid = "cd".repeat(32);
        let later = t.mkdirs(&kind_pod_scope(&later_cid));
        let node = "ab".repeat(32);
        let kernel_path = format!("/system.slice/docker-{node}.scope/{}", kind_pod_scope(&later_cid));
        let learner = r.learner(std::slice::from_ref(&h));
        assert!(!learner.learn(0, ino(&later), &kernel_path), "a namespace-relative hierarchy learns nothing");
        let s = learner.stats();
        assert_eq!((s.learned, s.namespace_relative, s.other_hierarchy), (6, 1, 0), "{s:?}");
        // Resolved through the mount instead: the pod's own container.
        let w = r.workload(&h, ino(&later));
        assert_eq!(w.cgroup_path, Some(format!("/{}", kind_pod_scope(&later_cid))));
        assert_eq!((w.container_id, w.pod_uid.as_deref()), (Some(later_cid), Some(UID)));
        assert_eq!(r.stats().misses, 1, "asked the kernel, not the learned table");
        // What the start walk learned still names a cgroup that is gone.
        let before_id = ino(&before);
        fs::remove_dir(&before).unwrap();
        let w = r.workload(&h, before_id);
        assert_eq!((w.container_id.as_deref(), w.pod_uid.as_deref()), (Some(CID), Some(UID)));
    }

    #[test]
    fn hierarchy_root_mount_learns_from_the_kernel() {
        let t = TestDir::new("res-realroot");
        let later = t.mkdirs(&kind_pod_scope(CID));
        let mountinfo = format!("99 1 0:99 / {} rw - cgroup2 cgroup2 rw\n", t.path().display());
        let mut r = Resolver::with_root_check(&mountinfo, walk_config(), &|_: &Path| true);
        let h = CgroupHierarchy::Unified;
        assert!(!r.mounted_in_cgroup_namespace(&h));
        let learner = r.learner(std::slice::from_ref(&h));
        assert!(learner.learn(0, ino(&later), &format!("/{}", kind_pod_scope(CID))));
        let s = learner.stats();
        assert_eq!((s.learned, s.namespace_relative), (1, 0));
        assert_eq!(r.workload(&h, ino(&later)).container_id.as_deref(), Some(CID));
        assert_eq!(r.stats().misses, 0, "answered from what was learned");
        // from_mountinfo trusts a "/" root, as before.
        let r = Resolver::from_mountinfo(&mountinfo, walk_config());
        assert!(!r.mounted_in_cgroup_namespace(&h));
        assert!(!r.mounted_in_cgroup_namespace(&CgroupHierarchy::v1("memory")), "not mounted");
    }

    #[test]
    fn root_and_subtree_mounts_give_hierarchy_paths() {
        let t = TestDir::new("res-root");
        let pod = t.mkdirs(&format!("pod{UID}"));
        // As if only /kubepods/burstable of the hierarchy were mounted here.
        let mut r = resolver_on(&t, "/kubepods/burstable", walk_config());
        let w = r.workload(&CgroupHierarchy::Unified, ino(&pod));
        assert_eq!(w.cgroup_path.as_deref(), Some(format!("/kubepods/burstable/pod{UID}").as_str()));
        assert_eq!(w.pod_uid.as_deref(), Some(UID));
        let w = r.workload(&CgroupHierarchy::Unified, ino(t.path()));
        assert_eq!(w.cgroup_path.as_deref(), Some("/kubepods/burstable"));

        let mut r = resolver_on(&t, "/", walk_config());
        let w = r.workload(&CgroupHierarchy::Unified, ino(t.path()));
        assert_eq!(w.cgroup_path.as_deref(), Some("/"));
        assert_eq!((w.container_id, w.pod_uid), (None, None));
    }

    #[test]
    fn gone_cgroup_is_unknown_and_negatively_cached() {
        let t = TestDir::new("res-neg");
        let gone = t.mkdirs("gone");
        let id = ino(&gone);
        fs::remove_dir(&gone).unwrap();
        let ttl = Duration::from_secs(5);
        let mut r = resolver_on(&t, "/", Config { negative_ttl: ttl, ..walk_config() });
        let start = Instant::now();
        let h = CgroupHierarchy::Unified;
        assert_eq!(r.workload_at(&h, id, start), Workload::unknown(id));
        assert_eq!(r.workload_at(&h, id, start + ttl / 2), Workload::unknown(id));
        let s = r.stats();
        assert_eq!((s.misses, s.negative_hits, s.failed_resolutions, s.negative_entries), (1, 1, 1, 1));
        // After the TTL the kernel is asked again.
        assert_eq!(r.workload_at(&h, id, start + ttl), Workload::unknown(id));
        let s = r.stats();
        assert_eq!((s.misses, s.negative_hits, s.failed_resolutions), (2, 1, 2));
        assert_eq!(s.negative_entries, 1, "the expired entry was replaced, not added");
    }

    #[test]
    fn negative_cache_is_bounded() {
        let t = TestDir::new("res-negbound");
        let mut r = resolver_on(&t, "/", Config { negative_capacity: 2, ..walk_config() });
        let now = Instant::now();
        // Ids that cannot exist in the fresh directory (no such inode number below it).
        let base = u64::MAX - 10;
        for id in base..base + 5 {
            r.workload_at(&CgroupHierarchy::Unified, id, now);
        }
        let s = r.stats();
        assert_eq!(s.negative_entries, 2);
        assert_eq!(s.evictions, 3);
        assert_eq!(s.misses, 5);
        assert_eq!(s.failed_resolutions, 5);
    }

    #[test]
    fn positive_cache_is_bounded() {
        let t = TestDir::new("res-posbound");
        let ids: Vec<u64> = ["a", "b", "c"].iter().map(|d| ino(&t.mkdirs(d))).collect();
        let mut r = resolver_on(&t, "/", Config { capacity: 2, ..walk_config() });
        for &id in &ids {
            assert!(r.workload(&CgroupHierarchy::Unified, id).cgroup_path.is_some());
        }
        let s = r.stats();
        assert_eq!((s.entries, s.evictions, s.misses, s.hits), (2, 1, 3, 0));
        // The newest is still cached.
        r.workload(&CgroupHierarchy::Unified, ids[2]);
        assert_eq!(r.stats().hits, 1);
    }

    #[test]
    fn unmounted_hierarchy_and_id_zero_cost_nothing() {
        let t = TestDir::new("res-unmounted");
        let mut r = resolver_on(&t, "/", walk_config());
        let memory = CgroupHierarchy::v1("memory");
        assert_eq!(r.workload(&memory, 5), Workload::unknown(5));
        assert_eq!(r.workload(&CgroupHierarchy::Unified, 0), Workload::unknown(0));
        assert_eq!(r.access_mode(&memory), None);
        assert_eq!(r.mount_point(&memory), None);
        let s = r.stats();
        assert_eq!((s.misses, s.failed_resolutions, s.negative_entries), (0, 2, 0));
        assert_eq!(r.access_mode(&CgroupHierarchy::Unified), Some(AccessMode::Unprobed), "nothing was probed");
    }

    #[test]
    fn non_cgroup_filesystem_falls_back_to_walk_even_with_handles_allowed() {
        let t = TestDir::new("res-probe");
        let d = t.mkdirs("kubepods");
        let mut r = resolver_on(&t, "/", Config::default());
        let w = r.workload(&CgroupHierarchy::Unified, ino(&d));
        assert_eq!(w.cgroup_path.as_deref(), Some("/kubepods"));
        assert_eq!(r.access_mode(&CgroupHierarchy::Unified), Some(AccessMode::Walk));
    }

    #[test]
    fn relative_joins_root_and_rejects_foreign_paths() {
        let mount =
            |root: &str| CgroupMount { mount_point: "/sys/fs/cgroup".into(), root: root.to_owned(), controllers: None };
        let rel = |root: &str, p: &str| relative(&mount(root), Path::new(p));
        assert_eq!(rel("/", "/sys/fs/cgroup").as_deref(), Some("/"));
        assert_eq!(rel("/", "/sys/fs/cgroup/a/b").as_deref(), Some("/a/b"));
        assert_eq!(rel("/sub", "/sys/fs/cgroup/a").as_deref(), Some("/sub/a"));
        assert_eq!(rel("/sub", "/sys/fs/cgroup").as_deref(), Some("/sub"));
        assert_eq!(rel("/", "/sys/fs/cgroupx/a"), None);
        assert_eq!(rel("/", "/elsewhere"), None);
        let non_utf8 = std::ffi::OsStr::from_bytes(b"/sys/fs/cgroup/\xff");
        assert_eq!(relative(&mount("/"), Path::new(non_utf8)), None);
    }
}
