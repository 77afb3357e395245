//! The report of `spate bench policy`: the JSON contract ([`Report`], one [`Run`] per job of a
//! scenario under a policy), the terminal table ([`print_table`]) and the SVG plots
//! ([`write_plots`]: delivered vs requested, predicted vs measured latency).

use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use super::cgroup::{Limit, Version};
use crate::cluster::report::{BarChart, BarGroup, LinkFigure, draw_bars, print_rows};

/// Everything one `spate bench policy` measured (`report.json`; `--json` prints it).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// The short `--quick` run.
    pub quick: bool,
    /// Nodes of the emulated cluster (the consumer and the producers).
    pub nodes: usize,
    /// The rate every interface was shaped to (Mbit/s).
    pub link_rate_mbit: Option<u32>,
    /// Target job duration (s): each job's size is its rate times this.
    pub job_seconds: f64,
    /// How the producers were made unequal.
    pub setup: Setup,
    /// What the cluster can do, measured in this run.
    pub calibration: Calibration,
    /// One entry per job of a scenario under a policy.
    pub runs: Vec<Run>,
    /// Where the files went.
    pub out_dir: String,
    /// Files written (report, plots).
    pub files: Vec<String>,
    /// Wall time of the whole benchmark (s).
    pub seconds: f64,
}

/// The cluster the scenarios ran on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Setup {
    /// The node holding every stream (consumer only).
    pub consumer: String,
    /// Its measured ingress (sum of the links into it), Gbit/s.
    pub consumer_ingress_gbit_per_s: f64,
    /// Every link measured (raw TCP, one at a time).
    pub links: Vec<LinkFigure>,
    /// The cgroup interface used (`v1` or `v2`) and where.
    pub cgroup: Version,
    /// The controller's mount point.
    pub cgroup_root: String,
    /// RIP output per CPU-second, measured in this process (MB/s, 10^6 bytes).
    pub rip_mb_per_cpu_second: f64,
    /// The producers.
    pub producers: Vec<ProducerSetup>,
}

/// One producer daemon in its cgroup.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProducerSetup {
    /// Node name.
    pub name: String,
    /// The share of the consumer's ingress it was meant to compute (`--compute`).
    pub compute_share: f64,
    /// The CPU limit that gives it (quota per period).
    pub limit: Limit,
    /// CPUs that limit is (quota / period).
    pub cpus: f64,
    /// The compute rate it announced (`--compute-rate`; seeds the scheduler's estimate).
    pub announced_gbit_per_s: f64,
    /// The scheduler's compute estimate for the RIP after the calibration job (Gbit/s).
    pub estimated_gbit_per_s: Option<f64>,
    /// Where that estimate came from ("measured", "announced", "default").
    pub estimate_source: Option<String>,
    /// Its share of the calibration job's throughput (its share of the tasks), Gbit/s.
    pub calibration_gbit_per_s: f64,
    /// Periods and throttled periods of its cgroup at the end (`cpu.stat`).
    pub throttled_periods: Option<(u64, u64)>,
}

/// The unconstrained job that measures what the cluster can do (and warms the scheduler's
/// estimates).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    /// The policy it ran under.
    pub policy: String,
    /// Delivered (every stream read as fast as possible), Gbit/s: what the cluster can do.
    pub gbit_per_s: f64,
    /// Job bytes.
    pub bytes: u64,
    /// Submission to the last byte read (s).
    pub seconds: f64,
    /// Chunk bytes (all channels).
    pub chunk_bytes: u64,
    /// Every stream verified.
    pub verified: bool,
    /// The scheduler's highest feasible job rate right after it (a plan for an impossible
    /// rate), Gbit/s.
    pub scheduler_max_feasible_gbit_per_s: Option<f64>,
    /// That over the measured figure.
    pub scheduler_vs_measured: Option<f64>,
    /// Chunk latency p50 and p99 (ms).
    pub latency_p50_ms: Option<f64>,
    /// p99 (ms).
    pub latency_p99_ms: Option<f64>,
    /// The scheduler's estimates of the producers right after it.
    pub estimates_after: Vec<Estimate>,
}

/// Warnings kept per run (a re-planning job may warn every few hundred ms).
pub const MAX_WARNINGS: usize = 10;

