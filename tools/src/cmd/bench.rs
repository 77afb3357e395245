//! `spate bench ...`: the experiments live in the `spate-bench` crate.

use clap::Subcommand;

#[derive(Subcommand)]
pub enum BenchCmd {
    /// Stream ring: writer and reader processes vs single-threaded memcpy.
    Ring(spate_bench::ring::Args),
    /// Raw connections through io_uring vs blocking std sockets.
    Net(spate_bench::net::Args),
    /// RIP kernel: output MB/s per core and for all cores.
    Rip(spate_bench::rip::Args),
}

pub fn run(cmd: BenchCmd) -> anyhow::Result<i32> {
    match cmd {
        BenchCmd::Ring(a) => spate_bench::ring::run(a),
        BenchCmd::Net(a) => spate_bench::net::run(a),
        BenchCmd::Rip(a) => spate_bench::rip::run(a),
    }
}
