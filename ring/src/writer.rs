//! The writer side of a ring (the consumer daemon): reserve room for a range, write it (or let
//! the kernel write it through [`Writer::data_mapping`]), land it; finish or abort.

use crate::abort::AbortReason;
use crate::ctl::{self, Ctl};
use crate::header::{self, CONTROL_LEN};
use crate::landed::{self, Landed, Stage, Verdict};
use crate::live;
use crate::shm::{Backing, BackingPref, Mapping, Segment, ShmError};
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Longest single futex sleep before liveness is re-checked.
const SLICE: Duration = Duration::from_millis(50);

/// How to create a ring.
#[derive(Clone, Debug)]
pub struct RingConfig {
    /// Name of the memfds (shows in /proc/<pid>/fd links; debugging only).
    pub name: String,
    /// Requested capacity in bytes (rounded up to the page size of the backing).
    pub capacity: usize,
    /// Backing preference.
    pub backing: BackingPref,
    /// Total stream length when known up front.
    pub total_len: Option<u64>,
    /// How the job wants the stream read (told to readers in the header).
    pub pacing: Option<crate::header::Pacing>,
}

/// Errors of the writer.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// Creating or mapping the segments failed.
    #[error(transparent)]
    Shm(#[from] ShmError),
    /// The stream is no longer open.
    #[error("stream is {0}: no more ranges can be landed")]
    Closed(&'static str),
    /// A range is empty, larger than the ring, or overflows.
    #[error("bad range [{offset}, +{len}): {why}")]
    BadRange {
        /// Start.
        offset: u64,
        /// Length.
        len: u64,
        /// What is wrong.
        why: &'static str,
    },
    /// The range overlaps one that is granted and not landed yet.
    #[error("range [{offset}, +{len}) overlaps a range being written")]
    Busy {
        /// Start.
        offset: u64,
        /// Length.
        len: u64,
    },
    /// The reader went away (detached or died) while the writer needs room.
    #[error("the reader is {0}: nothing frees ring space any more")]
    ReaderGone(ReaderStatus),
    /// The reader wrote an impossible position into shared memory.
    #[error("corrupt shared state: {0}")]
    Corrupt(String),
    /// `finish` with ranges missing.
    #[error("cannot finish: frontier {frontier} but {pending} bytes beyond it and total {total:?}")]
    Incomplete {
        /// Frontier.
        frontier: u64,
        /// Bytes landed beyond the frontier.
        pending: u64,
        /// Known total length.
        total: Option<u64>,
    },
}

/// What the writer knows of its reader.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReaderStatus {
    /// None attached yet.
    NotAttached,
    /// Attached and alive.
    Attached,
    /// Detached cleanly.
    Detached,
    /// Died.
    Dead,
}

impl std::fmt::Display for ReaderStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ReaderStatus::NotAttached => "not attached",
            ReaderStatus::Attached => "attached",
            ReaderStatus::Detached => "detached",
            ReaderStatus::Dead => "dead",
        })
    }
}

/// Outcome of a reservation.
#[derive(Debug)]
pub enum Reserve {
    /// Room is granted: write the bytes, then [`Grant::land`].
    Granted(Grant),
    /// Every byte of the range has landed already (a duplicate): drop the bytes.
    AlreadyLanded,
    /// Not enough room yet (the reader has not released enough), or the wait timed out.
    NoRoom,
}

struct WState {
    landed: Landed,
    inflight: Vec<(u64, u64)>,
    stage: Stage,
    reader_pidfd: Option<(u32, OwnedFd)>,
    last_read_pos: u64,
}

pub(crate) struct Inner {
    ctl_seg: Segment,
    data_seg: Segment,
    ctl_map: Mapping,
    data_map: Arc<Mapping>,
    capacity: u64,
    st: Mutex<WState>,
}

impl Inner {
    pub(crate) fn ctl(&self) -> &Ctl {
        header::ctl(&self.ctl_map)
    }
    fn lock(&self) -> MutexGuard<'_, WState> {
        // A panic while holding the lock leaves consistent data (every update is one step).
        self.st.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The writer of one stream ring. Cheap to clone (shared); `Send + Sync`: several threads may
/// reserve and land disjoint ranges concurrently.
#[derive(Clone)]
pub struct Writer {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer")
            .field("capacity", &self.inner.capacity)
            .field("frontier", &self.frontier())
            .finish()
    }
}

