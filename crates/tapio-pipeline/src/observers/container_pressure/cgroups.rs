//! Which cgroups are containers, and where each one's files are.
//!
//! A container is a cgroup whose path workload identity parses to a container id (the
//! Kubernetes layouts of the systemd and cgroupfs drivers, and plain Docker: see
//! `tapio_identity::parse_cgroup_path`); cgroups below it are its own sub-groups, not more
//! containers. They are found by walking the mounted hierarchies: cgroup2, and on hybrid
//! nodes the cgroup1 cpu and memory hierarchies, where the kubelet makes the same path in
//! each. The walk only descends where a container can be (`kubepods`, `docker` and slice
//! chains), to a bounded depth and number of directories, so a rescan stays cheap.

use crate::evidence::WorkloadIds;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use tapio_identity::CgroupHierarchy;

/// Deepest container in a known layout: `kubelet.slice/kubelet-kubepods.slice/<qos>/<pod>/<ctr>`.
const MAX_DEPTH: usize = 5;

/// Where the hierarchies that hold container files are mounted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Layout {
    pub unified: Option<PathBuf>,
    pub cpu_v1: Option<PathBuf>,
    pub memory_v1: Option<PathBuf>,
}

impl Layout {
    pub fn from_mountinfo(mountinfo: &str) -> Self {
        let at = |h: CgroupHierarchy| tapio_identity::whole_mount_point(mountinfo, &h);
        Self {
            unified: at(CgroupHierarchy::Unified),
            cpu_v1: at(CgroupHierarchy::v1("cpu")),
            memory_v1: at(CgroupHierarchy::v1("memory")),
        }
    }

    pub fn of_this_node() -> Self {
        Self::from_mountinfo(&std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default())
    }

    /// The hierarchies walked for containers (each once: cgroup1 may co-mount cpu and memory).
    pub fn roots(&self) -> Vec<&Path> {
        let mut roots: Vec<&Path> = Vec::with_capacity(3);
        for root in [&self.unified, &self.cpu_v1, &self.memory_v1].into_iter().flatten() {
            if !roots.contains(&root.as_path()) {
                roots.push(root);
            }
        }
        roots
    }
}

/// Whether a cgroup path names a container.
pub fn is_container(path: &str) -> bool {
    tapio_identity::parse_cgroup_path(path).container_id.is_some()
}

/// Whether a container can be below `path` (relative to the hierarchy root, `first` its first
/// segment): inside the cgroupfs `kubepods` and `docker` trees, and along slice chains
/// (systemd's `kubepods.slice/...` and `system.slice` for Docker's scopes).
fn worth_descending(first: &str, name: &str, depth: usize) -> bool {
    depth < MAX_DEPTH && (first == "kubepods" || first == "docker" || name.ends_with(".slice"))
}

/// Adds the container paths under `root` to `found` (unsorted; a path may already be there
/// from another hierarchy), reading at most `max_dirs` directories. Returns false when the
/// bound stopped the walk. Unreadable directories (a cgroup removed mid-walk) are skipped:
/// the next rescan sees the tree as it is then.
pub fn find_containers(root: &Path, max_dirs: usize, found: &mut Vec<String>) -> bool {
    let mut stack: Vec<(PathBuf, String, usize)> = vec![(root.to_path_buf(), String::new(), 0)];
    let mut read = 0;
    while let Some((dir, rel, depth)) = stack.pop() {
        if read == max_dirs {
            return false;
        }
        read += 1;
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            // Kernel-made names are UTF-8 in every known layout; others cannot be containers.
            let Ok(name) = entry.file_name().into_string() else { continue };
            let path = format!("{rel}/{name}");
            if is_container(&path) {
                found.push(path);
            } else {
                let first = path[1..].split('/').next().unwrap_or_default();
                if worth_descending(first, &name, depth + 1) {
                    stack.push((entry.path(), path, depth + 1));
                }
            }
        }
    }
    true
}

/// "cgroup2" or "cgroup1": whose files a reading came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V2,
    V1,
}

impl Version {
    pub fn label(self) -> &'static str {
        match self {
            Self::V2 => "cgroup2",
            Self::V1 => "cgroup1",
        }
    }
}

/// The files of one container that the poller reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerFiles {
    /// The container's cgroup directory holding the CFS bandwidth counters.
    pub cpu: Option<(PathBuf, Version)>,
    /// The container's cgroup2 directory, when it has PSI files.
    pub psi: Option<PathBuf>,
    /// The container's memory cgroup directory.
    pub memory: Option<(PathBuf, Version)>,
    /// What names the workload (see `sink_stage::pick_cgroup`): the cgroup2 directory's id,
    /// else the cgroup1 memory directory's.
    pub ids: WorkloadIds,
    /// The inode of [`dir`](Self::dir), the cgroup's id: a cgroup removed and made again
    /// under the same path (a restarted container) has another.
    pub ino: u64,
}

