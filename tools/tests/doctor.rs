//! `spate doctor` as users run it: the real binary, its JSON shape, and its verdict.

use std::process::Command;

fn spate() -> Command {
    Command::new(env!("CARGO_BIN_EXE_spate"))
}

#[test]
fn json_report_agrees_with_exit_code() {
    let out = spate().args(["doctor", "--json"]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for key in [
        "kernel",
        "io_uring",
        "hugepages_total",
        "hugepages_free",
        "memlock_soft",
        "cap_ipc_lock",
        "congestion_available",
        "cores",
        "checks",
        "ok",
    ] {
        assert!(v.get(key).is_some(), "missing key {key} in {v}");
    }
    let checks = v["checks"].as_array().unwrap();
    let names: Vec<&str> = checks.iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        ["io_uring", "hugepages", "memlock", "congestion", "cores"]
    );
    let failed = checks.iter().any(|c| c["status"] == "FAIL");
    assert_eq!(v["ok"].as_bool().unwrap(), !failed);
    assert_eq!(out.status.success(), !failed, "exit code vs checks: {v}");
    // Every failed or warned check names a fix.
    for c in checks.iter().filter(|c| c["status"] != "ok") {
        assert!(c["fix"].as_str().is_some_and(|f| !f.is_empty()), "{c}");
    }
}

/// Without CAP_IPC_LOCK and with a 1 MiB memlock limit, the memlock check fails, the exit code
/// is non-zero and the message says how to fix it.
#[test]
fn low_memlock_without_cap_ipc_lock_fails_naming_the_fix() {
    let tools = ["setpriv", "prlimit"];
    let have = |t: &str| {
        Command::new("sh")
            .args(["-c", &format!("command -v {t}")])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    };
    if !tools.iter().all(|t| have(t)) {
        eprintln!("SKIPPED: needs setpriv and prlimit (util-linux)");
        return;
    }
    let out = Command::new("setpriv")
        .args([
            "--bounding-set",
            "-ipc_lock",
            "prlimit",
            "--memlock=1048576:1048576",
        ])
        .arg(env!("CARGO_BIN_EXE_spate"))
        .args(["doctor", "--register", "64MiB"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    if text.contains("CAP_IPC_LOCK: yes") {
        eprintln!("SKIPPED: could not drop CAP_IPC_LOCK here");
        return;
    }
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("[FAIL] memlock"), "{text}");
    assert!(text.contains("below the 64 MiB needed"), "{text}");
    assert!(text.contains("ulimit -l"), "{text}");
}
