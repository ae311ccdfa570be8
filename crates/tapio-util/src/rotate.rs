//! The size-rotated JSON-lines file of the agent's and the controller's file sinks, and
//! the rotation names `tapio events` reads: a file with size-based rotation, a bounded
//! number of kept files, and all-or-nothing appends.
//!
//! Each [`RotatingFile::append`] writes whole records straight to the file descriptor (no
//! user-space buffer that could hold records already counted). If the write fails part
//! way (a full disk), the file is cut back to its length before the append, so it never
//! ends in a fragment and never holds a record that was reported as not written.
//!
//! When an append would push the active file past `max_bytes`, files shift ([`shift`]:
//! `path.N-1` → `path.N`, …, `path` → `path.1`) and a fresh `path` is opened; the shift
//! overwrites the oldest, so at most `keep_files` rotated files exist, and oldest to
//! newest they are `path.N`, …, `path.1`, `path` ([`oldest_first`]). Rotation happens between appends
//! (one group of batches), so every file holds whole records and a file may exceed
//! `max_bytes` by at most one append.
//!
//! Both file sinks (the agent's and the controller's) write behind themselves with
//! [`DropBehind`]: what they wrote leaves the page cache once it is on disk.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// The mode of an evidence file either file sink creates (the first, each after a
/// rotation, a torn tail set aside): the owner writes, its group (a log shipper) reads,
/// others nothing, since evidence names pods, processes and addresses. The umask may take
/// more away, never add. A file that already exists keeps its mode.
pub const EVIDENCE_FILE_MODE: u32 = 0o640;

/// What others did to an open sink file since it was `known_size` bytes long.
#[derive(Debug, PartialEq, Eq)]
pub enum FileChange {
    /// Nothing a writer must act on (or the file could not be asked).
    Unchanged,
    /// Deleted, or its directory was: what is written to it is read by nobody.
    Deleted,
    /// Truncated to this length (logrotate's copytruncate): appends land at its new end.
    Truncated(u64),
}

/// How `file` changed under its writer, which last knew it `known_size` bytes long.
pub fn file_change(file: &File, known_size: u64) -> FileChange {
    // SAFETY: fstat writes only into the struct passed. (Plain fstat rather than
    // `File::metadata`: a second inlined copy of its statx path costs the agent's size.)
    let st = unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        if libc::fstat(file.as_raw_fd(), &mut st) != 0 {
            return FileChange::Unchanged;
        }
        st
    };
    let size = st.st_size as u64;
    if st.st_nlink == 0 {
        FileChange::Deleted
    } else if size < known_size {
        FileChange::Truncated(size)
    } else {
        FileChange::Unchanged
    }
}

/// `path.n`: the `n`th newest rotated file (1 is the newest).
pub fn rotated(path: &Path, n: usize) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

/// Rotates the files of `path` by one: `path.(keep-1)` → `path.keep`, …, `path` →
/// `path.1`, the rename over `path.keep` deleting the oldest (`keep` is at least 1; with
/// none to keep, delete `path` instead). Missing files are skipped. The caller opens a
/// fresh `path` afterwards.
pub fn shift(path: &Path, keep_files: usize) -> io::Result<()> {
    for n in (1..keep_files).rev() {
        std::fs::rename(rotated(path, n), rotated(path, n + 1)).or_else(ignore_missing)?;
    }
    std::fs::rename(path, rotated(path, 1)).or_else(ignore_missing)
}

/// The files a rotated `path` may consist of, oldest first (`path.keep` … `path.1`,
/// `path`), those that exist: reading them in this order reads the records in the order
/// they were written.
pub fn oldest_first(path: &Path, keep_files: usize) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = (1..=keep_files).rev().map(|n| rotated(path, n)).filter(|p| p.exists()).collect();
    if path.exists() {
        files.push(path.to_path_buf());
    }
    files
}

/// The file is handed to writeback, and then dropped from the page cache, in steps of this
/// many bytes (see [`DropBehind`]).
pub const DROP_BEHIND_STEP: u64 = 8 << 20;

/// Steps handed to the helper and not yet done: beyond this the writer skips a step rather
/// than wait.
const DROP_BEHIND_PENDING: usize = 2;

