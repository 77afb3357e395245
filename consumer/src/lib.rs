//! spate-consumer: stream allocation, landing chunks into rings, reader hand-off.
//! See DESIGN.md §1, §4 and §5.
//!
//! - [`engine`]: the receive engine: one thread serving raw connections from any number of
//!   producers, landing payloads through io_uring straight into each stream's ring; the
//!   stream table (allocate, release) and the reader hand-off server.
//! - [`node`]: the consumer's side of the control protocol (AllocStream, Release, progress and
//!   reader reports), as a handler the daemon's control loop calls.
#![forbid(unsafe_code)]

pub mod engine;
pub mod node;

pub use engine::{Allocation, ConsumerEngine, ConsumerError, EngineConfig, Landed, StreamState};
pub use node::ConsumerNode;
