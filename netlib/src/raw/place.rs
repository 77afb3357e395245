//! Zero-copy bookkeeping of one connection, sans-IO: the consumer lends a ring's data segment
//! and places chunks in it ([`Lender`], inside [`super::RecvMachine`]); the producer writes them
//! in place ([`Borrower`], inside [`super::SendMachine`]). See [`super::wire`] for the frames.
//!
//! What lands is decided here, by protocol: a `Written` counts only for a chunk placed on this
//! connection and not yet written or withdrawn; anything else is a violation that closes the
//! connection, and nothing of it lands.

use std::collections::{HashMap, HashSet, VecDeque};

use super::error::ProtocolError;
use super::wire::{ChunkKey, Msg, SegmentFrame, encode_pull_tail};

/// The consumer's side: reservations, placements, lent segments.
#[derive(Debug, Default)]
pub struct Lender {
    /// Reservations not yet answered.
    reserves: HashSet<ChunkKey>,
    /// Placed, waiting for Written or Withdraw: their segment.
    placed: HashMap<ChunkKey, u32>,
    /// Segments lent on this connection: segment → (lend id, length).
    lent: HashMap<u32, (u64, u64)>,
    /// Lend id (the landing's, one per ring) → segment.
    by_id: HashMap<u64, u32>,
    /// Lend frames to write (each with its descriptor), with their lend id.
    lends: VecDeque<(u64, SegmentFrame)>,
    next_seg: u32,
}

impl Lender {
    /// A reservation came.
    pub fn on_reserve(&mut self, key: ChunkKey) {
        self.reserves.insert(key);
    }

    /// Whether `key` is an unanswered reservation.
    pub fn is_reserve(&self, key: &ChunkKey) -> bool {
        self.reserves.contains(key)
    }

    /// The reservation of `key` is answered (refused); true if it was one.
    pub fn answered(&mut self, key: &ChunkKey) -> bool {
        self.reserves.remove(key)
    }

    /// Whether `key` is reserved or placed here.
    pub fn outstanding(&self, key: &ChunkKey) -> bool {
        self.reserves.contains(key) || self.placed.contains_key(key)
    }

    /// Placements not yet written.
    pub fn placed(&self) -> usize {
        self.placed.len()
    }

    /// Place the reserved `key` at `at` of lend `id` (a ring of `len` bytes); returns the Place
    /// frame to queue. A lend not yet on this connection is queued first ([`Lender::next_lend`]).
    pub fn place(
        &mut self,
        key: &ChunkKey,
        id: u64,
        len: u64,
        at: u64,
    ) -> Result<Vec<u8>, ProtocolError> {
        if !self.reserves.remove(key) {
            return Err(ProtocolError::Misuse(
                "placement of a chunk that is not reserved",
            ));
        }
        if at.checked_add(key.len).is_none_or(|end| end > 2 * len) {
            return Err(ProtocolError::Misuse("placement outside the lent segment"));
        }
        let seg = match self.by_id.get(&id) {
            Some(s) => *s,
            None => {
                self.next_seg = self.next_seg.wrapping_add(1).max(1);
                let seg = self.next_seg;
                self.by_id.insert(id, seg);
                self.lent.insert(seg, (id, len));
                self.lends.push_back((id, SegmentFrame { seg, len }));
                seg
            }
        };
        self.placed.insert(*key, seg);
        let mut f = Msg::Place(*key).encode().to_vec();
        f.extend_from_slice(&encode_pull_tail(seg, at));
        Ok(f)
    }

    /// The next Lend frame to write with its descriptor: (lend id, segment, frame).
    pub fn next_lend(&mut self) -> Option<(u64, u32, Vec<u8>)> {
        let (id, s) = self.lends.pop_front()?;
        Some((id, s.seg, Msg::Lend(s).encode().to_vec()))
    }

    /// The producer says `key` is written: it lands (its Ack is the caller's to queue).
    pub fn on_written(&mut self, key: &ChunkKey) -> Result<(), ProtocolError> {
        self.placed
            .remove(key)
            .map(|_| ())
            .ok_or(ProtocolError::chunk(
                "written for a chunk that was not placed",
                *key,
            ))
    }

    /// The producer will not write `key`.
    pub fn on_withdraw(&mut self, key: &ChunkKey) -> Result<(), ProtocolError> {
        self.placed
            .remove(key)
            .map(|_| ())
            .ok_or(ProtocolError::chunk(
                "withdrawal of a chunk that was not placed",
                *key,
            ))
    }

    /// Retire lend `id` if it is lent here and nothing is placed in it: its Unlend frame.
    pub fn unlend(&mut self, id: u64) -> Option<Vec<u8>> {
        let seg = *self.by_id.get(&id)?;
        if self.placed.values().any(|s| *s == seg) {
            return None;
        }
        self.by_id.remove(&id);
        let (_, len) = self.lent.remove(&seg)?;
        self.lends.retain(|(i, _)| *i != id);
        Some(Msg::Unlend(SegmentFrame { seg, len }).encode().to_vec())
    }

    /// Lend ids lent on this connection.
    pub fn lent_ids(&self) -> Vec<u64> {
        self.by_id.keys().copied().collect()
    }

    /// On close: every placement not written (their ranges go back).
    pub fn abandon(&mut self) -> Vec<ChunkKey> {
        self.reserves.clear();
        self.placed.drain().map(|(k, _)| k).collect()
    }
}

