//! `spate bench scheduler` in a small configuration: it runs the core, the hub and the real
//! server, and its report has the keys the issue names, with figures from this run.

use spate_bench::sched::{Args, run};

#[test]
fn a_small_run_reports_every_key() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let a = Args {
        producers: 6,
        consumers: 2,
        jobs: 4,
        lines: 64,
        policy: "load-balance".into(),
        events: 4000,
        submit_jobs: 40,
        in_flight: 10,
        growth: vec![4, 8],
        out: out.clone(),
        json: true,
    };
    assert_eq!(run(a).unwrap(), 0);
    let text = std::fs::read_to_string(out.join("report.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    for key in [
        "events_per_s",
        "submit_accept_p50_us",
        "submit_accept_p99_us",
        "growth",
        "control_messages_per_job",
        "memory_per_job_bytes",
        "hub_messages_per_s",
    ] {
        assert!(v.get(key).is_some(), "no {key:?} in {text}");
    }
    assert_eq!(v["events"], 4000);
    assert!(v["events_per_s"].as_f64().unwrap() > 0.0);
    // 8 lines per chunk.
    assert_eq!(v["chunks_per_job"], 8);
    // Jobs of 8 chunks on 6 producers finish well within 4000 events.
    assert!(v["jobs_completed"].as_u64().unwrap() > 4, "{text}");
    assert_eq!(v["submit_accept_us"]["count"], 40);
    assert!(
        v["submit_accept_p50_us"].as_u64().unwrap() <= v["submit_accept_p99_us"].as_u64().unwrap()
    );
    let g = v["growth"].as_array().unwrap();
    let nodes: Vec<u64> = g.iter().map(|r| r["nodes"].as_u64().unwrap()).collect();
    assert_eq!(nodes, [4, 8]);
    // 4 producers per consumer, at least one consumer.
    assert_eq!(
        (g[0]["producers"].as_u64(), g[0]["consumers"].as_u64()),
        (Some(3), Some(1))
    );
    assert_eq!(
        (g[1]["producers"].as_u64(), g[1]["consumers"].as_u64()),
        (Some(7), Some(1))
    );
    assert!(out.join("submit_accept.hgrm").exists());
}

#[test]
fn bad_sizes_are_refused_naming_the_flag() {
    let a = Args {
        producers: 0,
        consumers: 2,
        jobs: 4,
        lines: 64,
        policy: "load-balance".into(),
        events: 10,
        submit_jobs: 1,
        in_flight: 1,
        growth: vec![],
        out: std::env::temp_dir(),
        json: true,
    };
    let e = run(a).unwrap_err().to_string();
    assert!(e.contains("--producers"), "{e}");
}
