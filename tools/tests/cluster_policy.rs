//! The scheduler's promises with real processes: a stalled producer's tasks are redone by the
//! other (the stream stays byte-exact, the job completes before the stalled one could be
//! declared dead), `spate plan` answers without admitting, and constraints the cluster
//! cannot meet are refused naming the field or the binding constraint.

mod cluster_common;

use cluster_common::{Cluster, WAIT, assert_verified, finish_read, spate, text};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const MIB: u64 = 1 << 20;

fn spec(size_mib: u64, seed: u64, extra: &str) -> String {
    format!(
        "kernel = \"pattern\"\nsize = \"{size_mib}MiB\"\nchunk = \"1MiB\"\nnode = \"c0\"\n{extra}\n\
         [params]\nseed = {seed}\n"
    )
}

fn job_entry(s: &serde_json::Value, job: u64) -> Option<serde_json::Value> {
    s["jobs"]
        .as_array()?
        .iter()
        .find(|j| j["job"].as_u64() == Some(job))
        .cloned()
}

fn node_entry(s: &serde_json::Value, name: &str) -> Option<serde_json::Value> {
    s["nodes"]
        .as_array()?
        .iter()
        .find(|n| n["name"] == name)
        .cloned()
}

#[test]
fn a_stalled_producers_tasks_are_redone_elsewhere_and_the_stream_stays_exact() {
    // Heartbeats of 20 s: a stalled node is declared dead only after a minute, so what
    // saves the job here is straggler duplication, not the death of p1.
    let mut c = Cluster::start_args("stall", &["--heartbeat-ms", "20000"]);
    // Chunks through the producers' own buffers (pull), not computed into the ring: a stalled
    // producer holding places in the ring itself would hold the ring up (README, "What
    // happens when...").
    let args = c.node_args("c0", "--consumer", None, &["--local-path", "pull"]);
    c.spawn_daemon("c0", &args);
    c.node("p0", "--producer");
    c.node("p1", "--producer");
    c.wait_nodes(&["c0", "p0", "p1"]);
    let total = 48 * MIB;
    let sub = c.submit_wait(&c.spec("job", &spec(48, 21, "")));
    let job = sub.job();
    let streams = sub.streams();
    // A constant-rate reader (25 MB/s, about 2 s for the job) keeps the job running.
    let reader = c.read(&streams[0], 21, &["--rate", "200Mbit", "--block", "256KiB"]);
    c.others.push(reader);
    c.wait_status("p1 working and the stream partly read", |s| {
        let (Some(j), Some(p1)) = (job_entry(s, job), node_entry(s, "p1")) else {
            return false;
        };
        j["read"].as_u64().unwrap_or(0) >= MIB && p1["tasks_in_flight"].as_u64().unwrap_or(0) > 0
    });
    let pid = Pid::from_raw(c.daemon("p1").child.id() as i32);
    kill(pid, Signal::SIGSTOP).unwrap();
    // The scheduler sees p1's tasks run late and has p0 redo them (the reader, paced, is
    // still reading: the job cannot end before that).
    c.wait_status("copies of the stalled producer's tasks", |s| {
        job_entry(s, job).is_some_and(|j| j["duplicated"].as_u64().unwrap_or(0) > 0)
    });
    let reader = c.others.pop().unwrap();
    let (code, rep) = finish_read(reader, WAIT);
    let s = c.status_json().unwrap();
    kill(pid, Signal::SIGCONT).unwrap();
    assert_verified(code, &rep, total);
    // p1 was never declared dead: the job was saved by copies of its tasks.
    assert_eq!(node_entry(&s, "p1").unwrap()["state"], "alive", "{s}");
    let (code, outcome, err) = sub.finish(WAIT);
    assert_eq!(code, Some(0), "{outcome} {err}");
    assert_eq!(outcome["outcome"], "completed");
}

#[test]
fn plan_answers_without_admitting_and_impossible_constraints_are_refused() {
    let mut c = Cluster::start("plan");
    c.node("c0", "--consumer");
    c.node("p0", "--producer");
    c.wait_nodes(&["c0", "p0"]);
    let plan = |spec: &str| {
        let p = c.spec("plan", spec);
        let out = spate()
            .arg("plan")
            .arg(&p)
            .args(["--json", "--scheduler", &c.sched_ep, "--secret-file"])
            .arg(&c.secret)
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}{}", text(&out.stdout), text(&out.stderr)));
        (out.status.code(), v)
    };
    // A modest rate: admitted, with a plan of the default policy.
    let (code, v) = plan(&spec(8, 1, "rate = \"100Mbit\""));
    assert_eq!(code, Some(0), "{v}");
    assert_eq!(v["admitted"], true, "{v}");
    assert_eq!(v["policy"], "tclo", "{v}");
    assert_eq!(v["producers"], serde_json::json!(["p0"]), "{v}");
    assert!(v["predicted_gbit_per_s"].as_f64().unwrap() >= 0.1, "{v}");
    assert!(v["window_chunks"].as_u64().unwrap() >= 1, "{v}");
    assert!(v["prefill_bytes"].as_u64().unwrap() > 0, "{v}");
    for key in [
        "reason",
        "chunk_bytes",
        "predicted_latency_ms",
        "ring_bytes",
        "max_feasible_gbit_per_s",
    ] {
        assert!(v.get(key).is_some(), "{key} missing: {v}");
    }
    // Nothing was admitted by asking.
    assert!(
        c.status_json().unwrap()["jobs"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    // A rate beyond any cluster: refused, naming the constraint and what is possible.
    let (code, v) = plan(&spec(8, 1, "rate = \"1000Tbit\""));
    assert_eq!(code, Some(6), "{v}");
    assert_eq!(v["admitted"], false, "{v}");
    assert_eq!(v["reason"]["kind"], "infeasible", "{v}");
    let max = v["max_feasible_gbit_per_s"].as_f64().unwrap();
    assert!(max > 0.0 && max < 1e6, "{v}");
    let msg = v["message"].as_str().unwrap();
    assert!(
        msg.contains("cannot promise") && msg.contains("at most"),
        "{msg}"
    );
    // Submitting it gets the same refusal (exit 6, the message names the constraint).
    let out = c.submit_output(&c.spec("fast", &spec(8, 1, "rate = \"1000Tbit\"")));
    assert_eq!(out.status.code(), Some(6));
    let err = text(&out.stderr);
    assert!(
        err.contains("cannot promise") && err.contains("(compute)"),
        "{err}"
    );
    // Bad constraints are refused by field.
    for (extra, field) in [
        ("rate = \"0bit\"", "rate"),
        ("latency = \"0s\"", "latency"),
        ("policy = \"fastest\"", "policy"),
    ] {
        let out = c.submit_output(&c.spec("bad", &spec(8, 1, extra)));
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(6), "{extra}: {err}");
        assert!(err.contains(&format!("{field}:")), "{extra}: {err}");
    }
}
