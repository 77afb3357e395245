//! Pure bookkeeping of landed ranges: ranges `[start, end)` of the stream land in any order and
//! any number of times; the frontier is the end of the contiguous landed prefix from 0.

use std::collections::BTreeMap;

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
