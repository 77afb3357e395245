//! The receiver (consumer side) of one raw connection, sans-IO: it owns every bit of protocol
//! state (the header being read, offers, grants, the payload in progress, the peer's shared
//! segments and their descriptors, pull copies and their progress, the output and its
//! short-write cursor) and says through [`RecvMachine::poll`] which I/O to start next. The
//! shell only starts that I/O and feeds the completions back.
//!
//! `D` is a destination handle (e.g. a registered span of a stream ring), `F` a descriptor of
//! a segment the peer shared (kept, never touched: the shell copies from its raw fd).

use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use super::auth::Gate;
use super::error::ProtocolError;
use super::place::Lender;
use super::wire::{
    ChunkKey, HEADER_LEN, MAX_TAIL, Malformed, Msg, PULL_TAIL_LEN, RefuseReason, SegmentFrame,
    decode_pull_tail,
};
use super::{MAX_OFFERS, MAX_SEGMENTS};

/// Largest single pull copy (a registered-buffer I/O must fit one registration window).
pub const PULL_MAX_IO: usize = 256 << 20;

/// The next I/O a receiver wants started.
#[derive(Debug, PartialEq, Eq)]
pub enum RecvIo<D> {
    /// Read up to `want` header bytes (wait for all of them: `MSG_WAITALL`); feed them to
    /// [`RecvMachine::on_header_bytes`] (or [`RecvMachine::on_eof`] for none).
    Header {
        /// Bytes still missing.
        want: usize,
    },
    /// Read payload bytes into `dest[at..at + len]`; report [`RecvMachine::on_payload`].
    Payload {
        /// The chunk.
        key: ChunkKey,
        /// Its destination (lent until the completion).
        dest: D,
        /// Offset in the destination (resumes after a short read).
        at: usize,
        /// Bytes still missing.
        len: usize,
    },
    /// Write these bytes (grants, refusals, acks); report [`RecvMachine::on_written`].
    Write(Vec<u8>),
    /// Write a `Lend` frame with the read-write descriptor of lend `id` (a ring's data segment)
    /// attached; report [`RecvMachine::on_written`].
    Lend {
        /// The landing's lend id.
        id: u64,
        /// Segment id on this connection.
        seg: u32,
        /// The frame.
        frame: Vec<u8>,
    },
    /// Copy `len` bytes at offset `off` of the shared file `fd` into `dest[at..at + len]`;
    /// report [`RecvMachine::on_copied`] (or [`RecvMachine::on_copy_failed`]).
    Copy {
        /// Copy id (for the completion).
        id: u32,
        /// The chunk.
        key: ChunkKey,
        /// The peer's segment file.
        fd: RawFd,
        /// Offset in the file.
        off: u64,
        /// The destination (lent until the completion).
        dest: D,
        /// Offset in the destination.
        at: usize,
        /// Bytes.
        len: usize,
    },
}

/// What the receiver learned.
#[derive(Debug, PartialEq, Eq)]
pub enum RecvEvent<D> {
    /// The peer offers a chunk (to send or to be pulled): answer with
    /// [`RecvMachine::grant`] or [`RecvMachine::refuse`] (now or later).
    Offer(ChunkKey),
    /// A chunk has landed completely in its destination (an Ack is queued).
    Landed(ChunkKey, D),
    /// The peer shares segment `seg` of `len` bytes; its descriptor is held as
    /// [`RecvMachine::segment_fd`] (check it; close the connection if it is not acceptable).
    Share {
        /// Segment id.
        seg: u32,
        /// Length in bytes.
        len: u64,
    },
    /// The peer retired segment `seg` (its descriptor is dropped).
    Unshare {
        /// Segment id.
        seg: u32,
    },
    /// The producer said who it is (after authenticating, when the connection is
    /// authenticated): its node name.
    Peer {
        /// Node name.
        name: String,
    },
    /// The producer asks to write a chunk in place: answer with [`RecvMachine::place`] or
    /// [`RecvMachine::refuse`] (now or later).
    Reserve(ChunkKey),
    /// A placed chunk is written (an Ack is queued): land it.
    Written(ChunkKey),
    /// A placed chunk will not be written: give its range back.
    Withdrawn(ChunkKey),
}

struct Payload<D> {
    key: ChunkKey,
    /// None while lent to a read.
    dest: Option<D>,
    done: u64,
}

