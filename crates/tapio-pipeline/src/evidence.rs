//! The evidence record: the one shape Tapio emits everywhere (see spec/evidence.md).
//!
//! Observers build an [`Evidence`] from a decoded kernel record; the sink stage resolves its
//! workload identity and serializes it. Facts are typed per evidence kind so serialization
//! is direct and nothing reasoning-like can sneak in.

use serde::Serialize;
use std::sync::Arc;

/// A member name as `Members` takes it: `key!("pid")` is `,"pid":`, its separator, quotes
/// and colon in one literal (the first member of an object leaves the comma out).
macro_rules! key {
    ($name:literal) => {
        concat!(",\"", $name, "\":")
    };
}

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

/// An evidence message written piece by piece, for the kinds a flood repeats: through
/// `format!` (the formatting machinery, and a string grown as it goes) a connection record's
/// message cost about a third of its classification (`callgrind`, see the bench README).
pub(crate) struct Message(String);

impl Message {
    /// A message that starts with `text`.
    pub fn new(text: &str) -> Self {
        let mut line = String::with_capacity(128);
        line.push_str(text);
        Self(line)
    }

    pub fn text(mut self, text: &str) -> Self {
        self.0.push_str(text);
        self
    }

    pub fn number(mut self, value: impl itoa::Integer) -> Self {
        self.0.push_str(itoa::Buffer::new().format(value));
        self
    }

    /// A piece that writes itself (an address, say).
    pub fn with(mut self, write: impl FnOnce(&mut String)) -> Self {
        write(&mut self.0);
        self
    }

    pub fn done(self) -> String {
        self.0
    }
}

/// The message as one line: a task's name or a queried name (text a process chose) may hold
/// CR or LF, each written as a space, as the log line format does. The facts keep the text
/// as the kernel gave it.
/// A byte scan, out of line: through the standard library's pattern search this cost the
/// agent a KiB.
#[inline(never)]
pub(crate) fn one_line(mut message: String) -> String {
    // SAFETY: only the ASCII bytes CR and LF are replaced, by the ASCII space, so the
    // String stays valid UTF-8.
    for b in unsafe { message.as_mut_vec() } {
        if matches!(*b, b'\n' | b'\r') {
            *b = b' ';
        }
    }
    message
}

/// An IP address's text, held inline: a connection record carries two, and as `String`s
/// they were two allocations and frees per record on the drain. 45 bytes: an IPv6 text's
/// most (INET6_ADDRSTRLEN without its NUL).
pub type AddrText = tapio_util::text::AsciiText<45>;

/// The dotted text of an IPv4 address, each octet's digits taken from a table: IPv4 is the
/// common case and the one a flood repeats, and through the formatting machinery (or a
/// number formatter per octet) a record's addresses cost about as much as the rest of its
/// classification.
pub fn ipv4_text(octets: [u8; 4]) -> AddrText {
    // Each octet's digits and a dot, four bytes whatever its length (the buffer has room
    // past the longest text): the next octet's digits land on what follows the dot.
    let mut text = [0u8; 16];
    let mut len = 0;
    for octet in octets {
        let (digits, width) = OCTET_TEXT[usize::from(octet)];
        text[len..len + 4].copy_from_slice(&digits);
        len += usize::from(width) + 1;
    }
    // Without the last octet's dot; digits and dots: this never falls back.
    AddrText::from_ascii(&text[..len - 1]).unwrap_or_default()
}

/// A duration in nanoseconds as milliseconds with one decimal ("12.3 ms", rounded half
/// up), for evidence messages; integer arithmetic, so no float formatting is linked for it.
pub fn millis_text(ns: u64) -> String {
    let tenths = ns.saturating_add(50_000) / 100_000;
    format!("{}.{} ms", tenths / 10, tenths % 10)
}

