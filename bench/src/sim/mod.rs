//! `spate sim`: a discrete-event simulation of a cluster running the reference jobs, with the
//! REAL scheduler core deciding (see [`engine`]); it reproduces the reference cluster's setup,
//! predicts larger clusters and faster links, and (`--validate`) simulates the emulated
//! cluster of `spate bench cluster` to compare with one of its reports.
//!
//! This crate only reaches the core through its public interface
//! ([`spate_scheduler::core::Scheduler::handle`], its events and commands): it lives in
//! another crate, so nothing private is reachable.

pub mod engine;
pub mod net;

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use crate::cluster::limits::{self, NodeCaps, Topology};
use crate::cluster::report::{BarChart, BarGroup, Percentiles, draw_bars, percentiles};
use engine::{Outcome, Setup, node_name, simulate};

/// TCP/IP payload over Ethernet at MTU 1500, as a share of the line rate: the reference's
/// 9.466 Gbit/s on 10 GbE.
pub const PAYLOAD_SHARE: f64 = 0.9466;

/// Arguments of `spate sim`.
#[derive(clap::Args, Debug, Clone)]
#[command(
    after_help = "Examples:\n  spate sim\n  spate sim --json --out results/ --seed 7\n  \
spate sim --validate --against spate-bench-cluster/report.json"
)]
pub struct Args {
    /// Seed of the jitter on compute times and link delays.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Jitter (fraction) of compute times and link delays.
    #[arg(long, default_value_t = 0.02)]
    pub jitter: f64,
    /// Policies to run: tclo, load-balance.
    #[arg(long, value_delimiter = ',', default_value = "tclo,load-balance")]
    pub policies: Vec<String>,
    /// Cluster sizes predicted.
    #[arg(long, value_delimiter = ',', default_value = "16,32,64")]
    pub nodes: Vec<usize>,
    /// Link line rates predicted, Gbit/s.
    #[arg(long, value_delimiter = ',', default_value = "10,25,100")]
    pub links: Vec<f64>,
    /// Jobs of the predictions (A, B, C).
    #[arg(long, value_delimiter = ',', default_value = "B")]
    pub predict_jobs: Vec<String>,
    /// Kernel: null (compute off, the reference's Figure 4) or rip (compute on, Figure 5)
    /// at `--rip-gbit` per producer.
    #[arg(long, default_value = "null")]
    pub kernel: String,
    /// Compute rate of one producer with the rip kernel, Gbit/s of output.
    #[arg(long, default_value_t = 1.9)]
    pub rip_gbit: f64,
    /// One-way link delay, microseconds.
    #[arg(long, default_value_t = 50.0)]
    pub delay_us: f64,
    /// One-way control message delay, microseconds.
    #[arg(long, default_value_t = 100.0)]
    pub ctrl_delay_us: f64,
    /// Kernel (socket) cost per byte on each side, nanoseconds (0: none).
    #[arg(long, default_value_t = 0.0)]
    pub kernel_ns_per_byte: f64,
    /// Local transfer (memory copy) rate, Gbit/s.
    #[arg(long, default_value_t = 80.0)]
    pub local_gbit: f64,
    /// Skip the reference and the predictions; simulate the emulated cluster of
    /// `spate bench cluster` (3 nodes, 0.5 Gbit/s links, jobs B and C, every topology).
    #[arg(long)]
    pub validate: bool,
    /// A `spate bench cluster --json` report to compare the validation with.
    #[arg(long, requires = "validate")]
    pub against: Option<PathBuf>,
    /// Output directory for report.json and the plots.
    #[arg(long, default_value = "spate-sim")]
    pub out: PathBuf,
    /// Print the report as one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// One simulated run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SimRun {
    /// "reference", "predict" or "validate".
    pub set: String,
    /// The topology.
    pub topology: Topology,
    /// Nodes in the cluster.
    pub nodes: usize,
    /// Line rate of a link, Gbit/s.
    pub link_gbit: f64,
    /// The job.
    pub job: String,
    /// The kernel.
    pub kernel: String,
    /// The policy.
    pub policy: String,
    /// Streams (channels) of the job.
    pub channels: usize,
    /// Job bytes.
    pub bytes: u64,
    /// Simulated seconds, submit to release.
    pub sim_seconds: f64,
    /// Job bytes over simulated seconds.
    pub sim_gbit_per_s: f64,
    /// The topology's limit (cluster::limits, from the simulated capacities).
    #[serde(with = "unbounded")]
    pub limit_gbit_per_s: f64,
    /// Simulated over limit.
    pub ratio: f64,
    /// Chunk latency (task created → done at the scheduler), µs.
    pub chunk_latency_us: Percentiles,
    /// Events the core handled.
    pub events: u64,
    /// Commands it gave.
    pub commands: u64,
    /// Wall seconds inside the core per simulated second (not deterministic: a timing).
    pub sched_cpu_s_per_sim_s: f64,
    /// Largest chunk-buffer memory one producer held, bytes.
    pub producer_memory_peak_bytes: u64,
    /// Pieces sent (flows).
    pub flows: u64,
    /// Why the run has no figure (refused, or not finished within the horizon).
    pub error: Option<String>,
}

