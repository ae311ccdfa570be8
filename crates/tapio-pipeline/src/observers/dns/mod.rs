//! DNS observer (userspace half): the programs it attaches to the cgroup2 root, its
//! classifier, and the sweep that judges queries no answer came for.
//!
//! The kernel keeps every outstanding query in a bounded table and judges answers itself;
//! silence has no packet, so the agent reads the table and judges a query timed out once
//! `timeout_ms` has passed since its latest transmission. The kernel's answer path and this
//! sweep both delete the entry before they judge it, and only the one whose delete succeeds
//! emits: a query is judged once. A TCP query is not judged timed out when its connection
//! brought bytes the kernel could not read as its answer after it was sent (see
//! `tcp_unread` in the kernel half): the answer may be among them.

pub mod classify;

use super::poll::{PollContext, Poller};
use super::{
    no_globals, no_sized_maps, open_carrier, CarrierLayout, Classifier, EventRings, Follower, Hook, KernelHalf,
    Observer, RuntimeFacts, Start, Userspace,
};
use crate::stamp::{Stamper, Verdict};
use aya::maps::{HashMap as BpfHashMap, MapData};
use aya::Pod;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tapio_bpf::abi::{
    tapio_dns_config, tapio_dns_key, tapio_dns_query, TAPIO_DNS_EN_FAILURE, TAPIO_DNS_EN_LATENCY,
    TAPIO_DNS_EN_NXDOMAIN, TAPIO_DNS_EN_TIMEOUT, TAPIO_DNS_TCP,
};
use tapio_wire::compiled::DnsConfig;
use tapio_wire::CompiledConfig;

pub const NAME: &str = "dns";

/// The DNS observer: failed, unanswered and slow DNS queries of every socket on the node.
pub static OBSERVER: Observer = Observer {
    name: NAME,
    enabled: |c| c.dns.enabled,
    kernel: Some(KernelHalf {
        object: &tapio_bpf::dns::OBJECT,
        hooks,
        carrier: open_carrier::<tapio_dns_config>,
        classifier: |_| Box::new(DnsClassifier),
        counters: tapio_bpf::dns::COUNTER_NAMES,
        // The others lose no evidence: an unmatched answer was judged already (or is not
        // ours), a retransmission folds into its query, an unseen owner is a null pid.
        correlation_counters: &[
            tapio_bpf::dns::UNPARSABLE,
            tapio_bpf::dns::INTERRUPTED,
            tapio_bpf::dns::TCP_QUERY_UNREAD,
        ],
        event_rings: EventRings::Shared,
        sized_maps: no_sized_maps,
        globals: no_globals,
    }),
    userspace: start_sweeper,
};

impl CarrierLayout for tapio_dns_config {
    fn build(config: &CompiledConfig, generation: u32, facts: &RuntimeFacts) -> Self {
        let d = &config.dns;
        let mut c = tapio_dns_config::default();
        c.hdr.abi_version = tapio_bpf::ABI_VERSION;
        c.hdr.generation = generation;
        if d.enabled {
            // With every switch off the kernel tracks nothing (its programs test `enabled`).
            for (on, bit) in [
                (d.failures, TAPIO_DNS_EN_FAILURE),
                (d.failures && d.report_nxdomain, TAPIO_DNS_EN_NXDOMAIN),
                (d.latency_spikes, TAPIO_DNS_EN_LATENCY),
                (d.timeouts, TAPIO_DNS_EN_TIMEOUT),
            ] {
                if on {
                    c.enabled |= bit;
                }
            }
        }
        // Validation bounds these far below u32::MAX (tapio-profile's field table).
        c.timeout_ms = u32::try_from(d.timeout_ms).unwrap_or(u32::MAX);
        c.latency_warning_ms = u32::try_from(d.latency_warning_ms).unwrap_or(u32::MAX);
        c.latency_critical_ms = u32::try_from(d.latency_critical_ms).unwrap_or(u32::MAX);
        c.capture_memcg = u32::from(facts.capture_memcg);
        c
    }
}