/// Why a job was refused.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Refusal {
    /// The refusal's kind (`infeasible`, `insufficient_capacity`, ...).
    pub kind: String,
    /// The binding constraint of an infeasible job (`compute`, `links`, `memory`, `latency`).
    pub constraint: Option<String>,
    /// The highest job rate the scheduler could give now (Gbit/s), when it says.
    pub max_feasible_gbit_per_s: Option<f64>,
    /// That over the calibration's measured throughput.
    pub max_feasible_vs_calibration: Option<f64>,
    /// The scheduler's message.
    pub message: String,
}

/// What the scheduler estimated of a producer after a run (`spate status`'s capacities).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Estimate {
    /// The producer.
    pub node: String,
    /// RIP output rate while computing, Gbit/s.
    pub compute_gbit_per_s: f64,
    /// Fixed cost per chunk, ms.
    pub compute_overhead_ms: f64,
    /// Tasks measured.
    pub samples: u64,
    /// "measured", "announced" or "default".
    pub source: String,
    /// Its link estimate to the consumer, Gbit/s (none before a piece was measured).
    pub link_gbit_per_s: Option<f64>,
}

/// A producer slowed mid-job (S5).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Slowdown {
    /// The producer.
    pub node: String,
    /// CPUs before and after the cut.
    pub cpus_before: f64,
    /// After.
    pub cpus_after: f64,
    /// Share of the job's bytes read when the quota was cut.
    pub at_read_fraction: f64,
    /// Seconds after submission.
    pub at_seconds: f64,
}

/// One job of a scenario under one policy. The keys up to `verified` are the contract of issue
/// 11; the rest are for reading the figures.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Run {
    /// `S1` … `S5`.
    pub scenario: String,
    /// `tclo` or `load-balance`.
    pub policy: String,
    /// The job rate asked for (every stream's rate × streams), Gbit/s; null without a rate.
    pub requested_gbit_per_s: Option<f64>,
    /// Whether the scheduler admitted it.
    pub admitted: bool,
    /// Why not (null when admitted).
    pub refusal: Option<Refusal>,
    /// What the readers got: the sum over streams of bytes over the time from each reader's
    /// first byte to its end, Gbit/s (null when refused).
    pub delivered_gbit_per_s: Option<f64>,
    /// Delivered over requested, percent (null without a rate or when refused).
    pub delivered_pct: Option<f64>,
    /// Blocks not there when a constant-rate reader wanted them, all streams.
    pub starvations: Option<u64>,
    /// Time the readers waited for those blocks (s).
    pub starved_s: Option<f64>,
    /// The plan's predicted throughput, Gbit/s (null: the policy predicts none).
    pub predicted_gbit_per_s: Option<f64>,
    /// The plan's predicted chunk latency, ms (null: none).
    pub predicted_latency_ms: Option<f64>,
    /// The bound asked for, ms.
    pub latency_bound_ms: Option<f64>,
    /// Measured chunk latency p50 (task created → released in order), ms.
    pub latency_p50_ms: Option<f64>,
    /// p99, ms.
    pub latency_p99_ms: Option<f64>,
    /// Producers that computed tasks while the job ran (for S4, while any job of it ran).
    pub producers_used: Vec<String>,
    /// Every stream read to its end with exactly its length and the digest of a sequential
    /// RIP; null when nothing was admitted, so nothing could be read.
    pub verified: Option<bool>,
    /// Which job of the scenario (S4 has three).
    pub job: u32,
    /// The producers the plan named (empty: every producer on demand).
    pub producers_planned: Vec<String>,
    /// Chunk bytes (all channels).
    pub chunk_bytes: Option<u64>,
    /// Chunks in flight the plan allows.
    pub window_chunks: Option<u64>,
    /// The largest stream's prefill, bytes.
    pub prefill_bytes: Option<u64>,
    /// Job bytes.
    pub bytes: u64,
    /// Submission to the last byte read (s).
    pub seconds: Option<f64>,
    /// Chunk latency p90 and max, ms.
    pub latency_p90_ms: Option<f64>,
    /// Largest chunk latency, ms.
    pub latency_max_ms: Option<f64>,
    /// Chunks the latencies are from.
    pub chunks: Option<u64>,
    /// How the job ended (`completed`, `aborted: ...`, `cancelled`).
    pub outcome: Option<String>,
    /// Warnings the scheduler sent (the promise at risk): the first [`MAX_WARNINGS`].
    pub warnings: Vec<String>,
    /// How many warnings it sent in all.
    pub warnings_total: usize,
    /// Straggling tasks redone elsewhere.
    pub duplicated: u64,
    /// S5: the producer slowed mid-job.
    pub slowed: Option<Slowdown>,
    /// The scheduler's estimates of the producers after the run.
    pub estimates_after: Vec<Estimate>,
    /// Why the run failed (a bench or cluster error, not a refusal).
    pub error: Option<String>,
}

