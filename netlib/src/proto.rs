//! Every message of spate's control plane (DESIGN.md §2): daemons joining the scheduler, users
//! submitting and following jobs, the scheduler driving consumers (stream allocation) and
//! producers (preload, compute, expel). Plain data; handlers live in the crates above.
//!
//! Wire stability: messages are encoded with postcard, which is not self-describing. Enum
//! variants are identified by their position, so variants and fields are only ever APPENDED;
//! any other change bumps [`PROTOCOL_VERSION`].

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Version of the control protocol, carried in every frame header and checked in the handshake.
pub const PROTOCOL_VERSION: u16 = 5;

/// Most chunk latencies one [`Message::JobStats`] carried in `chunk_latency_us` (protocols 2
/// and 3; since protocol 4 the latencies travel as a serialized histogram, `chunk_latency_hdr`).
pub const MAX_LATENCY_SAMPLES: usize = 100_000;

/// Largest `data` the scheduler's file service puts in one [`Message::InputChunk`]; keeps every
/// chunk far below the default maximum frame size.
pub const INPUT_CHUNK_MAX: u32 = 256 * 1024;

/// Most containers (lists, tables) nested inside each other in a [`Value`] tree.
pub const MAX_VALUE_DEPTH: usize = 32;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident($inner:ty)) => {
        $(#[$doc])*
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize,
        )]
        pub struct $name(pub $inner);

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "{}", self.0)
            }
        }
    };
}

id_type!(
    /// A job, numbered by the scheduler.
    JobId(u64)
);
id_type!(
    /// A task (preload, compute or expel) handed to a producer, numbered by the scheduler.
    TaskId(u64)
);
id_type!(
    /// Index of a stream inside its job (0-based).
    StreamIndex(u32)
);
id_type!(
    /// Index of a chunk inside its job (0-based, in output order).
    ChunkIndex(u64)
);
id_type!(
    /// Identity of a machine (e.g. parsed from /etc/machine-id): nodes with the same host id
    /// share memory and talk over UNIX sockets.
    HostId(u128)
);

/// Key of a stream's ring at its consumer: random, given to the reader to attach to the ring
/// through the hand-off socket. Printed as 32 hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize)]
pub struct StreamKey(pub u128);

impl std::fmt::Debug for StreamKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StreamKey({:032x})", self.0)
    }
}

impl std::fmt::Display for StreamKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl std::str::FromStr for StreamKey {
    type Err = std::num::ParseIntError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        u128::from_str_radix(s, 16).map(StreamKey)
    }
}

// ---------------------------------------------------------------------------------------------
// Nodes

/// What a daemon offers: it may produce (run tasks), consume (own streams), or both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct NodeRoles {
    /// Runs preload/compute/expel tasks.
    pub producer: bool,
    /// Allocates stream rings and receives chunks.
    pub consumer: bool,
}

/// A network interface of a node, usable as source address for expels.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Interface {
    /// Interface name (e.g. `eth0`).
    pub name: String,
    /// An address of that interface.
    pub addr: IpAddr,
}

/// Where a consumer accepts raw (bulk data) connections.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DataEndpoint {
    /// A UNIX stream socket, for producers on the same host.
    Unix {
        /// Socket path.
        path: PathBuf,
    },
    /// A TCP listener, for producers on other hosts.
    Tcp {
        /// Listening address.
        addr: SocketAddr,
        /// The interface this address belongs to, if known.
        interface: Option<String>,
    },
}

/// Announced compute capacity of a producer, for placement and chunk sizing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct ComputeCapacity {
    /// Cores its task engines may use for compute.
    pub cores: u32,
    /// Measured or configured compute throughput in bytes/s (0 = unknown).
    pub bytes_per_sec: u64,
}

/// Everything the scheduler needs to know about a daemon when it joins.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Node name, unique in the cluster; job specs name output locations by it.
    pub name: String,
    /// The machine this daemon runs on.
    pub host: HostId,
    /// Producer and/or consumer.
    pub roles: NodeRoles,
    /// Cores of the machine available to the daemon.
    pub cores: u32,
    /// Network interfaces with their addresses.
    pub interfaces: Vec<Interface>,
    /// Compute capacity (producers).
    pub compute: ComputeCapacity,
    /// Memory the consumer may spend on stream rings, in bytes (0 if not a consumer).
    pub ring_budget: u64,
    /// Where the consumer accepts raw connections (empty if not a consumer).
    pub data_endpoints: Vec<DataEndpoint>,
    /// UNIX socket where local readers get a stream's ring (consumers).
    pub handoff_socket: Option<PathBuf>,
    /// NIC rate of its data interfaces, bytes/s per direction (0 = unknown): seeds the
    /// scheduler's link estimates.
    pub nic_bytes_per_sec: u64,
    /// Peers it talks to at once (`k` of the k-port model; 0 = no limit).
    pub ports: u32,
    /// Hugepages of the machine when the daemon joined (protocol 4).
    pub hugepages: HugePages,
}