/// Keeps the evidence file from piling up in the node's page cache: each whole step behind
/// the end is handed to writeback as it fills, and dropped from the cache one step later,
/// when its writeback has had a step's time to finish. A node agent writing gigabytes of
/// evidence would otherwise crowd out its workloads' cached files, and every page it writes
/// would be a page newly taken from the allocator (on a VM with free-page reporting, also a
/// page the hypervisor must back again: there the copy into fresh pages was half the
/// agent's time under a flood). A reader tailing the file within a step or two of its end
/// still reads from the cache.
///
/// Starting writeback can wait for the disk (the block layer's request slots), so a helper
/// thread does it, and the writer never waits: while the helper is behind (a disk slower
/// than the evidence), a step is skipped and stays cached until the kernel's own writeback,
/// exactly as without this. Pages still dirty or under writeback when their drop comes are
/// left alone by the kernel.
#[derive(Debug, Default)]
pub struct DropBehind {
    /// Bytes below this offset have been handed on for writeback (or skipped).
    writeback_to: u64,
    /// Bytes below this offset have been handed on to be dropped (or skipped, or were there
    /// before this file was opened).
    dropped_to: u64,
    helper: Option<Helper>,
}

/// The helper thread and its mailbox of at most [`DROP_BEHIND_PENDING`] steps (a mutex and a
/// condition variable, which the agent links anyway, rather than a channel type: ~16 KB of
/// the agent's size).
#[derive(Debug)]
struct Helper {
    mailbox: std::sync::Arc<Mailbox>,
    thread: std::thread::JoinHandle<()>,
}

#[derive(Debug, Default)]
struct Mailbox {
    /// Steps waiting, and whether the writer is gone.
    state: std::sync::Mutex<(std::collections::VecDeque<DropJob>, bool)>,
    posted: std::sync::Condvar,
}

impl Mailbox {
    fn lock(&self) -> std::sync::MutexGuard<'_, (std::collections::VecDeque<DropJob>, bool)> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The helper's loop: each step in order, until the writer is gone and none is left.
    fn serve(&self) {
        loop {
            let job = {
                let mut state = self.lock();
                loop {
                    if let Some(job) = state.0.pop_front() {
                        break job;
                    }
                    if state.1 {
                        return;
                    }
                    state = self.posted.wait(state).unwrap_or_else(|p| p.into_inner());
                }
            };
            job.run();
        }
    }
}

/// One step's work: drop `drop` (already written back) and start writing back `writeback`.
#[derive(Debug)]
struct DropJob {
    file: File,
    drop: (u64, u64),
    writeback: (u64, u64),
}

impl DropJob {
    fn run(&self) {
        let fd = self.file.as_raw_fd();
        let (from, to) = self.drop;
        if to > from {
            // SAFETY: a plain syscall on the descriptor this job owns; no memory is passed.
            // Errors only mean the pages stay cached, as without this.
            unsafe {
                libc::posix_fadvise(fd, from as libc::off_t, (to - from) as libc::off_t, libc::POSIX_FADV_DONTNEED)
            };
        }
        let (from, to) = self.writeback;
        if to > from {
            // SAFETY: as above.
            unsafe {
                libc::sync_file_range(
                    fd,
                    from as libc::off64_t,
                    (to - from) as libc::off64_t,
                    libc::SYNC_FILE_RANGE_WRITE,
                )
            };
        }
    }
}

impl DropBehind {
    /// For a file opened at `size` bytes (what lies before it is left as it is).
    pub fn starting_at(size: u64) -> Self {
        let mut me = Self::default();
        me.restart_at(size);
        me
    }

    /// Follows a newly opened file of `size` bytes (after a rotation); the helper stays.
    pub fn restart_at(&mut self, size: u64) {
        let at = size / DROP_BEHIND_STEP * DROP_BEHIND_STEP;
        self.writeback_to = at;
        self.dropped_to = at;
    }