fn stage_name(s: Stage) -> &'static str {
    match s {
        Stage::Open => "open",
        Stage::Ended => "ended",
        Stage::Aborted => "aborted",
    }
}

impl Writer {
    /// Create the control and data segments and map the data twice.
    pub fn create(cfg: &RingConfig) -> Result<Writer, WriteError> {
        let data_seg = Segment::create(&format!("{}.data", cfg.name), cfg.capacity, cfg.backing)?;
        let ctl_seg = Segment::create_small(&format!("{}.ctl", cfg.name), CONTROL_LEN)?;
        let ctl_map = Mapping::map(&ctl_seg, true)?;
        let data_map = Arc::new(Mapping::map_double(&data_seg, true)?);
        let capacity = data_seg.len() as u64;
        header::init(&ctl_map, capacity, data_seg.backing(), cfg.pacing);
        let inner = Inner {
            ctl_seg,
            data_seg,
            ctl_map,
            data_map,
            capacity,
            st: Mutex::new(WState {
                landed: Landed::new(),
                inflight: Vec::new(),
                stage: Stage::Open,
                reader_pidfd: None,
                last_read_pos: 0,
            }),
        };
        let c = inner.ctl();
        c.writer_pid
            .store(live::my_pid(), std::sync::atomic::Ordering::SeqCst);
        if let Some(t) = cfg.total_len {
            c.total_len.store(t, std::sync::atomic::Ordering::SeqCst);
        }
        Ok(Writer {
            inner: Arc::new(inner),
        })
    }

    /// Ring capacity in bytes.
    pub fn capacity(&self) -> u64 {
        self.inner.capacity
    }

    /// Backing of the data segment.
    pub fn backing(&self) -> Backing {
        self.inner.data_seg.backing()
    }

    /// Why hugetlb was not used (when `BackingPref::Auto` fell back).
    pub fn fallback_reason(&self) -> Option<&str> {
        self.inner.data_seg.fallback_reason()
    }

    /// The data segment mapped twice back to back (writable): stream offset `o` lives at
    /// `as_ptr() + o % capacity`, and `len <= capacity` bytes from there are contiguous.
    /// For registering with io_uring; write only inside granted ranges.
    pub fn data_mapping(&self) -> Arc<Mapping> {
        self.inner.data_map.clone()
    }

    /// The in-order frontier (every byte before it has landed).
    pub fn frontier(&self) -> u64 {
        self.inner.ctl().frontier()
    }

    /// The reader's position (everything before it is released).
    pub fn reader_pos(&self) -> u64 {
        self.inner.ctl().read_pos()
    }

    /// Total length, when known.
    pub fn total_len(&self) -> Option<u64> {
        let t = self.inner.ctl().total_len();
        (t != u64::MAX).then_some(t)
    }

    /// Bytes landed beyond the frontier (out of order).
    pub fn pending_bytes(&self) -> u64 {
        self.inner.lock().landed.pending_bytes()
    }

    /// Duplicates of the two segment fds (control, data) for a hand-off.
    pub fn dup_fds(&self) -> Result<(OwnedFd, OwnedFd), WriteError> {
        Ok((self.inner.ctl_seg.dup_fd()?, self.inner.data_seg.dup_fd()?))
    }

    /// What is known of the reader: the status it (or the hand-off server) recorded, and for an
    /// attached reader whether its process still runs (pidfd).
    pub fn reader_status(&self) -> ReaderStatus {
        let c = self.inner.ctl();
        match c.reader_state() {
            ctl::READER_NONE => ReaderStatus::NotAttached,
            ctl::READER_DETACHED => ReaderStatus::Detached,
            ctl::READER_ATTACHED => {
                let pid = c.reader_pid.load(std::sync::atomic::Ordering::SeqCst);
                let mut st = self.inner.lock();
                if pid != 0 && st.reader_pidfd.as_ref().map(|p| p.0) != Some(pid) {
                    match live::pidfd_open(pid) {
                        Some(fd) => st.reader_pidfd = Some((pid, fd)),
                        None => return self.mark_reader_dead(pid),
                    }
                }
                match &st.reader_pidfd {
                    Some((p, fd)) if *p == pid && live::pidfd_exited(fd) => {
                        drop(st);
                        self.mark_reader_dead(pid)
                    }
                    _ => ReaderStatus::Attached,
                }
            }
            _ => ReaderStatus::Dead,
        }
    }