struct CopyState<D> {
    key: ChunkKey,
    seg: u32,
    off: u64,
    done: u64,
    /// None while lent to a copy.
    dest: Option<D>,
}

struct Seg<F> {
    len: u64,
    fd: F,
}

/// Receiver-side protocol state of one raw connection (see the module docs).
pub struct RecvMachine<D, F = OwnedFd> {
    max_len: u64,
    /// The handshake, while the peer is not authenticated.
    gate: Option<Gate>,
    /// Authenticated: the first raw frame must be the producer's `Hello`.
    need_hello: bool,
    /// The producer's name, once it said it.
    peer: Option<String>,
    /// A failure whose last words (a handshake Reject) are being written.
    failing: Option<ProtocolError>,
    hdr: [u8; HEADER_LEN + MAX_TAIL],
    have: usize,
    /// Bytes of the frame being read (HEADER_LEN, or more for a Pull).
    frame_len: usize,
    reading: bool,
    writing: bool,
    closing: bool,
    /// Offers (and pulls) not yet answered.
    offered: Vec<ChunkKey>,
    /// Pulls not yet answered: where they lie.
    pulls: HashMap<ChunkKey, (u32, u64)>,
    /// Granted, waiting for Data.
    granted: HashMap<ChunkKey, D>,
    payload: Option<Payload<D>>,
    segments: HashMap<u32, Seg<F>>,
    /// Descriptors received and not yet claimed by a Share frame.
    fds: VecDeque<F>,
    copies: HashMap<u32, CopyState<D>>,
    /// Zero-copy reservations, placements and lent rings.
    lender: Lender,
    /// The unwritten rest of the last write (goes before anything else).
    rest: Vec<u8>,
    /// Copies whose next piece is to be started.
    ready: VecDeque<u32>,
    next_copy: u32,
    out: Vec<u8>,
}

impl<D, F> std::fmt::Debug for RecvMachine<D, F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecvMachine")
            .field("offered", &self.offered.len())
            .field("granted", &self.granted.len())
            .field("segments", &self.segments.len())
            .field("copies", &self.copies.len())
            .field("closing", &self.closing)
            .finish_non_exhaustive()
    }
}

impl<D, F: AsRawFd> RecvMachine<D, F> {
    /// A receiver accepting chunks of up to `max_len` bytes.
    pub fn new(max_len: u64) -> Self {
        RecvMachine {
            max_len,
            gate: None,
            need_hello: false,
            peer: None,
            failing: None,
            hdr: [0; HEADER_LEN + MAX_TAIL],
            have: 0,
            frame_len: HEADER_LEN,
            reading: false,
            writing: false,
            closing: false,
            offered: Vec::new(),
            pulls: HashMap::new(),
            granted: HashMap::new(),
            payload: None,
            segments: HashMap::new(),
            fds: VecDeque::new(),
            copies: HashMap::new(),
            lender: Lender::default(),
            rest: Vec::new(),
            ready: VecDeque::new(),
            next_copy: 0,
            out: Vec::new(),
        }
    }

    /// A receiver that first authenticates its peer through `gate` (its opening frame is
    /// queued at once), then expects the producer's `Hello` before any other frame.
    pub fn with_auth(max_len: u64, mut gate: Gate) -> Self {
        let mut m = RecvMachine::new(max_len);
        m.out = gate.take_output();
        m.gate = Some(gate);
        m
    }

    /// Whether the peer is authenticated and named (always, without authentication).
    pub fn authenticated(&self) -> bool {
        self.gate.is_none() && !self.need_hello
    }

    /// The producer's node name, once it said it.
    pub fn peer_name(&self) -> Option<&str> {
        self.peer.as_deref()
    }

