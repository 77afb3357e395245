//! The scheduling model's placements against brute force and against each other, on seeded
//! random small clusters; and every refusal reason.

use std::collections::BTreeMap;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use spate_scheduler::core::NodeId;
use spate_scheduler::model::{
    ChunkSize, Cluster, ConsumerCap, Demand, JobShape, LinkCap, ProducerCap, Reason, StreamShape,
    bsearch_under_latency, max_under_latency, place_rate, predict,
};

fn producer(i: u64, compute: f64, overhead: f64, preload: f64, egress: f64) -> ProducerCap {
    ProducerCap {
        id: NodeId(i),
        host: format!("p{i}"),
        compute,
        overhead,
        preload,
        egress,
        ports: 64,
        avail: 1.0,
    }
}

fn consumer(i: u64, ingress: f64, memory: Option<u64>) -> ConsumerCap {
    ConsumerCap {
        id: NodeId(100 + i),
        host: format!("c{i}"),
        ingress,
        ports: 64,
        memory,
    }
}

fn cluster(producers: Vec<ProducerCap>, consumers: Vec<ConsumerCap>) -> Cluster {
    Cluster {
        producers,
        consumers,
        links: BTreeMap::new(),
        local: LinkCap {
            rate: 5e9,
            overhead: 0.0,
            delay: 0.0,
        },
        remote: LinkCap {
            rate: f64::INFINITY,
            overhead: 20e-6,
            delay: 100e-6,
        },
    }
}

/// One stream per consumer, equal shares; chunk sizes 2^k KiB from `k0` to `k1`.
fn shape(consumers: &[ConsumerCap], k0: u32, k1: u32) -> JobShape {
    let n = consumers.len() as f64;
    JobShape {
        streams: consumers
            .iter()
            .map(|c| StreamShape {
                consumer: c.id,
                len: 1 << 40,
                share: 1.0 / n,
                piece_per_chunk_byte: 1.0 / n,
            })
            .collect(),
        sizes: (k0..=k1)
            .map(|k| ChunkSize {
                lines: 1 << k,
                bytes: (1u64 << k) * 1024,
            })
            .collect(),
        total: 1 << 40,
        window_factor: 1.0,
        max_chunk_rate: f64::INFINITY,
        jitter: 0.0,
    }
}

fn random_cluster(rng: &mut ChaCha8Rng, ingress: f64) -> Cluster {
    let n = rng.random_range(1..=6);
    let producers = (0..n)
        .map(|i| {
            producer(
                i,
                rng.random_range(50e6..800e6),
                rng.random_range(0.0..2e-3),
                rng.random_range(0.0..1.5e-3),
                rng.random_range(100e6..3e9),
            )
        })
        .collect();
    let m = rng.random_range(1..=2);
    let consumers = (0..m).map(|i| consumer(i, ingress, None)).collect();
    cluster(producers, consumers)
}

/// Every subset of producers at one size: the least L among those whose capacity reaches
/// `need` (ties: fewer producers).
fn brute_force(
    c: &Cluster,
    sh: &JobShape,
    s: ChunkSize,
    need: f64,
    rate: f64,
) -> Option<(f64, usize)> {
    let n = c.producers.len();
    let mut best: Option<(f64, usize)> = None;
    for mask in 1u32..(1 << n) {
        let set: Vec<usize> = (0..n).filter(|i| mask & (1 << i) != 0).collect();
        let Some(p) = predict(c, sh, s, &set, Some(rate)) else {
            continue;
        };
        if p.capacity < need {
            continue;
        }
        let better = best.is_none_or(|(l, k)| p.latency < l || (p.latency == l && set.len() < k));
        if better {
            best = Some((p.latency, set.len()));
        }
    }
    best
}

#[test]
fn prefix_choice_equals_brute_force_without_port_or_ingress_limits() {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let mut compared = 0;
    for _ in 0..400 {
        let c = random_cluster(&mut rng, f64::INFINITY);
        let k = rng.random_range(6..=12);
        let sh = shape(&c.consumers, k, k);
        let s = sh.sizes[0];
        let rate = rng.random_range(50e6..2e9);
        let d = Demand {
            rate: Some(rate),
            headroom: 0.05,
            latency: None,
        };
        let bf = brute_force(&c, &sh, s, rate * 1.05, rate);
        match (place_rate(&c, &sh, &d), bf) {
            (Ok(p), Some((l, n))) => {
                assert!((p.latency - l).abs() <= 1e-12 * l, "{} vs {l}", p.latency);
                assert_eq!(p.stages.len(), n);
                compared += 1;
            }
            (Err(_), None) => {}
            (a, b) => panic!("prefix {:?} vs brute force {b:?}", a.map(|p| p.latency)),
        }
    }
    assert!(compared > 100, "only {compared} feasible instances");
}

