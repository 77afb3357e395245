//! Mutual authentication of control connections with a shared cluster secret (DESIGN.md §7).
//!
//! A sans-IO handshake in three frames (kind [`FrameKind::Handshake`]):
//!
//! ```text
//! server -> client  ServerHello { version, role_s, nonce_s }
//! client -> server  ClientHello { version, role_c, nonce_c, proof_c }
//! server -> client  ServerProof { proof_s }            (or Reject { reason })
//! ```
//!
//! `proof_x = HMAC-SHA256(secret, label_x || transcript)` with a different label for each
//! direction and `transcript = version_s || version_c || role_s || role_c || nonce_s || nonce_c`.
//! Nonces are 32 random bytes from the OS, so a recorded proof never matches a new session
//! (replay), and a client proof can never pass as a server proof (reflection). The secret never
//! crosses the wire; proofs are compared in constant time. The server proves itself only after
//! the client has. Either side that finds a problem queues a `Reject` telling the peer why, so
//! both ends report the same error kind.
//!
//! Scope: this authenticates connection setup only; frames after the handshake are neither
//! encrypted nor MACed (no protection against an active man-in-the-middle on the network).

use std::fmt;
use std::path::Path;

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use thiserror::Error;

use crate::frame::{DEFAULT_MAX_FRAME, Encoder, Frame, FrameError, FrameKind};
use crate::proto::PROTOCOL_VERSION;

/// Environment variable holding the cluster secret when no file is given.
pub const SECRET_ENV: &str = "SPATE_SECRET";
/// Shortest accepted secret, in bytes (after trimming surrounding whitespace).
pub const MIN_SECRET_LEN: usize = 16;
/// Length of handshake nonces and proofs.
pub const NONCE_LEN: usize = 32;

type HmacSha256 = Hmac<Sha256>;

// ---------------------------------------------------------------------------------------------
// Secret

/// The shared cluster secret. Its Debug output never shows the bytes; memory is zeroed on drop.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret {
    bytes: Vec<u8>,
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        self.bytes.fill(0);
        std::hint::black_box(&self.bytes);
    }
}

/// Errors loading a secret.
#[derive(Debug, Error)]
pub enum SecretError {
    /// The secret is empty.
    #[error(
        "the cluster secret from {source_name} is empty: put at least {MIN_SECRET_LEN} random bytes in it (e.g. `head -c 32 /dev/urandom | base64`)"
    )]
    Empty {
        /// Where it came from.
        source_name: String,
    },
    /// The secret is too short.
    #[error(
        "the cluster secret from {source_name} has {len} bytes, fewer than the {MIN_SECRET_LEN} required: use e.g. `head -c 32 /dev/urandom | base64`"
    )]
    TooShort {
        /// Where it came from.
        source_name: String,
        /// Its length.
        len: usize,
    },
    /// The file could not be read.
    #[error("cannot read the cluster secret file {path}: {error}")]
    Read {
        /// The path.
        path: String,
        /// The I/O error.
        error: std::io::Error,
    },
    /// Neither a file nor the environment variable provides a secret.
    #[error("no cluster secret: give a secret file or set {SECRET_ENV}")]
    Missing,
    /// The OS random generator failed.
    #[error("the OS random generator failed: {0}")]
    Rng(String),
}

impl Secret {
    /// A secret from raw bytes; surrounding ASCII whitespace (e.g. a trailing newline) is removed.
    pub fn from_bytes(bytes: &[u8], source_name: &str) -> Result<Self, SecretError> {
        let trimmed = bytes.trim_ascii();
        if trimmed.is_empty() {
            return Err(SecretError::Empty {
                source_name: source_name.to_owned(),
            });
        }
        if trimmed.len() < MIN_SECRET_LEN {
            return Err(SecretError::TooShort {
                source_name: source_name.to_owned(),
                len: trimmed.len(),
            });
        }
        Ok(Secret {
            bytes: trimmed.to_vec(),
        })
    }

    /// Load from a file. Logs a warning if the file is readable by group or others.
    pub fn from_file(path: &Path) -> Result<Self, SecretError> {
        let shown = path.display().to_string();
        let read_err = |error| SecretError::Read {
            path: shown.clone(),
            error,
        };
        let meta = std::fs::metadata(path).map_err(read_err)?;
        if let Some(warning) = permission_warning(path, &meta) {
            tracing::warn!("{warning}");
        }
        let mut data = std::fs::read(path).map_err(read_err)?;
        let result = Self::from_bytes(&data, &format!("file {shown}"));
        data.fill(0);
        result
    }

