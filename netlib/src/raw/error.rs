//! Errors: [`ProtocolError`] is what the sans-IO machines report (the peer broke the protocol,
//! or the caller fed them out of turn); [`RawError`] is what the io_uring shells report, adding
//! the I/O, runtime and connection errors only they can meet.

use std::io;
use std::time::Duration;

use spate_runtime::RuntimeError;

use super::ConnId;
use super::wire::{ChunkKey, Malformed};
use crate::endpoint::EndpointError;
use crate::sockopt::SockoptError;

/// What a protocol violation is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subject {
    /// A chunk.
    Chunk(ChunkKey),
    /// A shared segment.
    Segment(u32),
}

impl std::fmt::Display for Subject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Subject::Chunk(k) => write!(f, "{k}"),
            Subject::Segment(s) => write!(f, "segment {s}"),
        }
    }
}

/// A protocol error found by a machine. Terminal for the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// The peer sent a malformed header.
    #[error("malformed raw frame: {0}")]
    Malformed(#[from] Malformed),
    /// A well-formed frame that breaks the protocol.
    #[error("raw protocol violation: {what} for {subject}")]
    Violation {
        /// What happened.
        what: &'static str,
        /// What it is about.
        subject: Subject,
    },
    /// The peer closed the connection (mid-frame or mid-payload if `mid_frame`).
    #[error("connection closed by peer{}", if *mid_frame { " in the middle of a frame" } else { "" })]
    Closed {
        /// Whether a frame or payload was cut off.
        mid_frame: bool,
    },
    /// The peer passed more descriptors than its frames declare.
    #[error("the peer passed more descriptors than its frames declare")]
    ExtraDescriptors,
    /// The handshake with the cluster secret failed (wrong secret, versions, garbage).
    #[error("raw connection authentication: {0}")]
    Auth(crate::auth::AuthError),
    /// The peer authenticated in another role than this end talks to.
    #[error("the peer authenticated as a {got:?}, not as a {want:?}")]
    UnexpectedRole {
        /// The peer's role.
        got: crate::auth::Role,
        /// The role expected.
        want: crate::auth::Role,
    },
    /// An authenticated producer sent a frame before its `Hello`.
    #[error("a {0:?} frame before the producer said who it is")]
    NoHello(super::wire::Kind),
    /// A second `Hello`.
    #[error("the producer said who it is twice")]
    HelloTwice,
    /// The peer's `Hello` name is not UTF-8.
    #[error("the peer's node name is not UTF-8")]
    BadName,
    /// The caller fed the machine a completion it did not ask for (a bug in the shell).
    #[error("raw connection state misused: {0}")]
    Misuse(&'static str),
}

impl ProtocolError {
    /// A violation about a chunk.
    pub fn chunk(what: &'static str, key: ChunkKey) -> ProtocolError {
        ProtocolError::Violation {
            what,
            subject: Subject::Chunk(key),
        }
    }

    /// A violation about a segment.
    pub fn segment(what: &'static str, seg: u32) -> ProtocolError {
        ProtocolError::Violation {
            what,
            subject: Subject::Segment(seg),
        }
    }
}

/// Errors of raw connections.
#[derive(Debug, thiserror::Error)]
pub enum RawError {
    /// The peer broke the protocol (or closed mid-frame); the connection is closed.
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
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
    /// Zero copy asked of a connection that is not local.
    #[error("zero copy needs a local (UNIX) connection; {0} is not one")]
    NotLocal(String),
    /// The peer did not complete the authentication in time.
    #[error(
        "no authenticated hello within {0:?}: the peer does not speak spate's authenticated raw \
         protocol (run the same spate version with the cluster secret on both nodes)"
    )]
    HandshakeTimeout(Duration),
    /// The receiver took back a chunk the peer held granted without sending it, because
    /// another producer offered the same bytes.
    #[error(
        "closed: the peer held {key} for {held:?} without sending it while another producer \
         offered it (a stalled producer)"
    )]
    Stalled {
        /// The chunk.
        key: ChunkKey,
        /// How long it was held.
        held: Duration,
    },
    /// The pool is waiting before reconnecting.
    #[error("{endpoint} failed recently; next reconnect attempt in {retry_in:?}")]
    Backoff {
        /// Endpoint.
        endpoint: String,
        /// Time left.
        retry_in: Duration,
    },
}

impl From<Malformed> for RawError {
    fn from(m: Malformed) -> Self {
        RawError::Protocol(m.into())
    }
}
