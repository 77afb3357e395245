//! spate-netlib: endpoints, socket options, framed and authenticated message connections,
//! raw bulk connections through io_uring, and `proto` (every message of the job lifecycle).
//! See DESIGN.md §2, §5, §7.
