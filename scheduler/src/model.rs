//! The scheduling model of SCHEDULING.md, pure: stage times, rates, latency, window, ring and
//! prefill of a chunk pipeline on a set of producers, and the two constrained placements
//! (TCLO, "least latency under a rate", and its inverse, "most throughput under a latency
//! bound"). Units: bytes, seconds, bytes per second (`f64`).
//!
//! A job's chunk (lines `[l0, l1)` of every channel, `s` bytes in all) is computed by one
//! producer and its pieces go to the job's consumers at once: consumer `q` receives the share
//! `w_q` of every chunk. For a producer `p` of the set `S`:
//!
//! - per-flow bandwidth to a remote consumer `b_pq = min(B_pq, E_p / f_p, I_q / g_q)` with
//!   fan-out `f_p` (remote consumers of the job) and fan-in `g_q` (remote producers in `S`);
//!   a consumer on the producer's host is reached through memory at the local link's rate;
//! - `t_cmp = o_p + s / c_p`, `t_exp = max_q (o_pq + s·w_q / b_pq)`, `t_pre` per chunk;
//! - period `τ_p = max(t_pre, t_cmp, t_exp)`, rate `ρ_p = s / τ_p`;
//! - chunk latency `l_p = t_pre + t_cmp + t_exp + d_p`; `L = max_{p∈S}(l_p + τ_p)`;
//! - window `W = ⌈(R / s)·L⌉ + |S|`, reorder memory per stream `W` pieces beyond the prefill;
//! - `T = min(Σ ρ_p, min_q inflow_q / w_q, W·s / L)`;
//! - prefill `B0 = R·(L − min l) + s`.
//!
//! A producer shared with other jobs gives this job the share `a_p` of its time: its period
//! becomes `τ_p / a_p` and its chunks wait for the other jobs' work (`l_p + τ_p/a_p − τ_p`).

use std::collections::BTreeMap;

use crate::core::NodeId;

/// A producer as the model sees it, for one job's kernel.
#[derive(Debug, Clone, PartialEq)]
pub struct ProducerCap {
    /// The node.
    pub id: NodeId,
    /// Its host (a consumer on the same host is reached through memory).
    pub host: String,
    /// `c_p`: output bytes per second while computing this job's kernel.
    pub compute: f64,
    /// `o_p`: fixed seconds per chunk.
    pub overhead: f64,
    /// `t_pre`: seconds per chunk spent fetching input (0 when preloaded once per job).
    pub preload: f64,
    /// `E_p`: egress bytes per second free for this job.
    pub egress: f64,
    /// `k_p`: consumers it can talk to at once.
    pub ports: u32,
    /// Share of its time free for this job (1 minus what other jobs reserved), in (0, 1].
    pub avail: f64,
}

/// A consumer as the model sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct ConsumerCap {
    /// The node.
    pub id: NodeId,
    /// Its host.
    pub host: String,
    /// `I_q`: ingress bytes per second free for this job.
    pub ingress: f64,
    /// `k_q`: producers it can take from at once.
    pub ports: u32,
    /// `M_q`: ring memory free (None: not announced, no limit).
    pub memory: Option<u64>,
}

/// A producer → consumer link.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct LinkCap {
    /// `B_pq`: bytes per second (for a remote pair, further capped by the NICs' shares).
    pub rate: f64,
    /// Fixed seconds per piece (control round trips).
    pub overhead: f64,
    /// `d_pq`: one-way delay in seconds.
    pub delay: f64,
}

/// The cluster as one job's placement sees it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Cluster {
    /// Producers that may work on the job.
    pub producers: Vec<ProducerCap>,
    /// The job's consumers.
    pub consumers: Vec<ConsumerCap>,
    /// Known links (measured, or announced); pairs not listed use `local` when both ends
    /// share a host, else `remote` with the rate `min(E_p, I_q)`.
    pub links: BTreeMap<(NodeId, NodeId), LinkCap>,
    /// Same-host pairs.
    pub local: LinkCap,
    /// Remote pairs without a measurement (its `rate` is ignored: the NICs bound it).
    pub remote: LinkCap,
}

/// One candidate chunk size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ChunkSize {
    /// Lines per chunk.
    pub lines: u64,
    /// Bytes of one chunk, all channels (`s`).
    pub bytes: u64,
}

