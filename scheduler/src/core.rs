//! The scheduler's decision core: a deterministic state machine, events in, commands out
//! (DESIGN.md §2, §6, §7). No I/O, no clock (time comes in with each event), no randomness.
//!
//! # Lifecycle of a job
//!
//! 1. [`Event::Submit`]: the spec is validated, every stream's node must be a live consumer,
//!    the policy admits the job (producers exist, capacity) and sizes chunks and rings. Else
//!    [`Reply::Refused`]. Then [`Command::AllocStream`] goes to each stream's consumer.
//! 2. When every stream is allocated: [`Reply::Accepted`]. An [`Event::AllocFailed`], the loss
//!    of a consumer or the policy's timeout refuse the job instead, and the streams already
//!    asked for are released.
//! 3. [`Event::Ready`]: the policy picks producers; each gets [`Command::Preload`]. After its
//!    [`Event::PreloadDone`] it gets [`Command::Compute`] tasks on demand: the scheduler keeps
//!    `Policy::tasks_in_flight` (at least 2) tasks assigned to every producer while the job
//!    has chunks left, so that a producer always has a chunk queued while it expels another.
//!    Producers joining later are adopted (preload, then tasks) if the policy agrees.
//! 4. A task computes one chunk (lines `[l0, l1)` of all channels) and expels its pieces to
//!    their consumers; the producer reports [`Event::TaskDone`] once the consumers acked them.
//!    Tasks are stateless: any producer can redo any chunk and a re-sent piece lands
//!    idempotently, so a chunk counts as delivered once, on its first TaskDone.
//! 5. When every chunk is delivered: [`Command::Unload`] to the producers and
//!    [`Command::Delivered`] to the submitter. The user's [`Event::Done`] then releases the
//!    buffers ([`Command::Release`]) and ends the job ([`JobEnd::Completed`]).
//!
//! Chunks are handed out lowest position first, interleaving the line ranges of
//! `split = { lines = N }`, and never further ahead of a stream's delivered prefix than its
//! ring holds, so producers never hold chunks that a consumer cannot take yet.
//!
//! # Failures
//!
//! - A producer that leaves or crashes: its tasks go back to the queue (lowest first) and other
//!   producers redo them. A running job left with no producer at all is aborted
//!   ([`AbortReason::NoProducers`]) rather than kept waiting: its readers would stall with no
//!   bound, and the user can resubmit. (Preload failures on every producer likewise abort.)
//! - A task that fails is retried, on any producer, up to `Policy::max_attempts` times; then
//!   the job is aborted ([`AbortReason::ChunkFailed`]).
//! - A consumer that leaves aborts (or, while allocating, refuses) every job with a stream on
//!   it, naming the node.
//! - A reader gone aborts the job or is ignored, per the spec's `on_reader_death`.
//!
//! Events naming unknown jobs, tasks or nodes, or coming from the wrong node (stale reports
//! from a producer already declared dead), are ignored.

use std::collections::{BTreeMap, BTreeSet};

use crate::capacity::{Capacities, CapacityConfig};
use crate::deal::Swrr;
use crate::model::{Cluster, ConsumerCap, LinkCap, ProducerCap, Reason};
use crate::policy::{Deal, JobView, NodeView, Plan, PlanSummary, Policy, Route, Weighted};
use crate::spec::{Chunk, JobPlan, Layout, Piece, ReaderDeath, SpecError};

/// Milliseconds on the server's monotonic clock.
pub type Millis = u64;

/// A running job that delivered no chunk for this long, with a stream whose ring is full, is
/// reported stalled (status, and the submitter).
pub const STALL_MS: Millis = 5_000;

/// A dealt task is late at its expected time × (1 + slack) plus this (control-plane jitter).
pub const STRAGGLER_FLOOR_MS: u64 = 100;
/// A late task that found no producer free to take a copy is looked at again this much later.
pub const STRAGGLER_RETRY_MS: u64 = 100;

/// A constant-rate reader's position is moved on at its rate for at most this long after
/// its last report.
pub const READER_EXTRAPOLATION_MS: u64 = 100;

/// A daemon connected to the scheduler.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(pub u64);
/// A user connection (submit, ready, done, cancel).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClientId(pub u64);
/// A job, numbered by the scheduler from 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct JobId(pub u64);
/// A compute+expel task, numbered by the scheduler from 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TaskId(pub u64);

impl std::fmt::Display for JobId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "job {}", self.0)
    }
}

/// A network interface a node announces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    /// Interface name (e.g. `eth0`).
    pub name: String,
    /// Address to reach the node through it (`ip:port`).
    pub addr: String,
}

/// What a node does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Roles {
    /// Runs tasks.
    pub producer: bool,
    /// Holds stream rings.
    pub consumer: bool,
}

/// What a node announces when it joins.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NodeInfo {
    /// Unique name (job specs name consumers by it).
    pub name: String,
    /// Host it runs on (producers on a consumer's host are preferred and go through UNIX
    /// sockets).
    pub host: String,
    /// Producer, consumer or both.
    pub roles: Roles,
    /// Cores it computes with.
    pub cores: u32,
    /// Buffer memory it offers in bytes (chunk buffers on a producer, rings on a consumer);
    /// 0 = not announced (no limit assumed).
    pub capacity: u64,
    /// Interfaces it can be reached through.
    pub interfaces: Vec<Interface>,
    /// Compute rate it announced (output bytes/s, any kernel; 0 = none): seeds the estimate.
    pub compute_bps: u64,
    /// NIC rate it announced (bytes/s per direction, all data interfaces; 0 = unknown).
    pub nic_bps: u64,
    /// Peers it talks to at once (`k` of the k-port model; 0 = no limit announced).
    pub ports: u32,
}

/// How a node left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leave {
    /// It said goodbye.
    Quit,
    /// Its connection broke.
    Crash,
    /// It went silent past its heartbeats and was declared dead (it may only be paused).
    Silent,
}

/// A job submission.
#[derive(Debug, Clone)]
pub enum Submission {
    /// TOML text, parsed and validated here.
    Toml(String),
    /// An already validated plan.
    Plan(Box<JobPlan>),
}

/// Everything the scheduler reacts to.
#[derive(Debug, Clone)]
pub enum Event {
    /// A daemon joined.
    NodeJoined {
        /// Its connection.
        node: NodeId,
        /// What it announced.
        info: NodeInfo,
    },
    /// A daemon left.
    NodeLeft {
        /// Its connection.
        node: NodeId,
        /// Quit or crash.
        how: Leave,
    },
    /// A user submits a job.
    Submit {
        /// The user.
        client: ClientId,
        /// The job.
        spec: Submission,
    },
    /// The user's readers are attached: start.
    Ready {
        /// Who asks.
        client: ClientId,
        /// The job.
        job: JobId,
    },
    /// The user read everything: release the buffers.
    Done {
        /// Who asks.
        client: ClientId,
        /// The job.
        job: JobId,
    },
    /// The user cancels the job (any time).
    Cancel {
        /// Who asks.
        client: ClientId,
        /// The job.
        job: JobId,
    },
    /// A consumer allocated a stream's ring.
    StreamAllocated {
        /// The consumer.
        node: NodeId,
        /// The job.
        job: JobId,
        /// The stream.
        stream: u32,
        /// Key readers use to attach to the ring.
        key: u64,
    },
    /// A consumer could not allocate a stream's ring.
    AllocFailed {
        /// The consumer.
        node: NodeId,
        /// The job.
        job: JobId,
        /// The stream.
        stream: u32,
        /// Why.
        reason: String,
    },
    /// A producer has the job's inputs.
    PreloadDone {
        /// The producer.
        node: NodeId,
        /// The job.
        job: JobId,
    },
    /// A producer could not fetch the job's inputs.
    PreloadFailed {
        /// The producer.
        node: NodeId,
        /// The job.
        job: JobId,
        /// Why.
        reason: String,
    },
    /// A task's chunk was computed and acked by its consumers.
    TaskDone {
        /// The producer.
        node: NodeId,
        /// The task.
        task: TaskId,
    },
    /// What a producer measured of a task (sent before its TaskDone): compute time, bytes,
    /// and the link time of each piece.
    TaskTimes {
        /// The producer.
        node: NodeId,
        /// The task.
        task: TaskId,
        /// The figures.
        report: TaskReport,
    },
    /// A task failed (kernel error, send failure...).
    TaskFailed {
        /// The producer.
        node: NodeId,
        /// The task.
        task: TaskId,
        /// Why.
        reason: String,
    },
    /// A consumer reports a stream's in-order frontier (bytes).
    StreamProgress {
        /// The consumer.
        node: NodeId,
        /// The job.
        job: JobId,
        /// The stream.
        stream: u32,
        /// Contiguous bytes landed from the start.
        frontier: u64,
        /// Bytes the reader released.
        read: u64,
    },
    /// A consumer saw a stream's reader die.
    ReaderGone {
        /// The consumer.
        node: NodeId,
        /// The job.
        job: JobId,
        /// The stream.
        stream: u32,
    },
    /// A job an earlier run of the scheduler admitted and whose rings were allocated: resume
    /// it under its id, once its consumers rejoin and report where its streams stand
    /// ([`Event::StreamProgress`]); only what has not landed in order is computed again.
    Resume {
        /// The job (its id is kept).
        job: JobId,
        /// Its plan; `chunk_lines` must be the grid its rings were filled on.
        plan: Box<JobPlan>,
        /// Per stream: its ring's key.
        keys: Vec<u64>,
        /// It was running (else it waits for Ready again).
        running: bool,
    },
    /// Time passes (timeouts are checked on every event; this one carries only the time).
    Tick,
}

/// What a producer measured of one task.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TaskReport {
    /// Microseconds computing the chunk.
    pub compute_us: u64,
    /// Microseconds of the producer's CPU allowance the task cost (0: not measured).
    pub cpu_us: u64,
    /// Bytes computed.
    pub bytes: u64,
    /// Per piece: stream, bytes, microseconds of the link's time.
    pub pieces: Vec<(u32, u64, u64)>,
}

/// `bytes/s` as Gbit/s text.
pub fn gbit(bytes_per_s: f64) -> String {
    let g = bytes_per_s * 8.0 / 1e9;
    if g >= 100.0 {
        format!("{g:.0} Gbit/s")
    } else if g >= 10.0 {
        format!("{g:.1} Gbit/s")
    } else if g >= 0.01 {
        format!("{g:.2} Gbit/s")
    } else {
        format!("{:.1} Mbit/s", g * 1000.0)
    }
}

fn millis_text(s: f64) -> String {
    if s >= 1.0 {
        format!("{s:.2} s")
    } else {
        format!("{:.1} ms", s * 1e3)
    }
}

fn infeasible_text(
    policy: &str,
    reason: Reason,
    requested: Option<f64>,
    latency_bound: Option<f64>,
    headroom: f64,
    max_feasible: f64,
    streams: u32,
) -> String {
    let n = f64::from(streams.max(1));
    let per = |r: f64| {
        if streams > 1 {
            format!(
                "{} per stream ({} for the job's {streams} streams)",
                gbit(r / n),
                gbit(r)
            )
        } else {
            gbit(r)
        }
    };
    let what = match (requested, latency_bound) {
        (Some(r), Some(l)) => format!(
            "{} with {:.0} % headroom and chunk latency under {}",
            per(r),
            headroom * 100.0,
            millis_text(l)
        ),
        (Some(r), None) => format!("{} with {:.0} % headroom", per(r), headroom * 100.0),
        (None, Some(l)) => format!("chunk latency under {}", millis_text(l)),
        (None, None) => "the job".to_string(),
    };
    let why = match reason {
        Reason::Compute => "the free producers do not compute fast enough".to_string(),
        Reason::Links => {
            "the links, NICs or ports between the producers and the consumers are too slow"
                .to_string()
        }
        Reason::Memory => {
            "the consumers' free ring memory cannot hold the chunks in flight".to_string()
        }
        Reason::Latency => match latency_bound {
            Some(l) => format!(
                "no chunk size and producer set keeps chunk latency under {}",
                millis_text(l)
            ),
            None => "the latency would be too high".to_string(),
        },
    };
    let can = if max_feasible > 0.0 {
        format!("the cluster can give at most {} now", per(max_feasible))
    } else {
        "the cluster can give nothing within these bounds now".to_string()
    };
    format!(
        "{policy} cannot promise {what}: {why} ({}); {can}",
        reason.name()
    )
}

