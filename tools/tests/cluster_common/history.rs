//! The recorded history of one fault run and the checker that judges it.
//!
//! A run records, per job, what the user was told (the `submit --wait` exit code and its
//! outcome line), what every reader got (exit code, its `--json` report with the bytes it
//! read and their XXH3-128 digest, stderr) and the digest each stream must have (computed by
//! the test from the `pattern` kernel's definition); per daemon whether it exited and whether
//! the fault killed it; per probe of a listening socket whether the daemon refused it; and the
//! final `spate status --json`. [`check`] is a pure function of that record: it judges by the
//! rules below, not by what spate happens to do today.
//!
//! Rules:
//! 1. A job reported completed ⇔ every stream was read to its end byte-exact. Both ways, with
//!    the reader's end confirmation (a reader at the end waits until its consumer confirms the
//!    scheduler counted the stream read): completed ⇒ every stream was received whole (one
//!    reader of it exited 0 with outcome `end`, from offset 0, `bytes` equal to the stream's
//!    length and the digest the test computed; or exited 4 with outcome `end_unconfirmed` and
//!    the same bytes and digest, its consumer having died before it could confirm); and every
//!    stream read with its end confirmed (exit 0) ⇒ completed. "Reported" is the final
//!    status's `ended` entry; the submitter, when it names an outcome, must name the same one
//!    with the matching exit code.
//! 2. A job reported aborted (or cancelled) ⇒ every reader the fault did not kill ended with
//!    exit 3 and an error naming the job's reason, unless it had read its whole stream
//!    byte-exact (the stream was complete before the abort: there is nothing to tell it; rule 1
//!    still judges the job). One more exception: a reader whose consumer the fault killed
//!    cannot be told anything by it and may end with exit 4 (`writer_dead`, or
//!    `end_unconfirmed` when it had read every byte).
//! 3. No job is left running at the end, and no job is forgotten (each is listed as ended).
//! 4. No daemon exited unless the fault killed it.
//! 5. No reader or submitter hung past its deadline; no reader saw wrong bytes.
//! 6. The submitter learned how its job ended (not `unknown`).
//! 7. Every garbage or unauthenticated connection to a listening socket was refused.
//! 8. Every job the run submitted was accepted (the cluster is whole again after the fault).
//! 9. Every daemon probed logged each connection it refused.
//! 10. The status's figures of an ended job agree with it: `read` ≤ `bytes` ≤ `total` = the
//!     streams' lengths, and a completed job delivered and had read every byte.

#![allow(dead_code)] // the suite and the checker's own tests use different parts

use serde_json::Value;

/// A process the run started and waited for (a submitter or a reader).
#[derive(Debug, Clone, Default)]
pub struct ProcRecord {
    /// Exit code (`None`: killed by a signal, or hung and then killed).
    pub code: Option<i32>,
    /// The fault killed it (SIGKILL of a reader).
    pub killed_by_fault: bool,
    /// It did not exit by its deadline (the test killed it then).
    pub hung: bool,
    /// Its stdout.
    pub stdout: String,
    /// Its stderr.
    pub stderr: String,
}

/// One stream of a job as the test expects it.
#[derive(Debug, Clone)]
pub struct StreamRecord {
    /// Stream index.
    pub stream: u64,
    /// Its consumer node.
    pub node: String,
    /// Its length in bytes.
    pub length: u64,
    /// XXH3-128 of the bytes it must carry (32 hex digits), computed by the test.
    pub digest: String,
}

/// One `spate read --json --hash` of a stream.
#[derive(Debug, Clone)]
pub struct ReaderRecord {
    /// The stream it read.
    pub stream: u64,
    /// The process.
    pub proc: ProcRecord,
    /// The fault killed the consumer holding its stream.
    pub consumer_killed: bool,
}

impl ReaderRecord {
    /// Its `--json` report (the last line of stdout), when it printed one.
    pub fn report(&self) -> Option<Value> {
        last_json(&self.proc.stdout)
    }
}

/// One job of a run.
#[derive(Debug, Clone)]
pub struct JobRecord {
    /// Job id (0: it was not accepted; `submit` says why).
    pub job: u64,
    /// Its streams.
    pub streams: Vec<StreamRecord>,
    /// `spate submit --ready --wait --json`.
    pub submit: ProcRecord,
    /// Every reader started for it.
    pub readers: Vec<ReaderRecord>,
}

