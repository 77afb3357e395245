//! The expel thread: one [`RawClient`] (one io_uring) sending every computed piece to its
//! consumer over pooled raw connections, several expels at once, and, on the zero-copy path,
//! asking local consumers for places in their rings before the compute thread computes
//! straight into them. It reports a task (through the outbox) once every piece is acked, or as
//! soon as one fails.

use std::collections::HashMap;
use std::sync::mpsc::{Sender, SyncSender};
use std::time::{Duration, Instant};

use spate_netlib::endpoint::{Endpoint, Via};
use spate_netlib::proto::{ExpelTarget, JobId, Message, PieceTime, StreamIndex, TaskId, TaskKind};
use spate_netlib::raw::{
    ChunkKey, ClientEvent, ConnId, PlaceEvent, Placed, RawClient, RefuseReason,
};
use spate_runtime::{FixedBuf, FrozenBuf, QueueRx};

use crate::engine::{Outbox, failed, route};

/// Where one piece of a chunk is computed.
#[derive(Debug)]
pub enum Slot {
    /// Straight into the consumer's ring, here.
    Placed {
        /// The connection it was placed on.
        conn: ConnId,
        /// The place.
        place: Placed,
    },
    /// Into a chunk buffer, then sent by another path.
    Fallback,
    /// Not at all: the task fails (why, and whether it may be redone).
    Failed(String, bool),
}

/// Messages from the compute thread.
pub enum ExpelMsg {
    /// Ask for places for these pieces (index in the task's targets, key, consumer endpoint)
    /// and answer on `reply`, one slot per piece in the same order.
    Reserve {
        /// Pieces.
        pieces: Vec<(usize, ChunkKey, Endpoint)>,
        /// Where the slots go.
        reply: SyncSender<Vec<(usize, Slot)>>,
    },
    /// A computed task: send `targets` from `buf`, and say the `written` places are written.
    Task(ExpelJob),
    /// Give these places back unwritten (their task failed before computing).
    Withdraw(Vec<(ChunkKey, ConnId, Placed)>),
    /// Stop (tasks still running are reported failed).
    Stop,
}

/// A computed task.
pub struct ExpelJob {
    /// Task.
    pub task: TaskId,
    /// Job.
    pub job: JobId,
    /// The chunk buffer of the pieces sent (None when every piece was computed in place).
    pub buf: Option<FrozenBuf>,
    /// The pieces to send from `buf`.
    pub targets: Vec<ExpelTarget>,
    /// Pieces computed in place: say they are written (and their consumer's name).
    pub written: Vec<(ChunkKey, ConnId, Placed, String)>,
    /// When the task started.
    pub t0: Instant,
    /// The process's CPU time then.
    pub cpu0: Option<Duration>,
    /// Microseconds computing the chunk.
    pub compute_us: u64,
}

struct Running {
    job: JobId,
    remaining: usize,
    bytes: u64,
    t0: Instant,
    cpu0: Option<Duration>,
    compute_us: u64,
    pieces: Vec<PieceTime>,
    failed: bool,
    _buf: Option<FrozenBuf>,
}

/// A piece on its way: its task, when it was handed to the raw client, and its consumer.
struct InFlight {
    task: TaskId,
    sent: Instant,
    consumer: String,
}

/// The link's time for a piece sent at `sent` and acked at `now`: pieces to one consumer
/// overlap, so each counts from the later of its send and the previous ack to that consumer
/// (their sum is the time the link was busy).
fn busy_micros(sent: Instant, last_ack: Option<Instant>, now: Instant) -> u64 {
    let from = last_ack.map_or(sent, |a| a.max(sent));
    now.saturating_duration_since(from).as_micros() as u64
}

/// Places being asked for one task.
struct Reserving {
    reply: SyncSender<Vec<(usize, Slot)>>,
    /// Per piece: its index in the task's targets, its key, its slot once answered.
    slots: Vec<(usize, ChunkKey, Option<Slot>)>,
}

