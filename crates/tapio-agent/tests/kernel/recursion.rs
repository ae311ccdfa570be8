//! The kernel's recursion misses of the agent's programs (runs it skipped because the same
//! program was already running on that CPU) reach the agent's counters: made to happen for
//! real, and checked against what bpftool reads from the kernel.

use crate::support::agent::{observer_status, Launch, Stdout, NETWORK_ONLY};
use crate::support::netns::NetnsPair;
use crate::support::{kernel_test, run};
use aya::util::KernelVersion;
use serde_json::Value;
use std::collections::VecDeque;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The network observer's programs on a kernel with compare-and-swap (5.12+, as the
/// recursion misses are), by name.
fn network_programs() -> Vec<&'static str> {
    use tapio_bpf::network::{BTF_TRACEPOINTS, TRACEPOINTS};
    BTF_TRACEPOINTS.iter().map(|&(p, _)| p).chain(TRACEPOINTS.iter().map(|&(p, _, _)| p)).collect()
}

/// The recursion misses bpftool reads for the newest loaded program called `name` (kernel
/// tests run one agent at a time, and bpftool here cannot name a program's process);
/// bpftool leaves the field out while it is zero.
fn bpftool_misses(name: &str) -> u64 {
    let progs: Value = serde_json::from_str(&run(&["bpftool", "-j", "prog", "show", "name", name]))
        .unwrap_or_else(|e| panic!("bpftool prog show name {name}: {e}"));
    let progs = match progs {
        Value::Array(list) => list,
        one => vec![one],
    };
    let ours = progs.iter().max_by_key(|p| p["id"].as_u64()).unwrap_or_else(|| panic!("no {name} program loaded"));
    ours.get("recursion_misses").map_or(0, |m| m.as_u64().unwrap_or_else(|| panic!("recursion_misses: {m}")))
}

fn bpftool_misses_of(programs: &[&str]) -> u64 {
    programs.iter().map(|p| bpftool_misses(p)).sum()
}

/// Pins the calling thread to CPU 0.
fn pin_to_cpu0() {
    // SAFETY: a zeroed cpu_set_t is the empty set; CPU_SET writes inside it.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    assert_eq!(rc, 0, "sched_setaffinity: {}", std::io::Error::last_os_error());
}

/// Sockets of the flood kept open at once: more than it opens while one lives (~3 s, its
/// SYN timeouts), so that its sockets are closed by their timers.
const OPEN: usize = 8000;

