//! The server's translation layer, sans-IO: authenticated peers' [`Message`]s in, core
//! [`Event`]s to the [`Scheduler`], its [`Command`]s back out as [`Action`]s (messages to send,
//! connections to close). The event loop in [`super`] only moves bytes.
//!
//! Identifiers: every connection gets a [`ConnId`]; a daemon's connection id is its core
//! [`NodeId`], a user's is its [`ClientId`]. Core job ids are the proto job ids.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::PathBuf;

use spate_netlib::auth::Role;
use spate_netlib::proto::{
    self, DataEndpoint, ErrorKind, ExpelTarget, InputSource, InputSpec, JobGeometry, JobOutcome,
    LineRange, Message, NodeState, NodeStatus, PixelGeometry, Progress, RefuseReason, RingBacking,
    SourceBinding, StreamIndex, StreamKey, StreamStatus, Value,
};

use crate::core::{
    self, ClientError, ClientId, Command, Event, JobEnd, JobId, Leave, Millis, NodeId, Refusal,
    ReleaseWhy, Reply, Scheduler, Submission, Target, TaskId, TaskReport,
};
use crate::files::{FileService, check_name};
use crate::policy::PlanSummary;
use crate::policy::Route;
use crate::spec::{Chunk, JobPlan, SpecError, SpecErrorKind};

use super::latency::ChunkLatency;

/// Chunk latencies (µs) as a serialized histogram for [`Message::JobStats`].
fn latency_hdr(samples: &[u32]) -> Vec<u8> {
    let mut h = spate_netlib::hist::new_micros();
    for &v in samples {
        h.saturating_record(u64::from(v));
    }
    match spate_netlib::hist::encode(&h) {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(error = %e, "cannot serialize chunk latencies");
            Vec::new()
        }
    }
}

/// A connection, numbered by the server from 1.
pub type ConnId = u64;

/// Watchers get a progress-only [`Message::JobUpdate`] at most this often (state changes go
/// out at once).
pub const UPDATE_INTERVAL_MS: u64 = 250;

/// A daemon silent for more than this many heartbeat intervals is declared crashed.
pub const MISSED_HEARTBEATS: u64 = 3;

/// What the I/O shell must do.
#[derive(Debug, Clone, PartialEq)]
// Every message the hub sends is moved through this once; boxing it would cost an allocation
// per message for the sake of `Close`.
#[allow(clippy::large_enum_variant)]
pub enum Action {
    /// Send this message on this connection.
    Send(ConnId, Message),
    /// Close this connection once what is queued for it is sent.
    Close(ConnId),
}

#[derive(Debug)]
struct Fetch {
    job: proto::JobId,
    name: String,
    offset: u64,
    end: u64,
}

#[derive(Debug)]
struct Daemon {
    /// What it announced (once joined and admitted by the core).
    info: Option<Box<proto::NodeInfo>>,
    last_seen: Millis,
    /// It quit, was refused or was declared dead: no NodeLeft on disconnect.
    gone: bool,
    fetches: VecDeque<Fetch>,
}

#[derive(Debug)]
// One per connection, mostly daemons: boxing the common variant buys nothing.
#[allow(clippy::large_enum_variant)]
enum Peer {
    Daemon(Daemon),
    User,
}

#[derive(Debug, Clone)]
struct Slot {
    node: String,
    alloc: Option<(StreamKey, PathBuf, RingBacking)>,
    read_pos: u64,
    /// Last frontier its consumer reported, and the ring's capacity.
    frontier: u64,
    ring: u64,
}

#[derive(Debug)]
struct JobInfo {
    submitter: ConnId,
    name: String,
    slots: Vec<Slot>,
    watchers: BTreeSet<ConnId>,
    /// Last state and progress sent to watchers, and when.
    sent: Option<(proto::JobState, Progress)>,
    sent_at: Millis,
    /// When it was submitted and when it started (Ready taken).
    submitted_at: Millis,
    started_at: Option<Millis>,
    /// Producers sent a Preload for this job (node names), as told to its consumers.
    producers: BTreeSet<String>,
}

/// How a ring's backing is written in the durable state.
fn backing_name(b: RingBacking) -> &'static str {
    match b {
        RingBacking::HugeTlb => "hugetlb",
        RingBacking::TransparentHuge => "thp",
        RingBacking::Plain => "plain",
    }
}

/// See [`backing_name`].
fn backing_of(s: &str) -> RingBacking {
    match s {
        "hugetlb" => RingBacking::HugeTlb,
        "thp" => RingBacking::TransparentHuge,
        _ => RingBacking::Plain,
    }
}

/// Checks a job's kernel parameters and inputs at submit, as a producer's preload would
/// (`read` gives an input's bytes from the file service); the binary that runs the server
/// wires the kernels' checks in (the scheduler knows no kernel).
#[derive(Clone)]
pub struct Validator(pub std::sync::Arc<CheckFn>);

/// See [`Validator`].
pub type CheckFn = dyn Fn(&JobPlan, &dyn Fn(&str) -> Result<Vec<u8>, String>) -> Result<(), SpecError>
    + Send
    + Sync;

impl std::fmt::Debug for Validator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Validator")
    }
}

/// The translation layer. See the module docs.
pub struct Hub {
    core: Scheduler,
    files: Option<FileService>,
    heartbeat_ms: u64,
    now: Millis,
    last_heartbeat: Millis,
    peers: BTreeMap<ConnId, Peer>,
    jobs: BTreeMap<JobId, JobInfo>,
    events: VecDeque<Event>,
    out: Vec<Action>,
    /// A finer clock for latency figures, in microseconds (else `now` × 1000).
    micros: Option<u64>,
    /// Chunk latencies of running jobs.
    latency: ChunkLatency,
    /// The job and chunk of every task handed out and not finished.
    task_chunks: BTreeMap<TaskId, (JobId, u64)>,
    /// Kernel checks at submit.
    validator: Option<Validator>,
    /// Metrics updated as jobs end.
    metrics: Option<super::metrics::SchedulerMetrics>,
    /// Durable state (job ids, live and ended jobs), when kept.
    store: Option<super::state::Store>,
    /// Ended jobs an earlier run of the scheduler recorded, newest first.
    restored: Vec<proto::EndedJob>,
    /// The spec and input names of the job being submitted, for the durable state.
    submitting: Option<(String, Vec<String>)>,
    /// Jobs handed back to the core at start and not resumed yet.
    resuming: BTreeSet<JobId>,
    /// The capacities last kept, and when.
    caps_saved: Vec<crate::capacity::SavedFit>,
    caps_saved_at: Millis,
}

/// The measured capacities are written to the durable state at most this often.
const CAPS_SAVE_MS: Millis = 1_000;

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("now", &self.now)
            .field("peers", &self.peers)
            .field("jobs", &self.jobs)
            .finish_non_exhaustive()
    }
}

impl Hub {
    /// A hub around `core`, serving inputs from `files`, asking daemons for a heartbeat every
    /// `heartbeat_ms`.
    pub fn new(core: Scheduler, files: Option<FileService>, heartbeat_ms: u64) -> Hub {
        Hub {
            core,
            files,
            heartbeat_ms: heartbeat_ms.max(1),
            now: 0,
            last_heartbeat: 0,
            peers: BTreeMap::new(),
            jobs: BTreeMap::new(),
            events: VecDeque::new(),
            out: Vec::new(),
            micros: None,
            latency: ChunkLatency::default(),
            task_chunks: BTreeMap::new(),
            validator: None,
            metrics: None,
            store: None,
            restored: Vec::new(),
            submitting: None,
            resuming: BTreeSet::new(),
            caps_saved: Vec::new(),
            caps_saved_at: 0,
        }
    }

