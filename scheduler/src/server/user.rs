//! The user's side of a scheduler connection (for `spate submit`, `status`, `cancel` and
//! tests), and where the cluster secret comes from.
//!
//! # The cluster secret
//!
//! Looked up in this order, by the scheduler and its clients alike:
//! 1. a secret file given on the command line (`--secret-file PATH`);
//! 2. the `SPATE_SECRET` environment variable;
//! 3. for a UNIX endpoint `unix:PATH`: the file `PATH.secret` next to the socket, if it exists.
//!
//! When none of these gives a secret and the scheduler listens only on UNIX sockets (a local
//! setup), it generates one and writes it to `PATH.secret` (mode 0600) next to its first
//! socket, where local clients find it by rule 3. The file is kept when the scheduler stops,
//! so daemons and users keep working across restarts. A scheduler listening on TCP never
//! generates a secret: every node needs the same one, so give it explicitly.

use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use spate_netlib::auth::{Role, SECRET_ENV, Secret, SecretError};
use spate_netlib::endpoint::{Endpoint, EndpointError, Stream, Via};
use spate_netlib::msg::{MsgConn, MsgError};
use spate_netlib::proto::Message;

/// Where the scheduler listens when no endpoint is given.
pub const DEFAULT_ENDPOINT: &str = "unix:/run/spate/sched.sock";

/// The secret file beside a UNIX socket (`PATH.secret`); None for TCP.
pub fn secret_path_for(ep: &Endpoint) -> Option<PathBuf> {
    match ep {
        Endpoint::Unix(p) => {
            let mut s = p.clone().into_os_string();
            s.push(".secret");
            Some(PathBuf::from(s))
        }
        Endpoint::Tcp { .. } => None,
    }
}

/// The secret for talking to the scheduler at `ep` (see the module docs).
pub fn load_secret(file: Option<&Path>, ep: &Endpoint) -> Result<Secret, SecretError> {
    if let Some(f) = file {
        return Secret::from_file(f);
    }
    if let Some(s) = Secret::from_env()? {
        return Ok(s);
    }
    match secret_path_for(ep) {
        Some(p) if p.exists() => Secret::from_file(&p),
        Some(p) => Err(SecretError::Read {
            path: p.display().to_string(),
            error: io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "no cluster secret: give --secret-file, set {SECRET_ENV}, or let a local \
                     scheduler create this file"
                ),
            ),
        }),
        None => Err(SecretError::Missing),
    }
}

/// Where the scheduler's secret came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretOrigin {
    /// The file given.
    File(PathBuf),
    /// `SPATE_SECRET`.
    Env,
    /// An existing `PATH.secret` beside the socket.
    Beside(PathBuf),
    /// Generated now into this file.
    Generated(PathBuf),
}

/// The scheduler's secret (see the module docs), and where it came from.
pub fn server_secret(
    file: Option<&Path>,
    listen: &[Endpoint],
) -> Result<(Secret, SecretOrigin), SecretError> {
    if let Some(f) = file {
        return Ok((Secret::from_file(f)?, SecretOrigin::File(f.to_path_buf())));
    }
    if let Some(s) = Secret::from_env()? {
        return Ok((s, SecretOrigin::Env));
    }
    let beside = listen.iter().find_map(secret_path_for);
    let Some(path) = beside else {
        return Err(SecretError::Missing);
    };
    if path.exists() {
        return Ok((Secret::from_file(&path)?, SecretOrigin::Beside(path)));
    }
    if listen.iter().any(|e| matches!(e, Endpoint::Tcp { .. })) {
        return Err(SecretError::Missing);
    }
    let secret = Secret::generate()?;
    let read_err = |error| SecretError::Read {
        path: path.display().to_string(),
        error,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(read_err)?;
    f.write_all(secret.expose())
        .and_then(|()| f.write_all(b"\n"))
        .map_err(read_err)?;
    Ok((secret, SecretOrigin::Generated(path)))
}

/// Why a user connection failed.
#[derive(Debug, thiserror::Error)]
pub enum UserError {
    /// The scheduler cannot be reached.
    #[error("cannot reach the scheduler: {0}; is `spate scheduler` running there?")]
    Connect(#[from] EndpointError),
    /// The handshake failed (e.g. wrong secret).
    #[error("scheduler at {endpoint}: {source}")]
    Handshake {
        /// The endpoint.
        endpoint: String,
        /// Why.
        source: MsgError,
    },
    /// The scheduler closed the connection.
    #[error("the scheduler closed the connection (it stopped or died)")]
    Lost,
    /// The scheduler is shutting down.
    #[error("the scheduler is shutting down: {0}")]
    Shutdown(String),
    /// Another connection error.
    #[error("connection to the scheduler: {0}")]
    Msg(#[from] MsgError),
}

/// A user's connection to the scheduler.
#[derive(Debug)]
pub struct User {
    conn: MsgConn<Stream>,
}

impl User {
    /// Connects and authenticates as a user; connect and handshake each wait at most `timeout`.
    pub fn connect(ep: &Endpoint, secret: &Secret, timeout: Duration) -> Result<User, UserError> {
        let stream = ep.connect(&Via::any(), Some(timeout))?;
        let set = |s: &Stream, t: Option<Duration>| match s {
            Stream::Unix(u) => u.set_read_timeout(t),
            Stream::Tcp(t2) => t2.set_read_timeout(t),
        };
        let hs_err = |source| UserError::Handshake {
            endpoint: ep.to_string(),
            source,
        };
        set(&stream, Some(timeout)).map_err(|e| hs_err(MsgError::Io(e)))?;
        let conn = MsgConn::client(stream, secret, Role::User).map_err(hs_err)?;
        set(conn.get_ref(), None).map_err(|e| hs_err(MsgError::Io(e)))?;
        Ok(User { conn })
    }

    /// Sends one message.
    pub fn send(&mut self, msg: &Message) -> Result<(), UserError> {
        self.conn.send(msg).map_err(lost)
    }

    /// The next message other than a heartbeat; `Shutdown` and EOF become errors.
    pub fn recv(&mut self) -> Result<Message, UserError> {
        loop {
            match self.conn.recv().map_err(lost)? {
                Message::Heartbeat => {}
                Message::Shutdown { reason } => return Err(UserError::Shutdown(reason)),
                m => return Ok(m),
            }
        }
    }

    /// Sends `msg` and returns the first answer for which `pick` gives Some, skipping job
    /// updates (and anything else `pick` declines).
    pub fn request<T>(
        &mut self,
        msg: &Message,
        mut pick: impl FnMut(Message) -> Option<T>,
    ) -> Result<T, UserError> {
        self.send(msg)?;
        loop {
            if let Some(t) = pick(self.recv()?) {
                return Ok(t);
            }
        }
    }
}

fn lost(e: MsgError) -> UserError {
    match e {
        MsgError::Closed => UserError::Lost,
        MsgError::Frame(spate_netlib::frame::FrameError::Truncated { .. }) => UserError::Lost,
        e => UserError::Msg(e),
    }
}
