//! End to end: refused connects as fast as this machine makes them, with the real agent
//! writing evidence to a file sink (how a node without stdout collection deploys it), then
//! every connect accounted for: written as evidence, counted as lost, or unaccounted.

use crate::agent::{self, Agent, Scratch};
use crate::load;
use crate::procfs;
use crate::report::{thousands, Report, Verdict};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::time::{Duration, Instant};

const SETTLE: Duration = Duration::from_secs(1);
/// After the flood, the file must stop growing for this long before the agent is stopped.
const QUIET: Duration = Duration::from_secs(1);
const CATCH_UP_LIMIT: Duration = Duration::from_secs(60);

const REFUSED: &str = "kernel.network.connection_refused";
/// Agent CPU (every thread, from the flood's start to exit) per event written.
const CPU_PER_EVENT_GOAL_NS: f64 = 2000.0;

pub fn measure(binary: &Path, duration: Duration, senders: usize, report: &mut Report) {
    if let Err(e) = run(binary, duration, senders, report) {
        for m in ["refused connects made", "unaccounted (made - written - losses)", "agent CPU per event written"] {
            report.not_measured("e2e", m, "", e.clone());
        }
    }
}

/// Evidence lines in `path` and its rotated siblings.
#[derive(Debug, Default, PartialEq, Eq)]
struct Written {
    lines: u64,
    refused_for_port: u64,
    unparsable: u64,
}

fn count_lines(path: &Path, port: u16) -> Result<Written, String> {
    // The sink's own rotation names (the agent keeps at most 100 rotated files).
    let files = tapio_util::rotate::oldest_first(path, 100);
    let mut w = Written::default();
    for file in files {
        let f = std::fs::File::open(&file).map_err(|e| format!("opening {}: {e}", file.display()))?;
        for line in BufReader::with_capacity(1 << 20, f).split(b'\n') {
            let line = line.map_err(|e| format!("reading {}: {e}", file.display()))?;
            if line.is_empty() {
                continue;
            }
            w.lines += 1;
            match serde_json::from_slice::<Value>(&line) {
                Ok(v) => {
                    let facts = &v["facts"];
                    if v["type"] == REFUSED
                        && facts["dst_port"].as_u64() == Some(u64::from(port))
                        && facts["dst_addr"] == "127.0.0.1"
                    {
                        w.refused_for_port += 1;
                    }
                }
                Err(_) => w.unparsable += 1,
            }
        }
    }
    Ok(w)
}

