//! The scenarios' arithmetic, pure: job rates from what the calibration measured, job sizes,
//! producers' CPU shares, the rate S5 can still be fed at, and the job specs.

use std::fmt::Write as _;

/// Scenario rates as fractions of what the cluster can do (the calibration's throughput `T`).
pub const S1_FRACTION: f64 = 0.8;
/// S2: beyond the cluster.
pub const S2_FRACTION: f64 = 1.3;
/// S4: each of the three jobs; two fit together (0.8 T), the third does not (1.2 T).
pub const S4_FRACTION: f64 = 0.4;
/// S5: this fraction of what the cluster can still do once the slowed producer gives a tenth.
pub const S5_FRACTION: f64 = 0.8;
/// S5: the slowed producer keeps this share of its CPU.
pub const S5_SLOWDOWN: f64 = 0.1;
/// S5: the quota is cut once this share of the job's bytes was read.
pub const S5_CUT_AT: f64 = 0.3;

/// Reference job B's line (DESIGN.md §8): 36000 pixels of 8 bits per channel.
pub const WIDTH: u64 = 36_000;
/// CMYK.
pub const CHANNELS: u64 = 4;

/// The CPU share (of one CPU) that makes a producer compute `target` bytes/s, when the RIP
/// makes `rip_per_cpu_second` bytes per CPU-second.
pub fn cpus_for(target: f64, rip_per_cpu_second: f64) -> f64 {
    target / rip_per_cpu_second.max(1.0)
}

/// Lines of a job of about `bytes` (all channels), at least `min_lines`.
pub fn lines_for(bytes: f64, min_lines: u64) -> u64 {
    ((bytes / (WIDTH * CHANNELS) as f64).ceil() as u64).max(min_lines)
}

/// The job rate S5 asks for (B/s): [`S5_FRACTION`] of what the cluster does without the
/// slowed producer's share (`total` the calibration's throughput, `slowed` that producer's
/// part of it) plus the tenth of it it keeps.
pub fn s5_rate(total: f64, slowed: f64) -> f64 {
    S5_FRACTION * (total - (1.0 - S5_SLOWDOWN) * slowed).max(0.0)
}

/// The producer S5 slows: the one that did the most of the calibration (ties: the first).
pub fn pick_to_slow(shares: &[(String, f64)]) -> Option<usize> {
    let mut best: Option<(usize, f64)> = None;
    for (i, (_, r)) in shares.iter().enumerate() {
        if best.is_none_or(|(_, b)| *r > b) {
            best = Some((i, *r));
        }
    }
    best.map(|b| b.0)
}

/// A job rate (B/s for the whole job) as the spec's per-stream `rate` (every stream is read
/// at it): whole bits per second, rounded down, so the job never asks more than `job_rate`.
pub fn stream_rate_bits(job_rate: f64, streams: u64) -> u64 {
    (job_rate * 8.0 / streams.max(1) as f64).floor() as u64
}

/// What one job of a scenario asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct JobAsk {
    /// The job's name.
    pub name: String,
    /// `tclo` or `load-balance`.
    pub policy: String,
    /// Lines (of every channel).
    pub lines: u64,
    /// Per-stream rate, bits/s.
    pub rate_bits: Option<u64>,
    /// Latency bound, ms.
    pub latency_ms: Option<u64>,
    /// Lines per chunk (None: the policy picks).
    pub chunk_lines: Option<u64>,
    /// The consumer node of every stream.
    pub node: String,
}

impl JobAsk {
    /// The job rate asked for (B/s, all streams), when there is one.
    pub fn job_rate(&self) -> Option<f64> {
        self.rate_bits.map(|b| b as f64 / 8.0 * CHANNELS as f64)
    }

    /// Job bytes.
    pub fn bytes(&self) -> u64 {
        self.lines * WIDTH * CHANNELS
    }

