//! The scheduler server (DESIGN.md §1, §2, §7): one thread, one io_uring
//! ([`spate_runtime::Driver`]), one event queue for everything.
//!
//! The loop accepts connections on its listen endpoints (UNIX and/or TCP), runs the sans-IO
//! [`Handshake`] on each (shared cluster secret; the server's role is [`Role::Scheduler`]),
//! decodes frames with [`FrameDecoder`] and hands every [`Message`] to the [`Hub`], which turns
//! it into core events and the core's commands into messages. A periodic timeout drives ticks
//! (core timeouts, heartbeat checks, progress updates); an eventfd wakes the loop to stop.
//!
//! Peers:
//! - **daemons** (handshake role `Daemon`, `Producer` or `Consumer`): `Join` first, answered
//!   `Welcome { heartbeat_ms }`; any message counts as a sign of life; silent for more than
//!   [`MISSED_HEARTBEATS`] heartbeats, or EOF/error on the connection, is a crash; `Quit` is a
//!   clean leave. The scheduler sends each daemon a `Heartbeat` every `heartbeat_ms`.
//! - **users** (role `User`): `Submit`, `Ready`, `Done`, `Cancel`, `Status`, `Watch`. A user
//!   connection that drops does not end its jobs: any user may later send `Ready`, `Done` or
//!   `Cancel` for a job id (e.g. `spate cancel JOB`).
//!
//! On stop ([`StopHandle::stop`], or SIGINT/SIGTERM through [`stop_on_signals`]) every peer
//! gets `Shutdown`, connections are flushed and closed (at most [`STOP_GRACE`]), and UNIX socket
//! files are removed.

mod hub;
mod latency;
pub mod metrics;
pub mod state;
pub mod user;

use std::collections::BTreeMap;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use spate_netlib::auth::{Handshake, HandshakeState, Role, Secret};
use spate_netlib::endpoint::{Endpoint, EndpointError, Listener, Stream};
use spate_netlib::frame::{DEFAULT_MAX_FRAME, Encoder, FrameDecoder, FrameKind};
use spate_netlib::proto::{ErrorKind, Message};
use spate_runtime::{Completion, Driver, DriverConfig, Notifier, Op, OpId, Output, RuntimeError};

pub use hub::{
    Action, ConnId, Hub, MISSED_HEARTBEATS, UPDATE_INTERVAL_MS, Validator, compute_pair, core_info,
    job_geometry, refuse_reason, route, table_to_value,
};

use crate::core::Scheduler;
use crate::files::{FileError, FileService};
use crate::policy::{LoadBalance, LoadBalanceConfig, Policy, Tclo, TcloConfig};

/// How long a stopping server waits for its connections to flush.
pub const STOP_GRACE: Duration = Duration::from_secs(3);
/// A connection asked to close is forced closed after this long.
const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// Receive buffer per connection.
const RECV_BUF: usize = 64 * 1024;
/// Input pieces are read from disk while less than this is queued for the connection.
const PUMP_LOW: usize = 1 << 20;
/// A peer that lets more than this pile up unread is dropped.
const MAX_QUEUED: usize = 64 << 20;

/// Settings of a server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Endpoints to listen on.
    pub listen: Vec<Endpoint>,
    /// The cluster secret every peer must share.
    pub secret: Secret,
    /// Root directory of the file service (None: jobs with inputs are refused).
    pub files: Option<PathBuf>,
    /// Heartbeat interval asked of daemons, in milliseconds.
    pub heartbeat_ms: u64,
    /// Tick interval (timeouts, heartbeat checks, progress updates).
    pub tick: Duration,
    /// Unauthenticated connections are closed after this long.
    pub handshake_timeout: Duration,
    /// Largest frame payload accepted and sent.
    pub max_frame: u32,
    /// Settings of the load-balancing policy.
    pub policy: LoadBalanceConfig,
    /// Settings of the TCLO policy.
    pub tclo: TcloConfig,
    /// The policy of jobs that name none: "tclo" or "load-balance".
    pub default_policy: String,
    /// Kernel checks of submitted jobs (parameters, inputs), as preload would do them.
    pub validator: Option<hub::Validator>,
    /// Metrics to keep up to date (None: none kept).
    pub metrics: Option<metrics::SchedulerMetrics>,
    /// Group given read-write access to the UNIX sockets (mode 0660 instead of 0600).
    pub socket_group: Option<nix::unistd::Gid>,
    /// Directory of the durable state (job ids, live and ended jobs; None: kept in memory
    /// only, ids start at 1 on every start).
    pub state_dir: Option<PathBuf>,
}

