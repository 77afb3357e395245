//! Measured capacities, pure: what the scheduler has learned of its producers and links from
//! task reports (DESIGN.md §6, SCHEDULING.md "Beyond the paper").
//!
//! - Per producer (by node name, so that it survives a reconnect) and kernel: a fit of
//!   compute time against chunk bytes, `t = o + s / c`, from every task's compute time.
//! - Per producer and kernel, a second fit of the CPU time each task cost the producer
//!   process (all threads), divided by the CPUs it may use (its cgroup quota, else its CPUs),
//!   against chunk bytes: the compute estimate is the upper envelope of the two (a producer
//!   throttled by a quota pays per chunk for messages, sockets and the network stack, outside
//!   the kernel's call).
//! - Per producer → consumer pair: a fit of piece time against piece bytes, `t = o + b / B`,
//!   from every piece's expel time (the producer accounts overlapping pieces on one link by
//!   busy time, so concurrent pieces do not count twice).
//!
//! Fits are exponentially weighted least squares (`alpha` per sample), so estimates follow a
//! drifting producer within a few tasks. Every chunk of a job is the same size, so within the
//! last few tasks the sizes rarely vary enough to separate the fixed cost from the rate; a
//! second, slow fit ([`SLOW_ALPHA`], about the last hundred tasks) spans jobs of different
//! chunk sizes and gives the fixed cost then, the fast fit the rate that remains. With neither
//! (one chunk size ever seen), the fixed cost stays at its prior. Announced figures (node
//! config) seed an estimate until the first measurement; without them, per-kernel defaults
//! do.

use std::collections::BTreeMap;

/// Where an estimate comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Measured from task reports.
    Measured,
    /// Announced by the node (config).
    Announced,
    /// A built-in default.
    Default,
}

impl Source {
    /// The word used in status.
    pub fn name(self) -> &'static str {
        match self {
            Source::Measured => "measured",
            Source::Announced => "announced",
            Source::Default => "default",
        }
    }
}

/// An exponentially weighted least-squares fit of `y = a + b x`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Fit {
    w: f64,
    sx: f64,
    sy: f64,
    sxx: f64,
    sxy: f64,
    /// Samples seen.
    pub samples: u64,
}

impl Fit {
    /// Adds a sample with weight `alpha` (older samples decay by `1 - alpha`).
    pub fn add(&mut self, x: f64, y: f64, alpha: f64) {
        if !(x.is_finite() && y.is_finite()) || x <= 0.0 || y < 0.0 {
            return;
        }
        let k = 1.0 - alpha;
        self.w = self.w * k + alpha;
        self.sx = self.sx * k + alpha * x;
        self.sy = self.sy * k + alpha * y;
        self.sxx = self.sxx * k + alpha * x * x;
        self.sxy = self.sxy * k + alpha * x * y;
        self.samples += 1;
    }

    /// `(a, b)`: intercept and slope. With too little spread in `x`, the intercept is
    /// `prior_a` (at most half the mean `y`) and the slope what remains. None before any
    /// sample.
    pub fn solve(&self, prior_a: f64) -> Option<(f64, f64)> {
        if let Some(ab) = self.fitted() {
            return Some(ab);
        }
        let (mx, my) = self.means()?;
        let a = prior_a.clamp(0.0, 0.5 * my);
        Some((a, ((my - a) / mx).max(1e-15)))
    }

    /// [`Fit::solve`], taking the intercept from `slow` (a fit over a longer past) when this one
    /// cannot separate it: at most 90 % of this fit's mean time.
    pub fn solve_with(&self, slow: &Fit, prior_a: f64) -> Option<(f64, f64)> {
        if let Some(ab) = self.fitted() {
            return Some(ab);
        }
        let (mx, my) = self.means()?;
        match slow.fitted() {
            Some((a, _)) => {
                let a = a.min(0.9 * my);
                Some((a, ((my - a) / mx).max(1e-15)))
            }
            None => self.solve(prior_a),
        }
    }

