//! A kernel config update is one config by construction, on the real kernel: the agent's
//! config carrier is rewritten 10,000 times while exits flow through the container object,
//! and every event must name a generation that was written and be judged by that
//! generation's own ignore list, with no event lost to an update.
//!
//! Generation g ignores exit codes of g's parity (1..=62), so a config mixing one
//! generation's number with another's list would let through an exit its own generation
//! ignores; exit code 63 is ignored by no generation, so each of those exits must be
//! exactly one event whatever was being written at the time.

use crate::support::kernel_test;
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tapio_agent::observers::{self, Hook};
use tapio_bpf::abi::{tapio_ctr_config, TAPIO_CNT_CONFIG_TORN, TAPIO_CNT_RINGBUF_FULL, TAPIO_CTR_EN_EXIT};
use tapio_bpf::container::ContainerRecord;

const WRITES: u32 = 10_000;

/// Per pid, the (wait status, generation) of each exit record.
type ExitsByPid = HashMap<u32, Vec<(u32, u32)>>;
/// The exit code no generation ignores.
const ALWAYS: i32 = 63;

/// Generation g's config: exits enabled; codes 1..=62 of g's parity ignored.
fn config(generation: u32) -> tapio_ctr_config {
    let mut c = tapio_ctr_config::default();
    c.hdr.abi_version = tapio_bpf::ABI_VERSION;
    c.hdr.generation = generation;
    c.generation_check = generation;
    c.enabled = TAPIO_CTR_EN_EXIT;
    c.ignored_exit_codes[0] =
        (1..=62u32).filter(|code| code % 2 == generation % 2).fold(0, |m, code| m | (1u64 << code));
    c
}

fn judged_right(code: i32, generation: u32) -> bool {
    code == ALWAYS || (code as u32 % 2) != generation % 2
}

/// A child that exits with `code` at once: fork + _exit, the cheapest real process exit.
fn exit_with(code: i32) -> u32 {
    // SAFETY: the child only calls _exit, which is async-signal-safe after fork.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        // SAFETY: see above.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: reaping our own child.
    let rc = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(rc, pid, "waitpid: {}", std::io::Error::last_os_error());
    assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == code, "child status {status:#x}");
    pid as u32
}

#[test]
#[ignore = "needs root"]
fn ten_thousand_config_rewrites_while_exits_flow_judge_every_event_by_one_written_config() {
    let _turn = kernel_test("config_rewrites");
    let btf = aya::Btf::from_sys_fs().expect("kernel BTF");
    let hooks = [("tapio_sched_process_exit", Hook::BtfTracePoint("sched_process_exit"))];
    let (mut loaded, mut carrier) =
        observers::load(&tapio_bpf::container::OBJECT.inflate(), Some(&btf), &hooks, config(0))
            .expect("load container object");
    assert!(loaded.programs.iter().all(|p| p.result.is_ok()), "attach: {:?}", loaded.programs);

    // Drains the ring into (pid → [(status, generation)]) until told to stop and empty.
    let done = Arc::new(AtomicBool::new(false));
    let seen: Arc<Mutex<ExitsByPid>> = Arc::default();
    let drain = {
        let (done, seen) = (Arc::clone(&done), Arc::clone(&seen));
        assert_eq!(loaded.rings.len(), 1, "the container object has one shared ring");
        let mut ring = loaded.rings.remove(0);
        std::thread::spawn(move || loop {
            let finishing = done.load(Ordering::Acquire);
            let got = tapio_agent::drain::take_records(&mut ring, usize::MAX, &mut |record| {
                match tapio_bpf::container::decode(record).expect("well-formed record") {
                    ContainerRecord::Exit(ev) => {
                        seen.lock().unwrap().entry(ev.task.pid).or_default().push((ev.exit_status, ev.hdr.generation))
                    }
                    other => panic!("only exits are enabled: {other:?}"),
                }
            });
            if finishing && got == 0 {
                return;
            }
            if got == 0 {
                std::thread::sleep(Duration::from_millis(1));
            }
        })
    };

    // Exits flow from before the first rewrite until after the last, from two threads (the
    // test-bed has two CPUs), so config reads run while the carrier is being rewritten.
    let writing = Arc::new(AtomicBool::new(true));
    let exit_threads: Vec<_> = (0..2u32)
        .map(|t| {
            let writing = Arc::clone(&writing);
            std::thread::spawn(move || {
                let mut exits = Vec::new();
                let mut n = t;
                while writing.load(Ordering::Acquire) || exits.len() < 100 {
                    // Every other exit is the always-evidence code; the others cycle 1..=62.
                    let code = if n % 2 == 0 { ALWAYS } else { 1 + (n / 2 % 62) as i32 };
                    exits.push((exit_with(code), code));
                    n += 1;
                }
                exits
            })
        })
        .collect();
    let started = Instant::now();
    for generation in 1..=WRITES {
        carrier.write(config(generation)).expect("config write");
        // A little air between writes, so the 10,000 spread over many exits.
        if generation % 8 == 0 {
            std::thread::sleep(Duration::from_micros(200));
        }
    }
    let write_time = started.elapsed();
    writing.store(false, Ordering::Release);
    let exits: Vec<(u32, i32)> = exit_threads.into_iter().flat_map(|t| t.join().expect("exit thread")).collect();
    // Every exit's record is in the ring by now (written at the exit, before its reap).
    done.store(true, Ordering::Release);
    drain.join().expect("drain thread");

    let counter = |index: u32| -> u64 { loaded.counters.get(&index, 0).expect("counter").iter().sum() };
    let (torn, full) = (counter(TAPIO_CNT_CONFIG_TORN), counter(TAPIO_CNT_RINGBUF_FULL));
    let seen = seen.lock().unwrap();
    let mut generations = BTreeSet::new();
    let (mut always, mut others) = (0, 0);
    for &(pid, code) in &exits {
        let events = seen.get(&pid).map(Vec::as_slice).unwrap_or_default();
        for &(status, generation) in events {
            assert_eq!(status, (code as u32) << 8, "pid {pid}");
            assert!(generation <= WRITES, "pid {pid}: generation {generation} was never written");
            assert!(
                judged_right(code, generation),
                "pid {pid} exited {code}, which generation {generation} ignores: judged by another config"
            );
            generations.insert(generation);
        }
        if code == ALWAYS {
            assert_eq!(events.len(), 1, "pid {pid} exited {ALWAYS} (evidence under every config): {events:?}");
            always += 1;
        } else {
            assert!(events.len() <= 1, "pid {pid}: {events:?}");
            others += events.len();
        }
    }
    eprintln!(
        "{WRITES} rewrites in {write_time:?} while {} processes exited: {always} always-evidence exits, {others} \
         other exits reported, {} distinct generations judged them; config_torn_read {torn}, ringbuf full {full}",
        exits.len(),
        generations.len()
    );
    assert_eq!(full, 0, "the ring overflowed: the accounting above would not hold");
    assert_eq!(torn, 0, "an exit was judged by no config (every copy changed under the reader)");
    // Hundreds here; the bound only proves that evidence flowed through the rewrites.
    assert!(generations.len() >= 50, "exits must have been judged by many generations: {}", generations.len());
    drop(loaded.ebpf.take());
}