struct Expeller {
    client: RawClient,
    out: Outbox,
    freed: Sender<()>,
    running: HashMap<TaskId, Running>,
    /// Pieces sent or written in place, by key: their task.
    keys: HashMap<ChunkKey, InFlight>,
    /// Per consumer: when its last piece was acked (busy-time accounting).
    last_ack: HashMap<String, Instant>,
    /// Places asked for, by key: which request and which slot.
    asked: HashMap<ChunkKey, (u64, usize)>,
    requests: HashMap<u64, Reserving>,
    next_request: u64,
    /// The error of the connection that closed last (its failed chunks come right after).
    last_closed: Option<(ConnId, String)>,
    cpu: CpuMeter,
}

/// The CPU a task cost the producer process, in time at the CPUs it may use: what the
/// scheduler needs when a CPU quota, not the compute thread, limits the producer.
#[derive(Default)]
struct CpuMeter {
    /// When the last task ended, and the process's CPU time then.
    last_done: Option<(Instant, Duration)>,
    /// The process's allowance in CPUs, and when it was read (it is read again every second:
    /// a quota can change under a running producer).
    allowance: Option<(Instant, f64)>,
}

impl CpuMeter {
    /// Microseconds at the allowance that the task started at `t0` (CPU time `cpu0`) cost:
    /// the CPU used since the later of its start and the previous task's end (so concurrent
    /// tasks do not count the same CPU twice, and an idle spell before it is not counted).
    fn task_done(&mut self, t0: Instant, cpu0: Option<Duration>) -> u64 {
        let now = Instant::now();
        let Some(cpu) = spate_runtime::cpu::process_time() else {
            return 0;
        };
        let from = match self.last_done {
            Some((at, c)) if at > t0 => Some(c),
            _ => cpu0,
        };
        self.last_done = Some((now, cpu));
        let allowance = match self.allowance {
            Some((at, a)) if now.duration_since(at) < Duration::from_secs(1) => a,
            _ => {
                let a = spate_runtime::cpu::allowance();
                self.allowance = Some((now, a));
                a
            }
        };
        from.map_or(0, |c| {
            (cpu.saturating_sub(c).as_secs_f64() / allowance * 1e6) as u64
        })
    }
}

/// Whether a task refused for `r` may be redone.
pub fn refusal_retryable(r: RefuseReason) -> bool {
    !matches!(
        r,
        RefuseReason::UnknownStream
            | RefuseReason::Aborted
            | RefuseReason::OutOfRange
            | RefuseReason::TooLarge
    )
}

impl Expeller {
    fn reserve(
        &mut self,
        pieces: Vec<(usize, ChunkKey, Endpoint)>,
        reply: SyncSender<Vec<(usize, Slot)>>,
    ) {
        let id = self.next_request;
        self.next_request += 1;
        let mut r = Reserving {
            reply,
            slots: Vec::with_capacity(pieces.len()),
        };
        for (i, key, ep) in pieces {
            let n = r.slots.len();
            if self.asked.contains_key(&key) || self.keys.contains_key(&key) {
                let why = format!("the same piece is already in flight: {key}");
                r.slots.push((i, key, Some(Slot::Failed(why, true))));
                continue;
            }
            match self.client.reserve_to(&ep, &Via::any(), key) {
                Ok(_) => {
                    self.asked.insert(key, (id, n));
                    r.slots.push((i, key, None));
                }
                Err(e) => {
                    let why = format!(
                        "reserving stream {} [{}, +{}) at {ep}: {e}",
                        key.stream, key.offset, key.len
                    );
                    r.slots.push((i, key, Some(Slot::Failed(why, true))));
                }
            }
        }
        self.requests.insert(id, r);
        self.answer_if_complete(id);
    }

    fn answer_if_complete(&mut self, id: u64) {
        let complete = self
            .requests
            .get(&id)
            .is_some_and(|r| r.slots.iter().all(|s| s.2.is_some()));
        if !complete {
            return;
        }
        let Some(r) = self.requests.remove(&id) else {
            return;
        };
        let keys: Vec<ChunkKey> = r.slots.iter().map(|s| s.1).collect();
        let slots: Vec<(usize, Slot)> = r
            .slots
            .into_iter()
            .filter_map(|(i, _, s)| s.map(|s| (i, s)))
            .collect();
        if let Err(e) = r.reply.try_send(slots) {
            // The compute thread is gone: give the places back.
            let slots = match e {
                std::sync::mpsc::TrySendError::Full(s)
                | std::sync::mpsc::TrySendError::Disconnected(s) => s,
            };
            for ((_, s), key) in slots.into_iter().zip(keys) {
                if let Slot::Placed { conn, place } = s {
                    let _ = self.client.withdraw(conn, key, place);
                }
            }
        }
    }

