//! The raw frame codec: chunk keys, frame kinds, refusal reasons, and the 40-byte header.
//!
//! Every frame is one header:
//! `magic "SPRW" | kind u8 | reason u8 | 0u16 | job u64 | stream u32 | 0u32 | offset u64 | len u64`
//! (little endian). Chunk frames carry a [`ChunkKey`]; segment frames (`Share`, `Unshare`) carry
//! a [`SegmentFrame`] (its id where a chunk has its stream, its length in `len`, job and offset
//! zero). `Pull` is followed by a 16-byte tail `segment u32 | 0u32 | at u64`. `Hello` (the
//! producer's node name, first frame after authentication) has only `len` set, and is followed
//! by that many bytes of UTF-8.
//!
//! Zero copy (local connections): the producer asks with `Reserve(key)` to write a chunk in
//! place; the consumer lends the ring's data segment once (`Lend(segment)`, its read-write
//! descriptor with the frame) and answers `Place(key)` with a tail like a pull's
//! (`segment | 0 | at`: write the chunk at `at` of the segment, mapped twice back to back), or
//! `Refuse` (`Fallback`: use another path). The producer computes into the place and sends
//! `Written(key)` (or `Withdraw(key)` when it will not); the consumer lands it and acks.
//! `Unlend(segment)` retires a lent ring.
//!
//! [`Msg`] is the typed frame the machines use; [`encode`] / [`decode`] with [`Frame`] are the
//! flat view (a segment's id shows as `key.stream`) kept for tools and tests that build raw
//! bytes by hand.

/// Frame header size.
pub const HEADER_LEN: usize = 40;
/// Size of the tail that follows a `Pull` header.
pub const PULL_TAIL_LEN: usize = 16;
/// Longest node name a `Hello` carries.
pub const MAX_NAME: usize = 255;
/// Longest tail any frame has (a `Hello`'s name).
pub const MAX_TAIL: usize = MAX_NAME;
/// Default largest chunk accepted (1 GiB).
pub const DEFAULT_MAX_CHUNK: u64 = 1 << 30;
const MAGIC: [u8; 4] = *b"SPRW";

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

impl std::fmt::Display for ChunkKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "job {} stream {} [{}, +{})",
            self.job, self.stream, self.offset, self.len
        )
    }
}

/// A shared segment as a frame names it: its id on this connection and its length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SegmentFrame {
    /// Segment id (chosen by the side that shares it).
    pub seg: u32,
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
    /// Producer → consumer: who I am (my node name follows); first frame after authentication.
    Hello = 9,
    /// Producer → consumer (local): may I write this chunk in place, in your ring?
    Reserve = 10,
    /// Consumer → producer (local): a read-write descriptor of a ring's data comes with this.
    Lend = 11,
    /// Consumer → producer (local): write the chunk here (a tail names segment and offset).
    Place = 12,
    /// Producer → consumer (local): the placed chunk is written.
    Written = 13,
    /// Consumer → producer (local): that lent segment is retired.
    Unlend = 14,
    /// Producer → consumer (local): I will not write this placed chunk.
    Withdraw = 15,
}

impl Kind {
    fn from_u8(b: u8) -> Option<Kind> {
        Some(match b {
            1 => Kind::Offer,
            2 => Kind::Data,
            3 => Kind::Grant,
            4 => Kind::Refuse,
            5 => Kind::Ack,
            6 => Kind::Share,
            7 => Kind::Unshare,
            8 => Kind::Pull,
            9 => Kind::Hello,
            10 => Kind::Reserve,
            11 => Kind::Lend,
            12 => Kind::Place,
            13 => Kind::Written,
            14 => Kind::Unlend,
            15 => Kind::Withdraw,
            _ => return None,
        })
    }

