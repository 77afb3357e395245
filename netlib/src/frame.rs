//! Sans-IO frame codec of the control protocol.
//!
//! A frame is a fixed 12-byte header followed by a postcard payload:
//!
//! ```text
//! 0      4         6      7       8            12
//! | SPAT | version | kind | flags | payload len | payload ...
//!          u16 BE    u8     u8=0    u32 BE
//! ```
//!
//! The [`FrameDecoder`] takes bytes in any split (one at a time works) and yields whole frames.
//! It holds at most one frame (header + at most `max_frame` payload bytes): bytes after a
//! complete frame stay in the caller's input slice. Every error is terminal: the decoder keeps
//! refusing with the same error until [`FrameDecoder::reset`] (which forgets all buffered bytes);
//! the connection should be closed.
//!
//! Memory: the payload buffer grows with the bytes actually received, never past the announced
//! length, which is checked against `max_frame` as soon as the header is complete. Decoding a
//! payload with postcard may pre-allocate sequences from their declared lengths, but postcard
//! ignores a declared length larger than the bytes left and serde caps any pre-allocation at
//! 1 MiB; [`crate::proto::Value`] trees are depth-limited and rebuilt without recursion.

use serde::Serialize;
use serde::de::DeserializeOwned;
use thiserror::Error;

use crate::proto::{Message, PROTOCOL_VERSION};

/// First four bytes of every frame.
pub const MAGIC: [u8; 4] = *b"SPAT";
/// Length of the fixed frame header.
pub const HEADER_LEN: usize = 12;
/// Default maximum payload length (1 MiB).
pub const DEFAULT_MAX_FRAME: u32 = 1 << 20;

/// What a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FrameKind {
    /// A handshake message ([`crate::auth`]); its version is checked by the handshake.
    Handshake = 1,
    /// A [`Message`]; its version must equal [`PROTOCOL_VERSION`].
    Message = 2,
}

impl FrameKind {
    fn from_u8(b: u8) -> Option<Self> {
        match b {
            1 => Some(FrameKind::Handshake),
            2 => Some(FrameKind::Message),
            _ => None,
        }
    }
}

/// Errors of the codec. All are terminal for a connection.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FrameError {
    /// The stream does not start with the spate magic.
    #[error(
        "bad frame magic {found:02x?} (expected {MAGIC:02x?} = \"SPAT\"): the peer is not speaking \
         the spate control protocol; check the address and port"
    )]
    BadMagic {
        /// The (possibly partial) bytes found where the magic belongs.
        found: Vec<u8>,
    },
    /// The header is malformed (unknown kind, reserved flags set).
    #[error("malformed frame header: {reason}")]
    BadHeader {
        /// What is wrong.
        reason: String,
    },
    /// The connection ended in the middle of a frame.
    #[error("connection ended in the middle of a frame ({have} of {need} bytes received)")]
    Truncated {
        /// Bytes of the frame received.
        have: usize,
        /// Bytes the frame needs (header only, while the header is incomplete).
        need: usize,
    },
    /// The announced payload is larger than allowed.
    #[error(
        "frame payload of {len} bytes exceeds the maximum of {max} bytes (raise max_frame on \
         both sides if this is legitimate)"
    )]
    Oversized {
        /// Announced or produced payload length.
        len: u64,
        /// Maximum allowed.
        max: u32,
    },
    /// A message frame carries another protocol version.
    #[error(
        "unknown protocol version {got} (this side speaks {expected}): run the same spate \
         version on every node"
    )]
    UnknownVersion {
        /// Version in the frame.
        got: u16,
        /// Version this side speaks.
        expected: u16,
    },
    /// The payload does not decode as the expected type.
    #[error("malformed {kind:?} frame payload: {detail}")]
    Malformed {
        /// Kind of the frame.
        kind: FrameKind,
        /// Decoder's explanation.
        detail: String,
    },
    /// A frame of another kind arrived than the connection state allows.
    #[error("unexpected {got:?} frame (expected {expected:?})")]
    UnexpectedKind {
        /// Kind expected.
        expected: FrameKind,
        /// Kind received.
        got: FrameKind,
    },
    /// The value could not be serialized (e.g. a non-UTF-8 path).
    #[error("cannot encode frame payload: {detail}")]
    Encode {
        /// Serializer's explanation.
        detail: String,
    },
}

/// A decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Protocol version in the header (always [`PROTOCOL_VERSION`] for message frames).
    pub version: u16,
    /// Kind.
    pub kind: FrameKind,
    /// Payload bytes (postcard).
    pub payload: Vec<u8>,
}

impl Frame {
    /// Decode the payload as `T`; any decoding failure or trailing byte is `Malformed`.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, FrameError> {
        decode_payload(self.kind, &self.payload)
    }
}