    fn on_place(&mut self, e: PlaceEvent) {
        let key = match &e {
            PlaceEvent::Placed { key, .. }
            | PlaceEvent::Refused { key, .. }
            | PlaceEvent::Acked { key, .. }
            | PlaceEvent::Failed { key, .. } => *key,
        };
        if let Some((id, n)) = self.asked.remove(&key) {
            let slot = match e {
                PlaceEvent::Placed { conn, place, .. } => Slot::Placed { conn, place },
                PlaceEvent::Refused {
                    reason: RefuseReason::Fallback,
                    ..
                } => Slot::Fallback,
                PlaceEvent::Refused { reason, .. } => Slot::Failed(
                    format!(
                        "consumer refused a place for stream {} [{}, +{}): {reason:?}",
                        key.stream, key.offset, key.len
                    ),
                    refusal_retryable(reason),
                ),
                PlaceEvent::Acked { .. } | PlaceEvent::Failed { .. } => Slot::Failed(
                    format!(
                        "connection to the consumer of stream {} lost while reserving [{}, +{})",
                        key.stream, key.offset, key.len
                    ),
                    true,
                ),
            };
            if let Some(r) = self.requests.get_mut(&id)
                && let Some(s) = r.slots.get_mut(n)
            {
                s.2 = Some(slot);
            }
            self.answer_if_complete(id);
            return;
        }
        match e {
            PlaceEvent::Acked { .. } => self.acked(key),
            PlaceEvent::Failed { conn, .. } => {
                let why = self.lost(conn, &key);
                if let Some(f) = self.keys.remove(&key) {
                    self.resolve(f.task, Err((why, true)));
                }
            }
            // Placed or refused outside a reservation: impossible by the client's contract.
            _ => {}
        }
    }

    /// A piece landed: its link time goes into its task's report.
    fn acked(&mut self, key: ChunkKey) {
        let now = Instant::now();
        let Some(f) = self.keys.remove(&key) else {
            return;
        };
        let micros = busy_micros(f.sent, self.last_ack.get(&f.consumer).copied(), now);
        self.last_ack.insert(f.consumer, now);
        let piece = PieceTime {
            stream: StreamIndex(key.stream),
            bytes: key.len,
            micros,
        };
        self.resolve(f.task, Ok(piece));
    }

    fn lost(&self, conn: ConnId, key: &ChunkKey) -> String {
        let why = match &self.last_closed {
            Some((c, e)) if *c == conn => format!(": {e}"),
            _ => String::new(),
        };
        format!(
            "connection to the consumer of stream {} lost before [{}, +{}) was acked{why}",
            key.stream, key.offset, key.len
        )
    }

