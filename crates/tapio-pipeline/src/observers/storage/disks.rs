//! Disk names for major:minor numbers, from /sys/dev/block/M:m/uevent (DEVNAME=…).
//!
//! Cached because evidence about one disk tends to come in bursts, bounded because device
//! numbers are unbounded in principle, and expiring because a number can be reused by
//! another disk (a loop device detached and attached again, a hot-swapped drive).

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The uevent file is a few lines; anything longer is not what we expect.
const MAX_UEVENT_BYTES: usize = 4096;

pub struct DiskNames {
    root: PathBuf,
    capacity: usize,
    ttl: Duration,
    cache: HashMap<(u32, u32), (Option<String>, Instant)>,
}

impl DiskNames {
    pub fn new(root: PathBuf, capacity: usize, ttl: Duration) -> Self {
        Self { root, capacity: capacity.max(1), ttl, cache: HashMap::new() }
    }

    /// The system's /sys/dev/block.
    pub fn system() -> Self {
        Self::new(PathBuf::from("/sys/dev/block"), 256, Duration::from_secs(60))
    }

    /// The name of disk `major:minor`, or None if the kernel does not list it (gone).
    pub fn name(&mut self, major: u32, minor: u32) -> Option<String> {
        let now = Instant::now();
        if let Some((name, at)) = self.cache.get(&(major, minor)) {
            if now.duration_since(*at) < self.ttl {
                return name.clone();
            }
        }
        let name = self.read(major, minor);
        if self.cache.len() >= self.capacity && !self.cache.contains_key(&(major, minor)) {
            // Simplest bound that stays correct: start over (names are re-read on demand).
            self.cache.clear();
        }
        self.cache.insert((major, minor), (name.clone(), now));
        name
    }

    fn read(&self, major: u32, minor: u32) -> Option<String> {
        let text = std::fs::read(self.root.join(format!("{major}:{minor}")).join("uevent")).ok()?;
        if text.len() > MAX_UEVENT_BYTES {
            return None;
        }
        parse_devname(&String::from_utf8_lossy(&text))
    }

    #[cfg(test)]
    fn cached(&self) -> usize {
        self.cache.len()
    }
}

/// DEVNAME from a uevent file's KEY=value lines.
pub fn parse_devname(uevent: &str) -> Option<String> {
    uevent
        .lines()
        .find_map(|l| l.strip_prefix("DEVNAME="))
        .map(str::trim)
        .filter(|n| !n.is_empty() && n.len() <= 64 && !n.contains('/'))
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devname_is_read_from_uevent_lines() {
        assert_eq!(parse_devname("MAJOR=7\nMINOR=3\nDEVNAME=loop3\nDEVTYPE=disk\n"), Some("loop3".into()));
        assert_eq!(parse_devname("MAJOR=7\n"), None);
        assert_eq!(parse_devname("DEVNAME=\n"), None);
        assert_eq!(parse_devname("DEVNAME=../../etc\n"), None);
    }

    #[test]
    fn names_are_cached_bounded_and_expire() {
        let dir = std::env::temp_dir().join(format!("tapio-disks-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for (m, name) in [(1, "vda"), (2, "vdb"), (3, "vdc")] {
            let d = dir.join(format!("254:{m}"));
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("uevent"), format!("MAJOR=254\nMINOR={m}\nDEVNAME={name}\n")).unwrap();
        }
        let mut names = DiskNames::new(dir.clone(), 2, Duration::from_secs(3600));
        assert_eq!(names.name(254, 1).as_deref(), Some("vda"));
        // Cached: renaming on disk does not show until the entry expires.
        std::fs::write(dir.join("254:1/uevent"), "DEVNAME=other\n").unwrap();
        assert_eq!(names.name(254, 1).as_deref(), Some("vda"));
        assert_eq!(names.name(254, 2).as_deref(), Some("vdb"));
        assert_eq!(names.name(254, 3).as_deref(), Some("vdc"));
        assert!(names.cached() <= 2, "the cache is bounded");
        assert_eq!(names.name(254, 9), None, "a disk the kernel does not list has no name");

        let mut fresh = DiskNames::new(dir.clone(), 8, Duration::ZERO);
        assert_eq!(fresh.name(254, 1).as_deref(), Some("other"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
