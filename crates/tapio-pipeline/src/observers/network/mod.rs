//! Network observer (userspace half): its descriptor, the hooks it attaches, its config
//! carrier and its classifier.

pub mod classify;

use super::{
    no_globals, no_userspace, open_carrier, CarrierLayout, Classifier, ClassifierContext, EventRings, Hook, KernelHalf,
    Observer, ProgramStatus, RuntimeFacts,
};
use crate::stamp::{Stamper, Verdict};
use aya::util::KernelVersion;
use tapio_bpf::abi::{
    tapio_net_config, TAPIO_NET_CONNECT_SLOTS, TAPIO_NET_EN_CONNECT, TAPIO_NET_EN_RESET, TAPIO_NET_EN_RETRANSMIT,
    TAPIO_NET_EN_RTT,
};
use tapio_wire::CompiledConfig;

pub const NAME: &str = "network";

/// The network observer: TCP connect failures, resets, retransmit spikes and RTT
/// degradation, judged in the kernel.
pub static OBSERVER: Observer = Observer {
    name: NAME,
    enabled: |c| c.network.enabled,
    kernel: Some(KernelHalf {
        object: &tapio_bpf::network::OBJECT,
        hooks,
        carrier: open_carrier::<tapio_net_config>,
        classifier: |ctx: &mut ClassifierContext<'_>| classifier_for(Some(ctx.programs)),
        counters: &[],
        correlation_counters: &[],
        event_rings: EventRings::PerCpu { total_bytes: tapio_bpf::abi::TAPIO_NET_EVENTS_RING_BYTES },
        sized_maps,
        globals: no_globals,
    }),
    userspace: no_userspace,
};

/// Whether this kernel's BPF has compare-and-swap (Linux 5.12 and later), which the slot
/// table of connects in SYN_SENT needs (network.bpf.c). An unknown version takes the hash,
/// which every kernel runs.
fn connect_slots_supported() -> bool {
    slots_supported_by(KernelVersion::current().ok())
}

fn slots_supported_by(version: Option<KernelVersion>) -> bool {
    version.is_some_and(|v| v >= KernelVersion::new(5, 12, 0))
}

/// The table of connects in SYN_SENT: the slot array, or the hash, at the table's size; the
/// other one keeps its single declared entry.
fn sized_maps() -> Vec<(&'static str, u32)> {
    connect_table(connect_slots_supported())
}

fn connect_table(slots: bool) -> Vec<(&'static str, u32)> {
    if slots {
        vec![(CONNECT_SLOTS_MAP, TAPIO_NET_CONNECT_SLOTS)]
    } else {
        log::info!("network: connects in SYN_SENT kept in a hash (this kernel's BPF predates compare-and-swap)");
        vec![(CONNECT_SLOTS_MAP, 1), (CONNECTS_HASH_MAP, TAPIO_NET_CONNECT_SLOTS)]
    }
}

const CONNECT_SLOTS_MAP: &str = "connect_slots";
const CONNECTS_HASH_MAP: &str = "connects";

/// Saturates a wide setting into the kernel's 32-bit field; every accepted range fits.
fn narrow(v: u64) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX)
}

impl CarrierLayout for tapio_net_config {
    fn build(config: &CompiledConfig, generation: u32, facts: &RuntimeFacts) -> Self {
        let n = &config.network;
        let mut enabled = 0;
        if n.enabled {
            for (on, bit) in [
                (n.connect_failures, TAPIO_NET_EN_CONNECT),
                (n.resets, TAPIO_NET_EN_RESET),
                (n.retransmit_spikes, TAPIO_NET_EN_RETRANSMIT),
                (n.rtt_degradation, TAPIO_NET_EN_RTT),
            ] {
                if on {
                    enabled |= bit;
                }
            }
        }
        let mut c = tapio_net_config::default();
        c.hdr.abi_version = tapio_bpf::ABI_VERSION;
        c.hdr.generation = generation;
        c.generation_check = generation;
        c.enabled = enabled;
        c.retransmit_window_ms = narrow(n.retransmit_window_ms);
        c.retransmit_count = n.retransmit_count;
        c.rtt_ratio_percent = n.rtt_ratio_percent;
        c.rtt_ceiling_us = narrow(n.rtt_ceiling_us);
        c.rtt_min_samples = n.rtt_min_samples;
        c.rtt_min_increase_us = narrow(n.rtt_min_increase_us);
        c.ephemeral_port_min = facts.ephemeral_ports.0;
        c.ephemeral_port_max = facts.ephemeral_ports.1;
        c.capture_memcg = u32::from(facts.capture_memcg);
        c
    }
}

pub fn hooks() -> Vec<(&'static str, Hook)> {
    hooks_for(connect_slots_supported())
}

/// The hooks, with the hashed twins of the table's two programs where `slots` is false.
fn hooks_for(slots: bool) -> Vec<(&'static str, Hook)> {
    use tapio_bpf::network::{BTF_TRACEPOINTS, HASHED_TWINS, TRACEPOINTS};
    let program = |prog: &'static str| match HASHED_TWINS.iter().find(|&&(p, _)| p == prog) {
        Some(&(_, twin)) if !slots => twin,
        _ => prog,
    };
    let typed = BTF_TRACEPOINTS.iter().map(|&(prog, tp)| (program(prog), Hook::BtfTracePoint(tp)));
    typed.chain(TRACEPOINTS.iter().map(|&(prog, cat, tp)| (prog, Hook::TracePoint(cat, tp)))).collect()
}

/// The RST hook's program: without it (or its hashed twin), refused connects cannot be
/// told from ICMP ones.
const RESET_PROGRAM: &str = "tapio_tcp_receive_reset";