/// Waits until the evidence file has not grown for [`QUIET`]: the agent has caught up.
fn wait_for_quiet(path: &Path) -> Duration {
    let start = Instant::now();
    let mut last = (u64::MAX, Instant::now());
    while start.elapsed() < CATCH_UP_LIMIT {
        let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        if size != last.0 {
            last = (size, Instant::now());
        } else if last.1.elapsed() >= QUIET {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    start.elapsed()
}

fn run(binary: &Path, duration: Duration, senders: usize, report: &mut Report) -> Result<(), String> {
    let scratch = Scratch::new("e2e")?;
    let evidence = scratch.0.join("evidence.jsonl");
    let config = agent::write_config(&scratch.0, &evidence)?;
    let closed = load::ClosedPort::reserve().map_err(|e| format!("reserving a closed port: {e}"))?;
    let agent = Agent::start(binary, &config)?;
    if !agent.fully_attached() {
        report.note(format!("e2e: not every observer attached: {}", agent.ready_line));
    }
    std::thread::sleep(SETTLE);
    let cpu0 = procfs::cpu_stat_ns(agent.pid())?;
    let flood = load::refused_flood(closed.port, senders, duration, u64::MAX);
    let caught_up = wait_for_quiet(&evidence);
    let stopped = agent.stop()?;
    let written = count_lines(&evidence, closed.port)?;
    let counters =
        stopped.counters.ok_or_else(|| format!("the agent ({}) logged no final counters line", stopped.exit))?;

    let lost = agent::counter(&counters, "lost_events_total");
    let overflow = agent::counter(&counters, "queue_overflow_total");
    // sink_drops_total already includes queue_overflow_total (see the agent's counters).
    let sink_drops = agent::counter(&counters, "sink_drops_total");
    let losses = lost + sink_drops;
    let made = flood.refused;
    let unaccounted = made as i64 - written.refused_for_port as i64 - losses as i64;
    let cpu_ns = stopped.cpu_ns.saturating_sub(cpu0);
    let events = written.refused_for_port.max(1);

    report.row(
        "e2e",
        format!("refused connects made ({senders} blocking senders, {} s)", duration.as_secs()),
        format!("{} ({}/s)", thousands(made), thousands(flood.rate() as u64)),
        "(as fast as possible)",
        Verdict::Info,
    );
    report.row(
        "e2e",
        "refused events written for the port",
        format!("{} ({:.2} % of made)", thousands(written.refused_for_port), pct(written.refused_for_port, made)),
        "(= made - losses)",
        Verdict::Info,
    );
    report.row(
        "e2e",
        "losses counted",
        format!(
            "{} (ringbuf {}, queue overflow {}, sink failures {})",
            thousands(losses),
            thousands(lost),
            thousands(overflow),
            thousands(sink_drops.saturating_sub(overflow))
        ),
        "(counted, not hidden)",
        Verdict::Info,
    );
    // The loss counters count every record lost, not only the flood's (an exit or another
    // connect lost in the same ring counts too): with losses, fewer than none unaccounted
    // is possible and only more than none is a fault.
    let (goal, accounted) =
        if losses == 0 { ("0", unaccounted == 0) } else { ("<= 0 (losses count other records too)", unaccounted <= 0) };
    report.row(
        "e2e",
        "unaccounted (made - written - losses)",
        unaccounted.to_string(),
        goal,
        Verdict::check(accounted),
    );
    report.row(
        "e2e",
        "losses at the fastest flood (file sink keeps up)",
        thousands(losses),
        "0",
        Verdict::check(losses == 0),
    );
    let per_event_ns = cpu_ns as f64 / events as f64;
    report.row(
        "e2e",
        "agent CPU per event written",
        format!(
            "{:.2} us ({:.2} s CPU; {} written + {} dropped at the queue)",
            per_event_ns / 1e3,
            cpu_ns as f64 / 1e9,
            thousands(written.refused_for_port),
            thousands(overflow)
        ),
        format!("<= {:.0} us", CPU_PER_EVENT_GOAL_NS / 1e3),
        Verdict::check(per_event_ns <= CPU_PER_EVENT_GOAL_NS),
    );
    report.note(format!(
        "e2e: agent with the file sink only (stdout off, rotation effectively off so every line is counted), \
         default queue capacity; closed port 127.0.0.1:{}; connects that succeeded {}, other errors {}; \
         evidence lines in the file {} (unparsable {}); correlation drops {}, malformed {}; agent caught up \
         {:.1} s after the flood; agent {}; CPU is utime+stime from the start of the flood to exit (wait4 rusage)",
        closed.port,
        flood.connected,
        flood.other_errors,
        thousands(written.lines),
        written.unparsable,
        agent::counter(&counters, "correlation_drops_total"),
        agent::counter(&counters, "malformed_events_total"),
        caught_up.as_secs_f64(),
        stopped.exit
    ));
    // Whether the drain stayed real-time through the flood: a demotion explains ring losses.
    let lines: Vec<&str> = stopped
        .scheduling_lines
        .iter()
        .map(|l| l.split_once(agent::DRAIN_PRIORITY_LOG).map_or(l.as_str(), |(_, what)| what))
        .collect();
    report.note(format!("e2e: the drain's scheduling: {}", lines.join("; ")));
    drop(closed);
    Ok(())
}

fn pct(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64 * 100.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_refused_lines_for_the_port_across_rotated_files() {
        let dir = Scratch::new("e2e-count-test").unwrap();
        let path = dir.0.join("ev.jsonl");
        let line = |port: u16, kind: &str| {
            format!("{{\"type\":\"{kind}\",\"facts\":{{\"dst_addr\":\"127.0.0.1\",\"dst_port\":{port}}}}}\n")
        };
        std::fs::write(&path, line(9, REFUSED) + &line(10, REFUSED) + "not json\n").unwrap();
        std::fs::write(dir.0.join("ev.jsonl.1"), line(9, REFUSED) + &line(9, "kernel.network.connection_reset"))
            .unwrap();
        let w = count_lines(&path, 9).unwrap();
        assert_eq!(w, Written { lines: 5, refused_for_port: 2, unparsable: 1 });
    }
}
