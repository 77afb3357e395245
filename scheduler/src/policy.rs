//! Placement and admission policies (DESIGN.md §6).
//!
//! The [`Scheduler`](crate::core::Scheduler) asks its [`Policy`] every question that has more
//! than one sensible answer: whether to admit a job and with which chunk size and ring sizes,
//! which producers work on it, how many tasks each producer keeps queued, which job a free
//! producer serves next, and which interface a producer uses to reach a consumer. Policies are
//! pure functions of the views they are given.
//!
//! Two policies:
//! - [`LoadBalance`], the baseline: every producer works on every job on demand, a fixed
//!   number of tasks queued per producer, chunk and ring sizes from DESIGN.md §8. It promises
//!   nothing.
//! - [`Tclo`] (SCHEDULING.md): from the capacities the scheduler measured, it picks the chunk
//!   size, the producers and their shares, the window of chunks in flight, ring sizes and the
//!   reader's prefill. A job with a `rate` gets the plan with the least latency that feeds it
//!   (policy a), dealt at that rate; a job with a `latency` bound gets the most throughput
//!   under it (policy b); a job with neither gets every producer and the chunk size with the
//!   least latency that keeps the links full. What it cannot feed it refuses, with the reason
//!   and the highest rate it could give.

use crate::core::{Interface, JobId, NodeId, NodeInfo, Refusal};
use crate::model::{self, ChunkSize, Cluster, Demand, JobShape, Prediction, StreamShape};
use crate::spec::{JobPlan, Layout};

/// What a policy sees of a node.
#[derive(Debug, Clone, Copy)]
pub struct NodeView<'a> {
    /// The node.
    pub id: NodeId,
    /// What it announced when it joined.
    pub info: &'a NodeInfo,
    /// Tasks currently assigned to it (producers).
    pub tasks: usize,
    /// Ring bytes allocated on it by live jobs (consumers).
    pub ring_bytes_used: u64,
}

impl NodeView<'_> {
    /// Free buffer capacity, or `None` when the node announced no limit (capacity 0).
    pub fn free_capacity(&self) -> Option<u64> {
        (self.info.capacity > 0).then(|| self.info.capacity.saturating_sub(self.ring_bytes_used))
    }
}

/// What a policy sees of a job.
#[derive(Debug, Clone)]
pub struct JobView<'a> {
    /// The job.
    pub id: JobId,
    /// Its plan.
    pub plan: &'a JobPlan,
    /// Its chunk layout.
    pub layout: &'a Layout,
    /// Hosts of its output consumers.
    pub consumer_hosts: Vec<&'a str>,
    /// Its tasks currently assigned.
    pub tasks_in_flight: usize,
}

/// The sizes a policy chose when admitting a job.
#[derive(Debug, Clone, PartialEq)]
pub struct Placement {
    /// Lines per chunk.
    pub chunk_lines: u64,
    /// Ring capacity to ask of each stream's consumer, by stream index.
    pub rings: Vec<u64>,
    /// How the chunks are handed out, and what the policy predicts.
    pub plan: Plan,
}

/// How a job's chunks are handed out, and what its policy predicted.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The policy's name.
    pub policy: &'static str,
    /// Who computes and how chunks are dealt.
    pub deal: Deal,
    /// The prediction (for `Accepted`, `spate plan`, status).
    pub summary: PlanSummary,
}

/// Who computes a job's chunks.
#[derive(Debug, Clone, PartialEq)]
pub enum Deal {
    /// Every producer the policy adopts, on demand, `tasks_in_flight` queued per producer.
    OnDemand,
    /// These producers, with these shares.
    Weighted(Weighted),
}

/// A dealt plan: chunks go to `shares` by smooth weighted round-robin (or plain round-robin),
/// at most `window` in flight, at most `credits` per producer, at `pace` when set.
#[derive(Debug, Clone, PartialEq)]
pub struct Weighted {
    /// The producers and their shares.
    pub shares: Vec<Share>,
    /// Chunks in flight at most (assigned, not yet done).
    pub window: u64,
    /// Chunk bytes dealt per second at most (the job's rate with its headroom), or unpaced.
    pub pace: Option<f64>,
    /// Equal turns instead of weights (the plain round-robin baseline).
    pub round_robin: bool,
    /// A task running past its expected time × (1 + slack) is duplicated elsewhere.
    pub straggler_slack: Option<f64>,
    /// Whether the producers' rate and links are reserved for the job.
    pub reserve: bool,
    /// Dispatch against the reader's position (rate jobs) rather than the landed prefix.
    pub follow_reader: bool,
}