    /// Load from the `SPATE_SECRET` environment variable; `Ok(None)` if it is unset.
    pub fn from_env() -> Result<Option<Self>, SecretError> {
        match std::env::var_os(SECRET_ENV) {
            None => Ok(None),
            Some(v) => Self::from_bytes(v.as_encoded_bytes(), &format!("${SECRET_ENV}")).map(Some),
        }
    }

    /// The file if one is given, else `SPATE_SECRET`, else `Missing`.
    pub fn load(path: Option<&Path>) -> Result<Self, SecretError> {
        match path {
            Some(p) => Self::from_file(p),
            None => Self::from_env()?.ok_or(SecretError::Missing),
        }
    }

    /// A fresh random secret (32 random bytes as 64 hex characters), e.g. to write a new file.
    pub fn generate() -> Result<Self, SecretError> {
        let mut raw = [0u8; 32];
        getrandom::fill(&mut raw).map_err(|e| SecretError::Rng(e.to_string()))?;
        let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
        raw.fill(0);
        Self::from_bytes(hex.as_bytes(), "generator")
    }

    /// The secret bytes (e.g. to write a generated secret to a file). Handle with care.
    pub fn expose(&self) -> &[u8] {
        &self.bytes
    }
}

/// A warning if the file's mode lets group or others read it, naming the fix.
pub fn permission_warning(path: &Path, meta: &std::fs::Metadata) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = meta.permissions().mode();
    // Group read is how an operator shares the secret with the users of a cluster (the
    // scheduler's --group); group write and any access by others are not.
    (mode & 0o027 != 0).then(|| {
        format!(
            "cluster secret file {} is writable by its group or accessible by others (mode {:03o}): run `chmod 600 {}` (or 640 to share it with the group)",
            path.display(),
            mode & 0o777,
            path.display()
        )
    })
}

// ---------------------------------------------------------------------------------------------
// Handshake messages

/// What a peer is; both roles are bound into the proofs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Role {
    /// The scheduler.
    Scheduler,
    /// A producer and/or consumer daemon on its control connection.
    Daemon,
    /// A user (CLI or reader library).
    User,
    /// A producer on a raw data connection.
    Producer,
    /// A consumer on a raw data connection.
    Consumer,
}

impl Role {
    fn code(self) -> u8 {
        match self {
            Role::Scheduler => 1,
            Role::Daemon => 2,
            Role::User => 3,
            Role::Producer => 4,
            Role::Consumer => 5,
        }
    }
}

/// Why a peer rejected the handshake (sent in a `Reject`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RejectReason {
    /// The proof did not verify: the two sides use different secrets.
    WrongSecret,
    /// The versions differ; `version` is the rejecting side's.
    VersionMismatch {
        /// Protocol version of the rejecting side.
        version: u16,
    },
    /// A message out of order or malformed.
    Protocol,
}

/// Handshake frame payloads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HandshakeMsg {
    /// Server's opening: its version, role and nonce.
    ServerHello {
        /// Server protocol version.
        version: u16,
        /// Server role.
        role: Role,
        /// Server nonce.
        nonce: [u8; NONCE_LEN],
    },
    /// Client's answer: its version, role, nonce and proof.
    ClientHello {
        /// Client protocol version.
        version: u16,
        /// Client role.
        role: Role,
        /// Client nonce.
        nonce: [u8; NONCE_LEN],
        /// HMAC over the transcript with the client label.
        proof: [u8; NONCE_LEN],
    },
    /// Server's proof, sent after it verified the client.
    ServerProof {
        /// HMAC over the transcript with the server label.
        proof: [u8; NONCE_LEN],
    },
    /// Handshake refused.
    Reject {
        /// Why.
        reason: RejectReason,
    },
}

// ---------------------------------------------------------------------------------------------
// Errors

/// Why a handshake failed. Terminal for the connection.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AuthError {
    /// A proof did not verify: the two sides do not share the same cluster secret.
    #[error(
        "authentication failed: the peer does not share this node's cluster secret (load the \
         same secret file or {SECRET_ENV} on every node)"
    )]
    WrongSecret,
    /// The peers speak different protocol versions.
    #[error(
        "protocol version mismatch: this side speaks {ours}, the peer {theirs}; run the same \
         spate version on every node"
    )]
    VersionMismatch {
        /// Our version.
        ours: u16,
        /// The peer's version.
        theirs: u16,
    },
    /// The peer sent something out of order, or rejected ours as such.
    #[error("handshake protocol error: {0}")]
    Protocol(String),
    /// A handshake frame could not be decoded.
    #[error("handshake frame: {0}")]
    Frame(#[from] FrameError),
    /// The OS random generator failed.
    #[error("the OS random generator failed: {0}")]
    Rng(String),
}

