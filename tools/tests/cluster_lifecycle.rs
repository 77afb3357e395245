//! A job's life with real processes: `spate ready` starts a job submitted without --ready, a
//! job read to its end completes by itself (no Done, no --wait) and stays in `spate status`
//! with its outcome, a killed reader's job tells the other readers the real reason, a job
//! waiting on an unread stream is named stalled, and kernel parameters and inputs are checked
//! at submit.

mod cluster_common;

use cluster_common::{Cluster, WAIT, assert_verified, finish_read, spate, text};

const MIB: u64 = 1 << 20;

fn job_entry(s: &serde_json::Value, job: u64) -> Option<serde_json::Value> {
    s["jobs"]
        .as_array()?
        .iter()
        .find(|j| j["job"].as_u64() == Some(job))
        .cloned()
}

/// `spate submit SPEC --json` (no --ready, no --wait): the acceptance line.
fn submit(c: &Cluster, name: &str, spec: &str) -> serde_json::Value {
    let out = spate()
        .arg("submit")
        .arg(c.spec(name, spec))
        .args(["--json", "--scheduler", &c.sched_ep, "--secret-file"])
        .arg(&c.secret)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    serde_json::from_str(text(&out.stdout).lines().next().unwrap()).unwrap()
}

fn ctl(c: &Cluster, verb: &str, job: u64) -> std::process::Output {
    spate()
        .args([
            verb,
            &job.to_string(),
            "--scheduler",
            &c.sched_ep,
            "--secret-file",
        ])
        .arg(&c.secret)
        .output()
        .unwrap()
}

fn local(tag: &str) -> Cluster {
    let mut c = Cluster::start(tag);
    c.node("c0", "--consumer");
    c.node("p0", "--producer");
    c.wait_nodes(&["c0", "p0"]);
    c
}

#[test]
fn ready_starts_it_and_a_job_read_to_its_end_completes_by_itself() {
    let mut c = local("life-ready");
    let acc = submit(
        &c,
        "job",
        "kernel = \"pattern\"\nsize = \"8MiB\"\nchunk = \"1MiB\"\nnode = \"c0\"\n[params]\nseed = 4\n",
    );
    let job = acc["job"].as_u64().unwrap();
    let stream = acc["streams"][0].clone();
    c.wait_status("the job waits for Ready", |s| {
        job_entry(s, job).is_some_and(|j| j["state"] == "waiting-ready")
    });
    let reader = c.read(&stream, 4, &[]);
    let out = ctl(&c, "ready", job);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), format!("job {job} started"));
    let (code, rep) = finish_read(reader, WAIT);
    assert_verified(code, &rep, 8 * MIB);
    // Nobody sends Done: the job completes once its stream was read to its end, and stays
    // visible with its outcome, bytes and duration.
    let ended = |s: &serde_json::Value| {
        s["ended"]
            .as_array()
            .and_then(|v| v.iter().find(|e| e["job"].as_u64() == Some(job)).cloned())
    };
    let s = c.wait_status("the job completed", |s| {
        ended(s).is_some_and(|e| e["outcome"] == "completed")
    });
    assert!(job_entry(&s, job).is_none(), "{s}");
    let j = ended(&s).unwrap();
    assert_eq!(j["bytes"].as_u64(), Some(8 * MIB), "{j}");
    assert_eq!(j["read"].as_u64(), Some(8 * MIB), "{j}");
    assert_eq!(j["total"].as_u64(), Some(8 * MIB), "{j}");
    // Done afterwards is fine; Ready again is refused with the reason.
    assert!(ctl(&c, "done", job).status.success());
    let out = ctl(&c, "ready", job);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains(&format!("cannot start job {job}")),
        "{}",
        text(&out.stderr)
    );
}