/// Decode a postcard payload as exactly one `T`.
pub fn decode_payload<T: DeserializeOwned>(
    kind: FrameKind,
    payload: &[u8],
) -> Result<T, FrameError> {
    match postcard::take_from_bytes::<T>(payload) {
        Ok((v, [])) => Ok(v),
        Ok((_, rest)) => Err(FrameError::Malformed {
            kind,
            detail: format!("{} trailing bytes after the value", rest.len()),
        }),
        Err(e) => Err(FrameError::Malformed {
            kind,
            detail: e.to_string(),
        }),
    }
}

/// Encodes values into frames.
#[derive(Debug, Clone, Copy)]
pub struct Encoder {
    /// Largest payload it produces.
    pub max_frame: u32,
    /// Version written in headers.
    pub version: u16,
}

impl Default for Encoder {
    fn default() -> Self {
        Encoder {
            max_frame: DEFAULT_MAX_FRAME,
            version: PROTOCOL_VERSION,
        }
    }
}

impl Encoder {
    /// An encoder for the current protocol version with this payload limit.
    pub fn new(max_frame: u32) -> Self {
        Encoder {
            max_frame,
            version: PROTOCOL_VERSION,
        }
    }

    /// Append one frame of `kind` carrying `value` to `out`. On error `out` is unchanged.
    pub fn encode_into<T: Serialize + ?Sized>(
        &self,
        kind: FrameKind,
        value: &T,
        out: &mut Vec<u8>,
    ) -> Result<(), FrameError> {
        let start = out.len();
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&self.version.to_be_bytes());
        out.push(kind as u8);
        out.push(0);
        out.extend_from_slice(&[0; 4]);
        let result = postcard::to_io(value, &mut *out).map(|_| ());
        let len = out.len() - start - HEADER_LEN;
        let checked = match result {
            Err(e) => Err(FrameError::Encode {
                detail: e.to_string(),
            }),
            Ok(()) if len > self.max_frame as usize => Err(FrameError::Oversized {
                len: len as u64,
                max: self.max_frame,
            }),
            Ok(()) => Ok(()),
        };
        match checked {
            Ok(()) => {
                // len <= max_frame <= u32::MAX, checked above.
                out[start + 8..start + HEADER_LEN].copy_from_slice(&(len as u32).to_be_bytes());
                Ok(())
            }
            Err(e) => {
                out.truncate(start);
                Err(e)
            }
        }
    }

    /// One frame of `kind` carrying `value`.
    pub fn encode<T: Serialize + ?Sized>(
        &self,
        kind: FrameKind,
        value: &T,
    ) -> Result<Vec<u8>, FrameError> {
        let mut out = Vec::new();
        self.encode_into(kind, value, &mut out)?;
        Ok(out)
    }

    /// One message frame.
    pub fn encode_message(&self, msg: &Message) -> Result<Vec<u8>, FrameError> {
        self.encode(FrameKind::Message, msg)
    }
}

/// Encode one message frame with the default limit.
pub fn encode_message(msg: &Message) -> Result<Vec<u8>, FrameError> {
    Encoder::default().encode_message(msg)
}

/// Incremental frame decoder (see the module docs for its guarantees).
#[derive(Debug)]
pub struct FrameDecoder {
    max_frame: u32,
    header: [u8; HEADER_LEN],
    header_len: usize,
    /// Parsed header of the frame being received: version, kind, payload length.
    current: Option<(u16, FrameKind, usize)>,
    payload: Vec<u8>,
    error: Option<FrameError>,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_FRAME)
    }
}

impl FrameDecoder {
    /// A decoder refusing payloads longer than `max_frame` bytes.
    pub fn new(max_frame: u32) -> Self {
        FrameDecoder {
            max_frame,
            header: [0; HEADER_LEN],
            header_len: 0,
            current: None,
            payload: Vec::new(),
            error: None,
        }
    }

    /// The payload limit.
    pub fn max_frame(&self) -> u32 {
        self.max_frame
    }

    /// The error this decoder failed with, if any (it refuses all input until reset).
    pub fn error(&self) -> Option<&FrameError> {
        self.error.as_ref()
    }

    /// True when no partial frame is buffered (a clean place for the stream to end).
    pub fn is_idle(&self) -> bool {
        self.error.is_none() && self.header_len == 0
    }

    /// Bytes of the current partial frame held (header included).
    pub fn buffered(&self) -> usize {
        self.header_len + self.payload.len()
    }

    /// Memory reserved for the partial payload; never above `max_frame`.
    pub fn buffer_capacity(&self) -> usize {
        self.payload.capacity()
    }

