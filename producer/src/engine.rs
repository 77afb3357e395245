//! The producer's task engines: a compute thread (one chunk at a time, into registered chunk
//! buffers) and an expel thread (one io_uring sending every computed piece to its consumer over
//! pooled raw connections, several expels at once). They are joined by bounded queues; a task
//! is reported to the scheduler (through the outbox) once every piece is acked, or as soon as
//! one piece fails.
//!
//! The compute thread keeps `buffers` (≥ 2) chunk buffers so that computing the next chunk
//! overlaps expelling the previous ones; it waits for a buffer to come back when all are out.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, SyncSender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use spate_netlib::endpoint::{Endpoint, Via};
use spate_netlib::proto::{
    ChunkIndex, DataEndpoint, ExpelTarget, JobId, LineRange, Message, TaskId, TaskKind,
};
use spate_netlib::raw::{
    ChunkKey, ClientEvent, DEFAULT_MAX_CHUNK, RawClient, RawConfig, RefuseReason,
};
use spate_ring::BackingPref;
use spate_runtime::{Arena, ArenaBuf, FixedBuf, FrozenBuf, QueueRx, QueueTx, RuntimeError};

use crate::kernel::{Kernel, Output};

/// Where the engines send their reports (TaskDone / TaskFailed) for the scheduler.
pub type Outbox = Sender<Message>;

/// How to run the producer engines.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Core of the compute thread (None: not pinned).
    pub compute_core: Option<usize>,
    /// Core of the expel thread (None: not pinned).
    pub expel_core: Option<usize>,
    /// Chunk buffers (at least 2: compute overlaps expel).
    pub buffers: usize,
    /// Chunk buffer memory preference.
    pub backing: BackingPref,
    /// Raw connection settings.
    pub raw: RawConfig,
    /// Tasks that may wait for the compute thread.
    pub queue: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            compute_core: None,
            expel_core: None,
            buffers: 3,
            backing: BackingPref::Auto,
            raw: RawConfig::default(),
            queue: 64,
        }
    }
}

/// Errors starting or feeding the engines.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// io_uring setup or pinning failed.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// The raw client could not start.
    #[error("raw client: {0}")]
    Raw(#[from] spate_netlib::raw::RawError),
    /// Spawning a thread failed.
    #[error("spawning an engine thread: {0}")]
    Spawn(std::io::Error),
    /// An engine thread died.
    #[error("the {0} engine stopped")]
    Stopped(&'static str),
}

/// A compute+expel task: compute lines `lines` of `job` with `kernel` into one chunk buffer,
/// then send each target's piece of it to its consumer.
pub struct Task {
    /// Task id (the same for the Compute and the Expel message).
    pub task: TaskId,
    /// Job.
    pub job: JobId,
    /// Chunk index (for logs).
    pub chunk: ChunkIndex,
    /// Lines to compute.
    pub lines: LineRange,
    /// Pieces of the chunk and where they go (one per channel, channel order).
    pub targets: Vec<ExpelTarget>,
    /// The job's kernel.
    pub kernel: Arc<dyn Kernel>,
}

impl std::fmt::Debug for Task {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Task")
            .field("task", &self.task)
            .field("job", &self.job)
            .field("chunk", &self.chunk)
            .field("lines", &self.lines)
            .field("targets", &self.targets.len())
            .finish()
    }
}

fn failed(task: TaskId, job: JobId, reason: String, retryable: bool) -> Message {
    Message::TaskFailed {
        task,
        job,
        reason,
        retryable,
    }
}

/// Size of the chunk buffer the targets need; checks that pieces are non-empty and disjoint.
pub fn chunk_size(targets: &[ExpelTarget]) -> Result<usize, String> {
    if targets.is_empty() {
        return Err("expel has no targets".into());
    }
    let mut spans: Vec<(u64, u64)> = Vec::with_capacity(targets.len());
    for t in targets {
        if t.len == 0 {
            return Err(format!("target for stream {} has length 0", t.stream));
        }
        let end = t
            .chunk_offset
            .checked_add(t.len)
            .filter(|e| *e <= DEFAULT_MAX_CHUNK)
            .ok_or_else(|| {
                format!(
                    "target for stream {} ends beyond the largest chunk ({DEFAULT_MAX_CHUNK} bytes)",
                    t.stream
                )
            })?;
        spans.push((t.chunk_offset, end));
    }
    spans.sort_unstable();
    if spans.windows(2).any(|w| w[1].0 < w[0].1) {
        return Err("targets overlap inside the chunk".into());
    }
    Ok(spans.iter().map(|s| s.1).max().unwrap_or(0) as usize)
}

