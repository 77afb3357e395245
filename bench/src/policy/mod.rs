//! `spate bench policy`: the scheduling policies under constraints (issue 11, item 9). On the
//! emulated cluster of `spate bench cluster` (network namespaces, shaped links), with one
//! consumer node and producers made unequal by CPU quotas (one cgroup per producer daemon), the
//! same scenarios run under `tclo` and under `load-balance`, side by side:
//!
//! - warm-up: a short job of small chunks (not counted), so that the scheduler sees two chunk
//!   sizes and can tell fixed costs per chunk from rates;
//! - calibration: an unconstrained job read as fast as possible measures what the cluster can
//!   do (`T`), and each producer's part of it; it also warms the scheduler's estimates;
//! - S1: a rate of 0.8 T, readers reading at that rate;
//! - S2: a rate of 1.3 T (beyond the cluster);
//! - S3: a chunk latency bound (`--latency-bound`), readers as fast as possible;
//! - S4: two jobs of 0.4 T each in parallel, then a third of 0.4 T that does not fit;
//! - S5: a rate the cluster can still carry when the producer that did the most of the
//!   calibration drops to a tenth of its CPU, which it does mid-job.
//!
//! Every stream is read by a separate `spate read --hash` in the consumer's namespace and
//! checked against a sequential RIP in this process. See [`scenario`] for the arithmetic,
//! [`cgroup`] for the quotas and [`report`] for the JSON, table and plots.

pub mod cgroup;
pub mod report;
pub mod scenario;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use spate_netlib::endpoint::Endpoint;
use spate_netlib::proto::{
    JobId, JobOutcome, JobState, JobStatus, Message, NodeState, NodeStatus, PlanInfo, RefuseReason,
    StreamPlacement,
};
use spate_scheduler::server::user::{User, load_secret};

use crate::cluster::report::{LinkFigure, Progress};
use crate::cluster::{INPUT, Proc, ReaderReport, RemoveDir, emu, parse_link_rate, wait_for};
use cgroup::{CpuController, CpuGroup, Limit};
use report::{Calibration, Estimate, ProducerSetup, Refusal, Report, Run, Setup, Slowdown};
use scenario::JobAsk;

/// Arguments of `spate bench policy`.
#[derive(clap::Args, Debug, Clone)]
#[command(after_help = "Examples (as root):\n  spate bench policy --quick\n  \
spate bench policy --json --out results/\n  \
spate bench policy --compute 0.45,0.2,0.1 --seconds 20")]
pub struct Args {
    /// Short jobs (--seconds 5, links measured 1.5 s each): under 4 minutes.
    #[arg(long)]
    pub quick: bool,
    /// Print the report as one JSON object (the table goes away).
    #[arg(long)]
    pub json: bool,
    /// Output directory for report.json and the plots.
    #[arg(long, default_value = "spate-bench-policy")]
    pub out: PathBuf,
    /// Rate of every link (each node has two), e.g. 500Mbit.
    #[arg(long, default_value = "500Mbit")]
    pub link_rate: String,
    /// One entry per producer: the compute rate it gets, as a share of the consumer's
    /// measured ingress (its CPU quota is set from the RIP's measured MB per CPU-second).
    /// Their sum below 1 keeps compute, not links, the limit.
    #[arg(long, value_delimiter = ',', default_value = "0.5,0.25")]
    pub compute: Vec<f64>,
    /// Target duration of each job in seconds: its size is its rate times this [default: 15;
    /// --quick: 5].
    #[arg(long)]
    pub seconds: Option<f64>,
    /// S3's chunk latency bound, e.g. 100ms.
    #[arg(long, default_value = "100ms")]
    pub latency_bound: String,
    /// CFS period of the producers' quotas, in microseconds (longer when a quota would fall
    /// below the kernel's 1 ms): a throttled producer pauses for up to this long.
    #[arg(long, default_value_t = 20_000)]
    pub cfs_period_us: u64,
    /// Seconds to measure each link [default: 3; --quick: 1.5].
    #[arg(long)]
    pub link_seconds: Option<f64>,
    /// Let load-balance pick its own chunk size (by default its jobs use the chunk size tclo
    /// planned for the same scenario, so the two differ in what the policy decides beyond
    /// that: producers, dealing, window, pacing, admission).
    #[arg(long)]
    pub lb_own_chunk: bool,
    /// Run only these scenarios (e.g. S5, or S1,S4); the warm-up and calibration always run.
    #[arg(long, value_delimiter = ',', value_parser = parse_scenario)]
    pub scenarios: Vec<String>,
}

/// The scenario names `--scenarios` takes.
const SCENARIOS: [&str; 5] = ["S1", "S2", "S3", "S4", "S5"];

fn parse_scenario(s: &str) -> Result<String, String> {
    let up = s.trim().to_ascii_uppercase();
    if SCENARIOS.contains(&up.as_str()) {
        Ok(up)
    } else {
        Err(format!(
            "no scenario {}: the scenarios are {}",
            spate_netlib::text::quote(s),
            SCENARIOS.join(", ")
        ))
    }
}

/// The run directory (sockets, logs, input), removed on interrupt too.
static RUN_DIR: std::sync::Mutex<Option<PathBuf>> = std::sync::Mutex::new(None);

/// Removes the run directory (the interrupt clean-up; destructors do not run then).
fn remove_run_dir() -> usize {
    let dir = RUN_DIR.lock().unwrap_or_else(|e| e.into_inner()).take();
    dir.map_or(0, |d| usize::from(std::fs::remove_dir_all(d).is_ok()))
}

/// Tool name in messages.
const TOOL: &str = "spate bench policy";
/// The calibration job's chunk: 29 lines of 36000 bytes, about 1 MiB per channel.
const CALIBRATION_CHUNK_LINES: u64 = 29;
/// The warm-up job's chunk: a quarter of the calibration's, so that the scheduler has seen two
/// chunk sizes and can tell each producer's fixed cost per chunk from its rate.
const WARMUP_CHUNK_LINES: u64 = 7;
/// Smallest job: a few chunks per producer even at low rates.
const MIN_LINES: u64 = 256;
/// The consumer of every stream.
const CONSUMER: usize = 0;
const POLICIES: [&str; 2] = ["tclo", "load-balance"];

fn node_name(i: usize) -> String {
    format!("n{i}")
}

fn gbit(bytes_per_s: f64) -> f64 {
    bytes_per_s * 8.0 / 1e9
}