    /// The next I/O to start (call until None). Nothing once [`RecvMachine::close`]d.
    pub fn poll(&mut self) -> Option<RecvIo<D>> {
        if self.closing {
            return None;
        }
        if !self.writing {
            if !self.rest.is_empty() {
                self.writing = true;
                return Some(RecvIo::Write(std::mem::take(&mut self.rest)));
            }
            if let Some((id, seg, frame)) = self.lender.next_lend() {
                self.writing = true;
                return Some(RecvIo::Lend { id, seg, frame });
            }
            if !self.out.is_empty() {
                self.writing = true;
                return Some(RecvIo::Write(std::mem::take(&mut self.out)));
            }
        }
        if self.failing.is_some() {
            return None;
        }
        if let Some(g) = &self.gate {
            if self.reading {
                return None;
            }
            self.reading = true;
            return Some(RecvIo::Header { want: g.want() });
        }
        while let Some(id) = self.ready.pop_front() {
            let Some(c) = self.copies.get_mut(&id) else {
                continue;
            };
            // Segments with copies in flight cannot be unshared, so the segment is there.
            let Some(seg) = self.segments.get(&c.seg) else {
                continue;
            };
            let Some(dest) = c.dest.take() else {
                continue;
            };
            let len = ((c.key.len - c.done) as usize).min(PULL_MAX_IO);
            return Some(RecvIo::Copy {
                id,
                key: c.key,
                fd: seg.fd.as_raw_fd(),
                off: c.off + c.done,
                dest,
                at: c.done as usize,
                len,
            });
        }
        if self.reading {
            return None;
        }
        match &mut self.payload {
            None => {
                self.reading = true;
                Some(RecvIo::Header {
                    want: self.frame_len - self.have,
                })
            }
            Some(p) => {
                let dest = p.dest.take()?;
                self.reading = true;
                Some(RecvIo::Payload {
                    key: p.key,
                    dest,
                    at: p.done as usize,
                    len: (p.key.len - p.done) as usize,
                })
            }
        }
    }

    fn outstanding(&self, key: &ChunkKey) -> Result<(), ProtocolError> {
        let copying = self.copies.values().any(|c| c.key == *key);
        let busy = self.offered.contains(key) || self.granted.contains_key(key);
        if busy || copying || self.lender.outstanding(key) {
            return Err(ProtocolError::chunk(
                "offer repeated while outstanding",
                *key,
            ));
        }
        let n = self.offered.len() + self.granted.len() + self.copies.len() + self.lender.placed();
        if n >= MAX_OFFERS {
            return Err(ProtocolError::chunk("too many outstanding offers", *key));
        }
        Ok(())
    }

    /// Descriptors that came with the bytes of the last header read (`truncated`: the peer
    /// passed more than the read could take).
    pub fn on_fds(&mut self, fds: Vec<F>, truncated: bool) -> Result<(), ProtocolError> {
        self.fds.extend(fds);
        if truncated || self.fds.len() > MAX_SEGMENTS {
            self.fds.clear();
            return Err(ProtocolError::ExtraDescriptors);
        }
        Ok(())
    }

    /// The peer closed the connection while a header was to be read.
    pub fn on_eof(&mut self) -> Result<(), ProtocolError> {
        self.reading = false;
        if self.gate.is_some() || self.need_hello {
            return Err(ProtocolError::Auth(crate::auth::AuthError::Protocol(
                "the peer closed the connection before authenticating".into(),
            )));
        }
        if self.have > 0 {
            return Err(ProtocolError::Closed { mid_frame: true });
        }
        Ok(())
    }

    /// Fail with `e`, after writing what the handshake still has to say (a Reject).
    fn fail(&mut self, e: ProtocolError) -> Result<Option<RecvEvent<D>>, ProtocolError> {
        if let Some(g) = &mut self.gate {
            self.out.extend(g.take_output());
        }
        if self.out.is_empty() && !self.writing {
            return Err(e);
        }
        self.failing = Some(e);
        Ok(None)
    }

    fn on_gate_bytes(&mut self, bytes: &[u8]) -> Result<Option<RecvEvent<D>>, ProtocolError> {
        let Some(g) = &mut self.gate else {
            return Ok(None);
        };
        if bytes.len() > g.want() {
            return Err(ProtocolError::Misuse("handshake bytes fed out of turn"));
        }
        if let Err(e) = g.feed(bytes) {
            return self.fail(e);
        }
        self.out.extend(g.take_output());
        if g.peer().is_some() {
            self.gate = None;
            self.need_hello = true;
        }
        Ok(None)
    }

