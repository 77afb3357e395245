//! The consumer's receive engine: a table of stream rings, a hand-off server for their readers,
//! and one (optionally pinned) thread that serves raw connections from producers and lands each
//! granted chunk through io_uring straight into its ring's data mapping.
//!
//! Backpressure: an offer is granted only when its range fits within `reader position +
//! capacity` ([`Writer::try_reserve`]); otherwise the raw server asks again later (every
//! `RawConfig::retry`, and at once when the engine is woken), so unread bytes are never
//! overwritten and the producer simply waits for its grant.
//!
//! Admission: with `RawConfig::auth` set, every raw connection authenticates with the cluster
//! secret and the producer names itself; a chunk is then taken only for a stream allocated
//! here and only from a producer the scheduler assigned to its job
//! ([`ConsumerEngine::set_producers`]). Everything else is refused, and logged.
//!
//! Zero copy: with `EngineConfig::lend_rings`, a ring's data segment (its size sealed) is lent
//! to local producers of our own user that ask to write a chunk in place; the chunk's range is
//! reserved exactly as for any grant (only ranges not landed, within the reader's window) and
//! lands when the producer says it is written. A range that landed already, in part or whole,
//! is refused with `Fallback` (the producer sends it by another path, which drops the bytes
//! that landed), so a redone task never writes over bytes a reader may be reading.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use spate_netlib::endpoint::Endpoint;
use spate_netlib::raw::{
    ChunkKey, ConnId, Landing, Lend, Offered, RawConfig, RawError, RawServer, Reserved, Revoke,
};
use spate_ring::handoff::{HandoffConfig, HandoffError, HandoffServer, RefusalHook};
use spate_ring::{
    AbortReason, Backing, BackingPref, Grant, ReaderStatus, Reserve, RingConfig, ShmError,
    WriteError, Writer,
};
use spate_runtime::{Arena, FixedBuf, Notifier, Region, RuntimeError, Span};

/// Refusal code sent when the engine fails internally on an offer.
const REFUSE_INTERNAL: u8 = 200;

/// How to run a consumer engine.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Where producers connect (UNIX for same-host producers, TCP for remote ones). Port 0
    /// picks a free port; [`ConsumerEngine::endpoints`] tells the real ones.
    pub listen: Vec<Endpoint>,
    /// The readers' hand-off socket path.
    pub handoff: PathBuf,
    /// Core to pin the receive thread to (None: not pinned).
    pub core: Option<usize>,
    /// Ring memory preference (hugetlb with fallback by default).
    pub backing: BackingPref,
    /// Most bytes all rings together may use (0: no limit).
    pub ring_budget: u64,
    /// Raw connection settings.
    pub raw: RawConfig,
    /// Uids allowed to attach as readers besides our own.
    pub allow_uids: Vec<u32>,
    /// Lend rings to local producers that write chunks in place (zero copy); off: they fall
    /// back to the pull path.
    pub lend_rings: bool,
}

impl EngineConfig {
    /// Defaults for the given endpoints and hand-off path.
    pub fn new(listen: Vec<Endpoint>, handoff: PathBuf) -> EngineConfig {
        EngineConfig {
            listen,
            handoff,
            core: None,
            backing: BackingPref::Auto,
            ring_budget: 0,
            raw: RawConfig {
                retry: Duration::from_millis(1),
                ..RawConfig::default()
            },
            allow_uids: Vec::new(),
            lend_rings: true,
        }
    }
}

