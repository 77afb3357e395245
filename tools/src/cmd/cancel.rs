//! `spate cancel`: stop a job now (its rings are released, readers see it cancelled).

use std::path::PathBuf;

use spate_netlib::endpoint::Endpoint;
use spate_netlib::proto::{JobId, Message};
use spate_scheduler::server::user::DEFAULT_ENDPOINT;

#[derive(clap::Args, Debug)]
#[command(about = "Cancel a job (any state); its stream rings are released")]
pub struct Args {
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

pub fn run(a: Args) -> anyhow::Result<i32> {
    let mut user = super::connect_user(&a.scheduler, a.secret_file.as_deref())?;
    let job = JobId(a.job);
    let r = user.request(&Message::Cancel { job }, |m| match m {
        Message::Ack { job: j } if j == job => Some(Ok(())),
        Message::Error { message, .. } => Some(Err(message)),
        _ => None,
    })?;
    match r {
        Ok(()) => {
            println!("job {} cancelled", a.job);
            Ok(0)
        }
        Err(m) => anyhow::bail!("cannot cancel job {}: {m}", a.job),
    }
}