    /// Keeps durable state in `store` from now on: job ids continue from it, its ended jobs
    /// are listed after this run's, and the jobs that were live when the last scheduler stopped
    /// are resumed when their rings were allocated (they go on once their consumers rejoin and
    /// report them), else ended as aborted. Returns the ids of the jobs ended so.
    pub fn set_store(
        &mut self,
        mut store: super::state::Store,
    ) -> Result<Vec<u64>, super::state::StoreError> {
        let l = store.load()?;
        self.core.continue_job_ids(l.next_job);
        // What the last run measured of the producers and links.
        let caps = store.capacities()?;
        self.core.restore_capacities(&caps);
        self.caps_saved = caps;
        // Task ids of this run never equal one of an earlier run (late reports cannot match).
        self.core.continue_task_ids(l.starts << 40);
        let mut ended = l.ended;
        let mut gone = Vec::new();
        for j in &l.live {
            if let Some(r) = &j.resume
                && self.resume(j, r)
            {
                continue;
            }
            let e = super::state::SavedEnd {
                id: j.id,
                name: j.name.clone(),
                outcome: "aborted".into(),
                reason: RESTART_REASON.into(),
                total: j.total,
                delivered: 0,
                read: 0,
                duration_ms: 0,
            };
            store.end(&e)?;
            tracing::warn!(job = j.id, "job ended: aborted ({RESTART_REASON})");
            ended.push(e);
            gone.push(j.id);
        }
        ended.sort_by_key(|e| std::cmp::Reverse(e.id));
        ended.truncate(core::ENDED_HISTORY);
        self.restored = ended.iter().map(restored_entry).collect();
        self.store = Some(store);
        Ok(gone)
    }

    /// Hands a job an earlier run admitted back to the core (see [`Event::Resume`]), with what
    /// readers and watchers need kept here. False when its spec no longer parses.
    fn resume(&mut self, j: &super::state::SavedJob, r: &super::state::SavedResume) -> bool {
        let mut plan = match JobPlan::parse(&j.spec) {
            Ok(p) if p.streams.len() == r.streams.len() => p,
            Ok(_) => return false,
            Err(e) => {
                tracing::warn!(job = j.id, error = %e, "a live job's saved spec does not parse");
                return false;
            }
        };
        plan.chunk_lines = Some(r.chunk_lines);
        let id = JobId(j.id);
        let slots = r
            .streams
            .iter()
            .map(|st| Slot {
                node: st.node.clone(),
                alloc: Some((
                    StreamKey(st.key),
                    PathBuf::from(&st.handoff),
                    backing_of(&st.backing),
                )),
                read_pos: 0,
                frontier: 0,
                ring: 0,
            })
            .collect();
        self.jobs.insert(
            id,
            JobInfo {
                submitter: u64::MAX,
                name: plan.name.clone().unwrap_or_default(),
                slots,
                watchers: BTreeSet::new(),
                sent: None,
                sent_at: 0,
                submitted_at: self.now,
                started_at: r.running.then_some(self.now),
                producers: BTreeSet::new(),
            },
        );
        let keys = r.streams.iter().map(|s| s.key as u64).collect();
        tracing::info!(job = j.id, name = %j.name, "resuming a job the last scheduler left live");
        self.resuming.insert(id);
        self.feed(Event::Resume {
            job: id,
            plan: Box::new(plan),
            keys,
            running: r.running,
        });
        true
    }

    /// Writes to the durable state; a failure is logged (the scheduler goes on without it).
    fn persist(
        &mut self,
        what: &str,
        f: impl FnOnce(&mut super::state::Store) -> Result<(), super::state::StoreError>,
    ) {
        if let Some(s) = self.store.as_mut()
            && let Err(e) = f(s)
        {
            tracing::error!(error = %e, "could not record {what} in the scheduler state");
        }
    }

    /// Checks jobs' kernel parameters and inputs at submit with `v`.
    pub fn set_validator(&mut self, v: Option<Validator>) {
        self.validator = v;
    }

    /// Keep these metrics up to date as jobs end.
    pub fn set_metrics(&mut self, m: super::metrics::SchedulerMetrics) {
        self.metrics = Some(m);
    }

    /// Sets the clock used for latency figures (microseconds, monotonic); call it before
    /// handing the hub what happened at that moment.
    pub fn at_micros(&mut self, now_us: u64) {
        self.micros = Some(now_us);
    }

    fn now_us(&self) -> u64 {
        self.micros.unwrap_or(self.now.saturating_mul(1000))
    }

    /// The decision core (for queries).
    pub fn core(&self) -> &Scheduler {
        &self.core
    }

    /// Actions produced so far, in order.
    pub fn take_actions(&mut self) -> Vec<Action> {
        std::mem::take(&mut self.out)
    }

    /// Whether actions are waiting.
    pub fn has_actions(&self) -> bool {
        !self.out.is_empty()
    }

    fn send(&mut self, conn: ConnId, msg: Message) {
        self.out.push(Action::Send(conn, msg));
    }

    fn error(&mut self, conn: ConnId, kind: ErrorKind, message: impl Into<String>) {
        self.send(
            conn,
            Message::Error {
                kind,
                message: message.into(),
            },
        );
    }

    fn clock(&mut self, now: Millis) {
        self.now = self.now.max(now);
    }

    // -- connections --------------------------------------------------------------------------

    /// A connection authenticated as `role`. Returns false (and queues an error and a close)
    /// for roles that may not talk to the scheduler.
    pub fn connected(&mut self, now: Millis, conn: ConnId, role: Role) -> bool {
        self.clock(now);
        let peer = match role {
            Role::Daemon | Role::Producer | Role::Consumer => Peer::Daemon(Daemon {
                info: None,
                last_seen: self.now,
                gone: false,
                fetches: VecDeque::new(),
            }),
            Role::User => Peer::User,
            Role::Scheduler => {
                self.error(
                    conn,
                    ErrorKind::NotPermitted,
                    "a scheduler cannot connect to another scheduler",
                );
                self.out.push(Action::Close(conn));
                return false;
            }
        };
        self.peers.insert(conn, peer);
        true
    }

    /// A connection ended (EOF, error, or closed by us). A daemon that had joined and did not
    /// quit is a crashed node. A user's jobs go on.
    pub fn disconnected(&mut self, now: Millis, conn: ConnId) {
        self.clock(now);
        match self.peers.remove(&conn) {
            Some(Peer::Daemon(d)) if d.info.is_some() && !d.gone => {
                tracing::warn!(conn, node = %name_of(&d), "node left: its connection was lost");
                self.feed(Event::NodeLeft {
                    node: NodeId(conn),
                    how: Leave::Crash,
                });
            }
            Some(Peer::Daemon(_)) => {}
            Some(Peer::User) => {
                for j in self.jobs.values_mut() {
                    j.watchers.remove(&conn);
                }
            }
            None => {}
        }
    }

    /// Time passes: heartbeat checks and heartbeats, core timeouts, progress updates.
    pub fn tick(&mut self, now: Millis) {
        self.clock(now);
        let limit = self.heartbeat_ms.saturating_mul(MISSED_HEARTBEATS);
        let silent: Vec<(ConnId, bool)> = self
            .peers
            .iter()
            .filter_map(|(id, p)| match p {
                Peer::Daemon(d) if !d.gone && self.now.saturating_sub(d.last_seen) > limit => {
                    Some((*id, d.info.is_some()))
                }
                _ => None,
            })
            .collect();
        for (conn, joined) in silent {
            if let Some(Peer::Daemon(d)) = self.peers.get_mut(&conn) {
                tracing::warn!(
                    conn,
                    node = %name_of(d),
                    "node dead: silent for more than {MISSED_HEARTBEATS} heartbeats"
                );
                d.gone = true;
            }
            self.error(
                conn,
                ErrorKind::UnexpectedMessage,
                format!(
                    "no message for more than {MISSED_HEARTBEATS} heartbeats of {} ms: declared dead",
                    self.heartbeat_ms
                ),
            );
            self.out.push(Action::Close(conn));
            if joined {
                self.feed(Event::NodeLeft {
                    node: NodeId(conn),
                    how: Leave::Silent,
                });
            }
        }
        if self.now.saturating_sub(self.last_heartbeat) >= self.heartbeat_ms {
            self.last_heartbeat = self.now;
            let daemons: Vec<ConnId> = self
                .peers
                .iter()
                .filter(|(_, p)| matches!(p, Peer::Daemon(d) if !d.gone))
                .map(|(id, _)| *id)
                .collect();
            for d in daemons {
                self.send(d, Message::Heartbeat);
            }
        }
        self.feed(Event::Tick);
        self.publish(false);
        // The measured capacities, every few seconds when they changed.
        if self.store.is_some() && self.now.saturating_sub(self.caps_saved_at) >= CAPS_SAVE_MS {
            self.caps_saved_at = self.now;
            let fits = self.core.capacities().export();
            if fits != self.caps_saved {
                self.persist("the measured capacities", |s| s.save_capacities(&fits));
                self.caps_saved = fits;
            }
        }
    }

