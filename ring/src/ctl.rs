//! The atomics protocol between writer and reader, on the shared control block.
//!
//! Writer: stores the frontier (Release), bumps `frontier_seq`, and makes a `futex_wake` only
//! when `reader_waiters` is non-zero. Reader: snapshots `frontier_seq`, re-checks its
//! condition, registers in `reader_waiters`, and `futex_wait`s on the snapshot; the kernel
//! re-checks the word, so a bump between snapshot and sleep is never lost. The same holds in
//! the other direction with `read_pos` / `read_seq` / `writer_waiters`. All flag and sequence
//! operations are SeqCst and the cross checks are read-modify-writes (a Dekker pair: either
//! the waiter sees the new value or the publisher sees the waiter). Model-checked with loom (tests/loom.rs).

use crate::sync::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

/// Stream state: open.
pub const STATE_OPEN: u32 = 0;
/// Stream state: ended (the frontier is final and equals the total length).
pub const STATE_ENDED: u32 = 1;
/// Stream state: aborted (see the reason code).
pub const STATE_ABORTED: u32 = 2;

/// End confirmation: none in this ring (the reader's end is the stream's end).
pub const CONFIRM_NONE: u32 = 0;
/// End confirmation: awaited (the writer confirms once the end has been recorded upstream).
pub const CONFIRM_AWAITED: u32 = 1;
/// End confirmation: given.
pub const CONFIRM_GIVEN: u32 = 2;
/// End confirmation: refused (the job ended otherwise; see the reason code).
pub const CONFIRM_REFUSED: u32 = 3;

/// Reader status: none attached yet.
pub const READER_NONE: u32 = 0;
/// Reader status: attached.
pub const READER_ATTACHED: u32 = 1;
/// Reader status: detached cleanly.
pub const READER_DETACHED: u32 = 2;
/// Reader status: died (seen by the hand-off server or a pid check).
pub const READER_DEAD: u32 = 3;

/// The shared, mutable part of the control segment. Two cache lines: the first written by
/// the writer, the second by the reader.
#[repr(C, align(64))]
pub struct Ctl {
    pub(crate) frontier: AtomicU64,
    pub(crate) total_len: AtomicU64,
    pub(crate) frontier_seq: AtomicU32,
    pub(crate) reader_waiters: AtomicU32,
    pub(crate) state: AtomicU32,
    pub(crate) reason: AtomicU32,
    pub(crate) writer_pid: AtomicU32,
    pub(crate) end_confirm: AtomicU32,
    #[cfg(not(loom))]
    _pad0: [u8; 24],
    pub(crate) read_pos: AtomicU64,
    pub(crate) read_seq: AtomicU32,
    pub(crate) writer_waiters: AtomicU32,
    pub(crate) reader_pid: AtomicU32,
    pub(crate) reader_state: AtomicU32,
    #[cfg(not(loom))]
    _pad1: [u8; 40],
    #[cfg(loom)]
    park: (loom::sync::Mutex<()>, loom::sync::Condvar),
}

#[cfg(not(loom))]
const _: () = assert!(std::mem::size_of::<Ctl>() == 128);

impl Default for Ctl {
    fn default() -> Self {
        Self::new()
    }
}

impl Ctl {
    /// A fresh control block (open, nothing landed). Shared-memory code initialises it in
    /// place with the same values (all zero, `total_len` unknown).
    pub fn new() -> Ctl {
        Ctl {
            frontier: AtomicU64::new(0),
            total_len: AtomicU64::new(u64::MAX),
            frontier_seq: AtomicU32::new(0),
            reader_waiters: AtomicU32::new(0),
            state: AtomicU32::new(STATE_OPEN),
            reason: AtomicU32::new(0),
            writer_pid: AtomicU32::new(0),
            end_confirm: AtomicU32::new(CONFIRM_NONE),
            #[cfg(not(loom))]
            _pad0: [0; 24],
            read_pos: AtomicU64::new(0),
            read_seq: AtomicU32::new(0),
            writer_waiters: AtomicU32::new(0),
            reader_pid: AtomicU32::new(0),
            reader_state: AtomicU32::new(READER_NONE),
            #[cfg(not(loom))]
            _pad1: [0; 40],
            #[cfg(loom)]
            park: (loom::sync::Mutex::new(()), loom::sync::Condvar::new()),
        }
    }

    #[cfg(not(loom))]
    fn fwait(&self, word: &AtomicU32, expected: u32, timeout: Option<Duration>) {
        crate::sync::futex_wait(word, expected, timeout)
    }
    #[cfg(not(loom))]
    fn fwake(&self, word: &AtomicU32) {
        crate::sync::futex_wake(word)
    }
    // loom: a futex is "check the word under the bucket lock, then sleep"; wakes wake all.
    #[cfg(loom)]
    fn fwait(&self, word: &AtomicU32, expected: u32, _timeout: Option<Duration>) {
        let g = self.park.0.lock().unwrap();
        // The kernel reads the word after a full barrier (futex_q_lock's smp_mb): an RMW
        // models that read.
        if word.fetch_add(0, Ordering::SeqCst) == expected {
            drop(self.park.1.wait(g).unwrap());
        }
    }
    #[cfg(loom)]
    fn fwake(&self, _word: &AtomicU32) {
        let _g = self.park.0.lock().unwrap();
        self.park.1.notify_all();
    }

