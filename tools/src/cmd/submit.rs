//! `spate submit`: submit a job spec; print the job id and how to read each stream.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use serde_json::json;
use spate_netlib::endpoint::Endpoint;
use spate_netlib::proto::{JobId, JobOutcome, JobState, Message, RefuseReason, StreamPlacement};
use spate_scheduler::server::user::{DEFAULT_ENDPOINT, User, UserError, load_secret};
use spate_scheduler::spec::{JobPlan, Kernel};

/// Exit code: the scheduler refused the job.
pub const EXIT_REFUSED: i32 = 2;
/// Exit code (`--wait`): the job ended but did not complete (aborted or cancelled).
pub const EXIT_NOT_COMPLETED: i32 = 3;
/// Exit code (`--wait`): the scheduler went away before the job ended.
pub const EXIT_LOST: i32 = 4;

#[derive(clap::Args, Debug)]
#[command(
    about = "Submit a job spec (TOML); prints the job id and how to read each stream",
    long_about = "Submit a job spec (TOML) to the scheduler. It validates the spec (errors name \
the field), checks that every output node's consumer is connected and that producers exist, and \
has the consumers allocate the stream rings. On acceptance this prints the job id and, for each \
stream, its node and the `spate read` command to run ON THAT NODE to read it.\n\n\
The job starts when the scheduler gets Ready: --ready sends it at once (readers attached \
already, or started right after; a ring never overwrites unread data, so late readers only \
slow the job down). --wait then follows the job to its end: when it is delivered and every \
stream has been read to its end, it sends Done (freeing the rings) and exits 0 once the job \
completed. Without --wait the job goes on after this command exits.\n\n\
Exit status: 0 accepted (with --wait: completed); 2 refused (the message says why and how to \
fix it); 3 (--wait) the job was aborted or cancelled; 4 (--wait) the scheduler stopped or died \
first; 1 any other error. --json prints JSON lines: the acceptance (or refusal), then with \
--wait the outcome.",
    after_help = "Examples:\n  \
spate submit poster.toml --ready --wait\n  \
spate submit job.toml --scheduler tcp:10.0.0.1:7070 --secret-file /etc/spate/secret --json"
)]
pub struct Args {
    /// The job spec (TOML file).
    #[arg(value_name = "JOB.toml")]
    pub spec: PathBuf,
    /// The scheduler: unix:PATH or tcp:HOST:PORT.
    #[arg(long, env = "SPATE_SCHEDULER", value_name = "ENDPOINT", default_value = DEFAULT_ENDPOINT)]
    pub scheduler: Endpoint,
    /// File holding the cluster secret (default: $SPATE_SECRET, or PATH.secret beside a UNIX
    /// scheduler socket).
    #[arg(long, value_name = "PATH")]
    pub secret_file: Option<PathBuf>,
    /// Send Ready right after acceptance: the job starts at once.
    #[arg(long)]
    pub ready: bool,
    /// Follow the job to its end (sends Done once every stream was read).
    #[arg(long)]
    pub wait: bool,
    /// JSON lines output.
    #[arg(long)]
    pub json: bool,
}

/// The `spate read` command for one stream (pattern jobs get `--verify SEED:STREAM`).
pub fn read_command(s: &StreamPlacement, pattern_seed: Option<u64>) -> String {
    let mut cmd = format!(
        "spate read --socket {} --key {}",
        shell_quote(&s.handoff.display().to_string()),
        s.key
    );
    if let Some(seed) = pattern_seed {
        cmd += &format!(" --verify {seed}:{}", s.stream.0);
    }
    cmd
}

fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+:=@,".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// A structured refusal reason as JSON (`kind` and its fields).
pub fn refuse_reason_json(r: &RefuseReason) -> serde_json::Value {
    match r {
        RefuseReason::InvalidSpec { field } => json!({"kind": "invalid_spec", "field": field}),
        RefuseReason::InputUnavailable { name } => {
            json!({"kind": "input_unavailable", "name": name})
        }
        RefuseReason::UnknownKernel { kernel } => {
            json!({"kind": "unknown_kernel", "kernel": kernel})
        }
        RefuseReason::ConsumerMissing { node } => json!({"kind": "consumer_missing", "node": node}),
        RefuseReason::NoProducers => json!({"kind": "no_producers"}),
        RefuseReason::InsufficientCapacity => json!({"kind": "insufficient_capacity"}),
        RefuseReason::AllocFailed { node, stream } => {
            json!({"kind": "alloc_failed", "node": node, "stream": stream.0})
        }
        RefuseReason::Busy => json!({"kind": "busy"}),
        RefuseReason::Infeasible {
            constraint,
            max_feasible_bps,
        } => json!({
            "kind": "infeasible",
            "constraint": constraint,
            "max_feasible_gbit_per_s": *max_feasible_bps as f64 / 1e9,
        }),
        RefuseReason::UnknownPolicy { name } => json!({"kind": "unknown_policy", "name": name}),
    }
}

/// Text of a job state, for humans and JSON.
pub fn state_name(s: &JobState) -> &'static str {
    match s {
        JobState::Allocating => "allocating",
        JobState::WaitingReady => "waiting-ready",
        JobState::Preloading => "preloading",
        JobState::Running => "running",
        JobState::Delivered => "delivered",
        JobState::Ended(JobOutcome::Completed) => "completed",
        JobState::Ended(JobOutcome::Cancelled) => "cancelled",
        JobState::Ended(JobOutcome::Aborted { .. }) => "aborted",
    }
}

pub fn run(a: Args) -> anyhow::Result<i32> {
    let text = std::fs::read_to_string(&a.spec).with_context(|| {
        format!(
            "cannot read the job spec {}",
            spate_netlib::text::Quoted::path(&a.spec)
        )
    })?;
    // Parsed here only for the reading hints; the scheduler validates (and names bad fields).
    let plan = JobPlan::parse(&text).ok();
    let seed = plan.as_ref().and_then(|p| {
        (p.kernel == Kernel::Pattern).then(|| {
            p.params
                .get("seed")
                .and_then(|v| v.as_integer())
                .map_or(0, |i| i as u64)
        })
    });
    let inputs = plan.as_ref().map(|p| p.inputs.clone()).unwrap_or_default();
    let secret = load_secret(a.secret_file.as_deref(), &a.scheduler)
        .context("cannot load the cluster secret")?;
    let mut user = User::connect(&a.scheduler, &secret, Duration::from_secs(10))?;
    let answer = user.request(
        &Message::Submit {
            spec_toml: text,
            inputs,
        },
        |m| match m {
            Message::Accepted { job, streams, plan } => Some(Ok((job, streams, plan))),
            Message::Refused { reason, message } => Some(Err((reason, message))),
            Message::Error { message, .. } => Some(Err((RefuseReason::Busy, message))),
            _ => None,
        },
    )?;
    let (job, streams, job_plan) = match answer {
        Ok(x) => x,
        Err((reason, message)) => {
            if a.json {
                println!(
                    "{}",
                    json!({"refused": {"reason": refuse_reason_json(&reason), "message": message}})
                );
            }
            eprintln!("spate submit: job refused: {message}");
            return Ok(EXIT_REFUSED);
        }
    };
    if a.json {
        let list: Vec<serde_json::Value> = streams
            .iter()
            .map(|s| {
                json!({
                    "stream": s.stream.0,
                    "node": s.node,
                    "handoff": s.handoff.display().to_string(),
                    "key": s.key.to_string(),
                    "length": s.length,
                    "read": read_command(s, seed),
                })
            })
            .collect();
        println!(
            "{}",
            json!({"job": job.0, "streams": list, "plan": super::plan::plan_json(&job_plan)})
        );
    } else {
        println!(
            "job {} accepted: {} stream{}",
            job.0,
            streams.len(),
            if streams.len() == 1 { "" } else { "s" }
        );
        for s in &streams {
            println!(
                "  stream {} ({} bytes) on node {}: {}",
                s.stream.0,
                s.length,
                s.node,
                read_command(s, seed)
            );
        }
        for l in super::plan::plan_text(&job_plan, "  ") {
            println!("{l}");
        }
        if !a.ready {
            println!("start it once the readers run: the job waits for Ready");
        }
    }
    if a.ready {
        ack(&mut user, &Message::Ready { job }, job, "Ready")?;
        if !a.json {
            println!("job {} started", job.0);
        }
    }
    if !a.wait {
        return Ok(0);
    }
    follow(&mut user, job, a.json)
}