    /// Forget any partial frame and any error: ready for a fresh stream.
    pub fn reset(&mut self) {
        self.header_len = 0;
        self.current = None;
        self.payload = Vec::new();
        self.error = None;
    }

    /// Record a terminal error: drop buffered bytes and refuse further input with it.
    pub fn fail(&mut self, error: FrameError) -> FrameError {
        self.header_len = 0;
        self.current = None;
        self.payload = Vec::new();
        self.error = Some(error.clone());
        error
    }

    /// The stream ended: Ok if it ended between frames, else `Truncated` (and the decoder
    /// fails with it).
    pub fn finish(&mut self) -> Result<(), FrameError> {
        if let Some(e) = &self.error {
            return Err(e.clone());
        }
        if self.header_len == 0 {
            return Ok(());
        }
        let need = match self.current {
            Some((_, _, len)) => HEADER_LEN + len,
            None => HEADER_LEN,
        };
        let have = self.buffered();
        Err(self.fail(FrameError::Truncated { have, need }))
    }

    /// Consume bytes from the front of `input` until one frame is complete, and return it.
    /// Returns `Ok(None)` when `input` is exhausted without completing a frame. Bytes after the
    /// returned frame stay in `input`.
    pub fn decode_frame(&mut self, input: &mut &[u8]) -> Result<Option<Frame>, FrameError> {
        if let Some(e) = &self.error {
            return Err(e.clone());
        }
        if self.current.is_none() {
            let take = (HEADER_LEN - self.header_len).min(input.len());
            self.header[self.header_len..self.header_len + take].copy_from_slice(&input[..take]);
            *input = &input[take..];
            let old = self.header_len;
            self.header_len += take;
            let magic_seen = self.header_len.min(MAGIC.len());
            if old < MAGIC.len() && self.header[..magic_seen] != MAGIC[..magic_seen] {
                let found = self.header[..magic_seen].to_vec();
                return Err(self.fail(FrameError::BadMagic { found }));
            }
            if self.header_len < HEADER_LEN {
                return Ok(None);
            }
            let parsed = self.parse_header();
            match parsed {
                Ok(h) => self.current = Some(h),
                Err(e) => return Err(self.fail(e)),
            }
        }
        let Some((version, kind, len)) = self.current else {
            return Ok(None);
        };
        let take = (len - self.payload.len()).min(input.len());
        if take > 0 {
            let want = self.payload.len() + take;
            if self.payload.capacity() < want {
                // Grow geometrically but never past the announced length (<= max_frame).
                let target = want.max(self.payload.capacity() * 2).min(len);
                self.payload.reserve_exact(target - self.payload.len());
            }
            self.payload.extend_from_slice(&input[..take]);
            *input = &input[take..];
        }
        if self.payload.len() < len {
            return Ok(None);
        }
        self.header_len = 0;
        self.current = None;
        Ok(Some(Frame {
            version,
            kind,
            payload: std::mem::take(&mut self.payload),
        }))
    }

    /// Like [`decode_frame`](Self::decode_frame) but for an authenticated connection: the frame
    /// must be a message frame and decode as a [`Message`]; anything else fails the decoder.
    pub fn decode_message(&mut self, input: &mut &[u8]) -> Result<Option<Message>, FrameError> {
        let Some(frame) = self.decode_frame(input)? else {
            return Ok(None);
        };
        if frame.kind != FrameKind::Message {
            return Err(self.fail(FrameError::UnexpectedKind {
                expected: FrameKind::Message,
                got: frame.kind,
            }));
        }
        frame.decode().map(Some).map_err(|e| self.fail(e))
    }

    fn parse_header(&self) -> Result<(u16, FrameKind, usize), FrameError> {
        let h = &self.header;
        let version = u16::from_be_bytes([h[4], h[5]]);
        let kind = FrameKind::from_u8(h[6]).ok_or_else(|| FrameError::BadHeader {
            reason: format!("unknown frame kind {}", h[6]),
        })?;
        if h[7] != 0 {
            return Err(FrameError::BadHeader {
                reason: format!("reserved flags set ({:#04x})", h[7]),
            });
        }
        let len = u32::from_be_bytes([h[8], h[9], h[10], h[11]]);
        // Message frames must match our version; handshake frames are passed through so the
        // handshake can report a version mismatch to both sides.
        if kind == FrameKind::Message && version != PROTOCOL_VERSION {
            return Err(FrameError::UnknownVersion {
                got: version,
                expected: PROTOCOL_VERSION,
            });
        }
        if len > self.max_frame {
            return Err(FrameError::Oversized {
                len: len.into(),
                max: self.max_frame,
            });
        }
        Ok((version, kind, len as usize))
    }
}