/// One producer's share of a dealt plan.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Share {
    /// The producer.
    pub node: NodeId,
    /// `ρ_p`: its predicted rate for the job (B/s), the weight of its turns.
    pub weight: f64,
    /// Its compute rate at the job's chunk size (B/s), to see drift against.
    pub compute_rate: f64,
    /// Its rate when it works for this job alone (B/s): reservations are `rate / full_rate`
    /// of its time.
    pub full_rate: f64,
    /// Tasks of the job it may hold at once.
    pub credits: u32,
    /// `τ_p` (s).
    pub period: f64,
    /// `l_p` (s).
    pub latency: f64,
}

/// What a plan predicts; rates are job bytes per second (all streams).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PlanSummary {
    /// Bytes of one chunk (all channels).
    pub chunk_bytes: u64,
    /// Lines per chunk.
    pub chunk_lines: u64,
    /// The producers it uses (empty: every producer on demand).
    pub producers: Vec<NodeId>,
    /// Predicted throughput (B/s); 0 when the policy predicts nothing.
    pub predicted_rate: f64,
    /// Predicted chunk latency (s); 0 when the policy predicts nothing.
    pub predicted_latency: f64,
    /// Chunks in flight.
    pub window: u64,
    /// Ring bytes per stream.
    pub rings: Vec<u64>,
    /// Prefill bytes per stream (a constant-rate reader starts after this much).
    pub prefill: Vec<u64>,
    /// The highest job rate the cluster could give now (B/s).
    pub max_feasible: f64,
    /// The job rate asked for (B/s).
    pub requested_rate: Option<f64>,
    /// The latency bound asked for (s).
    pub latency_bound: Option<f64>,
}

/// How a producer reaches a consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// Same host: a local UNIX socket.
    Local,
    /// Another host: TCP to this consumer interface (`None`: the consumer announced none;
    /// use its host name).
    Remote(Option<Interface>),
}

/// The decisions a scheduler delegates.
pub trait Policy {
    /// The policy's name (`policy = "..."` in a job spec, `--policy` of the scheduler).
    fn name(&self) -> &'static str;

