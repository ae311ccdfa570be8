//! Load generators that make the kernel hooks fire. Every one is bounded (by a count and a
//! deadline) and every packet stays on 127.0.0.1.
//!
//! - refused connects: a socket bound to a port but not listening answers SYNs with RST,
//!   and holding it keeps the port closed and ours for the whole run;
//! - loopback request/response traffic (tcp_probe fires on received segments);
//! - resets of established connections (SO_LINGER 0 on the server side);
//! - SYN retransmits: connects to a listener whose accept queue is full are dropped, so
//!   the client's SYN timer retransmits (tcp_retransmit_skb) without any firewall rule;
//! - process exits, normal and abnormal;
//! - one OOM kill of a helper process in a private memory cgroup (oom:mark_victim).

use std::io::{Read, Write};
use std::mem::size_of;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn sockaddr(port: u16) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from(Ipv4Addr::LOCALHOST).to_be() },
        sin_zero: [0; 8],
    }
}

fn tcp_socket(flags: i32) -> std::io::Result<OwnedFd> {
    // SAFETY: plain syscall; the fd is owned at once.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC | flags, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Binds `fd` to 127.0.0.1:0 and returns the port the kernel chose.
fn bind_any_port(fd: &OwnedFd) -> std::io::Result<u16> {
    let addr = sockaddr(0);
    // SAFETY: addr and its length describe a valid sockaddr_in.
    let rc = unsafe {
        libc::bind(fd.as_raw_fd(), (&addr as *const libc::sockaddr_in).cast(), size_of::<libc::sockaddr_in>() as u32)
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut out = sockaddr(0);
    let mut len = size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: out/len describe a writable sockaddr_in.
    let rc = unsafe { libc::getsockname(fd.as_raw_fd(), (&mut out as *mut libc::sockaddr_in).cast(), &mut len) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(u16::from_be(out.sin_port))
}

/// A 127.0.0.1 port that refuses every connect for as long as this value lives.
pub struct ClosedPort {
    _socket: OwnedFd,
    pub port: u16,
}

impl ClosedPort {
    pub fn reserve() -> std::io::Result<Self> {
        let socket = tcp_socket(0)?;
        let port = bind_any_port(&socket)?;
        Ok(Self { _socket: socket, port })
    }
}

/// Outcome of a connect flood.
#[derive(Debug, Default, Clone, Copy)]
pub struct Flood {
    /// Connects that failed with ECONNREFUSED (each one is a refused-connect fact).
    pub refused: u64,
    /// Connects that succeeded (should be 0: the port is not listening).
    pub connected: u64,
    /// Connects that failed otherwise, or sockets that could not be made.
    pub other_errors: u64,
    pub elapsed: Duration,
    /// CPU time (user + system, CLOCK_THREAD_CPUTIME_ID) of the sender threads, summed: what
    /// the connects cost the generator, including the kernel work done in its context (the
    /// loopback RST is processed inside connect(), and with it every hook's run).
    pub cpu_ns: u64,
}

/// CPU time the calling thread has used, in ns (0 if the clock cannot be read).
pub fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid clock id and a valid out-pointer.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } != 0 {
        return 0;
    }
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

impl Flood {
    pub fn rate(&self) -> f64 {
        self.refused as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Blocking connects to 127.0.0.1:`port` from `threads` threads until `duration` has passed
/// or each thread made `max_per_thread` attempts. A blocking connect to a refusing loopback
/// port returns ECONNREFUSED within the call (the RST is processed before it returns), so
/// every counted refusal is one complete SYN_SENT → CLOSE transition the agent must report.
pub fn refused_flood(port: u16, threads: usize, duration: Duration, max_per_thread: u64) -> Flood {
    flood_threads(port, threads, duration, max_per_thread, None).0
}

/// Like [`refused_flood`], and also each thread's CPU per attempt over every `window`
/// consecutive attempts (in ns; a last, shorter window is left out): the host's interference
/// comes and goes within a round, and windows show the stretches it spared.
pub fn refused_flood_windows(port: u16, threads: usize, duration: Duration, window: u64) -> (Flood, Vec<f64>) {
    flood_threads(port, threads, duration, u64::MAX, Some(window.max(1)))
}

fn flood_threads(
    port: u16,
    threads: usize,
    duration: Duration,
    max_per_thread: u64,
    window: Option<u64>,
) -> (Flood, Vec<f64>) {
    let start = Instant::now();
    let deadline = start + duration;
    let handles: Vec<_> = (0..threads.max(1))
        .map(|_| {
            std::thread::spawn(move || {
                let addr = sockaddr(port);
                let mut f = Flood::default();
                let mut windows = Vec::new();
                let cpu_start = thread_cpu_ns();
                let mut window_start = cpu_start;
                let mut attempts = 0u64;
                while attempts < max_per_thread {
                    if let Some(window) = window.filter(|w| attempts > 0 && attempts.is_multiple_of(*w)) {
                        let now = thread_cpu_ns();
                        windows.push(now.saturating_sub(window_start) as f64 / window as f64);
                        window_start = now;
                    }
                    // Reading the clock every 64 connects keeps it off the profile.
                    if attempts.is_multiple_of(64) && Instant::now() >= deadline {
                        break;
                    }
                    attempts += 1;
                    let Ok(fd) = tcp_socket(0) else {
                        f.other_errors += 1;
                        continue;
                    };
                    // SAFETY: addr and its length describe a valid sockaddr_in.
                    let rc = unsafe {
                        libc::connect(
                            fd.as_raw_fd(),
                            (&addr as *const libc::sockaddr_in).cast(),
                            size_of::<libc::sockaddr_in>() as u32,
                        )
                    };
                    if rc == 0 {
                        f.connected += 1;
                    } else if std::io::Error::last_os_error().raw_os_error() == Some(libc::ECONNREFUSED) {
                        f.refused += 1;
                    } else {
                        f.other_errors += 1;
                    }
                }
                f.cpu_ns = thread_cpu_ns().saturating_sub(cpu_start);
                (f, windows)
            })
        })
        .collect();
    let mut total = Flood::default();
    let mut all_windows = Vec::new();
    for h in handles {
        if let Ok((f, windows)) = h.join() {
            total.refused += f.refused;
            total.connected += f.connected;
            total.other_errors += f.other_errors;
            total.cpu_ns += f.cpu_ns;
            all_windows.extend(windows);
        }
    }
    total.elapsed = start.elapsed();
    (total, all_windows)
}

/// Request/response rounds of 64 bytes over one loopback connection. Returns the rounds made.
pub fn ping_pong(rounds: u64, deadline: Duration) -> std::io::Result<u64> {
    let listener = TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0))?;
    let addr = listener.local_addr()?;
    let echo = std::thread::spawn(move || -> std::io::Result<()> {
        let (mut s, _) = listener.accept()?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut buf = [0u8; 64];
        // Ends when the client closes (read_exact fails at EOF) or goes silent for 5 s.
        while s.read_exact(&mut buf).is_ok() {
            s.write_all(&buf)?;
        }
        Ok(())
    });
    let mut client = TcpStream::connect(addr)?;
    client.set_nodelay(true)?;
    client.set_read_timeout(Some(Duration::from_secs(5)))?;
    let end = Instant::now() + deadline;
    let mut buf = [7u8; 64];
    let mut done = 0;
    while done < rounds && Instant::now() < end {
        client.write_all(&buf)?;
        client.read_exact(&mut buf)?;
        done += 1;
    }
    drop(client);
    let _ = echo.join();
    Ok(done)
}

fn set_linger_zero(fd: i32) -> std::io::Result<()> {
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: a valid linger struct and its length.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            size_of::<libc::linger>() as u32,
        )
    };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Established loopback connections that the server aborts with an RST. Returns how many.
pub fn resets(count: u64, deadline: Duration) -> std::io::Result<u64> {
    let listener = TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0))?;
    let addr = listener.local_addr()?;
    let end = Instant::now() + deadline;
    let mut done = 0;
    while done < count && Instant::now() < end {
        let mut client = TcpStream::connect(addr)?;
        let (server, _) = listener.accept()?;
        set_linger_zero(server.as_raw_fd())?;
        drop(server); // close with linger 0 sends RST
        client.set_read_timeout(Some(Duration::from_secs(2)))?;
        let mut b = [0u8; 1];
        let _ = client.read(&mut b); // ECONNRESET once the RST is in
        done += 1;
    }
    Ok(done)
}