/// One stream of the job.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamShape {
    /// Its consumer.
    pub consumer: NodeId,
    /// Its length in bytes.
    pub len: u64,
    /// Its share of the job's bytes.
    pub share: f64,
    /// Bytes of its piece of a full chunk, per byte of chunk (1 / channels: a chunk carries
    /// one piece per channel).
    pub piece_per_chunk_byte: f64,
}

/// The job as the model sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct JobShape {
    /// Its streams.
    pub streams: Vec<StreamShape>,
    /// Candidate chunk sizes, ascending.
    pub sizes: Vec<ChunkSize>,
    /// Output bytes in all.
    pub total: u64,
    /// The window is this many times Little's `W` (1 in the formulas; a policy may ask
    /// for more so that a latency above the prediction does not throttle the job).
    pub window_factor: f64,
    /// Chunks per second the control plane may hand out for the job (every chunk is a task:
    /// messages, a report): capacity at size `s` is at most this × `s` (∞ in the formulas).
    pub max_chunk_rate: f64,
    /// Seconds of reading added to the prefill so that control-plane jitter does not starve
    /// a constant-rate reader (0 in the formulas).
    pub jitter: f64,
}

impl JobShape {
    /// Share `w_q` of the job's bytes per consumer.
    pub fn consumer_shares(&self) -> BTreeMap<NodeId, f64> {
        let mut m = BTreeMap::new();
        for s in &self.streams {
            *m.entry(s.consumer).or_insert(0.0) += s.share;
        }
        m
    }
}

/// What the job asks for.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Demand {
    /// `R`: job bytes per second (all streams), when a rate is asked.
    pub rate: Option<f64>,
    /// `h`: headroom asked above `R` (0.05 = 5 %).
    pub headroom: f64,
    /// `Lmax`: chunk latency bound in seconds.
    pub latency: Option<f64>,
}

/// Stage times of one producer in a set.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stage {
    /// The producer.
    pub id: NodeId,
    /// `t_cmp` (s).
    pub compute: f64,
    /// `t_exp` (s): the slowest piece.
    pub expel: f64,
    /// `τ_p` (s), with the producer's availability applied.
    pub period: f64,
    /// `τ_p` (s) of the producer alone (its busy time per chunk).
    pub busy: f64,
    /// `ρ_p = s / τ_p` (B/s).
    pub rate: f64,
    /// `l_p` (s): one chunk through the pipeline, delay and waits for other jobs included.
    pub latency: f64,
}

/// The model's prediction for one chunk size and producer set.
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    /// The chunk size.
    pub size: ChunkSize,
    /// The producers with their stage times, in the order chosen.
    pub stages: Vec<Stage>,
    /// `T_pred` (B/s): what the set can deliver (window-limited at the rate planned).
    pub throughput: f64,
    /// Capacity of the set, `min(Σρ, inflow)` (B/s), before the window.
    pub capacity: f64,
    /// `L_pred` (s).
    pub latency: f64,
    /// The smallest `l_p` of the set (s).
    pub min_latency: f64,
    /// `W`: chunks in flight.
    pub window: u64,
    /// Ring bytes per stream (prefill plus the reorder window).
    pub rings: Vec<u64>,
    /// Prefill per stream (bytes a constant-rate reader waits for before it starts).
    pub prefill: Vec<u64>,
    /// The job rate the window and prefill were sized for (B/s).
    pub planned_rate: f64,
}

/// Why a placement is impossible at some chunk size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reason {
    /// Producers cannot compute fast enough.
    Compute,
    /// Links, NICs or ports cannot carry it.
    Links,
    /// The consumers' ring memory cannot hold the window.
    Memory,
    /// The chunk latency would exceed the bound.
    Latency,
}

impl Reason {
    /// The word used in refusals and JSON.
    pub fn name(self) -> &'static str {
        match self {
            Reason::Compute => "compute",
            Reason::Links => "links",
            Reason::Memory => "memory",
            Reason::Latency => "latency",
        }
    }
}

/// A refused placement: why, and the highest job rate the cluster could give now.
#[derive(Debug, Clone, PartialEq)]
pub struct Infeasible {
    /// The reason at the chunk size that came closest.
    pub reason: Reason,
    /// Every reason seen, at some chunk size.
    pub reasons: Vec<Reason>,
    /// The highest job rate (B/s) that would be admitted now, headroom included.
    pub max_feasible: f64,
}

