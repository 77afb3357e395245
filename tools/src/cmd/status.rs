//! `spate status`: jobs and nodes as the scheduler sees them.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use serde_json::json;
use spate_netlib::endpoint::Endpoint;
use spate_netlib::proto::{JobId, Message, NodeState};
use spate_scheduler::server::user::{DEFAULT_ENDPOINT, User, load_secret};

use super::submit::state_name;

#[derive(clap::Args, Debug)]
#[command(
    about = "Show jobs and nodes known to the scheduler",
    long_about = "Show the live jobs (state, bytes delivered in order at the consumers, bytes \
read, total) and the connected daemons (roles, tasks in flight, streams held).\n\n\
--json prints one object: {\"jobs\": [{\"job\", \"name\", \"state\", \"delivered\", \"read\", \
\"total\"}], \"nodes\": [{\"name\", \"producer\", \"consumer\", \"state\", \"tasks_in_flight\", \
\"streams\"}]}."
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
}

pub fn run(a: Args) -> anyhow::Result<i32> {
    let secret = load_secret(a.secret_file.as_deref(), &a.scheduler)
        .context("cannot load the cluster secret")?;
    let mut user = User::connect(&a.scheduler, &secret, Duration::from_secs(10))?;
    let reply = user.request(
        &Message::Status {
            job: a.job.map(JobId),
        },
        |m| match m {
            Message::StatusReply { jobs, nodes } => Some(Ok((jobs, nodes))),
            Message::Error { message, .. } => Some(Err(message)),
            _ => None,
        },
    )?;
    let (jobs, nodes) = reply.map_err(|m| anyhow::anyhow!("{m}"))?;
    let node_state = |s: NodeState| match s {
        NodeState::Alive => "alive",
        NodeState::Leaving => "leaving",
        NodeState::Lost => "lost",
    };
    if a.json {
        let jobs: Vec<serde_json::Value> = jobs
            .iter()
            .map(|j| {
                json!({
                    "job": j.job.0,
                    "name": j.name,
                    "state": state_name(&j.state),
                    "delivered": j.progress.delivered,
                    "read": j.progress.read,
                    "total": j.progress.total,
                    "plan": j.plan.as_deref().map(super::plan::plan_json),
                    "warning": j.warning,
                    "duplicated": j.duplicated,
                })
            })
            .collect();
        let nodes: Vec<serde_json::Value> = nodes
            .iter()
            .map(|n| {
                json!({
                    "name": n.name,
                    "producer": n.roles.producer,
                    "consumer": n.roles.consumer,
                    "state": node_state(n.state),
                    "tasks_in_flight": n.tasks_in_flight,
                    "streams": n.streams,
                    "capacity": capacity_json(&n.capacity),
                })
            })
            .collect();
        println!("{}", json!({"jobs": jobs, "nodes": nodes}));
        return Ok(0);
    }
    println!("nodes: {}", nodes.len());
    for n in &nodes {
        let roles = match (n.roles.producer, n.roles.consumer) {
            (true, true) => "producer+consumer",
            (true, false) => "producer",
            (false, true) => "consumer",
            (false, false) => "-",
        };
        println!(
            "  {:<20} {:<17} {:<7} tasks {:>3}  streams {:>3}",
            n.name,
            roles,
            node_state(n.state),
            n.tasks_in_flight,
            n.streams
        );
    }
    for n in &nodes {
        for c in &n.capacity.compute {
            println!(
                "    {} computes {}: {:.3} Gbit/s, {} us per chunk ({}, {} tasks)",
                n.name,
                c.kernel,
                c.bytes_per_sec as f64 * 8.0 / 1e9,
                c.overhead_us,
                c.source,
                c.samples
            );
        }
        for l in &n.capacity.links {
            println!(
                "    {} -> {}: {:.3} Gbit/s, {} us per piece ({} pieces)",
                n.name,
                l.consumer,
                l.bytes_per_sec as f64 * 8.0 / 1e9,
                l.overhead_us,
                l.samples
            );
        }
    }
    println!("jobs: {}", jobs.len());
    for j in &jobs {
        let pct = |x: u64| {
            if j.progress.total == 0 {
                100.0
            } else {
                x as f64 * 100.0 / j.progress.total as f64
            }
        };
        println!(
            "  {:<6} {:<16} {:<13} delivered {:5.1}%  read {:5.1}%  of {} bytes",
            j.job.0,
            if j.name.is_empty() { "-" } else { &j.name },
            state_name(&j.state),
            pct(j.progress.delivered),
            pct(j.progress.read),
            j.progress.total
        );
        if let Some(p) = &j.plan {
            for l in super::plan::plan_text(p, "         ") {
                println!("{l}");
            }
        }
        if j.duplicated > 0 {
            println!(
                "         {} straggling tasks redone elsewhere",
                j.duplicated
            );
        }
        if let Some(w) = &j.warning {
            println!("         warning: {w}");
        }
    }
    Ok(0)
}

/// What the scheduler measured of a node, as JSON (rates in Gbit/s).
fn capacity_json(c: &spate_netlib::proto::NodeCapacity) -> serde_json::Value {
    json!({
        "nic_gbit_per_s": c.nic_bytes_per_sec as f64 * 8.0 / 1e9,
        "compute": c.compute.iter().map(|k| json!({
            "kernel": k.kernel,
            "gbit_per_s": k.bytes_per_sec as f64 * 8.0 / 1e9,
            "overhead_us": k.overhead_us,
            "source": k.source,
            "samples": k.samples,
        })).collect::<Vec<_>>(),
        "links": c.links.iter().map(|l| json!({
            "consumer": l.consumer,
            "gbit_per_s": l.bytes_per_sec as f64 * 8.0 / 1e9,
            "overhead_us": l.overhead_us,
            "samples": l.samples,
        })).collect::<Vec<_>>(),
    })
}
