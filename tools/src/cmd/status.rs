//! `spate status`: nodes and jobs as the scheduler sees them, once or `--watch`ed.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::json;
use spate_netlib::endpoint::Endpoint;
use spate_netlib::proto::{EndedJob, JobId, JobOutcome, JobStatus, Message, NodeState, NodeStatus};
use spate_scheduler::server::user::{DEFAULT_ENDPOINT, UserError};

use super::submit::state_name;

/// Version of the `--json` output; bumped when a key changes meaning or goes away (new keys
/// may appear without a bump).
pub const SCHEMA: u32 = 1;

#[derive(clap::Args, Debug)]
#[command(
    about = "Show nodes and jobs known to the scheduler (once, or --watch)",
    long_about = "Show the nodes (roles, host, cores, hugepages, interfaces, state, last seen, \
measured rates) and the live jobs (state, progress, rate, per stream: node, bytes delivered and \
read, ring fill, starvations; the stall reason when the scheduler sees one) as the scheduler \
sees them, then jobs that ended (when the scheduler keeps a history). Rates are averages since \
the job started; with --watch, the rate over the last interval.\n\n\
Who may run it: anyone who can reach the scheduler and read the cluster secret (the scheduler's \
user, or members of its --group).\n\n\
--json prints one object: {\"schema\": 1, \"jobs\": [{\"job\", \"name\", \"state\", \
\"delivered\", \"read\", \"total\", \"running_s\", \"rate_gbit_per_s\", \"stall_reason\", \
\"warning\", \"duplicated\", \"plan\": {\"policy\", \"chunk_bytes\", \"producers\", \
\"predicted_gbit_per_s\", \"predicted_latency_ms\", \"window_chunks\", \
\"requested_gbit_per_s\"}, \
\"streams\": [{\"stream\", \"node\", \"length\", \"delivered\", \"read\", \"ring_bytes\", \
\"ring_fill_bytes\", \"starvations\"}]}], \"nodes\": [{\"name\", \"producer\", \"consumer\", \
\"state\", \"host\", \"cores\", \"interfaces\", \"hugepages_total\", \"hugepages_free\", \
\"ring_budget\", \"last_seen_ms\", \"tasks_in_flight\", \"streams\", \
\"compute\": [{\"kernel\", \"bytes_per_sec\", \"overhead_us\", \"source\", \"samples\"}], \
\"links\": [{\"to\", \"bytes_per_sec\", \"overhead_us\", \"samples\"}], \"nic_bytes_per_sec\"}], \
\"ended\": [{\"job\", \"name\", \"outcome\", \
\"reason\", \"bytes\", \"read\", \"total\", \"duration_s\"}]} (null where a figure is not measured). With --watch, \
one such object per line per interval.",
    after_help = "Examples:\n  spate status\n  spate status 3 --json\n  spate status --watch 0.5"
)]
pub struct Args {
    /// Only this job.
    #[arg(value_name = "JOB")]
    pub job: Option<u64>,
    /// The scheduler: unix:PATH or tcp:HOST:PORT.
    #[arg(long, env = "SPATE_SCHEDULER", value_name = "ENDPOINT", default_value = DEFAULT_ENDPOINT)]
    pub scheduler: Endpoint,
    /// File holding the cluster secret (default: $SPATE_SECRET, or PATH.secret beside a UNIX
    /// scheduler socket).
    #[arg(long, value_name = "PATH")]
    pub secret_file: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// Refresh every SECS seconds (default 1) until interrupted or the scheduler stops.
    #[arg(long, value_name = "SECS", num_args = 0..=1, default_missing_value = "1")]
    pub watch: Option<f64>,
}

/// One answer of the scheduler.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Live jobs.
    pub jobs: Vec<JobStatus>,
    /// Nodes.
    pub nodes: Vec<NodeStatus>,
    /// Ended jobs.
    pub ended: Vec<EndedJob>,
}

