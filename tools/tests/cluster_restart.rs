//! The scheduler's durable state across a crash: job ids never repeat, ended jobs stay in
//! `spate status`, and a job live at the crash is resumed by the restarted scheduler: a job
//! waiting for Ready waits again, a running one goes on from where its rings stand, its
//! readers read it byte-exact and `submit --wait` sees it complete. Nodes stay up and rejoin a
//! restarted scheduler, and a node paused past its heartbeats rejoins when it wakes.
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

fn live(s: &serde_json::Value, job: u64) -> Option<serde_json::Value> {
    s["jobs"]
        .as_array()?
        .iter()
        .find(|e| e["job"].as_u64() == Some(job))
        .cloned()
}

#[test]
fn a_restarted_scheduler_keeps_ids_and_history_and_resumes_the_jobs_it_left() {
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
    // The nodes stay up and rejoin; the new scheduler knows what happened and resumes job 2,
    // which waits for Ready again.
    c.wait_nodes(&["c0", "p0"]);
    c.check_alive();
    let s = c.status_json().expect("the restarted scheduler answers");
    let e1 = ended(&s, one).unwrap_or_else(|| panic!("job {one} forgotten: {s}"));
    assert_eq!(e1["outcome"], "completed", "{s}");
    assert_eq!(e1["bytes"].as_u64(), Some(4 * MIB), "{s}");
    c.wait_status("job 2 resumed, waiting for Ready", |s| {
        live(s, two).is_some_and(|j| j["state"] == "waiting-ready")
    });
    let out = spate()
        .args([
            "ready",
            &two.to_string(),
            "--scheduler",
            &c.sched_ep,
            "--secret-file",
        ])
        .arg(&c.secret)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let (code, rep) = finish_read(reader, WAIT);
    assert_verified(code, &rep, 4 * MIB);
    c.wait_status("job 2 completed", |s| {
        ended(s, two).is_some_and(|e| e["outcome"] == "completed")
    });

    // Job 3 runs, followed by `submit --wait`, read at 100 Mbit/s, when the scheduler is
    // killed mid-job: it goes on from where its ring stands, byte-exact, and completes.
    let total = 24 * MIB;
    let sub = c.submit_wait(&c.spec("three", &spec(24, 3)));
    let three = sub.job();
    assert_eq!(three, two + 1);
    let streams = sub.streams();
    let reader = c.read(&streams[0], 3, &["--rate", "100Mbit", "--block", "256KiB"]);
    c.wait_status("job 3 partly read", |s| {
        live(s, three).is_some_and(|j| j["read"].as_u64().unwrap_or(0) >= 4 * MIB)
    });
    c.restart_scheduler();
    let (code, rep) = finish_read(reader, WAIT);
    assert_verified(code, &rep, total);
    let log = std::fs::read_to_string(&c.daemon("scheduler").log).unwrap();
    let resumed = format!("resuming a job the last scheduler left live job={three} ");
    assert!(log.contains(&resumed), "{log}");
    let (code, outcome, err) = sub.finish(WAIT);
    assert_eq!(code, Some(0), "{outcome} {err}");
    assert_eq!(outcome["outcome"], "completed", "{err}");
    assert!(err.contains("reached the scheduler again"), "{err}");
    let s = c.status_json().unwrap();
    let e3 = ended(&s, three).unwrap_or_else(|| panic!("job {three} forgotten: {s}"));
    assert_eq!(e3["outcome"], "completed", "{s}");
    assert_eq!(s["jobs"], serde_json::json!([]), "{s}");
    // New jobs continue the numbering, on the same nodes.
    let n = submit(&c, "four", &spec(1, 4), &["--ready"]);
    assert_eq!(n["job"].as_u64(), Some(three + 1), "{n}");
    let reader = c.read(&n["streams"][0], 4, &[]);
    let (code, rep) = finish_read(reader, WAIT);
    assert_verified(code, &rep, MIB);
    let log = std::fs::read_to_string(&c.daemon("c0").log).unwrap();
    assert!(log.contains("lost the scheduler"), "{log}");
    assert!(log.contains("rejoined the scheduler"), "{log}");
    c.check_alive();
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

#[test]
fn a_scheduler_that_stays_away_ends_the_job_for_its_readers_and_submitter_saying_why() {
    use std::io::{BufRead, BufReader, Read};
    use std::process::Stdio;
    let mut c = Cluster::start("away");
    let args = c.node_args("c0", "--consumer", None, &["--reconnect-for", "2s"]);
    c.spawn_daemon("c0", &args);
    let args = c.node_args("p0", "--producer", None, &["--reconnect-for", "2s"]);
    c.spawn_daemon("p0", &args);
    c.wait_nodes(&["c0", "p0"]);
    let mut sub = spate()
        .arg("submit")
        .arg(c.spec("away", &spec(64, 5)))
        .args(["--ready", "--wait", "--json", "--reconnect-for", "3s"])
        .args(["--scheduler", &c.sched_ep, "--secret-file"])
        .arg(&c.secret)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(sub.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let accepted: serde_json::Value = serde_json::from_str(&line).unwrap();
    let job = accepted["job"].as_u64().unwrap();
    // A slow reader keeps the job running (64 MiB at 50 Mbit/s: about 10 s).
    let reader = c.read(
        &accepted["streams"][0],
        5,
        &["--rate", "50Mbit", "--block", "256KiB"],
    );
    c.wait_status("the job partly read", |s| {
        live(s, job).is_some_and(|j| j["read"].as_u64().unwrap_or(0) >= MIB)
    });
    // The scheduler dies and does not come back.
    c.kill("scheduler");
    let (code, rep) = finish_read(reader, WAIT);
    assert_eq!(code, Some(3), "{rep}");
    let err = rep["error"].as_str().unwrap_or_default();
    assert!(
        err.contains("node \"c0\" stopped: the scheduler gone: not reachable for 2 s"),
        "{rep}"
    );
    let st = cluster_common::wait_exit(&mut sub, WAIT, "spate submit --wait");
    let mut rest = String::new();
    out.read_to_string(&mut rest).unwrap();
    let mut err = String::new();
    sub.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert_eq!(st.code(), Some(4), "{rest}\n{err}");
    let last: serde_json::Value = serde_json::from_str(rest.lines().last().unwrap()).unwrap();
    assert_eq!(last["outcome"], "unknown", "{rest}");
    assert!(
        last["error"]
            .as_str()
            .unwrap_or_default()
            .contains("it was not reachable again for 3 s"),
        "{rest}"
    );
    // Both nodes gave up and said so.
    for n in ["c0", "p0"] {
        let st = cluster_common::wait_exit(&mut c.daemon(n).child, WAIT, n);
        assert_eq!(st.code(), Some(1));
        let log = std::fs::read_to_string(&c.daemon(n).log).unwrap();
        assert!(
            log.contains("scheduler gone: not reachable for 2 s; stopping"),
            "{log}"
        );
    }
}

#[test]
fn nodes_and_submitter_follow_a_scheduler_restarted_on_another_endpoint() {
    // Both runs keep their state in one directory; the second listens elsewhere.
    let state = cluster_common::tmpdir("moved-state");
    let state_arg = state.display().to_string();
    let mut c = Cluster::start_args("moved", &["--state-dir", &state_arg]);
    let other = format!("unix:{}", c.dir.join("other.sock").display());
    let alt = ["--scheduler-alt", other.as_str()];
    let args = c.node_args("c0", "--consumer", None, &alt);
    c.spawn_daemon("c0", &args);
    let args = c.node_args("p0", "--producer", None, &alt);
    c.spawn_daemon("p0", &args);
    c.wait_nodes(&["c0", "p0"]);
    let mut sub = spate()
        .arg("submit")
        .arg(c.spec("moved", &spec(24, 6)))
        .args(["--ready", "--wait", "--json", "--scheduler-alt", &other])
        .args(["--scheduler", &c.sched_ep, "--secret-file"])
        .arg(&c.secret)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(sub.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    let accepted: serde_json::Value = serde_json::from_str(&line).unwrap();
    let job = accepted["job"].as_u64().unwrap();
    let reader = c.read(
        &accepted["streams"][0],
        6,
        &["--rate", "100Mbit", "--block", "256KiB"],
    );
    c.wait_status("the job partly read", |s| {
        live(s, job).is_some_and(|j| j["read"].as_u64().unwrap_or(0) >= 4 * MIB)
    });
    // The scheduler comes back on the other endpoint, on the same state.
    c.sched_args[2] = other.clone();
    c.sched_ep = other.clone();
    c.restart_scheduler();
    let (code, rep) = finish_read(reader, WAIT);
    assert_verified(code, &rep, 24 * MIB);
    let st = cluster_common::wait_exit(&mut sub, WAIT, "spate submit --wait");
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    assert_eq!(st.code(), Some(0), "{rest}");
    let last: serde_json::Value = serde_json::from_str(rest.lines().last().unwrap()).unwrap();
    assert_eq!(last["outcome"], "completed", "{rest}");
    c.wait_nodes(&["c0", "p0"]);
    c.check_alive();
    let _ = std::fs::remove_dir_all(&state);
}