/// An IP address's text as the standard library writes it (RFC 5952 for IPv6).
pub fn ip_text(addr: std::net::IpAddr) -> AddrText {
    use std::fmt::Write;
    match addr {
        std::net::IpAddr::V4(v4) => ipv4_text(v4.octets()),
        std::net::IpAddr::V6(v6) => {
            let mut text = AddrText::default();
            // The standard library writes at most 45 ASCII bytes of an address: this never
            // fails.
            let _ = write!(text, "{v6}");
            text
        }
    }
}

/// Each octet value's decimal digits followed by a dot (then padding), and how many
/// digits it has.
const OCTET_TEXT: [([u8; 4], u8); 256] = {
    let mut table = [([0u8; 4], 0u8); 256];
    let mut value = 0;
    while value < 256 {
        let (hundreds, tens, ones) = ((value / 100) as u8, (value / 10 % 10) as u8, (value % 10) as u8);
        table[value] = if value >= 100 {
            ([b'0' + hundreds, b'0' + tens, b'0' + ones, b'.'], 3)
        } else if value >= 10 {
            ([b'0' + tens, b'0' + ones, b'.', 0], 2)
        } else {
            ([b'0' + ones, b'.', 0, 0], 1)
        };
        value += 1;
    }
    table
};

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
    #[serde(serialize_with = "text")]
    pub id: crate::ulid::Ulid,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub observer: &'static str,
    pub severity: Severity,
    pub outcome: Outcome,
    pub error: ErrorInfo,
    #[serde(serialize_with = "text")]
    pub timestamp: tapio_util::time::Rfc3339Text,
    pub timestamp_unix_nanos: u64,
    pub node: Arc<str>,
    pub config_generation: u32,
    pub workload: Option<tapio_identity::Workload>,
    #[serde(skip)]
    pub workload_ids: WorkloadIds,
    pub facts: Facts,
}

/// Serializes a value held as text inline (the id, the timestamp, an address) as its text.
fn text<S: serde::Serializer>(value: &impl AsRef<str>, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(value.as_ref())
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
    /// Written member by member (`Members`) because it runs once per record on the drain
    /// and most of it is constant keys; `queue`'s tests hold it to the derived serialization
    /// byte for byte.
    pub fn write_head(&self, out: &mut Vec<u8>) -> serde_json::Result<()> {
        let mut m = Members::open(out);
        m.ascii(key!("id"), self.id.as_bytes());
        m.literal(key!("type"), self.kind);
        m.literal(key!("observer"), self.observer);
        m.literal(key!("severity"), self.severity.as_str());
        m.literal(key!("outcome"), self.outcome.as_str());
        let mut error = m.object(key!("error"));
        error.literal(key!("code"), self.error.code);
        error.string(key!("message"), &self.error.message)?;
        error.close();
        m.ascii(key!("timestamp"), self.timestamp.as_bytes());
        m.number(key!("timestamp_unix_nanos"), self.timestamp_unix_nanos);
        m.string(key!("node"), &self.node)?;
        m.number(key!("config_generation"), self.config_generation);
        // Left open: the queue appends the workload and the facts, then the brace.
        Ok(())
    }
}

/// Appends `bytes` to `out`: `Vec::extend_from_slice`, inlined where it is used. A record
/// is some forty small copies (a member name, a value), and through the library's out-of-line
/// function each one was a call, a capacity check and a call to `memcpy`; inlined, a member
/// name (a constant length) becomes a few moves. (`callgrind` counted the drain's encoding
/// of a record, per record, before and after: see the bench README.)
#[inline(always)]
fn put(out: &mut Vec<u8>, bytes: &[u8]) {
    out.reserve(bytes.len());
    let len = out.len();
    // SAFETY: `reserve` left room for `bytes.len()` more bytes after `len`; they are written
    // (from a slice that cannot overlap `out`'s buffer, which `out` borrows mutably) before
    // the length is moved over them.
    unsafe {
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), out.as_mut_ptr().add(len), bytes.len());
        out.set_len(len + bytes.len());
    }
}

