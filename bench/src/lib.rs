//! spate-bench: experiments that measure spate against limits measured in the same run
//! (memory copy, raw socket transfer), reported as ratios, with latency histograms.
#![forbid(unsafe_code)]

pub mod net;
pub mod rip;
pub mod ring;
