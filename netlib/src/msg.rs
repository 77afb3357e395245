//! Blocking message connections: the handshake of [`crate::auth`] and the codec of
//! [`crate::frame`] over any `Read + Write` stream (std `UnixStream`, `TcpStream`). The
//! scheduler's event loop drives the same sans-IO pieces directly instead.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::auth::{AuthError, Handshake, HandshakeState, Peer, Role, Secret};
use crate::frame::{DEFAULT_MAX_FRAME, Encoder, FrameDecoder, FrameError, FrameKind};
use crate::proto::Message;

/// Size of the receive buffer.
const READ_BUF: usize = 64 * 1024;

/// Errors of a message connection. All but `Timeout` are terminal.
#[derive(Debug, Error)]
pub enum MsgError {
    /// The peer closed the connection (between frames, or reset it).
    #[error("the peer closed the connection")]
    Closed,
    /// No message arrived in time (`recv_timeout`, or the handshake timeout).
    #[error("no message within {0:?}")]
    Timeout(Duration),
    /// The byte stream is not valid framing (includes `Truncated` when the peer left mid-frame).
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The handshake failed.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// Another I/O error.
    #[error("control connection I/O error: {0}")]
    Io(#[source] io::Error),
}

impl MsgError {
    fn from_io(e: io::Error) -> Self {
        use io::ErrorKind::*;
        match e.kind() {
            UnexpectedEof | BrokenPipe | ConnectionReset | ConnectionAborted => MsgError::Closed,
            _ => MsgError::Io(e),
        }
    }
}

/// Options of a message connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsgConfig {
    /// Largest frame payload sent or accepted.
    pub max_frame: u32,
    /// Limit for the whole handshake (needs a stream with [`SetReadTimeout`]; None: no limit).
    pub handshake_timeout: Option<Duration>,
}

impl Default for MsgConfig {
    fn default() -> Self {
        MsgConfig {
            max_frame: DEFAULT_MAX_FRAME,
            handshake_timeout: Some(Duration::from_secs(10)),
        }
    }
}

/// Streams whose reads can time out (for `recv_timeout` and the handshake timeout).
pub trait SetReadTimeout {
    /// Set (or clear) the read timeout of the stream.
    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()>;
}

impl SetReadTimeout for UnixStream {
    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        UnixStream::set_read_timeout(self, timeout)
    }
}

impl SetReadTimeout for TcpStream {
    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        TcpStream::set_read_timeout(self, timeout)
    }
}

/// Streams that can be duplicated (for [`MsgConn::split`]).
pub trait TryCloneStream: Sized {
    /// Another handle to the same socket.
    fn try_clone_stream(&self) -> io::Result<Self>;
}

impl TryCloneStream for UnixStream {
    fn try_clone_stream(&self) -> io::Result<Self> {
        self.try_clone()
    }
}