mod unbounded {
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        if v.is_finite() {
            s.serialize_f64(*v)
        } else {
            s.serialize_none()
        }
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::INFINITY))
    }
}

/// A simulated run beside the measured one of a `bench cluster` report.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Validation {
    /// The topology.
    pub topology: Topology,
    /// The job.
    pub job: String,
    /// The kernel.
    pub kernel: String,
    /// Simulated throughput.
    pub sim_gbit_per_s: f64,
    /// Measured throughput (None: no such run in the report).
    pub measured_gbit_per_s: Option<f64>,
    /// Simulated over measured throughput.
    pub throughput_ratio: Option<f64>,
    /// Simulated chunk latency p50, µs.
    pub sim_chunk_p50_us: u64,
    /// Measured chunk latency p50, µs.
    pub measured_chunk_p50_us: Option<u64>,
    /// Simulated over measured chunk latency p50.
    pub latency_ratio: Option<f64>,
}

/// Everything one `spate sim` run gave (`report.json`; `--json` prints it).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Seed and jitter.
    pub seed: u64,
    /// Jitter fraction.
    pub jitter: f64,
    /// The runs.
    pub runs: Vec<SimRun>,
    /// The validation against a `bench cluster` report (with `--validate`).
    pub validation: Vec<Validation>,
    /// The report compared with, if any.
    pub against: Option<String>,
    /// Files written.
    pub files: Vec<String>,
}

/// A reference job: `side` × `side` pixels of 8 bits per channel (DESIGN.md §8), or a scaled
/// height.
#[derive(Debug, Clone)]
pub struct Shape {
    /// The job's name.
    pub name: String,
    /// Pixels per line.
    pub width: u64,
    /// Lines.
    pub height: u64,
}

impl Shape {
    /// Job A, B or C at full size.
    pub fn reference(name: &str) -> anyhow::Result<Shape> {
        let side = match name {
            "A" => 3000,
            "B" => 36000,
            "C" => 120_000,
            other => anyhow::bail!("unknown job {other:?}: the reference jobs are A, B and C"),
        };
        Ok(Shape {
            name: name.into(),
            width: side,
            height: side,
        })
    }
}

/// Which nodes run producers and where each of `channels` streams goes, as `bench cluster`
/// places them (stream s on the s-th consumer in turn).
pub fn placement(t: Topology, h: usize, channels: usize) -> (Vec<usize>, Vec<usize>) {
    let (producers, consumers): (Vec<usize>, Vec<usize>) = match t {
        Topology::Local1x1 => (vec![0], vec![0]),
        Topology::Distant1x1 => (vec![0], vec![1]),
        Topology::OneToN => (vec![0], (1..h).collect()),
        Topology::NToOne => ((1..h).collect(), vec![0]),
        Topology::NToN => ((0..h).collect(), (0..h).collect()),
    };
    let streams = (0..channels)
        .map(|s| consumers[s % consumers.len()])
        .collect();
    (producers, streams)
}

/// The spec of `shape` with `channels` streams on `streams`, chunks of `chunk_lines` (None:
/// the policy picks).
pub fn spec(
    shape: &Shape,
    kernel: &str,
    policy: &str,
    channels: usize,
    streams: &[usize],
    chunk_lines: Option<u64>,
) -> String {
    let mut s = format!(
        "name = \"{}\"\nkernel = \"{kernel}\"\nwidth = {}\nheight = {}\nbits = 8\n\
         channels = {channels}\nsplit = \"channel\"\npolicy = \"{policy}\"\n",
        shape.name, shape.width, shape.height
    );
    if let Some(l) = chunk_lines {
        s.push_str(&format!("chunk = {{ lines = {l} }}\n"));
    }
    for &c in streams {
        s.push_str(&format!("\n[[stream]]\nnode = \"{}\"\n", node_name(c)));
    }
    s
}

