//! `spate bench net --json` end to end, both transports, as a performance engineer runs it
//! (small sizes): the receiver is a second process, the JSON carries every figure, the ratios
//! are the ratios of the figures, and the raw path is the one spate uses on that transport
//! (over UNIX the receiver pulls from the sender's shared memory; the socket path is measured
//! beside it). The bench itself refuses to report a transfer that took the wrong path. The
//! figures are not asserted (performance is measured, not tested).

mod cluster_common;

use std::time::Duration;

use cluster_common::{spate, text, wait_exit};

fn run(transport: &str) -> serde_json::Value {
    let mut child = spate()
        .args([
            "bench",
            "net",
            "--transport",
            transport,
            "--bytes",
            "256MiB",
            "--chunk",
            "4MiB",
            "--json",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_exit(&mut child, Duration::from_secs(300), "spate bench net");
    let out = child.wait_with_output().unwrap();
    assert!(status.success(), "{}", text(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out.stdout)))
}

fn f(v: &serde_json::Value, k: &str) -> f64 {
    v[k].as_f64()
        .unwrap_or_else(|| panic!("{k} missing in {v}"))
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-6 * a.abs().max(b.abs())
}

#[test]
fn unix_pulls_and_tcp_sends_and_every_figure_is_reported() {
    for (transport, payload) in [("unix", "pull"), ("tcp", "socket")] {
        let v = run(transport);
        assert_eq!(v["transport"], transport);
        assert_eq!(v["payload"], payload, "{v}");
        assert_eq!(
            v["authenticated"], true,
            "raw connections run the handshake: {v}"
        );
        assert_eq!(
            (v["bytes"].as_u64(), v["chunk"].as_u64()),
            (Some(256 << 20), Some(4 << 20))
        );
        for k in [
            "gbit_per_s",
            "socket_gbit_per_s",
            "baseline_gbit_per_s",
            "pinned_baseline_gbit_per_s",
            "memcpy_gbit_per_s",
        ] {
            assert!(f(&v, k) > 0.0, "{k} in {v}");
        }
        // Ratios are time ratios, so they equal the rate ratios.
        assert!(close(
            f(&v, "ratio"),
            f(&v, "gbit_per_s") / f(&v, "baseline_gbit_per_s")
        ));
        assert!(close(
            f(&v, "socket_ratio"),
            f(&v, "socket_gbit_per_s") / f(&v, "baseline_gbit_per_s")
        ));
        assert!(close(
            f(&v, "pinned_ratio"),
            f(&v, "gbit_per_s") / f(&v, "pinned_baseline_gbit_per_s")
        ));
        assert!(close(
            f(&v, "of_memcpy"),
            f(&v, "gbit_per_s") / f(&v, "memcpy_gbit_per_s")
        ));
        if transport == "tcp" {
            assert_eq!(v["gbit_per_s"], v["socket_gbit_per_s"]);
        }
        let lat = &v["latency_us"];
        let (p50, p99, max) = (f(lat, "p50"), f(lat, "p99"), f(lat, "max"));
        assert!(0.0 < p50 && p50 <= p99 && p99 <= max, "{lat}");
    }
}