/// The policies a server offers, and the index of `default` among them (None: unknown name).
pub fn policies(cfg: &ServerConfig) -> Option<(Vec<Box<dyn Policy>>, usize)> {
    let all: Vec<Box<dyn Policy>> = vec![
        Box::new(Tclo::new(cfg.tclo.clone())),
        Box::new(LoadBalance::new(cfg.policy.clone())),
    ];
    let i = all.iter().position(|p| p.name() == cfg.default_policy)?;
    Some((all, i))
}

/// Names of the policies a server offers.
pub const POLICY_NAMES: [&str; 2] = ["tclo", "load-balance"];

impl ServerConfig {
    /// Defaults: heartbeat 1 s, tick 100 ms, handshake timeout 10 s, 1 MiB frames, the TCLO
    /// policy by default (load balancing for jobs that ask for it), no file service.
    pub fn new(listen: Vec<Endpoint>, secret: Secret) -> ServerConfig {
        ServerConfig {
            listen,
            secret,
            files: None,
            heartbeat_ms: 1000,
            tick: Duration::from_millis(100),
            handshake_timeout: Duration::from_secs(10),
            max_frame: DEFAULT_MAX_FRAME,
            policy: LoadBalanceConfig::default(),
            tclo: TcloConfig::default(),
            default_policy: "tclo".into(),
            validator: None,
            metrics: None,
            socket_group: None,
            state_dir: None,
        }
    }
}