    /// Header bytes came in (at most what [`RecvIo::Header`] asked for).
    pub fn on_header_bytes(&mut self, bytes: &[u8]) -> Result<Option<RecvEvent<D>>, ProtocolError> {
        self.reading = false;
        if bytes.is_empty() {
            return self.on_eof().map(|()| None);
        }
        if self.gate.is_some() {
            return self.on_gate_bytes(bytes);
        }
        if self.payload.is_some() || bytes.len() > self.frame_len - self.have {
            return Err(ProtocolError::Misuse("header bytes fed out of turn"));
        }
        self.hdr[self.have..self.have + bytes.len()].copy_from_slice(bytes);
        self.have += bytes.len();
        if self.have < HEADER_LEN {
            return Ok(None);
        }
        let mut h = [0u8; HEADER_LEN];
        h.copy_from_slice(&self.hdr[..HEADER_LEN]);
        let msg = Msg::decode(&h, self.max_len)?;
        let tail = msg.tail_len();
        if tail > 0 && self.have < HEADER_LEN + tail {
            self.frame_len = HEADER_LEN + tail;
            return Ok(None);
        }
        self.have = 0;
        self.frame_len = HEADER_LEN;
        if self.need_hello && !matches!(msg, Msg::Hello { .. }) {
            return Err(ProtocolError::NoHello(msg.kind()));
        }
        match msg {
            Msg::Hello { len } => {
                if self.peer.is_some() {
                    return Err(ProtocolError::HelloTwice);
                }
                let name = &self.hdr[HEADER_LEN..HEADER_LEN + len as usize];
                let name = std::str::from_utf8(name).map_err(|_| ProtocolError::BadName)?;
                self.need_hello = false;
                self.peer = Some(name.to_string());
                Ok(Some(RecvEvent::Peer {
                    name: name.to_string(),
                }))
            }
            Msg::Offer(key) => {
                self.outstanding(&key)?;
                self.offered.push(key);
                Ok(Some(RecvEvent::Offer(key)))
            }
            Msg::Pull(key) => {
                let mut t = [0u8; PULL_TAIL_LEN];
                t.copy_from_slice(&self.hdr[HEADER_LEN..HEADER_LEN + PULL_TAIL_LEN]);
                let (seg, at) = decode_pull_tail(&t)?;
                let Some(s) = self.segments.get(&seg) else {
                    return Err(ProtocolError::chunk(
                        "pull from a segment that was not shared",
                        key,
                    ));
                };
                if at.checked_add(key.len).is_none_or(|end| end > s.len) {
                    return Err(ProtocolError::chunk(
                        "pull beyond the end of its shared segment",
                        key,
                    ));
                }
                self.outstanding(&key)?;
                self.offered.push(key);
                self.pulls.insert(key, (seg, at));
                Ok(Some(RecvEvent::Offer(key)))
            }
            Msg::Share(s) => self.on_share(s),
            Msg::Reserve(key) => {
                self.outstanding(&key)?;
                self.offered.push(key);
                self.lender.on_reserve(key);
                Ok(Some(RecvEvent::Reserve(key)))
            }
            Msg::Written(key) => {
                self.lender.on_written(&key)?;
                self.out.extend_from_slice(&Msg::Ack(key).encode());
                Ok(Some(RecvEvent::Written(key)))
            }
            Msg::Withdraw(key) => {
                self.lender.on_withdraw(&key)?;
                Ok(Some(RecvEvent::Withdrawn(key)))
            }
            Msg::Unshare(SegmentFrame { seg, .. }) => {
                if !self.segments.contains_key(&seg) {
                    return Err(ProtocolError::segment(
                        "unshare of a segment that was not shared",
                        seg,
                    ));
                }
                let busy = self.pulls.values().any(|p| p.0 == seg)
                    || self.copies.values().any(|c| c.seg == seg);
                if busy {
                    return Err(ProtocolError::segment(
                        "unshare of a segment with chunks in flight",
                        seg,
                    ));
                }
                self.segments.remove(&seg);
                Ok(Some(RecvEvent::Unshare { seg }))
            }
            Msg::Data(key) => {
                let Some(d) = self.granted.remove(&key) else {
                    return Err(ProtocolError::chunk(
                        "data for a chunk that was not granted",
                        key,
                    ));
                };
                self.payload = Some(Payload {
                    key,
                    dest: Some(d),
                    done: 0,
                });
                Ok(None)
            }
            m => Err(Malformed::WrongDirection(m.kind()).into()),
        }
    }

