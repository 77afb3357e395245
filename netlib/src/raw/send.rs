//! The sender (producer side) of one raw connection, sans-IO: it owns every bit of protocol
//! state (chunks offered, granted, being written, waiting for their ack; pulls; the segments
//! shared on this connection; the control block being written and its short-write cursor;
//! the answer being read) and says through [`SendMachine::poll`] which I/O to start next.
//!
//! `S` is a payload source handle (e.g. a registered buffer and the chunk's place in it).

use std::collections::{HashMap, HashSet, VecDeque};
use std::os::fd::OwnedFd;

use super::auth::Gate;
use super::error::ProtocolError;
use super::place::Borrower;
use super::wire::{
    ChunkKey, HEADER_LEN, Malformed, Msg, PULL_TAIL_LEN, SegmentFrame, decode_pull_tail,
    encode_pull_tail,
};

/// The next I/O a sender wants started.
#[derive(Debug, PartialEq, Eq)]
pub enum SendIo<S> {
    /// Receive up to `want` bytes of answers; feed them to [`SendMachine::on_read`] (or
    /// [`SendMachine::on_eof`] for none).
    Read {
        /// Buffer size to offer the kernel.
        want: usize,
    },
    /// Write control bytes (offers, pulls, data headers); report [`SendMachine::on_written`].
    Write(Vec<u8>),
    /// Write a `Share` frame with the descriptor of segment `seg` attached; report
    /// [`SendMachine::on_written`].
    Share {
        /// Segment id.
        seg: u32,
        /// The frame.
        frame: Vec<u8>,
    },
    /// Write payload bytes of `key` from `src`: `len` bytes from offset `at` of the chunk;
    /// report [`SendMachine::on_payload_written`].
    Payload {
        /// The chunk.
        key: ChunkKey,
        /// Its source (lent until the completion).
        src: S,
        /// Offset within the chunk (resumes after a short write).
        at: usize,
        /// Bytes left.
        len: usize,
    },
}

/// What the sender learned.
#[derive(Debug, PartialEq, Eq)]
pub enum SendEvent<S> {
    /// The consumer landed the chunk; the source comes back.
    Acked(ChunkKey, S),
    /// The consumer refused the chunk.
    Refused(ChunkKey, super::wire::RefuseReason, S),
    /// The consumer lent a ring segment (its descriptor is [`SendMachine::lent`]).
    Lent {
        /// Segment id.
        seg: u32,
        /// Length.
        len: u64,
    },
    /// The consumer retired a lent segment.
    Unlent {
        /// Segment id.
        seg: u32,
    },
    /// A reserved chunk is to be written at `at` of lent segment `seg`; then
    /// [`SendMachine::written`] (or [`SendMachine::withdraw`]).
    Placed {
        /// The chunk.
        key: ChunkKey,
        /// Segment id.
        seg: u32,
        /// Offset in the segment (mapped twice back to back).
        at: u64,
    },
    /// A reservation was refused.
    ReserveRefused(ChunkKey, super::wire::RefuseReason),
    /// A chunk written in place landed.
    WrittenAcked(ChunkKey),
}

struct Payload<S> {
    key: ChunkKey,
    /// None while lent to a write.
    src: Option<S>,
    done: u64,
}

/// Sender-side protocol state of one raw connection (see the module docs).
pub struct SendMachine<S, F = OwnedFd> {
    max_len: u64,
    /// Zero copy: reservations, placements, segments lent to us.
    borrower: Borrower<F>,
    /// The handshake, while the consumer is not authenticated.
    gate: Option<Gate>,
    /// Our name, to say once authenticated.
    hello: Option<String>,
    /// A failure whose last words (a handshake Reject) are being written.
    failing: Option<ProtocolError>,
    offered: HashMap<ChunkKey, S>,
    /// Granted: a Data header and the payload are to go out.
    ready: VecDeque<(ChunkKey, S)>,
    /// Pulled chunks not yet acked or refused.
    pulled: HashMap<ChunkKey, S>,
    /// The control block to write next (taken by a write; its unwritten rest comes back).
    ctl: Vec<u8>,
    /// `ctl` starts with the Share frame of this segment (its descriptor goes with it).
    ctl_share: Option<u32>,
    /// Control bytes queued while `ctl` is being written.
    ctl_next: Vec<u8>,
    /// Share frames to send before the next control block.
    shares: VecDeque<SegmentFrame>,
    /// Segments shared on this connection.
    shared: HashSet<u32>,
    /// Payload to send once `ctl` (ending with its Data header) is written.
    after_ctl: Option<(ChunkKey, S)>,
    payload: Option<Payload<S>>,
    unacked: HashMap<ChunkKey, S>,
    hdr: [u8; HEADER_LEN + PULL_TAIL_LEN],
    have: usize,
    /// Bytes of the frame being read (HEADER_LEN, or more for a Place).
    frame_len: usize,
    reading: bool,
    writing: bool,
    closing: bool,
}

