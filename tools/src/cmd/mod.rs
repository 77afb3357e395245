//! Subcommands. Each lives in its own module with its `Args` and `run`, returning the exit code.

use clap::Subcommand;

pub mod bench;
pub mod doctor;
pub mod read;

#[derive(Subcommand)]
pub enum Cmd {
    /// Read a stream from a consumer's shared-memory ring (to a file, stdout, or nowhere).
    Read(read::Args),
    /// Check what this node offers spate (io_uring, hugepages, memlock, congestion control).
    Doctor(doctor::Args),
    /// Benchmarks against limits measured in the same run.
    #[command(subcommand)]
    Bench(bench::BenchCmd),
}

pub fn run(cmd: Cmd) -> anyhow::Result<i32> {
    match cmd {
        Cmd::Read(a) => read::run(a),
        Cmd::Doctor(a) => doctor::run(a),
        Cmd::Bench(b) => bench::run(b),
    }
}
