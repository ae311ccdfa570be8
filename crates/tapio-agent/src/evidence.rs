//! The evidence record: the one shape Tapio emits everywhere (see spec/evidence.md).
//!
//! Observers build an [`Evidence`] from a decoded kernel record; the sink stage resolves its
//! workload identity and serializes it. Facts are typed per evidence kind so serialization
//! is direct and nothing reasoning-like can sneak in.

use serde::Serialize;
use std::sync::Arc;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Warning,
    Error,
    Critical,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Failure,
    Timeout,
    Degraded,
}

/// `{code, message}`: a stable SCREAMING_SNAKE code and one factual line.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ErrorInfo {
    pub code: &'static str,
    pub message: String,
}

/// What the kernel told us about the workload, before identity resolution.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WorkloadIds {
    /// cgroup2 id of the task (1 = the root: nothing to resolve on hybrid/v1 nodes).
    pub cgroup_id: u64,
    /// kernfs id of the task's memory cgroup (v1 memory hierarchy or cgroup2), 0 if unknown.
    pub mem_cgroup_id: u64,
}

/// One piece of evidence. `workload` is filled by the sink stage (it may do syscalls, which
/// must stay off the ring-buffer drain).
#[derive(Debug, Clone, Serialize)]
pub struct Evidence {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub observer: &'static str,
    pub severity: Severity,
    pub outcome: Outcome,
    pub error: ErrorInfo,
    pub timestamp: String,
    pub timestamp_unix_nanos: u64,
    pub node: Arc<str>,
    pub config_generation: u32,
    pub workload: Option<tapio_identity::Workload>,
    #[serde(skip)]
    pub workload_ids: WorkloadIds,
    pub facts: Facts,
}

impl Severity {
    /// The name it serializes as.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Warning => "warning",
            Severity::Error => "error",
            Severity::Critical => "critical",
        }
    }
}

impl Outcome {
    /// The name it serializes as.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Failure => "failure",
            Outcome::Timeout => "timeout",
            Outcome::Degraded => "degraded",
        }
    }
}

impl Evidence {
    /// Writes the record's fields before its workload, in record order, as the derived
    /// serialization does but without the closing brace: `{"id":…,"config_generation":N`.
    /// Written out by hand because it runs once per record on the drain and most of it is
    /// constant keys; `queue`'s tests hold it to the derived serialization byte for byte.
    pub fn write_head(&self, out: &mut Vec<u8>) -> serde_json::Result<()> {
        out.extend_from_slice(b"{\"id\":");
        json_string(out, &self.id)?;
        out.extend_from_slice(b",\"type\":");
        json_string(out, self.kind)?;
        out.extend_from_slice(b",\"observer\":");
        json_string(out, self.observer)?;
        out.extend_from_slice(b",\"severity\":");
        json_string(out, self.severity.as_str())?;
        out.extend_from_slice(b",\"outcome\":");
        json_string(out, self.outcome.as_str())?;
        out.extend_from_slice(b",\"error\":{\"code\":");
        json_string(out, self.error.code)?;
        out.extend_from_slice(b",\"message\":");
        json_string(out, &self.error.message)?;
        out.extend_from_slice(b"},\"timestamp\":");
        json_string(out, &self.timestamp)?;
        out.extend_from_slice(b",\"timestamp_unix_nanos\":");
        serde_json::to_writer(&mut *out, &self.timestamp_unix_nanos)?;
        out.extend_from_slice(b",\"node\":");
        json_string(out, &self.node)?;
        out.extend_from_slice(b",\"config_generation\":");
        serde_json::to_writer(&mut *out, &self.config_generation)
    }
}

/// A JSON string: copied as is when nothing in it needs escaping (what JSON escapes: control
/// characters, quote, backslash), else escaped by serde_json.
fn json_string(out: &mut Vec<u8>, s: &str) -> serde_json::Result<()> {
    if !needs_escape(s.as_bytes()) {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
        Ok(())
    } else {
        serde_json::to_writer(out, s)
    }
}