/// Cut `buf` into one kernel output per target (in target order).
fn outputs<'a>(buf: &'a mut [u8], targets: &[ExpelTarget]) -> Vec<Output<'a>> {
    let mut order: Vec<usize> = (0..targets.len()).collect();
    order.sort_by_key(|&i| targets[i].chunk_offset);
    let mut slots: Vec<Option<Output<'a>>> = targets.iter().map(|_| None).collect();
    let mut rest = buf;
    let mut pos = 0u64;
    for i in order {
        let t = &targets[i];
        let (_, tail) = std::mem::take(&mut rest).split_at_mut((t.chunk_offset - pos) as usize);
        let (piece, tail) = tail.split_at_mut(t.len as usize);
        slots[i] = Some(Output {
            stream: t.stream.0,
            offset: t.stream_offset,
            buf: piece,
        });
        rest = tail;
        pos = t.chunk_offset + t.len;
    }
    slots.into_iter().flatten().collect()
}

/// The raw endpoint and source binding of a target.
pub fn route(t: &ExpelTarget) -> (Endpoint, Via) {
    match &t.endpoint {
        DataEndpoint::Unix { path } => (Endpoint::Unix(path.clone()), Via::any()),
        DataEndpoint::Tcp { addr, .. } => {
            let via = t.source.as_ref().map_or_else(Via::any, |s| Via {
                device: s.interface.clone(),
                source: s.addr,
            });
            (Endpoint::from(*addr), via)
        }
    }
}

enum ExpelMsg {
    Task(ExpelJob),
    Stop,
}

struct ExpelJob {
    task: TaskId,
    job: JobId,
    buf: FrozenBuf,
    targets: Vec<ExpelTarget>,
    t0: Instant,
}

/// The running engines. Dropping it stops them (tasks still running are reported failed).
pub struct ProducerEngine {
    tx: Option<SyncSender<Task>>,
    expel_tx: QueueTx<ExpelMsg>,
    compute: Option<JoinHandle<()>>,
    expel: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for ProducerEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProducerEngine").finish_non_exhaustive()
    }
}

fn spawn<F: FnOnce() + Send + 'static>(
    name: &str,
    core: Option<usize>,
    f: F,
) -> Result<JoinHandle<()>, EngineError> {
    let (tx, rx) = mpsc::sync_channel::<Result<(), RuntimeError>>(1);
    let h = std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let r = core.map_or(Ok(()), spate_runtime::thread::pin_current);
            let ok = r.is_ok();
            let _ = tx.send(r);
            if ok {
                f();
            }
        })
        .map_err(EngineError::Spawn)?;
    match rx.recv() {
        Ok(Ok(())) => Ok(h),
        Ok(Err(e)) => {
            let _ = h.join();
            Err(e.into())
        }
        Err(_) => Err(EngineError::Stopped(if name.contains("compute") {
            "compute"
        } else {
            "expel"
        })),
    }
}

