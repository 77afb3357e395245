//! `spate bench cluster`: the reference experiments. Jobs A, B and C (scaled) run on an emulated
//! cluster in every topology, with compute off (`null`) and on (`rip`); each run's throughput
//! (job output / time from submission to the last byte released to the readers) is compared
//! with the theoretical limit of its topology, computed from link capacities measured in the
//! same run. Constant-speed readers show what a printer would see. Chunk and control latencies
//! go to HdrHistogram `.hgrm` files; plots and `report.json` go to the output directory.
//!
//! - [`emu`]: the emulated cluster (network namespaces, two shaped interfaces per node).
//! - [`limits`]: the theoretical limit of each topology from measured capacities (pure).
//! - [`report`]: the report (JSON, terminal table, `.hgrm` files, plots, progress).
//!
//! Every daemon and reader is a separate `spate` process (this binary, re-executed), in the
//! namespace of its node; the harness talks to the scheduler over its UNIX socket.

pub mod emu;
pub mod limits;
pub mod report;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use hdrhistogram::Histogram;
use spate_netlib::endpoint::Endpoint;
use spate_netlib::proto::{JobOutcome, JobState, Message, NodeState, StreamPlacement};
use spate_scheduler::server::user::{User, load_secret};

use limits::{NodeCaps, Topology};
use report::{ConstantSpeed, Limits, LinkFigure, LocalLimit, Report, Run};
use spate_producer::engine::LocalPath;

/// The local path a local run takes: the nodes' default (zero copy), except for the null
/// kernel, which computes nothing and measures communication alone, so it runs on the pull
/// path (zero copy moves no byte at all: nothing would be measured).
fn local_path(kernel: &str) -> LocalPath {
    if kernel == "null" {
        LocalPath::Pull
    } else {
        LocalPath::ZeroCopy
    }
}

/// Arguments of `spate bench cluster`.
#[derive(clap::Args, Debug, Clone)]
#[command(after_help = "Examples (as root):\n  spate bench cluster --quick\n  \
spate bench cluster --json --out results/\n  \
spate bench cluster --topologies distant-1x1,NxN --jobs C --kernels rip --scale 0.1")]
pub struct Args {
    /// The reduced suite (job B, every topology, one constant-speed run): ~30 s on a quiet
    /// 2-core machine, up to 3 minutes on a loaded one.
    #[arg(long)]
    pub quick: bool,
    /// Nodes of the emulated cluster (at least 3: one-to-many needs two consumers).
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
    /// Rate of every link (each node has two), e.g. 500Mbit or 1Gbit; 0 leaves them unshaped.
    /// The default keeps the network, not this machine's cores, the limit.
    #[arg(long, default_value = "500Mbit")]
    pub link_rate: String,
    /// Fraction of the reference jobs' size to run (lines of each sheet; widths stay; never
    /// below 64 MiB or the whole job) [default: 0.05; --quick: 0.04].
    #[arg(long)]
    pub scale: Option<f64>,
    /// Local one-to-one runs move at least this much (more lines of the same job, at most its
    /// full size): the UNIX path is tens of times faster than the emulated links, and a longer
    /// run keeps start-up a small part of its time [default: 8GiB; --quick: 2GiB].
    #[arg(long, value_parser = crate::parse_size)]
    pub local_bytes: Option<u64>,
    /// Jobs to run (A, B, C) [default: A,B,C; --quick: B].
    #[arg(long, value_delimiter = ',')]
    pub jobs: Option<Vec<String>>,
    /// Kernels: null (compute off), rip (compute on), pattern [default: null,rip].
    #[arg(long, value_delimiter = ',')]
    pub kernels: Option<Vec<String>>,
    /// Topologies: local-1x1, distant-1x1, 1xN, Nx1, NxN [default: all].
    #[arg(long, value_delimiter = ',')]
    pub topologies: Option<Vec<Topology>>,
    /// Skip the constant-speed runs.
    #[arg(long)]
    pub no_constant_speed: bool,
    /// Seconds to measure each link (a raw TCP transfer, one link at a time) [default: 3;
    /// --quick: 1.5].
    #[arg(long)]
    pub link_seconds: Option<f64>,
    /// Output directory for report.json, the .hgrm files and the plots.
    #[arg(long, default_value = "spate-bench-cluster")]
    pub out: PathBuf,
    /// Print the report as one JSON object (the table and progress go away).
    #[arg(long)]
    pub json: bool,
}

/// One job of the suite, scaled.
#[derive(Debug, Clone)]
struct JobShape {
    name: String,
    width: u64,
    height: u64,
}

impl JobShape {
    fn reference(name: &str, scale: f64) -> anyhow::Result<JobShape> {
        // DESIGN.md §8: 10 in at 300 dpi, 40 in at 900 dpi, 100 in at 1200 dpi; square sheets.
        let side = match name {
            "A" => 3000,
            "B" => 36000,
            "C" => 120_000,
            other => bail!("unknown job {other:?}: the reference jobs are A, B and C"),
        };
        Ok(JobShape {
            name: name.to_string(),
            width: side,
            height: scaled_height_of(side, scale),
        })
    }

    fn bytes(&self) -> u64 {
        self.width * self.height * 4
    }
}

/// Lines of a reference sheet of `side` lines scaled by `scale`: never below 64 MiB (or the
/// whole job when it is smaller: A is 36 MB), so that even the smallest run is more than its
/// start-up.
fn scaled_height_of(side: u64, scale: f64) -> u64 {
    let floor = (MIN_JOB_BYTES.div_ceil(side * CHANNELS as u64)).min(side);
    ((side as f64 * scale).round() as u64).max(floor).max(1)
}