/// Whether JSON must escape any byte of `s`: a control character, quote or backslash.
/// Eight bytes a step, because it reads every string of the record head on the drain (a
/// byte at a time it was a twentieth of the drain's time under a flood). For each byte
/// lane, `x - 0x01` borrows into the lane's top bit only where the lane is zero and `!x`
/// keeps only lanes whose top bit was clear, so bytes of 0x80 and above (UTF-8) never match.
fn needs_escape(s: &[u8]) -> bool {
    const LANES: u64 = 0x0101_0101_0101_0101;
    const TOPS: u64 = 0x8080_8080_8080_8080;
    let any_zero = |x: u64| x.wrapping_sub(LANES) & !x & TOPS != 0;
    let mut words = s.chunks_exact(8);
    for word in &mut words {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(word);
        let x = u64::from_le_bytes(bytes);
        let below_space = x.wrapping_sub(LANES * 0x20) & !x & TOPS != 0;
        if below_space || any_zero(x ^ (LANES * u64::from(b'"'))) || any_zero(x ^ (LANES * u64::from(b'\\'))) {
            return true;
        }
    }
    words.remainder().iter().any(|&b| b < 0x20 || b == b'"' || b == b'\\')
}

/// Observer-specific facts, in base units with the unit in the name.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Facts {
    Connection(ConnectionFacts),
    Oom(OomFacts),
    Exit(ExitFacts),
    Storage(StorageFacts),
    Node(NodeFacts),
    Throttling(ThrottlingFacts),
    /// A container's PSI crossing (the node's facts, with its memory use).
    ContainerPressure(PressureFacts),
    Dns(DnsFacts),
}

/// Facts of every kernel.network.* evidence; fields a kind lacks are omitted.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ConnectionFacts {
    /// The task that owns the connection; null when it could not be attributed.
    pub pid: Option<u32>,
    pub comm: Option<String>,
    pub family: &'static str,
    pub src_addr: String,
    pub src_port: u16,
    pub dst_addr: String,
    pub dst_port: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errno: Option<u32>,
    /// The error was the socket's soft error: an ICMP error the kernel recorded without
    /// ending the connect, after which the application gave up.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub soft_error: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tcp_state: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub syn_retries: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connect_duration_ns: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_acked: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_received: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retransmits_in_window: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window_ms: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total_retransmits: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub srtt_us: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cwnd: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baseline_us: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baseline_samples: Option<u32>,
}