impl Run {
    /// A run with no figures yet.
    pub fn new(scenario: &str, policy: &str, job: u32) -> Run {
        Run {
            scenario: scenario.into(),
            policy: policy.into(),
            requested_gbit_per_s: None,
            admitted: false,
            refusal: None,
            delivered_gbit_per_s: None,
            delivered_pct: None,
            starvations: None,
            starved_s: None,
            predicted_gbit_per_s: None,
            predicted_latency_ms: None,
            latency_bound_ms: None,
            latency_p50_ms: None,
            latency_p99_ms: None,
            producers_used: vec![],
            verified: None,
            job,
            producers_planned: vec![],
            chunk_bytes: None,
            window_chunks: None,
            prefill_bytes: None,
            bytes: 0,
            seconds: None,
            latency_p90_ms: None,
            latency_max_ms: None,
            chunks: None,
            outcome: None,
            warnings: vec![],
            warnings_total: 0,
            duplicated: 0,
            slowed: None,
            estimates_after: vec![],
            error: None,
        }
    }

    /// The label of a run in tables and plots: `S4 tclo #2`.
    pub fn label(&self) -> String {
        let p = if self.policy == "load-balance" {
            "lb"
        } else {
            self.policy.as_str()
        };
        if self.scenario == "S4" {
            format!("{} {p} #{}", self.scenario, self.job)
        } else {
            format!("{} {p}", self.scenario)
        }
    }

    /// Whether the run is what the bench asked for: admitted and verified, or refused with a
    /// reason; and no bench or cluster error.
    pub fn ok(&self) -> bool {
        self.error.is_none()
            && if self.admitted {
                self.verified == Some(true)
            } else {
                self.refusal.is_some()
            }
    }
}

fn opt(v: Option<f64>, decimals: usize) -> String {
    v.map_or("-".into(), |x| format!("{x:.decimals$}"))
}