    /// The scheduler stops: every peer is told and closed.
    pub fn shutdown(&mut self, reason: &str) {
        let peers: Vec<ConnId> = self.peers.keys().copied().collect();
        for p in peers {
            self.send(
                p,
                Message::Shutdown {
                    reason: reason.to_string(),
                },
            );
            self.out.push(Action::Close(p));
            if let Some(Peer::Daemon(d)) = self.peers.get_mut(&p) {
                d.gone = true;
            }
        }
    }

    // -- messages -----------------------------------------------------------------------------

    /// A message from an authenticated connection.
    pub fn message(&mut self, now: Millis, conn: ConnId, msg: Message) {
        self.clock(now);
        match self.peers.get_mut(&conn) {
            Some(Peer::Daemon(d)) => {
                d.last_seen = self.now;
                if d.gone {
                    return;
                }
                let joined = d.info.is_some();
                self.daemon_message(conn, joined, msg);
            }
            Some(Peer::User) => self.user_message(conn, msg),
            None => {}
        }
        self.publish(false);
    }

    fn daemon_message(&mut self, conn: ConnId, joined: bool, msg: Message) {
        let node = NodeId(conn);
        match msg {
            Message::Join(info) if !joined && info.name.is_empty() => {
                if let Some(Peer::Daemon(d)) = self.peers.get_mut(&conn) {
                    d.gone = true;
                }
                self.error(conn, ErrorKind::BadRequest, "Join with an empty node name");
                self.out.push(Action::Close(conn));
            }
            Message::Join(info) if !joined => self.on_join(conn, info),
            Message::Join(_) => self.error(
                conn,
                ErrorKind::UnexpectedMessage,
                "this daemon already joined on this connection",
            ),
            Message::Heartbeat => {}
            Message::Error { kind, message } => {
                tracing::warn!(conn, ?kind, "daemon reports an error: {message}");
            }
            m if !joined => self.error(
                conn,
                ErrorKind::UnexpectedMessage,
                format!("{} before Join: a daemon must Join first", m.name()),
            ),
            Message::Quit { reason } => {
                if let Some(Peer::Daemon(d)) = self.peers.get_mut(&conn) {
                    tracing::info!(conn, node = %name_of(d), "node left: {reason}");
                    d.gone = true;
                }
                self.out.push(Action::Close(conn));
                self.feed(Event::NodeLeft {
                    node,
                    how: Leave::Quit,
                });
            }
            Message::Allocated {
                job,
                stream,
                key,
                handoff,
                backing,
            } => {
                let id = JobId(job.0);
                if self.core.job(id).is_none() {
                    // Allocated for a job that ended meanwhile: free the ring.
                    let reason = self.gone_reason(id);
                    self.send(conn, Message::Release { job, reason });
                    return;
                }
                let ours = self.holds_stream(node, id, stream.0);
                if ours && let Some(j) = self.jobs.get_mut(&id) {
                    if let Some(slot) = j.slots.get_mut(stream.0 as usize) {
                        slot.alloc = Some((key, handoff, backing));
                    }
                    tracing::debug!(%id, stream = stream.0, ?backing, "stream allocated");
                }
                self.feed(Event::StreamAllocated {
                    node,
                    job: id,
                    stream: stream.0,
                    // The core only hands the key back; the full key stays in the slot.
                    key: key.0 as u64,
                });
            }
            Message::AllocFailed {
                job,
                stream,
                reason,
            } => self.feed(Event::AllocFailed {
                node,
                job: JobId(job.0),
                stream: stream.0,
                reason,
            }),
            Message::StreamProgress {
                job,
                stream,
                frontier,
                read_pos,
            } => {
                let id = JobId(job.0);
                if self.core.job(id).is_none() {
                    // A ring of a job that is not live (it ended while its consumer was away,
                    // or before this scheduler started): free it, telling its readers why.
                    let reason = self.gone_reason(id);
                    self.send(conn, Message::Release { job, reason });
                    return;
                }
                let ours = self.holds_stream(node, id, stream.0);
                if ours
                    && let Some(slot) = self
                        .jobs
                        .get_mut(&id)
                        .and_then(|j| j.slots.get_mut(stream.0 as usize))
                {
                    slot.read_pos = slot.read_pos.max(read_pos);
                    slot.frontier = slot.frontier.max(frontier);
                }
                self.feed(Event::StreamProgress {
                    node,
                    job: id,
                    stream: stream.0,
                    frontier,
                    read: read_pos,
                });
            }
            Message::ReaderAttached { job, stream } => {
                let name = self
                    .daemon_info(node)
                    .map(|i| i.name.clone())
                    .unwrap_or_default();
                tracing::info!(job = job.0, stream = stream.0, node = %name, "reader attached");
            }
            Message::ReaderGone { job, stream } => self.feed(Event::ReaderGone {
                node,
                job: JobId(job.0),
                stream: stream.0,
            }),
            Message::Preloaded { job } => self.feed(Event::PreloadDone {
                node,
                job: JobId(job.0),
            }),
            Message::PreloadFailed { job, reason } => self.feed(Event::PreloadFailed {
                node,
                job: JobId(job.0),
                reason,
            }),
            Message::FetchInput {
                job,
                name,
                offset,
                len,
            } => self.on_fetch(conn, job, name, offset, len),
            Message::TaskDone {
                task,
                kind,
                bytes,
                compute_micros,
                cpu_micros,
                pieces,
                ..
            } => {
                // Compute+Expel is one core task: only the expel's report finishes it.
                if kind == proto::TaskKind::Expel {
                    self.feed(Event::TaskTimes {
                        node,
                        task: TaskId(task.0),
                        report: TaskReport {
                            compute_us: compute_micros,
                            cpu_us: cpu_micros,
                            bytes,
                            pieces: pieces
                                .iter()
                                .map(|p| (p.stream.0, p.bytes, p.micros))
                                .collect(),
                        },
                    });
                    if let Some((job, chunk)) = self.task_chunks.remove(&TaskId(task.0)) {
                        let now = self.now_us();
                        self.latency.done(job, chunk, now);
                    }
                    self.feed(Event::TaskDone {
                        node,
                        task: TaskId(task.0),
                    });
                }
            }
            Message::TaskFailed {
                task,
                reason,
                retryable,
                ..
            } => {
                tracing::warn!(conn, task = task.0, retryable, "task failed: {reason}");
                self.task_chunks.remove(&TaskId(task.0));
                self.feed(Event::TaskFailed {
                    node,
                    task: TaskId(task.0),
                    reason,
                });
            }
            m => self.error(
                conn,
                ErrorKind::NotPermitted,
                format!(
                    "{} is not a message a daemon sends to the scheduler",
                    m.name()
                ),
            ),
        }
    }

    fn user_message(&mut self, conn: ConnId, msg: Message) {
        let client = ClientId(conn);
        match msg {
            Message::Submit { spec_toml, inputs } => self.on_submit(conn, spec_toml, inputs),
            Message::Plan { spec_toml, inputs } => {
                let reply = self.dry_run(&spec_toml, inputs);
                self.send(conn, reply);
            }
            Message::Ready { job } => {
                let id = JobId(job.0);
                let before = self.core.job(id).map(|j| j.state);
                self.feed(Event::Ready { client, job: id });
                let after = self.core.job(id).map(|j| j.state);
                if before == Some(core::JobState::Accepted) && after != before {
                    self.persist("a started job", |s| s.started(id.0));
                    let now = self.now;
                    if let Some(j) = self.jobs.get_mut(&id) {
                        j.started_at = Some(now);
                        tracing::info!(job = id.0, name = %j.name, "job started");
                    }
                }
            }
            Message::Done { job } => self.feed(Event::Done {
                client,
                job: JobId(job.0),
            }),
            Message::Cancel { job } => self.feed(Event::Cancel {
                client,
                job: JobId(job.0),
            }),
            Message::Status { job } => {
                let reply = self.status(job.map(|j| JobId(j.0)));
                self.send(conn, reply);
            }
            Message::Watch { job } => {
                let id = JobId(job.0);
                match self.jobs.get_mut(&id) {
                    Some(j) => {
                        j.watchers.insert(conn);
                        self.send(conn, Message::Ack { job });
                        if let Some(s) = self.job_status(id) {
                            self.send(conn, Message::JobUpdate(s));
                        }
                    }
                    None => match self.core.ended_job(id).map(|e| outcome_of(&e.end)) {
                        // It ended already (say while the watcher reconnected): how.
                        Some(outcome) => {
                            self.send(conn, Message::Ack { job });
                            self.send(conn, Message::JobEnded { job, outcome });
                        }
                        None => self.error(
                            conn,
                            ErrorKind::UnknownJob,
                            ClientError::UnknownJob(id).to_string(),
                        ),
                    },
                }
            }
            Message::Heartbeat => {}
            Message::Error { kind, message } => {
                tracing::debug!(conn, ?kind, "user reports an error: {message}");
            }
            m => self.error(
                conn,
                ErrorKind::NotPermitted,
                format!(
                    "{} is not a message a user sends to the scheduler",
                    m.name()
                ),
            ),
        }
    }

