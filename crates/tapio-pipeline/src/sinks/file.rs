//! JSON lines to a file, rotated by size: `path` → `path.1` → … → `path.N`, the oldest
//! deleted, so disk use is bounded by about (N + 1) × max_bytes ([`tapio_util::rotate`]).
//! Unlike the controller's all-or-nothing appends, lines are buffered and written in
//! batches, and a write that fails part way keeps (and counts written) the whole lines
//! that reached the file. What is written leaves the page cache once it is on disk
//! ([`DropBehind`]).

use super::lines::Lines;
use super::{Delivered, Sink};
use crate::knobs::FileSinkConfig;
use std::fs::{File, OpenOptions};
use std::io;
use std::path::PathBuf;
use tapio_util::rotate::DropBehind;

pub struct FileSink {
    path: PathBuf,
    max_bytes: u64,
    keep_files: u32,
    file: File,
    /// Bytes in the live file: whole lines only (a torn tail is cut off again).
    size: u64,
    lines: Lines,
    delivered: Delivered,
    failing: bool,
    drop_behind: DropBehind,
}

fn open_append(path: &PathBuf) -> io::Result<(File, u64)> {
    let file = OpenOptions::new().create(true).append(true).open(path)?;
    let size = file.metadata()?.len();
    Ok((file, size))
}

/// Logs a sink's change between working and failing (not every failed write: a full disk
/// would otherwise log once per batch). Returns whether the sink is failing now.
pub(super) fn log_transition(sink: &str, failing: bool, error: Option<&io::Error>, failed: u64) -> bool {
    match (failing, error) {
        (false, Some(e)) => {
            log::warn!("sink {sink}: write failed ({e}): {failed} lines lost (counted); later failures are counted, not logged");
            true
        }
        (true, None) => {
            log::info!("sink {sink}: writing again");
            false
        }
        (state, _) => state,
    }
}

impl FileSink {
    pub fn open(config: &FileSinkConfig) -> io::Result<Self> {
        let (file, size) = open_append(&config.path)?;
        Ok(Self {
            path: config.path.clone(),
            max_bytes: config.max_bytes,
            keep_files: config.keep_files,
            file,
            size,
            lines: Lines::default(),
            delivered: Delivered::default(),
            failing: false,
            drop_behind: DropBehind::starting_at(size),
        })
    }

    fn rotate(&mut self) -> io::Result<()> {
        // The workspace's one rotation (tapio_util::rotate): names and order are the ones
        // the controller's file sink writes and `tapio events` reads.
        tapio_util::rotate::shift(&self.path, self.keep_files as usize)?;
        let (file, size) = open_append(&self.path)?;
        self.file = file;
        self.size = size;
        self.drop_behind.restart_at(size);
        Ok(())
    }
}

impl Sink for FileSink {
    fn name(&self) -> &'static str {
        "file"
    }

    fn write_line(&mut self, line: &[u8]) {
        let after = self.size + self.lines.bytes() as u64 + line.len() as u64;
        if after > self.max_bytes && self.size + self.lines.bytes() as u64 > 0 {
            self.write_out();
            if self.size > 0 {
                if let Err(e) = self.rotate() {
                    // The size bound holds: the line is refused (counted), not appended.
                    log::warn!("sink file: rotating {}: {e}", self.path.display());
                    self.delivered.failed += 1;
                    return;
                }
            }
        }
        self.lines.push(line);
    }

    fn buffered_bytes(&self) -> usize {
        self.lines.bytes()
    }

    fn flush(&mut self, _may_wait: &dyn Fn() -> bool, report: &mut dyn FnMut(Delivered)) {
        self.write_out();
        report(std::mem::take(&mut self.delivered));
    }
}

