//! Placement and admission policies (DESIGN.md §6).
//!
//! The [`Scheduler`](crate::core::Scheduler) asks its [`Policy`] every question that has more
//! than one sensible answer: whether to admit a job and with which chunk size and ring sizes,
//! which producers work on it, how many tasks each producer keeps queued, which job a free
//! producer serves next, and which interface a producer uses to reach a consumer. Policies are
//! pure functions of the views they are given.

use crate::core::{Interface, JobId, NodeId, NodeInfo, Refusal};
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// Lines per chunk.
    pub chunk_lines: u64,
    /// Ring capacity to ask of each stream's consumer, by stream index.
    pub rings: Vec<u64>,
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
    /// Admission: refuse (with a reason), or choose the chunk size and ring sizes.
    /// `producers` are the live producers; `consumers[i]` is the consumer of stream `i`.
    fn admit(
        &self,
        plan: &JobPlan,
        producers: &[NodeView<'_>],
        consumers: &[NodeView<'_>],
    ) -> Result<Placement, Refusal>;

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
    fn admit(
        &self,
        plan: &JobPlan,
        producers: &[NodeView<'_>],
        consumers: &[NodeView<'_>],
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
        Ok(Placement { chunk_lines, rings })
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
        if producer.info.host == consumer.info.host {
            return Route::Local;
        }
        let ifs = &consumer.info.interfaces;
        if ifs.is_empty() {
            return Route::Remote(None);
        }
        // Spread tasks over the consumer's interfaces, deterministically: a producer's
        // consecutive tasks take turns (so a one-to-one job uses every link, a node's two
        // NICs, and each producer loads every link of a consumer evenly), and producers start
        // at different interfaces.
        let i = (producer.id.0.wrapping_add(seq) % ifs.len() as u64) as usize;
        Route::Remote(Some(ifs[i].clone()))
    }

    fn alloc_timeout_ms(&self) -> u64 {
        self.config.alloc_timeout_ms
    }

    fn max_attempts(&self) -> u32 {
        self.config.max_attempts.max(1)
    }
}
