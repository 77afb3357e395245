//! Raw bulk connections: chunks land through io_uring straight into the place the receiver
//! chooses (e.g. a stream ring's contiguous range in registered foreign memory), sent from
//! registered buffers (WriteFixed → ReadFixed).
//!
//! Each raw connection also carries the tiny flow control of DESIGN §2 step 5:
//! producer `Offer(key)` → consumer `Grant(key)` when it has room (or `Refuse(key, reason)`) →
//! producer sends a `Data(key)` header and `key.len` payload bytes → consumer lands them and
//! sends `Ack(key)`. Several offers may be outstanding on one connection.
//!
//! On a local (UNIX) connection the producer can instead let the consumer copy the chunk itself,
//! once, from the producer's registered memory: `Share(segment)` passes a read-only descriptor
//! of a buffer arena's memfd (`SCM_RIGHTS`, with the frame), then `Pull(key, segment, at)`
//! says where the chunk lies in it; the consumer answers with `Refuse` or, once it has room,
//! reads the bytes through io_uring (`ReadFixed` at a file offset) straight into the
//! destination it chose and sends `Ack`. That is one memory copy instead of two (into and out
//! of the socket), and no grant round trip. `Unshare(segment)` retires a segment whose memory
//! the producer freed.
//!
//! Layout (a sans-IO core with thin io_uring shells):
//! - [`wire`]: keys, kinds, reasons, the frame codec;
//! - [`error`]: [`ProtocolError`] (the machines') and [`RawError`] (the shells');
//! - [`recv`] / [`send`]: [`RecvMachine`] and [`SendMachine`], which own all protocol state
//!   and say through one `poll` call which I/O to start next;
//! - [`share`]: which chunks local consumers pull, and the descriptors they pull from;
//! - [`tag`]: the io_uring user-data codec (also for descriptors a caller asks a client to
//!   watch, [`RawClient::watch`]);
//! - [`server`] / [`client`]: [`RawServer`] (one thread serving many connections) and
//!   [`RawClient`] (one thread sending to many consumers): accept, pool, submit the machines'
//!   I/O, dispatch completions.

use std::collections::HashMap;
use std::time::Duration;

use spate_runtime::{DriverConfig, FixedBuf};

use crate::endpoint::Stream;
use crate::sockopt::Tuning;

pub mod auth;
pub mod client;
pub mod error;
pub mod place;
pub mod recv;
pub mod send;
pub mod server;
pub mod share;
pub mod tag;
pub mod wire;
pub mod zerocopy;

pub use auth::{Gate, RawAuth};
pub use client::{ClientEvent, RawClient, RawStats, Rejected, WatchId};
pub use error::{ProtocolError, RawError, Subject};
pub use recv::{RecvEvent, RecvIo, RecvMachine};
pub use send::{SendEvent, SendIo, SendMachine};
pub use server::RawServer;
pub use spate_runtime::Placed;
pub use wire::{
    ChunkKey, DEFAULT_MAX_CHUNK, Frame, HEADER_LEN, Kind, MAX_NAME, Malformed, Msg, PULL_TAIL_LEN,
    RefuseReason, SegmentFrame, decode, decode_pull_tail, encode, encode_pull_tail,
};
pub use zerocopy::{PlaceEvent, size_sealed};

/// Most segments one connection may share at a time.
pub const MAX_SEGMENTS: usize = 64;
/// Most offers one connection may have outstanding at a receiver.
pub const MAX_OFFERS: usize = 4096;

/// Identifies a raw connection within its server or client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u32);

/// Settings of raw servers and clients.
#[derive(Debug, Clone)]
pub struct RawConfig {
    /// Largest chunk accepted/sent.
    pub max_chunk: u64,
    /// Socket tuning (buffers, congestion control).
    pub tuning: Tuning,
    /// Ring parameters.
    pub driver: DriverConfig,
    /// How often a receiver re-asks about offers it answered with [`Offered::Wait`] (it also
    /// re-asks whenever its [`RawServer::waker`] is notified).
    pub retry: Duration,
    /// Connect timeout (clients).
    pub connect_timeout: Duration,
    /// Close pooled client connections idle this long.
    pub idle_close: Duration,
    /// Clients: on local (UNIX) connections, let the consumer copy chunks straight from our
    /// buffer memory (`Share`/`Pull`) instead of sending them through the socket.
    pub share_local: bool,
    /// Authenticate every connection with the cluster secret before any frame (and, as a
    /// client, say our node name). None: connections are not authenticated (tests and
    /// benchmarks of the bare transport only; daemons always set it).
    pub auth: Option<RawAuth>,
    /// How long a peer has to authenticate (and, as a producer, say who it is).
    pub handshake_timeout: Duration,
}