    fn on_join(&mut self, conn: ConnId, info: proto::NodeInfo) {
        let node = NodeId(conn);
        let cmds = self.core.handle(
            self.now,
            Event::NodeJoined {
                node,
                info: core_info(&info),
            },
        );
        let refused = cmds
            .iter()
            .any(|c| matches!(c, Command::RefuseNode { node: n, .. } if *n == node));
        if !refused {
            tracing::info!(
                conn,
                node = %info.name,
                producer = info.roles.producer,
                consumer = info.roles.consumer,
                cores = info.cores,
                "node joined"
            );
            if let Some(Peer::Daemon(d)) = self.peers.get_mut(&conn) {
                d.info = Some(Box::new(info));
            }
            self.send(
                conn,
                Message::Welcome {
                    heartbeat_ms: self.heartbeat_ms,
                },
            );
        }
        self.apply(cmds);
        self.drain();
    }

    /// A submitted spec parsed and checked as far as the hub can (kernel parameters' depth,
    /// inputs present in the file service), or the refusal.
    fn checked_plan(
        &self,
        spec_toml: &str,
        inputs: Vec<String>,
    ) -> Result<JobPlan, (RefuseReason, String)> {
        let plan = JobPlan::parse(spec_toml).map_err(|e| {
            let r = Refusal::InvalidSpec(e);
            (refuse_reason(&r), r.to_string())
        })?;
        let params = table_to_value(&plan.params);
        if params.depth() > proto::MAX_VALUE_DEPTH {
            let r = Refusal::InvalidSpec(SpecError {
                field: "params".into(),
                kind: SpecErrorKind::Invalid {
                    value: format!("{} levels", params.depth()),
                    reason: format!(
                        "kernel parameters nest at most {} levels",
                        proto::MAX_VALUE_DEPTH
                    ),
                },
            });
            return Err((refuse_reason(&r), r.to_string()));
        }
        let mut names: Vec<String> = plan.inputs.clone();
        for n in inputs {
            if !names.contains(&n) {
                names.push(n);
            }
        }
        for name in names {
            let checked = match &self.files {
                None => Err(crate::files::FileError::NoService { name: name.clone() }),
                Some(f) => f.size(&name).map(|_| ()),
            };
            if let Err(e) = checked {
                return Err((RefuseReason::InputUnavailable { name }, format!("{e}")));
            }
        }
        if let Some(v) = &self.validator {
            let files = self.files.clone();
            let read = |name: &str| -> Result<Vec<u8>, String> {
                let f = files.as_ref().ok_or("no file service (--files DIR)")?;
                let size = f.size(name).map_err(|e| e.to_string())?;
                f.read(name, 0, size).map_err(|e| e.to_string())
            };
            if let Err(e) = (v.0)(&plan, &read) {
                let r = Refusal::InvalidSpec(e);
                return Err((refuse_reason(&r), r.to_string()));
            }
        }
        Ok(plan)
    }

    fn on_submit(&mut self, conn: ConnId, spec_toml: String, inputs: Vec<String>) {
        match self.checked_plan(&spec_toml, inputs.clone()) {
            Ok(plan) => {
                // Kept with the job if the core admits it (a restarted scheduler resumes it).
                self.submitting = Some((spec_toml, inputs));
                self.feed(Event::Submit {
                    client: ClientId(conn),
                    spec: Submission::Plan(Box::new(plan)),
                });
                self.submitting = None;
            }
            Err((reason, message)) => {
                tracing::info!(conn, "job refused: {message}");
                self.send(conn, Message::Refused { reason, message });
            }
        }
    }

    /// The answer to a Plan request: what Submit would get now, admitting nothing.
    fn dry_run(&self, spec_toml: &str, inputs: Vec<String>) -> Message {
        let plan = match self.checked_plan(spec_toml, inputs) {
            Ok(p) => p,
            Err((reason, message)) => {
                return Message::PlanReply {
                    admitted: false,
                    plan: None,
                    reason: Some(reason),
                    message,
                };
            }
        };
        match self.core.dry_run(&plan) {
            Ok((policy, summary)) => Message::PlanReply {
                admitted: true,
                plan: Some(Box::new(self.plan_info(policy, &summary))),
                reason: None,
                message: String::new(),
            },
            Err(r) => {
                let info = match &r {
                    Refusal::Infeasible {
                        policy,
                        requested,
                        latency_bound,
                        max_feasible,
                        ..
                    } => Some(Box::new(proto::PlanInfo {
                        policy: policy.clone(),
                        max_feasible_bps: (max_feasible * 8.0) as u64,
                        requested_bps: requested.map(|r| (r * 8.0) as u64),
                        latency_bound_us: latency_bound.map(|l| (l * 1e6) as u64),
                        ..proto::PlanInfo::default()
                    })),
                    _ => None,
                };
                Message::PlanReply {
                    admitted: false,
                    plan: info,
                    reason: Some(refuse_reason(&r)),
                    message: r.to_string(),
                }
            }
        }
    }

    /// A plan summary as the protocol carries it (node names for ids, bits per second).
    fn plan_info(&self, policy: &str, s: &PlanSummary) -> proto::PlanInfo {
        proto::PlanInfo {
            policy: policy.to_string(),
            chunk_bytes: s.chunk_bytes,
            chunk_lines: s.chunk_lines,
            producers: s
                .producers
                .iter()
                .map(|n| {
                    self.daemon_info(*n)
                        .map_or_else(|| format!("node {}", n.0), |i| i.name.clone())
                })
                .collect(),
            predicted_bps: (s.predicted_rate * 8.0) as u64,
            predicted_latency_us: (s.predicted_latency * 1e6) as u64,
            window_chunks: s.window,
            ring_bytes: s.rings.clone(),
            prefill_bytes: s.prefill.clone(),
            max_feasible_bps: (s.max_feasible * 8.0) as u64,
            requested_bps: s.requested_rate.map(|r| (r * 8.0) as u64),
            latency_bound_us: s.latency_bound.map(|l| (l * 1e6) as u64),
        }
    }

    /// What the core measured of a node, as status shows it.
    fn node_capacity(&self, i: &proto::NodeInfo) -> proto::NodeCapacity {
        let caps = self.core.capacities();
        let compute = caps
            .computes()
            .into_iter()
            .filter(|(n, _, _)| *n == i.name)
            .map(|(_, k, c)| proto::ComputeEstimate {
                kernel: k,
                bytes_per_sec: c.rate as u64,
                overhead_us: (c.overhead * 1e6) as u64,
                source: c.source.name().to_string(),
                samples: c.samples,
            })
            .collect();
        let links = caps
            .links()
            .into_iter()
            .filter(|(p, _, _)| *p == i.name)
            .map(|(_, q, l)| proto::LinkEstimate {
                consumer: q,
                bytes_per_sec: l.rate as u64,
                overhead_us: (l.overhead * 1e6) as u64,
                samples: l.samples,
            })
            .collect();
        proto::NodeCapacity {
            compute,
            links,
            nic_bytes_per_sec: i.nic_bytes_per_sec,
        }
    }

    fn on_fetch(&mut self, conn: ConnId, job: proto::JobId, name: String, offset: u64, len: u64) {
        let failed = |hub: &mut Hub, name: String, reason: String| {
            tracing::warn!(conn, job = job.0, "fetch refused: {reason}");
            hub.send(conn, Message::FetchFailed { job, name, reason });
        };
        if let Err(e) = check_name(&name) {
            return failed(self, name, e.to_string());
        }
        let listed = self
            .core
            .plan(JobId(job.0))
            .map(|p| p.inputs.contains(&name));
        match listed {
            None => return failed(self, name, format!("job {} is not running", job.0)),
            Some(false) => {
                let reason = format!("\"{name}\" is not an input of job {}", job.0);
                return failed(self, name, reason);
            }
            Some(true) => {}
        }
        let size = match &self.files {
            None => Err(crate::files::FileError::NoService { name: name.clone() }),
            Some(f) => f.size(&name),
        };
        let size = match size {
            Ok(s) => s,
            Err(e) => return failed(self, name, e.to_string()),
        };
        let end = offset.saturating_add(len).min(size);
        if let Some(Peer::Daemon(d)) = self.peers.get_mut(&conn) {
            d.fetches.push_back(Fetch {
                job,
                name,
                offset: offset.min(end),
                end,
            });
        }
    }

