//! Node-local workload identity for Tapio evidence.
//!
//! Turns the cgroup id an eBPF program reports into the evidence record's `workload`:
//! the cgroup path (relative to its hierarchy root), and the container id and pod UID that
//! the path encodes. Only the node's own facts are used: no Kubernetes API, no network.
//! What cannot be known (the cgroup is gone, the path is not a known layout) is `None`,
//! never a guess.
//!
//! ```no_run
//! use tapio_identity::{CgroupHierarchy, Config, Resolver};
//! let mut resolver = Resolver::new(Config::default())?;
//! let workload = resolver.workload(&CgroupHierarchy::Unified, 4242);
//! # Ok::<(), std::io::Error>(())
//! ```

mod cache;
mod handle;
mod learned;
mod mounts;
mod parse;
mod resolver;
#[cfg(test)]
mod testdir;
mod walk;

pub use learned::{LearnedStats, Learner};
pub use mounts::{whole_mount_point, CgroupHierarchy};
pub use parse::{parse_cgroup_path, PathIdentity};
pub use resolver::{AccessMode, Config, Resolver, Stats};

use serde::Serialize;

/// The `workload` field of an evidence record. All four keys are always serialized;
/// unknown values are `null`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Workload {
    pub cgroup_id: u64,
    /// Path from the hierarchy root, e.g. `/kubepods.slice/...`; `None` if the cgroup no
    /// longer exists or could not be looked up.
    pub cgroup_path: Option<String>,
    pub container_id: Option<String>,
    pub pod_uid: Option<String>,
}

impl Workload {
    /// A workload about which nothing but the id is known.
    pub fn unknown(cgroup_id: u64) -> Self {
        Workload { cgroup_id, cgroup_path: None, container_id: None, pod_uid: None }
    }

    /// The workload of a cgroup whose path is known.
    pub fn from_path(cgroup_id: u64, cgroup_path: String) -> Self {
        let PathIdentity { container_id, pod_uid } = parse_cgroup_path(&cgroup_path);
        Workload { cgroup_id, cgroup_path: Some(cgroup_path), container_id, pod_uid }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serializes_all_four_keys_with_nulls() {
        let json = serde_json::to_value(Workload::unknown(7)).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "cgroup_id": 7,
                "cgroup_path": null,
                "container_id": null,
                "pod_uid": null,
            })
        );
    }

    #[test]
    fn from_path_fills_identity() {
        let cid = "ab".repeat(32);
        let w = Workload::from_path(9, format!("/kubepods/pod11111111-2222-3333-4444-555555555555/{cid}"));
        let json = serde_json::to_value(&w).unwrap();
        assert_eq!(json["cgroup_id"], 9);
        assert_eq!(json["container_id"], cid.as_str());
        assert_eq!(json["pod_uid"], "11111111-2222-3333-4444-555555555555");
        assert_eq!(json["cgroup_path"], format!("/kubepods/pod11111111-2222-3333-4444-555555555555/{cid}").as_str());
    }
}