/// A JSON string: copied as is when nothing in it needs escaping (what JSON escapes: control
/// characters, quote, backslash), else escaped by serde_json.
fn json_string(out: &mut Vec<u8>, s: &str) -> serde_json::Result<()> {
    if !needs_escape(s.as_bytes()) {
        out.push(b'"');
        put(out, s.as_bytes());
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
    #[serde(serialize_with = "text")]
    pub src_addr: AddrText,
    pub src_port: u16,
    #[serde(serialize_with = "text")]
    pub dst_addr: AddrText,
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

/// Writes one JSON object member by member, as serde_json writes a derived struct (no
/// spaces; an absent optional either `null` or left out, as the field's attribute says).
/// By hand for the record head and the facts every evidence of a flood carries (connections,
/// DNS queries, block requests): serde_json escapes every key and walks every field through
/// its serializer, which `perf` put at a third of the drain's time under a connect flood. Keys are Rust
/// field names, which need no escaping; values that may need it go through `json_string`.
struct Members<'a> {
    out: &'a mut Vec<u8>,
    digits: itoa::Buffer,
    first: bool,
}

impl<'a> Members<'a> {
    fn open(out: &'a mut Vec<u8>) -> Self {
        out.push(b'{');
        Self { out, digits: itoa::Buffer::new(), first: true }
    }

    /// `key` is the member as `key!` writes it; one copy per member.
    fn key(&mut self, key: &str) {
        if std::mem::take(&mut self.first) {
            put(self.out, &key.as_bytes()[1..]);
        } else {
            put(self.out, key.as_bytes());
        }
    }

    fn number(&mut self, key: &str, value: impl itoa::Integer) {
        self.key(key);
        put(self.out, self.digits.format(value).as_bytes());
    }

    fn number_or_null(&mut self, key: &str, value: Option<impl itoa::Integer>) {
        match value {
            Some(value) => self.number(key, value),
            None => self.null(key),
        }
    }

    /// Left out when absent (`skip_serializing_if = "Option::is_none"`).
    fn number_if(&mut self, key: &str, value: Option<impl itoa::Integer>) {
        if let Some(value) = value {
            self.number(key, value);
        }
    }

    fn string(&mut self, key: &str, value: &str) -> serde_json::Result<()> {
        self.key(key);
        json_string(self.out, value)
    }

    /// A value that is one of Tapio's own literals: nothing read from the kernel, a file or
    /// the config is ever leaked to `'static` in the agent, so a `&'static str` is a name,
    /// code or kind written in its source, plain ASCII that JSON never escapes. It skips the
    /// escape check, which under a flood was a tenth of the drain's time (the derived
    /// serialization tests, and this assertion in every test build, hold it to that).
    fn literal(&mut self, key: &str, value: &'static str) {
        debug_assert!(!needs_escape(value.as_bytes()), "literal {value:?} needs escaping");
        self.key(key);
        self.out.push(b'"');
        put(self.out, value.as_bytes());
        self.out.push(b'"');
    }

    /// Text Tapio wrote from an alphabet JSON never escapes (an id's base32, a timestamp's
    /// digits), as its bytes: neither the escape check nor the UTF-8 check a `str` needs.
    fn ascii(&mut self, key: &str, value: &[u8]) {
        debug_assert!(value.is_ascii() && !needs_escape(value), "{value:?} needs escaping");
        self.key(key);
        self.out.push(b'"');
        put(self.out, value);
        self.out.push(b'"');
    }

    fn literal_or_null(&mut self, key: &str, value: Option<&'static str>) {
        match value {
            Some(value) => self.literal(key, value),
            None => self.null(key),
        }
    }

    fn literal_if(&mut self, key: &str, value: Option<&'static str>) {
        if let Some(value) = value {
            self.literal(key, value);
        }
    }

    fn string_or_null(&mut self, key: &str, value: Option<&str>) -> serde_json::Result<()> {
        match value {
            Some(value) => self.string(key, value),
            None => {
                self.null(key);
                Ok(())
            }
        }
    }

    fn boolean(&mut self, key: &str, value: bool) {
        self.key(key);
        put(self.out, if value { b"true" } else { b"false" });
    }

    /// A member whose value is an object, written through the returned writer.
    fn object(&mut self, key: &str) -> Members<'_> {
        self.key(key);
        Members::open(self.out)
    }

    fn null(&mut self, key: &str) {
        self.key(key);
        put(self.out, b"null");
    }

    fn close(self) {
        self.out.push(b'}');
    }
}