pub fn run(a: Args) -> anyhow::Result<i32> {
    let mut user = super::connect_user(&a.scheduler, a.secret_file.as_deref())?;
    let mut ask = || -> Result<Result<Snapshot, String>, UserError> {
        user.request(
            &Message::Status {
                job: a.job.map(JobId),
            },
            |m| match m {
                Message::StatusReply { jobs, nodes, ended } => {
                    Some(Ok(Snapshot { jobs, nodes, ended }))
                }
                Message::Error { message, .. } => Some(Err(message)),
                _ => None,
            },
        )
    };
    let Some(every) = a.watch else {
        let snap = ask()?.map_err(|m| anyhow::anyhow!("{m}"))?;
        print(&snap, None, a.json);
        return Ok(crate::exit::OK);
    };
    if !(every.is_finite() && every >= 0.05) {
        anyhow::bail!("--watch {every}: give an interval of at least 0.05 seconds");
    }
    let every = Duration::from_secs_f64(every);
    let mut prev: Option<(Instant, Snapshot)> = None;
    loop {
        let snap = match ask() {
            Ok(r) => r.map_err(|m| anyhow::anyhow!("{m}"))?,
            Err(e @ (UserError::Lost | UserError::Shutdown(_))) => {
                eprintln!("spate status: {e}");
                return Ok(crate::exit::PEER_GONE);
            }
            Err(e) => return Err(e.into()),
        };
        let now = Instant::now();
        let since = prev.as_ref().map(|(t, s)| (now.duration_since(*t), s));
        if !a.json && std::io::IsTerminal::is_terminal(&std::io::stdout()) {
            // Clear the screen and go home (only on a terminal: a log gets plain screens).
            print!("\x1b[2J\x1b[H");
        }
        print(&snap, since, a.json);
        if !a.json {
            println!();
        }
        prev = Some((now, snap));
        std::thread::sleep(every);
    }
}

fn node_state(s: NodeState) -> &'static str {
    match s {
        NodeState::Alive => "alive",
        NodeState::Leaving => "leaving",
        NodeState::Lost => "lost",
        NodeState::Suspect => "suspect",
    }
}

fn roles(n: &NodeStatus) -> &'static str {
    match (n.roles.producer, n.roles.consumer) {
        (true, true) => "producer+consumer",
        (true, false) => "producer",
        (false, true) => "consumer",
        (false, false) => "-",
    }
}

/// Gbit/s of a job: over the last interval when there is one, else the average since start.
fn job_rate(j: &JobStatus, since: Option<(Duration, &Snapshot)>) -> Option<f64> {
    if let Some((dt, prev)) = since
        && let Some(p) = prev.jobs.iter().find(|p| p.job == j.job)
        && dt.as_secs_f64() > 0.0
    {
        let d = j.progress.delivered.saturating_sub(p.progress.delivered);
        return Some(d as f64 * 8.0 / dt.as_secs_f64() / 1e9);
    }
    let ms = j.running_ms.filter(|ms| *ms > 0)?;
    Some(j.progress.delivered as f64 * 8.0 / (ms as f64 / 1000.0) / 1e9)
}

