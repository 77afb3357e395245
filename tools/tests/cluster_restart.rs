//! The scheduler's durable state across a crash: job ids never repeat, ended jobs stay in
//! `spate status`, and a job live at the crash is ended as aborted with the reason (not lost,
//! not reported as anything that did not happen), its reader told why. Nodes stay up and
//! rejoin a restarted scheduler, and a node paused past its heartbeats rejoins when it wakes.
//! The state directory is refused, saying what to do, when it holds something that is not
//! spate's state.

mod cluster_common;

use cluster_common::{Cluster, WAIT, assert_verified, finish_read, spate, text};

const MIB: u64 = 1 << 20;

fn spec(size_mib: u64, seed: u64) -> String {
    format!(
        "kernel = \"pattern\"\nsize = \"{size_mib}MiB\"\nchunk = \"1MiB\"\nnode = \"c0\"\n\n\
         [params]\nseed = {seed}\n"
    )
}

/// `spate submit SPEC --json [extra]` with the cluster's settings: the acceptance line.
fn submit(c: &Cluster, name: &str, spec: &str, extra: &[&str]) -> serde_json::Value {
    let out = spate()
        .arg("submit")
        .arg(c.spec(name, spec))
        .args(["--json", "--scheduler", &c.sched_ep, "--secret-file"])
        .arg(&c.secret)
        .args(extra)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    serde_json::from_str(text(&out.stdout).lines().next().unwrap()).unwrap()
}

fn ended(s: &serde_json::Value, job: u64) -> Option<serde_json::Value> {
    s["ended"]
        .as_array()?
        .iter()
        .find(|e| e["job"].as_u64() == Some(job))
        .cloned()
}

#[test]
fn a_restarted_scheduler_keeps_ids_and_history_and_ends_the_jobs_it_lost() {
    let mut c = Cluster::start("restart");
    c.node("c0", "--consumer");
    c.node("p0", "--producer");
    c.wait_nodes(&["c0", "p0"]);
    // Job 1 runs and is read to its end: it completes by itself.
    let a = submit(&c, "one", &spec(4, 1), &["--ready"]);
    let one = a["job"].as_u64().unwrap();
    let reader = c.read(&a["streams"][0], 1, &[]);
    let (code, rep) = finish_read(reader, WAIT);
    assert_verified(code, &rep, 4 * MIB);
    c.wait_status("job 1 completed", |s| {
        ended(s, one).is_some_and(|e| e["outcome"] == "completed")
    });
    // Job 2 is admitted and waits for Ready, its reader attached, when the scheduler is killed.
    let b = submit(&c, "two", &spec(4, 2), &[]);
    let two = b["job"].as_u64().unwrap();
    assert!(two > one);
    let reader = c.read(&b["streams"][0], 2, &[]);
    let log = c.daemon("scheduler").log.clone();
    let attached = format!("reader attached job={two} ");
    let deadline = std::time::Instant::now() + WAIT;
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains(&attached)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "job 2's reader never attached"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    c.restart_scheduler();
    // The nodes stay up and rejoin; the new scheduler knows what happened.
    c.wait_nodes(&["c0", "p0"]);
    c.check_alive();
    let s = c.status_json().expect("the restarted scheduler answers");
    let e1 = ended(&s, one).unwrap_or_else(|| panic!("job {one} forgotten: {s}"));
    assert_eq!(e1["outcome"], "completed", "{s}");
    assert_eq!(e1["bytes"].as_u64(), Some(4 * MIB), "{s}");
    let e2 = ended(&s, two).unwrap_or_else(|| panic!("job {two} forgotten: {s}"));
    assert_eq!(e2["outcome"], "aborted", "{s}");
    let why = e2["reason"].as_str().unwrap_or_default().to_string();
    assert!(
        why.contains("the scheduler stopped while the job was live"),
        "{s}"
    );
    assert_eq!(s["jobs"], serde_json::json!([]), "{s}");
    // Job 2's reader is told, with that reason, once its consumer rejoined.
    let (code, rep) = finish_read(reader, WAIT);
    assert_eq!(code, Some(3), "{rep}");
    assert_eq!(rep["outcome"], "aborted", "{rep}");
    assert!(
        rep["error"].as_str().unwrap_or_default().contains(&why),
        "{rep}"
    );
    // New jobs continue the numbering, on the same nodes.
    let n = submit(&c, "three", &spec(1, 3), &["--ready"]);
    assert_eq!(n["job"].as_u64(), Some(two + 1), "{n}");
    let reader = c.read(&n["streams"][0], 3, &[]);
    let (code, rep) = finish_read(reader, WAIT);
    assert_verified(code, &rep, MIB);
    let log = std::fs::read_to_string(&c.daemon("c0").log).unwrap();
    assert!(log.contains("lost the scheduler"), "{log}");
    assert!(log.contains("rejoined the scheduler"), "{log}");
}

#[test]
fn a_node_paused_past_its_heartbeats_is_suspect_then_dead_and_rejoins_when_it_wakes() {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    let mut c = Cluster::start_args("pause", &["--heartbeat-ms", "300"]);
    c.node("c0", "--consumer");
    c.node("p0", "--producer");
    c.wait_nodes(&["c0", "p0"]);
    let pid = Pid::from_raw(c.daemon("p0").child.id() as i32);
    kill(pid, Signal::SIGSTOP).unwrap();
    let node = |s: &serde_json::Value| {
        s["nodes"]
            .as_array()
            .and_then(|v| v.iter().find(|n| n["name"] == "p0").cloned())
    };
    c.wait_status("p0 suspect", |s| {
        node(s).is_some_and(|n| n["state"] == "suspect")
    });
    c.wait_status("p0 declared dead", |s| node(s).is_none());
    kill(pid, Signal::SIGCONT).unwrap();
    c.wait_status("p0 back", |s| {
        node(s).is_some_and(|n| n["state"] == "alive")
    });
    c.check_alive();
    // It works again.
    let n = submit(&c, "after", &spec(2, 9), &["--ready"]);
    let reader = c.read(&n["streams"][0], 9, &[]);
    let (code, rep) = finish_read(reader, WAIT);
    assert_verified(code, &rep, 2 * MIB);
}

#[test]
fn a_state_directory_holding_something_else_is_refused_saying_what_to_do() {
    let dir = cluster_common::tmpdir("badstate");
    let state = dir.join("state");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(state.join("scheduler.db"), b"not a database, some notes").unwrap();
    let secret = dir.join("secret");
    cluster_common::write_secret(&secret);
    let out = spate()
        .args(["scheduler", "--listen"])
        .arg(format!("unix:{}", dir.join("s.sock").display()))
        .arg("--secret-file")
        .arg(&secret)
        .arg("--state-dir")
        .arg(&state)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("is not a spate state database or is damaged"),
        "{err}"
    );
    assert!(err.contains("move it away to start afresh"), "{err}");
    // Nothing was left listening.
    assert!(!dir.join("s.sock").exists());
    let _ = std::fs::remove_dir_all(&dir);
}