/// Whether `program` is the RST hook's program or its hashed twin.
fn is_reset_program(program: &str) -> bool {
    program == RESET_PROGRAM
        || tapio_bpf::network::HASHED_TWINS.iter().any(|&(p, twin)| p == RESET_PROGRAM && twin == program)
}

/// The classifier for an observer whose every hook attached.
pub struct NetworkClassifier;

impl Classifier for NetworkClassifier {
    fn classify(&mut self, record: &[u8], stamper: &mut Stamper) -> Result<Verdict, tapio_bpf::DecodeError> {
        let ev = tapio_bpf::network::decode(record)?;
        Ok(classify::classify(&ev, stamper))
    }
}

/// The classifier for an observer whose RST hook did not attach (a kernel whose verifier
/// or tracepoint refused it): refusals it cannot attribute are counted, not guessed.
pub struct NoResetHookClassifier;

impl Classifier for NoResetHookClassifier {
    fn classify(&mut self, record: &[u8], stamper: &mut Stamper) -> Result<Verdict, tapio_bpf::DecodeError> {
        let ev = tapio_bpf::network::decode(record)?;
        Ok(classify::classify_with(&ev, stamper, false))
    }
}

/// Whether an RST program attached (`None`: assume it did).
fn reset_hook_attached(programs: Option<&[ProgramStatus]>) -> bool {
    programs.is_none_or(|ps| ps.iter().any(|p| is_reset_program(p.program) && p.result.is_ok()))
}

/// The classifier that fits what actually attached (`None`: assume everything did).
pub fn classifier_for(programs: Option<&[ProgramStatus]>) -> Box<dyn Classifier> {
    if reset_hook_attached(programs) {
        Box::new(NetworkClassifier)
    } else {
        Box::new(NoResetHookClassifier)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_carrier_encodes_switches_thresholds_and_runtime_facts() {
        let mut config = CompiledConfig::default();
        config.network.resets = false;
        config.network.rtt_min_increase_us = 2_500;
        let facts = RuntimeFacts { ephemeral_ports: (1000, 2000), capture_memcg: true };
        let c = tapio_net_config::build(&config, 3, &facts);
        assert_eq!(c.enabled, TAPIO_NET_EN_CONNECT | TAPIO_NET_EN_RETRANSMIT | TAPIO_NET_EN_RTT);
        assert_eq!((c.hdr.generation, c.generation_check, c.hdr.abi_version), (3, 3, tapio_bpf::ABI_VERSION));
        assert_eq!((c.ephemeral_port_min, c.ephemeral_port_max, c.capture_memcg), (1000, 2000, 1));
        assert_eq!((c.rtt_min_increase_us, c.rtt_ceiling_us, c.retransmit_window_ms), (2_500, 500_000, 10_000));
        config.network.enabled = false;
        assert_eq!(tapio_net_config::build(&config, 0, &RuntimeFacts::default()).enabled, 0);
    }

    #[test]
    fn connects_take_the_slot_table_from_5_12_and_the_hash_before_or_when_unknown() {
        assert!(slots_supported_by(Some(KernelVersion::new(6, 18, 44))));
        assert!(slots_supported_by(Some(KernelVersion::new(5, 12, 0))));
        assert!(!slots_supported_by(Some(KernelVersion::new(5, 11, 22))));
        assert!(!slots_supported_by(Some(KernelVersion::new(5, 10, 240))));
        assert!(!slots_supported_by(None));
        assert_eq!(connect_table(true), [(CONNECT_SLOTS_MAP, TAPIO_NET_CONNECT_SLOTS)]);
        assert_eq!(connect_table(false), [(CONNECT_SLOTS_MAP, 1), (CONNECTS_HASH_MAP, TAPIO_NET_CONNECT_SLOTS)]);
    }

    #[test]
    fn without_slots_the_tables_two_programs_are_their_hashed_twins_on_the_same_hooks() {
        let names = |slots| hooks_for(slots).into_iter().map(|(p, _)| p).collect::<Vec<_>>();
        let (with, without) = (names(true), names(false));
        assert_eq!(with.len(), without.len());
        assert!(with.contains(&"tapio_inet_sock_set_state") && with.contains(&"tapio_tcp_receive_reset"));
        assert!(without.contains(&"tapio_inet_sock_set_state_hashed"));
        assert!(without.contains(&"tapio_tcp_receive_reset_hashed"));
        assert!(!without.contains(&"tapio_inet_sock_set_state") && !without.contains(&"tapio_tcp_receive_reset"));
        // Each twin takes its program's place, on the same hook.
        let hooks = |slots| hooks_for(slots).into_iter().map(|(_, h)| format!("{h:?}")).collect::<Vec<_>>();
        assert_eq!(hooks(true), hooks(false));
    }

    #[test]
    fn either_rst_program_attached_lets_refusals_be_told_from_icmp_errors() {
        let status = |program, ok: bool| ProgramStatus {
            program,
            hook: Hook::BtfTracePoint("tcp_receive_reset"),
            result: if ok { Ok(()) } else { Err(super::super::LoadError::MissingHook("test".into())) },
        };
        for program in [RESET_PROGRAM, "tapio_tcp_receive_reset_hashed"] {
            assert!(reset_hook_attached(Some(&[status(program, true)])), "{program}");
            assert!(!reset_hook_attached(Some(&[status(program, false)])), "{program}");
        }
        assert!(!reset_hook_attached(Some(&[status("tapio_tcp_probe", true)])));
        assert!(reset_hook_attached(None));
    }
}