/// Why a job was refused (it is not queued: resubmit later).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Refusal {
    /// The spec is invalid.
    #[error("invalid job spec: {0}")]
    InvalidSpec(#[from] SpecError),
    /// A stream's node is not connected.
    #[error(
        "stream {stream}: output node {} is not connected; start its consumer daemon or fix the spec",
        spate_netlib::text::quote(node)
    )]
    MissingOutputNode {
        /// The stream.
        stream: u32,
        /// The node named.
        node: String,
    },
    /// A stream's node is connected but is no consumer.
    #[error(
        "stream {stream}: node {} is not a consumer",
        spate_netlib::text::quote(node)
    )]
    NotAConsumer {
        /// The stream.
        stream: u32,
        /// The node named.
        node: String,
    },
    /// No producer is connected.
    #[error("no producer is connected; start a producer daemon")]
    NoProducers,
    /// A node lacks the buffer memory.
    #[error(
        "node {} has {free} bytes of buffer capacity free, the job needs {need}",
        spate_netlib::text::quote(node)
    )]
    Capacity {
        /// The node.
        node: String,
        /// Bytes needed.
        need: u64,
        /// Bytes free.
        free: u64,
    },
    /// A consumer could not allocate a stream.
    #[error("stream {stream}: node {} could not allocate its ring: {}", spate_netlib::text::quote(node), spate_netlib::text::Quoted::new(reason).bare().max(400))]
    AllocFailed {
        /// The stream.
        stream: u32,
        /// The consumer.
        node: String,
        /// Its reason.
        reason: String,
    },
    /// A consumer did not answer in time.
    #[error(
        "node {} did not allocate its streams in time",
        spate_netlib::text::quote(node)
    )]
    AllocTimeout {
        /// The consumer.
        node: String,
    },
    /// A consumer left while allocating.
    #[error("output node {} left", spate_netlib::text::quote(node))]
    ConsumerLost {
        /// The consumer.
        node: String,
    },
    /// The policy refused, for its own reason.
    #[error("refused by policy: {}", spate_netlib::text::Quoted::new(.0).bare().max(400))]
    Policy(String),
    /// The policy cannot feed what the job asks for.
    #[error("{}", infeasible_text(policy, *reason, *requested, *latency_bound, *headroom, *max_feasible, *streams))]
    Infeasible {
        /// The policy.
        policy: String,
        /// The constraint that binds at the chunk size that came closest.
        reason: Reason,
        /// Every constraint that bound at some chunk size.
        reasons: Vec<Reason>,
        /// The job rate asked (B/s, all streams).
        requested: Option<f64>,
        /// The latency bound asked (s).
        latency_bound: Option<f64>,
        /// The headroom the policy asks above the rate.
        headroom: f64,
        /// The highest job rate admitted now (B/s, all streams).
        max_feasible: f64,
        /// Streams of the job.
        streams: u32,
    },
    /// The spec names a policy this scheduler does not have.
    #[error(
        "policy: unknown policy {} (known: {known})",
        spate_netlib::text::quote(name)
    )]
    UnknownPolicy {
        /// As written.
        name: String,
        /// The scheduler's policies.
        known: String,
    },
}

/// Why a running job was aborted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AbortReason {
    /// An output consumer left.
    #[error("output node {} {}", spate_netlib::text::quote(node), match how {
        Leave::Quit => "quit",
        Leave::Crash => "crashed",
        Leave::Silent => "went silent past its heartbeats and was declared dead",
    })]
    ConsumerLost {
        /// Its name.
        node: String,
        /// How it left.
        how: Leave,
    },
    /// No producer is left to compute the job.
    #[error("no producer is left (last one: {})", spate_netlib::text::quote(last))]
    NoProducers {
        /// The last producer that left.
        last: String,
    },
    /// Every producer failed to preload.
    #[error("preload failed on every producer (last: {}: {})", spate_netlib::text::quote(node), spate_netlib::text::Quoted::new(reason).bare().max(400))]
    PreloadFailed {
        /// The last producer that failed.
        node: String,
        /// Its reason.
        reason: String,
    },
    /// One chunk failed too often.
    #[error("chunk {chunk} failed {attempts} times (last: {})", spate_netlib::text::Quoted::new(reason).bare().max(400))]
    ChunkFailed {
        /// The chunk.
        chunk: u64,
        /// Attempts made.
        attempts: u32,
        /// The last reason.
        reason: String,
    },
    /// A stream's reader died and the spec says abort.
    #[error(
        "the reader of stream {stream} on {} is gone",
        spate_netlib::text::quote(node)
    )]
    ReaderGone {
        /// The stream.
        stream: u32,
        /// The consumer.
        node: String,
    },
    /// After a scheduler restart, the job could not go on.
    #[error("the scheduler restarted and could not resume the job: {}", spate_netlib::text::Quoted::new(reason).bare().max(400))]
    NotResumed {
        /// Why.
        reason: String,
    },
    /// The job waited past its `reader_timeout` on a full ring whose reader read nothing.
    #[error(
        "stream {stream} on {}: its ring was full and its reader read nothing for {secs} s (reader_timeout)",
        spate_netlib::text::quote(node)
    )]
    ReaderTimeout {
        /// The stream.
        stream: u32,
        /// The consumer.
        node: String,
        /// Seconds waited.
        secs: u64,
    },
}

/// How a job ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobEnd {
    /// Delivered and released by the user.
    Completed,
    /// Cancelled by the user.
    Cancelled,
    /// Aborted.
    Aborted(AbortReason),
}

/// Why stream buffers are released.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReleaseWhy {
    /// The user is done with them.
    Done,
    /// The job was refused while allocating.
    Refused,
    /// The user cancelled.
    Cancelled,
    /// The job was aborted: readers should see this reason.
    Aborted(AbortReason),
}

/// A stream's placement, in [`Reply::Accepted`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamPlacement {
    /// Stream index.
    pub stream: u32,
    /// Its consumer.
    pub node: NodeId,
    /// The consumer's name.
    pub node_name: String,
    /// Key readers attach with.
    pub key: u64,
    /// Stream length in bytes.
    pub len: u64,
    /// Ring capacity in bytes.
    pub ring: u64,
}

/// A client request that could not be served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// No such job (never existed, or ended).
    #[error("{0} does not exist (or has ended)")]
    UnknownJob(JobId),
    /// The request does not fit the job's state.
    #[error("{job} is {state:?}: {wanted}")]
    BadState {
        /// The job.
        job: JobId,
        /// Its state.
        state: JobState,
        /// What the request needs.
        wanted: &'static str,
    },
}

/// Answers to a client.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// The job is admitted and its streams allocated.
    Accepted {
        /// The job.
        job: JobId,
        /// Where each stream is.
        streams: Vec<StreamPlacement>,
        /// What the policy planned and predicts.
        plan: PlanSummary,
    },
    /// The job is refused.
    Refused(Refusal),
    /// The request (Ready, Done, Cancel) was taken.
    Ok(JobId),
    /// The request could not be served.
    Error(ClientError),
}

/// One piece of a task and where to send it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// What to send.
    pub piece: Piece,
    /// The consumer.
    pub node: NodeId,
    /// How to reach it.
    pub route: Route,
}

/// Everything the scheduler asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// Answer a client.
    Reply {
        /// The client.
        client: ClientId,
        /// The answer.
        reply: Reply,
    },
    /// Refuse a joining node (its name is taken); the server should close it.
    RefuseNode {
        /// The node.
        node: NodeId,
        /// Why.
        reason: String,
    },
    /// Consumer: allocate a stream's ring.
    AllocStream {
        /// The consumer.
        node: NodeId,
        /// The job.
        job: JobId,
        /// The stream.
        stream: u32,
        /// Stream length in bytes.
        len: u64,
        /// Ring capacity in bytes.
        ring: u64,
    },
    /// Consumer: free these streams' rings (readers see `why`).
    Release {
        /// The consumer.
        node: NodeId,
        /// The job.
        job: JobId,
        /// The streams on this node.
        streams: Vec<u32>,
        /// Why.
        why: ReleaseWhy,
    },
    /// Consumer: this stream was read to its end and is counted so (its reader may return
    /// the end).
    StreamRead {
        /// The consumer.
        node: NodeId,
        /// The job.
        job: JobId,
        /// The stream.
        stream: u32,
    },
    /// Producer: fetch the job's inputs (the plan is [`Scheduler::plan`]).
    Preload {
        /// The producer.
        node: NodeId,
        /// The job.
        job: JobId,
    },
    /// Producer: compute this chunk, then expel its pieces to their targets; report
    /// [`Event::TaskDone`] when every piece is acked. Producers should compute their queued
    /// tasks in ascending chunk order.
    Compute {
        /// The producer.
        node: NodeId,
        /// The task.
        task: TaskId,
        /// The job.
        job: JobId,
        /// The chunk (lines and pieces).
        chunk: Chunk,
        /// Where each piece goes, in the order of `chunk.pieces`.
        targets: Vec<Target>,
    },
    /// Producer: drop this task (another copy landed first); a report for it is ignored.
    CancelTask {
        /// The producer.
        node: NodeId,
        /// The task.
        task: TaskId,
    },
    /// Tell the submitter (and status) that the job's promise is at risk.
    JobWarning {
        /// The submitter.
        client: ClientId,
        /// The job.
        job: JobId,
        /// What changed and what the job now gets.
        message: String,
    },
    /// Producer: forget the job (drop its queued tasks and preloaded inputs).
    Unload {
        /// The producer.
        node: NodeId,
        /// The job.
        job: JobId,
    },
    /// Tell the submitter every byte of the job is delivered.
    Delivered {
        /// The submitter.
        client: ClientId,
        /// The job.
        job: JobId,
    },
    /// Tell the submitter the job ended.
    JobEnded {
        /// The submitter.
        client: ClientId,
        /// The job.
        job: JobId,
        /// How.
        end: JobEnd,
    },
}

/// A job's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobState {
    /// Waiting for consumers to allocate the streams.
    Allocating,
    /// Accepted, waiting for Ready.
    Accepted,
    /// Computing.
    Running,
    /// Every chunk delivered, waiting for Done.
    Delivered,
    /// Restored after a scheduler restart ([`Event::Resume`]): waiting for its consumers to
    /// report its streams, and for a producer, before it goes on where its rings stand.
    Resuming,
}

/// How many ended jobs the scheduler remembers (the oldest are forgotten first).
pub const ENDED_HISTORY: usize = 256;

/// A job that ended, as status shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct EndedJob {
    /// The job.
    pub id: JobId,
    /// Its name in the spec, if any.
    pub name: Option<String>,
    /// How it ended.
    pub end: JobEnd,
    /// Its policy.
    pub policy: &'static str,
    /// Output bytes in all.
    pub total: u64,
    /// Bytes delivered in order at the consumers when it ended.
    pub delivered: u64,
    /// Bytes its readers released when it ended.
    pub read: u64,
    /// When it was submitted, started (Ready) and ended.
    pub submitted: Millis,
    /// When it started (None: it never ran).
    pub started: Option<Millis>,
    /// When it ended.
    pub ended: Millis,
}