/// `spate done` on a delivered job whose reader is still reading: the job is completed by the
/// user's word, and the reader, reading the rest from its mapping, gets its end confirmed (exit
/// 0), not an abort.
#[test]
fn done_while_a_reader_still_reads_completes_the_job_and_the_reader_ends_well() {
    let mut c = local("life-done");
    let acc = submit(
        &c,
        "job",
        "kernel = \"pattern\"\nsize = \"8MiB\"\nchunk = \"1MiB\"\nnode = \"c0\"\n[params]\nseed = 6\n",
    );
    let job = acc["job"].as_u64().unwrap();
    let stream = acc["streams"][0].clone();
    // 5 MB/s: the reader is still reading when the job is delivered.
    let reader = c.read(&stream, 6, &["--rate", "40Mbit", "--block", "256KiB"]);
    assert!(ctl(&c, "ready", job).status.success());
    let s = c.wait_status("the job delivered", |s| {
        job_entry(s, job).is_some_and(|j| j["state"] == "delivered")
    });
    let read = job_entry(&s, job).unwrap()["read"].as_u64().unwrap();
    assert!(read < 8 * MIB, "read before done: {s}");
    let out = ctl(&c, "done", job);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let (code, rep) = finish_read(reader, WAIT);
    assert_verified(code, &rep, 8 * MIB);
    c.wait_status("the job completed", |s| {
        s["ended"].as_array().is_some_and(|v| {
            v.iter()
                .any(|e| e["job"].as_u64() == Some(job) && e["outcome"] == "completed")
        })
    });
}

#[test]
fn a_killed_reader_tells_the_other_readers_why_and_an_unread_stream_is_named_stalled() {
    let mut c = local("life-reader");
    // Two channels, one stream each: every chunk carries a piece of both. Small rings (1 MiB
    // pieces, one producer: 4 MiB each).
    let spec = "kernel = \"pattern\"\nchannels = 2\nsize = \"16MiB\"\nchunk = \"1MiB\"\n\
                node = \"c0\"\npolicy = \"load-balance\"\n[params]\nseed = 8\n";
    let sub = c.submit_wait(&c.spec("two", spec));
    let job = sub.job();
    let streams = sub.streams();
    // Only stream 0 is read: the job fills stream 1's ring and waits (stream 0's reader with
    // it). Status names the stream.
    let r0 = c.read(&streams[0], 8, &["--block", "256KiB"]);
    let s = c.wait_status("the job reported stalled on stream 1", |s| {
        job_entry(s, job).is_some_and(|j| {
            j["stall_reason"]
                .as_str()
                .is_some_and(|w| w.starts_with("stream 1 on \"c0\" has a full ring"))
        })
    });
    let w = job_entry(&s, job).unwrap()["stall_reason"].clone();
    assert!(
        w.as_str()
            .unwrap()
            .contains("no reader has read from it yet"),
        "{w}"
    );
    // Stream 1's reader attaches, reads slowly, then dies: the job is aborted for it, and
    // stream 0's reader (waiting for more) is told that reason, not "cancelled".
    let mut r1 = c.read(&streams[1], 8, &["--rate", "40Mbit", "--block", "256KiB"]);
    c.wait_status("stream 1 read a little", |s| {
        job_entry(s, job).is_some_and(|j| j["read"].as_u64().unwrap_or(0) > 9 * MIB)
    });
    r1.kill().unwrap();
    r1.wait().unwrap();
    let (code, rep) = finish_read(r0, WAIT);
    let (scode, outcome, err) = sub.finish(WAIT);
    assert_eq!(scode, Some(3), "{outcome} {err}");
    assert_eq!(outcome["outcome"], "aborted", "{outcome}");
    let reason = outcome["reason"].as_str().unwrap();
    assert_eq!(reason, "the reader of stream 1 on \"c0\" is gone");
    assert_eq!(code, Some(3), "{rep}");
    assert!(rep["bytes"].as_u64().unwrap() < 16 * MIB, "{rep}");
    let e = rep["error"].as_str().unwrap();
    assert_eq!(
        e,
        format!("stream aborted: job {job} was aborted: {reason}"),
        "the other reader hears the real reason"
    );
}

#[test]
fn kernel_parameters_and_inputs_are_checked_at_submit() {
    let mut c = Cluster::start("paramcheck");
    c.node("c0", "--consumer");
    c.node("p0", "--producer");
    c.wait_nodes(&["c0", "p0"]);
    let refused = |name: &str, spec: &str| {
        let out = c.submit_output(&c.spec(name, spec));
        assert_eq!(out.status.code(), Some(6), "{name}: {}", text(&out.stderr));
        text(&out.stderr)
    };
    let e = refused(
        "seed",
        "kernel = \"pattern\"\nsize = \"1MiB\"\nnode = \"c0\"\n[params]\nseed = \"x\"\n",
    );
    assert!(e.contains("params.seed:"), "{e}");
    let e = refused(
        "noinput",
        "kernel = \"rip\"\nwidth = 64\nheight = 64\nnode = \"c0\"\n",
    );
    assert!(
        e.contains("inputs: the rip kernel needs the input image"),
        "{e}"
    );
}
