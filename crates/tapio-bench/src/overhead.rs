//! The connect-heavy overhead part: what the agent costs a workload that does nothing but
//! connect. Two threads make refused loopback connects; the figure is their own CPU time
//! per connect (CLOCK_THREAD_CPUTIME_ID, user + system: the connect's kernel work, every
//! hook's run and each record's submission happen inside connect() on loopback) with the
//! agent running against the same without it, in alternating rounds of one run so that the
//! machine's drift hits both sides alike. A third kind of round, with empty programs alone on
//! the same hooks instead of the agent ([`floor::CONNECT`]), gives the floor: what merely
//! having programs on those hooks costs the workload, which no program there could avoid. A
//! fourth, the agent with its DNS observer off, shows that observer's share (a diagnostic).
//!
//! Each thread's CPU is read every [`WINDOW`] connects, and a side's figure is the
//! [`LOW_PERCENTILE`]th percentile of all its windows over the run. The host takes this VM's
//! CPUs away in bursts that inflate a round's mean by ±15 % within seconds (steal time is
//! not charged to a thread, but the caches and memory bandwidth it shares are), and such a
//! burst only ever adds time to a window; every hook runs in every connect, so every window
//! carries the agent's whole in-context cost, and a low percentile keeps the windows the
//! host spared on both sides. Means pooled per side and the median of the sets' pairs are
//! reported beside it.
//!
//! Run-time stats stay off in these rounds (their accounting is a cost of its own); one
//! extra round with the agent and stats on gives the network hooks' cost under exactly this
//! workload.

use crate::agent::{self, Agent, Scratch};
use crate::floor;
use crate::kernel::{deltas, goal_ns, snapshot, StatsOn};
use crate::load::{self, ClosedPort, Flood};
use crate::procfs;
use crate::report::{median, thousands, Report, Verdict};
use std::path::Path;
use std::time::Duration;

/// Goal: the generator's CPU per connect with the agent, over without, in percent.
pub const GOAL_PERCENT: f64 = 5.0;
/// Round sets: one round without the agent, one with it, one with the empty programs and one
/// with the agent's DNS observer off, in an order rotated each set.
const SETS: usize = 15;
const ROUND: Duration = Duration::from_secs(1);
const THREADS: usize = 2;
/// Connects per window: about 1.5 ms of a thread's CPU here, short enough that many windows
/// fall between the host's bursts, long enough that reading the clock costs nothing.
const WINDOW: u64 = 256;
/// The percentile of a side's windows that stands for it (see the module's doc).
const LOW_PERCENTILE: f64 = 10.0;

/// One round's connects and its windows' CPU per connect.
struct Round {
    flood: Flood,
    windows: Vec<f64>,
}

/// CPU per connect of a set of rounds, in ns (pooled: total CPU over total connects).
fn per_connect(rounds: &[Flood]) -> Option<f64> {
    let connects: u64 = rounds.iter().map(|f| f.refused).sum();
    let cpu: u64 = rounds.iter().map(|f| f.cpu_ns).sum();
    (connects > 0).then(|| cpu as f64 / connects as f64)
}

/// The `percent`th percentile of windows' CPU per connect (at the sorted index at or below
/// it); `None` for no windows.
fn percentile(windows: &[f64], percent: f64) -> Option<f64> {
    let mut sorted = windows.to_vec();
    sorted.sort_by(f64::total_cmp);
    let index = ((sorted.len().saturating_sub(1)) as f64 * percent / 100.0) as usize;
    sorted.get(index).copied()
}

/// A side's figure over some of its rounds: the low percentile of all their windows.
fn side_ns<'a>(rounds: impl IntoIterator<Item = &'a Round>) -> Option<f64> {
    let windows: Vec<f64> = rounds.into_iter().flat_map(|r| r.windows.iter().copied()).collect();
    percentile(&windows, LOW_PERCENTILE)
}

/// The agent's extra cost in percent of the cost without it.
pub fn overhead_percent(without_ns: f64, with_ns: f64) -> f64 {
    (with_ns / without_ns - 1.0) * 100.0
}