/// Hugepages reserved on a machine (from /proc/meminfo).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct HugePages {
    /// Pages reserved.
    pub total: u64,
    /// Pages free.
    pub free: u64,
    /// Bytes per page (0 when unknown).
    pub page_bytes: u64,
}

/// A node's state as the scheduler sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum NodeState {
    /// Joined and heartbeating.
    #[default]
    Alive,
    /// Announced Quit; finishing or handing back its work.
    Leaving,
    /// Missed heartbeats or connection lost.
    Lost,
    /// Silent for more than one and a half heartbeats: dead after three (protocol 5).
    Suspect,
}

/// One node in a [`Message::StatusReply`].
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct NodeStatus {
    /// Node name.
    pub name: String,
    /// Producer and/or consumer.
    pub roles: NodeRoles,
    /// Alive, leaving or lost.
    pub state: NodeState,
    /// Tasks currently assigned to it.
    pub tasks_in_flight: u32,
    /// Streams it currently holds (consumers).
    pub streams: u32,
    /// What the scheduler measured of it.
    pub capacity: NodeCapacity,
    // --- protocol 4 ---
    /// The machine it runs on.
    pub host: HostId,
    /// Cores of the machine available to the daemon.
    pub cores: u32,
    /// Its data interfaces.
    pub interfaces: Vec<Interface>,
    /// Hugepages when it joined.
    pub hugepages: HugePages,
    /// Memory its stream rings may use (consumers).
    pub ring_budget: u64,
    /// Milliseconds since the scheduler last heard from it.
    pub last_seen_ms: u64,
}

// ---------------------------------------------------------------------------------------------
// Jobs

/// Where one stream of an accepted job lives, as told to the user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamPlacement {
    /// Stream index in the job.
    pub stream: StreamIndex,
    /// Consumer node holding the stream.
    pub node: String,
    /// That consumer's reader hand-off socket.
    pub handoff: PathBuf,
    /// Key the reader presents to attach to the ring.
    pub key: StreamKey,
    /// Total length of the stream in bytes.
    pub length: u64,
}

/// Why a job was refused at submission (the human message goes alongside).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RefuseReason {
    /// The spec is not valid TOML or a field is missing/invalid; `field` names it (dotted path).
    InvalidSpec {
        /// Offending field, e.g. `streams.0.node`.
        field: String,
    },
    /// An input named by the spec is unknown or unreadable.
    InputUnavailable {
        /// Input name.
        name: String,
    },
    /// The kernel named by the spec is unknown.
    UnknownKernel {
        /// Kernel name.
        kernel: String,
    },
    /// An output location's consumer is not in the cluster.
    ConsumerMissing {
        /// Node name.
        node: String,
    },
    /// No producer has joined.
    NoProducers,
    /// The policy found too little producer capacity (or rate/latency constraints unmeetable).
    InsufficientCapacity,
    /// A consumer could not allocate a stream ring.
    AllocFailed {
        /// Consumer node.
        node: String,
        /// Stream that failed.
        stream: StreamIndex,
    },
    /// The scheduler is at its job limit or shutting down.
    Busy,
    /// The policy cannot feed what the job asks for.
    Infeasible {
        /// The constraint that binds: "compute", "links", "memory" or "latency".
        constraint: String,
        /// The highest job rate (all streams, bits/s) it could give now.
        max_feasible_bps: u64,
    },
    /// The spec names a policy the scheduler does not have.
    UnknownPolicy {
        /// As written.
        name: String,
    },
}

/// What the scheduler's policy planned for a job, and what it predicts. Rates are the job's
/// (all streams) in bits per second.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct PlanInfo {
    /// The policy ("tclo", "load-balance").
    pub policy: String,
    /// Bytes of one chunk, all channels.
    pub chunk_bytes: u64,
    /// Lines per chunk.
    pub chunk_lines: u64,
    /// The producers it computes on (empty: every producer, on demand).
    pub producers: Vec<String>,
    /// Predicted throughput (0: the policy predicts none).
    pub predicted_bps: u64,
    /// Predicted chunk latency, task created to released in order (0: none predicted).
    pub predicted_latency_us: u64,
    /// Chunks in flight.
    pub window_chunks: u64,
    /// Ring bytes per stream.
    pub ring_bytes: Vec<u64>,
    /// Bytes a constant-rate reader of each stream waits for before it starts.
    pub prefill_bytes: Vec<u64>,
    /// The highest job rate the cluster could give now.
    pub max_feasible_bps: u64,
    /// The job rate asked for.
    pub requested_bps: Option<u64>,
    /// The chunk latency bound asked for.
    pub latency_bound_us: Option<u64>,
}

