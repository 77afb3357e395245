//! `spate node`: a node daemon offering the producer and/or consumer role to a scheduler.
//!
//! It starts its engines (pinned to the configured cores), prints what it offers, connects to
//! the scheduler (authenticated), joins, tells systemd it is ready (`Type=notify`), heartbeats,
//! and serves the scheduler's requests until the scheduler shuts down (exit 0), SIGTERM or
//! SIGINT arrives (it quits the cluster, its rings are aborted with "consumer shutting down",
//! its sockets are removed; exit 0), or the scheduler stays away: a scheduler that crashed,
//! closed the connection, went silent or declared this node dead is tried again with back-off
//! and jitter for `--reconnect-for` (rings kept, queued work dropped), then the node stops
//! (exit 1, "scheduler gone: ...").

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Deserialize;
use spate_consumer::{ConsumerEngine, ConsumerNode, EngineConfig as ConsumerConfig};
use spate_netlib::auth::{Role, Secret};
use spate_netlib::endpoint::{Endpoint, Stream, Via};
use spate_netlib::msg::{MsgConfig, MsgConn, MsgError, SetReadTimeout, TryCloneStream};
use spate_netlib::proto::{
    ComputeCapacity, DataEndpoint, HostId, HugePages, Interface, Message, NodeInfo, NodeRoles,
};
use spate_netlib::text::{Quoted, quote};
use spate_producer::daemon::ProducerNode;
use spate_producer::engine::{EngineConfig as ProducerConfig, LocalPath, ProducerEngine};

/// Run a node daemon.
#[derive(clap::Args, Debug, Default)]
pub struct Args {
    /// Settings file (TOML) with the same keys as the flags (e.g. `ring_budget = "4GiB"`,
    /// `interfaces = ["eth1=10.0.0.1"]`); flags given on the command line win.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Node name, unique in the cluster (job specs name output locations by it).
    #[arg(long)]
    name: Option<String>,
    /// Scheduler endpoint: `unix:PATH` or `tcp:HOST:PORT` [default: unix:/run/spate/sched.sock].
    #[arg(long, env = "SPATE_SCHEDULER")]
    scheduler: Option<String>,
    /// Another endpoint of the same scheduler (e.g. where it is restarted on another host on
    /// the same state), tried in turn with --scheduler when reconnecting; repeatable.
    #[arg(long, value_name = "ENDPOINT")]
    scheduler_alt: Vec<String>,
    /// Offer the producer role (run compute and expel tasks).
    #[arg(long)]
    producer: bool,
    /// Offer the consumer role (own stream rings, receive chunks).
    #[arg(long)]
    consumer: bool,
    /// Cores for the engines, e.g. `0,1` or `2-3` (compute, expel, receive take them in turn).
    #[arg(long)]
    cores: Option<String>,
    /// A network interface for data, `NAME=ADDRESS` (repeatable); consumers listen on its
    /// address, producers announce it.
    #[arg(long = "interface")]
    interfaces: Vec<String>,
    /// Directory for this node's sockets (data and reader hand-off).
    #[arg(long, visible_alias = "data-dir")]
    run_dir: Option<PathBuf>,
    /// Most memory all stream rings together may use, e.g. `4GiB` (consumers).
    #[arg(long)]
    ring_budget: Option<String>,
    /// TCP port of the data listeners (default: any free port).
    #[arg(long)]
    data_port: Option<u16>,
    /// File holding the cluster secret (else SPATE_SECRET, else PATH.secret beside a UNIX
    /// scheduler socket).
    #[arg(long)]
    secret_file: Option<PathBuf>,
    /// How chunks reach consumers on this host: `zero-copy` (the producer's kernel computes
    /// straight into the consumer's ring), `pull` (the consumer copies each chunk once from the
    /// producer's buffers) or `socket` (through the UNIX socket: two copies) [default:
    /// zero-copy]. A consumer node set to another path than zero-copy does not lend its rings
    /// (its local producers pull instead).
    #[arg(long, value_parser = ["zero-copy", "pull", "socket"])]
    local_path: Option<String>,
    /// The same as `--local-path socket` (kept for older configs: `local_pull = false`).
    #[arg(long, hide = true)]
    no_local_pull: bool,
    /// Rate of each data interface, per direction (e.g. `10Gbit`); seeds the scheduler's link
    /// estimates until it has measured them [default: the interface's speed in sysfs].
    #[arg(long, value_name = "RATE")]
    link_rate: Option<String>,
    /// Compute rate this producer announces (output per second, e.g. `8Gbit`); seeds the
    /// scheduler's compute estimate until it has measured one.
    #[arg(long, value_name = "RATE")]
    compute_rate: Option<String>,
    /// Serve Prometheus metrics at http://ADDR/metrics, e.g. `127.0.0.1:9464` (`metrics` in
    /// --config). Off by default.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<String>,
    /// How long to keep trying to reach a scheduler that went away (crashed, restarted,
    /// unreachable, or declared this node dead) before stopping, e.g. `5min` [default: 60s].
    /// Rings and readers stay up meanwhile.
    #[arg(long, value_name = "DURATION")]
    reconnect_for: Option<String>,
}

