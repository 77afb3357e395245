//! Raw bulk connections: chunks land through io_uring straight into the place the receiver
//! chooses (e.g. a stream ring's contiguous range in registered foreign memory), sent from
//! registered buffers (WriteFixed → ReadFixed).
//!
//! Each raw connection also carries the tiny flow control of DESIGN §2 step 5:
//! producer `Offer(key)` → consumer `Grant(key)` when it has room (or `Refuse(key, reason)`) →
//! producer sends a `Data(key)` header and `key.len` payload bytes → consumer lands them and
//! sends `Ack(key)`. Several offers may be outstanding on one connection.
//!
//! On a local (UNIX) connection the producer can instead let the consumer copy the chunk itself,
//! once, from the producer's registered memory: `Share(segment)` passes a read-only descriptor
//! of a buffer arena's memfd (`SCM_RIGHTS`, with the frame), then `Pull(key, segment, at)`
//! says where the chunk lies in it; the consumer answers with `Refuse` or, once it has room,
//! reads the bytes through io_uring (`ReadFixed` at a file offset) straight into the
//! destination it chose and sends `Ack`. That is one memory copy instead of two (into and out
//! of the socket), and no grant round trip. `Unshare(segment)` retires a segment whose memory
//! the producer freed.
//!
//! Every frame is one 40-byte header:
//! `magic "SPRW" | kind u8 | reason u8 | 0u16 | job u64 | stream u32 | 0u32 | offset u64 | len u64`
//! (little endian). `Share`/`Unshare` carry the segment id in `stream` and its length in `len`
//! (job and offset 0); `Pull` is followed by a 16-byte tail `segment u32 | 0u32 | at u64`. [`RecvMachine`] and [`SendMachine`] are the sans-IO protocol state; the
//! io_uring shells [`RawServer`] (one thread serving many connections) and [`RawClient`]
//! (one thread sending to many consumers) stay thin.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use spate_runtime::{Driver, DriverConfig, FixedBuf, Notifier, Op, Output, RuntimeError};

use crate::endpoint::{Endpoint, EndpointError, Listener, Stream, Via};
use crate::pool::Pool;
use crate::sockopt::{self, SockoptError, Tuning};

/// Frame header size.
pub const HEADER_LEN: usize = 40;
/// Size of the tail that follows a `Pull` header.
pub const PULL_TAIL_LEN: usize = 16;
/// Most segments one connection may share at a time.
pub const MAX_SEGMENTS: usize = 64;
/// Largest single pull copy (a registered-buffer I/O must fit one registration window).
const PULL_MAX_IO: usize = 256 << 20;
const MAGIC: [u8; 4] = *b"SPRW";
/// Default largest chunk accepted (1 GiB).
pub const DEFAULT_MAX_CHUNK: u64 = 1 << 30;
/// Most offers one connection may have outstanding at a receiver.
pub const MAX_OFFERS: usize = 4096;

/// A chunk: `len` bytes at `offset` of `stream` of `job`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkKey {
    /// Job id.
    pub job: u64,
    /// Stream index.
    pub stream: u32,
    /// Byte offset in the stream.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
}

/// Frame kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Producer → consumer: may I send this chunk?
    Offer = 1,
    /// Producer → consumer: the payload follows.
    Data = 2,
    /// Consumer → producer: send it.
    Grant = 3,
    /// Consumer → producer: no (with a reason).
    Refuse = 4,
    /// Consumer → producer: landed.
    Ack = 5,
    /// Producer → consumer (local): a read-only descriptor of my memory comes with this frame.
    Share = 6,
    /// Producer → consumer (local): that segment is gone.
    Unshare = 7,
    /// Producer → consumer (local): copy this chunk yourself from a shared segment.
    Pull = 8,
}

/// Why a consumer refuses a chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefuseReason {
    /// No such job/stream here.
    UnknownStream,
    /// The range is outside the stream.
    OutOfRange,
    /// The stream was aborted or released.
    Aborted,
    /// Larger than the consumer accepts.
    TooLarge,
    /// Any other code.
    Other(u8),
}

impl RefuseReason {
    fn code(self) -> u8 {
        match self {
            RefuseReason::UnknownStream => 1,
            RefuseReason::OutOfRange => 2,
            RefuseReason::Aborted => 3,
            RefuseReason::TooLarge => 4,
            RefuseReason::Other(c) => c,
        }
    }
    fn from_code(c: u8) -> Self {
        match c {
            1 => RefuseReason::UnknownStream,
            2 => RefuseReason::OutOfRange,
            3 => RefuseReason::Aborted,
            4 => RefuseReason::TooLarge,
            c => RefuseReason::Other(c),
        }
    }
}

/// A decoded frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame {
    /// Kind.
    pub kind: Kind,
    /// The chunk.
    pub key: ChunkKey,
    /// Refuse reason (Refuse only).
    pub reason: Option<RefuseReason>,
}

/// What is wrong with a malformed header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    /// Not a spate raw frame.
    #[error("bad magic {0:02x?}")]
    BadMagic([u8; 4]),
    /// Unknown kind byte.
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    /// Reserved bytes not zero, or a reason on a non-Refuse frame.
    #[error("reserved bytes are not zero")]
    Reserved,
    /// A chunk of length zero.
    #[error("chunk length is zero")]
    ZeroLength,
    /// A chunk larger than allowed.
    #[error("chunk length {len} exceeds the maximum {max}")]
    TooLong {
        /// Length.
        len: u64,
        /// Maximum.
        max: u64,
    },
    /// offset + len overflows.
    #[error("offset + length overflows")]
    Overflow,
    /// A frame kind that this side never receives.
    #[error("{0:?} frame sent in the wrong direction")]
    WrongDirection(Kind),
}

/// Errors of raw connections.
#[derive(Debug, thiserror::Error)]
pub enum RawError {
    /// The peer sent a malformed header; the connection is closed.
    #[error("malformed raw frame: {0}")]
    Malformed(#[from] Malformed),
    /// A well-formed frame that breaks the protocol.
    #[error("raw protocol violation: {what} for {key:?}")]
    Protocol {
        /// What happened.
        what: &'static str,
        /// The chunk.
        key: ChunkKey,
    },
    /// The peer closed the connection (mid-frame or mid-payload if `mid_frame`).
    #[error("connection closed by peer{}", if *mid_frame { " in the middle of a frame" } else { "" })]
    Closed {
        /// Whether a frame or payload was cut off.
        mid_frame: bool,
    },
    /// A socket error.
    #[error("raw connection I/O: {0}")]
    Io(#[from] io::Error),
    /// The io_uring runtime failed.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// Connecting or listening failed.
    #[error(transparent)]
    Endpoint(#[from] EndpointError),
    /// Setting socket options failed.
    #[error(transparent)]
    Sockopt(#[from] SockoptError),
    /// The connection is unknown or already closed.
    #[error("no such raw connection {0:?}")]
    NoConnection(ConnId),
    /// The pool is waiting before reconnecting.
    #[error("{endpoint} failed recently; next reconnect attempt in {retry_in:?}")]
    Backoff {
        /// Endpoint.
        endpoint: String,
        /// Time left.
        retry_in: Duration,
    },
}

/// Encode a frame.
pub fn encode(kind: Kind, key: &ChunkKey, reason: Option<RefuseReason>) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[0..4].copy_from_slice(&MAGIC);
    h[4] = kind as u8;
    h[5] = reason.map_or(0, RefuseReason::code);
    h[8..16].copy_from_slice(&key.job.to_le_bytes());
    h[16..20].copy_from_slice(&key.stream.to_le_bytes());
    h[24..32].copy_from_slice(&key.offset.to_le_bytes());
    h[32..40].copy_from_slice(&key.len.to_le_bytes());
    h
}

fn le64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

/// Decode and validate a frame header (chunks up to `max_len` bytes).
pub fn decode(h: &[u8; HEADER_LEN], max_len: u64) -> Result<Frame, Malformed> {
    if h[0..4] != MAGIC {
        let mut m = [0u8; 4];
        m.copy_from_slice(&h[0..4]);
        return Err(Malformed::BadMagic(m));
    }
    let kind = match h[4] {
        1 => Kind::Offer,
        2 => Kind::Data,
        3 => Kind::Grant,
        4 => Kind::Refuse,
        5 => Kind::Ack,
        6 => Kind::Share,
        7 => Kind::Unshare,
        8 => Kind::Pull,
        k => return Err(Malformed::UnknownKind(k)),
    };
    if h[6] != 0 || h[7] != 0 || h[20..24] != [0; 4] || (kind != Kind::Refuse && h[5] != 0) {
        return Err(Malformed::Reserved);
    }
    let key = ChunkKey {
        job: le64(&h[8..16]),
        stream: u32::from_le_bytes([h[16], h[17], h[18], h[19]]),
        offset: le64(&h[24..32]),
        len: le64(&h[32..40]),
    };
    if key.len == 0 {
        return Err(Malformed::ZeroLength);
    }
    let segment = matches!(kind, Kind::Share | Kind::Unshare);
    if segment && (key.job != 0 || key.offset != 0) {
        return Err(Malformed::Reserved);
    }
    // A segment may be larger than any chunk.
    if !segment && key.len > max_len {
        return Err(Malformed::TooLong {
            len: key.len,
            max: max_len,
        });
    }
    if key.offset.checked_add(key.len).is_none() {
        return Err(Malformed::Overflow);
    }
    let reason = (kind == Kind::Refuse).then(|| RefuseReason::from_code(h[5]));
    Ok(Frame { kind, key, reason })
}

/// Encode a `Pull` tail: the chunk lies at `at` of segment `seg`.
pub fn encode_pull_tail(seg: u32, at: u64) -> [u8; PULL_TAIL_LEN] {
    let mut t = [0u8; PULL_TAIL_LEN];
    t[0..4].copy_from_slice(&seg.to_le_bytes());
    t[8..16].copy_from_slice(&at.to_le_bytes());
    t
}

/// Decode a `Pull` tail into (segment, offset in it).
pub fn decode_pull_tail(t: &[u8; PULL_TAIL_LEN]) -> Result<(u32, u64), Malformed> {
    if t[4..8] != [0; 4] {
        return Err(Malformed::Reserved);
    }
    Ok((
        u32::from_le_bytes([t[0], t[1], t[2], t[3]]),
        le64(&t[8..16]),
    ))
}

/// A granted pull: copy `key.len` bytes from offset `at` of the peer's shared segment `seg`
/// into the destination, then report [`RecvMachine::on_pulled`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pull {
    /// The chunk.
    pub key: ChunkKey,
    /// Segment id (as declared by the peer's `Share`).
    pub seg: u32,
    /// Offset of the chunk in the segment.
    pub at: u64,
}

// ---------------------------------------------------------------------------------------------
// Receiver (consumer side), sans-IO.

/// What the receiver wants read next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadNeed {
    /// Header bytes (or a `Pull` tail): `want` more.
    Header {
        /// Bytes still missing.
        want: usize,
    },
    /// Payload: `len` bytes into the destination at offset `at` (resume here after a short read).
    Payload {
        /// The chunk.
        key: ChunkKey,
        /// Offset in the destination.
        at: usize,
        /// Bytes still missing.
        len: usize,
    },
}

/// What the receiver learned.
#[derive(Debug, PartialEq, Eq)]
pub enum RecvEvent<D> {
    /// The peer offers a chunk: answer with [`RecvMachine::grant`] or [`RecvMachine::refuse`]
    /// (now or later).
    Offer(ChunkKey),
    /// A chunk has landed completely in its destination (an Ack is queued).
    Landed(ChunkKey, D),
    /// The peer shares segment `seg` of `len` bytes: its descriptor came with the frame.
    Share {
        /// Segment id.
        seg: u32,
        /// Length in bytes.
        len: u64,
    },
    /// The peer retired segment `seg` (close its descriptor).
    Unshare {
        /// Segment id.
        seg: u32,
    },
}

/// Receiver-side protocol state of one raw connection. `D` is the destination handle.
#[derive(Debug)]
pub struct RecvMachine<D> {
    max_len: u64,
    hdr: [u8; HEADER_LEN + PULL_TAIL_LEN],
    have: usize,
    /// Bytes of the frame being read (HEADER_LEN, or more for a Pull).
    frame_len: usize,
    /// Offers (and pulls) not yet answered.
    offered: Vec<ChunkKey>,
    /// Shared segments: id → length.
    segments: HashMap<u32, u64>,
    /// Pulls not yet answered: where they lie.
    pulls: HashMap<ChunkKey, (u32, u64)>,
    /// Pulls granted and being copied: their segment.
    pulling: HashMap<ChunkKey, u32>,
    /// Granted, waiting for Data.
    granted: HashMap<ChunkKey, D>,
    /// Payload being received: key, destination (None while lent to an I/O), bytes done.
    payload: Option<(ChunkKey, Option<D>, u64)>,
    out: Vec<u8>,
}

impl<D> RecvMachine<D> {
    /// A receiver accepting chunks of up to `max_len` bytes.
    pub fn new(max_len: u64) -> Self {
        RecvMachine {
            max_len,
            hdr: [0; HEADER_LEN + PULL_TAIL_LEN],
            have: 0,
            frame_len: HEADER_LEN,
            offered: Vec::new(),
            segments: HashMap::new(),
            pulls: HashMap::new(),
            pulling: HashMap::new(),
            granted: HashMap::new(),
            payload: None,
            out: Vec::new(),
        }
    }