/// One daemon process of a run (a restarted daemon is a new record).
#[derive(Debug, Clone)]
pub struct DaemonRecord {
    /// `scheduler` or the node name.
    pub name: String,
    /// How it exited, when it did (`None`: still running at the end).
    pub exit: Option<String>,
    /// The fault killed it.
    pub killed_by_fault: bool,
}

/// One connection made to a listening socket with garbage, a frame without authentication,
/// or the wrong credentials.
#[derive(Debug, Clone)]
pub struct ProbeRecord {
    /// The socket (`scheduler unix:...`, `c0 data tcp:...`, ...).
    pub target: String,
    /// What was sent.
    pub kind: String,
    /// The daemon refused it (closed the connection, or failed the handshake).
    pub refused: bool,
    /// What happened.
    pub detail: String,
}

/// Everything one run recorded.
#[derive(Debug, Clone, Default)]
pub struct History {
    /// The run's seed.
    pub seed: u64,
    /// The fault, as done (kind and point).
    pub fault: String,
    /// Its jobs in submission order.
    pub jobs: Vec<JobRecord>,
    /// Its daemons.
    pub daemons: Vec<DaemonRecord>,
    /// Probes of listening sockets.
    pub probes: Vec<ProbeRecord>,
    /// Daemons that logged fewer refusals than they were sent probes: what they logged.
    pub unlogged: Vec<String>,
    /// `spate status --json` at the end (`None`: the scheduler did not answer).
    pub final_status: Option<Value>,
}

/// Which rule a violation breaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rule {
    /// Reported completed, but a stream was not read to its end byte-exact.
    CompletedNotRead,
    /// Every stream read to its end byte-exact, but not reported completed.
    ReadNotCompleted,
    /// Reported aborted, but a reader did not end with an error naming the reason.
    AbortedReaderNotTold,
    /// The submitter's outcome or exit code differs from the job's.
    SubmitterDisagrees,
    /// The submitter did not learn how its job ended.
    SubmitterUnknown,
    /// The job is still running at the end.
    JobLeftRunning,
    /// The job is neither running nor ended in the final status.
    JobForgotten,
    /// The scheduler did not answer at the end.
    NoFinalStatus,
    /// A daemon exited that the fault did not kill.
    DaemonExited,
    /// A reader or the submitter did not exit by its deadline.
    Hung,
    /// A reader saw bytes that are not the stream's.
    BadBytes,
    /// A garbage or unauthenticated connection was served.
    ProbeServed,
    /// A job the run submitted was not accepted (the cluster did not recover from the fault).
    NotAccepted,
    /// A daemon did not log a connection it refused.
    RefusalNotLogged,
    /// The status's figures of an ended job contradict its outcome or each other.
    StatusFigures,
}

/// One broken rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The rule.
    pub rule: Rule,
    /// The job it is about, if any.
    pub job: Option<u64>,
    /// The evidence.
    pub detail: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.job {
            Some(j) => write!(f, "{:?} (job {j}): {}", self.rule, self.detail),
            None => write!(f, "{:?}: {}", self.rule, self.detail),
        }
    }
}

/// The last line of `s` that parses as JSON.
pub fn last_json(s: &str) -> Option<Value> {
    s.lines()
        .rev()
        .find_map(|l| serde_json::from_str::<Value>(l.trim()).ok())
}

/// How a job ended as the final status says: `(outcome, reason)`; `None` when not ended.
fn ended_outcome(status: &Value, job: u64) -> Option<(String, Option<String>)> {
    let e = status["ended"]
        .as_array()?
        .iter()
        .find(|e| e["job"].as_u64() == Some(job))?;
    Some((
        e["outcome"].as_str().unwrap_or_default().to_string(),
        e["reason"].as_str().map(str::to_string),
    ))
}

fn is_running(status: &Value, job: u64) -> bool {
    status["jobs"]
        .as_array()
        .is_some_and(|v| v.iter().any(|j| j["job"].as_u64() == Some(job)))
}

