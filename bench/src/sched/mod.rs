//! `spate bench scheduler`: the scheduler's own cost at cluster scale, with no daemon doing
//! real work.
//!
//! - **Core**: the pure decision core ([`spate_scheduler::core::Scheduler`]) driven in-process
//!   by a synthetic cluster ([`drive`]): every command answered at once (streams allocated,
//!   inputs preloaded, tasks finished in the order they were handed out, users saying Ready
//!   and Done), `jobs` jobs kept running at once. Events per second of time spent inside
//!   `Scheduler::handle`, per-event time percentiles, commands and events per job, resident
//!   memory per live job.
//! - **Hub**: the same workload through the server's translation layer
//!   ([`spate_scheduler::server::Hub`]) as wire messages: messages in per second, messages in
//!   and out per job (the control traffic a job costs).
//! - **Submit**: the real server (io_uring loop, UNIX socket, authenticated peers) in a thread,
//!   consumers allocating every stream, one user keeping `in_flight` submissions outstanding:
//!   submit sent → Accepted received, p50/p99.
//! - **Growth**: the core run at 8, 16, 32, 64 and 128 nodes (4 producers per consumer).

pub mod drive;
pub mod server;

use std::io::Write;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::cluster::report::{Percentiles, percentiles, write_hgrm};
use drive::Synthetic;

/// Arguments of `spate bench scheduler`.
#[derive(clap::Args, Debug, Clone)]
#[command(after_help = "Examples:\n  spate bench scheduler\n  \
spate bench scheduler --json --out results/\n  \
spate bench scheduler --events 20000 --submit-jobs 200 --growth 8,16")]
pub struct Args {
    /// Producer nodes of the synthetic cluster.
    #[arg(long, default_value_t = 64)]
    pub producers: usize,
    /// Consumer nodes of the synthetic cluster.
    #[arg(long, default_value_t = 16)]
    pub consumers: usize,
    /// Jobs running at once (each replaced by a new one when it ends).
    #[arg(long, default_value_t = 100)]
    pub jobs: usize,
    /// Lines per channel of every job (4 channels of 4 KiB lines, 8 lines per chunk).
    #[arg(long, default_value_t = 512)]
    pub lines: u64,
    /// Policy of every job: load-balance (every producer on demand) or tclo.
    #[arg(long, default_value = "load-balance")]
    pub policy: String,
    /// Events the core and the hub each handle.
    #[arg(long, default_value_t = 300_000)]
    pub events: u64,
    /// Jobs submitted through the real server.
    #[arg(long, default_value_t = 3000)]
    pub submit_jobs: u64,
    /// Submissions kept outstanding on the one user connection.
    #[arg(long, default_value_t = 1000)]
    pub in_flight: u64,
    /// Cluster sizes (nodes) of the growth table; each runs `--events` / 4 core events.
    #[arg(long, value_delimiter = ',', default_value = "8,16,32,64,128")]
    pub growth: Vec<usize>,
    /// Output directory for report.json and the submit latency histogram.
    #[arg(long, default_value = "spate-bench-scheduler")]
    pub out: PathBuf,
    /// Print the report as one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// One row of the growth table.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Growth {
    /// Nodes in all.
    pub nodes: usize,
    /// Of them producers.
    pub producers: usize,
    /// Of them consumers.
    pub consumers: usize,
    /// Core events per second of scheduler time.
    pub events_per_s: f64,
    /// Time of one event, nanoseconds.
    pub event_ns: Percentiles,
    /// Events the core handled per completed job.
    pub events_per_job: f64,
    /// Commands the core issued per completed job.
    pub commands_per_job: f64,
    /// Resident memory per live job, bytes (None: /proc not readable).
    pub memory_per_job_bytes: Option<f64>,
}