impl TryCloneStream for TcpStream {
    fn try_clone_stream(&self) -> io::Result<Self> {
        self.try_clone()
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// Whole-handshake deadline: remaining time is set as read timeout before each read.
struct Timer<S> {
    deadline: Instant,
    limit: Duration,
    set: fn(&S, Option<Duration>) -> io::Result<()>,
}

/// An authenticated, framed message connection.
#[derive(Debug)]
pub struct MsgConn<S> {
    stream: S,
    peer: Peer,
    encoder: Encoder,
    decoder: FrameDecoder,
    wbuf: Vec<u8>,
    rbuf: Box<[u8]>,
    /// Unconsumed received bytes are `rbuf[rpos..rend]`.
    rpos: usize,
    rend: usize,
    /// Set once the connection failed terminally.
    dead: bool,
}

impl<S: Read + Write> MsgConn<S> {
    /// Connect side: run the handshake as client with `role`, no handshake timeout.
    pub fn client(stream: S, secret: &Secret, role: Role) -> Result<Self, MsgError> {
        let config = MsgConfig {
            handshake_timeout: None,
            ..MsgConfig::default()
        };
        Self::handshake(stream, Handshake::client(secret, role)?, &config)
    }

    /// Accept side: run the handshake as server with `role`, no handshake timeout.
    pub fn server(stream: S, secret: &Secret, role: Role) -> Result<Self, MsgError> {
        let config = MsgConfig {
            handshake_timeout: None,
            ..MsgConfig::default()
        };
        Self::handshake(stream, Handshake::server(secret, role)?, &config)
    }

    /// Run a prepared handshake (any side) over `stream`; `config.handshake_timeout` is ignored
    /// here (see [`MsgConn::client_with`]).
    pub fn handshake(stream: S, hs: Handshake, config: &MsgConfig) -> Result<Self, MsgError> {
        let mut conn = Self::new(stream, config);
        conn.peer = conn.run_handshake(hs, None)?;
        Ok(conn)
    }

    fn new(stream: S, config: &MsgConfig) -> Self {
        MsgConn {
            stream,
            peer: Peer {
                role: Role::User,
                version: 0,
            },
            encoder: Encoder::new(config.max_frame),
            decoder: FrameDecoder::new(config.max_frame),
            wbuf: Vec::new(),
            rbuf: vec![0u8; READ_BUF].into_boxed_slice(),
            rpos: 0,
            rend: 0,
            dead: false,
        }
    }

    fn run_handshake(
        &mut self,
        mut hs: Handshake,
        timer: Option<Timer<S>>,
    ) -> Result<Peer, MsgError> {
        loop {
            let out = hs.take_output();
            if !out.is_empty() {
                // A failed handshake may have queued a Reject: deliver it best-effort.
                let written = self.write_bytes(&out);
                if let HandshakeState::Failed(e) = hs.state() {
                    return Err(e.clone().into());
                }
                written?;
            }
            match hs.state() {
                HandshakeState::Authenticated(peer) => return Ok(*peer),
                HandshakeState::Failed(e) => return Err(e.clone().into()),
                HandshakeState::InProgress => {}
            }
            let frame = loop {
                let mut input = &self.rbuf[self.rpos..self.rend];
                let before = input.len();
                let decoded = self.decoder.decode_frame(&mut input);
                self.rpos += before - input.len();
                match decoded {
                    Ok(Some(f)) => break f,
                    Ok(None) => {
                        if let Some(t) = &timer {
                            let left = t.deadline.saturating_duration_since(Instant::now());
                            if left.is_zero() {
                                return Err(MsgError::Timeout(t.limit));
                            }
                            (t.set)(&self.stream, Some(left)).map_err(MsgError::Io)?;
                        }
                        match self.fill() {
                            Err(MsgError::Io(e)) if timer.is_some() && is_timeout(&e) => {
                                if let Some(t) = &timer {
                                    return Err(MsgError::Timeout(t.limit));
                                }
                            }
                            other => other?,
                        }
                    }
                    Err(e) => return Err(e.into()),
                }
            };
            if let Err(e) = hs.on_frame(&frame) {
                let out = hs.take_output();
                if !out.is_empty() {
                    let _ = self.write_bytes(&out);
                }
                return Err(e.into());
            }
        }
    }

    /// Read more bytes into the (drained) buffer; EOF becomes `Closed` or `Truncated`.
    fn fill(&mut self) -> Result<(), MsgError> {
        self.rpos = 0;
        self.rend = 0;
        loop {
            match self.stream.read(&mut self.rbuf) {
                Ok(0) => {
                    self.dead = true;
                    return Err(match self.decoder.finish() {
                        Ok(()) => MsgError::Closed,
                        Err(e) => MsgError::Frame(e),
                    });
                }
                Ok(n) => {
                    self.rend = n;
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(MsgError::from_io(e)),
            }
        }
    }

    fn write_bytes(&mut self, bytes: &[u8]) -> Result<(), MsgError> {
        self.stream
            .write_all(bytes)
            .and_then(|()| self.stream.flush())
            .map_err(MsgError::from_io)
    }

    /// The authenticated peer (role and version).
    pub fn peer(&self) -> Peer {
        self.peer
    }

    /// Send one message.
    pub fn send(&mut self, msg: &Message) -> Result<(), MsgError> {
        send_frame(&mut self.stream, &self.encoder, &mut self.wbuf, msg)
    }

    /// Receive the next message, blocking until it is complete.
    pub fn recv(&mut self) -> Result<Message, MsgError> {
        if self.dead {
            return Err(self
                .decoder
                .error()
                .cloned()
                .map_or(MsgError::Closed, MsgError::Frame));
        }
        loop {
            let mut input = &self.rbuf[self.rpos..self.rend];
            let before = input.len();
            let decoded = self.decoder.decode_message(&mut input);
            self.rpos += before - input.len();
            match decoded {
                Ok(Some(m)) => return Ok(m),
                Ok(None) => {
                    if let Err(e) = self.fill() {
                        if !matches!(e, MsgError::Timeout(_)) && !is_timeout_err(&e) {
                            self.dead = true;
                        }
                        return Err(e);
                    }
                }
                Err(e) => {
                    self.dead = true;
                    return Err(e.into());
                }
            }
        }
    }

    /// True if a complete or partial frame is already buffered (no read needed to progress).
    pub fn has_buffered(&self) -> bool {
        self.rpos < self.rend || !self.decoder.is_idle()
    }

    /// The underlying stream.
    pub fn get_ref(&self) -> &S {
        &self.stream
    }

    /// The underlying stream, mutably (don't read or write frames behind the connection's back).
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.stream
    }
}

/// Encode `msg` into `wbuf` and write it out.
fn send_frame<W: Write>(
    stream: &mut W,
    encoder: &Encoder,
    wbuf: &mut Vec<u8>,
    msg: &Message,
) -> Result<(), MsgError> {
    wbuf.clear();
    encoder.encode_into(FrameKind::Message, msg, wbuf)?;
    let result = stream
        .write_all(wbuf)
        .and_then(|()| stream.flush())
        .map_err(MsgError::from_io);
    if wbuf.capacity() > 4 * READ_BUF {
        *wbuf = Vec::new();
    }
    result
}

fn is_timeout_err(e: &MsgError) -> bool {
    matches!(e, MsgError::Io(io) if is_timeout(io))
}

impl<S: Read + Write + SetReadTimeout> MsgConn<S> {
    /// Connect side with options; the handshake fails with `Timeout` after
    /// `config.handshake_timeout`.
    pub fn client_with(
        stream: S,
        secret: &Secret,
        role: Role,
        config: &MsgConfig,
    ) -> Result<Self, MsgError> {
        let hs = Handshake::client(secret, role)?;
        Self::handshake_timed(stream, hs, config)
    }

    /// Accept side with options; the handshake fails with `Timeout` after
    /// `config.handshake_timeout` (protects the accepting side from silent peers).
    pub fn server_with(
        stream: S,
        secret: &Secret,
        role: Role,
        config: &MsgConfig,
    ) -> Result<Self, MsgError> {
        let hs = Handshake::server(secret, role)?;
        Self::handshake_timed(stream, hs, config)
    }

    fn handshake_timed(stream: S, hs: Handshake, config: &MsgConfig) -> Result<Self, MsgError> {
        let Some(limit) = config.handshake_timeout else {
            return Self::handshake(stream, hs, config);
        };
        let mut conn = Self::new(stream, config);
        let timer = Timer {
            deadline: Instant::now() + limit,
            limit,
            set: <S as SetReadTimeout>::set_read_timeout,
        };
        conn.peer = conn.run_handshake(hs, Some(timer))?;
        conn.stream.set_read_timeout(None).map_err(MsgError::Io)?;
        Ok(conn)
    }

    /// Receive the next message, waiting at most `timeout`: `Ok(None)` if none completed in
    /// time (a partial frame stays buffered; the connection remains usable).
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<Option<Message>, MsgError> {
        let deadline = Instant::now() + timeout;
        let result = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            // A zero timeout means "block forever" to std: use a tiny one instead.
            let t = left.max(Duration::from_micros(1));
            if let Err(e) = self.stream.set_read_timeout(Some(t)) {
                break Err(MsgError::Io(e));
            }
            match self.recv() {
                Ok(m) => break Ok(Some(m)),
                Err(e) if is_timeout_err(&e) => {
                    if Instant::now() >= deadline {
                        break Ok(None);
                    }
                }
                Err(e) => break Err(e),
            }
        };
        if !self.dead {
            self.stream.set_read_timeout(None).map_err(MsgError::Io)?;
        }
        result
    }
}

impl<S: Read + Write + TryCloneStream> MsgConn<S> {
    /// Split into a receiving half and a sending half (e.g. a receive thread and a thread that
    /// sends heartbeats and reports). Each half owns its own handle to the socket.
    pub fn split(self) -> Result<(MsgReceiver<S>, MsgSender<S>), MsgError> {
        let stream = self.stream.try_clone_stream().map_err(MsgError::Io)?;
        let sender = MsgSender {
            stream,
            encoder: self.encoder,
            wbuf: Vec::new(),
            peer: self.peer,
        };
        Ok((MsgReceiver { conn: self }, sender))
    }
}

/// Receiving half of a split [`MsgConn`].
#[derive(Debug)]
pub struct MsgReceiver<S> {
    conn: MsgConn<S>,
}

impl<S: Read + Write> MsgReceiver<S> {
    /// Receive the next message, blocking until it is complete.
    pub fn recv(&mut self) -> Result<Message, MsgError> {
        self.conn.recv()
    }

    /// The authenticated peer.
    pub fn peer(&self) -> Peer {
        self.conn.peer
    }

    /// The underlying stream.
    pub fn get_ref(&self) -> &S {
        &self.conn.stream
    }
}

impl<S: Read + Write + SetReadTimeout> MsgReceiver<S> {
    /// Like [`MsgConn::recv_timeout`].
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<Option<Message>, MsgError> {
        self.conn.recv_timeout(timeout)
    }
}

/// Sending half of a split [`MsgConn`].
#[derive(Debug)]
pub struct MsgSender<S> {
    stream: S,
    encoder: Encoder,
    wbuf: Vec<u8>,
    peer: Peer,
}

impl<S: Write> MsgSender<S> {
    /// Send one message.
    pub fn send(&mut self, msg: &Message) -> Result<(), MsgError> {
        send_frame(&mut self.stream, &self.encoder, &mut self.wbuf, msg)
    }

    /// The authenticated peer.
    pub fn peer(&self) -> Peer {
        self.peer
    }

    /// The underlying stream (e.g. to `shutdown(Write)` it).
    pub fn get_ref(&self) -> &S {
        &self.stream
    }
}
