//! spate-runtime: thread-per-core execution with one io_uring per thread, registered buffer
//! arenas in hugepage memory, and the memlock / opcode checks they need. See DESIGN.md §5.
//!
//! - [`Driver`]: one io_uring per thread; [`Op`]s own their buffers until their
//!   [`Completion`] hands them back (so safe code can never free memory the kernel writes).
//! - [`Arena`] / [`ArenaBuf`] / [`Span`] / [`FixedBuf`]: registered memory.
//! - [`thread`]: pinned threads, bounded queues, eventfd wake-ups.
//! - [`probe`], [`memlock`]: what the kernel offers; RLIMIT_MEMLOCK handling.

pub mod cpu;
pub mod driver;
pub mod error;
pub mod memlock;
pub mod probe;
pub mod region;
mod shm;
pub mod thread;

pub use driver::{Completion, Driver, DriverConfig, Op, OpId, Output, RingMode};
pub use error::{Result, RuntimeError};
pub use region::{Arena, ArenaBuf, FixedBuf, FrozenBuf, Placed, Region, Span, StableMemory};
pub use thread::{Notifier, PinnedThread, QueueRx, QueueTx, queue, spawn_pinned};