    /// Whether `conn` has input pieces waiting to be sent (see [`Hub::pump`]).
    pub fn has_fetches(&self, conn: ConnId) -> bool {
        matches!(self.peers.get(&conn), Some(Peer::Daemon(d)) if !d.fetches.is_empty())
    }

    /// Queues input pieces for `conn`, about `budget` bytes at most (at least one piece), so
    /// the shell can pace file reads by how fast the connection drains.
    pub fn pump(&mut self, conn: ConnId, budget: usize) {
        let Some(files) = self.files.clone() else {
            return;
        };
        let mut spent = 0usize;
        let mut msgs = Vec::new();
        if let Some(Peer::Daemon(d)) = self.peers.get_mut(&conn) {
            while let Some(f) = d.fetches.front_mut() {
                if spent > 0 && spent >= budget {
                    break;
                }
                let want = (f.end - f.offset).min(u64::from(proto::INPUT_CHUNK_MAX));
                match files.read(&f.name, f.offset, want) {
                    Ok(data) => {
                        let n = data.len() as u64;
                        let last = n < want || f.offset + n >= f.end;
                        msgs.push(Message::InputChunk {
                            job: f.job,
                            name: f.name.clone(),
                            offset: f.offset,
                            data,
                            last,
                        });
                        spent += n as usize + 64;
                        f.offset += n;
                        if last {
                            d.fetches.pop_front();
                        }
                    }
                    Err(e) => {
                        msgs.push(Message::FetchFailed {
                            job: f.job,
                            name: f.name.clone(),
                            reason: e.to_string(),
                        });
                        spent += 64;
                        d.fetches.pop_front();
                    }
                }
            }
        }
        for m in msgs {
            self.send(conn, m);
        }
    }

    // -- core plumbing ------------------------------------------------------------------------

    /// Whether the core placed stream `stream` of `job` on consumer `node` (reports from any
    /// other node about it are stale or wrong and are ignored).
    fn holds_stream(&self, node: NodeId, job: JobId, stream: u32) -> bool {
        self.core
            .job(job)
            .and_then(|s| s.streams.get(stream as usize).map(|s| s.0 == node))
            .unwrap_or(false)
    }

    fn feed(&mut self, event: Event) {
        self.events.push_back(event);
        self.drain();
    }

    fn drain(&mut self) {
        while let Some(ev) = self.events.pop_front() {
            let cmds = self.core.handle(self.now, ev);
            self.apply(cmds);
        }
        // Resumed jobs that went on (or ended).
        if !self.resuming.is_empty() {
            let core = &self.core;
            self.resuming.retain(|id| match core.job(*id) {
                Some(st) if st.state == core::JobState::Resuming => true,
                Some(st) => {
                    tracing::info!(
                        job = id.0,
                        chunks_landed = st.delivered,
                        chunks = st.chunks,
                        state = ?st.state,
                        "job resumed: its consumers reported where its streams stand"
                    );
                    false
                }
                None => false,
            });
        }
        // Jobs the core forgot (refused while allocating) are forgotten here too.
        let core = &self.core;
        self.jobs.retain(|id, _| core.plan(*id).is_some());
    }

    fn apply(&mut self, cmds: Vec<Command>) {
        for c in cmds {
            match c {
                Command::Reply { client, reply } => self.reply(client.0, reply),
                Command::RefuseNode { node, reason } => {
                    if let Some(Peer::Daemon(d)) = self.peers.get_mut(&node.0) {
                        tracing::warn!(conn = node.0, node = %name_of(d), "node refused: {reason}");
                        d.gone = true;
                    }
                    self.error(node.0, ErrorKind::BadRequest, reason);
                    self.out.push(Action::Close(node.0));
                }
                Command::AllocStream {
                    node,
                    job,
                    stream,
                    len,
                    ring,
                } => {
                    self.track(job);
                    let rate_bps = self.core.plan(job).and_then(|p| p.rate_bps);
                    let prefill = self
                        .core
                        .job(job)
                        .and_then(|s| s.plan.prefill.get(stream as usize).copied())
                        .unwrap_or(0);
                    if let Some(slot) = self
                        .jobs
                        .get_mut(&job)
                        .and_then(|j| j.slots.get_mut(stream as usize))
                    {
                        slot.ring = ring;
                    }
                    self.send(
                        node.0,
                        Message::AllocStream {
                            job: proto::JobId(job.0),
                            stream: StreamIndex(stream),
                            capacity: ring,
                            total_len: len,
                            rate_bps,
                            prefill,
                        },
                    );
                }
                Command::Release { node, job, why, .. } => {
                    tracing::debug!(conn = node.0, %job, ?why, "release");
                    let reason = match why {
                        ReleaseWhy::Done => String::new(),
                        ReleaseWhy::Refused => format!("{job} was refused"),
                        ReleaseWhy::Cancelled => format!("{job} was cancelled by its user"),
                        ReleaseWhy::Aborted(r) => format!("{job} was aborted: {r}"),
                    };
                    self.send(
                        node.0,
                        Message::Release {
                            job: proto::JobId(job.0),
                            reason,
                        },
                    );
                }
                Command::StreamRead { node, job, stream } => self.send(
                    node.0,
                    Message::StreamRead {
                        job: proto::JobId(job.0),
                        stream: StreamIndex(stream),
                    },
                ),
                Command::Preload { node, job } => match self.preload(job) {
                    Ok(m) => {
                        self.send(node.0, m);
                        self.announce_producer(job, node);
                    }
                    Err(reason) => {
                        self.events
                            .push_back(Event::PreloadFailed { node, job, reason })
                    }
                },
                Command::Compute {
                    node,
                    task,
                    job,
                    chunk,
                    targets,
                } => match self.expel_targets(node, &targets) {
                    Ok(t) => {
                        let now = self.now_us();
                        self.latency.created(job, &chunk, now);
                        self.task_chunks.insert(task, (job, chunk.index));
                        let (c, e) = compute_pair(task, job, &chunk, t);
                        self.send(node.0, c);
                        self.send(node.0, e);
                    }
                    Err(reason) => {
                        tracing::warn!(%job, task = task.0, "cannot route task: {reason}");
                        self.events
                            .push_back(Event::TaskFailed { node, task, reason });
                    }
                },
                Command::CancelTask { node, task } => {
                    self.task_chunks.remove(&task);
                    let job = self.core.task(task).map_or(0, |t| t.0.0);
                    self.send(
                        node.0,
                        Message::CancelTask {
                            task: proto::TaskId(task.0),
                            job: proto::JobId(job),
                        },
                    );
                }
                Command::JobWarning {
                    client,
                    job,
                    message,
                } => {
                    tracing::warn!(%job, "promise at risk: {message}");
                    let mut to: BTreeSet<ConnId> = BTreeSet::from([client.0]);
                    if let Some(j) = self.jobs.get(&job) {
                        to.extend(j.watchers.iter().copied());
                    }
                    for c in to {
                        if self.peers.contains_key(&c) {
                            self.send(
                                c,
                                Message::JobWarning {
                                    job: proto::JobId(job.0),
                                    message: message.clone(),
                                },
                            );
                        }
                    }
                }
                Command::Unload { node, job } => self.send(
                    node.0,
                    Message::Unload {
                        job: proto::JobId(job.0),
                    },
                ),
                Command::Delivered { client, job } => {
                    tracing::debug!(%job, "every chunk delivered");
                    let watching = self
                        .jobs
                        .get(&job)
                        .is_some_and(|j| j.watchers.contains(&client.0));
                    if !watching && let Some(s) = self.job_status(job) {
                        self.send(client.0, Message::JobUpdate(s));
                    }
                }
                Command::JobEnded { client, job, end } => {
                    let outcome = outcome_of(&end);
                    self.log_end(job, &outcome);
                    if let Some(e) = self.core.ended_job(job).map(Self::ended_entry) {
                        let saved = saved_end(&e);
                        self.persist("an ended job", |s| s.end(&saved));
                    }
                    let samples = self.latency.take(job);
                    self.task_chunks.retain(|_, (j, _)| *j != job);
                    if matches!(end, JobEnd::Completed) && self.peers.contains_key(&client.0) {
                        self.send(
                            client.0,
                            Message::JobStats {
                                job: proto::JobId(job.0),
                                chunk_latency_us: Vec::new(),
                                chunk_latency_hdr: latency_hdr(&samples),
                            },
                        );
                    }
                    let mut to: BTreeSet<ConnId> = BTreeSet::from([client.0]);
                    if let Some(j) = self.jobs.remove(&job) {
                        to.extend(j.watchers);
                    }
                    for c in to {
                        if self.peers.contains_key(&c) {
                            self.send(
                                c,
                                Message::JobEnded {
                                    job: proto::JobId(job.0),
                                    outcome: outcome.clone(),
                                },
                            );
                        }
                    }
                }
            }
        }
    }

