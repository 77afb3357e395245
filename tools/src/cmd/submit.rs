//! `spate submit`: submit a job spec; print the job id and how to read each stream.

use std::path::PathBuf;

use anyhow::Context as _;
use hdrhistogram::Histogram;
use serde_json::json;
use spate_netlib::endpoint::Endpoint;
use spate_netlib::proto::{
    ErrorKind, JobId, JobOutcome, JobState, Message, RefuseReason, StreamPlacement,
};
use spate_scheduler::server::user::{DEFAULT_ENDPOINT, User, UserError};
use spate_scheduler::spec::{JobPlan, Kernel};

/// Exit code: the scheduler refused the job.
pub const EXIT_REFUSED: i32 = crate::exit::REFUSED;
/// Exit code (`--wait`): the job ended but did not complete (aborted or cancelled).
pub const EXIT_NOT_COMPLETED: i32 = crate::exit::ABORTED;
/// Exit code (`--wait`): the scheduler went away before the job ended.
pub const EXIT_LOST: i32 = crate::exit::PEER_GONE;

#[derive(clap::Args, Debug)]
#[command(
    about = "Submit a job spec (TOML); prints the job id and how to read each stream",
    long_about = "Submit a job spec (TOML) to the scheduler. It validates the spec (errors name \
the field), checks that every output node's consumer is connected and that producers exist, and \
has the consumers allocate the stream rings. On acceptance this prints the job id and, for each \
stream, its node and the `spate read` command to run ON THAT NODE to read it.\n\n\
The job starts when the scheduler gets Ready: --ready sends it at once (readers attached \
already, or started right after; a ring never overwrites unread data, so late readers only \
slow the job down); else `spate ready JOB` starts it later. A delivered job whose every \
stream was read to its end completes by itself and frees its rings (`spate done JOB` ends \
one whose readers stopped early). --wait follows the job to its end, printing warnings (a \
promise at risk, a stall naming the stream), and exits 0 once it completed. Without --wait \
the job goes on after this command exits.\n\n\
--wait ends with the job's chunk latencies (task created -> released in order at the consumers, \
measured by the scheduler and sent as a histogram): p50, p99, max; --hgrm FILE also writes \
their percentile distribution in HdrHistogram's .hgrm text format.\n\n\
With --wait, a scheduler that goes away (crashes, the connection breaks) is reached again \
(with back-off) for --reconnect-for, and the job is followed on: a scheduler restarted on the \
same state resumes it; one that shuts down cleanly ends the wait (exit 4).\n\n\
Exit status: 0 accepted (with --wait: completed); 6 refused (the message says why and how to \
fix it); 3 (--wait) the job was aborted or cancelled; 4 (--wait) the scheduler stayed away \
past --reconnect-for or no longer knows the job; 7 no scheduler at the endpoint; 1 any other error (see `spate --help` for the table). \
--json prints JSON lines: the acceptance (or refusal), then with --wait the outcome.",
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
    /// Follow the job to its end (it completes once every stream was read).
    #[arg(long)]
    pub wait: bool,
    /// JSON lines output.
    #[arg(long)]
    pub json: bool,
    /// With --wait: write the chunk latencies' percentile distribution (.hgrm) to FILE.
    #[arg(long, value_name = "FILE", requires = "wait")]
    pub hgrm: Option<PathBuf>,
    /// With --wait: another endpoint of the same scheduler, tried in turn with --scheduler
    /// when reconnecting; repeatable.
    #[arg(long, value_name = "ENDPOINT", requires = "wait")]
    pub scheduler_alt: Vec<Endpoint>,
    /// With --wait: how long to try to reach a scheduler that went away, e.g. 30s.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_reconnect)]
    pub reconnect_for: std::time::Duration,
}

fn parse_reconnect(s: &str) -> Result<std::time::Duration, String> {
    spate_scheduler::spec::parse_duration(s).map_err(|e| e.to_string())
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
    let mut user = super::connect_user(&a.scheduler, a.secret_file.as_deref())?;
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
    let again = Reconnect {
        scheduler: &a.scheduler,
        alt: &a.scheduler_alt,
        secret_file: a.secret_file.as_deref(),
        for_: a.reconnect_for,
    };
    follow(user, job, a.json, a.hgrm.as_deref(), &again)
}

/// Where and how long `--wait` tries to reach the scheduler again.
struct Reconnect<'a> {
    scheduler: &'a Endpoint,
    alt: &'a [Endpoint],
    secret_file: Option<&'a std::path::Path>,
    for_: std::time::Duration,
}

impl Reconnect<'_> {
    /// Connects again with back-off (100 ms doubling to 2 s, jittered) until it works or
    /// `for_` passed.
    fn connect(&self) -> Option<User> {
        use std::hash::BuildHasher;
        let jitter = std::collections::hash_map::RandomState::new();
        let deadline = std::time::Instant::now() + self.for_;
        let mut n = 0u32;
        while std::time::Instant::now() < deadline {
            std::thread::sleep(super::node::backoff(n, jitter.hash_one(n)));
            n = n.saturating_add(1);
            let Ok(secret) =
                spate_scheduler::server::user::load_secret(self.secret_file, self.scheduler)
            else {
                continue;
            };
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            // The endpoints in turn: --scheduler, then each --scheduler-alt.
            let ep = match (n as usize - 1) % (1 + self.alt.len()) {
                0 => self.scheduler,
                i => &self.alt[i - 1],
            };
            if let Ok(u) = User::connect(ep, &secret, left.min(std::time::Duration::from_secs(2))) {
                return Some(u);
            }
        }
        None
    }
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