/// What the DNS observer's address programs see on any node, none of it to port 53 (the
/// common case): IPv6 loopback connects, accepted and closed (`cgroup/connect6`), and
/// datagrams sent with an address from unconnected UDP sockets, IPv4 and IPv6
/// (`cgroup/sendmsg4`, `sendmsg6`). Up to `count` of each; returns the connects and the
/// datagrams made. Nobody reads the datagrams: the receiver's buffer bounds them.
pub fn addressed_sends(count: u64, deadline: Duration) -> std::io::Result<(u64, u64)> {
    let end = Instant::now() + deadline;
    let listener = TcpListener::bind(SocketAddrV6::new(Ipv6Addr::LOCALHOST, 0, 0, 0))?;
    let addr = listener.local_addr()?;
    let mut connects = 0;
    while connects < count && Instant::now() < end {
        let client = TcpStream::connect(addr)?;
        let (server, _) = listener.accept()?;
        drop((client, server));
        connects += 1;
    }
    let mut datagrams = 0;
    for local in ["127.0.0.1:0", "[::1]:0"] {
        let receiver = UdpSocket::bind(local)?;
        let sender = UdpSocket::bind(local)?;
        let to = receiver.local_addr()?;
        for _ in 0..count {
            if Instant::now() >= end {
                break;
            }
            sender.send_to(b"tapio-bench", to)?;
            datagrams += 1;
        }
    }
    Ok((connects, datagrams))
}

