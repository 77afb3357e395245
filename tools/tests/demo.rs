//! `spate demo` end to end: a scheduler, producer and consumer daemons as separate processes,
//! one job, every stream read through the ring and verified byte for byte by the demo's readers.

use std::process::Command;

fn demo(args: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_spate"))
        .arg("demo")
        .args(args)
        .args(["--json", "--timeout", "240"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "spate demo {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn one_to_one_pattern_job_is_verified() {
    let v = demo(&["--job", "64MiB", "--chunk", "4MiB"]);
    assert_eq!(v["bytes"], 64u64 << 20);
    assert_eq!(v["streams"], 1);
    assert_eq!(v["verified"], true);
    assert!(v["gbit_per_s"].as_f64().unwrap() > 0.0);
    for k in ["wait_us_p50", "wait_us_p99", "wait_us_p999", "wait_us_max"] {
        assert!(v[k].is_u64(), "{k} in {v}");
    }
}

#[test]
fn many_to_many_pattern_job_is_verified() {
    // Two producers, two consumers: the size is split into one stream per consumer.
    let v = demo(&[
        "--job",
        "32MiB",
        "--producers",
        "2",
        "--consumers",
        "2",
        "--chunk",
        "1MiB",
    ]);
    assert_eq!(v["bytes"], 32u64 << 20);
    assert_eq!(v["streams"], 2);
    assert_eq!(v["verified"], true);
}

#[test]
fn bad_job_size_is_refused_with_the_reason() {
    let out = Command::new(env!("CARGO_BIN_EXE_spate"))
        .args(["demo", "--job", "100KiB"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("multiple of 64 KiB"), "{err}");
}
