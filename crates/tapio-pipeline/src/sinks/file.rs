//! JSON lines to a file, rotated by size: `path` → `path.1` → … → `path.N`, the oldest
//! deleted, so disk use is bounded by about (N + 1) × max_bytes ([`tapio_util::rotate`]).
//! Unlike the controller's all-or-nothing appends, lines are buffered and written in
//! batches, and a write that fails part way keeps (and counts written) the whole lines
//! that reached the file. What is written leaves the page cache once it is on disk
//! ([`DropBehind`]). A file that does not end in a newline (a write torn by a crash, or a
//! torn line whose first cut failed) has that fragment cut off (logged) before the next line
//! is written, so no line joins it. Files the sink creates (the first, and each after a
//! rotation) are 0640 whatever the umask allows beyond that: evidence names pods, processes
//! and addresses. A file that already exists keeps the mode it has. A file deleted under
//! the sink is created again before the next write, and a truncated one followed to its
//! new length ([`FileSink::follow_file`]).

use super::lines::Lines;
use super::{Delivered, Sink};
use crate::knobs::FileSinkConfig;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use tapio_util::rotate::{file_change, whole_lines_len, DropBehind, FileChange, EVIDENCE_FILE_MODE};

pub struct FileSink {
    path: PathBuf,
    max_bytes: u64,
    keep_files: u32,
    file: File,
    /// Bytes in the live file: whole lines only (a torn tail is cut off).
    size: u64,
    lines: Lines,
    delivered: Delivered,
    failing: bool,
    drop_behind: DropBehind,
    /// `file` must not be written: it may end in a fragment a failed cut left, or it was
    /// rotated away and no fresh file opened. `path` is opened again first ([`Self::reopen`]).
    stale: bool,
    /// A rotation failed since the last flush: lines that need one are refused (counted)
    /// until the next flush retries it. A rename that keeps failing would otherwise cost a
    /// rename per kept file, and a log line, per line.
    rotation_failed: bool,
}

