//! The producer's task engines: a compute thread (one chunk at a time) and an expel thread
//! ([`crate::expel`]: one io_uring sending every computed piece to its consumer over pooled raw
//! connections, several expels at once). They are joined by bounded queues; a task is reported
//! to the scheduler (through the outbox) once every piece is acked, or as soon as one fails.
//!
//! Where a piece is computed depends on the local path ([`LocalPath`]) for consumers on this
//! host: `zero-copy` computes it straight into the place the consumer granted in its ring
//! (asked for while the previous task computes); `pull` and `socket` compute it into a
//! registered chunk buffer, which the consumer copies once (pull) or which goes through the
//! socket. Remote consumers always get it through the socket, and a piece the consumer cannot
//! place (its range partly landed, or it does not lend its rings) falls back to the buffer.
//!
//! The compute thread keeps `buffers` (≥ 2) chunk buffers so that computing the next chunk
//! overlaps expelling the previous ones; it waits for a buffer to come back when all are out.

use std::collections::HashSet;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use spate_netlib::endpoint::{Endpoint, Via};
use spate_netlib::proto::{
    ChunkIndex, DataEndpoint, ExpelTarget, JobId, LineRange, Message, TaskId,
};
use spate_netlib::raw::{ChunkKey, ConnId, DEFAULT_MAX_CHUNK, Placed, RawClient, RawConfig};
use spate_ring::BackingPref;
use spate_runtime::{Arena, ArenaBuf, QueueTx, RuntimeError};

use crate::expel::{ExpelJob, ExpelMsg, Slot, expel_loop};
use crate::kernel::{Kernel, Output};

/// How chunks reach a consumer on this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum LocalPath {
    /// The kernel computes straight into the consumer's ring (no copy).
    #[default]
    ZeroCopy,
    /// The consumer copies each chunk once from our chunk buffers.
    Pull,
    /// Through the UNIX socket (two copies).
    Socket,
}

impl LocalPath {
    /// Its name in flags and configs.
    pub fn name(self) -> &'static str {
        match self {
            LocalPath::ZeroCopy => "zero-copy",
            LocalPath::Pull => "pull",
            LocalPath::Socket => "socket",
        }
    }
}

impl std::fmt::Display for LocalPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for LocalPath {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "zero-copy" => Ok(LocalPath::ZeroCopy),
            "pull" => Ok(LocalPath::Pull),
            "socket" => Ok(LocalPath::Socket),
            other => Err(format!(
                "unknown local path {other:?}: use zero-copy, pull or socket"
            )),
        }
    }
}

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
    /// How chunks reach consumers on this host (`raw.share_local` follows it at start).
    pub local_path: LocalPath,
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
            local_path: LocalPath::default(),
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

