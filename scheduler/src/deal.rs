//! Smooth weighted round-robin, pure: who gets a job's next chunk.
//!
//! Each turn every eligible producer's counter grows by its weight; the largest counter wins
//! and gives back the eligible weights' sum. Over any run of turns each producer gets its
//! weight's share, evenly spread (nginx's "smooth" variant). Producers that are not eligible
//! this turn (no credit left, suspended) sit it out and keep their counter. With
//! `round_robin`, plain strict turns: the producer whose turn it is gets the next chunk, and
//! when it cannot take one nobody does (the baseline that lets the slowest producer set the
//! pace).

use std::collections::BTreeMap;

use crate::core::NodeId;

/// The dealer of one job.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Swrr {
    weights: BTreeMap<NodeId, f64>,
    current: BTreeMap<NodeId, f64>,
    round_robin: bool,
    /// Strict turns: whose turn it is, counted over `weights` in order.
    turn: usize,
}

impl Swrr {
    /// A dealer over these weights (non-positive weights never win).
    pub fn new(weights: impl IntoIterator<Item = (NodeId, f64)>, round_robin: bool) -> Swrr {
        let mut s = Swrr {
            round_robin,
            ..Swrr::default()
        };
        s.set_weights(weights);
        s
    }

    /// New weights; counters of producers still present are kept.
    pub fn set_weights(&mut self, weights: impl IntoIterator<Item = (NodeId, f64)>) {
        self.weights = weights
            .into_iter()
            .map(|(n, w)| (n, if self.round_robin { 1.0 } else { w }))
            .filter(|(_, w)| *w > 0.0 && w.is_finite())
            .collect();
        self.current.retain(|n, _| self.weights.contains_key(n));
    }

    /// The producers it deals to.
    pub fn nodes(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.weights.keys().copied()
    }

    /// The next producer among those `eligible` says yes to, or None.
    pub fn next(&mut self, eligible: impl Fn(NodeId) -> bool) -> Option<NodeId> {
        if self.round_robin {
            let n = self.weights.len();
            let who = *self.weights.keys().nth(self.turn % n.max(1))?;
            if !eligible(who) {
                return None;
            }
            self.turn = (self.turn + 1) % n;
            return Some(who);
        }
        let live: Vec<(NodeId, f64)> = self
            .weights
            .iter()
            .filter(|(n, _)| eligible(**n))
            .map(|(n, w)| (*n, *w))
            .collect();
        if live.is_empty() {
            return None;
        }
        let total: f64 = live.iter().map(|(_, w)| w).sum();
        let mut best: Option<(NodeId, f64)> = None;
        for (n, w) in &live {
            let c = self.current.entry(*n).or_insert(0.0);
            *c += w;
            if best.is_none_or(|(_, b)| *c > b) {
                best = Some((*n, *c));
            }
        }
        let (winner, _) = best?;
        if let Some(c) = self.current.get_mut(&winner) {
            *c -= total;
        }
        Some(winner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deal(s: &mut Swrr, n: usize) -> BTreeMap<NodeId, usize> {
        let mut m = BTreeMap::new();
        for _ in 0..n {
            *m.entry(s.next(|_| true).unwrap()).or_insert(0) += 1;
        }
        m
    }

    #[test]
    fn shares_follow_weights_evenly() {
        let mut s = Swrr::new(
            [(NodeId(1), 5.0), (NodeId(2), 1.0), (NodeId(3), 1.0)],
            false,
        );
        // nginx's example: a a b a c a a for weights 5, 1, 1.
        let seq: Vec<u64> = (0..7).map(|_| s.next(|_| true).unwrap().0).collect();
        assert_eq!(seq, vec![1, 1, 2, 1, 3, 1, 1]);
        let m = deal(&mut s, 700);
        assert_eq!(m[&NodeId(1)], 500);
        assert_eq!(m[&NodeId(2)], 100);
    }

    #[test]
    fn round_robin_ignores_weights_and_waits_for_whose_turn_it_is() {
        let mut s = Swrr::new([(NodeId(1), 5.0), (NodeId(2), 1.0)], true);
        let m = deal(&mut s, 10);
        assert_eq!((m[&NodeId(1)], m[&NodeId(2)]), (5, 5));
        assert_eq!(s.next(|_| true), Some(NodeId(1)));
        // Node 2's turn, and it cannot take one: nobody gets it.
        assert_eq!(s.next(|n| n == NodeId(1)), None);
        assert_eq!(s.next(|_| true), Some(NodeId(2)));
    }

    #[test]
    fn ineligible_producers_sit_out() {
        let mut s = Swrr::new([(NodeId(1), 1.0), (NodeId(2), 1.0)], false);
        for _ in 0..4 {
            assert_eq!(s.next(|n| n == NodeId(2)), Some(NodeId(2)));
        }
        assert_eq!(s.next(|_| false), None);
        s.set_weights([(NodeId(2), 1.0)]);
        assert_eq!(s.nodes().collect::<Vec<_>>(), vec![NodeId(2)]);
    }
}