impl ProducerEngine {
    /// Start the compute and expel threads; reports go to `outbox`.
    pub fn start(cfg: EngineConfig, outbox: Outbox) -> Result<ProducerEngine, EngineError> {
        let (expel_tx, expel_rx) = spate_runtime::queue::<ExpelMsg>(cfg.buffers.max(2) + 1)?;
        let (freed_tx, freed_rx) = mpsc::channel::<()>();
        // The raw client's io_uring must be created on the thread that uses it.
        let (ready_tx, ready_rx) = mpsc::sync_channel::<Result<(), EngineError>>(1);
        let (raw, out) = (cfg.raw.clone(), outbox.clone());
        let expel = spawn(
            "spate-expel",
            cfg.expel_core,
            move || match RawClient::new(raw) {
                Ok(client) => {
                    let _ = ready_tx.send(Ok(()));
                    expel_loop(client, expel_rx, out, freed_tx);
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e.into()));
                }
            },
        )?;
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                let _ = expel.join();
                return Err(e);
            }
            Err(_) => return Err(EngineError::Stopped("expel")),
        }
        let (tx, rx) = mpsc::sync_channel::<Task>(cfg.queue.max(1));
        let (etx, count, backing) = (expel_tx.clone(), cfg.buffers.max(2), cfg.backing);
        let compute = spawn("spate-compute", cfg.compute_core, move || {
            compute_loop(rx, etx, freed_rx, outbox, BufPool::new(count, backing));
        })?;
        Ok(ProducerEngine {
            tx: Some(tx),
            expel_tx,
            compute: Some(compute),
            expel: Some(expel),
        })
    }

    /// Queue a task (blocks while the queue is full).
    pub fn submit(&self, task: Task) -> Result<(), EngineError> {
        match &self.tx {
            Some(tx) => tx.send(task).map_err(|_| EngineError::Stopped("compute")),
            None => Err(EngineError::Stopped("compute")),
        }
    }
}

impl Drop for ProducerEngine {
    fn drop(&mut self) {
        self.tx = None;
        if let Some(c) = self.compute.take() {
            let _ = c.join();
        }
        let _ = self.expel_tx.send(ExpelMsg::Stop);
        if let Some(e) = self.expel.take() {
            let _ = e.join();
        }
    }
}

/// Chunk buffers: one arena of `count` buffers, replaced by a larger one when a chunk does not
/// fit (the old one goes once its buffers come back).
struct BufPool {
    arena: Option<Arena>,
    count: usize,
    backing: BackingPref,
}

impl BufPool {
    fn new(count: usize, backing: BackingPref) -> BufPool {
        BufPool {
            arena: None,
            count,
            backing,
        }
    }

    fn get(&mut self, size: usize, freed: &Receiver<()>) -> Result<ArenaBuf, String> {
        let arena = match &self.arena {
            Some(a) if a.buf_size() >= size => a.clone(),
            _ => {
                let page = spate_ring::shm::HUGE_PAGE;
                let bs = size.div_ceil(page) * page;
                let a = Arena::with_backing("spate-chunks", bs, self.count, self.backing)
                    .map_err(|e| format!("chunk buffers of {bs} bytes: {e}"))?;
                tracing::info!(
                    buf_size = bs,
                    count = self.count,
                    backing = a.backing(),
                    "chunk buffers"
                );
                self.arena = Some(a.clone());
                a
            }
        };
        loop {
            if let Some(b) = arena.alloc() {
                return Ok(b);
            }
            match freed.recv_timeout(Duration::from_secs(1)) {
                Ok(()) | Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    return Err("the expel engine stopped".into());
                }
            }
        }
    }
}

fn compute_loop(
    rx: Receiver<Task>,
    expel: QueueTx<ExpelMsg>,
    freed: Receiver<()>,
    out: Outbox,
    mut pool: BufPool,
) {
    while let Ok(t) = rx.recv() {
        let t0 = Instant::now();
        let size = match chunk_size(&t.targets) {
            Ok(s) => s,
            Err(reason) => {
                let _ = out.send(failed(t.task, t.job, reason, false));
                continue;
            }
        };
        let mut buf = match pool.get(size, &freed) {
            Ok(b) => b,
            Err(reason) => {
                let _ = out.send(failed(t.task, t.job, reason, true));
                continue;
            }
        };
        let r = {
            let mut outs = outputs(&mut buf.as_mut_slice()[..size], &t.targets);
            t.kernel.compute(t.lines.start..t.lines.end, &mut outs)
        };
        if let Err(e) = r {
            let reason = format!("kernel {} on chunk {}: {e}", t.kernel.name(), t.chunk);
            let _ = out.send(failed(t.task, t.job, reason, false));
            continue;
        }
        tracing::debug!(task = %t.task, chunk = %t.chunk, bytes = size, us = t0.elapsed().as_micros() as u64, "computed");
        let job = ExpelJob {
            task: t.task,
            job: t.job,
            buf: buf.freeze(),
            targets: t.targets,
            t0,
        };
        if let Err(ExpelMsg::Task(j)) = expel.send(ExpelMsg::Task(job)) {
            let _ = out.send(failed(
                j.task,
                j.job,
                "the expel engine stopped".into(),
                true,
            ));
        }
    }
}