/// The userspace half: the timeout sweep of the query table, which it takes from the object.
fn start_sweeper(start: &mut Start<'_>) -> Result<Userspace, String> {
    let mut take =
        |name: &str| start.ebpf.as_mut().and_then(|e| e.take_map(name)).ok_or(format!("dns object has no {name} map"));
    let queries = take(tapio_bpf::dns::QUERIES_MAP)?;
    let tcp_unread = take(tapio_bpf::dns::TCP_UNREAD_MAP)?;
    let settings = SweepSettings::new(start.generation, start.config.dns.clone());
    let sweeper = TimeoutSweeper::new(queries, tcp_unread, Arc::clone(&settings))?;
    Ok(Userspace { pollers: vec![Box::new(sweeper)], followers: vec![settings], state: None })
}

pub fn hooks() -> Vec<(&'static str, Hook)> {
    let owners = tapio_bpf::dns::OWNER_PROGRAMS.iter().map(|&p| (p, Hook::CgroupSockAddr));
    let packets = tapio_bpf::dns::PACKET_PROGRAMS.iter().map(|&(p, egress)| (p, Hook::CgroupSkb(egress)));
    packets.chain(owners).collect()
}

pub struct DnsClassifier;

impl Classifier for DnsClassifier {
    fn classify(&mut self, record: &[u8], stamper: &mut Stamper) -> Result<Verdict, tapio_bpf::DecodeError> {
        let ev = tapio_bpf::dns::decode(record)?;
        Ok(classify::answer(&ev, stamper))
    }
}

/// The settings the sweep judges with (the controller may change them at any time).
pub struct SweepSettings(Mutex<(u32, DnsConfig)>);

impl SweepSettings {
    pub fn new(generation: u32, config: DnsConfig) -> Arc<Self> {
        Arc::new(Self(Mutex::new((generation, config))))
    }

    pub fn set(&self, generation: u32, config: DnsConfig) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = (generation, config);
    }

    fn get(&self) -> (u32, DnsConfig) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl Follower for SweepSettings {
    fn follow(&self, config: &CompiledConfig, generation: u32) {
        self.set(generation, config.dns.clone());
    }
}

#[derive(Clone, Copy)]
#[repr(transparent)]
pub struct Key(pub tapio_dns_key);
#[derive(Clone, Copy)]
#[repr(transparent)]
pub struct Query(pub tapio_dns_query);

// SAFETY: ABI records: plain old data (`tapio_bpf::Record`).
unsafe impl Pod for Key {}
// SAFETY: as above.
unsafe impl Pod for Query {}

/// A resolver that retries at exactly its own timeout (glibc: 5 s, the default here too)
/// sends its retry this long at most after the sweep could first judge the query: the
/// retry then folds into the same query instead of racing the sweep.
const RETRY_GRACE_NS: u64 = 100_000_000;
/// The correlation drop reason of a query aged out of the table unjudged while timeouts
/// are not reported and latency spikes or failures are: its answer, if one came later,
/// could no longer be judged.
pub const QUERY_EXPIRED: &str = "query_expired";
/// The correlation drop reason of a TCP query not judged timed out because its connection
/// brought bytes after it that the kernel could not read as its answer (a fifth message in
/// one segment, or one starting inside a segment): it may have been answered.
pub const TCP_ANSWER_UNREAD: &str = "tcp_answer_unread";
/// The correlation drop reason of a UDP query not judged timed out because its socket got
/// a datagram from the server that is no readable answer (an error answer without its
/// question, as a server sends for a query it could not parse): it may have been answered.
pub const UDP_ANSWER_UNPARSABLE: &str = "udp_answer_unparsable";
/// The kernel table's size: a sweep never reads more keys than twice this (keys deleted
/// while iterating restart the kernel's iteration).
const MAX_KEYS: usize = 4096 * 2;

/// Whether a query last sent at `last_sent_ns` is due to be judged at `now_ns`.
pub fn due(last_sent_ns: u64, now_ns: u64, timeout_ns: u64) -> bool {
    now_ns.saturating_sub(last_sent_ns) >= timeout_ns + RETRY_GRACE_NS
}

/// Whether a query's answer may have come unread: its socket brought bytes the kernel did
/// not read as an answer (`unread_ns`: when the latest such segment came) at or after the
/// query's latest transmission. A TCP connection is marked for bytes not read as messages,
/// any socket for an answer whose reading another packet's program interrupted.
pub fn answer_may_be_unread(query: &tapio_dns_query, unread_ns: impl FnOnce() -> Option<u64>) -> bool {
    unread_ns().is_some_and(|t| t >= query.last_sent_ns)
}