/// The `--json` object.
pub fn to_json(s: &Snapshot, since: Option<(Duration, &Snapshot)>) -> serde_json::Value {
    let jobs: Vec<serde_json::Value> = s
        .jobs
        .iter()
        .map(|j| {
            let streams: Vec<serde_json::Value> = j
                .streams
                .iter()
                .map(|st| {
                    json!({
                        "stream": st.stream.0, "node": st.node, "length": st.length,
                        "delivered": st.delivered, "read": st.read, "ring_bytes": st.ring_bytes,
                        "ring_fill_bytes": st.delivered.saturating_sub(st.read),
                        "starvations": st.starvations,
                    })
                })
                .collect();
            json!({
                "job": j.job.0, "name": j.name, "state": state_name(&j.state),
                "delivered": j.progress.delivered, "read": j.progress.read,
                "total": j.progress.total,
                "running_s": j.running_ms.map(|ms| ms as f64 / 1000.0),
                "rate_gbit_per_s": job_rate(j, since),
                "stall_reason": j.stall_reason, "streams": streams,
                "warning": j.warning, "duplicated": j.duplicated,
                "plan": j.plan.as_deref().map(super::plan::plan_json),
            })
        })
        .collect();
    let nodes: Vec<serde_json::Value> = s
        .nodes
        .iter()
        .map(|n| {
            let ifs: Vec<String> = n
                .interfaces
                .iter()
                .map(|i| format!("{}={}", i.name, i.addr))
                .collect();
            let compute: Vec<serde_json::Value> = n
                .capacity
                .compute
                .iter()
                .map(|c| {
                    json!({"kernel": c.kernel, "bytes_per_sec": c.bytes_per_sec,
                           "overhead_us": c.overhead_us, "source": c.source,
                           "samples": c.samples})
                })
                .collect();
            let links: Vec<serde_json::Value> = n
                .capacity
                .links
                .iter()
                .map(|l| {
                    json!({"to": l.consumer, "bytes_per_sec": l.bytes_per_sec,
                           "overhead_us": l.overhead_us, "samples": l.samples})
                })
                .collect();
            json!({
                "name": n.name, "producer": n.roles.producer, "consumer": n.roles.consumer,
                "state": node_state(n.state), "host": format!("{:032x}", n.host.0),
                "cores": n.cores, "interfaces": ifs,
                "hugepages_total": n.hugepages.total, "hugepages_free": n.hugepages.free,
                "ring_budget": n.ring_budget, "last_seen_ms": n.last_seen_ms,
                "tasks_in_flight": n.tasks_in_flight, "streams": n.streams,
                "compute": compute, "links": links,
                "nic_bytes_per_sec": n.capacity.nic_bytes_per_sec,
            })
        })
        .collect();
    let ended: Vec<serde_json::Value> = s
        .ended
        .iter()
        .map(|e| {
            let (outcome, reason) = outcome(&e.outcome);
            json!({
                "job": e.job.0, "name": e.name, "outcome": outcome, "reason": reason,
                "bytes": e.bytes, "read": e.read, "total": e.total,
                "duration_s": e.duration_ms as f64 / 1000.0,
            })
        })
        .collect();
    json!({"schema": SCHEMA, "jobs": jobs, "nodes": nodes, "ended": ended})
}

fn outcome(o: &JobOutcome) -> (&'static str, Option<String>) {
    match o {
        JobOutcome::Completed => ("completed", None),
        JobOutcome::Cancelled => ("cancelled", None),
        JobOutcome::Aborted { reason } => ("aborted", Some(reason.clone())),
    }
}

fn bytes(n: u64) -> String {
    const K: f64 = 1024.0;
    let exact = spate_runtime::memlock::fmt_bytes(n);
    if !exact.ends_with(" bytes") || n < 1024 {
        return exact;
    }
    let v = n as f64;
    if v >= K * K * K {
        format!("{:.1} GiB", v / (K * K * K))
    } else if v >= K * K {
        format!("{:.1} MiB", v / (K * K))
    } else {
        format!("{:.1} KiB", v / K)
    }
}

fn pct(x: u64, of: u64) -> f64 {
    if of == 0 {
        100.0
    } else {
        x as f64 * 100.0 / of as f64
    }
}

