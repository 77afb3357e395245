//! [`RawServer`]: receives chunks from many producers on one thread. It accepts connections,
//! starts the I/O each connection's [`RecvMachine`] asks for, and dispatches completions (one
//! handler per operation) back to the machine and to the caller's [`Landing`].

use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Weak;
use std::time::{Duration, Instant};

use spate_runtime::{Completion, Driver, FixedBuf, Notifier, Op, Output};

use super::auth::Gate;
use super::error::{ProtocolError, RawError};
use super::recv::{BAD_SHARE, RecvEvent, RecvIo, RecvMachine};
use super::tag::{Tag, TagKind};
use super::wire::{ChunkKey, RefuseReason};
use super::{ConnId, Conns, Landing, Offered, RawConfig, Reserved};
use crate::endpoint::{Endpoint, Listener, Stream};
use crate::sockopt;

type Machine = RecvMachine<FixedBuf, OwnedFd>;

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

/// What the server keeps beside each connection's machine.
struct Side {
    /// When it was opened (for the handshake deadline).
    opened: Instant,
    /// A UNIX connection from a process of our own user (or root): rings may be lent to it.
    may_lend: bool,
}

/// Whether rings may be lent on `stream`: a local peer of our own user, or root.
fn may_lend(stream: &Stream) -> bool {
    let Stream::Unix(u) = stream else {
        return false;
    };
    match nix::sys::socket::getsockopt(u, nix::sys::socket::sockopt::PeerCredentials) {
        Ok(c) => c.uid() == nix::unistd::geteuid().as_raw() || c.uid() == 0,
        Err(_) => false,
    }
}

/// Receives chunks from many producers on one thread: accepts connections, answers offers
/// through a [`Landing`], lands payloads with ReadFixed straight into the granted buffers.
pub struct RawServer {
    cfg: RawConfig,
    driver: Driver,
    listeners: Vec<Listener>,
    accepting: Vec<bool>,
    conns: Conns<Machine, Side>,
    /// Rings lent to local producers, by lend id (gone once the landing drops them).
    lends: HashMap<u64, Weak<OwnedFd>>,
    /// Offers answered with [`Offered::Wait`], to ask again.
    waiting: VecDeque<(u32, ChunkKey)>,
    waker: Notifier,
    wake_armed: bool,
    timer_armed: bool,
    comps: Vec<Completion>,
}

impl RawServer {
    /// A server with its own io_uring (create it on the thread that runs it).
    pub fn new(cfg: RawConfig) -> Result<RawServer, RawError> {
        Ok(RawServer {
            driver: Driver::new(&cfg.driver)?,
            cfg,
            listeners: Vec::new(),
            accepting: Vec::new(),
            conns: Conns::new(),
            lends: HashMap::new(),
            waiting: VecDeque::new(),
            waker: Notifier::new()?,
            wake_armed: false,
            timer_armed: false,
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
        let m = match &self.cfg.auth {
            Some(a) => RecvMachine::with_auth(self.cfg.max_chunk, Gate::server(&a.secret)?),
            None => RecvMachine::new(self.cfg.max_chunk),
        };
        let side = Side {
            opened: Instant::now(),
            may_lend: may_lend(&stream),
        };
        Ok(ConnId(self.conns.insert(stream, m, side)))
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
        self.conns
            .map
            .values()
            .filter(|c| c.dead.is_none())
            .map(|c| c.m.segments())
            .sum()
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
                let tag = Tag::new(TagKind::Accept, i as u32).encode();
                self.driver.push(tag, Op::Accept { fd })?;
                self.accepting[i] = true;
            }
        }
        if !self.wake_armed {
            let fd = self.waker.fd();
            let tag = Tag::new(TagKind::Wake, 0).encode();
            self.driver.push(tag, Op::PollIn { fd })?;
            self.wake_armed = true;
        }
        if !self.waiting.is_empty() && !self.timer_armed {
            let after = self.cfg.retry;
            let tag = Tag::new(TagKind::Timer, 0).encode();
            self.driver.push(tag, Op::Timeout { after })?;
            self.timer_armed = true;
        }
        let now = Instant::now();
        let limit = self.cfg.handshake_timeout;
        self.sweep_lends();
        for id in self.conns.ids() {
            let late = self
                .conns
                .live(id)
                .is_some_and(|c| !c.m.authenticated() && now.duration_since(c.x.opened) >= limit);
            if late {
                self.conns.kill(id, Some(RawError::HandshakeTimeout(limit)));
            }
            self.kick(id)?;
            self.finish_if_dead(id, landing);
        }
        // Wake up in time for the next handshake deadline.
        let pending = self.conns.map.values().filter(|c| !c.m.authenticated());
        let next = pending
            .map(|c| (c.x.opened + limit).saturating_duration_since(now))
            .min();
        let timeout = match (timeout, next) {
            (Some(t), Some(n)) => Some(t.min(n)),
            (None, n) => n,
            (t, None) => t,
        };
        let mut comps = std::mem::take(&mut self.comps);
        self.driver.wait(timeout, &mut comps)?;
        for c in comps.drain(..) {
            self.on_completion(c, landing)?;
        }
        self.comps = comps;
        Ok(())
    }