/// The counter of a query not judged because its answer may have come unread: a TCP
/// connection's bytes not read as messages; on a UDP socket, by the mark's lowest bit
/// (`dns.bpf.c`, `mark_unread`), a datagram that is no readable message, or an answer
/// whose reading was interrupted.
pub fn unread_answer_counter(query: &tapio_dns_query, mark: u64) -> &'static str {
    if u32::from(query.transport) == TAPIO_DNS_TCP {
        TCP_ANSWER_UNREAD
    } else if mark & 1 == 1 {
        UDP_ANSWER_UNPARSABLE
    } else {
        tapio_bpf::dns::INTERRUPTED
    }
}

/// What becomes of a query the sweep took out of the table unanswered.
#[derive(Debug, PartialEq, Eq)]
pub enum AgedOut {
    /// Its answer may have come unread: counted, not judged.
    Unread,
    /// A `timeout`.
    TimedOut,
    /// Timeouts are not reported, but an answer may still come, which could no longer be
    /// judged a latency spike or a failure: counted (`query_expired`).
    Expired,
    /// Nothing this config reports was lost.
    Nothing,
}

/// What becomes of an aged-out query under `config` (`may_be_unread` is asked only when
/// the observer is on).
pub fn aged_out(config: &DnsConfig, may_be_unread: impl FnOnce() -> bool) -> AgedOut {
    if !config.enabled {
        AgedOut::Nothing
    } else if may_be_unread() {
        AgedOut::Unread
    } else if config.timeouts {
        AgedOut::TimedOut
    } else if config.latency_spikes || config.failures {
        AgedOut::Expired
    } else {
        AgedOut::Nothing
    }
}

/// How often the table is read: a tenth of the timeout, between 100 ms and 1 s (a timeout
/// is reported at most that late; each read costs a syscall or two per outstanding query).
pub fn sweep_interval(timeout_ms: u64) -> Duration {
    Duration::from_millis((timeout_ms / 10).clamp(100, 1_000))
}

pub struct TimeoutSweeper {
    map: BpfHashMap<MapData, Key, Query>,
    tcp_unread: BpfHashMap<MapData, u64, u64>,
    settings: Arc<SweepSettings>,
    keys: Vec<Key>,
}

impl TimeoutSweeper {
    pub fn new(map: aya::maps::Map, tcp_unread: aya::maps::Map, settings: Arc<SweepSettings>) -> Result<Self, String> {
        let map = BpfHashMap::try_from(map).map_err(|e| format!("queries map does not match this agent's ABI: {e}"))?;
        let tcp_unread = BpfHashMap::try_from(tcp_unread)
            .map_err(|e| format!("tcp_unread map does not match this agent's ABI: {e}"))?;
        Ok(Self { map, tcp_unread, settings, keys: Vec::new() })
    }
}

