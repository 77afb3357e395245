//! `spate bench local --json` end to end (small sizes): one local job per path (zero-copy,
//! pull, socket) on real daemons, every byte verified by the reader, each run with the stages
//! of its path measured in the same run and a limit and ratio computed from them. The figures
//! themselves are not asserted (performance is measured, not tested), only that the report is
//! what it says it is.

mod cluster_common;

use std::time::Duration;

use cluster_common::{spate, text, wait_exit};

fn f(v: &serde_json::Value, k: &str) -> f64 {
    v[k].as_f64()
        .unwrap_or_else(|| panic!("{k} missing in {v}"))
}

#[test]
fn every_local_path_runs_a_verified_job_against_its_own_limit() {
    let mut child = spate()
        .args(["bench", "local", "--bytes", "128MiB", "--json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_exit(&mut child, Duration::from_secs(600), "spate bench local");
    let out = child.wait_with_output().unwrap();
    assert!(status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", text(&out.stdout)));
    let runs = v["runs"].as_array().expect("runs");
    let paths: Vec<&str> = runs.iter().map(|r| r["path"].as_str().unwrap()).collect();
    assert_eq!(paths, ["zero-copy", "pull", "socket"]);
    let bytes = runs[0]["bytes"].as_u64().unwrap();
    assert!(bytes >= 128 << 20, "{v}");
    for r in runs {
        assert_eq!(r["kernel"], "pattern", "{r}");
        assert_eq!(r["verified"], true, "{r}");
        assert!(r["error"].is_null(), "{r}");
        assert_eq!(r["bytes"].as_u64(), Some(bytes));
        for k in [
            "gbit_per_s",
            "compute_gbit_per_s",
            "check_gbit_per_s",
            "copy_gbit_per_s",
            "socket_gbit_per_s",
            "limit_gbit_per_s",
        ] {
            assert!(f(r, k) > 0.0, "{k} in {r}");
        }
        let (g, l) = (f(r, "gbit_per_s"), f(r, "limit_gbit_per_s"));
        assert!((f(r, "ratio") - g / l).abs() < 1e-9, "{r}");
        assert_eq!(r["limit_holds"], g <= l, "{r}");
        // A limit is never above its slowest stage.
        let slowest = match r["path"].as_str().unwrap() {
            "zero-copy" => f(r, "compute_gbit_per_s").min(f(r, "check_gbit_per_s")),
            "pull" => f(r, "compute_gbit_per_s")
                .min(f(r, "check_gbit_per_s"))
                .min(f(r, "copy_gbit_per_s")),
            _ => f(r, "compute_gbit_per_s")
                .min(f(r, "check_gbit_per_s"))
                .min(f(r, "socket_gbit_per_s")),
        };
        assert!(l <= slowest * (1.0 + 1e-9), "{r}");
    }
    assert!(v["ring_bytes"].as_u64().unwrap() > 0);
    assert!(v["piece_bytes"].as_u64().unwrap() > 0);
}