/// Opens `path` for appending. A fragment at its end (a write torn by a crash, or a torn
/// line whose cut failed) would join the next line into one malformed line: it is cut off
/// and logged. The controller's sink sets fragments aside (`repair_torn_tail`); linked here
/// that costs the agent over 1 KB more of its size budget, for bytes of one lost record.
fn open_append(path: &PathBuf) -> io::Result<(File, u64)> {
    let file = OpenOptions::new().create(true).read(true).append(true).mode(EVIDENCE_FILE_MODE).open(path)?;
    let len = file.metadata()?.len();
    let size = whole_lines_len(&file, len)?;
    if size < len {
        file.set_len(size)?;
        log::warn!("sink file: cut off a partial line ({} bytes) at the end of {}", len - size, path.display());
    }
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
            stale: false,
            rotation_failed: false,
        })
    }

    fn rotate(&mut self) -> io::Result<()> {
        if self.stale {
            // Cut a fragment off before its file is rotated out of the sink's reach.
            self.reopen()?;
        }
        // The workspace's one rotation (tapio_util::rotate): names and order are the ones
        // the controller's file sink writes and `tapio events` reads.
        tapio_util::rotate::shift(&self.path, self.keep_files as usize)?;
        // `path` is gone. Until a fresh one opens the live file is empty: lines wait for
        // the open (retried before the next write), not for another shift, which would
        // delete one more kept file each time.
        self.stale = true;
        self.size = 0;
        self.reopen()
    }

    /// Takes in what others did to the file since the last write.
    fn follow_file(&mut self) {
        // A stale file is opened again before anything is written to it.
        if self.stale {
            return;
        }
        match file_change(&self.file, self.size) {
            FileChange::Deleted => {
                // Lines written to it would be counted written and read by nobody. They go
                // to a fresh `path`, or fail, counted, until one opens.
                log::warn!("sink file: {} was deleted; creating it again", self.path.display());
                self.stale = true;
                self.size = 0;
            }
            FileChange::Truncated(size) => {
                // The old size would rotate a near-empty file out, and cutting a torn line
                // back to it would fill the file up to it with zeros.
                self.size = size;
                self.drop_behind.restart_at(size);
            }
            FileChange::Unchanged => {}
        }
    }

    fn reopen(&mut self) -> io::Result<()> {
        let (file, size) = open_append(&self.path)?;
        self.file = file;
        self.size = size;
        self.drop_behind.restart_at(size);
        self.stale = false;
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
            if self.rotation_failed {
                self.delivered.failed += 1;
                return;
            }
            self.write_out();
            if self.size > 0 {
                if let Err(e) = self.rotate() {
                    // The size bound holds: the line is refused (counted), not appended.
                    if !self.failing {
                        log::warn!(
                            "sink file: rotating {}: {e}; lines are refused (counted) until it works",
                            self.path.display()
                        );
                    }
                    self.failing = true;
                    self.rotation_failed = true;
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
        self.rotation_failed = false;
        report(std::mem::take(&mut self.delivered));
    }
}

impl FileSink {
    /// Writes the buffered lines to the file; their outcomes wait in `delivered`.
    fn write_out(&mut self) {
        // Also with no lines: a rotation follows this, and must see the file as it is.
        self.follow_file();
        if self.lines.lines() == 0 {
            return;
        }
        let w = match self.stale.then(|| self.reopen()) {
            // No file a line could be written to without joining a fragment: every line fails.
            Some(Err(e)) => self.lines.fail_all(e),
            _ => self.lines.write_to(&mut self.file, None, &mut |_| {}),
        };
        self.size += w.complete_bytes as u64;
        if w.torn_bytes > 0 {
            // A torn line would be a malformed record for every reader: cut it off (the
            // file is opened for append, so the next write lands right after the last
            // whole line).
            if let Err(e) = self.file.set_len(self.size) {
                // The next line would join the fragment: cut it off at the reopen first.
                log::warn!("sink file: removing a partly written line from {}: {e}", self.path.display());
                self.stale = true;
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
    use std::io::Write;

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

    /// Every line of `path` is a whole JSON value (the file ends in a newline).
    fn json_lines(path: &std::path::Path) -> Vec<serde_json::Value> {
        let text = fs::read_to_string(path).unwrap();
        assert!(text.ends_with('\n'), "{text:?} ends in a fragment");
        text.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}"))).collect()
    }

    /// An agent killed in the middle of a write leaves a fragment: after the restart the
    /// first line does not join it; the fragment is cut off and every line parses.
    #[test]
    fn a_fragment_left_by_a_killed_agent_is_cut_off_at_open() {
        let dir = temp_dir("torn-open");
        let path = dir.join("e.jsonl");
        // Longer than one step of the backwards scan.
        let fragment = format!("{{\"b\":\"{}", "x".repeat(10_000));
        fs::write(&path, format!("{{\"a\":1}}\n{fragment}")).unwrap();
        let mut sink =
            FileSink::open(&FileSinkConfig { path: path.clone(), max_bytes: 1 << 20, keep_files: 1 }).unwrap();
        sink.write_line(b"{\"c\":3}\n");
        assert_eq!(flush(&mut sink), Delivered { written: 1, failed: 0 });
        assert_eq!(json_lines(&path), [serde_json::json!({"a": 1}), serde_json::json!({"c": 3})]);
        fs::remove_dir_all(&dir).unwrap();
    }

    /// A torn line that could not be cut off (the failed `set_len` marks the file stale) is
    /// cut off before the next write, also when that write starts with a rotation.
    #[test]
    fn a_fragment_a_failed_cut_left_is_cut_off_before_the_next_write() {
        let dir = temp_dir("torn-cut");
        let path = dir.join("e.jsonl");
        for rotate in [false, true] {
            let config = FileSinkConfig { path: path.clone(), max_bytes: if rotate { 10 } else { 100 }, keep_files: 1 };
            let mut sink = FileSink::open(&config).unwrap();
            sink.write_line(b"{\"a\":1}\n");
            flush(&mut sink);
            // What write_out leaves after a torn write whose cut failed.
            fs::OpenOptions::new().append(true).open(&path).unwrap().write_all(b"{\"b\":").unwrap();
            sink.stale = true;
            sink.write_line(b"{\"c\":3}\n");
            assert_eq!(flush(&mut sink), Delivered { written: 1, failed: 0 });
            let files = tapio_util::rotate::oldest_first(&path, 1);
            assert_eq!(files.len(), if rotate { 2 } else { 1 });
            let lines: Vec<_> = files.iter().flat_map(|p| json_lines(p)).collect();
            assert_eq!(lines, [serde_json::json!({"a": 1}), serde_json::json!({"c": 3})], "rotated: {rotate}");
            for p in files {
                fs::remove_file(p).unwrap();
            }
        }
        fs::remove_dir_all(&dir).unwrap();
    }

    /// A rotation whose shift worked but whose fresh file could not be opened (EMFILE)
    /// retries the open, not the shift: the kept files survive any number of lines.
    #[test]
    fn a_failed_open_after_a_rotation_keeps_the_rotated_files() {
        use std::os::unix::fs::MetadataExt;
        if !tapio_util::test_process::alone_in_a_child(
            module_path!(),
            "a_failed_open_after_a_rotation_keeps_the_rotated_files",
        ) {
            return;
        }
        let dir = temp_dir("rotate-emfile");
        let path = dir.join("e.jsonl");
        let mut sink = FileSink::open(&FileSinkConfig { path: path.clone(), max_bytes: 100, keep_files: 2 }).unwrap();
        let line = [b'x'; 39].iter().copied().chain([b'\n']).collect::<Vec<u8>>(); // 40 bytes
        for _ in 0..10 {
            sink.write_line(&line);
        }
        flush(&mut sink); // e.jsonl, .1 and .2, 80 bytes each
        let ino = |p: &std::path::Path| fs::metadata(p).map(|m| m.ino()).ok();
        let shifted = [None, ino(&path), ino(&tapio_util::rotate::rotated(&path, 1))];
        let files =
            || [ino(&path), ino(&tapio_util::rotate::rotated(&path, 1)), ino(&tapio_util::rotate::rotated(&path, 2))];

        let soft = tapio_util::test_process::set_nofile(0);
        for _ in 0..6 {
            sink.write_line(&line); // the first one rotates, and its open fails
        }
        let lost = flush(&mut sink);
        let after_failure = files();
        tapio_util::test_process::set_nofile(soft);
        assert_eq!(lost, Delivered { written: 0, failed: 6 }, "every refused line is counted");
        assert_eq!(after_failure, shifted, "one shift, however many lines");

        sink.write_line(&line);
        assert_eq!(flush(&mut sink), Delivered { written: 1, failed: 0 }, "the open is retried");
        assert_eq!(files()[1..], shifted[1..], "and the kept files stay");
        assert_eq!(fs::read(&path).unwrap(), line);
        fs::remove_dir_all(&dir).unwrap();
    }

    fn mode(path: &std::path::Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    /// With a umask of 0 (set in a child process: the umask is the process's), the file the
    /// sink creates and each one a rotation creates are 0640; a file the operator made
    /// keeps its own mode, also once rotated.
    #[test]
    fn created_and_rotated_files_are_0640_whatever_the_umask_and_existing_ones_keep_their_mode() {
        use std::os::unix::fs::PermissionsExt;
        if !tapio_util::test_process::alone_in_a_child(
            module_path!(),
            "created_and_rotated_files_are_0640_whatever_the_umask_and_existing_ones_keep_their_mode",
        ) {
            return;
        }
        // SAFETY: umask only sets the process's file mode mask; this child runs this test alone.
        unsafe { libc::umask(0) };
        let dir = temp_dir("mode");
        let line = [b'x'; 39].iter().copied().chain([b'\n']).collect::<Vec<u8>>(); // 40 bytes
        let created = dir.join("created.jsonl");
        let mut sink =
            FileSink::open(&FileSinkConfig { path: created.clone(), max_bytes: 100, keep_files: 2 }).unwrap();
        assert_eq!(mode(&created), 0o640, "the first file");
        for _ in 0..6 {
            sink.write_line(&line);
        }
        assert_eq!(flush(&mut sink), Delivered { written: 6, failed: 0 });
        for p in tapio_util::rotate::oldest_first(&created, 2) {
            assert_eq!(mode(&p), 0o640, "{}", p.display());
        }
        assert!(tapio_util::rotate::rotated(&created, 2).exists(), "two rotations");

        let existing = dir.join("existing.jsonl");
        fs::write(&existing, b"").unwrap();
        fs::set_permissions(&existing, fs::Permissions::from_mode(0o600)).unwrap();
        let mut sink =
            FileSink::open(&FileSinkConfig { path: existing.clone(), max_bytes: 100, keep_files: 2 }).unwrap();
        assert_eq!(mode(&existing), 0o600, "not chmodded when opened");
        for _ in 0..3 {
            sink.write_line(&line);
        }
        flush(&mut sink);
        assert_eq!(mode(&tapio_util::rotate::rotated(&existing, 1)), 0o600, "nor when rotated");
        assert_eq!(mode(&existing), 0o640, "its successor is created 0640");
        fs::remove_dir_all(&dir).unwrap();
    }

    /// A file deleted under the sink is created again before the next write: lines are not
    /// counted written into a file nobody can read. With its directory gone every line
    /// fails, counted; once the directory is back writing resumes.
    #[test]
    fn a_deleted_file_is_created_again_and_lines_fail_counted_while_its_directory_is_gone() {
        let dir = temp_dir("deleted");
        let path = dir.join("e.jsonl");
        let mut sink =
            FileSink::open(&FileSinkConfig { path: path.clone(), max_bytes: 1 << 20, keep_files: 1 }).unwrap();
        sink.write_line(b"{\"a\":1}\n");
        assert_eq!(flush(&mut sink), Delivered { written: 1, failed: 0 });
        fs::remove_file(&path).unwrap();
        sink.write_line(b"{\"b\":2}\n");
        assert_eq!(flush(&mut sink), Delivered { written: 1, failed: 0 });
        assert_eq!(json_lines(&path), [serde_json::json!({"b": 2})], "in a file at its path");

        fs::remove_dir_all(&dir).unwrap();
        sink.write_line(b"{\"c\":3}\n");
        sink.write_line(b"{\"d\":4}\n");
        assert_eq!(flush(&mut sink), Delivered { written: 0, failed: 2 }, "no file to write to");
        sink.write_line(b"{\"e\":5}\n");
        assert_eq!(flush(&mut sink), Delivered { written: 0, failed: 1 }, "still none");
        fs::create_dir_all(&dir).unwrap();
        sink.write_line(b"{\"f\":6}\n");
        assert_eq!(flush(&mut sink), Delivered { written: 1, failed: 0 }, "writing resumes");
        assert_eq!(json_lines(&path), [serde_json::json!({"f": 6})]);
        fs::remove_dir_all(&dir).unwrap();
    }

    /// A file truncated under the sink (logrotate's copytruncate) is followed to its new
    /// length: it is not rotated out nearly empty, and it rotates once it really is full.
    #[test]
    fn a_file_truncated_under_the_sink_is_followed_to_its_new_length() {
        let dir = temp_dir("truncated");
        let path = dir.join("e.jsonl");
        let mut sink = FileSink::open(&FileSinkConfig { path: path.clone(), max_bytes: 100, keep_files: 2 }).unwrap();
        let line = [b'x'; 39].iter().copied().chain([b'\n']).collect::<Vec<u8>>(); // 40 bytes
        for _ in 0..2 {
            sink.write_line(&line);
        }
        flush(&mut sink);
        fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(0).unwrap();
        for _ in 0..2 {
            sink.write_line(&line);
        }
        assert_eq!(flush(&mut sink), Delivered { written: 2, failed: 0 });
        assert!(!tapio_util::rotate::rotated(&path, 1).exists(), "a file of 0 bytes was rotated out");
        assert_eq!(fs::read(&path).unwrap().len(), 80);
        sink.write_line(&line);
        flush(&mut sink);
        assert_eq!(fs::read(tapio_util::rotate::rotated(&path, 1)).unwrap().len(), 80, "rotated once full");
        assert_eq!(fs::read(&path).unwrap(), line);
        fs::remove_dir_all(&dir).unwrap();
    }

    /// Counts the warnings logged (installed in a child process: the logger is the process's).
    struct Warnings(std::sync::atomic::AtomicUsize);

    impl log::Log for Warnings {
        fn enabled(&self, _: &log::Metadata) -> bool {
            true
        }
        fn log(&self, record: &log::Record) {
            if record.level() <= log::Level::Warn {
                self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
        fn flush(&self) {}
    }

    static WARNINGS: Warnings = Warnings(std::sync::atomic::AtomicUsize::new(0));

    /// A rotation whose rename keeps failing (a directory where `path.1` should be) refuses
    /// the lines that need it, each counted once, and is retried once per flush, not once
    /// per line: one warning for a thousand lines, and writing resumes once it works.
    #[test]
    fn a_rotation_that_keeps_failing_is_retried_once_per_flush_and_warned_of_once() {
        if !tapio_util::test_process::alone_in_a_child(
            module_path!(),
            "a_rotation_that_keeps_failing_is_retried_once_per_flush_and_warned_of_once",
        ) {
            return;
        }
        log::set_logger(&WARNINGS).unwrap();
        log::set_max_level(log::LevelFilter::Warn);
        let warnings = || WARNINGS.0.load(std::sync::atomic::Ordering::Relaxed);
        let dir = temp_dir("rotate-fails");
        let path = dir.join("e.jsonl");
        let blocker = tapio_util::rotate::rotated(&path, 1);
        fs::create_dir_all(blocker.join("not-empty")).unwrap();
        let mut sink = FileSink::open(&FileSinkConfig { path: path.clone(), max_bytes: 100, keep_files: 1 }).unwrap();
        let line = [b'x'; 39].iter().copied().chain([b'\n']).collect::<Vec<u8>>(); // 40 bytes
        for _ in 0..2 {
            sink.write_line(&line);
        }
        assert_eq!(flush(&mut sink), Delivered { written: 2, failed: 0 });
        for _ in 0..1000 {
            sink.write_line(&line);
        }
        // The rename would work now, but it is not retried before the flush.
        fs::remove_dir_all(&blocker).unwrap();
        sink.write_line(&line);
        assert_eq!(flush(&mut sink), Delivered { written: 0, failed: 1001 }, "each refused line counted once");
        assert_eq!(warnings(), 1, "one warning, not one per line");
        assert_eq!(fs::read(&path).unwrap().len(), 80, "the size bound holds");
        assert!(!blocker.exists(), "no rotation since the one that failed");

        sink.write_line(&line);
        assert_eq!(flush(&mut sink), Delivered { written: 1, failed: 0 }, "retried at the next flush");
        assert_eq!(fs::read(&blocker).unwrap().len(), 80);
        assert_eq!(fs::read(&path).unwrap(), line);
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
