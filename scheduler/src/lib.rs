//! spate-scheduler: the pure decision core (events in, commands out), placement and admission
//! policies, and the job spec. See DESIGN.md §2 and §6.
#![forbid(unsafe_code)]

pub mod core;
pub mod policy;
pub mod spec;