    /// `producer` is preloading `job`: add it to the job's producer set and tell the consumers
    /// of the job's streams the whole set (they take chunks only from these producers). Sent
    /// with the Preload, so it reaches them before the producer can have any chunk to send.
    fn announce_producer(&mut self, job: JobId, producer: NodeId) {
        let Some(name) = self.daemon_info(producer).map(|i| i.name.clone()) else {
            return;
        };
        let Some(j) = self.jobs.get_mut(&job) else {
            return;
        };
        j.producers.insert(name);
        let producers: Vec<String> = j.producers.iter().cloned().collect();
        let consumers: BTreeSet<ConnId> = self
            .core
            .job(job)
            .map(|st| st.streams.iter().map(|s| s.0.0).collect())
            .unwrap_or_default();
        for c in consumers {
            self.send(
                c,
                Message::JobProducers {
                    job: proto::JobId(job.0),
                    producers: producers.clone(),
                },
            );
        }
    }

    /// Starts tracking a job the core just created.
    fn track(&mut self, job: JobId) {
        if self.jobs.contains_key(&job) {
            return;
        }
        let (Some(plan), Some(st)) = (self.core.plan(job), self.core.job(job)) else {
            return;
        };
        self.jobs.insert(
            job,
            JobInfo {
                submitter: st.client.0,
                name: plan.name.clone().unwrap_or_default(),
                slots: plan
                    .streams
                    .iter()
                    .map(|s| Slot {
                        node: s.node.clone(),
                        alloc: None,
                        read_pos: 0,
                        frontier: 0,
                        ring: 0,
                    })
                    .collect(),
                watchers: BTreeSet::new(),
                sent: None,
                sent_at: 0,
                submitted_at: self.now,
                started_at: None,
                producers: BTreeSet::new(),
            },
        );
        let (spec, inputs) = self.submitting.take().unwrap_or_default();
        let saved = super::state::SavedJob {
            id: job.0,
            name: plan.name.clone().unwrap_or_default(),
            total: plan.total_bytes(),
            spec,
            inputs,
            resume: None,
        };
        let next = self.core.next_job_id();
        self.persist("an admitted job", |s| s.admit(&saved, next));
    }

    /// The lifecycle line of a job's end: outcome, bytes, duration and rate.
    fn log_end(&self, job: JobId, outcome: &JobOutcome) {
        let Some(j) = self.jobs.get(&job) else {
            if let Some(m) = &self.metrics {
                m.ended(outcome, 0);
            }
            tracing::info!(job = job.0, ?outcome, "job ended");
            return;
        };
        let bytes: u64 = j.slots.iter().map(|s| s.frontier).sum();
        if let Some(m) = &self.metrics {
            m.ended(outcome, bytes);
        }
        let secs = self.now.saturating_sub(j.submitted_at) as f64 / 1000.0;
        let gbit = if secs > 0.0 {
            bytes as f64 * 8.0 / secs / 1e9
        } else {
            0.0
        };
        let how = match outcome {
            JobOutcome::Completed => "completed".to_string(),
            JobOutcome::Cancelled => "cancelled".to_string(),
            JobOutcome::Aborted { reason } => format!("aborted: {reason}"),
        };
        tracing::info!(
            job = job.0,
            name = %j.name,
            bytes,
            seconds = format!("{secs:.3}"),
            gbit_per_s = format!("{gbit:.2}"),
            "job ended: {how}"
        );
    }

    fn reply(&mut self, conn: ConnId, reply: Reply) {
        let msg = match reply {
            Reply::Accepted { job, streams, plan } => {
                let slots = self.jobs.get(&job).map(|j| j.slots.clone());
                if let Some(slots) = &slots {
                    let saved: Vec<super::state::SavedStream> = slots
                        .iter()
                        .map(|s| {
                            let (key, handoff, backing) = s.alloc.clone().unwrap_or((
                                StreamKey(0),
                                PathBuf::new(),
                                RingBacking::Plain,
                            ));
                            super::state::SavedStream {
                                node: s.node.clone(),
                                key: key.0,
                                handoff: handoff.to_string_lossy().into_owned(),
                                backing: backing_name(backing).into(),
                            }
                        })
                        .collect();
                    let lines = plan.chunk_lines;
                    self.persist("an accepted job", |s| s.accepted(job.0, lines, &saved));
                }
                let streams: Vec<proto::StreamPlacement> = streams
                    .into_iter()
                    .map(|p| {
                        let alloc = slots
                            .as_ref()
                            .and_then(|s| s.get(p.stream as usize))
                            .and_then(|s| s.alloc.clone());
                        let (key, handoff) = match alloc {
                            Some((k, h, _)) => (k, h),
                            None => (StreamKey(u128::from(p.key)), PathBuf::new()),
                        };
                        proto::StreamPlacement {
                            stream: StreamIndex(p.stream),
                            node: p.node_name,
                            handoff,
                            key,
                            length: p.len,
                        }
                    })
                    .collect();
                let policy = self.core.job(job).map_or("", |s| s.policy);
                let plan = Box::new(self.plan_info(policy, &plan));
                let nodes: Vec<&str> = streams.iter().map(|s| s.node.as_str()).collect();
                tracing::info!(job = job.0, streams = streams.len(), nodes = %nodes.join(","), policy, "job accepted");
                Message::Accepted {
                    job: proto::JobId(job.0),
                    streams,
                    plan,
                }
            }
            Reply::Refused(r) => {
                let reason = match &r {
                    Refusal::AllocTimeout { node } => RefuseReason::AllocFailed {
                        node: node.clone(),
                        stream: self.pending_stream(conn, node),
                    },
                    other => refuse_reason(other),
                };
                tracing::info!(conn, "job refused: {r}");
                Message::Refused {
                    reason,
                    message: r.to_string(),
                }
            }
            Reply::Ok(job) => Message::Ack {
                job: proto::JobId(job.0),
            },
            Reply::Error(e) => Message::Error {
                kind: match e {
                    ClientError::UnknownJob(_) => ErrorKind::UnknownJob,
                    ClientError::BadState { .. } => ErrorKind::UnexpectedMessage,
                },
                message: e.to_string(),
            },
        };
        self.send(conn, msg);
    }

    /// The first unallocated stream on `node` of a job of `conn` that the core just dropped.
    fn pending_stream(&self, conn: ConnId, node: &str) -> StreamIndex {
        for (id, j) in &self.jobs {
            if j.submitter != conn || self.core.plan(*id).is_some() {
                continue;
            }
            if let Some(i) = j
                .slots
                .iter()
                .position(|s| s.alloc.is_none() && s.node == node)
            {
                return StreamIndex(i as u32);
            }
        }
        StreamIndex(0)
    }

    fn preload(&self, job: JobId) -> Result<Message, String> {
        let plan = self
            .core
            .plan(job)
            .ok_or_else(|| format!("{job} is gone"))?;
        let mut inputs = Vec::with_capacity(plan.inputs.len());
        for name in &plan.inputs {
            let size = match &self.files {
                None => Err(crate::files::FileError::NoService { name: name.clone() }),
                Some(f) => f.size(name),
            }
            .map_err(|e| e.to_string())?;
            inputs.push(InputSpec {
                name: name.clone(),
                source: InputSource::FileService { size },
            });
        }
        Ok(Message::Preload {
            job: proto::JobId(job.0),
            kernel: plan.kernel.name().to_string(),
            params: table_to_value(&plan.params),
            geometry: job_geometry(plan),
            inputs,
        })
    }