/// The report as text: the setup, the calibration, then one row per run.
pub fn print_table(r: &Report, out: &mut dyn Write) -> io::Result<()> {
    let link = r
        .link_rate_mbit
        .map_or("unshaped links".to_owned(), |m| format!("links {m} Mbit/s"));
    writeln!(
        out,
        "spate bench policy: {} nodes, {link}, jobs of ~{} s{}, {:.1} s",
        r.nodes,
        r.job_seconds,
        if r.quick { " (quick)" } else { "" },
        r.seconds
    )?;
    let s = &r.setup;
    writeln!(
        out,
        "consumer {} (ingress {:.3} Gbit/s measured); RIP {:.0} MB per CPU-second; cgroup {} at {}",
        s.consumer,
        s.consumer_ingress_gbit_per_s,
        s.rip_mb_per_cpu_second,
        match s.cgroup {
            Version::V1 => "v1",
            Version::V2 => "v2",
        },
        s.cgroup_root
    )?;
    for p in &s.producers {
        writeln!(
            out,
            "  producer {}: {:.4} CPU ({} us per {} us), meant for {:.2} of the ingress ({:.3} \
             Gbit/s announced); did {:.3} Gbit/s of the calibration; estimate {} Gbit/s ({})",
            p.name,
            p.cpus,
            p.limit.quota_us,
            p.limit.period_us,
            p.compute_share,
            p.announced_gbit_per_s,
            p.calibration_gbit_per_s,
            opt(p.estimated_gbit_per_s, 3),
            p.estimate_source.as_deref().unwrap_or("-"),
        )?;
    }
    let c = &r.calibration;
    writeln!(
        out,
        "calibration ({}, unconstrained, chunks of {} B): {:.3} Gbit/s = what the cluster can do \
         ({}); the scheduler's highest feasible rate then: {} Gbit/s ({} of it)",
        c.policy,
        c.chunk_bytes,
        c.gbit_per_s,
        if c.verified {
            "verified"
        } else {
            "NOT verified"
        },
        opt(c.scheduler_max_feasible_gbit_per_s, 3),
        opt(c.scheduler_vs_measured, 2),
    )?;
    writeln!(out)?;
    let mut rows = vec![
        [
            "run",
            "requested",
            "admitted",
            "delivered",
            "%",
            "starv",
            "starved s",
            "pred Gbit/s",
            "pred ms",
            "bound ms",
            "p50 ms",
            "p99 ms",
            "producers",
            "verified",
        ]
        .map(str::to_owned)
        .to_vec(),
    ];
    let mut notes = Vec::new();
    for run in &r.runs {
        let admitted = match (&run.refusal, run.admitted) {
            (_, true) => "yes".to_owned(),
            (Some(f), false) => format!(
                "no ({})",
                f.constraint.clone().unwrap_or_else(|| f.kind.clone())
            ),
            (None, false) => "no".to_owned(),
        };
        rows.push(vec![
            run.label(),
            opt(run.requested_gbit_per_s, 3),
            admitted,
            opt(run.delivered_gbit_per_s, 3),
            opt(run.delivered_pct, 1),
            run.starvations.map_or("-".into(), |n| n.to_string()),
            opt(run.starved_s, 3),
            opt(run.predicted_gbit_per_s, 3),
            opt(run.predicted_latency_ms, 1),
            opt(run.latency_bound_ms, 0),
            opt(run.latency_p50_ms, 1),
            opt(run.latency_p99_ms, 1),
            if run.producers_used.is_empty() {
                "-".into()
            } else {
                run.producers_used.join(",")
            },
            match run.verified {
                Some(true) => "✓".into(),
                Some(false) => "✗".into(),
                None => "-".into(),
            },
        ]);
        if let Some(f) = &run.refusal {
            notes.push(format!(
                "{}: refused: {} (at most {} Gbit/s, {} of the calibration)",
                run.label(),
                f.message,
                opt(f.max_feasible_gbit_per_s, 3),
                opt(f.max_feasible_vs_calibration, 2)
            ));
        }
        if let Some(sd) = &run.slowed {
            notes.push(format!(
                "{}: {} cut from {:.4} to {:.4} CPU at {:.0} % read ({:.1} s)",
                run.label(),
                sd.node,
                sd.cpus_before,
                sd.cpus_after,
                100.0 * sd.at_read_fraction,
                sd.at_seconds
            ));
        }
        if let Some(w) = run.warnings.first() {
            let more = match run.warnings_total {
                0 | 1 => String::new(),
                n => format!(
                    " ({} warnings in all, the last kept: {})",
                    n,
                    run.warnings.last().map_or("", String::as_str)
                ),
            };
            notes.push(format!("{}: warning: {w}{more}", run.label()));
        }
        if let Some(e) = &run.error {
            notes.push(format!("{}: error: {e}", run.label()));
        }
    }
    let mut right = vec![true; 14];
    right[0] = false;
    right[2] = false;
    right[12] = false;
    right[13] = false;
    print_rows(out, &rows, &right)?;
    if !notes.is_empty() {
        writeln!(out)?;
        for n in notes {
            writeln!(out, "  {n}")?;
        }
    }
    writeln!(out)?;
    writeln!(out, "files written in {}", r.out_dir)?;
    for f in &r.files {
        writeln!(out, "  {f}")?;
    }
    Ok(())
}