/// The running benchmark: cluster, daemons, cgroups, and the scheduler connection.
struct Bench {
    exe: PathBuf,
    dir: PathBuf,
    sched_ep: Endpoint,
    control: User,
    /// Scheduler first, then the nodes.
    procs: Vec<Proc>,
    /// Producers' groups (node index 1.. → `groups[i - 1]`) and their base limits.
    groups: Vec<(CpuGroup, Limit)>,
    digests: HashMap<u64, Vec<String>>,
    progress: Progress,
    /// Last field: dropped after the daemons and groups.
    cluster: emu::Cluster,
}

/// A job that was admitted: its readers run.
struct Live {
    id: JobId,
    user: User,
    plan: PlanInfo,
    readers: Vec<(StreamPlacement, Child)>,
    submitted: Instant,
    bytes: u64,
}

/// What the follower of a job saw.
struct Finished {
    outcome: Option<JobOutcome>,
    latencies: Option<hdrhistogram::Histogram<u64>>,
    warnings: Vec<String>,
    duplicated: u64,
    readers: Vec<ReaderReport>,
    last_read: Instant,
    error: Option<String>,
}

/// Submit's answer.
enum Answer {
    Live(Box<Live>),
    Refused(RefuseReason, String),
}

impl Bench {
    fn user(&self) -> anyhow::Result<User> {
        let secret = load_secret(None, &self.sched_ep)?;
        Ok(User::connect(
            &self.sched_ep,
            &secret,
            Duration::from_secs(10),
        )?)
    }

    fn status(&mut self) -> anyhow::Result<(Vec<JobStatus>, Vec<NodeStatus>)> {
        Ok(self
            .control
            .request(&Message::Status { job: None }, |m| match m {
                Message::StatusReply { jobs, nodes, .. } => Some((jobs, nodes)),
                _ => None,
            })?)
    }

    fn check_alive(&mut self) -> anyhow::Result<()> {
        for p in &mut self.procs {
            if !p.alive() {
                bail!("the {} daemon exited (see its log)", p.name);
            }
        }
        Ok(())
    }

    /// RIP tasks each producer computed so far (the scheduler's measured samples).
    fn task_counts(&mut self) -> anyhow::Result<BTreeMap<String, u64>> {
        let (_, nodes) = self.status()?;
        Ok(nodes
            .iter()
            .filter(|n| n.roles.producer)
            .map(|n| {
                let k = n
                    .capacity
                    .compute
                    .iter()
                    .find(|c| c.kernel == "rip")
                    .map_or(0, |c| c.samples);
                (n.name.clone(), k)
            })
            .collect())
    }

    /// The scheduler's estimates of every producer now.
    fn estimates(&mut self) -> anyhow::Result<Vec<Estimate>> {
        let (_, nodes) = self.status()?;
        Ok(nodes
            .iter()
            .filter(|n| n.roles.producer)
            .map(|n| {
                let c = n.capacity.compute.iter().find(|c| c.kernel == "rip");
                Estimate {
                    node: n.name.clone(),
                    compute_gbit_per_s: c.map_or(0.0, |c| c.bytes_per_sec as f64 * 8.0 / 1e9),
                    compute_overhead_ms: c.map_or(0.0, |c| c.overhead_us as f64 / 1e3),
                    samples: c.map_or(0, |c| c.samples),
                    source: c.map_or("none".into(), |c| c.source.clone()),
                    link_gbit_per_s: n
                        .capacity
                        .links
                        .iter()
                        .find(|l| l.consumer == node_name(CONSUMER))
                        .map(|l| l.bytes_per_sec as f64 * 8.0 / 1e9),
                }
            })
            .collect())
    }

    /// What the scheduler would plan for `ask` now.
    fn plan(
        &mut self,
        ask: &JobAsk,
    ) -> anyhow::Result<(bool, Option<PlanInfo>, Option<RefuseReason>, String)> {
        let spec = ask.spec(INPUT);
        let r = self.control.request(
            &Message::Plan {
                spec_toml: spec,
                inputs: vec![INPUT.into()],
            },
            |m| match m {
                Message::PlanReply {
                    admitted,
                    plan,
                    reason,
                    message,
                } => Some(Ok((admitted, plan.map(|p| *p), reason, message))),
                Message::Error { message, .. } => Some(Err(message)),
                _ => None,
            },
        )?;
        r.map_err(|m| anyhow!("plan refused by the scheduler: {m}"))
    }

    /// The expected digests of a job of `lines` lines (cached).
    fn digests(&mut self, ask: &JobAsk) -> anyhow::Result<Vec<String>> {
        if let Some(d) = self.digests.get(&ask.lines) {
            return Ok(d.clone());
        }
        let d = crate::cluster::rip_reference_digests(
            &self.dir.join("files").join(INPUT),
            &ask.spec(INPUT),
        )?;
        self.digests.insert(ask.lines, d.clone());
        Ok(d)
    }