/// Non-blocking connects to `dst`, whose SYNs are dropped, from the calling thread pinned to
/// CPU 0, until `stop`: their SYN timers fire on that CPU, in softirq, and the last one
/// closes its socket (a state change). Returns the number of connects.
fn connect_flood(dst: Ipv4Addr, port: u16, stop: &AtomicBool) -> usize {
    pin_to_cpu0();
    let addr = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(dst.octets()) },
        sin_zero: [0; 8],
    };
    let mut open: VecDeque<OwnedFd> = VecDeque::with_capacity(OPEN + 64);
    let mut connects = 0;
    while !stop.load(Ordering::Relaxed) {
        for _ in 0..16 {
            let fd = tcp_socket();
            // SAFETY: `addr` is a sockaddr_in of the length given.
            let rc = unsafe {
                libc::connect(
                    fd.as_raw_fd(),
                    (&addr as *const libc::sockaddr_in).cast(),
                    std::mem::size_of::<libc::sockaddr_in>() as u32,
                )
            };
            let e = std::io::Error::last_os_error();
            assert!(rc < 0 && e.raw_os_error() == Some(libc::EINPROGRESS), "non-blocking connect: {rc} {e}");
            open.push_back(fd);
            connects += 1;
        }
        while open.len() > OPEN {
            open.pop_front();
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    connects
}

/// A new non-blocking TCP socket.
fn tcp_socket() -> OwnedFd {
    // SAFETY: socket(2) with constant arguments.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_NONBLOCK, 0) };
    assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
    // SAFETY: a descriptor just returned to us and owned nowhere else.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Keeps CPU 0 busy running the network observer's state-change program in process
/// context, until `stop`: one socket made to listen (CLOSE → LISTEN) and shut down
/// (LISTEN → CLOSE) over and over. A softirq that interrupts one of those runs and changes
/// a socket's state finds the program already running on the CPU. Returns the rounds.
fn listen_churn(stop: &AtomicBool) -> usize {
    pin_to_cpu0();
    let fd = tcp_socket();
    let mut rounds = 0;
    while !stop.load(Ordering::Relaxed) {
        // SAFETY: listen and shutdown on a socket we own.
        let (listened, shut) =
            unsafe { (libc::listen(fd.as_raw_fd(), 1), libc::shutdown(fd.as_raw_fd(), libc::SHUT_RD)) };
        assert_eq!((listened, shut), (0, 0), "listen/shutdown: {}", std::io::Error::last_os_error());
        rounds += 1;
    }
    rounds
}

#[test]
#[ignore = "needs root"]
fn the_kernels_recursion_misses_of_an_observers_programs_are_its_counter() {
    let _turn = kernel_test("recursion_misses");
    let reported = KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(5, 12, 0));
    let pair = NetnsPair::new("rm", 51);
    pair.nft_input(&pair.b, "tcp dport 7051 drop");
    // One SYN retransmit: each socket's timers fire twice within ~3 s, the last closing it.
    pair.sysctl(&pair.a, "net.ipv4.tcp_syn_retries=1");
    let agent = Launch::with_config(&format!("[sinks]\nstdout = true\n{NETWORK_ONLY}"))
        .stdout(Stdout::To(Stdio::null()))
        .start();
    let programs = network_programs();

    let mut misses = 0;
    if reported {
        let stop = Arc::new(AtomicBool::new(false));
        let dst: Ipv4Addr = pair.b_addr.parse().expect("b's address");
        let flood = pair.spawn_in(&pair.a, {
            let stop = Arc::clone(&stop);
            move || connect_flood(dst, 7051, &stop)
        });
        let churn = pair.spawn_in(&pair.a, {
            let stop = Arc::clone(&stop);
            move || listen_churn(&stop)
        });
        let deadline = Instant::now() + Duration::from_secs(40);
        while bpftool_misses_of(&programs) == 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_secs(1));
        }
        // A few seconds more, for a count the agent has read more than once.
        std::thread::sleep(Duration::from_secs(3));
        stop.store(true, Ordering::Relaxed);
        let connects = flood.join().expect("flood thread");
        let rounds = churn.join().expect("churn thread");
        // Its sockets are closed: wait until the kernel's counts stand still.
        misses = bpftool_misses_of(&programs);
        let settle = Instant::now() + Duration::from_secs(15);
        loop {
            std::thread::sleep(Duration::from_secs(1));
            let now = bpftool_misses_of(&programs);
            if now == misses || Instant::now() > settle {
                misses = now;
                break;
            }
            misses = now;
        }
        assert!(
            misses > 0,
            "the kernel skipped no run of the network programs in {connects} connects timing out on CPU 0 \
             while {rounds} listens and shutdowns ran there (a kernel that runs a nested raw tracepoint program \
             instead of skipping it cannot be tested this way)"
        );
    }
    let run = agent.stop();

    if !reported {
        let counter = run.counters["kernel"].get("network.recursion_misses");
        assert_eq!(counter, None, "a kernel before 5.12 reports no recursion misses: none may be claimed");
        return;
    }
    let attached: Vec<&str> = observer_status(&run.status, "network")["programs"]
        .as_array()
        .expect("network programs")
        .iter()
        .filter(|p| p["attached"] == true)
        .filter_map(|p| p["program"].as_str())
        .collect();
    assert_eq!(attached, programs, "bpftool was asked about the programs the agent attached");
    // The agent's last read comes after it detached its programs; the count stood still before.
    assert_eq!(run.counter(&["kernel", "network.recursion_misses"]), misses, "agent vs bpftool");
    assert!(run.counter(&["not_judged_total"]) >= misses, "recursion misses reach the heartbeat's not_judged_total");
}