/// The lines of reference job `name` (A, B, C) that a run at `scale` moves.
pub(crate) fn scaled_height(name: &str, scale: f64) -> anyhow::Result<u64> {
    Ok(JobShape::reference(name, scale)?.height)
}

/// Chunk lines of a job: pieces of at most 4 MiB, and at least 8 chunks per producer where
/// the job allows.
pub(crate) fn chunk_lines(width: u64, height: u64, producers: usize) -> u64 {
    let max_lines = ((4u64 << 20) / width.max(1)).max(1);
    let want = (height / (8 * producers.max(1) as u64)).max(1);
    want.min(max_lines)
}

pub(crate) const CHANNELS: usize = 4;
/// The smallest job a run moves (unless the whole reference job is smaller).
const MIN_JOB_BYTES: u64 = 64 << 20;
const PATTERN_SEED: u64 = 42;
pub(crate) const INPUT: &str = "sheet.png";

/// A `spate` daemon or reader process; stopped (SIGTERM, then SIGKILL) when dropped.
pub(crate) struct Proc {
    pub(crate) name: String,
    pub(crate) child: Child,
}

impl Proc {
    /// Starts `cmd` with stdout and stderr to the file `log`; registered to be stopped on
    /// interrupt.
    pub(crate) fn spawn(name: &str, mut cmd: Command, log: &Path) -> anyhow::Result<Proc> {
        let f = std::fs::File::create(log)
            .with_context(|| format!("creating the log {}", log.display()))?;
        cmd.stdout(f.try_clone()?).stderr(f).stdin(Stdio::null());
        let child = cmd.spawn().with_context(|| format!("starting {name}"))?;
        emu::register_child(child.id());
        Ok(Proc {
            name: name.to_string(),
            child,
        })
    }

