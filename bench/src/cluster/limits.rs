//! The theoretical throughput limit of each topology, from measured capacities (pure arithmetic).
//!
//! # Model
//!
//! A job's output is split into streams placed on consumer nodes; consumer node `c` holds the
//! share `s_c` of the job's bytes (`Σ s_c = 1`). Every compute task produces a line range of ALL
//! streams, so a producer sends a piece of each task to every consumer. Producer node `i` does
//! the fraction `x_i` of the tasks (`Σ x_i = 1`; `x = 0` on a node running no producer). Bytes
//! for a consumer on the producer's own node do not cross the network.
//!
//! The job's throughput `T` (job bytes per second) is then bounded by
//! - the ingress of each consumer node `j`: `T · s_j · (1 − x_j) ≤ ingress_j`, and
//! - the egress of each producer node `i`: `T · x_i · (1 − s_i) ≤ egress_i`.
//!
//! Tasks are handed out on demand, so the split `x` is whatever keeps every producer busy: the
//! limit is the largest `T` for which SOME split meets every bound (what a perfect balance
//! reaches; found by bisection on `T`, the split's feasibility being an interval check). With
//! equal capacities and shares the best split is `x = 1/C` and the limit is the reference's
//! `N × C/(C−1) × H`. Capacities ([`NodeCaps`]) are a node's measured payload rates summed over
//! its interfaces, in Gbit/s, so limits come out in Gbit/s of job bytes. When nothing has to
//! cross the network the limit is `+inf`.
//!
//! Local one-to-one ([`limit_local`]) is different: nothing crosses a network, every byte goes
//! once over a UNIX socket and is bounded by a memory copy, so its limit is the smaller of the
//! two measured rates.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Coefficients below this are rounding noise of shares/fractions that cancel (`1 − 1`).
const EPS: f64 = 1e-12;

/// The topologies of the reference experiments.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Topology {
    /// One producer and one consumer on the same node (UNIX socket).
    #[serde(rename = "local-1x1")]
    Local1x1,
    /// One producer and one consumer on two nodes.
    #[serde(rename = "distant-1x1")]
    Distant1x1,
    /// One producer node feeding N consumer nodes.
    #[serde(rename = "1xN")]
    OneToN,
    /// N producer nodes feeding one consumer node.
    #[serde(rename = "Nx1")]
    NToOne,
    /// N nodes, each a producer and a consumer.
    #[serde(rename = "NxN")]
    NToN,
}

impl Topology {
    /// Every topology, in the order the experiments run them.
    pub const ALL: [Topology; 5] = [
        Topology::Local1x1,
        Topology::Distant1x1,
        Topology::OneToN,
        Topology::NToOne,
        Topology::NToN,
    ];

    /// The topology's name: "local-1x1", "distant-1x1", "1xN", "Nx1" or "NxN".
    pub fn as_str(self) -> &'static str {
        match self {
            Topology::Local1x1 => "local-1x1",
            Topology::Distant1x1 => "distant-1x1",
            Topology::OneToN => "1xN",
            Topology::NToOne => "Nx1",
            Topology::NToN => "NxN",
        }
    }
}

