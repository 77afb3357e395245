//! `spate sim`: a trivial cluster's figures equal the ones computed by hand, and a run is
//! the same for the same seed. The simulator drives the scheduler core through its public
//! interface only: it is in this crate (spate-bench), so nothing private of spate-scheduler
//! is reachable from it.

use spate_bench::sim::engine::{Setup, simulate};
use spate_bench::sim::{Args, run};

fn one_to_one(delay_s: f64) -> Setup {
    Setup {
        nodes: 2,
        producers: vec![0],
        streams: vec![1],
        // 1 Gbit/s.
        nic_bps: 125e6,
        interfaces: 1,
        delay_s,
        local_bps: 10e9,
        kernel_s_per_byte: 0.0,
        compute_bps: None,
        chunk_overhead_s: 0.0,
        ctrl_delay_s: 0.0,
        preload_bytes: 0.0,
        producer_memory: 1 << 30,
        consumer_memory: 1 << 30,
        // 6 chunks of 1000 lines of 1000 bytes (1 MB), one stream on n1.
        spec: "kernel = \"null\"\nlines = 6000\nline_bytes = 1000\nchunk = { lines = 1000 }\n\
               policy = \"load-balance\"\nnode = \"n1\"\n"
            .into(),
        jitter: 0.0,
        seed: 1,
        horizon_s: 60.0,
    }
}

#[test]
fn one_producer_one_consumer_one_link_by_hand() {
    // load-balance keeps 3 tasks on the producer; null compute takes no time, so the three
    // chunks of a round share the link from its start: each gets B/3 and all end at 3S/B;
    // each lands one delay d later and is acked one more d later, when the next round
    // starts. 6 chunks = 2 rounds of 3S/B + 2d = 24 ms + 1 ms.
    let d = 0.0005;
    let o = simulate(&one_to_one(d)).unwrap();
    assert_eq!(o.end, Some(spate_scheduler::core::JobEnd::Completed));
    assert_eq!(o.bytes, 6_000_000);
    assert_eq!(o.flows, 6);
    let round = 3.0 * 1e6 / 125e6 + 2.0 * d;
    assert!((o.seconds - 2.0 * round).abs() < 1e-9, "{} s", o.seconds);
    let gbit = o.bytes as f64 * 8.0 / o.seconds / 1e9;
    assert!((gbit - 0.96).abs() < 1e-9, "{gbit} Gbit/s");
    // Every chunk: created at its round's start, done at its end (µs, histogram precision).
    let h = &o.chunk_latency_us;
    assert_eq!(h.len(), 6);
    for q in [0.0, 0.5, 1.0] {
        let v = h.value_at_quantile(q) as f64;
        assert!((v - 25_000.0).abs() <= 25.0, "latency at {q}: {v} us");
    }
    // Three 1 MB chunk buffers held at once.
    assert_eq!(o.producer_memory_peak, 3_000_000);
}

fn args(out: std::path::PathBuf, seed: u64) -> Args {
    Args {
        seed,
        jitter: 0.05,
        policies: vec!["tclo".into(), "load-balance".into()],
        nodes: vec![8],
        links: vec![25.0],
        predict_jobs: vec!["A".into()],
        kernel: "null".into(),
        rip_gbit: 1.9,
        delay_us: 50.0,
        ctrl_delay_us: 100.0,
        kernel_ns_per_byte: 0.0,
        local_gbit: 80.0,
        validate: false,
        against: None,
        out,
        json: true,
    }
}

/// The report without its timings (wall time spent in the core is not simulated).
fn figures(dir: &std::path::Path) -> serde_json::Value {
    let text = std::fs::read_to_string(dir.join("report.json")).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    for r in v["runs"].as_array_mut().unwrap() {
        r.as_object_mut().unwrap().remove("sched_cpu_s_per_sim_s");
    }
    v.as_object_mut().unwrap().remove("files");
    v
}

#[test]
fn the_same_seed_gives_the_same_report() {
    let t = tempfile::tempdir().unwrap();
    let (a, b, c) = (t.path().join("a"), t.path().join("b"), t.path().join("c"));
    assert_eq!(run(args(a.clone(), 7)).unwrap(), 0);
    assert_eq!(run(args(b.clone(), 7)).unwrap(), 0);
    assert_eq!(run(args(c.clone(), 8)).unwrap(), 0);
    let (fa, fb, fc) = (figures(&a), figures(&b), figures(&c));
    assert_eq!(fa, fb);
    // The seed is used: jitter drawn from another seed moves the figures.
    assert_ne!(fa["runs"], fc["runs"]);
    let runs = fa["runs"].as_array().unwrap();
    // Reference (3 jobs x 4 topologies) and predictions (1 job x 4 topologies), 2 policies.
    assert_eq!(runs.len(), (12 + 4) * 2);
    for key in [
        "topology",
        "nodes",
        "link_gbit",
        "job",
        "policy",
        "sim_gbit_per_s",
        "limit_gbit_per_s",
        "ratio",
        "chunk_latency_us",
        "events",
    ] {
        assert!(runs[0].get(key).is_some(), "no {key}");
    }
    // The reference limits: 9.466 Gbit/s distant, N·C/(C−1)·H many-to-many.
    let limit = |topo: &str| {
        runs.iter()
            .find(|r| r["topology"] == topo && r["nodes"] != 8)
            .unwrap()["limit_gbit_per_s"]
            .as_f64()
            .unwrap()
    };
    assert!((limit("distant-1x1") - 9.466).abs() < 1e-6);
    assert!((limit("1xN") - 9.466).abs() < 1e-6);
    assert!((limit("Nx1") - 9.466).abs() < 1e-6);
    assert!((limit("NxN") - 9.466 * 5.0 / 4.0 * 5.0).abs() < 1e-6);
    assert!(a.join("sim-reference-5n-10g-tclo.svg").exists());
}

#[test]
fn validation_without_a_report_has_no_measured_figures() {
    let t = tempfile::tempdir().unwrap();
    let mut a = args(t.path().to_path_buf(), 1);
    a.validate = true;
    assert_eq!(run(a).unwrap(), 0);
    let v = figures(t.path());
    let val = v["validation"].as_array().unwrap();
    // Jobs B and C on the five topologies of bench cluster.
    assert_eq!(val.len(), 10);
    assert!(val.iter().all(|x| x["measured_gbit_per_s"].is_null()));
    assert!(
        val.iter()
            .all(|x| x["sim_gbit_per_s"].as_f64().unwrap() > 0.0)
    );
}