/// Sends a request and waits for its Ack (an Error fails).
fn ack(user: &mut User, msg: &Message, job: JobId, what: &str) -> anyhow::Result<()> {
    let r = user.request(msg, |m| match m {
        Message::Ack { job: j } if j == job => Some(Ok(())),
        Message::Error { message, .. } => Some(Err(message)),
        _ => None,
    })?;
    r.map_err(|m| anyhow::anyhow!("{what} for job {} refused: {m}", job.0))
}

fn follow(user: &mut User, job: JobId, json_out: bool) -> anyhow::Result<i32> {
    let (outcome, latency) = match watch(user, job, json_out) {
        Ok(o) => o,
        Err(e @ (UserError::Lost | UserError::Shutdown(_))) => {
            if json_out {
                println!(
                    "{}",
                    json!({"job": job.0, "outcome": "unknown", "error": e.to_string()})
                );
            }
            eprintln!("spate submit: {e}; the outcome of job {} is unknown", job.0);
            return Ok(EXIT_LOST);
        }
        Err(e) => return Err(e.into()),
    };
    let (name, reason) = match &outcome {
        JobOutcome::Completed => ("completed", None),
        JobOutcome::Cancelled => ("cancelled", None),
        JobOutcome::Aborted { reason } => ("aborted", Some(reason.clone())),
    };
    let latency = latency.as_deref().and_then(latency_summary);
    if json_out {
        println!(
            "{}",
            json!({"job": job.0, "outcome": name, "reason": reason, "chunk_latency_us": latency})
        );
    } else {
        match &reason {
            Some(r) => println!("job {} {name}: {r}", job.0),
            None => println!("job {} {name}", job.0),
        }
        if let Some(l) = latency {
            println!(
                "chunk latency (task created -> released in order), {} chunks: p50 {} us, \
                 p99 {} us, max {} us",
                l["count"], l["p50"], l["p99"], l["max"]
            );
        }
    }
    Ok(if outcome == JobOutcome::Completed {
        0
    } else {
        EXIT_NOT_COMPLETED
    })
}

/// Count, p50, p90, p99, p99.9 and max of chunk latencies (microseconds), or None when empty.
fn latency_summary(v: &[u32]) -> Option<serde_json::Value> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_unstable();
    let q = |p: f64| s[((s.len() as f64 * p).ceil() as usize).clamp(1, s.len()) - 1];
    Some(json!({
        "count": s.len(), "p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "p999": q(0.999),
        "max": s[s.len() - 1],
    }))
}

/// Follows a job to JobEnded (with the chunk latencies of a completed job); sends Done once it
/// is delivered and fully read.
fn watch(
    user: &mut User,
    job: JobId,
    json_out: bool,
) -> Result<(JobOutcome, Option<Vec<u32>>), UserError> {
    user.send(&Message::Watch { job })?;
    let mut done_sent = false;
    let mut last_state = None;
    let mut latency = None;
    loop {
        match user.recv()? {
            Message::JobEnded { job: j, outcome } if j == job => return Ok((outcome, latency)),
            Message::JobStats {
                job: j,
                chunk_latency_us,
            } if j == job => latency = Some(chunk_latency_us),
            Message::JobUpdate(s) if s.job == job => {
                if last_state.as_ref() != Some(&s.state) && !json_out {
                    eprintln!("job {}: {}", job.0, state_name(&s.state));
                }
                last_state = Some(s.state.clone());
                if s.state == JobState::Delivered
                    && s.progress.read >= s.progress.total
                    && !done_sent
                {
                    user.send(&Message::Done { job })?;
                    done_sent = true;
                }
            }
            Message::JobWarning { job: j, message } if j == job => {
                if json_out {
                    println!("{}", json!({"job": job.0, "warning": message}));
                } else {
                    eprintln!("job {}: warning: {message}", job.0);
                }
            }
            Message::Error { message, .. } => {
                eprintln!("spate submit: the scheduler says: {message}");
            }
            _ => {}
        }
    }
}