    /// Start every I/O the connection's machine asks for.
    fn kick(&mut self, id: u32) -> Result<(), RawError> {
        let Some(c) = self.conns.live(id) else {
            return Ok(());
        };
        let fd = c.stream.as_raw_fd();
        let tcp = c.stream.is_tcp();
        while let Some(io) = c.m.poll() {
            let (kind, slot, op) = match io {
                RecvIo::Header { want } => {
                    let buf = Vec::with_capacity(want);
                    let flags = libc::MSG_WAITALL;
                    // Local peers may pass segment descriptors with their frames.
                    let op = if tcp {
                        Op::Recv { fd, buf, flags }
                    } else {
                        Op::RecvFds {
                            fd,
                            buf,
                            flags,
                            max_fds: 2,
                        }
                    };
                    (TagKind::Read, 0, op)
                }
                RecvIo::Payload { dest, at, len, .. } => {
                    let len = len.min(1 << 30);
                    (
                        TagKind::Read,
                        0,
                        Op::ReadFixed {
                            fd,
                            buf: dest,
                            at,
                            len,
                        },
                    )
                }
                RecvIo::Write(buf) => (TagKind::Write, 0, Op::Send { fd, buf, at: 0 }),
                RecvIo::Lend {
                    id: lend, frame, ..
                } => {
                    let file = self.lends.get(&lend).and_then(Weak::upgrade);
                    match file.map(|f| f.try_clone()) {
                        Some(Ok(f)) => (
                            TagKind::Write,
                            0,
                            Op::SendFds {
                                fd,
                                buf: frame,
                                fds: vec![f],
                            },
                        ),
                        other => {
                            let e = match other {
                                Some(Err(e)) => RawError::Io(e),
                                _ => ProtocolError::Misuse("a ring was retired before it was lent")
                                    .into(),
                            };
                            let _ = c.m.on_written(frame, 0);
                            self.conns.kill(id, Some(e));
                            return Ok(());
                        }
                    }
                }
                RecvIo::Copy {
                    id: slot,
                    fd: file,
                    off,
                    dest,
                    at,
                    len,
                    ..
                } => {
                    let op = Op::ReadFixedAt {
                        fd: file,
                        buf: dest,
                        at,
                        len,
                        off,
                    };
                    (TagKind::Copy, slot, op)
                }
            };
            // A refused push loses its buffer with the op: the loop fails (as before).
            self.driver
                .push(Tag::with_slot(kind, id, slot).encode(), op)?;
        }
        Ok(())
    }

    /// Retire, on every connection, the lends whose ring the landing let go of.
    fn sweep_lends(&mut self) {
        let gone: Vec<u64> = self
            .lends
            .iter()
            .filter(|(_, w)| w.strong_count() == 0)
            .map(|(id, _)| *id)
            .collect();
        for lend in gone {
            let mut left = false;
            for c in self.conns.map.values_mut() {
                if c.m.lent_ids().contains(&lend) {
                    left |= !c.m.unlend(lend);
                }
            }
            if !left {
                self.lends.remove(&lend);
            }
        }
    }

