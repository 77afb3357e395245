//! Subcommands. Each lives in its own module with its `Args` and `run`, returning the exit code.

use clap::Subcommand;

pub mod bench;
pub mod cancel;
pub mod demo;
pub mod doctor;
pub mod node;
pub mod read;
pub mod ring_serve;
pub mod scheduler;
pub mod status;
pub mod submit;

#[derive(Subcommand)]
pub enum Cmd {
    /// Run a local cluster end to end: scheduler, producers, consumers, one job, readers.
    Demo(demo::Args),
    /// Run the scheduler: the cluster's single point of decision and of contact with users.
    Scheduler(scheduler::Args),
    /// Run a node daemon: producer and/or consumer roles on this host.
    Node(node::Args),
    /// Submit a job spec (TOML); prints the job id and how to read each stream.
    Submit(submit::Args),
    /// Show jobs and nodes known to the scheduler.
    Status(status::Args),
    /// Cancel a job.
    Cancel(cancel::Args),
    /// Read a stream from a consumer's shared-memory ring (to a file, stdout, or nowhere).
    Read(read::Args),
    /// Check what this node offers spate (io_uring, hugepages, memlock, congestion control).
    Doctor(doctor::Args),
    /// Benchmarks against limits measured in the same run.
    #[command(subcommand)]
    Bench(bench::BenchCmd),
    /// Serve a pattern stream on a ring (for tests of `spate read`).
    #[command(hide = true)]
    RingServe(ring_serve::Args),
}

pub fn run(cmd: Cmd) -> anyhow::Result<i32> {
    match cmd {
        Cmd::Demo(a) => demo::run(a),
        Cmd::Scheduler(a) => scheduler::run(a),
        Cmd::Node(a) => node::run(a),
        Cmd::Submit(a) => submit::run(a),
        Cmd::Status(a) => status::run(a),
        Cmd::Cancel(a) => cancel::run(a),
        Cmd::Read(a) => read::run(a),
        Cmd::Doctor(a) => doctor::run(a),
        Cmd::Bench(b) => bench::run(b),
        Cmd::RingServe(a) => ring_serve::run(a),
    }
}
