//! Per-agent batch sequence tracking: counts gaps and regressions, never judges them.

/// What one accepted batch's sequence number said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeqObservation {
    /// First batch seen, or exactly `last + 1`.
    InOrder,
    /// `seq > last + 1`: batches are missing in between.
    Gap,
    /// `seq <= last`: a resend, or a new agent process that did not say hello.
    Regression,
}

/// Sequence state of one agent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SeqState {
    /// Sequence of the last accepted batch.
    pub last_seen: Option<u64>,
    /// Gaps counted.
    pub gaps_total: u64,
    /// Regressions counted.
    pub regressions_total: u64,
}

impl SeqState {
    /// Records an accepted batch. `last_seen` follows the newest batch, so one restart
    /// counts one regression rather than one per batch until the old number is passed.
    pub fn observe(&mut self, seq: u64) -> SeqObservation {
        let obs = match self.last_seen {
            None => SeqObservation::InOrder,
            Some(last) if seq <= last => SeqObservation::Regression,
            Some(last) if seq == last.saturating_add(1) => SeqObservation::InOrder,
            Some(_) => SeqObservation::Gap,
        };
        match obs {
            SeqObservation::Gap => self.gaps_total += 1,
            SeqObservation::Regression => self.regressions_total += 1,
            SeqObservation::InOrder => {}
        }
        self.last_seen = Some(seq);
        obs
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use SeqObservation::*;

    #[test]
    fn counts_gaps_and_regressions() {
        let mut s = SeqState::default();
        let seen: Vec<_> = [5, 6, 7, 9, 9, 3, 4, 10].iter().map(|q| s.observe(*q)).collect();
        assert_eq!(seen, [InOrder, InOrder, InOrder, Gap, Regression, Regression, InOrder, Gap]);
        assert_eq!((s.gaps_total, s.regressions_total), (2, 2));
        assert_eq!(s.last_seen, Some(10));
    }

    #[test]
    fn extremes_do_not_overflow() {
        let mut s = SeqState::default();
        assert_eq!(s.observe(u64::MAX), InOrder);
        assert_eq!(s.observe(u64::MAX), Regression);
        assert_eq!(s.observe(0), Regression);
        assert_eq!(s.observe(1), InOrder);
    }
}
