//! The consumer's side of the control protocol, as a handler for the daemon's control loop:
//! [`ConsumerNode::handle`] answers AllocStream and Release; [`ConsumerNode::tick`] reports
//! stream progress and reader arrivals and departures. What to report is decided by the pure
//! [`reports`] from the last reported state and the current one.

use std::collections::HashMap;

use spate_netlib::proto::{JobId, Message, RingBacking, StreamIndex, StreamKey};
use spate_ring::{AbortReason, Backing, ReaderStatus};

use crate::engine::{ConsumerEngine, StreamState};

/// What was last reported of one stream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reported {
    /// Last frontier reported.
    pub frontier: u64,
    /// Last reader position reported.
    pub read_pos: u64,
    /// ReaderAttached was sent.
    pub attached: bool,
    /// ReaderGone was sent.
    pub gone: bool,
}

/// The messages that tell the scheduler what changed between `prev` and `now`, and the new
/// reported state. Progress goes out whenever the frontier or the reader position moved;
/// ReaderAttached once when a reader is seen; ReaderGone once when it died or detached before
/// reading everything.
pub fn reports(prev: Reported, now: &StreamState) -> (Vec<Message>, Reported) {
    let (job, stream) = (JobId(now.job), StreamIndex(now.stream));
    let mut out = Vec::new();
    let mut next = prev;
    let seen = !matches!(now.reader, ReaderStatus::NotAttached);
    if seen && !prev.attached {
        out.push(Message::ReaderAttached { job, stream });
        next.attached = true;
    }
    if now.frontier != prev.frontier || now.read_pos != prev.read_pos {
        out.push(Message::StreamProgress {
            job,
            stream,
            frontier: now.frontier,
            read_pos: now.read_pos,
        });
        next.frontier = now.frontier;
        next.read_pos = now.read_pos;
    }
    let left = matches!(now.reader, ReaderStatus::Dead | ReaderStatus::Detached);
    if left && !prev.gone && now.read_pos < now.total {
        out.push(Message::ReaderGone { job, stream });
        next.gone = true;
    }
    (out, next)
}

/// Map a ring backing to the protocol's.
pub fn ring_backing(b: Backing) -> RingBacking {
    match b {
        Backing::HugeTlb => RingBacking::HugeTlb,
        Backing::ShmemThp => RingBacking::TransparentHuge,
        Backing::Shmem => RingBacking::Plain,
    }
}

/// The consumer role of a node daemon.
#[derive(Debug)]
pub struct ConsumerNode {
    engine: ConsumerEngine,
    reported: HashMap<(u64, u32), Reported>,
}

impl ConsumerNode {
    /// Wrap a started engine.
    pub fn new(engine: ConsumerEngine) -> ConsumerNode {
        // A reader's end is the job's once the scheduler recorded it (Message::StreamRead).
        engine.confirm_ends();
        ConsumerNode {
            engine,
            reported: HashMap::new(),
        }
    }

    /// Joined a scheduler again: every stream is reported afresh (progress, attached readers),
    /// so the scheduler learns what this node holds; it releases what it does not know.
    pub fn rejoined(&mut self) {
        for r in self.reported.values_mut() {
            // Positions no stream has: the next tick reports every stream, even an empty one.
            *r = Reported {
                frontier: u64::MAX,
                read_pos: u64::MAX,
                ..Reported::default()
            };
        }
    }

    /// The engine.
    pub fn engine(&self) -> &ConsumerEngine {
        &self.engine
    }

