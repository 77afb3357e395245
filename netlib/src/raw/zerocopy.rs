//! The producer's zero-copy API of [`RawClient`]: reserve a chunk at a local consumer, get a
//! [`Placed`] range of its ring (the consumer lends the ring's data segment once per
//! connection; the client maps it), compute straight into it, say it is written.
//!
//! ```text
//! reserve_to(ep, key) ─▶ PlaceEvent::Placed { place }   (or Refused: Fallback → another path)
//! compute into place.as_mut_slice()
//! written(conn, key, place) ─▶ PlaceEvent::Acked        (or withdraw: the range goes back)
//! ```

use std::sync::Arc;

use spate_runtime::{Placed, Region};

use super::ConnId;
use super::client::RawClient;
use super::error::RawError;
use super::send::SendEvent;
use super::wire::{ChunkKey, RefuseReason};
use crate::endpoint::{Endpoint, Via};

/// What happened to chunks reserved for zero copy ([`RawClient::take_placements`]).
#[derive(Debug)]
pub enum PlaceEvent {
    /// Write the chunk here, then [`RawClient::written`] (or [`RawClient::withdraw`]).
    Placed {
        /// Connection.
        conn: ConnId,
        /// Chunk.
        key: ChunkKey,
        /// Its place in the consumer's ring.
        place: Placed,
    },
    /// The consumer will not place it (`Fallback`: send it by another path; otherwise as a
    /// refused offer).
    Refused {
        /// Connection.
        conn: ConnId,
        /// Chunk.
        key: ChunkKey,
        /// Why.
        reason: RefuseReason,
    },
    /// The chunk written in place landed.
    Acked {
        /// Connection.
        conn: ConnId,
        /// Chunk.
        key: ChunkKey,
    },
    /// The connection failed before the chunk was acked (a place handed out must not be
    /// written any more: drop it).
    Failed {
        /// Connection.
        conn: ConnId,
        /// Chunk.
        key: ChunkKey,
    },
}

/// Whether the memory file `fd` has its size sealed (neither shrinking nor growing it is
/// possible through any descriptor): only such a ring is lent to producers, so that none can
/// truncate it under its reader.
pub fn size_sealed(fd: &std::os::fd::OwnedFd) -> bool {
    use nix::fcntl::{FcntlArg, SealFlag, fcntl};
    match fcntl(fd, FcntlArg::F_GET_SEALS) {
        Ok(bits) => {
            let s = SealFlag::from_bits_truncate(bits);
            s.contains(SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW)
        }
        Err(_) => false,
    }
}

impl RawClient {
    /// Ask the local consumer at `ep` for a place to write `key` in (zero copy); the answer
    /// comes as a [`PlaceEvent`].
    pub fn reserve_to(
        &mut self,
        ep: &Endpoint,
        via: &Via,
        key: ChunkKey,
    ) -> Result<ConnId, RawError> {
        if !matches!(ep, Endpoint::Unix(_)) {
            return Err(RawError::NotLocal(ep.to_string()));
        }
        let id = self.connection(ep, via)?;
        let c = self.conns.live(id.0).ok_or(RawError::NoConnection(id))?;
        c.m.reserve(key)?;
        Ok(id)
    }

    /// The chunk placed in `place` is written: it lands at the consumer.
    pub fn written(&mut self, conn: ConnId, key: ChunkKey, place: Placed) -> Result<(), RawError> {
        drop(place);
        let c = self
            .conns
            .live(conn.0)
            .ok_or(RawError::NoConnection(conn))?;
        c.m.written(key)?;
        Ok(())
    }

    /// The chunk placed in `place` will not be written: its range goes back to the consumer.
    pub fn withdraw(&mut self, conn: ConnId, key: ChunkKey, place: Placed) -> Result<(), RawError> {
        drop(place);
        let c = self
            .conns
            .live(conn.0)
            .ok_or(RawError::NoConnection(conn))?;
        c.m.withdraw(key)?;
        Ok(())
    }

    /// Zero-copy outcomes since the last call (appended to `out`).
    pub fn take_placements(&mut self, out: &mut Vec<PlaceEvent>) {
        out.append(&mut self.placements);
    }

    /// A zero-copy event of connection `id`'s machine.
    pub(super) fn on_zero_copy<S>(&mut self, id: u32, ev: SendEvent<S>) {
        let Some(c) = self.conns.map.get_mut(&id) else {
            return;
        };
        let conn = ConnId(id);
        match ev {
            SendEvent::Lent { seg, len } => {
                let mapped = c.m.lent(seg).map(|(_, fd)| Region::map_lent(fd));
                let region = match mapped {
                    Some(Ok(r)) if r.len() as u64 >= 2 * len => Some(r),
                    Some(Ok(_)) => {
                        tracing::warn!(
                            seg,
                            "a lent ring is shorter than declared; not writing in it"
                        );
                        None
                    }
                    Some(Err(e)) => {
                        tracing::warn!(seg, error = %e, "cannot map a lent ring; its chunks go by another path");
                        None
                    }
                    None => None,
                };
                c.x.lent.insert(seg, region);
            }
            SendEvent::Unlent { seg } => {
                c.x.lent.remove(&seg);
            }
            SendEvent::Placed { key, seg, at } => {
                let region: Option<Arc<Region>> = c.x.lent.get(&seg).cloned().flatten();
                let place = region.and_then(|r| {
                    let range = at as usize..(at + key.len) as usize;
                    // SAFETY: the consumer granted this range of its ring to this connection
                    // alone (its writer grants each range once, beyond the frontier its reader
                    // reads up to), and our machine checked it overlaps no other place of ours.
                    unsafe { Placed::new(&r, range) }.ok()
                });
                match place {
                    Some(place) => self
                        .placements
                        .push(PlaceEvent::Placed { conn, key, place }),
                    None => {
                        // Not writable here: give the range back, send the chunk another way.
                        if let Err(e) = c.m.withdraw(key) {
                            self.conns.kill(id, Some(e.into()));
                        }
                        self.placements.push(PlaceEvent::Refused {
                            conn,
                            key,
                            reason: RefuseReason::Fallback,
                        });
                    }
                }
            }
            SendEvent::ReserveRefused(key, reason) => {
                self.placements
                    .push(PlaceEvent::Refused { conn, key, reason });
            }
            SendEvent::WrittenAcked(key) => self.placements.push(PlaceEvent::Acked { conn, key }),
            SendEvent::Acked(..) | SendEvent::Refused(..) => {}
        }
    }
}