impl<S, F> std::fmt::Debug for SendMachine<S, F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SendMachine")
            .field("in_flight", &self.in_flight())
            .field("shared", &self.shared.len())
            .field("closing", &self.closing)
            .finish_non_exhaustive()
    }
}

impl<S, F> SendMachine<S, F> {
    /// A sender (chunks up to `max_len` bytes).
    pub fn new(max_len: u64) -> Self {
        SendMachine {
            max_len,
            borrower: Borrower::default(),
            gate: None,
            hello: None,
            failing: None,
            offered: HashMap::new(),
            ready: VecDeque::new(),
            pulled: HashMap::new(),
            ctl: Vec::new(),
            ctl_share: None,
            ctl_next: Vec::new(),
            shares: VecDeque::new(),
            shared: HashSet::new(),
            after_ctl: None,
            payload: None,
            unacked: HashMap::new(),
            hdr: [0; HEADER_LEN + PULL_TAIL_LEN],
            have: 0,
            frame_len: HEADER_LEN,
            reading: false,
            writing: false,
            closing: false,
        }
    }

    /// A sender that first authenticates the consumer through `gate` and then says who it is
    /// (`name`, 1..=255 bytes) before any other frame. Chunks queued meanwhile wait.
    pub fn with_auth(max_len: u64, gate: Gate, name: &str) -> Self {
        let mut m = SendMachine::new(max_len);
        m.gate = Some(gate);
        m.hello = Some(name.to_string());
        m
    }

    /// Whether the consumer is authenticated (always, without authentication).
    pub fn authenticated(&self) -> bool {
        self.gate.is_none()
    }

    /// Queue an offer of `key` whose payload is `src`.
    pub fn offer(&mut self, key: ChunkKey, src: S) -> Result<(), (ProtocolError, S)> {
        let src = self.check_new(key, src)?;
        self.ctl_next.extend_from_slice(&Msg::Offer(key).encode());
        self.offered.insert(key, src);
        Ok(())
    }

    /// Share segment `seg` of `len` bytes (local connections): the frame goes out with its
    /// descriptor before any control bytes queued later. Returns false if it is shared already.
    pub fn share(&mut self, seg: u32, len: u64) -> bool {
        if !self.shared.insert(seg) {
            return false;
        }
        self.shares.push_back(SegmentFrame { seg, len });
        true
    }

    /// Retire segment `seg` (no chunk of it may be in flight); nothing if it is not shared.
    pub fn unshare(&mut self, seg: u32, len: u64) {
        if self.shared.remove(&seg) {
            self.ctl_next
                .extend_from_slice(&Msg::Unshare(SegmentFrame { seg, len }).encode());
        }
    }

    /// Whether segment `seg` is shared on this connection.
    pub fn is_shared(&self, seg: u32) -> bool {
        self.shared.contains(&seg)
    }

    /// Segments shared on this connection.
    pub fn shared_segments(&self) -> usize {
        self.shared.len()
    }

    /// Queue a pull of `key`: its bytes lie at `at` of shared segment `seg` (share it first),
    /// and `src` (the buffer holding them) comes back with the ack or refusal.
    pub fn pull(
        &mut self,
        key: ChunkKey,
        src: S,
        seg: u32,
        at: u64,
    ) -> Result<(), (ProtocolError, S)> {
        let src = self.check_new(key, src)?;
        self.ctl_next.extend_from_slice(&Msg::Pull(key).encode());
        self.ctl_next.extend_from_slice(&encode_pull_tail(seg, at));
        self.pulled.insert(key, src);
        Ok(())
    }