/// The settings file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    name: Option<String>,
    scheduler: Option<String>,
    scheduler_alt: Option<Vec<String>>,
    producer: Option<bool>,
    consumer: Option<bool>,
    cores: Option<String>,
    interfaces: Option<Vec<String>>,
    #[serde(alias = "data_dir")]
    run_dir: Option<PathBuf>,
    ring_budget: Option<String>,
    data_port: Option<u16>,
    secret_file: Option<PathBuf>,
    local_pull: Option<bool>,
    local_path: Option<String>,
    link_rate: Option<String>,
    compute_rate: Option<String>,
    metrics: Option<String>,
    reconnect_for: Option<String>,
}

/// Resolved settings.
#[derive(Debug)]
struct Settings {
    name: String,
    scheduler: Endpoint,
    /// Other endpoints of the scheduler, tried in turn when reconnecting.
    scheduler_alt: Vec<Endpoint>,
    producer: bool,
    consumer: bool,
    cores: Option<Vec<usize>>,
    interfaces: Vec<Interface>,
    run_dir: PathBuf,
    ring_budget: u64,
    data_port: u16,
    secret_file: Option<PathBuf>,
    metrics: Option<SocketAddr>,
    local_path: LocalPath,
    /// NIC bytes/s per direction, all data interfaces (0: unknown).
    nic_bytes_per_sec: u64,
    /// Announced compute bytes/s (0: none).
    compute_bytes_per_sec: u64,
    /// How long a lost scheduler is waited for.
    reconnect_for: Duration,
}

/// A rate flag as bytes per second.
fn rate_flag(flag: &str, s: &str) -> anyhow::Result<u64> {
    let bits =
        spate_scheduler::spec::parse_rate(s).map_err(|e| anyhow::anyhow!("--{flag} {s:?}: {e}"))?;
    Ok(bits / 8)
}

/// An interface's speed from sysfs (`/sys/class/net/NAME/speed`, Mbit/s), in bytes/s.
fn sysfs_speed(name: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/sys/class/net/{name}/speed")).ok()?;
    let mbit: i64 = s.trim().parse().ok()?;
    (mbit > 0).then(|| mbit as u64 * 1_000_000 / 8)
}

fn parse_interface(s: &str) -> anyhow::Result<Interface> {
    match s.split_once('=') {
        Some((name, addr)) if !name.trim().is_empty() => {
            let addr: IpAddr = addr.trim().parse().with_context(|| {
                format!(
                    "interface {}: {} is not an IP address (want NAME=ADDRESS)",
                    quote(s),
                    quote(addr)
                )
            })?;
            Ok(Interface {
                name: name.trim().to_string(),
                addr,
            })
        }
        None if s.trim() == "lo" => Ok(Interface {
            name: "lo".into(),
            addr: IpAddr::from([127, 0, 0, 1]),
        }),
        _ => bail!(
            "interface {}: give its address too, as --interface {}=ADDRESS (e.g. {}=10.0.0.1)",
            quote(s),
            Quoted::new(s.trim()).bare(),
            Quoted::new(s.trim()).bare()
        ),
    }
}