/// The text screen.
pub fn to_text(s: &Snapshot, since: Option<(Duration, &Snapshot)>) -> String {
    use std::fmt::Write as _;
    let mut o = String::new();
    let _ = writeln!(o, "nodes: {}", s.nodes.len());
    if !s.nodes.is_empty() {
        let _ = writeln!(
            o,
            "  {:<16} {:<17} {:<7} {:<8} {:>5} {:>11} {:>5} {:>7} {:>9}",
            "NAME", "ROLES", "STATE", "HOST", "CORES", "HUGEPAGES", "TASKS", "STREAMS", "SEEN"
        );
    }
    for n in &s.nodes {
        let host = format!("{:032x}", n.host.0);
        let _ = writeln!(
            o,
            "  {:<16} {:<17} {:<7} {:<8} {:>5} {:>11} {:>5} {:>7} {:>7.1}s",
            n.name,
            roles(n),
            node_state(n.state),
            &host[..8],
            n.cores,
            format!("{}/{}", n.hugepages.free, n.hugepages.total),
            n.tasks_in_flight,
            n.streams,
            n.last_seen_ms as f64 / 1000.0
        );
        let mut extra = Vec::new();
        if !n.interfaces.is_empty() {
            let v: Vec<String> = n
                .interfaces
                .iter()
                .map(|i| format!("{}={}", i.name, i.addr))
                .collect();
            extra.push(format!("interfaces {}", v.join(", ")));
        }
        if n.roles.consumer {
            extra.push(format!("ring budget {}", bytes(n.ring_budget)));
        }
        for c in &n.capacity.compute {
            extra.push(format!(
                "compute {} {:.2} Gbit/s ({}, {} tasks)",
                c.kernel,
                c.bytes_per_sec as f64 * 8.0 / 1e9,
                c.source,
                c.samples
            ));
        }
        for l in &n.capacity.links {
            extra.push(format!(
                "link to {} {:.2} Gbit/s ({} pieces)",
                l.consumer,
                l.bytes_per_sec as f64 * 8.0 / 1e9,
                l.samples
            ));
        }
        if !extra.is_empty() {
            let _ = writeln!(o, "    {}", extra.join("; "));
        }
    }
    let _ = writeln!(o, "jobs: {}", s.jobs.len());
    for j in &s.jobs {
        let rate = job_rate(j, since).map_or("-".to_string(), |r| format!("{r:.2} Gbit/s"));
        let _ = writeln!(
            o,
            "  job {:<5} {:<16} {:<13} delivered {:5.1}%  read {:5.1}%  of {}  rate {}",
            j.job.0,
            if j.name.is_empty() { "-" } else { &j.name },
            state_name(&j.state),
            pct(j.progress.delivered, j.progress.total),
            pct(j.progress.read, j.progress.total),
            bytes(j.progress.total),
            rate
        );
        if let Some(p) = &j.plan {
            let mut line = format!("    plan: {}", p.policy);
            if let Some(r) = p.requested_bps {
                line += &format!(", asked {:.2} Gbit/s", r as f64 / 1e9);
            }
            if p.predicted_bps > 0 {
                line += &format!(", predicted {:.2} Gbit/s", p.predicted_bps as f64 / 1e9);
            }
            if p.predicted_latency_us > 0 {
                line += &format!(
                    ", chunk latency {:.1} ms",
                    p.predicted_latency_us as f64 / 1e3
                );
            }
            line += &format!(", chunks of {}", bytes(p.chunk_bytes));
            let _ = writeln!(o, "{line}");
        }
        if let Some(w) = &j.warning {
            let _ = writeln!(o, "    warning: {w}");
        }
        if let Some(r) = &j.stall_reason {
            let _ = writeln!(o, "    stalled: {r}");
        }
        for st in &j.streams {
            let fill = st.delivered.saturating_sub(st.read);
            let starv = st
                .starvations
                .map_or(String::new(), |n| format!(", {n} starvations"));
            let _ = writeln!(
                o,
                "    stream {} on {}: delivered {:5.1}%, read {:5.1}%, ring {} of {} filled ({:.0}%){}",
                st.stream.0,
                st.node,
                pct(st.delivered, st.length),
                pct(st.read, st.length),
                bytes(fill),
                bytes(st.ring_bytes),
                if st.ring_bytes == 0 {
                    0.0
                } else {
                    pct(fill.min(st.ring_bytes), st.ring_bytes)
                },
                starv
            );
        }
    }
    if s.ended.is_empty() {
        let _ = writeln!(o, "ended jobs: none kept by this scheduler");
    } else {
        let _ = writeln!(o, "ended jobs: {}", s.ended.len());
    }
    for e in &s.ended {
        let (name, reason) = outcome(&e.outcome);
        let secs = e.duration_ms as f64 / 1000.0;
        let _ = writeln!(
            o,
            "  job {:<5} {:<16} {}{}  {} in {:.1} s ({:.2} Gbit/s)",
            e.job.0,
            if e.name.is_empty() { "-" } else { &e.name },
            name,
            reason.map_or(String::new(), |r| format!(": {r}")),
            bytes(e.bytes),
            secs,
            if secs > 0.0 {
                e.bytes as f64 * 8.0 / secs / 1e9
            } else {
                0.0
            }
        );
    }
    o
}