fn flood(port: u16) -> Result<Round, String> {
    let (flood, windows) = load::refused_flood_windows(port, THREADS, ROUND, WINDOW);
    if flood.refused == 0 || flood.cpu_ns == 0 || windows.is_empty() {
        return Err(format!(
            "a round made {} refused connects using {} ns of CPU, in {} windows",
            flood.refused,
            flood.cpu_ns,
            windows.len()
        ));
    }
    Ok(Round { flood, windows })
}

/// The run's figures, in percent over the rounds without the agent: the agent's and the
/// empty programs' over all sets, and the agent's over the even and over the odd sets.
struct Figures {
    agent: f64,
    floor: f64,
    halves: [f64; 2],
}

/// Why a run's figures cannot judge the goal, if they cannot: empty programs on the hooks
/// cannot make a connect cheaper than no programs, nor can the agent's programs, which do
/// more on the same hooks, cost less than empty ones; and two halves of the sets, each a
/// measurement of its own, that disagree by more than the goal cannot tell the agent's cost
/// from the goal. A run whose figures say any of it has measured the machine's drift between
/// its rounds, not the agent, and its overhead would pass or miss by chance.
fn drift_exceeds_effect(figures: &Figures) -> Option<String> {
    let Figures { agent, floor, halves: [even, odd] } = *figures;
    // Each test also fails on NaN (a side or a half without windows): as unable to judge.
    let at_least = |a: f64, b: f64| a.partial_cmp(&b).is_some_and(|o| o.is_ge());
    if !at_least(floor, 0.0) {
        return Some(format!(
            "the empty programs measured {floor:+.1} %: the rounds drifted more than the programs cost"
        ));
    }
    if !at_least(agent, floor) {
        return Some(format!(
            "the agent measured {agent:+.1} %, less than the empty programs' {floor:+.1} %: the rounds drifted \
             more than the programs cost"
        ));
    }
    if !at_least(GOAL_PERCENT, (even - odd).abs()) {
        return Some(format!(
            "the even sets measured {even:+.1} % and the odd sets {odd:+.1} %, further apart than the \
             {GOAL_PERCENT} % goal: the rounds drifted more than the goal can tell"
        ));
    }
    None
}

/// One round with the agent running (started and stopped around it), and the records its
/// kernel side lost (`lost_events_total`; `None` if it logged no final counters). A record
/// that finds its ring full costs the connect almost nothing, so a round that lost records
/// would understate the agent's cost.
fn round_with_agent(binary: &Path, config: &Path, evidence: &Path, port: u16) -> Result<(Round, Option<u64>), String> {
    let agent = Agent::start(binary, config)?;
    // A moment for the agent to finish its start-up work (identity walk, first polls).
    std::thread::sleep(Duration::from_millis(300));
    let f = flood(port);
    let stopped = agent.stop()?;
    // Each round's evidence is a few hundred thousand lines: not kept.
    let _ = std::fs::remove_file(evidence);
    let lost = stopped.counters.as_ref().map(|c| agent::counter(c, "lost_events_total"));
    Ok((f?, lost))
}

/// One round with the empty programs attached in the agent's place.
fn round_with_floor(port: u16) -> Result<Round, String> {
    let attached = floor::attach(&floor::CONNECT)?;
    if let Some((name, e)) = attached.failed.first() {
        return Err(format!("the floor program {name} did not attach: {e}"));
    }
    flood(port)
}

/// What a round measures, in the order of the first set (later sets rotate it).
#[derive(Clone, Copy)]
enum Side {
    Without,
    Floor,
    Agent,
    AgentWithoutDns,
}

pub fn measure(binary: &Path, report: &mut Report) {
    if let Err(e) = run(binary, report) {
        report.not_measured("overhead", "connect-heavy CPU per connect, agent vs none", &goal(), e);
    }
}

fn goal() -> String {
    format!("<= +{GOAL_PERCENT} %")
}