// ---------------------------------------------------------------------------------------------
// State machine

/// Which end of the connection this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    /// Connected out; speaks second.
    Client,
    /// Accepted; speaks first.
    Server,
}

/// The authenticated peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Peer {
    /// Its role.
    pub role: Role,
    /// Its protocol version (equal to ours).
    pub version: u16,
}

/// Progress of a handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandshakeState {
    /// Waiting for the peer's next frame.
    InProgress,
    /// Both sides proved knowledge of the secret.
    Authenticated(Peer),
    /// Failed with this error.
    Failed(AuthError),
}

/// The frame the handshake waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// Client waiting for ServerHello.
    ServerHello,
    /// Server waiting for ClientHello.
    ClientHello,
    /// Client waiting for ServerProof.
    ServerProof,
}

/// Sans-IO handshake. Drive it with frames from a [`crate::frame::FrameDecoder`]
/// ([`on_frame`](Self::on_frame)) and send what [`take_output`](Self::take_output) returns,
/// also after an error (a `Reject` telling the peer why).
pub struct Handshake {
    side: Side,
    secret: Secret,
    role: Role,
    version: u16,
    encoder: Encoder,
    nonce: [u8; NONCE_LEN],
    step: Step,
    /// (version, role, nonce) of the server, once known (clients).
    server_hello: Option<(u16, Role, [u8; NONCE_LEN])>,
    state: HandshakeState,
    out: Vec<u8>,
}

impl fmt::Debug for Handshake {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handshake")
            .field("side", &self.side)
            .field("role", &self.role)
            .field("step", &self.step)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

/// 32 random bytes from the OS.
pub fn random_nonce() -> Result<[u8; NONCE_LEN], AuthError> {
    let mut n = [0u8; NONCE_LEN];
    getrandom::fill(&mut n).map_err(|e| AuthError::Rng(e.to_string()))?;
    Ok(n)
}

const CLIENT_LABEL: &[u8] = b"spate-auth-v1 client proof";
const SERVER_LABEL: &[u8] = b"spate-auth-v1 server proof";

/// The HMAC for one direction over the transcript.
fn proof_mac(
    secret: &Secret,
    label: &[u8],
    server: (u16, Role, &[u8; NONCE_LEN]),
    client: (u16, Role, &[u8; NONCE_LEN]),
) -> HmacSha256 {
    // HMAC accepts keys of any length, so this cannot fail; fall back to an empty-key MAC
    // rather than panic (it would simply never verify against a real peer).
    let mut mac = HmacSha256::new_from_slice(&secret.bytes)
        .unwrap_or_else(|_| <HmacSha256 as Mac>::new(&Default::default()));
    mac.update(&[label.len() as u8]);
    mac.update(label);
    mac.update(&server.0.to_be_bytes());
    mac.update(&client.0.to_be_bytes());
    mac.update(&[server.1.code(), client.1.code()]);
    mac.update(server.2);
    mac.update(client.2);
    mac
}

fn proof(
    secret: &Secret,
    label: &[u8],
    server: (u16, Role, &[u8; NONCE_LEN]),
    client: (u16, Role, &[u8; NONCE_LEN]),
) -> [u8; NONCE_LEN] {
    proof_mac(secret, label, server, client)
        .finalize()
        .into_bytes()
        .into()
}

/// Constant-time check of `tag` (through `hmac`'s `verify_slice`).
fn verify(
    secret: &Secret,
    label: &[u8],
    server: (u16, Role, &[u8; NONCE_LEN]),
    client: (u16, Role, &[u8; NONCE_LEN]),
    tag: &[u8; NONCE_LEN],
) -> bool {
    proof_mac(secret, label, server, client)
        .verify_slice(tag)
        .is_ok()
}

impl Handshake {
    /// A client handshake with a fresh random nonce.
    pub fn client(secret: &Secret, role: Role) -> Result<Self, AuthError> {
        Ok(Self::client_with_nonce(secret, role, random_nonce()?))
    }

    /// A server handshake with a fresh random nonce; its ServerHello is queued at once.
    pub fn server(secret: &Secret, role: Role) -> Result<Self, AuthError> {
        Ok(Self::server_with_nonce(secret, role, random_nonce()?))
    }

