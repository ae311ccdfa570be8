//! The kernel's own account of an OOM kill, read from /dev/kmsg: the reference that the
//! agent's oom_kill facts are checked against.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::time::{Duration, Instant};

/// The kernel's "Killed process <pid> (<comm>) total-vm:…kB, anon-rss:…kB, …" line.
#[derive(Debug)]
pub struct KernelKill {
    pub comm: String,
    pub anon_rss_kb: u64,
    pub total_vm_kb: u64,
}

pub struct Kmsg {
    file: File,
    messages: Vec<String>,
}

impl Kmsg {
    /// The kernel log from now on (older records are skipped).
    pub fn from_now() -> Result<Kmsg, String> {
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open("/dev/kmsg")
            .map_err(|e| format!("open /dev/kmsg: {e}"))?;
        // SAFETY: seeking a descriptor we own; SEEK_END on /dev/kmsg skips existing records.
        if unsafe { libc::lseek(file.as_raw_fd(), 0, libc::SEEK_END) } < 0 {
            return Err(format!("seek /dev/kmsg: {}", std::io::Error::last_os_error()));
        }
        Ok(Kmsg { file, messages: Vec::new() })
    }

    /// Reads every new record; each read() returns one ("prefix;message\n continuation").
    fn read_new(&mut self) {
        let mut buf = vec![0u8; 8192];
        // Bounded: a flood of records cannot keep this loop going forever.
        for _ in 0..100_000 {
            match self.file.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => {
                    let record = String::from_utf8_lossy(&buf[..n]);
                    if let Some((_, message)) = record.split_once(';') {
                        self.messages.push(message.lines().next().unwrap_or("").to_string());
                    }
                }
                // Overwritten before we read it: the next read goes on from the oldest left.
                Err(e) if e.raw_os_error() == Some(libc::EPIPE) => continue,
                Err(_) => return,
            }
        }
    }

    /// Waits up to `timeout` for the kernel's kill line about `pid`.
    pub fn killed(&mut self, pid: u32, timeout: Duration) -> Option<KernelKill> {
        let needle = format!("Killed process {pid} (");
        let deadline = Instant::now() + timeout;
        loop {
            self.read_new();
            if let Some(kill) = self.messages.iter().find_map(|m| parse_kill(m, &needle)) {
                return Some(kill);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn parse_kill(message: &str, needle: &str) -> Option<KernelKill> {
    let rest = &message[message.find(needle)? + needle.len()..];
    // The comm may itself contain ") ", so the sizes start at the last ") total-vm:".
    let (comm, sizes) = rest.rsplit_once(") total-vm:")?;
    let number_after = |key: &str| -> Option<u64> {
        let from = if key.is_empty() { sizes } else { &sizes[sizes.find(key)? + key.len()..] };
        from.chars().take_while(char::is_ascii_digit).collect::<String>().parse().ok()
    };
    Some(KernelKill { comm: comm.to_string(), total_vm_kb: number_after("")?, anon_rss_kb: number_after("anon-rss:")? })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_kernels_kill_line() {
        let line = "Memory cgroup out of memory: Killed process 212 (tapio-kmatrix) total-vm:69712kB, \
                    anon-rss:65540kB, file-rss:1228kB, shmem-rss:0kB, UID:0 pgtables:180kB oom_score_adj:0";
        let k = parse_kill(line, "Killed process 212 (").expect("parsed");
        assert_eq!((k.comm.as_str(), k.total_vm_kb, k.anon_rss_kb), ("tapio-kmatrix", 69712, 65540));
        assert!(parse_kill(line, "Killed process 21 (").is_none(), "another pid is not this kill");
    }

    #[test]
    fn a_comm_with_a_parenthesis_is_kept_whole() {
        let line = "Killed process 7 (a) b) total-vm:10kB, anon-rss:4kB, file-rss:0kB";
        let k = parse_kill(line, "Killed process 7 (").expect("parsed");
        assert_eq!(k.comm, "a) b");
        assert_eq!(k.anon_rss_kb, 4);
    }
}
