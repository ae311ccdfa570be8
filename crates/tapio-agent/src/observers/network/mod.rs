//! Network observer (userspace half): the hooks it attaches and its config carrier.

pub mod classify;

use super::{Classifier, Hook, Loaded};
use crate::stamp::{Stamper, Verdict};

pub const NAME: &str = "network";

pub fn hooks() -> Vec<(&'static str, Hook)> {
    tapio_bpf::network::TRACEPOINTS.iter().map(|&(prog, cat, tp)| (prog, Hook::TracePoint(cat, tp))).collect()
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

/// The classifier that fits what actually attached.
pub fn classifier_for(loaded: Option<&Loaded>) -> Box<dyn Classifier> {
    let resets = loaded.is_none_or(|l| l.programs.iter().any(|p| p.program == RESET_PROGRAM && p.result.is_ok()));
    if resets {
        Box::new(NetworkClassifier)
    } else {
        Box::new(NoResetHookClassifier)
    }
}