/// Whether `r` read stream `s` to its end byte-exact; `Err` says why not.
fn read_exact(r: &ReaderRecord, s: &StreamRecord) -> Result<(), String> {
    if r.proc.killed_by_fault {
        return Err("its reader was killed".into());
    }
    let Some(rep) = r.report() else {
        return Err(format!(
            "its reader printed no report (exit {:?}; stderr {:?})",
            r.proc.code, r.proc.stderr
        ));
    };
    let bytes = rep["bytes"].as_u64();
    let digest = rep["xxh3_128"].as_str();
    let start = rep["start_offset"].as_u64().unwrap_or(0);
    if r.proc.code == Some(0)
        && rep["outcome"] == "end"
        && start == 0
        && bytes == Some(s.length)
        && digest == Some(s.digest.as_str())
    {
        return Ok(());
    }
    Err(format!(
        "its reader exited {:?} with outcome {}, {:?} bytes from offset {start} of {}, digest \
         {:?} (expected {}), error {}",
        r.proc.code, rep["outcome"], bytes, s.length, digest, s.digest, rep["error"]
    ))
}

/// Whether `r` received stream `s` whole and byte-exact: read to its end with the end
/// confirmed (exit 0, [`read_exact`]), or with every byte read and checked when the consumer
/// died before it could confirm the end (exit 4, outcome `end_unconfirmed`).
fn received_whole(r: &ReaderRecord, s: &StreamRecord) -> Result<(), String> {
    let exact = read_exact(r, s);
    if exact.is_ok() || r.proc.code != Some(4) {
        return exact;
    }
    let Some(rep) = r.report() else {
        return exact;
    };
    let whole = rep["outcome"] == "end_unconfirmed"
        && rep["start_offset"].as_u64().unwrap_or(0) == 0
        && rep["bytes"].as_u64() == Some(s.length)
        && rep["xxh3_128"].as_str() == Some(s.digest.as_str());
    if whole { Ok(()) } else { exact }
}