/// Why the server could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// No endpoint given.
    #[error(
        "no endpoint to listen on: give at least one, e.g. `--listen unix:/run/spate/sched.sock`"
    )]
    NoEndpoint,
    /// Listening failed.
    #[error(transparent)]
    Listen(#[from] EndpointError),
    /// The file service directory is unusable.
    #[error("file service: {0}")]
    Files(#[from] FileError),
    /// The default policy is not one the scheduler has.
    #[error("unknown policy \"{0}\" (known: tclo, load-balance)")]
    UnknownPolicy(String),
    /// io_uring or the eventfd failed.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// The durable state could not be opened or read.
    #[error(transparent)]
    State(#[from] state::StoreError),
}

/// Stops a running server from any thread.
#[derive(Debug, Clone)]
pub struct StopHandle {
    flag: Arc<AtomicBool>,
    notifier: Notifier,
}

impl StopHandle {
    /// Asks the server to stop (it tells its peers `Shutdown` and returns from `run`).
    pub fn stop(&self) {
        self.flag.store(true, Ordering::SeqCst);
        self.notifier.notify();
    }
}

/// A bound, not yet running server.
pub struct Server {
    cfg: ServerConfig,
    listeners: Vec<Listener>,
    files: Option<FileService>,
    store: Option<state::Store>,
    stop: StopHandle,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("listen", &self.cfg.listen)
            .finish_non_exhaustive()
    }
}

impl Server {
    /// Binds the listen endpoints (UNIX socket files exist when this returns) and opens the
    /// file service. The io_uring is created by [`Server::run`] on the thread that runs it.
    pub fn bind(cfg: ServerConfig) -> Result<Server, ServerError> {
        if cfg.listen.is_empty() {
            return Err(ServerError::NoEndpoint);
        }
        if policies(&cfg).is_none() {
            return Err(ServerError::UnknownPolicy(cfg.default_policy.clone()));
        }
        let files = cfg.files.as_deref().map(FileService::new).transpose()?;
        // The state first: a state that cannot be used stops the start before any socket.
        let store = cfg
            .state_dir
            .as_deref()
            .map(|d| state::Store::open(d, crate::core::ENDED_HISTORY))
            .transpose()?;
        let mut listeners = Vec::with_capacity(cfg.listen.len());
        for ep in &cfg.listen {
            let l = ep.listen()?;
            if let Listener::Unix(_, path) = &l {
                restrict_socket(path, cfg.socket_group);
            }
            listeners.push(l);
        }
        let stop = StopHandle {
            flag: Arc::new(AtomicBool::new(false)),
            notifier: Notifier::new()?,
        };
        Ok(Server {
            cfg,
            listeners,
            files,
            store,
            stop,
        })
    }

    /// The endpoints peers connect to (TCP port 0 resolved to the real port).
    pub fn endpoints(&self) -> Vec<Endpoint> {
        self.listeners
            .iter()
            .filter_map(|l| l.local_endpoint().ok())
            .collect()
    }

    /// A handle that stops the server.
    pub fn stop_handle(&self) -> StopHandle {
        self.stop.clone()
    }

    /// Runs the event loop on this thread until stopped.
    pub fn run(self) -> Result<(), ServerError> {
        let Server {
            cfg,
            listeners,
            files,
            store,
            stop,
        } = self;
        let (all, default) =
            policies(&cfg).ok_or_else(|| ServerError::UnknownPolicy(cfg.default_policy.clone()))?;
        let core = Scheduler::with_policies(all, default);
        let mut hub = Hub::new(core, files, cfg.heartbeat_ms);
        hub.set_validator(cfg.validator.clone());
        if let Some(m) = &cfg.metrics {
            hub.set_metrics(m.clone());
        }
        if let Some(s) = store {
            let path = s.path().to_path_buf();
            let gone = hub.set_store(s)?;
            tracing::info!(state = %path.display(), ended_at_restart = gone.len(), "state loaded");
        }
        let mut lp = Loop {
            start: Instant::now(),
            encoder: Encoder::new(cfg.max_frame),
            hub,
            conns: BTreeMap::new(),
            accepts: vec![None; listeners.len()],
            next_conn: 1,
            stopping: None,
            admissions: metrics::Admissions::default(),
            cfg,
            stop,
            listeners,
        };
        let mut driver = Driver::new(&DriverConfig {
            entries: 256,
            buffer_slots: 1,
        })?;
        let result = lp.run(&mut driver);
        // The ring goes first (it cancels what is in flight), then the sockets, then the
        // listeners (removing the UNIX socket files).
        drop(driver);
        drop(lp);
        result
    }
}

/// Owner-only access to a UNIX socket file (owner and `group` when one is given); the cluster
/// secret guards it anyway.
fn restrict_socket(path: &std::path::Path, group: Option<nix::unistd::Gid>) {
    use std::os::unix::fs::PermissionsExt;
    let mode = match group {
        Some(g) => match nix::unistd::chown(path, None, Some(g)) {
            Ok(()) => 0o660,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot give the socket to its group");
                0o600
            }
        },
        None => 0o600,
    };
    if let Err(e) = std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)) {
        tracing::warn!(path = %path.display(), error = %e, "cannot restrict the socket file's mode");
    }
}

const K_ACCEPT: u64 = 1;
const K_RECV: u64 = 2;
const K_SEND: u64 = 3;
const K_TIMER: u64 = 4;
const K_STOP: u64 = 5;
const K_CANCEL: u64 = 6;

fn tag(kind: u64, id: u64) -> u64 {
    (kind << 56) | (id & ((1 << 56) - 1))
}

#[derive(Debug)]
struct Conn {
    sock: Stream,
    fd: RawFd,
    decoder: FrameDecoder,
    hs: Option<Handshake>,
    authed: bool,
    opened: Instant,
    /// The receive buffer while no receive is in flight.
    rbuf: Option<Vec<u8>>,
    recv_op: Option<OpId>,
    send_op: Option<OpId>,
    /// Bytes waiting to be sent.
    queued: Vec<u8>,
    /// The last send buffer, for reuse.
    spare: Vec<u8>,
    send_at: usize,
    /// Close once everything queued is sent (since when).
    close_asked: Option<Instant>,
    /// Shut down; waiting for in-flight operations before dropping the socket.
    closing: bool,
    /// Its in-flight operations were cancelled.
    cancelled: bool,
}