/// A snapshot of a job, for status and tests.
#[derive(Debug, Clone, PartialEq)]
pub struct JobStatus {
    /// The job.
    pub id: JobId,
    /// Its submitter.
    pub client: ClientId,
    /// Its state.
    pub state: JobState,
    /// Its producers, and whether each has preloaded.
    pub producers: Vec<(NodeId, bool)>,
    /// Chunks in total.
    pub chunks: u64,
    /// Chunks delivered.
    pub delivered: u64,
    /// Tasks assigned now.
    pub tasks_in_flight: usize,
    /// Per stream: consumer, key (once allocated), ring, last reported frontier.
    pub streams: Vec<(NodeId, Option<u64>, u64, u64)>,
    /// Its policy.
    pub policy: &'static str,
    /// What the policy planned.
    pub plan: PlanSummary,
    /// The last warning (its promise at risk), if any.
    pub warning: Option<String>,
    /// Why it makes no progress, when it is stalled.
    pub stall: Option<String>,
    /// Straggling tasks duplicated on another producer so far.
    pub duplicated: u64,
    /// When it started running (Ready).
    pub started: Option<Millis>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Alloc {
    Pending,
    Done(u64),
    Failed,
}

#[derive(Debug)]
struct StreamState {
    node: NodeId,
    ring: u64,
    alloc: Alloc,
    frontier: u64,
    /// Reader position last reported, and when.
    read: u64,
    read_at: Millis,
    /// [`Command::StreamRead`] was sent: its reader knows its end is recorded.
    confirmed: bool,
}

#[derive(Debug)]
struct Job {
    id: JobId,
    client: ClientId,
    plan: JobPlan,
    layout: Layout,
    state: JobState,
    alloc_deadline: Millis,
    streams: Vec<StreamState>,
    /// Producers working on the job: preloaded or not.
    producers: BTreeMap<NodeId, bool>,
    /// Producers that failed to preload it (not adopted again).
    preload_failed: BTreeSet<NodeId>,
    /// Assignable chunks as (rank in part, part): redos, and each part's next fresh chunk.
    candidates: BTreeSet<(u64, u32)>,
    next_fresh: Vec<u64>,
    /// Per part: ranks below are all delivered; and delivered ranks above it.
    frontier: Vec<u64>,
    above: Vec<BTreeSet<u64>>,
    /// Per part: smallest ring among its streams.
    part_ring: Vec<u64>,
    /// Hosts of its consumers, sorted, once each (its consumers are fixed at submit, and a
    /// consumer that leaves ends the job).
    consumer_hosts: Vec<String>,
    delivered: u64,
    in_flight: usize,
    attempts: BTreeMap<u64, u32>,
    /// Index of its policy in the scheduler's list.
    policy: usize,
    /// What the policy planned.
    summary: PlanSummary,
    /// Dealt jobs: the dealer (None: on demand).
    dealer: Option<Dealer>,
    /// Its tasks per producer.
    per_node: BTreeMap<NodeId, u32>,
    /// What it reserved on each node.
    reserved: Reservation,
    /// The last warning.
    warning: Option<String>,
    /// Straggling tasks duplicated.
    duplicated: u64,
    /// Tasks finished since its plan was last made.
    done_since_plan: u32,
    /// When it was submitted and when it started running.
    submitted: Millis,
    started: Option<Millis>,
    /// When it last delivered a chunk (or started).
    progressed: Millis,
    /// Why it is stalled, when it is.
    stall: Option<String>,
    /// Resuming: the rings' keys, and whether it was running.
    resume: Option<(Vec<u64>, bool)>,
}

/// A resumed job whose consumers have not all reported its streams (or that cannot be planned
/// again) this long after the restart is aborted ([`AbortReason::NotResumed`]).
pub const RESUME_GRACE_MS: Millis = 30_000;

/// A dealt job is re-planned on today's estimates every this many finished tasks per
/// producer of its plan (at least [`REPLAN_MIN_TASKS`]).
pub const REPLAN_TASKS_PER_PRODUCER: u32 = 2;
/// See [`REPLAN_TASKS_PER_PRODUCER`].
pub const REPLAN_MIN_TASKS: u32 = 8;

/// A dealt job's dealing state.
#[derive(Debug)]
struct Dealer {
    plan: Weighted,
    swrr: Swrr,
    /// Pacing: chunk bytes that may be dealt now, and when the bucket was last filled.
    tokens: f64,
    filled_at: Millis,
    /// Producers whose task straggled: no new chunk until they finish one.
    suspect: BTreeSet<NodeId>,
}

impl Dealer {
    fn new(plan: Weighted, now: Millis) -> Dealer {
        let swrr = Swrr::new(
            plan.shares.iter().map(|s| (s.node, s.weight)),
            plan.round_robin,
        );
        Dealer {
            plan,
            swrr,
            tokens: 0.0,
            filled_at: now,
            suspect: BTreeSet::new(),
        }
    }

    fn share(&self, node: NodeId) -> Option<&crate::policy::Share> {
        self.plan.shares.iter().find(|s| s.node == node)
    }
}

/// What a job reserved: share of each producer's time, and NIC bytes per second.
#[derive(Debug, Clone, Default, PartialEq)]
struct Reservation {
    compute: BTreeMap<NodeId, f64>,
    egress: BTreeMap<NodeId, f64>,
    ingress: BTreeMap<NodeId, f64>,
}

impl Job {
    /// A job with nothing planned, dealt or delivered yet (the callers set the rest).
    #[allow(clippy::too_many_arguments)]
    fn new(
        id: JobId,
        client: ClientId,
        plan: JobPlan,
        layout: Layout,
        policy: usize,
        streams: Vec<StreamState>,
        state: JobState,
        now: Millis,
    ) -> Job {
        let parts = layout.parts() as usize;
        Job {
            id,
            client,
            consumer_hosts: Vec::new(),
            layout,
            state,
            alloc_deadline: now,
            streams,
            producers: BTreeMap::new(),
            preload_failed: BTreeSet::new(),
            candidates: BTreeSet::new(),
            next_fresh: vec![0; parts],
            frontier: vec![0; parts],
            above: vec![BTreeSet::new(); parts],
            part_ring: vec![0; parts],
            delivered: 0,
            in_flight: 0,
            attempts: BTreeMap::new(),
            plan,
            policy,
            summary: PlanSummary::default(),
            dealer: None,
            per_node: BTreeMap::new(),
            reserved: Reservation::default(),
            warning: None,
            duplicated: 0,
            done_since_plan: 0,
            submitted: now,
            started: None,
            progressed: now,
            stall: None,
            resume: None,
        }
    }

    fn is_delivered(&self, part: u32, rank: u64) -> bool {
        let p = part as usize;
        rank < self.frontier[p] || self.above[p].contains(&rank)
    }

    /// The first assignable chunk within its ring window (from the landed prefix), without
    /// taking it.
    fn peek(&self) -> Option<(u64, u32)> {
        let lb = self.plan.geometry.line_bytes;
        let cl = self.layout.chunk_lines();
        self.peek_from(|j, part| j.frontier[part as usize] * cl * lb)
    }

    /// The first assignable chunk whose end lies within the ring from `start(part)`.
    fn peek_from(&self, start: impl Fn(&Job, u32) -> u64) -> Option<(u64, u32)> {
        self.candidates.iter().copied().find(|&(rank, part)| {
            let end = self.layout.piece_offset(rank) + self.layout.piece_len(part, rank);
            end.saturating_sub(start(self, part)) <= self.part_ring[part as usize]
        })
    }

    /// Where the readers of a part's streams are now (the least of them, in stream bytes):
    /// the last reported position, moved on at the job's rate for at most
    /// [`READER_EXTRAPOLATION_MS`] once the reader started, never past the landed prefix.
    fn reader_start(&self, part: u32, now: Millis, rate: f64) -> u64 {
        let parts = self.layout.parts();
        let landed = self.frontier[part as usize]
            * self.layout.chunk_lines()
            * self.plan.geometry.line_bytes;
        (0..self.plan.geometry.channels)
            .filter_map(|c| self.streams.get((c * parts + part) as usize))
            .map(|s| {
                let ahead = if s.read > 0 {
                    let dt = now.saturating_sub(s.read_at).min(READER_EXTRAPOLATION_MS);
                    (rate * dt as f64 / 1000.0) as u64
                } else {
                    0
                };
                (s.read + ahead).min(landed.max(s.read))
            })
            .min()
            .unwrap_or(0)
    }

    fn take(&mut self, (rank, part): (u64, u32)) {
        self.candidates.remove(&(rank, part));
        let p = part as usize;
        if rank == self.next_fresh[p] {
            self.next_fresh[p] += 1;
            if self.next_fresh[p] < self.layout.part_chunks(part) {
                self.candidates.insert((self.next_fresh[p], part));
            }
        }
    }

    fn requeue(&mut self, part: u32, rank: u64) {
        if !self.is_delivered(part, rank) {
            self.candidates.insert((rank, part));
        }
    }

    /// Marks a chunk delivered; false if it already was.
    fn deliver(&mut self, part: u32, rank: u64) -> bool {
        if self.is_delivered(part, rank) {
            return false;
        }
        let p = part as usize;
        self.above[p].insert(rank);
        while self.above[p].remove(&self.frontier[p]) {
            self.frontier[p] += 1;
        }
        self.delivered += 1;
        true
    }
}

#[derive(Debug)]
struct Node {
    info: NodeInfo,
    tasks: BTreeSet<TaskId>,
    /// Tasks handed to it so far (the policy spreads a producer's tasks over routes by it).
    assigned: u64,
}

#[derive(Debug, Clone)]
struct Task {
    job: JobId,
    chunk: u64,
    node: NodeId,
    /// Dealt jobs: when it is late (expected time × (1 + slack)).
    deadline: Option<Millis>,
    /// The other copy of a duplicated straggler.
    twin: Option<TaskId>,
}

/// The scheduler's state machine.
pub struct Scheduler {
    policies: Vec<Box<dyn Policy>>,
    default_policy: usize,
    caps: Capacities,
    now: Millis,
    nodes: BTreeMap<NodeId, Node>,
    jobs: BTreeMap<JobId, Job>,
    tasks: BTreeMap<TaskId, Task>,
    /// Ended jobs, oldest first (at most [`ENDED_HISTORY`]).
    ended: std::collections::VecDeque<EndedJob>,
    /// Dealt tasks by deadline.
    deadlines: BTreeSet<(Millis, TaskId)>,
    next_job: u64,
    next_task: u64,
}

impl std::fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scheduler")
            .field("now", &self.now)
            .field("nodes", &self.nodes)
            .field("jobs", &self.jobs)
            .field("tasks", &self.tasks)
            .finish_non_exhaustive()
    }
}

impl Scheduler {
    /// A scheduler with this policy and no nodes.
    pub fn new(policy: Box<dyn Policy>) -> Self {
        Self::with_policies(vec![policy], 0)
    }

    /// A scheduler with these policies (jobs choose one with `policy = "name"`), `default`
    /// (an index) for jobs that name none.
    pub fn with_policies(policies: Vec<Box<dyn Policy>>, default: usize) -> Self {
        assert!(!policies.is_empty(), "a scheduler needs a policy");
        Scheduler {
            default_policy: default.min(policies.len() - 1),
            policies,
            caps: Capacities::new(CapacityConfig::default()),
            now: 0,
            nodes: BTreeMap::new(),
            jobs: BTreeMap::new(),
            tasks: BTreeMap::new(),
            ended: std::collections::VecDeque::new(),
            deadlines: BTreeSet::new(),
            next_job: 1,
            next_task: 1,
        }
    }

    /// Handles one event at time `now` and returns the commands to carry out, in order.
    pub fn handle(&mut self, now: Millis, event: Event) -> Vec<Command> {
        self.now = self.now.max(now);
        let mut out = Vec::new();
        match event {
            Event::NodeJoined { node, info } => self.on_join(node, info, &mut out),
            Event::NodeLeft { node, how } => self.on_leave(node, how, &mut out),
            Event::Submit { client, spec } => self.on_submit(client, spec, &mut out),
            Event::Ready { client, job } => self.on_ready(client, job, &mut out),
            Event::Done { client, job } => self.on_done(client, job, &mut out),
            Event::Cancel { client, job } => self.on_cancel(client, job, &mut out),
            Event::StreamAllocated {
                node,
                job,
                stream,
                key,
            } => self.on_allocated(node, job, stream, key, &mut out),
            Event::AllocFailed {
                node,
                job,
                stream,
                reason,
            } => self.on_alloc_failed(node, job, stream, reason, &mut out),
            Event::PreloadDone { node, job } => {
                if let Some(j) = self.jobs.get_mut(&job)
                    && let Some(ready) = j.producers.get_mut(&node)
                {
                    *ready = true;
                }
            }
            Event::PreloadFailed { node, job, reason } => {
                self.on_preload_failed(node, job, reason, &mut out)
            }
            Event::TaskDone { node, task } => self.on_task_done(node, task, &mut out),
            Event::TaskTimes { node, task, report } => {
                self.on_task_times(node, task, &report, &mut out)
            }
            Event::TaskFailed { node, task, reason } => {
                self.on_task_failed(node, task, reason, &mut out)
            }
            Event::StreamProgress {
                node,
                job,
                stream,
                frontier,
                read,
            } => {
                let now = self.now;
                self.resumed_stream(node, job, stream);
                if let Some(s) = self
                    .jobs
                    .get_mut(&job)
                    .and_then(|j| j.streams.get_mut(stream as usize))
                    .filter(|s| s.node == node)
                {
                    s.frontier = s.frontier.max(frontier);
                    if read > s.read || s.read_at == 0 {
                        s.read_at = now;
                    }
                    s.read = s.read.max(read);
                }
                self.confirm_read(job, stream, &mut out);
                self.complete_if_read(job, &mut out);
            }
            Event::ReaderGone { node, job, stream } => {
                self.on_reader_gone(node, job, stream, &mut out)
            }
            Event::Tick => self.check_stalls(&mut out),
            Event::Resume {
                job,
                plan,
                keys,
                running,
            } => self.on_resume(job, *plan, keys, running),
        }
        self.try_resumes(&mut out);
        self.check_timeouts(&mut out);
        self.dispatch(&mut out);
        out
    }

    // -- queries ------------------------------------------------------------------------------

    /// The plan of a live job.
    pub fn plan(&self, job: JobId) -> Option<&JobPlan> {
        self.jobs.get(&job).map(|j| &j.plan)
    }

