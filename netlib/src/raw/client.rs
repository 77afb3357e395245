//! [`RawClient`]: sends chunks to many consumers from one thread. Connections are pooled by
//! endpoint; each has a [`SendMachine`] whose I/O the client starts and whose completions it
//! dispatches (one handler per operation). The share policy ([`super::share`]) decides which
//! chunks local consumers pull. A caller's own descriptors can be watched on the client's
//! io_uring ([`RawClient::watch`]) so that one wait covers both.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use spate_runtime::{Completion, Driver, FixedBuf, Op, Output, Region, RuntimeError};

use super::auth::Gate;
use super::error::{ProtocolError, RawError};
use super::send::{SendEvent, SendIo, SendMachine};
use super::share::{Exports, Route};
use super::tag::{Tag, TagKind};
use super::wire::{ChunkKey, RefuseReason};
use super::zerocopy::PlaceEvent;
use super::{ConnId, Conns, RawConfig};
use crate::endpoint::{Endpoint, Stream, Via};
use crate::pool::{Pool, PoolError};
use crate::sockopt;

/// A chunk's payload: `len` bytes of `buf` from `at`.
#[derive(Debug)]
pub struct Src {
    pub(super) buf: FixedBuf,
    pub(super) at: usize,
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

/// What a [`RawClient`] has sent, by path.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RawStats {
    /// Chunks written through the socket (offer, grant, data).
    pub sent: u64,
    /// Chunks the consumer copied from our shared memory (pull).
    pub pulled: u64,
}

/// A chunk [`RawClient::send`] could not take, with its buffer.
#[derive(Debug)]
pub struct Rejected {
    /// Why.
    pub error: RawError,
    /// The buffer, back.
    pub buf: FixedBuf,
}

/// A descriptor watched by a [`RawClient`] ([`RawClient::watch`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct WatchId(pub u32);

struct Watch {
    fd: RawFd,
    armed: bool,
    fired: bool,
}

/// What the client keeps beside each connection's machine.
pub(super) struct Side {
    endpoint: Option<Endpoint>,
    last_used: Instant,
    /// A local (UNIX) connection with sharing on: chunks in shareable memory go as pulls.
    local: bool,
    /// Base offset (`Src::at`) of the payload source lent to the write in flight.
    lent_at: usize,
    /// When it was opened (for the handshake deadline).
    opened: Instant,
    /// Ring segments lent to us, mapped (None: the mapping failed; places in it are withdrawn).
    pub(super) lent: HashMap<u32, Option<Arc<Region>>>,
}

/// Sends chunks to many consumers from one thread: offers, waits for grants, writes payloads
/// with WriteFixed from registered buffers, reports acks. Connections are pooled by endpoint.
/// On local connections, chunks in buffer arenas are pulled by the consumer instead (see the
/// module docs of [`super`]).
pub struct RawClient {
    cfg: RawConfig,
    driver: Driver,
    pub(super) conns: Conns<SendMachine<Src>, Side>,
    pool: Pool<u32>,
    events: Vec<ClientEvent>,
    comps: Vec<Completion>,
    exports: Exports,
    stats: RawStats,
    watches: Vec<Watch>,
    /// Zero-copy outcomes, for [`RawClient::take_placements`].
    pub(super) placements: Vec<PlaceEvent>,
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
            conns: Conns::new(),
            events: Vec::new(),
            comps: Vec::new(),
            exports: Exports::default(),
            stats: RawStats::default(),
            watches: Vec::new(),
            placements: Vec::new(),
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
        let side = Side {
            local: !stream.is_tcp() && self.cfg.share_local,
            endpoint,
            last_used: Instant::now(),
            lent_at: 0,
            opened: Instant::now(),
            lent: HashMap::new(),
        };
        let m = match &self.cfg.auth {
            Some(a) => {
                SendMachine::with_auth(self.cfg.max_chunk, Gate::client(&a.secret)?, &a.name)
            }
            None => SendMachine::new(self.cfg.max_chunk),
        };
        Ok(ConnId(self.conns.insert(stream, m, side)))
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
            // A pooled connection that is closing (e.g. its peer just went away) is not handed
            // out: forget it and connect afresh.
            Ok(id) if fresh.is_none() && self.conns.live(*id).is_none() => {
                self.pool.remove(ep);
                self.connection(ep, via)
            }
            Ok(id) if fresh.is_none() => Ok(ConnId(*id)),
            Ok(_) => {
                let s = fresh.take().ok_or(RawError::NoConnection(ConnId(0)))?;
                let id = self.add_inner(s, Some(ep.clone()))?;
                self.pool.set(ep, id.0);
                Ok(id)
            }
            Err(PoolError::Backoff { retry_in }) => Err(RawError::Backoff {
                endpoint: ep.to_string(),
                retry_in,
            }),
            Err(PoolError::Connect(e)) => Err(e),
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
        let Some(c) = self.conns.live(conn.0) else {
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
        c.x.last_used = Instant::now();
        let m = &mut c.m;
        let route = self
            .exports
            .route(c.x.local, &buf, at, m.shared_segments(), |s| m.is_shared(s));
        let r = match route {
            Route::Pull { seg, len, at: pos } => {
                m.share(seg, len);
                let r = m.pull(key, Src { buf, at }, seg, pos);
                if r.is_ok() {
                    self.stats.pulled += 1;
                }
                r
            }
            Route::Socket => {
                let r = m.offer(key, Src { buf, at });
                if r.is_ok() {
                    self.stats.sent += 1;
                }
                r
            }
        };
        r.map_err(|(e, s)| Rejected {
            error: e.into(),
            buf: s.buf,
        })
    }

