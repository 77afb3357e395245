//! `spate bench cluster --quick --json` end to end, as a performance engineer runs it: the JSON
//! has every run with its topology, figures and limit, every stream was verified, the files it
//! names exist (report, `.hgrm` histograms, SVG plots), and the namespaces it made are gone.
//! The figures themselves are not asserted (performance is measured, not tested).

mod cluster_common;

use std::collections::BTreeSet;
use std::time::Duration;

use cluster_common::{spate, text, tmpdir, wait_exit};

#[test]
fn quick_suite_runs_every_topology_verified() {
    let out = tmpdir("bench-cluster");
    let mut child = spate()
        .args(["bench", "cluster", "--quick", "--json", "--out"])
        .arg(&out)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    // Under 3 minutes in release; the debug build on a loaded CI machine gets more time.
    let status = wait_exit(&mut child, Duration::from_secs(900), "spate bench cluster");
    let o = child.wait_with_output().unwrap();
    assert!(status.success(), "{status}: {}", text(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", text(&o.stdout)));

    let root = nix::unistd::geteuid().is_root() && cluster_common::netns::unavailable().is_none();
    let runs = v["runs"].as_array().expect("a runs array");
    let topologies: BTreeSet<&str> = runs
        .iter()
        .map(|r| r["topology"].as_str().unwrap())
        .collect();
    let want: BTreeSet<&str> = if root {
        ["local-1x1", "distant-1x1", "1xN", "Nx1", "NxN"].into()
    } else {
        assert!(
            v["skipped"].as_array().unwrap().len() == 1,
            "without root the network topologies are skipped with a reason: {v}"
        );
        ["local-1x1"].into()
    };
    assert_eq!(topologies, want, "{v}");
    for r in runs {
        assert_eq!(r["job"], "B", "{r}");
        assert!(
            ["null", "rip"].contains(&r["kernel"].as_str().unwrap()),
            "{r}"
        );
        assert_eq!(r["verified"], true, "{r}");
        assert!(r["error"].is_null(), "{r}");
        let (g, l, ratio) = (
            r["gbit_per_s"].as_f64().unwrap(),
            r["limit_gbit_per_s"].as_f64().unwrap(),
            r["ratio"].as_f64().unwrap(),
        );
        assert!(g > 0.0 && l > 0.0, "{r}");
        assert!((ratio - g / l).abs() < 1e-6, "{r}");
        assert!(r["bytes"].as_u64().unwrap() > 0, "{r}");
        let chunk = &r["chunk_latency_us"];
        assert!(chunk["count"].as_u64().unwrap() > 0, "{r}");
        assert!(chunk["p50"].as_u64() <= chunk["p99"].as_u64(), "{r}");
        assert!(chunk["p99"].as_u64() <= chunk["max"].as_u64(), "{r}");
        assert_eq!(r["control_latency_us"]["count"], 1, "{r}");
    }
    // Both kernels in every topology (compute off and on).
    for t in &want {
        let kernels: BTreeSet<&str> = runs
            .iter()
            .filter(|r| r["topology"] == *t && r["constant_speed"].is_null())
            .map(|r| r["kernel"].as_str().unwrap())
            .collect();
        assert_eq!(kernels, ["null", "rip"].into(), "{t}");
    }
    if root {
        let cs: Vec<&serde_json::Value> = runs
            .iter()
            .filter(|r| !r["constant_speed"].is_null())
            .collect();
        assert_eq!(cs.len(), 1, "{v}");
        let c = &cs[0]["constant_speed"];
        assert_eq!(cs[0]["topology"], "distant-1x1");
        for k in [
            "requested_gbit_per_s",
            "delivered_gbit_per_s",
            "delivered_pct",
            "starvation_seconds",
            "unconstrained_gbit_per_s",
            "power_loss_pct",
        ] {
            assert!(c[k].as_f64().is_some(), "{k}: {c}");
        }
        assert!(c["starvations"].is_u64(), "{c}");
        // Two nets per node, each node sends once on each: 2 x nodes links, all measured.
        let links = v["limits"]["links"].as_array().unwrap();
        assert_eq!(
            links.len(),
            2 * v["nodes"].as_u64().unwrap() as usize,
            "{v}"
        );
        assert!(
            links
                .iter()
                .all(|l| l["gbit_per_s"].as_f64().unwrap() > 0.0)
        );
    }
    assert!(v["limits"]["raw_unix_gbit_per_s"].as_f64().unwrap() > 0.0);
    assert!(v["limits"]["memcpy_gbit_per_s"].as_f64().unwrap() > 0.0);

    // Every file it names exists: the report, the histograms, the plots.
    let files: Vec<&str> = v["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect();
    for f in &files {
        assert!(std::path::Path::new(f).exists(), "{f} is missing");
    }
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["runs"], v["runs"]);
    let hgrm: Vec<&&str> = files.iter().filter(|f| f.ends_with(".hgrm")).collect();
    assert!(
        hgrm.len() > runs.len(),
        "a chunk histogram per run and the control one"
    );
    for f in hgrm {
        let t = std::fs::read_to_string(f).unwrap();
        assert!(t.contains("Percentile") && t.contains("#[Max "), "{f}: {t}");
    }
    let svgs: Vec<&&str> = files.iter().filter(|f| f.ends_with(".svg")).collect();
    assert!(svgs.len() >= 2, "a plot per kernel: {files:?}");
    for f in svgs {
        let t = std::fs::read_to_string(f).unwrap();
        assert!(t.contains("<svg"), "{f}");
    }

    // Nothing left behind: no namespace of that run.
    if root {
        let list = std::process::Command::new("ip")
            .args(["netns", "list"])
            .output()
            .unwrap();
        let names = text(&list.stdout);
        assert!(
            !names.contains(&format!("spb{pid}")),
            "namespaces left: {names}"
        );
    }
    let _ = std::fs::remove_dir_all(&out);
}