/// Judges one run's history: every rule it breaks (empty: the run is right).
pub fn check(h: &History) -> Vec<Violation> {
    let mut v = Vec::new();
    let mut bad =
        |rule: Rule, job: Option<u64>, detail: String| v.push(Violation { rule, job, detail });
    let status = h.final_status.as_ref();
    if status.is_none() {
        bad(
            Rule::NoFinalStatus,
            None,
            "spate status --json did not answer at the end".into(),
        );
    }
    for j in &h.jobs {
        if j.job == 0 {
            bad(
                Rule::NotAccepted,
                None,
                format!(
                    "submit exited {:?}: {:?} {:?}",
                    j.submit.code,
                    j.submit.stdout.trim(),
                    j.submit.stderr.trim()
                ),
            );
            continue;
        }
        let id = Some(j.job);
        // Rule 5: nothing hung, no wrong bytes.
        if j.submit.hung {
            bad(Rule::Hung, id, "submit --wait did not exit".into());
        }
        for r in &j.readers {
            if r.proc.hung {
                bad(
                    Rule::Hung,
                    id,
                    format!("the reader of stream {} did not exit", r.stream),
                );
            }
            let Some(rep) = r.report() else { continue };
            let wrong_digest = (rep["outcome"] == "end" || rep["outcome"] == "end_unconfirmed")
                && j.streams.iter().any(|s| {
                    s.stream == r.stream
                        && rep["start_offset"].as_u64().unwrap_or(0) == 0
                        && rep["xxh3_128"].as_str() != Some(s.digest.as_str())
                });
            if rep["outcome"] == "verify_failed" || r.proc.code == Some(5) || wrong_digest {
                bad(
                    Rule::BadBytes,
                    id,
                    format!("the reader of stream {} read wrong bytes: {rep}", r.stream),
                );
            }
        }
        // Rule 3: the job ended and is listed so.
        let Some(status) = status else { continue };
        if is_running(status, j.job) {
            bad(
                Rule::JobLeftRunning,
                id,
                "still listed as running at the end".into(),
            );
            continue;
        }
        let Some((outcome, reason)) = ended_outcome(status, j.job) else {
            bad(
                Rule::JobForgotten,
                id,
                "neither running nor ended in the final status".into(),
            );
            continue;
        };
        // Rule 10.
        if let Some(e) = status["ended"]
            .as_array()
            .and_then(|v| v.iter().find(|e| e["job"].as_u64() == Some(j.job)))
        {
            let len: u64 = j.streams.iter().map(|s| s.length).sum();
            let (bytes, read, total) =
                (e["bytes"].as_u64(), e["read"].as_u64(), e["total"].as_u64());
            let ordered = matches!((read, bytes, total), (Some(r), Some(b), Some(t)) if r <= b && b <= t && t == len);
            let whole = outcome != "completed" || (bytes == Some(len) && read == Some(len));
            if !ordered || !whole {
                bad(
                    Rule::StatusFigures,
                    id,
                    format!(
                        "the job ended {outcome} with bytes {bytes:?}, read {read:?}, total \
                         {total:?}; its streams hold {len} bytes"
                    ),
                );
            }
        }
        // The submitter names the same outcome, with the matching exit code.
        let told = last_json(&j.submit.stdout);
        let told_outcome = told
            .as_ref()
            .and_then(|t| t["outcome"].as_str().map(str::to_string));
        match told_outcome.as_deref() {
            None | Some("unknown") => {
                if !j.submit.hung {
                    bad(
                        Rule::SubmitterUnknown,
                        id,
                        format!(
                            "submit --wait exited {:?} without the outcome ({outcome}): {:?}",
                            j.submit.code,
                            j.submit.stderr.trim()
                        ),
                    );
                }
            }
            Some(o) => {
                let told_reason = told
                    .as_ref()
                    .and_then(|t| t["reason"].as_str().map(str::to_string));
                let code = match o {
                    "completed" => Some(0),
                    _ => Some(3),
                };
                if o != outcome || told_reason != reason || j.submit.code != code {
                    bad(
                        Rule::SubmitterDisagrees,
                        id,
                        format!(
                            "submit --wait said {o} ({told_reason:?}) with exit {:?}; the job \
                             ended {outcome} ({reason:?})",
                            j.submit.code
                        ),
                    );
                }
            }
        }
        // Rule 1, both ways: completed ⇒ every stream was received whole byte-exact (by a
        // reader whose end was confirmed, or that read every byte before its consumer died
        // unconfirmed); every stream's reader told its end confirmed (exit 0) ⇒ completed.
        let mut unread = Vec::new();
        for s in &j.streams {
            let tries: Vec<String> = j
                .readers
                .iter()
                .filter(|r| r.stream == s.stream)
                .map(|r| match received_whole(r, s) {
                    Ok(()) => String::new(),
                    Err(e) => e,
                })
                .collect();
            if !tries.iter().any(String::is_empty) {
                let why = if tries.is_empty() {
                    "nobody read it".to_string()
                } else {
                    tries.join("; ")
                };
                unread.push(format!("stream {}: {why}", s.stream));
            }
        }
        if outcome == "completed" && !unread.is_empty() {
            bad(
                Rule::CompletedNotRead,
                id,
                format!("reported completed, but {}", unread.join(" | ")),
            );
        }
        let all_confirmed = j.streams.iter().all(|s| {
            j.readers
                .iter()
                .any(|r| r.stream == s.stream && read_exact(r, s).is_ok())
        });
        if outcome != "completed" && !j.streams.is_empty() && all_confirmed {
            bad(
                Rule::ReadNotCompleted,
                id,
                format!(
                    "every stream was read to its end byte-exact, its end confirmed, but the job \
                     ended {outcome} ({reason:?})"
                ),
            );
        }
        // Rule 2.
        if outcome == "aborted" || outcome == "cancelled" {
            let why = reason.clone().unwrap_or_else(|| "cancelled".into());
            for r in j.readers.iter().filter(|r| !r.proc.killed_by_fault) {
                let whole = j
                    .streams
                    .iter()
                    .any(|s| s.stream == r.stream && read_exact(r, s).is_ok());
                if whole {
                    continue;
                }
                let rep = r.report();
                let error = rep
                    .as_ref()
                    .and_then(|x| x["error"].as_str().map(str::to_string))
                    .unwrap_or_default();
                let told = r.proc.code == Some(3) && !why.is_empty() && error.contains(&why);
                let writer_dead = r.consumer_killed
                    && r.proc.code == Some(4)
                    && rep.as_ref().is_some_and(|x| {
                        x["outcome"] == "writer_dead" || x["outcome"] == "end_unconfirmed"
                    });
                if !told && !writer_dead {
                    bad(
                        Rule::AbortedReaderNotTold,
                        id,
                        format!(
                            "the job ended {outcome} ({why:?}); the reader of stream {} exited \
                             {:?} with {}",
                            r.stream,
                            r.proc.code,
                            rep.map(|x| x.to_string()).unwrap_or_else(|| format!(
                                "no report; stderr {:?}",
                                r.proc.stderr
                            ))
                        ),
                    );
                }
            }
        }
    }
    // Rule 4.
    for d in &h.daemons {
        if let Some(e) = &d.exit
            && !d.killed_by_fault
        {
            bad(
                Rule::DaemonExited,
                None,
                format!("{} exited ({e}) without being killed", d.name),
            );
        }
    }
    // Rule 9.
    for u in &h.unlogged {
        bad(Rule::RefusalNotLogged, None, u.clone());
    }
    // Rule 7.
    for p in h.probes.iter().filter(|p| !p.refused) {
        bad(
            Rule::ProbeServed,
            None,
            format!("{} to {} was not refused: {}", p.kind, p.target, p.detail),
        );
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const D0: &str = "0123456789abcdef0123456789abcdef";
    const D1: &str = "fedcba9876543210fedcba9876543210";

    fn streams() -> Vec<StreamRecord> {
        vec![
            StreamRecord {
                stream: 0,
                node: "c0".into(),
                length: 100,
                digest: D0.into(),
            },
            StreamRecord {
                stream: 1,
                node: "c0".into(),
                length: 100,
                digest: D1.into(),
            },
        ]
    }

    fn reader(stream: u64, code: i32, report: Value) -> ReaderRecord {
        ReaderRecord {
            stream,
            proc: ProcRecord {
                code: Some(code),
                stdout: format!("{report}\n"),
                ..ProcRecord::default()
            },
            consumer_killed: false,
        }
    }

    fn full(stream: u64, digest: &str) -> ReaderRecord {
        reader(
            stream,
            0,
            json!({"outcome": "end", "bytes": 100, "start_offset": 0, "xxh3_128": digest,
                   "error": null}),
        )
    }

    fn aborted_reader(stream: u64, error: &str) -> ReaderRecord {
        reader(
            stream,
            3,
            json!({"outcome": "aborted", "bytes": 40, "start_offset": 0, "xxh3_128": null,
                   "error": error}),
        )
    }

    fn submit(code: i32, outcome: &str, reason: Option<&str>) -> ProcRecord {
        ProcRecord {
            code: Some(code),
            stdout: format!(
                "{{\"job\":1,\"streams\":[]}}\n{}\n",
                json!({"job": 1, "outcome": outcome, "reason": reason})
            ),
            ..ProcRecord::default()
        }
    }

    /// `ended` with the figures of a job that delivered and had read everything when it
    /// completed, or half when not (unless the test gives them).
    fn history(submit: ProcRecord, readers: Vec<ReaderRecord>, mut ended: Value) -> History {
        if let Some(o) = ended.as_object_mut() {
            let done = o.get("outcome").and_then(Value::as_str) == Some("completed");
            let (bytes, read) = if done { (200, 200) } else { (100, 50) };
            o.entry("bytes").or_insert(json!(bytes));
            o.entry("read").or_insert(json!(read));
            o.entry("total").or_insert(json!(200));
        }
        History {
            seed: 1,
            fault: "test".into(),
            jobs: vec![JobRecord {
                job: 1,
                streams: streams(),
                submit,
                readers,
            }],
            daemons: vec![DaemonRecord {
                name: "c0".into(),
                exit: None,
                killed_by_fault: false,
            }],
            probes: vec![],
            unlogged: vec![],
            final_status: Some(json!({"jobs": [], "nodes": [], "ended": [ended]})),
        }
    }

    fn rules(h: &History) -> Vec<Rule> {
        check(h).into_iter().map(|v| v.rule).collect()
    }

    const REASON: &str = "the reader of stream 1 on \"c0\" is gone";

    fn aborted_entry() -> Value {
        json!({"job": 1, "outcome": "aborted", "reason": REASON})
    }

    #[test]
    fn a_completed_job_read_byte_exact_is_right() {
        let h = history(
            submit(0, "completed", None),
            vec![full(0, D0), full(1, D1)],
            json!({"job": 1, "outcome": "completed", "reason": null}),
        );
        assert_eq!(check(&h), vec![]);
    }

    #[test]
    fn completed_with_a_stream_short_or_with_other_bytes_is_wrong() {
        let ended = json!({"job": 1, "outcome": "completed", "reason": null});
        // Stream 1's reader got 60 of 100 bytes and exited 0 (a lying reader).
        let short = reader(
            1,
            0,
            json!({"outcome": "end", "bytes": 60, "start_offset": 0, "xxh3_128": D1}),
        );
        let h = history(
            submit(0, "completed", None),
            vec![full(0, D0), short],
            ended.clone(),
        );
        assert_eq!(rules(&h), vec![Rule::CompletedNotRead]);
        // Stream 1's bytes are another stream's: wrong bytes, and not read byte-exact.
        let h = history(
            submit(0, "completed", None),
            vec![full(0, D0), full(1, D0)],
            ended.clone(),
        );
        assert_eq!(rules(&h), vec![Rule::BadBytes, Rule::CompletedNotRead]);
        // Nobody read stream 1.
        let h = history(submit(0, "completed", None), vec![full(0, D0)], ended);
        let v = check(&h);
        assert_eq!(v.len(), 1);
        assert!(v[0].detail.contains("stream 1: nobody read it"), "{}", v[0]);
    }

    #[test]
    fn a_reader_joining_mid_stream_does_not_count_as_reading_it_all() {
        let late = reader(
            1,
            0,
            json!({"outcome": "end", "bytes": 100, "start_offset": 50, "xxh3_128": D1}),
        );
        let h = history(
            submit(0, "completed", None),
            vec![full(0, D0), late],
            json!({"job": 1, "outcome": "completed", "reason": null}),
        );
        assert_eq!(rules(&h), vec![Rule::CompletedNotRead]);
    }

    #[test]
    fn every_byte_read_but_the_end_unconfirmed_after_the_consumer_died_fits_either_outcome() {
        // The consumer died after every byte landed and was read, before it confirmed the
        // ends: the readers say so (exit 4); the scheduler may have counted the streams read
        // (completed) or not (aborted).
        let unconfirmed = |stream, digest| {
            let mut r = reader(
                stream,
                4,
                json!({"outcome": "end_unconfirmed", "bytes": 100, "start_offset": 0,
                       "xxh3_128": digest, "error": "writer (pid 7) died after every byte"}),
            );
            r.consumer_killed = true;
            r
        };
        let both = vec![unconfirmed(0, D0), unconfirmed(1, D1)];
        let ended = json!({"job": 1, "outcome": "completed", "reason": null});
        let h = history(submit(0, "completed", None), both.clone(), ended);
        assert_eq!(check(&h), vec![]);
        let h = history(submit(3, "aborted", Some(REASON)), both, aborted_entry());
        assert_eq!(check(&h), vec![]);
        // Unconfirmed but short, or with other bytes: not received whole.
        let mut short = unconfirmed(1, D1);
        short.proc.stdout = format!(
            "{}\n",
            json!({"outcome": "end_unconfirmed", "bytes": 60, "start_offset": 0,
                   "xxh3_128": D1, "error": "x"})
        );
        let ended = json!({"job": 1, "outcome": "completed", "reason": null});
        let h = history(
            submit(0, "completed", None),
            vec![unconfirmed(0, D0), short],
            ended,
        );
        assert_eq!(rules(&h), vec![Rule::CompletedNotRead]);
    }

    #[test]
    fn every_stream_delivered_but_reported_aborted_is_wrong() {
        // Defect 2 of the issue: every byte delivered and verified, the job called aborted.
        let h = history(
            submit(3, "aborted", Some(REASON)),
            vec![full(0, D0), full(1, D1)],
            aborted_entry(),
        );
        assert_eq!(rules(&h), vec![Rule::ReadNotCompleted]);
    }

    #[test]
    fn a_reader_that_read_its_whole_stream_before_the_abort_needs_no_reason() {
        // Stream 0's reader was killed; stream 1 had landed whole and its reader read it all.
        let mut killed = aborted_reader(0, "");
        killed.proc = ProcRecord {
            code: None,
            killed_by_fault: true,
            ..ProcRecord::default()
        };
        let h = history(
            submit(3, "aborted", Some(REASON)),
            vec![killed.clone(), full(1, D1)],
            aborted_entry(),
        );
        assert_eq!(check(&h), vec![]);
        // A reader that stopped short with exit 0 is not excused.
        let short = reader(
            1,
            0,
            json!({"outcome": "end", "bytes": 60, "start_offset": 0, "xxh3_128": D1}),
        );
        let h = history(
            submit(3, "aborted", Some(REASON)),
            vec![killed, short],
            aborted_entry(),
        );
        assert_eq!(rules(&h), vec![Rule::AbortedReaderNotTold]);
    }

    #[test]
    fn an_aborted_job_whose_readers_read_its_reason_is_right() {
        let mut killed = aborted_reader(1, "");
        killed.proc = ProcRecord {
            code: None,
            killed_by_fault: true,
            ..ProcRecord::default()
        };
        let told = aborted_reader(0, &format!("stream aborted: job 1 was aborted: {REASON}"));
        let h = history(
            submit(3, "aborted", Some(REASON)),
            vec![told, killed],
            aborted_entry(),
        );
        assert_eq!(check(&h), vec![]);
    }

    #[test]
    fn an_aborted_job_whose_reader_reads_another_reason_is_wrong() {
        // Defect 6 of the issue: the other reader is told "cancelled".
        let h = history(
            submit(3, "aborted", Some(REASON)),
            vec![
                aborted_reader(0, "stream aborted: cancelled"),
                aborted_reader(1, REASON),
            ],
            aborted_entry(),
        );
        let v = check(&h);
        assert_eq!(v.len(), 1, "{v:?}");
        assert_eq!(v[0].rule, Rule::AbortedReaderNotTold);
        assert!(v[0].detail.contains("stream 0"), "{}", v[0]);
    }

    #[test]
    fn a_dead_writer_excuses_only_the_readers_of_the_killed_consumer() {
        let dead = || {
            reader(
                0,
                4,
                json!({"outcome": "writer_dead", "bytes": 40, "error": "the writer died"}),
            )
        };
        let ended = json!({"job": 1, "outcome": "aborted",
                           "reason": "output node \"c0\" crashed"});
        let mut r0 = dead();
        r0.consumer_killed = true;
        let mut r1 = dead();
        r1.stream = 1;
        r1.consumer_killed = true;
        let h = history(
            submit(3, "aborted", Some("output node \"c0\" crashed")),
            vec![r0.clone(), r1],
            ended.clone(),
        );
        assert_eq!(check(&h), vec![]);
        // The same report from a reader whose consumer lives is not an answer.
        let mut r1 = dead();
        r1.stream = 1;
        let h = history(
            submit(3, "aborted", Some("output node \"c0\" crashed")),
            vec![r0, r1],
            ended,
        );
        assert_eq!(rules(&h), vec![Rule::AbortedReaderNotTold]);
    }

    #[test]
    fn a_submitter_that_disagrees_or_does_not_know_is_wrong() {
        let ok = || vec![full(0, D0), full(1, D1)];
        let done = json!({"job": 1, "outcome": "completed", "reason": null});
        let h = history(submit(3, "aborted", Some("x")), ok(), done.clone());
        assert_eq!(rules(&h), vec![Rule::SubmitterDisagrees]);
        // The right outcome with the wrong exit code.
        let h = history(submit(3, "completed", None), ok(), done.clone());
        assert_eq!(rules(&h), vec![Rule::SubmitterDisagrees]);
        // Lost the scheduler: "unknown", exit 4.
        let h = history(submit(4, "unknown", None), ok(), done.clone());
        assert_eq!(rules(&h), vec![Rule::SubmitterUnknown]);
        // Hung: that is the violation, not also "unknown".
        let mut s = submit(0, "x", None);
        s.stdout.clear();
        s.hung = true;
        s.code = None;
        let h = history(s, ok(), done);
        assert_eq!(rules(&h), vec![Rule::Hung]);
    }

    #[test]
    fn a_job_left_running_or_forgotten_is_wrong() {
        let mut h = history(
            submit(0, "completed", None),
            vec![full(0, D0), full(1, D1)],
            json!({"job": 9, "outcome": "completed", "reason": null}),
        );
        assert_eq!(rules(&h), vec![Rule::JobForgotten]);
        h.final_status = Some(json!({"jobs": [{"job": 1, "state": "running"}], "ended": []}));
        assert_eq!(rules(&h), vec![Rule::JobLeftRunning]);
        h.final_status = None;
        assert_eq!(rules(&h), vec![Rule::NoFinalStatus]);
    }

    #[test]
    fn a_daemon_that_exited_unkilled_a_hung_reader_and_a_served_probe_are_wrong() {
        let mut h = history(
            submit(0, "completed", None),
            vec![full(0, D0), full(1, D1)],
            json!({"job": 1, "outcome": "completed", "reason": null}),
        );
        h.daemons.push(DaemonRecord {
            name: "p1".into(),
            exit: Some("signal: 9 (SIGKILL)".into()),
            killed_by_fault: true,
        });
        assert_eq!(check(&h), vec![]);
        h.daemons.push(DaemonRecord {
            name: "p0".into(),
            exit: Some("exit status: 1".into()),
            killed_by_fault: false,
        });
        h.jobs[0].readers[1].proc.hung = true;
        h.probes.push(ProbeRecord {
            target: "c0 data unix".into(),
            kind: "garbage".into(),
            refused: false,
            detail: "still open after 15 s".into(),
        });
        h.unlogged
            .push("c0 logged 6 of the 8 connections it refused".into());
        assert_eq!(
            rules(&h),
            vec![
                Rule::Hung,
                Rule::DaemonExited,
                Rule::RefusalNotLogged,
                Rule::ProbeServed
            ]
        );
    }

    #[test]
    fn status_figures_that_contradict_the_outcome_are_wrong() {
        let ok = || vec![full(0, D0), full(1, D1)];
        let done = |bytes: u64, read: u64, total: u64| {
            json!({"job": 1, "outcome": "completed", "reason": null,
                   "bytes": bytes, "read": read, "total": total})
        };
        let h = history(submit(0, "completed", None), ok(), done(200, 200, 200));
        assert_eq!(check(&h), vec![]);
        // Completed, but the status says a quarter was never read.
        let h = history(submit(0, "completed", None), ok(), done(200, 150, 200));
        assert_eq!(rules(&h), vec![Rule::StatusFigures]);
        // More read than delivered; a total that is not the streams'.
        let h = history(submit(0, "completed", None), ok(), done(200, 201, 200));
        assert_eq!(rules(&h), vec![Rule::StatusFigures]);
        let h = history(submit(0, "completed", None), ok(), done(300, 300, 300));
        assert_eq!(rules(&h), vec![Rule::StatusFigures]);
    }

    #[test]
    fn a_job_that_was_not_accepted_is_wrong() {
        let mut h = history(ProcRecord::default(), vec![], json!({}));
        h.jobs[0].job = 0;
        h.jobs[0].submit.code = Some(6);
        h.jobs[0].submit.stderr = "spate: error: job refused: no consumer \"c0\"".into();
        let v = check(&h);
        assert_eq!(v.len(), 1, "{v:?}");
        assert_eq!(v[0].rule, Rule::NotAccepted);
        assert!(v[0].detail.contains("job refused"), "{}", v[0]);
    }

    #[test]
    fn a_verification_failure_is_wrong_even_in_an_aborted_job() {
        let bad = reader(
            0,
            5,
            json!({"outcome": "verify_failed", "bytes": 10, "bad_offset": 3,
                   "error": "verification failed"}),
        );
        let h = history(
            submit(3, "aborted", Some(REASON)),
            vec![bad, aborted_reader(1, REASON)],
            aborted_entry(),
        );
        let r = rules(&h);
        assert_eq!(r, vec![Rule::BadBytes, Rule::AbortedReaderNotTold]);
    }
}