/// Errors of the consumer engine.
#[derive(Debug, thiserror::Error)]
pub enum ConsumerError {
    /// The hand-off server could not start.
    #[error("reader hand-off socket: {0}")]
    Handoff(#[from] HandoffError),
    /// The raw server could not start or listen.
    #[error("raw data endpoint: {0}")]
    Raw(#[from] RawError),
    /// The io_uring runtime failed (setup, pinning, memlock).
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// The receive thread died during start-up.
    #[error("the receive thread died while starting")]
    ThreadDied,
    /// Spawning a thread failed.
    #[error("spawning the receive thread: {0}")]
    Spawn(std::io::Error),
    /// The stream already exists.
    #[error("stream {stream} of job {job} is already allocated here")]
    Exists {
        /// Job.
        job: u64,
        /// Stream.
        stream: u32,
    },
    /// Capacity zero.
    #[error("stream {stream} of job {job}: ring capacity must be > 0")]
    ZeroCapacity {
        /// Job.
        job: u64,
        /// Stream.
        stream: u32,
    },
    /// Not enough ring budget left.
    #[error(
        "ring budget exceeded: {asked} bytes asked, {used} of {budget} in use; raise the node's \
         ring budget (--ring-budget) or wait for running jobs to finish"
    )]
    Budget {
        /// Bytes asked (rounded to pages).
        asked: u64,
        /// Bytes in use.
        used: u64,
        /// The budget.
        budget: u64,
    },
    /// Creating the ring failed (the message names the fix, e.g. for the hugetlb pool).
    #[error("creating the ring: {0}")]
    Ring(#[from] WriteError),
    /// Reading the OS random generator for the stream key failed.
    #[error("generating a stream key: {0}")]
    Random(String),
}

/// A freshly allocated stream.
#[derive(Debug, Clone)]
pub struct Allocation {
    /// Key under which readers attach (32 hex digits of [`Allocation::key_u128`]).
    pub key: String,
    /// The key as a number (`StreamKey` in the protocol).
    pub key_u128: u128,
    /// How the ring memory is backed.
    pub backing: Backing,
    /// Why hugetlb was not used, if it was not.
    pub fallback: Option<String>,
    /// Actual capacity (rounded up to pages).
    pub capacity: u64,
    /// The hand-off socket path.
    pub handoff: PathBuf,
}

/// What the engine knows of one stream now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamState {
    /// Job.
    pub job: u64,
    /// Stream.
    pub stream: u32,
    /// In-order frontier.
    pub frontier: u64,
    /// Reader position.
    pub read_pos: u64,
    /// Total length.
    pub total: u64,
    /// The reader.
    pub reader: ReaderStatus,
    /// Whether the ring was finished or aborted.
    pub closed: bool,
}

struct Entry {
    writer: Writer,
    region: Arc<Region>,
    key: String,
    capacity: u64,
    /// The data segment as lent to local producers (None: not lent).
    lend: Option<Lend>,
}

/// Chunks landed so far, by how their bytes came.
#[derive(Debug, Default)]
struct Counts {
    /// Written in place by a local producer (zero copy).
    in_place: std::sync::atomic::AtomicU64,
    /// Copied in: through the socket, or pulled from a producer's memory.
    copied: std::sync::atomic::AtomicU64,
    /// (job, producer) pairs whose offers wait for a producer set naming the producer.
    awaiting_assignment: std::sync::atomic::AtomicU64,
}

/// Chunks landed so far, by how their bytes came ([`ConsumerEngine::landed`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Landed {
    /// Written in place by a local producer (zero copy).
    pub in_place: u64,
    /// Copied in: through the socket, or pulled from a producer's memory.
    pub copied: u64,
}

/// Lend ids: one per ring, unique in the process.
static NEXT_LEND: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// The lend of a ring's data segment, when it can be lent (its size is sealed).
fn lend_of(writer: &Writer) -> Option<Lend> {
    let fd = match writer.dup_fds() {
        Ok((_, data)) => data,
        Err(e) => {
            tracing::warn!(error = %e, "cannot lend a ring: its descriptor cannot be duplicated");
            return None;
        }
    };
    if !spate_netlib::raw::size_sealed(&fd) {
        tracing::warn!("not lending a ring whose size is not sealed; local producers pull instead");
        return None;
    }
    Some(Lend {
        id: NEXT_LEND.fetch_add(1, Ordering::Relaxed),
        fd: Arc::new(fd),
        len: writer.capacity(),
    })
}

type Table = Arc<Mutex<HashMap<(u64, u32), Arc<Entry>>>>;
/// The producers (node names) the scheduler assigned to each job.
type Assigned = Arc<Mutex<HashMap<u64, HashSet<String>>>>;

/// How long offers for a job whose producer set has not arrived yet wait for it (the
/// scheduler sends it before any producer gets work; this only covers the two messages
/// crossing on different connections).
const ASSIGN_GRACE: Duration = Duration::from_secs(2);
/// A (job, producer) pair refused this long ago is forgotten.
const FORGET_UNASSIGNED: Duration = Duration::from_secs(60);

/// Whether this consumer is in touch with the scheduler: it lands chunks only while it heard
/// from it recently. A consumer paused (SIGSTOP) past its heartbeats has been declared dead
/// and its jobs aborted; when it wakes, offers already in its sockets must not land in the
/// aborted jobs' rings before it rejoins and learns which jobs still live.
#[derive(Debug)]
pub struct Contact {
    start: Instant,
    /// Milliseconds since `start` when the scheduler was last heard.
    heard: std::sync::atomic::AtomicU64,
    /// Longest silence still in touch (ms); 0: no limit (not known yet).
    limit: std::sync::atomic::AtomicU64,
}