    fn on_share(&mut self, s: SegmentFrame) -> Result<Option<RecvEvent<D>>, ProtocolError> {
        if self.segments.contains_key(&s.seg) {
            return Err(ProtocolError::segment("segment shared twice", s.seg));
        }
        if self.segments.len() >= MAX_SEGMENTS {
            return Err(ProtocolError::segment("too many shared segments", s.seg));
        }
        let Some(fd) = self.fds.pop_front() else {
            return Err(ProtocolError::segment(BAD_SHARE, s.seg));
        };
        self.segments.insert(s.seg, Seg { len: s.len, fd });
        Ok(Some(RecvEvent::Share {
            seg: s.seg,
            len: s.len,
        }))
    }

    fn answer(&mut self, key: &ChunkKey) -> Result<(), ProtocolError> {
        let i = self
            .offered
            .iter()
            .position(|k| k == key)
            .ok_or(ProtocolError::chunk(
                "answer to a chunk that is not offered",
                *key,
            ))?;
        self.offered.swap_remove(i);
        Ok(())
    }

    /// Grant an offered chunk into `dest` (which must hold `key.len` bytes): a Grant goes out,
    /// or, for a pulled chunk, a copy is queued.
    pub fn grant(&mut self, key: &ChunkKey, dest: D) -> Result<(), ProtocolError> {
        if self.lender.is_reserve(key) {
            return Err(ProtocolError::Misuse(
                "a reservation is answered with a place or a refusal",
            ));
        }
        self.answer(key)?;
        if let Some((seg, off)) = self.pulls.remove(key) {
            let id = self.next_copy;
            self.next_copy = self.next_copy.wrapping_add(1) & super::tag::Tag::MAX_SLOT;
            self.copies.insert(
                id,
                CopyState {
                    key: *key,
                    seg,
                    off,
                    done: 0,
                    dest: Some(dest),
                },
            );
            self.ready.push_back(id);
            return Ok(());
        }
        self.granted.insert(*key, dest);
        self.out.extend_from_slice(&Msg::Grant(*key).encode());
        Ok(())
    }

    /// Refuse an offered chunk.
    pub fn refuse(&mut self, key: &ChunkKey, reason: RefuseReason) -> Result<(), ProtocolError> {
        self.answer(key)?;
        self.pulls.remove(key);
        self.lender.answered(key);
        self.out
            .extend_from_slice(&Msg::Refuse(*key, reason).encode());
        Ok(())
    }

    /// Let the producer write the reserved `key` itself at `at` of lend `id` (a ring data
    /// segment of `len` bytes, lent with its descriptor on first use on this connection).
    pub fn place(
        &mut self,
        key: &ChunkKey,
        id: u64,
        len: u64,
        at: u64,
    ) -> Result<(), ProtocolError> {
        if !self.lender.is_reserve(key) {
            return Err(ProtocolError::Misuse(
                "placement of a chunk that is not reserved",
            ));
        }
        let frame = self.lender.place(key, id, len, at)?;
        self.answer(key)?;
        self.out.extend_from_slice(&frame);
        Ok(())
    }

    /// Retire lend `id` on this connection (its ring is gone); false while chunks are placed
    /// in it (ask again later) or when it is not lent here.
    pub fn unlend(&mut self, id: u64) -> bool {
        match self.lender.unlend(id) {
            Some(f) => {
                self.out.extend_from_slice(&f);
                true
            }
            None => false,
        }
    }

    /// Whether `key` is a zero-copy reservation waiting for its answer.
    pub fn is_reserve(&self, key: &ChunkKey) -> bool {
        self.lender.is_reserve(key)
    }

    /// Lend ids lent on this connection.
    pub fn lent_ids(&self) -> Vec<u64> {
        self.lender.lent_ids()
    }

    /// On close: every chunk placed and not written (their ranges go back).
    pub fn abandon_placed(&mut self) -> Vec<ChunkKey> {
        self.lender.abandon()
    }