impl Default for RawConfig {
    fn default() -> Self {
        RawConfig {
            max_chunk: DEFAULT_MAX_CHUNK,
            tuning: Tuning::default(),
            driver: DriverConfig::default(),
            retry: Duration::from_millis(2),
            connect_timeout: Duration::from_secs(5),
            idle_close: Duration::from_secs(60),
            share_local: true,
            auth: None,
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

/// A receiver's answer to an offer.
#[derive(Debug)]
pub enum Offered {
    /// Land it here (exactly `key.len` bytes; e.g. a span of a stream ring's data mapping).
    Grant(FixedBuf),
    /// Refuse it.
    Refuse(RefuseReason),
    /// No room yet: ask again later.
    Wait,
}

/// A ring data segment a receiver lends to local producers so that they write placed chunks
/// straight into it (zero copy). One per ring; the receiver keeps `fd` alive as long as the
/// ring may be written, and the server retires the lend on every connection once it is gone.
#[derive(Debug, Clone)]
pub struct Lend {
    /// Receiver-chosen id, unique per ring.
    pub id: u64,
    /// A read-write descriptor of the segment (shrinking and growing it are sealed).
    pub fd: std::sync::Arc<std::os::fd::OwnedFd>,
    /// Its length (the ring's capacity).
    pub len: u64,
}

/// A receiver's answer to a zero-copy reservation.
#[derive(Debug)]
pub enum Reserved {
    /// Let the producer write the chunk itself at `at` of `lend` (mapped twice back to back).
    Place {
        /// The ring segment.
        lend: Lend,
        /// Offset of the chunk in it.
        at: u64,
    },
    /// Refuse it (`Fallback`: the producer sends it by another path).
    Refuse(RefuseReason),
    /// No room yet: ask again later.
    Wait,
}

/// A connection the receiver wants closed because it holds a granted chunk it does not send
/// while another producer offers the same bytes (see [`Landing::revoked`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Revoke {
    /// The holder.
    pub conn: ConnId,
    /// The chunk it holds.
    pub key: ChunkKey,
    /// How long it held it.
    pub held: Duration,
}

/// The consumer side of a [`RawServer`]: decides where chunks go and learns when they landed.
pub trait Landing {
    /// Where does this chunk go, is there room?
    fn offer(&mut self, conn: ConnId, key: &ChunkKey) -> Offered;
    /// The chunk landed completely in `dest` (the Ack goes out next).
    fn landed(&mut self, conn: ConnId, key: &ChunkKey, dest: FixedBuf);
    /// A granted destination that will not be filled (the connection closed).
    fn abandoned(&mut self, _conn: ConnId, _key: &ChunkKey, _dest: FixedBuf) {}
    /// A connection was accepted.
    fn opened(&mut self, _conn: ConnId) {}
    /// The producer on `conn` authenticated and said who it is (its node name): only then do
    /// its offers come (when the server authenticates connections).
    fn identified(&mut self, _conn: ConnId, _name: &str) {}
    /// A local producer asks to write this chunk in place (zero copy). Only asked on UNIX
    /// connections from a peer of our own user. By default: use another path.
    fn reserve(&mut self, _conn: ConnId, _key: &ChunkKey) -> Reserved {
        Reserved::Refuse(RefuseReason::Fallback)
    }
    /// A chunk placed by [`Landing::reserve`] is written: land it (the Ack goes out next).
    fn written(&mut self, _conn: ConnId, _key: &ChunkKey) {}
    /// A chunk placed by [`Landing::reserve`] will not be written (withdrawn, or the connection
    /// closed): give its range back.
    fn unplaced(&mut self, _conn: ConnId, _key: &ChunkKey) {}
    /// A connection closed (`error` is None for a clean close by the peer).
    fn closed(&mut self, _conn: ConnId, _error: Option<&RawError>) {}
    /// Connections to close now, asked after every offer and reservation: each holds a grant
    /// that another connection waits for. Their grants are abandoned (and their ranges given
    /// back) once the socket's outstanding I/O has completed, never before.
    fn revoked(&mut self) -> Vec<Revoke> {
        Vec::new()
    }
}

/// What a shell needs of a machine to close a connection.
trait Machine {
    /// I/O is outstanding.
    fn busy(&self) -> bool;
    /// No new I/O from now on.
    fn close(&mut self);
}

impl<D, F: std::os::fd::AsRawFd> Machine for RecvMachine<D, F> {
    fn busy(&self) -> bool {
        RecvMachine::busy(self)
    }
    fn close(&mut self) {
        RecvMachine::close(self)
    }
}

impl<S, F> Machine for SendMachine<S, F> {
    fn busy(&self) -> bool {
        SendMachine::busy(self)
    }
    fn close(&mut self) {
        SendMachine::close(self)
    }
}

/// One connection of a shell: the socket, its machine, whether it is closing (and why), and
/// what the shell keeps beside it (`X`).
struct Conn<M, X> {
    stream: Stream,
    m: M,
    /// Some once closing: the error (None for a clean close).
    dead: Option<Option<RawError>>,
    x: X,
}

/// The connection-I/O state both shells share: connections by id; closing one shuts its
/// socket down and stops its machine; it is removed once no I/O of it is outstanding.
struct Conns<M, X> {
    map: HashMap<u32, Conn<M, X>>,
    next: u32,
}

impl<M: Machine, X> Conns<M, X> {
    fn new() -> Self {
        Conns {
            map: HashMap::new(),
            next: 1,
        }
    }

    fn insert(&mut self, stream: Stream, m: M, x: X) -> u32 {
        let id = self.next;
        self.next = self.next.wrapping_add(1).max(1);
        self.map.insert(
            id,
            Conn {
                stream,
                m,
                dead: None,
                x,
            },
        );
        id
    }

    fn ids(&self) -> Vec<u32> {
        self.map.keys().copied().collect()
    }

    /// A live (not closing) connection.
    fn live(&mut self, id: u32) -> Option<&mut Conn<M, X>> {
        self.map.get_mut(&id).filter(|c| c.dead.is_none())
    }

    /// Close `id` (the first reason given wins).
    fn kill(&mut self, id: u32, e: Option<RawError>) {
        if let Some(c) = self.map.get_mut(&id)
            && c.dead.is_none()
        {
            let _ = c.stream.shutdown();
            c.m.close();
            c.dead = Some(e);
        }
    }

    /// Remove `id` if it is closing and no I/O of it is outstanding.
    fn take_finished(&mut self, id: u32) -> Option<Conn<M, X>> {
        let done = self
            .map
            .get(&id)
            .is_some_and(|c| c.dead.is_some() && !c.m.busy());
        if done { self.map.remove(&id) } else { None }
    }

    fn len(&self) -> usize {
        self.map.len()
    }
}
