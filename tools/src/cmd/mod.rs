//! Subcommands. Each lives in its own module with its `Args` and `run`, returning the exit code.

use clap::Subcommand;

pub mod bench;
pub mod cancel;
pub mod demo;
pub mod doctor;
pub mod node;
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
    Cancel(cancel::Args),
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
        Cmd::Plan(a) => plan::run(a),
        Cmd::Status(a) => status::run(a),
        Cmd::Cancel(a) => cancel::run(a),
        Cmd::Read(a) => read::run(a),
        Cmd::Doctor(a) => doctor::run(a),
        Cmd::Bench(b) => bench::run(b),
        Cmd::RingServe(a) => ring_serve::run(a),
    }
}
