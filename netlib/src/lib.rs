//! spate-netlib: endpoints, socket options, framed and authenticated message connections,
//! raw bulk connections through io_uring, and `proto` (every message of the job lifecycle).
//! See DESIGN.md §2, §5, §7.

pub mod auth;
pub mod endpoint;
pub mod frame;
pub mod msg;
pub mod pool;
pub mod proto;
pub mod raw;
pub mod sockopt;
pub mod text;
