//! `spate plan`: what the scheduler would plan for a job now, without admitting it; and the
//! rendering of plans shared with `submit` and `status`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use serde_json::json;
use spate_netlib::endpoint::Endpoint;
use spate_netlib::proto::{Message, PlanInfo};
use spate_scheduler::server::user::{DEFAULT_ENDPOINT, User, load_secret};
use spate_scheduler::spec::JobPlan;

use super::submit::{EXIT_REFUSED, refuse_reason_json};

#[derive(clap::Args, Debug)]
#[command(
    about = "Show the scheduler's plan for a job without admitting it",
    long_about = "Ask the scheduler what it would decide for a job spec now, from the capacities \
it has measured and what running jobs reserved: admitted or refused (and why), the policy, \
chunk size, producers, predicted throughput and chunk latency, the chunks in flight, ring and \
prefill sizes, and the highest rate the cluster could give. Nothing is allocated or reserved.\n\n\
Exit status: 0 it would be admitted; 2 it would be refused; 1 any other error.\n\n\
--json prints one object with the keys admitted, reason, message, policy, chunk_bytes, \
producers, predicted_gbit_per_s, predicted_latency_ms, window_chunks, ring_bytes, \
prefill_bytes, max_feasible_gbit_per_s, requested_gbit_per_s, latency_bound_ms.",
    after_help = "Examples:\n  \
spate plan printer.toml\n  \
spate plan printer.toml --json"
)]
pub struct Args {
    /// The job spec (TOML file).
    #[arg(value_name = "JOB.toml")]
    pub spec: PathBuf,
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

fn gbit(bps: u64) -> f64 {
    bps as f64 / 1e9
}

/// A plan's figures as JSON (rates in Gbit/s for the whole job, times in ms).
pub fn plan_json(p: &PlanInfo) -> serde_json::Value {
    json!({
        "policy": p.policy,
        "chunk_bytes": p.chunk_bytes,
        "chunk_lines": p.chunk_lines,
        "producers": p.producers,
        "predicted_gbit_per_s": gbit(p.predicted_bps),
        "predicted_latency_ms": p.predicted_latency_us as f64 / 1e3,
        "window_chunks": p.window_chunks,
        "ring_bytes": p.ring_bytes.iter().copied().max().unwrap_or(0),
        "ring_bytes_per_stream": p.ring_bytes,
        "prefill_bytes": p.prefill_bytes.iter().copied().max().unwrap_or(0),
        "prefill_bytes_per_stream": p.prefill_bytes,
        "max_feasible_gbit_per_s": gbit(p.max_feasible_bps),
        "requested_gbit_per_s": p.requested_bps.map(gbit),
        "latency_bound_ms": p.latency_bound_us.map(|l| l as f64 / 1e3),
    })
}

fn size_text(b: u64) -> String {
    const MIB: f64 = (1u64 << 20) as f64;
    if b >= 1 << 30 {
        format!("{:.2} GiB", b as f64 / (MIB * 1024.0))
    } else if b >= 1 << 20 {
        format!("{:.1} MiB", b as f64 / MIB)
    } else if b >= 1 << 10 {
        format!("{:.0} KiB", b as f64 / 1024.0)
    } else {
        format!("{b} B")
    }
}

/// A plan in a few lines for humans (each starting with `indent`).
pub fn plan_text(p: &PlanInfo, indent: &str) -> Vec<String> {
    let mut v = Vec::new();
    if p.predicted_bps == 0 && p.producers.is_empty() {
        v.push(format!(
            "{indent}policy {}: chunks of {}, every producer on demand (no prediction)",
            p.policy,
            size_text(p.chunk_bytes)
        ));
        return v;
    }
    let asked = match (p.requested_bps, p.latency_bound_us) {
        (Some(r), Some(l)) => format!(" for {:.3} Gbit/s within {:.1} ms", gbit(r), l as f64 / 1e3),
        (Some(r), None) => format!(" for {:.3} Gbit/s", gbit(r)),
        (None, Some(l)) => format!(" within {:.1} ms", l as f64 / 1e3),
        (None, None) => String::new(),
    };
    v.push(format!(
        "{indent}policy {}{asked}: predicted {:.3} Gbit/s, chunk latency {:.1} ms",
        p.policy,
        gbit(p.predicted_bps),
        p.predicted_latency_us as f64 / 1e3
    ));
    v.push(format!(
        "{indent}chunks of {} ({} lines), {} in flight, on {} producer{}: {}",
        size_text(p.chunk_bytes),
        p.chunk_lines,
        p.window_chunks,
        p.producers.len(),
        if p.producers.len() == 1 { "" } else { "s" },
        p.producers.join(", ")
    ));
    let ring = p.ring_bytes.iter().copied().max().unwrap_or(0);
    let prefill = p.prefill_bytes.iter().copied().max().unwrap_or(0);
    let mut line = format!("{indent}ring {} per stream", size_text(ring));
    if prefill > 0 {
        line += &format!(
            ", a constant-rate reader starts after {} (prefill)",
            size_text(prefill)
        );
    }
    line += &format!(
        "; the cluster could give up to {:.3} Gbit/s now",
        gbit(p.max_feasible_bps)
    );
    v.push(line);
    v
}

pub fn run(a: Args) -> anyhow::Result<i32> {
    let text = std::fs::read_to_string(&a.spec)
        .with_context(|| format!("cannot read the job spec {}", a.spec.display()))?;
    let inputs = JobPlan::parse(&text).map(|p| p.inputs).unwrap_or_default();
    let secret = load_secret(a.secret_file.as_deref(), &a.scheduler)
        .context("cannot load the cluster secret")?;
    let mut user = User::connect(&a.scheduler, &secret, Duration::from_secs(10))?;
    let reply = user.request(
        &Message::Plan {
            spec_toml: text,
            inputs,
        },
        |m| match m {
            Message::PlanReply {
                admitted,
                plan,
                reason,
                message,
            } => Some(Ok((admitted, plan, reason, message))),
            Message::Error { message, .. } => Some(Err(message)),
            _ => None,
        },
    )?;
    let (admitted, plan, reason, message) = reply.map_err(|m| anyhow::anyhow!("{m}"))?;
    if a.json {
        let mut v = plan.as_deref().map_or_else(|| json!({}), plan_json);
        v["admitted"] = json!(admitted);
        v["reason"] = reason
            .as_ref()
            .map_or(serde_json::Value::Null, refuse_reason_json);
        v["message"] = json!(message);
        println!("{v}");
    } else if admitted {
        println!("would be admitted");
        if let Some(p) = &plan {
            for l in plan_text(p, "  ") {
                println!("{l}");
            }
        }
    } else {
        println!("would be refused: {message}");
    }
    Ok(if admitted { 0 } else { EXIT_REFUSED })
}
