//! The reader side of a ring: acquire contiguous blocks of the in-order prefix, release them.

use crate::abort::AbortReason;
use crate::ctl::{self, Ctl};
use crate::header::{self, Fixed, HeaderError};
use crate::live;
use crate::shm::{Backing, Mapping, Segment, ShmError};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Longest single futex sleep before the writer's liveness is re-checked.
const SLICE: Duration = Duration::from_millis(50);

/// Errors attaching to a ring.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    /// The fds are not usable segments.
    #[error(transparent)]
    Shm(#[from] ShmError),
    /// The control header is wrong (names the field).
    #[error(transparent)]
    Header(#[from] HeaderError),
    /// Another live reader is attached.
    #[error("stream already has a reader (pid {pid})")]
    ReaderAttached {
        /// Its pid.
        pid: u32,
    },
    /// An earlier reader already read the whole stream: nothing is left to read (a stream is
    /// read once; its bytes were released to the writer as they were read).
    #[error(
        "the stream was already read to its end: an earlier reader (pid {pid}, {how}) read and \
         released all {total} bytes; nothing is left to read"
    )]
    Consumed {
        /// Stream length.
        total: u64,
        /// Pid of the reader that read it.
        pid: u32,
        /// What became of that reader: "detached" or "died".
        how: &'static str,
    },
    /// Shared state is impossible.
    #[error("corrupt shared state: {0}")]
    Corrupt(String),
}

/// Whether a stream was read to its end already: it has ended (or every byte up to its known
/// total has landed) and the reader position is at the end. Only meaningful when an earlier
/// reader was attached (a fresh empty stream is not consumed before its first reader).
pub fn consumed(state: u32, read_pos: u64, frontier: u64, total_len: u64) -> bool {
    let end = if state == ctl::STATE_ENDED {
        frontier
    } else {
        total_len
    };
    state != ctl::STATE_ABORTED && end != u64::MAX && read_pos == end && frontier == end
}

/// Errors while reading.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReadError {
    /// The writer aborted the stream.
    #[error("stream aborted: {0}")]
    Aborted(AbortReason),
    /// The writer process died (or its hand-off connection closed) before the end.
    #[error("writer (pid {pid}) died before the end of the stream, at offset {at}")]
    WriterDead {
        /// Writer pid recorded in the header.
        pid: u32,
        /// Reader position when detected.
        at: u64,
    },
    /// Every byte was read, but the writer process died before it confirmed the stream's
    /// end (the ring awaits a confirmation that the end was recorded upstream): the bytes
    /// are whole, whether the job completed is not known here.
    #[error(
        "writer (pid {pid}) died after every byte was read (offset {at}) and before it confirmed the stream's end: the bytes are whole, the job's outcome is not known here"
    )]
    Unconfirmed {
        /// Writer pid recorded in the header.
        pid: u32,
        /// The stream's end.
        at: u64,
    },
    /// Shared memory holds an impossible value.
    #[error("corrupt shared state: {0}")]
    Corrupt(String),
    /// The call's arguments are wrong.
    #[error("bad request: {0}")]
    BadRequest(String),
}

/// What `acquire` got.
#[derive(Debug)]
pub enum Acquired<'a> {
    /// A contiguous block of the stream.
    Data(Block<'a>),
    /// End of stream: everything was read.
    End,
    /// The timeout passed with fewer than `min` bytes available.
    TimedOut,
}

/// A contiguous block of landed stream bytes (read-only).
#[derive(Debug, Clone, Copy)]
pub struct Block<'a> {
    /// Stream offset of `data[0]`.
    pub offset: u64,
    /// The bytes.
    pub data: &'a [u8],
}

/// The reader of one stream ring (single reader per stream).
pub struct Reader {
    _ctl_seg: Segment,
    data_seg: Segment,
    ctl_map: Mapping,
    data_map: Mapping,
    fixed: Fixed,
    pos: u64,
    start: u64,
    seen_frontier: u64,
    writer_pid: u32,
    writer_pidfd: Option<OwnedFd>,
    link: Option<UnixStream>,
}