    /// Whether it still runs.
    pub(crate) fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGTERM, up to 5 s to exit, then SIGKILL; reaped.
    pub(crate) fn stop(&mut self) {
        if self.alive() {
            let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline && self.alive() {
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        emu::unregister_child(self.child.id());
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Which node runs what in a topology, and where each stream goes.
#[derive(Debug, Clone)]
struct Placement {
    /// (node index, producer, consumer) for every node that runs a daemon.
    daemons: Vec<(usize, bool, bool)>,
    /// Consumer node of each stream.
    streams: Vec<usize>,
}

fn placement(t: Topology, h: usize) -> Placement {
    let consumers: Vec<usize> = match t {
        Topology::Local1x1 | Topology::NToOne => vec![0],
        Topology::Distant1x1 => vec![1],
        Topology::OneToN => (1..h).collect(),
        Topology::NToN => (0..h).collect(),
    };
    let daemons = match t {
        Topology::Local1x1 => vec![(0, true, true)],
        Topology::Distant1x1 => vec![(0, true, false), (1, false, true)],
        Topology::OneToN => {
            let mut d = vec![(0, true, false)];
            d.extend((1..h).map(|i| (i, false, true)));
            d
        }
        Topology::NToOne => {
            let mut d = vec![(0, false, true)];
            d.extend((1..h).map(|i| (i, true, false)));
            d
        }
        Topology::NToN => (0..h).map(|i| (i, true, true)).collect(),
    };
    Placement {
        daemons,
        streams: (0..CHANNELS)
            .map(|s| consumers[s % consumers.len()])
            .collect(),
    }
}

/// The limit of topology `t` with this placement, from the measured capacities.
fn topology_limit(t: Topology, p: &Placement, caps: &[NodeCaps], local: f64) -> f64 {
    if t == Topology::Local1x1 {
        return local;
    }
    let share = |n: usize| p.streams.iter().filter(|&&c| c == n).count() as f64 / CHANNELS as f64;
    let nodes: Vec<limits::Placement> = p
        .daemons
        .iter()
        .map(|&(n, producer, _)| limits::Placement {
            caps: caps[n],
            producer,
            share: share(n),
        })
        .collect();
    limits::limit(&nodes)
}

/// The running cluster of one topology: scheduler and node daemons.
struct Daemons {
    sched_ep: Endpoint,
    procs: Vec<Proc>,
}

impl Daemons {
    fn check_alive(&mut self) -> anyhow::Result<()> {
        for p in &mut self.procs {
            if !p.alive() {
                bail!("the {} daemon exited (see its log)", p.name);
            }
        }
        Ok(())
    }
}

/// Shared state of the whole benchmark.
struct Bench {
    exe: PathBuf,
    dir: PathBuf,
    out: PathBuf,
    cluster: Option<emu::Cluster>,
    /// The shaped link rate (Mbit/s), announced by every node as its interfaces' rate.
    link_mbit: Option<u32>,
    /// Expected XXH3-128 per stream of a rip job, by (job, height).
    rip_digests: HashMap<(String, u64), Vec<String>>,
    control: Histogram<u64>,
    files: Vec<String>,
    progress: report::Progress,
}

impl Bench {
    fn node_name(i: usize) -> String {
        format!("n{i}")
    }

    /// A command running this binary in node `n`'s namespace (local runs: here).
    fn cmd(&self, topo: Topology, n: usize) -> Command {
        match (&self.cluster, topo) {
            (Some(c), t) if t != Topology::Local1x1 => c.command(n, &self.exe),
            _ => Command::new(&self.exe),
        }
    }

    fn start(
        &self,
        topo: Topology,
        p: &Placement,
        path: Option<LocalPath>,
    ) -> anyhow::Result<Daemons> {
        let run = match path {
            Some(lp) => self.dir.join(format!("{}-{lp}", topo.as_str())),
            None => self.dir.join(topo.as_str()),
        };
        std::fs::create_dir_all(run.join("logs"))?;
        let sock = run.join("sched.sock");
        let sched_ep = Endpoint::Unix(sock.clone());
        let mut procs = Vec::new();
        let mut c = self.cmd(topo, 0);
        c.args(["scheduler", "--listen"])
            .arg(sched_ep.to_string())
            .arg("--files")
            .arg(self.dir.join("files"))
            .args(["--heartbeat-ms", "500"]);
        procs.push(Proc::spawn(
            "scheduler",
            c,
            &run.join("logs/scheduler.log"),
        )?);
        let secret_file = run.join("sched.sock.secret");
        wait_for(Duration::from_secs(20), "the scheduler's socket", || {
            Ok(sock.exists() && secret_file.exists())
        })?;
        for &(n, producer, consumer) in &p.daemons {
            let name = Self::node_name(n);
            let mut c = self.cmd(topo, n);
            c.args(["node", "--name", &name, "--scheduler"])
                .arg(sched_ep.to_string())
                .arg("--secret-file")
                .arg(&secret_file)
                .arg("--run-dir")
                .arg(run.join(&name))
                .args(["--ring-budget", "2GiB"]);
            if let Some(lp) = path {
                c.args(["--local-path", lp.name()]);
            }
            if producer {
                c.arg("--producer");
            }
            if consumer {
                c.arg("--consumer");
            }
            if let (Some(cl), false) = (&self.cluster, topo == Topology::Local1x1) {
                let node = &cl.nodes[n];
                for k in 0..2 {
                    c.arg("--interface")
                        .arg(format!("{}={}", node.ifnames[k], node.addrs[k]));
                }
                // An operator announces its NICs' rate; here tbf sets it (veth says 10 Gbit).
                if let Some(m) = self.link_mbit {
                    c.arg("--link-rate").arg(format!("{m}Mbit"));
                }
            }
            procs.push(Proc::spawn(
                &name,
                c,
                &run.join(format!("logs/{name}.log")),
            )?);
        }
        let mut d = Daemons { sched_ep, procs };
        let want: Vec<String> = p.daemons.iter().map(|d| Self::node_name(d.0)).collect();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            d.check_alive()?;
            let mut u = self.user(&d)?;
            let nodes = u.request(&Message::Status { job: None }, |m| match m {
                Message::StatusReply { nodes, .. } => Some(nodes),
                _ => None,
            })?;
            let up = want.iter().all(|w| {
                nodes
                    .iter()
                    .any(|n| &n.name == w && n.state == NodeState::Alive)
            });
            if up {
                return Ok(d);
            }
            if Instant::now() > deadline {
                bail!("nodes {want:?} did not all join the scheduler within 30 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn user(&self, d: &Daemons) -> anyhow::Result<User> {
        let secret = load_secret(None, &d.sched_ep)?;
        Ok(User::connect(
            &d.sched_ep,
            &secret,
            Duration::from_secs(10),
        )?)
    }

    fn spec(&self, job: &JobShape, kernel: &str, p: &Placement, producers: usize) -> String {
        let mut s = format!(
            "name = \"{}\"\nkernel = \"{kernel}\"\nwidth = {}\nheight = {}\nbits = 8\n\
             channels = {CHANNELS}\nsplit = \"channel\"\n",
            job.name, job.width, job.height
        );
        if kernel == "rip" {
            s.push_str(&format!("inputs = [\"{INPUT}\"]\n"));
        }
        s.push_str(&format!(
            "chunk = {{ lines = {} }}\n",
            chunk_lines(job.width, job.height, producers)
        ));
        for &c in &p.streams {
            s.push_str(&format!(
                "\n[[stream]]\nnode = \"{}\"\n",
                Self::node_name(c)
            ));
        }
        if kernel == "pattern" {
            s.push_str(&format!("\n[params]\nseed = {PATTERN_SEED}\n"));
        }
        s
    }

    /// Expected digests of a rip job's streams: a sequential run of the same RIP.
    fn rip_digests(&mut self, job: &JobShape, spec: &str) -> anyhow::Result<Vec<String>> {
        let key = (job.name.clone(), job.height);
        if let Some(d) = self.rip_digests.get(&key) {
            return Ok(d.clone());
        }
        let d = rip_reference_digests(&self.dir.join("files").join(INPUT), spec)?;
        self.rip_digests.insert(key, d.clone());
        Ok(d)
    }

    /// Runs one job on the running daemons. `rates`: bytes/s per stream for constant-speed
    /// readers.
    #[allow(clippy::too_many_arguments)]
    fn run_job(
        &mut self,
        d: &mut Daemons,
        topo: Topology,
        p: &Placement,
        job: &JobShape,
        kernel: &str,
        limit: f64,
        rates: Option<&[f64]>,
    ) -> anyhow::Result<(Run, Vec<ReaderReport>)> {
        let producers = p.daemons.iter().filter(|d| d.1).count();
        let spec = self.spec(job, kernel, p, producers);
        let mut user = self.user(d)?;
        let t_submit = Instant::now();
        let inputs = if kernel == "rip" {
            vec![INPUT.to_string()]
        } else {
            vec![]
        };
        let accepted = user.request(
            &Message::Submit {
                spec_toml: spec.clone(),
                inputs,
            },
            |m| match m {
                Message::Accepted { job, streams, .. } => Some(Ok((job, streams))),
                Message::Refused { message, .. } => Some(Err(message)),
                Message::Error { message, .. } => Some(Err(message)),
                _ => None,
            },
        )?;
        let control_us = t_submit.elapsed().as_micros() as u64;
        let (id, streams) = accepted.map_err(|m| anyhow!("job refused: {m}"))?;
        self.control.saturating_record(control_us);

        let mut readers = Vec::new();
        for s in &streams {
            let i = s.stream.0 as usize;
            let node = p.streams.get(i).copied().unwrap_or(0);
            let mut c = self.cmd(topo, node);
            c.args(["read", "--json", "--idle-timeout", "120", "--socket"])
                .arg(&s.handoff)
                .args(["--key", &s.key.to_string()]);
            match kernel {
                "pattern" => {
                    c.arg("--verify").arg(format!("{PATTERN_SEED}:{i}"));
                }
                "rip" => {
                    c.arg("--hash");
                }
                _ => {}
            }
            if let Some(r) = rates.and_then(|r| r.get(i)) {
                c.arg("--rate").arg(format!("{:.9}Gbit", r * 8.0 / 1e9));
            }
            c.stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            let child = c
                .spawn()
                .with_context(|| format!("starting the reader of stream {i}"))?;
            emu::register_child(child.id());
            readers.push((s.clone(), child));
        }
        user.send(&Message::Ready { job: id })?;
        // Wait for every reader, noting when each one ended.
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
        let mut reports = Vec::new();
        let mut release = t_submit;
        for w in waits {
            let (s, out, ended) = w.join().map_err(|_| anyhow!("a reader thread panicked"))?;
            let out = out.context("waiting for a reader")?;
            release = release.max(ended);
            reports.push(ReaderReport::parse(&s, &out)?);
        }
        let seconds = release.duration_since(t_submit).as_secs_f64();

        // The job ends: Done once delivered; the scheduler sends its chunk latencies.
        let failed = reports.iter().find(|r| r.outcome != "end");
        let mut latencies: Option<Histogram<u64>> = None;
        if failed.is_some() {
            // Free the job's rings and producers for the runs that follow.
            let _ = user.send(&Message::Cancel { job: id });
        } else {
            user.send(&Message::Watch { job: id })?;
            let deadline = Instant::now() + Duration::from_secs(60);
            let mut done_sent = false;
            loop {
                d.check_alive()?;
                if Instant::now() > deadline {
                    bail!("job {} did not end within 60 s of its last byte", id.0);
                }
                match user.recv()? {
                    Message::JobUpdate(st)
                        if st.job == id && st.state == JobState::Delivered && !done_sent =>
                    {
                        user.send(&Message::Done { job: id })?;
                        done_sent = true;
                    }
                    Message::JobStats {
                        job,
                        chunk_latency_hdr,
                        ..
                    } if job == id => {
                        latencies = Some(spate_netlib::hist::decode(&chunk_latency_hdr)?);
                    }
                    Message::JobEnded { job, outcome } if job == id => {
                        if outcome != JobOutcome::Completed {
                            bail!("job ended {outcome:?}");
                        }
                        break;
                    }
                    _ => {}
                }
            }
        }

        // Verification.
        let (verified, verification, error) = match failed {
            Some(r) => (
                false,
                method(kernel).to_string(),
                Some(format!(
                    "stream {}: {}",
                    r.stream,
                    r.error.clone().unwrap_or_else(|| r.outcome.clone())
                )),
            ),
            None => {
                let lengths = reports.iter().all(|r| r.bytes == r.length);
                let content = match kernel {
                    "pattern" => reports.iter().all(|r| r.verified),
                    "rip" => {
                        let want = self.rip_digests(job, &spec)?;
                        reports
                            .iter()
                            .all(|r| r.digest.as_deref() == want.get(r.stream).map(|s| s.as_str()))
                    }
                    _ => true,
                };
                let ok = lengths && content;
                (
                    ok,
                    method(kernel).to_string(),
                    (!ok).then(|| "a stream differs from what was expected".to_string()),
                )
            }
        };

        let bytes: u64 = reports.iter().map(|r| r.length).sum();
        let gbit = bytes as f64 * 8.0 / seconds.max(1e-9) / 1e9;
        let label = format!("{}-{}-{kernel}", topo.as_str(), job.name);
        let chunk_latency = match latencies.filter(|h| !h.is_empty()) {
            None => None,
            Some(h) => {
                let suffix = if rates.is_some() { "-constant" } else { "" };
                let path = self.out.join(format!("{label}{suffix}.chunk.hgrm"));
                report::write_hgrm(&h, &path, &format!("chunk latency (us), {label}"))?;
                self.files.push(path.display().to_string());
                Some(report::percentiles(&h))
            }
        };
        let mut ctl = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3)?;
        ctl.saturating_record(control_us.max(1));
        let run = Run {
            topology: topo,
            job: job.name.clone(),
            kernel: kernel.to_string(),
            path: None,
            producers: p
                .daemons
                .iter()
                .filter(|d| d.1)
                .map(|d| Self::node_name(d.0))
                .collect(),
            consumers: p
                .daemons
                .iter()
                .filter(|d| d.2)
                .map(|d| Self::node_name(d.0))
                .collect(),
            bytes,
            seconds,
            gbit_per_s: gbit,
            limit_gbit_per_s: limit,
            ratio: limits::ratio(gbit, limit),
            verified,
            verification,
            chunk_latency_us: chunk_latency,
            control_latency_us: Some(report::percentiles(&ctl)),
            constant_speed: None,
            error,
        };
        Ok((run, reports))
    }
}

/// The XXH3-128 digest (32 hex digits) of every stream of the rip job `spec` (split by
/// channel: stream i is channel i), from a sequential run of the same RIP in this process on
/// the input image at `input`.
pub(crate) fn rip_reference_digests(input: &Path, spec: &str) -> anyhow::Result<Vec<String>> {
    let plan = spate_scheduler::spec::JobPlan::parse(spec)
        .map_err(|e| anyhow!("the bench's own job spec is invalid: {e}"))?;
    let geometry = spate_scheduler::server::job_geometry(&plan);
    let mut inputs = HashMap::new();
    inputs.insert(
        INPUT.to_string(),
        std::fs::read(input).with_context(|| format!("reading {}", input.display()))?,
    );
    let params = spate_scheduler::server::table_to_value(&plan.params);
    let rip = spate_producer::rip_kernel::build_rip(&params, &geometry, &inputs, None)
        .map_err(|e| anyhow!("building the reference RIP: {e}"))?;
    let mut hashers: Vec<_> = (0..geometry.channels)
        .map(|_| xxhash_rust::xxh3::Xxh3Default::new())
        .collect();
    let batch = ((16u64 << 20) / geometry.line_bytes.max(1)).max(1) as u32;
    let height = u32::try_from(geometry.lines)?;
    let mut line = 0;
    while line < height {
        let end = (line + batch).min(height);
        let bufs = rip
            .render_to_vecs(line..end)
            .map_err(|e| anyhow!("reference render: {e}"))?;
        for (h, b) in hashers.iter_mut().zip(&bufs) {
            h.update(b);
        }
        line = end;
    }
    Ok(hashers
        .iter()
        .map(|h| format!("{:032x}", h.digest128()))
        .collect())
}

/// How a kernel's streams are verified (the `verification` of a run):
/// - `pattern`: every byte checked against the test pattern by the reader;
/// - `xxh3-128`: the XXH3-128 of every stream, computed by its reader, equals that of a
///   sequential run of the same RIP in the bench process;
/// - `length`: every stream complete, in order, with exactly its length (the null kernel
///   computes nothing, so its bytes are not defined and cannot be checked).
pub(crate) fn method(kernel: &str) -> &'static str {
    match kernel {
        "pattern" => "pattern",
        "rip" => "xxh3-128",
        _ => "length",
    }
}

/// What one `spate read --json` reported.
#[derive(Debug, Clone)]
pub(crate) struct ReaderReport {
    pub(crate) stream: usize,
    pub(crate) length: u64,
    pub(crate) outcome: String,
    pub(crate) bytes: u64,
    pub(crate) verified: bool,
    pub(crate) digest: Option<String>,
    pub(crate) error: Option<String>,
    pub(crate) active_gbit: f64,
    pub(crate) starvations: u64,
    pub(crate) starvation_seconds: f64,
}

impl ReaderReport {
    /// The report a reader of stream `s` printed (`spate read --json`).
    pub(crate) fn parse(
        s: &StreamPlacement,
        out: &std::process::Output,
    ) -> anyhow::Result<ReaderReport> {
        let text = String::from_utf8_lossy(&out.stdout);
        let v: serde_json::Value = serde_json::from_str(text.trim()).with_context(|| {
            format!(
                "reader of stream {} printed no report ({}); stderr: {}",
                s.stream.0,
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )
        })?;
        Ok(ReaderReport {
            stream: s.stream.0 as usize,
            length: s.length,
            outcome: v["outcome"].as_str().unwrap_or("unknown").to_string(),
            bytes: v["bytes"].as_u64().unwrap_or(0),
            verified: v["verified"].as_bool().unwrap_or(false),
            digest: v["xxh3_128"].as_str().map(str::to_string),
            error: v["error"].as_str().map(str::to_string),
            active_gbit: v["active_gbit_per_s"].as_f64().unwrap_or(0.0),
            starvations: v["starvations"].as_u64().unwrap_or(0),
            starvation_seconds: v["starvation_seconds"].as_f64().unwrap_or(0.0),
        })
    }
}

/// Polls `cond` every 10 ms until it holds or `limit` passes.
pub(crate) fn wait_for(
    limit: Duration,
    what: &str,
    mut cond: impl FnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    while !cond()? {
        if Instant::now() > deadline {
            bail!("timed out after {limit:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

/// Run the benchmark; returns the exit code (0: every run verified, 1 otherwise).
pub fn run(a: Args) -> anyhow::Result<i32> {
    let t0 = Instant::now();
    if a.nodes < 3 {
        bail!("--nodes must be at least 3 (one-to-many needs two consumers besides the producer)");
    }
    let scale = a.scale.unwrap_or(if a.quick { 0.04 } else { 0.05 });
    if !(scale > 0.0 && scale <= 1.0) {
        bail!("--scale must be in (0, 1]");
    }
    let local_bytes = a
        .local_bytes
        .unwrap_or(if a.quick { 2 << 30 } else { 8 << 30 });
    let rate_mbit = parse_link_rate(&a.link_rate)?;
    let jobs: Vec<String> = a.jobs.clone().unwrap_or_else(|| {
        if a.quick {
            vec!["B".into()]
        } else {
            vec!["A".into(), "B".into(), "C".into()]
        }
    });
    for j in &jobs {
        JobShape::reference(j, scale)?;
    }
    let kernels: Vec<String> = a
        .kernels
        .clone()
        .unwrap_or_else(|| vec!["null".into(), "rip".into()]);
    if let Some(k) = kernels
        .iter()
        .find(|k| !matches!(k.as_str(), "null" | "rip" | "pattern"))
    {
        bail!("unknown kernel {k:?}: use null, rip or pattern");
    }
    let mut topologies: Vec<Topology> = a
        .topologies
        .clone()
        .unwrap_or_else(|| Topology::ALL.to_vec());
    let mut skipped = Vec::new();
    if let Some(why) = emu::unavailable()
        && topologies.iter().any(|t| *t != Topology::Local1x1)
    {
        skipped.push(format!("network topologies: {why}"));
        topologies.retain(|t| *t == Topology::Local1x1);
    }
    let out = a.out.clone();
    std::fs::create_dir_all(&out)
        .with_context(|| format!("creating the output directory {}", out.display()))?;
    let dir = std::env::temp_dir().join(format!("spate-bench-cluster-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("files"))?;
    let _cleanup = RemoveDir(dir.clone());
    spate_producer::rip::write_test_image(&dir.join("files").join(INPUT), 1200, 1200)
        .map_err(|e| anyhow!("writing the input image: {e}"))?;
    emu::install_interrupt_cleanup().context("installing the Ctrl-C clean-up")?;
    if emu::unavailable().is_none() {
        match emu::remove_stale() {
            Ok(gone) if !gone.is_empty() => {
                eprintln!("spate bench cluster: removed namespaces of earlier runs: {gone:?}")
            }
            Ok(_) => {}
            Err(e) => eprintln!("spate bench cluster: cannot remove earlier runs' namespaces: {e}"),
        }
    }

    // Constant-speed runs: (topology, job, kernel) after the unconstrained run of the same.
    let cs_job = jobs.last().cloned().unwrap_or_else(|| "B".into());
    let cs_kernel = if kernels.iter().any(|k| k == "rip") {
        "rip".to_string()
    } else {
        kernels[0].clone()
    };
    let cs: Vec<Topology> = if a.no_constant_speed {
        vec![]
    } else if a.quick {
        vec![Topology::Distant1x1]
    } else {
        vec![Topology::Distant1x1, Topology::NToN]
    }
    .into_iter()
    .filter(|t| topologies.contains(t))
    .collect();
    let total = (topologies.len() * jobs.len() * kernels.len() + cs.len()) as u64;
    let progress = report::Progress::new(total, !a.json);

    let mut bench = Bench {
        exe: std::env::current_exe().context("locating the spate binary")?,
        dir,
        out: out.clone(),
        cluster: None,
        link_mbit: rate_mbit,
        rip_digests: HashMap::new(),
        control: Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3)?,
        files: Vec::new(),
        progress,
    };

    // Limits measured in this run.
    bench
        .progress
        .println("measuring memcpy and the raw UNIX transfer (best of three)");
    // The best of three: a limit is what the machine can do, and this machine is noisy.
    let local_bytes_each: u64 = if a.quick { 1 << 30 } else { 4 << 30 };
    let mut memcpy: f64 = 0.0;
    let mut raw_unix: f64 = 0.0;
    for _ in 0..3 {
        memcpy = memcpy.max(emu::measure_memcpy(local_bytes_each));
        raw_unix = raw_unix.max(emu::measure_raw_unix(local_bytes_each, 4 << 20)?);
    }
    let mut links = Vec::new();
    let mut caps = Vec::new();
    if topologies.iter().any(|t| *t != Topology::Local1x1) {
        bench.progress.println(&format!(
            "building {} nodes with two {} links each",
            a.nodes,
            rate_mbit.map_or("unshaped".to_string(), |r| format!("{r} Mbit/s"))
        ));
        let secs = a.link_seconds.unwrap_or(if a.quick { 1.5 } else { 3.0 });
        let built = emu::Cluster::create(&emu::EmuConfig {
            nodes: a.nodes,
            rate_mbit,
        })
        .and_then(|cl| {
            bench
                .progress
                .println("measuring every link (raw TCP, one link at a time)");
            let links = cl.measure_links(Duration::from_secs_f64(secs))?;
            Ok((cl, links))
        });
        match built {
            Ok((cl, l)) => {
                caps = cl
                    .node_caps(&l)
                    .into_iter()
                    .map(|(e, i)| NodeCaps {
                        egress_gbit: e,
                        ingress_gbit: i,
                    })
                    .collect();
                links = l;
                bench.cluster = Some(cl);
            }
            Err(e) => {
                // The local runs need no namespaces: run them, and say why the others did not.
                skipped.push(format!("network topologies: {e:#}"));
                topologies.retain(|t| *t == Topology::Local1x1);
                bench
                    .progress
                    .set_total((topologies.len() * jobs.len() * kernels.len()) as u64);
            }
        }
    }
    let local_limit = limits::limit_local(memcpy);

    let mut runs: Vec<Run> = Vec::new();
    let mut local_limits: Vec<LocalLimit> = Vec::new();
    let cores = crate::all_cores().len().max(1);
    for &topo in &topologies {
        let p = placement(topo, a.nodes);
        let net_limit = topology_limit(topo, &p, &caps, local_limit);
        // Local runs go on their kernel's path, each with its own daemons; the others on one
        // set of daemons.
        let groups: Vec<(Option<LocalPath>, Vec<&String>)> = if topo == Topology::Local1x1 {
            [LocalPath::Pull, LocalPath::ZeroCopy]
                .into_iter()
                .map(|lp| {
                    let ks = kernels.iter().filter(|k| local_path(k) == lp).collect();
                    (Some(lp), ks)
                })
                .filter(|(_, ks): &(Option<LocalPath>, Vec<&String>)| !ks.is_empty())
                .collect()
        } else {
            vec![(None, kernels.iter().collect())]
        };
        for (path, group) in groups {
            let mut d = match bench.start(topo, &p, path) {
                Ok(d) => d,
                Err(e) => {
                    skipped.push(format!(
                        "{}: cannot start the cluster: {e:#}",
                        topo.as_str()
                    ));
                    continue;
                }
            };
            for j in &jobs {
                let mut shape = JobShape::reference(j, scale)?;
                if topo == Topology::Local1x1 {
                    let full = JobShape::reference(j, 1.0)?;
                    let lines = local_bytes.div_ceil(shape.width * CHANNELS as u64);
                    shape.height = shape.height.max(lines).min(full.height);
                }
                for k in &group {
                    let k = k.as_str();
                    // The local limit: this run's path, its stages measured alone now.
                    let limit = match path {
                        Some(lp) => {
                            bench
                                .progress
                                .println(&format!("measuring the stages of local {j} {k} on {lp}"));
                            let producers = p.daemons.iter().filter(|d| d.1).count();
                            let spec = bench.spec(&shape, k, &p, producers);
                            let check = match k {
                                "pattern" => "pattern",
                                "rip" => "xxh3",
                                _ => "none",
                            };
                            let each = if a.quick { 512 << 20 } else { 1 << 30 };
                            let m = crate::local::measure(
                                &spec,
                                &bench.dir.join("files"),
                                check,
                                each,
                            )?;
                            let l = m.limit(lp, cores);
                            local_limits.push(LocalLimit {
                                job: j.clone(),
                                kernel: k.to_string(),
                                path: lp.to_string(),
                                compute_gbit_per_s: m.compute_gbit_per_s,
                                check_gbit_per_s: m.check_gbit_per_s,
                                copy_gbit_per_s: m.copy_gbit_per_s,
                                limit_gbit_per_s: l,
                            });
                            l
                        }
                        None => net_limit,
                    };
                    bench.progress.start(&format!("{} {j} {k}", topo.as_str()));
                    let mut run = bench
                        .run_job(&mut d, topo, &p, &shape, k, limit, None)
                        .map(|r| r.0)
                        .unwrap_or_else(|e| failed_run(topo, &shape, k, limit, e));
                    run.path = path.map(|lp| lp.to_string());
                    bench.progress.done();
                    let unconstrained = run.gbit_per_s;
                    let ok = run.error.is_none();
                    runs.push(run);
                    if cs.contains(&topo) && *j == cs_job && k == cs_kernel {
                        bench
                            .progress
                            .start(&format!("{} {j} {k} constant speed", topo.as_str()));
                        let run = if ok {
                            constant_speed(
                                &mut bench,
                                &mut d,
                                topo,
                                &p,
                                &shape,
                                k,
                                limit,
                                unconstrained,
                            )
                            .unwrap_or_else(|e| failed_run(topo, &shape, k, limit, e))
                        } else {
                            failed_run(
                                topo,
                                &shape,
                                k,
                                limit,
                                anyhow!("the unconstrained run failed"),
                            )
                        };
                        bench.progress.done();
                        runs.push(run);
                    }
                }
            }
            drop(d);
        }
    }
    bench.progress.finish();
    drop(bench.cluster.take());

    if !bench.control.is_empty() {
        let path = out.join("control.hgrm");
        report::write_hgrm(
            &bench.control,
            &path,
            "control latency (us), submit -> accepted",
        )?;
        bench.files.push(path.display().to_string());
    }
    let rep_partial = Report {
        quick: a.quick,
        nodes: a.nodes,
        link_rate_mbit: rate_mbit,
        scale,
        limits: Limits {
            links: links
                .iter()
                .map(|l| LinkFigure {
                    from: l.from,
                    to: l.to,
                    net: l.net,
                    gbit_per_s: l.gbit_per_s,
                })
                .collect(),
            raw_unix_gbit_per_s: raw_unix,
            memcpy_gbit_per_s: memcpy,
            local: local_limits,
        },
        runs,
        out_dir: out.display().to_string(),
        files: bench.files.clone(),
        seconds: 0.0,
        skipped,
    };
    let mut rep = rep_partial;
    for f in report::write_plots(&rep, &out)? {
        rep.files.push(f.display().to_string());
    }
    rep.files
        .push(out.join("report.json").display().to_string());
    rep.seconds = t0.elapsed().as_secs_f64();
    report::write_report(&rep, &out)?;
    if a.json {
        println!("{}", serde_json::to_string(&rep)?);
    } else {
        report::print_table(&rep, &mut std::io::stdout())?;
    }
    let all_ok = rep.runs.iter().all(|r| r.verified && r.error.is_none());
    Ok(if all_ok { 0 } else { 1 })
}

/// The constant-speed run: readers ask for the unconstrained throughput (split over the
/// streams by their sizes).
#[allow(clippy::too_many_arguments)]
fn constant_speed(
    bench: &mut Bench,
    d: &mut Daemons,
    topo: Topology,
    p: &Placement,
    shape: &JobShape,
    kernel: &str,
    limit: f64,
    unconstrained: f64,
) -> anyhow::Result<Run> {
    let per_stream = unconstrained * 1e9 / 8.0 / CHANNELS as f64;
    let rates = vec![per_stream; CHANNELS];
    let (mut run, readers) = bench.run_job(d, topo, p, shape, kernel, limit, Some(&rates))?;
    let delivered: f64 = readers.iter().map(|r| r.active_gbit).sum();
    let requested = unconstrained;
    run.constant_speed = Some(ConstantSpeed {
        requested_gbit_per_s: requested,
        delivered_gbit_per_s: delivered,
        delivered_pct: 100.0 * delivered / requested.max(1e-12),
        starvations: readers.iter().map(|r| r.starvations).sum(),
        starvation_seconds: readers.iter().map(|r| r.starvation_seconds).sum(),
        unconstrained_gbit_per_s: unconstrained,
        power_loss_pct: 100.0 * (unconstrained - delivered).max(0.0) / unconstrained.max(1e-12),
    });
    Ok(run)
}

fn failed_run(topo: Topology, shape: &JobShape, kernel: &str, limit: f64, e: anyhow::Error) -> Run {
    Run {
        topology: topo,
        job: shape.name.clone(),
        kernel: kernel.to_string(),
        path: None,
        producers: vec![],
        consumers: vec![],
        bytes: shape.bytes(),
        seconds: 0.0,
        gbit_per_s: 0.0,
        limit_gbit_per_s: limit,
        ratio: 0.0,
        verified: false,
        verification: method(kernel).to_string(),
        chunk_latency_us: None,
        control_latency_us: None,
        constant_speed: None,
        error: Some(format!("{e:#}")),
    }
}

/// `500Mbit`, `1Gbit`, `0` (unshaped) → Mbit/s.
pub(crate) fn parse_link_rate(s: &str) -> anyhow::Result<Option<u32>> {
    if s.trim() == "0" {
        return Ok(None);
    }
    let bits = spate_scheduler::spec::parse_rate(s)
        .map_err(|e| anyhow!("--link-rate {s:?}: {e} (e.g. 500Mbit, 1Gbit, or 0 for unshaped)"))?;
    let mbit = bits / 1_000_000;
    if mbit == 0 {
        bail!("--link-rate {s:?}: at least 1Mbit");
    }
    Ok(Some(
        u32::try_from(mbit).map_err(|_| anyhow!("--link-rate {s:?}: too fast"))?,
    ))
}

/// Removes the run directory (sockets, logs, input) at the end.
pub(crate) struct RemoveDir(pub(crate) PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placements_put_streams_on_the_consumers() {
        let p = placement(Topology::OneToN, 3);
        assert_eq!(
            p.daemons,
            vec![(0, true, false), (1, false, true), (2, false, true)]
        );
        assert_eq!(p.streams, vec![1, 2, 1, 2]);
        let p = placement(Topology::NToN, 4);
        assert_eq!(p.streams, vec![0, 1, 2, 3]);
        assert!(p.daemons.iter().all(|d| d.1 && d.2));
        let p = placement(Topology::NToOne, 3);
        assert_eq!(p.streams, vec![0; 4]);
        assert_eq!(p.daemons.iter().filter(|d| d.1).count(), 2);
        let p = placement(Topology::Local1x1, 3);
        assert_eq!(p.daemons, vec![(0, true, true)]);
    }

    #[test]
    fn limits_follow_the_placement() {
        let caps = vec![
            NodeCaps {
                egress_gbit: 1.0,
                ingress_gbit: 1.0,
            };
            3
        ];
        let l = |t| topology_limit(t, &placement(t, 3), &caps, 30.0);
        assert_eq!(l(Topology::Local1x1), 30.0);
        assert!((l(Topology::Distant1x1) - 1.0).abs() < 1e-9);
        assert!((l(Topology::OneToN) - 1.0).abs() < 1e-9);
        assert!((l(Topology::NToOne) - 1.0).abs() < 1e-9);
        // 4 streams on 3 nodes: node 0 holds two (share 1/2) and bounds the job.
        let nxn = l(Topology::NToN);
        assert!(nxn > 1.0, "{nxn}");
    }

    #[test]
    fn jobs_scale_by_lines_and_link_rates_parse() {
        let b = JobShape::reference("B", 0.02).unwrap();
        assert_eq!((b.width, b.height), (36000, 720));
        assert_eq!(b.bytes(), 36000 * 720 * 4);
        // Never below 64 MiB: B at 0.001 keeps 467 lines; A (36 MB in all) stays whole.
        assert_eq!(JobShape::reference("B", 0.001).unwrap().height, 467);
        assert_eq!(JobShape::reference("A", 0.05).unwrap().height, 3000);
        assert!(JobShape::reference("D", 0.1).is_err());
        assert_eq!(parse_link_rate("500Mbit").unwrap(), Some(500));
        assert_eq!(parse_link_rate("1Gbit").unwrap(), Some(1000));
        assert_eq!(parse_link_rate("0").unwrap(), None);
        assert!(parse_link_rate("fast").is_err());
    }
}