    fn wait_on(
        &self,
        seq: &AtomicU32,
        waiters: &AtomicU32,
        ready: impl Fn() -> bool,
        timeout: Option<Duration>,
    ) -> bool {
        let snap = seq.load(Ordering::SeqCst);
        if ready() {
            return true;
        }
        waiters.fetch_add(1, Ordering::SeqCst);
        if !ready() {
            self.fwait(seq, snap, timeout);
        }
        waiters.fetch_sub(1, Ordering::SeqCst);
        ready()
    }

    fn bump(&self, seq: &AtomicU32, waiters: &AtomicU32) {
        seq.fetch_add(1, Ordering::SeqCst);
        // An RMW, not a load: it reads the latest `waiters` in modification order, so this and
        // the waiter's `fetch_add` cannot both miss each other (store buffering) even under
        // acquire/release semantics only (which is what loom models for SeqCst).
        if waiters.fetch_add(0, Ordering::SeqCst) != 0 {
            self.fwake(seq);
        }
    }

    // ---- writer side ----

    /// Publish a new frontier (monotonic; the caller serialises publishers).
    pub fn publish_frontier(&self, frontier: u64) {
        self.frontier.store(frontier, Ordering::Release);
        self.bump(&self.frontier_seq, &self.reader_waiters);
    }

    /// Set the final state (ended or aborted with `reason`) and wake both sides. For
    /// `STATE_ENDED` the total length is stored before the state.
    pub fn close(&self, state: u32, reason: u32, total: Option<u64>) {
        if let Some(t) = total {
            self.total_len.store(t, Ordering::Release);
        }
        self.reason.store(reason, Ordering::Release);
        self.state.store(state, Ordering::SeqCst);
        self.bump(&self.frontier_seq, &self.reader_waiters);
        self.bump(&self.read_seq, &self.writer_waiters);
    }

    /// Set the end confirmation (`CONFIRM_*`; a refusal stores `reason` first) and wake the
    /// reader.
    pub fn set_end_confirm(&self, confirm: u32, reason: u32) {
        if confirm == CONFIRM_REFUSED {
            self.reason.store(reason, Ordering::Release);
        }
        self.end_confirm.store(confirm, Ordering::SeqCst);
        self.bump(&self.frontier_seq, &self.reader_waiters);
    }

    /// The end confirmation (`CONFIRM_*`).
    pub fn end_confirm(&self) -> u32 {
        self.end_confirm.load(Ordering::SeqCst)
    }

    /// Wait (at most `timeout`) until the end confirmation is no longer awaited. Returns
    /// whether that holds on return.
    pub fn wait_end_confirm(&self, timeout: Option<Duration>) -> bool {
        self.wait_on(
            &self.frontier_seq,
            &self.reader_waiters,
            || self.end_confirm.load(Ordering::SeqCst) != CONFIRM_AWAITED,
            timeout,
        )
    }

    /// Wait (at most `timeout`) until the reader position is at least `want` or the reader
    /// status leaves `READER_ATTACHED`/`READER_NONE`. Returns whether that holds on return.
    pub fn wait_read_pos(&self, want: u64, timeout: Option<Duration>) -> bool {
        self.wait_on(
            &self.read_seq,
            &self.writer_waiters,
            || {
                self.read_pos.load(Ordering::Acquire) >= want
                    || self.reader_state.load(Ordering::SeqCst) > READER_ATTACHED
            },
            timeout,
        )
    }

    // ---- reader side ----

    /// Release up to `pos` (monotonic) and wake a writer waiting for room.
    pub fn publish_read_pos(&self, pos: u64) {
        self.read_pos.store(pos, Ordering::Release);
        self.bump(&self.read_seq, &self.writer_waiters);
    }

    /// Set the reader status and wake a waiting writer.
    pub fn set_reader_state(&self, st: u32) {
        self.reader_state.store(st, Ordering::SeqCst);
        self.bump(&self.read_seq, &self.writer_waiters);
    }

    /// Wait (at most `timeout`) until the frontier is at least `want` or the stream is no
    /// longer open. Returns whether that holds on return.
    pub fn wait_frontier(&self, want: u64, timeout: Option<Duration>) -> bool {
        self.wait_on(
            &self.frontier_seq,
            &self.reader_waiters,
            || {
                self.frontier.load(Ordering::Acquire) >= want
                    || self.state.load(Ordering::SeqCst) != STATE_OPEN
            },
            timeout,
        )
    }

    /// Current frontier (Acquire).
    pub fn frontier(&self) -> u64 {
        self.frontier.load(Ordering::Acquire)
    }

    /// Current reader position (Acquire).
    pub fn read_pos(&self) -> u64 {
        self.read_pos.load(Ordering::Acquire)
    }

    /// Current state code (Acquire).
    pub fn state(&self) -> u32 {
        self.state.load(Ordering::Acquire)
    }

    /// Abort reason code (meaningful when aborted).
    pub fn reason(&self) -> u32 {
        self.reason.load(Ordering::Acquire)
    }

    /// Total length (`u64::MAX` when unknown).
    pub fn total_len(&self) -> u64 {
        self.total_len.load(Ordering::Acquire)
    }

    /// Reader status code.
    pub fn reader_state(&self) -> u32 {
        self.reader_state.load(Ordering::SeqCst)
    }

    /// Number of readers blocked on the frontier (for tests of the fast path).
    pub fn reader_waiters(&self) -> u32 {
        self.reader_waiters.load(Ordering::SeqCst)
    }
}