impl ConnectionFacts {
    /// Writes these facts as their derived serialization does, byte for byte (the tests hold
    /// it to that). By hand because every refused or reset connection on the node passes
    /// here on the drain: serde_json escapes every key and walks every field through its
    /// serializer, which `perf` put at a third of the drain's time under a connect flood.
    pub fn write_json(&self, out: &mut Vec<u8>) -> serde_json::Result<()> {
        let mut digits = itoa::Buffer::new();
        out.extend_from_slice(b"{\"pid\":");
        match self.pid {
            Some(pid) => out.extend_from_slice(digits.format(pid).as_bytes()),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"comm\":");
        match &self.comm {
            Some(comm) => json_string(out, comm)?,
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"family\":");
        json_string(out, self.family)?;
        out.extend_from_slice(b",\"src_addr\":");
        json_string(out, &self.src_addr)?;
        out.extend_from_slice(b",\"src_port\":");
        out.extend_from_slice(digits.format(self.src_port).as_bytes());
        out.extend_from_slice(b",\"dst_addr\":");
        json_string(out, &self.dst_addr)?;
        out.extend_from_slice(b",\"dst_port\":");
        out.extend_from_slice(digits.format(self.dst_port).as_bytes());
        // The optional facts, each left out when absent.
        let mut number = |out: &mut Vec<u8>, key: &[u8], value: Option<u64>| {
            if let Some(value) = value {
                out.extend_from_slice(key);
                out.extend_from_slice(digits.format(value).as_bytes());
            }
        };
        number(out, b",\"errno\":", self.errno.map(u64::from));
        if let Some(soft) = self.soft_error {
            out.extend_from_slice(if soft { b",\"soft_error\":true" } else { b",\"soft_error\":false" });
        }
        if let Some(state) = self.tcp_state {
            out.extend_from_slice(b",\"tcp_state\":");
            json_string(out, state)?;
        }
        number(out, b",\"syn_retries\":", self.syn_retries.map(u64::from));
        number(out, b",\"connect_duration_ns\":", self.connect_duration_ns);
        number(out, b",\"bytes_acked\":", self.bytes_acked);
        number(out, b",\"bytes_received\":", self.bytes_received);
        number(out, b",\"retransmits_in_window\":", self.retransmits_in_window.map(u64::from));
        number(out, b",\"window_ms\":", self.window_ms.map(u64::from));
        number(out, b",\"total_retransmits\":", self.total_retransmits.map(u64::from));
        number(out, b",\"srtt_us\":", self.srtt_us.map(u64::from));
        number(out, b",\"cwnd\":", self.cwnd.map(u64::from));
        number(out, b",\"baseline_us\":", self.baseline_us.map(u64::from));
        number(out, b",\"baseline_samples\":", self.baseline_samples.map(u64::from));
        out.push(b'}');
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OomFacts {
    pub pid: u32,
    pub tid: u32,
    pub comm: String,
    pub uid: u32,
    pub oom_score_adj: i16,
    pub total_vm_bytes: Option<u64>,
    pub anon_rss_bytes: Option<u64>,
    pub file_rss_bytes: Option<u64>,
    pub shmem_rss_bytes: Option<u64>,
    pub pgtables_bytes: Option<u64>,
    pub memory_cgroup_id: Option<u64>,
    /// The memory cgroup's limit; null when unlimited or unknown.
    pub memory_cgroup_limit_bytes: Option<u64>,
    pub memory_cgroup_usage_bytes: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExitFacts {
    pub pid: u32,
    /// The thread that exited last (the process's last thread).
    pub tid: u32,
    pub comm: String,
    /// Exit code for a normal exit, null when killed by a signal.
    pub exit_code: Option<u8>,
    pub signal: Option<u8>,
    pub signal_name: Option<&'static str>,
    pub core_dumped: bool,
    pub threads: u32,
    pub lifetime_ns: Option<u64>,
}

/// Facts of kernel.storage.* evidence: one block request.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StorageFacts {
    /// The task that submitted the request; null when it was not seen (e.g. a flush the
    /// block layer issued on behalf of several writers).
    pub pid: Option<u32>,
    pub tid: Option<u32>,
    pub comm: Option<String>,
    pub dev_major: u32,
    pub dev_minor: u32,
    /// The disk's name (from /sys/dev/block/M:m/uevent); null if the disk is gone.
    pub disk: Option<String>,
    /// read, write, flush, discard, secure_erase, write_zeroes, driver_in, driver_out, other.
    pub op: &'static str,
    pub op_code: u32,
    pub sector: u64,
    pub bytes: u32,
    /// Positive errno of an io_error; null when the kernel's status has no errno this agent
    /// knows (blk_status says which).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errno: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errno_name: Option<&'static str>,
    /// The block layer's own status code (kernels that report one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blk_status: Option<u8>,
    /// Bytes the failing completion covered, when it covered only part of the request.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partial_bytes: Option<u32>,
    /// Last issue to completion; null when the request failed before reaching the driver.
    pub latency_ns: Option<u64>,
    /// The threshold a latency_spike crossed (warning or critical).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threshold_ns: Option<u64>,
    /// Times the driver handed the request back before the issue that completed (the kernel
    /// counts to 65,535 and stays there).
    pub requeues: u32,
}

/// Facts of kernel.node.* evidence.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum NodeFacts {
    Pressure(PressureFacts),
    Pmc(PmcFacts),
}

/// A PSI reading (/proc/pressure/<resource>, or a container's cgroup2
/// `<resource>.pressure`) at the moment "some avg10" crossed its threshold. Percentages
/// have the kernel's two decimals.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PressureFacts {
    pub resource: &'static str,
    pub some_avg10_percent: f64,
    pub some_avg60_percent: f64,
    pub some_avg300_percent: f64,
    pub some_total_us: u64,
    pub full_avg10_percent: Option<f64>,
    pub full_avg60_percent: Option<f64>,
    pub full_avg300_percent: Option<f64>,
    pub full_total_us: Option<u64>,
    pub threshold_percent: u32,
    /// avg10 must fall below this before another crossing is reported.
    pub rearm_below_percent: f64,
    /// A container's memory_pressure only: how close the container is to its memory limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemoryUse>,
}