/// Everything one run measured (`report.json`; `--json` prints it).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Producers, consumers, jobs at once, chunks per job, policy.
    pub producers: usize,
    /// Consumer nodes.
    pub consumers: usize,
    /// Jobs running at once.
    pub jobs: usize,
    /// Chunks (tasks) per job.
    pub chunks_per_job: u64,
    /// The policy of every job.
    pub policy: String,
    /// Core: events per second of time inside `Scheduler::handle`.
    pub events_per_s: f64,
    /// Core: events handled.
    pub events: u64,
    /// Core: time of one event, nanoseconds.
    pub event_ns: Percentiles,
    /// Core: jobs completed during the run.
    pub jobs_completed: u64,
    /// Core: events per job (per job's worth of finished tasks).
    pub events_per_job: f64,
    /// Core: commands per job (per job's worth of finished tasks).
    pub commands_per_job: f64,
    /// Core: resident memory per live job, bytes.
    pub memory_per_job_bytes: Option<f64>,
    /// Hub: wire messages handed in per second of time inside the hub.
    pub hub_messages_per_s: f64,
    /// Hub: time of one message (with the commands it causes), nanoseconds.
    pub hub_message_ns: Percentiles,
    /// Hub: control messages per job (per job's worth of finished tasks), into and out of
    /// the scheduler.
    pub control_messages_per_job: f64,
    /// Submit → Accepted through the real server: jobs, outstanding at once.
    pub submit_jobs: u64,
    /// Submissions outstanding at once.
    pub submit_in_flight: u64,
    /// Submit → Accepted, microseconds.
    pub submit_accept_us: Percentiles,
    /// Its median, microseconds.
    pub submit_accept_p50_us: u64,
    /// Its 99th percentile, microseconds.
    pub submit_accept_p99_us: u64,
    /// Jobs accepted per second over the submit run.
    pub submit_accepted_per_s: f64,
    /// The growth table.
    pub growth: Vec<Growth>,
    /// Files written.
    pub files: Vec<String>,
    /// Wall time of the whole benchmark.
    pub seconds: f64,
}

fn per(a: u64, b: f64) -> f64 {
    if b > 0.0 { a as f64 / b } else { 0.0 }
}

/// Nodes split 4 producers to 1 consumer (at least one of each).
fn split(nodes: usize) -> (usize, usize) {
    let c = (nodes / 5).max(1);
    (nodes.saturating_sub(c).max(1), c)
}

/// Runs the benchmark; the exit code.
pub fn run(a: Args) -> anyhow::Result<i32> {
    if a.producers == 0 || a.consumers == 0 || a.jobs == 0 {
        anyhow::bail!("--producers, --consumers and --jobs must each be at least 1");
    }
    if a.lines == 0 || a.events == 0 || a.in_flight == 0 || a.submit_jobs == 0 {
        anyhow::bail!("--lines, --events, --in-flight and --submit-jobs must each be at least 1");
    }
    if let Some(n) = a.growth.iter().find(|&&n| n < 2) {
        anyhow::bail!("--growth {n}: a cluster needs at least 2 nodes (a producer and a consumer)");
    }
    let t0 = std::time::Instant::now();
    let cfg = Synthetic {
        producers: a.producers,
        consumers: a.consumers,
        jobs: a.jobs,
        lines: a.lines,
        chunk_lines: 8,
        policy: a.policy.clone(),
        events: a.events,
    };
    let say = |s: &str| {
        if !a.json {
            eprintln!("spate bench scheduler: {s}");
        }
    };
    // Memory first, every configuration, each scheduler kept until all are measured (see
    // core_memory_per_job).
    say("memory per job");
    let mut held = Vec::new();
    let (memory, s) = drive::core_memory_per_job(&cfg, cfg.jobs)?;
    held.push(s);
    let mut growth_memory = Vec::new();
    for &n in &a.growth {
        let (p, c) = split(n);
        let g = Synthetic {
            producers: p,
            consumers: c,
            ..cfg.clone()
        };
        let (m, s) = drive::core_memory_per_job(&g, g.jobs)?;
        growth_memory.push(m);
        held.push(s);
    }
    drop(held);
    say("core");
    let core = drive::run_core(&cfg)?;
    say("hub");
    let hub = drive::run_hub(&cfg)?;
    say("submit through the server");
    let sub = server::submit_latency(&cfg, a.submit_jobs, a.in_flight)?;
    let mut growth = Vec::new();
    for (&n, &memory_per_job_bytes) in a.growth.iter().zip(&growth_memory) {
        say(&format!("growth: {n} nodes"));
        let (p, c) = split(n);
        let g = Synthetic {
            producers: p,
            consumers: c,
            events: (a.events / 4).max(1),
            ..cfg.clone()
        };
        let f = drive::run_core(&g)?;
        growth.push(Growth {
            nodes: n,
            producers: p,
            consumers: c,
            events_per_s: f.events_per_s(),
            event_ns: f.per_event_ns.as_ref().map(percentiles).unwrap_or_default(),
            events_per_job: per(f.events, f.job_equivalents(g.chunks_per_job())),
            commands_per_job: per(f.out, f.job_equivalents(g.chunks_per_job())),
            memory_per_job_bytes,
        });
    }
    std::fs::create_dir_all(&a.out)?;
    let hgrm = a.out.join("submit_accept.hgrm");
    write_hgrm(&sub.latency_us, &hgrm, "submit -> accepted (us)")?;
    let sa = percentiles(&sub.latency_us);
    let mut rep = Report {
        producers: cfg.producers,
        consumers: cfg.consumers,
        jobs: cfg.jobs,
        chunks_per_job: cfg.chunks_per_job(),
        policy: cfg.policy.clone(),
        events_per_s: core.events_per_s(),
        events: core.events,
        event_ns: core
            .per_event_ns
            .as_ref()
            .map(percentiles)
            .unwrap_or_default(),
        jobs_completed: core.jobs_completed,
        events_per_job: per(core.events, core.job_equivalents(cfg.chunks_per_job())),
        commands_per_job: per(core.out, core.job_equivalents(cfg.chunks_per_job())),
        memory_per_job_bytes: memory,
        hub_messages_per_s: hub.events_per_s(),
        hub_message_ns: hub
            .per_event_ns
            .as_ref()
            .map(percentiles)
            .unwrap_or_default(),
        control_messages_per_job: per(
            hub.events + hub.out,
            hub.job_equivalents(cfg.chunks_per_job()),
        ),
        submit_jobs: sub.submitted,
        submit_in_flight: a.in_flight,
        submit_accept_p50_us: sa.p50,
        submit_accept_p99_us: sa.p99,
        submit_accept_us: sa,
        submit_accepted_per_s: sub.accepted as f64 / sub.secs.max(1e-9),
        growth,
        files: vec![],
        seconds: 0.0,
    };
    let path = a.out.join("report.json");
    rep.files = vec![path.display().to_string(), hgrm.display().to_string()];
    rep.seconds = t0.elapsed().as_secs_f64();
    let text = serde_json::to_string_pretty(&rep)?;
    std::fs::write(&path, format!("{text}\n"))?;
    if a.json {
        println!("{}", serde_json::to_string(&rep)?);
    } else {
        print_table(&rep, &mut std::io::stdout())?;
    }
    Ok(0)
}