impl Facts {
    /// Writes these facts as JSON, exactly as their derived serialization does (the tests
    /// hold each hand-written kind to it byte for byte).
    pub fn write_json(&self, out: &mut Vec<u8>) -> serde_json::Result<()> {
        match self {
            Facts::Connection(facts) => facts.write_json(out),
            Facts::Dns(facts) => facts.write_json(out),
            Facts::Storage(facts) => facts.write_json(out),
            rare => serde_json::to_writer(out, rare),
        }
    }
}

impl ConnectionFacts {
    fn write_json(&self, out: &mut Vec<u8>) -> serde_json::Result<()> {
        let mut m = Members::open(out);
        m.number_or_null(key!("pid"), self.pid);
        m.string_or_null(key!("comm"), self.comm.as_deref())?;
        m.literal(key!("family"), self.family);
        m.ascii(key!("src_addr"), self.src_addr.as_bytes());
        m.number(key!("src_port"), self.src_port);
        m.ascii(key!("dst_addr"), self.dst_addr.as_bytes());
        m.number(key!("dst_port"), self.dst_port);
        m.number_if(key!("errno"), self.errno);
        if let Some(soft) = self.soft_error {
            m.boolean(key!("soft_error"), soft);
        }
        m.literal_if(key!("tcp_state"), self.tcp_state);
        m.number_if(key!("syn_retries"), self.syn_retries);
        m.number_if(key!("connect_duration_ns"), self.connect_duration_ns);
        m.number_if(key!("bytes_acked"), self.bytes_acked);
        m.number_if(key!("bytes_received"), self.bytes_received);
        m.number_if(key!("retransmits_in_window"), self.retransmits_in_window);
        m.number_if(key!("window_ms"), self.window_ms);
        m.number_if(key!("total_retransmits"), self.total_retransmits);
        m.number_if(key!("srtt_us"), self.srtt_us);
        m.number_if(key!("cwnd"), self.cwnd);
        m.number_if(key!("baseline_us"), self.baseline_us);
        m.number_if(key!("baseline_samples"), self.baseline_samples);
        m.close();
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
    /// The request's first sector; null when it has none: a flush, or a request the kernel
    /// built with no position ((sector_t)-1, e.g. a driver's passthrough command).
    pub sector: Option<u64>,
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
    /// How long the counters counted: the sample interval, or less when the PMU was shared
    /// (multiplexed); the counts cover exactly this time.
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
    /// CPU time the container may use per period; null when unlimited. Left out, with
    /// `period_us`, when its files could not be read (counted as malformed): a null would
    /// say the container has no quota.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quota_us: Option<Option<u64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub period_us: Option<u64>,
    pub threshold_percent: u32,
    /// The throttled share must fall below this before another crossing is reported.
    pub rearm_below_percent: f64,
}

/// A container's memory use and limits as its memory cgroup reports them; a limit is null
/// when there is none. When a file cannot be read the whole object is left out (counted as
/// malformed), never a null that would say there is no limit.
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
    /// The answer's rcode; null when no answer came (a timeout the sweep judged; a timeout
    /// judged on an answer that came too late carries that answer's).
    pub rcode: Option<u16>,
    pub rcode_name: Option<&'static str>,
    pub family: &'static str,
    /// udp or tcp.
    pub transport: &'static str,
    #[serde(serialize_with = "text")]
    pub server_addr: AddrText,
    pub server_port: u16,
    #[serde(serialize_with = "text")]
    pub client_addr: AddrText,
    pub client_port: u16,
    pub transaction_id: u16,
    /// Latest transmission of the query to its answer; null when no answer came.
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

impl StorageFacts {
    fn write_json(&self, out: &mut Vec<u8>) -> serde_json::Result<()> {
        let mut m = Members::open(out);
        m.number_or_null(key!("pid"), self.pid);
        m.number_or_null(key!("tid"), self.tid);
        m.string_or_null(key!("comm"), self.comm.as_deref())?;
        m.number(key!("dev_major"), self.dev_major);
        m.number(key!("dev_minor"), self.dev_minor);
        m.string_or_null(key!("disk"), self.disk.as_deref())?;
        m.literal(key!("op"), self.op);
        m.number(key!("op_code"), self.op_code);
        m.number_or_null(key!("sector"), self.sector);
        m.number(key!("bytes"), self.bytes);
        m.number_if(key!("errno"), self.errno);
        m.literal_if(key!("errno_name"), self.errno_name);
        m.number_if(key!("blk_status"), self.blk_status);
        m.number_if(key!("partial_bytes"), self.partial_bytes);
        m.number_or_null(key!("latency_ns"), self.latency_ns);
        m.number_if(key!("threshold_ns"), self.threshold_ns);
        m.number(key!("requeues"), self.requeues);
        m.close();
        Ok(())
    }
}

impl DnsFacts {
    fn write_json(&self, out: &mut Vec<u8>) -> serde_json::Result<()> {
        let mut m = Members::open(out);
        m.number_or_null(key!("pid"), self.pid);
        m.number_or_null(key!("tid"), self.tid);
        m.string_or_null(key!("comm"), self.comm.as_deref())?;
        m.string(key!("query_name"), &self.query_name)?;
        if self.query_name_truncated {
            m.boolean(key!("query_name_truncated"), true);
        }
        m.number(key!("query_type"), self.query_type);
        m.literal_or_null(key!("query_type_name"), self.query_type_name);
        m.number_or_null(key!("rcode"), self.rcode);
        m.literal_or_null(key!("rcode_name"), self.rcode_name);
        m.literal(key!("family"), self.family);
        m.literal(key!("transport"), self.transport);
        m.ascii(key!("server_addr"), self.server_addr.as_bytes());
        m.number(key!("server_port"), self.server_port);
        m.ascii(key!("client_addr"), self.client_addr.as_bytes());
        m.number(key!("client_port"), self.client_port);
        m.number(key!("transaction_id"), self.transaction_id);
        m.number_or_null(key!("latency_ns"), self.latency_ns);
        m.number(key!("waited_ns"), self.waited_ns);
        m.number(key!("transmissions"), self.transmissions);
        m.number_if(key!("answer_count"), self.answer_count);
        m.number_if(key!("threshold_ns"), self.threshold_ns);
        m.close();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn needs_escape_bytewise(s: &[u8]) -> bool {
        s.iter().any(|&b| b < 0x20 || b == b'"' || b == b'\\')
    }

    #[test]
    fn millis_text_has_one_decimal_rounded_half_up() {
        assert_eq!(millis_text(0), "0.0 ms");
        assert_eq!(millis_text(49_999), "0.0 ms");
        assert_eq!(millis_text(50_000), "0.1 ms");
        assert_eq!(millis_text(1_234_567), "1.2 ms");
        assert_eq!(millis_text(2_000_000_000), "2000.0 ms");
        assert_eq!(millis_text(u64::MAX), "18446744073709.5 ms", "saturates: kernel input never overflows");
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
            src_addr: ip_text("fd00::1".parse().unwrap()),
            src_port: 65535,
            dst_addr: ip_text("fd00::2".parse().unwrap()),
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
            src_addr: ipv4_text([127, 0, 0, 1]),
            src_port: 48906,
            dst_addr: ipv4_text([127, 0, 0, 1]),
            dst_port: 1,
            errno: Some(111),
            soft_error: Some(false),
            syn_retries: Some(0),
            connect_duration_ns: Some(41_000),
            ..Default::default()
        };
        for facts in [full, refused, ConnectionFacts::default()] {
            assert_written_as_derived(&Facts::Connection(facts));
        }
    }

