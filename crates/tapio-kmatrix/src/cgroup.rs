//! Kubernetes-shaped cgroups on the guest's pure cgroup2 hierarchy (the systemd driver's
//! layout: kubepods.slice/…/cri-containerd-<id>.scope), so the scenarios check that the
//! agent names a container the way it would on a real cgroup2 node: path, container id
//! and pod UID, plus the memory controller's limit for the OOM scenario.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const ROOT: &str = "/sys/fs/cgroup";

/// The pod every scenario container belongs to (its UID as the API server would give it).
pub const POD_UID: &str = "6f1c2d3e-4a5b-4c6d-8e7f-9a0b1c2d3e4f";

/// A container scope, removed (with the slices it made) when dropped.
pub struct Scope {
    /// Path from the hierarchy root, as evidence names it.
    pub path: String,
    pub container_id: String,
    dir: PathBuf,
    made: Vec<PathBuf>,
}

impl Scope {
    /// Makes the scope of container `container_id` (64 hex) in pod [`POD_UID`], with the
    /// memory controller enabled down to it and `memory_max` bytes as its limit if given.
    pub fn new(container_id: &str, memory_max: Option<u64>) -> Result<Scope, String> {
        Self::with_cpu(container_id, memory_max, None)
    }

    /// [`Scope::new`], with the cpu controller also enabled down to the scope and `cpu_max`
    /// (cgroup2 `cpu.max`: "<quota> <period>" in microseconds) as its CFS bandwidth, if given.
    pub fn with_cpu(container_id: &str, memory_max: Option<u64>, cpu_max: Option<&str>) -> Result<Scope, String> {
        let controllers = fs::read_to_string(Path::new(ROOT).join("cgroup.controllers"))
            .map_err(|e| format!("{ROOT} is not a cgroup2 root: {e}"))?;
        if !controllers.split_whitespace().any(|c| c == "memory") {
            return Err(format!("cgroup2 at {ROOT} has no memory controller ({})", controllers.trim()));
        }
        let pod = POD_UID.replace('-', "_");
        let segments = [
            "kubepods.slice".to_string(),
            "kubepods-burstable.slice".to_string(),
            format!("kubepods-burstable-pod{pod}.slice"),
            format!("cri-containerd-{container_id}.scope"),
        ];
        let mut scope = Scope {
            path: format!("/{}", segments.join("/")),
            container_id: container_id.to_string(),
            dir: PathBuf::from(ROOT),
            made: Vec::new(),
        };
        for segment in &segments {
            // Children get the memory controller only if their parent hands it down.
            write(&scope.dir.join("cgroup.subtree_control"), "+memory")?;
            if cpu_max.is_some() {
                write(&scope.dir.join("cgroup.subtree_control"), "+cpu")?;
            }
            scope.dir.push(segment);
            if !scope.dir.exists() {
                fs::create_dir(&scope.dir).map_err(|e| format!("mkdir {}: {e}", scope.dir.display()))?;
                scope.made.push(scope.dir.clone());
            }
        }
        if let Some(max) = cpu_max {
            write(&scope.dir.join("cpu.max"), max)?;
        }
        if let Some(max) = memory_max {
            write(&scope.dir.join("memory.max"), &max.to_string())?;
            // No swap in the guest, but a kernel with swap accounting must not page out
            // instead of killing.
            let swap = scope.dir.join("memory.swap.max");
            if swap.exists() {
                write(&swap, "0")?;
            }
        }
        Ok(scope)
    }

    pub fn procs(&self) -> PathBuf {
        self.dir.join("cgroup.procs")
    }

    /// The scope's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Scope {
    /// Removes the scope and the slices it made, as a runtime does the moment the
    /// container's last process is reaped. Retries only while the kernel still finishes
    /// the exit (a killed member leaves its cgroup shortly after it is reaped).
    pub fn remove(&mut self) -> Result<(), String> {
        while let Some(dir) = self.made.pop() {
            let mut removed = false;
            for _ in 0..1000 {
                if fs::remove_dir(&dir).is_ok() {
                    removed = true;
                    break;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            if !removed {
                return Err(format!("could not remove {}", dir.display()));
            }
        }
        Ok(())
    }
}

impl Drop for Scope {
    fn drop(&mut self) {
        if let Err(e) = self.remove() {
            eprintln!("tapio-kmatrix: {e}");
        }
    }
}

fn write(path: &Path, value: &str) -> Result<(), String> {
    fs::write(path, value).map_err(|e| format!("write {value} to {}: {e}", path.display()))
}