pub(crate) fn failed(task: TaskId, job: JobId, reason: String, retryable: bool) -> Message {
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

/// Tasks the scheduler cancelled (another copy landed first), by job: the compute thread
/// skips them.
type Cancelled = Arc<Mutex<HashSet<(JobId, TaskId)>>>;

/// The running engines. Dropping it stops them (tasks still running are reported failed).
pub struct ProducerEngine {
    tx: Option<SyncSender<Task>>,
    cancelled: Cancelled,
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
        let (mut raw, out) = (cfg.raw.clone(), outbox.clone());
        raw.share_local &= cfg.local_path != LocalPath::Socket;
        let zero_copy = cfg.local_path == LocalPath::ZeroCopy;
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
        let cancelled: Cancelled = Arc::default();
        let skip = cancelled.clone();
        let compute = spawn("spate-compute", cfg.compute_core, move || {
            let pool = BufPool::new(count, backing);
            compute_loop(rx, etx, freed_rx, outbox, pool, zero_copy, skip);
        })?;
        Ok(ProducerEngine {
            tx: Some(tx),
            cancelled,
            expel_tx,
            compute: Some(compute),
            expel: Some(expel),
        })
    }

    /// Drop a task not computed yet (a copy landed elsewhere first); one already computed or
    /// being expelled finishes (landing is idempotent) and its report is ignored.
    pub fn cancel(&self, job: JobId, task: TaskId) {
        self.cancelled
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((job, task));
    }

    /// Forget the cancellations of a job that ended.
    pub fn forget_job(&self, job: JobId) {
        self.cancelled
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(j, _)| *j != job);
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

/// A task taken from the queue, with its places asked for (zero copy).
struct Prepared {
    task: Task,
    size: Result<usize, String>,
    /// The answer to the reservation of its local pieces.
    places: Option<Receiver<Vec<(usize, Slot)>>>,
}

/// The key of target `t` of `job`.
fn key_of(job: JobId, t: &ExpelTarget) -> ChunkKey {
    ChunkKey {
        job: job.0,
        stream: t.stream.0,
        offset: t.stream_offset,
        len: t.len,
    }
}

/// Take `t` in: check its layout and, on the zero-copy path, ask the local consumers for
/// places for its pieces (the expel thread answers while an earlier task computes).
fn prepare(t: Task, zero_copy: bool, expel: &QueueTx<ExpelMsg>) -> Prepared {
    let size = chunk_size(&t.targets);
    let pieces: Vec<(usize, ChunkKey, Endpoint)> = t
        .targets
        .iter()
        .enumerate()
        .filter_map(|(i, tg)| match &tg.endpoint {
            DataEndpoint::Unix { path } if zero_copy => {
                Some((i, key_of(t.job, tg), Endpoint::Unix(path.clone())))
            }
            _ => None,
        })
        .collect();
    let mut places = None;
    if size.is_ok() && !pieces.is_empty() {
        let (reply, rx) = mpsc::sync_channel(1);
        if expel.send(ExpelMsg::Reserve { pieces, reply }).is_ok() {
            places = Some(rx);
        }
    }
    Prepared {
        task: t,
        size,
        places,
    }
}

fn compute_loop(
    rx: Receiver<Task>,
    expel: QueueTx<ExpelMsg>,
    freed: Receiver<()>,
    out: Outbox,
    mut pool: BufPool,
    zero_copy: bool,
    cancelled: Cancelled,
) {
    let mut ahead: Option<Prepared> = None;
    loop {
        let cur = match ahead.take() {
            Some(p) => p,
            None => match rx.recv() {
                Ok(t) => prepare(t, zero_copy, &expel),
                Err(_) => return,
            },
        };
        // Ask for the next task's places now, so they are there when it is its turn.
        if zero_copy && let Ok(t) = rx.try_recv() {
            ahead = Some(prepare(t, zero_copy, &expel));
        }
        let skip = cancelled
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(cur.task.job, cur.task.task));
        if skip {
            tracing::debug!(task = %cur.task.task, chunk = %cur.task.chunk, "cancelled before computing");
            withdraw_all(cur, &expel);
            continue;
        }
        run(cur, &expel, &freed, &out, &mut pool);
    }
}

/// A cancelled task: give back whatever places were granted for it, unwritten.
fn withdraw_all(p: Prepared, expel: &QueueTx<ExpelMsg>) {
    let Some(rx) = p.places else {
        return;
    };
    let t = p.task;
    if let Ok(answered) = rx.recv() {
        let back: Vec<_> = answered
            .into_iter()
            .filter_map(|(i, s)| match s {
                Slot::Placed { conn, place } => Some((key_of(t.job, &t.targets[i]), conn, place)),
                _ => None,
            })
            .collect();
        if !back.is_empty() {
            let _ = expel.send(ExpelMsg::Withdraw(back));
        }
    }
}