    /// A client with a given nonce (deterministic tests; real use takes [`client`](Self::client)).
    pub fn client_with_nonce(secret: &Secret, role: Role, nonce: [u8; NONCE_LEN]) -> Self {
        Self::new(Side::Client, secret, role, nonce, PROTOCOL_VERSION)
    }

    /// A server with a given nonce (deterministic tests; real use takes [`server`](Self::server)).
    pub fn server_with_nonce(secret: &Secret, role: Role, nonce: [u8; NONCE_LEN]) -> Self {
        Self::new(Side::Server, secret, role, nonce, PROTOCOL_VERSION)
    }

    /// A handshake that claims another protocol version (to test version checks).
    pub fn with_version(
        side: Side,
        secret: &Secret,
        role: Role,
        nonce: [u8; NONCE_LEN],
        version: u16,
    ) -> Self {
        Self::new(side, secret, role, nonce, version)
    }

    fn new(side: Side, secret: &Secret, role: Role, nonce: [u8; NONCE_LEN], version: u16) -> Self {
        let mut hs = Handshake {
            side,
            secret: secret.clone(),
            role,
            version,
            encoder: Encoder {
                max_frame: DEFAULT_MAX_FRAME,
                version,
            },
            nonce,
            step: match side {
                Side::Client => Step::ServerHello,
                Side::Server => Step::ClientHello,
            },
            server_hello: None,
            state: HandshakeState::InProgress,
            out: Vec::new(),
        };
        if side == Side::Server {
            hs.queue(&HandshakeMsg::ServerHello {
                version,
                role,
                nonce,
            });
        }
        hs
    }

    /// Client or server.
    pub fn side(&self) -> Side {
        self.side
    }

    /// Current state.
    pub fn state(&self) -> &HandshakeState {
        &self.state
    }

    /// The peer, once authenticated.
    pub fn peer(&self) -> Option<Peer> {
        match self.state {
            HandshakeState::Authenticated(p) => Some(p),
            _ => None,
        }
    }

    /// Frames to send now (empty if none). Send them even after an error.
    pub fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }

    /// True if output is waiting.
    pub fn has_output(&self) -> bool {
        !self.out.is_empty()
    }

    fn queue(&mut self, msg: &HandshakeMsg) {
        // Handshake messages are ~100 bytes: encoding cannot exceed the limit.
        if let Err(e) = self
            .encoder
            .encode_into(FrameKind::Handshake, msg, &mut self.out)
        {
            self.state = HandshakeState::Failed(AuthError::Frame(e));
        }
    }

    /// Fail, queueing a Reject for the peer when `reject` is given.
    fn fail(&mut self, err: AuthError, reject: Option<RejectReason>) -> AuthError {
        if let Some(reason) = reject {
            self.queue(&HandshakeMsg::Reject { reason });
        }
        self.state = HandshakeState::Failed(err.clone());
        err
    }

    /// Map a peer's Reject to our error.
    fn rejected(&self, reason: RejectReason) -> AuthError {
        match reason {
            RejectReason::WrongSecret => AuthError::WrongSecret,
            RejectReason::VersionMismatch { version } => AuthError::VersionMismatch {
                ours: self.version,
                theirs: version,
            },
            RejectReason::Protocol => {
                AuthError::Protocol("the peer rejected our handshake as out of order".into())
            }
        }
    }