/// A producer's figures of one piece of a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct PieceTime {
    /// The stream.
    pub stream: StreamIndex,
    /// Bytes.
    pub bytes: u64,
    /// Microseconds of the link's time.
    pub micros: u64,
}

/// What the scheduler measured of a producer's compute for one kernel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComputeEstimate {
    /// Kernel name.
    pub kernel: String,
    /// Output bytes per second while computing.
    pub bytes_per_sec: u64,
    /// Fixed cost per chunk, microseconds.
    pub overhead_us: u64,
    /// "measured", "announced" or "default".
    pub source: String,
    /// Tasks measured.
    pub samples: u64,
}

/// What the scheduler measured of a producer → consumer link.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkEstimate {
    /// The consumer's name.
    pub consumer: String,
    /// Bytes per second.
    pub bytes_per_sec: u64,
    /// Fixed cost per piece, microseconds.
    pub overhead_us: u64,
    /// Pieces measured.
    pub samples: u64,
}

/// A node's measured capacities (producers).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct NodeCapacity {
    /// Per kernel.
    pub compute: Vec<ComputeEstimate>,
    /// Per consumer it sent to.
    pub links: Vec<LinkEstimate>,
    /// NIC rate it announced (bytes/s per direction; 0: unknown).
    pub nic_bytes_per_sec: u64,
}

/// Lifecycle state of a job.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum JobState {
    /// Waiting for consumers to allocate stream rings.
    #[default]
    Allocating,
    /// Accepted; waiting for the user's Ready.
    WaitingReady,
    /// Producers are fetching inputs.
    Preloading,
    /// Chunks are being computed and expelled.
    Running,
    /// All bytes delivered; waiting for the user's Done.
    Delivered,
    /// Finished with this outcome.
    Ended(JobOutcome),
}

/// How a job ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobOutcome {
    /// Every stream delivered and the user said Done.
    Completed,
    /// Stopped by the system (consumer lost, reader gone, constraint unmeetable...).
    Aborted {
        /// Human-readable reason.
        reason: String,
    },
    /// Stopped by a user's Cancel.
    Cancelled,
}

/// Progress of a job in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct Progress {
    /// Bytes landed in order at the consumers (sum of stream frontiers).
    pub delivered: u64,
    /// Bytes read by the readers (sum of read positions).
    pub read: u64,
    /// Total bytes of all streams.
    pub total: u64,
}

/// One job in a [`Message::StatusReply`] or [`Message::JobUpdate`].
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct JobStatus {
    /// Job id.
    pub job: JobId,
    /// Job name from the spec (may be empty).
    pub name: String,
    /// Lifecycle state.
    pub state: JobState,
    /// Bytes delivered/read/total.
    pub progress: Progress,
    /// What its policy planned (None while not yet admitted).
    pub plan: Option<Box<PlanInfo>>,
    /// Its promise is at risk: what changed and what it now gets.
    pub warning: Option<String>,
    /// Straggling tasks redone on another producer so far.
    pub duplicated: u64,
    // --- protocol 4 ---
    /// Each stream: where it is, its progress and ring.
    pub streams: Vec<StreamStatus>,
    /// Milliseconds since the job started (Ready), once it has.
    pub running_ms: Option<u64>,
    /// Why the job makes no progress, when the scheduler sees that it does not.
    pub stall_reason: Option<String>,
}

/// One stream of a job in a [`JobStatus`].
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct StreamStatus {
    /// Stream index.
    pub stream: StreamIndex,
    /// Consumer node holding it.
    pub node: String,
    /// Total length in bytes.
    pub length: u64,
    /// Bytes landed in order (the consumer's last report).
    pub delivered: u64,
    /// Bytes its reader released (the consumer's last report).
    pub read: u64,
    /// Ring capacity in bytes (`delivered - read` of it is filled).
    pub ring_bytes: u64,
    /// Times the reader found the ring empty before the end, when the consumer reports it.
    pub starvations: Option<u64>,
}

/// A job that ended, as [`Message::StatusReply`] lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndedJob {
    /// Job id.
    pub job: JobId,
    /// Job name from the spec.
    pub name: String,
    /// How it ended.
    pub outcome: JobOutcome,
    /// Bytes delivered in order.
    pub bytes: u64,
    /// Milliseconds from submission to the end.
    pub duration_ms: u64,
    /// Bytes its readers released.
    pub read: u64,
    /// Output bytes in all.
    pub total: u64,
}

/// Honest report of how a stream ring is backed (DESIGN.md §4: never silent).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RingBacking {
    /// hugetlb pages (`MFD_HUGETLB`).
    HugeTlb,
    /// Plain memfd that did get transparent huge pages.
    TransparentHuge,
    /// Plain memfd with 4 KiB pages.
    Plain,
}