/// Compute one task (into its places and/or a chunk buffer) and hand it to the expel thread.
fn run(
    p: Prepared,
    expel: &QueueTx<ExpelMsg>,
    freed: &Receiver<()>,
    out: &Outbox,
    pool: &mut BufPool,
) {
    let t = p.task;
    let t0 = Instant::now();
    let cpu0 = spate_runtime::cpu::process_time();
    let size = match p.size {
        Ok(s) => s,
        Err(reason) => {
            let _ = out.send(failed(t.task, t.job, reason, false));
            return;
        }
    };
    // Where each piece is computed: its place in the consumer's ring, or the chunk buffer.
    let mut slots: Vec<Option<Slot>> = t.targets.iter().map(|_| None).collect();
    if let Some(rx) = p.places {
        match rx.recv() {
            Ok(answered) => {
                for (i, s) in answered {
                    slots[i] = Some(s);
                }
            }
            Err(_) => {
                let why = "the expel engine stopped".to_string();
                let _ = out.send(failed(t.task, t.job, why, true));
                return;
            }
        }
    }
    let mut places: Vec<(usize, ConnId, Placed)> = Vec::new();
    let mut failure = None;
    for (i, s) in slots.into_iter().enumerate() {
        match s {
            Some(Slot::Placed { conn, place }) => places.push((i, conn, place)),
            Some(Slot::Failed(why, retry)) if failure.is_none() => failure = Some((why, retry)),
            _ => {}
        }
    }
    if let Some((why, retry)) = failure {
        let back = places
            .into_iter()
            .map(|(i, c, pl)| (key_of(t.job, &t.targets[i]), c, pl))
            .collect();
        let _ = expel.send(ExpelMsg::Withdraw(back));
        let _ = out.send(failed(t.task, t.job, why, retry));
        return;
    }
    let placed: Vec<bool> = {
        let mut v = vec![false; t.targets.len()];
        for (i, _, _) in &places {
            v[*i] = true;
        }
        v
    };
    let rest: Vec<ExpelTarget> = t
        .targets
        .iter()
        .zip(&placed)
        .filter(|(_, p)| !**p)
        .map(|(tg, _)| tg.clone())
        .collect();
    let mut buf = if rest.is_empty() {
        None
    } else {
        match pool.get(size, freed) {
            Ok(b) => Some(b),
            Err(reason) => {
                let back = places
                    .into_iter()
                    .map(|(i, c, pl)| (key_of(t.job, &t.targets[i]), c, pl))
                    .collect();
                let _ = expel.send(ExpelMsg::Withdraw(back));
                let _ = out.send(failed(t.task, t.job, reason, true));
                return;
            }
        }
    };
    let r = {
        // One output per target, in target order: a place in a ring, or a piece of the buffer.
        let mut from_buf = match &mut buf {
            Some(b) => outputs(&mut b.as_mut_slice()[..size], &rest).into_iter(),
            None => Vec::new().into_iter(),
        };
        let mut from_places = places.iter_mut();
        let mut outs: Vec<Output<'_>> = Vec::with_capacity(t.targets.len());
        for (tg, p) in t.targets.iter().zip(&placed) {
            let o = if *p {
                from_places.next().map(|(_, _, pl)| Output {
                    stream: tg.stream.0,
                    offset: tg.stream_offset,
                    buf: pl.as_mut_slice(),
                })
            } else {
                from_buf.next()
            };
            outs.extend(o);
        }
        let c0 = Instant::now();
        let r = t.kernel.compute(t.lines.start..t.lines.end, &mut outs);
        (r, c0.elapsed().as_micros() as u64)
    };
    let (r, compute_us) = r;
    if let Err(e) = r {
        let back = places
            .into_iter()
            .map(|(i, c, pl)| (key_of(t.job, &t.targets[i]), c, pl))
            .collect();
        let _ = expel.send(ExpelMsg::Withdraw(back));
        let reason = format!("kernel {} on chunk {}: {e}", t.kernel.name(), t.chunk);
        let _ = out.send(failed(t.task, t.job, reason, false));
        return;
    }
    tracing::debug!(task = %t.task, chunk = %t.chunk, bytes = size, in_place = places.len(), us = t0.elapsed().as_micros() as u64, "computed");
    let written = places
        .into_iter()
        .map(|(i, c, pl)| {
            (
                key_of(t.job, &t.targets[i]),
                c,
                pl,
                t.targets[i].consumer.clone(),
            )
        })
        .collect();
    let job = ExpelJob {
        task: t.task,
        job: t.job,
        buf: buf.map(ArenaBuf::freeze),
        targets: rest,
        written,
        t0,
        cpu0,
        compute_us,
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
