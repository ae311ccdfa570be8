//! A JSON-lines file with size-based rotation, a bounded number of kept files, and
//! all-or-nothing appends.
//!
//! Each [`RotatingFile::append`] writes whole records straight to the file descriptor (no
//! user-space buffer that could hold records already counted). If the write fails part
//! way (a full disk), the file is cut back to its length before the append, so it never
//! ends in a fragment and never holds a record that was reported as not written.
//!
//! When an append would push the active file past `max_bytes`, files shift (`path.N-1` →
//! `path.N`, …, `path` → `path.1`) and a fresh `path` is opened; the shift overwrites the
//! oldest, so at most `keep_files` rotated files exist. Rotation happens between appends
//! (one group of batches), so every file holds whole records and a file may exceed
//! `max_bytes` by at most one append.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// The rotating file.
#[derive(Debug)]
pub struct RotatingFile {
    path: PathBuf,
    max_bytes: u64,
    keep_files: usize,
    file: Option<File>,
    size: u64,
}

impl RotatingFile {
    /// Opens (appending to) `path`.
    pub fn open(path: PathBuf, max_bytes: u64, keep_files: usize) -> io::Result<Self> {
        let mut me = Self { path, max_bytes, keep_files, file: None, size: 0 };
        me.reopen()?;
        Ok(me)
    }

    /// The active file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn reopen(&mut self) -> io::Result<()> {
        let file = OpenOptions::new().create(true).append(true).open(&self.path)?;
        self.size = file.metadata()?.len();
        self.file = Some(file);
        sync_parent(&self.path);
        Ok(())
    }

    /// `path.N`.
    pub fn rotated(path: &Path, n: usize) -> PathBuf {
        let mut name = path.as_os_str().to_owned();
        name.push(format!(".{n}"));
        PathBuf::from(name)
    }

    fn rotate(&mut self) -> io::Result<()> {
        if let Some(f) = self.file.take() {
            // The old file's records were acknowledged under the fsync policy; make the
            // renamed file complete on disk before the name moves.
            f.sync_data()?;
        }
        if self.keep_files == 0 {
            std::fs::remove_file(&self.path).or_else(ignore_missing)?;
        } else {
            for n in (1..self.keep_files).rev() {
                let from = Self::rotated(&self.path, n);
                std::fs::rename(&from, Self::rotated(&self.path, n + 1)).or_else(ignore_missing)?;
            }
            std::fs::rename(&self.path, Self::rotated(&self.path, 1)).or_else(ignore_missing)?;
        }
        self.reopen()
    }

    /// Appends `buf` (whole lines) entirely or not at all.
    pub fn append(&mut self, buf: &[u8]) -> io::Result<()> {
        let len = buf.len() as u64;
        if self.size > 0 && self.size + len > self.max_bytes {
            self.rotate()?;
        }
        if self.file.is_none() {
            // A previous failure closed the file: try again rather than give up forever.
            // A fragment it may have left is set aside first.
            super::file::repair_torn_tail(&self.path)?;
            self.reopen()?;
        }
        let file = self.file.as_mut().ok_or_else(|| io::Error::other("sink file closed"))?;
        if let Err(e) = file.write_all(buf) {
            // Cut the partial append away so the file ends on a whole record. If even
            // that fails, close: the next append repairs the tail before writing.
            if file.set_len(self.size).is_err() {
                self.file = None;
            }
            return Err(e);
        }
        self.size += len;
        Ok(())
    }

    /// Makes appended data durable (fdatasync).
    pub fn sync(&mut self) -> io::Result<()> {
        match self.file.as_mut() {
            Some(f) => f.sync_data(),
            None => Ok(()),
        }
    }
}

/// Makes a created or renamed directory entry durable; best effort (some filesystems
/// refuse fsync on directories, and the data itself is synced separately).
fn sync_parent(path: &Path) {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
}

fn ignore_missing(e: io::Error) -> io::Result<()> {
    if e.kind() == io::ErrorKind::NotFound {
        Ok(())
    } else {
        Err(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(tag: &str) -> PathBuf {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        let dir = std::env::temp_dir().join(format!("tapio-rotate-{tag}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn rotates_by_size_and_keeps_a_bounded_number() {
        let dir = temp_dir("keep");
        let path = dir.join("events.jsonl");
        let mut f = RotatingFile::open(path.clone(), 100, 2).unwrap();
        let line = format!("{}\n", "x".repeat(39)); // 40 bytes: two lines per file
        for _ in 0..9 {
            f.append(line.as_bytes()).unwrap();
        }
        let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).ok();
        assert_eq!(size(&path), Some(40));
        assert_eq!(size(&RotatingFile::rotated(&path, 1)), Some(80));
        assert_eq!(size(&RotatingFile::rotated(&path, 2)), Some(80));
        assert_eq!(size(&RotatingFile::rotated(&path, 3)), None, "only 2 kept");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn an_append_is_never_split_across_files() {
        let dir = temp_dir("split");
        let path = dir.join("e.jsonl");
        let mut f = RotatingFile::open(path.clone(), 10, 1).unwrap();
        f.append(b"aaaa\nbbbb\n").unwrap();
        f.append(b"cccc\n").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"cccc\n");
        assert_eq!(std::fs::read(RotatingFile::rotated(&path, 1)).unwrap(), b"aaaa\nbbbb\n");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn keep_zero_discards_old_data() {
        let dir = temp_dir("zero");
        let path = dir.join("e.jsonl");
        let mut f = RotatingFile::open(path.clone(), 10, 0).unwrap();
        f.append(b"aaaaaaaa\n").unwrap();
        f.append(b"bbbbbbbb\n").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"bbbbbbbb\n");
        assert!(!RotatingFile::rotated(&path, 1).exists());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