impl Contact {
    fn new() -> Contact {
        Contact {
            start: Instant::now(),
            heard: std::sync::atomic::AtomicU64::new(0),
            limit: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// Out of touch: silent past the limit.
    fn lost(&self) -> bool {
        let limit = self.limit.load(Ordering::Relaxed);
        limit > 0 && self.now_ms() > self.heard.load(Ordering::Relaxed) + limit
    }
}

/// A producer that holds a granted chunk this long without landing it, while another producer
/// offers the same bytes (a copy the scheduler made because the first ran late), has its
/// connection closed, so that the copy can land. Only grants the consumer fills itself (from
/// the socket, or by copying from the producer's buffer) are taken back this way: a range
/// placed for zero copy is written by the producer itself and stays its own until it answers
/// or its connection dies.
pub const STALL_REVOKE: Duration = Duration::from_secs(2);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The consumer's receive engine (see the module docs). Dropping it aborts every open ring,
/// stops the thread and removes the sockets.
pub struct ConsumerEngine {
    table: Table,
    assigned: Assigned,
    contact: Arc<Contact>,
    counts: Arc<Counts>,
    handoff: HandoffServer,
    endpoints: Vec<Endpoint>,
    waker: Notifier,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    backing: BackingPref,
    budget: u64,
    lend_rings: bool,
    confirm_ends: AtomicBool,
}

impl std::fmt::Debug for ConsumerEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsumerEngine")
            .field("endpoints", &self.endpoints)
            .field("handoff", &self.handoff.path())
            .finish()
    }
}

