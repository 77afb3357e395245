//! `spate bench cluster`: the reference experiments (throughput against the limits of an
//! emulated cluster, constant-speed reading, latency histograms).
//!
//! - [`emu`]: the emulated cluster (network namespaces, two shaped interfaces per node).
//! - [`limits`]: the theoretical limit of each topology from measured capacities (pure).
//! - [`report`]: the report (JSON, terminal table, `.hgrm` files, plots, progress).

pub mod emu;
pub mod limits;
pub mod report;