// ---------------------------------------------------------------------------------------------
// Producer tasks

/// Where a producer gets one input of a job during preload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum InputSource {
    /// From the scheduler's file service ([`Message::FetchInput`]); `size` in bytes.
    FileService {
        /// Size of the file in bytes.
        size: u64,
    },
    /// From a path readable on the producer's host (shared file system).
    LocalPath {
        /// Path on the producer's host.
        path: PathBuf,
    },
}

/// One input of a job, as named by the spec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputSpec {
    /// Input name (the kernel looks inputs up by it).
    pub name: String,
    /// Where to fetch it.
    pub source: InputSource,
}

/// The shape of a job's output as the kernel sees it: `channels` channels of `lines` lines of
/// `line_bytes` bytes; `pixels` when the job is an image (rip).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobGeometry {
    /// Channels computed together by each task.
    pub channels: u32,
    /// Lines per channel.
    pub lines: u64,
    /// Bytes per line of one channel.
    pub line_bytes: u64,
    /// Width × height in pixels, bits per pixel and resolution (x, y) in dpi, for images.
    pub pixels: Option<PixelGeometry>,
}

/// Pixel geometry of an image job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PixelGeometry {
    /// Pixels per line.
    pub width: u64,
    /// Lines.
    pub height: u64,
    /// Bits per pixel per channel.
    pub bits: u32,
    /// Resolution across and along, in dpi, when the spec gave a sheet size.
    pub dpi: Option<(u32, u32)>,
}

/// A half-open range of output lines `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct LineRange {
    /// First line.
    pub start: u64,
    /// One past the last line.
    pub end: u64,
}

/// Source address (and interface) a producer must use to reach a consumer.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SourceBinding {
    /// Interface to bind to (`SO_BINDTODEVICE`), if any.
    pub interface: Option<String>,
    /// Local address to bind before connecting, if any.
    pub addr: Option<IpAddr>,
}

/// One destination of an expel: a piece of the computed chunk that belongs to one stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExpelTarget {
    /// Stream the piece belongs to.
    pub stream: StreamIndex,
    /// Consumer node holding the stream.
    pub consumer: String,
    /// Where to connect (raw connection).
    pub endpoint: DataEndpoint,
    /// Source address/interface to use (None: let the kernel choose).
    pub source: Option<SourceBinding>,
    /// Offset of the piece inside the computed chunk.
    pub chunk_offset: u64,
    /// Offset of the piece inside the stream.
    pub stream_offset: u64,
    /// Length of the piece in bytes.
    pub len: u64,
}

/// Which kind of task a [`Message::TaskDone`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TaskKind {
    /// Compute a chunk.
    Compute,
    /// Expel a chunk.
    Expel,
}

// ---------------------------------------------------------------------------------------------
// Errors

/// Kind of a protocol-level [`Message::Error`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ErrorKind {
    /// The message is not valid for this peer or in this state.
    UnexpectedMessage,
    /// The job id is unknown.
    UnknownJob,
    /// The task id is unknown.
    UnknownTask,
    /// The stream is unknown.
    UnknownStream,
    /// The request is malformed or its values are out of range.
    BadRequest,
    /// The peer's role may not do this.
    NotPermitted,
    /// The sender failed internally.
    Internal,
}

// ---------------------------------------------------------------------------------------------
// The message

