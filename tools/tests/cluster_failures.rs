//! Failures in a local cluster of real processes: a producer killed mid-job (the other one
//! finishes the job, the stream verifies), a consumer killed mid-job (its reader and
//! `submit --wait` report the abort, naming the consumer), a consumer killed after every byte
//! landed but before it was read (the reader reads every byte, then says the end was not
//! confirmed; the job is aborted), and a job naming a node that does not exist (refused,
//! naming it).

mod cluster_common;

use std::time::{Duration, Instant};

use cluster_common::{Cluster, WAIT, assert_verified, finish_read, text};

const MIB: u64 = 1 << 20;
/// How long after a kill its consequences may take to show (generous for a loaded machine;
/// the daemons notice a dead peer at once through connection EOF).
const AFTER_KILL: Duration = Duration::from_secs(10);

/// The status entry of job `job`, if listed.
fn job_entry(s: &serde_json::Value, job: u64) -> Option<serde_json::Value> {
    s["jobs"]
        .as_array()?
        .iter()
        .find(|j| j["job"].as_u64() == Some(job))
        .cloned()
}

/// The status entry of node `name`, if listed.
fn node_entry(s: &serde_json::Value, name: &str) -> Option<serde_json::Value> {
    s["nodes"]
        .as_array()?
        .iter()
        .find(|n| n["name"] == name)
        .cloned()
}

fn spec(size_mib: u64, seed: u64) -> String {
    format!(
        "kernel = \"pattern\"\nsize = \"{size_mib}MiB\"\nchunk = \"1MiB\"\nnode = \"c0\"\n\n\
         [params]\nseed = {seed}\n"
    )
}

#[test]
fn a_producer_killed_mid_job_leaves_the_job_to_the_other() {
    let mut c = Cluster::start("pkill");
    c.node("c0", "--consumer");
    c.node("p0", "--producer");
    c.node("p1", "--producer");
    c.wait_nodes(&["c0", "p0", "p1"]);
    let total = 32 * MIB;
    let sub = c.submit_wait(&c.spec("job", &spec(32, 5)));
    let job = sub.job();
    let streams = sub.streams();
    // A constant-rate reader (25 MB/s: more than a second for the job) keeps it running.
    let reader = c.read(&streams[0], 5, &["--rate", "200Mbit", "--block", "256KiB"]);
    c.others.push(reader);
    // Kill p1 while it holds tasks and the reader is under way.
    let s = c.wait_status("p1 working and the stream partly read", |s| {
        let (Some(j), Some(p1)) = (job_entry(s, job), node_entry(s, "p1")) else {
            return false;
        };
        j["read"].as_u64().unwrap_or(0) >= MIB && p1["tasks_in_flight"].as_u64().unwrap_or(0) > 0
    });
    c.kill("p1");
    let read_at_kill = job_entry(&s, job).unwrap()["read"].as_u64().unwrap();
    assert!(
        read_at_kill < total,
        "the job was read before the kill: {s}"
    );
    // The scheduler sees p1 go (it is lost or dropped from the list).
    c.wait_status("p1 gone", |s| {
        node_entry(s, "p1").is_none_or(|n| n["state"] != "alive")
    });
    let reader = c.others.pop().unwrap();
    let (code, rep) = finish_read(reader, WAIT);
    assert_verified(code, &rep, total);
    let (code, outcome, err) = sub.finish(WAIT);
    assert_eq!(code, Some(0), "{outcome} {err}");
    assert_eq!(outcome["outcome"], "completed");
}

