//! Shared harness of the agent's real-kernel tests (the `kernel` test binary): runs the real
//! agent binary, makes kernel facts happen, and reads back the evidence and the final loss
//! counters. One module per kind of scaffolding, each written once:
//!
//! - [`agent`]: starting the agent, reading what it writes (evidence, start-up status, final
//!   counters) and stopping it;
//! - [`cgroup`]: v1 memory, freezer and blkio groups and Kubernetes-shaped container groups;
//! - [`kmsg`]: the kernel log (`/dev/kmsg`) from a moment on;
//! - [`block`]: loop devices, mounts, O_DIRECT I/O, tracefs counting;
//! - [`netns`]: network namespace pairs joined by a veth, nftables, per-namespace counters;
//! - [`dns`]: the DNS laboratory (real servers and clients in namespaces of their own);
//! - [`controller`]: the real tapio-controller on loopback and a small HTTP GET;
//! - [`tmp`]: names unique to this test process, and scratch directories.
//!
//! Kernel tests need root. Each carries `#[ignore = "needs root"]`, so a plain `cargo test`
//! lists them as ignored (never "ok"); `scripts/test` runs them as root with
//! `--include-ignored`. Asked to run without root, they fail.
//!
//! Every kernel test begins with `let _turn = kernel_test("name");`: the turn serialises the
//! tests of this binary (see [`KernelTurn`]), and the agent refuses to start without it.

#![allow(dead_code)]

pub mod agent;
pub mod block;
pub mod cgroup;
pub mod controller;
pub mod dns;
pub mod kmsg;
pub mod netns;
pub mod tmp;

pub use agent::{Agent, Finished};

use serde_json::Value;
use std::cell::Cell;
use std::process::Command;
use std::sync::{Mutex, MutexGuard};

/// Every agent sees every kernel fact on the machine, and the scenarios change machine-wide
/// state (cgroups, block tracepoint links, ring-buffer floods): two at once would disturb
/// each other (a flood in one fills the other's ring buffer; one agent attaching to the
/// block tracepoints makes the kernel skip invocations of another's). Tests in this binary
/// run on several threads; this lock runs them one at a time. Other processes (another
/// crate's kernel tests, another checkout) are kept apart by `scripts/test`'s
/// `flock /tmp/tapio-kernel-tests.lock`; this lock is in-process so that it cannot deadlock
/// against that one.
static ONE_KERNEL_TEST_AT_A_TIME: Mutex<()> = Mutex::new(());

thread_local! {
    /// Whether this thread holds the kernel-test turn: the agent checks it before it starts.
    static HOLDS_TURN: Cell<bool> = const { Cell::new(false) };
}

/// A kernel test's turn: while it lives, no other kernel test of this binary runs. Bind it
/// for the whole test (`let _turn = …`); it is released when the test ends, also by panic.
#[must_use = "the turn serialises the test only while it is held: bind it with `let _turn = …`"]
pub struct KernelTurn {
    _guard: MutexGuard<'static, ()>,
}

impl Drop for KernelTurn {
    fn drop(&mut self) {
        HOLDS_TURN.with(|held| held.set(false));
    }
}

/// Starts a kernel test: checks that it can run (it needs root) and waits for its turn. A
/// test that was asked to run (`--include-ignored`) and cannot fails here, so a run without
/// root never reports a kernel fact as checked.
pub fn kernel_test(name: &str) -> KernelTurn {
    // SAFETY: geteuid has no memory effects.
    let euid = unsafe { libc::geteuid() };
    assert!(euid == 0, "{name}: needs root to load eBPF programs (euid {euid}); run the kernel tests as root");
    take_turn()
}

/// Waits for the kernel-test turn.
fn take_turn() -> KernelTurn {
    // A test that panicked while holding the lock poisons it; the next test still runs.
    let guard = ONE_KERNEL_TEST_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    HOLDS_TURN.with(|held| held.set(true));
    KernelTurn { _guard: guard }
}

/// Fails the test unless the calling thread holds a kernel-test turn: what starts an agent
/// or loads eBPF calls this, so that no kernel work escapes the lock.
pub fn assert_turn(what: &str) {
    assert!(
        HOLDS_TURN.with(Cell::get),
        "{what} outside a kernel test's turn: begin the test with `let _turn = support::kernel_test(\"…\");`"
    );
}

/// The final counter at `path` in a counters snapshot; panics, naming the path, when it is
/// absent or not a number: a renamed counter must not pass as `== 0`.
pub fn counter_at(counters: &Value, path: &[&str]) -> u64 {
    let mut v = counters;
    for key in path {
        v = v.get(*key).unwrap_or_else(|| panic!("no counter {path:?} in {counters}"));
    }
    v.as_u64().unwrap_or_else(|| panic!("counter {path:?} is not a number: {v}"))
}

/// Runs `cmd`: its stdout, or what went wrong (with its output).
pub fn try_run(cmd: &[&str]) -> Result<String, String> {
    let out = Command::new(cmd[0]).args(&cmd[1..]).output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `cmd` and panics with its output if it fails.
pub fn run(cmd: &[&str]) -> String {
    try_run(cmd).unwrap_or_else(|e| panic!("{e}"))
}

/// A port on 127.0.0.1 (and ::1) that nothing listens on: bound then released.
pub fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    drop(l);
    port
}

/// Connects to 127.0.0.1:`port` `n` times; each connect must be refused.
pub fn refuse(port: u16, n: usize) {
    for _ in 0..n {
        assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err(), "port {port} must refuse");
    }
}

/// This test process's pid, as events carry it.
/// The one loaded BPF map named `name` (kernel tests run one agent at a time), opened by id:
/// how a test reads or writes the running agent's kernel state.
pub fn loaded_map(name: &str) -> aya::maps::MapData {
    let ids: Vec<u32> = aya::maps::loaded_maps()
        .filter_map(Result::ok)
        .filter(|m| m.name_as_str() == Some(name))
        .map(|m| m.id())
        .collect();
    assert_eq!(ids.len(), 1, "exactly one {name} map loaded: ids {ids:?}");
    aya::maps::MapData::from_id(ids[0]).unwrap_or_else(|e| panic!("open the {name} map: {e}"))
}

pub fn our_pid() -> u64 {
    u64::from(std::process::id())
}

/// The calling thread's id.
pub fn gettid() -> u32 {
    // SAFETY: gettid has no side effects.
    unsafe { libc::gettid() as u32 }
}

/// The turn itself (no root needed): while one thread holds it, no other thread can take
/// it or start an agent, and once it is released the next one can.
#[test]
fn the_kernel_test_turn_is_held_by_one_thread_at_a_time() {
    let turn = take_turn();
    assert_turn("the holder");
    let other = std::thread::spawn(|| {
        let busy = matches!(ONE_KERNEL_TEST_AT_A_TIME.try_lock(), Err(std::sync::TryLockError::WouldBlock));
        (busy, HOLDS_TURN.with(Cell::get))
    });
    assert_eq!(other.join().expect("other thread"), (true, false), "taken while held, and not held by another thread");
    drop(turn);
    assert!(!HOLDS_TURN.with(Cell::get), "released with the turn");
    let next = std::thread::spawn(|| {
        let _turn = take_turn();
        HOLDS_TURN.with(Cell::get)
    });
    assert!(next.join().expect("next thread"), "the next test gets the turn once it is released");
}

/// An agent started without the turn fails the test before anything is spawned.
#[test]
#[should_panic(expected = "starting the agent outside a kernel test's turn")]
fn an_agent_cannot_start_outside_a_kernel_tests_turn() {
    let _ = Agent::start("");
}