    /// Handle a scheduler message meant for consumers: `Some(replies)`, or None when the
    /// message is not a consumer's.
    pub fn handle(&mut self, msg: &Message) -> Option<Vec<Message>> {
        match *msg {
            Message::AllocStream {
                job,
                stream,
                capacity,
                total_len,
                rate_bps,
                prefill,
            } => Some(vec![match self.engine.alloc_paced(
                job.0,
                stream.0,
                capacity,
                total_len,
                rate_bps.map(|rate_bps| spate_ring::header::Pacing { rate_bps, prefill }),
            ) {
                Ok(a) => {
                    self.reported.insert((job.0, stream.0), Reported::default());
                    // The key is the reader's credential: never in the logs.
                    tracing::info!(%job, %stream, backing = ?a.backing, capacity = a.capacity, "stream allocated");
                    Message::Allocated {
                        job,
                        stream,
                        key: StreamKey(a.key_u128),
                        handoff: a.handoff,
                        backing: ring_backing(a.backing),
                    }
                }
                Err(e) => {
                    tracing::warn!(%job, %stream, error = %e, "stream allocation failed");
                    Message::AllocFailed {
                        job,
                        stream,
                        reason: e.to_string(),
                    }
                }
            }]),
            Message::JobProducers { job, ref producers } => {
                tracing::debug!(%job, ?producers, "producers assigned");
                self.engine.set_producers(job.0, producers);
                Some(Vec::new())
            }
            Message::StreamRead { job, stream } => {
                if !self.engine.confirm_end(job.0, stream.0) {
                    tracing::debug!(%job, %stream, "read-to-end confirmation for a ring not here");
                }
                Some(Vec::new())
            }
            Message::Release { job, ref reason } => {
                // Report the final state first, so the scheduler sees the last progress.
                let out = self.tick_job(Some(job.0));
                // Finished streams are only dropped; readers of the others learn why. An empty
                // reason is a completed job (read to its end, or done by its user's word): the
                // ends of its finished streams are confirmed first.
                let n = if reason.is_empty() {
                    self.engine.confirm_job(job.0);
                    self.engine.release(job.0, AbortReason::Cancelled)
                } else {
                    self.engine
                        .release_with(job.0, AbortReason::JobAborted, reason)
                };
                self.reported.retain(|k, _| k.0 != job.0);
                tracing::info!(%job, streams = n, "job released");
                Some(out)
            }
            _ => None,
        }
    }

    /// Reports due since the last tick (progress, readers attached or gone).
    pub fn tick(&mut self) -> Vec<Message> {
        self.tick_job(None)
    }

    fn tick_job(&mut self, only: Option<u64>) -> Vec<Message> {
        let mut out = Vec::new();
        for s in self.engine.streams() {
            if only.is_some_and(|j| j != s.job) {
                continue;
            }
            let prev = self
                .reported
                .get(&(s.job, s.stream))
                .copied()
                .unwrap_or_default();
            let (msgs, next) = reports(prev, &s);
            self.reported.insert((s.job, s.stream), next);
            out.extend(msgs);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(frontier: u64, read_pos: u64, reader: ReaderStatus) -> StreamState {
        StreamState {
            job: 4,
            stream: 1,
            frontier,
            read_pos,
            total: 100,
            reader,
            closed: false,
        }
    }

    #[test]
    fn reports_progress_once_per_change_and_reader_events_once() {
        let (j, s) = (JobId(4), StreamIndex(1));
        let r0 = Reported::default();
        let (m, r1) = reports(r0, &st(0, 0, ReaderStatus::NotAttached));
        assert!(m.is_empty());
        let (m, r2) = reports(r1, &st(10, 0, ReaderStatus::Attached));
        assert_eq!(
            m,
            vec![
                Message::ReaderAttached { job: j, stream: s },
                Message::StreamProgress {
                    job: j,
                    stream: s,
                    frontier: 10,
                    read_pos: 0
                }
            ]
        );
        let (m, r3) = reports(r2, &st(10, 0, ReaderStatus::Attached));
        assert!(m.is_empty());
        let (m, r4) = reports(r3, &st(10, 5, ReaderStatus::Dead));
        assert_eq!(
            m,
            vec![
                Message::StreamProgress {
                    job: j,
                    stream: s,
                    frontier: 10,
                    read_pos: 5
                },
                Message::ReaderGone { job: j, stream: s }
            ]
        );
        let (m, _) = reports(r4, &st(10, 5, ReaderStatus::Dead));
        assert!(m.is_empty());
    }

    #[test]
    fn a_reader_that_read_everything_and_detached_is_not_gone() {
        let r = Reported {
            frontier: 100,
            read_pos: 100,
            attached: true,
            gone: false,
        };
        let (m, _) = reports(r, &st(100, 100, ReaderStatus::Detached));
        assert!(m.is_empty());
    }

    #[test]
    fn a_reader_that_died_before_attaching_was_seen_is_reported_both_ways() {
        let (m, r) = reports(Reported::default(), &st(0, 0, ReaderStatus::Dead));
        assert_eq!(
            m,
            vec![
                Message::ReaderAttached {
                    job: JobId(4),
                    stream: StreamIndex(1)
                },
                Message::ReaderGone {
                    job: JobId(4),
                    stream: StreamIndex(1)
                }
            ]
        );
        assert!(r.attached && r.gone);
    }
}