impl ConsumerEngine {
    /// Bind the hand-off socket and the data endpoints and start the receive thread.
    pub fn start(cfg: EngineConfig) -> Result<ConsumerEngine, ConsumerError> {
        let handoff = HandoffServer::bind(
            &cfg.handoff,
            HandoffConfig {
                allow_uids: cfg.allow_uids.clone(),
                // The README promises that every socket logs the peers it refuses.
                on_refused: Some(RefusalHook(Arc::new(|why: &str| {
                    tracing::warn!(reason = ?why, "refused a hand-off client");
                }))),
                ..HandoffConfig::default()
            },
        )?;
        let table: Table = Arc::new(Mutex::new(HashMap::new()));
        let assigned: Assigned = Arc::new(Mutex::new(HashMap::new()));
        let contact = Arc::new(Contact::new());
        let contact2 = contact.clone();
        let counts = Arc::new(Counts::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::sync_channel::<Result<(Vec<Endpoint>, Notifier), ConsumerError>>(1);
        let (t2, a2, s2) = (table.clone(), assigned.clone(), stop.clone());
        let c2 = counts.clone();
        let check = cfg.raw.auth.is_some();
        let (listen, raw, core) = (cfg.listen.clone(), cfg.raw.clone(), cfg.core);
        let thread = std::thread::Builder::new()
            .name("spate-recv".into())
            .spawn(move || {
                if let Some(c) = core
                    && let Err(e) = spate_runtime::thread::pin_current(c)
                {
                    let _ = tx.send(Err(e.into()));
                    return;
                }
                let setup = || -> Result<(RawServer, Vec<Endpoint>), ConsumerError> {
                    let mut server = RawServer::new(raw)?;
                    let mut eps = Vec::new();
                    for ep in &listen {
                        eps.push(server.listen(ep)?);
                    }
                    Ok((server, eps))
                };
                match setup() {
                    Ok((server, eps)) => {
                        let _ = tx.send(Ok((eps, server.waker())));
                        serve(server, t2, check.then_some(a2), contact2, c2, s2);
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                    }
                }
            })
            .map_err(ConsumerError::Spawn)?;
        let (endpoints, waker) = match rx.recv() {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => {
                let _ = thread.join();
                return Err(e);
            }
            Err(_) => {
                let _ = thread.join();
                return Err(ConsumerError::ThreadDied);
            }
        };
        Ok(ConsumerEngine {
            table,
            assigned,
            contact,
            counts,
            handoff,
            endpoints,
            waker,
            stop,
            thread: Some(thread),
            confirm_ends: AtomicBool::new(false),
            backing: cfg.backing,
            budget: cfg.ring_budget,
            lend_rings: cfg.lend_rings,
        })
    }

    /// The endpoints producers connect to (real ports).
    pub fn endpoints(&self) -> &[Endpoint] {
        &self.endpoints
    }

    /// The readers' hand-off socket.
    pub fn handoff_path(&self) -> &Path {
        self.handoff.path()
    }

    /// Bytes of ring memory in use.
    pub fn ring_bytes(&self) -> u64 {
        lock(&self.table).values().map(|e| e.capacity).sum()
    }

    /// Whether the receive thread is still running.
    pub fn is_running(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Allocate a ring for `stream` of `job` (`capacity` bytes, capped at the stream length)
    /// and publish it for its reader under a fresh random key.
    pub fn alloc(
        &self,
        job: u64,
        stream: u32,
        capacity: u64,
        total_len: u64,
    ) -> Result<Allocation, ConsumerError> {
        self.alloc_paced(job, stream, capacity, total_len, None)
    }

    /// [`ConsumerEngine::alloc`], telling readers how the job wants the stream read.
    pub fn alloc_paced(
        &self,
        job: u64,
        stream: u32,
        capacity: u64,
        total_len: u64,
        pacing: Option<spate_ring::header::Pacing>,
    ) -> Result<Allocation, ConsumerError> {
        if capacity == 0 {
            return Err(ConsumerError::ZeroCapacity { job, stream });
        }
        if lock(&self.table).contains_key(&(job, stream)) {
            return Err(ConsumerError::Exists { job, stream });
        }
        let cap = capacity.min(total_len.max(1));
        let used = self.ring_bytes();
        let rounded =
            cap.div_ceil(spate_ring::shm::HUGE_PAGE as u64) * spate_ring::shm::HUGE_PAGE as u64;
        if self.budget > 0 && used + rounded > self.budget {
            return Err(ConsumerError::Budget {
                asked: rounded,
                used,
                budget: self.budget,
            });
        }
        let writer = Writer::create(&RingConfig {
            name: format!("spate-j{job}-s{stream}"),
            capacity: usize::try_from(cap).map_err(|_| {
                ConsumerError::Ring(WriteError::Shm(ShmError::BadLength(usize::MAX)))
            })?,
            backing: self.backing,
            total_len: Some(total_len),
            pacing,
        })?;
        let region = Region::from_mapping(writer.data_mapping())?;
        let mut rnd = [0u8; 16];
        getrandom::fill(&mut rnd).map_err(|e| ConsumerError::Random(e.to_string()))?;
        let key_u128 = u128::from_le_bytes(rnd);
        let key = format!("{key_u128:032x}");
        // An empty stream has nothing to read and nothing to report: its end is its own.
        if total_len > 0 && self.confirm_ends.load(Ordering::Relaxed) {
            writer.await_confirmation();
        }
        if total_len == 0 {
            writer.finish()?;
        }
        self.handoff.publish(&key, &writer)?;
        let alloc = Allocation {
            key: key.clone(),
            key_u128,
            backing: writer.backing(),
            fallback: writer.fallback_reason().map(str::to_string),
            capacity: writer.capacity(),
            handoff: self.handoff.path().to_path_buf(),
        };
        if let Some(why) = &alloc.fallback {
            tracing::warn!(job, stream, backing = ?alloc.backing, "ring not in hugetlb pages: {why}");
        }
        let capacity = writer.capacity();
        let lend = if self.lend_rings {
            lend_of(&writer)
        } else {
            None
        };
        lock(&self.table).insert(
            (job, stream),
            Arc::new(Entry {
                writer,
                region,
                key,
                capacity,
                lend,
            }),
        );
        Ok(alloc)
    }

    /// A message came from the scheduler (any): the consumer is in touch.
    pub fn heard(&self) {
        let now = self.contact.now_ms();
        self.contact.heard.store(now, Ordering::Relaxed);
    }

    /// Longest silence of the scheduler (it heartbeats) after which this consumer stops
    /// landing chunks until it hears from it again.
    pub fn set_contact_limit(&self, limit: Duration) {
        self.heard();
        self.contact
            .limit
            .store(limit.as_millis().max(1) as u64, Ordering::Relaxed);
    }

    /// The session with the scheduler was lost: every job's producer set is forgotten, so no
    /// chunk lands until the next scheduler says again who may land it (or releases the job).
    pub fn forget_assignments(&self) {
        lock(&self.assigned).clear();
    }

    /// The producers (node names) the scheduler assigned to `job`: only they may land its
    /// chunks (when connections are authenticated). Replaces the previous set.
    pub fn set_producers(&self, job: u64, producers: &[String]) {
        lock(&self.assigned).insert(job, producers.iter().cloned().collect());
        // Offers waiting for the set are answered now.
        self.waker.notify();
    }

    /// From now on, a reader of a new ring that has read every byte waits for
    /// [`ConsumerEngine::confirm_end`] (the scheduler recorded the stream as read to its end)
    /// before it returns the end; a release without it makes the reader's end an error
    /// naming why, and a consumer that dies first leaves the reader saying so.
    pub fn confirm_ends(&self) {
        self.confirm_ends.store(true, Ordering::Relaxed);
    }

    /// The scheduler recorded stream `stream` of `job` as read to its end: its reader may
    /// return the end. Returns whether the ring is here.
    pub fn confirm_end(&self, job: u64, stream: u32) -> bool {
        let e = lock(&self.table).get(&(job, stream)).cloned();
        match e {
            Some(e) => {
                e.writer.confirm_end();
                true
            }
            None => false,
        }
    }

    /// The scheduler counted `job` completed: confirm the end of each of its streams (a
    /// stream not finished is unaffected: its release aborts it).
    pub fn confirm_job(&self, job: u64) {
        let entries: Vec<Arc<Entry>> = lock(&self.table)
            .iter()
            .filter(|(k, _)| k.0 == job)
            .map(|(_, e)| e.clone())
            .collect();
        for e in entries {
            if e.writer.is_closed() {
                e.writer.confirm_end();
            }
        }
    }

    /// Drop every ring of `job` (aborting those not finished: their readers see why).
    /// Returns how many were released.
    pub fn release(&self, job: u64, reason: AbortReason) -> usize {
        self.release_with(job, reason, "")
    }

    /// [`ConsumerEngine::release`], telling readers of streams not finished why in words.
    pub fn release_with(&self, job: u64, reason: AbortReason, message: &str) -> usize {
        lock(&self.assigned).remove(&job);
        let gone: Vec<Arc<Entry>> = {
            let mut t = lock(&self.table);
            let keys: Vec<(u64, u32)> = t.keys().filter(|k| k.0 == job).copied().collect();
            keys.iter().filter_map(|k| t.remove(k)).collect()
        };
        for e in &gone {
            if message.is_empty() {
                e.writer.abort(reason);
            } else {
                e.writer.abort_with(reason, message);
            }
            self.handoff.unpublish(&e.key);
        }
        // Offers waiting for room in these rings are refused now rather than at the next retry.
        self.waker.notify();
        gone.len()
    }

    /// Drop every ring, telling the readers of streams not finished why (`message`). Returns
    /// how many were released.
    pub fn release_all(&self, reason: AbortReason, message: &str) -> usize {
        let mut jobs: Vec<u64> = lock(&self.table).keys().map(|k| k.0).collect();
        jobs.sort_unstable();
        jobs.dedup();
        jobs.into_iter()
            .map(|j| self.release_with(j, reason, message))
            .sum()
    }

    /// The state of every stream.
    pub fn streams(&self) -> Vec<StreamState> {
        let entries: Vec<((u64, u32), Arc<Entry>)> = lock(&self.table)
            .iter()
            .map(|(k, e)| (*k, e.clone()))
            .collect();
        let mut v: Vec<StreamState> = entries
            .into_iter()
            .map(|((job, stream), e)| StreamState {
                job,
                stream,
                frontier: e.writer.frontier(),
                read_pos: e.writer.reader_pos(),
                total: e.writer.total_len().unwrap_or(0),
                reader: e.writer.reader_status(),
                closed: e.writer.is_closed(),
            })
            .collect();
        v.sort_by_key(|s| (s.job, s.stream));
        v
    }

    /// Chunks landed so far, by how their bytes came.
    pub fn landed(&self) -> Landed {
        Landed {
            in_place: self.counts.in_place.load(Ordering::Relaxed),
            copied: self.counts.copied.load(Ordering::Relaxed),
        }
    }

    /// How many (job, producer) pairs have offers waiting for a producer set that names the
    /// producer (a set comes over the control connection, offers over data connections).
    pub fn awaiting_assignment(&self) -> u64 {
        self.counts.awaiting_assignment.load(Ordering::Relaxed)
    }

    /// Wake the receive thread (offers waiting for room are asked again at once).
    pub fn wake(&self) {
        self.waker.notify();
    }
}

impl Drop for ConsumerEngine {
    fn drop(&mut self) {
        let all: Vec<Arc<Entry>> = lock(&self.table).drain().map(|(_, e)| e).collect();
        for e in &all {
            e.writer.abort(AbortReason::ConsumerShutdown);
            self.handoff.unpublish(&e.key);
        }
        self.stop.store(true, Ordering::SeqCst);
        self.waker.notify();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `assigned` is None when connections are not authenticated: producers have no names then,
/// and any producer may land any chunk of a stream allocated here.
fn serve(
    mut server: RawServer,
    table: Table,
    assigned: Option<Assigned>,
    contact: Arc<Contact>,
    counts: Arc<Counts>,
    stop: Arc<AtomicBool>,
) {
    let mut landing = RingLanding {
        table,
        assigned,
        contact,
        counts,
        names: HashMap::new(),
        unassigned_since: HashMap::new(),
        pending: HashMap::new(),
        revoke: Vec::new(),
        revoking: HashSet::new(),
    };
    while !stop.load(Ordering::SeqCst) {
        if let Err(e) = server.turn(&mut landing, Some(Duration::from_millis(200))) {
            tracing::error!(error = %e, "receive engine failed; stopping it");
            return;
        }
        // Rings released (and scratch buffers dropped) since: give their registrations back.
        server.driver().release_unused();
    }
}

/// Mark a grant landed; finish the stream when it is complete.
fn land(entry: &Entry, g: Grant, key: &ChunkKey) {
    match g.land() {
        Ok(f) => {
            if entry.writer.total_len() == Some(f)
                && let Err(e) = entry.writer.finish()
            {
                tracing::warn!(?key, error = %e, "finishing the stream failed");
            }
        }
        Err(e) => tracing::debug!(?key, error = %e, "landing after the stream closed"),
    }
}

/// A chunk granted and being received.
struct Pending {
    entry: Arc<Entry>,
    /// The ring grant (None: a duplicate that lands nowhere).
    grant: Option<Grant>,
    /// Some(skip): received into a scratch buffer; bytes from `skip` go to the grant.
    scratch_skip: Option<usize>,
    /// When it was granted.
    since: Instant,
    /// Placed for zero copy (the producer writes the ring itself): never revoked.
    placed: bool,
}

struct RingLanding {
    table: Table,
    assigned: Option<Assigned>,
    contact: Arc<Contact>,
    counts: Arc<Counts>,
    /// The node name each authenticated producer connection gave.
    names: HashMap<ConnId, String>,
    /// (job, producer) with offers waiting for a producer set that names the producer, since
    /// when.
    unassigned_since: HashMap<(u64, String), Instant>,
    pending: HashMap<(ConnId, ChunkKey), Pending>,
    /// Connections to close: they hold a grant another producer waits for ([`STALL_REVOKE`]).
    revoke: Vec<Revoke>,
    /// Connections asked to be closed and not closed yet.
    revoking: HashSet<ConnId>,
}

impl RingLanding {
    /// Publishes how many (job, producer) pairs wait within their grace; pairs refused long
    /// ago are forgotten (a later offer of theirs gets a grace again, and is refused after it).
    fn count_awaiting(&mut self) {
        self.unassigned_since
            .retain(|_, since| since.elapsed() < FORGET_UNASSIGNED);
        let waiting = self
            .unassigned_since
            .values()
            .filter(|since| since.elapsed() < ASSIGN_GRACE)
            .count();
        self.counts
            .awaiting_assignment
            .store(waiting as u64, Ordering::Relaxed);
    }

    /// Whether the producer on `conn` may land chunks of `job`: Some(refusal) if not, None if
    /// it may, or `Wait` while the job's producer set has not arrived (for a short grace).
    fn admit(&mut self, conn: ConnId, key: &ChunkKey) -> Option<Offered> {
        use spate_netlib::raw::RefuseReason as R;
        let assigned = self.assigned.as_ref()?;
        if self.contact.lost() {
            // Out of touch with the scheduler: the job may have been aborted meanwhile.
            return Some(Offered::Wait);
        }
        let name = self.names.get(&conn).cloned().unwrap_or_default();
        let ok = lock(assigned)
            .get(&key.job)
            .is_some_and(|set| set.contains(&name));
        let waiting = (key.job, name.clone());
        if ok {
            if self.unassigned_since.remove(&waiting).is_some() {
                self.count_awaiting();
            }
            return None;
        }
        // The set may not have arrived yet, or may not name a producer added just now (it
        // comes over the control connection, the offer over the data one): wait a little.
        let since = *self
            .unassigned_since
            .entry(waiting)
            .or_insert_with(Instant::now);
        self.count_awaiting();
        if since.elapsed() < ASSIGN_GRACE {
            return Some(Offered::Wait);
        }
        tracing::warn!(
            producer = name.as_str(),
            job = key.job,
            stream = key.stream,
            offset = key.offset,
            "refusing a chunk from a producer the scheduler did not assign to its job"
        );
        Some(Offered::Refuse(R::NotAssigned))
    }

    /// `conn` waits for bytes of `key` another connection holds granted: if that grant is older
    /// than [`STALL_REVOKE`] and the consumer fills it itself, have the holder closed.
    fn revoke_stalled(&mut self, conn: ConnId, key: &ChunkKey) {
        let (start, end) = (key.offset, key.offset.saturating_add(key.len));
        for ((holder, k), p) in &self.pending {
            let overlaps = k.job == key.job
                && k.stream == key.stream
                && k.offset < end
                && start < k.offset.saturating_add(k.len);
            let held = p.since.elapsed();
            if *holder != conn
                && overlaps
                && !p.placed
                && held >= STALL_REVOKE
                && !self.revoking.contains(holder)
            {
                self.revoking.insert(*holder);
                tracing::warn!(
                    producer = self.names.get(holder).map(String::as_str),
                    ?k,
                    held_ms = held.as_millis() as u64,
                    "a producer holds a chunk it does not send while another offers it; \
                     closing its connection"
                );
                self.revoke.push(Revoke {
                    conn: *holder,
                    key: *k,
                    held,
                });
            }
        }
    }

    /// A throw-away registered buffer for a chunk that (partly) landed already: its bytes
    /// below the frontier may be being read and must not be written again.
    fn scratch(
        &mut self,
        conn: ConnId,
        key: &ChunkKey,
        entry: Arc<Entry>,
        grant: Option<Grant>,
    ) -> Offered {
        let skip = grant.as_ref().map_or(0, Grant::skip);
        match Arena::with_backing("spate-dup", key.len as usize, 1, BackingPref::NoHugeTlb)
            .map(|a| a.alloc())
        {
            Ok(Some(b)) => {
                self.pending.insert(
                    (conn, *key),
                    Pending {
                        entry,
                        grant,
                        scratch_skip: Some(skip),
                        since: Instant::now(),
                        placed: false,
                    },
                );
                Offered::Grant(b.into())
            }
            Ok(None) | Err(_) => {
                tracing::warn!(?key, "no scratch buffer for a duplicate chunk; refusing it");
                Offered::Refuse(spate_netlib::raw::RefuseReason::Other(REFUSE_INTERNAL))
            }
        }
    }
}

impl Landing for RingLanding {
    fn offer(&mut self, conn: ConnId, key: &ChunkKey) -> Offered {
        use spate_netlib::raw::RefuseReason as R;
        let Some(entry) = lock(&self.table).get(&(key.job, key.stream)).cloned() else {
            tracing::debug!(?key, "refusing a chunk of a stream not allocated here");
            return Offered::Refuse(R::UnknownStream);
        };
        if let Some(no) = self.admit(conn, key) {
            return no;
        }
        let Ok(len) = usize::try_from(key.len) else {
            return Offered::Refuse(R::TooLarge);
        };
        match entry.writer.try_reserve(key.offset, len) {
            Ok(Reserve::Granted(g)) if g.skip() == 0 && g.len() == len => {
                let at = g.ring_offset();
                match Span::new(&entry.region, at..at + len) {
                    Ok(span) => {
                        self.pending.insert(
                            (conn, *key),
                            Pending {
                                entry,
                                grant: Some(g),
                                scratch_skip: None,
                                since: Instant::now(),
                                placed: false,
                            },
                        );
                        Offered::Grant(span.into())
                    }
                    Err(e) => {
                        tracing::error!(?key, error = %e, "ring span out of its region");
                        Offered::Refuse(R::Other(REFUSE_INTERNAL))
                    }
                }
            }
            Ok(Reserve::Granted(g)) => self.scratch(conn, key, entry, Some(g)),
            Ok(Reserve::AlreadyLanded) => self.scratch(conn, key, entry, None),
            Ok(Reserve::NoRoom) => Offered::Wait,
            Err(WriteError::Busy { .. }) => {
                self.revoke_stalled(conn, key);
                Offered::Wait
            }
            Err(WriteError::Closed(_)) => Offered::Refuse(R::Aborted),
            Err(WriteError::BadRange { .. }) => Offered::Refuse(R::OutOfRange),
            Err(e) => {
                tracing::warn!(?key, error = %e, "refusing a chunk");
                Offered::Refuse(R::Other(REFUSE_INTERNAL))
            }
        }
    }

    fn landed(&mut self, conn: ConnId, key: &ChunkKey, dest: FixedBuf) {
        let Some(p) = self.pending.remove(&(conn, *key)) else {
            return;
        };
        let Some(mut g) = p.grant else {
            return; // a whole duplicate: drop the bytes
        };
        if let Some(skip) = p.scratch_skip {
            let FixedBuf::Arena(b) = &dest else {
                return;
            };
            let n = g.len();
            g.as_mut_slice()
                .copy_from_slice(&b.as_slice()[skip..skip + n]);
        }
        drop(dest);
        land(&p.entry, g, key);
        self.counts.copied.fetch_add(1, Ordering::Relaxed);
    }

    fn reserve(&mut self, conn: ConnId, key: &ChunkKey) -> Reserved {
        use spate_netlib::raw::RefuseReason as R;
        let Some(entry) = lock(&self.table).get(&(key.job, key.stream)).cloned() else {
            return Reserved::Refuse(R::UnknownStream);
        };
        match self.admit(conn, key) {
            Some(Offered::Refuse(r)) => return Reserved::Refuse(r),
            Some(_) => return Reserved::Wait,
            None => {}
        }
        let (Some(lend), Ok(len)) = (entry.lend.clone(), usize::try_from(key.len)) else {
            return Reserved::Refuse(R::Fallback);
        };
        match entry.writer.try_reserve(key.offset, len) {
            // Only a range of which nothing landed is placed: the producer writes all of it.
            Ok(Reserve::Granted(g)) if g.skip() == 0 && g.len() == len => {
                let at = g.ring_offset() as u64;
                self.pending.insert(
                    (conn, *key),
                    Pending {
                        entry,
                        grant: Some(g),
                        scratch_skip: None,
                        since: Instant::now(),
                        placed: true,
                    },
                );
                Reserved::Place { lend, at }
            }
            Ok(Reserve::Granted(_)) | Ok(Reserve::AlreadyLanded) => Reserved::Refuse(R::Fallback),
            Ok(Reserve::NoRoom) => Reserved::Wait,
            Err(WriteError::Busy { .. }) => {
                self.revoke_stalled(conn, key);
                Reserved::Wait
            }
            Err(WriteError::Closed(_)) => Reserved::Refuse(R::Aborted),
            Err(WriteError::BadRange { .. }) => Reserved::Refuse(R::OutOfRange),
            Err(e) => {
                tracing::warn!(?key, error = %e, "refusing a reservation");
                Reserved::Refuse(R::Other(REFUSE_INTERNAL))
            }
        }
    }

    fn written(&mut self, conn: ConnId, key: &ChunkKey) {
        if let Some(p) = self.pending.remove(&(conn, *key))
            && let Some(g) = p.grant
        {
            land(&p.entry, g, key);
            self.counts.in_place.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn unplaced(&mut self, conn: ConnId, key: &ChunkKey) {
        // Dropping the grant gives its range back for a later (re)send.
        self.pending.remove(&(conn, *key));
    }

    fn abandoned(&mut self, conn: ConnId, key: &ChunkKey, _dest: FixedBuf) {
        // Dropping the grant gives its range back for a later (re)send.
        self.pending.remove(&(conn, *key));
    }

    fn revoked(&mut self) -> Vec<Revoke> {
        std::mem::take(&mut self.revoke)
    }

    fn identified(&mut self, conn: ConnId, name: &str) {
        tracing::debug!(
            conn = conn.0,
            producer = name,
            "raw connection authenticated"
        );
        self.names.insert(conn, name.to_string());
    }

    fn closed(&mut self, conn: ConnId, error: Option<&RawError>) {
        let name = self.names.remove(&conn);
        match (error, &name) {
            (Some(e), None) if self.assigned.is_some() => {
                tracing::warn!(conn = conn.0, error = %e, "refused a raw connection that did not authenticate");
            }
            (Some(e), _) => {
                tracing::info!(conn = conn.0, producer = name.as_deref(), error = %e, "raw connection closed");
            }
            (None, _) => {}
        }
        self.pending.retain(|(c, _), _| *c != conn);
        self.revoking.remove(&conn);
    }
}