fn settings(a: Args) -> anyhow::Result<Settings> {
    let file: FileConfig = match &a.config {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("reading the node config {}", Quoted::path(p)))?;
            toml::from_str(&text).with_context(|| format!("node config {}", Quoted::path(p)))?
        }
        None => FileConfig::default(),
    };
    let name = a
        .name
        .or(file.name)
        .context("no node name: pass --name NAME (or `name` in --config)")?;
    if name.is_empty() || name.len() > 255 {
        bail!("node name must be 1 to 255 bytes");
    }
    let sched = a
        .scheduler
        .or(file.scheduler)
        .unwrap_or_else(|| spate_scheduler::server::user::DEFAULT_ENDPOINT.to_string());
    let scheduler: Endpoint = sched
        .parse()
        .with_context(|| format!("--scheduler {}", quote(&sched)))?;
    let alts = if a.scheduler_alt.is_empty() {
        file.scheduler_alt.unwrap_or_default()
    } else {
        a.scheduler_alt
    };
    let scheduler_alt = alts
        .iter()
        .map(|e| {
            e.parse::<Endpoint>()
                .with_context(|| format!("--scheduler-alt {}", quote(e)))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let producer = a.producer || file.producer.unwrap_or(false);
    let consumer = a.consumer || file.consumer.unwrap_or(false);
    if !producer && !consumer {
        bail!("this node offers nothing: pass --producer and/or --consumer");
    }
    let cores = match a.cores.or(file.cores) {
        Some(c) => {
            let list = spate_runtime::thread::parse_cores(&c).context("--cores")?;
            let allowed = spate_runtime::thread::allowed_cores();
            let missing: Vec<usize> = list
                .iter()
                .copied()
                .filter(|c| !allowed.is_empty() && !allowed.contains(c))
                .collect();
            if !missing.is_empty() {
                bail!(
                    "--cores {c:?}: core{} {missing:?} not available to this process; it may \
                     use cores {allowed:?}",
                    if missing.len() == 1 { " is" } else { "s are" }
                );
            }
            Some(list)
        }
        None => None,
    };
    let ifs = if a.interfaces.is_empty() {
        file.interfaces.unwrap_or_default()
    } else {
        a.interfaces
    };
    let interfaces = ifs
        .iter()
        .map(|s| parse_interface(s))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let run_dir = a.run_dir.or(file.run_dir).unwrap_or_else(|| {
        let base = std::env::var_os("XDG_RUNTIME_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        base.join(format!("spate-{name}"))
    });
    let ring_budget = match a.ring_budget.or(file.ring_budget) {
        Some(s) => spate_scheduler::spec::parse_size(&s)
            .map_err(|e| anyhow::anyhow!("--ring-budget {}: {e}", quote(&s)))?,
        None => 1 << 30,
    };
    let nic_bytes_per_sec = match a.link_rate.or(file.link_rate) {
        Some(r) => rate_flag("link-rate", &r)? * interfaces.len().max(1) as u64,
        None => interfaces
            .iter()
            .map(|i| sysfs_speed(&i.name))
            .sum::<Option<u64>>()
            .unwrap_or(0),
    };
    let compute_bytes_per_sec = match a.compute_rate.or(file.compute_rate) {
        Some(r) => rate_flag("compute-rate", &r)?,
        None => 0,
    };
    Ok(Settings {
        name,
        scheduler,
        scheduler_alt,
        producer,
        consumer,
        cores,
        interfaces,
        run_dir,
        ring_budget,
        data_port: a.data_port.or(file.data_port).unwrap_or(0),
        secret_file: a.secret_file.or(file.secret_file),
        local_path: if a.no_local_pull {
            LocalPath::Socket
        } else {
            match a.local_path.or(file.local_path) {
                Some(p) => p
                    .parse()
                    .map_err(|e: String| anyhow::anyhow!("local_path: {e}"))?,
                None if file.local_pull == Some(false) => LocalPath::Socket,
                None => LocalPath::default(),
            }
        },
        nic_bytes_per_sec,
        compute_bytes_per_sec,
        reconnect_for: match a.reconnect_for.or(file.reconnect_for) {
            Some(d) => spate_scheduler::spec::parse_duration(&d)
                .map_err(|e| anyhow::anyhow!("reconnect_for {}: {e}", quote(&d)))?,
            None => DEFAULT_RECONNECT_FOR,
        },
        metrics: match a.metrics.or(file.metrics) {
            Some(m) => Some(crate::metrics::parse_addr(&m).map_err(|e| anyhow::anyhow!(e))?),
            None => None,
        },
    })
}

/// This machine's identity: /etc/machine-id, else the XXH3-128 digest of the host name (a
/// specified hash, the same on every build and Rust release, unlike `DefaultHasher`).
fn host_id() -> HostId {
    let machine_id = std::fs::read_to_string("/etc/machine-id").ok();
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    host_id_from(machine_id.as_deref(), &hostname)
}

fn host_id_from(machine_id: Option<&str>, hostname: &str) -> HostId {
    if let Some(s) = machine_id
        && let Ok(v) = u128::from_str_radix(s.trim(), 16)
    {
        return HostId(v);
    }
    HostId(xxhash_rust::xxh3::xxh3_128(hostname.trim().as_bytes()))
}

/// Hugepages reserved on this machine.
fn hugepages() -> HugePages {
    HugePages {
        total: meminfo("HugePages_Total:").unwrap_or(0),
        free: meminfo("HugePages_Free:").unwrap_or(0),
        page_bytes: meminfo("Hugepagesize:").unwrap_or(0) * 1024,
    }
}

fn meminfo(key: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// Lines describing memory for rings and registered buffers, with warnings that name fixes.
fn memory_report(s: &Settings) -> Vec<String> {
    let mut out = Vec::new();
    let (total, free) = (
        meminfo("HugePages_Total:").unwrap_or(0),
        meminfo("HugePages_Free:").unwrap_or(0),
    );
    if total == 0 {
        out.push(
            "hugepages: none reserved; rings and buffers fall back to plain shared memory \
             (reserve some with `echo 512 > /proc/sys/vm/nr_hugepages`)"
                .to_string(),
        );
    } else {
        out.push(format!(
            "hugepages: {free} of {total} pages of 2 MiB free ({} MiB)",
            free * 2
        ));
        if s.consumer && free * (2 << 20) < s.ring_budget {
            out.push(format!(
                "warning: the ring budget ({} MiB) exceeds the free hugepages; larger rings fall \
                 back to plain shared memory (reserve more with \
                 `echo {} > /proc/sys/vm/nr_hugepages`)",
                s.ring_budget >> 20,
                total + (s.ring_budget >> 21).saturating_sub(free)
            ));
        }
    }
    let cap = spate_runtime::memlock::has_cap_ipc_lock();
    match spate_runtime::memlock::limits() {
        Ok(_) if cap => out.push("memlock: not limited (CAP_IPC_LOCK)".into()),
        Ok(l) => {
            out.push(format!(
                "memlock: soft {}, hard {}",
                spate_runtime::memlock::fmt_limit(l.soft),
                spate_runtime::memlock::fmt_limit(l.hard)
            ));
            if l.hard != spate_runtime::memlock::UNLIMITED && l.hard < (256 << 20) {
                out.push(
                    "warning: registered io_uring buffers count against the memlock limit and \
                     will fail above it: raise it with `ulimit -l unlimited`, \
                     LimitMEMLOCK=infinity (systemd) or AmbientCapabilities=CAP_IPC_LOCK"
                        .into(),
                );
            }
        }
        Err(e) => out.push(format!("memlock: unknown ({e})")),
    }
    out
}

fn data_endpoint(ep: &Endpoint, ifs: &[Interface]) -> anyhow::Result<DataEndpoint> {
    Ok(match ep {
        Endpoint::Unix(p) => DataEndpoint::Unix { path: p.clone() },
        Endpoint::Tcp { .. } => {
            let addr: SocketAddr = *ep
                .resolve()?
                .first()
                .with_context(|| format!("{ep} resolves to nothing"))?;
            DataEndpoint::Tcp {
                addr,
                interface: ifs
                    .iter()
                    .find(|i| i.addr == addr.ip())
                    .map(|i| i.name.clone()),
            }
        }
    })
}

/// The roles of this daemon, shared by the receive loop and the reporting thread.
struct Roles {
    consumer: Option<Arc<Mutex<ConsumerNode>>>,
    producer: Option<ProducerNode>,
}

pub fn run(a: Args) -> anyhow::Result<i32> {
    let s = settings(a)?;
    // Signals are blocked before any thread starts, so every thread inherits the mask and the
    // signal thread alone sees SIGTERM/SIGINT.
    let stop = Stop::default();
    let on_signal = stop.clone();
    crate::signals::watch(move |name| on_signal.request(name))
        .context("cannot set up SIGINT/SIGTERM handling")?;
    let span = tracing::info_span!("daemon", node = %s.name);
    let _entered = span.clone().entered();
    super::scheduler_present(&s.scheduler)?;
    let secret = spate_scheduler::server::user::load_secret(s.secret_file.as_deref(), &s.scheduler)
        .context("cluster secret")?;
    create_dir(&s.run_dir)?;
    let metrics: &'static super::node_metrics::NodeMetrics = Box::leak(Box::default());
    let mut metrics_server = None;
    let registry = prometheus::Registry::new_custom(
        Some("spate".into()),
        Some([("node".to_string(), s.name.clone())].into_iter().collect()),
    )?;
    metrics.register(&registry)?;
    let available = spate_runtime::thread::available_cores();
    let core = |i: usize| s.cores.as_ref().map(|c| c[i % c.len()]);
    let (compute_core, expel_core) = (core(0), core(1));
    let recv_core = core(if s.producer { 2 } else { 0 });

    let (out_tx, out_rx) = mpsc::channel::<Message>();
    let mut lines = Vec::new();
    let roles_txt = match (s.producer, s.consumer) {
        (true, true) => "producer + consumer",
        (true, false) => "producer",
        _ => "consumer",
    };
    lines.push(format!("spate node {}: {roles_txt}", s.name));
    lines.push(match &s.cores {
        Some(c) => format!("cores: {c:?} of {available:?}"),
        None => format!("cores: not pinned ({} available)", available.len()),
    });
    if !s.interfaces.is_empty() {
        let v: Vec<String> = s
            .interfaces
            .iter()
            .map(|i| format!("{}={}", i.name, i.addr))
            .collect();
        lines.push(format!("interfaces: {}", v.join(", ")));
    }
    lines.extend(memory_report(&s));

    // Every raw data connection authenticates with the cluster secret; producers name
    // themselves, consumers take chunks only from the producers assigned to each job.
    let raw_auth = spate_netlib::raw::RawAuth::new(secret.clone(), &s.name)
        .map_err(|e| anyhow::anyhow!("node name: {e}"))?;
    let mut data_endpoints = Vec::new();
    let mut handoff = None;
    let consumer = if s.consumer {
        let mut listen = vec![Endpoint::Unix(s.run_dir.join("data.sock"))];
        for i in &s.interfaces {
            listen.push(Endpoint::from(SocketAddr::new(i.addr, s.data_port)));
        }
        let mut cfg = ConsumerConfig::new(listen, s.run_dir.join("handoff.sock"));
        cfg.core = recv_core;
        cfg.ring_budget = s.ring_budget;
        cfg.raw.auth = Some(raw_auth.clone());
        cfg.lend_rings = s.local_path == LocalPath::ZeroCopy;
        let eng = ConsumerEngine::start(cfg).context("starting the consumer engine")?;
        for ep in eng.endpoints() {
            data_endpoints.push(data_endpoint(ep, &s.interfaces)?);
        }
        handoff = Some(eng.handoff_path().to_path_buf());
        let eps: Vec<String> = eng.endpoints().iter().map(|e| e.to_string()).collect();
        lines.push(format!(
            "consumer: receive engine on {}; data {}; reader hand-off {}; ring budget {}; {}",
            recv_core.map_or("any core".to_string(), |c| format!("core {c}")),
            eps.join(", "),
            eng.handoff_path().display(),
            spate_runtime::memlock::fmt_bytes(s.ring_budget),
            if s.local_path == LocalPath::ZeroCopy {
                "rings lent to local producers (zero-copy)"
            } else {
                "rings not lent (local producers pull)"
            }
        ));
        Some(Arc::new(Mutex::new(ConsumerNode::new(eng))))
    } else {
        None
    };
    let producer = if s.producer {
        let mut cfg = ProducerConfig {
            compute_core,
            expel_core,
            ..ProducerConfig::default()
        };
        cfg.local_path = s.local_path;
        cfg.raw.auth = Some(raw_auth.clone());
        let buffers = cfg.buffers;
        let eng =
            ProducerEngine::start(cfg, out_tx.clone()).context("starting the producer engines")?;
        let at = |c: Option<usize>| c.map_or("any core".to_string(), |c| format!("core {c}"));
        lines.push(format!(
            "producer: compute on {}, expel on {}, {buffers} chunk buffers; local consumers {}",
            at(compute_core),
            at(expel_core),
            match s.local_path {
                LocalPath::ZeroCopy => "get chunks computed straight into their rings (zero-copy)",
                LocalPath::Pull => "pull chunks from our buffers (one copy)",
                LocalPath::Socket => "get chunks through the socket (two copies)",
            }
        ));
        Some(ProducerNode::new(eng))
    } else {
        None
    };
    if let Some(addr) = s.metrics {
        let srv = crate::metrics::MetricsServer::start(addr, registry.clone(), || {})?;
        lines.push(format!("metrics: http://{}/metrics", srv.addr()));
        metrics_server = Some(srv);
    }
    for l in &lines {
        println!("{l}");
    }

    let info = NodeInfo {
        name: s.name.clone(),
        host: host_id(),
        roles: NodeRoles {
            producer: s.producer,
            consumer: s.consumer,
        },
        cores: available.len() as u32,
        interfaces: s.interfaces.clone(),
        compute: ComputeCapacity {
            cores: u32::from(s.producer),
            bytes_per_sec: s.compute_bytes_per_sec,
        },
        ring_budget: if s.consumer { s.ring_budget } else { 0 },
        data_endpoints,
        handoff_socket: handoff,
        nic_bytes_per_sec: s.nic_bytes_per_sec,
        ports: 0,
        hugepages: hugepages(),
    };
    let roles = Roles { consumer, producer };
    if let Some(sig) = stop.requested() {
        println!("{sig} received before joining; stopping");
        return Ok(0);
    }
    let first = s
        .scheduler
        .connect(&Via::any(), Some(Duration::from_secs(10)))
        .map_err(|e| super::no_scheduler(&s.scheduler, &e.to_string()))?;
    let mut ctx = Session {
        secret: &secret,
        info,
        roles,
        out_tx,
        out_rx: Some(out_rx),
        stop,
        metrics,
        span,
    };
    // The first connection must work; after a loss the node tries again, with back-off and
    // jitter, for `reconnect_for`, keeping its rings (readers go on reading what landed).
    let mut end = session(first, &mut ctx, false, HANDSHAKE)?;
    let code = loop {
        let why = match end {
            End::Exit(code) => break code,
            End::Lost(why) => why,
        };
        eprintln!(
            "spate node: lost the scheduler ({why}); trying to reach it again for {}",
            humantime(s.reconnect_for)
        );
        tracing::warn!(reason = %why, "lost the scheduler; reconnecting");
        ctx.forget_session();
        match reconnect(&s, &mut ctx) {
            Some(e) => end = e,
            None if ctx.stop.requested().is_some() => {
                println!(
                    "{} received: stopping",
                    ctx.stop.requested().unwrap_or("signal")
                );
                break 0;
            }
            None => {
                let why = format!(
                    "scheduler gone: not reachable for {}",
                    humantime(s.reconnect_for)
                );
                eprintln!("spate node: {why}; stopping");
                // Readers of rings not finished learn why the node stopped.
                if let Some(c) = &ctx.roles.consumer {
                    let msg = format!("node {} stopped: the {why}", quote(&s.name));
                    let n = c
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .engine()
                        .release_all(spate_ring::AbortReason::ConsumerShutdown, &msg);
                    if n > 0 {
                        tracing::warn!(rings = n, "rings released: {msg}");
                    }
                }
                break 1;
            }
        }
    };
    // Stop the engines (rings are aborted with "consumer shutting down").
    drop(ctx);
    drop(metrics_server);
    Ok(code)
}

/// How long the scheduler may take to authenticate a connection.
const HANDSHAKE: Duration = Duration::from_secs(10);

/// Default of `--reconnect-for`.
const DEFAULT_RECONNECT_FOR: Duration = Duration::from_secs(60);

fn humantime(d: Duration) -> String {
    if d.as_millis().is_multiple_of(1000) {
        format!("{} s", d.as_secs())
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
}

/// Delay before reconnect attempt `n` (0, 1, ...): 100 ms doubling to 2 s, each between half
/// and all of that (jitter, so nodes that lost the same scheduler do not come back at once).
pub(crate) fn backoff(n: u32, r: u64) -> Duration {
    let base = 100u64.saturating_mul(1 << n.min(5)).min(2000);
    Duration::from_millis(base / 2 + r % (base / 2 + 1))
}

/// Tries to join again until it works (the session's end), a stop is asked (None) or
/// `reconnect_for` passed (None).
fn reconnect(s: &Settings, ctx: &mut Session<'_>) -> Option<End> {
    use std::hash::BuildHasher;
    let jitter = std::collections::hash_map::RandomState::new();
    let deadline = Instant::now() + s.reconnect_for;
    let mut n = 0u32;
    loop {
        let wait_until = Instant::now() + backoff(n, jitter.hash_one(n));
        n = n.saturating_add(1);
        while Instant::now() < wait_until {
            if ctx.stop.requested().is_some() {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if ctx.stop.requested().is_some() || Instant::now() >= deadline {
            return None;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        // The endpoints in turn: --scheduler, then each --scheduler-alt.
        let ep = match (n as usize - 1) % (1 + s.scheduler_alt.len()) {
            0 => &s.scheduler,
            i => &s.scheduler_alt[i - 1],
        };
        let stream = match ep.connect(&Via::any(), Some(left.min(Duration::from_secs(2)))) {
            Ok(st) => st,
            Err(e) => {
                tracing::debug!(error = %e, attempt = n, "the scheduler is not reachable yet");
                continue;
            }
        };
        let left = deadline.saturating_duration_since(Instant::now());
        match session(stream, ctx, true, left.min(HANDSHAKE)) {
            Ok(end) => return Some(end),
            Err(e) => {
                tracing::info!(error = %format!("{e:#}"), attempt = n, "rejoining failed");
            }
        }
    }
}

/// How a session with the scheduler ended.
enum End {
    /// The node stops with this exit code (the scheduler shut down, or a signal).
    Exit(i32),
    /// The connection was lost (the scheduler crashed, closed it, or went silent).
    Lost(String),
}

/// The control loop's outgoing queue and a way to shut its connection down.
type Link = (Sender<Message>, Box<dyn Fn() + Send>);

/// A stop asked for by a signal: the control loop quits the cluster and returns 0.
#[derive(Clone, Default)]
struct Stop {
    asked: Arc<Mutex<Option<&'static str>>>,
    /// The control loop's outgoing queue and a handle to shut the connection, once connected.
    link: Arc<Mutex<Option<Link>>>,
}

/// How long a stopping node waits for the scheduler to close the connection after Quit.
const QUIT_GRACE: Duration = Duration::from_secs(5);

impl Stop {
    fn requested(&self) -> Option<&'static str> {
        *self.asked.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn request(&self, signal: &'static str) {
        *self.asked.lock().unwrap_or_else(|p| p.into_inner()) = Some(signal);
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
        let link = self.link.lock().unwrap_or_else(|p| p.into_inner()).take();
        // Not connected yet: `run` checks before connecting, `connected` after.
        if let Some((tx, shutdown)) = link {
            let _ = tx.send(Message::Quit {
                reason: format!("{signal} received"),
            });
            // The scheduler closes the connection on Quit; if it does not, close it here.
            std::thread::spawn(move || {
                std::thread::sleep(QUIT_GRACE);
                shutdown();
            });
        }
    }

    /// The session ended: nothing to tell or shut until the next one.
    fn disconnected(&self) {
        *self.link.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    fn connected(&self, tx: Sender<Message>, shutdown: Box<dyn Fn() + Send>) {
        let asked = self.requested();
        *self.link.lock().unwrap_or_else(|p| p.into_inner()) = Some((tx, shutdown));
        if let Some(sig) = asked {
            self.request(sig);
        }
    }
}

/// Shutting a connection down from another thread (to end a blocked receive).
trait Shutdown {
    fn shutdown_both(&self);
}

impl Shutdown for std::os::unix::net::UnixStream {
    fn shutdown_both(&self) {
        let _ = self.shutdown(std::net::Shutdown::Both);
    }
}

impl Shutdown for std::net::TcpStream {
    fn shutdown_both(&self) {
        let _ = self.shutdown(std::net::Shutdown::Both);
    }
}

struct Session<'a> {
    secret: &'a Secret,
    info: NodeInfo,
    roles: Roles,
    out_tx: Sender<Message>,
    /// The outgoing queue; the sender thread holds it during a session and gives it back.
    out_rx: Option<Receiver<Message>>,
    stop: Stop,
    metrics: &'static super::node_metrics::NodeMetrics,
    span: tracing::Span,
}

impl Session<'_> {
    /// After a lost session: what was queued for the old scheduler is dropped (its tasks and
    /// reports mean nothing to the next one), the producer forgets its jobs and tasks (the
    /// scheduler hands them out again), and the consumer reports every stream afresh when it
    /// rejoins (its rings stay).
    fn forget_session(&mut self) {
        if let Some(rx) = &self.out_rx {
            while rx.try_recv().is_ok() {}
        }
        if let Some(p) = &mut self.roles.producer {
            p.reset();
        }
        if let Some(c) = &self.roles.consumer {
            let mut c = c.lock().unwrap_or_else(|p| p.into_inner());
            // No chunk lands until the next scheduler says who may land it (or releases it).
            c.engine().forget_assignments();
            c.rejoined();
        }
    }
}

fn create_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating the run directory {}", dir.display()))
}

/// Send queued messages, and a heartbeat whenever `period` passed without one, until sending
/// fails (`dead` set) or `quit` is set; gives the queue back.
fn writer<S: Write>(
    mut tx: spate_netlib::msg::MsgSender<S>,
    rx: Receiver<Message>,
    period: Duration,
    dead: Arc<AtomicBool>,
    quit: Arc<AtomicBool>,
    metrics: &super::node_metrics::NodeMetrics,
) -> Receiver<Message> {
    let mut next = Instant::now() + period;
    loop {
        if quit.load(Ordering::SeqCst) {
            return rx;
        }
        let m = match rx.recv_timeout(next.saturating_duration_since(Instant::now())) {
            Ok(m) => m,
            Err(RecvTimeoutError::Timeout) => {
                next = Instant::now() + period;
                Message::Heartbeat
            }
            Err(RecvTimeoutError::Disconnected) => return rx,
        };
        if quit.load(Ordering::SeqCst) {
            return rx;
        }
        metrics.outgoing(&m);
        if let Err(e) = tx.send(&m) {
            tracing::warn!(error = %e, "sending to the scheduler failed");
            dead.store(true, Ordering::SeqCst);
            return rx;
        }
    }
}

/// One session with the scheduler over `stream`: join (`again`: a rejoin after a loss), then
/// serve it until it ends. An error before the join completed is returned as such.
/// The authentication must complete within `handshake`.
fn session(
    stream: Stream,
    ctx: &mut Session<'_>,
    again: bool,
    handshake: Duration,
) -> anyhow::Result<End> {
    match stream {
        Stream::Unix(u) => session_on(u, ctx, again, handshake),
        Stream::Tcp(t) => {
            let _ = t.set_nodelay(true);
            session_on(t, ctx, again, handshake)
        }
    }
}

fn session_on<S>(
    stream: S,
    ctx: &mut Session<'_>,
    again: bool,
    handshake: Duration,
) -> anyhow::Result<End>
where
    S: Read + Write + SetReadTimeout + TryCloneStream + Shutdown + Send + 'static,
{
    let metrics = ctx.metrics;
    let closer = stream
        .try_clone_stream()
        .context("cloning the scheduler connection")?;
    let cfg = MsgConfig {
        handshake_timeout: Some(handshake.max(Duration::from_millis(100))),
        ..MsgConfig::default()
    };
    let mut conn = MsgConn::client_with(stream, ctx.secret, Role::Daemon, &cfg)
        .context("authenticating with the scheduler")?;
    conn.send(&Message::Join(ctx.info.clone()))
        .context("joining the scheduler")?;
    let heartbeat = match conn.recv_timeout(Duration::from_secs(30)) {
        Ok(Some(Message::Welcome { heartbeat_ms })) => Duration::from_millis(heartbeat_ms.max(10)),
        Ok(Some(Message::Error { kind, message })) => {
            bail!("the scheduler refused the join ({kind:?}): {message}")
        }
        Ok(Some(Message::Shutdown { reason })) => {
            println!("scheduler shut down: {reason}");
            return Ok(End::Exit(0));
        }
        Ok(Some(other)) => bail!("the scheduler answered {} to Join", other.name()),
        Ok(None) => bail!("the scheduler did not answer Join within 30 s"),
        Err(e) => bail!("scheduler gone: {e}"),
    };
    println!(
        "{} the scheduler (heartbeat every {} ms)",
        if again { "rejoined" } else { "joined" },
        heartbeat.as_millis()
    );
    tracing::info!(again, "joined the scheduler");
    if !again {
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    }
    ctx.stop
        .connected(ctx.out_tx.clone(), Box::new(move || closer.shutdown_both()));
    let (mut rx, tx) = conn.split().context("splitting the scheduler connection")?;
    let dead = Arc::new(AtomicBool::new(false));
    let quit = Arc::new(AtomicBool::new(false));
    let out_rx = ctx
        .out_rx
        .take()
        .context("the outgoing queue is held by an earlier session")?;
    let (d2, q2, span2) = (dead.clone(), quit.clone(), ctx.span.clone());
    let sender = std::thread::Builder::new()
        .name("spate-ctl-tx".into())
        .spawn(move || {
            let _e = span2.entered();
            writer(tx, out_rx, heartbeat, d2, q2, metrics)
        })
        .context("spawning the control sender")?;
    // Stream reports (progress, readers) from the consumer role.
    let stop = Arc::new(AtomicBool::new(false));
    let ticker = ctx.roles.consumer.clone().map(|c| {
        let (stop, out) = (stop.clone(), ctx.out_tx.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let msgs = {
                    let mut node = c.lock().unwrap_or_else(|p| p.into_inner());
                    metrics.streams(&node.engine().streams());
                    node.tick()
                };
                for m in msgs {
                    let _ = out.send(m);
                }
                // Every 20 ms: a reader waiting at the end for its confirmation waits for
                // this report (and the scheduler's answer), so it sets how late readers end.
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    });
    // A scheduler silent for this long is lost (it heartbeats every `heartbeat`).
    let silence = heartbeat.saturating_mul(MISSED_HEARTBEATS);
    // A consumer lands chunks only while in touch: past 2.5 heartbeats of silence (say after
    // being paused) it waits to hear from the scheduler again.
    if let Some(c) = &ctx.roles.consumer {
        c.lock()
            .unwrap_or_else(|p| p.into_inner())
            .engine()
            .set_contact_limit(heartbeat.mul_f64(2.5));
    }
    let end = loop {
        let m = match rx.recv_timeout(silence) {
            Ok(Some(m)) => m,
            Err(_) | Ok(None) if ctx.stop.requested().is_some() => {
                let sig = ctx.stop.requested().unwrap_or("signal");
                println!("{sig} received: left the cluster; stopping");
                tracing::info!("left the cluster ({sig}); stopping");
                break End::Exit(0);
            }
            Ok(None) => {
                break End::Lost(format!("it sent nothing for {} ms", silence.as_millis()));
            }
            Err(MsgError::Closed) => break End::Lost("it closed the connection".into()),
            Err(e) => break End::Lost(e.to_string()),
        };
        if dead.load(Ordering::SeqCst) {
            break End::Lost("sending to it failed".into());
        }
        if let Some(c) = &ctx.roles.consumer {
            c.lock().unwrap_or_else(|p| p.into_inner()).engine().heard();
        }
        match m {
            Message::Shutdown { reason } => {
                println!("scheduler shut down: {reason}; stopping");
                tracing::info!("scheduler shut down: {reason}; stopping");
                break End::Exit(0);
            }
            Message::Heartbeat | Message::Welcome { .. } => {}
            Message::Error { kind, message } => {
                tracing::warn!(?kind, %message, "the scheduler reports an error");
            }
            m => {
                metrics.incoming(&m);
                let mut replies = None;
                if let Some(c) = &ctx.roles.consumer {
                    replies = c.lock().unwrap_or_else(|p| p.into_inner()).handle(&m);
                }
                if replies.is_none()
                    && let Some(p) = &mut ctx.roles.producer
                {
                    replies = p.handle(&m);
                }
                match replies {
                    Some(r) => {
                        for reply in r {
                            let _ = ctx.out_tx.send(reply);
                        }
                    }
                    None => {
                        tracing::warn!(msg = m.name(), "unexpected message from the scheduler");
                        let _ = ctx.out_tx.send(Message::Error {
                            kind: spate_netlib::proto::ErrorKind::UnexpectedMessage,
                            message: format!("this node does not handle {}", m.name()),
                        });
                    }
                }
            }
        }
    };
    stop.store(true, Ordering::SeqCst);
    if let Some(t) = ticker {
        let _ = t.join();
    }
    // The sender gives the queue back (woken by a heartbeat it will not send).
    quit.store(true, Ordering::SeqCst);
    let _ = ctx.out_tx.send(Message::Heartbeat);
    match sender.join() {
        Ok(rx) => ctx.out_rx = Some(rx),
        Err(_) => bail!("the control sender panicked"),
    }
    ctx.stop.disconnected();
    drop(rx);
    Ok(end)
}

/// Heartbeats a node may miss from the scheduler before it counts the scheduler as lost (the
/// scheduler allows nodes the same).
const MISSED_HEARTBEATS: u32 = 3;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_id_is_the_machine_id_else_a_stable_digest_of_the_host_name() {
        assert_eq!(
            host_id_from(Some("0123456789abcdef0123456789abcdef\n"), "x"),
            HostId(0x0123456789abcdef0123456789abcdef)
        );
        // XXH3-128 of "printer" is fixed by the algorithm's specification: the same on every
        // build (DefaultHasher's output may change between Rust releases).
        let a = host_id_from(None, "printer\n");
        assert_eq!(a, host_id_from(Some("not hex"), "printer"));
        assert_eq!(a, HostId(xxhash_rust::xxh3::xxh3_128(b"printer")));
        assert_ne!(a, host_id_from(None, "printer2"));
    }

    #[test]
    fn cores_outside_the_affinity_are_refused_listing_the_allowed_ones() {
        let allowed = spate_runtime::thread::allowed_cores();
        let a = Args {
            name: Some("n".into()),
            consumer: true,
            cores: Some("4000".into()),
            ..Args::default()
        };
        let e = format!("{:#}", settings(a).unwrap_err());
        assert!(e.contains(&format!("it may use cores {allowed:?}")), "{e}");
        assert!(!allowed.is_empty());
    }

    #[test]
    fn interfaces_parse_with_their_address() {
        let i = parse_interface("eth1=10.0.0.1").unwrap();
        assert_eq!(
            (i.name.as_str(), i.addr.to_string()),
            ("eth1", "10.0.0.1".into())
        );
        assert_eq!(parse_interface("lo").unwrap().addr.to_string(), "127.0.0.1");
        let e = parse_interface("eth1").unwrap_err().to_string();
        assert!(e.contains("--interface eth1=ADDRESS"), "{e}");
        assert!(parse_interface("eth1=x").is_err());
    }

    #[test]
    fn a_config_file_gives_every_key_and_flags_win() {
        let dir = std::env::temp_dir().join(format!("spate-node-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("node.toml");
        std::fs::write(
            &p,
            "name = \"n1\"\nscheduler = \"tcp:10.0.0.1:7070\"\nproducer = true\n\
             consumer = true\ncores = \"0-1\"\ninterfaces = [\"eth1=10.0.0.2\"]\n\
             data_dir = \"/run/spate/n1\"\nring_budget = \"2GiB\"\ndata_port = 7071\n\
             local_pull = false\n",
        )
        .unwrap();
        let s = settings(Args {
            config: Some(p.clone()),
            name: Some("n2".into()),
            ..Args::default()
        })
        .unwrap();
        assert_eq!(s.name, "n2");
        assert_eq!(
            s.local_path,
            LocalPath::Socket,
            "local_pull = false is the socket path"
        );
        assert_eq!(s.scheduler.to_string(), "tcp:10.0.0.1:7070");
        assert!(s.producer && s.consumer);
        assert_eq!(s.cores, Some(vec![0, 1]));
        assert_eq!(s.interfaces[0].name, "eth1");
        assert_eq!(s.run_dir, PathBuf::from("/run/spate/n1"));
        assert_eq!((s.ring_budget, s.data_port), (2 << 30, 7071));
        std::fs::write(&p, "name = \"n1\"\nbogus = 1\n").unwrap();
        let e = settings(Args {
            config: Some(p),
            ..Args::default()
        })
        .unwrap_err();
        assert!(format!("{e:#}").contains("bogus"), "{e:#}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn settings_need_a_name_and_a_role() {
        let e = settings(Args::default()).unwrap_err().to_string();
        assert!(e.contains("--name"), "{e}");
        let a = Args {
            name: Some("n".into()),
            ..Args::default()
        };
        let e = settings(a).unwrap_err().to_string();
        assert!(e.contains("--producer and/or --consumer"), "{e}");
        let a = Args {
            name: Some("n".into()),
            scheduler: Some("unix:/x".into()),
            consumer: true,
            ring_budget: Some("4GiB".into()),
            cores: Some("0,1".into()),
            ..Args::default()
        };
        let s = settings(a).unwrap();
        assert_eq!(s.ring_budget, 4 << 30);
        assert_eq!(s.cores, Some(vec![0, 1]));
    }
}