fn link_of(c: &Cluster, p: &ProducerCap, q: &ConsumerCap) -> (LinkCap, bool) {
    let local = p.host == q.host;
    if let Some(l) = c.links.get(&(p.id, q.id)) {
        return (*l, local);
    }
    if local {
        (c.local, true)
    } else {
        let mut l = c.remote;
        l.rate = f64::INFINITY;
        (l, false)
    }
}

/// The job's consumer shares and every producer's fan-out, computed once per placement.
struct Ctx<'a> {
    c: &'a Cluster,
    shares: BTreeMap<NodeId, f64>,
    /// Remote consumers of the job, per producer (at least 1).
    fan_out: Vec<f64>,
    /// The link of every (producer, consumer) pair by index, and whether it is local: looked
    /// up once per placement (each placement evaluates every pair many times).
    links: Vec<(LinkCap, bool)>,
    /// Each consumer's share, by index.
    share_at: Vec<f64>,
}

impl<'a> Ctx<'a> {
    fn new(c: &'a Cluster, shape: &JobShape) -> Ctx<'a> {
        let shares = shape.consumer_shares();
        let fan_out = c
            .producers
            .iter()
            .map(|p| {
                c.consumers
                    .iter()
                    .filter(|q| shares.get(&q.id).is_some_and(|w| *w > 0.0) && q.host != p.host)
                    .count()
                    .max(1) as f64
            })
            .collect();
        let links = c
            .producers
            .iter()
            .flat_map(|p| c.consumers.iter().map(move |q| link_of(c, p, q)))
            .collect();
        let share_at = c
            .consumers
            .iter()
            .map(|q| shares.get(&q.id).copied().unwrap_or(0.0))
            .collect();
        Ctx {
            c,
            shares,
            fan_out,
            links,
            share_at,
        }
    }

    fn share(&self, q: &ConsumerCap) -> f64 {
        self.shares.get(&q.id).copied().unwrap_or(0.0)
    }

    /// Remote producers of `set` at consumer `q`.
    fn fan_in(&self, q: &ConsumerCap, set: &[usize]) -> u32 {
        set.iter()
            .filter(|&&i| self.c.producers[i].host != q.host)
            .count() as u32
    }

    /// `b_pq` with fan-in `g` at `q = c.consumers[k]`, and whether the pair is local.
    fn flow(&self, i: usize, k: usize, g: u32) -> (f64, LinkCap, bool) {
        let p = &self.c.producers[i];
        let q = &self.c.consumers[k];
        let (l, local) = self.links[i * self.c.consumers.len() + k];
        if local {
            return (l.rate, l, true);
        }
        let g = f64::from(g.max(1));
        (
            l.rate.min(p.egress / self.fan_out[i]).min(q.ingress / g),
            l,
            false,
        )
    }

    /// Stage times of producer `i` at size `s` when consumer `c.consumers[k]` has fan-in
    /// `g(k)`.
    fn stage(&self, i: usize, s: ChunkSize, g: &dyn Fn(usize) -> u32) -> Stage {
        let p = &self.c.producers[i];
        let sb = s.bytes as f64;
        let t_cmp = p.overhead + sb / p.compute;
        let mut t_exp: f64 = 0.0;
        let mut t_exp_delay: f64 = 0.0;
        for k in 0..self.c.consumers.len() {
            let w = self.share_at[k];
            if w <= 0.0 {
                continue;
            }
            let (b, l, _) = self.flow(i, k, g(k));
            let t = l.overhead + sb * w / b.max(1.0);
            t_exp = t_exp.max(t);
            t_exp_delay = t_exp_delay.max(t + l.delay);
        }
        let tau = p.preload.max(t_cmp).max(t_exp);
        let period = tau / p.avail.clamp(1e-9, 1.0);
        Stage {
            id: p.id,
            compute: t_cmp,
            expel: t_exp,
            period,
            busy: tau,
            rate: sb / period,
            latency: p.preload + t_cmp + t_exp_delay + (period - tau),
        }
    }

    /// Whether producer `i` can serve the job at all (its fan-out fits its ports).
    fn usable(&self, i: usize) -> bool {
        let p = &self.c.producers[i];
        let remote = self
            .c
            .consumers
            .iter()
            .filter(|q| self.share(q) > 0.0 && q.host != p.host)
            .count() as u32;
        p.avail > 0.0 && p.compute > 0.0 && (remote == 0 || remote <= p.ports.max(1))
    }

    fn usable_producers(&self) -> Vec<usize> {
        (0..self.c.producers.len())
            .filter(|&i| self.usable(i))
            .collect()
    }

    /// Stages of `set`, or None when a consumer's fan-in exceeds its ports.
    fn stages(&self, s: ChunkSize, set: &[usize]) -> Option<Vec<Stage>> {
        // Each consumer's fan-in once (not once per producer of the set: that made a
        // placement cost producers² × consumers host comparisons).
        let fan: Vec<u32> = self
            .c
            .consumers
            .iter()
            .map(|q| self.fan_in(q, set))
            .collect();
        for (q, &f) in self.c.consumers.iter().zip(&fan) {
            if self.share(q) > 0.0 && f > q.ports.max(1) {
                return None;
            }
        }
        let g = |k: usize| fan[k];
        Some(set.iter().map(|&i| self.stage(i, s, &g)).collect())
    }

    /// Capacity `min(Σρ, min_q inflow_q / w_q)` of a set with these stages (B/s).
    fn capacity(&self, set: &[usize], st: &[Stage]) -> f64 {
        let mut cap: f64 = st.iter().map(|x| x.rate).sum();
        for (k, q) in self.c.consumers.iter().enumerate() {
            let w = self.share_at[k];
            if w <= 0.0 {
                continue;
            }
            // Remote flows share the consumer's ingress, each at most at its own b_pq;
            // local flows come through memory.
            let g = self.fan_in(q, set);
            let (mut remote, mut local) = (0.0, 0.0);
            for &i in set {
                match self.flow(i, k, g) {
                    (b, _, true) => local += b,
                    (b, _, false) => remote += b,
                }
            }
            cap = cap.min((remote.min(q.ingress) + local) / w);
        }
        cap
    }

    fn predict(
        &self,
        shape: &JobShape,
        s: ChunkSize,
        set: &[usize],
        rate: Option<f64>,
    ) -> Option<Prediction> {
        if set.is_empty() {
            return None;
        }
        let st = self.stages(s, set)?;
        let cap = self
            .capacity(set, &st)
            .min(shape.max_chunk_rate * s.bytes as f64);
        let latency = st.iter().map(|x| x.latency + x.period).fold(0.0, f64::max);
        let min_latency = st.iter().map(|x| x.latency).fold(f64::INFINITY, f64::min);
        let planned = rate.unwrap_or(cap);
        let sb = s.bytes as f64;
        let little = ((planned / sb) * latency).ceil() as u64 + set.len() as u64;
        let window = ((little as f64) * shape.window_factor.max(1.0)).ceil() as u64;
        let throughput = cap.min(window as f64 * sb / latency.max(1e-12));
        let prefill_job = planned * ((latency - min_latency).max(0.0) + shape.jitter) + sb;
        let mut rings = Vec::with_capacity(shape.streams.len());
        let mut prefill = Vec::with_capacity(shape.streams.len());
        for st in &shape.streams {
            let piece = (sb * st.piece_per_chunk_byte).ceil() as u64;
            let b0 = ((prefill_job * st.share).ceil() as u64).min(st.len);
            // Only a paced reader waits for a prefill; an unpaced one reads what lands, so its
            // ring holds the window alone (a ring of the whole job would let the producers
            // finish long before the reader and hide a slow reader from the plan).
            let held = if rate.is_some() { b0 } else { 0 };
            let ring = held
                .saturating_add(piece.saturating_mul(window + 1))
                .min(st.len)
                .max(piece.min(st.len));
            rings.push(ring);
            prefill.push(b0);
        }
        Some(Prediction {
            size: s,
            stages: st,
            throughput,
            capacity: cap,
            latency,
            min_latency,
            window,
            rings,
            prefill,
            planned_rate: planned,
        })
    }

    /// Usable producers ordered by `l_p + τ_p` when every consumer has fan-in `k` (ties:
    /// higher `ρ_p` first, then index).
    fn order(&self, s: ChunkSize, usable: &[usize], k: usize) -> Vec<usize> {
        let k = k as u32;
        let g = |_: usize| k;
        let mut keyed: Vec<(f64, f64, usize)> = usable
            .iter()
            .map(|&i| {
                let x = self.stage(i, s, &g);
                (x.latency + x.period, x.rate, i)
            })
            .collect();
        keyed.sort_by(|a, b| {
            a.0.total_cmp(&b.0)
                .then(b.1.total_cmp(&a.1))
                .then(a.2.cmp(&b.2))
        });
        keyed.into_iter().map(|(_, _, i)| i).collect()
    }
}

/// Stage times of every producer of `set` (indices into `c.producers`) at chunk size `s`,
/// with the fan-in the set makes; None when a consumer's fan-in exceeds its ports.
pub fn stages(c: &Cluster, shape: &JobShape, s: ChunkSize, set: &[usize]) -> Option<Vec<Stage>> {
    Ctx::new(c, shape).stages(s, set)
}

/// The full prediction for a set at size `s`, sized for the job rate `rate` (B/s; the set's
/// capacity when None).
pub fn predict(
    c: &Cluster,
    shape: &JobShape,
    s: ChunkSize,
    set: &[usize],
    rate: Option<f64>,
) -> Option<Prediction> {
    Ctx::new(c, shape).predict(shape, s, set, rate)
}

/// Whether the consumers' free memory holds the predicted rings.
fn fits_memory(c: &Cluster, shape: &JobShape, p: &Prediction) -> bool {
    c.consumers.iter().all(|q| {
        let need: u64 = shape
            .streams
            .iter()
            .zip(&p.rings)
            .filter(|(s, _)| s.consumer == q.id)
            .map(|(_, r)| *r)
            .sum();
        q.memory.is_none_or(|m| need <= m)
    })
}

/// The best prefix for one chunk size: the shortest prefix, in the order of `l + τ` at its
/// own fan-in, whose capacity reaches `need`; with its prediction sized for `rate`.
fn prefix_for(
    x: &Ctx<'_>,
    shape: &JobShape,
    s: ChunkSize,
    need: f64,
    rate: f64,
) -> Result<Prediction, Reason> {
    let usable = x.usable_producers();
    if usable.is_empty() {
        return Err(Reason::Compute);
    }
    for k in 1..=usable.len() {
        let ord = x.order(s, &usable, k);
        let Some(pred) = x.predict(shape, s, &ord[..k], Some(rate)) else {
            continue;
        };
        if pred.capacity >= need {
            return Ok(pred);
        }
    }
    // Compute alone (no links) tells which side binds.
    let sb = s.bytes as f64;
    let compute_only: f64 = usable
        .iter()
        .map(|&i| {
            let p = &x.c.producers[i];
            sb / p.preload.max(p.overhead + sb / p.compute) * p.avail
        })
        .sum();
    Err(if compute_only < need {
        Reason::Compute
    } else {
        Reason::Links
    })
}

/// The highest capacity any prefix reaches at size `s` (with its prediction), within the
/// latency bound when one is given.
fn best_capacity(
    x: &Ctx<'_>,
    shape: &JobShape,
    s: ChunkSize,
    lmax: Option<f64>,
) -> Option<Prediction> {
    let usable = x.usable_producers();
    let mut best: Option<Prediction> = None;
    for k in 1..=usable.len() {
        let ord = x.order(s, &usable, k);
        let Some(p) = x.predict(shape, s, &ord[..k], None) else {
            continue;
        };
        if lmax.is_some_and(|l| p.latency > l) || !fits_memory(x.c, shape, &p) {
            continue;
        }
        if best.as_ref().is_none_or(|b| p.capacity > b.capacity) {
            best = Some(p);
        }
    }
    best
}

/// The highest job rate the cluster admits now (capacity over `1 + h`), within the latency
/// bound when one is given; 0 when nothing fits.
pub fn max_feasible(c: &Cluster, shape: &JobShape, headroom: f64, lmax: Option<f64>) -> f64 {
    let x = Ctx::new(c, shape);
    shape
        .sizes
        .iter()
        .filter_map(|&s| best_capacity(&x, shape, s, lmax))
        .map(|p| p.capacity / (1.0 + headroom))
        .fold(0.0, f64::max)
}

/// Policy (a), TCLO: the plan with the least latency that feeds `demand.rate` with its
/// headroom (also within `demand.latency` when given), or why none does.
pub fn place_rate(
    c: &Cluster,
    shape: &JobShape,
    demand: &Demand,
) -> Result<Prediction, Infeasible> {
    let x = Ctx::new(c, shape);
    let rate = demand.rate.unwrap_or(0.0);
    let need = rate * (1.0 + demand.headroom);
    let mut best: Option<Prediction> = None;
    let mut reasons: Vec<(Reason, f64)> = Vec::new();
    for &s in &shape.sizes {
        let pred = match prefix_for(&x, shape, s, need, rate) {
            Ok(p) => p,
            Err(r) => {
                let got = best_capacity(&x, shape, s, None).map_or(0.0, |p| p.capacity);
                reasons.push((r, got));
                continue;
            }
        };
        if !fits_memory(c, shape, &pred) {
            reasons.push((Reason::Memory, pred.capacity));
            continue;
        }
        if demand.latency.is_some_and(|l| pred.latency > l) {
            reasons.push((Reason::Latency, pred.capacity));
            continue;
        }
        let better = best.as_ref().is_none_or(|b| {
            pred.latency < b.latency
                || (pred.latency == b.latency && pred.stages.len() < b.stages.len())
        });
        if better {
            best = Some(pred);
        }
    }
    best.ok_or_else(|| {
        let reason = reasons
            .iter()
            .max_by(|a, b| a.1.total_cmp(&b.1).then(b.0.cmp(&a.0)))
            .map_or(Reason::Compute, |r| r.0);
        let mut all: Vec<Reason> = reasons.iter().map(|r| r.0).collect();
        all.sort();
        all.dedup();
        Infeasible {
            reason,
            reasons: all,
            max_feasible: max_feasible(c, shape, demand.headroom, demand.latency),
        }
    })
}

/// Policy (b), exact in the model: the most capacity any chunk size and prefix reaches with
/// `L_pred ≤ lmax` (and rings that fit), with its prediction.
pub fn max_under_latency(c: &Cluster, shape: &JobShape, lmax: f64) -> Option<Prediction> {
    let x = Ctx::new(c, shape);
    shape
        .sizes
        .iter()
        .filter_map(|&s| best_capacity(&x, shape, s, Some(lmax)))
        .max_by(|a, b| {
            a.capacity
                .total_cmp(&b.capacity)
                .then(b.latency.total_cmp(&a.latency))
        })
}

/// Policy (b), the paper's way: binary search on the rate over policy (a) (`ok(r)`: admitted
/// within `lmax`), with `lookahead` probes above a failing midpoint before the interval
/// shrinks; returns the highest job rate found admissible (B/s), 0 when none is.
pub fn bsearch_under_latency(
    c: &Cluster,
    shape: &JobShape,
    lmax: f64,
    headroom: f64,
    rel_eps: f64,
    lookahead: u32,
) -> f64 {
    let ok = |r: f64| {
        place_rate(
            c,
            shape,
            &Demand {
                rate: Some(r),
                headroom,
                latency: Some(lmax),
            },
        )
        .is_ok()
    };
    // An upper bound: every producer's compute alone, at its best size.
    let hi: f64 = c
        .producers
        .iter()
        .map(|p| {
            shape
                .sizes
                .iter()
                .map(|s| {
                    let sb = s.bytes as f64;
                    sb / p.preload.max(p.overhead + sb / p.compute).max(1e-12) * p.avail
                })
                .fold(0.0, f64::max)
        })
        .sum::<f64>()
        / (1.0 + headroom);
    let mut hi = hi.max(1.0);
    let mut lo = hi * 1e-9;
    if !ok(lo) {
        return 0.0;
    }
    while hi - lo > rel_eps * lo {
        let mid = 0.5 * (lo + hi);
        if ok(mid) {
            lo = mid;
            continue;
        }
        // Bounded look-ahead: a policy that is not monotone in R may admit a higher rate.
        let step = (hi - mid) / f64::from(lookahead + 1);
        let found = (1..=lookahead)
            .map(|k| mid + step * f64::from(k))
            .filter(|&r| ok(r))
            .fold(None, |_, r| Some(r));
        match found {
            Some(r) => lo = r,
            None => hi = mid,
        }
    }
    lo
}

/// No constraint: every usable producer, and the chunk size with the least latency among
/// those whose capacity is within `slack` (e.g. 0.03) of the best, so that links stay full
/// and latency low.
pub fn place_unconstrained(c: &Cluster, shape: &JobShape, slack: f64) -> Option<Prediction> {
    let x = Ctx::new(c, shape);
    let usable = x.usable_producers();
    let preds: Vec<Prediction> = shape
        .sizes
        .iter()
        .filter_map(|&s| x.predict(shape, s, &usable, None))
        .filter(|p| fits_memory(c, shape, p))
        .collect();
    let top = preds.iter().map(|p| p.capacity).fold(0.0, f64::max);
    preds
        .iter()
        .filter(|p| p.capacity >= top * (1.0 - slack))
        .min_by(|a, b| a.latency.total_cmp(&b.latency))
        .cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB: f64 = 1e6;

    /// SCHEDULING.md's worked example: 4 identical producers (c = 400 MB/s, o = 0.2 ms,
    /// t_pre = 1 ms, E = 25 Gbit/s, k = 4), one consumer (I = 40 Gbit/s, k = 8, d = 50 µs).
    fn example() -> (Cluster, JobShape) {
        let producers = (0..4)
            .map(|i| ProducerCap {
                id: NodeId(i),
                host: format!("h{i}"),
                compute: 400e6,
                overhead: 0.2e-3,
                preload: 1e-3,
                egress: 25e9 / 8.0,
                ports: 4,
                avail: 1.0,
            })
            .collect();
        let consumers = vec![ConsumerCap {
            id: NodeId(9),
            host: "hc".into(),
            ingress: 40e9 / 8.0,
            ports: 8,
            memory: None,
        }];
        let cluster = Cluster {
            producers,
            consumers,
            links: BTreeMap::new(),
            local: LinkCap {
                rate: 10e9,
                overhead: 0.0,
                delay: 0.0,
            },
            remote: LinkCap {
                rate: f64::INFINITY,
                overhead: 0.0,
                delay: 50e-6,
            },
        };
        let sizes = [256u64, 512, 1024, 4096]
            .iter()
            .map(|k| ChunkSize {
                lines: *k,
                bytes: k * 1024,
            })
            .collect();
        let shape = JobShape {
            streams: vec![StreamShape {
                consumer: NodeId(9),
                len: 1 << 40,
                share: 1.0,
                piece_per_chunk_byte: 1.0,
            }],
            sizes,
            total: 1 << 40,
            window_factor: 1.0,
            max_chunk_rate: f64::INFINITY,
            jitter: 0.0,
        };
        (cluster, shape)
    }

    fn size(c: &JobShape, kib: u64) -> ChunkSize {
        *c.sizes.iter().find(|s| s.bytes == kib * 1024).unwrap()
    }

    fn close(a: f64, b: f64, rel: f64) -> bool {
        (a - b).abs() <= rel * b.abs()
    }

    #[test]
    fn worked_example_stage_times_by_hand() {
        let (c, shape) = example();
        // s = 512 KiB with all 4 producers: b = min(inf, E/1, I/4) = 1.25e9 B/s.
        let s = size(&shape, 512);
        let st = stages(&c, &shape, s, &[0, 1, 2, 3]).unwrap();
        let t_cmp = 0.2e-3 + 524_288.0 / 400e6; // 1.51072 ms
        let t_exp = 524_288.0 / 1.25e9; // 0.419430 ms
        assert!(close(st[0].compute, t_cmp, 1e-12));
        assert!(close(st[0].expel, t_exp, 1e-12));
        assert!(close(st[0].period, t_cmp, 1e-12)); // max(1 ms, t_cmp, t_exp)
        assert!(close(st[0].rate, 524_288.0 / t_cmp, 1e-12)); // 347.05 MB/s
        assert!(close(st[0].rate / MB, 347.05, 1e-4));
        let l = 1e-3 + t_cmp + t_exp + 50e-6; // 2.980 ms
        assert!(close(st[0].latency, l, 1e-12));
        let p = predict(&c, &shape, s, &[0, 1, 2, 3], Some(1.25e9)).unwrap();
        assert!(close(p.latency, l + t_cmp, 1e-12)); // 4.49 ms
        // W = ceil(1.25e9 / 524288 * 4.491 ms) + 4 = ceil(10.71) + 4 = 15 chunks = 7.5 MiB.
        assert_eq!(p.window, 15);
        assert!(close(p.capacity, 4.0 * 524_288.0 / t_cmp, 1e-12)); // 1.388 GB/s
        assert!(close(p.throughput / 1e9, 1.388, 1e-3));
        // B0 = R (L - min l) + s = 1.25e9 * t_cmp + s.
        let b0 = 1.25e9 * t_cmp + 524_288.0;
        assert_eq!(p.prefill[0], b0.ceil() as u64);
    }

    #[test]
    fn worked_example_table_rows() {
        let (c, shape) = example();
        // 256 KiB: t_pre (1 ms) is the period: rho = 262.1 MB/s; 6 producers would be
        // needed (> 4): infeasible. With 6 hypothetical producers l = 2.22 ms, L = 3.22 ms.
        let s = size(&shape, 256);
        let st = stages(&c, &shape, s, &[0]).unwrap();
        assert!(close(st[0].rate / MB, 262.144, 1e-9));
        let need = 1.25e9 * 1.1;
        assert_eq!((need / st[0].rate).ceil(), 6.0);
        let mut six = c.clone();
        for i in 4..6 {
            let mut p = six.producers[0].clone();
            p.id = NodeId(i);
            p.host = format!("h{i}");
            six.producers.push(p);
        }
        six.consumers[0].ports = 8;
        let p6 = predict(&six, &shape, s, &[0, 1, 2, 3, 4, 5], Some(1.25e9)).unwrap();
        let l6 = 1e-3 + (0.2e-3 + 262_144.0 / 400e6) + 262_144.0 / (5e9 / 6.0) + 50e-6;
        assert!(close(p6.stages[0].latency, l6, 1e-12));
        assert!(close(p6.stages[0].latency * 1e3, 2.22, 1e-2));
        assert!(close(p6.latency * 1e3, 3.22, 1e-2));
        assert_eq!(p6.window, 22);
        assert!(close(p6.capacity / 1e9, 1.573, 1e-3));
        // 1 MiB and 4 MiB rows.
        for (kib, rho, l, lp, w, t) in [
            (1024u64, 371.6, 4.71, 7.53, 13u64, 1.487),
            (4096, 392.5, 15.09, 25.78, 12, 1.570),
        ] {
            let s = size(&shape, kib);
            let p = predict(&c, &shape, s, &[0, 1, 2, 3], Some(1.25e9)).unwrap();
            assert!(
                close(p.stages[0].rate / MB, rho, 2e-3),
                "{kib}: {:?}",
                p.stages[0]
            );
            assert!(close(p.stages[0].latency * 1e3, l, 2e-3), "{kib}");
            assert!(close(p.latency * 1e3, lp, 2e-3), "{kib}");
            assert_eq!(p.window, w, "{kib}");
            assert!(close(p.capacity / 1e9, t, 2e-3), "{kib}");
        }
    }

    #[test]
    fn worked_example_policy_a_picks_512k_with_four() {
        let (c, shape) = example();
        let d = Demand {
            rate: Some(1.25e9),
            headroom: 0.10,
            latency: None,
        };
        let p = place_rate(&c, &shape, &d).unwrap();
        assert_eq!(p.size.bytes, 512 * 1024);
        assert_eq!(p.stages.len(), 4);
        assert_eq!(p.window, 15);
    }

    #[test]
    fn worked_example_inverse_under_4ms() {
        let (c, shape) = example();
        // Only 256 KiB qualifies (L = 3.12 ms with 4 producers): T* = 4 x 262.1 MB/s.
        let p = max_under_latency(&c, &shape, 4e-3).unwrap();
        assert_eq!(p.size.bytes, 256 * 1024);
        assert_eq!(p.stages.len(), 4);
        assert!(close(p.latency * 1e3, 3.12, 2e-3), "{}", p.latency);
        assert!(close(p.capacity, 4.0 * 262_144.0 / 1e-3, 1e-9));
        assert!(close(p.capacity * 8.0 / 1e9, 8.39, 1e-3));
        // So the 10 Gbit/s printer job is refused under that bound, for latency.
        let d = Demand {
            rate: Some(1.25e9),
            headroom: 0.10,
            latency: Some(4e-3),
        };
        let r = place_rate(&c, &shape, &d).unwrap_err();
        assert_eq!(r.reason, Reason::Latency);
        assert!(close(r.max_feasible, p.capacity / 1.1, 1e-9));
    }
}