/// `delivered.svg` (delivered, and requested beside it, per scenario and policy) and
/// `latency.svg` (measured p99 chunk latency, and the prediction beside it) in `dir`. Refused
/// runs have no bar; the note says so. Returns the files written.
pub fn write_plots(r: &Report, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let link = r
        .link_rate_mbit
        .map_or(String::new(), |m| format!(", links {m} Mbit/s"));
    let delivered: Vec<BarGroup> = r
        .runs
        .iter()
        .map(|run| BarGroup {
            label: run.label(),
            value: run.delivered_gbit_per_s.unwrap_or(0.0),
            reference: run.requested_gbit_per_s.unwrap_or(f64::NAN),
            note: if !run.admitted {
                "refused".into()
            } else if run.error.is_some() {
                "failed".into()
            } else {
                run.delivered_pct
                    .map_or(String::new(), |p| format!("{p:.0}%"))
            },
        })
        .collect();
    let mut files = Vec::new();
    let path = dir.join("delivered.svg");
    draw_bars(
        &path,
        &BarChart {
            title: format!(
                "Delivered vs requested ({} nodes{link}; cluster does {:.2} Gbit/s)",
                r.nodes, r.calibration.gbit_per_s
            ),
            value_name: "delivered",
            reference_name: "requested",
            y_desc: "Gbit/s",
        },
        &delivered,
    )?;
    files.push(path);
    let latency: Vec<BarGroup> = r
        .runs
        .iter()
        .map(|run| BarGroup {
            label: run.label(),
            value: run.latency_p99_ms.unwrap_or(0.0),
            reference: run.predicted_latency_ms.unwrap_or(f64::NAN),
            note: match (run.admitted, run.latency_bound_ms) {
                (false, _) => "refused".into(),
                (true, Some(b)) => format!("bound {b:.0}"),
                (true, None) => String::new(),
            },
        })
        .collect();
    let path = dir.join("latency.svg");
    draw_bars(
        &path,
        &BarChart {
            title: format!(
                "Chunk latency p99: measured vs predicted ({} nodes{link})",
                r.nodes
            ),
            value_name: "measured p99",
            reference_name: "predicted",
            y_desc: "ms",
        },
        &latency,
    )?;
    files.push(path);
    Ok(files)
}