    /// A payload read of `n` bytes finished; `dest` comes back. `n == 0`: the peer closed.
    pub fn on_payload(&mut self, dest: D, n: usize) -> Result<Option<RecvEvent<D>>, ProtocolError> {
        self.reading = false;
        let Some(p) = self.payload.as_mut().filter(|p| p.dest.is_none()) else {
            return Err(ProtocolError::Misuse("payload completion out of turn"));
        };
        p.dest = Some(dest);
        if self.closing {
            return Ok(None);
        }
        if n == 0 {
            return Err(ProtocolError::Closed { mid_frame: true });
        }
        p.done += n as u64;
        if p.done > p.key.len {
            return Err(ProtocolError::Misuse("read beyond the chunk"));
        }
        if p.done < p.key.len {
            return Ok(None);
        }
        let key = p.key;
        let dest = self.payload.take().and_then(|p| p.dest);
        self.out.extend_from_slice(&Msg::Ack(key).encode());
        Ok(dest.map(|d| RecvEvent::Landed(key, d)))
    }

    /// Copy `id` moved `n` bytes; `dest` comes back. When the chunk is complete an Ack is
    /// queued and it is [`RecvEvent::Landed`]; a short copy is resumed by the next poll.
    pub fn on_copied(
        &mut self,
        id: u32,
        dest: D,
        n: usize,
    ) -> Result<Option<RecvEvent<D>>, ProtocolError> {
        let Some(c) = self.copies.get_mut(&id).filter(|c| c.dest.is_none()) else {
            return Err(ProtocolError::Misuse("copy completion out of turn"));
        };
        c.dest = Some(dest);
        if self.closing {
            return Ok(None);
        }
        if n == 0 {
            return Err(ProtocolError::chunk(
                "the shared segment ended before the chunk",
                c.key,
            ));
        }
        c.done += n as u64;
        if c.done < c.key.len {
            self.ready.push_back(id);
            return Ok(None);
        }
        let Some(c) = self.copies.remove(&id) else {
            return Ok(None);
        };
        self.out.extend_from_slice(&Msg::Ack(c.key).encode());
        Ok(c.dest.map(|d| RecvEvent::Landed(c.key, d)))
    }

    /// Copy `id` failed; `dest` comes back (the connection should close: see
    /// [`RecvMachine::abandon`]).
    pub fn on_copy_failed(&mut self, id: u32, dest: D) {
        if let Some(c) = self.copies.get_mut(&id) {
            c.dest = Some(dest);
        }
    }

    /// A write finished: `n` of `buf`'s bytes went out; the rest goes first next time. Once
    /// the last words of a failed handshake are out, this returns its error.
    pub fn on_written(&mut self, buf: Vec<u8>, n: usize) -> Result<(), ProtocolError> {
        self.writing = false;
        if n < buf.len() && !self.closing {
            let mut rest = buf;
            rest.drain(..n);
            self.rest = rest;
        }
        if self.out.is_empty()
            && self.rest.is_empty()
            && let Some(e) = self.failing.take()
        {
            return Err(e);
        }
        Ok(())
    }

    /// Stop: no new I/O; completions still due only hand their buffers back.
    pub fn close(&mut self) {
        self.closing = true;
    }

    /// Whether I/O is outstanding (reads, writes or copies not completed).
    pub fn busy(&self) -> bool {
        self.reading || self.writing || self.copies.values().any(|c| c.dest.is_none())
    }

    /// Whether a header is partly read or a payload is in progress.
    pub fn mid_frame(&self) -> bool {
        self.have > 0 || self.payload.is_some()
    }

    /// Whether segment `seg` is shared (declared and not retired).
    pub fn has_segment(&self, seg: u32) -> bool {
        self.segments.contains_key(&seg)
    }

    /// The descriptor of shared segment `seg`.
    pub fn segment_fd(&self, seg: u32) -> Option<&F> {
        self.segments.get(&seg).map(|s| &s.fd)
    }

    /// Segments shared right now.
    pub fn segments(&self) -> usize {
        self.segments.len()
    }

    /// On close: every destination granted and not filled (the caller frees them). Call when
    /// not [`RecvMachine::busy`].
    pub fn abandon(&mut self) -> Vec<(ChunkKey, D)> {
        let mut v: Vec<(ChunkKey, D)> = self.granted.drain().collect();
        if let Some(Payload {
            key, dest: Some(d), ..
        }) = self.payload.take()
        {
            v.push((key, d));
        }
        for (_, c) in self.copies.drain() {
            if let Some(d) = c.dest {
                v.push((c.key, d));
            }
        }
        v
    }
}

/// The violation for a share frame whose descriptor is missing or unfit.
pub const BAD_SHARE: &str = "shared descriptor missing or not a memory file of the declared size";