impl fmt::Display for Topology {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A topology name that is none of [`Topology::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown topology {0:?}: use one of local-1x1, distant-1x1, 1xN, Nx1, NxN")]
pub struct UnknownTopology(pub String);

impl FromStr for Topology {
    type Err = UnknownTopology;

    /// Parses a topology name, ignoring case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Topology::ALL
            .into_iter()
            .find(|t| t.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| UnknownTopology(s.to_owned()))
    }
}

/// A node's network capacity: measured payload rates summed over its interfaces, in Gbit/s.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeCaps {
    /// What the node can send.
    pub egress_gbit: f64,
    /// What the node can receive.
    pub ingress_gbit: f64,
}

impl NodeCaps {
    /// The same capacity in both directions.
    pub fn symmetric(gbit: f64) -> Self {
        NodeCaps {
            egress_gbit: gbit,
            ingress_gbit: gbit,
        }
    }
}

/// What a node does in a job: whether it runs a producer, and the share of the job's bytes its
/// consumer holds (0 when it holds no stream).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Placement {
    /// The node's capacity.
    pub caps: NodeCaps,
    /// Whether a producer runs on the node.
    pub producer: bool,
    /// The share of the job's bytes landing on this node (Σ over nodes = 1).
    pub share: f64,
}

/// The limit (Gbit/s of job bytes) of a job placed on `nodes`, per the module's model: the
/// largest throughput some split of the tasks between the producers can carry. `+inf` when
/// nothing has to cross the network (including when no node runs a producer).
pub fn limit(nodes: &[Placement]) -> f64 {
    if !nodes.iter().any(|n| n.producer) {
        return f64::INFINITY;
    }
    let big = 1e12;
    if feasible(nodes, big) {
        return f64::INFINITY;
    }
    // feasible(t) is monotone: bounds on each x_i only tighten as t grows.
    let (mut lo, mut hi) = (0.0, big);
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if feasible(nodes, mid) {
            lo = mid;
        } else {
            hi = mid;
        }
        if hi - lo <= 1e-12 * hi {
            break;
        }
    }
    lo
}

/// Whether some split of the tasks (`x_i ≥ 0` on producer nodes, 0 elsewhere, `Σ x_i = 1`)
/// carries throughput `t` within every node's capacity.
fn feasible(nodes: &[Placement], t: f64) -> bool {
    let (mut sum_lo, mut sum_hi) = (0.0, 0.0);
    for n in nodes {
        // Ingress: t · s · (1 − x) ≤ in  ⇔  x ≥ 1 − in / (t · s).
        let lo = if n.share > EPS {
            1.0 - n.caps.ingress_gbit / (t * n.share)
        } else {
            f64::NEG_INFINITY
        };
        if !n.producer {
            if lo > EPS {
                return false;
            }
            continue;
        }
        // Egress: t · x · (1 − s) ≤ out  ⇔  x ≤ out / (t · (1 − s)).
        let hi = if 1.0 - n.share > EPS {
            n.caps.egress_gbit / (t * (1.0 - n.share))
        } else {
            f64::INFINITY
        };
        let (lo, hi) = (lo.max(0.0), hi.min(1.0));
        if lo > hi + EPS {
            return false;
        }
        sum_lo += lo;
        sum_hi += hi;
    }
    sum_lo <= 1.0 + EPS && sum_hi >= 1.0 - EPS
}

/// Local one-to-one: the consumer copies every byte once, from the producer's shared buffer
/// into the ring (raw connections' pull path), so one memory copy is the limit. A transfer
/// through a UNIX socket (two copies) is measured beside it but bounds only the socket path,
/// which local producers no longer take.
pub fn limit_local(memcpy_gbit: f64) -> f64 {
    memcpy_gbit
}

/// Distant one-to-one: producer node `p` sends everything to consumer node `c`.
pub fn limit_distant_1x1(p: NodeCaps, c: NodeCaps) -> f64 {
    limit(&[
        Placement {
            caps: p,
            producer: true,
            share: 0.0,
        },
        Placement {
            caps: c,
            producer: false,
            share: 1.0,
        },
    ])
}

/// One producer node `p` feeding consumer nodes (other than `p`) holding the given shares.
pub fn limit_one_to_n(p: NodeCaps, consumers: &[(NodeCaps, f64)]) -> f64 {
    let mut nodes = vec![Placement {
        caps: p,
        producer: true,
        share: 0.0,
    }];
    nodes.extend(consumers.iter().map(|&(caps, share)| Placement {
        caps,
        producer: false,
        share,
    }));
    limit(&nodes)
}

/// Producer nodes feeding one consumer node `c` (other than the producers') holding every stream.
pub fn limit_n_to_one(producers: &[NodeCaps], c: NodeCaps) -> f64 {
    let mut nodes: Vec<Placement> = producers
        .iter()
        .map(|&caps| Placement {
            caps,
            producer: true,
            share: 0.0,
        })
        .collect();
    nodes.push(Placement {
        caps: c,
        producer: false,
        share: 1.0,
    });
    limit(&nodes)
}

/// Every node runs a producer and a consumer holding the given share.
pub fn limit_n_to_n(nodes: &[(NodeCaps, f64)]) -> f64 {
    let nodes: Vec<Placement> = nodes
        .iter()
        .map(|&(caps, share)| Placement {
            caps,
            producer: true,
            share,
        })
        .collect();
    limit(&nodes)
}

/// The reference paper's many-to-many limit: `N × C/(C−1) × H` for link capacity `n_gbit`,
/// `c` producers and `h` nodes. `+inf` for `c ≤ 1` (nothing crosses the network).
pub fn reference_n_to_n(n_gbit: f64, c: usize, h: usize) -> f64 {
    if c <= 1 {
        return f64::INFINITY;
    }
    n_gbit * c as f64 / (c - 1) as f64 * h as f64
}

/// Measured over limit; 0 when the limit is not finite or not positive.
pub fn ratio(gbit: f64, limit: f64) -> f64 {
    if limit.is_finite() && limit > 0.0 {
        gbit / limit
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-9 * b.abs().max(1.0)
    }

    #[test]
    fn names_round_trip() {
        for t in Topology::ALL {
            assert_eq!(t.as_str().parse::<Topology>(), Ok(t));
            assert_eq!(t.to_string(), t.as_str());
            let json = serde_json::to_string(&t).unwrap();
            assert_eq!(json, format!("\"{}\"", t.as_str()));
            assert_eq!(serde_json::from_str::<Topology>(&json).unwrap(), t);
        }
        assert_eq!("nxn".parse::<Topology>(), Ok(Topology::NToN));
        assert_eq!("LOCAL-1X1".parse::<Topology>(), Ok(Topology::Local1x1));
        assert_eq!(
            "2x2".parse::<Topology>(),
            Err(UnknownTopology("2x2".to_owned()))
        );
    }

    #[test]
    fn local_is_one_memory_copy() {
        assert_eq!(limit_local(80.0), 80.0);
    }

    #[test]
    fn distant_one_to_one_is_the_narrower_direction() {
        let p = NodeCaps {
            egress_gbit: 2.0,
            ingress_gbit: 9.0,
        };
        let c = NodeCaps {
            egress_gbit: 9.0,
            ingress_gbit: 1.5,
        };
        assert!(close(limit_distant_1x1(p, c), 1.5));
        assert!(close(limit_distant_1x1(c, p), 9.0));
    }

    #[test]
    fn one_to_n_is_producer_egress_unless_a_consumer_is_narrower() {
        let p = NodeCaps::symmetric(2.0);
        // Three consumers of 2 Gbit/s with equal shares: each needs T/3 ≤ 2, T ≤ 6; egress T ≤ 2.
        let wide = [(NodeCaps::symmetric(2.0), 1.0 / 3.0); 3];
        assert!(close(limit_one_to_n(p, &wide), 2.0));
        // One consumer holds half and takes only 0.8: T · 0.5 ≤ 0.8 → T ≤ 1.6 < egress 2.
        let narrow = [
            (NodeCaps::symmetric(0.8), 0.5),
            (NodeCaps::symmetric(2.0), 0.25),
            (NodeCaps::symmetric(2.0), 0.25),
        ];
        assert!(close(limit_one_to_n(p, &narrow), 1.6));
    }

    #[test]
    fn n_to_one_is_consumer_ingress_unless_producers_are_narrower() {
        let c = NodeCaps::symmetric(2.0);
        assert!(close(
            limit_n_to_one(&[NodeCaps::symmetric(2.0); 3], c),
            2.0
        ));
        // Producers send T/3 each: T/3 ≤ 0.5 → T ≤ 1.5 < ingress 2.
        assert!(close(
            limit_n_to_one(&[NodeCaps::symmetric(0.5); 3], c),
            1.5
        ));
    }

    #[test]
    fn n_to_n_equal_shares_matches_the_reference_formula() {
        for h in 2..=6usize {
            let n = 2.5;
            let nodes = vec![(NodeCaps::symmetric(n), 1.0 / h as f64); h];
            let got = limit_n_to_n(&nodes);
            let want = reference_n_to_n(n, h, h);
            assert!(close(got, want), "H={h}: {got} vs {want}");
        }
        // H = 2 by hand: each node receives T/2 · (1 − 1/2) = T/4 ≤ 2.5 → T ≤ 10.
        assert!(close(
            limit_n_to_n(&[(NodeCaps::symmetric(2.5), 0.5); 2]),
            10.0
        ));
    }

    #[test]
    fn n_to_n_unequal_shares_by_hand() {
        // 4 streams on 3 nodes of 1 Gbit/s: shares 1/2, 1/4, 1/4. An equal split (x = 1/3)
        // would bind node 0's ingress at T/3 ≤ 1 → 3, but node 0's producer can take more of
        // the tasks: x = (1/2, 1/4, 1/4) gives node 0 ingress T · 1/2 · 1/2 ≤ 1 and egress
        // T · 1/2 · 1/2 ≤ 1 → T = 4 (nodes 1, 2: T · 1/4 · 3/4 = 3/4 ≤ 1 either way).
        let caps = NodeCaps::symmetric(1.0);
        let nodes = [(caps, 0.5), (caps, 0.25), (caps, 0.25)];
        assert!(close(limit_n_to_n(&nodes), 4.0), "{}", limit_n_to_n(&nodes));
        // Node 0 with ingress 2, egress 1: its egress T · x0 / 2 ≤ 1 and the others' egress
        // T · (1 − x0)/2 · 3/4 ≤ 1 meet at x0 = 3/7, T = 14/3 (ingress bounds are then slack).
        let big = NodeCaps {
            egress_gbit: 1.0,
            ingress_gbit: 2.0,
        };
        let got = limit_n_to_n(&[(big, 0.5), (caps, 0.25), (caps, 0.25)]);
        assert!(close(got, 14.0 / 3.0), "{got}");
    }

    #[test]
    fn the_limit_is_never_below_an_equal_split() {
        // The equal split is one candidate: the limit is at least what it carries.
        let caps = [0.5, 1.0, 2.0, 3.0];
        let shares = [0.1, 0.2, 0.3, 0.4];
        for rot in 0..4 {
            let nodes: Vec<Placement> = (0..4)
                .map(|i| Placement {
                    caps: NodeCaps::symmetric(caps[(i + rot) % 4]),
                    producer: true,
                    share: shares[i],
                })
                .collect();
            let equal = nodes
                .iter()
                .flat_map(|n| {
                    [
                        n.caps.ingress_gbit / (n.share * 0.75),
                        n.caps.egress_gbit / (0.25 * (1.0 - n.share)),
                    ]
                })
                .fold(f64::INFINITY, f64::min);
            let best = limit(&nodes);
            assert!(best >= equal * (1.0 - 1e-9), "{best} < {equal}");
            // And every bound holds at the limit for the split it found: checked by
            // feasibility just below and infeasibility just above.
            assert!(feasible(&nodes, best * (1.0 - 1e-6)));
            assert!(!feasible(&nodes, best * (1.0 + 1e-6)));
        }
    }

    #[test]
    fn nothing_on_the_network_is_unbounded() {
        // One node producing and holding everything.
        assert_eq!(
            limit_n_to_n(&[(NodeCaps::symmetric(1.0), 1.0)]),
            f64::INFINITY
        );
        assert_eq!(limit(&[]), f64::INFINITY);
        assert_eq!(reference_n_to_n(1.0, 1, 1), f64::INFINITY);
        // A consumer without a producer anywhere: no job, no bound.
        assert_eq!(
            limit(&[Placement {
                caps: NodeCaps::symmetric(1.0),
                producer: false,
                share: 1.0
            }]),
            f64::INFINITY
        );
    }

    #[test]
    fn ratio_is_zero_without_a_finite_limit() {
        assert_eq!(ratio(1.0, 2.0), 0.5);
        assert_eq!(ratio(1.0, f64::INFINITY), 0.0);
        assert_eq!(ratio(1.0, 0.0), 0.0);
        assert_eq!(ratio(1.0, f64::NAN), 0.0);
    }
}
