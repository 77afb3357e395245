//! The end-to-end job with two producers verified equal to a sequential run: reference job A
//! through the rip kernel on two producer daemons, every stream read through the ring and
//! compared, block by block, with the demo's own sequential render of the same RIP.

use std::process::Command;

#[test]
fn rip_job_a_on_two_producers_equals_a_sequential_run() {
    let out = Command::new(env!("CARGO_BIN_EXE_spate"))
        .args([
            "demo",
            "--job",
            "A",
            "--kernel",
            "rip",
            "--producers",
            "2",
            "--json",
            "--timeout",
            "240",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "spate demo failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["kernel"], "rip");
    assert_eq!(v["producers"], 2);
    assert_eq!(v["streams"], 4);
    assert_eq!(v["bytes"], 4u64 * 3000 * 3000);
    assert_eq!(v["verified"], true);
}