fn run(binary: &Path, report: &mut Report) -> Result<(), String> {
    let scratch = Scratch::new("overhead")?;
    let evidence = scratch.0.join("evidence.jsonl");
    let config = agent::write_config(&scratch.0, &evidence)?;
    // What the DNS observer's share is: its programs are on every packet and every connect.
    let config_without_dns =
        agent::write_config_named(&scratch.0, &evidence, "agent-without-dns.toml", "\n[dns]\nenabled = false\n")?;
    let closed = ClosedPort::reserve().map_err(|e| format!("reserving a closed port: {e}"))?;
    let (mut with, mut without, mut floors, mut without_dns) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut agent_pairs, mut floor_pairs) = (Vec::new(), Vec::new());
    let mut lost_in_rounds = Vec::new();
    for set in 0..SETS {
        // Rotated order: no side always runs first (warmer caches, a rising load).
        let mut order = [Side::Without, Side::Floor, Side::Agent, Side::AgentWithoutDns];
        let sides = order.len();
        order.rotate_left(set % sides);
        let (mut w, mut wo, mut fl, mut wd) = (None, None, None, None);
        for side in order {
            match side {
                Side::Without => wo = Some(flood(closed.port)?),
                Side::Floor => fl = Some(round_with_floor(closed.port)?),
                Side::Agent => {
                    let (round, lost) = round_with_agent(binary, &config, &evidence, closed.port)?;
                    w = Some(round);
                    lost_in_rounds.push(lost);
                }
                Side::AgentWithoutDns => {
                    let (round, lost) = round_with_agent(binary, &config_without_dns, &evidence, closed.port)?;
                    wd = Some(round);
                    lost_in_rounds.push(lost);
                }
            }
        }
        let (Some(w), Some(wo), Some(fl), Some(wd)) = (w, wo, fl, wd) else {
            return Err("a set of rounds missed a side".into());
        };
        let (Some(none_ns), Some(agent_ns), Some(floor_ns)) =
            (per_connect(&[wo.flood]), per_connect(&[w.flood]), per_connect(&[fl.flood]))
        else {
            return Err("a round made no connect".into());
        };
        agent_pairs.push(overhead_percent(none_ns, agent_ns));
        floor_pairs.push(overhead_percent(none_ns, floor_ns));
        with.push(w);
        without.push(wo);
        floors.push(fl);
        without_dns.push(wd);
    }
    let floods = |rounds: &[Round]| rounds.iter().map(|r| r.flood).collect::<Vec<_>>();
    let (Some(without_mean), Some(with_mean), Some(floor_mean)) =
        (per_connect(&floods(&without)), per_connect(&floods(&with)), per_connect(&floods(&floors)))
    else {
        return Err("no connect was made".into());
    };
    let (Some(without_ns), Some(with_ns), Some(floor_ns), Some(without_dns_ns)) =
        (side_ns(&without), side_ns(&with), side_ns(&floors), side_ns(&without_dns))
    else {
        return Err("no window was measured".into());
    };
    // The agent's figure from every other set: two measurements of the same thing.
    let half = |parity: usize| {
        let pick = |rounds: &[Round]| side_ns(rounds.iter().skip(parity).step_by(2));
        match (pick(&without), pick(&with)) {
            (Some(none), Some(agent)) => overhead_percent(none, agent),
            _ => f64::NAN,
        }
    };
    let figures = Figures {
        agent: overhead_percent(without_ns, with_ns),
        floor: overhead_percent(without_ns, floor_ns),
        halves: [half(0), half(1)],
    };
    let verdict = match drift_exceeds_effect(&figures) {
        Some(why) => Verdict::NotMeasured(why),
        None => Verdict::check(figures.agent <= GOAL_PERCENT),
    };
    let percentile_name = format!("{LOW_PERCENTILE:.0}th percentile of {WINDOW}-connect windows");
    report.row(
        "overhead",
        format!(
            "connect-heavy ({THREADS} threads of refused loopback connects): generator CPU per connect, agent vs none \
             ({percentile_name})"
        ),
        format!("{:+.1} % ({with_ns:.0} vs {without_ns:.0} ns)", figures.agent),
        goal(),
        verdict,
    );
    report.row(
        "overhead",
        format!(
            "floor: empty programs alone on the hooks a refused connect passes, generator CPU per connect vs none \
             ({percentile_name})"
        ),
        format!("{:+.1} % ({floor_ns:.0} ns)", figures.floor),
        "(diagnostic)",
        Verdict::Info,
    );
    report.row(
        "overhead",
        format!(
            "the agent with its DNS observer off (no programs on cgroup hooks) vs none, generator CPU per connect \
             ({percentile_name})"
        ),
        format!("{:+.1} % ({without_dns_ns:.0} ns)", overhead_percent(without_ns, without_dns_ns)),
        "(diagnostic)",
        Verdict::Info,
    );
    let listed = |pairs: &[f64]| pairs.iter().map(|p| format!("{p:+.1}")).collect::<Vec<_>>().join(", ");
    report.note(format!(
        "overhead: the agent vs none, even sets {:+.1} %, odd sets {:+.1} %; means pooled per side: agent {:+.1} % \
         ({with_mean:.0} vs {without_mean:.0} ns), empty programs {:+.1} % ({floor_mean:.0} ns); each set's means, \
         agent vs none in %: {} (median {:+.1}); empty programs vs none: {} (median {:+.1})",
        figures.halves[0],
        figures.halves[1],
        overhead_percent(without_mean, with_mean),
        overhead_percent(without_mean, floor_mean),
        listed(&agent_pairs),
        median(&agent_pairs),
        listed(&floor_pairs),
        median(&floor_pairs)
    ));
    let lost_measure =
        "records the agent's rounds lost in the kernel (lost_events_total; the overhead stands only at 0)";
    match lost_in_rounds.iter().copied().sum::<Option<u64>>() {
        Some(lost) => report.row("overhead", lost_measure, thousands(lost), "0", Verdict::check(lost == 0)),
        None => report.not_measured("overhead", lost_measure, "0", "an agent round logged no final counters".into()),
    }
    let connects = |rounds: &[Round]| thousands(rounds.iter().map(|r| r.flood.refused).sum());
    let hooks: Vec<String> = floor::CONNECT.iter().map(|(_, hook)| hook.to_string()).collect();
    report.note(format!(
        "overhead: {SETS} sets of {} s rounds (none, floor, agent, agent without DNS; the order rotated each set), \
         {} connects with the agent, {} without, {} with empty programs on {}; CPU is the sender threads' own \
         (CLOCK_THREAD_CPUTIME_ID, read every {WINDOW} connects: {} windows with the agent, {} without), run-time \
         stats off",
        ROUND.as_secs(),
        connects(&with),
        connects(&without),
        connects(&floors),
        hooks.join(", "),
        with.iter().map(|r| r.windows.len()).sum::<usize>(),
        without.iter().map(|r| r.windows.len()).sum::<usize>()
    ));

    // The hooks' cost under this workload: one more round, stats on.
    let agent = Agent::start(binary, &config)?;
    std::thread::sleep(Duration::from_millis(300));
    let ids = procfs::prog_ids(agent.pid());
    let stats = StatsOn::enable();
    let measured = match &stats {
        Ok(_) => {
            let before = snapshot(&ids);
            let f = flood(closed.port);
            let after = snapshot(&ids);
            match (before, f, after) {
                (Ok(b), Ok(f), Ok(a)) => Ok((deltas(&b, &a), f.flood)),
                (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => Err(e),
            }
        }
        Err(e) => Err(e.clone()),
    };
    drop(stats);
    agent.stop()?;
    let _ = std::fs::remove_file(&evidence);
    let (measured, round) = measured?;
    // Every hook that ran in the round (the network observer's and the DNS observer's
    // packet programs, which every packet passes), and what they cost each connect in all.
    let mut kernel_ns = 0.0;
    for (program, runs, mean) in &measured {
        let Some(mean) = mean else { continue };
        kernel_ns += mean * *runs as f64;
        // A hook that ran for something else on the machine meanwhile (a process exit, a
        // block request) is in the sum, not a row: a handful of cold runs is no mean.
        if *runs < round.refused / 100 {
            continue;
        }
        let goal = goal_ns(program);
        report.row(
            "overhead",
            format!("{program}, connect-heavy round"),
            format!("{mean:.0} ns x {} runs", thousands(*runs)),
            format!("<= {goal} ns"),
            Verdict::check(*mean <= goal),
        );
    }
    // The hooks every refused connect must pass: a row even when they did not run.
    for program in ["tapio_inet_sock_set_state", "tapio_tcp_receive_reset"] {
        if !measured.iter().any(|m| m.0 == program && m.2.is_some()) {
            let measure = format!("{program}, connect-heavy round");
            let goal = format!("<= {} ns", goal_ns(program));
            report.not_measured("overhead", &measure, &goal, "the hook did not run in the round".into());
        }
    }
    if round.refused > 0 {
        report.row(
            "overhead",
            "eBPF run time per connect, all hooks (connect-heavy round)",
            format!("{:.0} ns", kernel_ns / round.refused as f64),
            "(diagnostic)",
            Verdict::Info,
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overhead_is_relative_to_the_run_without_the_agent() {
        assert!((overhead_percent(1000.0, 1050.0) - 5.0).abs() < 1e-9);
        assert!((overhead_percent(1000.0, 950.0) + 5.0).abs() < 1e-9);
    }

    #[test]
    fn a_run_whose_figures_say_the_programs_cost_less_than_nothing_or_whose_halves_disagree_judges_nothing() {
        let figures = |agent, floor, even, odd| Figures { agent, floor, halves: [even, odd] };
        // Figures as measured in quiet hours: judged.
        assert_eq!(drift_exceeds_effect(&figures(3.9, 1.2, 4.4, 3.1)), None);
        assert_eq!(drift_exceeds_effect(&figures(9.2, 0.0, 8.0, 12.9)), None);
        // The empty programs below zero.
        let empty_cheaper = drift_exceeds_effect(&figures(0.4, -3.6, 0.1, 0.8)).unwrap_or_default();
        assert!(empty_cheaper.contains("-3.6 %"), "{empty_cheaper}");
        // The agent below the empty programs.
        let agent_cheaper = drift_exceeds_effect(&figures(2.0, 3.4, 2.1, 1.9)).unwrap_or_default();
        assert!(agent_cheaper.contains("+2.0 %") && agent_cheaper.contains("+3.4 %"), "{agent_cheaper}");
        // Both plausible, the halves further apart than the goal.
        let apart = drift_exceeds_effect(&figures(4.0, 1.0, -1.5, 9.0)).unwrap_or_default();
        assert!(apart.contains("-1.5 %") && apart.contains("+9.0 %"), "{apart}");
        // A half without windows, or no figures at all: nothing judged.
        assert!(drift_exceeds_effect(&figures(4.0, 1.0, f64::NAN, 4.0)).is_some());
        assert!(drift_exceeds_effect(&figures(f64::NAN, f64::NAN, f64::NAN, f64::NAN)).is_some());
    }

    #[test]
    fn a_side_stands_at_the_low_percentile_of_all_its_windows() {
        // 100 windows, 1 to 100 ns: the 10th percentile is the tenth smallest.
        let windows: Vec<f64> = (1..=100).rev().map(f64::from).collect();
        assert_eq!(percentile(&windows, 10.0), Some(10.0));
        assert_eq!(percentile(&windows, 0.0), Some(1.0));
        assert_eq!(percentile(&windows, 100.0), Some(100.0));
        assert_eq!(percentile(&[], 10.0), None);
        // Pooled over rounds: a round the host slowed throughout adds windows above the
        // low tail and leaves the figure where the spared windows put it.
        let round = |windows: Vec<f64>| Round { flood: Flood::default(), windows };
        let spared = round((0..50).map(|i| 5000.0 + f64::from(i)).collect());
        let slowed = round((0..50).map(|i| 7000.0 + f64::from(i)).collect());
        assert_eq!(side_ns([&spared]), Some(5004.0));
        assert_eq!(side_ns([&spared, &slowed]), Some(5009.0));
    }

    #[test]
    fn per_connect_pools_rounds() {
        let f = |refused, cpu_ns| Flood { refused, cpu_ns, ..Flood::default() };
        assert_eq!(per_connect(&[f(100, 1_000_000), f(300, 1_000_000)]), Some(5000.0));
        assert_eq!(per_connect(&[f(0, 10)]), None);
    }
}
