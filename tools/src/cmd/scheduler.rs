//! `spate scheduler`: run the scheduler server until SIGINT/SIGTERM.

use std::path::PathBuf;

use anyhow::Context as _;
use spate_netlib::endpoint::Endpoint;
use spate_scheduler::server::metrics::SchedulerMetrics;
use spate_scheduler::server::user::{DEFAULT_ENDPOINT, SecretOrigin, server_secret};
use spate_scheduler::server::{Server, ServerConfig, Validator, stop_on_signals};

#[derive(clap::Args, Debug, Default)]
#[command(
    about = "Run the scheduler: the cluster's single point of decision and of contact with users",
    long_about = "Run the scheduler: it admits or refuses jobs, asks consumers to allocate \
stream rings, hands compute+expel tasks to producers on demand, watches daemons join, quit and \
crash, and serves job inputs to producers from --files DIR.\n\n\
Every connection authenticates with the shared cluster secret: --secret-file PATH, else \
$SPATE_SECRET, else PATH.secret beside the first UNIX socket. When none exists and the \
scheduler listens only on UNIX sockets, it generates one there (mode 0600, or 0640 with \
--group) and says so; local daemons and users find it by the same rule. With a TCP endpoint \
give the secret explicitly (every node needs it).\n\n\
Who may talk to it: whoever can open its UNIX socket and read the secret. Both are the \
scheduler's user's alone (mode 0600) unless --group GROUP gives that group access (socket \
0660, generated secret 0640): members may then run `spate submit`, `status` and `cancel`.\n\n\
--config FILE reads the same settings from TOML (`listen = [\"unix:/run/spate/sched.sock\"]`, \
`secret_file`, `files`, `heartbeat_ms`, `tasks_in_flight`, `max_chunk = \"25MB\"`, `metrics = \
\"127.0.0.1:9464\"`, `group`, `policy`, `headroom`, `state_dir`); flags given on the command line \
win.\n\n\
Durable state (job ids, which never repeat; jobs live and ended, kept in status across restarts) \
is a SQLite database in --state-dir DIR (default: $STATE_DIRECTORY under systemd, else PATH.state \
beside the first UNIX socket). A job live when the scheduler stopped is not resumed: the next \
start ends it as aborted, saying so.\n\n\
It stops cleanly on SIGINT or SIGTERM: daemons and users are told (Shutdown), the socket files \
are removed, exit 0. Under systemd (Type=notify) it reports readiness once it listens. Logs go \
to stderr at INFO (SPATE_LOG=debug for more, --log-format json for JSON lines).",
    after_help = "Examples:\n  \
spate scheduler --listen unix:/run/spate/sched.sock --files /srv/jobs\n  \
spate scheduler --listen unix:/run/spate/sched.sock --listen tcp:0.0.0.0:7070 --secret-file /etc/spate/secret\n  \
spate scheduler --config /etc/spate/scheduler.toml --metrics 127.0.0.1:9464"
)]
pub struct Args {
    /// Settings file (TOML) with the same keys as the flags; flags given here win.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Endpoint to listen on: unix:PATH or tcp:HOST:PORT (repeat for several)
    /// [default: unix:/run/spate/sched.sock].
    #[arg(long = "listen", value_name = "ENDPOINT")]
    pub listen: Vec<Endpoint>,
    /// File holding the cluster secret (at least 16 bytes).
    #[arg(long, value_name = "PATH")]
    pub secret_file: Option<PathBuf>,
    /// Directory whose files jobs may name as inputs (served to producers).
    #[arg(long, value_name = "DIR")]
    pub files: Option<PathBuf>,
    /// Heartbeat interval asked of daemons, in milliseconds (silent for 3 = dead) [default: 1000].
    #[arg(long, value_name = "MS")]
    pub heartbeat_ms: Option<u64>,
    /// Compute tasks kept queued per producer (at least 2).
    #[arg(long, value_name = "N")]
    pub tasks_in_flight: Option<usize>,
    /// Largest chunk piece the load-balance policy picks when a spec gives no chunk size
    /// (e.g. 25MB).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub max_chunk: Option<u64>,
    /// Serve Prometheus metrics at http://ADDR/metrics, e.g. 127.0.0.1:9464 (off by default).
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<String>,
    /// Give this group access to the UNIX sockets (0660) and a generated secret (0640).
    #[arg(long, value_name = "GROUP")]
    pub group: Option<String>,
    /// The policy of jobs that name none (a job chooses with `policy = "..."`): `tclo`
    /// plans from measured capacities, promises what it admits and refuses what it cannot
    /// feed; `load-balance` is the baseline (every producer on demand, promises nothing)
    /// [default: tclo].
    #[arg(long, value_name = "NAME",
          value_parser = clap::builder::PossibleValuesParser::new(spate_scheduler::server::POLICY_NAMES))]
    pub policy: Option<String>,
    /// TCLO: capacity asked above a job's rate, in percent [default: 5].
    #[arg(long, value_name = "PCT")]
    pub headroom: Option<f64>,
    /// Directory of the durable state (SQLite: job ids, live and ended jobs) [default:
    /// $STATE_DIRECTORY under systemd, else PATH.state beside the first UNIX socket].
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
}