    /// Feed one frame from the peer. Returns the new state (`Authenticated` when done).
    pub fn on_frame(&mut self, frame: &Frame) -> Result<&HandshakeState, AuthError> {
        match &self.state {
            HandshakeState::InProgress => {}
            HandshakeState::Failed(e) => return Err(e.clone()),
            HandshakeState::Authenticated(_) => {
                let e = AuthError::Protocol("handshake frame after authentication".into());
                return Err(self.fail(e, None));
            }
        }
        if frame.kind != FrameKind::Handshake {
            let e = AuthError::Frame(FrameError::UnexpectedKind {
                expected: FrameKind::Handshake,
                got: frame.kind,
            });
            return Err(self.fail(e, Some(RejectReason::Protocol)));
        }
        if frame.version != self.version {
            let e = AuthError::VersionMismatch {
                ours: self.version,
                theirs: frame.version,
            };
            let reject = RejectReason::VersionMismatch {
                version: self.version,
            };
            return Err(self.fail(e, Some(reject)));
        }
        let msg: HandshakeMsg = match frame.decode() {
            Ok(m) => m,
            Err(e) => return Err(self.fail(e.into(), Some(RejectReason::Protocol))),
        };
        let result = match (self.step, msg) {
            (_, HandshakeMsg::Reject { reason }) => Err((self.rejected(reason), None)),
            (
                Step::ServerHello,
                HandshakeMsg::ServerHello {
                    version,
                    role,
                    nonce,
                },
            ) => self.on_server_hello(version, role, nonce),
            (
                Step::ClientHello,
                HandshakeMsg::ClientHello {
                    version,
                    role,
                    nonce,
                    proof,
                },
            ) => self.on_client_hello(version, role, nonce, proof),
            (Step::ServerProof, HandshakeMsg::ServerProof { proof }) => self.on_server_proof(proof),
            (step, msg) => Err((
                AuthError::Protocol(format!(
                    "unexpected {} while waiting for {step:?}",
                    msg_name(&msg)
                )),
                Some(RejectReason::Protocol),
            )),
        };
        match result {
            Ok(()) => Ok(&self.state),
            Err((e, reject)) => Err(self.fail(e, reject)),
        }
    }

    fn check_version(&self, version: u16) -> Result<(), (AuthError, Option<RejectReason>)> {
        if version == self.version {
            return Ok(());
        }
        Err((
            AuthError::VersionMismatch {
                ours: self.version,
                theirs: version,
            },
            Some(RejectReason::VersionMismatch {
                version: self.version,
            }),
        ))
    }

    fn on_server_hello(
        &mut self,
        version: u16,
        role: Role,
        nonce: [u8; NONCE_LEN],
    ) -> Result<(), (AuthError, Option<RejectReason>)> {
        self.check_version(version)?;
        if nonce == self.nonce {
            return Err((
                AuthError::Protocol("the server echoed our nonce (reflection)".into()),
                Some(RejectReason::Protocol),
            ));
        }
        let mine = (self.version, self.role, &self.nonce);
        let proof = proof(&self.secret, CLIENT_LABEL, (version, role, &nonce), mine);
        self.server_hello = Some((version, role, nonce));
        self.step = Step::ServerProof;
        self.queue(&HandshakeMsg::ClientHello {
            version: self.version,
            role: self.role,
            nonce: self.nonce,
            proof,
        });
        Ok(())
    }

    fn on_client_hello(
        &mut self,
        version: u16,
        role: Role,
        nonce: [u8; NONCE_LEN],
        tag: [u8; NONCE_LEN],
    ) -> Result<(), (AuthError, Option<RejectReason>)> {
        self.check_version(version)?;
        if nonce == self.nonce {
            return Err((
                AuthError::Protocol("the client echoed our nonce (reflection)".into()),
                Some(RejectReason::Protocol),
            ));
        }
        let mine = (self.version, self.role, &self.nonce);
        let theirs = (version, role, &nonce);
        if !verify(&self.secret, CLIENT_LABEL, mine, theirs, &tag) {
            return Err((AuthError::WrongSecret, Some(RejectReason::WrongSecret)));
        }
        let proof = proof(&self.secret, SERVER_LABEL, mine, theirs);
        self.queue(&HandshakeMsg::ServerProof { proof });
        self.state = HandshakeState::Authenticated(Peer { role, version });
        Ok(())
    }

    fn on_server_proof(
        &mut self,
        tag: [u8; NONCE_LEN],
    ) -> Result<(), (AuthError, Option<RejectReason>)> {
        let Some((version, role, nonce)) = self.server_hello else {
            return Err((
                AuthError::Protocol("server proof before server hello".into()),
                Some(RejectReason::Protocol),
            ));
        };
        let mine = (self.version, self.role, &self.nonce);
        if !verify(
            &self.secret,
            SERVER_LABEL,
            (version, role, &nonce),
            mine,
            &tag,
        ) {
            // The server already considers us authenticated; closing tells it enough.
            return Err((AuthError::WrongSecret, None));
        }
        self.state = HandshakeState::Authenticated(Peer { role, version });
        Ok(())
    }
}

fn msg_name(m: &HandshakeMsg) -> &'static str {
    match m {
        HandshakeMsg::ServerHello { .. } => "ServerHello",
        HandshakeMsg::ClientHello { .. } => "ClientHello",
        HandshakeMsg::ServerProof { .. } => "ServerProof",
        HandshakeMsg::Reject { .. } => "Reject",
    }
}