fn print(s: &Snapshot, since: Option<(Duration, &Snapshot)>, json_out: bool) {
    if json_out {
        println!("{}", to_json(s, since));
    } else {
        print!("{}", to_text(s, since));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use spate_netlib::proto::{
        HostId, HugePages, Interface, JobState, NodeRoles, Progress, StreamIndex, StreamStatus,
    };

    fn snap(delivered: u64) -> Snapshot {
        Snapshot {
            jobs: vec![JobStatus {
                job: JobId(3),
                name: "poster".into(),
                state: JobState::Running,
                progress: Progress {
                    delivered,
                    read: 1 << 30,
                    total: 4 << 30,
                },
                streams: vec![StreamStatus {
                    stream: StreamIndex(0),
                    node: "printer".into(),
                    length: 4 << 30,
                    delivered,
                    read: 1 << 30,
                    ring_bytes: 256 << 20,
                    starvations: None,
                }],
                running_ms: Some(1000),
                stall_reason: None,
                ..JobStatus::default()
            }],
            nodes: vec![NodeStatus {
                name: "printer".into(),
                roles: NodeRoles {
                    producer: false,
                    consumer: true,
                },
                state: NodeState::Alive,
                tasks_in_flight: 0,
                streams: 1,
                host: HostId(0xabcdef01 << 96),
                cores: 2,
                interfaces: vec![Interface {
                    name: "eth1".into(),
                    addr: "10.0.0.2".parse().unwrap(),
                }],
                hugepages: HugePages {
                    total: 1024,
                    free: 512,
                    page_bytes: 2 << 20,
                },
                ring_budget: 1 << 30,
                last_seen_ms: 200,
                ..NodeStatus::default()
            }],
            ended: vec![],
        }
    }

    #[test]
    fn json_has_the_schema_and_every_figure() {
        let s = snap((1 << 30) + (128 << 20));
        let v = to_json(&s, None);
        assert_eq!(v["schema"], 1);
        let j = &v["jobs"][0];
        assert_eq!(j["state"], "running");
        assert_eq!(j["running_s"], 1.0);
        // 1.125 GiB in 1 s.
        let r = j["rate_gbit_per_s"].as_f64().unwrap();
        assert!((r - 9.663676416).abs() < 1e-6, "{r}");
        assert_eq!(j["streams"][0]["ring_fill_bytes"], 128 << 20);
        assert_eq!(j["streams"][0]["starvations"], serde_json::Value::Null);
        assert_eq!(v["nodes"][0]["hugepages_free"], 512);
        assert_eq!(v["nodes"][0]["interfaces"][0], "eth1=10.0.0.2");
        assert_eq!(v["nodes"][0]["compute"], json!([]));
        assert_eq!(v["ended"], json!([]));
    }

    #[test]
    fn watch_rates_come_from_the_last_interval() {
        let a = snap(1 << 30);
        let b = snap((1 << 30) + 125_000_000);
        let r = job_rate(&b.jobs[0], Some((Duration::from_millis(500), &a))).unwrap();
        assert!((r - 2.0).abs() < 1e-9, "{r}");
    }

    #[test]
    fn text_shows_nodes_jobs_and_streams() {
        let t = to_text(&snap((1 << 30) + (128 << 20)), None);
        assert!(
            t.contains("printer          consumer          alive   abcdef01"),
            "{t}"
        );
        assert!(t.contains("512/1024"), "{t}");
        assert!(
            t.contains("interfaces eth1=10.0.0.2; ring budget 1 GiB"),
            "{t}"
        );
        assert!(
            t.contains("job 3     poster           running       delivered  28.1%"),
            "{t}"
        );
        assert!(
            t.contains("stream 0 on printer: delivered  28.1%, read  25.0%, ring 128 MiB of 256 MiB filled (50%)"),
            "{t}"
        );
        assert!(t.contains("ended jobs: none kept by this scheduler"), "{t}");
    }
}
