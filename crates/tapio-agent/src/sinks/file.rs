//! JSON lines to a file, rotated by size: `path` → `path.1` → … → `path.N`, the oldest
//! deleted, so disk use is bounded by about (N + 1) × max_bytes.

use super::Sink;
use crate::config::FileSinkConfig;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::PathBuf;

pub struct FileSink {
    path: PathBuf,
    max_bytes: u64,
    keep_files: u32,
    out: BufWriter<File>,
    size: u64,
}

fn open_append(path: &PathBuf) -> io::Result<(BufWriter<File>, u64)> {
    let file = OpenOptions::new().create(true).append(true).open(path)?;
    let size = file.metadata()?.len();
    Ok((BufWriter::with_capacity(64 * 1024, file), size))
}

impl FileSink {
    pub fn open(config: &FileSinkConfig) -> io::Result<Self> {
        let (out, size) = open_append(&config.path)?;
        Ok(Self { path: config.path.clone(), max_bytes: config.max_bytes, keep_files: config.keep_files, out, size })
    }

    fn rotated(&self, n: u32) -> PathBuf {
        let mut p = self.path.clone().into_os_string();
        p.push(format!(".{n}"));
        PathBuf::from(p)
    }

    fn rotate(&mut self) -> io::Result<()> {
        self.out.flush()?;
        // Shift path.(N-1) → path.N … path → path.1; renaming over path.N deletes the oldest.
        for n in (1..self.keep_files).rev() {
            let from = self.rotated(n);
            if from.exists() {
                fs::rename(&from, self.rotated(n + 1))?;
            }
        }
        fs::rename(&self.path, self.rotated(1))?;
        let (out, size) = open_append(&self.path)?;
        self.out = out;
        self.size = size;
        Ok(())
    }
}

impl Sink for FileSink {
    fn name(&self) -> &'static str {
        "file"
    }

    fn write_line(&mut self, line: &[u8]) -> io::Result<()> {
        if self.size > 0 && self.size + line.len() as u64 > self.max_bytes {
            self.rotate()?;
        }
        self.out.write_all(line)?;
        self.size += line.len() as u64;
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("tapio-file-sink-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn rotates_by_size_and_keeps_a_bounded_number_of_files() {
        let dir = temp_dir("rotate");
        let path = dir.join("evidence.jsonl");
        let mut sink = FileSink::open(&FileSinkConfig { path: path.clone(), max_bytes: 100, keep_files: 2 }).unwrap();
        let line = [b'x'; 39].iter().copied().chain([b'\n']).collect::<Vec<u8>>(); // 40 bytes
        for _ in 0..10 {
            sink.write_line(&line).unwrap();
        }
        sink.flush().unwrap();
        // 10 lines of 40 bytes, at most 2 per 100-byte file: the live file plus .1 and .2.
        let mut names: Vec<String> =
            fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        names.sort();
        assert_eq!(names, ["evidence.jsonl", "evidence.jsonl.1", "evidence.jsonl.2"]);
        for name in &names {
            let len = fs::metadata(dir.join(name)).unwrap().len();
            assert!(len <= 100 && len.is_multiple_of(40), "{name} has {len} bytes");
        }
        assert_eq!(fs::read(&path).unwrap().len(), 80);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn appends_to_an_existing_file_and_counts_its_size() {
        let dir = temp_dir("append");
        let path = dir.join("e.jsonl");
        fs::write(&path, b"{}\n").unwrap();
        let mut sink = FileSink::open(&FileSinkConfig { path: path.clone(), max_bytes: 6, keep_files: 1 }).unwrap();
        sink.write_line(b"{}\n").unwrap();
        sink.write_line(b"{}\n").unwrap(); // 9 > 6: rotates first
        sink.flush().unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"{}\n");
        assert_eq!(fs::read(dir.join("e.jsonl.1")).unwrap(), b"{}\n{}\n");
        fs::remove_dir_all(&dir).unwrap();
    }
}