    /// What to read next.
    pub fn need(&self) -> ReadNeed {
        match &self.payload {
            Some((key, _, done)) => ReadNeed::Payload {
                key: *key,
                at: *done as usize,
                len: (key.len - done) as usize,
            },
            None => ReadNeed::Header {
                want: self.frame_len - self.have,
            },
        }
    }

    fn outstanding(&self, key: &ChunkKey) -> Result<(), RawError> {
        if self.offered.contains(key)
            || self.granted.contains_key(key)
            || self.pulling.contains_key(key)
        {
            return Err(RawError::Protocol {
                what: "offer repeated while outstanding",
                key: *key,
            });
        }
        if self.offered.len() + self.granted.len() + self.pulling.len() >= MAX_OFFERS {
            return Err(RawError::Protocol {
                what: "too many outstanding offers",
                key: *key,
            });
        }
        Ok(())
    }

    /// Feed header bytes (at most what [`ReadNeed::Header`] asked for).
    pub fn on_header_bytes(&mut self, bytes: &[u8]) -> Result<Option<RecvEvent<D>>, RawError> {
        if self.payload.is_some() || bytes.len() > self.frame_len - self.have {
            return Err(RawError::Io(io::Error::other(
                "header bytes fed out of turn",
            )));
        }
        self.hdr[self.have..self.have + bytes.len()].copy_from_slice(bytes);
        self.have += bytes.len();
        if self.have < HEADER_LEN {
            return Ok(None);
        }
        let mut h = [0u8; HEADER_LEN];
        h.copy_from_slice(&self.hdr[..HEADER_LEN]);
        let f = decode(&h, self.max_len)?;
        if f.kind == Kind::Pull && self.have < HEADER_LEN + PULL_TAIL_LEN {
            self.frame_len = HEADER_LEN + PULL_TAIL_LEN;
            return Ok(None);
        }
        self.have = 0;
        self.frame_len = HEADER_LEN;
        let seg = f.key.stream;
        match f.kind {
            Kind::Offer => {
                self.outstanding(&f.key)?;
                self.offered.push(f.key);
                Ok(Some(RecvEvent::Offer(f.key)))
            }
            Kind::Pull => {
                let mut t = [0u8; PULL_TAIL_LEN];
                t.copy_from_slice(&self.hdr[HEADER_LEN..]);
                let (seg, at) = decode_pull_tail(&t)?;
                let Some(&seg_len) = self.segments.get(&seg) else {
                    return Err(RawError::Protocol {
                        what: "pull from a segment that was not shared",
                        key: f.key,
                    });
                };
                if at.checked_add(f.key.len).is_none_or(|end| end > seg_len) {
                    return Err(RawError::Protocol {
                        what: "pull beyond the end of its shared segment",
                        key: f.key,
                    });
                }
                self.outstanding(&f.key)?;
                self.offered.push(f.key);
                self.pulls.insert(f.key, (seg, at));
                Ok(Some(RecvEvent::Offer(f.key)))
            }
            Kind::Share => {
                if self.segments.contains_key(&seg) {
                    return Err(RawError::Protocol {
                        what: "segment shared twice",
                        key: f.key,
                    });
                }
                if self.segments.len() >= MAX_SEGMENTS {
                    return Err(RawError::Protocol {
                        what: "too many shared segments",
                        key: f.key,
                    });
                }
                self.segments.insert(seg, f.key.len);
                Ok(Some(RecvEvent::Share {
                    seg,
                    len: f.key.len,
                }))
            }
            Kind::Unshare => {
                if !self.segments.contains_key(&seg) {
                    return Err(RawError::Protocol {
                        what: "unshare of a segment that was not shared",
                        key: f.key,
                    });
                }
                if self.pulls.values().any(|p| p.0 == seg)
                    || self.pulling.values().any(|s| *s == seg)
                {
                    return Err(RawError::Protocol {
                        what: "unshare of a segment with chunks in flight",
                        key: f.key,
                    });
                }
                self.segments.remove(&seg);
                Ok(Some(RecvEvent::Unshare { seg }))
            }
            Kind::Data => {
                let Some(d) = self.granted.remove(&f.key) else {
                    return Err(RawError::Protocol {
                        what: "data for a chunk that was not granted",
                        key: f.key,
                    });
                };
                self.payload = Some((f.key, Some(d), 0));
                Ok(None)
            }
            k => Err(Malformed::WrongDirection(k).into()),
        }
    }

    fn answer(&mut self, key: &ChunkKey) -> Result<(), RawError> {
        let i = self
            .offered
            .iter()
            .position(|k| k == key)
            .ok_or(RawError::Protocol {
                what: "answer to a chunk that is not offered",
                key: *key,
            })?;
        self.offered.swap_remove(i);
        Ok(())
    }

    /// Grant an offered chunk into `dest` (which must hold `key.len` bytes). For a pulled
    /// chunk nothing is sent: the [`Pull`] and `dest` come back, the caller copies the bytes and
    /// reports [`RecvMachine::on_pulled`].
    pub fn grant(&mut self, key: &ChunkKey, dest: D) -> Result<Option<(Pull, D)>, RawError> {
        self.answer(key)?;
        if let Some((seg, at)) = self.pulls.remove(key) {
            self.pulling.insert(*key, seg);
            return Ok(Some((Pull { key: *key, seg, at }, dest)));
        }
        self.granted.insert(*key, dest);
        self.out.extend_from_slice(&encode(Kind::Grant, key, None));
        Ok(None)
    }

    /// A granted pull has been copied completely (an Ack is queued).
    pub fn on_pulled(&mut self, key: &ChunkKey) -> Result<(), RawError> {
        if self.pulling.remove(key).is_none() {
            return Err(RawError::Protocol {
                what: "pull completion for a chunk that is not being pulled",
                key: *key,
            });
        }
        self.out.extend_from_slice(&encode(Kind::Ack, key, None));
        Ok(())
    }

    /// Refuse an offered chunk.
    pub fn refuse(&mut self, key: &ChunkKey, reason: RefuseReason) -> Result<(), RawError> {
        self.answer(key)?;
        self.pulls.remove(key);
        self.out
            .extend_from_slice(&encode(Kind::Refuse, key, Some(reason)));
        Ok(())
    }

    /// Lend the payload destination to a read (give it back with [`RecvMachine::on_payload`]).
    pub fn take_dest(&mut self) -> Option<D> {
        self.payload.as_mut().and_then(|p| p.1.take())
    }

    /// A payload read of `n` bytes finished; `dest` comes back. A short read is resumed at the
    /// new position by the next [`RecvMachine::need`]. `n == 0` means the peer closed.
    pub fn on_payload(&mut self, dest: D, n: usize) -> Result<Option<RecvEvent<D>>, RawError> {
        let Some((key, slot, done)) = self.payload.as_mut() else {
            return Err(RawError::Io(io::Error::other(
                "payload completion out of turn",
            )));
        };
        *slot = Some(dest);
        if n == 0 {
            return Err(RawError::Closed { mid_frame: true });
        }
        *done += n as u64;
        if *done > key.len {
            return Err(RawError::Io(io::Error::other("read beyond the chunk")));
        }
        if *done < key.len {
            return Ok(None);
        }
        let key = *key;
        let dest = self.payload.take().and_then(|p| p.1);
        self.out.extend_from_slice(&encode(Kind::Ack, &key, None));
        Ok(dest.map(|d| RecvEvent::Landed(key, d)))
    }

    /// Bytes to send to the peer (grants, refusals, acks), drained.
    pub fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }

    /// Whether output is pending.
    pub fn has_output(&self) -> bool {
        !self.out.is_empty()
    }

    /// Whether a header is partly read or a payload is in progress.
    pub fn mid_frame(&self) -> bool {
        self.have > 0 || self.payload.is_some()
    }

    /// Whether segment `seg` is shared (declared and not retired).
    pub fn has_segment(&self, seg: u32) -> bool {
        self.segments.contains_key(&seg)
    }

    /// On close: every destination that was granted but not filled (the caller frees them).
    pub fn abandon(&mut self) -> Vec<(ChunkKey, D)> {
        let mut v: Vec<(ChunkKey, D)> = self.granted.drain().collect();
        if let Some((k, Some(d), _)) = self.payload.take() {
            v.push((k, d));
        }
        v
    }
}