    /// The job spec (TOML) of a RIP job of reference job B's width, one stream per channel.
    pub fn spec(&self, input: &str) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "name = \"{}\"", self.name);
        let _ = writeln!(s, "kernel = \"rip\"");
        let _ = writeln!(s, "inputs = [\"{input}\"]");
        let _ = writeln!(s, "width = {WIDTH}\nheight = {}", self.lines);
        let _ = writeln!(s, "bits = 8\nchannels = {CHANNELS}\nsplit = \"channel\"");
        let _ = writeln!(s, "node = \"{}\"", self.node);
        let _ = writeln!(s, "policy = \"{}\"", self.policy);
        if let Some(r) = self.rate_bits {
            let _ = writeln!(s, "rate = \"{r}bit\"");
        }
        if let Some(l) = self.latency_ms {
            let _ = writeln!(s, "latency = \"{l}ms\"");
        }
        if let Some(c) = self.chunk_lines {
            let _ = writeln!(s, "chunk = {{ lines = {c} }}");
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_sizes_and_rates_by_hand() {
        // 60 MB/s from a RIP doing 1200 MB per CPU-second: 5 % of a CPU.
        assert!((cpus_for(60e6, 1200e6) - 0.05).abs() < 1e-12);
        // 100 MB of job B: 144000 bytes a line -> 695 lines (rounded up).
        assert_eq!(lines_for(100e6, 1), 695);
        assert_eq!(lines_for(10.0, 64), 64);
        // The cluster does 100 MB/s, 60 of them on the producer S5 slows: without it 40, plus
        // the 6 it keeps -> 46; S5 asks 0.8 of that.
        assert!((s5_rate(100e6, 60e6) - 0.8 * 46e6).abs() < 1e-6);
        assert_eq!(s5_rate(10.0, 100.0), 0.0);
        // 1 Gbit/s for the job on 4 streams: 250 Mbit/s each.
        assert_eq!(stream_rate_bits(125e6, 4), 250_000_000);
        assert_eq!(stream_rate_bits(125e6 + 0.1, 4), 250_000_000);
    }

    #[test]
    fn s5_slows_the_producer_that_did_the_most() {
        let s = |v: &[f64]| -> Vec<(String, f64)> {
            v.iter()
                .enumerate()
                .map(|(i, r)| (format!("n{}", i + 1), *r))
                .collect()
        };
        assert_eq!(pick_to_slow(&s(&[0.2, 0.5, 0.1])), Some(1));
        assert_eq!(pick_to_slow(&s(&[0.3, 0.3])), Some(0));
        assert_eq!(pick_to_slow(&[]), None);
    }

    #[test]
    fn specs_say_what_the_job_asks() {
        let j = JobAsk {
            name: "S1-tclo".into(),
            policy: "tclo".into(),
            lines: 700,
            rate_bits: Some(250_000_000),
            latency_ms: None,
            chunk_lines: None,
            node: "n0".into(),
        };
        let s = j.spec("sheet.png");
        let plan = spate_scheduler::spec::JobPlan::parse(&s).unwrap();
        assert_eq!(plan.rate_bps, Some(250_000_000));
        assert_eq!(plan.policy.as_deref(), Some("tclo"));
        assert_eq!(plan.streams.len(), 4);
        assert_eq!(plan.total_bytes(), j.bytes());
        assert_eq!(j.job_rate(), Some(125e6));
        assert!(plan.latency.is_none() && plan.chunk_lines.is_none());
        let lb = JobAsk {
            policy: "load-balance".into(),
            rate_bits: None,
            latency_ms: Some(100),
            chunk_lines: Some(3),
            ..j
        };
        let plan = spate_scheduler::spec::JobPlan::parse(&lb.spec("sheet.png")).unwrap();
        assert_eq!(plan.latency, Some(std::time::Duration::from_millis(100)));
        assert_eq!(plan.chunk_lines, Some(3));
        assert_eq!(plan.policy.as_deref(), Some("load-balance"));
        assert_eq!(lb.job_rate(), None);
    }
}
