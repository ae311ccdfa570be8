//! Network observer (userspace half): its descriptor, the hooks it attaches, its config
//! carrier and its classifier.

pub mod classify;

use super::{
    no_sized_maps, no_userspace, open_carrier, CarrierLayout, Classifier, ClassifierContext, EventRings, Hook,
    KernelHalf, Observer, ProgramStatus, RuntimeFacts,
};
use crate::stamp::{Stamper, Verdict};
use tapio_bpf::abi::{
    tapio_net_config, TAPIO_NET_EN_CONNECT, TAPIO_NET_EN_RESET, TAPIO_NET_EN_RETRANSMIT, TAPIO_NET_EN_RTT,
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
        sized_maps: no_sized_maps,
    }),
    userspace: no_userspace,
};

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
    use tapio_bpf::network::{BTF_TRACEPOINTS, TRACEPOINTS};
    let typed = BTF_TRACEPOINTS.iter().map(|&(prog, tp)| (prog, Hook::BtfTracePoint(tp)));
    typed.chain(TRACEPOINTS.iter().map(|&(prog, cat, tp)| (prog, Hook::TracePoint(cat, tp)))).collect()
}

/// The RST hook's program: without it, refused connects cannot be told from ICMP ones.
const RESET_PROGRAM: &str = "tapio_tcp_receive_reset";

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

/// The classifier that fits what actually attached (`None`: assume everything did).
pub fn classifier_for(programs: Option<&[ProgramStatus]>) -> Box<dyn Classifier> {
    let resets = programs.is_none_or(|ps| ps.iter().any(|p| p.program == RESET_PROGRAM && p.result.is_ok()));
    if resets {
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
}