/// One CPU's hardware counters over one sample interval (deltas, not totals).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PmcFacts {
    pub cpu: u32,
    pub interval_ns: u64,
    pub cycles: u64,
    pub instructions: u64,
    pub ipc: f64,
    pub stalled_cycles_backend: Option<u64>,
    pub stall_percent: Option<f64>,
    /// ipc_degradation: the minimum IPC; cpu_stall: the maximum stall share in percent.
    pub threshold: f64,
}

/// A container's CFS bandwidth throttling over one poll interval: deltas of its cpu.stat
/// between two reads, and the totals at the second read (so a reader of cpu.stat can place
/// the interval exactly).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ThrottlingFacts {
    /// "cgroup2" or "cgroup1": whose cpu.stat was read.
    pub cgroup_version: &'static str,
    pub interval_ns: u64,
    pub periods: u64,
    pub throttled_periods: u64,
    pub throttled_time_us: u64,
    pub throttled_periods_percent: f64,
    pub nr_periods_total: u64,
    pub nr_throttled_total: u64,
    pub throttled_time_total_us: u64,
    /// CPU time the container may use per period; null when unlimited or unreadable.
    pub quota_us: Option<u64>,
    pub period_us: Option<u64>,
    pub threshold_percent: u32,
    /// The throttled share must fall below this before another crossing is reported.
    pub rearm_below_percent: f64,
}

/// A container's memory use and limits as its memory cgroup reports them; each null when
/// unreadable, a limit also when there is none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct MemoryUse {
    /// cgroup2 memory.current, cgroup1 memory.usage_in_bytes.
    pub usage_bytes: Option<u64>,
    /// The hard limit: memory.max, memory.limit_in_bytes.
    pub limit_bytes: Option<u64>,
    /// cgroup2 memory.high, where reclaim throttling starts.
    pub high_bytes: Option<u64>,
}