impl Poller for TimeoutSweeper {
    fn name(&self) -> &'static str {
        NAME
    }

    fn interval(&self) -> Duration {
        sweep_interval(self.settings.get().1.timeout_ms)
    }

    fn poll(&mut self, ctx: &mut PollContext) {
        let (generation, config) = self.settings.get();
        let timeout_ns = config.timeout_ms.saturating_mul(1_000_000);
        self.keys.clear();
        for key in self.map.keys().take(MAX_KEYS) {
            match key {
                Ok(k) => self.keys.push(k),
                Err(_) => break,
            }
        }
        let now = crate::clock::boot_now_ns();
        for key in &self.keys {
            let Ok(entry) = self.map.get(key, 0) else { continue };
            // The kernel may judge the answer meanwhile: whoever deletes the entry judges it.
            if !due(entry.0.last_sent_ns, now, timeout_ns) || self.map.remove(key).is_err() {
                continue;
            }
            // Read after the delete: bytes that arrive later came after the timeout.
            let mark = || self.tcp_unread.get(&key.0.sock_cookie, 0).ok();
            match aged_out(&config, || answer_may_be_unread(&entry.0, mark)) {
                AgedOut::Unread => {
                    let why = unread_answer_counter(&entry.0, mark().unwrap_or(0));
                    ctx.counters.correlation_drop(NAME, why);
                }
                AgedOut::TimedOut => {
                    let verdict = classify::timeout(&entry.0, now, timeout_ns, generation, ctx.stamper);
                    ctx.deliver(NAME, verdict);
                }
                AgedOut::Expired => ctx.counters.correlation_drop(NAME, QUERY_EXPIRED),
                AgedOut::Nothing => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_nxdomain_switch_reaches_the_kernel_only_with_failures_on() {
        let facts = RuntimeFacts::default();
        let mut c = CompiledConfig::default();
        let bits = |c: &CompiledConfig| tapio_dns_config::build(c, 1, &facts).enabled;
        assert_eq!(bits(&c) & TAPIO_DNS_EN_NXDOMAIN, 0, "off by default");
        c.dns.report_nxdomain = true;
        assert_ne!(bits(&c) & TAPIO_DNS_EN_NXDOMAIN, 0);
        c.dns.failures = false;
        assert_eq!(bits(&c) & (TAPIO_DNS_EN_NXDOMAIN | TAPIO_DNS_EN_FAILURE), 0);
        c.dns.enabled = false;
        assert_eq!(bits(&c), 0);
        let k = tapio_dns_config::build(&CompiledConfig::default(), 7, &facts);
        assert_eq!(
            (k.hdr.generation, k.timeout_ms, k.latency_warning_ms, k.latency_critical_ms),
            (7, 5_000, 500, 2_000)
        );
    }

    #[test]
    fn a_query_is_due_only_after_its_latest_transmission_plus_the_timeout() {
        let t = 5_000_000_000;
        assert!(!due(1_000, 1_000 + t, t), "a retry at exactly the timeout still folds in");
        assert!(due(1_000, 1_000 + t + RETRY_GRACE_NS, t));
        assert!(!due(10_000, 5_000, t), "clock skew never judges");
        assert_eq!(sweep_interval(5_000), Duration::from_millis(500));
        assert_eq!(sweep_interval(100), Duration::from_millis(100));
        assert_eq!(sweep_interval(60_000), Duration::from_secs(1));
    }

    #[test]
    fn an_aged_out_query_is_a_timeout_or_counted_whenever_its_answer_could_have_been_evidence() {
        let on =
            DnsConfig { enabled: true, timeouts: true, failures: true, latency_spikes: true, ..Default::default() };
        assert_eq!(aged_out(&on, || false), AgedOut::TimedOut);
        assert_eq!(aged_out(&on, || true), AgedOut::Unread);
        let no_timeouts = DnsConfig { timeouts: false, ..on.clone() };
        assert_eq!(aged_out(&no_timeouts, || false), AgedOut::Expired);
        // Failures alone: a late SERVFAIL could no longer be judged either.
        let failures_only = DnsConfig { latency_spikes: false, ..no_timeouts.clone() };
        assert_eq!(aged_out(&failures_only, || false), AgedOut::Expired);
        let nothing = DnsConfig { failures: false, ..failures_only };
        assert_eq!(aged_out(&nothing, || false), AgedOut::Nothing);
        let off = DnsConfig { enabled: false, ..on };
        assert_eq!(aged_out(&off, || panic!("not asked when off")), AgedOut::Nothing);
    }

    #[test]
    fn only_a_query_whose_socket_was_marked_after_its_latest_transmission_may_have_an_unread_answer() {
        let mut q = tapio_dns_query { last_sent_ns: 5_000, transport: TAPIO_DNS_TCP as u8, ..Default::default() };
        assert!(answer_may_be_unread(&q, || Some(5_000)));
        assert!(answer_may_be_unread(&q, || Some(9_000)));
        assert!(!answer_may_be_unread(&q, || Some(4_999)), "bytes before the query are not its answer");
        assert!(!answer_may_be_unread(&q, || None), "nothing unread on its connection");
        assert_eq!(unread_answer_counter(&q, 9_000), TCP_ANSWER_UNREAD);
        assert_eq!(unread_answer_counter(&q, 9_001), TCP_ANSWER_UNREAD);
        // A UDP socket is marked by an answer whose reading was interrupted (an even mark)
        // or by a datagram that is no readable message (an odd one).
        q.transport = tapio_bpf::abi::TAPIO_DNS_UDP as u8;
        assert!(answer_may_be_unread(&q, || Some(9_000)));
        assert!(!answer_may_be_unread(&q, || None));
        assert_eq!(unread_answer_counter(&q, 9_000), tapio_bpf::dns::INTERRUPTED);
        assert_eq!(unread_answer_counter(&q, 9_001), UDP_ANSWER_UNPARSABLE);
    }
}