/// Connects to a listener whose accept queue is full: their SYNs are dropped and the
/// kernel retransmits them (about 1 s, then 3 s after the connect). Holds `sockets`
/// such connects for `hold`, then closes them all. Returns the connects left pending.
pub fn syn_retransmits(sockets: usize, hold: Duration) -> std::io::Result<usize> {
    let listener = tcp_socket(0)?;
    let port = bind_any_port(&listener)?;
    // Backlog 0: one connection fills the accept queue (it is never accepted).
    // SAFETY: plain syscall on our socket.
    if unsafe { libc::listen(listener.as_raw_fd(), 0) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let filler = TcpStream::connect(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port))?;
    let addr = sockaddr(port);
    let mut pending = Vec::with_capacity(sockets);
    for _ in 0..sockets {
        let fd = tcp_socket(libc::SOCK_NONBLOCK)?;
        // SAFETY: addr and its length describe a valid sockaddr_in.
        let rc = unsafe {
            libc::connect(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_in).cast(),
                size_of::<libc::sockaddr_in>() as u32,
            )
        };
        if rc < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINPROGRESS) {
            pending.push(fd);
        }
    }
    let n = pending.len();
    std::thread::sleep(hold);
    drop(pending);
    drop(filler);
    Ok(n)
}

/// Runs `ok` processes that exit 0 and `failing` that exit 3. Returns processes run.
pub fn process_exits(ok: u32, failing: u32) -> u32 {
    let mut ran = 0;
    for i in 0..ok + failing {
        let script = if i < ok { "exit 0" } else { "exit 3" };
        if std::process::Command::new("/bin/sh").args(["-c", script]).status().is_ok() {
            ran += 1;
        }
    }
    ran
}

/// The length of each churned cgroup's path from its hierarchy's root: a container's under
/// the systemd driver, `/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid
/// with underscores>.slice/cri-containerd-<64 hex>.scope`. The hook copies the path, and its
/// record's size depends on the path's length.
pub const CHURN_PATH_BYTES: usize = 191;

/// The name of churned cgroup `i` of `base`: padded so that its path (a `/` and the name)
/// is [`CHURN_PATH_BYTES`] long, as a container's is.
fn churn_name(base: &str, i: u32) -> String {
    let mut name = format!("{base}-{i:05}-");
    while name.len() + 1 < CHURN_PATH_BYTES {
        name.push('k');
    }
    name
}

/// Creates and removes `count` empty cgroups, each with a path as long as a Kubernetes
/// container's, in the first cgroup hierarchy (cgroup2 first) that lets this process make
/// one. Returns the cgroups made and where.
pub fn cgroup_churn(count: u32) -> Result<(u32, PathBuf), String> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").map_err(|e| format!("reading mounts: {e}"))?;
    let mut roots: Vec<(bool, PathBuf)> = mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (dir, fstype) = (fields.nth(1)?, fields.next()?);
            matches!(fstype, "cgroup2" | "cgroup").then(|| (fstype != "cgroup2", PathBuf::from(dir)))
        })
        .collect();
    roots.sort();
    let base = format!("tapio-bench-churn-{}", std::process::id());
    for (_, root) in roots {
        let mut made = 0;
        for i in 0..count {
            let dir = root.join(churn_name(&base, i));
            if std::fs::create_dir(&dir).is_err() {
                break;
            }
            made += 1;
            if let Err(e) = std::fs::remove_dir(&dir) {
                return Err(format!("removing {}: {e}", dir.display()));
            }
        }
        if made > 0 {
            return Ok((made, root));
        }
    }
    Err("no cgroup hierarchy accepted a new cgroup".into())
}

/// A private memory cgroup (v1 memory controller, or cgroup2 with memory enabled), removed
/// when dropped.
struct MemCgroup {
    dir: PathBuf,
    procs: PathBuf,
}

