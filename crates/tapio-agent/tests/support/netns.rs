//! Throwaway network namespaces joined by a veth pair, for tests that need real packets to
//! be dropped, rejected or delayed. Traffic stays inside them (10.99.N.0/24 exists only
//! there); everything is removed on drop, also when the test fails.

use super::run;
use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsRawFd;

pub struct NetnsPair {
    pub a: String,
    pub b: String,
    pub a_dev: String,
    pub b_dev: String,
    pub a_addr: String,
    pub b_addr: String,
}

impl NetnsPair {
    /// `tag` (a few letters) keeps names unique per test; `subnet` picks 10.99.<subnet>.0/24.
    pub fn new(tag: &str, subnet: u8) -> Self {
        let id = std::process::id() % 100_000;
        let pair = NetnsPair {
            a: format!("tp{tag}a{id}"),
            b: format!("tp{tag}b{id}"),
            a_dev: format!("tp{tag}va"),
            b_dev: format!("tp{tag}vb"),
            a_addr: format!("10.99.{subnet}.1"),
            b_addr: format!("10.99.{subnet}.2"),
        };
        pair.cleanup();
        run(&["ip", "netns", "add", &pair.a]);
        run(&["ip", "netns", "add", &pair.b]);
        run(&["ip", "link", "add", &pair.a_dev, "type", "veth", "peer", "name", &pair.b_dev]);
        run(&["ip", "link", "set", &pair.a_dev, "netns", &pair.a]);
        run(&["ip", "link", "set", &pair.b_dev, "netns", &pair.b]);
        run(&["ip", "-n", &pair.a, "addr", "add", &format!("{}/24", pair.a_addr), "dev", &pair.a_dev]);
        run(&["ip", "-n", &pair.b, "addr", "add", &format!("{}/24", pair.b_addr), "dev", &pair.b_dev]);
        for (ns, dev) in [(&pair.a, &pair.a_dev), (&pair.b, &pair.b_dev)] {
            run(&["ip", "-n", ns, "link", "set", dev, "up"]);
            run(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        }
        pair
    }

    fn cleanup(&self) {
        for ns in [&self.a, &self.b] {
            let _ = std::process::Command::new("ip").args(["netns", "del", ns]).output();
        }
    }

    /// Adds `rule` to an input-hook chain inside namespace `ns` (one rule per line, as the
    /// nft parser of older Debian releases wants).
    pub fn nft_input(&self, ns: &str, rule: &str) {
        self.nft(
            ns,
            &format!(
                "table inet tapio_test {{\n chain input {{\n  type filter hook input priority 0;\n  {rule}\n }}\n}}\n"
            ),
        );
    }

    /// Loads an nftables ruleset inside namespace `ns`.
    pub fn nft(&self, ns: &str, ruleset: &str) {
        let path = std::env::temp_dir().join(format!("tapio-nft-{ns}.nft"));
        std::fs::write(&path, ruleset).expect("write nft ruleset");
        run(&["ip", "netns", "exec", ns, "nft", "-f", path.to_str().expect("utf-8 path")]);
        let _ = std::fs::remove_file(path);
    }

    pub fn sysctl(&self, ns: &str, setting: &str) {
        run(&["ip", "netns", "exec", ns, "sysctl", "-q", "-w", setting]);
    }

    /// Runs `f` on a fresh thread that has joined namespace `ns` (setns affects only the
    /// calling thread, so the test's other threads stay where they are).
    pub fn spawn_in<T: Send + 'static>(
        &self,
        ns: &str,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        let path = format!("/var/run/netns/{ns}");
        std::thread::spawn(move || {
            let file = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
            // SAFETY: joining a network namespace by fd on this thread only.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
            f()
        })
    }
}

impl NetnsPair {
    /// A TCP listener on `addr` inside namespace b (bound there, usable from any thread).
    pub fn listen_in_b(&self, addr: SocketAddr) -> TcpListener {
        self.spawn_in(&self.b, move || TcpListener::bind(addr).expect("bind in b")).join().expect("bind thread")
    }
}

impl Drop for NetnsPair {
    fn drop(&mut self) {
        // Deleting the namespaces removes the veth pair and every rule and qdisc in them.
        self.cleanup();
    }
}

/// A named counter of namespace `ns`'s /proc/net/snmp or /proc/net/netstat (e.g. ("TcpExt",
/// "TCPAbortOnData")), read from inside it. A missing counter fails the test.
pub fn ns_counter(ns: &str, file: &str, group: &str, name: &str) -> u64 {
    let text = run(&["ip", "netns", "exec", ns, "cat", file]);
    let prefix = format!("{group}:");
    let mut rows = text.lines().filter(|l| l.starts_with(&prefix));
    while let (Some(names), Some(values)) = (rows.next(), rows.next()) {
        if let Some(idx) = names.split_whitespace().position(|n| n == name) {
            return values.split_whitespace().nth(idx).and_then(|v| v.parse().ok()).expect("counter value");
        }
    }
    panic!("no counter {group}:{name} in {file}")
}

/// Namespace `ns`'s TCP RetransSegs counter (/proc/net/snmp), read from inside it.
pub fn tcp_retrans_segs(ns: &str) -> u64 {
    ns_counter(ns, "/proc/net/snmp", "Tcp", "RetransSegs")
}