    fn mark_reader_dead(&self, pid: u32) -> ReaderStatus {
        let c = self.inner.ctl();
        // Only if the same reader is still recorded (a new one may have attached).
        if c.reader_pid.load(std::sync::atomic::Ordering::SeqCst) == pid {
            let _ = c.reader_state.compare_exchange(
                ctl::READER_ATTACHED,
                ctl::READER_DEAD,
                std::sync::atomic::Ordering::SeqCst,
                std::sync::atomic::Ordering::SeqCst,
            );
            c.set_reader_state(c.reader_state());
        }
        ReaderStatus::Dead
    }

    /// Whether an attached reader is alive (false when none is attached).
    pub fn reader_alive(&self) -> bool {
        self.reader_status() == ReaderStatus::Attached
    }

    /// Read and validate the reader's position.
    fn read_pos_checked(&self, st: &mut WState) -> Result<u64, WriteError> {
        let rp = self.inner.ctl().read_pos();
        let f = st.landed.frontier();
        if rp < st.last_read_pos || rp > f {
            return Err(WriteError::Corrupt(format!(
                "reader position {rp} outside [{}, frontier {f}]",
                st.last_read_pos
            )));
        }
        st.last_read_pos = rp;
        Ok(rp)
    }

    fn check_range(&self, offset: u64, len: u64) -> Result<u64, WriteError> {
        let bad = |why| WriteError::BadRange { offset, len, why };
        if len == 0 {
            return Err(bad("empty"));
        }
        if len > self.inner.capacity {
            return Err(bad("longer than the ring capacity"));
        }
        let end = offset.checked_add(len).ok_or(bad("overflows"))?;
        if let Some(t) = self.total_len()
            && end > t
        {
            return Err(bad("beyond the total stream length"));
        }
        Ok(end)
    }

    /// Reserve room for `[offset, offset + len)` without waiting. A range that has landed
    /// already is [`Reserve::AlreadyLanded`], also after the stream ended (see
    /// [`landed::verdict`]); only what is new to a closed stream is refused.
    pub fn try_reserve(&self, offset: u64, len: usize) -> Result<Reserve, WriteError> {
        let end = self.check_range(offset, len as u64)?;
        let mut st = self.inner.lock();
        // Bytes below the frontier may be being read: never write them again.
        let start = match landed::verdict(&st.landed, st.stage, &st.inflight, offset, end) {
            Verdict::AlreadyLanded => return Ok(Reserve::AlreadyLanded),
            Verdict::Closed(s) => return Err(WriteError::Closed(stage_name(s))),
            Verdict::Busy => {
                return Err(WriteError::Busy {
                    offset,
                    len: len as u64,
                });
            }
            Verdict::Write { start } => start,
        };
        let rp = self.read_pos_checked(&mut st)?;
        if end > rp + self.inner.capacity {
            return Ok(Reserve::NoRoom);
        }
        st.inflight.push((start, end));
        Ok(Reserve::Granted(Grant {
            inner: self.inner.clone(),
            start,
            end,
            skip: (start - offset) as usize,
            done: false,
        }))
    }