    /// Whether frames of this kind name a segment rather than a chunk.
    pub fn is_segment(self) -> bool {
        matches!(
            self,
            Kind::Share | Kind::Unshare | Kind::Lend | Kind::Unlend
        )
    }
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
    /// The scheduler did not assign this producer to the chunk's job.
    NotAssigned,
    /// Not this way: send the chunk by another path (e.g. a zero-copy reservation the
    /// consumer cannot place: a range partly landed, or a ring it does not lend).
    Fallback,
    /// Any other code.
    Other(u8),
}

impl RefuseReason {
    /// The reason's code on the wire.
    pub fn code(self) -> u8 {
        match self {
            RefuseReason::UnknownStream => 1,
            RefuseReason::OutOfRange => 2,
            RefuseReason::Aborted => 3,
            RefuseReason::TooLarge => 4,
            RefuseReason::NotAssigned => 5,
            RefuseReason::Fallback => 6,
            RefuseReason::Other(c) => c,
        }
    }
    /// The reason of a wire code.
    pub fn from_code(c: u8) -> Self {
        match c {
            1 => RefuseReason::UnknownStream,
            2 => RefuseReason::OutOfRange,
            3 => RefuseReason::Aborted,
            4 => RefuseReason::TooLarge,
            5 => RefuseReason::NotAssigned,
            6 => RefuseReason::Fallback,
            c => RefuseReason::Other(c),
        }
    }
}

/// A decoded frame header, flat (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame {
    /// Kind.
    pub kind: Kind,
    /// The chunk (for segment frames: the segment id in `stream`, its length in `len`).
    pub key: ChunkKey,
    /// Refuse reason (Refuse only).
    pub reason: Option<RefuseReason>,
}

/// A typed frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Msg {
    /// Producer → consumer: may I send this chunk?
    Offer(ChunkKey),
    /// Producer → consumer: the payload follows.
    Data(ChunkKey),
    /// Consumer → producer: send it.
    Grant(ChunkKey),
    /// Consumer → producer: no.
    Refuse(ChunkKey, RefuseReason),
    /// Consumer → producer: landed.
    Ack(ChunkKey),
    /// Producer → consumer: a descriptor of this segment comes with the frame.
    Share(SegmentFrame),
    /// Producer → consumer: the segment is gone.
    Unshare(SegmentFrame),
    /// Producer → consumer: copy this chunk from a shared segment (a [`PULL_TAIL_LEN`] tail
    /// follows).
    Pull(ChunkKey),
    /// Producer → consumer: my node name follows (`len` bytes, 1..=[`MAX_NAME`]).
    Hello {
        /// Length of the name.
        len: u64,
    },
    /// Producer → consumer: may I write this chunk in place?
    Reserve(ChunkKey),
    /// Consumer → producer: a read-write descriptor of this ring segment comes with the frame.
    Lend(SegmentFrame),
    /// Consumer → producer: write the chunk at a place (a [`PULL_TAIL_LEN`] tail follows).
    Place(ChunkKey),
    /// Producer → consumer: the placed chunk is written.
    Written(ChunkKey),
    /// Consumer → producer: the lent segment is retired.
    Unlend(SegmentFrame),
    /// Producer → consumer: the placed chunk will not be written.
    Withdraw(ChunkKey),
}

impl Msg {
    /// Its kind.
    pub fn kind(&self) -> Kind {
        match self {
            Msg::Offer(_) => Kind::Offer,
            Msg::Data(_) => Kind::Data,
            Msg::Grant(_) => Kind::Grant,
            Msg::Refuse(..) => Kind::Refuse,
            Msg::Ack(_) => Kind::Ack,
            Msg::Share(_) => Kind::Share,
            Msg::Unshare(_) => Kind::Unshare,
            Msg::Pull(_) => Kind::Pull,
            Msg::Hello { .. } => Kind::Hello,
            Msg::Reserve(_) => Kind::Reserve,
            Msg::Lend(_) => Kind::Lend,
            Msg::Place(_) => Kind::Place,
            Msg::Written(_) => Kind::Written,
            Msg::Unlend(_) => Kind::Unlend,
            Msg::Withdraw(_) => Kind::Withdraw,
        }
    }