    /// After `file` grew to `size`.
    pub fn advance(&mut self, file: &File, size: u64) {
        let whole = size / DROP_BEHIND_STEP * DROP_BEHIND_STEP;
        if whole <= self.writeback_to {
            return;
        }
        // What was handed to writeback a step ago goes now; the new whole steps go to
        // writeback. Either way the offsets move on: a skipped step is not retried.
        let dropped = (self.dropped_to, self.writeback_to);
        let writeback = (self.writeback_to, whole);
        self.dropped_to = self.writeback_to;
        self.writeback_to = whole;
        let Ok(file) = file.try_clone() else { return };
        let job = DropJob { file, drop: dropped, writeback };
        if self.helper.is_none() {
            let mailbox = std::sync::Arc::new(Mailbox::default());
            let served = std::sync::Arc::clone(&mailbox);
            match std::thread::Builder::new().name("tapio-writeback".into()).spawn(move || served.serve()) {
                Ok(thread) => self.helper = Some(Helper { mailbox, thread }),
                // No thread, no drop-behind: the file behaves as a plain file.
                Err(e) => {
                    log::warn!("file sink: no write-behind helper ({e}); the page cache keeps what it writes");
                    return;
                }
            }
        }
        if let Some(helper) = &self.helper {
            let mut state = helper.mailbox.lock();
            // Full: the step is skipped (see above).
            if state.0.len() < DROP_BEHIND_PENDING {
                state.0.push_back(job);
                drop(state);
                helper.mailbox.posted.notify_one();
            }
        }
    }

    /// Waits until the helper has done every step handed to it, and stops it.
    pub fn finish(&mut self) {
        if let Some(Helper { mailbox, thread }) = self.helper.take() {
            mailbox.lock().1 = true;
            mailbox.posted.notify_one();
            let _ = thread.join();
        }
    }
}

impl Drop for DropBehind {
    fn drop(&mut self) {
        self.finish();
    }
}

/// The rotating file.
#[derive(Debug)]
pub struct RotatingFile {
    path: PathBuf,
    max_bytes: u64,
    keep_files: usize,
    file: Option<File>,
    size: u64,
    drop_behind: DropBehind,
}

impl RotatingFile {
    /// Opens (appending to) `path`.
    pub fn open(path: PathBuf, max_bytes: u64, keep_files: usize) -> io::Result<Self> {
        let mut me = Self { path, max_bytes, keep_files, file: None, size: 0, drop_behind: DropBehind::default() };
        me.reopen()?;
        Ok(me)
    }

    /// The active file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn reopen(&mut self) -> io::Result<()> {
        let file = OpenOptions::new().create(true).append(true).mode(EVIDENCE_FILE_MODE).open(&self.path)?;
        self.size = file.metadata()?.len();
        self.drop_behind.restart_at(self.size);
        self.file = Some(file);
        sync_parent(&self.path);
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<()> {
        match self.file.take() {
            // The old file's records were acknowledged under the fsync policy; make the
            // renamed file complete on disk before the name moves.
            Some(f) => f.sync_data()?,
            // A failed append may have left a fragment: set it aside while it is in reach.
            None => drop(repair_torn_tail(&self.path)?),
        }
        if self.keep_files == 0 {
            std::fs::remove_file(&self.path).or_else(ignore_missing)?;
        } else {
            shift(&self.path, self.keep_files)?;
        }
        // `path` is gone. Until a fresh one opens the active file is empty: the next append
        // retries the open, not another shift, which would delete one more kept file.
        self.size = 0;
        self.reopen()
    }