struct Loop {
    start: Instant,
    cfg: ServerConfig,
    encoder: Encoder,
    hub: Hub,
    conns: BTreeMap<ConnId, Conn>,
    listeners: Vec<Listener>,
    /// Accept operation per listener (None: to re-arm at the next tick).
    accepts: Vec<Option<OpId>>,
    next_conn: ConnId,
    stop: StopHandle,
    /// When stopping began.
    stopping: Option<Instant>,
    /// Submissions waiting for an answer (for the admission latency metric).
    admissions: metrics::Admissions,
}

impl Loop {
    fn now(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    fn run(&mut self, d: &mut Driver) -> Result<(), ServerError> {
        for ep in self.cfg.listen.iter() {
            tracing::info!(endpoint = %ep, "scheduler listening");
        }
        for i in 0..self.listeners.len() {
            self.arm_accept(d, i);
        }
        d.push(
            tag(K_TIMER, 0),
            Op::Timeout {
                after: self.cfg.tick,
            },
        )?;
        d.push(
            tag(K_STOP, 0),
            Op::PollIn {
                fd: self.stop.notifier.fd(),
            },
        )?;
        let mut comps: Vec<Completion> = Vec::new();
        loop {
            d.wait(None, &mut comps)?;
            for c in comps.drain(..) {
                self.on_completion(d, c)?;
            }
            self.settle(d);
            if let Some(since) = self.stopping
                && (self.conns.is_empty() || since.elapsed() >= STOP_GRACE)
            {
                if !self.conns.is_empty() {
                    tracing::warn!(
                        connections = self.conns.len(),
                        "stopping with connections not flushed"
                    );
                }
                tracing::info!("scheduler stopped");
                return Ok(());
            }
        }
    }

    fn arm_accept(&mut self, d: &mut Driver, i: usize) {
        if self.stopping.is_some() {
            return;
        }
        let fd = self.listeners[i].as_raw_fd();
        match d.push(tag(K_ACCEPT, i as u64), Op::Accept { fd }) {
            Ok(id) => self.accepts[i] = Some(id),
            Err(e) => {
                tracing::error!(error = %e, "cannot queue an accept; retrying at the next tick")
            }
        }
    }

    fn on_completion(&mut self, d: &mut Driver, c: Completion) -> Result<(), ServerError> {
        let kind = c.tag >> 56;
        let id = c.tag & ((1 << 56) - 1);
        match kind {
            K_ACCEPT => self.on_accept(d, id as usize, c),
            K_RECV => self.on_recv(id, c),
            K_SEND => self.on_send(d, id, c),
            K_TIMER => {
                self.on_tick(d);
                d.push(
                    tag(K_TIMER, 0),
                    Op::Timeout {
                        after: self.cfg.tick,
                    },
                )?;
            }
            K_STOP => {
                self.stop.notifier.drain();
                if self.stop.flag.load(Ordering::SeqCst) {
                    self.begin_stop(d);
                } else {
                    d.push(
                        tag(K_STOP, 0),
                        Op::PollIn {
                            fd: self.stop.notifier.fd(),
                        },
                    )?;
                }
            }
            _ => {} // cancellations
        }
        Ok(())
    }

    fn on_accept(&mut self, d: &mut Driver, i: usize, c: Completion) {
        self.accepts[i] = None;
        match (c.result, c.output) {
            (Ok(_), Output::Fd(fd)) => {
                let sock = if self.listeners[i].is_tcp() {
                    let s = std::net::TcpStream::from(fd);
                    let _ = s.set_nodelay(true);
                    Stream::Tcp(s)
                } else {
                    Stream::Unix(std::os::unix::net::UnixStream::from(fd))
                };
                let id = self.next_conn;
                self.next_conn += 1;
                match Handshake::server(&self.cfg.secret, Role::Scheduler) {
                    Ok(mut hs) => {
                        let hello = hs.take_output();
                        tracing::debug!(conn = id, "connection accepted");
                        self.conns.insert(
                            id,
                            Conn {
                                fd: sock.as_raw_fd(),
                                sock,
                                decoder: FrameDecoder::new(self.cfg.max_frame),
                                hs: Some(hs),
                                authed: false,
                                opened: Instant::now(),
                                rbuf: Some(Vec::with_capacity(RECV_BUF)),
                                recv_op: None,
                                send_op: None,
                                queued: hello,
                                spare: Vec::new(),
                                send_at: 0,
                                close_asked: None,
                                closing: false,
                                cancelled: false,
                            },
                        );
                    }
                    Err(e) => tracing::error!(error = %e, "cannot start a handshake"),
                }
                self.arm_accept(d, i);
            }
            (Err(e), _) if e.raw_os_error() == Some(nix::errno::Errno::ECANCELED as i32) => {}
            (Err(e), _) => {
                // E.g. out of descriptors: try again at the next tick rather than spin.
                tracing::warn!(error = %e, "accept failed");
            }
            (Ok(_), _) => self.arm_accept(d, i),
        }
    }

    fn on_recv(&mut self, id: ConnId, c: Completion) {
        let now = self.now();
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        conn.recv_op = None;
        let mut buf = match c.output {
            Output::Vec(v) => v,
            _ => Vec::with_capacity(RECV_BUF),
        };
        match c.result {
            Ok(0) => {
                if let Err(e) = conn.decoder.finish() {
                    tracing::debug!(conn = id, error = %e, "peer left mid-frame");
                }
                conn.rbuf = Some(buf);
                self.close(id, now);
                return;
            }
            Ok(_) => {}
            Err(e) => {
                if !conn.closing {
                    tracing::debug!(conn = id, error = %e, "receive failed");
                }
                conn.rbuf = Some(buf);
                self.close(id, now);
                return;
            }
        }
        self.on_bytes(id, &buf, now);
        buf.clear();
        if let Some(conn) = self.conns.get_mut(&id) {
            conn.rbuf = Some(buf);
        }
    }

    fn on_bytes(&mut self, id: ConnId, data: &[u8], now: u64) {
        let mut input = data;
        loop {
            let Some(conn) = self.conns.get_mut(&id) else {
                return;
            };
            if conn.closing || conn.close_asked.is_some() {
                return;
            }
            if !conn.authed {
                let frame = match conn.decoder.decode_frame(&mut input) {
                    Ok(Some(f)) => f,
                    Ok(None) => return,
                    Err(e) => {
                        tracing::info!(conn = id, error = %e, "bad handshake bytes; closing");
                        self.close(id, now);
                        return;
                    }
                };
                let Some(hs) = conn.hs.as_mut() else {
                    return;
                };
                let state = hs.on_frame(&frame).cloned();
                let out = hs.take_output();
                conn.queued.extend_from_slice(&out);
                match state {
                    Ok(HandshakeState::Authenticated(peer)) => {
                        conn.authed = true;
                        conn.hs = None;
                        tracing::debug!(conn = id, role = ?peer.role, "authenticated");
                        self.hub.connected(now, id, peer.role);
                    }
                    Ok(HandshakeState::InProgress) => {}
                    Ok(HandshakeState::Failed(e)) | Err(e) => {
                        tracing::warn!(conn = id, error = %e, "handshake refused");
                        conn.close_asked = Some(Instant::now());
                        return;
                    }
                }
            } else {
                match conn.decoder.decode_message(&mut input) {
                    Ok(Some(msg)) => {
                        tracing::trace!(conn = id, msg = msg.name(), "received");
                        if let Some(m) = &self.cfg.metrics {
                            m.message(&msg);
                            if matches!(msg, Message::Submit { .. }) {
                                self.admissions.submitted(id, Instant::now());
                            }
                        }
                        self.hub.at_micros(self.start.elapsed().as_micros() as u64);
                        self.hub.message(now, id, msg);
                    }
                    Ok(None) => return,
                    Err(e) => {
                        tracing::warn!(conn = id, error = %e, "undecodable frame; closing");
                        let err = Message::Error {
                            kind: ErrorKind::BadRequest,
                            message: e.to_string(),
                        };
                        let _ =
                            self.encoder
                                .encode_into(FrameKind::Message, &err, &mut conn.queued);
                        conn.close_asked = Some(Instant::now());
                        return;
                    }
                }
            }
        }
    }

    fn on_send(&mut self, d: &mut Driver, id: ConnId, c: Completion) {
        let now = self.now();
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        conn.send_op = None;
        let buf = match c.output {
            Output::Vec(v) => v,
            _ => Vec::new(),
        };
        match c.result {
            Ok(n) => {
                conn.send_at += n as usize;
                if conn.send_at < buf.len() && !conn.closing {
                    let at = conn.send_at;
                    let fd = conn.fd;
                    match d.push(tag(K_SEND, id), Op::Send { fd, buf, at }) {
                        Ok(op) => conn.send_op = Some(op),
                        Err(e) => {
                            tracing::warn!(conn = id, error = %e, "cannot queue a send");
                            self.close(id, now);
                        }
                    }
                } else {
                    conn.send_at = 0;
                    conn.spare = buf;
                    conn.spare.clear();
                }
            }
            Err(e) => {
                if !conn.closing {
                    tracing::debug!(conn = id, error = %e, "send failed");
                }
                conn.send_at = 0;
                self.close(id, now);
            }
        }
    }

    fn on_tick(&mut self, d: &mut Driver) {
        let now = self.now();
        self.hub.at_micros(self.start.elapsed().as_micros() as u64);
        self.hub.tick(now);
        if let Some(m) = &self.cfg.metrics {
            let queued: usize = self.conns.values().map(|c| c.queued.len()).sum();
            m.refresh(&self.hub.status(None), self.conns.len(), queued);
        }
        let limit = self.cfg.handshake_timeout;
        let late: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| {
                !c.closing
                    && ((!c.authed && c.opened.elapsed() > limit)
                        || c.close_asked.is_some_and(|t| t.elapsed() > CLOSE_GRACE))
            })
            .map(|(id, _)| *id)
            .collect();
        for id in late {
            tracing::info!(conn = id, "closing a connection that timed out");
            self.close(id, now);
        }
        for i in 0..self.accepts.len() {
            if self.accepts[i].is_none() {
                self.arm_accept(d, i);
            }
        }
    }

