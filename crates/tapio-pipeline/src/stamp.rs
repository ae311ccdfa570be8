//! Stamping: turns a classified kernel fact into a full evidence record (id, wall time,
//! node, generation), the same way for every observer.

use crate::clock::BootToWall;
use crate::evidence::{ErrorInfo, Evidence, Facts, Outcome, Severity, WorkloadIds};
use crate::ulid::UlidGen;
use std::sync::Arc;

/// What an observer decided about one record.
#[derive(Debug)]
pub enum Verdict {
    Emit(Box<Evidence>),
    /// Not evidence, and counted as a correlation drop with this reason (never guessed at).
    Drop(&'static str),
    /// Not evidence by definition (e.g. filtered); nothing to count.
    Ignore,
}

/// The classification of one fact, before stamping.
pub struct Draft {
    pub kind: &'static str,
    pub observer: &'static str,
    pub severity: Severity,
    pub outcome: Outcome,
    pub code: &'static str,
    pub message: String,
    pub boot_ns: u64,
    pub generation: u32,
    pub workload: WorkloadIds,
    pub facts: Facts,
}

/// Per-drain-thread stamping context.
pub struct Stamper {
    pub node: Arc<str>,
    pub clock: Arc<BootToWall>,
    pub ids: UlidGen,
    timestamps: tapio_util::time::Rfc3339Nanos,
}

impl Stamper {
    pub fn new(node: Arc<str>, clock: Arc<BootToWall>) -> Self {
        Self { node, clock, ids: UlidGen::new(), timestamps: Default::default() }
    }

    pub fn stamp(&mut self, d: Draft) -> Verdict {
        let unix_ns = self.clock.to_wall(d.boot_ns);
        Verdict::Emit(Box::new(Evidence {
            id: self.ids.generate(unix_ns),
            kind: d.kind,
            observer: d.observer,
            severity: d.severity,
            outcome: d.outcome,
            error: ErrorInfo { code: d.code, message: d.message },
            timestamp: self.timestamps.format_text(unix_ns),
            timestamp_unix_nanos: unix_ns,
            node: self.node.clone(),
            config_generation: d.generation,
            workload: None,
            workload_ids: d.workload,
            facts: d.facts,
        }))
    }
}

/// Helpers for the observers' classification tests.
#[cfg(test)]
pub mod testing {
    use super::{Stamper, Verdict};
    use crate::clock::BootToWall;
    use crate::evidence::Evidence;
    use std::sync::Arc;

    /// A stamper for node "node-a" with a freshly measured clock.
    pub fn stamper() -> Stamper {
        Stamper::new(Arc::from("node-a"), Arc::new(BootToWall::measured()))
    }

    /// The evidence of a verdict that must be one.
    pub fn emitted(v: Verdict) -> Evidence {
        match v {
            Verdict::Emit(e) => *e,
            other => panic!("expected evidence, got {other:?}"),
        }
    }
}