    fn finish_if_dead(&mut self, id: u32, landing: &mut dyn Landing) {
        if let Some(mut c) = self.conns.take_finished(id) {
            for (k, d) in c.m.abandon() {
                landing.abandoned(ConnId(id), &k, d);
            }
            for k in c.m.abandon_placed() {
                landing.unplaced(ConnId(id), &k);
            }
            self.waiting.retain(|(i, _)| *i != id);
            let err = c.dead.take().flatten();
            landing.closed(ConnId(id), err.as_ref());
        }
    }

    /// Ask the landing about a zero-copy reservation and answer it.
    fn ask_reserve(&mut self, id: u32, key: ChunkKey, landing: &mut dyn Landing) {
        let Some(c) = self.conns.live(id) else {
            return;
        };
        let answer = if c.x.may_lend {
            landing.reserve(ConnId(id), &key)
        } else {
            Reserved::Refuse(RefuseReason::Fallback)
        };
        let r = match answer {
            Reserved::Place { lend, at } => {
                self.lends
                    .entry(lend.id)
                    .or_insert_with(|| std::sync::Arc::downgrade(&lend.fd));
                c.m.place(&key, lend.id, lend.len, at)
            }
            Reserved::Refuse(r) => c.m.refuse(&key, r),
            Reserved::Wait => {
                self.waiting.push_back((id, key));
                Ok(())
            }
        };
        if let Err(e) = r {
            self.conns.kill(id, Some(e.into()));
        }
    }

    /// Ask the landing about an offer and answer it.
    fn ask(&mut self, id: u32, key: ChunkKey, landing: &mut dyn Landing) {
        let Some(c) = self.conns.live(id) else {
            return;
        };
        if c.m.is_reserve(&key) {
            return self.ask_reserve(id, key, landing);
        }
        let r = match landing.offer(ConnId(id), &key) {
            Offered::Grant(d) if d.len() as u64 >= key.len => c.m.grant(&key, d),
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
            self.conns.kill(id, Some(e.into()));
        }
    }

    /// Close the connections the landing takes grants back from (their outstanding reads
    /// complete with the shutdown; the grants are abandoned in `finish_if_dead`).
    fn revoke(&mut self, landing: &mut dyn Landing) -> Vec<u32> {
        let mut ids = Vec::new();
        for r in landing.revoked() {
            let id = r.conn.0;
            self.conns.kill(
                id,
                Some(RawError::Stalled {
                    key: r.key,
                    held: r.held,
                }),
            );
            ids.push(id);
        }
        ids
    }

    fn retry_waiting(&mut self, landing: &mut dyn Landing) -> Result<(), RawError> {
        let mut asked = Vec::new();
        for _ in 0..self.waiting.len() {
            if let Some((id, key)) = self.waiting.pop_front() {
                self.ask(id, key, landing);
                asked.push(id);
            }
        }
        asked.extend(self.revoke(landing));
        asked.sort_unstable();
        asked.dedup();
        for id in asked {
            self.kick(id)?;
            self.finish_if_dead(id, landing);
        }
        Ok(())
    }

    fn on_completion(&mut self, c: Completion, landing: &mut dyn Landing) -> Result<(), RawError> {
        let Some(tag) = Tag::decode(c.tag) else {
            tracing::warn!(tag = c.tag, "completion without a raw tag");
            return Ok(());
        };
        let id = tag.conn;
        match tag.kind {
            TagKind::Accept => {
                self.on_accept(id as usize, c, landing);
                return Ok(());
            }
            TagKind::Wake => {
                self.wake_armed = false;
                self.waker.drain();
                return self.retry_waiting(landing);
            }
            TagKind::Timer => {
                self.timer_armed = false;
                return self.retry_waiting(landing);
            }
            TagKind::Read => self.on_read(id, c, landing),
            TagKind::Write => self.on_write(id, c),
            TagKind::Copy => self.on_copy(id, tag.slot, c, landing),
            TagKind::Watch => {}
        }
        for r in self.revoke(landing) {
            self.finish_if_dead(r, landing);
        }
        self.kick(id)?;
        self.finish_if_dead(id, landing);
        Ok(())
    }