struct Running {
    job: JobId,
    remaining: usize,
    bytes: u64,
    t0: Instant,
    failed: bool,
    _buf: FrozenBuf,
}

struct Expeller {
    client: RawClient,
    out: Outbox,
    freed: Sender<()>,
    running: HashMap<TaskId, Running>,
    keys: HashMap<ChunkKey, TaskId>,
    /// The error of the connection that closed last (its failed chunks come right after).
    last_closed: Option<(spate_netlib::raw::ConnId, String)>,
}

fn refusal_retryable(r: RefuseReason) -> bool {
    !matches!(
        r,
        RefuseReason::UnknownStream
            | RefuseReason::Aborted
            | RefuseReason::OutOfRange
            | RefuseReason::TooLarge
    )
}

impl Expeller {
    fn start(&mut self, j: ExpelJob) {
        self.running.insert(
            j.task,
            Running {
                job: j.job,
                remaining: j.targets.len(),
                bytes: 0,
                t0: j.t0,
                failed: false,
                _buf: j.buf.clone(),
            },
        );
        for t in &j.targets {
            let key = ChunkKey {
                job: j.job.0,
                stream: t.stream.0,
                offset: t.stream_offset,
                len: t.len,
            };
            if let Some(other) = self.keys.get(&key) {
                let why = format!("the same piece is being expelled by task {other}");
                self.resolve(j.task, Err((why, true)));
                continue;
            }
            let (ep, via) = route(t);
            let src = FixedBuf::Frozen(j.buf.clone());
            match self
                .client
                .send_to(&ep, &via, key, src, t.chunk_offset as usize)
            {
                Ok(_) => {
                    self.keys.insert(key, j.task);
                }
                Err(rej) => {
                    let why = format!(
                        "expel of stream {} [{}, +{}) to {} at {ep}: {}",
                        t.stream, t.stream_offset, t.len, t.consumer, rej.error
                    );
                    self.resolve(j.task, Err((why, true)));
                }
            }
        }
    }

    fn resolve(&mut self, task: TaskId, outcome: Result<u64, (String, bool)>) {
        let Some(r) = self.running.get_mut(&task) else {
            return;
        };
        r.remaining = r.remaining.saturating_sub(1);
        match outcome {
            Ok(b) => r.bytes += b,
            Err((reason, retryable)) => {
                if !r.failed {
                    r.failed = true;
                    tracing::warn!(%task, %reason, "expel failed");
                    let _ = self.out.send(failed(task, r.job, reason, retryable));
                }
            }
        }
        if r.remaining == 0
            && let Some(r) = self.running.remove(&task)
        {
            if !r.failed {
                let _ = self.out.send(Message::TaskDone {
                    task,
                    job: r.job,
                    kind: TaskKind::Expel,
                    bytes: r.bytes,
                    micros: r.t0.elapsed().as_micros() as u64,
                });
            }
            drop(r);
            let _ = self.freed.send(());
        }
    }

    fn on_event(&mut self, e: ClientEvent) {
        let (key, outcome) = match e {
            ClientEvent::Acked { key, .. } => (key, Ok(key.len)),
            ClientEvent::Refused { key, reason, .. } => (
                key,
                Err((
                    format!(
                        "consumer refused stream {} [{}, +{}): {reason:?}",
                        key.stream, key.offset, key.len
                    ),
                    refusal_retryable(reason),
                )),
            ),
            ClientEvent::Failed { key, conn, .. } => {
                let why = match &self.last_closed {
                    Some((c, e)) if *c == conn => format!(": {e}"),
                    _ => String::new(),
                };
                (
                    key,
                    Err((
                        format!(
                            "connection to the consumer of stream {} lost before [{}, +{}) was \
                             acked{why}",
                            key.stream, key.offset, key.len
                        ),
                        true,
                    )),
                )
            }
            ClientEvent::Closed { conn, error } => {
                if let Some(e) = &error {
                    tracing::info!(conn = conn.0, error = %e, "raw connection closed");
                }
                self.last_closed = error.map(|e| (conn, e));
                return;
            }
        };
        if let Some(task) = self.keys.remove(&key) {
            self.resolve(task, outcome);
        }
    }