    /// Mean size and mean time.
    fn means(&self) -> Option<(f64, f64)> {
        (self.samples > 0 && self.w > 0.0).then(|| (self.sx / self.w, self.sy / self.w))
    }

    /// The least-squares `(a, b)` when the sizes seen separate them.
    fn fitted(&self) -> Option<(f64, f64)> {
        let (mx, my) = self.means()?;
        let var = self.sxx / self.w - mx * mx;
        // A fit needs some spread in sizes (5 %) over 3 samples. With a small spread (under
        // 25 %) its intercept stays below half the mean time, so nearly equal sizes cannot
        // make a fixed cost larger than the work; sizes far apart are trusted further. (A
        // stricter rule, 8 samples and 25 % spread, kept the prior overhead after a
        // calibration of equal chunks; the planner then chose one-line chunks whose real
        // per-chunk cost cut delivery to a third in `bench policy`.)
        if self.samples < 3 || var <= (0.05 * mx) * (0.05 * mx) {
            return None;
        }
        let b = (self.sxy / self.w - mx * my) / var;
        let a = my - b * mx;
        let cap = if var >= (0.25 * mx) * (0.25 * mx) {
            0.95
        } else {
            0.5
        };
        (b > 0.0 && a >= 0.0 && a <= cap * my).then_some((a, b))
    }
}

impl Fit {
    /// The fit's state, to keep it (`[w, sx, sy, sxx, sxy, samples]`).
    pub fn to_array(&self) -> [f64; 6] {
        [
            self.w,
            self.sx,
            self.sy,
            self.sxx,
            self.sxy,
            self.samples as f64,
        ]
    }

    /// A fit from [`Fit::to_array`]; None when a value is not a finite, non-negative number.
    pub fn from_array(a: [f64; 6]) -> Option<Fit> {
        // sxy may be negative only in theory (sizes and times are positive); refuse anything
        // not finite, and negative weights or counts.
        if a.iter().any(|v| !v.is_finite()) || a[0] < 0.0 || a[5] < 0.0 {
            return None;
        }
        Some(Fit {
            w: a[0],
            sx: a[1],
            sy: a[2],
            sxx: a[3],
            sxy: a[4],
            samples: a[5] as u64,
        })
    }
}

/// One kept estimate: what it is about and its two fits.
#[derive(Debug, Clone, PartialEq)]
pub struct SavedFit {
    /// Producer node name.
    pub node: String,
    /// Kernel name (compute) or consumer node name (link).
    pub what: String,
    /// None: a compute estimate; Some(local): a link.
    pub link: Option<bool>,
    /// The fast fit ([`Fit::to_array`]).
    pub fast: [f64; 6],
    /// The slow fit.
    pub slow: [f64; 6],
}

/// The compute table's key of a kernel's CPU fit (kept and restored with the others).
const CPU_SUFFIX: &str = "#cpu";

fn cpu_key(kernel: &str) -> String {
    format!("{kernel}{CPU_SUFFIX}")
}

/// Weight of each sample in the slow fits that give fixed costs (see the module notes).
pub const SLOW_ALPHA: f64 = 0.02;

/// A fast fit (rates that drift) and a slow one (fixed costs, across chunk sizes).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Pair {
    fast: Fit,
    slow: Fit,
}

impl Pair {
    fn add(&mut self, x: f64, y: f64, alpha: f64) {
        self.fast.add(x, y, alpha);
        self.slow.add(x, y, SLOW_ALPHA.min(alpha));
    }

    fn solve(&self, prior_a: f64) -> Option<(f64, f64)> {
        self.fast.solve_with(&self.slow, prior_a)
    }
}