#[test]
fn prefix_choice_is_feasible_and_never_beats_brute_force_with_shared_ingress() {
    let mut rng = ChaCha8Rng::seed_from_u64(12);
    for _ in 0..300 {
        let ingress = rng.random_range(200e6..2e9);
        let c = random_cluster(&mut rng, ingress);
        let k = rng.random_range(6..=12);
        let sh = shape(&c.consumers, k, k);
        let s = sh.sizes[0];
        let rate = rng.random_range(50e6..1e9);
        let d = Demand {
            rate: Some(rate),
            headroom: 0.05,
            latency: None,
        };
        let bf = brute_force(&c, &sh, s, rate * 1.05, rate);
        if let Ok(p) = place_rate(&c, &sh, &d) {
            assert!(p.capacity >= rate * 1.05);
            let (l, _) = bf.expect("brute force finds what the prefix found");
            assert!(p.latency >= l - 1e-12 * l);
        }
    }
}

#[test]
fn binary_search_lands_within_eps_of_the_exact_inverse() {
    let mut rng = ChaCha8Rng::seed_from_u64(13);
    let mut compared = 0;
    for _ in 0..60 {
        let ingress = rng.random_range(500e6..5e9);
        let c = random_cluster(&mut rng, ingress);
        let sh = shape(&c.consumers, 5, 12);
        let lmax = rng.random_range(2e-3..40e-3);
        let headroom = 0.05;
        let exact = max_under_latency(&c, &sh, lmax).map_or(0.0, |p| p.capacity / (1.0 + headroom));
        let found = bsearch_under_latency(&c, &sh, lmax, headroom, 1e-4, 4);
        if exact == 0.0 {
            assert_eq!(found, 0.0);
            continue;
        }
        assert!(
            (found - exact).abs() <= 0.01 * exact,
            "bsearch {found} vs exact {exact}"
        );
        compared += 1;
    }
    assert!(
        compared > 30,
        "only {compared} instances with a feasible bound"
    );
}

#[test]
fn every_refusal_reason() {
    // Compute: two producers of 100 MB/s cannot feed 1 GB/s.
    let c = cluster(
        vec![
            producer(0, 100e6, 0.0, 0.0, 10e9),
            producer(1, 100e6, 0.0, 0.0, 10e9),
        ],
        vec![consumer(0, 10e9, None)],
    );
    let sh = shape(&c.consumers, 6, 10);
    let d = |rate: f64, latency: Option<f64>| Demand {
        rate: Some(rate),
        headroom: 0.05,
        latency,
    };
    let r = place_rate(&c, &sh, &d(1e9, None)).unwrap_err();
    assert_eq!(r.reason, Reason::Compute);
    assert!(
        r.max_feasible > 180e6 && r.max_feasible < 200e6 / 1.05 + 1.0,
        "{r:?}"
    );
    // Links: fast producers, a 100 MB/s consumer NIC.
    let c = cluster(
        vec![producer(0, 5e9, 0.0, 0.0, 10e9)],
        vec![consumer(0, 100e6, None)],
    );
    let sh = shape(&c.consumers, 6, 10);
    let r = place_rate(&c, &sh, &d(1e9, None)).unwrap_err();
    assert_eq!(r.reason, Reason::Links);
    // Memory: 1 MB of ring cannot hold the prefill and window.
    let c = cluster(
        vec![producer(0, 5e9, 0.0, 0.0, 10e9)],
        vec![consumer(0, 10e9, Some(1 << 20))],
    );
    let sh = shape(&c.consumers, 9, 12);
    let r = place_rate(&c, &sh, &d(1e9, None)).unwrap_err();
    assert_eq!(r.reason, Reason::Memory);
    // Latency: 1 GB/s is feasible, but not within 10 µs.
    let c = cluster(
        vec![producer(0, 5e9, 0.0, 0.0, 10e9)],
        vec![consumer(0, 10e9, None)],
    );
    let sh = shape(&c.consumers, 6, 10);
    assert!(place_rate(&c, &sh, &d(1e9, None)).is_ok());
    let r = place_rate(&c, &sh, &d(1e9, Some(10e-6))).unwrap_err();
    assert_eq!(r.reason, Reason::Latency);
    assert_eq!(r.max_feasible, 0.0);
}
