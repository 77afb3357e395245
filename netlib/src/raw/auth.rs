//! Authentication of raw connections: before any raw frame, both ends run the mutual
//! challenge–response of [`crate::auth`] with the cluster secret, in control-protocol frames
//! (the consumer speaks first, as the accepting side). The producer then names itself in a
//! `Hello` frame (its node name), so the consumer can check that the scheduler assigned it to
//! the job of every chunk it offers.
//!
//! [`Gate`] is the sans-IO part both machines embed: it reads handshake frames in the exact
//! sizes a receiver asks for (no byte of the raw frames after it is consumed), or from any
//! split (a sender reads what is there), and says when the peer is authenticated.

use crate::auth::{AuthError, Handshake, HandshakeState, Peer, Role, Secret};
use crate::frame::{FrameDecoder, HEADER_LEN as FRAME_HEADER};

use super::error::ProtocolError;
use super::wire::MAX_NAME;

/// Largest handshake frame payload accepted (they are about 100 bytes).
const MAX_HANDSHAKE_FRAME: u32 = 1024;

/// The credentials of one end of raw connections.
#[derive(Debug, Clone)]
pub struct RawAuth {
    /// The cluster secret.
    pub secret: Secret,
    /// This node's name (a producer sends it to consumers after authenticating).
    pub name: String,
}

impl RawAuth {
    /// Credentials for node `name`; the name must be 1 to [`MAX_NAME`] bytes.
    pub fn new(secret: Secret, name: &str) -> Result<RawAuth, String> {
        if name.is_empty() || name.len() > MAX_NAME {
            return Err(format!(
                "a node name on raw connections is 1 to {MAX_NAME} bytes, not {}",
                name.len()
            ));
        }
        Ok(RawAuth {
            secret,
            name: name.to_string(),
        })
    }
}

/// A handshake in progress on one raw connection (see the module docs).
pub struct Gate {
    hs: Handshake,
    expect: Role,
    dec: FrameDecoder,
    /// Bytes of the current frame fed so far, and its header.
    have: usize,
    hdr: [u8; FRAME_HEADER],
    peer: Option<Peer>,
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gate")
            .field("hs", &self.hs)
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

impl Gate {
    /// The accepting (consumer) end: it expects a producer.
    pub fn server(secret: &Secret) -> Result<Gate, ProtocolError> {
        let hs = Handshake::server(secret, Role::Consumer).map_err(ProtocolError::Auth)?;
        Ok(Gate::with(hs, Role::Producer))
    }

    /// The connecting (producer) end: it expects a consumer.
    pub fn client(secret: &Secret) -> Result<Gate, ProtocolError> {
        let hs = Handshake::client(secret, Role::Producer).map_err(ProtocolError::Auth)?;
        Ok(Gate::with(hs, Role::Consumer))
    }

    /// A gate around a prepared handshake (e.g. with a fixed nonce or another version, in
    /// tests), expecting a peer of role `expect`.
    pub fn with(hs: Handshake, expect: Role) -> Gate {
        Gate {
            hs,
            expect,
            dec: FrameDecoder::new(MAX_HANDSHAKE_FRAME),
            have: 0,
            hdr: [0; FRAME_HEADER],
            peer: None,
        }
    }

    /// The authenticated peer, once it is.
    pub fn peer(&self) -> Option<Peer> {
        self.peer
    }

    /// Bytes that complete the current handshake frame (header first, then its payload).
    pub fn want(&self) -> usize {
        if self.have < FRAME_HEADER {
            return FRAME_HEADER - self.have;
        }
        let len = u32::from_be_bytes([self.hdr[8], self.hdr[9], self.hdr[10], self.hdr[11]]);
        (FRAME_HEADER + len as usize)
            .saturating_sub(self.have)
            .max(1)
    }

    /// Handshake bytes to send (also after a failure: a Reject telling the peer why).
    pub fn take_output(&mut self) -> Vec<u8> {
        self.hs.take_output()
    }

    /// Feed bytes from the peer; returns how many were consumed: all of them until the peer is
    /// authenticated, none after (they are raw frames).
    pub fn feed(&mut self, input: &[u8]) -> Result<usize, ProtocolError> {
        let mut pos = 0;
        while self.peer.is_none() && pos < input.len() {
            let mut rest = &input[pos..];
            let before = rest.len();
            let decoded = self.dec.decode_frame(&mut rest);
            let used = before - rest.len();
            for (k, b) in input[pos..pos + used].iter().enumerate() {
                match self.hdr.get_mut(self.have + k) {
                    Some(h) => *h = *b,
                    None => break,
                }
            }
            self.have += used;
            pos += used;
            let frame = match decoded {
                Ok(Some(f)) => f,
                Ok(None) if used == 0 => break,
                Ok(None) => continue,
                Err(e) => return Err(ProtocolError::Auth(AuthError::Frame(e))),
            };
            self.have = 0;
            match self.hs.on_frame(&frame) {
                Ok(HandshakeState::Authenticated(p)) => {
                    if p.role != self.expect {
                        return Err(ProtocolError::UnexpectedRole {
                            got: p.role,
                            want: self.expect,
                        });
                    }
                    self.peer = Some(*p);
                }
                Ok(_) => {}
                Err(e) => return Err(ProtocolError::Auth(e)),
            }
        }
        Ok(pos)
    }
}