/// Settings of the estimator.
#[derive(Debug, Clone, PartialEq)]
pub struct CapacityConfig {
    /// Weight of each new sample.
    pub alpha: f64,
    /// Prior fixed compute cost per chunk (s).
    pub compute_overhead: f64,
    /// Default compute rate per core and kernel name (B/s), when nothing is announced.
    pub kernel_defaults: Vec<(String, f64)>,
    /// Default compute rate per core for kernels not listed (B/s).
    pub compute_default: f64,
    /// Default NIC rate of a node that announced none (B/s, per direction).
    pub nic_default: f64,
    /// Same-host transfer rate until measured (B/s).
    pub local_rate: f64,
    /// Prior fixed cost per piece on a same-host pair (s).
    pub local_overhead: f64,
    /// Prior fixed cost per piece on a remote pair (s).
    pub remote_overhead: f64,
    /// One-way delay assumed on a remote pair (s).
    pub remote_delay: f64,
}

impl Default for CapacityConfig {
    fn default() -> Self {
        CapacityConfig {
            alpha: 0.25,
            compute_overhead: 0.2e-3,
            kernel_defaults: vec![
                ("null".into(), 20e9),
                ("pattern".into(), 3e9),
                ("rip".into(), 0.5e9),
            ],
            compute_default: 0.5e9,
            nic_default: 10e9 / 8.0,
            local_rate: 5e9,
            local_overhead: 50e-6,
            remote_overhead: 50e-6,
            remote_delay: 0.5e-3,
        }
    }
}

/// A compute estimate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Compute {
    /// `c`: bytes per second while computing.
    pub rate: f64,
    /// `o`: fixed seconds per chunk.
    pub overhead: f64,
    /// Where it comes from.
    pub source: Source,
    /// Tasks measured.
    pub samples: u64,
}

impl Compute {
    /// Chunks of `bytes` per second... as bytes per second: `s / (o + s / c)`.
    pub fn rate_at(&self, bytes: f64) -> f64 {
        bytes / (self.overhead + bytes / self.rate)
    }
}

/// A link estimate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Link {
    /// `B`: bytes per second.
    pub rate: f64,
    /// Fixed seconds per piece.
    pub overhead: f64,
    /// Pieces measured.
    pub samples: u64,
}

/// Everything learned so far.
#[derive(Debug, Clone, Default)]
pub struct Capacities {
    /// Settings.
    pub config: CapacityConfig,
    compute: BTreeMap<(String, String), Pair>,
    links: BTreeMap<(String, String), (Pair, bool)>,
}

impl Capacities {
    /// An estimator with these settings.
    pub fn new(config: CapacityConfig) -> Capacities {
        Capacities {
            config,
            ..Capacities::default()
        }
    }

    /// A task of `kernel` on `node` computed `bytes` in `secs`.
    pub fn observe_compute(&mut self, node: &str, kernel: &str, bytes: u64, secs: f64) {
        let alpha = self.config.alpha;
        self.compute
            .entry((node.to_string(), kernel.to_string()))
            .or_default()
            .add(bytes as f64, secs, alpha);
    }

    /// A task of `kernel` on `node` (`bytes`) cost the producer process `secs` of CPU time
    /// at the CPUs it may use: the compute estimate is never faster than this (a throttled
    /// producer's per-chunk costs outside the kernel's call show here, not in its compute
    /// time).
    pub fn observe_cpu(&mut self, node: &str, kernel: &str, bytes: u64, secs: f64) {
        let alpha = self.config.alpha;
        self.compute
            .entry((node.to_string(), cpu_key(kernel)))
            .or_default()
            .add(bytes as f64, secs, alpha);
    }

    /// A piece of `bytes` from `producer` to `consumer` took `secs` of the link's time.
    pub fn observe_link(
        &mut self,
        producer: &str,
        consumer: &str,
        local: bool,
        bytes: u64,
        secs: f64,
    ) {
        let alpha = self.config.alpha;
        let e = self
            .links
            .entry((producer.to_string(), consumer.to_string()))
            .or_default();
        e.0.add(bytes as f64, secs, alpha);
        e.1 = local;
    }