    fn check_new<T>(&self, key: ChunkKey, src: T) -> Result<T, (ProtocolError, T)> {
        if key.len == 0 || key.len > self.max_len {
            let m = if key.len == 0 {
                Malformed::ZeroLength
            } else {
                Malformed::TooLong {
                    len: key.len,
                    max: self.max_len,
                }
            };
            return Err((m.into(), src));
        }
        let busy = self.offered.contains_key(&key)
            || self.pulled.contains_key(&key)
            || self.unacked.contains_key(&key)
            || self.ready.iter().any(|(k, _)| *k == key)
            || self.payload.as_ref().is_some_and(|p| p.key == key)
            || self.after_ctl.as_ref().is_some_and(|p| p.0 == key)
            || self.borrower.busy(&key);
        if busy {
            let e = ProtocolError::chunk("chunk already in flight on this connection", key);
            return Err((e, src));
        }
        Ok(src)
    }

    /// Chunks not yet acked or refused.
    pub fn in_flight(&self) -> usize {
        self.offered.len()
            + self.pulled.len()
            + self.ready.len()
            + self.unacked.len()
            + usize::from(self.payload.is_some())
            + usize::from(self.after_ctl.is_some())
            + self.borrower.in_flight()
    }

    /// Ask to write `key` in place, in the consumer's ring (local connections): the answer is
    /// [`SendEvent::Placed`] or [`SendEvent::ReserveRefused`].
    pub fn reserve(&mut self, key: ChunkKey) -> Result<(), ProtocolError> {
        self.check_new(key, ()).map_err(|(e, ())| e)?;
        self.ctl_next.extend_from_slice(&Msg::Reserve(key).encode());
        self.borrower.reserve(key);
        Ok(())
    }

    /// The placed `key` is written: it lands ([`SendEvent::WrittenAcked`]).
    pub fn written(&mut self, key: ChunkKey) -> Result<(), ProtocolError> {
        let f = self.borrower.finish(key, true)?;
        self.ctl_next.extend_from_slice(&f);
        Ok(())
    }

    /// The placed `key` will not be written: its range goes back to the consumer.
    pub fn withdraw(&mut self, key: ChunkKey) -> Result<(), ProtocolError> {
        let f = self.borrower.finish(key, false)?;
        self.ctl_next.extend_from_slice(&f);
        Ok(())
    }

    /// Descriptors that came with the last bytes read (local connections).
    pub fn on_fds(&mut self, fds: Vec<F>, truncated: bool) -> Result<(), ProtocolError> {
        if self.borrower.on_fds(fds) > super::MAX_SEGMENTS || truncated {
            return Err(ProtocolError::ExtraDescriptors);
        }
        Ok(())
    }

    /// Segment `seg` lent to us: its length and descriptor.
    pub fn lent(&self, seg: u32) -> Option<(u64, &F)> {
        self.borrower.lent(seg)
    }

    /// On close: every chunk reserved, placed or written in place and not acked.
    pub fn abandon_placed(&mut self) -> Vec<ChunkKey> {
        self.borrower.abandon()
    }

    /// The next I/O to start (call until None). Nothing once [`SendMachine::close`]d.
    pub fn poll(&mut self) -> Option<SendIo<S>> {
        if self.closing {
            return None;
        }
        if !self.writing {
            if let Some(p) = &mut self.payload {
                if let Some(src) = p.src.take() {
                    self.writing = true;
                    return Some(SendIo::Payload {
                        key: p.key,
                        src,
                        at: p.done as usize,
                        len: (p.key.len - p.done) as usize,
                    });
                }
            } else {
                if self.ctl.is_empty() {
                    match &mut self.gate {
                        Some(g) => self.ctl = g.take_output(),
                        None if self.failing.is_none() => self.next_block(),
                        None => {}
                    }
                }
                if !self.ctl.is_empty() {
                    self.writing = true;
                    let bytes = std::mem::take(&mut self.ctl);
                    return Some(match self.ctl_share.take() {
                        Some(seg) => SendIo::Share { seg, frame: bytes },
                        None => SendIo::Write(bytes),
                    });
                }
            }
        }
        // Always listening, also when idle: a consumer that goes away is noticed at once (its
        // pooled connection is dropped), not when the next chunk is written into the void.
        if !self.reading && self.failing.is_none() {
            self.reading = true;
            return Some(SendIo::Read {
                want: HEADER_LEN * 16,
            });
        }
        None
    }

