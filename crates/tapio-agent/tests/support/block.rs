//! Block-device scaffolding for the real-kernel storage and node tests: loop devices,
//! tmpfs/ext4 mounts, O_DIRECT I/O and tracefs event counting. Every piece is a
//! guard that undoes itself on drop, so a failing test leaves nothing behind. Names carry
//! the test process's pid so concurrent runs do not collide.

use super::{run, tmp, try_run};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A mount, unmounted on drop (lazily if it is busy).
pub struct Mount {
    pub path: PathBuf,
}

impl Mount {
    pub fn tmpfs(path: &Path, size: &str) -> Mount {
        run(&["mount", "-t", "tmpfs", "-o", &format!("size={size}"), "tapio-test", &path.to_string_lossy()]);
        Mount { path: path.to_path_buf() }
    }

    pub fn device(dev: &str, path: &Path) -> Mount {
        run(&["mount", dev, &path.to_string_lossy()]);
        Mount { path: path.to_path_buf() }
    }

    /// Shuts the (ext4) filesystem down as if its disk had died: every later I/O to it
    /// fails with EIO. EXT4_IOC_SHUTDOWN with EXT4_GOING_FLAGS_NOLOGFLUSH.
    pub fn shutdown_ext4(&self) {
        const EXT4_IOC_SHUTDOWN: libc::c_ulong = 0x8004_587D;
        let dir = File::open(&self.path).expect("open mount point");
        let flags: u32 = 2;
        // SAFETY: the ioctl reads one u32 we own from a valid pointer.
        let rc = unsafe { libc::ioctl(std::os::fd::AsRawFd::as_raw_fd(&dir), EXT4_IOC_SHUTDOWN, &flags) };
        assert_eq!(rc, 0, "EXT4_IOC_SHUTDOWN: {}", io::Error::last_os_error());
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let p = self.path.to_string_lossy().into_owned();
        if try_run(&["umount", &p]).is_err() {
            let _ = try_run(&["umount", "-l", &p]);
        }
    }
}

/// A loop device, detached on drop.
pub struct Loop {
    pub path: String,
    pub major: u32,
    pub minor: u32,
}

impl Loop {
    pub fn attach(file: &Path, direct_io: bool) -> Loop {
        let file = file.to_string_lossy().into_owned();
        let mut cmd = vec!["losetup", "-f", "--show"];
        if direct_io {
            cmd.push("--direct-io=on");
        }
        cmd.push(&file);
        let path = run(&cmd).trim().to_string();
        let rdev = std::fs::metadata(&path).expect("stat loop device").rdev();
        let (major, minor) = (libc::major(rdev), libc::minor(rdev));
        Loop { path, major, minor }
    }

    /// The device number as block tracepoints encode it (major << 20 | minor).
    pub fn trace_dev(&self) -> u64 {
        (u64::from(self.major) << 20) | u64::from(self.minor)
    }

    pub fn name(&self) -> &str {
        self.path.trim_start_matches("/dev/")
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = try_run(&["losetup", "-d", &self.path]);
    }
}

/// A file of `len` bytes, fully written (so later writes allocate nothing).
pub fn filled_file(path: &Path, len: u64) {
    let f = File::create(path).expect("create backing file");
    let chunk = vec![0u8; 1 << 20];
    let mut off = 0;
    while off < len {
        let n = chunk.len().min((len - off) as usize);
        f.write_all_at(&chunk[..n], off).expect("fill backing file");
        off += n as u64;
    }
    f.sync_all().expect("sync backing file");
}

/// A sparse file of `len` bytes.
pub fn sparse_file(path: &Path, len: u64) {
    File::create(path).and_then(|f| f.set_len(len)).expect("create sparse file");
}

pub fn mkfs_ext4(dev: &str) {
    run(&["mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", dev]);
}

/// A 4096-aligned buffer for O_DIRECT.
pub struct Aligned {
    ptr: *mut u8,
    len: usize,
}

impl Aligned {
    pub fn new(len: usize, fill: u8) -> Aligned {
        let layout = std::alloc::Layout::from_size_align(len, 4096).expect("layout");
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc(layout) };
        assert!(!ptr.is_null());
        // SAFETY: ptr points to len bytes we own.
        unsafe { std::ptr::write_bytes(ptr, fill, len) };
        Aligned { ptr, len }
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: ptr is valid for len bytes for our lifetime.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, and we hold &mut self.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for Aligned {
    fn drop(&mut self) {
        let layout = std::alloc::Layout::from_size_align(self.len, 4096).expect("layout");
        // SAFETY: allocated with this layout in new().
        unsafe { std::alloc::dealloc(self.ptr, layout) };
    }
}

// SAFETY: the buffer is owned memory with no thread affinity.
unsafe impl Send for Aligned {}

pub fn open_direct(path: &str, write: bool) -> File {
    OpenOptions::new()
        .read(true)
        .write(write)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .unwrap_or_else(|e| panic!("open {path} O_DIRECT: {e}"))
}

/// One O_DIRECT write: its result and how long the syscall took.
pub fn timed_write(f: &File, buf: &Aligned, offset: u64) -> (io::Result<usize>, Duration) {
    let t = Instant::now();
    let r = f.write_at(buf.as_slice(), offset);
    (r, t.elapsed())
}

pub fn timed_read(f: &File, buf: &mut Aligned, offset: u64) -> (io::Result<usize>, Duration) {
    let t = Instant::now();
    let r = f.read_at(buf.as_mut_slice(), offset);
    (r, t.elapsed())
}

/// Counts one tracepoint's firings in a private tracefs instance, independently of the
/// agent (entries plus overruns, so a full buffer does not hide any).
pub struct TraceCounter {
    dir: PathBuf,
}

impl TraceCounter {
    pub fn new(name: &str, event: &str, filter: &str) -> TraceCounter {
        let dir = PathBuf::from("/sys/kernel/tracing/instances").join(tmp::unique(name));
        let _ = std::fs::remove_dir(&dir);
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("tracefs instance {}: {e}", dir.display()));
        let ev = dir.join("events").join(event);
        std::fs::write(ev.join("filter"), filter).expect("tracefs filter");
        std::fs::write(ev.join("enable"), "1").expect("tracefs enable");
        TraceCounter { dir }
    }

