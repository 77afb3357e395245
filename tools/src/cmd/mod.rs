//! Subcommands. Each lives in its own module with its `Args` and `run`, returning the exit code.

use clap::Subcommand;

pub mod bench;
pub mod cancel;
pub mod demo;
pub mod doctor;
pub mod jobctl;
pub mod node;
mod node_metrics;
pub mod plan;
pub mod read;
pub mod ring_serve;
pub mod scheduler;
pub mod status;
pub mod submit;

#[derive(Subcommand)]
pub enum Cmd {
    // Commands whose module sets `about`/`long_about` carry no doc comment here: a variant's
    // doc comment would replace the module's long help.
    Demo(demo::Args),
    Scheduler(scheduler::Args),
    /// Run a node daemon: producer and/or consumer roles on this host.
    Node(node::Args),
    Submit(submit::Args),
    Plan(plan::Args),
    Status(status::Args),
    Ready(jobctl::ReadyArgs),
    Done(jobctl::DoneArgs),
    Cancel(cancel::Args),
    Read(read::Args),
    /// Check what this node offers spate (io_uring, hugepages, memlock, congestion control).
    Doctor(doctor::Args),
    /// Benchmarks against limits measured in the same run.
    #[command(subcommand)]
    Bench(bench::BenchCmd),
    /// Simulate a cluster (nodes, NICs, a switch, fair-shared links, compute) running the
    /// reference jobs, with the real scheduler core deciding: the reference cluster
    /// reproduced, larger clusters and faster links predicted, `bench cluster` validated.
    Sim(spate_bench::sim::Args),
    /// Serve a pattern stream on a ring (for tests of `spate read`).
    #[command(hide = true)]
    RingServe(ring_serve::Args),
}

/// The error of a command that found no scheduler at `ep` (exit code
/// [`crate::exit::NO_SCHEDULER`]).
pub fn no_scheduler(ep: &spate_netlib::endpoint::Endpoint, why: &str) -> anyhow::Error {
    anyhow::Error::new(crate::exit::Coded {
        code: crate::exit::NO_SCHEDULER,
        error: anyhow::anyhow!(
            "no scheduler at {ep}: {why}; start one with `spate scheduler`, or point \
             --scheduler (or SPATE_SCHEDULER) at the one running"
        ),
    })
}

/// Fails with [`no_scheduler`] when `ep` is a UNIX socket that does not exist (checked before
/// looking for the secret beside it, so a missing scheduler is reported as such).
pub fn scheduler_present(ep: &spate_netlib::endpoint::Endpoint) -> anyhow::Result<()> {
    if let spate_netlib::endpoint::Endpoint::Unix(p) = ep
        && !p.exists()
    {
        return Err(no_scheduler(ep, "the socket does not exist"));
    }
    Ok(())
}

/// A user connection to the scheduler at `ep` (secret from `secret_file`, `$SPATE_SECRET` or
/// beside the socket); a scheduler that is not there is reported as such.
pub fn connect_user(
    ep: &spate_netlib::endpoint::Endpoint,
    secret_file: Option<&std::path::Path>,
) -> anyhow::Result<spate_scheduler::server::user::User> {
    use anyhow::Context as _;
    use spate_scheduler::server::user::{User, UserError, load_secret};
    scheduler_present(ep)?;
    let secret = load_secret(secret_file, ep).context("cannot load the cluster secret")?;
    match User::connect(ep, &secret, std::time::Duration::from_secs(10)) {
        Ok(u) => Ok(u),
        Err(UserError::Connect(e)) => Err(no_scheduler(ep, &e.to_string())),
        Err(e) => Err(e.into()),
    }
}

pub fn run(cmd: Cmd) -> anyhow::Result<i32> {
    match cmd {
        Cmd::Demo(a) => demo::run(a),
        Cmd::Scheduler(a) => scheduler::run(a),
        Cmd::Node(a) => node::run(a),
        Cmd::Submit(a) => submit::run(a),
        Cmd::Plan(a) => plan::run(a),
        Cmd::Status(a) => status::run(a),
        Cmd::Ready(a) => jobctl::ready(a),
        Cmd::Done(a) => jobctl::done(a),
        Cmd::Cancel(a) => cancel::run(a),
        Cmd::Read(a) => read::run(a),
        Cmd::Doctor(a) => doctor::run(a),
        Cmd::Bench(b) => bench::run(b),
        Cmd::Sim(a) => spate_bench::sim::run(a),
        Cmd::RingServe(a) => ring_serve::run(a),
    }
}