    fn fail_all(&mut self, reason: &str) {
        let tasks: Vec<TaskId> = self.running.keys().copied().collect();
        for t in tasks {
            if let Some(r) = self.running.remove(&t)
                && !r.failed
            {
                let _ = self.out.send(failed(t, r.job, reason.to_string(), true));
            }
        }
        self.keys.clear();
    }
}

fn expel_loop(client: RawClient, rx: QueueRx<ExpelMsg>, out: Outbox, freed: Sender<()>) {
    let mut x = Expeller {
        client,
        out,
        freed,
        running: HashMap::new(),
        keys: HashMap::new(),
        last_closed: None,
    };
    // Queue messages wake the client's io_uring through the queue's eventfd, watched by the
    // client: one wait covers the network and the queue.
    x.client.watch(rx.notifier().fd());
    let mut events = Vec::new();
    loop {
        // Drain the eventfd before reading the queue: a message sent after this wakes the
        // next turn.
        rx.notifier().drain();
        while let Some(m) = rx.try_recv() {
            match m {
                ExpelMsg::Task(j) => x.start(j),
                ExpelMsg::Stop => {
                    x.fail_all("the producer is stopping");
                    return;
                }
            }
        }
        if let Err(e) = x.client.turn(Some(Duration::from_millis(500)), &mut events) {
            tracing::error!(error = %e, "expel engine failed; stopping it");
            x.fail_all(&format!("the expel engine failed: {e}"));
            return;
        }
        for e in events.drain(..) {
            x.on_event(e);
        }
        x.client.driver().release_unused();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use spate_netlib::proto::StreamIndex;

    fn t(stream: u32, chunk_offset: u64, len: u64) -> ExpelTarget {
        ExpelTarget {
            stream: StreamIndex(stream),
            consumer: "c".into(),
            endpoint: DataEndpoint::Unix {
                path: "/nowhere".into(),
            },
            source: None,
            chunk_offset,
            stream_offset: 1000 * u64::from(stream),
            len,
        }
    }

    #[test]
    fn chunk_layout_is_checked_and_cut_in_target_order() {
        assert_eq!(chunk_size(&[t(0, 0, 10), t(1, 10, 5)]), Ok(15));
        assert_eq!(chunk_size(&[t(1, 10, 5), t(0, 0, 10)]), Ok(15));
        assert!(chunk_size(&[]).is_err());
        assert!(chunk_size(&[t(0, 0, 0)]).is_err());
        assert_eq!(
            chunk_size(&[t(0, 0, 10), t(1, 9, 5)]),
            Err("targets overlap inside the chunk".into())
        );
        assert!(chunk_size(&[t(0, u64::MAX, 5)]).is_err());
        let targets = [t(1, 10, 5), t(0, 2, 3)];
        let mut buf = vec![0u8; 15];
        let outs = outputs(&mut buf, &targets);
        assert_eq!(outs.len(), 2);
        assert_eq!(
            (outs[0].stream, outs[0].offset, outs[0].buf.len()),
            (1, 1000, 5)
        );
        assert_eq!(
            (outs[1].stream, outs[1].offset, outs[1].buf.len()),
            (0, 0, 3)
        );
    }

    #[test]
    fn routes_follow_the_endpoint_and_binding() {
        let mut x = t(0, 0, 1);
        assert_eq!(route(&x), (Endpoint::Unix("/nowhere".into()), Via::any()));
        x.endpoint = DataEndpoint::Tcp {
            addr: "10.0.0.2:9000".parse().unwrap(),
            interface: None,
        };
        x.source = Some(spate_netlib::proto::SourceBinding {
            interface: Some("eth1".into()),
            addr: Some("10.0.0.1".parse().unwrap()),
        });
        let (ep, via) = route(&x);
        assert_eq!(ep.to_string(), "tcp:10.0.0.2:9000");
        assert_eq!(via.device.as_deref(), Some("eth1"));
        assert_eq!(via.source, Some("10.0.0.1".parse().unwrap()));
    }
}