impl FileSink {
    /// Writes the buffered lines to the file; their outcomes wait in `delivered`.
    fn write_out(&mut self) {
        if self.lines.lines() == 0 {
            return;
        }
        let w = self.lines.write_to(&mut self.file, None, &mut |_| {});
        self.size += w.complete_bytes as u64;
        if w.torn_bytes > 0 {
            // A torn line would be a malformed record for every reader: cut it off (the
            // file is opened for append, so the next write lands right after the last
            // whole line).
            if let Err(e) = self.file.set_len(self.size) {
                log::warn!("sink file: removing a partly written line from {}: {e}", self.path.display());
                self.size += w.torn_bytes as u64;
            }
        }
        self.drop_behind.advance(&self.file, self.size);
        self.delivered.add(w.delivered);
        self.failing = log_transition("file", self.failing, w.error.as_ref(), w.delivered.failed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn flush(sink: &mut FileSink) -> Delivered {
        let mut total = Delivered::default();
        sink.flush(&|| true, &mut |d| total.add(d));
        total
    }

    fn temp_dir(name: &str) -> PathBuf {
        tapio_util::test_dirs::scratch(&format!("file-sink-{name}"))
    }

    #[test]
    fn rotates_by_size_and_keeps_a_bounded_number_of_files() {
        let dir = temp_dir("rotate");
        let path = dir.join("evidence.jsonl");
        let mut sink = FileSink::open(&FileSinkConfig { path: path.clone(), max_bytes: 100, keep_files: 2 }).unwrap();
        let line = [b'x'; 39].iter().copied().chain([b'\n']).collect::<Vec<u8>>(); // 40 bytes
        for _ in 0..10 {
            sink.write_line(&line);
        }
        assert_eq!(flush(&mut sink), Delivered { written: 10, failed: 0 });
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
        sink.write_line(b"{}\n");
        sink.write_line(b"{}\n"); // 9 > 6: rotates first
        flush(&mut sink);
        assert_eq!(fs::read(&path).unwrap(), b"{}\n");
        assert_eq!(fs::read(dir.join("e.jsonl.1")).unwrap(), b"{}\n{}\n");
        fs::remove_dir_all(&dir).unwrap();
    }

    /// Unmounts the test's tmpfs on drop, also when the test fails.
    struct Tmpfs(PathBuf);

    impl Tmpfs {
        fn mount(dir: PathBuf, size: &str) -> Tmpfs {
            fs::create_dir_all(&dir).unwrap();
            let status = std::process::Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tapio-i14l-sink"])
                .arg(&dir)
                .status()
                .unwrap();
            assert!(status.success(), "mounting a tmpfs at {} (needs root)", dir.display());
            Tmpfs(dir)
        }
    }

    impl Drop for Tmpfs {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
            let _ = fs::remove_dir(&self.0);
        }
    }

    fn whole_lines(path: &std::path::Path, line: &[u8]) -> u64 {
        let bytes = fs::read(path).unwrap();
        assert!(bytes.len().is_multiple_of(line.len()), "a torn line is left in the file ({} bytes)", bytes.len());
        assert!(bytes.chunks(line.len()).all(|l| l == line), "the file holds something other than whole lines");
        (bytes.len() / line.len()) as u64
    }

    /// A file sink on a 1 MiB tmpfs: until it is full every line arrives; then each line
    /// that did not reach the file is counted failed, exactly, and none is torn; once space
    /// is freed writing resumes.
    #[test]
    #[ignore = "needs root"]
    fn a_full_disk_counts_every_lost_line_and_writing_resumes_when_space_is_freed() {
        // SAFETY: geteuid has no memory effects.
        assert_eq!(unsafe { libc::geteuid() }, 0, "needs root to mount a tmpfs");
        let fs_dir = Tmpfs::mount(temp_dir("i14l-tmpfs"), "1m");
        let filler = fs_dir.0.join("filler");
        fs::write(&filler, vec![0u8; 256 * 1024]).unwrap();
        let path = fs_dir.0.join("evidence.jsonl");
        let mut sink =
            FileSink::open(&FileSinkConfig { path: path.clone(), max_bytes: 1 << 30, keep_files: 1 }).unwrap();
        let mut line = vec![b'x'; 999];
        line.push(b'\n'); // 1000 bytes: lines and 4 KiB pages do not align, so writes tear
        let mut total = Delivered::default();
        for _ in 0..150 {
            for _ in 0..10 {
                sink.write_line(&line);
            }
            total.add(flush(&mut sink));
        }
        assert_eq!(total.written + total.failed, 1500, "every line has an outcome");
        assert!(total.failed > 0 && total.written > 500, "the disk filled part way: {total:?}");
        assert_eq!(whole_lines(&path, &line), total.written, "written means in the file: {total:?}");

        fs::remove_file(&filler).unwrap();
        for _ in 0..100 {
            sink.write_line(&line);
        }
        assert_eq!(flush(&mut sink), Delivered { written: 100, failed: 0 }, "writing resumes");
        assert_eq!(whole_lines(&path, &line), total.written + 100);
    }
}