/// The limit of a topology (Gbit/s), from the node capacity `cap_gbit` as `bench cluster`
/// computes it ([`limits::limit`]); the compute limit too when producers compute.
pub fn limit(
    t: Topology,
    nodes: usize,
    producers: &[usize],
    streams: &[usize],
    cap_gbit: f64,
    local_gbit: f64,
    compute_gbit: Option<f64>,
) -> f64 {
    let net = if t == Topology::Local1x1 {
        local_gbit
    } else {
        let share = |n: usize| {
            streams.iter().filter(|&&c| c == n).count() as f64 / streams.len().max(1) as f64
        };
        let used: Vec<limits::Placement> = (0..nodes)
            .filter(|n| producers.contains(n) || streams.contains(n))
            .map(|n| limits::Placement {
                caps: NodeCaps::symmetric(cap_gbit),
                producer: producers.contains(&n),
                share: share(n),
            })
            .collect();
        limits::limit(&used)
    };
    match compute_gbit {
        Some(c) => net.min(c * producers.len() as f64),
        None => net,
    }
}

/// The shared settings of every run.
struct Common {
    seed: u64,
    jitter: f64,
    kernel: String,
    rip_gbit: f64,
    delay_s: f64,
    ctrl_delay_s: f64,
    kernel_s_per_byte: f64,
}

/// One run's configuration.
pub struct Case {
    set: &'static str,
    topology: Topology,
    nodes: usize,
    link_gbit: f64,
    /// Payload capacity per node, Gbit/s.
    cap_gbit: f64,
    interfaces: usize,
    shape: Shape,
    channels: usize,
    /// Chunk lines in the spec (None: the policy picks).
    chunk_lines: Option<u64>,
    policy: String,
    local_gbit: f64,
}

fn run_case(c: &Case, k: &Common) -> anyhow::Result<SimRun> {
    let (producers, streams) = placement(c.topology, c.nodes, c.channels);
    let compute_gbit = (k.kernel == "rip").then_some(k.rip_gbit);
    let setup = Setup {
        nodes: c.nodes,
        producers: producers.clone(),
        streams: streams.clone(),
        nic_bps: c.cap_gbit * 1e9 / 8.0,
        interfaces: c.interfaces,
        delay_s: k.delay_s,
        local_bps: c.local_gbit * 1e9 / 8.0,
        kernel_s_per_byte: k.kernel_s_per_byte,
        compute_bps: compute_gbit.map(|g| g * 1e9 / 8.0),
        chunk_overhead_s: 0.0,
        ctrl_delay_s: k.ctrl_delay_s,
        // Three input files of 80 Mbit in all (the reference's §5.4).
        preload_bytes: if k.kernel == "rip" { 10e6 } else { 0.0 },
        producer_memory: 16 << 30,
        consumer_memory: 64 << 30,
        spec: spec(
            &c.shape,
            &k.kernel,
            &c.policy,
            c.channels,
            &streams,
            c.chunk_lines,
        ),
        jitter: k.jitter,
        seed: k.seed,
        horizon_s: 3600.0,
    };
    let o: Outcome = simulate(&setup)?;
    let limit = limit(
        c.topology,
        c.nodes,
        &producers,
        &streams,
        c.cap_gbit,
        c.local_gbit,
        compute_gbit,
    );
    let error = match (&o.refused, &o.end) {
        (Some(r), _) => Some(format!("refused: {r}")),
        (None, None) => Some("not finished within the simulated hour".into()),
        (None, Some(spate_scheduler::core::JobEnd::Completed)) => None,
        (None, Some(e)) => Some(format!("ended {e:?}")),
    };
    let gbit = if error.is_none() && o.seconds > 0.0 {
        o.bytes as f64 * 8.0 / o.seconds / 1e9
    } else {
        0.0
    };
    Ok(SimRun {
        set: c.set.into(),
        topology: c.topology,
        nodes: c.nodes,
        link_gbit: c.link_gbit,
        job: c.shape.name.clone(),
        kernel: k.kernel.clone(),
        policy: c.policy.clone(),
        channels: c.channels,
        bytes: o.bytes,
        sim_seconds: o.seconds,
        sim_gbit_per_s: gbit,
        limit_gbit_per_s: limit,
        ratio: limits::ratio(gbit, limit),
        chunk_latency_us: percentiles(&o.chunk_latency_us),
        events: o.events,
        commands: o.commands,
        sched_cpu_s_per_sim_s: if o.seconds > 0.0 {
            o.sched_cpu_s / o.seconds
        } else {
            0.0
        },
        producer_memory_peak_bytes: o.producer_memory_peak,
        flows: o.flows,
        error,
    })
}

