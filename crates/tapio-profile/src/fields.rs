//! The table of every field an Evidence Profile can set: its section and name, its type,
//! its allowed range and where it lives in the [`CompiledConfig`]. Validation, compilation,
//! diffing and the documentation all read this one table, so a field cannot be validated
//! one way and compiled another.
//!
//! The ranges are the agent's own (its local config file accepts exactly these), so a
//! profile that validates here is never refused by an agent; the agent's tests check the
//! table against its validator.

use std::fmt;

use tapio_wire::CompiledConfig;

use crate::error::Range;

/// The sections of `overrides`, in document order.
pub const SECTIONS: &[&str] = &["network", "container", "storage", "node"];

/// The type of a field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `true` / `false`.
    Bool,
    /// One integer in a range.
    Int(Range),
    /// A list of integers, each in a range; compiled sorted and without duplicates so the
    /// order written does not change the hash.
    List {
        /// Range of each item.
        item: Range,
        /// Most items accepted.
        max_len: usize,
    },
}

/// A field's value, typed by its [`Kind`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FieldValue {
    /// A switch.
    Bool(bool),
    /// A number.
    Int(u64),
    /// A list of numbers.
    List(Vec<u64>),
}

impl fmt::Display for FieldValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FieldValue::Bool(b) => write!(f, "{b}"),
            FieldValue::Int(n) => write!(f, "{n}"),
            FieldValue::List(items) => {
                f.write_str("[")?;
                for (i, n) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{n}")?;
                }
                f.write_str("]")
            }
        }
    }
}

/// One settable field.
pub struct Field {
    /// `network`, `container`, `storage` or `node`.
    pub section: &'static str,
    /// Key inside the section (the same name as in the compiled config).
    pub name: &'static str,
    /// Type and range.
    pub kind: Kind,
    /// One line for people (feature `help`, on by default: the node agent, which never
    /// shows it, leaves it out of its binary).
    #[cfg(feature = "help")]
    pub help: &'static str,
    get: fn(&CompiledConfig) -> FieldValue,
    set: fn(&mut CompiledConfig, &FieldValue),
}

impl fmt::Debug for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Field({}.{})", self.section, self.name)
    }
}

impl Field {
    /// `section.name`.
    pub fn key(&self) -> String {
        format!("{}.{}", self.section, self.name)
    }

    /// The field's value in `config`.
    pub fn get(&self, config: &CompiledConfig) -> FieldValue {
        (self.get)(config)
    }

    /// Sets the field in `config`. The value must match the field's kind and range
    /// (validation guarantees it); anything else leaves the config unchanged.
    pub fn set(&self, config: &mut CompiledConfig, value: &FieldValue) {
        (self.set)(config, value)
    }
}

/// Stores `n` into a narrower integer slot; validation has already checked the range, so a
/// value that does not fit cannot arrive (and would leave the slot unchanged).
fn store<T: TryFrom<u64>>(n: u64, slot: &mut T) {
    if let Ok(v) = T::try_from(n) {
        *slot = v;
    }
}

const fn range(min: u64, max: u64) -> Range {
    Range { min, max, zero_means_off: false }
}

macro_rules! switch {
    ($sec:ident . $f:ident, $help:expr) => {
        Field {
            section: stringify!($sec),
            name: stringify!($f),
            kind: Kind::Bool,
            #[cfg(feature = "help")]
            help: $help,
            get: |c| FieldValue::Bool(c.$sec.$f),
            set: |c, v| {
                if let FieldValue::Bool(b) = v {
                    c.$sec.$f = *b;
                }
            },
        }
    };
}

macro_rules! number {
    ($sec:ident . $f:ident, $range:expr, $help:expr) => {
        Field {
            section: stringify!($sec),
            name: stringify!($f),
            kind: Kind::Int($range),
            #[cfg(feature = "help")]
            help: $help,
            get: |c| FieldValue::Int(u64::from(c.$sec.$f)),
            set: |c, v| {
                if let FieldValue::Int(n) = v {
                    store(*n, &mut c.$sec.$f);
                }
            },
        }
    };
}