    fn daemon_info(&self, node: NodeId) -> Option<&proto::NodeInfo> {
        match self.peers.get(&node.0) {
            Some(Peer::Daemon(d)) => d.info.as_deref(),
            _ => None,
        }
    }

    /// Where each piece goes: the consumer's data endpoint for the route the policy chose.
    fn expel_targets(
        &self,
        producer: NodeId,
        targets: &[Target],
    ) -> Result<Vec<ExpelTarget>, String> {
        let p = self
            .daemon_info(producer)
            .ok_or_else(|| format!("producer {} is gone", producer.0))?;
        let mut out = Vec::with_capacity(targets.len());
        let mut chunk_offset = 0;
        for t in targets {
            let c = self
                .daemon_info(t.node)
                .ok_or_else(|| format!("consumer of stream {} is gone", t.piece.stream))?;
            let (endpoint, source) = route(p, c, &t.route)?;
            out.push(ExpelTarget {
                stream: StreamIndex(t.piece.stream),
                consumer: c.name.clone(),
                endpoint,
                source,
                chunk_offset,
                stream_offset: t.piece.offset,
                len: t.piece.len,
            });
            chunk_offset += t.piece.len;
        }
        Ok(out)
    }

    // -- status -------------------------------------------------------------------------------

    /// A job's state and progress as users see it.
    pub fn job_status(&self, job: JobId) -> Option<proto::JobStatus> {
        let st = self.core.job(job)?;
        let plan = self.core.plan(job)?;
        let info = self.jobs.get(&job);
        let total = plan.total_bytes();
        let state = match st.state {
            core::JobState::Allocating => proto::JobState::Allocating,
            core::JobState::Accepted => proto::JobState::WaitingReady,
            core::JobState::Running if !st.producers.iter().any(|(_, r)| *r) => {
                proto::JobState::Preloading
            }
            core::JobState::Running => proto::JobState::Running,
            core::JobState::Delivered => proto::JobState::Delivered,
            // Its producers preload again once its consumers reported; status says so in the
            // stall reason.
            core::JobState::Resuming => proto::JobState::Preloading,
        };
        let delivered = if st.state == core::JobState::Delivered {
            total
        } else {
            st.streams.iter().map(|s| s.3).sum()
        };
        let streams = plan
            .streams
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let slot = info.and_then(|j| j.slots.get(i));
                let frontier = st.streams.get(i).map_or(0, |c| c.3);
                StreamStatus {
                    stream: StreamIndex(i as u32),
                    node: s.node.clone(),
                    length: s.len,
                    delivered: if st.state == core::JobState::Delivered {
                        s.len
                    } else {
                        frontier.max(slot.map_or(0, |x| x.frontier))
                    },
                    read: slot.map_or(0, |x| x.read_pos),
                    ring_bytes: st.streams.get(i).map_or(0, |c| c.2),
                    starvations: None,
                }
            })
            .collect();
        Some(proto::JobStatus {
            job: proto::JobId(job.0),
            name: info.map(|j| j.name.clone()).unwrap_or_default(),
            state,
            progress: Progress {
                delivered,
                read: info.map_or(0, |j| j.slots.iter().map(|s| s.read_pos).sum()),
                total,
            },
            plan: Some(Box::new(self.plan_info(st.policy, &st.plan))),
            warning: st.warning.clone(),
            duplicated: st.duplicated,
            streams,
            running_ms: info
                .and_then(|j| j.started_at)
                .map(|t| self.now.saturating_sub(t)),
            stall_reason: st.stall.clone(),
        })
    }

    /// Why a job that is not live is gone, for readers of a ring still held.
    fn gone_reason(&self, id: JobId) -> String {
        let outcome = self
            .core
            .ended_job(id)
            .map(|e| outcome_of(&e.end))
            .or_else(|| {
                self.restored
                    .iter()
                    .find(|e| e.job.0 == id.0)
                    .map(|e| e.outcome.clone())
            });
        match outcome {
            Some(JobOutcome::Aborted { reason }) => format!("job {id} was aborted: {reason}"),
            Some(JobOutcome::Cancelled) => format!("job {id} was cancelled"),
            Some(JobOutcome::Completed) => format!("job {id} completed"),
            None => format!("the scheduler does not know job {id} (it started without its state)"),
        }
    }

    /// An ended job as status lists it, while the core remembers it.
    fn ended_entry(e: &core::EndedJob) -> proto::EndedJob {
        proto::EndedJob {
            job: proto::JobId(e.id.0),
            name: e.name.clone().unwrap_or_default(),
            outcome: outcome_of(&e.end),
            bytes: e.delivered,
            duration_ms: e.ended.saturating_sub(e.submitted),
            read: e.read,
            total: e.total,
        }
    }

    /// The answer to a Status request.
    pub fn status(&self, job: Option<JobId>) -> Message {
        let (jobs, ended): (Vec<proto::JobStatus>, Vec<proto::EndedJob>) = match job {
            Some(id) => match (self.job_status(id), self.core.ended_job(id)) {
                (Some(s), _) => (vec![s], Vec::new()),
                (None, Some(e)) => (Vec::new(), vec![Self::ended_entry(e)]),
                (None, None) if self.restored.iter().any(|e| e.job.0 == id.0) => (
                    Vec::new(),
                    self.restored
                        .iter()
                        .filter(|e| e.job.0 == id.0)
                        .cloned()
                        .collect(),
                ),
                (None, None) => {
                    return Message::Error {
                        kind: ErrorKind::UnknownJob,
                        message: ClientError::UnknownJob(id).to_string(),
                    };
                }
            },
            None => (
                self.core
                    .jobs()
                    .into_iter()
                    .filter_map(|id| self.job_status(id))
                    .collect(),
                // Newest first: this run's, then an earlier run's.
                self.core
                    .ended_jobs()
                    .rev()
                    .map(Self::ended_entry)
                    .chain(self.restored.iter().cloned())
                    .take(core::ENDED_HISTORY)
                    .collect(),
            ),
        };
        let all: Vec<core::JobStatus> = self
            .core
            .jobs()
            .into_iter()
            .filter_map(|id| self.core.job(id))
            .collect();
        let nodes = self
            .peers
            .iter()
            .filter_map(|(id, p)| match p {
                Peer::Daemon(d) if !d.gone => d.info.as_ref().map(|i| (*id, i, d.last_seen)),
                _ => None,
            })
            .filter(|(id, _, _)| self.core.node(NodeId(*id)).is_some())
            .map(|(id, i, last_seen)| NodeStatus {
                name: i.name.clone(),
                roles: i.roles,
                state: if self.now.saturating_sub(last_seen) * 2 > self.heartbeat_ms * 3 {
                    NodeState::Suspect
                } else {
                    NodeState::Alive
                },
                tasks_in_flight: self.core.tasks_of(NodeId(id)).len() as u32,
                streams: all
                    .iter()
                    .flat_map(|j| j.streams.iter())
                    .filter(|s| s.0 == NodeId(id))
                    .count() as u32,
                capacity: self.node_capacity(i),
                host: i.host,
                cores: i.cores,
                interfaces: i.interfaces.clone(),
                hugepages: i.hugepages,
                ring_budget: i.ring_budget,
                last_seen_ms: self.now.saturating_sub(last_seen),
            })
            .collect();
        Message::StatusReply { jobs, nodes, ended }
    }

    /// Sends watchers a JobUpdate on every state change, and on progress at most every
    /// [`UPDATE_INTERVAL_MS`] (or whenever `force`).
    fn publish(&mut self, force: bool) {
        let ids: Vec<JobId> = self
            .jobs
            .iter()
            .filter(|(_, j)| !j.watchers.is_empty())
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            let Some(s) = self.job_status(id) else {
                continue;
            };
            let now = self.now;
            let Some(j) = self.jobs.get_mut(&id) else {
                continue;
            };
            let due = match &j.sent {
                None => true,
                Some((state, _)) if *state != s.state => true,
                Some((_, p)) => {
                    *p != s.progress
                        && (force || now.saturating_sub(j.sent_at) >= UPDATE_INTERVAL_MS)
                }
            };
            if !due {
                continue;
            }
            j.sent = Some((s.state.clone(), s.progress));
            j.sent_at = now;
            let to: Vec<ConnId> = j.watchers.iter().copied().collect();
            for c in to {
                self.send(c, Message::JobUpdate(s.clone()));
            }
        }
    }
}

