//! Hand-off of ring segments to local readers: a UNIX socket server (in the writer's process)
//! serving many streams by key, passing the two memfds with `SCM_RIGHTS` after checking the
//! peer's credentials (`SO_PEERCRED`: same uid, or an allow list). The connection stays open
//! for the life of the attachment: EOF tells each side that the other went away.
//!
//! The server serves every client at once: one thread polls non-blocking sockets, so a client
//! that connects and sends nothing (or sends its request slowly) delays no one. It is dropped
//! when its request has not arrived within [`HandoffConfig::request_timeout`], or when
//! [`HandoffConfig::max_pending`] newer clients are waiting too.
//!
//! Wire format (all integers little-endian):
//! - request: `b"SPHO"`, version `u8` = 1, key length `u16`, key bytes (UTF-8, ≤ 1024);
//! - response: `b"SPHO"`, status `u8` (0 ok, 1 unknown key, 2 denied, 3 bad request,
//!   4 busy), message length `u16`, message; on status 0 the control and data fds ride along.

use crate::ctl;
use crate::header;
use crate::live;
use crate::reader::{AttachError, Reader};
use crate::shm::{Mapping, Segment, ShmError};
use crate::writer::{WriteError, Writer};
use nix::sys::socket::{
    ControlMessage, ControlMessageOwned, MsgFlags, getsockopt, recvmsg, sendmsg,
    sockopt::PeerCredentials,
};
use std::collections::{HashMap, VecDeque};
use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const MAGIC: &[u8; 4] = b"SPHO";
const VERSION: u8 = 1;
/// Longest stream key.
pub const MAX_KEY: usize = 1024;
const ST_OK: u8 = 0;
const ST_UNKNOWN: u8 = 1;
const ST_DENIED: u8 = 2;
const ST_BAD: u8 = 3;
const ST_BUSY: u8 = 4;

/// Errors of the hand-off (both sides).
#[derive(Debug, thiserror::Error)]
pub enum HandoffError {
    /// A socket operation failed.
    #[error("{op} {path}: {err}")]
    Io {
        /// What was done.
        op: &'static str,
        /// The socket path.
        path: String,
        /// The OS error.
        err: io::Error,
    },
    /// Another live server owns the path.
    #[error("{0}: another hand-off server is listening there (stop it or pick another path)")]
    InUse(String),
    /// The path exists and is not a socket (never removed).
    #[error("{0}: exists and is not a socket; refusing to replace it")]
    NotASocket(String),
    /// The server refused our credentials.
    #[error("hand-off refused: {0}")]
    Denied(String),
    /// No stream is published under the key.
    #[error("no stream with key {0:?} is published here")]
    UnknownKey(String),
    /// The stream is busy (already has a reader).
    #[error("stream busy: {0}")]
    Busy(String),
    /// The peer spoke something else.
    #[error("hand-off protocol error: {0}")]
    Protocol(String),
    /// The key is too long or empty.
    #[error("bad stream key: {0}")]
    BadKey(String),
    /// Attaching to the received segments failed.
    #[error(transparent)]
    Attach(#[from] AttachError),
    /// Mapping the published ring failed.
    #[error(transparent)]
    Shm(#[from] ShmError),
    /// Getting the writer's fds failed.
    #[error(transparent)]
    Write(#[from] WriteError),
}

/// Told, on the server's thread, of every client the server refuses, with why (the daemon
/// embedding the server logs it: this crate logs nothing). It must return quickly.
#[derive(Clone)]
pub struct RefusalHook(pub Arc<dyn Fn(&str) + Send + Sync>);

impl std::fmt::Debug for RefusalHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RefusalHook(..)")
    }
}

/// Hand-off server configuration.
#[derive(Clone, Debug)]
pub struct HandoffConfig {
    /// Uids allowed besides the server's own.
    pub allow_uids: Vec<u32>,
    /// How long a client may take, from connecting, to send its whole request; then it is
    /// answered "bad request" and dropped. Others are served meanwhile. Default 10 s.
    pub request_timeout: Duration,
    /// Most clients waiting to send their request at once; a new one beyond it pushes out the
    /// one waiting longest. Default 256.
    pub max_pending: usize,
    /// Told of every refused client (bad or late request, unknown key, busy stream, a uid
    /// not allowed). Default: none.
    pub on_refused: Option<RefusalHook>,
}

impl Default for HandoffConfig {
    fn default() -> Self {
        HandoffConfig {
            allow_uids: Vec::new(),
            request_timeout: Duration::from_secs(10),
            max_pending: 256,
            on_refused: None,
        }
    }
}

struct Published {
    ctl_fd: OwnedFd,
    data_fd: OwnedFd,
    ctl_map: Arc<Mapping>,
}

struct Conn {
    sock: UnixStream,
    key: String,
    pid: u32,
    ctl_map: Arc<Mapping>,
}

struct Shared {
    streams: Mutex<HashMap<String, Published>>,
    allow: Vec<u32>,
    my_uid: u32,
    request_timeout: Duration,
    max_pending: usize,
    on_refused: Option<RefusalHook>,
}

impl Shared {
    /// Refuses a client: tells it why (with `status`) and the hook.
    fn refuse(&self, sock: &UnixStream, pid: Option<u32>, status: u8, msg: &str) {
        let _ = respond(sock, status, msg, &[]);
        if let Some(h) = &self.on_refused {
            match pid {
                Some(p) => (h.0)(&format!("client pid {p}: {msg}")),
                None => (h.0)(msg),
            }
        }
    }
}

/// A hand-off server: one thread, serving every published stream on one socket path.
/// Dropping it stops the thread, closes reader connections and unlinks the path.
pub struct HandoffServer {
    shared: Arc<Shared>,
    path: PathBuf,
    wake: UnixStream,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for HandoffServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HandoffServer")
            .field("path", &self.path)
            .finish()
    }
}