impl std::fmt::Debug for Reader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reader")
            .field("capacity", &self.fixed.capacity)
            .field("pos", &self.pos)
            .finish()
    }
}

impl Reader {
    /// Attach to a ring from its control and data segment fds. Maps data read-only, validates
    /// the header, registers as the reader. A reader joining after an earlier one left reads on
    /// from where that one stopped ([`Reader::start_offset`]); a stream that an earlier reader
    /// read to its end is [`AttachError::Consumed`].
    pub fn attach(ctl_fd: OwnedFd, data_fd: OwnedFd) -> Result<Reader, AttachError> {
        Self::attach_with_link(ctl_fd, data_fd, None)
    }

    /// As [`Reader::attach`], keeping the hand-off connection whose EOF means the writer died.
    pub fn attach_with_link(
        ctl_fd: OwnedFd,
        data_fd: OwnedFd,
        link: Option<UnixStream>,
    ) -> Result<Reader, AttachError> {
        let ctl_seg = Segment::from_fd(ctl_fd)?;
        let data_seg = Segment::from_fd(data_fd)?;
        let ctl_map = Mapping::map(&ctl_seg, true)?;
        let fixed = header::read(&ctl_map, data_seg.len())?;
        if (fixed.backing == Backing::HugeTlb) != (data_seg.backing() == Backing::HugeTlb) {
            return Err(HeaderError::BadBacking {
                found: fixed.backing.code(),
            }
            .into());
        }
        let data_map = Mapping::map_double(&data_seg, false)?;
        let c = header::ctl(&ctl_map);
        let writer_pid = c.writer_pid.load(Ordering::SeqCst);
        let writer_pidfd = live::pidfd_open(writer_pid);
        let me = live::my_pid();
        // Claim the reader slot.
        loop {
            let cur = c.reader_state();
            if cur == ctl::READER_ATTACHED {
                let pid = c.reader_pid.load(Ordering::SeqCst);
                let alive =
                    pid == me || live::pidfd_open(pid).is_some_and(|fd| !live::pidfd_exited(&fd));
                if alive {
                    return Err(AttachError::ReaderAttached { pid });
                }
            }
            if cur != ctl::READER_NONE
                && consumed(c.state(), c.read_pos(), c.frontier(), c.total_len())
            {
                return Err(AttachError::Consumed {
                    total: c.read_pos(),
                    pid: c.reader_pid.load(Ordering::SeqCst),
                    how: if cur == ctl::READER_DEAD {
                        "died"
                    } else {
                        "detached"
                    },
                });
            }
            if c.reader_state
                .compare_exchange(
                    cur,
                    ctl::READER_ATTACHED,
                    Ordering::SeqCst,
                    Ordering::SeqCst,
                )
                .is_ok()
            {
                break;
            }
        }
        c.reader_pid.store(me, Ordering::SeqCst);
        c.set_reader_state(ctl::READER_ATTACHED);
        let pos = c.read_pos();
        let f = c.frontier();
        if pos > f || f - pos > fixed.capacity {
            return Err(AttachError::Corrupt(format!(
                "reader position {pos} and frontier {f} inconsistent with capacity {}",
                fixed.capacity
            )));
        }
        Ok(Reader {
            _ctl_seg: ctl_seg,
            data_seg,
            ctl_map,
            data_map,
            fixed,
            pos,
            start: pos,
            seen_frontier: pos,
            writer_pid,
            writer_pidfd,
            link,
        })
    }

    fn ctl(&self) -> &Ctl {
        header::ctl(&self.ctl_map)
    }

    /// Ring capacity in bytes.
    pub fn capacity(&self) -> u64 {
        self.fixed.capacity
    }

    /// Why the stream was aborted (or its end refused), in the writer's words, when it was
    /// and it said.
    pub fn abort_message(&self) -> Option<String> {
        (self.ctl().state() == ctl::STATE_ABORTED
            || self.ctl().end_confirm() == ctl::CONFIRM_REFUSED)
            .then(|| header::read_message(&self.ctl_map))
            .flatten()
    }