/// Every control message. Each doc starts with its direction: D = daemon (producer/consumer), S = scheduler,
/// U = user (CLI or library), C = consumer, P = producer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Message {
    // --- daemons join and leave --------------------------------------------------------------
    /// D→S: A daemon joins the cluster with its description.
    Join(NodeInfo),
    /// S→D: Join accepted; the daemon sends a Heartbeat at least every `heartbeat_ms`.
    Welcome {
        /// Heartbeat interval in milliseconds.
        heartbeat_ms: u64,
    },
    /// D→S: The daemon leaves gracefully (after its in-flight tasks).
    Quit {
        /// Why (e.g. "shutdown requested").
        reason: String,
    },
    /// any: Liveness signal on an otherwise idle connection.
    Heartbeat,
    /// S→D,U: The scheduler is shutting down; peers should stop cleanly.
    Shutdown {
        /// Why.
        reason: String,
    },

    // --- user --------------------------------------------------------------------------------
    /// U→S: Submit a job; the scheduler parses and validates the TOML spec itself.
    Submit {
        /// The job spec (TOML text).
        spec_toml: String,
        /// Names of the inputs the spec refers to.
        inputs: Vec<String>,
    },
    /// S→U: The job is admitted and its streams are allocated.
    Accepted {
        /// Job id.
        job: JobId,
        /// Where each stream lives.
        streams: Vec<StreamPlacement>,
        /// What the scheduler's policy planned and predicts.
        plan: Box<PlanInfo>,
    },
    /// S→U: The job is refused (not queued: resubmit later).
    Refused {
        /// Structured reason.
        reason: RefuseReason,
        /// Human-readable explanation naming the fix where there is one.
        message: String,
    },
    /// U→S: The readers are attached: start producing.
    Ready {
        /// Job id.
        job: JobId,
    },
    /// U→S: Every stream has been read: release the buffers.
    Done {
        /// Job id.
        job: JobId,
    },
    /// U→S: Stop the job now.
    Cancel {
        /// Job id.
        job: JobId,
    },
    /// S→U: The request (Ready, Done, Cancel, Watch) was applied.
    Ack {
        /// Job id.
        job: JobId,
    },
    /// U→S: Ask for the state of one job (or all jobs if None) and of the nodes.
    Status {
        /// Job to report, or None for all.
        job: Option<JobId>,
    },
    /// S→U: Answer to Status.
    StatusReply {
        /// Jobs with state and progress.
        jobs: Vec<JobStatus>,
        /// Nodes of the cluster.
        nodes: Vec<NodeStatus>,
        /// Jobs that ended, newest first, for a bounded history (protocol 4; empty when the
        /// scheduler keeps none).
        ended: Vec<EndedJob>,
    },
    /// U→S: Follow a job: the scheduler sends JobUpdate on changes and JobEnded at the end.
    Watch {
        /// Job id.
        job: JobId,
    },
    /// S→U: State/progress change of a watched job.
    JobUpdate(JobStatus),
    /// S→U: A job ended (sent to its submitter and watchers).
    JobEnded {
        /// Job id.
        job: JobId,
        /// How it ended.
        outcome: JobOutcome,
    },
    /// S→U: Measurements of a completed job, sent to its submitter just before
    /// [`Message::JobEnded`].
    JobStats {
        /// Job id.
        job: JobId,
        /// Chunk latencies in microseconds, in release order: from a chunk's task being
        /// created to its bytes being released in order at the consumers (at most
        /// [`MAX_LATENCY_SAMPLES`], evenly thinned when the job had more chunks). Empty since
        /// protocol 4: see `chunk_latency_hdr`.
        chunk_latency_us: Vec<u32>,
        /// The chunk latencies (microseconds) as an HdrHistogram in its V2 serialization
        /// (protocol 4; see [`crate::hist`]).
        chunk_latency_hdr: Vec<u8>,
    },

    // --- scheduler <-> consumer --------------------------------------------------------------
    /// S→C: Allocate a ring for one stream of a job.
    AllocStream {
        /// Job id.
        job: JobId,
        /// Stream index.
        stream: StreamIndex,
        /// Ring capacity in bytes.
        capacity: u64,
        /// Total length of the stream in bytes.
        total_len: u64,
        /// The stream's constant read rate (bits/s), when the job has one.
        rate_bps: Option<u64>,
        /// Bytes a constant-rate reader waits for before it starts reading.
        prefill: u64,
    },
    /// C→S: The ring is allocated.
    Allocated {
        /// Job id.
        job: JobId,
        /// Stream index.
        stream: StreamIndex,
        /// Key readers use to attach.
        key: StreamKey,
        /// Hand-off socket where readers attach.
        handoff: PathBuf,
        /// How the ring memory is backed.
        backing: RingBacking,
    },
    /// C→S: The ring could not be allocated.
    AllocFailed {
        /// Job id.
        job: JobId,
        /// Stream index.
        stream: StreamIndex,
        /// Why, with the fix where there is one.
        reason: String,
    },
    /// S→C: Free every ring of this job (done, cancelled or aborted).
    Release {
        /// Job id.
        job: JobId,
        /// Why, for the readers of streams not read to their end (empty: the user is done
        /// with the job).
        reason: String,
    },
    /// S→C: The scheduler recorded this stream as read to its end: its reader, waiting at the
    /// end, may return it.
    StreamRead {
        /// Job id.
        job: JobId,
        /// Stream index.
        stream: StreamIndex,
    },
    /// C→S: In-order frontier and reader position of a stream advanced.
    StreamProgress {
        /// Job id.
        job: JobId,
        /// Stream index.
        stream: StreamIndex,
        /// Bytes landed contiguously from the start.
        frontier: u64,
        /// Bytes released by the reader.
        read_pos: u64,
    },
    /// C→S: A stream's reader attached.
    ReaderAttached {
        /// Job id.
        job: JobId,
        /// Stream index.
        stream: StreamIndex,
    },
    /// C→S: A stream's reader died or detached before the end.
    ReaderGone {
        /// Job id.
        job: JobId,
        /// Stream index.
        stream: StreamIndex,
    },

    // --- scheduler <-> producer --------------------------------------------------------------
    /// S→P: Prepare a job: load its kernel with its parameters and fetch its inputs.
    Preload {
        /// Job id.
        job: JobId,
        /// Kernel name (e.g. `pattern`, `null`, `rip`).
        kernel: String,
        /// Kernel parameters from the spec.
        params: Value,
        /// Shape of the job's output, which the kernel computes into.
        geometry: JobGeometry,
        /// Inputs to fetch.
        inputs: Vec<InputSpec>,
    },
    /// P→S: The job is loaded; compute tasks may come.
    Preloaded {
        /// Job id.
        job: JobId,
    },
    /// P→S: The job could not be loaded on this producer.
    PreloadFailed {
        /// Job id.
        job: JobId,
        /// Why.
        reason: String,
    },
    /// P→S: Ask the file service for `len` bytes of an input from `offset`.
    FetchInput {
        /// Job id.
        job: JobId,
        /// Input name.
        name: String,
        /// Start offset in the file.
        offset: u64,
        /// Bytes wanted (the answer comes in InputChunks of at most INPUT_CHUNK_MAX).
        len: u64,
    },
    /// S→P: A piece of an input file.
    InputChunk {
        /// Job id.
        job: JobId,
        /// Input name.
        name: String,
        /// Offset of `data` in the file.
        offset: u64,
        /// The bytes.
        data: Vec<u8>,
        /// True on the last piece of the requested range (or at end of file).
        last: bool,
    },
    /// S→P: The file service cannot serve this input.
    FetchFailed {
        /// Job id.
        job: JobId,
        /// Input name.
        name: String,
        /// Why.
        reason: String,
    },
    /// S→P: Compute one chunk of a job into a buffer; keep it until expelled.
    Compute {
        /// Task id.
        task: TaskId,
        /// Job id.
        job: JobId,
        /// Chunk index.
        chunk: ChunkIndex,
        /// Output lines of this chunk.
        lines: LineRange,
    },
    /// S→P: Send a computed chunk's pieces to their consumers.
    Expel {
        /// Task id.
        task: TaskId,
        /// Job id.
        job: JobId,
        /// Chunk index (computed earlier on this producer).
        chunk: ChunkIndex,
        /// Destinations.
        targets: Vec<ExpelTarget>,
    },
    /// P→S: A task finished.
    TaskDone {
        /// Task id.
        task: TaskId,
        /// Job id.
        job: JobId,
        /// Compute or expel.
        kind: TaskKind,
        /// Bytes computed or sent.
        bytes: u64,
        /// Time the task took, in microseconds.
        micros: u64,
        /// Of that, microseconds computing the chunk.
        compute_micros: u64,
        /// The CPU time the producer process spent since its previous task ended (all its
        /// threads: kernel, messages, sockets), divided by the CPUs it may use (its cgroup
        /// quota, else its CPUs), in microseconds; 0 when not measured (the first task after
        /// an idle spell).
        cpu_micros: u64,
        /// Per piece: the link's time for it (busy time: pieces overlapping on one link are
        /// not counted twice).
        pieces: Vec<PieceTime>,
    },
    /// P→S: A task failed.
    TaskFailed {
        /// Task id.
        task: TaskId,
        /// Job id.
        job: JobId,
        /// Why.
        reason: String,
        /// True if redoing it (here or elsewhere) may succeed.
        retryable: bool,
    },
    /// S→P: Forget a job: drop its inputs, kernel state and unsent chunks.
    Unload {
        /// Job id.
        job: JobId,
    },

    // --- generic -----------------------------------------------------------------------------
    /// any: A protocol-level error about a previous message.
    Error {
        /// Kind.
        kind: ErrorKind,
        /// Human-readable detail.
        message: String,
    },

    // --- planning and promises ---------------------------------------------------------------
    /// U→S: What would you plan for this job now? (Nothing is admitted or allocated.)
    Plan {
        /// The job spec (TOML).
        spec_toml: String,
        /// Input names to check as for Submit.
        inputs: Vec<String>,
    },
    /// S→U: The answer to Plan.
    PlanReply {
        /// Whether Submit would admit it now.
        admitted: bool,
        /// The plan when admitted; for a refused rate, the rates asked and possible.
        plan: Option<Box<PlanInfo>>,
        /// Why not, when refused.
        reason: Option<RefuseReason>,
        /// The refusal, in words (empty when admitted).
        message: String,
    },
    /// S→P: Drop this task: another copy of its chunk landed first.
    CancelTask {
        /// Task id.
        task: TaskId,
        /// Job id.
        job: JobId,
    },
    /// S→U: The job's promise is at risk (a producer slowed down or left and the rest
    /// cannot keep its rate): what changed and what it now gets.
    JobWarning {
        /// Job id.
        job: JobId,
        /// In words.
        message: String,
    },

    // --- appended in version 5 ---------------------------------------------------------------
    /// S→C: The producers assigned to a job (node names), the whole set each time it changes.
    /// A consumer lands a job's chunks only from these producers (raw connections say who they
    /// are after authenticating).
    JobProducers {
        /// Job id.
        job: JobId,
        /// Node names of the producers that may send the job's chunks.
        producers: Vec<String>,
    },
}