#[test]
fn a_consumer_killed_mid_job_aborts_it_naming_the_consumer() {
    let mut c = Cluster::start("ckill");
    c.node("c0", "--consumer");
    c.node("p0", "--producer");
    c.wait_nodes(&["c0", "p0"]);
    let total = 32 * MIB;
    let sub = c.submit_wait(&c.spec("job", &spec(32, 6)));
    let job = sub.job();
    let streams = sub.streams();
    let reader = c.read(&streams[0], 6, &["--rate", "200Mbit", "--block", "256KiB"]);
    c.others.push(reader);
    let s = c.wait_status("the stream partly read", |s| {
        job_entry(s, job).is_some_and(|j| j["read"].as_u64().unwrap_or(0) >= MIB)
    });
    c.kill("c0");
    let killed = Instant::now();
    let read_at_kill = job_entry(&s, job).unwrap()["read"].as_u64().unwrap();
    assert!(
        read_at_kill < total,
        "the job was read before the kill: {s}"
    );

    let reader = c.others.pop().unwrap();
    let (code, rep) = finish_read(reader, AFTER_KILL);
    assert!(
        matches!(code, Some(3 | 4)),
        "spate read should report the abort or the dead writer: {code:?} {rep}"
    );
    assert!(
        rep["outcome"] == "aborted" || rep["outcome"] == "writer_dead",
        "{rep}"
    );
    assert!(rep["bytes"].as_u64().unwrap() < total, "{rep}");

    let left = AFTER_KILL.saturating_sub(killed.elapsed());
    let (code, outcome, err) = sub.finish(left.max(Duration::from_secs(1)));
    assert_eq!(code, Some(3), "{outcome} {err}");
    assert_eq!(outcome["outcome"], "aborted", "{outcome}");
    let reason = outcome["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("output node \"c0\" crashed"),
        "the reason names c0: {outcome}"
    );
}

#[test]
fn a_consumer_killed_after_every_byte_landed_leaves_its_reader_unconfirmed() {
    let mut c = Cluster::start("ckill-landed");
    c.node("c0", "--consumer");
    c.node("p0", "--producer");
    c.wait_nodes(&["c0", "p0"]);
    let total = 8 * MIB;
    let sub = c.submit_wait(&c.spec("job", &spec(8, 7)));
    let job = sub.job();
    let streams = sub.streams();
    // 5 MB/s: the reader is still reading when the last chunk lands.
    let reader = c.read(&streams[0], 7, &["--rate", "40Mbit", "--block", "256KiB"]);
    c.others.push(reader);
    let s = c.wait_status("every byte delivered, not all read", |s| {
        job_entry(s, job).is_some_and(|j| j["delivered"].as_u64() == Some(total))
    });
    c.kill("c0");
    let read_at_kill = job_entry(&s, job).unwrap()["read"].as_u64().unwrap();
    assert!(
        read_at_kill < total,
        "the job was read before the kill: {s}"
    );
    // The reader reads on from its mapping: every byte, checked; the end it cannot have
    // confirmed (exit 4, `end_unconfirmed`), never a plain "end".
    let reader = c.others.pop().unwrap();
    let (code, rep) = finish_read(reader, WAIT);
    assert_eq!(code, Some(4), "{rep}");
    assert_eq!(rep["outcome"], "end_unconfirmed", "{rep}");
    assert_eq!(rep["bytes"].as_u64(), Some(total), "{rep}");
    assert_eq!(rep["verified"], true, "{rep}");
    let err = rep["error"].as_str().unwrap_or_default();
    assert!(
        err.contains("before it confirmed the stream's end"),
        "{rep}"
    );
    // The scheduler never counted the stream read: the job is aborted, naming c0.
    let (code, outcome, err) = sub.finish(WAIT);
    assert_eq!(code, Some(3), "{outcome} {err}");
    assert_eq!(outcome["outcome"], "aborted", "{outcome}");
    let reason = outcome["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("\"c0\""), "the reason names c0: {outcome}");
}

#[test]
fn a_job_naming_a_node_that_does_not_exist_is_refused_naming_it() {
    let mut c = Cluster::start("nonode");
    c.node("c0", "--consumer");
    c.node("p0", "--producer");
    c.wait_nodes(&["c0", "p0"]);
    let spec = c.spec(
        "job",
        "kernel = \"pattern\"\nsize = \"4MiB\"\nnode = \"printer-9\"\n",
    );
    let out = c.submit_output(&spec);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(6), "{err}"); // refused
    assert!(err.contains("job refused"), "{err}");
    assert!(
        err.contains("printer-9"),
        "the refusal names the node: {err}"
    );
    // Nothing was admitted.
    let s = c.status_json().unwrap();
    assert_eq!(s["jobs"].as_array().map(Vec::len), Some(0), "{s}");
}