/// The settings file: the flags' keys.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<Vec<String>>,
    secret_file: Option<PathBuf>,
    files: Option<PathBuf>,
    heartbeat_ms: Option<u64>,
    tasks_in_flight: Option<usize>,
    max_chunk: Option<String>,
    metrics: Option<String>,
    group: Option<String>,
    policy: Option<String>,
    headroom: Option<f64>,
    state_dir: Option<PathBuf>,
}

/// Settings after layering flags over the file over the defaults.
#[derive(Debug)]
struct Settings {
    listen: Vec<Endpoint>,
    secret_file: Option<PathBuf>,
    files: Option<PathBuf>,
    heartbeat_ms: u64,
    tasks_in_flight: Option<usize>,
    max_chunk: Option<u64>,
    metrics: Option<std::net::SocketAddr>,
    group: Option<(String, nix::unistd::Gid)>,
    policy: String,
    headroom: f64,
    state_dir: PathBuf,
}

fn settings(a: Args) -> anyhow::Result<Settings> {
    let file: FileConfig = match &a.config {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("cannot read the scheduler config {}", p.display()))?;
            toml::from_str(&text).with_context(|| format!("scheduler config {}", p.display()))?
        }
        None => FileConfig::default(),
    };
    let listen = if !a.listen.is_empty() {
        a.listen
    } else if let Some(l) = file.listen {
        l.iter()
            .map(|e| {
                e.parse::<Endpoint>()
                    .map_err(|err| anyhow::anyhow!("listen {e:?}: {err}"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?
    } else {
        vec![
            DEFAULT_ENDPOINT
                .parse()
                .map_err(|e| anyhow::anyhow!("{e}"))?,
        ]
    };
    let max_chunk = match (a.max_chunk, file.max_chunk) {
        (Some(c), _) => Some(c),
        (None, Some(s)) => Some(parse_size(&s).map_err(|e| anyhow::anyhow!("max_chunk: {e}"))?),
        (None, None) => None,
    };
    let metrics = match a.metrics.or(file.metrics) {
        Some(m) => Some(crate::metrics::parse_addr(&m).map_err(|e| anyhow::anyhow!(e))?),
        None => None,
    };
    let group = match a.group.or(file.group) {
        Some(g) => {
            let found = nix::unistd::Group::from_name(&g)
                .with_context(|| format!("looking up the group {g:?}"))?;
            let gr = found.with_context(|| {
                format!(
                    "no group {g:?} on this machine: create it (`groupadd {g}`) or drop --group"
                )
            })?;
            Some((g, gr.gid))
        }
        None => None,
    };
    let policy = a.policy.or(file.policy).unwrap_or_else(|| "tclo".into());
    if !spate_scheduler::server::POLICY_NAMES.contains(&policy.as_str()) {
        anyhow::bail!(
            "policy {policy:?}: no such policy (known: {})",
            spate_scheduler::server::POLICY_NAMES.join(", ")
        );
    }
    let headroom = a.headroom.or(file.headroom).unwrap_or(5.0);
    if !(0.0..=100.0).contains(&headroom) {
        anyhow::bail!("--headroom {headroom}: give a percentage from 0 to 100");
    }
    let state_dir = match a.state_dir.or(file.state_dir) {
        Some(d) => d,
        None => default_state_dir(std::env::var_os("STATE_DIRECTORY"), &listen)?,
    };
    Ok(Settings {
        state_dir,
        listen,
        secret_file: a.secret_file.or(file.secret_file),
        files: a.files.or(file.files),
        heartbeat_ms: a.heartbeat_ms.or(file.heartbeat_ms).unwrap_or(1000),
        tasks_in_flight: a.tasks_in_flight.or(file.tasks_in_flight),
        max_chunk,
        metrics,
        group,
        policy,
        headroom,
    })
}

/// The state directory when none is given: systemd's `StateDirectory=` (the first of its
/// list), else `PATH.state` beside the first UNIX socket.
fn default_state_dir(
    systemd: Option<std::ffi::OsString>,
    listen: &[Endpoint],
) -> anyhow::Result<PathBuf> {
    if let Some(d) = systemd.and_then(|v| {
        v.to_str()
            .and_then(|s| s.split(':').next().map(PathBuf::from))
    }) && !d.as_os_str().is_empty()
    {
        return Ok(d);
    }
    for ep in listen {
        if let Endpoint::Unix(p) = ep {
            let mut s = p.clone().into_os_string();
            s.push(".state");
            return Ok(PathBuf::from(s));
        }
    }
    anyhow::bail!(
        "where to keep the scheduler's state: it listens on no UNIX socket to keep it beside;          give --state-dir DIR (e.g. /var/lib/spate)"
    )
}

fn parse_size(s: &str) -> Result<u64, String> {
    spate_scheduler::spec::parse_size(s).map_err(|e| e.to_string())
}

/// The kernels' own checks of a job's parameters and inputs, run at submit (the scheduler
/// crate knows no kernel; the producer's factory does).
pub fn kernel_checks() -> Validator {
    Validator(std::sync::Arc::new(|plan, read| {
        use spate_producer::kernel::KernelError;
        use spate_scheduler::spec::{SpecError, SpecErrorKind};
        let params = spate_scheduler::server::table_to_value(&plan.params);
        let geometry = spate_scheduler::server::job_geometry(plan);
        spate_producer::factory::check(plan.kernel.name(), &params, &geometry, &plan.inputs, read)
            .map_err(|e| {
                let (field, problem) = match e {
                    KernelError::Param { name, problem } => {
                        let top =
                            ["inputs", "sheet", "bits", "line_bytes"].contains(&name.as_str());
                        (if top { name } else { format!("params.{name}") }, problem)
                    }
                    KernelError::Unknown(k) => {
                        ("kernel".to_string(), format!("unknown kernel {k:?}"))
                    }
                    KernelError::Shape(s) => ("(spec)".to_string(), s),
                };
                SpecError {
                    field,
                    kind: SpecErrorKind::Kernel { problem },
                }
            })
    }))
}

pub fn run(a: Args) -> anyhow::Result<i32> {
    let a = settings(a)?;
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
    if let (SecretOrigin::Generated(p), Some((_, gid))) = (&origin, &a.group) {
        use std::os::unix::fs::PermissionsExt as _;
        nix::unistd::chown(p.as_path(), None, Some(*gid))
            .with_context(|| format!("cannot give {} to its group", p.display()))?;
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o640))
            .with_context(|| format!("cannot set the mode of {}", p.display()))?;
    }
    let mut cfg = ServerConfig::new(a.listen.clone(), secret);
    cfg.files = a.files.clone();
    cfg.heartbeat_ms = a.heartbeat_ms.max(10);
    cfg.socket_group = a.group.as_ref().map(|g| g.1);
    if let Some(n) = a.tasks_in_flight {
        cfg.policy.tasks_in_flight = n.max(2);
    }
    if let Some(c) = a.max_chunk {
        cfg.policy.max_chunk_bytes = c;
    }
    cfg.tclo.headroom = a.headroom / 100.0;
    cfg.default_policy = a.policy.clone();
    cfg.validator = Some(kernel_checks());
    cfg.state_dir = Some(a.state_dir.clone());
    let mut registry = None;
    if a.metrics.is_some() {
        let m = SchedulerMetrics::default();
        let r = prometheus::Registry::new_custom(Some("spate".into()), None)?;
        m.register(&r)?;
        cfg.metrics = Some(m);
        registry = Some(r);
    }
    let server = Server::bind(cfg)?;
    // Before any other thread starts: they inherit the blocked SIGINT/SIGTERM.
    stop_on_signals(server.stop_handle()).context("cannot set up SIGINT/SIGTERM handling")?;
    let metrics_server = match (a.metrics, registry) {
        (Some(addr), Some(r)) => Some(crate::metrics::MetricsServer::start(addr, r, || {})?),
        _ => None,
    };
    let eps: Vec<String> = server.endpoints().iter().map(|e| e.to_string()).collect();
    match &origin {
        SecretOrigin::Generated(p) => eprintln!(
            "spate scheduler: generated a cluster secret in {} (mode {}); local daemons and \
             users find it there, others need --secret-file with a copy",
            p.display(),
            if a.group.is_some() { "0640" } else { "0600" }
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
    if let Some((g, _)) = &a.group {
        eprintln!("spate scheduler: group {g} may use the sockets");
    }
    if let Some(f) = &a.files {
        eprintln!("spate scheduler: serving job inputs from {}", f.display());
    }
    eprintln!(
        "spate scheduler: state in {}",
        spate_netlib::text::Quoted::path(&a.state_dir)
    );
    if let Some(m) = &metrics_server {
        eprintln!("spate scheduler: metrics at http://{}/metrics", m.addr());
    }
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    server.run()?;
    drop(metrics_server);
    eprintln!("spate scheduler: stopped");
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_config_file_gives_every_key_and_flags_win() {
        let dir = std::env::temp_dir().join(format!("spate-sched-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("scheduler.toml");
        std::fs::write(
            &p,
            "listen = [\"unix:/run/spate/s.sock\", \"tcp:0.0.0.0:7070\"]\n\
             secret_file = \"/etc/spate/secret\"\nfiles = \"/srv/spate\"\nheartbeat_ms = 500\n\
             tasks_in_flight = 4\nmax_chunk = \"25MB\"\nmetrics = \"127.0.0.1:9464\"\n\
             policy = \"load-balance\"\nheadroom = 10\n",
        )
        .unwrap();
        let s = settings(Args {
            config: Some(p.clone()),
            heartbeat_ms: Some(250),
            ..Args::default()
        })
        .unwrap();
        let l: Vec<String> = s.listen.iter().map(|e| e.to_string()).collect();
        assert_eq!(l, ["unix:/run/spate/s.sock", "tcp:0.0.0.0:7070"]);
        assert_eq!(s.secret_file, Some(PathBuf::from("/etc/spate/secret")));
        assert_eq!(s.files, Some(PathBuf::from("/srv/spate")));
        assert_eq!(s.heartbeat_ms, 250);
        assert_eq!(s.tasks_in_flight, Some(4));
        assert_eq!(s.max_chunk, Some(25_000_000));
        assert_eq!(s.metrics, Some("127.0.0.1:9464".parse().unwrap()));
        assert_eq!((s.policy.as_str(), s.headroom), ("load-balance", 10.0));
        let s = settings(Args {
            config: Some(p.clone()),
            listen: vec!["unix:/tmp/x.sock".parse().unwrap()],
            ..Args::default()
        })
        .unwrap();
        assert_eq!(s.listen.len(), 1);
        std::fs::write(&p, "listen = [\"unix:/x\"]\nlisten_on = 1\n").unwrap();
        let e = format!(
            "{:#}",
            settings(Args {
                config: Some(p),
                ..Args::default()
            })
            .unwrap_err()
        );
        assert!(e.contains("listen_on"), "{e}");
        let s = settings(Args::default()).unwrap();
        assert_eq!(s.listen[0].to_string(), DEFAULT_ENDPOINT);
        assert_eq!(s.heartbeat_ms, 1000);
        assert_eq!((s.policy.as_str(), s.headroom), ("tclo", 5.0));
        let e = format!(
            "{:#}",
            settings(Args {
                group: Some("no-such-group-here".into()),
                ..Args::default()
            })
            .unwrap_err()
        );
        assert!(e.contains("no group \"no-such-group-here\""), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_state_goes_under_systemd_s_directory_else_beside_the_first_unix_socket() {
        let unix: Endpoint = "unix:/run/spate/sched.sock".parse().unwrap();
        let tcp: Endpoint = "tcp:0.0.0.0:7070".parse().unwrap();
        assert_eq!(
            default_state_dir(
                Some("/var/lib/spate:/var/lib/other".into()),
                std::slice::from_ref(&unix)
            )
            .unwrap(),
            PathBuf::from("/var/lib/spate")
        );
        assert_eq!(
            default_state_dir(None, &[tcp.clone(), unix]).unwrap(),
            PathBuf::from("/run/spate/sched.sock.state")
        );
        let e = default_state_dir(None, &[tcp]).unwrap_err().to_string();
        assert!(e.contains("give --state-dir DIR"), "{e}");
    }
}