/// A path as shown in errors: quoted with control characters escaped (std's `Debug`; this
/// crate sits below `spate_netlib::text`), cut after 200 characters.
fn shown(path: &Path) -> String {
    const MAX: usize = 200;
    let s = format!("{:?}", path.as_os_str());
    if s.chars().count() <= MAX {
        return s;
    }
    let cut: String = s.chars().take(MAX).collect();
    format!("{cut}… (cut; {} bytes in all)", path.as_os_str().len())
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> HandoffError {
    let path = shown(path);
    move |err| HandoffError::Io { op, path, err }
}

impl HandoffServer {
    /// Bind `path` (replacing a stale socket left by a crash, never another file or a live
    /// server) and start serving.
    pub fn bind(path: &Path, cfg: HandoffConfig) -> Result<HandoffServer, HandoffError> {
        if let Ok(md) = std::fs::symlink_metadata(path) {
            if !md.file_type().is_socket() {
                return Err(HandoffError::NotASocket(shown(path)));
            }
            match UnixStream::connect(path) {
                Ok(_) => return Err(HandoffError::InUse(shown(path))),
                Err(_) => {
                    std::fs::remove_file(path).map_err(io_err("remove stale socket", path))?
                }
            }
        }
        let listener = UnixListener::bind(path).map_err(io_err("bind", path))?;
        let mode = if cfg.allow_uids.is_empty() {
            0o600
        } else {
            0o666
        };
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .map_err(io_err("chmod", path))?;
        let (wake, wake_rx) = UnixStream::pair().map_err(io_err("socketpair", path))?;
        let shared = Arc::new(Shared {
            streams: Mutex::new(HashMap::new()),
            allow: cfg.allow_uids,
            my_uid: nix::unistd::getuid().as_raw(),
            request_timeout: cfg.request_timeout,
            max_pending: cfg.max_pending,
            on_refused: cfg.on_refused,
        });
        let sh = shared.clone();
        let thread = std::thread::Builder::new()
            .name("spate-handoff".into())
            .spawn(move || serve(listener, wake_rx, sh))
            .map_err(io_err("spawn thread for", path))?;
        Ok(HandoffServer {
            shared,
            path: path.to_path_buf(),
            wake,
            thread: Some(thread),
        })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Publish a ring under `key` (replacing an earlier one with that key).
    pub fn publish(&self, key: &str, writer: &Writer) -> Result<(), HandoffError> {
        check_key(key)?;
        let (ctl_fd, data_fd) = writer.dup_fds()?;
        let seg = Segment::from_fd(
            ctl_fd
                .try_clone()
                .map_err(|err| ShmError::Sys { op: "dup", err })?,
        )?;
        let ctl_map = Arc::new(Mapping::map(&seg, true)?);
        lock(&self.shared.streams).insert(
            key.to_string(),
            Published {
                ctl_fd,
                data_fd,
                ctl_map,
            },
        );
        Ok(())
    }

    /// Stop serving `key` (readers already attached keep their mappings). Returns whether it
    /// was published.
    pub fn unpublish(&self, key: &str) -> bool {
        lock(&self.shared.streams).remove(key).is_some()
    }

    /// Keys currently published.
    pub fn keys(&self) -> Vec<String> {
        lock(&self.shared.streams).keys().cloned().collect()
    }
}

impl Drop for HandoffServer {
    fn drop(&mut self) {
        let _ = self.wake.write_all(b"x");
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn check_key(key: &str) -> Result<(), HandoffError> {
    if key.is_empty() || key.len() > MAX_KEY {
        return Err(HandoffError::BadKey(format!(
            "{} bytes; must be 1..={MAX_KEY}",
            key.len()
        )));
    }
    Ok(())
}

/// What a client has sent so far, read as a request.
#[derive(Debug, PartialEq, Eq)]
enum Parsed {
    /// Incomplete: at least this many more bytes are needed.
    NeedMore(usize),
    /// A complete request for this key.
    Key(String),
    /// Not a valid request; the message says why (sent back with `ST_BAD`).
    Bad(String),
}

/// Parse the bytes a client sent (pure; the server reads at most what this asks for).
fn parse_request(buf: &[u8]) -> Parsed {
    let magic = buf.len().min(MAGIC.len());
    if buf[..magic] != MAGIC[..magic] {
        return Parsed::Bad("expected a SPHO v1 request".into());
    }
    if buf.len() > 4 && buf[4] != VERSION {
        return Parsed::Bad(format!(
            "hand-off protocol version {} is not supported: this server speaks version {VERSION} \
             (use matching spate versions)",
            buf[4]
        ));
    }
    if buf.len() < 7 {
        return Parsed::NeedMore(7 - buf.len());
    }
    let klen = u16::from_le_bytes([buf[5], buf[6]]) as usize;
    if klen == 0 || klen > MAX_KEY {
        return Parsed::Bad(format!("key length {klen} not in 1..={MAX_KEY}"));
    }
    match buf.len().cmp(&(7 + klen)) {
        std::cmp::Ordering::Less => Parsed::NeedMore(7 + klen - buf.len()),
        std::cmp::Ordering::Greater => Parsed::Bad("bytes after the request".into()),
        std::cmp::Ordering::Equal => match std::str::from_utf8(&buf[7..]) {
            Ok(k) => Parsed::Key(k.to_string()),
            Err(_) => Parsed::Bad("key is not UTF-8".into()),
        },
    }
}

/// A client that passed the credential check and has not sent its whole request yet.
struct Waiting {
    sock: UnixStream,
    pid: u32,
    buf: Vec<u8>,
    since: Instant,
}

/// Where a waiting client stands after reading what it sent.
enum Step {
    /// Its request is still incomplete.
    Wait,
    /// Answered (refused) or gone: forget it.
    Done,
    /// Its request is complete: answer it.
    Request(String),
}

/// After `accept` fails for lack of descriptors with no waiting client to drop, stop
/// accepting for this long (the backlog keeps the connections).
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);
/// Most connections accepted in one turn, so a flood cannot starve the others.
const ACCEPT_BATCH: usize = 64;

/// The server loop: one thread, every socket non-blocking, one `poll` over the wake-up
/// socket, the listener, the clients still sending their request and the attached readers. No
/// client is ever waited for: an idle or slow one costs a descriptor until its request
/// arrives, `request_timeout` passes, or `max_pending` newer ones push it out.
fn serve(listener: UnixListener, wake: UnixStream, sh: Arc<Shared>) {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    if listener.set_nonblocking(true).is_err() {
        return;
    }
    let mut waiting: VecDeque<Waiting> = VecDeque::new();
    let mut conns: Vec<Conn> = Vec::new();
    let mut paused_until: Option<Instant> = None;
    loop {
        let now = Instant::now();
        while waiting
            .front()
            .is_some_and(|w| now >= w.since + sh.request_timeout)
        {
            if let Some(w) = waiting.pop_front() {
                sh.refuse(
                    &w.sock,
                    Some(w.pid),
                    ST_BAD,
                    &format!("no complete request within {:?}", sh.request_timeout),
                );
            }
        }
        if paused_until.is_some_and(|t| now >= t) {
            paused_until = None;
        }
        let listening = paused_until.is_none();
        let next = [
            waiting.front().map(|w| w.since + sh.request_timeout),
            paused_until,
        ]
        .into_iter()
        .flatten()
        .min();
        let timeout = match next {
            None => PollTimeout::NONE,
            Some(t) => {
                let ms = t.saturating_duration_since(now).as_millis() + 1;
                PollTimeout::try_from(ms.min(60_000) as i32).unwrap_or(PollTimeout::MAX)
            }
        };
        let (stop, accept, ready_waiting, ready_conns) = {
            let mut fds = vec![
                PollFd::new(wake.as_fd(), PollFlags::POLLIN),
                PollFd::new(listener.as_fd(), PollFlags::POLLIN),
            ];
            if !listening {
                fds.pop();
            }
            let base = fds.len();
            for w in &waiting {
                fds.push(PollFd::new(w.sock.as_fd(), PollFlags::POLLIN));
            }
            for c in &conns {
                fds.push(PollFd::new(c.sock.as_fd(), PollFlags::POLLIN));
            }
            match poll(&mut fds, timeout) {
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => return,
            }
            let ready = |f: &PollFd| f.revents().is_some_and(|r| !r.is_empty());
            let ready_waiting: Vec<bool> =
                fds[base..base + waiting.len()].iter().map(ready).collect();
            let ready_conns: Vec<usize> = fds[base + waiting.len()..]
                .iter()
                .enumerate()
                .filter(|(_, f)| ready(f))
                .map(|(i, _)| i)
                .collect();
            (
                ready(&fds[0]),
                listening && ready(&fds[1]),
                ready_waiting,
                ready_conns,
            )
        };
        if stop {
            return;
        }
        // A reader connection became readable: it closed (readers send nothing after the
        // request). If that reader is still recorded as attached, it died.
        for &i in ready_conns.iter().rev() {
            let c = &conns[i];
            let mut b = [0u8; 1];
            match (&c.sock).read(&mut b) {
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                    ) =>
                {
                    continue;
                }
                _ => {}
            }
            let c = conns.swap_remove(i);
            reader_link_closed(&c);
        }
        // Clients sending their request: read what is there; answer the complete ones.
        let mut kept = VecDeque::with_capacity(waiting.len());
        for (w, ready) in waiting.drain(..).zip(ready_waiting) {
            if ready {
                advance(w, &sh, &mut kept, &mut conns);
            } else {
                kept.push_back(w);
            }
        }
        waiting = kept;
        // Drop connections of unpublished streams.
        {
            let streams = lock(&sh.streams);
            conns.retain(|c| streams.contains_key(&c.key));
        }
        if accept {
            for _ in 0..ACCEPT_BATCH {
                match listener.accept() {
                    Ok((sock, _)) => {
                        let Some(pid) = admit(&sock, &sh) else {
                            continue;
                        };
                        if waiting.len() >= sh.max_pending.max(1)
                            && let Some(old) = waiting.pop_front()
                        {
                            sh.refuse(
                                &old.sock,
                                Some(old.pid),
                                ST_BAD,
                                &format!(
                                    "{} clients were waiting to send their request; the one \
                                     waiting longest (this one) was dropped",
                                    sh.max_pending.max(1)
                                ),
                            );
                        }
                        let w = Waiting {
                            sock,
                            pid,
                            buf: Vec::new(),
                            since: Instant::now(),
                        };
                        // The request is usually there already: answer it now.
                        advance(w, &sh, &mut waiting, &mut conns);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e)
                        if matches!(
                            e.raw_os_error(),
                            Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
                        ) =>
                    {
                        // Out of descriptors: make room by dropping the client waiting
                        // longest, or pause accepting (the backlog keeps the rest).
                        if waiting.pop_front().is_none() {
                            paused_until = Some(Instant::now() + ACCEPT_PAUSE);
                            break;
                        }
                    }
                    // The peer gave up before we accepted it (ECONNABORTED), or similar.
                    Err(_) => {}
                }
            }
        }
    }
}

/// The attached reader's connection closed: if that reader is still recorded as attached,
/// it died without detaching.
fn reader_link_closed(c: &Conn) {
    let cb = header::ctl(&c.ctl_map);
    if cb.reader_pid.load(Ordering::SeqCst) == c.pid
        && cb
            .reader_state
            .compare_exchange(
                ctl::READER_ATTACHED,
                ctl::READER_DEAD,
                Ordering::SeqCst,
                Ordering::SeqCst,
            )
            .is_ok()
    {
        cb.set_reader_state(ctl::READER_DEAD);
    }
}

/// Send one reply without waiting (the socket is non-blocking; a reply is small and is the
/// only thing ever sent, so it fits in the empty send buffer).
fn respond(sock: &UnixStream, status: u8, msg: &str, fds: &[RawFd]) -> io::Result<()> {
    let m = msg.as_bytes();
    let m = &m[..m.len().min(u16::MAX as usize)];
    let mut buf = Vec::with_capacity(7 + m.len());
    buf.extend_from_slice(MAGIC);
    buf.push(status);
    buf.extend_from_slice(&(m.len() as u16).to_le_bytes());
    buf.extend_from_slice(m);
    let iov = [IoSlice::new(&buf)];
    let cmsg = [ControlMessage::ScmRights(fds)];
    let cm: &[ControlMessage<'_>] = if fds.is_empty() { &[] } else { &cmsg };
    loop {
        match sendmsg::<()>(
            sock.as_raw_fd(),
            &iov,
            cm,
            MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT,
            None,
        ) {
            Err(nix::errno::Errno::EINTR) => continue,
            Ok(n) if n < buf.len() => {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "reply sent only in part",
                ));
            }
            r => {
                r.map_err(io::Error::from)?;
                return Ok(());
            }
        }
    }
}

/// Check a new client's credentials (`SO_PEERCRED`): its pid when it may ask for a stream;
/// otherwise it is refused (and told why) and dropped.
fn admit(sock: &UnixStream, sh: &Shared) -> Option<u32> {
    if sock.set_nonblocking(true).is_err() {
        return None;
    }
    let cred = match getsockopt(sock, PeerCredentials) {
        Ok(c) => c,
        Err(e) => {
            sh.refuse(
                sock,
                None,
                ST_DENIED,
                &format!("cannot read peer credentials: {e}"),
            );
            return None;
        }
    };
    let uid = cred.uid();
    if uid != sh.my_uid && !sh.allow.contains(&uid) {
        sh.refuse(
            sock,
            Some(cred.pid() as u32),
            ST_DENIED,
            &format!(
                "uid {uid} is not the server's uid {} nor in its allow list",
                sh.my_uid
            ),
        );
        return None;
    }
    Some(cred.pid() as u32)
}

/// Move a waiting client on: it waits on, is dropped, or (answered) becomes an attached reader.
fn advance(mut w: Waiting, sh: &Shared, waiting: &mut VecDeque<Waiting>, conns: &mut Vec<Conn>) {
    match progress(&mut w, sh) {
        Step::Wait => waiting.push_back(w),
        Step::Done => {}
        Step::Request(key) => conns.extend(answer(w.sock, key, w.pid, sh)),
    }
}

/// Read what a waiting client sent (never more than its request); refuse a bad request.
fn progress(w: &mut Waiting, sh: &Shared) -> Step {
    let mut tmp = [0u8; 7 + MAX_KEY];
    loop {
        match parse_request(&w.buf) {
            Parsed::NeedMore(n) => match (&w.sock).read(&mut tmp[..n.min(7 + MAX_KEY)]) {
                // Closed before sending its request.
                Ok(0) => return Step::Done,
                Ok(k) => w.buf.extend_from_slice(&tmp[..k]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Step::Wait,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Step::Done,
            },
            Parsed::Bad(m) => {
                sh.refuse(&w.sock, Some(w.pid), ST_BAD, &m);
                return Step::Done;
            }
            Parsed::Key(key) => return Step::Request(key),
        }
    }
}

/// Answer a complete request: the stream's fds (the client is then an attached reader), or
/// why not.
fn answer(sock: UnixStream, key: String, pid: u32, sh: &Shared) -> Option<Conn> {
    let streams = lock(&sh.streams);
    let Some(p) = streams.get(&key) else {
        let _ = respond(&sock, ST_UNKNOWN, &key, &[]);
        if let Some(h) = &sh.on_refused {
            (h.0)(&format!(
                "client pid {pid}: no stream with key {key:?} is published here"
            ));
        }
        return None;
    };
    let cb = header::ctl(&p.ctl_map);
    if cb.reader_state() == ctl::READER_ATTACHED {
        let rp = cb.reader_pid.load(Ordering::SeqCst);
        if live::pidfd_open(rp).is_some_and(|fd| !live::pidfd_exited(&fd)) {
            sh.refuse(
                &sock,
                Some(pid),
                ST_BUSY,
                &format!("stream {key:?} already has a reader (pid {rp})"),
            );
            return None;
        }
    }
    respond(
        &sock,
        ST_OK,
        "",
        &[p.ctl_fd.as_raw_fd(), p.data_fd.as_raw_fd()],
    )
    .ok()?;
    Some(Conn {
        sock,
        key,
        pid,
        ctl_map: p.ctl_map.clone(),
    })
}

/// Connect to a hand-off server and attach to the stream `key` as its reader. The returned
/// reader keeps the connection: its EOF means the writer's process is gone.
pub fn connect(path: &Path, key: &str) -> Result<Reader, HandoffError> {
    check_key(key)?;
    let sock = UnixStream::connect(path).map_err(io_err("connect to hand-off socket", path))?;
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(io_err("set timeout on", path))?;
    let mut req = Vec::with_capacity(7 + key.len());
    req.extend_from_slice(MAGIC);
    req.push(VERSION);
    req.extend_from_slice(&(key.len() as u16).to_le_bytes());
    req.extend_from_slice(key.as_bytes());
    (&sock)
        .write_all(&req)
        .map_err(io_err("send request to", path))?;
    let mut buf = vec![0u8; 7 + u16::MAX as usize];
    let mut cspace = nix::cmsg_space!([RawFd; 2]);
    let (n, fds) = {
        let mut iov = [IoSliceMut::new(&mut buf)];
        // A signal to this thread interrupts the wait (EINTR): wait again.
        let msg = loop {
            match recvmsg::<()>(
                sock.as_raw_fd(),
                &mut iov,
                Some(&mut cspace),
                MsgFlags::MSG_CMSG_CLOEXEC,
            ) {
                Err(nix::errno::Errno::EINTR) => continue,
                r => break r,
            }
        }
        .map_err(|e| HandoffError::Io {
            op: if e == nix::errno::Errno::EAGAIN {
                "no answer within 10 s from"
            } else {
                "receive response from"
            },
            path: shown(path),
            err: e.into(),
        })?;
        let mut fds = Vec::new();
        if let Ok(cmsgs) = msg.cmsgs() {
            for c in cmsgs {
                if let ControlMessageOwned::ScmRights(v) = c {
                    for fd in v {
                        // SAFETY: the kernel just installed this fd in our table for us.
                        fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
                    }
                }
            }
        }
        (msg.bytes, fds)
    };
    if n < 7 || &buf[..4] != MAGIC {
        return Err(HandoffError::Protocol(format!(
            "{}: not a spate hand-off server ({n} byte reply)",
            shown(path)
        )));
    }
    let mlen = u16::from_le_bytes([buf[5], buf[6]]) as usize;
    let msg = String::from_utf8_lossy(&buf[7..(7 + mlen).min(n)]).into_owned();
    match buf[4] {
        ST_OK => {}
        ST_UNKNOWN => return Err(HandoffError::UnknownKey(key.to_string())),
        ST_DENIED => return Err(HandoffError::Denied(msg)),
        ST_BUSY => return Err(HandoffError::Busy(msg)),
        ST_BAD => return Err(HandoffError::Protocol(format!("server says: {msg}"))),
        s => return Err(HandoffError::Protocol(format!("unknown status {s}: {msg}"))),
    }
    let mut it = fds.into_iter();
    let (Some(ctl_fd), Some(data_fd), None) = (it.next(), it.next(), it.next()) else {
        return Err(HandoffError::Protocol(
            "expected exactly 2 fds with the reply".into(),
        ));
    };
    sock.set_read_timeout(None)
        .map_err(io_err("clear timeout on", path))?;
    Ok(Reader::attach_with_link(ctl_fd, data_fd, Some(sock))?)
}

#[cfg(test)]
mod tests {
    use super::{MAX_KEY, Parsed, parse_request};

    fn req(key: &[u8]) -> Vec<u8> {
        let mut v = b"SPHO\x01".to_vec();
        v.extend_from_slice(&(key.len() as u16).to_le_bytes());
        v.extend_from_slice(key);
        v
    }

    #[test]
    fn requests_parse_byte_by_byte() {
        let r = req(b"job7/0");
        for n in 0..r.len() {
            assert_eq!(
                parse_request(&r[..n]),
                Parsed::NeedMore(if n < 7 { 7 - n } else { r.len() - n }),
                "after {n} bytes"
            );
        }
        assert_eq!(parse_request(&r), Parsed::Key("job7/0".into()));
        let long = vec![b'k'; MAX_KEY];
        assert_eq!(
            parse_request(&req(&long)),
            Parsed::Key(String::from_utf8(long).unwrap())
        );
    }

    #[test]
    fn bad_requests_are_refused_as_soon_as_they_are_seen() {
        let bad = |b: &[u8]| match parse_request(b) {
            Parsed::Bad(m) => m,
            other => panic!("{b:?}: {other:?}"),
        };
        assert_eq!(bad(b"GET"), "expected a SPHO v1 request");
        assert_eq!(bad(b"SPX"), "expected a SPHO v1 request");
        assert!(bad(b"SPHO\x02").starts_with("hand-off protocol version 2 is not supported"));
        assert_eq!(bad(b"SPHO\x01\x00\x00"), "key length 0 not in 1..=1024");
        assert_eq!(
            bad(&[b"SPHO\x01".as_slice(), &1025u16.to_le_bytes()].concat()),
            "key length 1025 not in 1..=1024"
        );
        assert_eq!(bad(&req(b"\xff\xfe")), "key is not UTF-8");
        let mut extra = req(b"k");
        extra.push(0);
        assert_eq!(bad(&extra), "bytes after the request");
    }
}