    /// How the job wants its stream read (its rate and prefill), when it has a rate.
    pub fn pacing(&self) -> Option<crate::header::Pacing> {
        self.fixed.pacing
    }

    /// Backing of the data segment (as the writer found it).
    pub fn backing(&self) -> Backing {
        self.fixed.backing
    }

    /// Backing as seen from this process's mapping.
    pub fn local_backing(&self) -> Backing {
        self.data_seg.backing()
    }

    /// Stream offset of the next byte to read.
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// Stream offset where this reader started: 0, or where an earlier reader of the stream
    /// stopped.
    pub fn start_offset(&self) -> u64 {
        self.start
    }

    /// Bytes this reader has read and released (not the stream's position: a reader that
    /// joined mid-stream counts only its own).
    pub fn bytes_read(&self) -> u64 {
        self.pos - self.start
    }

    /// The writer's frontier now.
    pub fn frontier(&self) -> u64 {
        self.ctl().frontier()
    }

    /// Total length, when known.
    pub fn total_len(&self) -> Option<u64> {
        let t = self.ctl().total_len();
        (t != u64::MAX).then_some(t)
    }

    /// Writer pid recorded in the header.
    pub fn writer_pid(&self) -> u32 {
        self.writer_pid
    }

    /// Whether the writer process is alive (pidfd) and its hand-off connection, if any, open.
    pub fn writer_alive(&self) -> bool {
        let pid_ok = self
            .writer_pidfd
            .as_ref()
            .is_some_and(|fd| !live::pidfd_exited(fd));
        let link_ok = self
            .link
            .as_ref()
            .is_none_or(|s| !live::socket_closed(s.as_raw_fd()));
        pid_ok && link_ok
    }

    fn checked_frontier(&mut self) -> Result<u64, ReadError> {
        let f = self.ctl().frontier();
        if f < self.seen_frontier || f - self.pos > self.fixed.capacity {
            return Err(ReadError::Corrupt(format!(
                "frontier {f} outside [{}, position {} + capacity {}]",
                self.seen_frontier, self.pos, self.fixed.capacity
            )));
        }
        self.seen_frontier = f;
        Ok(f)
    }

