//! Pure bookkeeping of landed ranges: ranges `[start, end)` of the stream land in any order and
//! any number of times; the frontier is the end of the contiguous landed prefix from 0.
//! [`verdict`] answers an offered range from this bookkeeping alone.

use std::collections::BTreeMap;

/// Where a stream stands, as far as landing ranges is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Ranges may still land.
    Open,
    /// Finished: every byte up to the end has landed.
    Ended,
    /// Aborted: nothing lands any more.
    Aborted,
}

/// How an offered range is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Every byte of it has landed already: acknowledge it and drop the bytes. This holds after
    /// the stream ended too (a chunk re-sent after its producer died, arriving late, is a
    /// duplicate, not a failure).
    AlreadyLanded,
    /// The stream is closed and the range is not (wholly) landed: refuse it.
    Closed(Stage),
    /// It overlaps a range that is granted and not landed yet: ask again later.
    Busy,
    /// `[start, end)` may be written once there is room (`start` is the offered start moved
    /// up to the frontier: bytes below it may be being read and are never written again).
    Write {
        /// First byte to write.
        start: u64,
    },
}

/// Answer an offer of `[offset, end)` (`offset < end`) from the landed ranges, the stream's
/// stage and the ranges granted but not landed yet (`inflight`). Whether a landed range was
/// landed is checked first: what has landed stays landed once the stream ended. Only an aborted
/// stream refuses everything (its readers see the abort; nothing it holds counts any more).
pub fn verdict(
    landed: &Landed,
    stage: Stage,
    inflight: &[(u64, u64)],
    offset: u64,
    end: u64,
) -> Verdict {
    match stage {
        Stage::Aborted => return Verdict::Closed(Stage::Aborted),
        Stage::Open | Stage::Ended if landed.contains(offset, end) => {
            return Verdict::AlreadyLanded;
        }
        Stage::Ended => return Verdict::Closed(Stage::Ended),
        Stage::Open => {}
    }
    let start = offset.max(landed.frontier());
    if inflight.iter().any(|&(s, e)| s < end && start < e) {
        return Verdict::Busy;
    }
    Verdict::Write { start }
}

/// The set of landed byte ranges of one stream, kept as the frontier plus disjoint, non-adjacent
/// intervals beyond it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Landed {
    frontier: u64,
    /// start -> end of landed intervals strictly beyond the frontier (disjoint, non-touching).
    beyond: BTreeMap<u64, u64>,
}

impl Landed {
    /// Nothing landed yet.
    pub fn new() -> Landed {
        Landed::default()
    }

    /// End of the contiguous landed prefix.
    pub fn frontier(&self) -> u64 {
        self.frontier
    }

    /// Number of separate landed intervals beyond the frontier.
    pub fn pending_intervals(&self) -> usize {
        self.beyond.len()
    }

    /// Bytes landed beyond the frontier.
    pub fn pending_bytes(&self) -> u64 {
        self.beyond.iter().map(|(s, e)| e - s).sum()
    }

    /// Whether every byte of `[start, end)` has landed.
    pub fn contains(&self, start: u64, end: u64) -> bool {
        if end <= self.frontier || start >= end {
            return true;
        }
        let start = start.max(self.frontier);
        match self.beyond.range(..=start).next_back() {
            Some((_, &e)) => e >= end,
            None => false,
        }
    }