    /// Build the next control block: a Share frame alone (its descriptor travels with exactly
    /// that frame), else the queued control bytes and the Data header of the next granted
    /// chunk (its payload follows right after).
    fn next_block(&mut self) {
        if let Some(s) = self.shares.pop_front() {
            self.ctl.extend_from_slice(&Msg::Share(s).encode());
            self.ctl_share = Some(s.seg);
            return;
        }
        std::mem::swap(&mut self.ctl, &mut self.ctl_next);
        if let Some((key, src)) = self.ready.pop_front() {
            self.ctl.extend_from_slice(&Msg::Data(key).encode());
            self.after_ctl = Some((key, src));
        }
    }

    /// A control write finished: `n` of `buf`'s bytes went out; the rest goes first next time.
    /// Once the last words of a failed handshake are out, this returns its error.
    pub fn on_written(&mut self, buf: Vec<u8>, n: usize) -> Result<(), ProtocolError> {
        self.writing = false;
        if self.closing {
            return Ok(());
        }
        if n < buf.len() {
            let mut rest = buf;
            rest.drain(..n);
            self.ctl = rest;
            return Ok(());
        }
        if let Some(e) = self.failing.take() {
            return Err(e);
        }
        if let Some((key, src)) = self.after_ctl.take() {
            self.payload = Some(Payload {
                key,
                src: Some(src),
                done: 0,
            });
        }
        Ok(())
    }

    /// A payload write of `n` bytes finished; `src` comes back. Short writes resume at the new
    /// position.
    pub fn on_payload_written(&mut self, src: S, n: usize) -> Result<(), ProtocolError> {
        self.writing = false;
        let Some(p) = self.payload.as_mut().filter(|p| p.src.is_none()) else {
            return Err(ProtocolError::Misuse("payload write out of turn"));
        };
        p.src = Some(src);
        if self.closing {
            return Ok(());
        }
        p.done += n as u64;
        if p.done >= p.key.len
            && let Some(Payload {
                key, src: Some(s), ..
            }) = self.payload.take()
        {
            self.unacked.insert(key, s);
        }
        Ok(())
    }

    /// The peer closed the connection: an error if chunks were still in flight.
    pub fn on_eof(&mut self) -> Result<(), ProtocolError> {
        self.reading = false;
        if self.gate.is_some() {
            return Err(ProtocolError::Auth(crate::auth::AuthError::Protocol(
                "the consumer closed the connection before authenticating".into(),
            )));
        }
        if self.in_flight() > 0 || self.have > 0 {
            return Err(ProtocolError::Closed {
                mid_frame: self.have > 0,
            });
        }
        Ok(())
    }