fn follow(
    mut user: User,
    job: JobId,
    json_out: bool,
    hgrm: Option<&std::path::Path>,
    again: &Reconnect<'_>,
) -> anyhow::Result<i32> {
    let lost = |why: String| {
        if json_out {
            println!(
                "{}",
                json!({"job": job.0, "outcome": "unknown", "error": why})
            );
        }
        eprintln!(
            "spate submit: {why}; the outcome of job {} is unknown",
            job.0
        );
        Ok(EXIT_LOST)
    };
    let (outcome, latency) = loop {
        match watch(&mut user, job, json_out) {
            Ok(Watched::Ended(o, l)) => break (o, l),
            Ok(Watched::Unknown(m)) => return lost(format!("the scheduler says: {m}")),
            // A scheduler that says it is shutting down stopped on purpose (its nodes stop
            // too): that is the answer, not a loss to wait out.
            Err(e @ UserError::Shutdown(_)) => return lost(e.to_string()),
            Err(e @ (UserError::Lost | UserError::Msg(_))) => {
                eprintln!(
                    "spate submit: {e}; trying to reach the scheduler again for {} s",
                    again.for_.as_secs()
                );
                match again.connect() {
                    Some(u) => {
                        eprintln!(
                            "spate submit: reached the scheduler again; following job {}",
                            job.0
                        );
                        user = u;
                    }
                    None => {
                        return lost(format!(
                            "{e}, and it was not reachable again for {} s",
                            again.for_.as_secs()
                        ));
                    }
                }
            }
            Err(e) => return Err(e.into()),
        }
    };
    let (name, reason) = match &outcome {
        JobOutcome::Completed => ("completed", None),
        JobOutcome::Cancelled => ("cancelled", None),
        JobOutcome::Aborted { reason } => ("aborted", Some(reason.clone())),
    };
    if let (Some(path), Some(h)) = (hgrm, &latency) {
        let text = spate_netlib::hist::hgrm_text(
            h,
            &format!(
                "chunk latency (us), task created -> released in order, job {}",
                job.0
            ),
        );
        std::fs::write(path, text)
            .with_context(|| format!("cannot write the latency file {}", path.display()))?;
    } else if let Some(path) = hgrm {
        eprintln!(
            "spate submit: no chunk latencies for job {} (it did not complete); {} not written",
            job.0,
            path.display()
        );
    }
    let latency = latency.as_ref().and_then(latency_summary);
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
fn latency_summary(h: &Histogram<u64>) -> Option<serde_json::Value> {
    if h.is_empty() {
        return None;
    }
    let q = |p: f64| h.value_at_quantile(p);
    Some(json!({
        "count": h.len(), "p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "p999": q(0.999),
        "max": h.max(),
    }))
}

/// Follows a job to JobEnded (with the chunk latencies of a completed job). The scheduler
/// completes a delivered job by itself once every stream was read to its end.
enum Watched {
    /// How it ended, with the chunk latencies of a completed job.
    Ended(JobOutcome, Option<Histogram<u64>>),
    /// The scheduler does not know it (what it said).
    Unknown(String),
}

fn watch(user: &mut User, job: JobId, json_out: bool) -> Result<Watched, UserError> {
    user.send(&Message::Watch { job })?;
    let mut last_state = None;
    let mut latency = None;
    loop {
        match user.recv()? {
            Message::JobEnded { job: j, outcome } if j == job => {
                return Ok(Watched::Ended(outcome, latency));
            }
            Message::JobStats {
                job: j,
                chunk_latency_hdr,
                ..
            } if j == job => match spate_netlib::hist::decode(&chunk_latency_hdr) {
                Ok(h) => latency = Some(h),
                Err(e) => eprintln!("spate submit: the chunk latencies: {e}"),
            },
            Message::JobUpdate(s) if s.job == job => {
                if last_state.as_ref() != Some(&s.state) && !json_out {
                    eprintln!("job {}: {}", job.0, state_name(&s.state));
                }
                last_state = Some(s.state.clone());
            }
            Message::JobWarning { job: j, message } if j == job => {
                if json_out {
                    println!("{}", json!({"job": job.0, "warning": message}));
                } else {
                    eprintln!("job {}: warning: {message}", job.0);
                }
            }
            Message::Error {
                kind: ErrorKind::UnknownJob,
                message,
            } => {
                // The scheduler does not know the job (it restarted without its state).
                return Ok(Watched::Unknown(message));
            }
            Message::Error { message, .. } => {
                eprintln!("spate submit: the scheduler says: {message}");
            }
            _ => {}
        }
    }
}