    /// Submits `ask`; when admitted, starts a reader per stream (in the consumer's namespace;
    /// they follow the job's rate when it has one) and sends Ready.
    fn submit(&mut self, ask: &JobAsk) -> anyhow::Result<Answer> {
        let mut user = self.user()?;
        let submitted = Instant::now();
        let answer = user.request(
            &Message::Submit {
                spec_toml: ask.spec(INPUT),
                inputs: vec![INPUT.into()],
            },
            |m| match m {
                Message::Accepted { job, streams, plan } => Some(Ok((job, streams, plan))),
                Message::Refused { reason, message } => Some(Err((reason, message))),
                Message::Error { message, .. } => Some(Err((RefuseReason::Busy, message))),
                _ => None,
            },
        )?;
        let (id, streams, plan) = match answer {
            Ok(x) => x,
            Err((reason, message)) => return Ok(Answer::Refused(reason, message)),
        };
        let mut readers = Vec::new();
        let block = reader_block(&plan.ring_bytes);
        for s in &streams {
            let mut c = self.cluster.command(CONSUMER, &self.exe);
            c.args([
                "read",
                "--json",
                "--hash",
                "--idle-timeout",
                "120",
                "--socket",
            ])
            .arg(&s.handoff)
            .args(["--key", &s.key.to_string()])
            .args(["--block", &block.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
            let child = c
                .spawn()
                .with_context(|| format!("starting the reader of stream {}", s.stream.0))?;
            emu::register_child(child.id());
            readers.push((s.clone(), child));
        }
        user.send(&Message::Ready { job: id })?;
        Ok(Answer::Live(Box::new(Live {
            id,
            user,
            plan: *plan,
            readers,
            submitted,
            bytes: ask.bytes(),
        })))
    }

    /// Follows an admitted job on its own thread: readers to their end, then Done, the chunk
    /// latencies and the outcome.
    fn follow(live: Live) -> (JobId, Instant, PlanInfo, u64, JoinHandle<Finished>) {
        let Live {
            id,
            mut user,
            plan,
            readers,
            submitted,
            bytes,
        } = live;
        let h = std::thread::spawn(move || {
            let waits: Vec<_> = readers
                .into_iter()
                .map(|(s, child)| {
                    std::thread::spawn(move || {
                        let pid = child.id();
                        let out = child.wait_with_output();
                        let ended = Instant::now();
                        emu::unregister_child(pid);
                        (s, out, ended)
                    })
                })
                .collect();
            let mut f = Finished {
                outcome: None,
                latencies: None,
                warnings: vec![],
                duplicated: 0,
                readers: vec![],
                last_read: submitted,
                error: None,
            };
            for w in waits {
                match w.join() {
                    Ok((s, Ok(out), ended)) => {
                        f.last_read = f.last_read.max(ended);
                        match ReaderReport::parse(&s, &out) {
                            Ok(r) => f.readers.push(r),
                            Err(e) => f.error = Some(format!("{e:#}")),
                        }
                    }
                    Ok((s, Err(e), _)) => {
                        f.error = Some(format!(
                            "waiting for the reader of stream {}: {e}",
                            s.stream.0
                        ))
                    }
                    Err(_) => f.error = Some("a reader thread panicked".into()),
                }
            }
            let failed = f.error.is_some() || f.readers.iter().any(|r| r.outcome != "end");
            let r = (|| -> anyhow::Result<()> {
                if failed {
                    // Free the job's rings and producers for the runs that follow.
                    user.send(&Message::Cancel { job: id })?;
                }
                user.send(&Message::Watch { job: id })?;
                let mut done_sent = false;
                loop {
                    match user.recv()? {
                        Message::JobUpdate(st) if st.job == id => {
                            f.duplicated = f.duplicated.max(st.duplicated);
                            if st.state == JobState::Delivered && !done_sent && !failed {
                                user.send(&Message::Done { job: id })?;
                                done_sent = true;
                            }
                        }
                        Message::JobWarning { job, message } if job == id => {
                            f.warnings.push(message)
                        }
                        Message::JobStats {
                            job,
                            chunk_latency_hdr,
                            ..
                        } if job == id => {
                            f.latencies = Some(spate_netlib::hist::decode(&chunk_latency_hdr)?)
                        }
                        Message::JobEnded { job, outcome } if job == id => {
                            f.outcome = Some(outcome);
                            return Ok(());
                        }
                        _ => {}
                    }
                }
            })();
            if let Err(e) = r {
                f.error
                    .get_or_insert(format!("following job {}: {e:#}", id.0));
            }
            f
        });
        (id, submitted, plan, bytes, h)
    }

    /// Waits for a follower until `limit`; past it, cancels the job (which ends the follower).
    fn join(&mut self, id: JobId, h: JoinHandle<Finished>, limit: Duration) -> Finished {
        let deadline = Instant::now() + limit;
        let mut cancelled = false;
        while !h.is_finished() {
            if !cancelled && Instant::now() > deadline {
                let _ = self.control.send(&Message::Cancel { job: id });
                cancelled = true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut f = h.join().unwrap_or_else(|_| Finished {
            outcome: None,
            latencies: None,
            warnings: vec![],
            duplicated: 0,
            readers: vec![],
            last_read: Instant::now(),
            error: Some("the job's follower panicked".into()),
        });
        if cancelled {
            f.error
                .get_or_insert(format!("job {} did not end within {limit:?}", id.0));
        }
        f
    }
}

/// The readers' block (their pacing step): 1 MiB, or half the smallest ring when that is less.
/// `spate read` caps its block at the ring's capacity, and a paced reader waits for a whole
/// block; a ring of whole pieces may never be entirely full (the writer lands only pieces that
/// fit), so a block of the whole ring can wait forever. Half a ring is always reached: no piece
/// is larger than the ring.
fn reader_block(rings: &[u64]) -> u64 {
    let ring = rings.iter().copied().min().unwrap_or(2 << 20);
    (ring / 2).clamp(1, 1 << 20)
}

/// Fills a run from the plan its job got.
fn apply_plan(run: &mut Run, p: &PlanInfo) {
    let pos = |v: u64| (v > 0).then_some(v);
    run.predicted_gbit_per_s = pos(p.predicted_bps).map(|b| b as f64 / 1e9);
    run.predicted_latency_ms = pos(p.predicted_latency_us).map(|us| us as f64 / 1e3);
    run.chunk_bytes = Some(p.chunk_bytes);
    run.window_chunks = pos(p.window_chunks);
    run.prefill_bytes = p.prefill_bytes.iter().copied().max();
    run.producers_planned = p.producers.clone();
}

/// A refusal as the report shows it.
fn refusal(reason: &RefuseReason, message: String, calibration: f64) -> Refusal {
    let (kind, constraint, max) = match reason {
        RefuseReason::Infeasible {
            constraint,
            max_feasible_bps,
        } => (
            "infeasible",
            Some(constraint.clone()),
            Some(*max_feasible_bps as f64 / 1e9),
        ),
        RefuseReason::InsufficientCapacity => ("insufficient_capacity", None, None),
        RefuseReason::NoProducers => ("no_producers", None, None),
        RefuseReason::AllocFailed { .. } => ("alloc_failed", None, None),
        RefuseReason::Busy => ("busy", None, None),
        RefuseReason::InvalidSpec { .. } => ("invalid_spec", None, None),
        RefuseReason::InputUnavailable { .. } => ("input_unavailable", None, None),
        RefuseReason::UnknownKernel { .. } => ("unknown_kernel", None, None),
        RefuseReason::ConsumerMissing { .. } => ("consumer_missing", None, None),
        RefuseReason::UnknownPolicy { .. } => ("unknown_policy", None, None),
    };
    Refusal {
        kind: kind.into(),
        constraint,
        max_feasible_gbit_per_s: max,
        max_feasible_vs_calibration: max.map(|m| m / calibration.max(1e-12)),
        message,
    }
}

/// Fills a run from what its job's follower saw.
fn apply_finished(run: &mut Run, f: Finished, submitted: Instant, digests: &[String]) {
    let lat = f.latencies.filter(|h| !h.is_empty());
    let q = |q: f64| lat.as_ref().map(|h| h.value_at_quantile(q) as f64 / 1e3);
    run.latency_p50_ms = q(0.5);
    run.latency_p90_ms = q(0.9);
    run.latency_p99_ms = q(0.99);
    run.latency_max_ms = lat.as_ref().map(|h| h.max() as f64 / 1e3);
    run.chunks = lat.as_ref().map(|h| h.len());
    run.warnings_total = f.warnings.len();
    run.warnings = f.warnings;
    run.warnings.truncate(report::MAX_WARNINGS);
    run.duplicated = f.duplicated;
    run.seconds = Some(f.last_read.duration_since(submitted).as_secs_f64());
    run.outcome = f.outcome.as_ref().map(|o| match o {
        JobOutcome::Completed => "completed".to_string(),
        JobOutcome::Cancelled => "cancelled".to_string(),
        JobOutcome::Aborted { reason } => format!("aborted: {reason}"),
    });
    let delivered: f64 = f.readers.iter().map(|r| r.active_gbit).sum();
    run.delivered_gbit_per_s = Some(delivered);
    run.delivered_pct = run
        .requested_gbit_per_s
        .map(|r| 100.0 * delivered / r.max(1e-12));
    run.starvations = Some(f.readers.iter().map(|r| r.starvations).sum());
    run.starved_s = Some(f.readers.iter().map(|r| r.starvation_seconds).sum());
    let complete = f.readers.len() == digests.len()
        && f.readers.iter().all(|r| {
            r.outcome == "end"
                && r.bytes == r.length
                && r.digest.as_deref() == digests.get(r.stream).map(String::as_str)
        });
    run.verified = Some(complete && f.outcome == Some(JobOutcome::Completed));
    if let Some(r) = f.readers.iter().find(|r| r.outcome != "end") {
        run.error.get_or_insert(format!(
            "stream {}: {}",
            r.stream,
            r.error.clone().unwrap_or_else(|| r.outcome.clone())
        ));
    }
    if let Some(e) = f.error {
        run.error.get_or_insert(e);
    }
}

/// Producers whose task count grew from `before` to `after`.
fn used(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>) -> Vec<String> {
    after
        .iter()
        .filter(|(n, k)| **k > before.get(*n).copied().unwrap_or(0))
        .map(|(n, _)| n.clone())
        .collect()
}

/// How long a job of `bytes` at `rate` B/s may take before it is cancelled.
fn job_limit(bytes: u64, rate: f64) -> Duration {
    Duration::from_secs_f64(60.0 + 10.0 * bytes as f64 / rate.max(1.0))
}

/// Measures the RIP's output bytes per CPU-second in this process (the kernel and the
/// parameters the producers run; best of three).
fn rip_per_cpu_second(input: &Path) -> anyhow::Result<f64> {
    let ask = JobAsk {
        name: "cpu".into(),
        policy: "tclo".into(),
        lines: 3000,
        rate_bits: None,
        latency_ms: None,
        chunk_lines: None,
        node: "n0".into(),
    };
    let plan = spate_scheduler::spec::JobPlan::parse(&ask.spec(INPUT))
        .map_err(|e| anyhow!("the bench's own job spec is invalid: {e}"))?;
    let geometry = spate_scheduler::server::job_geometry(&plan);
    let mut inputs = HashMap::new();
    inputs.insert(INPUT.to_string(), std::fs::read(input)?);
    let params = spate_scheduler::server::table_to_value(&plan.params);
    let rip = spate_producer::rip_kernel::build_rip(&params, &geometry, &inputs, None)
        .map_err(|e| anyhow!("building the RIP: {e}"))?;
    let lines = 1000..1200u32;
    rip.render_to_vecs(lines.clone())
        .map_err(|e| anyhow!("rendering: {e}"))?;
    let bytes = u64::from(lines.end - lines.start) * scenario::WIDTH * scenario::CHANNELS;
    let mut best = f64::INFINITY;
    for _ in 0..3 {
        let c0 = crate::rip::process_cpu_ns().ok_or_else(|| anyhow!("no CPU time in /proc"))?;
        rip.render_to_vecs(lines.clone())
            .map_err(|e| anyhow!("rendering: {e}"))?;
        let c1 = crate::rip::process_cpu_ns().ok_or_else(|| anyhow!("no CPU time in /proc"))?;
        best = best.min(c1.saturating_sub(c0) as f64 / 1e9);
    }
    Ok(bytes as f64 / best.max(1e-9))
}

/// Run the benchmark; returns the exit code (0: every run verified or refused with a reason).
pub fn run(a: Args) -> anyhow::Result<i32> {
    let t0 = Instant::now();
    if let Some(why) = emu::unavailable() {
        bail!("{TOOL} needs the emulated cluster: {why}");
    }
    let ctl = CpuController::detect().map_err(|why| anyhow!("{TOOL} needs CPU quotas: {why}"))?;
    if a.compute.len() < 2 {
        bail!("--compute needs at least two producers (S5 slows one and the others carry on)");
    }
    if let Some(c) = a.compute.iter().find(|c| !(**c > 0.0 && **c <= 4.0)) {
        bail!("--compute {c}: each share must be in (0, 4] (of the consumer's ingress)");
    }
    let job_seconds = a.seconds.unwrap_or(if a.quick { 5.0 } else { 15.0 });
    if !(job_seconds > 0.0 && job_seconds <= 3600.0) {
        bail!("--seconds {job_seconds}: give a duration from 0 to 3600 s");
    }
    let bound_ms = spate_scheduler::spec::parse_duration(&a.latency_bound)
        .map_err(|e| anyhow!("--latency-bound {:?}: {e} (e.g. 100ms)", a.latency_bound))?
        .as_millis() as u64;
    if bound_ms == 0 {
        bail!("--latency-bound must be at least 1ms");
    }
    let rate_mbit = parse_link_rate(&a.link_rate)?;
    let out = a.out.clone();
    std::fs::create_dir_all(&out)
        .with_context(|| format!("creating the output directory {}", out.display()))?;
    let progress = Progress::new(11, !a.json);

    let dir = std::env::temp_dir().join(format!("spate-bench-policy-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("files"))?;
    let _cleanup = RemoveDir(dir.clone());
    let input = dir.join("files").join(INPUT);
    spate_producer::rip::write_test_image(&input, 1200, 1200)
        .map_err(|e| anyhow!("writing the input image: {e}"))?;
    emu::install_interrupt_cleanup_for(TOOL).context("installing the Ctrl-C clean-up")?;
    emu::on_cleanup("cgroups", cgroup::remove_registered);
    *RUN_DIR.lock().unwrap_or_else(|e| e.into_inner()) = Some(dir.clone());
    emu::on_cleanup("temporary directories", remove_run_dir);
    match emu::remove_stale() {
        Ok(gone) if !gone.is_empty() => progress.println(&format!(
            "{TOOL}: removed namespaces of earlier runs: {gone:?}"
        )),
        Ok(_) => {}
        Err(e) => progress.println(&format!("{TOOL}: cannot remove earlier namespaces: {e:#}")),
    }
    match cgroup::remove_stale(&ctl) {
        Ok(gone) if !gone.is_empty() => progress.println(&format!(
            "{TOOL}: removed cgroups of earlier runs: {gone:?}"
        )),
        Ok(_) => {}
        Err(e) => progress.println(&format!("{TOOL}: cannot remove earlier cgroups: {e:#}")),
    }

    progress.println("measuring the RIP's output per CPU-second");
    let rip_rate = rip_per_cpu_second(&input)?;

    let nodes = 1 + a.compute.len();
    progress.println(&format!(
        "building {nodes} nodes with two {} links each",
        rate_mbit.map_or("unshaped".to_string(), |r| format!("{r} Mbit/s"))
    ));
    let cluster = emu::Cluster::create(&emu::EmuConfig { nodes, rate_mbit })?;
    progress.println("measuring every link (raw TCP, one link at a time)");
    let secs = a.link_seconds.unwrap_or(if a.quick { 1.5 } else { 3.0 });
    let links = cluster.measure_links(Duration::from_secs_f64(secs))?;
    let ingress_gbit = cluster.node_caps(&links)[CONSUMER].1;
    let ingress = ingress_gbit * 1e9 / 8.0;

    // Producers' groups: each gets the CPU that makes its RIP compute its share of the ingress.
    let mut groups = Vec::new();
    let mut setups = Vec::new();
    for (k, share) in a.compute.iter().enumerate() {
        let name = node_name(k + 1);
        let target = share * ingress;
        let cpus = scenario::cpus_for(target, rip_rate);
        let limit = cgroup::limit_for(cpus, a.cfs_period_us)?;
        let mut g = ctl.create(&name)?;
        g.set(limit)?;
        setups.push(ProducerSetup {
            name,
            compute_share: *share,
            limit,
            cpus: limit.cpus(),
            announced_gbit_per_s: gbit(target),
            estimated_gbit_per_s: None,
            estimate_source: None,
            calibration_gbit_per_s: 0.0,
            throttled_periods: None,
        });
        groups.push((g, limit));
    }

    // Daemons: the scheduler and the consumer in n0, a producer in each other node, in its
    // group from its first moment on.
    let run_dir = dir.join("run");
    std::fs::create_dir_all(run_dir.join("logs"))?;
    let sock = run_dir.join("sched.sock");
    let sched_ep = Endpoint::Unix(sock.clone());
    let exe = std::env::current_exe().context("locating the spate binary")?;
    let mut procs = Vec::new();
    let mut c = cluster.command(CONSUMER, &exe);
    c.args(["scheduler", "--listen"])
        .arg(sched_ep.to_string())
        .arg("--files")
        .arg(dir.join("files"));
    procs.push(Proc::spawn(
        "scheduler",
        c,
        &run_dir.join("logs/scheduler.log"),
    )?);
    let secret_file = run_dir.join("sched.sock.secret");
    wait_for(Duration::from_secs(20), "the scheduler's socket", || {
        Ok(sock.exists() && secret_file.exists())
    })?;
    for i in 0..nodes {
        let name = node_name(i);
        let node = &cluster.nodes[i];
        let mut c = if i == CONSUMER {
            cluster.command(i, &exe)
        } else {
            producer_command(&cluster, i, &exe, ctl.version)
        };
        c.args(["node", "--name", &name, "--scheduler"])
            .arg(sched_ep.to_string())
            .arg("--secret-file")
            .arg(&secret_file)
            .arg("--run-dir")
            .arg(run_dir.join(&name))
            .args(["--ring-budget", "2GiB"]);
        for k in 0..2 {
            c.arg("--interface")
                .arg(format!("{}={}", node.ifnames[k], node.addrs[k]));
        }
        if let Some(m) = rate_mbit {
            c.arg("--link-rate").arg(format!("{m}Mbit"));
        }
        if i == CONSUMER {
            c.arg("--consumer");
        } else {
            let bits = (setups[i - 1].announced_gbit_per_s * 1e9) as u64;
            c.args(["--producer", "--compute-rate", &format!("{bits}bit")]);
        }
        let p = Proc::spawn(&name, c, &run_dir.join(format!("logs/{name}.log")))?;
        if i != CONSUMER {
            groups[i - 1]
                .0
                .add(p.child.id())
                .with_context(|| format!("putting {name} in its cgroup"))?;
        }
        procs.push(p);
    }
    let secret = load_secret(None, &sched_ep)?;
    let control = User::connect(&sched_ep, &secret, Duration::from_secs(10))?;
    let mut b = Bench {
        exe,
        dir: dir.clone(),
        sched_ep,
        control,
        procs,
        groups,
        digests: HashMap::new(),
        progress,
        cluster,
    };
    let want: Vec<String> = (0..nodes).map(node_name).collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        b.check_alive()?;
        let (_, ns) = b.status()?;
        if want.iter().all(|w| {
            ns.iter()
                .any(|n| &n.name == w && n.state == NodeState::Alive)
        }) {
            break;
        }
        if Instant::now() > deadline {
            bail!("nodes {want:?} did not all join the scheduler within 30 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }

    let res = scenarios(&mut b, &a, job_seconds, bound_ms, ingress, &mut setups);
    b.progress.finish();
    for (s, (g, _)) in setups.iter_mut().zip(&b.groups) {
        s.throttled_periods = g.throttling();
    }
    let Bench {
        procs,
        groups,
        cluster,
        control,
        ..
    } = b;
    drop(control);
    // Daemons first (the groups must be empty to go), then the groups, then the namespaces.
    drop(procs);
    drop(groups);
    drop(cluster);
    // The daemons' logs, to look into what a run did.
    let mut logs = Vec::new();
    if let Ok(entries) = std::fs::read_dir(run_dir.join("logs")) {
        std::fs::create_dir_all(out.join("logs"))?;
        for e in entries.flatten() {
            let to = out.join("logs").join(e.file_name());
            if std::fs::copy(e.path(), &to).is_ok() {
                logs.push(to.display().to_string());
            }
        }
    }
    logs.sort();
    let (calibration, runs) = res?;

    let mut rep = Report {
        quick: a.quick,
        nodes,
        link_rate_mbit: rate_mbit,
        job_seconds,
        setup: Setup {
            consumer: node_name(CONSUMER),
            consumer_ingress_gbit_per_s: ingress_gbit,
            links: links
                .iter()
                .map(|l| LinkFigure {
                    from: l.from,
                    to: l.to,
                    net: l.net,
                    gbit_per_s: l.gbit_per_s,
                })
                .collect(),
            cgroup: ctl.version,
            cgroup_root: ctl.root.display().to_string(),
            rip_mb_per_cpu_second: rip_rate / 1e6,
            producers: setups,
        },
        calibration,
        runs,
        out_dir: out.display().to_string(),
        files: vec![],
        seconds: 0.0,
    };
    for f in report::write_plots(&rep, &out)? {
        rep.files.push(f.display().to_string());
    }
    rep.files.extend(logs);
    rep.files
        .push(out.join("report.json").display().to_string());
    rep.seconds = t0.elapsed().as_secs_f64();
    report::write_report(&rep, &out)?;
    if a.json {
        println!("{}", serde_json::to_string(&rep)?);
    } else {
        report::print_table(&rep, &mut std::io::stdout())?;
    }
    let ok = rep.calibration.verified && rep.runs.iter().all(Run::ok);
    Ok(if ok { 0 } else { 1 })
}

/// The calibration, then S1 … S5 under each policy.
fn scenarios(
    b: &mut Bench,
    a: &Args,
    secs: f64,
    bound_ms: u64,
    ingress: f64,
    setups: &mut [ProducerSetup],
) -> anyhow::Result<(Calibration, Vec<Run>)> {
    let consumer = node_name(CONSUMER);
    let ask = |name: &str, policy: &str, bytes: f64| JobAsk {
        name: name.into(),
        policy: policy.into(),
        lines: scenario::lines_for(bytes, MIN_LINES),
        rate_bits: None,
        latency_ms: None,
        chunk_lines: None,
        node: consumer.clone(),
    };

    // Calibration: load-balance keeps every producer busy on demand, whatever the estimates
    // say, so it reaches what the producers can do together.
    let guess: f64 = setups
        .iter()
        .map(|s| s.announced_gbit_per_s * 1e9 / 8.0)
        .sum::<f64>()
        .min(ingress);
    // Warm-up: a short job of small chunks, read as fast as possible and checked; not counted.
    // Without a second chunk size, no measurement separates a producer's fixed cost per chunk
    // (large under a CPU quota: a throttled producer waits out the period) from its rate.
    b.progress.start("warm-up (small chunks)");
    let mut warm = ask("warm-up", "load-balance", guess * secs / 3.0);
    warm.chunk_lines = Some(WARMUP_CHUNK_LINES);
    let digests = b.digests(&warm)?;
    let live = match b.submit(&warm)? {
        Answer::Live(l) => l,
        Answer::Refused(_, m) => bail!("the warm-up job was refused: {m}"),
    };
    let (id, submitted, _, bytes, h) = Bench::follow(*live);
    let f = b.join(id, h, job_limit(bytes, guess / 8.0));
    let mut warm_run = Run::new("warm-up", "load-balance", 1);
    apply_finished(&mut warm_run, f, submitted, &digests);
    if let Some(e) = &warm_run.error {
        bail!("the warm-up job failed: {e}");
    }
    b.progress.done();

    b.progress.start("calibration");
    let mut cal_ask = ask("calibration", "load-balance", guess * secs);
    cal_ask.chunk_lines = Some(CALIBRATION_CHUNK_LINES);
    let digests = b.digests(&cal_ask)?;
    let before = b.task_counts()?;
    let live = match b.submit(&cal_ask)? {
        Answer::Live(l) => l,
        Answer::Refused(_, m) => bail!("the calibration job was refused: {m}"),
    };
    let (id, submitted, plan, bytes, h) = Bench::follow(*live);
    let f = b.join(id, h, job_limit(bytes, guess / 4.0));
    let after = b.task_counts()?;
    let mut cal_run = Run::new("calibration", "load-balance", 1);
    apply_finished(&mut cal_run, f, submitted, &digests);
    if let Some(e) = &cal_run.error {
        bail!("the calibration job failed: {e}");
    }
    let t_gbit = cal_run.delivered_gbit_per_s.unwrap_or(0.0);
    if t_gbit <= 0.0 {
        bail!("the calibration job delivered nothing");
    }
    let t = t_gbit * 1e9 / 8.0;
    let tasks: Vec<(String, f64)> = setups
        .iter()
        .map(|s| {
            let d = after.get(&s.name).copied().unwrap_or(0)
                - before.get(&s.name).copied().unwrap_or(0);
            (s.name.clone(), d as f64)
        })
        .collect();
    let all: f64 = tasks.iter().map(|x| x.1).sum::<f64>().max(1.0);
    let (_, nodes) = b.status()?;
    for (s, (_, k)) in setups.iter_mut().zip(&tasks) {
        s.calibration_gbit_per_s = t_gbit * k / all;
        if let Some(c) = nodes
            .iter()
            .find(|n| n.name == s.name)
            .and_then(|n| n.capacity.compute.iter().find(|c| c.kernel == "rip"))
        {
            s.estimated_gbit_per_s = Some(c.bytes_per_sec as f64 * 8.0 / 1e9);
            s.estimate_source = Some(c.source.clone());
        }
    }
    // The scheduler's own view: a plan for a rate far beyond the cluster names the highest.
    let mut probe = ask("probe", "tclo", t * secs);
    probe.rate_bits = Some(scenario::stream_rate_bits(100.0 * t, scenario::CHANNELS));
    let (_, _, reason, _) = b.plan(&probe)?;
    let sched_max = match reason {
        Some(RefuseReason::Infeasible {
            max_feasible_bps, ..
        }) => Some(max_feasible_bps as f64 / 1e9),
        _ => None,
    };
    let calibration = Calibration {
        policy: "load-balance".into(),
        gbit_per_s: t_gbit,
        bytes,
        seconds: cal_run.seconds.unwrap_or(0.0),
        chunk_bytes: plan.chunk_bytes,
        verified: cal_run.verified == Some(true),
        scheduler_max_feasible_gbit_per_s: sched_max,
        scheduler_vs_measured: sched_max.map(|m| m / t_gbit),
        latency_p50_ms: cal_run.latency_p50_ms,
        latency_p99_ms: cal_run.latency_p99_ms,
        estimates_after: b.estimates()?,
    };
    b.progress.done();
    b.progress.println(&format!(
        "the cluster does {t_gbit:.3} Gbit/s (calibration); the scheduler says at most {}",
        sched_max.map_or("?".into(), |m| format!("{m:.3}"))
    ));

    let mut runs = Vec::new();
    // Tclo's chunk for each scenario, which load-balance then uses.
    let mut chunk_of: HashMap<&str, u64> = HashMap::new();
    let lb_chunk = |chunk_of: &HashMap<&str, u64>, s: &str| {
        (!a.lb_own_chunk).then(|| chunk_of.get(s).copied().unwrap_or(CALIBRATION_CHUNK_LINES))
    };

    // S1, S2, S3: one job each.
    let wanted = |sc: &str| a.scenarios.is_empty() || a.scenarios.iter().any(|w| w == sc);
    for (sc, fraction) in [
        ("S1", Some(scenario::S1_FRACTION)),
        ("S2", Some(scenario::S2_FRACTION)),
        ("S3", None),
    ] {
        if !wanted(sc) {
            continue;
        }
        for policy in POLICIES {
            b.progress.start(&format!("{sc} {policy}"));
            let rate = fraction.map(|f| f * t);
            let mut j = ask(&format!("{sc}-{policy}"), policy, rate.unwrap_or(t) * secs);
            j.rate_bits = rate.map(|r| scenario::stream_rate_bits(r, scenario::CHANNELS));
            if sc == "S3" {
                j.latency_ms = Some(bound_ms);
            }
            if policy == "load-balance" {
                j.chunk_lines = lb_chunk(&chunk_of, sc);
            }
            let mut run = Run::new(sc, policy, 1);
            let r = single(b, &j, &mut run, t_gbit, None);
            if let Err(e) = r {
                run.error = Some(format!("{e:#}"));
            }
            if policy == "tclo"
                && let Some(c) = run.chunk_bytes
            {
                chunk_of.insert(sc, c / (scenario::WIDTH * scenario::CHANNELS));
            }
            b.progress.done();
            runs.push(run);
        }
    }

    // S4: two jobs that fit together, then a third that does not.
    for policy in POLICIES.into_iter().filter(|_| wanted("S4")) {
        b.progress.start(&format!("S4 {policy}"));
        match parallel(b, policy, t, t_gbit, secs, &ask, lb_chunk(&chunk_of, "S4")) {
            Ok(rs) => {
                if policy == "tclo"
                    && let Some(c) = rs[0].chunk_bytes
                {
                    chunk_of.insert("S4", c / (scenario::WIDTH * scenario::CHANNELS));
                }
                runs.extend(rs);
            }
            Err(e) => {
                for k in 1..=3 {
                    let mut r = Run::new("S4", policy, k);
                    r.error = Some(format!("{e:#}"));
                    runs.push(r);
                }
            }
        }
        b.progress.done();
    }

    // S5: the producer that did the most drops to a tenth mid-job; the rate is what the
    // others (and that tenth) can still carry. Tclo first: it plans from the estimates, which
    // the cut leaves low for a while; load-balance does not read them.
    let shares: Vec<(String, f64)> = setups
        .iter()
        .map(|s| (s.name.clone(), s.calibration_gbit_per_s))
        .collect();
    let slow = scenario::pick_to_slow(&shares).unwrap_or(0);
    let r5 = scenario::s5_rate(t, shares[slow].1 * 1e9 / 8.0);
    for policy in POLICIES.into_iter().filter(|_| wanted("S5")) {
        b.progress.start(&format!("S5 {policy}"));
        let mut j = ask(&format!("S5-{policy}"), policy, r5 * secs);
        j.rate_bits = Some(scenario::stream_rate_bits(r5, scenario::CHANNELS));
        if policy == "load-balance" {
            j.chunk_lines = lb_chunk(&chunk_of, "S5");
        }
        let mut run = Run::new("S5", policy, 1);
        let r = single(b, &j, &mut run, t_gbit, Some(slow));
        if let Err(e) = r {
            run.error = Some(format!("{e:#}"));
        }
        // Back to its own quota for what follows.
        let (g, base) = &mut b.groups[slow];
        let base = *base;
        if let Err(e) = g.set(base) {
            run.error
                .get_or_insert(format!("restoring the quota: {e:#}"));
        }
        if policy == "tclo"
            && let Some(c) = run.chunk_bytes
        {
            chunk_of.insert("S5", c / (scenario::WIDTH * scenario::CHANNELS));
        }
        b.progress.done();
        runs.push(run);
    }
    Ok((calibration, runs))
}

/// One job: submit, read, verify; `slow`: cut that producer's quota (index into the groups)
/// once [`scenario::S5_CUT_AT`] of the job was read.
fn single(
    b: &mut Bench,
    j: &JobAsk,
    run: &mut Run,
    t_gbit: f64,
    slow: Option<usize>,
) -> anyhow::Result<()> {
    run.requested_gbit_per_s = j.job_rate().map(gbit);
    run.latency_bound_ms = j.latency_ms.map(|l| l as f64);
    run.bytes = j.bytes();
    let digests = b.digests(j)?;
    let before = b.task_counts()?;
    let live = match b.submit(j)? {
        Answer::Live(l) => l,
        Answer::Refused(reason, message) => {
            run.refusal = Some(refusal(&reason, message, t_gbit));
            return Ok(());
        }
    };
    run.admitted = true;
    let (id, submitted, plan, bytes, h) = Bench::follow(*live);
    apply_plan(run, &plan);
    if let Some(k) = slow {
        // Wait for the cut point, then cut; a job that ends (or fails) first is not slowed,
        // and the run says so.
        match wait_read(b, id, scenario::S5_CUT_AT, &h)? {
            Some(cut) => {
                let (g, base) = &mut b.groups[k];
                let after = cgroup::limit_for(base.cpus() * scenario::S5_SLOWDOWN, base.period_us)?;
                g.set(after)?;
                run.slowed = Some(Slowdown {
                    node: node_name(k + 1),
                    cpus_before: base.cpus(),
                    cpus_after: after.cpus(),
                    at_read_fraction: cut,
                    at_seconds: submitted.elapsed().as_secs_f64(),
                });
            }
            None => {
                run.error = Some(format!(
                    "the job ended before {:.0} % of it was read: {} was not slowed",
                    100.0 * scenario::S5_CUT_AT,
                    node_name(k + 1)
                ))
            }
        }
    }
    let rate = j.job_rate().unwrap_or(t_gbit * 1e9 / 8.0);
    let f = b.join(id, h, job_limit(bytes, rate));
    apply_finished(run, f, submitted, &digests);
    let after = b.task_counts()?;
    run.producers_used = used(&before, &after);
    run.estimates_after = b.estimates()?;
    Ok(())
}

/// Polls the job until `fraction` of its bytes were read; returns the fraction read then, or
/// None when the job ended (or its follower did) first.
fn wait_read(
    b: &mut Bench,
    id: JobId,
    fraction: f64,
    h: &JoinHandle<Finished>,
) -> anyhow::Result<Option<f64>> {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let (jobs, _) = b.status()?;
        let Some(read) = jobs
            .iter()
            .find(|s| s.job == id)
            .map(|s| s.progress.read as f64 / s.progress.total.max(1) as f64)
        else {
            return Ok(None);
        };
        if read >= fraction {
            return Ok(Some(read));
        }
        if h.is_finished() || Instant::now() > deadline {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// S4: jobs 1 and 2 at 0.4 T each, submitted together, then job 3 at 0.4 T while they run.
fn parallel(
    b: &mut Bench,
    policy: &str,
    t: f64,
    t_gbit: f64,
    secs: f64,
    ask: &dyn Fn(&str, &str, f64) -> JobAsk,
    chunk: Option<u64>,
) -> anyhow::Result<Vec<Run>> {
    let rate = scenario::S4_FRACTION * t;
    let asks: Vec<JobAsk> = (1..=3)
        .map(|k| {
            let mut j = ask(&format!("S4-{policy}-{k}"), policy, rate * secs);
            j.rate_bits = Some(scenario::stream_rate_bits(rate, scenario::CHANNELS));
            if policy == "load-balance" {
                j.chunk_lines = chunk;
            }
            j
        })
        .collect();
    let digests = b.digests(&asks[0])?;
    let before = b.task_counts()?;
    let mut runs = Vec::new();
    let mut follows = Vec::new();
    for (k, j) in asks.iter().enumerate() {
        let mut run = Run::new("S4", policy, k as u32 + 1);
        run.requested_gbit_per_s = j.job_rate().map(gbit);
        run.bytes = j.bytes();
        match b.submit(j)? {
            Answer::Live(l) => {
                run.admitted = true;
                let (id, submitted, plan, bytes, h) = Bench::follow(*l);
                apply_plan(&mut run, &plan);
                follows.push((k, id, submitted, bytes, h));
            }
            Answer::Refused(reason, message) => {
                run.refusal = Some(refusal(&reason, message, t_gbit));
            }
        }
        runs.push(run);
    }
    for (k, id, submitted, bytes, h) in follows {
        let f = b.join(id, h, job_limit(bytes, rate / 3.0));
        apply_finished(&mut runs[k], f, submitted, &digests);
    }
    let after = b.task_counts()?;
    let u = used(&before, &after);
    let est = b.estimates()?;
    for r in runs.iter_mut().filter(|r| r.admitted) {
        r.producers_used = u.clone();
        r.estimates_after = est.clone();
    }
    Ok(runs)
}

/// `ip netns exec` for a producer, with the `cpu` controller's hierarchy mounted in the mount
/// namespace `ip netns exec` makes (its fresh `/sys` has no `/sys/fs/cgroup`): the producer
/// then sees its own CPU quota as on a host of its own, and reports the CPU a task costs at that
/// quota. Best effort: if the mounts fail it runs as it would without them.
fn producer_command(
    cluster: &crate::cluster::emu::Cluster,
    node: usize,
    exe: &Path,
    version: cgroup::Version,
) -> Command {
    let mount = match version {
        cgroup::Version::V1 => {
            "mount -t tmpfs spate-cgroups /sys/fs/cgroup && mkdir -p /sys/fs/cgroup/cpu && \
             mount -t cgroup -o cpu spate-cpu /sys/fs/cgroup/cpu"
        }
        cgroup::Version::V2 => "mount -t cgroup2 spate-cgroup2 /sys/fs/cgroup",
    };
    let mut c = Command::new("ip");
    c.args(["netns", "exec", &cluster.nodes[node].netns, "sh", "-c"])
        .arg(format!("{{ {mount}; }} 2>/dev/null; exec \"$@\""))
        .arg("sh")
        .arg(exe);
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reader_blocks_are_half_the_smallest_ring_at_most_a_mib() {
        assert_eq!(reader_block(&[330_454, 1 << 30]), 165_227);
        assert_eq!(reader_block(&[64 << 20]), 1 << 20);
        assert_eq!(reader_block(&[1000]), 500);
        assert_eq!(reader_block(&[]), 1 << 20);
    }

    #[test]
    fn producers_used_are_those_whose_tasks_grew() {
        let m = |v: &[(&str, u64)]| -> BTreeMap<String, u64> {
            v.iter().map(|(n, k)| (n.to_string(), *k)).collect()
        };
        let before = m(&[("n1", 10), ("n2", 4)]);
        let after = m(&[("n1", 10), ("n2", 9), ("n3", 1)]);
        assert_eq!(used(&before, &after), ["n2", "n3"]);
    }

    #[test]
    fn refusals_keep_the_constraint_and_the_feasible_rate() {
        let r = refusal(
            &RefuseReason::Infeasible {
                constraint: "compute".into(),
                max_feasible_bps: 600_000_000,
            },
            "no".into(),
            0.75,
        );
        assert_eq!(r.kind, "infeasible");
        assert_eq!(r.constraint.as_deref(), Some("compute"));
        assert_eq!(r.max_feasible_gbit_per_s, Some(0.6));
        assert!((r.max_feasible_vs_calibration.unwrap() - 0.8).abs() < 1e-12);
        let r = refusal(&RefuseReason::InsufficientCapacity, "x".into(), 1.0);
        assert_eq!(
            (r.kind.as_str(), r.constraint),
            ("insufficient_capacity", None)
        );
    }

    #[test]
    fn plans_fill_predictions_only_when_made() {
        let p = PlanInfo {
            policy: "load-balance".into(),
            chunk_bytes: 4 << 20,
            chunk_lines: 29,
            producers: vec![],
            predicted_bps: 0,
            predicted_latency_us: 0,
            window_chunks: 0,
            ring_bytes: vec![1, 2],
            prefill_bytes: vec![0, 0],
            max_feasible_bps: 0,
            requested_bps: None,
            latency_bound_us: None,
        };
        let mut r = Run::new("S1", "load-balance", 1);
        apply_plan(&mut r, &p);
        assert_eq!(r.predicted_gbit_per_s, None);
        assert_eq!(r.predicted_latency_ms, None);
        assert_eq!(r.chunk_bytes, Some(4 << 20));
        let p = PlanInfo {
            policy: "tclo".into(),
            producers: vec!["n1".into()],
            predicted_bps: 500_000_000,
            predicted_latency_us: 12_500,
            window_chunks: 9,
            prefill_bytes: vec![100, 300],
            ..p
        };
        apply_plan(&mut r, &p);
        assert_eq!(r.predicted_gbit_per_s, Some(0.5));
        assert_eq!(r.predicted_latency_ms, Some(12.5));
        assert_eq!(r.window_chunks, Some(9));
        assert_eq!(r.prefill_bytes, Some(300));
        assert_eq!(r.producers_planned, ["n1"]);
    }
}