    /// Chunks sent so far, by path.
    pub fn stats(&self) -> RawStats {
        self.stats
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
        self.conns.map.values().map(|c| c.m.in_flight()).sum()
    }

    /// Open connections.
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// Close a connection (its unfinished chunks come back as `Failed`).
    pub fn close(&mut self, conn: ConnId) {
        self.conns.kill(conn.0, None);
    }

    /// Watch `fd` (e.g. the eventfd of a queue feeding this thread): while it is readable, a
    /// [`RawClient::turn`] returns at once, and [`RawClient::fired`] says so. A watch fires once
    /// per arming and is re-armed by the next turn: drain the descriptor before that turn.
    pub fn watch(&mut self, fd: RawFd) -> WatchId {
        self.watches.push(Watch {
            fd,
            armed: false,
            fired: false,
        });
        WatchId(self.watches.len() as u32 - 1)
    }

    /// Whether watch `id` fired since the last call.
    pub fn fired(&mut self, id: WatchId) -> bool {
        self.watches
            .get_mut(id.0 as usize)
            .is_some_and(|w| std::mem::take(&mut w.fired))
    }

    /// One turn: start I/O, wait up to `timeout` (None = until something happens), append
    /// what happened to `out`. Also closes pooled connections idle for `idle_close`.
    pub fn turn(
        &mut self,
        timeout: Option<Duration>,
        out: &mut Vec<ClientEvent>,
    ) -> Result<(), RawError> {
        if !self.exports.is_empty() {
            for (seg, len) in self.exports.sweep() {
                for c in self.conns.map.values_mut() {
                    c.m.unshare(seg, len);
                }
            }
        }
        for (i, w) in self.watches.iter_mut().enumerate() {
            if !w.armed {
                let tag = Tag::new(TagKind::Watch, i as u32).encode();
                self.driver.push(tag, Op::PollIn { fd: w.fd })?;
                w.armed = true;
            }
        }
        let now = Instant::now();
        let limit = self.cfg.handshake_timeout;
        for id in self.conns.ids() {
            let late = self
                .conns
                .live(id)
                .is_some_and(|c| !c.m.authenticated() && now.duration_since(c.x.opened) >= limit);
            if late {
                self.conns.kill(id, Some(RawError::HandshakeTimeout(limit)));
            }
            self.kick(id)?;
            self.finish_if_dead(id);
        }
        let idle: Vec<u32> = self
            .conns
            .map
            .iter()
            .filter(|(_, c)| {
                c.x.endpoint.is_some()
                    && c.m.in_flight() == 0
                    && now.duration_since(c.x.last_used) >= self.cfg.idle_close
            })
            .map(|(id, _)| *id)
            .collect();
        for id in idle {
            self.conns.kill(id, None);
            self.finish_if_dead(id);
        }
        if self.events.is_empty() && self.placements.is_empty() {
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
                self.on_completion(c)?;
            }
            self.comps = comps;
        }
        out.append(&mut self.events);
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
            let (kind, op) = match io {
                SendIo::Read { want } => {
                    let buf = Vec::with_capacity(want);
                    // Local consumers may lend ring segments with their frames.
                    let op = if tcp {
                        Op::Recv { fd, buf, flags: 0 }
                    } else {
                        Op::RecvFds {
                            fd,
                            buf,
                            flags: 0,
                            max_fds: 2,
                        }
                    };
                    (TagKind::Read, op)
                }
                SendIo::Write(buf) => (TagKind::Write, Op::Send { fd, buf, at: 0 }),
                SendIo::Share { seg, frame } => match self.exports.fd(seg) {
                    Some(Ok(f)) => (
                        TagKind::Write,
                        Op::SendFds {
                            fd,
                            buf: frame,
                            fds: vec![f],
                        },
                    ),
                    other => {
                        let e = match other {
                            Some(Err(e)) => RawError::Io(e),
                            _ => RawError::Io(io::Error::other(
                                "a shared segment vanished before its share frame went out",
                            )),
                        };
                        let _ = c.m.on_written(frame, 0);
                        self.conns.kill(id, Some(e));
                        return Ok(());
                    }
                },
                SendIo::Payload { src, at, len, .. } => {
                    c.x.lent_at = src.at;
                    let op = Op::WriteFixed {
                        fd,
                        buf: src.buf,
                        at: src.at + at,
                        len: len.min(1 << 30),
                    };
                    (TagKind::Write, op)
                }
            };
            self.driver.push(Tag::new(kind, id).encode(), op)?;
        }
        Ok(())
    }

    fn finish_if_dead(&mut self, id: u32) {
        let Some(mut c) = self.conns.take_finished(id) else {
            return;
        };
        let err = c.dead.take().flatten();
        if let Some(ep) = &c.x.endpoint
            && self.pool.is_current(ep, &id)
        {
            // Back off only from a consumer we could not establish a connection with (its
            // handshake failed); the end of one that worked (e.g. the consumer restarted)
            // lets the next chunk connect again at once.
            if err.is_some() && !c.m.authenticated() {
                self.pool.failed(ep, Instant::now());
            } else {
                self.pool.remove(ep);
            }
        }
        // Closed first, so that whoever resends the failed chunks knows why they failed.
        self.events.push(ClientEvent::Closed {
            conn: ConnId(id),
            error: err.map(|e| e.to_string()),
        });
        for key in c.m.abandon_placed() {
            self.placements.push(PlaceEvent::Failed {
                conn: ConnId(id),
                key,
            });
        }
        for (key, s) in c.m.abandon() {
            self.events.push(ClientEvent::Failed {
                conn: ConnId(id),
                key,
                buf: s.buf,
            });
        }
    }

    fn on_completion(&mut self, comp: Completion) -> Result<(), RawError> {
        let Some(tag) = Tag::decode(comp.tag) else {
            tracing::warn!(tag = comp.tag, "completion without a raw tag");
            return Ok(());
        };
        let id = tag.conn;
        match tag.kind {
            TagKind::Read => self.on_read(id, comp),
            TagKind::Write => self.on_write(id, comp),
            TagKind::Watch => {
                if let Some(w) = self.watches.get_mut(id as usize) {
                    w.armed = false;
                    w.fired = true;
                }
                return Ok(());
            }
            _ => return Ok(()),
        }
        self.kick(id)?;
        self.finish_if_dead(id);
        Ok(())
    }

    fn on_read(&mut self, id: u32, comp: Completion) {
        let Some(c) = self.conns.map.get_mut(&id) else {
            return;
        };
        let eof = matches!(comp.result, Ok(0));
        let mut output = comp.output;
        if let Output::VecFds(v, fds, truncated) = output {
            if let Err(e) = c.m.on_fds(fds, truncated) {
                self.conns.kill(id, Some(e.into()));
                return;
            }
            output = Output::Vec(v);
        }
        let r = match (comp.result, output) {
            (Ok(0), _) => c.m.on_eof().map(|()| Vec::new()).map_err(Some),
            (Ok(_), Output::Vec(v)) => c.m.on_read(&v).map_err(Some),
            (Err(e), _) => {
                let _ = c.m.on_eof();
                self.conns.kill(id, Some(e.into()));
                return;
            }
            (Ok(_), _) => Err(Some(ProtocolError::Misuse(
                "read completed without its buffer",
            ))),
        };
        match r {
            // A clean close by the peer with nothing in flight.
            Ok(_) if eof => {
                self.conns.kill(id, None);
            }
            Ok(evs) => {
                for ev in evs {
                    let e = match ev {
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
                        zc => {
                            self.on_zero_copy(id, zc);
                            continue;
                        }
                    };
                    self.events.push(e);
                }
            }
            Err(e) => self.conns.kill(id, e.map(RawError::from)),
        }
    }

    fn on_write(&mut self, id: u32, comp: Completion) {
        let Some(c) = self.conns.map.get_mut(&id) else {
            return;
        };
        match (comp.result, comp.output) {
            (Ok(n), Output::Vec(v)) => {
                if let Err(e) = c.m.on_written(v, n as usize) {
                    self.conns.kill(id, Some(e.into()));
                }
            }
            (Err(e), Output::Vec(v)) => {
                let _ = c.m.on_written(v, 0);
                self.conns.kill(id, Some(e.into()));
            }
            (r, Output::Fixed(buf)) => {
                let at = c.x.lent_at;
                let n = r.as_ref().map_or(0, |n| *n as usize);
                if let Err(e) = c.m.on_payload_written(Src { buf, at }, n) {
                    self.conns.kill(id, Some(e.into()));
                } else if let Err(e) = r {
                    self.conns.kill(id, Some(e.into()));
                }
            }
            (r, _) => {
                let e = r.err().map_or_else(
                    || RawError::from(ProtocolError::Misuse("write completed without its buffer")),
                    RawError::Io,
                );
                self.conns.kill(id, Some(e));
            }
        }
    }
}
