//! spate-ring: the per-stream circular buffer in (hugepage) shared memory.
//!
//! Chunks land out of order on the writer side (the consumer daemon); the local reader sees the
//! contiguous in-order prefix without another copy. See DESIGN.md §4.
//!
//! - [`shm`]: segments (hugetlb memfd or shmem fallback, backing reported) and mappings.
//! - [`writer`]: reserve room, land ranges in any order, finish / abort.
//! - [`reader`]: acquire / release contiguous blocks; end, abort and dead writer.
//! - [`handoff`]: serve segment fds to local readers over a UNIX socket (SCM_RIGHTS).
//! - [`landed`]: pure out-of-order bookkeeping (landed ranges → frontier).
//! - [`pattern`]: deterministic test pattern (fill / check at many GB/s).
//! - [`ctl`]: the atomics protocol between the two sides (model-checked with loom).

pub mod ctl;
pub mod landed;
pub mod pattern;
mod sync;

#[cfg(not(loom))]
mod abort;
#[cfg(not(loom))]
pub mod handoff;
#[cfg(not(loom))]
pub mod header;
#[cfg(not(loom))]
mod live;
#[cfg(not(loom))]
pub mod reader;
#[cfg(not(loom))]
pub mod shm;
#[cfg(not(loom))]
pub mod writer;

#[cfg(not(loom))]
pub use abort::AbortReason;
#[cfg(not(loom))]
pub use reader::{Acquired, AttachError, Block, ReadError, Reader};
#[cfg(not(loom))]
pub use shm::{Backing, BackingPref, Mapping, Segment, ShmError};
#[cfg(not(loom))]
pub use writer::{Grant, ReaderStatus, Reserve, RingConfig, WriteError, Writer};