impl Message {
    /// Name of the variant, for logs and errors.
    pub fn name(&self) -> &'static str {
        match self {
            Message::Join(_) => "Join",
            Message::Welcome { .. } => "Welcome",
            Message::Quit { .. } => "Quit",
            Message::Heartbeat => "Heartbeat",
            Message::Shutdown { .. } => "Shutdown",
            Message::Submit { .. } => "Submit",
            Message::Accepted { .. } => "Accepted",
            Message::Refused { .. } => "Refused",
            Message::Ready { .. } => "Ready",
            Message::Done { .. } => "Done",
            Message::Cancel { .. } => "Cancel",
            Message::Ack { .. } => "Ack",
            Message::Status { .. } => "Status",
            Message::StatusReply { .. } => "StatusReply",
            Message::Watch { .. } => "Watch",
            Message::JobUpdate(_) => "JobUpdate",
            Message::JobEnded { .. } => "JobEnded",
            Message::JobStats { .. } => "JobStats",
            Message::AllocStream { .. } => "AllocStream",
            Message::Allocated { .. } => "Allocated",
            Message::AllocFailed { .. } => "AllocFailed",
            Message::Release { .. } => "Release",
            Message::StreamRead { .. } => "StreamRead",
            Message::StreamProgress { .. } => "StreamProgress",
            Message::ReaderAttached { .. } => "ReaderAttached",
            Message::ReaderGone { .. } => "ReaderGone",
            Message::Preload { .. } => "Preload",
            Message::Preloaded { .. } => "Preloaded",
            Message::PreloadFailed { .. } => "PreloadFailed",
            Message::FetchInput { .. } => "FetchInput",
            Message::InputChunk { .. } => "InputChunk",
            Message::FetchFailed { .. } => "FetchFailed",
            Message::Compute { .. } => "Compute",
            Message::Expel { .. } => "Expel",
            Message::TaskDone { .. } => "TaskDone",
            Message::TaskFailed { .. } => "TaskFailed",
            Message::Unload { .. } => "Unload",
            Message::Error { .. } => "Error",
            Message::Plan { .. } => "Plan",
            Message::PlanReply { .. } => "PlanReply",
            Message::CancelTask { .. } => "CancelTask",
            Message::JobWarning { .. } => "JobWarning",
            Message::JobProducers { .. } => "JobProducers",
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Value: kernel parameters

/// A generic value tree for kernel parameters (postcard is not self-describing, so TOML/JSON
/// values are converted to this first). On the wire a tree is flattened in pre-order and
/// rebuilt without recursion; trees deeper than [`MAX_VALUE_DEPTH`] are refused on both ends.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A string.
    Str(String),
    /// An integer.
    Int(i64),
    /// A float.
    Float(f64),
    /// A boolean.
    Bool(bool),
    /// A list.
    List(Vec<Value>),
    /// A table with sorted keys.
    Table(BTreeMap<String, Value>),
}

impl Default for Value {
    fn default() -> Self {
        Value::Table(BTreeMap::new())
    }
}

impl Value {
    /// The entry `key` if this is a table.
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Table(t) => t.get(key),
            _ => None,
        }
    }
    /// The string, if this is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }
    /// The integer, if this is one.
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }
    /// The number as f64 (floats, and integers converted).
    pub fn as_float(&self) -> Option<f64> {
        match self {
            Value::Float(f) => Some(*f),
            Value::Int(i) => Some(*i as f64),
            _ => None,
        }
    }
    /// The boolean, if this is one.
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }
    /// The items, if this is a list.
    pub fn as_list(&self) -> Option<&[Value]> {
        match self {
            Value::List(l) => Some(l),
            _ => None,
        }
    }
    /// The entries, if this is a table.
    pub fn as_table(&self) -> Option<&BTreeMap<String, Value>> {
        match self {
            Value::Table(t) => Some(t),
            _ => None,
        }
    }
    /// Nesting depth: the number of containers (lists, tables) on the deepest path; 0 for a
    /// scalar.
    pub fn depth(&self) -> usize {
        let mut max = 0;
        let mut stack = vec![(self, 0usize)];
        while let Some((v, d)) = stack.pop() {
            match v {
                Value::List(l) => {
                    max = max.max(d + 1);
                    stack.extend(l.iter().map(|c| (c, d + 1)));
                }
                Value::Table(t) => {
                    max = max.max(d + 1);
                    stack.extend(t.values().map(|c| (c, d + 1)));
                }
                _ => {}
            }
        }
        max
    }
}

