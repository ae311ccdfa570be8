//! Which cgroup hierarchies are mounted where, read from `/proc/self/mountinfo`.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Which cgroup hierarchy an id belongs to. Ids are only unique within one hierarchy.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CgroupHierarchy {
    /// cgroup2: the id from `bpf_get_current_cgroup_id()`.
    Unified,
    /// A cgroup v1 hierarchy, named by one of its controllers as `/proc/self/cgroup` shows
    /// it: `"memory"`, `"cpu"`, or `"name=systemd"` for a named hierarchy.
    V1(String),
}

impl CgroupHierarchy {
    /// Shorthand for `CgroupHierarchy::V1(controller.to_owned())`.
    pub fn v1(controller: &str) -> Self {
        CgroupHierarchy::V1(controller.to_owned())
    }
}

/// One mounted cgroup hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CgroupMount {
    pub(crate) mount_point: PathBuf,
    /// The directory of the hierarchy that is mounted (mountinfo's "root"), as a path from
    /// the hierarchy root: "/" unless only a sub-tree is mounted.
    pub(crate) root: String,
    /// `None` for cgroup2, otherwise the v1 controllers and `name=` of the hierarchy.
    pub(crate) controllers: Option<Vec<String>>,
}

impl CgroupMount {
    pub(crate) fn serves(&self, hierarchy: &CgroupHierarchy) -> bool {
        match (hierarchy, &self.controllers) {
            (CgroupHierarchy::Unified, None) => true,
            (CgroupHierarchy::V1(want), Some(have)) => have.iter().any(|c| c == want),
            _ => false,
        }
    }
}

/// The cgroup mounts in mountinfo text. Lines that are not cgroup mounts or are malformed
/// are skipped. Mounts of a whole hierarchy come first (otherwise file order), so the first
/// mount serving a hierarchy is the one to use: a sub-tree mount cannot reach every id.
pub(crate) fn parse_mountinfo(text: &str) -> Vec<CgroupMount> {
    parse_mountinfo_with(text, &is_hierarchy_root)
}

/// Where the whole of `hierarchy` is mounted, from mountinfo text: for callers that read
/// cgroup files themselves (e.g. the agent's container pressure poller). A mount of only a
/// sub-tree is not returned: paths from the hierarchy root would not resolve below it.
pub fn whole_mount_point(mountinfo: &str, hierarchy: &CgroupHierarchy) -> Option<PathBuf> {
    parse_mountinfo(mountinfo).into_iter().find(|m| m.root == "/" && m.serves(hierarchy)).map(|m| m.mount_point)
}

/// True when `dir` is the root directory of its cgroup hierarchy: kernfs gives that
/// directory inode number 1. A root of "/" in mountinfo is not enough: inside a cgroup
/// namespace it is the namespace's root cgroup (e.g. a kind node's own container).
pub(crate) fn is_hierarchy_root(dir: &Path) -> bool {
    std::fs::metadata(dir).is_ok_and(|m| m.ino() == 1)
}

/// [`parse_mountinfo`] with the hierarchy-root check passed in (tests).
fn parse_mountinfo_with(text: &str, is_root: &dyn Fn(&Path) -> bool) -> Vec<CgroupMount> {
    // Root mounts first, each group in file order: a partition, not a stable sort, whose
    // code the agent's binary would carry for this one type.
    let (mut mounts, others): (Vec<CgroupMount>, Vec<CgroupMount>) =
        text.lines().filter_map(|l| parse_line(l, is_root)).partition(|m| m.root == "/");
    mounts.extend(others);
    mounts
}