    fn assert_written_as_derived(facts: &Facts) {
        let mut ours = b"before ".to_vec();
        facts.write_json(&mut ours).unwrap();
        let mut derived = b"before ".to_vec();
        serde_json::to_writer(&mut derived, facts).unwrap();
        assert_eq!(String::from_utf8(ours).unwrap(), String::from_utf8(derived).unwrap());
    }

    /// As for connections: every field set (named, so a new field must be added here), the
    /// optional ones absent, and strings that need escaping.
    #[test]
    fn storage_facts_written_by_hand_are_their_derived_serialization() {
        let full = StorageFacts {
            pid: Some(1),
            tid: Some(2),
            comm: Some("dd \"x\"".into()),
            dev_major: 259,
            dev_minor: 0,
            disk: Some("nvme0n1".into()),
            op: "write",
            op_code: 1,
            sector: Some(u64::MAX - 1),
            bytes: 4096,
            errno: Some(5),
            errno_name: Some("EIO"),
            blk_status: Some(10),
            partial_bytes: Some(512),
            latency_ns: Some(7),
            threshold_ns: Some(8),
            requeues: 65_535,
        };
        let unseen = StorageFacts {
            pid: None,
            tid: None,
            comm: None,
            disk: None,
            sector: None,
            errno: None,
            errno_name: None,
            blk_status: None,
            partial_bytes: None,
            latency_ns: None,
            threshold_ns: None,
            ..full.clone()
        };
        for facts in [full, unseen] {
            assert_written_as_derived(&Facts::Storage(facts));
        }
    }