/// Chunks of at most 200 Mbit of one channel (the reference's best), whole lines.
fn reference_chunk_lines(shape: &Shape) -> u64 {
    (25_000_000 / shape.width).clamp(1, shape.height)
}

const DISTANT: [Topology; 4] = [
    Topology::Distant1x1,
    Topology::OneToN,
    Topology::NToOne,
    Topology::NToN,
];

fn cases(a: &Args) -> anyhow::Result<Vec<Case>> {
    let mut out = Vec::new();
    for p in &a.policies {
        if crate::sched::drive::scheduler(p).is_err() {
            anyhow::bail!("unknown policy {p:?}: use tclo or load-balance");
        }
    }
    // The reference: 5 nodes, one 10 GbE port per (simulated) node at 9.466 Gbit/s of
    // payload; many-to-many with one channel per node.
    for job in ["A", "B", "C"] {
        let shape = Shape::reference(job)?;
        for t in DISTANT {
            for p in &a.policies {
                let channels = if t == Topology::NToN { 5 } else { 4 };
                out.push(Case {
                    set: "reference",
                    topology: t,
                    nodes: if t == Topology::Distant1x1 { 2 } else { 5 },
                    link_gbit: 10.0,
                    cap_gbit: 10.0 * PAYLOAD_SHARE,
                    interfaces: 1,
                    chunk_lines: Some(reference_chunk_lines(&shape)),
                    shape: shape.clone(),
                    channels,
                    policy: p.clone(),
                    local_gbit: a.local_gbit,
                });
            }
        }
    }
    for &n in &a.nodes {
        if !(2..=64).contains(&n) {
            anyhow::bail!("--nodes {n}: between 2 and 64 (a job has at most 64 channels)");
        }
        for &g in &a.links {
            if !(g > 0.0 && g.is_finite()) {
                anyhow::bail!("--links {g}: a line rate in Gbit/s, more than 0");
            }
            for job in &a.predict_jobs {
                let shape = Shape::reference(job)?;
                for t in DISTANT {
                    for p in &a.policies {
                        out.push(Case {
                            set: "predict",
                            topology: t,
                            nodes: if t == Topology::Distant1x1 { 2 } else { n },
                            link_gbit: g,
                            cap_gbit: g * PAYLOAD_SHARE,
                            interfaces: 1,
                            // The policy sizes chunks for the cluster (load-balance picks
                            // 200 Mbit, as the reference; tclo what its model prefers).
                            chunk_lines: None,
                            shape: shape.clone(),
                            channels: if t == Topology::NToN { n } else { 4 },
                            policy: p.clone(),
                            local_gbit: a.local_gbit,
                        });
                    }
                }
            }
        }
    }
    Ok(out)
}

/// The emulated cluster's runs: `bench cluster`'s shapes (scale 0.05), chunk rule and
/// placement, its default policy (tclo), links from `report` when given.
fn validation_cases(
    a: &Args,
    report: Option<&crate::cluster::report::Report>,
) -> anyhow::Result<Vec<Case>> {
    let nodes = report.map_or(3, |r| r.nodes);
    // A node's capacity: its two shaped interfaces, measured (mean link) or 2 × 0.5 Gbit/s
    // at the payload share.
    let link = report
        .map(|r| &r.limits.links)
        .filter(|l| !l.is_empty())
        .map_or(0.5 * PAYLOAD_SHARE, |l| {
            l.iter().map(|x| x.gbit_per_s).sum::<f64>() / l.len() as f64
        });
    let scale = report.map_or(0.05, |r| r.scale);
    let mut out = Vec::new();
    for job in ["B", "C"] {
        let full = Shape::reference(job)?;
        let height = crate::cluster::scaled_height(job, scale)?;
        let shape = Shape { height, ..full };
        for t in Topology::ALL {
            let (producers, _) = placement(t, nodes, 4);
            let local = report
                .and_then(|r| {
                    r.limits
                        .local
                        .iter()
                        .find(|l| l.job == job && l.kernel == a.kernel)
                })
                .map_or(a.local_gbit, |l| l.limit_gbit_per_s);
            out.push(Case {
                set: "validate",
                topology: t,
                nodes,
                link_gbit: 0.5,
                cap_gbit: 2.0 * link,
                interfaces: 2,
                chunk_lines: Some(crate::cluster::chunk_lines(
                    shape.width,
                    shape.height,
                    producers.len(),
                )),
                shape: shape.clone(),
                channels: 4,
                policy: "tclo".into(),
                local_gbit: local,
            });
        }
    }
    Ok(out)
}