    /// Admission: refuse (with a reason), or choose the chunk size, ring sizes and plan.
    /// `producers` are the live producers; `consumers[i]` is the consumer of stream `i`;
    /// `cluster` is what the scheduler measured of them (capacities for the job's kernel,
    /// minus what other jobs reserved).
    fn admit(
        &self,
        plan: &JobPlan,
        producers: &[NodeView<'_>],
        consumers: &[NodeView<'_>],
        cluster: &Cluster,
    ) -> Result<Placement, Refusal>;

    /// A running dealt job's plan again, on today's estimates (`cluster` without the job's
    /// own reservation), keeping its chunk size: the new plan, and a warning when the job's
    /// rate or bound can no longer be met. None: keep the current plan.
    fn replan(
        &self,
        _plan: &JobPlan,
        _layout: &Layout,
        _current: &Plan,
        _consumers: &[NodeView<'_>],
        _cluster: &Cluster,
    ) -> Option<(Plan, Option<String>)> {
        None
    }

    /// The producers that start working on a job when it becomes ready.
    fn producers_for(&self, job: &JobView<'_>, producers: &[NodeView<'_>]) -> Vec<NodeId>;

    /// Whether a producer that joins later takes part in a running job.
    fn adopt(&self, job: &JobView<'_>, producer: &NodeView<'_>) -> bool;

    /// Compute tasks kept assigned to a producer (the scheduler never uses fewer than 2).
    fn tasks_in_flight(&self, producer: &NodeView<'_>) -> usize;

    /// Preference of a free producer for a job: lower is served first (ties: lower job id).
    fn job_rank(&self, producer: &NodeView<'_>, job: &JobView<'_>) -> u64;

    /// The interface a producer uses to reach a consumer for the pieces of its `seq`-th task
    /// (counted from 0 for each producer; a policy may spread a producer's tasks over the
    /// consumer's interfaces).
    fn route(&self, producer: &NodeView<'_>, consumer: &NodeView<'_>, seq: u64) -> Route;

    /// How long consumers may take to allocate a job's streams, in milliseconds.
    fn alloc_timeout_ms(&self) -> u64;

    /// How many times one chunk may fail before its job is aborted.
    fn max_attempts(&self) -> u32;

    /// A dealt job is re-planned when a producer's measured compute rate falls below
    /// (1 − this) of what its plan assumed (None: never).
    fn drift(&self) -> Option<f64> {
        None
    }
}

/// Same host: local; else the consumer's interfaces in turns. A producer's consecutive tasks
/// take turns (so a one-to-one job uses every link, a node's two NICs, and each producer loads
/// every link of a consumer evenly), and producers start at different interfaces.
pub fn spread_route(producer: &NodeView<'_>, consumer: &NodeView<'_>, seq: u64) -> Route {
    if producer.info.host == consumer.info.host {
        return Route::Local;
    }
    let ifs = &consumer.info.interfaces;
    if ifs.is_empty() {
        return Route::Remote(None);
    }
    let i = (producer.id.0.wrapping_add(seq) % ifs.len() as u64) as usize;
    Route::Remote(Some(ifs[i].clone()))
}

/// A per-stream rate in bits per second as the job's rate in bytes per second (every stream
/// is read at that rate at once).
pub fn job_rate(plan: &JobPlan, per_stream_bps: u64) -> f64 {
    per_stream_bps as f64 / 8.0 * plan.streams.len() as f64
}

/// Settings of [`LoadBalance`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadBalanceConfig {
    /// Largest piece (bytes of one channel per chunk) the policy picks: 200 Mbit (§8).
    pub max_chunk_bytes: u64,
    /// Largest ring asked of a consumer per stream: 1 GiB (§8).
    pub max_ring_bytes: u64,
    /// Ring = chunk x producers x this factor (4 in §8), capped at `max_ring_bytes`.
    pub ring_factor: u64,
    /// Tasks kept assigned per producer (at least 2).
    pub tasks_in_flight: usize,
    /// Allocation timeout in milliseconds.
    pub alloc_timeout_ms: u64,
    /// Attempts per chunk before the job is aborted.
    pub max_attempts: u32,
}

impl Default for LoadBalanceConfig {
    fn default() -> Self {
        LoadBalanceConfig {
            max_chunk_bytes: 25_000_000,
            max_ring_bytes: 1 << 30,
            ring_factor: 4,
            tasks_in_flight: 3,
            alloc_timeout_ms: 10_000,
            max_attempts: 3,
        }
    }
}

/// The default policy: every producer works on every job (on demand), local producers serve
/// the jobs whose consumers share their host first, then the job with the fewest tasks in
/// flight; chunk and ring sizes from §8 and the announced capacities.
#[derive(Debug, Clone, Default)]
pub struct LoadBalance {
    /// Settings.
    pub config: LoadBalanceConfig,
}

impl LoadBalance {
    /// A policy with these settings.
    pub fn new(config: LoadBalanceConfig) -> Self {
        LoadBalance { config }
    }

    fn depth(&self) -> u64 {
        self.config.tasks_in_flight.max(2) as u64
    }

    /// Whether a producer has the memory for `depth` chunks of this size.
    fn fits(&self, producer: &NodeView<'_>, chunk_bytes: u64) -> bool {
        producer.info.capacity == 0
            || producer.info.capacity >= chunk_bytes.saturating_mul(self.depth())
    }
}

impl Policy for LoadBalance {
    fn name(&self) -> &'static str {
        "load-balance"
    }

    fn admit(
        &self,
        plan: &JobPlan,
        producers: &[NodeView<'_>],
        consumers: &[NodeView<'_>],
        _cluster: &Cluster,
    ) -> Result<Placement, Refusal> {
        let c = &self.config;
        let g = &plan.geometry;
        if producers.is_empty() {
            return Err(Refusal::NoProducers);
        }
        let n = producers.len() as u64;
        let channels = u64::from(g.channels);
        let chunk_lines = match plan.chunk_lines {
            Some(l) => l,
            None => {
                // Piece: at most max_chunk, small enough that the ring holds factor chunks per
                // producer, and that the smallest announced producer memory holds `depth`
                // chunks of all channels.
                let mut piece = c
                    .max_chunk_bytes
                    .min(c.max_ring_bytes / (n * c.ring_factor.max(1)).max(1));
                if let Some(mem) = producers
                    .iter()
                    .filter(|p| p.info.capacity > 0)
                    .map(|p| p.info.capacity)
                    .min()
                {
                    piece = piece.min(mem / (channels * self.depth()));
                }
                (piece / g.line_bytes).max(1)
            }
        };
        let layout = plan.layout(chunk_lines);
        let piece = layout.max_piece_bytes();
        if !producers.iter().any(|p| self.fits(p, piece * channels)) {
            let p = &producers[0];
            return Err(Refusal::Capacity {
                node: p.info.name.clone(),
                need: (piece * channels).saturating_mul(self.depth()),
                free: p.info.capacity,
            });
        }
        // Rings.
        let mut rings: Vec<u64> = plan
            .streams
            .iter()
            .map(|s| {
                let want = piece
                    .saturating_mul(n)
                    .saturating_mul(c.ring_factor)
                    .min(c.max_ring_bytes);
                want.max(piece).min(s.len)
            })
            .collect();
        // Fit each consumer's streams into its free capacity, shrinking rings (not below one
        // piece) when needed.
        let mut nodes: Vec<NodeId> = consumers.iter().map(|v| v.id).collect();
        nodes.sort();
        nodes.dedup();
        for node in nodes {
            let idx: Vec<usize> = (0..rings.len())
                .filter(|&i| consumers[i].id == node)
                .collect();
            let view = &consumers[idx[0]];
            let Some(free) = view.free_capacity() else {
                continue;
            };
            let need: u64 = idx.iter().map(|&i| rings[i]).sum();
            if need <= free {
                continue;
            }
            let floor = |i: usize| piece.min(plan.streams[i].len);
            for &i in &idx {
                let scaled = (u128::from(rings[i]) * u128::from(free) / u128::from(need)) as u64;
                rings[i] = scaled.max(floor(i));
            }
            let need: u64 = idx.iter().map(|&i| rings[i]).sum();
            if need > free {
                return Err(Refusal::Capacity {
                    node: view.info.name.clone(),
                    need,
                    free,
                });
            }
        }
        let summary = PlanSummary {
            chunk_bytes: piece * channels,
            chunk_lines,
            rings: rings.clone(),
            prefill: vec![0; rings.len()],
            requested_rate: plan.rate_bps.map(|r| job_rate(plan, r)),
            latency_bound: plan.latency.map(|d| d.as_secs_f64()),
            ..PlanSummary::default()
        };
        Ok(Placement {
            chunk_lines,
            rings,
            plan: Plan {
                policy: self.name(),
                deal: Deal::OnDemand,
                summary,
            },
        })
    }

    fn producers_for(&self, job: &JobView<'_>, producers: &[NodeView<'_>]) -> Vec<NodeId> {
        let chunk = job.layout.max_piece_bytes() * u64::from(job.plan.geometry.channels);
        producers
            .iter()
            .filter(|p| self.fits(p, chunk))
            .map(|p| p.id)
            .collect()
    }

    fn adopt(&self, job: &JobView<'_>, producer: &NodeView<'_>) -> bool {
        let chunk = job.layout.max_piece_bytes() * u64::from(job.plan.geometry.channels);
        self.fits(producer, chunk)
    }

    fn tasks_in_flight(&self, _producer: &NodeView<'_>) -> usize {
        self.config.tasks_in_flight.max(2)
    }

    fn job_rank(&self, producer: &NodeView<'_>, job: &JobView<'_>) -> u64 {
        let local = job.consumer_hosts.contains(&producer.info.host.as_str());
        (u64::from(!local) << 40) | job.tasks_in_flight as u64
    }

    fn route(&self, producer: &NodeView<'_>, consumer: &NodeView<'_>, seq: u64) -> Route {
        spread_route(producer, consumer, seq)
    }

    fn alloc_timeout_ms(&self) -> u64 {
        self.config.alloc_timeout_ms
    }

    fn max_attempts(&self) -> u32 {
        self.config.max_attempts.max(1)
    }
}

/// Settings of [`Tclo`].
#[derive(Debug, Clone, PartialEq)]
pub struct TcloConfig {
    /// `h`: capacity asked above a job's rate (0.05 = 5 %); chunks are dealt at `R (1 + h)`.
    pub headroom: f64,
    /// Without constraints: the chunk size with the least latency among those within this
    /// share of the best capacity.
    pub size_slack: f64,
    /// A task running past its expected time × (1 + this) is duplicated on another producer.
    pub straggler_slack: f64,
    /// Chunks in flight: this many times Little's window (a latency above the prediction
    /// must not throttle the job).
    pub window_factor: f64,
    /// Smallest candidate piece (one channel of a chunk), bytes.
    pub min_piece: u64,
    /// Largest candidate piece, bytes.
    pub max_piece: u64,
    /// Largest ring asked per stream, bytes.
    pub max_ring_bytes: u64,
    /// Fewest tasks a producer of the job may hold (2: one computing, one expelling).
    pub min_credits: u32,
    /// A producer whose compute rate falls below (1 − this) of its plan triggers a re-plan.
    pub drift: f64,
    /// Allocation timeout in milliseconds.
    pub alloc_timeout_ms: u64,
    /// Attempts per chunk before the job is aborted.
    pub max_attempts: u32,
    /// Deal in plain strict turns instead of by weight (the baseline that shows what the
    /// weights are worth).
    pub round_robin: bool,
    /// Chunks per second one job may cost the control plane (each chunk is a task with its
    /// messages and report): a job's chunks are at least its rate over this.
    pub max_chunk_rate: f64,
    /// Seconds of reading a constant-rate reader's prefill holds beyond the model's
    /// `R (L − min l)`, for control-plane and scheduling jitter.
    pub jitter: f64,
}

impl Default for TcloConfig {
    fn default() -> Self {
        TcloConfig {
            headroom: 0.05,
            size_slack: 0.03,
            straggler_slack: 1.0,
            window_factor: 1.5,
            min_piece: 64 << 10,
            max_piece: 64 << 20,
            max_ring_bytes: 1 << 30,
            min_credits: 2,
            drift: 0.2,
            alloc_timeout_ms: 10_000,
            max_attempts: 3,
            round_robin: false,
            max_chunk_rate: 500.0,
            jitter: 0.05,
        }
    }
}

/// The constrained policy of SCHEDULING.md (see the module docs).
#[derive(Debug, Clone, Default)]
pub struct Tclo {
    /// Settings.
    pub config: TcloConfig,
}

impl Tclo {
    /// A policy with these settings.
    pub fn new(config: TcloConfig) -> Self {
        Tclo { config }
    }

    /// Candidate chunk sizes for a job: pieces of 2^k bytes from `min_piece` to `max_piece`
    /// (whole lines, at least one, at most a part), or the spec's chunk alone.
    pub fn sizes(&self, plan: &JobPlan) -> Vec<ChunkSize> {
        let g = &plan.geometry;
        let max_lines = (0..plan.parts)
            .map(|p| {
                let r = plan.part_lines(p);
                r.end - r.start
            })
            .max()
            .unwrap_or(1)
            .max(1);
        let bytes = |lines: u64| lines * g.line_bytes * u64::from(g.channels);
        if let Some(l) = plan.chunk_lines {
            let l = l.clamp(1, max_lines);
            return vec![ChunkSize {
                lines: l,
                bytes: bytes(l),
            }];
        }
        let mut lines: Vec<u64> = Vec::new();
        let mut piece = self.config.min_piece.max(1);
        while piece <= self.config.max_piece.max(1) {
            lines.push((piece / g.line_bytes).clamp(1, max_lines));
            piece = piece.saturating_mul(2);
        }
        lines.sort_unstable();
        lines.dedup();
        lines
            .into_iter()
            .map(|l| ChunkSize {
                lines: l,
                bytes: bytes(l),
            })
            .collect()
    }

    /// The model's view of a job on these consumers (`consumers[i]` holds stream `i`).
    pub fn shape(
        &self,
        plan: &JobPlan,
        consumers: &[NodeView<'_>],
        sizes: Vec<ChunkSize>,
    ) -> JobShape {
        let total = plan.total_bytes().max(1);
        let per = 1.0 / f64::from(plan.geometry.channels.max(1));
        JobShape {
            streams: plan
                .streams
                .iter()
                .zip(consumers)
                .map(|(s, c)| StreamShape {
                    consumer: c.id,
                    len: s.len,
                    share: s.len as f64 / total as f64,
                    piece_per_chunk_byte: per,
                })
                .collect(),
            sizes,
            total,
            window_factor: self.config.window_factor,
            // A chunk size the spec fixed is the user's choice; the budget only steers ours.
            max_chunk_rate: if plan.chunk_lines.is_some() {
                f64::INFINITY
            } else {
                self.config.max_chunk_rate
            },
            jitter: self.config.jitter,
        }
    }

    fn demand(&self, plan: &JobPlan) -> Demand {
        Demand {
            rate: plan.rate_bps.map(|r| job_rate(plan, r)),
            headroom: self.config.headroom,
            latency: plan.latency.map(|d| d.as_secs_f64()),
        }
    }

    /// The cluster with each consumer's memory capped at `max_ring_bytes` per stream it holds.
    fn capped(&self, cluster: &Cluster, shape: &JobShape) -> Cluster {
        let mut c = cluster.clone();
        for q in &mut c.consumers {
            let n = shape.streams.iter().filter(|s| s.consumer == q.id).count() as u64;
            let cap = self.config.max_ring_bytes.saturating_mul(n.max(1));
            q.memory = Some(q.memory.map_or(cap, |m| m.min(cap)));
        }
        c
    }

    fn plan_of(&self, pred: &Prediction, demand: &Demand, max_feasible: f64) -> Plan {
        let sb = pred.size.bytes as f64;
        let total_weight: f64 = pred.stages.iter().map(|s| s.rate).sum();
        let shares = pred
            .stages
            .iter()
            .map(|st| Share {
                node: st.id,
                weight: st.rate,
                compute_rate: sb / st.compute.max(1e-12),
                full_rate: sb / st.busy.max(1e-12),
                credits: ((pred.window as f64 * st.rate / total_weight.max(1e-12)).ceil() as u32)
                    .max(self.config.min_credits),
                period: st.period,
                latency: st.latency,
            })
            .collect();
        let constrained = demand.rate.is_some() || demand.latency.is_some();
        Plan {
            policy: self.name(),
            deal: Deal::Weighted(Weighted {
                shares,
                window: pred.window,
                pace: demand.rate.map(|r| r * (1.0 + demand.headroom)),
                round_robin: self.config.round_robin,
                straggler_slack: Some(self.config.straggler_slack),
                reserve: constrained,
                follow_reader: demand.rate.is_some(),
            }),
            summary: PlanSummary {
                chunk_bytes: pred.size.bytes,
                chunk_lines: pred.size.lines,
                producers: pred.stages.iter().map(|s| s.id).collect(),
                predicted_rate: demand.rate.unwrap_or(pred.throughput).min(pred.throughput),
                predicted_latency: pred.latency,
                window: pred.window,
                rings: pred.rings.clone(),
                prefill: if demand.rate.is_some() {
                    pred.prefill.clone()
                } else {
                    vec![0; pred.prefill.len()]
                },
                max_feasible,
                requested_rate: demand.rate,
                latency_bound: demand.latency,
            },
        }
    }

    /// The plan for `plan` on `cluster` at these sizes, or the refusal.
    fn place(
        &self,
        plan: &JobPlan,
        shape: &JobShape,
        cluster: &Cluster,
    ) -> Result<(Prediction, Plan), Refusal> {
        let demand = self.demand(plan);
        let h = demand.headroom;
        let max_feasible = model::max_feasible(cluster, shape, h, demand.latency);
        let refused = |inf: model::Infeasible| Refusal::Infeasible {
            policy: self.name().into(),
            reason: inf.reason,
            reasons: inf.reasons,
            requested: demand.rate,
            latency_bound: demand.latency,
            headroom: h,
            max_feasible: inf.max_feasible,
            streams: plan.streams.len() as u32,
        };
        let pred = match (demand.rate, demand.latency) {
            (Some(_), _) => model::place_rate(cluster, shape, &demand).map_err(refused)?,
            (None, Some(l)) => model::max_under_latency(cluster, shape, l).ok_or_else(|| {
                refused(model::Infeasible {
                    reason: model::Reason::Latency,
                    reasons: vec![model::Reason::Latency],
                    max_feasible: 0.0,
                })
            })?,
            (None, None) => model::place_unconstrained(cluster, shape, self.config.size_slack)
                .ok_or_else(|| {
                    refused(model::Infeasible {
                        reason: model::Reason::Memory,
                        reasons: vec![model::Reason::Memory],
                        max_feasible,
                    })
                })?,
        };
        let p = self.plan_of(&pred, &demand, max_feasible);
        Ok((pred, p))
    }
}

impl Policy for Tclo {
    fn name(&self) -> &'static str {
        "tclo"
    }

    fn admit(
        &self,
        plan: &JobPlan,
        producers: &[NodeView<'_>],
        consumers: &[NodeView<'_>],
        cluster: &Cluster,
    ) -> Result<Placement, Refusal> {
        if producers.is_empty() || cluster.producers.is_empty() {
            return Err(Refusal::NoProducers);
        }
        let shape = self.shape(plan, consumers, self.sizes(plan));
        let cluster = self.capped(cluster, &shape);
        let (pred, p) = self.place(plan, &shape, &cluster)?;
        Ok(Placement {
            chunk_lines: pred.size.lines,
            rings: pred.rings.clone(),
            plan: p,
        })
    }

    fn replan(
        &self,
        plan: &JobPlan,
        layout: &Layout,
        current: &Plan,
        consumers: &[NodeView<'_>],
        cluster: &Cluster,
    ) -> Option<(Plan, Option<String>)> {
        let Deal::Weighted(_) = current.deal else {
            return None;
        };
        if cluster.producers.is_empty() {
            return None;
        }
        let size = ChunkSize {
            lines: layout.chunk_lines(),
            bytes: current.summary.chunk_bytes,
        };
        let shape = self.shape(plan, consumers, vec![size]);
        // Rings are allocated: the plan must fit the rings the job has.
        let mut cluster = cluster.clone();
        for q in &mut cluster.consumers {
            q.memory = None;
        }
        match self.place(plan, &shape, &cluster) {
            Ok((_, mut p)) => {
                p.summary.rings = current.summary.rings.clone();
                Some((p, None))
            }
            Err(refusal) => {
                // Best effort: every usable producer, weighted by what it does now.
                let demand = self.demand(plan);
                let all: Vec<usize> = (0..cluster.producers.len()).collect();
                let pred = model::predict(&cluster, &shape, size, &all, demand.rate)?;
                let mut p = self.plan_of(&pred, &demand, pred.capacity / (1.0 + demand.headroom));
                p.summary.rings = current.summary.rings.clone();
                Some((p, Some(refusal.to_string())))
            }
        }
    }

    fn producers_for(&self, _job: &JobView<'_>, producers: &[NodeView<'_>]) -> Vec<NodeId> {
        producers.iter().map(|p| p.id).collect()
    }

    fn adopt(&self, _job: &JobView<'_>, _producer: &NodeView<'_>) -> bool {
        false
    }

    fn tasks_in_flight(&self, _producer: &NodeView<'_>) -> usize {
        self.config.min_credits.max(2) as usize
    }

    fn job_rank(&self, _producer: &NodeView<'_>, job: &JobView<'_>) -> u64 {
        job.tasks_in_flight as u64
    }

    fn route(&self, producer: &NodeView<'_>, consumer: &NodeView<'_>, seq: u64) -> Route {
        spread_route(producer, consumer, seq)
    }

    fn alloc_timeout_ms(&self) -> u64 {
        self.config.alloc_timeout_ms
    }

    fn max_attempts(&self) -> u32 {
        self.config.max_attempts.max(1)
    }

    fn drift(&self) -> Option<f64> {
        Some(self.config.drift)
    }
}