    fn on_accept(&mut self, i: usize, c: Completion, landing: &mut dyn Landing) {
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

    fn on_read(&mut self, id: u32, c: Completion, landing: &mut dyn Landing) {
        let Some(conn) = self.conns.map.get_mut(&id) else {
            return;
        };
        let m = &mut conn.m;
        let mut output = c.output;
        let mut fd_error = None;
        if let Output::VecFds(v, fds, truncated) = output {
            fd_error = m.on_fds(fds, truncated).err();
            output = Output::Vec(v);
        }
        let res: Result<Option<RecvEvent<FixedBuf>>, Option<RawError>> = match (c.result, output) {
            (Ok(0), Output::Vec(_)) => match m.on_eof() {
                Ok(()) => Err(None),
                Err(e) => Err(Some(e.into())),
            },
            (Ok(_), Output::Vec(v)) => m.on_header_bytes(&v).map_err(|e| Some(e.into())),
            (Ok(n), Output::Fixed(d)) => m.on_payload(d, n as usize).map_err(|e| Some(e.into())),
            (Err(e), Output::Fixed(d)) => {
                let _ = m.on_payload(d, 0);
                Err(Some(e.into()))
            }
            (Err(e), _) => {
                let _ = m.on_eof();
                Err(Some(e.into()))
            }
            (Ok(_), _) => Err(Some(
                ProtocolError::Misuse("read completed without its buffer").into(),
            )),
        };
        if let Some(e) = fd_error {
            self.conns.kill(id, Some(e.into()));
            return;
        }
        match res {
            Ok(Some(RecvEvent::Offer(k))) => self.ask(id, k, landing),
            Ok(Some(RecvEvent::Landed(k, d))) => landing.landed(ConnId(id), &k, d),
            Ok(Some(RecvEvent::Share { seg, len })) => {
                let checked = match conn.m.segment_fd(seg) {
                    Some(fd) => check_shared(fd, len),
                    None => Err("no descriptor".into()),
                };
                if let Err(why) = checked {
                    tracing::warn!(seg, %why, "refusing a shared segment");
                    let e = ProtocolError::segment(BAD_SHARE, seg);
                    self.conns.kill(id, Some(e.into()));
                }
            }
            Ok(Some(RecvEvent::Peer { name })) => landing.identified(ConnId(id), &name),
            Ok(Some(RecvEvent::Reserve(k))) => self.ask(id, k, landing),
            Ok(Some(RecvEvent::Written(k))) => landing.written(ConnId(id), &k),
            Ok(Some(RecvEvent::Withdrawn(k))) => landing.unplaced(ConnId(id), &k),
            Ok(Some(RecvEvent::Unshare { .. })) | Ok(None) => {}
            Err(e) => self.conns.kill(id, e),
        }
    }

    fn on_write(&mut self, id: u32, c: Completion) {
        let Some(conn) = self.conns.map.get_mut(&id) else {
            return;
        };
        let Output::Vec(v) = c.output else {
            return;
        };
        match c.result {
            Ok(n) => {
                if let Err(e) = conn.m.on_written(v, n as usize) {
                    self.conns.kill(id, Some(e.into()));
                }
            }
            Err(e) => {
                let _ = conn.m.on_written(v, 0);
                self.conns.kill(id, Some(e.into()));
            }
        }
    }

    fn on_copy(&mut self, id: u32, slot: u32, c: Completion, landing: &mut dyn Landing) {
        let Some(conn) = self.conns.map.get_mut(&id) else {
            return;
        };
        let Output::Fixed(dest) = c.output else {
            return;
        };
        match c.result {
            Ok(n) => match conn.m.on_copied(slot, dest, n as usize) {
                Ok(Some(RecvEvent::Landed(k, d))) => landing.landed(ConnId(id), &k, d),
                Ok(_) => {}
                Err(e) => self.conns.kill(id, Some(e.into())),
            },
            Err(e) => {
                conn.m.on_copy_failed(slot, dest);
                self.conns.kill(id, Some(e.into()));
            }
        }
    }
}