// ---------------------------------------------------------------------------------------------
// Sender (producer side), sans-IO.

/// What the sender wants written next.
#[derive(Debug, PartialEq, Eq)]
pub enum WriteNeed<'a> {
    /// Nothing to write now.
    Nothing,
    /// Control bytes (offers and data headers).
    Control(&'a [u8]),
    /// A `Share` frame: write it with the descriptor of segment `seg` attached.
    Share {
        /// Segment id.
        seg: u32,
        /// The frame.
        frame: &'a [u8],
    },
    /// Payload bytes of `key`: `len` bytes from offset `at` of its source (resume after a
    /// short write).
    Payload {
        /// The chunk.
        key: ChunkKey,
        /// Offset within the chunk.
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
    Refused(ChunkKey, RefuseReason, S),
}

/// Sender-side protocol state of one raw connection. `S` is the payload source handle.
#[derive(Debug)]
pub struct SendMachine<S> {
    max_len: u64,
    offered: HashMap<ChunkKey, S>,
    ready: VecDeque<(ChunkKey, S)>,
    ctl: Vec<u8>,
    ctl_pos: usize,
    /// `ctl` holds a Share frame of this segment (its descriptor goes with the first write).
    ctl_share: Option<u32>,
    ctl_next: Vec<u8>,
    /// Share frames to send before the next control block.
    shares: VecDeque<(u32, [u8; HEADER_LEN])>,
    /// Pulled chunks not yet acked or refused.
    pulled: HashMap<ChunkKey, S>,
    /// Payload to send once `ctl` is written.
    after_ctl: Option<(ChunkKey, S)>,
    /// Payload being sent: key, source (None while lent), bytes done.
    payload: Option<(ChunkKey, Option<S>, u64)>,
    unacked: HashMap<ChunkKey, S>,
    hdr: [u8; HEADER_LEN],
    have: usize,
}

impl<S> SendMachine<S> {
    /// A sender (chunks up to `max_len` bytes).
    pub fn new(max_len: u64) -> Self {
        SendMachine {
            max_len,
            offered: HashMap::new(),
            ready: VecDeque::new(),
            ctl: Vec::new(),
            ctl_pos: 0,
            ctl_share: None,
            ctl_next: Vec::new(),
            shares: VecDeque::new(),
            pulled: HashMap::new(),
            after_ctl: None,
            payload: None,
            unacked: HashMap::new(),
            hdr: [0; HEADER_LEN],
            have: 0,
        }
    }

    /// Queue an offer of `key` whose payload is `src`.
    pub fn offer(&mut self, key: ChunkKey, src: S) -> Result<(), (RawError, S)> {
        let src = self.check_new(key, src)?;
        self.ctl_next
            .extend_from_slice(&encode(Kind::Offer, &key, None));
        self.offered.insert(key, src);
        Ok(())
    }

    /// Share segment `seg` of `len` bytes (local connections): the frame goes out with its
    /// descriptor before any control bytes queued later.
    pub fn share(&mut self, seg: u32, len: u64) {
        let key = ChunkKey {
            job: 0,
            stream: seg,
            offset: 0,
            len,
        };
        self.shares
            .push_back((seg, encode(Kind::Share, &key, None)));
    }

    /// Retire segment `seg` (no chunk of it may be in flight).
    pub fn unshare(&mut self, seg: u32, len: u64) {
        let key = ChunkKey {
            job: 0,
            stream: seg,
            offset: 0,
            len,
        };
        self.ctl_next
            .extend_from_slice(&encode(Kind::Unshare, &key, None));
    }

    /// Queue a pull of `key`: its bytes lie at `at` of shared segment `seg` (share it first),
    /// and `src` (the buffer holding them) comes back with the ack or refusal.
    pub fn pull(&mut self, key: ChunkKey, src: S, seg: u32, at: u64) -> Result<(), (RawError, S)> {
        let src = self.check_new(key, src)?;
        self.ctl_next
            .extend_from_slice(&encode(Kind::Pull, &key, None));
        self.ctl_next.extend_from_slice(&encode_pull_tail(seg, at));
        self.pulled.insert(key, src);
        Ok(())
    }

    fn check_new(&self, key: ChunkKey, src: S) -> Result<S, (RawError, S)> {
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
        if self.offered.contains_key(&key)
            || self.pulled.contains_key(&key)
            || self.unacked.contains_key(&key)
            || self.ready.iter().any(|(k, _)| *k == key)
            || self.payload.as_ref().is_some_and(|p| p.0 == key)
            || self.after_ctl.as_ref().is_some_and(|p| p.0 == key)
        {
            return Err((
                RawError::Protocol {
                    what: "chunk already in flight on this connection",
                    key,
                },
                src,
            ));
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
    }

    /// What to write next (call again after each write completes).
    pub fn need(&mut self) -> WriteNeed<'_> {
        if let Some((key, _, done)) = &self.payload {
            return WriteNeed::Payload {
                key: *key,
                at: *done as usize,
                len: (key.len - done) as usize,
            };
        }
        if self.ctl_pos == self.ctl.len() {
            self.ctl.clear();
            self.ctl_pos = 0;
            self.ctl_share = None;
            if let Some((seg, frame)) = self.shares.pop_front() {
                self.ctl.extend_from_slice(&frame);
                self.ctl_share = Some(seg);
            } else {
                std::mem::swap(&mut self.ctl, &mut self.ctl_next);
                if let Some((key, src)) = self.ready.pop_front() {
                    self.ctl.extend_from_slice(&encode(Kind::Data, &key, None));
                    self.after_ctl = Some((key, src));
                }
            }
        }
        if self.ctl_pos == 0
            && let Some(seg) = self.ctl_share
        {
            WriteNeed::Share {
                seg,
                frame: &self.ctl,
            }
        } else if self.ctl_pos < self.ctl.len() {
            WriteNeed::Control(&self.ctl[self.ctl_pos..])
        } else {
            WriteNeed::Nothing
        }
    }

    /// `n` control bytes were written.
    pub fn on_control_written(&mut self, n: usize) {
        self.ctl_pos = (self.ctl_pos + n).min(self.ctl.len());
        if self.ctl_pos == self.ctl.len()
            && let Some((key, src)) = self.after_ctl.take()
        {
            self.payload = Some((key, Some(src), 0));
        }
    }

    /// Lend the payload source to a write (give it back with [`SendMachine::on_payload_written`]).
    pub fn take_src(&mut self) -> Option<S> {
        self.payload.as_mut().and_then(|p| p.1.take())
    }

    /// A payload write of `n` bytes finished; `src` comes back. Short writes resume at the new
    /// position.
    pub fn on_payload_written(&mut self, src: S, n: usize) -> Result<(), RawError> {
        let Some((key, slot, done)) = self.payload.as_mut() else {
            return Err(RawError::Io(io::Error::other("payload write out of turn")));
        };
        *slot = Some(src);
        *done += n as u64;
        if *done >= key.len {
            let key = *key;
            if let Some((_, Some(s), _)) = self.payload.take() {
                self.unacked.insert(key, s);
            }
        }
        Ok(())
    }

    /// How many header bytes to read next.
    pub fn read_want(&self) -> usize {
        HEADER_LEN - self.have
    }

    /// Feed bytes read from the peer (any amount); returns the events they complete.
    pub fn on_read(&mut self, mut bytes: &[u8]) -> Result<Vec<SendEvent<S>>, RawError> {
        let mut ev = Vec::new();
        while !bytes.is_empty() {
            let n = (HEADER_LEN - self.have).min(bytes.len());
            self.hdr[self.have..self.have + n].copy_from_slice(&bytes[..n]);
            self.have += n;
            bytes = &bytes[n..];
            if self.have < HEADER_LEN {
                break;
            }
            self.have = 0;
            let f = decode(&self.hdr, self.max_len)?;
            match f.kind {
                Kind::Grant => {
                    let s = self.offered.remove(&f.key).ok_or(RawError::Protocol {
                        what: "grant for a chunk that was not offered",
                        key: f.key,
                    })?;
                    self.ready.push_back((f.key, s));
                }
                Kind::Refuse => {
                    let s = self
                        .offered
                        .remove(&f.key)
                        .or_else(|| self.pulled.remove(&f.key))
                        .ok_or(RawError::Protocol {
                            what: "refusal of a chunk that was not offered",
                            key: f.key,
                        })?;
                    let reason = f.reason.unwrap_or(RefuseReason::Other(0));
                    ev.push(SendEvent::Refused(f.key, reason, s));
                }
                Kind::Ack => {
                    let s = self
                        .unacked
                        .remove(&f.key)
                        .or_else(|| self.pulled.remove(&f.key))
                        .ok_or(RawError::Protocol {
                            what: "ack for a chunk that was not sent",
                            key: f.key,
                        })?;
                    ev.push(SendEvent::Acked(f.key, s));
                }
                k => return Err(Malformed::WrongDirection(k).into()),
            }
        }
        Ok(ev)
    }

    /// On close: every chunk not acked or refused, with its source (None while lent to I/O).
    pub fn abandon(&mut self) -> Vec<(ChunkKey, S)> {
        let mut v: Vec<(ChunkKey, S)> = self.offered.drain().collect();
        v.extend(self.pulled.drain());
        v.extend(self.ready.drain(..));
        v.extend(self.unacked.drain());
        v.extend(self.after_ctl.take());
        if let Some((k, Some(s), _)) = self.payload.take() {
            v.push((k, s));
        }
        v
    }
}

// ---------------------------------------------------------------------------------------------
// io_uring shells.

/// Identifies a raw connection within its server or client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u32);

/// Settings of raw servers and clients.
#[derive(Debug, Clone)]
pub struct RawConfig {
    /// Largest chunk accepted/sent.
    pub max_chunk: u64,
    /// Socket tuning (buffers, congestion control).
    pub tuning: Tuning,
    /// Ring parameters.
    pub driver: DriverConfig,
    /// How often a receiver re-asks about offers it answered with [`Offered::Wait`] (it also
    /// re-asks whenever its [`RawServer::waker`] is notified).
    pub retry: Duration,
    /// Connect timeout (clients).
    pub connect_timeout: Duration,
    /// Close pooled client connections idle this long.
    pub idle_close: Duration,
    /// Clients: on local (UNIX) connections, let the consumer copy chunks straight from our
    /// buffer memory (`Share`/`Pull`) instead of sending them through the socket.
    pub share_local: bool,
}

impl Default for RawConfig {
    fn default() -> Self {
        RawConfig {
            max_chunk: DEFAULT_MAX_CHUNK,
            tuning: Tuning::default(),
            driver: DriverConfig::default(),
            retry: Duration::from_millis(2),
            connect_timeout: Duration::from_secs(5),
            idle_close: Duration::from_secs(60),
            share_local: true,
        }
    }
}

/// A receiver's answer to an offer.
#[derive(Debug)]
pub enum Offered {
    /// Land it here (exactly `key.len` bytes; e.g. a span of a stream ring's data mapping).
    Grant(FixedBuf),
    /// Refuse it.
    Refuse(RefuseReason),
    /// No room yet: ask again later.
    Wait,
}

/// The consumer side of a [`RawServer`]: decides where chunks go and learns when they landed.
pub trait Landing {
    /// Where does this chunk go, is there room?
    fn offer(&mut self, conn: ConnId, key: &ChunkKey) -> Offered;
    /// The chunk landed completely in `dest` (the Ack goes out next).
    fn landed(&mut self, conn: ConnId, key: &ChunkKey, dest: FixedBuf);
    /// A granted destination that will not be filled (the connection closed).
    fn abandoned(&mut self, _conn: ConnId, _key: &ChunkKey, _dest: FixedBuf) {}
    /// A connection was accepted.
    fn opened(&mut self, _conn: ConnId) {}
    /// A connection closed (`error` is None for a clean close by the peer).
    fn closed(&mut self, _conn: ConnId, _error: Option<&RawError>) {}
}

const T_ACCEPT: u64 = 1;
const T_READ: u64 = 2;
const T_WRITE: u64 = 3;
const T_WAKE: u64 = 4;
const T_TIMER: u64 = 5;
const T_PULL: u64 = 6;

fn tag(conn: u32, kind: u64) -> u64 {
    ((conn as u64) << 8) | kind
}

/// A pull copy in flight (its destination is lent to the kernel).
struct PullIo {
    key: ChunkKey,
    file: std::sync::Arc<OwnedFd>,
    off: u64,
    done: usize,
}

struct SConn {
    stream: Stream,
    m: RecvMachine<FixedBuf>,
    reading: bool,
    writing: bool,
    dead: Option<Option<RawError>>,
    /// Descriptors received and not yet claimed by a Share frame.
    fds: VecDeque<OwnedFd>,
    /// Shared segments of the peer.
    segs: HashMap<u32, std::sync::Arc<OwnedFd>>,
    /// Pull copies in flight, by slot (the upper bits of their tag).
    pulls: HashMap<u64, PullIo>,
    next_pull: u64,
}

/// Check a descriptor a peer shared: a regular (memory) file at least `len` bytes long.
fn check_shared(fd: &OwnedFd, len: u64) -> Result<(), String> {
    let st = nix::sys::stat::fstat(fd).map_err(|e| format!("fstat: {e}"))?;
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Err("it is not a memory file".into());
    }
    if (st.st_size as u64) < len {
        return Err(format!(
            "it holds {} bytes, the frame declares {len}",
            st.st_size
        ));
    }
    Ok(())
}