    /// Reserve room for `[offset, offset + len)`, waiting up to `timeout` (None: forever) for
    /// the reader to release enough. Fails when the reader is gone.
    pub fn reserve(
        &self,
        offset: u64,
        len: usize,
        timeout: Option<Duration>,
    ) -> Result<Reserve, WriteError> {
        let end = self.check_range(offset, len as u64)?;
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            match self.try_reserve(offset, len)? {
                Reserve::NoRoom => {}
                r => return Ok(r),
            }
            if !self.wait_room(end, remaining(deadline))? {
                return Ok(Reserve::NoRoom);
            }
        }
    }

    /// Wait up to `timeout` (None: forever) until stream offset `end` fits in the ring
    /// (`end <= reader position + capacity`). Futex wait, no spinning. Returns false on
    /// timeout; fails when the reader detached or died, or the stream is closed.
    pub fn wait_room(&self, end: u64, timeout: Option<Duration>) -> Result<bool, WriteError> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let cap = self.inner.capacity;
        let want = end.saturating_sub(cap);
        loop {
            {
                let mut st = self.inner.lock();
                if st.stage != Stage::Open {
                    return Err(WriteError::Closed(stage_name(st.stage)));
                }
                if self.read_pos_checked(&mut st)? >= want {
                    return Ok(true);
                }
            }
            let rs = self.reader_status();
            if matches!(rs, ReaderStatus::Detached | ReaderStatus::Dead) {
                return Err(WriteError::ReaderGone(rs));
            }
            let slice = match remaining(deadline) {
                Some(r) if r.is_zero() => return Ok(false),
                Some(r) => r.min(SLICE),
                None => SLICE,
            };
            self.inner.ctl().wait_read_pos(want, Some(slice));
        }
    }

    /// Mark `[offset, offset + len)` landed (written by other means, e.g. the kernel through
    /// [`Writer::data_mapping`] after a grant). Idempotent, also after the stream ended (for a
    /// range that had landed). Returns the frontier.
    pub fn land(&self, offset: u64, len: usize) -> Result<u64, WriteError> {
        let end = self.check_range(offset, len as u64)?;
        let mut st = self.inner.lock();
        match st.stage {
            Stage::Open => self.land_locked(&mut st, offset, end),
            Stage::Ended if st.landed.contains(offset, end) => Ok(st.landed.frontier()),
            s => Err(WriteError::Closed(stage_name(s))),
        }
    }

    fn land_locked(&self, st: &mut WState, start: u64, end: u64) -> Result<u64, WriteError> {
        let before = st.landed.frontier();
        let f = st.landed.land(start, end);
        if f != before {
            self.inner.ctl().publish_frontier(f);
        }
        Ok(f)
    }

    /// End of stream: every byte up to the total length (or, when unknown, the frontier) has
    /// landed. The reader gets the rest, then end-of-stream.
    pub fn finish(&self) -> Result<(), WriteError> {
        let mut st = self.inner.lock();
        if st.stage != Stage::Open {
            return Err(WriteError::Closed(stage_name(st.stage)));
        }
        let f = st.landed.frontier();
        let total = self.total_len();
        if st.landed.pending_bytes() > 0 || total.is_some_and(|t| t != f) {
            return Err(WriteError::Incomplete {
                frontier: f,
                pending: st.landed.pending_bytes(),
                total,
            });
        }
        st.stage = Stage::Ended;
        self.inner.ctl().close(ctl::STATE_ENDED, 0, Some(f));
        Ok(())
    }

    /// The reader's end will wait for [`Writer::confirm_end`]: reading every byte is not yet
    /// the end of the job's stream until the writer's side (the scheduler, through the
    /// consumer) has recorded it. Call before the ring is handed to a reader.
    pub fn await_confirmation(&self) {
        self.inner.ctl().set_end_confirm(ctl::CONFIRM_AWAITED, 0);
    }

    /// The stream's end was recorded: a reader at the end may return it (no effect unless
    /// awaited).
    pub fn confirm_end(&self) {
        let c = self.inner.ctl();
        if c.end_confirm() == ctl::CONFIRM_AWAITED {
            c.set_end_confirm(ctl::CONFIRM_GIVEN, 0);
        }
    }

    /// Refuse an awaited end confirmation of an ended stream (the job ended otherwise).
    fn refuse_end(&self, reason: AbortReason, message: Option<&str>) {
        let c = self.inner.ctl();
        if c.end_confirm() == ctl::CONFIRM_AWAITED {
            if let Some(m) = message {
                header::write_message(&self.inner.ctl_map, m);
            }
            c.set_end_confirm(ctl::CONFIRM_REFUSED, reason.code());
        }
    }

    /// Abort the stream with a reason (idempotent). After `finish`, only an end confirmation
    /// still awaited is refused with it (the bytes stay readable; the reader's end is an error).
    pub fn abort(&self, reason: AbortReason) {
        let mut st = self.inner.lock();
        if st.stage == Stage::Ended {
            self.refuse_end(reason, None);
        }
        if st.stage != Stage::Open {
            return;
        }
        st.stage = Stage::Aborted;
        self.inner
            .ctl()
            .close(ctl::STATE_ABORTED, reason.code(), None);
    }

    /// Abort the stream and tell its reader why in words (kept in the header, cut to
    /// [`crate::header::MESSAGE_MAX`] bytes); idempotent, no effect after `finish`.
    pub fn abort_with(&self, reason: AbortReason, message: &str) {
        let mut st = self.inner.lock();
        if st.stage == Stage::Ended {
            self.refuse_end(reason, Some(message));
        }
        if st.stage != Stage::Open {
            return;
        }
        st.stage = Stage::Aborted;
        header::write_message(&self.inner.ctl_map, message);
        self.inner
            .ctl()
            .close(ctl::STATE_ABORTED, reason.code(), None);
    }

    /// Whether `finish` or `abort` was called.
    pub fn is_closed(&self) -> bool {
        self.inner.lock().stage != Stage::Open
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        let st = self.st.get_mut().unwrap_or_else(|p| p.into_inner());
        let c = header::ctl(&self.ctl_map);
        if st.stage == Stage::Ended && c.end_confirm() == ctl::CONFIRM_AWAITED {
            c.set_end_confirm(ctl::CONFIRM_REFUSED, AbortReason::WriterGone.code());
        }
        if st.stage == Stage::Open {
            st.stage = Stage::Aborted;
            header::ctl(&self.ctl_map).close(
                ctl::STATE_ABORTED,
                AbortReason::WriterGone.code(),
                None,
            );
        }
    }
}