/// One node of a flattened [`Value`] (pre-order). Containers give their child count; each
/// table child is preceded by its key.
#[derive(Serialize, Deserialize)]
enum FlatNode<S> {
    Str(S),
    Int(i64),
    Float(f64),
    Bool(bool),
    List(u32),
    Table(u32),
    Key(S),
}

impl Serialize for Value {
    fn serialize<Ser: serde::Serializer>(&self, serializer: Ser) -> Result<Ser::Ok, Ser::Error> {
        use serde::ser::Error as _;
        if self.depth() > MAX_VALUE_DEPTH {
            return Err(Ser::Error::custom(format!(
                "value nested deeper than {MAX_VALUE_DEPTH} levels"
            )));
        }
        let count = |n: usize| {
            u32::try_from(n).map_err(|_| Ser::Error::custom("container with over 2^32 entries"))
        };
        let mut flat: Vec<FlatNode<&str>> = Vec::new();
        // Explicit stack of (key, value) in reverse order so that pops come out in pre-order.
        let mut stack: Vec<(Option<&str>, &Value)> = vec![(None, self)];
        while let Some((key, v)) = stack.pop() {
            if let Some(k) = key {
                flat.push(FlatNode::Key(k));
            }
            match v {
                Value::Str(s) => flat.push(FlatNode::Str(s)),
                Value::Int(i) => flat.push(FlatNode::Int(*i)),
                Value::Float(f) => flat.push(FlatNode::Float(*f)),
                Value::Bool(b) => flat.push(FlatNode::Bool(*b)),
                Value::List(l) => {
                    flat.push(FlatNode::List(count(l.len())?));
                    stack.extend(l.iter().rev().map(|c| (None, c)));
                }
                Value::Table(t) => {
                    flat.push(FlatNode::Table(count(t.len())?));
                    stack.extend(t.iter().rev().map(|(k, c)| (Some(k.as_str()), c)));
                }
            }
        }
        flat.serialize(serializer)
    }
}

