//! spate-ring: the per-stream circular buffer in (hugepage) shared memory.
//!
//! Chunks land out of order on the writer side (the consumer daemon); the local reader sees the
//! contiguous in-order prefix without another copy. See DESIGN.md §4.

pub mod shm;
