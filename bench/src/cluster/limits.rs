//! The theoretical throughput limit of each topology, from measured capacities (pure arithmetic).
//!
//! # Model
//!
//! A job's output is split into streams placed on consumer nodes; consumer node `c` holds the
//! share `s_c` of the job's bytes (`Σ s_c = 1`). Every compute task produces a line range of ALL
//! streams, so a producer sends a piece of each task to every consumer. Tasks are taken on
//! demand; the model gives each of the `C` producers an equal fraction `x = 1/C` of the tasks
//! (the node running no producer has `x = 0`). Bytes for a consumer on the producer's own node
//! do not cross the network.
//!
//! The job's throughput `T` (job bytes per second) is then bounded by
//! - the ingress of each consumer node `j`: `T · s_j · (1 − x_j) ≤ ingress_j`, and
//! - the egress of each producer node `i`: `T · x_i · (1 − s_i) ≤ egress_i`,
//!
//! and the limit is the largest `T` meeting every bound. Capacities ([`NodeCaps`]) are a node's
//! measured payload rates summed over its interfaces, in Gbit/s, so limits come out in Gbit/s of
//! job bytes. A node where nothing crosses the network adds no bound; when no node has a bound
//! the limit is `+inf`.
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

/// The limit (Gbit/s of job bytes) of a job placed on `nodes`, per the module's model.
/// `+inf` when nothing crosses the network (including when no node runs a producer).
pub fn limit(nodes: &[Placement]) -> f64 {
    let producers = nodes.iter().filter(|n| n.producer).count();
    if producers == 0 {
        return f64::INFINITY;
    }
    let x = 1.0 / producers as f64;
    let mut t = f64::INFINITY;
    for n in nodes {
        let xi = if n.producer { x } else { 0.0 };
        let inbound = n.share * (1.0 - xi);
        if inbound > EPS {
            t = t.min(n.caps.ingress_gbit / inbound);
        }
        let outbound = xi * (1.0 - n.share);
        if outbound > EPS {
            t = t.min(n.caps.egress_gbit / outbound);
        }
    }
    t
}

/// Local one-to-one: every byte crosses a UNIX socket once and is bounded by a memory copy.
pub fn limit_local(raw_unix_gbit: f64, memcpy_gbit: f64) -> f64 {
    raw_unix_gbit.min(memcpy_gbit)
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
    fn local_is_the_slower_of_socket_and_memcpy() {
        assert_eq!(limit_local(30.0, 80.0), 30.0);
        assert_eq!(limit_local(90.0, 80.0), 80.0);
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
        assert_eq!(limit_distant_1x1(p, c), 1.5);
        assert_eq!(limit_distant_1x1(c, p), 9.0);
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
        // 4 streams on 3 nodes of 1 Gbit/s: shares 1/2, 1/4, 1/4; x = 1/3.
        // Ingress: node 0: T · 1/2 · 2/3 = T/3 ≤ 1 → T ≤ 3; nodes 1, 2: T · 1/4 · 2/3 = T/6 → 6.
        // Egress: node 0: T · 1/3 · 1/2 = T/6 → 6; nodes 1, 2: T · 1/3 · 3/4 = T/4 → 4.
        let caps = NodeCaps::symmetric(1.0);
        let nodes = [(caps, 0.5), (caps, 0.25), (caps, 0.25)];
        assert!(close(limit_n_to_n(&nodes), 3.0));
        // Give node 0 twice the ingress: its bound becomes 6, the egress of nodes 1, 2 binds: 4.
        let big = NodeCaps {
            egress_gbit: 1.0,
            ingress_gbit: 2.0,
        };
        assert!(close(
            limit_n_to_n(&[(big, 0.5), (caps, 0.25), (caps, 0.25)]),
            4.0
        ));
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