impl MemCgroup {
    fn create(limit_bytes: u64) -> Result<Self, String> {
        let name = format!("tapio-bench-{}", std::process::id());
        let v1 = Path::new("/sys/fs/cgroup/memory");
        let (dir, limit_file) = if v1.join("memory.limit_in_bytes").exists() {
            (v1.join(&name), "memory.limit_in_bytes")
        } else {
            let root = Path::new("/sys/fs/cgroup");
            let enabled = std::fs::read_to_string(root.join("cgroup.subtree_control")).unwrap_or_default();
            if !enabled.split_whitespace().any(|c| c == "memory") {
                return Err("no memory cgroup controller (neither v1 nor enabled on cgroup2)".into());
            }
            (root.join(&name), "memory.max")
        };
        std::fs::create_dir(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let cg = MemCgroup { procs: dir.join("cgroup.procs"), dir };
        std::fs::write(cg.dir.join(limit_file), limit_bytes.to_string())
            .map_err(|e| format!("setting {limit_file}: {e}"))?;
        Ok(cg)
    }
}

impl Drop for MemCgroup {
    fn drop(&mut self) {
        // The killed helper may take a moment to leave the group.
        for _ in 0..50 {
            if std::fs::remove_dir(&self.dir).is_ok() || !self.dir.exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!("tapio-bench: could not remove {}", self.dir.display());
    }
}

/// Makes one OOM kill: runs this benchmark's `__hog` helper inside a 32 MiB memory cgroup.
/// Returns true when the helper died of SIGKILL.
pub fn oom_kill() -> Result<bool, String> {
    let cg = MemCgroup::create(32 << 20)?;
    let exe = std::env::current_exe().map_err(|e| format!("locating this executable: {e}"))?;
    let status = std::process::Command::new(exe)
        .arg("__hog")
        .arg(&cg.procs)
        .status()
        .map_err(|e| format!("running the OOM helper: {e}"))?;
    use std::os::unix::process::ExitStatusExt;
    Ok(status.signal() == Some(libc::SIGKILL))
}

/// The OOM helper: joins the cgroup whose `cgroup.procs` is `procs`, then touches up to
/// 256 MiB. Exits 0 if it was not killed, 2 if it could not join.
pub fn hog(procs: &Path) -> i32 {
    if std::fs::write(procs, std::process::id().to_string()).is_err() {
        return 2;
    }
    let mut held: Vec<Vec<u8>> = Vec::new();
    for i in 0..256u32 {
        held.push(vec![(i % 251) as u8 + 1; 1 << 20]);
        std::hint::black_box(&held);
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addressed_sends_make_what_they_count() {
        assert_eq!(addressed_sends(20, Duration::from_secs(10)).unwrap(), (20, 40));
    }

    #[test]
    fn churned_cgroup_paths_are_as_long_as_a_containers() {
        let base = format!("tapio-bench-churn-{}", u32::MAX);
        for i in [0, 7, 99_999] {
            let name = churn_name(&base, i);
            assert_eq!(1 + name.len(), CHURN_PATH_BYTES, "{name}");
            assert!(name.starts_with(&format!("{base}-{i:05}-")), "{name}");
        }
        assert_ne!(churn_name(&base, 1), churn_name(&base, 2));
    }

    #[test]
    fn closed_port_refuses_and_flood_is_bounded() {
        let port = ClosedPort::reserve().unwrap();
        let f = refused_flood(port.port, 2, Duration::from_secs(5), 50);
        assert_eq!(f.refused, 100, "{f:?}");
        assert_eq!(f.connected + f.other_errors, 0);
    }

    #[test]
    fn a_windowed_flood_measures_every_whole_window_it_made() {
        let port = ClosedPort::reserve().unwrap();
        // 2 s: the deadline starts before the threads do, and a loaded machine may start
        // one late.
        let (f, windows) = refused_flood_windows(port.port, 2, Duration::from_secs(2), 128);
        assert!(f.refused >= 128, "{f:?}");
        assert_eq!(f.connected + f.other_errors, 0);
        // The deadline is checked every 64 attempts, so each thread stops on a multiple of
        // 64: every window of 128 it completed is counted, and at most half of one is not.
        let whole = windows.len() as u64 * 128;
        assert!(whole <= f.refused && f.refused - whole <= 2 * 64, "{} windows, {f:?}", windows.len());
        assert!(windows.iter().all(|ns| *ns > 0.0), "{windows:?}");
    }

    #[test]
    fn ping_pong_and_resets_complete() {
        assert_eq!(ping_pong(100, Duration::from_secs(10)).unwrap(), 100);
        assert_eq!(resets(5, Duration::from_secs(10)).unwrap(), 5);
    }
}
