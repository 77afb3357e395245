//! spate-scheduler: the pure decision core (events in, commands out), placement and admission
//! policies, the job spec, the server (event loop) and its file service. See DESIGN.md §2 and §6.
#![forbid(unsafe_code)]

pub mod capacity;
pub mod core;
pub mod deal;
pub mod files;
pub mod model;
pub mod policy;
pub mod server;
pub mod spec;
