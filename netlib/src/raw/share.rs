//! The share policy of a [`super::RawClient`]: which chunks a local consumer pulls from our
//! memory instead of receiving them through the socket, and the read-only descriptors
//! ("exports") of the buffer regions it pulls from.
//!
//! A chunk is pulled when its connection is local (UNIX) with sharing on, its buffer's region
//! is a whole memory file (a buffer arena), and the connection has room for one more segment;
//! otherwise it goes through the socket. An export lives as long as its region: once the
//! region is freed, [`Exports::sweep`] retires its segment on every connection.

use std::collections::{HashMap, HashSet};
use std::os::fd::OwnedFd;
use std::sync::{Arc, Weak};

use spate_runtime::{FixedBuf, Region};

use super::MAX_SEGMENTS;

/// A region whose memory local consumers may read: its read-only descriptor.
struct Export {
    seg: u32,
    len: u64,
    fd: OwnedFd,
    region: Weak<Region>,
}

/// How one chunk goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Through the socket (offer, grant, data).
    Socket,
    /// Pulled by the consumer from segment `seg` (of `len` bytes) at `at`.
    Pull {
        /// Segment id.
        seg: u32,
        /// Its length.
        len: u64,
        /// The chunk's offset in it.
        at: u64,
    },
}

/// The exports of one client (see the module docs).
#[derive(Default)]
pub struct Exports {
    by_region: HashMap<u64, Export>,
    /// Regions that cannot be shared (no file behind them, or reopening failed).
    unshareable: HashSet<u64>,
    next_seg: u32,
}

impl Exports {
    /// How the chunk at `buf[at..]` goes on a connection that is `local` (UNIX, sharing on)
    /// and shares `shared` segments of which `is_shared` tells.
    pub fn route(
        &mut self,
        local: bool,
        buf: &FixedBuf,
        at: usize,
        shared: usize,
        is_shared: impl Fn(u32) -> bool,
    ) -> Route {
        if !local {
            return Route::Socket;
        }
        let rid = buf.region().id();
        if self.unshareable.contains(&rid) {
            return Route::Socket;
        }
        if !self.by_region.contains_key(&rid) {
            match buf.region().share_fd() {
                Ok(Some(fd)) => {
                    self.next_seg = self.next_seg.wrapping_add(1).max(1);
                    let export = Export {
                        seg: self.next_seg,
                        len: buf.region().len() as u64,
                        fd,
                        region: Arc::downgrade(buf.region()),
                    };
                    self.by_region.insert(rid, export);
                }
                Ok(None) => {
                    self.unshareable.insert(rid);
                    return Route::Socket;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot share buffer memory with local consumers; sending through the socket");
                    self.unshareable.insert(rid);
                    return Route::Socket;
                }
            }
        }
        let Some(x) = self.by_region.get(&rid) else {
            return Route::Socket;
        };
        if !is_shared(x.seg) && shared >= MAX_SEGMENTS {
            return Route::Socket;
        }
        Route::Pull {
            seg: x.seg,
            len: x.len,
            at: (buf.offset() + at) as u64,
        }
    }

    /// A new descriptor of segment `seg` to attach to its Share frame (None: not exported).
    pub fn fd(&self, seg: u32) -> Option<std::io::Result<OwnedFd>> {
        self.by_region
            .values()
            .find(|x| x.seg == seg)
            .map(|x| x.fd.try_clone())
    }

    /// Forget exports whose region is gone; returns their (segment, length) to unshare. No
    /// chunk of them can be in flight: every chunk's buffer holds its region alive.
    pub fn sweep(&mut self) -> Vec<(u32, u64)> {
        let dead: Vec<u64> = self
            .by_region
            .iter()
            .filter(|(_, x)| x.region.strong_count() == 0)
            .map(|(rid, _)| *rid)
            .collect();
        dead.into_iter()
            .filter_map(|rid| self.by_region.remove(&rid))
            .map(|x| (x.seg, x.len))
            .collect()
    }

    /// Whether nothing is exported.
    pub fn is_empty(&self) -> bool {
        self.by_region.is_empty()
    }
}