    /// Bytes read from the peer (any amount); returns the events they complete.
    pub fn on_read(&mut self, mut bytes: &[u8]) -> Result<Vec<SendEvent<S>>, ProtocolError> {
        self.reading = false;
        let mut ev = Vec::new();
        if bytes.is_empty() {
            self.on_eof()?;
            return Ok(ev);
        }
        if let Some(g) = &mut self.gate {
            match g.feed(bytes) {
                Ok(n) => bytes = &bytes[n..],
                Err(e) => {
                    let last = g.take_output();
                    if last.is_empty() {
                        return Err(e);
                    }
                    self.ctl.extend(last);
                    self.failing = Some(e);
                    return Ok(ev);
                }
            }
            if g.peer().is_some() {
                // Whatever the handshake still says goes first, then who we are.
                self.ctl.extend(g.take_output());
                self.gate = None;
                if let Some(name) = self.hello.take() {
                    self.ctl.extend_from_slice(
                        &Msg::Hello {
                            len: name.len() as u64,
                        }
                        .encode(),
                    );
                    self.ctl.extend_from_slice(name.as_bytes());
                }
            } else {
                return Ok(ev);
            }
        }
        while !bytes.is_empty() {
            let n = (self.frame_len - self.have).min(bytes.len());
            self.hdr[self.have..self.have + n].copy_from_slice(&bytes[..n]);
            self.have += n;
            bytes = &bytes[n..];
            if self.have < self.frame_len {
                continue;
            }
            let mut h = [0u8; HEADER_LEN];
            h.copy_from_slice(&self.hdr[..HEADER_LEN]);
            let msg = Msg::decode(&h, self.max_len)?;
            let tail = msg.tail_len();
            if tail > 0 && self.frame_len == HEADER_LEN {
                if tail != PULL_TAIL_LEN {
                    return Err(Malformed::WrongDirection(msg.kind()).into());
                }
                self.frame_len = HEADER_LEN + tail;
                continue;
            }
            self.have = 0;
            self.frame_len = HEADER_LEN;
            if let Some(e) = self.on_frame(msg)? {
                ev.push(e);
            }
        }
        Ok(ev)
    }

    fn on_frame(&mut self, msg: Msg) -> Result<Option<SendEvent<S>>, ProtocolError> {
        Ok(Some(match msg {
            Msg::Grant(key) => {
                let s = self.offered.remove(&key).ok_or(ProtocolError::chunk(
                    "grant for a chunk that was not offered",
                    key,
                ))?;
                self.ready.push_back((key, s));
                return Ok(None);
            }
            Msg::Refuse(key, reason) => {
                if self.borrower.on_refuse(&key) {
                    return Ok(Some(SendEvent::ReserveRefused(key, reason)));
                }
                let s = self
                    .offered
                    .remove(&key)
                    .or_else(|| self.pulled.remove(&key))
                    .ok_or(ProtocolError::chunk(
                        "refusal of a chunk that was not offered",
                        key,
                    ))?;
                SendEvent::Refused(key, reason, s)
            }
            Msg::Ack(key) => {
                if self.borrower.on_ack(&key) {
                    return Ok(Some(SendEvent::WrittenAcked(key)));
                }
                let s = self
                    .unacked
                    .remove(&key)
                    .or_else(|| self.pulled.remove(&key))
                    .ok_or(ProtocolError::chunk(
                        "ack for a chunk that was not sent",
                        key,
                    ))?;
                SendEvent::Acked(key, s)
            }
            Msg::Lend(seg) => {
                self.borrower.on_lend(seg)?;
                SendEvent::Lent {
                    seg: seg.seg,
                    len: seg.len,
                }
            }
            Msg::Unlend(seg) => {
                self.borrower.on_unlend(seg.seg)?;
                SendEvent::Unlent { seg: seg.seg }
            }
            Msg::Place(key) => {
                let mut t = [0u8; PULL_TAIL_LEN];
                t.copy_from_slice(&self.hdr[HEADER_LEN..]);
                let (seg, at) = decode_pull_tail(&t)?;
                self.borrower.on_place(key, seg, at)?;
                SendEvent::Placed { key, seg, at }
            }
            m => return Err(Malformed::WrongDirection(m.kind()).into()),
        }))
    }

    /// Stop: no new I/O; completions still due only hand their buffers back.
    pub fn close(&mut self) {
        self.closing = true;
    }

    /// Whether I/O is outstanding.
    pub fn busy(&self) -> bool {
        self.reading || self.writing
    }

    /// On close: every chunk not acked or refused, with its source. Call when not
    /// [`SendMachine::busy`].
    pub fn abandon(&mut self) -> Vec<(ChunkKey, S)> {
        let mut v: Vec<(ChunkKey, S)> = self.offered.drain().collect();
        v.extend(self.pulled.drain());
        v.extend(self.ready.drain(..));
        v.extend(self.unacked.drain());
        v.extend(self.after_ctl.take());
        if let Some(Payload {
            key, src: Some(s), ..
        }) = self.payload.take()
        {
            v.push((key, s));
        }
        v
    }
}