    #[test]
    fn dns_facts_written_by_hand_are_their_derived_serialization() {
        let full = DnsFacts {
            pid: Some(1),
            tid: Some(2),
            comm: Some("tab\there".into()),
            query_name: "we\\ird.example".into(),
            query_name_truncated: true,
            query_type: 28,
            query_type_name: Some("AAAA"),
            rcode: Some(2),
            rcode_name: Some("SERVFAIL"),
            family: "ipv6",
            transport: "tcp",
            server_addr: ip_text("fd00::53".parse().unwrap()),
            server_port: 53,
            client_addr: ip_text("fd00::1".parse().unwrap()),
            client_port: 40_000,
            transaction_id: 65_535,
            latency_ns: Some(u64::MAX),
            waited_ns: 9,
            transmissions: 3,
            answer_count: Some(0),
            threshold_ns: Some(5),
        };
        let timeout = DnsFacts {
            pid: None,
            tid: None,
            comm: None,
            query_name_truncated: false,
            query_type_name: None,
            rcode: None,
            rcode_name: None,
            latency_ns: None,
            answer_count: None,
            threshold_ns: None,
            ..full.clone()
        };
        for facts in [full, timeout] {
            assert_written_as_derived(&Facts::Dns(facts));
        }
    }

    /// The kinds left to serde_json go through it unchanged.
    #[test]
    fn other_facts_are_serde_json_itself() {
        let exit = ExitFacts {
            pid: 1,
            tid: 1,
            comm: "sh".into(),
            exit_code: Some(3),
            signal: None,
            signal_name: None,
            core_dumped: false,
            threads: 1,
            lifetime_ns: None,
        };
        assert_written_as_derived(&Facts::Exit(exit));
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