/// Receives chunks from many producers on one thread: accepts connections, answers offers
/// through a [`Landing`], lands payloads with ReadFixed straight into the granted buffers.
pub struct RawServer {
    cfg: RawConfig,
    driver: Driver,
    listeners: Vec<Listener>,
    conns: HashMap<u32, SConn>,
    next: u32,
    waiting: VecDeque<(u32, ChunkKey)>,
    waker: Notifier,
    wake_armed: bool,
    timer_armed: bool,
    accepting: Vec<bool>,
    comps: Vec<spate_runtime::Completion>,
}

impl RawServer {
    /// A server with its own io_uring (create it on the thread that runs it).
    pub fn new(cfg: RawConfig) -> Result<RawServer, RawError> {
        Ok(RawServer {
            driver: Driver::new(&cfg.driver)?,
            cfg,
            listeners: Vec::new(),
            conns: HashMap::new(),
            next: 1,
            waiting: VecDeque::new(),
            waker: Notifier::new()?,
            wake_armed: false,
            timer_armed: false,
            accepting: Vec::new(),
            comps: Vec::new(),
        })
    }

    /// Listen on `ep`; returns the endpoint peers connect to (real port for port 0).
    pub fn listen(&mut self, ep: &Endpoint) -> Result<Endpoint, RawError> {
        let l = ep.listen()?;
        let real = l.local_endpoint()?;
        self.listeners.push(l);
        self.accepting.push(false);
        Ok(real)
    }

    /// Serve an already connected stream.
    pub fn add(&mut self, stream: Stream) -> Result<ConnId, RawError> {
        sockopt::tune_raw(&stream, &self.cfg.tuning)?;
        let id = self.next;
        self.next = self.next.wrapping_add(1).max(1);
        self.conns.insert(
            id,
            SConn {
                stream,
                m: RecvMachine::new(self.cfg.max_chunk),
                reading: false,
                writing: false,
                dead: None,
                fds: VecDeque::new(),
                segs: HashMap::new(),
                pulls: HashMap::new(),
                next_pull: 0,
            },
        );
        Ok(ConnId(id))
    }

    /// A handle that wakes this server's thread (e.g. when ring space was released, so waiting
    /// offers are re-asked). Clone it to other threads.
    pub fn waker(&self) -> Notifier {
        self.waker.clone()
    }

    /// The driver (e.g. to register destination regions up front).
    pub fn driver(&mut self) -> &mut Driver {
        &mut self.driver
    }

    /// Open connections.
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// Segments local peers share with this server right now (each holds a descriptor of
    /// their memory).
    pub fn shared_segments(&self) -> usize {
        self.conns.values().map(|c| c.segs.len()).sum()
    }

    /// One turn of the event loop: start I/O, wait (up to `timeout`; None = until something
    /// happens), dispatch completions to `landing`.
    pub fn turn(
        &mut self,
        landing: &mut dyn Landing,
        timeout: Option<Duration>,
    ) -> Result<(), RawError> {
        for i in 0..self.listeners.len() {
            if !self.accepting[i] {
                let fd = self.listeners[i].as_raw_fd();
                self.driver
                    .push(tag(i as u32, T_ACCEPT), Op::Accept { fd })?;
                self.accepting[i] = true;
            }
        }
        if !self.wake_armed {
            self.driver.push(
                tag(0, T_WAKE),
                Op::PollIn {
                    fd: self.waker.fd(),
                },
            )?;
            self.wake_armed = true;
        }
        if !self.waiting.is_empty() && !self.timer_armed {
            self.driver.push(
                tag(0, T_TIMER),
                Op::Timeout {
                    after: self.cfg.retry,
                },
            )?;
            self.timer_armed = true;
        }
        let ids: Vec<u32> = self.conns.keys().copied().collect();
        for id in ids {
            self.kick(id)?;
            self.finish_if_dead(id, landing);
        }
        let mut comps = std::mem::take(&mut self.comps);
        self.driver.wait(timeout, &mut comps)?;
        for c in comps.drain(..) {
            self.on_completion(c, landing)?;
        }
        self.comps = comps;
        Ok(())
    }

    fn kick(&mut self, id: u32) -> Result<(), RawError> {
        let Some(c) = self.conns.get_mut(&id) else {
            return Ok(());
        };
        if c.dead.is_some() {
            return Ok(());
        }
        let fd = c.stream.as_raw_fd();
        if !c.reading {
            match c.m.need() {
                ReadNeed::Header { want } => {
                    let buf = Vec::with_capacity(want);
                    let flags = libc::MSG_WAITALL;
                    // Local peers may pass segment descriptors with their frames.
                    let op = if !c.stream.is_tcp() {
                        Op::RecvFds {
                            fd,
                            buf,
                            flags,
                            max_fds: 2,
                        }
                    } else {
                        Op::Recv { fd, buf, flags }
                    };
                    self.driver.push(tag(id, T_READ), op)?;
                    c.reading = true;
                }
                ReadNeed::Payload { at, len, .. } => {
                    if let Some(dest) = c.m.take_dest() {
                        let len = len.min(1 << 30);
                        self.driver.push(
                            tag(id, T_READ),
                            Op::ReadFixed {
                                fd,
                                buf: dest,
                                at,
                                len,
                            },
                        )?;
                        c.reading = true;
                    }
                }
            }
        }
        if !c.writing && c.m.has_output() {
            let buf = c.m.take_output();
            self.driver
                .push(tag(id, T_WRITE), Op::Send { fd, buf, at: 0 })?;
            c.writing = true;
        }
        Ok(())
    }

    fn kill(&mut self, id: u32, e: Option<RawError>) {
        if let Some(c) = self.conns.get_mut(&id)
            && c.dead.is_none()
        {
            let _ = c.stream.shutdown();
            c.dead = Some(e);
        }
    }

    fn finish_if_dead(&mut self, id: u32, landing: &mut dyn Landing) {
        let done = self
            .conns
            .get(&id)
            .is_some_and(|c| c.dead.is_some() && !c.reading && !c.writing && c.pulls.is_empty());
        if !done {
            return;
        }
        if let Some(mut c) = self.conns.remove(&id) {
            for (k, d) in c.m.abandon() {
                landing.abandoned(ConnId(id), &k, d);
            }
            self.waiting.retain(|(i, _)| *i != id);
            let err = c.dead.take().flatten();
            landing.closed(ConnId(id), err.as_ref());
        }
    }

