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
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
        Ok(())
    } else {
        serde_json::to_writer(out, s)
    }
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
    /// Times the driver handed the request back before the issue that completed.
    pub requeues: u32,
}

/// Facts of kernel.node.* evidence.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum NodeFacts {
    Pressure(PressureFacts),
    Pmc(PmcFacts),
}

/// A PSI reading (/proc/pressure/<resource>) at the moment "some avg10" crossed its
/// threshold. Percentages have the kernel's two decimals.
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
