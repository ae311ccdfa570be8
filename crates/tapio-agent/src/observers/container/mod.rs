//! Container observer (userspace half): the hooks it attaches and its classifier.

pub mod classify;

use super::{Classifier, Hook};
use crate::stamp::{Stamper, Verdict};
use classify::PageSize;

pub const NAME: &str = "container";

pub fn hooks() -> Vec<(&'static str, Hook)> {
    let classic = tapio_bpf::container::TRACEPOINTS.iter().map(|&(prog, cat, tp)| (prog, Hook::TracePoint(cat, tp)));
    let typed = tapio_bpf::container::BTF_TRACEPOINTS.iter().map(|&(prog, tp)| (prog, Hook::BtfTracePoint(tp)));
    classic.chain(typed).collect()
}

pub struct ContainerClassifier {
    pages: PageSize,
}

impl ContainerClassifier {
    pub fn new() -> Self {
        Self { pages: PageSize::of_this_system() }
    }
}

impl Default for ContainerClassifier {
    fn default() -> Self {
        Self::new()
    }
}

impl Classifier for ContainerClassifier {
    fn classify(&mut self, record: &[u8], stamper: &mut Stamper) -> Result<Verdict, tapio_bpf::DecodeError> {
        let rec = tapio_bpf::container::decode(record)?;
        Ok(classify::classify(&rec, &self.pages, stamper))
    }
}