    fn ask(&mut self, id: u32, key: ChunkKey, landing: &mut dyn Landing) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        let r = match landing.offer(ConnId(id), &key) {
            Offered::Grant(d) if d.len() as u64 >= key.len => match c.m.grant(&key, d) {
                Ok(Some((pull, dest))) => self.start_pull(id, pull, dest, landing),
                Ok(None) => Ok(()),
                Err(e) => Err(e),
            },
            Offered::Grant(d) => {
                tracing::error!(
                    ?key,
                    dest = d.len(),
                    "landing granted a destination shorter than the chunk"
                );
                landing.abandoned(ConnId(id), &key, d);
                c.m.refuse(&key, RefuseReason::Other(255))
            }
            Offered::Refuse(r) => c.m.refuse(&key, r),
            Offered::Wait => {
                self.waiting.push_back((id, key));
                Ok(())
            }
        };
        if let Err(e) = r {
            self.kill(id, Some(e));
        }
    }

    /// Copy a granted pull from the peer's segment into `dest` (resumed after short reads).
    fn start_pull(
        &mut self,
        id: u32,
        pull: Pull,
        dest: FixedBuf,
        landing: &mut dyn Landing,
    ) -> Result<(), RawError> {
        let Some(c) = self.conns.get_mut(&id) else {
            landing.abandoned(ConnId(id), &pull.key, dest);
            return Ok(());
        };
        let Some(file) = c.segs.get(&pull.seg).cloned() else {
            landing.abandoned(ConnId(id), &pull.key, dest);
            return Err(RawError::Protocol {
                what: "pull from a segment whose descriptor is missing",
                key: pull.key,
            });
        };
        let slot = c.next_pull & 0xff_ffff;
        c.next_pull += 1;
        let io = PullIo {
            key: pull.key,
            file,
            off: pull.at,
            done: 0,
        };
        self.submit_pull(id, slot, io, dest)
    }

    fn submit_pull(
        &mut self,
        id: u32,
        slot: u64,
        io: PullIo,
        dest: FixedBuf,
    ) -> Result<(), RawError> {
        let len = (io.key.len as usize - io.done).min(PULL_MAX_IO);
        let op = Op::ReadFixedAt {
            fd: io.file.as_raw_fd(),
            buf: dest,
            at: io.done,
            len,
            off: io.off + io.done as u64,
        };
        let key = io.key;
        match self.driver.push(tag(id, T_PULL) | (slot << 40), op) {
            Ok(_) => {
                if let Some(c) = self.conns.get_mut(&id) {
                    c.pulls.insert(slot, io);
                }
                Ok(())
            }
            Err(e) => {
                // The destination went with the refused op: the connection fails (as a failed
                // payload read does) and the chunk is sent again elsewhere.
                tracing::warn!(?key, error = %e, "queueing a pull copy failed");
                Err(e.into())
            }
        }
    }

    fn on_pull_done(
        &mut self,
        id: u32,
        slot: u64,
        result: io::Result<u32>,
        dest: FixedBuf,
        landing: &mut dyn Landing,
    ) -> Result<(), RawError> {
        let Some(c) = self.conns.get_mut(&id) else {
            return Ok(());
        };
        let Some(mut io) = c.pulls.remove(&slot) else {
            return Ok(());
        };
        let key = io.key;
        let err = match result {
            Ok(0) => Some(RawError::Protocol {
                what: "the shared segment ended before the chunk",
                key,
            }),
            Ok(n) => {
                io.done += n as usize;
                if io.done < key.len as usize && c.dead.is_none() {
                    return self.submit_pull(id, slot, io, dest);
                }
                None
            }
            Err(e) => Some(RawError::Io(e)),
        };
        if let Some(e) = err {
            landing.abandoned(ConnId(id), &key, dest);
            self.kill(id, Some(e));
        } else if c.dead.is_some() || io.done < key.len as usize {
            landing.abandoned(ConnId(id), &key, dest);
        } else {
            match c.m.on_pulled(&key) {
                Ok(()) => landing.landed(ConnId(id), &key, dest),
                Err(e) => {
                    landing.abandoned(ConnId(id), &key, dest);
                    self.kill(id, Some(e));
                }
            }
        }
        Ok(())
    }

    fn retry_waiting(&mut self, landing: &mut dyn Landing) {
        for _ in 0..self.waiting.len() {
            if let Some((id, key)) = self.waiting.pop_front() {
                self.ask(id, key, landing);
            }
        }
    }

    fn on_completion(
        &mut self,
        c: spate_runtime::Completion,
        landing: &mut dyn Landing,
    ) -> Result<(), RawError> {
        let id = (c.tag >> 8) as u32;
        match c.tag & 0xff {
            T_ACCEPT => {
                let i = id as usize;
                if let Some(a) = self.accepting.get_mut(i) {
                    *a = false;
                }
                match (c.result, c.output) {
                    (Ok(_), Output::Fd(fd)) => {
                        let tcp = self.listeners.get(i).is_some_and(Listener::is_tcp);
                        let s = if tcp {
                            Stream::Tcp(std::net::TcpStream::from(fd))
                        } else {
                            Stream::Unix(std::os::unix::net::UnixStream::from(fd))
                        };
                        match self.add(s) {
                            Ok(cid) => landing.opened(cid),
                            Err(e) => tracing::warn!(error = %e, "raw connection setup failed"),
                        }
                    }
                    (Err(e), _) => tracing::warn!(error = %e, "accept failed"),
                    _ => {}
                }
            }
            T_WAKE => {
                self.wake_armed = false;
                self.waker.drain();
                self.retry_waiting(landing);
            }
            T_TIMER => {
                self.timer_armed = false;
                self.retry_waiting(landing);
            }
            T_READ => {
                let Some(conn) = self.conns.get_mut(&id) else {
                    return Ok(());
                };
                conn.reading = false;
                let mut output = c.output;
                if let Output::VecFds(v, fds, truncated) = output {
                    conn.fds.extend(fds);
                    if truncated || conn.fds.len() > MAX_SEGMENTS {
                        let e = io::Error::other(
                            "the peer passed more descriptors than its frames declare",
                        );
                        self.kill(id, Some(e.into()));
                        self.finish_if_dead(id, landing);
                        return Ok(());
                    }
                    output = Output::Vec(v);
                }
                let res = match (c.result, output) {
                    (Ok(n), Output::Vec(v)) => {
                        if n == 0 {
                            let mid = conn.m.mid_frame();
                            Err(if mid {
                                Some(RawError::Closed { mid_frame: true })
                            } else {
                                None
                            })
                        } else {
                            conn.m.on_header_bytes(&v).map_err(Some)
                        }
                    }
                    (Ok(n), Output::Fixed(d)) => conn.m.on_payload(d, n as usize).map_err(Some),
                    (Err(e), Output::Fixed(d)) => {
                        let _ = conn.m.on_payload(d, 0);
                        Err(Some(e.into()))
                    }
                    (Err(e), _) => Err(Some(e.into())),
                    (Ok(_), _) => Ok(None),
                };
                match res {
                    Ok(Some(RecvEvent::Offer(k))) => {
                        if conn.dead.is_none() {
                            self.ask(id, k, landing);
                        }
                    }
                    Ok(Some(RecvEvent::Landed(k, d))) => landing.landed(ConnId(id), &k, d),
                    Ok(Some(RecvEvent::Share { seg, len })) => {
                        let key = ChunkKey {
                            job: 0,
                            stream: seg,
                            offset: 0,
                            len,
                        };
                        let checked = match conn.fds.pop_front() {
                            None => Err("share frame without a descriptor".to_string()),
                            Some(fd) => check_shared(&fd, len).map(|()| fd),
                        };
                        match checked {
                            Ok(fd) => {
                                conn.segs.insert(seg, std::sync::Arc::new(fd));
                            }
                            Err(why) => {
                                tracing::warn!(seg, %why, "refusing a shared segment");
                                self.kill(
                                    id,
                                    Some(RawError::Protocol {
                                        what: "shared descriptor missing or not a memory file of the declared size",
                                        key,
                                    }),
                                );
                            }
                        }
                    }
                    Ok(Some(RecvEvent::Unshare { seg })) => {
                        conn.segs.remove(&seg);
                    }
                    Ok(None) => {}
                    Err(e) => self.kill(id, e),
                }
                self.kick(id)?;
                self.finish_if_dead(id, landing);
            }
            T_PULL => {
                if let Output::Fixed(dest) = c.output {
                    self.on_pull_done(id, c.tag >> 40, c.result, dest, landing)?;
                }
                self.kick(id)?;
                self.finish_if_dead(id, landing);
            }
            T_WRITE => {
                let Some(conn) = self.conns.get_mut(&id) else {
                    return Ok(());
                };
                conn.writing = false;
                match (c.result, c.output) {
                    (Ok(n), Output::Vec(mut v))
                        if conn.dead.is_none() && (n as usize) < v.len() =>
                    {
                        // Short send: put the rest back in front of any new output.
                        v.drain(..n as usize);
                        let more = conn.m.take_output();
                        v.extend_from_slice(&more);
                        let fd = conn.stream.as_raw_fd();
                        self.driver
                            .push(tag(id, T_WRITE), Op::Send { fd, buf: v, at: 0 })?;
                        conn.writing = true;
                    }
                    (Err(e), _) => self.kill(id, Some(e.into())),
                    _ => {}
                }
                self.kick(id)?;
                self.finish_if_dead(id, landing);
            }
            _ => {}
        }
        Ok(())
    }
}

/// A chunk's payload: `len` bytes of `buf` from `at`.
#[derive(Debug)]
struct Src {
    buf: FixedBuf,
    at: usize,
}

/// What happened to chunks handed to a [`RawClient`].
#[derive(Debug)]
pub enum ClientEvent {
    /// Landed at the consumer; the buffer comes back.
    Acked {
        /// Connection.
        conn: ConnId,
        /// Chunk.
        key: ChunkKey,
        /// The source buffer.
        buf: FixedBuf,
    },
    /// Refused by the consumer.
    Refused {
        /// Connection.
        conn: ConnId,
        /// Chunk.
        key: ChunkKey,
        /// Why.
        reason: RefuseReason,
        /// The source buffer.
        buf: FixedBuf,
    },
    /// The connection failed before the chunk was acked: resend it (maybe elsewhere).
    Failed {
        /// Connection.
        conn: ConnId,
        /// Chunk.
        key: ChunkKey,
        /// The source buffer.
        buf: FixedBuf,
    },
    /// A connection closed (with the error, None when closed cleanly).
    Closed {
        /// Connection.
        conn: ConnId,
        /// Why.
        error: Option<String>,
    },
}

struct CConn {
    stream: Stream,
    endpoint: Option<Endpoint>,
    m: SendMachine<Src>,
    reading: bool,
    writing: bool,
    /// Base offset (`Src::at`) of the payload source lent to an in-flight write.
    lent_at: usize,
    dead: Option<Option<RawError>>,
    last_used: Instant,
    /// A local (UNIX) connection: chunks in shareable memory go as pulls.
    local: bool,
    /// Segments shared on this connection: region id → segment id.
    segs: HashMap<u64, u32>,
}

/// A region whose memory local consumers may read: its read-only descriptor.
struct Export {
    seg: u32,
    len: u64,
    fd: OwnedFd,
    region: std::sync::Weak<spate_runtime::Region>,
}

/// What a [`RawClient`] has sent, by path.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RawStats {
    /// Chunks written through the socket (offer, grant, data).
    pub sent: u64,
    /// Chunks the consumer copied from our shared memory (pull).
    pub pulled: u64,
}

/// Sends chunks to many consumers from one thread: offers, waits for grants, writes payloads
/// with WriteFixed from registered buffers, reports acks. Connections are pooled by endpoint.
/// On local connections, chunks in buffer arenas are pulled by the consumer instead (see the
/// module docs).
pub struct RawClient {
    cfg: RawConfig,
    driver: Driver,
    conns: HashMap<u32, CConn>,
    next: u32,
    pool: Pool<u32>,
    events: Vec<ClientEvent>,
    comps: Vec<spate_runtime::Completion>,
    exports: HashMap<u64, Export>,
    /// Regions that cannot be shared (no file behind them, or reopening failed).
    unshareable: std::collections::HashSet<u64>,
    next_seg: u32,
    stats: RawStats,
}

/// A chunk [`RawClient::send`] could not take, with its buffer.
#[derive(Debug)]
pub struct Rejected {
    /// Why.
    pub error: RawError,
    /// The buffer, back.
    pub buf: FixedBuf,
}