    /// Appends `buf` (whole lines) entirely or not at all.
    pub fn append(&mut self, buf: &[u8]) -> io::Result<()> {
        let len = buf.len() as u64;
        match self.file.as_ref().map(|f| file_change(f, self.size)) {
            Some(FileChange::Deleted) => {
                // Records written to it would be acknowledged and read by nobody. A fresh
                // `path` takes them, or they are refused.
                log::warn!("sink file: {} was deleted; creating it again", self.path.display());
                self.file = None;
                self.size = 0;
            }
            Some(FileChange::Truncated(size)) => {
                // The old size would rotate a near-empty file out, and cutting a failed
                // append back to it would fill the file up to it with zeros.
                self.size = size;
                self.drop_behind.restart_at(size);
            }
            Some(FileChange::Unchanged) | None => {}
        }
        if self.size > 0 && self.size + len > self.max_bytes {
            self.rotate()?;
        }
        if self.file.is_none() {
            // A previous failure closed the file: try again rather than give up forever.
            // A fragment it may have left is set aside first.
            repair_torn_tail(&self.path)?;
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
        self.drop_behind.advance(file, self.size);
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

/// The length of the whole lines of `file`'s first `len` bytes: up to and including the
/// last newline (`len` when they end in one, 0 when there is none). Reads backwards.
pub fn whole_lines_len(file: &File, len: u64) -> io::Result<u64> {
    let mut chunk = [0u8; 4096];
    let mut end = len;
    while end > 0 {
        let start = end.saturating_sub(chunk.len() as u64);
        let part = &mut chunk[..(end - start) as usize];
        // One pread (not read_exact_at: its retry loop costs the agent's size budget); a
        // regular file returns all the bytes asked for below its length.
        if file.read_at(part, start)? < part.len() {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        if let Some(i) = part.iter().rposition(|b| *b == b'\n') {
            return Ok(start + i as u64 + 1);
        }
        end = start;
    }
    Ok(0)
}

/// If `path` does not end in a newline, moves the bytes after its last newline to
/// `<path>.torn-<unix nanos>` and cuts the file there. Returns the bytes set aside and
/// where they went; None when the file is absent, empty or whole.
pub fn repair_torn_tail(path: &Path) -> io::Result<Option<(u64, PathBuf)>> {
    let file = match OpenOptions::new().read(true).write(true).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let len = file.metadata()?.len();
    let keep = whole_lines_len(&file, len)?;
    if keep == len {
        return Ok(None);
    }
    let torn = len - keep;
    let mut chunk = vec![0u8; 64 * 1024];
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let mut aside_name = path.as_os_str().to_owned();
    aside_name.push(format!(".torn-{nanos}"));
    let aside = PathBuf::from(aside_name);
    {
        let mut out = OpenOptions::new().create_new(true).write(true).mode(EVIDENCE_FILE_MODE).open(&aside)?;
        let mut at = keep;
        while at < len {
            let n = ((len - at) as usize).min(chunk.len());
            file.read_exact_at(&mut chunk[..n], at)?;
            out.write_all(&chunk[..n])?;
            at += n as u64;
        }
        out.sync_all()?;
    }
    file.set_len(keep)?;
    file.sync_all()?;
    Ok(Some((torn, aside)))
}

/// Replaces `path` with `bytes` so that a crash leaves the old file or the new one, whole,
/// and the new one survives a power loss once this returns: written to `<path>.tmp`,
/// synced, renamed over `path`, and the directory entry synced.
pub fn replace_durably(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    {
        let mut file = File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    sync_parent(path);
    Ok(())
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
    fn a_durable_replacement_leaves_the_new_bytes_and_no_temporary_file() {
        let dir = temp_dir("replace");
        let path = dir.join("state.json");
        replace_durably(&path, b"old").unwrap();
        replace_durably(&path, b"new").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        assert!(!dir.join("state.json.tmp").exists());
        // A directory where the file should be: the error says so, nothing is half-written.
        std::fs::create_dir(dir.join("busy")).unwrap();
        assert!(replace_durably(&dir.join("busy"), b"x").is_err());
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// Which pages of the first `len` bytes of `file` are in the page cache.
    fn cached_pages(file: &File, len: usize) -> Vec<bool> {
        // SAFETY: a private read-only mapping of a file this test owns and does not change
        // while it is mapped; mincore writes one byte per page into a vector of that size,
        // and the mapping is removed before returning.
        unsafe {
            let page = libc::sysconf(libc::_SC_PAGESIZE) as usize;
            let map = libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ, libc::MAP_SHARED, file.as_raw_fd(), 0);
            assert_ne!(map, libc::MAP_FAILED, "mmap: {}", io::Error::last_os_error());
            let mut vec = vec![0u8; len.div_ceil(page)];
            let rc = libc::mincore(map, len, vec.as_mut_ptr());
            libc::munmap(map, len);
            assert_eq!(rc, 0, "mincore: {}", io::Error::last_os_error());
            vec.iter().map(|b| b & 1 == 1).collect()
        }
    }

    /// The page cache of a disk-backed file (tmpfs pages are the data and never drop): the
    /// checkout's target directory, not /tmp, which may be a tmpfs.
    fn disk_dir(tag: &str) -> PathBuf {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../target/tapio-util-tests")
            .join(format!("{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn written_steps_leave_the_page_cache_once_on_disk_and_the_newest_stay() {
        let dir = disk_dir("drop-behind");
        let path = dir.join("evidence.jsonl");
        let _ = std::fs::remove_file(&path);
        let mut file = OpenOptions::new().create(true).read(true).append(true).open(&path).unwrap();
        let step = DROP_BEHIND_STEP as usize;
        let mut behind = DropBehind::starting_at(0);
        let chunk = vec![b'x'; step];
        file.write_all(&chunk).unwrap();
        behind.advance(&file, step as u64); // the first step goes to writeback…
        file.sync_data().unwrap(); // …and is surely on disk before the next step crosses
        file.write_all(&chunk).unwrap();
        file.write_all(&chunk[..4096]).unwrap();
        behind.advance(&file, 2 * step as u64 + 4096);
        behind.finish(); // the helper has done both steps
        let cached = cached_pages(&file, 2 * step + 4096);
        let pages = step / 4096;
        let first = cached[..pages].iter().filter(|&&c| c).count();
        let second = cached[pages..2 * pages].iter().filter(|&&c| c).count();
        assert_eq!(first, 0, "the first step, written back, left the page cache: {first} of {pages} pages stayed");
        assert_eq!(second, pages, "the step being written back stays cached until its turn");
        assert!(cached[2 * pages], "the page being appended to stays cached");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Writing behind across many steps and rotations keeps every record: each file holds
    /// whole lines, in order, and together they hold exactly what was appended.
    #[test]
    fn writing_behind_across_steps_and_rotations_keeps_every_record() {
        let dir = disk_dir("drop-behind-rotate");
        let path = dir.join("evidence.jsonl");
        for p in oldest_first(&path, 3) {
            std::fs::remove_file(p).unwrap();
        }
        // Files of 20 MiB: each crosses two 8 MiB steps before it rotates.
        let max_bytes = 20 << 20;
        let mut f = RotatingFile::open(path.clone(), max_bytes, 3).unwrap();
        let line_len = format!("{{\"n\":{:010},\"pad\":\"{}\"}}\n", 0, "p".repeat(1000)).len() as u64;
        let records = 100_000u64; // ~100 MiB: four rotations, the oldest file deleted
        for i in 0..records {
            let line = format!("{{\"n\":{i:010},\"pad\":\"{}\"}}\n", "p".repeat(1000));
            f.append(line.as_bytes()).unwrap();
        }
        f.drop_behind.finish();
        let mut next = records - 1;
        let mut seen = 0u64;
        // Newest first: the live file, then .1, .2, .3, each read backwards.
        for p in oldest_first(&path, 3).iter().rev() {
            let text = std::fs::read_to_string(p).unwrap();
            assert!(
                text.ends_with('\n') && text.len() as u64 <= max_bytes,
                "{} holds whole lines within the limit",
                p.display()
            );
            for line in text.lines().rev() {
                assert_eq!(line[5..15].parse::<u64>().unwrap(), next, "records are whole and in order");
                next = next.wrapping_sub(1);
                seen += 1;
            }
        }
        assert_eq!(next.wrapping_add(1), records - seen, "the newest records, none missing");
        assert!(seen > 3 * (max_bytes / line_len) && seen < records, "three full files and the live one: {seen}");
        std::fs::remove_dir_all(&dir).unwrap();
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
        assert_eq!(size(&rotated(&path, 1)), Some(80));
        assert_eq!(size(&rotated(&path, 2)), Some(80));
        assert_eq!(size(&rotated(&path, 3)), None, "only 2 kept");
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
        assert_eq!(std::fs::read(rotated(&path, 1)).unwrap(), b"aaaa\nbbbb\n");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_torn_tail_is_set_aside_and_whole_files_are_left_alone() {
        let dir = temp_dir("torn");
        let path = dir.join("e.jsonl");
        std::fs::write(&path, b"{\"a\":1}\n{\"b\":2}\n{\"c\":").unwrap();
        let (bytes, aside) = repair_torn_tail(&path).unwrap().unwrap();
        assert_eq!(bytes, 5);
        assert_eq!(std::fs::read(&path).unwrap(), b"{\"a\":1}\n{\"b\":2}\n");
        assert_eq!(std::fs::read(&aside).unwrap(), b"{\"c\":");
        assert!(repair_torn_tail(&path).unwrap().is_none(), "a whole file is not touched");
        // A file that is one long fragment (no newline at all) is set aside whole.
        let frag = dir.join("f.jsonl");
        std::fs::write(&frag, vec![b'x'; 200_000]).unwrap();
        assert_eq!(repair_torn_tail(&frag).unwrap().unwrap().0, 200_000);
        assert_eq!(std::fs::metadata(&frag).unwrap().len(), 0);
        assert!(repair_torn_tail(&dir.join("absent")).unwrap().is_none());
        // A fragment longer than one step of the backwards scan.
        std::fs::write(&frag, [&b"a\n"[..], &[b'x'; 10_000]].concat()).unwrap();
        assert_eq!(whole_lines_len(&File::open(&frag).unwrap(), 10_002).unwrap(), 2);
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// A fragment a failed cut left (the file closed, as `append` leaves it) is set aside
    /// before a rotation moves its file out of reach.
    #[test]
    fn a_fragment_is_set_aside_before_its_file_is_rotated() {
        let dir = temp_dir("torn-rotate");
        let path = dir.join("e.jsonl");
        let mut f = RotatingFile::open(path.clone(), 10, 1).unwrap();
        f.append(b"aaaa\n").unwrap();
        OpenOptions::new().append(true).open(&path).unwrap().write_all(b"bb").unwrap();
        f.file = None;
        f.append(b"cccccc\n").unwrap();
        assert_eq!(std::fs::read(rotated(&path, 1)).unwrap(), b"aaaa\n");
        assert_eq!(std::fs::read(&path).unwrap(), b"cccccc\n");
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// A rotation whose shift worked but whose fresh file could not be opened (EMFILE)
    /// retries the open, not the shift: the kept files survive any number of appends.
    #[test]
    fn a_failed_open_after_a_rotation_keeps_the_rotated_files() {
        use std::os::unix::fs::MetadataExt;
        if !crate::test_process::alone_in_a_child(
            module_path!(),
            "a_failed_open_after_a_rotation_keeps_the_rotated_files",
        ) {
            return;
        }
        let dir = temp_dir("emfile");
        let path = dir.join("e.jsonl");
        let mut f = RotatingFile::open(path.clone(), 100, 2).unwrap();
        let line = format!("{}\n", "x".repeat(39)); // 40 bytes: two lines per file
        for _ in 0..10 {
            f.append(line.as_bytes()).unwrap(); // e.jsonl, .1 and .2, 80 bytes each
        }
        let ino = |p: &Path| std::fs::metadata(p).map(|m| m.ino()).ok();
        let files = || [ino(&path), ino(&rotated(&path, 1)), ino(&rotated(&path, 2))];
        let shifted = [None, ino(&path), ino(&rotated(&path, 1))];

        let soft = crate::test_process::set_nofile(0);
        let refused = (0..5).filter(|_| f.append(line.as_bytes()).is_err()).count();
        let after_failure = files();
        crate::test_process::set_nofile(soft);
        assert_eq!(refused, 5);
        assert_eq!(after_failure, shifted, "one shift, however many appends");

        f.append(line.as_bytes()).unwrap();
        assert_eq!(files()[1..], shifted[1..], "the open is retried, and the kept files stay");
        assert_eq!(std::fs::read(&path).unwrap(), line.as_bytes());
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
        assert!(!rotated(&path, 1).exists());
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// The names `tapio events` reads, oldest first, are the ones rotation wrote: records
    /// read in that order come in the order they were appended.
    #[test]
    fn oldest_first_lists_the_rotated_files_in_write_order() {
        let dir = temp_dir("order");
        let path = dir.join("e.jsonl");
        let mut f = RotatingFile::open(path.clone(), 4, 3).unwrap();
        for n in 0..5 {
            f.append(format!("{n}\n").repeat(2).as_bytes()).unwrap();
        }
        let files = oldest_first(&path, 3);
        assert_eq!(files, [rotated(&path, 3), rotated(&path, 2), rotated(&path, 1), path.clone()]);
        let all: Vec<u8> = files.iter().flat_map(|p| std::fs::read(p).unwrap()).collect();
        assert_eq!(all, b"1\n1\n2\n2\n3\n3\n4\n4\n", "the oldest (0) was rotated out");
        assert_eq!(oldest_first(&dir.join("absent"), 3), Vec::<PathBuf>::new());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
