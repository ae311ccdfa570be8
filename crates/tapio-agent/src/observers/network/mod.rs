//! Network observer (userspace half): the hooks it attaches and its config carrier.

pub mod classify;

use super::{Classifier, Hook};
use crate::stamp::{Stamper, Verdict};

pub const NAME: &str = "network";

pub fn hooks() -> Vec<(&'static str, Hook)> {
    tapio_bpf::network::TRACEPOINTS.iter().map(|&(prog, cat, tp)| (prog, Hook::TracePoint(cat, tp))).collect()
}

pub struct NetworkClassifier;

impl Classifier for NetworkClassifier {
    fn classify(&mut self, record: &[u8], stamper: &mut Stamper) -> Result<Verdict, tapio_bpf::DecodeError> {
        let ev = tapio_bpf::network::decode(record)?;
        Ok(classify::classify(&ev, stamper))
    }
}
