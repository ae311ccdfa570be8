//! Result lines for the host. Each scenario is one tab-separated line on the results port
//! (`result<TAB>scenario<TAB>pass|fail<TAB>detail`), and a closing `end` line tells
//! the host the guest got through every scenario: a guest that dies half-way has no `end`,
//! and the host then counts every scenario it did not report as failed.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Pass,
    Fail,
}

impl Status {
    fn word(self) -> &'static str {
        match self {
            Status::Pass => "pass",
            Status::Fail => "fail",
        }
    }
}

pub struct Report {
    port: Option<File>,
    failed: bool,
}

impl Report {
    /// Writes to `path` (the guest's second serial port); without one, only to stdout.
    pub fn open(path: Option<&Path>) -> Report {
        let port = path.and_then(|p| match OpenOptions::new().write(true).open(p) {
            Ok(f) => Some(f),
            Err(e) => {
                eprintln!("tapio-kmatrix: cannot open results port {}: {e}", p.display());
                None
            }
        });
        Report { port, failed: false }
    }

    pub fn record(&mut self, scenario: &str, status: Status, detail: &str) {
        if status == Status::Fail {
            self.failed = true;
        }
        // One line per result: the detail must not break the line protocol.
        let detail: String = detail.chars().map(|c| if c == '\t' || c.is_control() { ' ' } else { c }).collect();
        println!("kmatrix: {scenario}: {}: {detail}", status.word());
        self.write_port(&format!("result\t{scenario}\t{}\t{detail}\n", status.word()));
    }

    /// Records a scenario's pass (Ok) or failure (Err), with its detail.
    pub fn outcome(&mut self, scenario: &str, result: Result<String, String>) {
        match result {
            Ok(detail) => self.record(scenario, Status::Pass, &detail),
            Err(detail) => self.record(scenario, Status::Fail, &detail),
        }
    }

    pub fn finish(&mut self) {
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        self.write_port(&format!("end\t{}\n", release.trim()));
    }

    pub fn failed(&self) -> bool {
        self.failed
    }

    fn write_port(&mut self, line: &str) {
        if let Some(port) = &mut self.port {
            if let Err(e) = port.write_all(line.as_bytes()).and_then(|()| port.flush()) {
                eprintln!("tapio-kmatrix: writing results port: {e}");
            }
        }
    }
}