fn mib(b: Option<f64>) -> String {
    b.map_or_else(|| "-".into(), |b| format!("{:.1} KiB", b / 1024.0))
}

/// The report as text.
pub fn print_table(r: &Report, out: &mut dyn Write) -> std::io::Result<()> {
    writeln!(
        out,
        "spate bench scheduler: {} producers, {} consumers, {} jobs at once ({} chunks each), \
         policy {}",
        r.producers, r.consumers, r.jobs, r.chunks_per_job, r.policy
    )?;
    writeln!(
        out,
        "core:   {:>10.0} events/s   event p50 {} ns p99 {} ns   {:.0} events and {:.0} \
         commands per job   memory {} per live job",
        r.events_per_s,
        r.event_ns.p50,
        r.event_ns.p99,
        r.events_per_job,
        r.commands_per_job,
        mib(r.memory_per_job_bytes)
    )?;
    writeln!(
        out,
        "hub:    {:>10.0} messages/s  message p50 {} ns p99 {} ns   {:.0} control messages \
         per job",
        r.hub_messages_per_s,
        r.hub_message_ns.p50,
        r.hub_message_ns.p99,
        r.control_messages_per_job
    )?;
    writeln!(
        out,
        "submit: {} jobs, {} outstanding, through the server on a UNIX socket: accepted p50 \
         {} us p99 {} us max {} us ({:.0} jobs/s)",
        r.submit_jobs,
        r.submit_in_flight,
        r.submit_accept_p50_us,
        r.submit_accept_p99_us,
        r.submit_accept_us.max,
        r.submit_accepted_per_s
    )?;
    writeln!(
        out,
        "\n{:>6} {:>9} {:>9} {:>12} {:>10} {:>10} {:>11} {:>13} {:>12}",
        "nodes",
        "producers",
        "consumers",
        "events/s",
        "p50 ns",
        "p99 ns",
        "events/job",
        "commands/job",
        "memory/job"
    )?;
    for g in &r.growth {
        writeln!(
            out,
            "{:>6} {:>9} {:>9} {:>12.0} {:>10} {:>10} {:>11.0} {:>13.0} {:>12}",
            g.nodes,
            g.producers,
            g.consumers,
            g.events_per_s,
            g.event_ns.p50,
            g.event_ns.p99,
            g.events_per_job,
            g.commands_per_job,
            mib(g.memory_per_job_bytes)
        )?;
    }
    writeln!(out, "\nreport: {}", r.files.join(", "))?;
    Ok(())
}