macro_rules! list {
    ($sec:ident . $f:ident, $range:expr, $max_len:expr, $help:expr) => {
        Field {
            section: stringify!($sec),
            name: stringify!($f),
            kind: Kind::List { item: $range, max_len: $max_len },
            #[cfg(feature = "help")]
            help: $help,
            get: |c| FieldValue::List(c.$sec.$f.iter().map(|&n| u64::from(n)).collect()),
            set: |c, v| {
                if let FieldValue::List(items) = v {
                    let mut items: Vec<_> = items.iter().filter_map(|&n| n.try_into().ok()).collect();
                    items.sort_unstable();
                    items.dedup();
                    c.$sec.$f = items;
                }
            },
        }
    };
}

/// Every field, grouped by section in [`SECTIONS`] order.
pub static FIELDS: &[Field] = &[
    switch!(network.enabled, "network observer on or off"),
    switch!(network.connect_failures, "connection_refused / _timeout / _unreachable evidence"),
    switch!(network.resets, "connection_reset evidence"),
    switch!(network.retransmit_spikes, "retransmit_spike evidence"),
    switch!(network.rtt_degradation, "rtt_degradation evidence"),
    number!(
        network.retransmit_window_ms,
        range(10, 600_000),
        "window in which one connection's retransmits are counted"
    ),
    number!(network.retransmit_count, range(2, 100_000), "retransmits within the window that make a retransmit_spike"),
    number!(network.rtt_ratio_percent, range(101, 100_000), "srtt over baseline × this / 100 is an rtt_degradation"),
    number!(
        network.rtt_ceiling_us,
        Range { min: 1_000, max: 60_000_000, zero_means_off: true },
        "srtt over this is an rtt_degradation whatever the baseline"
    ),
    number!(network.rtt_min_samples, range(1, 1_000_000), "baseline samples before a destination's RTT is judged"),
    number!(
        network.rtt_min_increase_us,
        range(0, 60_000_000),
        "a ratio crossing also needs srtt this far above the baseline"
    ),
    switch!(container.enabled, "container observer on or off"),
    switch!(container.oom_kills, "oom_kill evidence"),
    switch!(container.abnormal_exits, "abnormal_exit evidence"),
    list!(container.exit_ignore_codes, range(1, 255), 255, "exit codes that are not evidence"),
    list!(container.exit_ignore_signals, range(1, 63), 64, "fatal signals that are not evidence"),
    switch!(storage.enabled, "storage observer on or off"),
    switch!(storage.io_errors, "io_error evidence"),
    switch!(storage.latency_spikes, "latency_spike evidence"),
    number!(storage.latency_warning_ms, range(1, 600_000), "issue-to-completion latency of a warning latency_spike"),
    number!(storage.latency_critical_ms, range(1, 3_600_000), "… and of a critical one (at least the warning)"),
    switch!(node.enabled, "node observer on or off"),
    switch!(node.psi, "pressure (PSI) evidence"),
    number!(node.psi_memory_some_avg10_percent, range(0, 100), "memory some-avg10 threshold (0 = off)"),
    number!(node.psi_cpu_some_avg10_percent, range(0, 100), "cpu some-avg10 threshold (0 = off)"),
    number!(node.psi_io_some_avg10_percent, range(0, 100), "io some-avg10 threshold (0 = off)"),
    number!(node.psi_rearm_margin_percent, range(0, 50), "avg10 must fall this far below a threshold to re-arm"),
    switch!(node.pmc, "hardware-counter evidence (cpu_stall, ipc_degradation)"),
    number!(node.pmc_ipc_min_percent, range(1, 1_000), "instructions per cycle below this / 100 is an ipc_degradation"),
    number!(node.pmc_stall_max_percent, range(1, 100), "backend-stalled share of cycles above this is a cpu_stall"),
    number!(node.pmc_min_cycles, range(0, 1 << 40), "CPUs that ran fewer cycles in an interval are not judged"),
];

/// The fields of one section.
pub fn in_section(section: &str) -> impl Iterator<Item = &'static Field> + '_ {
    FIELDS.iter().filter(move |f| f.section == section)
}

/// The field `section.name`, if there is one.
pub fn find(section: &str, name: &str) -> Option<&'static Field> {
    FIELDS.iter().find(|f| f.section == section && f.name == name)
}