    /// The names of the scheduler's policies, the default first.
    pub fn policy_names(&self) -> Vec<&'static str> {
        let first = self.policies[self.default_policy].name();
        let mut v = vec![first];
        v.extend(
            self.policies
                .iter()
                .map(|p| p.name())
                .filter(|n| *n != first),
        );
        v
    }

    /// What the scheduler measured so far.
    pub fn capacities(&self) -> &Capacities {
        &self.caps
    }

    /// Settings of the capacity estimates (seeds, weights).
    pub fn set_capacity_config(&mut self, config: CapacityConfig) {
        self.caps.config = config;
    }

    /// Takes back estimates an earlier run measured ([`Capacities::export`]).
    pub fn restore_capacities(&mut self, saved: &[crate::capacity::SavedFit]) {
        self.caps.restore(saved);
    }

    /// What admission would decide for `plan` now, without admitting it: the policy and its
    /// plan, or the refusal.
    pub fn dry_run(&self, plan: &JobPlan) -> Result<(&'static str, PlanSummary), Refusal> {
        let (policy, consumers) = self.precheck(plan)?;
        self.place(policy, plan, &consumers, None)
            .map(|p| (p.plan.policy, p.plan.summary))
    }

    /// The chunk layout of a live job.
    pub fn layout(&self, job: JobId) -> Option<&Layout> {
        self.jobs.get(&job).map(|j| &j.layout)
    }

    /// A connected node's announcement.
    pub fn node(&self, node: NodeId) -> Option<&NodeInfo> {
        self.nodes.get(&node).map(|n| &n.info)
    }

    /// Connected nodes.
    pub fn nodes(&self) -> Vec<NodeId> {
        self.nodes.keys().copied().collect()
    }

    /// Ended jobs, oldest first (at most [`ENDED_HISTORY`]).
    pub fn ended_jobs(&self) -> impl DoubleEndedIterator<Item = &EndedJob> {
        self.ended.iter()
    }

    /// An ended job, if still remembered.
    pub fn ended_job(&self, job: JobId) -> Option<&EndedJob> {
        self.ended.iter().rev().find(|e| e.id == job)
    }

    /// The id the next job gets.
    pub fn next_job_id(&self) -> u64 {
        self.next_job
    }

    /// Numbers new jobs from `next` on (at least): ids never repeat across restarts.
    pub fn continue_job_ids(&mut self, next: u64) {
        self.next_job = self.next_job.max(next);
    }

    /// Numbers new tasks from `next` on (at least): a scheduler restarted on the same state
    /// starts where no earlier run's task id can be.
    pub fn continue_task_ids(&mut self, next: u64) {
        self.next_task = self.next_task.max(next);
    }

    /// Live jobs.
    pub fn jobs(&self) -> Vec<JobId> {
        self.jobs.keys().copied().collect()
    }

    /// Tasks assigned to a node.
    pub fn tasks_of(&self, node: NodeId) -> Vec<TaskId> {
        self.nodes
            .get(&node)
            .map(|n| n.tasks.iter().copied().collect())
            .unwrap_or_default()
    }

    /// The job and chunk of an assigned task.
    pub fn task(&self, task: TaskId) -> Option<(JobId, u64, NodeId)> {
        self.tasks.get(&task).map(|t| (t.job, t.chunk, t.node))
    }

    /// Whether a running job has a chunk a free producer could take now (unassigned,
    /// undelivered, within its streams' ring window).
    pub fn has_assignable(&self, job: JobId) -> bool {
        self.jobs
            .get(&job)
            .is_some_and(|j| j.state == JobState::Running && j.peek().is_some())
    }

    /// A snapshot of a live job.
    pub fn job(&self, job: JobId) -> Option<JobStatus> {
        let j = self.jobs.get(&job)?;
        Some(JobStatus {
            policy: self.policies[j.policy].name(),
            plan: j.summary.clone(),
            warning: j.warning.clone(),
            stall: j.stall.clone(),
            duplicated: j.duplicated,
            started: j.started,
            id: j.id,
            client: j.client,
            state: j.state,
            producers: j.producers.iter().map(|(n, r)| (*n, *r)).collect(),
            chunks: j.layout.chunk_count(),
            delivered: j.delivered,
            tasks_in_flight: j.in_flight,
            streams: j
                .streams
                .iter()
                .map(|s| {
                    let key = match s.alloc {
                        Alloc::Done(k) => Some(k),
                        _ => None,
                    };
                    (s.node, key, s.ring, s.frontier)
                })
                .collect(),
        })
    }

    /// Checks the internal bookkeeping (for tests): every task is on a live producer and
    /// counted once, every running job has a live producer, counters agree.
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut per_job: BTreeMap<JobId, usize> = BTreeMap::new();
        for (id, t) in &self.tasks {
            let n = self
                .nodes
                .get(&t.node)
                .ok_or_else(|| format!("task {id:?} is on dead node {:?}", t.node))?;
            if !n.tasks.contains(id) {
                return Err(format!("task {id:?} missing from its node's set"));
            }
            let j = self
                .jobs
                .get(&t.job)
                .ok_or_else(|| format!("task {id:?} of ended job {:?}", t.job))?;
            if j.state != JobState::Running {
                return Err(format!("task {id:?} of {} in state {:?}", t.job, j.state));
            }
            if j.producers.get(&t.node) != Some(&true) {
                return Err(format!("task {id:?} on a producer not ready for {}", t.job));
            }
            *per_job.entry(t.job).or_default() += 1;
        }
        let node_tasks: usize = self.nodes.values().map(|n| n.tasks.len()).sum();
        if node_tasks != self.tasks.len() {
            return Err("node task sets disagree with the task table".into());
        }
        for j in self.jobs.values() {
            if j.in_flight != per_job.get(&j.id).copied().unwrap_or(0) {
                return Err(format!("{} in_flight counter is off", j.id));
            }
            for n in j.producers.keys() {
                if !self.nodes.contains_key(n) {
                    return Err(format!("{} has dead producer {n:?}", j.id));
                }
            }
            if j.state == JobState::Running && j.producers.is_empty() {
                return Err(format!("{} runs with no producer", j.id));
            }
            for (i, s) in j.streams.iter().enumerate() {
                // A resuming job's stream has no node until its consumer reports it.
                let unplaced = j.state == JobState::Resuming && s.alloc == Alloc::Pending;
                if !unplaced && !self.nodes.contains_key(&s.node) {
                    return Err(format!("{} stream {i} is on dead node {:?}", j.id, s.node));
                }
            }
            // Each chunk assigned at most once, or twice as a straggler and its copy.
            let mut seen: BTreeMap<u64, TaskId> = BTreeMap::new();
            for (id, t) in self.tasks.iter().filter(|(_, t)| t.job == j.id) {
                if let Some(first) = seen.insert(t.chunk, *id) {
                    let twins = t.twin == Some(first)
                        && self.tasks.get(&first).and_then(|f| f.twin) == Some(*id);
                    if !twins {
                        return Err(format!("{} chunk {} assigned twice", j.id, t.chunk));
                    }
                }
            }
            let per: u32 = j.per_node.values().sum();
            if per as usize != j.in_flight {
                return Err(format!("{} per-producer task counts are off", j.id));
            }
        }
        Ok(())
    }

    // -- views --------------------------------------------------------------------------------

    fn ring_used(&self, node: NodeId) -> u64 {
        self.jobs
            .values()
            .flat_map(|j| j.streams.iter())
            .filter(|s| s.node == node && s.alloc != Alloc::Failed)
            .map(|s| s.ring)
            .sum()
    }

    fn view(&self, id: NodeId) -> Option<NodeView<'_>> {
        let n = self.nodes.get(&id)?;
        Some(NodeView {
            id,
            info: &n.info,
            tasks: n.tasks.len(),
            // Streams live on consumers only (a submit naming another node is refused).
            ring_bytes_used: if n.info.roles.consumer {
                self.ring_used(id)
            } else {
                0
            },
        })
    }

    fn producer_views(&self) -> Vec<NodeView<'_>> {
        self.nodes
            .iter()
            .filter(|(_, n)| n.info.roles.producer)
            .filter_map(|(id, _)| self.view(*id))
            .collect()
    }

    fn job_view<'a>(&'a self, j: &'a Job) -> JobView<'a> {
        JobView {
            id: j.id,
            plan: &j.plan,
            layout: &j.layout,
            consumer_hosts: j.consumer_hosts.iter().map(String::as_str).collect(),
            tasks_in_flight: j.in_flight,
        }
    }

    fn name(&self, node: NodeId) -> String {
        self.nodes
            .get(&node)
            .map_or_else(|| format!("node {}", node.0), |n| n.info.name.clone())
    }

    fn bad_state(client: ClientId, j: &Job, wanted: &'static str, out: &mut Vec<Command>) {
        out.push(Command::Reply {
            client,
            reply: Reply::Error(ClientError::BadState {
                job: j.id,
                state: j.state,
                wanted,
            }),
        });
    }

    // -- nodes --------------------------------------------------------------------------------

    fn on_join(&mut self, node: NodeId, info: NodeInfo, out: &mut Vec<Command>) {
        if self.nodes.contains_key(&node) || self.nodes.values().any(|n| n.info.name == info.name) {
            out.push(Command::RefuseNode {
                node,
                reason: format!(
                    "a node named {} is already connected: give each daemon a unique name",
                    spate_netlib::text::quote(&info.name)
                ),
            });
            return;
        }
        let producer = info.roles.producer;
        self.nodes.insert(
            node,
            Node {
                info,
                tasks: BTreeSet::new(),
                assigned: 0,
            },
        );
        if !producer {
            return;
        }
        // Adopt into running jobs.
        let Some(pv) = self.view(node) else { return };
        let adopt: Vec<JobId> = self
            .jobs
            .values()
            .filter(|j| j.state == JobState::Running && !j.preload_failed.contains(&node))
            .filter(|j| j.dealer.is_none())
            .filter(|j| self.policies[j.policy].adopt(&self.job_view(j), &pv))
            .map(|j| j.id)
            .collect();
        // Dealt jobs whose promise is at risk may gain from the newcomer.
        let at_risk: Vec<JobId> = self
            .jobs
            .values()
            .filter(|j| j.state == JobState::Running && j.dealer.is_some() && j.warning.is_some())
            .map(|j| j.id)
            .collect();
        for id in adopt {
            if let Some(j) = self.jobs.get_mut(&id) {
                j.producers.insert(node, false);
                out.push(Command::Preload { node, job: id });
            }
        }
        for id in at_risk {
            self.replan(id, out);
        }
    }

    fn on_leave(&mut self, node: NodeId, how: Leave, out: &mut Vec<Command>) {
        let Some(info) = self.nodes.get(&node).map(|n| n.info.clone()) else {
            return;
        };
        // Consumer side: every job with a stream there ends.
        let hit: Vec<JobId> = self
            .jobs
            .values()
            .filter(|j| j.streams.iter().any(|s| s.node == node))
            .map(|j| j.id)
            .collect();
        // The node must be gone before we release the others' streams.
        let tasks = self
            .nodes
            .remove(&node)
            .map(|n| n.tasks)
            .unwrap_or_default();
        for id in hit {
            let state = self.jobs.get(&id).map(|j| j.state);
            if state == Some(JobState::Allocating) {
                self.refuse_job(
                    id,
                    Refusal::ConsumerLost {
                        node: info.name.clone(),
                    },
                    out,
                );
            } else {
                self.end_job(
                    id,
                    JobEnd::Aborted(AbortReason::ConsumerLost {
                        node: info.name.clone(),
                        how,
                    }),
                    out,
                );
            }
        }
        // Producer side: requeue its tasks (unless a copy runs elsewhere), drop it from jobs.
        for t in tasks {
            if let Some(task) = self.forget_task(t)
                && task.twin.is_none()
                && let Some(j) = self.jobs.get_mut(&task.job)
                && let Some((part, rank)) = j.layout.locate(task.chunk)
            {
                j.requeue(part, rank);
            }
        }
        let mut replan = Vec::new();
        let orphaned: Vec<JobId> = self
            .jobs
            .values_mut()
            .filter_map(|j| {
                let was = j.producers.remove(&node).is_some();
                if let Some(d) = j.dealer.as_mut()
                    && d.share(node).is_some()
                {
                    d.plan.shares.retain(|s| s.node != node);
                    d.swrr
                        .set_weights(d.plan.shares.iter().map(|s| (s.node, s.weight)));
                    d.suspect.remove(&node);
                    j.reserved.compute.remove(&node);
                    j.reserved.egress.remove(&node);
                    if j.state == JobState::Running && !j.producers.is_empty() {
                        replan.push(j.id);
                    }
                }
                (was && j.state == JobState::Running && j.producers.is_empty()).then_some(j.id)
            })
            .collect();
        for id in replan {
            self.replan(id, out);
        }
        for id in orphaned {
            self.end_job(
                id,
                JobEnd::Aborted(AbortReason::NoProducers {
                    last: info.name.clone(),
                }),
                out,
            );
        }
    }

    // -- jobs ---------------------------------------------------------------------------------

    /// The policy a plan asks for and its consumers (every output node present, as a
    /// consumer), or the refusal.
    fn precheck(&self, plan: &JobPlan) -> Result<(usize, Vec<NodeId>), Refusal> {
        let policy = match &plan.policy {
            None => self.default_policy,
            Some(name) => self
                .policies
                .iter()
                .position(|p| p.name() == name)
                .ok_or_else(|| Refusal::UnknownPolicy {
                    name: name.clone(),
                    known: self.policy_names().join(", "),
                })?,
        };
        let mut consumers = Vec::with_capacity(plan.streams.len());
        for s in &plan.streams {
            match self.nodes.iter().find(|(_, n)| n.info.name == s.node) {
                None => {
                    return Err(Refusal::MissingOutputNode {
                        stream: s.index,
                        node: s.node.clone(),
                    });
                }
                Some((_, n)) if !n.info.roles.consumer => {
                    return Err(Refusal::NotAConsumer {
                        stream: s.index,
                        node: s.node.clone(),
                    });
                }
                Some((id, _)) => consumers.push(*id),
            }
        }
        Ok((policy, consumers))
    }

    /// What `policy` decides for `plan` on `consumers` (by stream), on today's estimates and
    /// what the other jobs (all but `except`) reserved.
    fn place(
        &self,
        policy: usize,
        plan: &JobPlan,
        consumers: &[NodeId],
        except: Option<JobId>,
    ) -> Result<crate::policy::Placement, Refusal> {
        let producers = self.producer_views();
        let cviews: Vec<NodeView<'_>> = consumers.iter().filter_map(|c| self.view(*c)).collect();
        let cluster = self.cluster_for(plan.kernel.name(), consumers, except, &BTreeSet::new());
        self.policies[policy].admit(plan, &producers, &cviews, &cluster)
    }

    /// A node's NIC rate (bytes/s per direction): announced, else the default per interface.
    fn nic(&self, n: &NodeInfo) -> f64 {
        if n.nic_bps > 0 {
            n.nic_bps as f64
        } else {
            self.caps.config.nic_default * n.interfaces.len().max(1) as f64
        }
    }

    /// What every live job but `except` reserved, summed per node.
    fn reserved_except(&self, except: Option<JobId>) -> Reservation {
        let mut sum = Reservation::default();
        for j in self.jobs.values().filter(|j| Some(j.id) != except) {
            for (n, v) in &j.reserved.compute {
                *sum.compute.entry(*n).or_insert(0.0) += v;
            }
            for (n, v) in &j.reserved.egress {
                *sum.egress.entry(*n).or_insert(0.0) += v;
            }
            for (n, v) in &j.reserved.ingress {
                *sum.ingress.entry(*n).or_insert(0.0) += v;
            }
        }
        sum
    }

    /// The model's cluster for a job of `kernel` on `consumers`: every live producer but
    /// `skip` with its estimates, less what the other jobs reserved.
    fn cluster_for(
        &self,
        kernel: &str,
        consumers: &[NodeId],
        except: Option<JobId>,
        skip: &BTreeSet<NodeId>,
    ) -> Cluster {
        let cfg = &self.caps.config;
        let r = self.reserved_except(except);
        let got = |m: &BTreeMap<NodeId, f64>, id: &NodeId| m.get(id).copied().unwrap_or(0.0);
        let ports = |n: &NodeInfo| if n.ports > 0 { n.ports } else { 1 << 16 };
        let producers: Vec<ProducerCap> = self
            .nodes
            .iter()
            .filter(|(id, n)| n.info.roles.producer && !skip.contains(id))
            .map(|(id, n)| {
                let c = self
                    .caps
                    .compute(&n.info.name, kernel, n.info.compute_bps, n.info.cores);
                ProducerCap {
                    id: *id,
                    host: n.info.host.clone(),
                    compute: c.rate,
                    overhead: c.overhead,
                    preload: 0.0,
                    egress: (self.nic(&n.info) - got(&r.egress, id)).max(0.0),
                    ports: ports(&n.info),
                    avail: (1.0 - got(&r.compute, id)).clamp(0.0, 1.0),
                }
            })
            .collect();
        let mut cons: Vec<NodeId> = consumers.to_vec();
        cons.sort();
        cons.dedup();
        let consumers: Vec<ConsumerCap> = cons
            .iter()
            .filter_map(|id| {
                let v = self.view(*id)?;
                Some(ConsumerCap {
                    id: *id,
                    host: v.info.host.clone(),
                    ingress: (self.nic(v.info) - got(&r.ingress, id)).max(0.0),
                    ports: ports(v.info),
                    memory: v.free_capacity(),
                })
            })
            .collect();
        let mut links = BTreeMap::new();
        for p in &producers {
            for q in &consumers {
                let (Some(pn), Some(qn)) = (self.nodes.get(&p.id), self.nodes.get(&q.id)) else {
                    continue;
                };
                if let Some(l) = self.caps.link(&pn.info.name, &qn.info.name) {
                    links.insert(
                        (p.id, q.id),
                        LinkCap {
                            rate: l.rate,
                            overhead: l.overhead,
                            delay: 0.0,
                        },
                    );
                }
            }
        }
        Cluster {
            producers,
            consumers,
            links,
            local: LinkCap {
                rate: cfg.local_rate,
                overhead: cfg.local_overhead,
                delay: 0.0,
            },
            remote: LinkCap {
                rate: f64::INFINITY,
                overhead: cfg.remote_overhead,
                delay: cfg.remote_delay,
            },
        }
    }

    /// What a dealt plan reserves: each producer's share of time at the dealt rate, and the
    /// NIC bytes per second its remote pieces take at both ends.
    fn reservation(
        &self,
        plan: &JobPlan,
        consumers: &[NodeId],
        w: &Weighted,
        s: &PlanSummary,
    ) -> Reservation {
        let mut r = Reservation::default();
        if !w.reserve {
            return r;
        }
        let rate = w.pace.unwrap_or(s.predicted_rate);
        let total_w: f64 = w.shares.iter().map(|x| x.weight).sum();
        if total_w <= 0.0 || rate <= 0.0 {
            return r;
        }
        let total = plan.total_bytes().max(1) as f64;
        let mut share_of: BTreeMap<NodeId, f64> = BTreeMap::new();
        for (st, q) in plan.streams.iter().zip(consumers) {
            *share_of.entry(*q).or_insert(0.0) += st.len as f64 / total;
        }
        let host = |n: &NodeId| self.nodes.get(n).map(|x| x.info.host.as_str());
        for sh in &w.shares {
            let x = rate * sh.weight / total_w;
            *r.compute.entry(sh.node).or_insert(0.0) += x / sh.full_rate.max(1e-9);
            for (q, wq) in &share_of {
                if host(q) != host(&sh.node) {
                    *r.egress.entry(sh.node).or_insert(0.0) += x * wq;
                    *r.ingress.entry(*q).or_insert(0.0) += x * wq;
                }
            }
        }
        r
    }

    fn on_submit(&mut self, client: ClientId, spec: Submission, out: &mut Vec<Command>) {
        let refuse = |out: &mut Vec<Command>, r: Refusal| {
            out.push(Command::Reply {
                client,
                reply: Reply::Refused(r),
            })
        };
        let plan = match spec {
            Submission::Plan(p) => *p,
            Submission::Toml(text) => match JobPlan::parse(&text) {
                Ok(p) => p,
                Err(e) => return refuse(out, Refusal::InvalidSpec(e)),
            },
        };
        let (policy, consumers) = match self.precheck(&plan) {
            Ok(x) => x,
            Err(r) => return refuse(out, r),
        };
        let placement = match self.place(policy, &plan, &consumers, None) {
            Ok(p) => p,
            Err(r) => return refuse(out, r),
        };
        let id = JobId(self.next_job);
        self.next_job += 1;
        let layout = plan.layout(placement.chunk_lines);
        let parts = layout.parts();
        let streams: Vec<StreamState> = consumers
            .iter()
            .zip(&placement.rings)
            .map(|(node, ring)| StreamState {
                node: *node,
                ring: *ring,
                alloc: Alloc::Pending,
                frontier: 0,
                read: 0,
                read_at: 0,
                confirmed: false,
            })
            .collect();
        let part_ring = (0..parts)
            .map(|p| {
                (0..plan.geometry.channels)
                    .map(|c| streams[(c * parts + p) as usize].ring)
                    .min()
                    .unwrap_or(0)
            })
            .collect();
        for (i, s) in streams.iter().enumerate() {
            out.push(Command::AllocStream {
                node: s.node,
                job: id,
                stream: i as u32,
                len: plan.streams[i].len,
                ring: s.ring,
            });
        }
        let candidates = (0..parts)
            .filter(|&p| layout.part_chunks(p) > 0)
            .map(|p| (0, p))
            .collect();
        let Plan { deal, summary, .. } = placement.plan;
        let (dealer, reserved) = match deal {
            Deal::OnDemand => (None, Reservation::default()),
            Deal::Weighted(w) => {
                let r = self.reservation(&plan, &consumers, &w, &summary);
                (Some(Dealer::new(w, self.now)), r)
            }
        };
        let consumer_hosts = self.hosts_of(&consumers);
        let mut job = Job::new(
            id,
            client,
            plan,
            layout,
            policy,
            streams,
            JobState::Allocating,
            self.now,
        );
        job.alloc_deadline = self
            .now
            .saturating_add(self.policies[policy].alloc_timeout_ms());
        job.consumer_hosts = consumer_hosts;
        job.candidates = candidates;
        job.part_ring = part_ring;
        job.summary = summary;
        job.dealer = dealer;
        job.reserved = reserved;
        self.jobs.insert(id, job);
    }

    fn on_resume(&mut self, id: JobId, plan: JobPlan, keys: Vec<u64>, running: bool) {
        if self.jobs.contains_key(&id) || keys.len() != plan.streams.len() {
            return;
        }
        self.next_job = self.next_job.max(id.0 + 1);
        let policy = plan
            .policy
            .as_ref()
            .and_then(|n| self.policies.iter().position(|p| p.name() == n))
            .unwrap_or(self.default_policy);
        let layout = plan.layout(plan.chunk_lines.unwrap_or(1).max(1));
        let streams = keys
            .iter()
            .map(|_| StreamState {
                node: NodeId(u64::MAX),
                ring: 0,
                alloc: Alloc::Pending,
                frontier: 0,
                read: 0,
                read_at: 0,
                confirmed: false,
            })
            .collect();
        let mut job = Job::new(
            id,
            ClientId(u64::MAX),
            plan,
            layout,
            policy,
            streams,
            JobState::Resuming,
            self.now,
        );
        job.alloc_deadline = self.now.saturating_add(RESUME_GRACE_MS);
        job.stall = Some(
            "resuming after a scheduler restart: waiting for its consumers to report its streams"
                .into(),
        );
        job.resume = Some((keys, running));
        self.jobs.insert(id, job);
    }

    /// The hosts of `consumers`, sorted, once each.
    fn hosts_of(&self, consumers: &[NodeId]) -> Vec<String> {
        let mut hosts: Vec<String> = consumers
            .iter()
            .filter_map(|c| self.nodes.get(c))
            .map(|n| n.info.host.clone())
            .collect();
        hosts.sort_unstable();
        hosts.dedup();
        hosts
    }

    /// A resuming job's stream reported by the consumer the plan names: it is placed there.
    fn resumed_stream(&mut self, node: NodeId, job: JobId, stream: u32) {
        let Some(name) = self
            .nodes
            .get(&node)
            .filter(|n| n.info.roles.consumer)
            .map(|n| n.info.name.clone())
        else {
            return;
        };
        let Some(j) = self.jobs.get_mut(&job) else {
            return;
        };
        let (Some((keys, _)), JobState::Resuming) = (&j.resume, j.state) else {
            return;
        };
        let i = stream as usize;
        if j.plan.streams.get(i).is_some_and(|p| p.node == name)
            && let (Some(s), Some(key)) = (j.streams.get_mut(i), keys.get(i))
        {
            s.node = node;
            s.alloc = Alloc::Done(*key);
        }
    }

    /// Resuming jobs whose streams were all reported go on, once a producer is there and the
    /// policy plans them again (on the grid their rings were filled on); past
    /// [`RESUME_GRACE_MS`] they are aborted.
    fn try_resumes(&mut self, out: &mut Vec<Command>) {
        let ids: Vec<JobId> = self
            .jobs
            .values()
            .filter(|j| j.state == JobState::Resuming)
            .map(|j| j.id)
            .collect();
        for id in ids {
            let Some(j) = self.jobs.get(&id) else {
                continue;
            };
            let missing: Vec<String> = j
                .streams
                .iter()
                .zip(&j.plan.streams)
                .filter(|(s, _)| s.alloc == Alloc::Pending)
                .map(|(_, p)| spate_netlib::text::quote(&p.node))
                .collect();
            let late = self.now >= j.alloc_deadline;
            if !missing.is_empty() {
                if late {
                    let mut names = missing;
                    names.dedup();
                    let reason = format!(
                        "its consumer{} {} did not report its streams within {} s",
                        if names.len() > 1 { "s" } else { "" },
                        names.join(", "),
                        RESUME_GRACE_MS / 1000
                    );
                    self.end_job(id, JobEnd::Aborted(AbortReason::NotResumed { reason }), out);
                }
                continue;
            }
            let consumers: Vec<NodeId> = j.streams.iter().map(|s| s.node).collect();
            let placed = self.place(j.policy, &j.plan, &consumers, Some(id));
            let placement = match placed {
                Ok(p) => p,
                Err(r) => {
                    if late {
                        let reason = format!("it could not be planned again: {r}");
                        self.end_job(id, JobEnd::Aborted(AbortReason::NotResumed { reason }), out);
                    } else if let Some(j) = self.jobs.get_mut(&id) {
                        j.stall = Some(format!(
                            "resuming after a scheduler restart: it cannot be planned yet ({r})"
                        ));
                    }
                    continue;
                }
            };
            let Plan { deal, summary, .. } = placement.plan;
            let (dealer, reserved) = match deal {
                Deal::OnDemand => (None, Reservation::default()),
                Deal::Weighted(w) => {
                    let r = self.reservation(&j.plan, &consumers, &w, &summary);
                    (Some(Dealer::new(w, self.now)), r)
                }
            };
            let now = self.now;
            let hosts = self.hosts_of(&consumers);
            let Some(j) = self.jobs.get_mut(&id) else {
                continue;
            };
            j.consumer_hosts = hosts;
            for (s, ring) in j.streams.iter_mut().zip(&placement.rings) {
                s.ring = *ring;
            }
            let parts = j.layout.parts();
            let channels = j.plan.geometry.channels;
            let full = j.layout.chunk_lines() * j.plan.geometry.line_bytes;
            j.candidates.clear();
            j.delivered = 0;
            for p in 0..parts {
                let idx = |c: u32| (c * parts + p) as usize;
                j.part_ring[p as usize] = (0..channels)
                    .map(|c| j.streams[idx(c)].ring)
                    .min()
                    .unwrap_or(0);
                // Whole chunks landed in order in every stream of the part.
                let chunks = j.layout.part_chunks(p);
                let rank = (0..channels)
                    .map(|c| {
                        let (s, len) = (&j.streams[idx(c)], j.plan.streams[idx(c)].len);
                        if s.frontier >= len {
                            chunks
                        } else {
                            s.frontier / full.max(1)
                        }
                    })
                    .min()
                    .unwrap_or(0)
                    .min(chunks);
                j.frontier[p as usize] = rank;
                j.next_fresh[p as usize] = rank;
                j.above[p as usize].clear();
                j.delivered += rank;
                if rank < chunks {
                    j.candidates.insert((rank, p));
                }
            }
            j.summary = summary;
            j.dealer = dealer;
            j.reserved = reserved;
            j.stall = None;
            j.progressed = now;
            let running = j.resume.take().is_some_and(|(_, r)| r);
            if j.delivered == j.layout.chunk_count() {
                j.state = JobState::Delivered;
                j.reserved = Reservation::default();
                self.complete_if_read(id, out);
            } else if running {
                j.state = JobState::Accepted;
                if let Some(d) = j.dealer.as_mut() {
                    d.filled_at = now;
                }
                self.start(id, out);
            } else {
                j.state = JobState::Accepted;
            }
        }
    }

    fn on_allocated(
        &mut self,
        node: NodeId,
        job: JobId,
        stream: u32,
        key: u64,
        out: &mut Vec<Command>,
    ) {
        let Some(j) = self.jobs.get_mut(&job) else {
            return;
        };
        if j.state != JobState::Allocating {
            return;
        }
        let Some(s) = j
            .streams
            .get_mut(stream as usize)
            .filter(|s| s.node == node)
        else {
            return;
        };
        if s.alloc != Alloc::Pending {
            return;
        }
        s.alloc = Alloc::Done(key);
        if j.streams.iter().all(|s| matches!(s.alloc, Alloc::Done(_))) {
            j.state = JobState::Accepted;
            let streams = j
                .streams
                .iter()
                .enumerate()
                .map(|(i, s)| StreamPlacement {
                    stream: i as u32,
                    node: s.node,
                    node_name: String::new(),
                    key: match s.alloc {
                        Alloc::Done(k) => k,
                        _ => 0,
                    },
                    len: j.plan.streams[i].len,
                    ring: s.ring,
                })
                .collect::<Vec<_>>();
            let client = j.client;
            let plan = j.summary.clone();
            let streams = streams
                .into_iter()
                .map(|mut p| {
                    p.node_name = self.name(p.node);
                    p
                })
                .collect();
            out.push(Command::Reply {
                client,
                reply: Reply::Accepted { job, streams, plan },
            });
        }
    }

    fn on_alloc_failed(
        &mut self,
        node: NodeId,
        job: JobId,
        stream: u32,
        reason: String,
        out: &mut Vec<Command>,
    ) {
        let Some(j) = self.jobs.get_mut(&job) else {
            return;
        };
        if j.state != JobState::Allocating {
            return;
        }
        let Some(s) = j
            .streams
            .get_mut(stream as usize)
            .filter(|s| s.node == node)
        else {
            return;
        };
        s.alloc = Alloc::Failed;
        let refusal = Refusal::AllocFailed {
            stream,
            node: self.name(node),
            reason,
        };
        self.refuse_job(job, refusal, out);
    }

    fn on_ready(&mut self, client: ClientId, job: JobId, out: &mut Vec<Command>) {
        let Some(j) = self.jobs.get(&job) else {
            out.push(Command::Reply {
                client,
                reply: Reply::Error(ClientError::UnknownJob(job)),
            });
            return;
        };
        if j.state != JobState::Accepted {
            Self::bad_state(client, j, "Ready is for an accepted job", out);
            return;
        }
        out.push(Command::Reply {
            client,
            reply: Reply::Ok(job),
        });
        self.start(job, out);
    }

    /// Starts an accepted (or resumed) job: its producers preload, then compute.
    fn start(&mut self, job: JobId, out: &mut Vec<Command>) {
        let Some(j) = self.jobs.get(&job) else {
            return;
        };
        let chosen = match &j.dealer {
            Some(d) => d.swrr.nodes().collect(),
            None => {
                let producers: Vec<NodeView<'_>> = self
                    .producer_views()
                    .into_iter()
                    .filter(|p| !j.preload_failed.contains(&p.id))
                    .collect();
                self.policies[j.policy].producers_for(&self.job_view(j), &producers)
            }
        };
        let chosen: Vec<NodeId> = chosen
            .into_iter()
            .filter(|n| self.nodes.get(n).is_some_and(|n| n.info.roles.producer))
            .collect();
        if chosen.is_empty() {
            self.end_job(
                job,
                JobEnd::Aborted(AbortReason::NoProducers {
                    last: String::new(),
                }),
                out,
            );
            return;
        }
        let now = self.now;
        if let Some(j) = self.jobs.get_mut(&job) {
            j.state = JobState::Running;
            j.started = Some(now);
            j.progressed = now;
            if let Some(d) = j.dealer.as_mut() {
                // The first window goes out at once; then the pace holds.
                d.filled_at = now;
                d.tokens = j.summary.chunk_bytes as f64 * d.plan.window.max(1) as f64;
            }
            for n in chosen {
                j.producers.insert(n, false);
                out.push(Command::Preload { node: n, job });
            }
        }
    }

    fn on_done(&mut self, client: ClientId, job: JobId, out: &mut Vec<Command>) {
        let Some(j) = self.jobs.get(&job) else {
            // Done again for a job that completed (its readers read everything) is fine.
            let reply = if self
                .ended_job(job)
                .is_some_and(|e| e.end == JobEnd::Completed)
            {
                Reply::Ok(job)
            } else {
                Reply::Error(ClientError::UnknownJob(job))
            };
            out.push(Command::Reply { client, reply });
            return;
        };
        if j.state != JobState::Delivered {
            Self::bad_state(
                client,
                j,
                "Done is for a delivered job; use Cancel to stop it early",
                out,
            );
            return;
        }
        out.push(Command::Reply {
            client,
            reply: Reply::Ok(job),
        });
        self.end_job(job, JobEnd::Completed, out);
    }

    fn on_cancel(&mut self, client: ClientId, job: JobId, out: &mut Vec<Command>) {
        if !self.jobs.contains_key(&job) {
            out.push(Command::Reply {
                client,
                reply: Reply::Error(ClientError::UnknownJob(job)),
            });
            return;
        }
        out.push(Command::Reply {
            client,
            reply: Reply::Ok(job),
        });
        self.end_job(job, JobEnd::Cancelled, out);
    }

    fn on_preload_failed(
        &mut self,
        node: NodeId,
        job: JobId,
        reason: String,
        out: &mut Vec<Command>,
    ) {
        let name = self.name(node);
        let Some(j) = self.jobs.get_mut(&job) else {
            return;
        };
        // Only a producer still preloading can fail to preload.
        if j.producers.get(&node) != Some(&false) {
            return;
        }
        j.producers.remove(&node);
        j.preload_failed.insert(node);
        out.push(Command::Unload { node, job });
        if j.state == JobState::Running && j.producers.is_empty() {
            self.end_job(
                job,
                JobEnd::Aborted(AbortReason::PreloadFailed { node: name, reason }),
                out,
            );
        }
    }

    fn on_task_done(&mut self, node: NodeId, task: TaskId, out: &mut Vec<Command>) {
        let Some(t) = self.take_task(node, task) else {
            return;
        };
        // The first copy to land wins; the other is cancelled.
        if let Some(twin) = t.twin
            && let Some(other) = self.forget_task(twin)
        {
            out.push(Command::CancelTask {
                node: other.node,
                task: twin,
            });
        }
        let Some(j) = self.jobs.get_mut(&t.job) else {
            return;
        };
        let mut replan = false;
        if let Some(d) = j.dealer.as_mut() {
            d.suspect.remove(&node);
            j.done_since_plan += 1;
            let every =
                (REPLAN_TASKS_PER_PRODUCER * d.plan.shares.len() as u32).max(REPLAN_MIN_TASKS);
            replan = j.done_since_plan >= every;
        }
        if let Some((part, rank)) = j.layout.locate(t.chunk)
            && j.deliver(part, rank)
        {
            j.progressed = self.now;
            j.stall = None;
        }
        if j.delivered == j.layout.chunk_count() && j.state == JobState::Running {
            j.state = JobState::Delivered;
            j.reserved = Reservation::default();
            let producers = std::mem::take(&mut j.producers);
            for p in producers.keys() {
                out.push(Command::Unload {
                    node: *p,
                    job: t.job,
                });
            }
            out.push(Command::Delivered {
                client: j.client,
                job: t.job,
            });
            self.complete_if_read(t.job, out);
        } else if replan {
            // Measured rates fed back: the shares, window and deadlines follow them.
            self.replan(t.job, out);
        }
    }

    fn on_task_failed(
        &mut self,
        node: NodeId,
        task: TaskId,
        reason: String,
        out: &mut Vec<Command>,
    ) {
        let Some(t) = self.take_task(node, task) else {
            return;
        };
        if t.twin.is_some() {
            // Its other copy goes on.
            return;
        }
        let Some(j) = self.jobs.get_mut(&t.job) else {
            return;
        };
        let max = self.policies[j.policy].max_attempts();
        let attempts = j.attempts.entry(t.chunk).or_insert(0);
        *attempts += 1;
        let attempts = *attempts;
        if attempts >= max {
            self.end_job(
                t.job,
                JobEnd::Aborted(AbortReason::ChunkFailed {
                    chunk: t.chunk,
                    attempts,
                    reason,
                }),
                out,
            );
        } else if let Some((part, rank)) = j.layout.locate(t.chunk) {
            j.requeue(part, rank);
        }
    }

    fn on_reader_gone(&mut self, node: NodeId, job: JobId, stream: u32, out: &mut Vec<Command>) {
        let Some(j) = self.jobs.get(&job) else {
            return;
        };
        if j.streams
            .get(stream as usize)
            .is_none_or(|s| s.node != node)
        {
            return;
        }
        if j.plan.on_reader_death == ReaderDeath::Abort {
            let name = self.name(node);
            self.end_job(
                job,
                JobEnd::Aborted(AbortReason::ReaderGone { stream, node: name }),
                out,
            );
        }
    }

    /// Removes an assigned task reported by its own node.
    fn take_task(&mut self, node: NodeId, task: TaskId) -> Option<Task> {
        if self.tasks.get(&task)?.node != node {
            return None;
        }
        self.forget_task(task)
    }

    /// Removes a task from every table (its node, its job's counters); its twin, if any,
    /// becomes the only copy.
    fn forget_task(&mut self, task: TaskId) -> Option<Task> {
        let t = self.tasks.remove(&task)?;
        if let Some(d) = t.deadline {
            self.deadlines.remove(&(d, task));
        }
        if let Some(n) = self.nodes.get_mut(&t.node) {
            n.tasks.remove(&task);
        }
        if let Some(j) = self.jobs.get_mut(&t.job) {
            j.in_flight -= 1;
            if let Some(c) = j.per_node.get_mut(&t.node) {
                *c = c.saturating_sub(1);
                if *c == 0 {
                    j.per_node.remove(&t.node);
                }
            }
        }
        if let Some(twin) = t.twin
            && let Some(o) = self.tasks.get_mut(&twin)
        {
            o.twin = None;
        }
        Some(t)
    }

    fn check_timeouts(&mut self, out: &mut Vec<Command>) {
        let late: Vec<(JobId, NodeId)> = self
            .jobs
            .values()
            .filter(|j| j.state == JobState::Allocating && self.now >= j.alloc_deadline)
            .filter_map(|j| {
                j.streams
                    .iter()
                    .find(|s| s.alloc == Alloc::Pending)
                    .map(|s| (j.id, s.node))
            })
            .collect();
        for (id, node) in late {
            let node = self.name(node);
            self.refuse_job(id, Refusal::AllocTimeout { node }, out);
        }
        self.check_stragglers(out);
    }

    /// Running jobs that delivered nothing for [`STALL_MS`] while a stream's ring is full (its
    /// reader not reading, or too slowly): reported once per stall; with a `reader_timeout`,
    /// aborted once it has passed.
    fn check_stalls(&mut self, out: &mut Vec<Command>) {
        let now = self.now;
        let mut warn = Vec::new();
        let mut abort = Vec::new();
        for j in self.jobs.values_mut() {
            if j.state != JobState::Running || now.saturating_sub(j.progressed) < STALL_MS {
                continue;
            }
            let piece = j.layout.max_piece_bytes();
            let full = j.streams.iter().enumerate().find(|(i, s)| {
                let len = j.plan.streams[*i].len;
                s.read < len && s.frontier.saturating_sub(s.read) + piece > s.ring
            });
            let Some((i, s)) = full else {
                continue;
            };
            let idle_ms = now.saturating_sub(s.read_at.max(j.progressed));
            let node = self
                .nodes
                .get(&s.node)
                .map_or_else(String::new, |n| n.info.name.clone());
            if let Some(limit) = j.plan.reader_timeout
                && idle_ms >= limit.as_millis() as u64
            {
                abort.push((
                    j.id,
                    AbortReason::ReaderTimeout {
                        stream: i as u32,
                        node,
                        secs: limit.as_secs(),
                    },
                ));
                continue;
            }
            if j.stall.is_none() {
                let why = if s.read == 0 {
                    "no reader has read from it yet".to_string()
                } else {
                    format!(
                        "its reader has read nothing for {:.1} s",
                        idle_ms as f64 / 1000.0
                    )
                };
                let msg = format!(
                    "stream {i} on {} has a full ring ({} of {} bytes read) and {why}; the \
                     job waits for it",
                    spate_netlib::text::quote(&node),
                    s.read,
                    j.plan.streams[i].len
                );
                j.stall = Some(msg.clone());
                warn.push((j.client, j.id, format!("stalled: {msg}")));
            }
        }
        for (client, job, message) in warn {
            out.push(Command::JobWarning {
                client,
                job,
                message,
            });
        }
        for (id, r) in abort {
            self.end_job(id, JobEnd::Aborted(r), out);
        }
    }

    /// Refuses a job that is still allocating: releases what was asked for.
    fn refuse_job(&mut self, id: JobId, refusal: Refusal, out: &mut Vec<Command>) {
        let Some(j) = self.jobs.remove(&id) else {
            return;
        };
        self.release(&j, ReleaseWhy::Refused, out);
        out.push(Command::Reply {
            client: j.client,
            reply: Reply::Refused(refusal),
        });
    }

    fn release(&self, j: &Job, why: ReleaseWhy, out: &mut Vec<Command>) {
        let mut per_node: BTreeMap<NodeId, Vec<u32>> = BTreeMap::new();
        for (i, s) in j.streams.iter().enumerate() {
            if s.alloc != Alloc::Failed && self.nodes.contains_key(&s.node) {
                per_node.entry(s.node).or_default().push(i as u32);
            }
        }
        for (node, streams) in per_node {
            out.push(Command::Release {
                node,
                job: j.id,
                streams,
                why: why.clone(),
            });
        }
    }

    /// Ends a job: releases its streams, unloads its producers, tells the submitter.
    fn end_job(&mut self, id: JobId, end: JobEnd, out: &mut Vec<Command>) {
        let Some(j) = self.jobs.remove(&id) else {
            return;
        };
        self.remember(&j, &end);
        if j.state == JobState::Allocating {
            let why = match &end {
                JobEnd::Aborted(r) => ReleaseWhy::Aborted(r.clone()),
                _ => ReleaseWhy::Cancelled,
            };
            self.release(&j, why, out);
            out.push(Command::JobEnded {
                client: j.client,
                job: id,
                end,
            });
            return;
        }
        let task_ids: Vec<TaskId> = self
            .tasks
            .iter()
            .filter(|(_, t)| t.job == id)
            .map(|(k, _)| *k)
            .collect();
        for t in task_ids {
            if let Some(task) = self.tasks.remove(&t)
                && let Some(n) = self.nodes.get_mut(&task.node)
            {
                n.tasks.remove(&t);
            }
        }
        for p in j.producers.keys() {
            if self.nodes.contains_key(p) {
                out.push(Command::Unload { node: *p, job: id });
            }
        }
        let why = match &end {
            JobEnd::Completed => ReleaseWhy::Done,
            JobEnd::Cancelled => ReleaseWhy::Cancelled,
            JobEnd::Aborted(r) => ReleaseWhy::Aborted(r.clone()),
        };
        self.release(&j, why, out);
        out.push(Command::JobEnded {
            client: j.client,
            job: id,
            end,
        });
    }

    /// Keeps an ended job in the bounded history.
    fn remember(&mut self, j: &Job, end: &JobEnd) {
        let lb = j.plan.geometry.line_bytes;
        let cl = j.layout.chunk_lines();
        let delivered = if j.state == JobState::Delivered || *end == JobEnd::Completed {
            j.plan.total_bytes()
        } else {
            // Whole chunks delivered in order, per part, times the channels.
            (0..j.layout.parts())
                .map(|p| {
                    let lines = j.plan.part_lines(p);
                    (j.frontier[p as usize] * cl).min(lines.end - lines.start) * lb
                })
                .sum::<u64>()
                * u64::from(j.plan.geometry.channels)
        };
        if self.ended.len() >= ENDED_HISTORY {
            self.ended.pop_front();
        }
        self.ended.push_back(EndedJob {
            id: j.id,
            name: j.plan.name.clone(),
            end: end.clone(),
            policy: self.policies[j.policy].name(),
            total: j.plan.total_bytes(),
            delivered,
            read: j.streams.iter().map(|s| s.read).sum(),
            submitted: j.submitted,
            started: j.started,
            ended: self.now,
        });
    }

    /// A stream read to its end is recorded so: its consumer is told once, and its reader
    /// returns the end (a reader that read every byte waits for that, so that it says "end"
    /// only for a stream the scheduler counts as read).
    fn confirm_read(&mut self, id: JobId, stream: u32, out: &mut Vec<Command>) {
        let Some(j) = self.jobs.get_mut(&id) else {
            return;
        };
        let (Some(s), Some(p)) = (
            j.streams.get_mut(stream as usize),
            j.plan.streams.get(stream as usize),
        ) else {
            return;
        };
        if !s.confirmed && s.read >= p.len && s.frontier >= p.len {
            s.confirmed = true;
            out.push(Command::StreamRead {
                node: s.node,
                job: id,
                stream,
            });
        }
    }

    /// A delivered job whose every stream was read to its end completes by itself (its rings
    /// are freed; no Done needed).
    fn complete_if_read(&mut self, id: JobId, out: &mut Vec<Command>) {
        let done = self.jobs.get(&id).is_some_and(|j| {
            j.state == JobState::Delivered
                && j.streams
                    .iter()
                    .zip(&j.plan.streams)
                    .all(|(s, p)| s.read >= p.len)
        });
        if done {
            self.end_job(id, JobEnd::Completed, out);
        }
    }

    // -- dispatch -----------------------------------------------------------------------------

    /// Hands out tasks. Dealt jobs first (rate jobs, then latency-bound ones, then the rest,
    /// each in id order): chunks go to their producers by weighted turns, within the window,
    /// the credits and the pace. Then on-demand jobs: round after round, each producer below
    /// its depth takes one chunk from the job it ranks best, until no producer can take more.
    fn dispatch(&mut self, out: &mut Vec<Command>) {
        if !self.jobs.values().any(|j| j.state == JobState::Running) {
            return;
        }
        let mut dealt: Vec<(u8, JobId)> = self
            .jobs
            .values()
            .filter(|j| j.state == JobState::Running)
            .filter_map(|j| {
                j.dealer.as_ref().map(|d| {
                    let class = if d.plan.pace.is_some() {
                        0
                    } else if d.plan.reserve {
                        1
                    } else {
                        2
                    };
                    (class, j.id)
                })
            })
            .collect();
        dealt.sort();
        for (_, id) in dealt {
            self.deal(id, out);
        }
        // The policies of the running on-demand jobs: a producer at the depth of all of them
        // takes nothing, and is passed over without looking at any job (this runs on every
        // event; looking at every job for every producer made an event cost jobs x
        // producers).
        let mut on_demand: Vec<usize> = self
            .jobs
            .values()
            .filter(|j| j.state == JobState::Running && j.dealer.is_none())
            .map(|j| j.policy)
            .collect();
        on_demand.sort_unstable();
        on_demand.dedup();
        if on_demand.is_empty() {
            return;
        }
        let producers: Vec<NodeId> = self
            .nodes
            .iter()
            .filter(|(_, n)| n.info.roles.producer)
            .map(|(id, _)| *id)
            .collect();
        // Rings do not change while tasks are handed out: gathered once, when first needed
        // (only for nodes that hold streams).
        let mut rings: Option<BTreeMap<NodeId, u64>> = None;
        loop {
            let mut progress = false;
            for &p in &producers {
                let Some(n) = self.nodes.get(&p) else {
                    continue;
                };
                let ring_bytes_used = if n.info.roles.consumer {
                    let r = rings.get_or_insert_with(|| self.rings_used());
                    r.get(&p).copied().unwrap_or(0)
                } else {
                    // Streams live on consumers only (a submit naming another node is
                    // refused).
                    0
                };
                let view = NodeView {
                    id: p,
                    info: &n.info,
                    tasks: n.tasks.len(),
                    ring_bytes_used,
                };
                let full = on_demand
                    .iter()
                    .all(|&k| view.tasks >= self.policies[k].tasks_in_flight(&view).max(2));
                if full {
                    continue;
                }
                let Some(pick) = self.pick_for(&view) else {
                    continue;
                };
                self.assign(p, pick.0, pick.1, out);
                progress = true;
            }
            if !progress {
                break;
            }
        }
    }

    /// Ring bytes held on every consumer node (what [`Self::ring_used`] gives one node).
    fn rings_used(&self) -> BTreeMap<NodeId, u64> {
        let mut m = BTreeMap::new();
        for s in self.jobs.values().flat_map(|j| j.streams.iter()) {
            if s.alloc != Alloc::Failed {
                *m.entry(s.node).or_insert(0) += s.ring;
            }
        }
        m
    }

    /// Deals a dealt job's chunks while it may.
    fn deal(&mut self, id: JobId, out: &mut Vec<Command>) {
        loop {
            let now = self.now;
            let Some(j) = self.jobs.get_mut(&id) else {
                return;
            };
            let chunk_bytes = j.summary.chunk_bytes.max(1) as f64;
            let rate = j.plan.rate_bps.map_or(0.0, |r| r as f64 / 8.0);
            let Some(d) = j.dealer.as_mut() else {
                return;
            };
            if let Some(pace) = d.plan.pace {
                let dt = now.saturating_sub(d.filled_at) as f64 / 1000.0;
                d.filled_at = now;
                // The bucket holds a window of chunks or a quarter second at the pace,
                // whichever is more: events arrive in bursts, and a bucket of one or two small
                // chunks would throw away the time between them and deal below the pace.
                let burst = (chunk_bytes * d.plan.window.max(1) as f64).max(pace * 0.25);
                d.tokens = (d.tokens + dt * pace).min(burst);
                if d.tokens < chunk_bytes {
                    return;
                }
            }
            if j.in_flight as u64 >= d.plan.window {
                return;
            }
            let follow = d.plan.follow_reader;
            let pick = if follow {
                j.peek_from(|j, part| j.reader_start(part, now, rate))
            } else {
                j.peek()
            };
            let Some(pick) = pick else {
                return;
            };
            let Job {
                dealer,
                producers,
                per_node,
                ..
            } = j;
            let Some(Dealer {
                plan,
                swrr,
                suspect,
                tokens,
                ..
            }) = dealer.as_mut()
            else {
                return;
            };
            let eligible = |n: NodeId| {
                producers.get(&n) == Some(&true)
                    && !suspect.contains(&n)
                    && plan
                        .shares
                        .iter()
                        .any(|s| s.node == n && per_node.get(&n).copied().unwrap_or(0) < s.credits)
            };
            let Some(p) = swrr.next(eligible) else {
                return;
            };
            if plan.pace.is_some() {
                *tokens -= chunk_bytes;
            }
            self.assign(p, id, pick, out);
        }
    }

    /// The chunk producer `view` takes next: from the on-demand job it ranks best.
    fn pick_for(&self, view: &NodeView<'_>) -> Option<(JobId, (u64, u32))> {
        let p = view.id;
        self.jobs
            .values()
            .filter(|j| j.state == JobState::Running && j.dealer.is_none())
            .filter(|j| j.producers.get(&p) == Some(&true))
            .filter(|j| view.tasks < self.policies[j.policy].tasks_in_flight(view).max(2))
            .filter_map(|j| j.peek().map(|c| (j, c)))
            .min_by_key(|(j, _)| {
                (
                    self.policies[j.policy].job_rank(view, &self.job_view(j)),
                    j.id,
                )
            })
            .map(|(j, c)| (j.id, c))
    }

    fn assign(&mut self, p: NodeId, job: JobId, (rank, part): (u64, u32), out: &mut Vec<Command>) {
        let Some(j) = self.jobs.get_mut(&job) else {
            return;
        };
        j.take((rank, part));
        let Some(index) = j.layout.index(part, rank) else {
            return;
        };
        self.issue(p, job, index, None, out);
    }

    /// Hands chunk `index` of `job` to producer `p` as a new task (a copy of `twin` when set).
    fn issue(
        &mut self,
        p: NodeId,
        job: JobId,
        index: u64,
        twin: Option<TaskId>,
        out: &mut Vec<Command>,
    ) -> Option<TaskId> {
        let now = self.now;
        let ahead = self.nodes.get(&p).map_or(0, |n| n.tasks.len());
        let j = self.jobs.get_mut(&job)?;
        let chunk = j.layout.chunk(index)?;
        j.in_flight += 1;
        *j.per_node.entry(p).or_insert(0) += 1;
        // When a dealt job's task is late: its producer's latency, plus the periods of the
        // tasks queued before it, times (1 + slack), and a floor for control-plane jitter.
        let deadline = j.dealer.as_ref().and_then(|d| {
            let slack = d.plan.straggler_slack?;
            let s = d.share(p)?;
            let expected = s.latency + ahead as f64 * s.period;
            Some(now + ((1.0 + slack) * expected * 1000.0).ceil() as u64 + STRAGGLER_FLOOR_MS)
        });
        let task = TaskId(self.next_task);
        self.next_task += 1;
        self.tasks.insert(
            task,
            Task {
                job,
                chunk: index,
                node: p,
                deadline,
                twin,
            },
        );
        if let Some(d) = deadline {
            self.deadlines.insert((d, task));
        }
        if let Some(tw) = twin
            && let Some(o) = self.tasks.get_mut(&tw)
        {
            o.twin = Some(task);
        }
        let mut seq = 0;
        if let Some(n) = self.nodes.get_mut(&p) {
            n.tasks.insert(task);
            seq = n.assigned;
            n.assigned += 1;
        }
        let (Some(j), Some(pv)) = (self.jobs.get(&job), self.view(p)) else {
            return Some(task);
        };
        let policy = &self.policies[j.policy];
        // One pass over the streams for every consumer's view (not one per piece).
        let rings = self.rings_used();
        let targets = chunk
            .pieces
            .iter()
            .map(|piece| {
                let node = j.streams[piece.stream as usize].node;
                let cv = self.nodes.get(&node).map(|n| NodeView {
                    id: node,
                    info: &n.info,
                    tasks: n.tasks.len(),
                    ring_bytes_used: rings.get(&node).copied().unwrap_or(0),
                });
                let route = cv.map_or(Route::Remote(None), |cv| policy.route(&pv, &cv, seq));
                Target {
                    piece: *piece,
                    node,
                    route,
                }
            })
            .collect();
        out.push(Command::Compute {
            node: p,
            task,
            job,
            chunk,
            targets,
        });
        Some(task)
    }

    /// Stragglers: a dealt job's task past its deadline makes its producer suspect (no new
    /// chunks, and not planned on, until it finishes one), and every task of the job it holds
    /// without a copy is duplicated on the least loaded other producer of the job. With none
    /// free, the job is re-planned without the straggler (once per suspicion) and the task is
    /// looked at again [`STRAGGLER_RETRY_MS`] later.
    fn check_stragglers(&mut self, out: &mut Vec<Command>) {
        let now = self.now;
        while let Some(&(d, id)) = self.deadlines.first() {
            if d > now {
                break;
            }
            self.deadlines.remove(&(d, id));
            let Some(t) = self.tasks.get(&id) else {
                continue;
            };
            if t.twin.is_some() || t.deadline != Some(d) {
                continue;
            }
            let (job, slow) = (t.job, t.node);
            let mut victims: Vec<(TaskId, u64)> = self
                .nodes
                .get(&slow)
                .map(|n| {
                    n.tasks
                        .iter()
                        .filter_map(|tid| self.tasks.get(tid).map(|u| (*tid, u)))
                        .filter(|(_, u)| u.job == job && u.twin.is_none())
                        .map(|(tid, u)| (tid, u.chunk))
                        .collect()
                })
                .unwrap_or_default();
            victims.sort_by_key(|v| v.1);
            // With no other producer free to take a copy now (the others suspect, still
            // preloading, or not yet in the plan that a re-plan may widen), the straggler keeps
            // its work and is looked at again later: a deadline dropped here for good left a
            // producer cut to a tenth holding the job's next chunk with no copy ever made.
            if self.helper_for(job, slow).is_none() {
                // The straggler is planned on no more until it finishes a task: the re-plan
                // brings in (and preloads) producers the plan had left out.
                let newly = self
                    .jobs
                    .get_mut(&job)
                    .and_then(|j| j.dealer.as_mut())
                    .is_some_and(|d| d.suspect.insert(slow));
                if newly {
                    self.replan(job, out);
                }
                let again = now + STRAGGLER_RETRY_MS;
                if let Some(t) = self.tasks.get_mut(&id) {
                    t.deadline = Some(again);
                }
                self.deadlines.insert((again, id));
                continue;
            }
            if let Some(d) = self.jobs.get_mut(&job).and_then(|j| j.dealer.as_mut()) {
                d.suspect.insert(slow);
            }
            for (vid, chunk) in victims {
                if let Some(v) = self.tasks.get_mut(&vid)
                    && let Some(dl) = v.deadline.take()
                {
                    self.deadlines.remove(&(dl, vid));
                }
                let Some(helper) = self.helper_for(job, slow) else {
                    continue;
                };
                if self.issue(helper, job, chunk, Some(vid), out).is_some()
                    && let Some(j) = self.jobs.get_mut(&job)
                {
                    j.duplicated += 1;
                }
            }
        }
    }

    /// The other producer of a dealt job that should take a straggler's copy: ready, not
    /// suspect, the fewest of the job's tasks for its credits.
    fn helper_for(&self, job: JobId, slow: NodeId) -> Option<NodeId> {
        let j = self.jobs.get(&job)?;
        if j.state != JobState::Running {
            return None;
        }
        let d = j.dealer.as_ref()?;
        d.plan
            .shares
            .iter()
            .filter(|s| s.node != slow && !d.suspect.contains(&s.node))
            .filter(|s| j.producers.get(&s.node) == Some(&true) && self.nodes.contains_key(&s.node))
            .min_by(|a, b| {
                let load = |s: &crate::policy::Share| {
                    j.per_node.get(&s.node).copied().unwrap_or(0) as f64
                        / f64::from(s.credits.max(1))
                };
                load(a).total_cmp(&load(b)).then(a.node.cmp(&b.node))
            })
            .map(|s| s.node)
    }

    // -- measurements and re-planning ---------------------------------------------------------

    fn on_task_times(
        &mut self,
        node: NodeId,
        task: TaskId,
        r: &TaskReport,
        out: &mut Vec<Command>,
    ) {
        let Some(t) = self.tasks.get(&task).filter(|t| t.node == node) else {
            return;
        };
        let Some(j) = self.jobs.get(&t.job) else {
            return;
        };
        let Some(pn) = self
            .nodes
            .get(&node)
            .map(|n| (n.info.name.clone(), n.info.host.clone()))
        else {
            return;
        };
        let kernel = j.plan.kernel.name();
        if r.bytes > 0 && r.compute_us > 0 {
            self.caps
                .observe_compute(&pn.0, kernel, r.bytes, r.compute_us as f64 / 1e6);
        }
        if r.bytes > 0 && r.cpu_us > 0 {
            self.caps
                .observe_cpu(&pn.0, kernel, r.bytes, r.cpu_us as f64 / 1e6);
        }
        let mut links = Vec::new();
        for &(stream, bytes, us) in &r.pieces {
            let Some(s) = j.streams.get(stream as usize) else {
                continue;
            };
            // A ring nearly full makes the producer wait for room: not the link's time.
            if s.frontier.saturating_sub(s.read) * 5 >= s.ring * 4 {
                continue;
            }
            if let Some(q) = self.nodes.get(&s.node) {
                links.push((q.info.name.clone(), q.info.host == pn.1, bytes, us));
            }
        }
        for (q, local, bytes, us) in links {
            if bytes > 0 && us > 0 {
                self.caps
                    .observe_link(&pn.0, &q, local, bytes, us as f64 / 1e6);
            }
        }
        // Drift: a producer computing slower than its plan assumed re-plans its dealt jobs.
        let drifted: Vec<JobId> = self
            .jobs
            .values()
            .filter(|j| j.state == JobState::Running)
            .filter_map(|j| {
                let d = j.dealer.as_ref()?;
                let s = d.share(node)?;
                let tol = self.policies[j.policy].drift()?;
                let est = self
                    .caps
                    .compute(&pn.0, j.plan.kernel.name(), 0, 1)
                    .rate_at(j.summary.chunk_bytes as f64);
                (est < (1.0 - tol) * s.compute_rate).then_some(j.id)
            })
            .collect();
        for id in drifted {
            self.replan(id, out);
        }
    }

    /// Re-plans a running dealt job on today's estimates (its chunk size kept); warns its
    /// submitter when its promise can no longer be kept.
    fn replan(&mut self, id: JobId, out: &mut Vec<Command>) {
        let Some(j) = self.jobs.get(&id) else {
            return;
        };
        if j.state != JobState::Running {
            return;
        }
        let Some(d) = j.dealer.as_ref() else {
            return;
        };
        let consumers: Vec<NodeId> = j.streams.iter().map(|s| s.node).collect();
        // Neither a producer that failed its preload nor one suspected of straggling (until
        // it finishes a task) is planned on.
        let skip: BTreeSet<NodeId> = j.preload_failed.union(&d.suspect).copied().collect();
        let cluster = self.cluster_for(j.plan.kernel.name(), &consumers, Some(id), &skip);
        let current = Plan {
            policy: self.policies[j.policy].name(),
            deal: Deal::Weighted(d.plan.clone()),
            summary: j.summary.clone(),
        };
        let cviews: Vec<NodeView<'_>> = consumers.iter().filter_map(|c| self.view(*c)).collect();
        let Some((new, warning)) =
            self.policies[j.policy].replan(&j.plan, &j.layout, &current, &cviews, &cluster)
        else {
            return;
        };
        let Deal::Weighted(w) = new.deal else {
            return;
        };
        let reserved = self.reservation(&j.plan, &consumers, &w, &new.summary);
        let Some(j) = self.jobs.get_mut(&id) else {
            return;
        };
        j.done_since_plan = 0;
        let mut summary = new.summary;
        summary.rings = j.summary.rings.clone();
        summary.prefill = j.summary.prefill.clone();
        j.summary = summary;
        j.reserved = reserved;
        for s in &w.shares {
            if !j.producers.contains_key(&s.node) && !j.preload_failed.contains(&s.node) {
                j.producers.insert(s.node, false);
                out.push(Command::Preload {
                    node: s.node,
                    job: id,
                });
            }
        }
        if let Some(d) = j.dealer.as_mut() {
            d.swrr
                .set_weights(w.shares.iter().map(|s| (s.node, s.weight)));
            d.plan = w;
        }
        // The submitter hears when the promise becomes at risk; status shows the latest.
        match warning {
            Some(msg) if j.warning.is_none() => {
                j.warning = Some(msg.clone());
                out.push(Command::JobWarning {
                    client: j.client,
                    job: id,
                    message: msg,
                });
            }
            Some(msg) => j.warning = Some(msg),
            None => j.warning = None,
        }
    }
}