impl RawClient {
    /// A client with its own io_uring (create it on the thread that runs it).
    pub fn new(cfg: RawConfig) -> Result<RawClient, RawError> {
        Ok(RawClient {
            driver: Driver::new(&cfg.driver)?,
            pool: Pool::new(
                cfg.idle_close,
                Duration::from_millis(100),
                Duration::from_secs(5),
            ),
            cfg,
            conns: HashMap::new(),
            next: 1,
            events: Vec::new(),
            comps: Vec::new(),
            exports: HashMap::new(),
            unshareable: std::collections::HashSet::new(),
            next_seg: 1,
            stats: RawStats::default(),
        })
    }

    /// The driver (e.g. to register source arenas up front).
    pub fn driver(&mut self) -> &mut Driver {
        &mut self.driver
    }

    /// Use an already connected stream.
    pub fn add(&mut self, stream: Stream) -> Result<ConnId, RawError> {
        self.add_inner(stream, None)
    }

    fn add_inner(
        &mut self,
        stream: Stream,
        endpoint: Option<Endpoint>,
    ) -> Result<ConnId, RawError> {
        sockopt::tune_raw(&stream, &self.cfg.tuning)?;
        let id = self.next;
        self.next = self.next.wrapping_add(1).max(1);
        self.conns.insert(
            id,
            CConn {
                local: !stream.is_tcp() && self.cfg.share_local,
                segs: HashMap::new(),
                stream,
                endpoint,
                m: SendMachine::new(self.cfg.max_chunk),
                reading: false,
                writing: false,
                lent_at: 0,
                dead: None,
                last_used: Instant::now(),
            },
        );
        Ok(ConnId(id))
    }

    /// The pooled connection to `ep` (leaving through `via`), connecting if needed.
    pub fn connection(&mut self, ep: &Endpoint, via: &Via) -> Result<ConnId, RawError> {
        let now = Instant::now();
        let timeout = self.cfg.connect_timeout;
        let mut fresh = None;
        let r = self.pool.get(ep, now, |e| {
            let s = e.connect(via, Some(timeout))?;
            fresh = Some(s);
            Ok::<u32, RawError>(0)
        });
        match r {
            Ok(id) if fresh.is_none() => Ok(ConnId(*id)),
            Ok(_) => {
                let s = fresh.take().ok_or(RawError::NoConnection(ConnId(0)))?;
                let id = self.add_inner(s, Some(ep.clone()))?;
                self.pool.set(ep, id.0);
                Ok(id)
            }
            Err(crate::pool::PoolError::Backoff { retry_in }) => Err(RawError::Backoff {
                endpoint: ep.to_string(),
                retry_in,
            }),
            Err(crate::pool::PoolError::Connect(e)) => Err(e),
        }
    }

    /// Offer a chunk whose payload is `buf[at..at + key.len]` on `conn`.
    pub fn send(
        &mut self,
        conn: ConnId,
        key: ChunkKey,
        buf: FixedBuf,
        at: usize,
    ) -> Result<(), Rejected> {
        let Some(c) = self.conns.get_mut(&conn.0).filter(|c| c.dead.is_none()) else {
            return Err(Rejected {
                error: RawError::NoConnection(conn),
                buf,
            });
        };
        if at
            .checked_add(key.len as usize)
            .is_none_or(|e| e > buf.len())
        {
            return Err(Rejected {
                error: RawError::Runtime(RuntimeError::InvalidBuffer("chunk exceeds its buffer")),
                buf,
            });
        }
        c.last_used = Instant::now();
        let rid = buf.region().id();
        if c.local && !self.unshareable.contains(&rid) {
            if !self.exports.contains_key(&rid) {
                match buf.region().share_fd() {
                    Ok(Some(fd)) => {
                        let seg = self.next_seg;
                        self.next_seg = self.next_seg.wrapping_add(1).max(1);
                        let export = Export {
                            seg,
                            len: buf.region().len() as u64,
                            fd,
                            region: std::sync::Arc::downgrade(buf.region()),
                        };
                        self.exports.insert(rid, export);
                    }
                    Ok(None) => {
                        self.unshareable.insert(rid);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot share buffer memory with local consumers; sending through the socket");
                        self.unshareable.insert(rid);
                    }
                }
            }
            if let Some(x) = self.exports.get(&rid) {
                if !c.segs.contains_key(&rid) {
                    if c.segs.len() >= MAX_SEGMENTS {
                        return self.offer(conn, key, buf, at);
                    }
                    c.m.share(x.seg, x.len);
                    c.segs.insert(rid, x.seg);
                }
                let where_ = (buf.offset() + at) as u64;
                let seg = x.seg;
                let r = c.m.pull(key, Src { buf, at }, seg, where_);
                if r.is_ok() {
                    self.stats.pulled += 1;
                }
                return r.map_err(|(error, s)| Rejected { error, buf: s.buf });
            }
        }
        self.offer(conn, key, buf, at)
    }

    fn offer(
        &mut self,
        conn: ConnId,
        key: ChunkKey,
        buf: FixedBuf,
        at: usize,
    ) -> Result<(), Rejected> {
        let Some(c) = self.conns.get_mut(&conn.0) else {
            return Err(Rejected {
                error: RawError::NoConnection(conn),
                buf,
            });
        };
        let r = c.m.offer(key, Src { buf, at });
        if r.is_ok() {
            self.stats.sent += 1;
        }
        r.map_err(|(error, s)| Rejected { error, buf: s.buf })
    }

    /// Chunks sent so far, by path.
    pub fn stats(&self) -> RawStats {
        self.stats
    }

    /// Retire shared segments whose memory is gone (no chunk of them can be in flight: each
    /// holds its region alive).
    fn sweep_exports(&mut self) {
        let dead: Vec<u64> = self
            .exports
            .iter()
            .filter(|(_, x)| x.region.strong_count() == 0)
            .map(|(rid, _)| *rid)
            .collect();
        for rid in dead {
            if let Some(x) = self.exports.remove(&rid) {
                for c in self.conns.values_mut() {
                    if c.segs.remove(&rid).is_some() && c.dead.is_none() {
                        c.m.unshare(x.seg, x.len);
                    }
                }
            }
        }
    }

    /// Offer a chunk to the pooled connection for `ep`.
    pub fn send_to(
        &mut self,
        ep: &Endpoint,
        via: &Via,
        key: ChunkKey,
        buf: FixedBuf,
        at: usize,
    ) -> Result<ConnId, Rejected> {
        match self.connection(ep, via) {
            Ok(id) => self.send(id, key, buf, at).map(|_| id),
            Err(error) => Err(Rejected { error, buf }),
        }
    }

    /// Chunks not yet acked, refused or failed.
    pub fn in_flight(&self) -> usize {
        self.conns.values().map(|c| c.m.in_flight()).sum()
    }

    /// Open connections.
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// Close a connection (its unfinished chunks come back as `Failed`).
    pub fn close(&mut self, conn: ConnId) {
        self.kill(conn.0, None);
    }

    /// One turn: start I/O, wait up to `timeout` (None = until something happens), append
    /// what happened to `out`. Also closes pooled connections idle for `idle_close`.
    pub fn turn(
        &mut self,
        timeout: Option<Duration>,
        out: &mut Vec<ClientEvent>,
    ) -> Result<(), RawError> {
        if !self.exports.is_empty() {
            self.sweep_exports();
        }
        let ids: Vec<u32> = self.conns.keys().copied().collect();
        for id in &ids {
            self.kick(*id)?;
            self.finish_if_dead(*id);
        }
        let now = Instant::now();
        let idle: Vec<u32> = self
            .conns
            .iter()
            .filter(|(_, c)| {
                c.endpoint.is_some()
                    && c.m.in_flight() == 0
                    && now.duration_since(c.last_used) >= self.cfg.idle_close
            })
            .map(|(id, _)| *id)
            .collect();
        for id in idle {
            self.kill(id, None);
            self.finish_if_dead(id);
        }
        if self.events.is_empty() {
            let mut comps = std::mem::take(&mut self.comps);
            self.driver.wait(timeout, &mut comps)?;
            for c in comps.drain(..) {
                self.on_completion(c)?;
            }
            self.comps = comps;
        }
        out.append(&mut self.events);
        Ok(())
    }

    fn kick(&mut self, id: u32) -> Result<(), RawError> {
        let Some(c) = self.conns.get_mut(&id) else {
            return Ok(());
        };
        if c.dead.is_some() {
            return Ok(());
        }
        let fd = c.stream.as_raw_fd();
        if !c.reading && c.m.in_flight() > 0 {
            let want = c.m.read_want().max(HEADER_LEN * 16);
            self.driver.push(
                tag(id, T_READ),
                Op::Recv {
                    fd,
                    buf: Vec::with_capacity(want),
                    flags: 0,
                },
            )?;
            c.reading = true;
        }
        if !c.writing {
            match c.m.need() {
                WriteNeed::Nothing => {}
                WriteNeed::Share { seg, frame } => {
                    let buf = frame.to_vec();
                    let file = self
                        .exports
                        .values()
                        .find(|x| x.seg == seg)
                        .map(|x| x.fd.try_clone());
                    match file {
                        Some(Ok(f)) => {
                            self.driver.push(
                                tag(id, T_WRITE),
                                Op::SendFds {
                                    fd,
                                    buf,
                                    fds: vec![f],
                                },
                            )?;
                            c.writing = true;
                        }
                        Some(Err(e)) => self.kill(id, Some(e.into())),
                        None => self.kill(
                            id,
                            Some(RawError::Io(io::Error::other(
                                "a shared segment vanished before its share frame went out",
                            ))),
                        ),
                    }
                }
                WriteNeed::Control(b) => {
                    let buf = b.to_vec();
                    self.driver
                        .push(tag(id, T_WRITE), Op::Send { fd, buf, at: 0 })?;
                    c.writing = true;
                }
                WriteNeed::Payload { at, len, .. } => {
                    if let Some(src) = c.m.take_src() {
                        let len = len.min(1 << 30);
                        c.lent_at = src.at;
                        self.driver.push(
                            tag(id, T_WRITE),
                            Op::WriteFixed {
                                fd,
                                buf: src.buf,
                                at: src.at + at,
                                len,
                            },
                        )?;
                        c.writing = true;
                    }
                }
            }
        }
        Ok(())
    }

    fn kill(&mut self, id: u32, e: Option<RawError>) {
        if let Some(c) = self.conns.get_mut(&id)
            && c.dead.is_none()
        {
            let _ = c.stream.shutdown();
            c.dead = Some(e);
        }
    }

    fn finish_if_dead(&mut self, id: u32) {
        let done = self
            .conns
            .get(&id)
            .is_some_and(|c| c.dead.is_some() && !c.reading && !c.writing);
        if !done {
            return;
        }
        if let Some(mut c) = self.conns.remove(&id) {
            for (key, s) in c.m.abandon() {
                self.events.push(ClientEvent::Failed {
                    conn: ConnId(id),
                    key,
                    buf: s.buf,
                });
            }
            let err = c.dead.take().flatten();
            if let Some(ep) = &c.endpoint {
                if err.is_some() {
                    self.pool.failed(ep, Instant::now());
                } else {
                    self.pool.remove(ep);
                }
            }
            self.events.push(ClientEvent::Closed {
                conn: ConnId(id),
                error: err.map(|e| e.to_string()),
            });
        }
    }

