//! A JSON-lines file with size-based rotation and a bounded number of kept files.
//!
//! When the next line would push the active file past `max_bytes`, files shift
//! (`path.N-1` → `path.N`, …, `path` → `path.1`) and a fresh `path` is opened; the shift
//! overwrites the oldest, so at most `keep_files` rotated files exist. Rotation happens
//! between lines, so every file holds whole records.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

/// The rotating file.
#[derive(Debug)]
pub struct RotatingFile {
    path: PathBuf,
    max_bytes: u64,
    keep_files: usize,
    file: Option<BufWriter<File>>,
    size: u64,
}

impl RotatingFile {
    /// Opens (appending to) `path`.
    pub fn open(path: PathBuf, max_bytes: u64, keep_files: usize) -> io::Result<Self> {
        let mut me = Self { path, max_bytes, keep_files, file: None, size: 0 };
        me.reopen()?;
        Ok(me)
    }

    fn reopen(&mut self) -> io::Result<()> {
        let file = OpenOptions::new().create(true).append(true).open(&self.path)?;
        self.size = file.metadata()?.len();
        self.file = Some(BufWriter::with_capacity(64 * 1024, file));
        Ok(())
    }

    fn rotated(path: &Path, n: usize) -> PathBuf {
        let mut name = path.as_os_str().to_owned();
        name.push(format!(".{n}"));
        PathBuf::from(name)
    }

    fn rotate(&mut self) -> io::Result<()> {
        if let Some(mut f) = self.file.take() {
            f.flush()?;
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

    /// Writes whole lines, rotating between them as needed.
    pub fn write_lines(&mut self, buf: &[u8]) -> io::Result<()> {
        for line in buf.split_inclusive(|b| *b == b'\n') {
            let len = line.len() as u64;
            if self.size > 0 && self.size + len > self.max_bytes {
                self.rotate()?;
            }
            if self.file.is_none() {
                // A previous failure closed the file: try again rather than give up forever.
                self.reopen()?;
            }
            let file = self.file.as_mut().ok_or_else(|| io::Error::other("sink file closed"))?;
            if let Err(e) = file.write_all(line) {
                self.file = None;
                return Err(e);
            }
            self.size += len;
        }
        Ok(())
    }

    /// Flushes buffered lines to the file.
    pub fn flush(&mut self) -> io::Result<()> {
        match self.file.as_mut() {
            Some(f) => f.flush(),
            None => Ok(()),
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
            f.write_lines(line.as_bytes()).unwrap();
        }
        f.flush().unwrap();
        let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).ok();
        assert_eq!(size(&path), Some(40));
        assert_eq!(size(&RotatingFile::rotated(&path, 1)), Some(80));
        assert_eq!(size(&RotatingFile::rotated(&path, 2)), Some(80));
        assert_eq!(size(&RotatingFile::rotated(&path, 3)), None, "only 2 kept");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn splits_a_buffer_between_lines() {
        let dir = temp_dir("split");
        let path = dir.join("e.jsonl");
        let mut f = RotatingFile::open(path.clone(), 10, 1).unwrap();
        f.write_lines(b"aaaa\nbbbb\ncccc\n").unwrap();
        f.flush().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"cccc\n");
        assert_eq!(std::fs::read(RotatingFile::rotated(&path, 1)).unwrap(), b"aaaa\nbbbb\n");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn keep_zero_discards_old_data() {
        let dir = temp_dir("zero");
        let path = dir.join("e.jsonl");
        let mut f = RotatingFile::open(path.clone(), 10, 0).unwrap();
        f.write_lines(b"aaaaaaaa\nbbbbbbbb\n").unwrap();
        f.flush().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"bbbbbbbb\n");
        assert!(!RotatingFile::rotated(&path, 1).exists());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