impl ContainerFiles {
    /// The directory that stands for the container: the one with the CFS counters, else
    /// the PSI one.
    pub fn dir(&self) -> Option<&PathBuf> {
        self.cpu.as_ref().map(|(dir, _)| dir).or(self.psi.as_ref())
    }
}

fn dir_of(root: &Option<PathBuf>, rel: &str) -> Option<(PathBuf, u64)> {
    let dir = root.as_ref()?.join(rel.trim_start_matches('/'));
    let meta = std::fs::metadata(&dir).ok()?;
    meta.is_dir().then(|| (dir, meta.ino()))
}

/// Where the files of the container at `rel` are on this node; None when the container is
/// already gone or has nothing to read.
pub fn locate(layout: &Layout, rel: &str) -> Option<ContainerFiles> {
    let v2 = dir_of(&layout.unified, rel);
    let v1_cpu = dir_of(&layout.cpu_v1, rel);
    let v1_memory = dir_of(&layout.memory_v1, rel);
    let has_bandwidth = |dir: &Path| {
        std::fs::read_to_string(dir.join("cpu.stat")).ok().and_then(|t| super::stat::parse_cpu_stat(&t)).is_some()
    };
    let cpu = match (&v2, &v1_cpu) {
        (Some(d), _) if has_bandwidth(&d.0) => Some((d, Version::V2)),
        (_, Some(d)) if has_bandwidth(&d.0) => Some((d, Version::V1)),
        _ => None,
    };
    let psi = v2.as_ref().filter(|(dir, _)| dir.join("cpu.pressure").exists());
    let ino = cpu.map(|((_, ino), _)| *ino).or(psi.map(|(_, ino)| *ino))?;
    let memory = match (&v2, &v1_memory) {
        (Some((dir, _)), _) if dir.join("memory.current").exists() => Some((dir.clone(), Version::V2)),
        (_, Some((dir, _))) => Some((dir.clone(), Version::V1)),
        _ => None,
    };
    let ids = WorkloadIds {
        cgroup_id: v2.as_ref().map_or(0, |(_, id)| *id),
        mem_cgroup_id: v1_memory.as_ref().map_or(0, |(_, id)| *id),
    };
    Some(ContainerFiles {
        cpu: cpu.map(|((dir, _), v)| (dir.clone(), v)),
        psi: psi.map(|(dir, _)| dir.clone()),
        memory,
        ids,
        ino,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const CID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn layouts_of_pure_and_hybrid_nodes() {
        let pure = "30 1 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        let l = Layout::from_mountinfo(pure);
        assert_eq!((l.unified.as_deref(), l.cpu_v1.as_deref()), (Some(Path::new("/sys/fs/cgroup")), None));
        assert_eq!(l.roots(), vec![Path::new("/sys/fs/cgroup")]);
        let hybrid = "32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n\
                      35 31 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n\
                      41 31 0:38 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n";
        let l = Layout::from_mountinfo(hybrid);
        assert_eq!(l.roots().len(), 3);
        assert_eq!(l.cpu_v1.as_deref(), Some(Path::new("/sys/fs/cgroup/cpu,cpuacct")));
    }

    #[test]
    fn containers_are_the_cgroups_that_name_one() {
        let uid = "1b2c3d4e_5f60_4718_89ab_cdef01234567";
        assert!(is_container(&format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid}.slice/cri-containerd-{CID}.scope"
        )));
        assert!(is_container(&format!("/kubepods/besteffort/pod1b2c3d4e-5f60-4718-89ab-cdef01234567/{CID}")));
        assert!(!is_container(&format!("/kubepods.slice/kubepods-pod{uid}.slice")), "a pod is not a container");
        assert!(!is_container("/system.slice/sshd.service"));
    }

    #[test]
    fn the_walk_descends_only_where_containers_can_be() {
        assert!(worth_descending("kubepods", "burstable", 2));
        assert!(worth_descending("kubepods.slice", "kubepods-besteffort.slice", 2));
        assert!(worth_descending("docker", "docker", 1));
        assert!(!worth_descending("system.slice", "sshd.service", 2));
        assert!(!worth_descending("kubepods", "deep", MAX_DEPTH), "bounded depth");
    }

    #[test]
    fn the_walk_finds_containers_in_a_directory_tree_and_stops_at_its_bound() {
        let root = std::env::temp_dir().join(format!("tapio-i15-pressure-walk-{}", std::process::id()));
        let pod = "kubepods/burstable/pod1b2c3d4e-5f60-4718-89ab-cdef01234567";
        for dir in [format!("{pod}/{CID}/sub"), format!("{pod}/not-a-container"), "system.slice/x.service".into()] {
            std::fs::create_dir_all(root.join(dir)).unwrap();
        }
        let mut found = Vec::new();
        assert!(find_containers(&root, 100, &mut found));
        assert_eq!(found, vec![format!("/{pod}/{CID}")], "the sub-group below the container is not another one");
        let mut partial = Vec::new();
        assert!(!find_containers(&root, 2, &mut partial), "the bound stops the walk and says so");
        std::fs::remove_dir_all(&root).unwrap();
    }
}