    /// The firings so far. A tracefs instance that cannot be read fails the test: a count
    /// of 0 must mean that the event did not fire, never that nothing was read.
    pub fn count(&self) -> u64 {
        let per_cpu = self.dir.join("per_cpu");
        let cpus = std::fs::read_dir(&per_cpu).unwrap_or_else(|e| panic!("tracefs {}: {e}", per_cpu.display()));
        let mut total = 0;
        let mut read = 0;
        for cpu in cpus {
            let stats = cpu.unwrap_or_else(|e| panic!("tracefs {}: {e}", per_cpu.display())).path().join("stats");
            let text = std::fs::read_to_string(&stats).unwrap_or_else(|e| panic!("tracefs {}: {e}", stats.display()));
            for key in ["entries:", "overrun:"] {
                let value = text
                    .lines()
                    .find_map(|line| line.strip_prefix(key))
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .unwrap_or_else(|| panic!("no number after {key:?} in {}:\n{text}", stats.display()));
                total += value;
            }
            read += 1;
        }
        assert!(read > 0, "tracefs {}: no CPU to count on", per_cpu.display());
        total
    }
}

impl Drop for TraceCounter {
    fn drop(&mut self) {
        let _ = std::fs::write(self.dir.join("events/enable"), "0");
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// Physical extents of a file (FS_IOC_FIEMAP): (logical, physical, length) in bytes.
pub fn file_extents(f: &File) -> Vec<(u64, u64, u64)> {
    const FS_IOC_FIEMAP: libc::c_ulong = 0xC020_660B;
    const MAX: usize = 256;
    // struct fiemap (32 bytes) followed by MAX struct fiemap_extent (56 bytes each).
    let mut buf = vec![0u64; (32 + 56 * MAX) / 8];
    buf[1] = u64::MAX; // fm_length
    buf[2] = 1; // fm_flags = FIEMAP_FLAG_SYNC (fm_mapped_extents is the high half)
    buf[3] = MAX as u64; // fm_extent_count
                         // SAFETY: the buffer is large enough for the header and MAX extents.
    let rc = unsafe { libc::ioctl(std::os::fd::AsRawFd::as_raw_fd(f), FS_IOC_FIEMAP, buf.as_mut_ptr()) };
    assert_eq!(rc, 0, "FIEMAP: {}", io::Error::last_os_error());
    let mapped = (buf[2] >> 32) as usize; // fm_mapped_extents
    (0..mapped.min(MAX))
        .map(|i| {
            let base = (32 + 56 * i) / 8;
            (buf[base], buf[base + 1], buf[base + 2])
        })
        .collect()
}

/// A buffer of `pages` 4 KiB pages for O_DIRECT vectored I/O, each page of the I/O the
/// next-but-one page of an allocation twice its size: no two of them are physically
/// adjacent where the allocation is contiguous, so the block layer cannot merge them and
/// a request carries one segment per page. A virtio disk without indirect descriptors
/// (this test bed's) then needs a ring descriptor per page, and a few such requests in
/// flight fill its ring: the driver hands the next request back (BLK_STS_RESOURCE), which
/// the block layer requeues.
pub struct Scattered {
    mem: Aligned,
    pages: usize,
}

impl Scattered {
    pub fn new(pages: usize, fill: u8) -> Scattered {
        assert!(pages > 0 && pages <= 1024, "1 to 1024 pages (IOV_MAX), not {pages}");
        Scattered { mem: Aligned::new(pages * 2 * 4096, fill), pages }
    }

    /// Bytes one I/O moves.
    pub fn len(&self) -> usize {
        self.pages * 4096
    }

    fn iovecs(&self) -> Vec<libc::iovec> {
        let base = self.mem.as_slice().as_ptr() as *mut u8;
        (0..self.pages)
            // SAFETY: page 2i lies inside the allocation of 2 * pages pages.
            .map(|i| libc::iovec { iov_base: unsafe { base.add(i * 2 * 4096) }.cast(), iov_len: 4096 })
            .collect()
    }

    /// One O_DIRECT pwritev of every page at `offset`: its result and how long it took.
    pub fn timed_write(&self, f: &File, offset: u64) -> (io::Result<usize>, Duration) {
        let iov = self.iovecs();
        let t = Instant::now();
        // SAFETY: every iovec names 4 KiB of our own allocation, alive for the call.
        let n = unsafe {
            libc::pwritev(std::os::fd::AsRawFd::as_raw_fd(f), iov.as_ptr(), iov.len() as i32, offset as libc::off_t)
        };
        (vectored_result(n), t.elapsed())
    }

    /// One O_DIRECT preadv into every page at `offset`.
    pub fn timed_read(&mut self, f: &File, offset: u64) -> (io::Result<usize>, Duration) {
        let iov = self.iovecs();
        let t = Instant::now();
        // SAFETY: as above, and we hold &mut self, so nothing else reads the pages meanwhile.
        let n = unsafe {
            libc::preadv(std::os::fd::AsRawFd::as_raw_fd(f), iov.as_ptr(), iov.len() as i32, offset as libc::off_t)
        };
        (vectored_result(n), t.elapsed())
    }
}

fn vectored_result(n: isize) -> io::Result<usize> {
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}