    fn on_completion(&mut self, comp: spate_runtime::Completion) -> Result<(), RawError> {
        let id = (comp.tag >> 8) as u32;
        let Some(c) = self.conns.get_mut(&id) else {
            return Ok(());
        };
        match comp.tag & 0xff {
            T_READ => {
                c.reading = false;
                match (comp.result, comp.output) {
                    (Ok(0), _) => {
                        let e =
                            (c.m.in_flight() > 0).then_some(RawError::Closed { mid_frame: false });
                        self.kill(id, e);
                    }
                    (Ok(_), Output::Vec(v)) => match c.m.on_read(&v) {
                        Ok(evs) => {
                            for ev in evs {
                                self.events.push(match ev {
                                    SendEvent::Acked(key, s) => ClientEvent::Acked {
                                        conn: ConnId(id),
                                        key,
                                        buf: s.buf,
                                    },
                                    SendEvent::Refused(key, reason, s) => ClientEvent::Refused {
                                        conn: ConnId(id),
                                        key,
                                        reason,
                                        buf: s.buf,
                                    },
                                });
                            }
                        }
                        Err(e) => self.kill(id, Some(e)),
                    },
                    (Err(e), _) => self.kill(id, Some(e.into())),
                    _ => {}
                }
            }
            T_WRITE => {
                c.writing = false;
                match (comp.result, comp.output) {
                    (Ok(n), Output::Vec(_)) => c.m.on_control_written(n as usize),
                    (r, Output::Fixed(buf)) => {
                        let at = c.lent_at;
                        let n = r.as_ref().map_or(0, |n| *n as usize);
                        if let Err(e) = c.m.on_payload_written(Src { buf, at }, n) {
                            self.kill(id, Some(e));
                        } else if let Err(e) = r {
                            self.kill(id, Some(e.into()));
                        }
                    }
                    (Err(e), _) => self.kill(id, Some(e.into())),
                    _ => {}
                }
            }
            _ => {}
        }
        self.kick(id)?;
        self.finish_if_dead(id);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(off: u64, len: u64) -> ChunkKey {
        ChunkKey {
            job: 7,
            stream: 2,
            offset: off,
            len,
        }
    }

    /// Move all pending control output of the sender into the receiver, returning events.
    fn pump_ctl(
        s: &mut SendMachine<&'static str>,
        r: &mut RecvMachine<Vec<u8>>,
    ) -> Vec<RecvEvent<Vec<u8>>> {
        let mut ev = Vec::new();
        while let WriteNeed::Control(b) | WriteNeed::Share { frame: b, .. } = s.need() {
            let b = b.to_vec();
            s.on_control_written(b.len());
            // Feed in uneven pieces: header reads may be short too.
            for piece in b.chunks(13) {
                let mut rest = piece;
                while !rest.is_empty() {
                    let ReadNeed::Header { want } = r.need() else {
                        panic!("receiver wants payload while control is pending")
                    };
                    let n = want.min(rest.len());
                    if let Some(e) = r.on_header_bytes(&rest[..n]).unwrap() {
                        ev.push(e);
                    }
                    rest = &rest[n..];
                }
            }
        }
        ev
    }

    #[test]
    fn codec_round_trips_and_refuses_malformed_headers() {
        let k = key(4096, 100);
        for kind in [Kind::Offer, Kind::Data, Kind::Grant, Kind::Ack] {
            let f = decode(&encode(kind, &k, None), 1 << 20).unwrap();
            assert_eq!((f.kind, f.key, f.reason), (kind, k, None));
        }
        let f = decode(
            &encode(Kind::Refuse, &k, Some(RefuseReason::OutOfRange)),
            1 << 20,
        )
        .unwrap();
        assert_eq!(f.reason, Some(RefuseReason::OutOfRange));

        let mut h = encode(Kind::Offer, &k, None);
        h[0] = b'X';
        assert_eq!(decode(&h, 1 << 20), Err(Malformed::BadMagic(*b"XPRW")));
        let mut h = encode(Kind::Offer, &k, None);
        h[4] = 9;
        assert_eq!(decode(&h, 1 << 20), Err(Malformed::UnknownKind(9)));
        let mut h = encode(Kind::Offer, &k, None);
        h[21] = 1;
        assert_eq!(decode(&h, 1 << 20), Err(Malformed::Reserved));
        let mut h = encode(Kind::Ack, &k, None);
        h[5] = 1;
        assert_eq!(decode(&h, 1 << 20), Err(Malformed::Reserved));
        assert_eq!(
            decode(&encode(Kind::Offer, &key(0, 0), None), 10),
            Err(Malformed::ZeroLength)
        );
        assert_eq!(
            decode(&encode(Kind::Offer, &key(0, 11), None), 10),
            Err(Malformed::TooLong { len: 11, max: 10 })
        );
        assert_eq!(
            decode(&encode(Kind::Offer, &key(u64::MAX, 2), None), 10),
            Err(Malformed::Overflow)
        );
    }

    #[test]
    fn offer_grant_data_ack_with_short_reads_and_writes_resumed() {
        let mut s: SendMachine<&'static str> = SendMachine::new(1 << 20);
        let mut r: RecvMachine<Vec<u8>> = RecvMachine::new(1 << 20);
        let k1 = key(0, 10);
        let k2 = key(10, 6);
        s.offer(k1, "src1").unwrap();
        s.offer(k2, "src2").unwrap();
        assert_eq!(s.in_flight(), 2);
        let ev = pump_ctl(&mut s, &mut r);
        assert_eq!(ev, vec![RecvEvent::Offer(k1), RecvEvent::Offer(k2)]);
        // Nothing granted yet: the sender has nothing to write.
        assert_eq!(s.need(), WriteNeed::Nothing);

        r.grant(&k2, vec![0u8; 6]).unwrap();
        r.refuse(&k1, RefuseReason::Aborted).unwrap();
        assert!(matches!(
            r.grant(&k1, vec![]),
            Err(RawError::Protocol { .. })
        ));
        let out = r.take_output();
        assert_eq!(out.len(), 2 * HEADER_LEN);
        // The sender reads the answers in odd pieces.
        let mut evs = s.on_read(&out[..7]).unwrap();
        evs.extend(s.on_read(&out[7..]).unwrap());
        assert_eq!(
            evs,
            vec![SendEvent::Refused(k1, RefuseReason::Aborted, "src1")]
        );

        // Data header for k2, then the payload in two short writes / reads.
        let ev = pump_ctl(&mut s, &mut r);
        assert!(ev.is_empty());
        assert_eq!(
            s.need(),
            WriteNeed::Payload {
                key: k2,
                at: 0,
                len: 6
            }
        );
        assert_eq!(
            r.need(),
            ReadNeed::Payload {
                key: k2,
                at: 0,
                len: 6
            }
        );
        let src = s.take_src().unwrap();
        s.on_payload_written(src, 4).unwrap();
        assert_eq!(
            s.need(),
            WriteNeed::Payload {
                key: k2,
                at: 4,
                len: 2
            }
        );
        let src = s.take_src().unwrap();
        s.on_payload_written(src, 2).unwrap();
        assert_eq!(s.need(), WriteNeed::Nothing);

        let mut d = r.take_dest().unwrap();
        d[..4].copy_from_slice(b"abcd");
        assert_eq!(r.on_payload(d, 4).unwrap(), None);
        assert_eq!(
            r.need(),
            ReadNeed::Payload {
                key: k2,
                at: 4,
                len: 2
            }
        );
        let mut d = r.take_dest().unwrap();
        d[4..].copy_from_slice(b"ef");
        match r.on_payload(d, 2).unwrap() {
            Some(RecvEvent::Landed(k, d)) => {
                assert_eq!(k, k2);
                assert_eq!(d, b"abcdef");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(r.need(), ReadNeed::Header { want: HEADER_LEN });
        let ack = r.take_output();
        assert_eq!(
            decode(ack[..].try_into().unwrap(), 1 << 20).unwrap().kind,
            Kind::Ack
        );
        assert_eq!(s.on_read(&ack).unwrap(), vec![SendEvent::Acked(k2, "src2")]);
        assert_eq!(s.in_flight(), 0);
    }

    #[test]
    fn protocol_violations_and_malformed_frames_are_errors_of_their_own_kind() {
        let mut r: RecvMachine<Vec<u8>> = RecvMachine::new(100);
        // Data that was never granted.
        let e = r
            .on_header_bytes(&encode(Kind::Data, &key(0, 5), None))
            .unwrap_err();
        assert!(matches!(
            e,
            RawError::Protocol {
                what: "data for a chunk that was not granted",
                ..
            }
        ));
        // A consumer never receives grants.
        let mut r: RecvMachine<Vec<u8>> = RecvMachine::new(100);
        let e = r
            .on_header_bytes(&encode(Kind::Grant, &key(0, 5), None))
            .unwrap_err();
        assert!(matches!(
            e,
            RawError::Malformed(Malformed::WrongDirection(Kind::Grant))
        ));
        let mut r: RecvMachine<Vec<u8>> = RecvMachine::new(100);
        let e = r.on_header_bytes(&[0xAB; HEADER_LEN]).unwrap_err();
        assert!(matches!(e, RawError::Malformed(Malformed::BadMagic(_))));
        let mut r: RecvMachine<Vec<u8>> = RecvMachine::new(100);
        let e = r
            .on_header_bytes(&encode(Kind::Offer, &key(0, 101), None))
            .unwrap_err();
        assert!(matches!(
            e,
            RawError::Malformed(Malformed::TooLong { len: 101, max: 100 })
        ));
        // Duplicate offer.
        let mut r: RecvMachine<Vec<u8>> = RecvMachine::new(100);
        r.on_header_bytes(&encode(Kind::Offer, &key(0, 5), None))
            .unwrap();
        assert!(matches!(
            r.on_header_bytes(&encode(Kind::Offer, &key(0, 5), None)),
            Err(RawError::Protocol { .. })
        ));

        // Sender side: an ack for something never sent, a grant never offered.
        let mut s: SendMachine<u8> = SendMachine::new(100);
        assert!(matches!(
            s.on_read(&encode(Kind::Ack, &key(0, 5), None)),
            Err(RawError::Protocol {
                what: "ack for a chunk that was not sent",
                ..
            })
        ));
        let mut s: SendMachine<u8> = SendMachine::new(100);
        assert!(matches!(
            s.on_read(&encode(Kind::Offer, &key(0, 5), None)),
            Err(RawError::Malformed(Malformed::WrongDirection(Kind::Offer)))
        ));
        let mut s: SendMachine<u8> = SendMachine::new(100);
        assert!(matches!(
            s.offer(key(0, 0), 1),
            Err((RawError::Malformed(Malformed::ZeroLength), 1))
        ));
        s.offer(key(0, 5), 1).unwrap();
        assert!(matches!(
            s.offer(key(0, 5), 2),
            Err((RawError::Protocol { .. }, 2))
        ));
    }

    #[test]
    fn eof_mid_payload_and_abandon_return_every_destination() {
        let mut s: SendMachine<u8> = SendMachine::new(100);
        let mut r: RecvMachine<u32> = RecvMachine::new(100);
        let (k1, k2) = (key(0, 5), key(5, 5));
        for (k, v) in [(k1, 1), (k2, 2)] {
            s.offer(k, v).unwrap();
            let WriteNeed::Control(b) = s.need() else {
                panic!()
            };
            let b = b.to_vec();
            s.on_control_written(b.len());
            assert_eq!(r.on_header_bytes(&b).unwrap(), Some(RecvEvent::Offer(k)));
        }
        r.grant(&k1, 10).unwrap();
        r.grant(&k2, 20).unwrap();
        r.on_header_bytes(&encode(Kind::Data, &k1, None)).unwrap();
        let d = r.take_dest().unwrap();
        assert!(r.mid_frame());
        assert!(matches!(
            r.on_payload(d, 0),
            Err(RawError::Closed { mid_frame: true })
        ));
        let mut got = r.abandon();
        got.sort();
        assert_eq!(got, vec![(k1, 10), (k2, 20)]);
        let mut back = s.abandon();
        back.sort();
        assert_eq!(back, vec![(k1, 1), (k2, 2)]);
    }

    #[test]
    fn offers_queued_while_a_data_header_is_pending_go_after_its_payload() {
        let mut s: SendMachine<u8> = SendMachine::new(100);
        let k1 = key(0, 5);
        let k2 = key(5, 5);
        s.offer(k1, 1).unwrap();
        let WriteNeed::Control(b) = s.need() else {
            panic!()
        };
        let n = b.len();
        s.on_control_written(n);
        s.on_read(&encode(Kind::Grant, &k1, None)).unwrap();
        // Data header of k1 is now queued...
        let WriteNeed::Control(b) = s.need() else {
            panic!()
        };
        assert_eq!(decode(b.try_into().unwrap(), 100).unwrap().kind, Kind::Data);
        // ...an offer made now must not slip between header and payload.
        s.offer(k2, 2).unwrap();
        s.on_control_written(HEADER_LEN);
        assert_eq!(
            s.need(),
            WriteNeed::Payload {
                key: k1,
                at: 0,
                len: 5
            }
        );
        let src = s.take_src().unwrap();
        s.on_payload_written(src, 5).unwrap();
        let WriteNeed::Control(b) = s.need() else {
            panic!()
        };
        let f = decode(b.try_into().unwrap(), 100).unwrap();
        assert_eq!((f.kind, f.key), (Kind::Offer, k2));
    }

    fn pull_key(off: u64, len: u64) -> ChunkKey {
        ChunkKey {
            job: 9,
            stream: 1,
            offset: off,
            len,
        }
    }

    #[test]
    fn share_pull_ack_and_unshare_flow() {
        let mut s: SendMachine<&'static str> = SendMachine::new(1 << 20);
        let mut r: RecvMachine<Vec<u8>> = RecvMachine::new(1 << 20);
        // An offer queued before the share still goes out; the share's frame is written first,
        // alone, so its descriptor travels with exactly that frame.
        s.offer(pull_key(0, 10), "offered").unwrap();
        s.share(3, 8 << 20);
        s.pull(pull_key(10, 100), "pulled", 3, 4096).unwrap();
        match s.need() {
            WriteNeed::Share { seg: 3, frame } => {
                let f = decode(frame.try_into().unwrap(), 1 << 20).unwrap();
                assert_eq!((f.kind, f.key.stream, f.key.len), (Kind::Share, 3, 8 << 20));
            }
            other => panic!("{other:?}"),
        }
        let ev = pump_ctl(&mut s, &mut r);
        assert_eq!(
            ev,
            vec![
                RecvEvent::Share {
                    seg: 3,
                    len: 8 << 20
                },
                RecvEvent::Offer(pull_key(0, 10)),
                RecvEvent::Offer(pull_key(10, 100)),
            ]
        );
        assert!(r.has_segment(3));
        assert_eq!(s.in_flight(), 2);
        // Granting a pull sends nothing and hands back where to copy from.
        let g = r.grant(&pull_key(10, 100), vec![0u8; 100]).unwrap();
        let (p, dest) = g.expect("a pull");
        assert_eq!(
            (p, dest.len()),
            (
                Pull {
                    key: pull_key(10, 100),
                    seg: 3,
                    at: 4096
                },
                100
            )
        );
        assert!(!r.has_output());
        // Unsharing while the chunk is being copied breaks the protocol.
        let mut r2: RecvMachine<Vec<u8>> = RecvMachine::new(1 << 20);
        let seg3 = ChunkKey {
            job: 0,
            stream: 3,
            offset: 0,
            len: 8 << 20,
        };
        r2.on_header_bytes(&encode(Kind::Share, &seg3, None))
            .unwrap();
        r2.on_header_bytes(&encode(Kind::Pull, &pull_key(0, 5), None))
            .unwrap();
        r2.on_header_bytes(&encode_pull_tail(3, 0)).unwrap();
        assert!(matches!(
            r2.on_header_bytes(&encode(Kind::Unshare, &seg3, None)),
            Err(RawError::Protocol {
                what: "unshare of a segment with chunks in flight",
                ..
            })
        ));
        // The copy lands: ack to the sender, which gets its buffer back.
        r.on_pulled(&pull_key(10, 100)).unwrap();
        assert!(matches!(
            r.on_pulled(&pull_key(10, 100)),
            Err(RawError::Protocol { .. })
        ));
        let out = r.take_output();
        assert_eq!(
            s.on_read(&out).unwrap(),
            vec![SendEvent::Acked(pull_key(10, 100), "pulled")]
        );
        // A pulled chunk can be refused too.
        s.pull(pull_key(110, 100), "again", 3, 0).unwrap();
        pump_ctl(&mut s, &mut r);
        r.refuse(&pull_key(110, 100), RefuseReason::Aborted)
            .unwrap();
        assert_eq!(
            s.on_read(&r.take_output()).unwrap(),
            vec![SendEvent::Refused(
                pull_key(110, 100),
                RefuseReason::Aborted,
                "again"
            )]
        );
        // Retire the segment: later pulls from it are violations.
        s.unshare(3, 8 << 20);
        assert_eq!(
            pump_ctl(&mut s, &mut r),
            vec![RecvEvent::Unshare { seg: 3 }]
        );
        assert!(!r.has_segment(3));
        s.pull(pull_key(300, 1), "late", 3, 0).unwrap();
        let WriteNeed::Control(b) = s.need() else {
            panic!()
        };
        let b = b.to_vec();
        r.on_header_bytes(&b[..HEADER_LEN]).unwrap();
        assert!(matches!(
            r.on_header_bytes(&b[HEADER_LEN..]),
            Err(RawError::Protocol {
                what: "pull from a segment that was not shared",
                ..
            })
        ));
    }

    #[test]
    fn malformed_share_and_pull_frames_are_refused_with_their_own_kind() {
        let seg = |id: u32, len: u64| ChunkKey {
            job: 0,
            stream: id,
            offset: 0,
            len,
        };
        // Share: job/offset must be zero; the length may exceed the chunk limit.
        let mut h = encode(Kind::Share, &seg(1, 1 << 40), None);
        assert_eq!(decode(&h, 1 << 20).unwrap().key.len, 1 << 40);
        h[8] = 1;
        assert_eq!(decode(&h, 1 << 20), Err(Malformed::Reserved));
        assert_eq!(
            decode(&encode(Kind::Share, &seg(1, 0), None), 1 << 20),
            Err(Malformed::ZeroLength)
        );
        // Pull tails: reserved bytes must be zero.
        let mut t = encode_pull_tail(7, 99);
        assert_eq!(decode_pull_tail(&t), Ok((7, 99)));
        t[5] = 1;
        assert_eq!(decode_pull_tail(&t), Err(Malformed::Reserved));
        // A pull beyond its segment, a segment shared twice, too many segments, an unknown
        // unshare: each a protocol violation of its own.
        let mut r: RecvMachine<Vec<u8>> = RecvMachine::new(1 << 20);
        r.on_header_bytes(&encode(Kind::Share, &seg(1, 4096), None))
            .unwrap();
        r.on_header_bytes(&encode(Kind::Pull, &pull_key(0, 100), None))
            .unwrap();
        assert_eq!(
            r.need(),
            ReadNeed::Header {
                want: PULL_TAIL_LEN
            }
        );
        let what = |r: Result<Option<RecvEvent<Vec<u8>>>, RawError>| match r {
            Err(RawError::Protocol { what, .. }) => what,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            what(r.on_header_bytes(&encode_pull_tail(1, 4000))),
            "pull beyond the end of its shared segment"
        );
        let mut r: RecvMachine<Vec<u8>> = RecvMachine::new(1 << 20);
        r.on_header_bytes(&encode(Kind::Share, &seg(1, 4096), None))
            .unwrap();
        assert_eq!(
            what(r.on_header_bytes(&encode(Kind::Share, &seg(1, 4096), None))),
            "segment shared twice"
        );
        let mut r: RecvMachine<Vec<u8>> = RecvMachine::new(1 << 20);
        for i in 0..MAX_SEGMENTS as u32 {
            r.on_header_bytes(&encode(Kind::Share, &seg(i, 4096), None))
                .unwrap();
        }
        assert_eq!(
            what(r.on_header_bytes(&encode(Kind::Share, &seg(999, 4096), None))),
            "too many shared segments"
        );
        assert_eq!(
            what(r.on_header_bytes(&encode(Kind::Unshare, &seg(999, 4096), None))),
            "unshare of a segment that was not shared"
        );
        // Producers never receive segment frames; a grant for a pulled chunk is a violation.
        let mut s: SendMachine<&'static str> = SendMachine::new(1 << 20);
        assert!(matches!(
            s.on_read(&encode(Kind::Share, &seg(1, 4096), None)),
            Err(RawError::Malformed(Malformed::WrongDirection(Kind::Share)))
        ));
        let mut s: SendMachine<&'static str> = SendMachine::new(1 << 20);
        s.pull(pull_key(0, 10), "p", 1, 0).unwrap();
        assert!(matches!(
            s.on_read(&encode(Kind::Grant, &pull_key(0, 10), None)),
            Err(RawError::Protocol {
                what: "grant for a chunk that was not offered",
                ..
            })
        ));
    }
}
