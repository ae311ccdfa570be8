//! The kernel log (`/dev/kmsg`) from a moment on, and the OOM killer's own account of a
//! kill ("Killed process <pid> (<comm>) total-vm:…kB, anon-rss:…kB, …") to check evidence
//! against.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::time::{Duration, Instant};

/// What the kernel logged when it killed one process: "Killed process <pid> (<comm>)
/// total-vm:…kB, anon-rss:…kB, file-rss:…kB, shmem-rss:…kB, …".
#[derive(Debug)]
pub struct KernelKill {
    pub comm: String,
    pub total_vm_kb: u64,
    pub anon_rss_kb: u64,
    pub file_rss_kb: u64,
    pub shmem_rss_kb: u64,
}

/// The kernel log from the moment this is made on.
pub struct Kmsg {
    file: File,
    /// The messages read so far, one per record.
    pub lines: Vec<String>,
}

impl Kmsg {
    pub fn from_now() -> Kmsg {
        let file =
            OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open("/dev/kmsg").expect("open /dev/kmsg");
        // SAFETY: seeking a descriptor we own; /dev/kmsg's SEEK_END skips existing records.
        let rc = unsafe { libc::lseek(std::os::fd::AsRawFd::as_raw_fd(&file), 0, libc::SEEK_END) };
        assert!(rc >= 0, "seek /dev/kmsg: {}", std::io::Error::last_os_error());
        Kmsg { file, lines: Vec::new() }
    }

    /// Reads what is new; each read of /dev/kmsg returns one record.
    pub fn read_new(&mut self) {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match self.file.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => {
                    let rec = String::from_utf8_lossy(&buf[..n]);
                    if let Some((_, msg)) = rec.split_once(';') {
                        self.lines.push(msg.lines().next().unwrap_or("").to_string());
                    }
                }
                // EPIPE: records were overwritten before we read them; the next read resumes.
                Err(e) if e.raw_os_error() == Some(libc::EPIPE) => continue,
                Err(_) => return,
            }
        }
    }

    /// The kernel's OOM-kill line for `pid`, waiting up to `timeout` for it.
    pub fn killed(&mut self, pid: u32, timeout: Duration) -> Option<KernelKill> {
        let deadline = Instant::now() + timeout;
        let needle = format!("Killed process {pid} (");
        loop {
            self.read_new();
            if let Some(line) = self.lines.iter().find(|l| l.contains(&needle)) {
                let rest = &line[line.find(&needle).unwrap_or(0) + needle.len()..];
                let (comm, sizes) = rest.rsplit_once(") total-vm:").expect("kernel OOM line shape");
                let kb = |field: &str| -> u64 {
                    let at = line.find(field).unwrap_or_else(|| panic!("{field} in {line}")) + field.len();
                    line[at..].chars().take_while(char::is_ascii_digit).collect::<String>().parse().expect("kB")
                };
                let total_vm_kb =
                    sizes.chars().take_while(char::is_ascii_digit).collect::<String>().parse().expect("kB");
                return Some(KernelKill {
                    comm: comm.to_string(),
                    total_vm_kb,
                    anon_rss_kb: kb("anon-rss:"),
                    file_rss_kb: kb("file-rss:"),
                    shmem_rss_kb: kb("shmem-rss:"),
                });
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