    fn begin_stop(&mut self, d: &mut Driver) {
        if self.stopping.is_some() {
            return;
        }
        tracing::info!("scheduler stopping: telling peers");
        self.stopping = Some(Instant::now());
        for op in self.accepts.iter_mut().filter_map(Option::take) {
            let _ = d.push(tag(K_CANCEL, 0), Op::Cancel { target: op });
        }
        self.hub.shutdown("the scheduler is stopping");
        let now = self.now();
        let unauth: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| !c.authed)
            .map(|(id, _)| *id)
            .collect();
        for id in unauth {
            self.close(id, now);
        }
    }

    /// Shuts a connection down; it is dropped once its operations completed. The hub hears
    /// of it at once.
    fn close(&mut self, id: ConnId, now: u64) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        if conn.closing {
            return;
        }
        conn.closing = true;
        self.admissions.closed(id);
        let _ = conn.sock.shutdown();
        if conn.authed {
            self.hub.disconnected(now, id);
        }
    }

    /// Turns hub actions into queued bytes, starts sends and receives, pumps file pieces,
    /// completes closes; repeats while the hub has more to say (closes feed it).
    fn settle(&mut self, d: &mut Driver) {
        for _ in 0..16 {
            let now = self.now();
            let pumping: Vec<ConnId> = self
                .conns
                .iter()
                .filter(|(id, c)| {
                    !c.closing
                        && c.close_asked.is_none()
                        && c.queued.len() < PUMP_LOW
                        && self.hub.has_fetches(**id)
                })
                .map(|(id, _)| *id)
                .collect();
            for id in pumping {
                self.hub.pump(id, PUMP_LOW);
            }
            for a in self.hub.take_actions() {
                match a {
                    Action::Send(id, msg) => {
                        if let Some(m) = &self.cfg.metrics
                            && let Some((ok, secs)) =
                                self.admissions.answered(id, &msg, Instant::now())
                        {
                            m.admitted(ok, secs);
                        }
                        let Some(conn) = self.conns.get_mut(&id) else {
                            continue;
                        };
                        if conn.closing {
                            continue;
                        }
                        if let Err(e) =
                            self.encoder
                                .encode_into(FrameKind::Message, &msg, &mut conn.queued)
                        {
                            tracing::error!(conn = id, msg = msg.name(), error = %e, "cannot encode");
                        }
                        if conn.queued.len() > MAX_QUEUED {
                            tracing::warn!(conn = id, "peer does not read its messages; closing");
                            self.close(id, now);
                        }
                    }
                    Action::Close(id) => {
                        if let Some(conn) = self.conns.get_mut(&id)
                            && conn.close_asked.is_none()
                        {
                            conn.close_asked = Some(Instant::now());
                        }
                    }
                }
            }
            let ids: Vec<ConnId> = self.conns.keys().copied().collect();
            for id in ids {
                self.drive(d, id, now);
            }
            if !self.hub.has_actions() {
                break;
            }
        }
    }

    /// Starts what one connection needs: a send, a receive, its close, or its removal.
    fn drive(&mut self, d: &mut Driver, id: ConnId, now: u64) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        if conn.closing {
            if !conn.cancelled {
                conn.cancelled = true;
                for op in [conn.recv_op, conn.send_op].into_iter().flatten() {
                    let _ = d.push(tag(K_CANCEL, id), Op::Cancel { target: op });
                }
            }
            // Cancelled operations still complete; keep the socket until they did.
            if conn.recv_op.is_none() && conn.send_op.is_none() {
                tracing::debug!(conn = id, "connection closed");
                self.conns.remove(&id);
            }
            return;
        }
        if conn.send_op.is_none() && !conn.queued.is_empty() {
            let mut buf = std::mem::take(&mut conn.spare);
            buf.clear();
            std::mem::swap(&mut buf, &mut conn.queued);
            conn.send_at = 0;
            match d.push(
                tag(K_SEND, id),
                Op::Send {
                    fd: conn.fd,
                    buf,
                    at: 0,
                },
            ) {
                Ok(op) => conn.send_op = Some(op),
                Err(e) => {
                    tracing::warn!(conn = id, error = %e, "cannot queue a send");
                    self.close(id, now);
                    return;
                }
            }
        }
        if conn.close_asked.is_some() && conn.send_op.is_none() && conn.queued.is_empty() {
            self.close(id, now);
            return;
        }
        if conn.recv_op.is_none()
            && conn.close_asked.is_none()
            && let Some(mut buf) = conn.rbuf.take()
        {
            if buf.capacity() < RECV_BUF {
                buf.reserve(RECV_BUF);
            }
            match d.push(
                tag(K_RECV, id),
                Op::Recv {
                    fd: conn.fd,
                    buf,
                    flags: 0,
                },
            ) {
                Ok(op) => conn.recv_op = Some(op),
                Err(e) => {
                    tracing::warn!(conn = id, error = %e, "cannot queue a receive");
                    self.close(id, now);
                }
            }
        }
    }
}

/// Blocks SIGINT and SIGTERM in the calling thread (and the threads it starts later) and
/// stops the server when one arrives; a second one exits the process at once. Call it before
/// starting other threads.
pub fn stop_on_signals(handle: StopHandle) -> io::Result<()> {
    use nix::sys::signal::{SigSet, Signal};
    use nix::sys::signalfd::SignalFd;
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGINT);
    mask.add(Signal::SIGTERM);
    mask.thread_block().map_err(io::Error::from)?;
    let sfd = SignalFd::new(&mask).map_err(io::Error::from)?;
    std::thread::Builder::new()
        .name("spate-signals".into())
        .spawn(move || {
            let mut seen = 0;
            loop {
                match sfd.read_signal() {
                    Ok(Some(info)) => {
                        seen += 1;
                        if seen > 1 {
                            tracing::warn!("second signal: exiting now");
                            std::process::exit(130);
                        }
                        tracing::info!(signal = info.ssi_signo, "signal received: stopping");
                        handle.stop();
                    }
                    Ok(None) => {}
                    Err(e) => {
                        tracing::error!(error = %e, "reading signals failed");
                        return;
                    }
                }
            }
        })?;
    Ok(())
}
