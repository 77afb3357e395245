//! spate-producer: task engines (preload, compute, expel) and kernels. See DESIGN.md §1 and §5.
#![forbid(unsafe_code)]

pub mod daemon;
pub mod engine;
pub mod expel;
pub mod factory;
pub mod kernel;
pub mod rip;
pub mod rip_kernel;