fn quoted(p: &Path) -> String {
    spate_netlib::text::quote(&p.display().to_string())
}

/// Runs `spate sim`; the exit code.
pub fn run(a: Args) -> anyhow::Result<i32> {
    if !(0.0..0.5).contains(&a.jitter) {
        anyhow::bail!("--jitter {}: a fraction from 0 to 0.5", a.jitter);
    }
    if a.kernel != "null" && a.kernel != "rip" {
        anyhow::bail!("--kernel {:?}: use null or rip", a.kernel);
    }
    let common = Common {
        seed: a.seed,
        jitter: a.jitter,
        kernel: a.kernel.clone(),
        rip_gbit: a.rip_gbit,
        delay_s: a.delay_us * 1e-6,
        ctrl_delay_s: a.ctrl_delay_us * 1e-6,
        kernel_s_per_byte: a.kernel_ns_per_byte * 1e-9,
    };
    let against = match &a.against {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("reading the report {}", quoted(p)))?;
            let r: crate::cluster::report::Report =
                serde_json::from_str(&text).with_context(|| {
                    format!(
                        "{} is not a `spate bench cluster --json` report",
                        p.display()
                    )
                })?;
            Some(r)
        }
        None => None,
    };
    let list = if a.validate {
        validation_cases(&a, against.as_ref())?
    } else {
        cases(&a)?
    };
    let mut runs = Vec::with_capacity(list.len());
    for (i, c) in list.iter().enumerate() {
        if !a.json {
            eprint!(
                "\rspate sim: {}/{} {} {} nodes {} Gbit/s job {} {}        ",
                i + 1,
                list.len(),
                c.topology,
                c.nodes,
                c.link_gbit,
                c.shape.name,
                c.policy
            );
        }
        runs.push(run_case(c, &common)?);
    }
    if !a.json {
        eprintln!();
    }
    let validation = if a.validate {
        runs.iter()
            .map(|r| {
                let m = against.as_ref().and_then(|rep| {
                    rep.runs.iter().find(|x| {
                        x.topology == r.topology
                            && x.job == r.job
                            && x.kernel == r.kernel
                            && x.error.is_none()
                            && x.constant_speed.is_none()
                    })
                });
                let mg = m.map(|x| x.gbit_per_s);
                let ml = m.and_then(|x| x.chunk_latency_us).map(|p| p.p50);
                Validation {
                    topology: r.topology,
                    job: r.job.clone(),
                    kernel: r.kernel.clone(),
                    sim_gbit_per_s: r.sim_gbit_per_s,
                    measured_gbit_per_s: mg,
                    throughput_ratio: mg.filter(|&g| g > 0.0).map(|g| r.sim_gbit_per_s / g),
                    sim_chunk_p50_us: r.chunk_latency_us.p50,
                    measured_chunk_p50_us: ml,
                    latency_ratio: ml
                        .filter(|&l| l > 0)
                        .map(|l| r.chunk_latency_us.p50 as f64 / l as f64),
                }
            })
            .collect()
    } else {
        Vec::new()
    };
    let mut rep = Report {
        seed: a.seed,
        jitter: a.jitter,
        runs,
        validation,
        against: a.against.as_ref().map(|p| p.display().to_string()),
        files: Vec::new(),
    };
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let mut files = write_plots(&rep, &a.out)?;
    let path = a.out.join("report.json");
    files.insert(0, path.clone());
    rep.files = files.iter().map(|p| p.display().to_string()).collect();
    std::fs::write(&path, format!("{}\n", serde_json::to_string_pretty(&rep)?))
        .with_context(|| format!("writing {}", path.display()))?;
    if a.json {
        println!("{}", serde_json::to_string(&rep)?);
    } else {
        print_table(&rep, &mut std::io::stdout())?;
    }
    Ok(0)
}