/// A core job end as the protocol says it.
/// Why a job live when the scheduler stopped ended.
pub const RESTART_REASON: &str =
    "the scheduler stopped while the job was live, and a restarted scheduler does not resume jobs";

/// An ended job as the durable state keeps it.
fn saved_end(e: &proto::EndedJob) -> super::state::SavedEnd {
    let (outcome, reason) = match &e.outcome {
        JobOutcome::Completed => ("completed", String::new()),
        JobOutcome::Cancelled => ("cancelled", String::new()),
        JobOutcome::Aborted { reason } => ("aborted", reason.clone()),
    };
    super::state::SavedEnd {
        id: e.job.0,
        name: e.name.clone(),
        outcome: outcome.into(),
        reason,
        total: e.total,
        delivered: e.bytes,
        read: e.read,
        duration_ms: e.duration_ms,
    }
}

/// An ended job of an earlier run, as status lists it.
fn restored_entry(e: &super::state::SavedEnd) -> proto::EndedJob {
    proto::EndedJob {
        job: proto::JobId(e.id),
        name: e.name.clone(),
        outcome: match e.outcome.as_str() {
            "completed" => JobOutcome::Completed,
            "cancelled" => JobOutcome::Cancelled,
            _ => JobOutcome::Aborted {
                reason: e.reason.clone(),
            },
        },
        bytes: e.delivered,
        duration_ms: e.duration_ms,
        read: e.read,
        total: e.total,
    }
}

fn outcome_of(end: &JobEnd) -> JobOutcome {
    match end {
        JobEnd::Completed => JobOutcome::Completed,
        JobEnd::Cancelled => JobOutcome::Cancelled,
        JobEnd::Aborted(r) => JobOutcome::Aborted {
            reason: r.to_string(),
        },
    }
}

fn name_of(d: &Daemon) -> String {
    d.info.as_ref().map_or_else(String::new, |i| i.name.clone())
}

/// The core's view of a joining daemon.
pub fn core_info(i: &proto::NodeInfo) -> core::NodeInfo {
    let interfaces = i
        .data_endpoints
        .iter()
        .filter_map(|e| match e {
            DataEndpoint::Tcp { addr, interface } => Some(core::Interface {
                name: interface.clone().unwrap_or_else(|| addr.to_string()),
                addr: addr.to_string(),
            }),
            DataEndpoint::Unix { .. } => None,
        })
        .collect();
    core::NodeInfo {
        name: i.name.clone(),
        host: format!("{:032x}", i.host.0),
        roles: core::Roles {
            producer: i.roles.producer,
            consumer: i.roles.consumer,
        },
        cores: if i.compute.cores > 0 {
            i.compute.cores
        } else {
            i.cores
        },
        capacity: if i.roles.consumer { i.ring_budget } else { 0 },
        interfaces,
        compute_bps: i.compute.bytes_per_sec,
        nic_bps: i.nic_bytes_per_sec,
        ports: i.ports,
    }
}

/// Picks the consumer endpoint for a route, and the producer's source address: the address of
/// the producer's interface with the same name as the endpoint's interface, if it has one of
/// the same family (a cluster names its data network alike on every node).
pub fn route(
    p: &proto::NodeInfo,
    c: &proto::NodeInfo,
    route: &Route,
) -> Result<(DataEndpoint, Option<SourceBinding>), String> {
    let unix = c
        .data_endpoints
        .iter()
        .find(|e| matches!(e, DataEndpoint::Unix { .. }));
    let tcp: Vec<&DataEndpoint> = c
        .data_endpoints
        .iter()
        .filter(|e| matches!(e, DataEndpoint::Tcp { .. }))
        .collect();
    let same_host = p.host == c.host;
    let chosen = match route {
        Route::Local => unix.or(tcp.first().copied()),
        Route::Remote(iface) => {
            let by_iface = iface.as_ref().and_then(|i| {
                tcp.iter().copied().find(
                    |e| matches!(e, DataEndpoint::Tcp { addr, .. } if addr.to_string() == i.addr),
                )
            });
            by_iface
                .or(tcp.first().copied())
                .or(if same_host { unix } else { None })
        }
    };
    let Some(endpoint) = chosen.cloned() else {
        return Err(format!(
            "consumer \"{}\" announced no data endpoint that producer \"{}\" can reach{}",
            c.name,
            p.name,
            if same_host {
                ""
            } else {
                " (it is on another host and has no TCP data endpoint)"
            }
        ));
    };
    let source = match &endpoint {
        DataEndpoint::Tcp {
            addr,
            interface: Some(name),
        } => p
            .interfaces
            .iter()
            .find(|i| &i.name == name && i.addr.is_ipv4() == addr.is_ipv4())
            .map(|i| SourceBinding {
                interface: None,
                addr: Some(i.addr),
            }),
        _ => None,
    };
    Ok((endpoint, source))
}

/// The Compute and Expel messages of one core task (same task id: the producer answers one
/// `TaskDone { kind: Expel }` for the pair). Pieces lie channel after channel in the computed
/// chunk, so `chunk_offset` is the sum of the preceding pieces' lengths.
pub fn compute_pair(
    task: TaskId,
    job: JobId,
    chunk: &Chunk,
    targets: Vec<ExpelTarget>,
) -> (Message, Message) {
    (
        Message::Compute {
            task: proto::TaskId(task.0),
            job: proto::JobId(job.0),
            chunk: proto::ChunkIndex(chunk.index),
            lines: LineRange {
                start: chunk.lines.start,
                end: chunk.lines.end,
            },
        },
        Message::Expel {
            task: proto::TaskId(task.0),
            job: proto::JobId(job.0),
            chunk: proto::ChunkIndex(chunk.index),
            targets,
        },
    )
}

/// The structured reason of a core refusal.
pub fn refuse_reason(r: &Refusal) -> RefuseReason {
    match r {
        Refusal::InvalidSpec(e) => match &e.kind {
            SpecErrorKind::UnknownKernel { name } => RefuseReason::UnknownKernel {
                kernel: name.clone(),
            },
            _ => RefuseReason::InvalidSpec {
                field: e.field.clone(),
            },
        },
        Refusal::MissingOutputNode { node, .. }
        | Refusal::NotAConsumer { node, .. }
        | Refusal::ConsumerLost { node } => RefuseReason::ConsumerMissing { node: node.clone() },
        Refusal::NoProducers => RefuseReason::NoProducers,
        Refusal::Capacity { .. } | Refusal::Policy(_) => RefuseReason::InsufficientCapacity,
        Refusal::AllocFailed { stream, node, .. } => RefuseReason::AllocFailed {
            node: node.clone(),
            stream: StreamIndex(*stream),
        },
        Refusal::AllocTimeout { node } => RefuseReason::AllocFailed {
            node: node.clone(),
            stream: StreamIndex(0),
        },
        Refusal::Infeasible {
            reason,
            max_feasible,
            ..
        } => RefuseReason::Infeasible {
            constraint: reason.name().to_string(),
            max_feasible_bps: (max_feasible * 8.0) as u64,
        },
        Refusal::UnknownPolicy { name, .. } => RefuseReason::UnknownPolicy { name: name.clone() },
    }
}

/// The output shape a producer's kernel computes into, from a job plan.
pub fn job_geometry(plan: &JobPlan) -> JobGeometry {
    let g = &plan.geometry;
    JobGeometry {
        channels: g.channels,
        lines: g.lines,
        line_bytes: g.line_bytes,
        pixels: g.pixels.as_ref().map(|p| PixelGeometry {
            width: p.width,
            height: p.height,
            bits: p.bits,
            dpi: p.dpi,
        }),
    }
}

/// Kernel parameters from the spec, as a proto [`Value`] (datetimes become strings).
pub fn table_to_value(t: &toml::Table) -> Value {
    Value::Table(
        t.iter()
            .map(|(k, v)| (k.clone(), toml_to_value(v)))
            .collect(),
    )
}

fn toml_to_value(v: &toml::Value) -> Value {
    match v {
        toml::Value::String(s) => Value::Str(s.clone()),
        toml::Value::Integer(i) => Value::Int(*i),
        toml::Value::Float(f) => Value::Float(*f),
        toml::Value::Boolean(b) => Value::Bool(*b),
        toml::Value::Datetime(d) => Value::Str(d.to_string()),
        toml::Value::Array(a) => Value::List(a.iter().map(toml_to_value).collect()),
        toml::Value::Table(t) => table_to_value(t),
    }
}
