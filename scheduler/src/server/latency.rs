//! Chunk latency, sans-IO: from the moment a chunk's task is created (first handed to a
//! producer) to the moment its bytes are released in order, i.e. every piece of the chunk and
//! every byte before each piece in its stream has landed (a producer's TaskDone means every
//! piece was acked by its consumer, after landing in the ring). Times are microseconds on any
//! monotonic clock the caller keeps.

use std::collections::{BTreeMap, HashMap};

use crate::core::JobId;
use crate::spec::Chunk;

/// Chunk latencies of the running jobs.
#[derive(Debug, Default)]
pub struct ChunkLatency {
    jobs: HashMap<JobId, JobClock>,
}

#[derive(Debug, Default)]
struct JobClock {
    /// Per chunk index: when its task was first created, its pieces, pieces not yet released,
    /// and whether its task finished.
    chunks: HashMap<u64, ChunkClock>,
    /// Per stream: bytes released in order, and finished pieces beyond that (offset → end,
    /// chunk).
    streams: HashMap<u32, StreamClock>,
    /// Latencies of the chunks released so far, in microseconds.
    samples: Vec<u32>,
}

#[derive(Debug)]
struct ChunkClock {
    created: u64,
    pieces: Vec<(u32, u64, u64)>,
    left: usize,
    done: bool,
}

#[derive(Debug, Default)]
struct StreamClock {
    frontier: u64,
    waiting: BTreeMap<u64, (u64, u64)>,
}

impl ChunkLatency {
    /// A task for `chunk` of `job` was created at `now_us` (later tasks for the same chunk, after
    /// a producer failed, keep the first time: the wait is part of the chunk's latency).
    pub fn created(&mut self, job: JobId, chunk: &Chunk, now_us: u64) {
        let j = self.jobs.entry(job).or_default();
        j.chunks.entry(chunk.index).or_insert_with(|| {
            let pieces: Vec<(u32, u64, u64)> = chunk
                .pieces
                .iter()
                .filter(|p| p.len > 0)
                .map(|p| (p.stream, p.offset, p.offset + p.len))
                .collect();
            ChunkClock {
                created: now_us,
                left: pieces.len(),
                pieces,
                done: false,
            }
        });
    }

    /// Every piece of `chunk` of `job` landed at `now_us` (duplicates and unknown chunks are
    /// ignored). Records the latency of every chunk this releases in order.
    pub fn done(&mut self, job: JobId, chunk: u64, now_us: u64) {
        let Some(j) = self.jobs.get_mut(&job) else {
            return;
        };
        let Some(c) = j.chunks.get_mut(&chunk) else {
            return;
        };
        if c.done {
            return;
        }
        c.done = true;
        let pieces = c.pieces.clone();
        if pieces.is_empty() {
            let lat = now_us.saturating_sub(c.created);
            j.samples.push(u32::try_from(lat).unwrap_or(u32::MAX));
            return;
        }
        for (stream, start, end) in pieces {
            let s = j.streams.entry(stream).or_default();
            s.waiting.insert(start, (end, chunk));
            while let Some((end, owner)) = s.waiting.remove(&s.frontier) {
                s.frontier = end;
                if let Some(o) = j.chunks.get_mut(&owner) {
                    o.left = o.left.saturating_sub(1);
                    if o.left == 0 {
                        let lat = now_us.saturating_sub(o.created);
                        j.samples.push(u32::try_from(lat).unwrap_or(u32::MAX));
                    }
                }
            }
        }
    }

    /// The latencies recorded for `job` (in release order), forgetting the job.
    pub fn take(&mut self, job: JobId) -> Vec<u32> {
        self.jobs
            .remove(&job)
            .map(|j| j.samples)
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::Piece;

    fn chunk(index: u64, len: u64, streams: u32) -> Chunk {
        Chunk {
            index,
            lines: index..index + 1,
            pieces: (0..streams)
                .map(|s| Piece {
                    stream: s,
                    channel: s,
                    offset: index * len,
                    len,
                })
                .collect(),
        }
    }

    #[test]
    fn in_order_chunks_release_when_they_land() {
        let mut l = ChunkLatency::default();
        let j = JobId(1);
        l.created(j, &chunk(0, 10, 2), 100);
        l.created(j, &chunk(1, 10, 2), 150);
        l.done(j, 0, 400);
        l.done(j, 1, 500);
        assert_eq!(l.take(j), vec![300, 350]);
        assert!(l.take(j).is_empty());
    }

    #[test]
    fn a_chunk_landing_early_waits_for_the_ones_before_it() {
        let mut l = ChunkLatency::default();
        let j = JobId(2);
        for i in 0..3 {
            l.created(j, &chunk(i, 8, 3), 10 * i);
        }
        l.done(j, 2, 100); // beyond the frontier: nothing released yet
        l.done(j, 1, 200);
        l.done(j, 0, 300); // releases 0, 1 and 2 at once
        assert_eq!(l.take(j), vec![300, 290, 280]);
    }

    #[test]
    fn reassigned_tasks_keep_the_first_creation_and_duplicates_count_once() {
        let mut l = ChunkLatency::default();
        let j = JobId(3);
        l.created(j, &chunk(0, 4, 1), 5);
        l.created(j, &chunk(0, 4, 1), 50); // the producer died; a second task
        l.done(j, 0, 105);
        l.done(j, 0, 900);
        l.done(j, 7, 900); // unknown chunk
        l.done(JobId(9), 0, 900); // unknown job
        assert_eq!(l.take(j), vec![100]);
    }

    #[test]
    fn split_streams_release_each_part_on_its_own() {
        // Two parts of one stream each: chunk 0 covers stream 0 from 0, chunk 1 stream 1 from 0.
        let mut l = ChunkLatency::default();
        let j = JobId(4);
        let c = |index, stream| Chunk {
            index,
            lines: 0..1,
            pieces: vec![Piece {
                stream,
                channel: 0,
                offset: 0,
                len: 6,
            }],
        };
        l.created(j, &c(0, 0), 0);
        l.created(j, &c(1, 1), 0);
        l.done(j, 1, 40);
        l.done(j, 0, 70);
        assert_eq!(l.take(j), vec![40, 70]);
    }
}