/// The producer's side: reservations, placements, segments lent to us.
#[derive(Debug)]
pub struct Borrower<F> {
    reserving: HashSet<ChunkKey>,
    /// Placed, not yet written: (segment, offset).
    placed: HashMap<ChunkKey, (u32, u64)>,
    written: HashMap<ChunkKey, u32>,
    /// Segments lent to us: id → (length, descriptor).
    lent: HashMap<u32, (u64, F)>,
    /// Descriptors received, not yet claimed by a Lend frame.
    fds: VecDeque<F>,
}

impl<F> Default for Borrower<F> {
    fn default() -> Self {
        Borrower {
            reserving: HashSet::new(),
            placed: HashMap::new(),
            written: HashMap::new(),
            lent: HashMap::new(),
            fds: VecDeque::new(),
        }
    }
}

impl<F> Borrower<F> {
    /// Chunks reserved, placed or written and not yet acked.
    pub fn in_flight(&self) -> usize {
        self.reserving.len() + self.placed.len() + self.written.len()
    }

    /// Whether `key` is in flight here.
    pub fn busy(&self, key: &ChunkKey) -> bool {
        self.reserving.contains(key)
            || self.placed.contains_key(key)
            || self.written.contains_key(key)
    }

    /// A reservation goes out.
    pub fn reserve(&mut self, key: ChunkKey) {
        self.reserving.insert(key);
    }

    /// Descriptors came with received bytes.
    pub fn on_fds(&mut self, fds: Vec<F>) -> usize {
        self.fds.extend(fds);
        self.fds.len()
    }

    /// A Lend frame: its descriptor is the next one received.
    pub fn on_lend(&mut self, s: SegmentFrame) -> Result<(), ProtocolError> {
        if self.lent.contains_key(&s.seg) {
            return Err(ProtocolError::segment("segment lent twice", s.seg));
        }
        let fd = self.fds.pop_front().ok_or(ProtocolError::segment(
            "lend frame without its descriptor",
            s.seg,
        ))?;
        self.lent.insert(s.seg, (s.len, fd));
        Ok(())
    }

    /// An Unlend frame.
    pub fn on_unlend(&mut self, seg: u32) -> Result<(), ProtocolError> {
        let in_use =
            self.placed.values().any(|p| p.0 == seg) || self.written.values().any(|s| *s == seg);
        if in_use {
            return Err(ProtocolError::segment(
                "unlend of a segment with chunks placed in it",
                seg,
            ));
        }
        self.lent
            .remove(&seg)
            .map(|_| ())
            .ok_or(ProtocolError::segment(
                "unlend of a segment that was not lent",
                seg,
            ))
    }

    /// A Place answer: `key` goes at `at` of segment `seg`.
    pub fn on_place(&mut self, key: ChunkKey, seg: u32, at: u64) -> Result<(), ProtocolError> {
        if !self.reserving.remove(&key) {
            return Err(ProtocolError::chunk(
                "place for a chunk that was not reserved",
                key,
            ));
        }
        let Some((len, _)) = self.lent.get(&seg) else {
            return Err(ProtocolError::chunk(
                "place in a segment that was not lent",
                key,
            ));
        };
        let n = *len;
        // The ring is mapped twice back to back: a place may wrap around its end.
        if at >= n || key.len > n {
            return Err(ProtocolError::chunk("place outside its lent segment", key));
        }
        // Two places in the same ring must not overlap (offsets on a circle of `n` bytes):
        // each is ours alone to write.
        let overlaps = self.placed.iter().any(|(k, (s, a))| {
            *s == seg && ((at + n - a) % n < k.len || (a + n - at) % n < key.len)
        });
        if overlaps {
            return Err(ProtocolError::chunk("place overlapping another place", key));
        }
        self.placed.insert(key, (seg, at));
        Ok(())
    }

    /// A refusal of a reservation; false if `key` was not reserving.
    pub fn on_refuse(&mut self, key: &ChunkKey) -> bool {
        self.reserving.remove(key)
    }

    /// An ack of a written chunk; false if `key` was not written.
    pub fn on_ack(&mut self, key: &ChunkKey) -> bool {
        self.written.remove(key).is_some()
    }

    /// The placed `key` is written (or withdrawn when `written` is false): its frame.
    pub fn finish(&mut self, key: ChunkKey, written: bool) -> Result<Vec<u8>, ProtocolError> {
        let Some((seg, _)) = self.placed.remove(&key) else {
            return Err(ProtocolError::Misuse(
                "written or withdrawn chunk was not placed",
            ));
        };
        if written {
            self.written.insert(key, seg);
            Ok(Msg::Written(key).encode().to_vec())
        } else {
            Ok(Msg::Withdraw(key).encode().to_vec())
        }
    }

    /// Segment `seg` lent to us: its length and descriptor.
    pub fn lent(&self, seg: u32) -> Option<(u64, &F)> {
        self.lent.get(&seg).map(|(l, f)| (*l, f))
    }

    /// On close: every chunk reserved, placed or written and not acked.
    pub fn abandon(&mut self) -> Vec<ChunkKey> {
        let mut v: Vec<ChunkKey> = self.reserving.drain().collect();
        v.extend(self.placed.drain().map(|(k, _)| k));
        v.extend(self.written.drain().map(|(k, _)| k));
        v
    }
}