    fn block(&self, len: u64) -> Acquired<'_> {
        let start = (self.pos % self.fixed.capacity) as usize;
        // SAFETY: start < capacity and len <= capacity, so the range lies in the read-only
        // double mapping of 2 * capacity bytes; the bytes are below the frontier, so the
        // writer does not write them until we release them.
        let data =
            unsafe { std::slice::from_raw_parts(self.data_map.as_ptr().add(start), len as usize) };
        Acquired::Data(Block {
            offset: self.pos,
            data,
        })
    }

    /// Acquire at least `min` and at most `max` contiguous bytes (fewer than `min` only at
    /// the end of the stream). Waits up to `timeout` (None: forever) on a futex, re-checking
    /// the writer's liveness every 50 ms; no CPU is spent while idle.
    pub fn acquire(
        &mut self,
        min: usize,
        max: usize,
        timeout: Option<Duration>,
    ) -> Result<Acquired<'_>, ReadError> {
        let cap = self.fixed.capacity;
        if min == 0 || min > max || min as u64 > cap {
            return Err(ReadError::BadRequest(format!(
                "acquire(min {min}, max {max}) needs 0 < min <= max and min <= capacity {cap}"
            )));
        }
        let (min, max) = (min as u64, (max as u64).min(cap));
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            // An abort wins over data still in the ring: the stream is broken.
            if self.ctl().state() == ctl::STATE_ABORTED {
                return Err(ReadError::Aborted(AbortReason::from_code(
                    self.ctl().reason(),
                )));
            }
            let f = self.checked_frontier()?;
            if f - self.pos >= min {
                return Ok(self.block((f - self.pos).min(max)));
            }
            match self.ctl().state() {
                ctl::STATE_OPEN => {}
                ctl::STATE_ENDED => {
                    let f = self.checked_frontier()?;
                    if f > self.pos {
                        return Ok(self.block((f - self.pos).min(max)));
                    }
                    let t = self.ctl().total_len();
                    if t != f {
                        return Err(ReadError::Corrupt(format!(
                            "stream ended with total length {t} but frontier {f}"
                        )));
                    }
                    match self.ctl().end_confirm() {
                        ctl::CONFIRM_NONE | ctl::CONFIRM_GIVEN => return Ok(Acquired::End),
                        ctl::CONFIRM_REFUSED => {
                            return Err(ReadError::Aborted(AbortReason::from_code(
                                self.ctl().reason(),
                            )));
                        }
                        ctl::CONFIRM_AWAITED => {}
                        c => {
                            return Err(ReadError::Corrupt(format!(
                                "unknown end confirmation {c}"
                            )));
                        }
                    }
                    // Every byte is read; the end is not the job's until it is confirmed.
                    if !self.writer_alive() {
                        if self.ctl().end_confirm() != ctl::CONFIRM_AWAITED {
                            continue;
                        }
                        return Err(ReadError::Unconfirmed {
                            pid: self.writer_pid,
                            at: self.pos,
                        });
                    }
                    let slice = match deadline.map(|d| d.saturating_duration_since(Instant::now()))
                    {
                        Some(r) if r.is_zero() => return Ok(Acquired::TimedOut),
                        Some(r) => r.min(SLICE),
                        None => SLICE,
                    };
                    self.ctl().wait_end_confirm(Some(slice));
                    continue;
                }
                ctl::STATE_ABORTED => {
                    return Err(ReadError::Aborted(AbortReason::from_code(
                        self.ctl().reason(),
                    )));
                }
                s => return Err(ReadError::Corrupt(format!("unknown stream state {s}"))),
            }
            if !self.writer_alive() {
                // It may have closed the stream or landed more just before exiting.
                if self.ctl().state() != ctl::STATE_OPEN || self.ctl().frontier() - self.pos >= min
                {
                    continue;
                }
                return Err(ReadError::WriterDead {
                    pid: self.writer_pid,
                    at: self.pos,
                });
            }
            let slice = match deadline.map(|d| d.saturating_duration_since(Instant::now())) {
                Some(r) if r.is_zero() => return Ok(Acquired::TimedOut),
                Some(r) => r.min(SLICE),
                None => SLICE,
            };
            self.ctl().wait_frontier(self.pos + min, Some(slice));
        }
    }

    /// Release the next `n` bytes (which must have been acquired) to the writer.
    pub fn release(&mut self, n: usize) -> Result<(), ReadError> {
        let n = n as u64;
        if n > self.seen_frontier - self.pos {
            return Err(ReadError::BadRequest(format!(
                "release({n}) beyond the {} bytes available",
                self.seen_frontier - self.pos
            )));
        }
        if n > 0 {
            self.pos += n;
            self.ctl().publish_read_pos(self.pos);
        }
        Ok(())
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        let c = header::ctl(&self.ctl_map);
        if c.reader_pid.load(Ordering::SeqCst) == live::my_pid() {
            let _ = c.reader_state.compare_exchange(
                ctl::READER_ATTACHED,
                ctl::READER_DETACHED,
                Ordering::SeqCst,
                Ordering::SeqCst,
            );
            c.set_reader_state(c.reader_state());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::consumed;
    use crate::ctl::{STATE_ABORTED, STATE_ENDED, STATE_OPEN};

    #[test]
    fn consumed_means_read_to_a_known_end() {
        const UNKNOWN: u64 = u64::MAX;
        // Ended and read to the end (also an empty stream).
        assert!(consumed(STATE_ENDED, 100, 100, 100));
        assert!(consumed(STATE_ENDED, 0, 0, 0));
        // Every byte up to the known total landed and was read, the end not yet marked.
        assert!(consumed(STATE_OPEN, 100, 100, 100));
        // Read part of it: a reader may go on.
        assert!(!consumed(STATE_ENDED, 40, 100, 100));
        assert!(!consumed(STATE_OPEN, 100, 100, 200));
        assert!(!consumed(STATE_OPEN, 100, 100, UNKNOWN));
        // Aborted is not "read to its end" (the reader is told why instead).
        assert!(!consumed(STATE_ABORTED, 100, 100, 100));
    }
}
