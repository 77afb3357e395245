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
    /// The reference experiments on an emulated cluster: throughput vs limits, constant
    /// speed, latency histograms, plots (root for the network namespaces).
    Cluster(spate_bench::cluster::Args),
    /// The scheduling policies under constraints (rates, latency bounds, parallel jobs, a
    /// producer slowed mid-job), tclo beside load-balance, on an emulated cluster with
    /// unequal producers (root: network namespaces and cgroup CPU quotas).
    Policy(spate_bench::policy::Args),
    /// A local job on each local path (zero-copy, pull, socket), every byte verified or
    /// hashed, against each path's limit measured in the same run.
    Local(spate_bench::local::Args),
    /// The scheduler's own cost: its core and hub driven in-process by a synthetic cluster
    /// (events/s, control messages and memory per job, growth with the cluster), and
    /// submit -> accepted through the real server on a UNIX socket.
    Scheduler(spate_bench::sched::Args),
}

pub fn run(cmd: BenchCmd) -> anyhow::Result<i32> {
    match cmd {
        BenchCmd::Ring(a) => spate_bench::ring::run(a),
        BenchCmd::Net(a) => spate_bench::net::run(a),
        BenchCmd::Rip(a) => spate_bench::rip::run(a),
        BenchCmd::Cluster(a) => spate_bench::cluster::run(a),
        BenchCmd::Policy(a) => spate_bench::policy::run(a),
        BenchCmd::Local(a) => spate_bench::local::run(a),
        BenchCmd::Scheduler(a) => spate_bench::sched::run(a),
    }
}