/// One plot per (set, nodes, link, policy): simulated throughput beside the limit per
/// topology and job, drawn by `bench cluster`'s bar chart.
pub fn write_plots(r: &Report, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut keys: Vec<(String, usize, String, String)> = Vec::new();
    for run in &r.runs {
        let nodes = if run.topology == Topology::Distant1x1 || run.topology == Topology::Local1x1 {
            0
        } else {
            run.nodes
        };
        let k = (
            run.set.clone(),
            nodes,
            format!("{}", run.link_gbit),
            run.policy.clone(),
        );
        if nodes > 0 && !keys.contains(&k) {
            keys.push(k);
        }
    }
    let mut files = Vec::new();
    for (set, nodes, link, policy) in keys {
        let groups: Vec<BarGroup> = r
            .runs
            .iter()
            .filter(|x| x.set == set && format!("{}", x.link_gbit) == link && x.policy == policy)
            .filter(|x| x.nodes == nodes || x.nodes <= 2)
            .filter(|x| x.error.is_none())
            .map(|x| BarGroup {
                label: format!("{} {}", x.topology, x.job),
                value: x.sim_gbit_per_s,
                reference: x.limit_gbit_per_s,
                note: if x.limit_gbit_per_s.is_finite() {
                    format!("{:.2}", x.ratio)
                } else {
                    String::new()
                },
            })
            .collect();
        if groups.is_empty() {
            continue;
        }
        let path = dir.join(format!("sim-{set}-{nodes}n-{link}g-{policy}.svg"));
        let text = BarChart {
            title: format!("Simulated throughput, {set}: {nodes} nodes, {link} GbE, {policy}"),
            value_name: "simulated",
            reference_name: "limit",
            y_desc: "Gbit/s",
        };
        draw_bars(&path, &text, &groups)?;
        files.push(path);
    }
    Ok(files)
}

/// The report as text.
pub fn print_table(r: &Report, out: &mut dyn Write) -> std::io::Result<()> {
    writeln!(
        out,
        "{:<9} {:<11} {:>5} {:>5} {:>3} {:<12} {:>9} {:>9} {:>6} {:>10} {:>10} {:>7} {:>9}",
        "set",
        "topology",
        "nodes",
        "GbE",
        "job",
        "policy",
        "sim Gb/s",
        "limit",
        "ratio",
        "chunk p50",
        "chunk p99",
        "events",
        "cpu/sim s"
    )?;
    for x in &r.runs {
        let ms = |us: u64| format!("{:.1} ms", us as f64 / 1000.0);
        writeln!(
            out,
            "{:<9} {:<11} {:>5} {:>5} {:>3} {:<12} {:>9.3} {:>9.3} {:>6.3} {:>10} {:>10} {:>7} {:>9.5}{}",
            x.set,
            x.topology.as_str(),
            x.nodes,
            x.link_gbit,
            x.job,
            x.policy,
            x.sim_gbit_per_s,
            x.limit_gbit_per_s,
            x.ratio,
            ms(x.chunk_latency_us.p50),
            ms(x.chunk_latency_us.p99),
            x.events,
            x.sched_cpu_s_per_sim_s,
            x.error
                .as_ref()
                .map_or(String::new(), |e| format!("  ({e})"))
        )?;
    }
    if !r.validation.is_empty() {
        writeln!(
            out,
            "\nvalidation{}:",
            r.against
                .as_ref()
                .map_or(String::new(), |p| format!(" against {p}"))
        )?;
        writeln!(
            out,
            "{:<11} {:>3} {:>9} {:>9} {:>7} {:>11} {:>11} {:>7}",
            "topology", "job", "sim Gb/s", "measured", "ratio", "sim p50", "meas. p50", "ratio"
        )?;
        let opt = |v: Option<f64>, d: usize| v.map_or("-".into(), |v| format!("{v:.d$}"));
        for v in &r.validation {
            writeln!(
                out,
                "{:<11} {:>3} {:>9.3} {:>9} {:>7} {:>8.1} ms {:>11} {:>7}",
                v.topology.as_str(),
                v.job,
                v.sim_gbit_per_s,
                opt(v.measured_gbit_per_s, 3),
                opt(v.throughput_ratio, 3),
                v.sim_chunk_p50_us as f64 / 1000.0,
                v.measured_chunk_p50_us
                    .map_or("-".into(), |u| format!("{:.1} ms", u as f64 / 1000.0)),
                opt(v.latency_ratio, 3)
            )?;
        }
    }
    writeln!(out, "\nreport: {}", r.files.join(", "))?;
    Ok(())
}