/// `r` as pretty JSON in `dir/report.json`; returns its path.
pub fn write_report(r: &Report, dir: &Path) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join("report.json");
    let write = || -> anyhow::Result<()> {
        let mut f = BufWriter::new(std::fs::File::create(&path)?);
        serde_json::to_writer_pretty(&mut f, r)?;
        f.write_all(b"\n")?;
        f.flush()?;
        Ok(())
    };
    write().with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The keys issue 11 asks of every run, in its order.
    pub const CONTRACT: [&str; 16] = [
        "scenario",
        "policy",
        "requested_gbit_per_s",
        "admitted",
        "refusal",
        "delivered_gbit_per_s",
        "delivered_pct",
        "starvations",
        "starved_s",
        "predicted_gbit_per_s",
        "predicted_latency_ms",
        "latency_bound_ms",
        "latency_p50_ms",
        "latency_p99_ms",
        "producers_used",
        "verified",
    ];

    fn sample() -> Report {
        let mut s1 = Run::new("S1", "tclo", 1);
        s1.requested_gbit_per_s = Some(0.5);
        s1.admitted = true;
        s1.delivered_gbit_per_s = Some(0.499);
        s1.delivered_pct = Some(99.8);
        s1.starvations = Some(0);
        s1.starved_s = Some(0.0);
        s1.predicted_gbit_per_s = Some(0.5);
        s1.predicted_latency_ms = Some(20.0);
        s1.latency_p50_ms = Some(12.0);
        s1.latency_p99_ms = Some(24.5);
        s1.producers_used = vec!["n1".into(), "n2".into()];
        s1.verified = Some(true);
        let mut s2 = Run::new("S2", "tclo", 1);
        s2.requested_gbit_per_s = Some(0.8);
        s2.refusal = Some(Refusal {
            kind: "infeasible".into(),
            constraint: Some("compute".into()),
            max_feasible_gbit_per_s: Some(0.6),
            max_feasible_vs_calibration: Some(0.97),
            message: "cannot promise 0.8 Gbit/s (compute): at most 0.6".into(),
        });
        let mut s4 = Run::new("S4", "load-balance", 3);
        s4.admitted = true;
        s4.verified = Some(false);
        s4.delivered_gbit_per_s = Some(0.2);
        s4.requested_gbit_per_s = Some(0.25);
        s4.delivered_pct = Some(80.0);
        s4.warnings = vec!["n1 slowed".into(), "n1 slower".into()];
        s4.warnings_total = 7;
        Report {
            quick: true,
            nodes: 3,
            link_rate_mbit: Some(500),
            job_seconds: 5.0,
            setup: Setup {
                consumer: "n0".into(),
                consumer_ingress_gbit_per_s: 0.95,
                links: vec![],
                cgroup: Version::V1,
                cgroup_root: "/sys/fs/cgroup/cpu".into(),
                rip_mb_per_cpu_second: 1000.0,
                producers: vec![ProducerSetup {
                    name: "n1".into(),
                    compute_share: 0.5,
                    limit: Limit {
                        quota_us: 1200,
                        period_us: 20000,
                    },
                    cpus: 0.06,
                    announced_gbit_per_s: 0.475,
                    estimated_gbit_per_s: Some(0.41),
                    estimate_source: Some("measured".into()),
                    calibration_gbit_per_s: 0.4,
                    throttled_periods: Some((100, 80)),
                }],
            },
            calibration: Calibration {
                policy: "load-balance".into(),
                gbit_per_s: 0.62,
                bytes: 1 << 28,
                seconds: 4.0,
                chunk_bytes: 4 << 20,
                verified: true,
                scheduler_max_feasible_gbit_per_s: Some(0.6),
                scheduler_vs_measured: Some(0.97),
                latency_p50_ms: Some(100.0),
                latency_p99_ms: Some(300.0),
                estimates_after: vec![Estimate {
                    node: "n1".into(),
                    compute_gbit_per_s: 0.41,
                    compute_overhead_ms: 0.2,
                    samples: 40,
                    source: "measured".into(),
                    link_gbit_per_s: Some(0.9),
                }],
            },
            runs: vec![s1, s2, s4],
            out_dir: "/tmp/x".into(),
            files: vec!["report.json".into()],
            seconds: 100.0,
        }
    }

    #[test]
    fn runs_carry_the_contract_keys_first_and_round_trip() {
        let r = sample();
        let v = serde_json::to_value(&r).unwrap();
        for run in v["runs"].as_array().unwrap() {
            let keys: Vec<&str> = run
                .as_object()
                .unwrap()
                .keys()
                .map(|k| k.as_str())
                .collect();
            for k in CONTRACT {
                assert!(keys.contains(&k), "{k} missing: {run}");
            }
        }
        assert_eq!(v["runs"][1]["refusal"]["constraint"], "compute");
        assert_eq!(v["runs"][1]["verified"], serde_json::Value::Null);
        assert_eq!(
            v["runs"][1]["delivered_gbit_per_s"],
            serde_json::Value::Null
        );
        assert_eq!(v["setup"]["cgroup"], "v1");
        let back: Report = serde_json::from_value(v).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn ok_means_verified_when_admitted_and_a_reason_when_refused() {
        let r = sample();
        assert!(r.runs[0].ok());
        assert!(r.runs[1].ok());
        assert!(!r.runs[2].ok());
        let mut bare = Run::new("S2", "tclo", 1);
        assert!(!bare.ok(), "refused without a reason");
        bare.admitted = true;
        bare.verified = Some(true);
        bare.error = Some("reader died".into());
        assert!(!bare.ok());
    }

    #[test]
    fn table_and_plots_name_every_run() {
        let r = sample();
        let mut out = Vec::new();
        print_table(&r, &mut out).unwrap();
        let t = String::from_utf8(out).unwrap();
        let line = |p: &str| {
            t.lines()
                .find(|l| l.starts_with(p))
                .unwrap_or_else(|| panic!("no {p:?} in\n{t}"))
                .to_owned()
        };
        let s1 = line("S1 tclo");
        for cell in [
            "0.500", "yes", "0.499", "99.8", "20.0", "24.5", "n1,n2", "✓",
        ] {
            assert!(s1.contains(cell), "{cell:?} not in {s1:?}");
        }
        assert!(line("S2 tclo").contains("no (compute)"));
        assert!(line("S4 lb #3").contains("✗"));
        assert!(t.contains("S2 tclo: refused: cannot promise"));
        assert!(t.contains("(at most 0.600 Gbit/s, 0.97 of the calibration)"));
        assert!(t.contains(
            "S4 lb #3: warning: n1 slowed (7 warnings in all, the last kept: n1 slower)"
        ));
        assert!(t.contains("producer n1: 0.0600 CPU (1200 us per 20000 us)"));

        let dir = tempfile::tempdir().unwrap();
        let files = write_plots(&r, dir.path()).unwrap();
        assert_eq!(files.len(), 2);
        let d = std::fs::read_to_string(&files[0]).unwrap();
        for label in [
            "S1 tclo",
            "S2 tclo",
            "S4 lb #3",
            "refused",
            "100%",
            "requested",
        ] {
            assert!(d.contains(label), "{label:?} not in delivered.svg");
        }
        let l = std::fs::read_to_string(&files[1]).unwrap();
        assert!(l.contains("predicted") && l.contains("measured p99"));
        let p = write_report(&r, dir.path()).unwrap();
        let back: Report = serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap();
        assert_eq!(back, r);
    }
}