/// A container being rebuilt: its remaining child count and the pending key for tables.
enum Open {
    List(Vec<Value>, u32),
    Table(BTreeMap<String, Value>, u32, Option<String>),
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        let flat: Vec<FlatNode<String>> = Vec::deserialize(deserializer)?;
        let mut open: Vec<Open> = Vec::new();
        let mut nodes = flat.into_iter();
        loop {
            // Does the innermost open table expect a key now?
            if let Some(Open::Table(_, left, key @ None)) = open.last_mut()
                && *left > 0
            {
                match nodes.next() {
                    Some(FlatNode::Key(k)) => *key = Some(k),
                    _ => return Err(D::Error::custom("value tree: table entry without key")),
                }
            }
            // Take a finished value: either a closed container or the next node.
            let mut done: Option<Value> = match open.last() {
                Some(Open::List(_, 0)) | Some(Open::Table(_, 0, None)) => match open.pop() {
                    Some(Open::List(l, _)) => Some(Value::List(l)),
                    Some(Open::Table(t, _, _)) => Some(Value::Table(t)),
                    None => None,
                },
                _ => None,
            };
            if done.is_none() {
                let node = nodes
                    .next()
                    .ok_or_else(|| D::Error::custom("value tree: truncated"))?;
                let new_open = match node {
                    FlatNode::Str(s) => {
                        done = Some(Value::Str(s));
                        None
                    }
                    FlatNode::Int(i) => {
                        done = Some(Value::Int(i));
                        None
                    }
                    FlatNode::Float(f) => {
                        done = Some(Value::Float(f));
                        None
                    }
                    FlatNode::Bool(b) => {
                        done = Some(Value::Bool(b));
                        None
                    }
                    FlatNode::List(n) => Some(Open::List(Vec::new(), n)),
                    FlatNode::Table(n) => Some(Open::Table(BTreeMap::new(), n, None)),
                    FlatNode::Key(_) => {
                        return Err(D::Error::custom("value tree: key outside a table"));
                    }
                };
                if let Some(o) = new_open {
                    if open.len() >= MAX_VALUE_DEPTH {
                        return Err(D::Error::custom(format!(
                            "value tree nested deeper than {MAX_VALUE_DEPTH} levels"
                        )));
                    }
                    open.push(o);
                    continue;
                }
            }
            let Some(value) = done else { continue };
            match open.last_mut() {
                None => {
                    return if nodes.next().is_some() {
                        Err(D::Error::custom("value tree: nodes after the root"))
                    } else {
                        Ok(value)
                    };
                }
                Some(Open::List(l, left)) => {
                    l.push(value);
                    *left -= 1;
                }
                Some(Open::Table(t, left, key)) => {
                    let k = key
                        .take()
                        .ok_or_else(|| D::Error::custom("value tree: no key"))?;
                    if t.insert(k, value).is_some() {
                        return Err(D::Error::custom("value tree: duplicate table key"));
                    }
                    *left -= 1;
                }
            }
        }
    }
}