    fn start(&mut self, j: ExpelJob) {
        self.running.insert(
            j.task,
            Running {
                job: j.job,
                remaining: j.targets.len() + j.written.len(),
                bytes: 0,
                t0: j.t0,
                cpu0: j.cpu0,
                compute_us: j.compute_us,
                pieces: Vec::with_capacity(j.targets.len() + j.written.len()),
                failed: false,
                _buf: j.buf.clone(),
            },
        );
        for (key, conn, place, consumer) in j.written {
            match self.client.written(conn, key, place) {
                Ok(()) => {
                    let f = InFlight {
                        task: j.task,
                        sent: Instant::now(),
                        consumer,
                    };
                    self.keys.insert(key, f);
                }
                Err(e) => {
                    let why = format!(
                        "stream {} [{}, +{}) written in place: {e}",
                        key.stream, key.offset, key.len
                    );
                    self.resolve(j.task, Err((why, true)));
                }
            }
        }
        let Some(buf) = j.buf else {
            return;
        };
        for t in &j.targets {
            let key = ChunkKey {
                job: j.job.0,
                stream: t.stream.0,
                offset: t.stream_offset,
                len: t.len,
            };
            if let Some(other) = self.keys.get(&key) {
                let why = format!("the same piece is being expelled by task {}", other.task);
                self.resolve(j.task, Err((why, true)));
                continue;
            }
            let (ep, via) = route(t);
            let src = FixedBuf::Frozen(buf.clone());
            match self
                .client
                .send_to(&ep, &via, key, src, t.chunk_offset as usize)
            {
                Ok(_) => {
                    let f = InFlight {
                        task: j.task,
                        sent: Instant::now(),
                        consumer: t.consumer.clone(),
                    };
                    self.keys.insert(key, f);
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

    fn resolve(&mut self, task: TaskId, outcome: Result<PieceTime, (String, bool)>) {
        let Some(r) = self.running.get_mut(&task) else {
            return;
        };
        r.remaining = r.remaining.saturating_sub(1);
        match outcome {
            Ok(p) => {
                r.bytes += p.bytes;
                r.pieces.push(p);
            }
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
                let cpu_micros = self.cpu.task_done(r.t0, r.cpu0);
                let _ = self.out.send(Message::TaskDone {
                    task,
                    job: r.job,
                    kind: TaskKind::Expel,
                    bytes: r.bytes,
                    micros: r.t0.elapsed().as_micros() as u64,
                    compute_micros: r.compute_us,
                    cpu_micros,
                    pieces: r.pieces.clone(),
                });
            }
            drop(r);
            let _ = self.freed.send(());
        }
    }

    fn on_event(&mut self, e: ClientEvent) {
        let (key, outcome) = match e {
            ClientEvent::Acked { key, .. } => return self.acked(key),
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
            ClientEvent::Failed { key, conn, .. } => (key, Err((self.lost(conn, &key), true))),
            ClientEvent::Closed { conn, error } => {
                if let Some(e) = &error {
                    tracing::info!(conn = conn.0, error = %e, "raw connection closed");
                }
                self.last_closed = error.map(|e| (conn, e));
                return;
            }
        };
        if let Some(f) = self.keys.remove(&key) {
            self.resolve(f.task, outcome);
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

/// Run the expel thread until [`ExpelMsg::Stop`].
pub fn expel_loop(client: RawClient, rx: QueueRx<ExpelMsg>, out: Outbox, freed: Sender<()>) {
    let mut x = Expeller {
        client,
        out,
        freed,
        running: HashMap::new(),
        keys: HashMap::new(),
        last_ack: HashMap::new(),
        asked: HashMap::new(),
        requests: HashMap::new(),
        next_request: 0,
        last_closed: None,
        cpu: CpuMeter::default(),
    };
    // Queue messages wake the client's io_uring through the queue's eventfd, watched by the
    // client: one wait covers the network and the queue.
    x.client.watch(rx.notifier().fd());
    let (mut events, mut places) = (Vec::new(), Vec::new());
    loop {
        // Drain the eventfd before reading the queue: a message sent after this wakes the
        // next turn.
        rx.notifier().drain();
        while let Some(m) = rx.try_recv() {
            match m {
                ExpelMsg::Reserve { pieces, reply } => x.reserve(pieces, reply),
                ExpelMsg::Task(j) => x.start(j),
                ExpelMsg::Withdraw(list) => {
                    for (key, conn, place) in list {
                        let _ = x.client.withdraw(conn, key, place);
                    }
                }
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
        x.client.take_placements(&mut places);
        for p in places.drain(..) {
            x.on_place(p);
        }
        x.client.driver().release_unused();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_time_counts_overlapping_pieces_once() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        // A and B sent together; A acked at 10 ms, B at 20 ms: 10 + 10 = the 20 ms busy.
        assert_eq!(busy_micros(t0, None, ms(10)), 10_000);
        assert_eq!(busy_micros(t0, Some(ms(10)), ms(20)), 10_000);
        // C sent at 25 ms after the link went idle, acked at 30 ms: 5 ms, not 10.
        assert_eq!(busy_micros(ms(25), Some(ms(20)), ms(30)), 5_000);
    }
}