    /// Bytes that follow the header.
    pub fn tail_len(&self) -> usize {
        match self {
            Msg::Pull(_) | Msg::Place(_) => PULL_TAIL_LEN,
            Msg::Hello { len } => *len as usize,
            _ => 0,
        }
    }

    /// The header bytes.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        match *self {
            Msg::Share(s) | Msg::Unshare(s) | Msg::Lend(s) | Msg::Unlend(s) => {
                encode(self.kind(), &segment_key(s), None)
            }
            Msg::Refuse(k, r) => encode(Kind::Refuse, &k, Some(r)),
            Msg::Offer(k)
            | Msg::Data(k)
            | Msg::Grant(k)
            | Msg::Ack(k)
            | Msg::Pull(k)
            | Msg::Reserve(k)
            | Msg::Place(k)
            | Msg::Written(k)
            | Msg::Withdraw(k) => encode(self.kind(), &k, None),
            Msg::Hello { len } => encode(
                Kind::Hello,
                &ChunkKey {
                    job: 0,
                    stream: 0,
                    offset: 0,
                    len,
                },
                None,
            ),
        }
    }

    /// Decode and validate a header (chunks up to `max_len` bytes; segments may be longer).
    pub fn decode(h: &[u8; HEADER_LEN], max_len: u64) -> Result<Msg, Malformed> {
        let f = decode(h, max_len)?;
        let k = f.key;
        let seg = SegmentFrame {
            seg: k.stream,
            len: k.len,
        };
        Ok(match f.kind {
            Kind::Offer => Msg::Offer(k),
            Kind::Data => Msg::Data(k),
            Kind::Grant => Msg::Grant(k),
            Kind::Refuse => Msg::Refuse(k, f.reason.unwrap_or(RefuseReason::Other(0))),
            Kind::Ack => Msg::Ack(k),
            Kind::Share => Msg::Share(seg),
            Kind::Unshare => Msg::Unshare(seg),
            Kind::Pull => Msg::Pull(k),
            Kind::Hello => Msg::Hello { len: k.len },
            Kind::Reserve => Msg::Reserve(k),
            Kind::Lend => Msg::Lend(seg),
            Kind::Place => Msg::Place(k),
            Kind::Written => Msg::Written(k),
            Kind::Unlend => Msg::Unlend(seg),
            Kind::Withdraw => Msg::Withdraw(k),
        })
    }
}

fn segment_key(s: SegmentFrame) -> ChunkKey {
    ChunkKey {
        job: 0,
        stream: s.seg,
        offset: 0,
        len: s.len,
    }
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

/// Encode a frame (flat view: for segment frames `key.stream` is the segment id).
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

/// Decode and validate a frame header (chunks up to `max_len` bytes), flat view.
pub fn decode(h: &[u8; HEADER_LEN], max_len: u64) -> Result<Frame, Malformed> {
    if h[0..4] != MAGIC {
        let mut m = [0u8; 4];
        m.copy_from_slice(&h[0..4]);
        return Err(Malformed::BadMagic(m));
    }
    let kind = Kind::from_u8(h[4]).ok_or(Malformed::UnknownKind(h[4]))?;
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
    if kind.is_segment() && (key.job != 0 || key.offset != 0) {
        return Err(Malformed::Reserved);
    }
    if kind == Kind::Hello {
        if key.job != 0 || key.stream != 0 || key.offset != 0 {
            return Err(Malformed::Reserved);
        }
        if key.len > MAX_NAME as u64 {
            return Err(Malformed::TooLong {
                len: key.len,
                max: MAX_NAME as u64,
            });
        }
    }
    // A segment may be larger than any chunk.
    if !kind.is_segment() && key.len > max_len {
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