    /// The compute estimate of `node` for `kernel`: measured, else its announcement
    /// (`announced` B/s for the whole node), else the kernel's default per core × `cores`.
    pub fn compute(&self, node: &str, kernel: &str, announced: u64, cores: u32) -> Compute {
        let prior_o = self.config.compute_overhead;
        if let Some(fit) = self.compute.get(&(node.to_string(), kernel.to_string()))
            && let Some((a, b)) = fit.solve(prior_o)
        {
            // The CPU fit, when measured, bounds it from below: the upper envelope of the two
            // lines (the larger fixed cost, the larger time per byte).
            let (a, b) = match self
                .compute
                .get(&(node.to_string(), cpu_key(kernel)))
                .and_then(|f| f.solve(prior_o))
            {
                Some((ca, cb)) => (a.max(ca), b.max(cb)),
                None => (a, b),
            };
            return Compute {
                rate: (1.0 / b).min(1e13),
                overhead: a,
                source: Source::Measured,
                samples: fit.fast.samples,
            };
        }
        if announced > 0 {
            return Compute {
                rate: announced as f64,
                overhead: prior_o,
                source: Source::Announced,
                samples: 0,
            };
        }
        let per_core = self
            .config
            .kernel_defaults
            .iter()
            .find(|(k, _)| k == kernel)
            .map_or(self.config.compute_default, |(_, r)| *r);
        Compute {
            rate: per_core * f64::from(cores.max(1)),
            overhead: prior_o,
            source: Source::Default,
            samples: 0,
        }
    }

    /// The measured link from `producer` to `consumer`, if any piece was measured.
    pub fn link(&self, producer: &str, consumer: &str) -> Option<Link> {
        let (fit, local) = self
            .links
            .get(&(producer.to_string(), consumer.to_string()))?;
        let prior = if *local {
            self.config.local_overhead
        } else {
            self.config.remote_overhead
        };
        let (a, b) = fit.solve(prior)?;
        Some(Link {
            rate: (1.0 / b).min(1e13),
            overhead: a,
            samples: fit.fast.samples,
        })
    }

    /// Everything measured, to keep across a restart ([`Capacities::restore`]).
    pub fn export(&self) -> Vec<SavedFit> {
        let compute = self.compute.iter().map(|((n, k), p)| SavedFit {
            node: n.clone(),
            what: k.clone(),
            link: None,
            fast: p.fast.to_array(),
            slow: p.slow.to_array(),
        });
        let links = self.links.iter().map(|((n, c), (p, local))| SavedFit {
            node: n.clone(),
            what: c.clone(),
            link: Some(*local),
            fast: p.fast.to_array(),
            slow: p.slow.to_array(),
        });
        compute.chain(links).collect()
    }

    /// Takes back what [`Capacities::export`] gave (entries that do not parse are skipped).
    pub fn restore(&mut self, saved: &[SavedFit]) {
        for f in saved {
            let (Some(fast), Some(slow)) = (Fit::from_array(f.fast), Fit::from_array(f.slow))
            else {
                continue;
            };
            let pair = Pair { fast, slow };
            let key = (f.node.clone(), f.what.clone());
            match f.link {
                None => {
                    self.compute.insert(key, pair);
                }
                Some(local) => {
                    self.links.insert(key, (pair, local));
                }
            }
        }
    }

    /// Every measured compute estimate: (node, kernel, estimate).
    pub fn computes(&self) -> Vec<(String, String, Compute)> {
        self.compute
            .keys()
            .filter(|(_, k)| !k.ends_with(CPU_SUFFIX))
            .map(|(n, k)| (n.clone(), k.clone(), self.compute(n, k, 0, 1)))
            .collect()
    }

