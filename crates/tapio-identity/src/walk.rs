//! Fallback cgroup id → directory lookup: a bounded walk of one cgroup mount comparing
//! directory inode numbers (a cgroup's inode number is its id on 64-bit kernels).
//!
//! Used where file handles do not work. Costs one `getdents` pass per directory visited,
//! so it is bounded, and its misses are cached by the caller.

use std::fs;
use std::io;
use std::os::unix::fs::{DirEntryExt, MetadataExt};
use std::path::{Path, PathBuf};

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum WalkOutcome {
    /// Absolute path of the directory whose inode number is the id.
    Found(PathBuf),
    /// The whole tree was visited: no such directory.
    NotFound,
    /// Stopped after visiting the maximum number of directories.
    Truncated,
}

/// Looks for the directory with inode number `id` on device `dev` below `root` (included),
/// reading at most `max_dirs` directories.
pub(crate) fn find_dir(root: &Path, dev: u64, id: u64, max_dirs: usize) -> io::Result<WalkOutcome> {
    let root_meta = fs::symlink_metadata(root)?;
    if root_meta.ino() == id && root_meta.dev() == dev {
        return Ok(WalkOutcome::Found(root.to_path_buf()));
    }
    let mut pending = vec![root.to_path_buf()];
    let mut visited = 0usize;
    while let Some(dir) = pending.pop() {
        if visited >= max_dirs {
            return Ok(WalkOutcome::Truncated);
        }
        visited += 1;
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            // The root must be readable; a sub-cgroup removed meanwhile is just skipped.
            Err(err) if dir.as_path() == root => return Err(err),
            Err(_) => continue,
        };
        for entry in entries.flatten() {
            // d_type from getdents: no stat per entry, and symlinks are never followed.
            if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let path = entry.path();
            // The d_ino match is confirmed with a stat, which also rules out a directory of
            // some other filesystem mounted inside the tree that happens to share the number.
            if entry.ino() == id && fs::symlink_metadata(&path).is_ok_and(|m| m.ino() == id && m.dev() == dev) {
                return Ok(WalkOutcome::Found(path));
            }
            pending.push(path);
        }
    }
    Ok(WalkOutcome::NotFound)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdir::TestDir;

    #[test]
    fn finds_nested_directory_and_root() {
        let t = TestDir::new("walk");
        let deep = t.mkdirs("a/b/c");
        t.mkdirs("x/y");
        std::fs::write(t.path().join("a/file"), b"").unwrap();
        let dev = std::fs::metadata(t.path()).unwrap().dev();
        let ino = std::fs::metadata(&deep).unwrap().ino();
        assert_eq!(find_dir(t.path(), dev, ino, 100).unwrap(), WalkOutcome::Found(deep));
        let root_ino = std::fs::metadata(t.path()).unwrap().ino();
        assert_eq!(find_dir(t.path(), dev, root_ino, 100).unwrap(), WalkOutcome::Found(t.path().to_path_buf()));
    }

    #[test]
    fn files_do_not_match_and_absent_ids_are_not_found() {
        let t = TestDir::new("walk-files");
        t.mkdirs("a/b");
        let file = t.path().join("a/file");
        std::fs::write(&file, b"").unwrap();
        let dev = std::fs::metadata(t.path()).unwrap().dev();
        let file_ino = std::fs::metadata(&file).unwrap().ino();
        assert_eq!(find_dir(t.path(), dev, file_ino, 100).unwrap(), WalkOutcome::NotFound);
        // Wrong device: the right inode number on another filesystem is not a match.
        let b_ino = std::fs::metadata(t.path().join("a/b")).unwrap().ino();
        assert_eq!(find_dir(t.path(), dev.wrapping_add(1), b_ino, 100).unwrap(), WalkOutcome::NotFound);
    }

    #[test]
    fn stops_at_the_bound() {
        let t = TestDir::new("walk-bound");
        let deep = t.mkdirs("1/2/3/4/5");
        let dev = std::fs::metadata(t.path()).unwrap().dev();
        let ino = std::fs::metadata(&deep).unwrap().ino();
        // Reading root, 1, 2, 3 and 4 finds 5; four reads are not enough.
        assert_eq!(find_dir(t.path(), dev, ino, 4).unwrap(), WalkOutcome::Truncated);
        assert_eq!(find_dir(t.path(), dev, ino, 5).unwrap(), WalkOutcome::Found(deep));
    }

    #[test]
    fn missing_root_is_an_error() {
        let t = TestDir::new("walk-missing");
        assert!(find_dir(&t.path().join("nope"), 0, 1, 10).is_err());
    }
}
