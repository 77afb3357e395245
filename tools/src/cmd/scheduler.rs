//! `spate scheduler`: run the scheduler server until SIGINT/SIGTERM.

use std::path::PathBuf;

use anyhow::Context as _;
use spate_netlib::endpoint::Endpoint;
use spate_scheduler::server::user::{DEFAULT_ENDPOINT, SecretOrigin, server_secret};
use spate_scheduler::server::{Server, ServerConfig, stop_on_signals};

#[derive(clap::Args, Debug)]
#[command(
    about = "Run the scheduler: the cluster's single point of decision and of contact with users",
    long_about = "Run the scheduler: it admits or refuses jobs, asks consumers to allocate \
stream rings, hands compute+expel tasks to producers on demand, watches daemons join, quit and \
crash, and serves job inputs to producers from --files DIR.\n\n\
Every connection authenticates with the shared cluster secret: --secret-file PATH, else \
$SPATE_SECRET, else PATH.secret beside the first UNIX socket. When none exists and the \
scheduler listens only on UNIX sockets, it generates one there (mode 0600) and says so; \
local daemons and users find it by the same rule. With a TCP endpoint give the secret \
explicitly (every node needs it).\n\n\
It stops cleanly on SIGINT or SIGTERM: daemons and users are told (Shutdown), the socket files \
are removed. Logs go to stderr (SPATE_LOG=info for more).",
    after_help = "Examples:\n  \
spate scheduler --listen unix:/run/spate/sched.sock --files /srv/jobs\n  \
spate scheduler --listen unix:/run/spate/sched.sock --listen tcp:0.0.0.0:7070 --secret-file /etc/spate/secret"
)]
pub struct Args {
    /// Endpoint to listen on: unix:PATH or tcp:HOST:PORT (repeat for several).
    #[arg(long = "listen", value_name = "ENDPOINT", default_value = DEFAULT_ENDPOINT)]
    pub listen: Vec<Endpoint>,
    /// File holding the cluster secret (at least 16 bytes).
    #[arg(long, value_name = "PATH")]
    pub secret_file: Option<PathBuf>,
    /// Directory whose files jobs may name as inputs (served to producers).
    #[arg(long, value_name = "DIR")]
    pub files: Option<PathBuf>,
    /// Heartbeat interval asked of daemons, in milliseconds (silent for 3 = dead).
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    pub heartbeat_ms: u64,
    /// Compute tasks kept queued per producer (at least 2).
    #[arg(long, value_name = "N")]
    pub tasks_in_flight: Option<usize>,
    /// Largest chunk piece the load-balance policy picks when a spec gives no chunk size
    /// (e.g. 25MB).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub max_chunk: Option<u64>,
    /// The policy of jobs that name none (a job chooses with `policy = "..."`): `tclo`
    /// plans from measured capacities, promises what it admits and refuses what it cannot
    /// feed; `load-balance` is the baseline (every producer on demand, promises nothing).
    #[arg(long, value_name = "NAME", default_value = "tclo",
          value_parser = clap::builder::PossibleValuesParser::new(spate_scheduler::server::POLICY_NAMES))]
    pub policy: String,
    /// TCLO: capacity asked above a job's rate, in percent.
    #[arg(long, value_name = "PCT", default_value_t = 5.0)]
    pub headroom: f64,
}

fn parse_size(s: &str) -> Result<u64, String> {
    spate_scheduler::spec::parse_size(s).map_err(|e| e.to_string())
}

pub fn run(a: Args) -> anyhow::Result<i32> {
    for ep in &a.listen {
        if let Endpoint::Unix(p) = ep
            && let Some(dir) = p.parent()
            && !dir.as_os_str().is_empty()
            && !dir.exists()
        {
            std::fs::create_dir_all(dir).with_context(|| {
                format!(
                    "cannot create the socket directory {}",
                    spate_netlib::text::Quoted::path(dir)
                )
            })?;
        }
    }
    let (secret, origin) = server_secret(a.secret_file.as_deref(), &a.listen)
        .context("the scheduler needs a cluster secret")?;
    let mut cfg = ServerConfig::new(a.listen.clone(), secret);
    cfg.files = a.files.clone();
    cfg.heartbeat_ms = a.heartbeat_ms.max(10);
    if let Some(n) = a.tasks_in_flight {
        cfg.policy.tasks_in_flight = n.max(2);
    }
    if let Some(c) = a.max_chunk {
        cfg.policy.max_chunk_bytes = c;
    }
    if !(0.0..=100.0).contains(&a.headroom) {
        anyhow::bail!("--headroom {}: give a percentage from 0 to 100", a.headroom);
    }
    cfg.tclo.headroom = a.headroom / 100.0;
    cfg.default_policy = a.policy.clone();
    let server = Server::bind(cfg)?;
    stop_on_signals(server.stop_handle()).context("cannot set up SIGINT/SIGTERM handling")?;
    let eps: Vec<String> = server.endpoints().iter().map(|e| e.to_string()).collect();
    match &origin {
        SecretOrigin::Generated(p) => eprintln!(
            "spate scheduler: generated a cluster secret in {} (mode 0600); local daemons and \
             users find it there, others need --secret-file with a copy",
            p.display()
        ),
        SecretOrigin::Beside(p) => {
            eprintln!(
                "spate scheduler: using the cluster secret in {}",
                p.display()
            )
        }
        _ => {}
    }
    eprintln!("spate scheduler: listening on {}", eps.join(", "));
    if let Some(f) = &a.files {
        eprintln!("spate scheduler: serving job inputs from {}", f.display());
    }
    server.run()?;
    eprintln!("spate scheduler: stopped");
    Ok(0)
}