/// Facts of kernel.dns.* evidence: one query to one server, and its answer if one came.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DnsFacts {
    /// The task that owns the querying socket (seen when it connected or sent to port 53);
    /// null when the socket's owner was not seen.
    pub pid: Option<u32>,
    pub tid: Option<u32>,
    pub comm: Option<String>,
    /// Lower-cased, dotted, at most 127 characters (`query_name_truncated` says it was cut).
    pub query_name: String,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub query_name_truncated: bool,
    pub query_type: u16,
    /// A, AAAA, … for the common types; null for others (`query_type` has the number).
    pub query_type_name: Option<&'static str>,
    /// The answer's rcode; null for a timeout (no answer).
    pub rcode: Option<u16>,
    pub rcode_name: Option<&'static str>,
    pub family: &'static str,
    /// udp or tcp.
    pub transport: &'static str,
    pub server_addr: String,
    pub server_port: u16,
    pub client_addr: String,
    pub client_port: u16,
    pub transaction_id: u16,
    /// Latest transmission of the query to its answer; null for a timeout.
    pub latency_ns: Option<u64>,
    /// First transmission to the answer, or to the moment the timeout was judged.
    pub waited_ns: u64,
    /// Transmissions of this query on its socket to this server (1 = no retransmission).
    pub transmissions: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub answer_count: Option<u16>,
    /// The threshold crossed: a latency threshold, or the timeout.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threshold_ns: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn needs_escape_bytewise(s: &[u8]) -> bool {
        s.iter().any(|&b| b < 0x20 || b == b'"' || b == b'\\')
    }

    /// Every byte value, at every position of every length up to three words, in a string
    /// of harmless bytes (plain and UTF-8 lead/continuation bytes) is judged as one byte at
    /// a time would judge it.
    #[test]
    fn needs_escape_agrees_with_the_bytewise_check() {
        for filler in [b'a', 0xc3, 0xa9, 0x7f, b' ', 0xff] {
            for len in 0..=24 {
                let plain = vec![filler; len];
                assert!(!needs_escape(&plain), "filler {filler:#x} len {len}");
                for at in 0..len {
                    for byte in 0..=255u8 {
                        let mut s = plain.clone();
                        s[at] = byte;
                        assert_eq!(needs_escape(&s), needs_escape_bytewise(&s), "{s:?}");
                    }
                }
            }
        }
    }

    /// Every field set, none set, and strings that need escaping: the hand-written facts
    /// are the derived serialization. The full fixture names every field, so a field added
    /// to the struct fails to compile here until it is written and checked too.
    #[test]
    fn connection_facts_written_by_hand_are_their_derived_serialization() {
        let full = ConnectionFacts {
            pid: Some(u32::MAX),
            comm: Some("we\"ird\\ \u{1}é".into()),
            family: "ipv6",
            src_addr: "fd00::1".into(),
            src_port: 65535,
            dst_addr: "fd00::2".into(),
            dst_port: 0,
            errno: Some(111),
            soft_error: Some(true),
            tcp_state: Some("ESTABLISHED"),
            syn_retries: Some(6),
            connect_duration_ns: Some(u64::MAX),
            bytes_acked: Some(1),
            bytes_received: Some(2),
            retransmits_in_window: Some(3),
            window_ms: Some(4),
            total_retransmits: Some(5),
            srtt_us: Some(6),
            cwnd: Some(7),
            baseline_us: Some(8),
            baseline_samples: Some(9),
        };
        let refused = ConnectionFacts {
            pid: Some(11100),
            comm: Some("curl".into()),
            family: "ipv4",
            src_addr: "127.0.0.1".into(),
            src_port: 48906,
            dst_addr: "127.0.0.1".into(),
            dst_port: 1,
            errno: Some(111),
            soft_error: Some(false),
            syn_retries: Some(0),
            connect_duration_ns: Some(41_000),
            ..Default::default()
        };
        for facts in [full, refused, ConnectionFacts::default()] {
            let mut ours = b"before ".to_vec();
            facts.write_json(&mut ours).unwrap();
            let mut derived = b"before ".to_vec();
            serde_json::to_writer(&mut derived, &facts).unwrap();
            assert_eq!(String::from_utf8(ours).unwrap(), String::from_utf8(derived).unwrap());
        }
    }

    /// What the check passes is copied as is, what it flags is escaped: either way the result
    /// is the JSON serde_json writes.
    #[test]
    fn json_strings_are_serde_json_strings() {
        for s in [
            "",
            "curl",
            "TCP connect to 127.0.0.1:1 was refused",
            "ünïcödé ✓",
            "a\"b",
            "tab\there",
            "back\\slash",
            "\u{1}",
        ] {
            let mut ours = Vec::new();
            json_string(&mut ours, s).unwrap();
            assert_eq!(ours, serde_json::to_vec(s).unwrap(), "{s:?}");
        }
    }
}