    /// Record `[start, end)` as landed (idempotent). Returns the new frontier.
    pub fn land(&mut self, start: u64, end: u64) -> u64 {
        if end <= start || end <= self.frontier {
            return self.frontier;
        }
        let mut s = start.max(self.frontier);
        let mut e = end;
        // Merge with an interval that starts at or before s and reaches s.
        if let Some((&ps, &pe)) = self.beyond.range(..=s).next_back()
            && pe >= s
        {
            s = ps;
            e = e.max(pe);
            self.beyond.remove(&ps);
        }
        // Absorb intervals starting inside [s, e].
        while let Some((&ns, &ne)) = self.beyond.range(s..=e).next() {
            e = e.max(ne);
            self.beyond.remove(&ns);
        }
        if s <= self.frontier {
            self.frontier = e;
        } else {
            self.beyond.insert(s, e);
        }
        self.frontier
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order() {
        let mut l = Landed::new();
        assert_eq!(l.land(0, 10), 10);
        assert_eq!(l.land(10, 20), 20);
        assert_eq!(l.pending_intervals(), 0);
    }

    #[test]
    fn out_of_order_and_duplicates() {
        let mut l = Landed::new();
        assert_eq!(l.land(20, 30), 0);
        assert_eq!(l.land(40, 50), 0);
        assert_eq!(l.land(20, 30), 0);
        assert_eq!(l.pending_intervals(), 2);
        assert_eq!(l.pending_bytes(), 20);
        assert!(l.contains(22, 28));
        assert!(!l.contains(25, 35));
        assert_eq!(l.land(30, 40), 0);
        assert_eq!(l.pending_intervals(), 1);
        assert_eq!(l.land(0, 20), 50);
        assert_eq!(l.pending_intervals(), 0);
        assert_eq!(l.land(5, 15), 50);
        assert_eq!(l.land(45, 60), 60);
    }

    #[test]
    fn verdicts_check_landed_before_closed() {
        let mut l = Landed::new();
        l.land(0, 100);
        l.land(200, 300);
        // Open: duplicates, straddling the frontier, busy, new.
        assert_eq!(
            verdict(&l, Stage::Open, &[], 10, 20),
            Verdict::AlreadyLanded
        );
        assert_eq!(
            verdict(&l, Stage::Open, &[], 210, 300),
            Verdict::AlreadyLanded
        );
        assert_eq!(
            verdict(&l, Stage::Open, &[], 50, 150),
            Verdict::Write { start: 100 }
        );
        assert_eq!(
            verdict(&l, Stage::Open, &[], 150, 250),
            Verdict::Write { start: 150 }
        );
        assert_eq!(
            verdict(&l, Stage::Open, &[(120, 130)], 50, 150),
            Verdict::Busy
        );
        assert_eq!(
            verdict(&l, Stage::Open, &[(150, 160)], 50, 150),
            Verdict::Write { start: 100 }
        );
        // A range granted earlier and re-offered is busy, not landed.
        assert_eq!(
            verdict(&l, Stage::Open, &[(100, 200)], 100, 200),
            Verdict::Busy
        );
        // Ended: what landed is acknowledged (a late re-send), what did not is refused.
        l.land(100, 200);
        assert_eq!(l.frontier(), 300);
        assert_eq!(
            verdict(&l, Stage::Ended, &[], 0, 300),
            Verdict::AlreadyLanded
        );
        assert_eq!(
            verdict(&l, Stage::Ended, &[], 250, 300),
            Verdict::AlreadyLanded
        );
        assert_eq!(
            verdict(&l, Stage::Ended, &[], 250, 301),
            Verdict::Closed(Stage::Ended)
        );
        // Aborted: everything is refused.
        assert_eq!(
            verdict(&l, Stage::Aborted, &[], 0, 10),
            Verdict::Closed(Stage::Aborted)
        );
        assert_eq!(
            verdict(&l, Stage::Aborted, &[], 300, 310),
            Verdict::Closed(Stage::Aborted)
        );
    }

    #[test]
    fn overlapping_spans() {
        let mut l = Landed::new();
        l.land(10, 20);
        l.land(30, 40);
        l.land(50, 60);
        assert_eq!(l.land(15, 55), 0);
        assert_eq!(l.pending_intervals(), 1);
        assert_eq!(l.pending_bytes(), 50);
        assert_eq!(l.land(0, 10), 60);
        assert_eq!(l.land(7, 7), 60);
    }
}