    /// Every measured link: (producer, consumer, estimate).
    pub fn links(&self) -> Vec<(String, String, Link)> {
        self.links
            .keys()
            .filter_map(|(p, c)| self.link(p, c).map(|l| (p.clone(), c.clone(), l)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, rel: f64) -> bool {
        (a - b).abs() <= rel * b.abs()
    }

    #[test]
    fn fit_separates_overhead_and_rate_when_sizes_vary() {
        let mut f = Fit::default();
        // t = 2 ms + s / 100 MB/s.
        for s in [1e6, 2e6, 4e6, 1e6, 3e6, 2e6, 4e6, 1e6] {
            f.add(s, 2e-3 + s / 100e6, 0.25);
        }
        let (a, b) = f.solve(0.0).unwrap();
        assert!(close(a, 2e-3, 1e-6), "{a}");
        assert!(close(1.0 / b, 100e6, 1e-6), "{b}");
    }

    #[test]
    fn a_fitted_overhead_never_exceeds_half_the_mean_time() {
        let mut f = Fit::default();
        // t = 8 ms + s / 1 GB/s on sizes 10 % apart: the intercept (8 ms) would be most of
        // the time (about 9 ms); it is not taken, the prior stands.
        for s in [1.0e6, 1.1e6, 0.9e6, 1.05e6, 0.95e6] {
            f.add(s, 8e-3 + s / 1e9, 0.25);
        }
        let (a, b) = f.solve(1e-3).unwrap();
        assert_eq!(a, 1e-3);
        assert!(b > 0.0);
    }

    #[test]
    fn fit_keeps_the_prior_overhead_when_sizes_are_equal() {
        let mut f = Fit::default();
        for _ in 0..5 {
            f.add(1e6, 12e-3, 0.25);
        }
        let (a, b) = f.solve(2e-3).unwrap();
        assert_eq!(a, 2e-3);
        assert!(close(1.0 / b, 1e6 / 10e-3, 1e-9));
        // A prior larger than half the time is cut to half.
        let (a, _) = f.solve(1.0).unwrap();
        assert!(close(a, 6e-3, 1e-9));
    }

    #[test]
    fn estimates_follow_a_drop_within_a_few_tasks() {
        let mut c = Capacities::default();
        for _ in 0..10 {
            c.observe_compute("p", "rip", 1 << 20, (1 << 20) as f64 / 100e6);
        }
        let before = c.compute("p", "rip", 0, 1);
        assert_eq!(before.source, Source::Measured);
        assert!(close(before.rate_at((1 << 20) as f64), 100e6, 1e-6));
        for _ in 0..8 {
            c.observe_compute("p", "rip", 1 << 20, (1 << 20) as f64 / 10e6);
        }
        let after = c.compute("p", "rip", 0, 1).rate_at((1 << 20) as f64);
        // After 8 tasks at a tenth, the estimate is within 15 % of the new rate.
        assert!(after < 11.5e6, "{after}");
    }

    #[test]
    fn jobs_of_two_chunk_sizes_give_the_fixed_cost_the_last_one_alone_cannot() {
        // t = 30 ms + s / 100 MB/s (a producer throttled by a CPU quota): a job of 4 MB
        // chunks, then one of 1 MB chunks. The last tasks are all 1 MB: alone they cannot
        // tell the fixed cost from the rate; the slow fit spans both jobs.
        let t = |s: f64| 30e-3 + s / 100e6;
        let mut c = Capacities::default();
        for _ in 0..40 {
            c.observe_compute("p", "rip", 4_000_000, t(4e6));
        }
        for _ in 0..20 {
            c.observe_compute("p", "rip", 1_000_000, t(1e6));
        }
        let e = c.compute("p", "rip", 0, 1);
        assert!(close(e.overhead, 30e-3, 0.01), "{e:?}");
        assert!(close(e.rate, 100e6, 0.02), "{e:?}");
        // So the rate at 1 MB chunks is what it was (25 MB/s), and at 4 MB what that was.
        assert!(close(e.rate_at(1e6), 1e6 / t(1e6), 0.02), "{e:?}");
        assert!(close(e.rate_at(4e6), 4e6 / t(4e6), 0.02), "{e:?}");
        // One chunk size only: the prior fixed cost stands (0.2 ms).
        let mut one = Capacities::default();
        for _ in 0..40 {
            one.observe_compute("p", "rip", 4_000_000, t(4e6));
        }
        assert_eq!(one.compute("p", "rip", 0, 1).overhead, 0.2e-3);
    }

    #[test]
    fn the_cpu_a_task_costs_bounds_the_compute_estimate() {
        // Compute alone: 1 ms + s / 600 MB/s. The CPU quota's view: 20 ms + s / 60 MB/s.
        let mut c = Capacities::default();
        for s in [1e6, 4e6, 2e6, 1e6, 4e6, 2e6] {
            c.observe_compute("p", "rip", s as u64, 1e-3 + s / 600e6);
            c.observe_cpu("p", "rip", s as u64, 20e-3 + s / 60e6);
        }
        let e = c.compute("p", "rip", 0, 1);
        assert!(close(e.overhead, 20e-3, 1e-6), "{e:?}");
        assert!(close(e.rate, 60e6, 1e-6), "{e:?}");
        // Listed once, under the kernel's name.
        let listed = c.computes();
        assert_eq!(listed.len(), 1);
        assert_eq!((listed[0].0.as_str(), listed[0].1.as_str()), ("p", "rip"));
        // Kept and restored with the rest.
        let mut back = Capacities::default();
        back.restore(&c.export());
        assert_eq!(back.compute("p", "rip", 0, 1), e);
        // A CPU fit below the compute one changes nothing.
        let mut d = Capacities::default();
        for s in [1e6, 4e6, 2e6, 1e6] {
            d.observe_compute("p", "rip", s as u64, 1e-3 + s / 600e6);
            d.observe_cpu("p", "rip", s as u64, 0.5e-3 + s / 900e6);
        }
        let e = d.compute("p", "rip", 0, 1);
        assert!(
            close(e.overhead, 1e-3, 1e-6) && close(e.rate, 600e6, 1e-6),
            "{e:?}"
        );
    }

    #[test]
    fn estimates_come_back_whole_from_what_was_kept() {
        let mut c = Capacities::default();
        for (i, s) in [1e6, 4e6, 2e6, 1e6].iter().enumerate() {
            c.observe_compute("p", "rip", *s as u64, 2e-3 + s / 100e6 + i as f64 * 1e-6);
            c.observe_link("p", "q", i % 2 == 0, *s as u64, s / 50e6);
        }
        let kept = c.export();
        assert_eq!(kept.len(), 2);
        let mut back = Capacities::default();
        back.restore(&kept);
        assert_eq!(back.compute("p", "rip", 0, 1), c.compute("p", "rip", 0, 1));
        assert_eq!(back.link("p", "q"), c.link("p", "q"));
        assert_eq!(back.export(), kept);
        // Damaged entries are skipped.
        let mut bad = kept[0].clone();
        bad.fast[0] = f64::NAN;
        let mut none = Capacities::default();
        none.restore(&[bad]);
        assert!(none.export().is_empty());
    }

    #[test]
    fn seeds_announced_then_default() {
        let c = Capacities::default();
        let a = c.compute("p", "rip", 2_000_000_000, 4);
        assert_eq!((a.rate, a.source), (2e9, Source::Announced));
        let d = c.compute("p", "rip", 0, 4);
        assert_eq!((d.rate, d.source), (2e9, Source::Default));
        let u = c.compute("p", "mystery", 0, 2);
        assert_eq!((u.rate, u.source), (1e9, Source::Default));
        assert!(c.link("p", "q").is_none());
    }

    #[test]
    fn links_are_per_pair() {
        let mut c = Capacities::default();
        for b in [
            100_000u64, 400_000, 200_000, 300_000, 100_000, 400_000, 200_000, 300_000,
        ] {
            c.observe_link("p", "q", false, b, 0.5e-3 + b as f64 / 50e6);
        }
        let l = c.link("p", "q").unwrap();
        assert!(close(l.rate, 50e6, 1e-6), "{l:?}");
        assert!(close(l.overhead, 0.5e-3, 1e-6), "{l:?}");
        assert!(c.link("q", "p").is_none());
        assert_eq!(c.links().len(), 1);
    }
}
