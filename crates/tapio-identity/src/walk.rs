//! Fallback cgroup id → directory lookup: a bounded walk of one cgroup mount comparing
//! directory inode numbers (a cgroup's inode number is its id on 64-bit kernels).
//!
//! Used where file handles do not work. Costs one `stat` and one `getdents` pass per
//! directory visited, so it is bounded, and its misses are cached by the caller.

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
    // Each directory with the inode number its parent listed it under (getdents' d_ino).
    let mut pending = vec![(root.to_path_buf(), root_meta.ino())];
    let mut visited = 0usize;
    while let Some((dir, ino)) = pending.pop() {
        if visited >= max_dirs {
            return Ok(WalkOutcome::Truncated);
        }
        // Something mounted on the directory (another filesystem, or a bind mount of this
        // one, as a kind node mounts its cgroup below itself) would list cgroups under a
        // path that is not theirs, or another filesystem's numbers: not read.
        if !fs::symlink_metadata(&dir).is_ok_and(|m| m.ino() == ino && m.dev() == dev) {
            continue;
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
            // Listed by a directory of this filesystem: d_ino is the cgroup's id (even if
            // something is mounted on it now).
            if entry.ino() == id {
                return Ok(WalkOutcome::Found(entry.path()));
            }
            pending.push((entry.path(), entry.ino()));
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

    /// A bind mount of the tree below itself (a kind node's cgroup loop) is not walked into:
    /// the directory would be found there too, under a path that is not its own. Each pair
    /// of names is tried both ways round, so whatever order the filesystem lists a
    /// directory in, the mount is read first in some of them.
    #[test]
    #[ignore = "needs root"]
    fn a_bind_mount_of_the_tree_is_not_walked_into() {
        use std::ffi::CString;
        use std::os::unix::ffi::OsStrExt;
        // SAFETY: plain syscalls with valid arguments; the new mount namespace is this
        // thread's only, so the bind mounts are seen by nothing else and die with it.
        unsafe {
            assert_eq!(libc::unshare(libc::CLONE_NEWNS), 0, "needs root: {}", io::Error::last_os_error());
            let private = libc::MS_REC | libc::MS_PRIVATE;
            assert_eq!(libc::mount(std::ptr::null(), c"/".as_ptr(), std::ptr::null(), private, std::ptr::null()), 0);
        }
        struct Unmount(CString);
        impl Drop for Unmount {
            fn drop(&mut self) {
                // SAFETY: a valid NUL-terminated path.
                unsafe { libc::umount2(self.0.as_ptr(), libc::MNT_DETACH) };
            }
        }
        let names = ["a", "b", "m", "z"];
        for (tree, mount) in names.iter().flat_map(|x| names.iter().map(move |y| (x, y))).filter(|(x, y)| x != y) {
            let t = TestDir::new("walk-bind");
            let deep = t.mkdirs(&format!("{tree}/pod/ctr"));
            let source = CString::new(t.path().as_os_str().as_bytes()).unwrap();
            let target = CString::new(t.mkdirs(mount).as_os_str().as_bytes()).unwrap();
            // SAFETY: valid NUL-terminated paths; a bind mount takes no type or data.
            let bound = unsafe {
                libc::mount(source.as_ptr(), target.as_ptr(), std::ptr::null(), libc::MS_BIND, std::ptr::null())
            };
            assert_eq!(bound, 0, "bind mount: {}", io::Error::last_os_error());
            let _unmount = Unmount(target);
            let dev = std::fs::metadata(t.path()).unwrap().dev();
            let ino = std::fs::metadata(&deep).unwrap().ino();
            assert_eq!(find_dir(t.path(), dev, ino, 100).unwrap(), WalkOutcome::Found(deep), "{tree} {mount}");
        }
    }

    #[test]
    fn missing_root_is_an_error() {
        let t = TestDir::new("walk-missing");
        assert!(find_dir(&t.path().join("nope"), 0, 1, 10).is_err());
    }
}