fn remaining(deadline: Option<Instant>) -> Option<Duration> {
    deadline.map(|d| d.saturating_duration_since(Instant::now()))
}

/// Room granted for a range: write the bytes, then [`Grant::land`]. Dropping it unlanded
/// gives the range back. Owns a reference to the ring (`'static`, `Send`).
#[derive(Debug)]
pub struct Grant {
    inner: Arc<Inner>,
    start: u64,
    end: u64,
    skip: usize,
    done: bool,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ring")
            .field("capacity", &self.capacity)
            .finish()
    }
}

impl Grant {
    /// Stream offset of the first granted byte.
    pub fn offset(&self) -> u64 {
        self.start
    }

    /// Granted length.
    pub fn len(&self) -> usize {
        (self.end - self.start) as usize
    }

    /// Always false (grants are never empty).
    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }

    /// Bytes at the start of the requested range that had landed already (below the
    /// frontier) and are not granted: the caller drops that many bytes first.
    pub fn skip(&self) -> usize {
        self.skip
    }

    /// Offset of the granted range inside the data mapping (`offset % capacity`).
    pub fn ring_offset(&self) -> usize {
        (self.start % self.inner.capacity) as usize
    }

    /// Pointer to the granted bytes inside [`Writer::data_mapping`] (valid for `len()` bytes
    /// while the grant lives).
    pub fn as_mut_ptr(&self) -> *mut u8 {
        // SAFETY: ring_offset < capacity and len <= capacity, so the range lies inside the
        // double mapping of 2 * capacity bytes.
        unsafe { self.inner.data_map.as_ptr().add(self.ring_offset()) }
    }

    /// The granted bytes, writable.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: in bounds (see as_mut_ptr); exclusive: the writer never grants overlapping
        // in-flight ranges, the reader never reads beyond the frontier (this range is beyond it
        // or being rewritten identically before becoming visible), and `&mut self` prevents
        // aliasing through this grant.
        unsafe { std::slice::from_raw_parts_mut(self.as_mut_ptr(), self.len()) }
    }

    /// Mark the granted range landed. Returns the new frontier.
    pub fn land(mut self) -> Result<u64, WriteError> {
        self.done = true;
        let w = Writer {
            inner: self.inner.clone(),
        };
        let mut st = self.inner.lock();
        st.inflight.retain(|&r| r != (self.start, self.end));
        if st.stage != Stage::Open {
            return Err(WriteError::Closed(stage_name(st.stage)));
        }
        w.land_locked(&mut st, self.start, self.end)
    }
}

impl Drop for Grant {
    fn drop(&mut self) {
        if !self.done {
            let (s, e) = (self.start, self.end);
            self.inner.lock().inflight.retain(|&r| r != (s, e));
        }
    }
}