/// A cgroup mount of one mountinfo line ([`tapio_util::mountinfo`] reads the fields).
fn parse_line(line: &str, is_root: &dyn Fn(&Path) -> bool) -> Option<CgroupMount> {
    let mount = tapio_util::mountinfo::parse_line(line)?;
    let controllers = match mount.fstype {
        "cgroup2" => None,
        "cgroup" => {
            Some(mount.super_options.split(',').filter(|o| !matches!(*o, "rw" | "ro")).map(str::to_owned).collect())
        }
        _ => return None,
    };
    let mut root = String::from_utf8(mount.root()).ok()?;
    let mount_point = mount.mount_point();
    if !root.starts_with('/') {
        return None;
    }
    // A root with "." or ".." segments cannot be joined with a path below it. Such roots are
    // what a cgroup namespace shows (relative to the namespace's own cgroup): a container
    // with the host's hierarchy bind-mounted reads "/../..". When the mounted directory is
    // the hierarchy's root, that is the one root it can be; any other stays unusable.
    if root.split('/').any(|s| s == "." || s == "..") {
        if !is_root(&mount_point) {
            return None;
        }
        root = "/".to_owned();
    }
    Some(CgroupMount { mount_point, root, controllers })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
36 31 0:33 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:12 - cgroup cgroup rw,cpu,cpuacct
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime shared:4 master:1 - cgroup2 cgroup2 rw,nsdelegate
";

    #[test]
    fn whole_mount_points_of_a_hybrid_node() {
        let at = |h: &CgroupHierarchy| whole_mount_point(HYBRID, h);
        assert_eq!(at(&CgroupHierarchy::Unified), Some(PathBuf::from("/sys/fs/cgroup/unified")));
        assert_eq!(at(&CgroupHierarchy::v1("cpu")), Some(PathBuf::from("/sys/fs/cgroup/cpu")));
        assert_eq!(at(&CgroupHierarchy::v1("memory")), Some(PathBuf::from("/sys/fs/cgroup/memory")));
        assert_eq!(at(&CgroupHierarchy::v1("blkio")), None);
        let subtree = "41 31 0:38 /kubepods /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        assert_eq!(whole_mount_point(subtree, &CgroupHierarchy::Unified), None, "a sub-tree mount is not the whole");
    }

    /// The resolver's choice: the first mount that serves the hierarchy.
    fn select<'a>(mounts: &'a [CgroupMount], h: &CgroupHierarchy) -> Option<&'a CgroupMount> {
        mounts.iter().find(|m| m.serves(h))
    }

    #[test]
    fn finds_hybrid_layout() {
        let mounts = parse_mountinfo(HYBRID);
        assert_eq!(mounts.len(), 5, "tmpfs is not a cgroup mount");
        let unified = select(&mounts, &CgroupHierarchy::Unified).map(|m| &m.mount_point);
        assert_eq!(unified, Some(&PathBuf::from("/sys/fs/cgroup/unified")));
        let memory = select(&mounts, &CgroupHierarchy::v1("memory")).map(|m| &m.mount_point);
        assert_eq!(memory, Some(&PathBuf::from("/sys/fs/cgroup/memory")));
        let systemd = select(&mounts, &CgroupHierarchy::v1("name=systemd"));
        assert_eq!(systemd.map(|m| &m.mount_point), Some(&PathBuf::from("/sys/fs/cgroup/systemd")));
        // Co-mounted controllers are all listed; the first hierarchy that has one wins.
        let cpu = select(&mounts, &CgroupHierarchy::v1("cpu"));
        assert_eq!(cpu.map(|m| &m.mount_point), Some(&PathBuf::from("/sys/fs/cgroup/cpu")));
        let cpuacct = select(&mounts, &CgroupHierarchy::v1("cpuacct"));
        assert_eq!(cpuacct.map(|m| &m.mount_point), Some(&PathBuf::from("/sys/fs/cgroup/cpu,cpuacct")));
        assert!(select(&mounts, &CgroupHierarchy::v1("rw")).is_none());
        assert!(select(&mounts, &CgroupHierarchy::v1("pids")).is_none());
        assert!(select(&mounts, &CgroupHierarchy::v1("systemd")).is_none());
    }

    #[test]
    fn pure_cgroup2() {
        let mounts = parse_mountinfo(
            "25 30 0:23 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot\n",
        );
        assert_eq!(mounts.len(), 1);
        assert_eq!(mounts[0].controllers, None);
        assert_eq!(mounts[0].root, "/");
        assert!(select(&mounts, &CgroupHierarchy::v1("memory")).is_none());
        assert!(select(&mounts, &CgroupHierarchy::Unified).is_some());
    }

    #[test]
    fn prefers_whole_hierarchy_over_subtree_mount() {
        let mounts = parse_mountinfo(
            "\
50 40 0:23 /kubepods.slice /host/cg rw - cgroup2 cgroup2 rw
51 40 0:23 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw
",
        );
        let chosen = select(&mounts, &CgroupHierarchy::Unified);
        assert_eq!(chosen.map(|m| &m.mount_point), Some(&PathBuf::from("/sys/fs/cgroup")));
        let only_sub = parse_mountinfo("50 40 0:23 /kubepods.slice /host/cg rw - cgroup2 cgroup2 rw\n");
        let chosen = select(&only_sub, &CgroupHierarchy::Unified);
        assert_eq!(chosen.map(|m| m.root.as_str()), Some("/kubepods.slice"));
    }

    #[test]
    fn escaped_mount_point_and_bad_lines() {
        let mounts = parse_mountinfo(
            "\
60 40 0:23 / /mnt/with\\040space\\134x rw - cgroup2 cgroup2 rw
61 40 0:23 /.. /mnt/escape rw - cgroup2 cgroup2 rw
62 40 0:23 / /mnt/short rw - cgroup2
garbage
63 40 0:23 / /mnt/nosep rw cgroup2 cgroup2 rw

",
        );
        assert_eq!(mounts.len(), 1);
        assert_eq!(mounts[0].mount_point, PathBuf::from("/mnt/with space\\x"));
    }

    #[test]
    fn namespaced_root_is_usable_only_for_a_whole_hierarchy() {
        // A pod's private cgroup namespace: the host's hierarchies, bind-mounted, show roots
        // relative to the pod's cgroup.
        let text = "\
101 97 0:32 /../.. /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
107 97 0:38 /../.. /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw
108 97 0:38 /../../kubepods /host/sub rw - cgroup2 cgroup2 rw
";
        let hierarchy_roots = [Path::new("/sys/fs/cgroup/memory"), Path::new("/sys/fs/cgroup/unified")];
        let mounts = parse_mountinfo_with(text, &|p: &Path| hierarchy_roots.contains(&p));
        assert_eq!(mounts.len(), 2, "{mounts:?}");
        assert!(mounts.iter().all(|m| m.root == "/"));
        let memory = select(&mounts, &CgroupHierarchy::v1("memory")).map(|m| &m.mount_point);
        assert_eq!(memory, Some(&PathBuf::from("/sys/fs/cgroup/memory")));
        assert!(parse_mountinfo_with(text, &|_: &Path| false).is_empty());
    }
}
