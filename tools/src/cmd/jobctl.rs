//! `spate ready` and `spate done` (and the request under `spate cancel`): tell the scheduler
//! what the user decided about a job.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use spate_netlib::endpoint::Endpoint;
use spate_netlib::proto::{JobId, Message};
use spate_scheduler::server::user::{DEFAULT_ENDPOINT, User, load_secret};

/// The job and how to reach the scheduler.
#[derive(clap::Args, Debug)]
pub struct JobArgs {
    /// The job id (as printed by `spate submit`).
    #[arg(value_name = "JOB")]
    pub job: u64,
    /// The scheduler: unix:PATH or tcp:HOST:PORT.
    #[arg(long, env = "SPATE_SCHEDULER", value_name = "ENDPOINT", default_value = DEFAULT_ENDPOINT)]
    pub scheduler: Endpoint,
    /// File holding the cluster secret (default: $SPATE_SECRET, or PATH.secret beside a UNIX
    /// scheduler socket).
    #[arg(long, value_name = "PATH")]
    pub secret_file: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
#[command(
    about = "Start an accepted job (its readers are attached, or will be)",
    long_about = "Start an accepted job: the scheduler has its producers preload and compute. \
A job submitted without --ready waits for this. Readers may attach before or after: a ring \
never overwrites unread data, so a late reader only slows the job down."
)]
pub struct ReadyArgs {
    #[command(flatten)]
    pub job: JobArgs,
}

#[derive(clap::Args, Debug)]
#[command(
    about = "End a delivered job and free its rings",
    long_about = "End a delivered job: its rings are freed and it completes. A job whose \
streams were all read to their end completes by itself; this is for a job whose readers \
stopped early on purpose. It is refused for a job still running (use spate cancel)."
)]
pub struct DoneArgs {
    #[command(flatten)]
    pub job: JobArgs,
}

/// Sends `make(job)` and waits for its Ack; an Error reply fails with `cannot VERB job N:`.
pub fn request(a: &JobArgs, make: fn(JobId) -> Message, verb: &str) -> anyhow::Result<()> {
    let secret = load_secret(a.secret_file.as_deref(), &a.scheduler)
        .context("cannot load the cluster secret")?;
    let mut user = User::connect(&a.scheduler, &secret, Duration::from_secs(10))?;
    let job = JobId(a.job);
    let r = user.request(&make(job), |m| match m {
        Message::Ack { job: j } if j == job => Some(Ok(())),
        Message::Error { message, .. } => Some(Err(message)),
        _ => None,
    })?;
    r.map_err(|m| anyhow::anyhow!("cannot {verb} job {}: {m}", a.job))
}

pub fn ready(a: ReadyArgs) -> anyhow::Result<i32> {
    request(&a.job, |job| Message::Ready { job }, "start")?;
    println!("job {} started", a.job.job);
    Ok(0)
}

pub fn done(a: DoneArgs) -> anyhow::Result<i32> {
    request(&a.job, |job| Message::Done { job }, "end")?;
    println!("job {} done: its rings are freed", a.job.job);
    Ok(0)
}
