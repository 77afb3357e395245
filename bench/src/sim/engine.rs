//! The discrete-event simulation of one job on a cluster, driving the real scheduler core.
//!
//! The scheduler is [`spate_scheduler::core::Scheduler`] with the server's two policies, fed
//! the same [`Event`]s the server's hub feeds it and answered by models of the daemons and the
//! user for each [`Command`] it gives: consumers allocate at once; producers preload (their
//! inputs over their NIC), compute one chunk at a time (per-chunk overhead plus bytes over
//! their compute rate; nothing with the null kernel), and expel every computed chunk's pieces
//! at once, each a flow sharing links max-min fairly ([`super::net`]); a piece lands one link
//! delay after its last byte, the consumer reports its in-order frontier, and the producer
//! reports the task done once every piece is acked (one more delay). Control messages take
//! `ctrl_delay` each way. Readers read at once (the rings never hold the job up) and the job
//! ends when the core ends it. Nothing here decides what the scheduler decides.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};
use std::time::Instant;

use hdrhistogram::Histogram;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use spate_scheduler::core::{
    ClientId, Command, Event, Interface, JobEnd, JobId, NodeId, NodeInfo, Reply, Roles, Submission,
    TaskId, TaskReport,
};

use super::net::{Flow, max_min};

/// One simulated cluster and job.
#[derive(Debug, Clone)]
pub struct Setup {
    /// Nodes (index = node number).
    pub nodes: usize,
    /// Which nodes run a producer.
    pub producers: Vec<usize>,
    /// Consumer node of each stream.
    pub streams: Vec<usize>,
    /// NIC payload capacity per node and direction, bytes/s.
    pub nic_bps: f64,
    /// Interfaces each node announces (the capacity is their sum).
    pub interfaces: usize,
    /// One-way delay of a link, seconds.
    pub delay_s: f64,
    /// Rate of a transfer inside one node (memory copy), bytes/s.
    pub local_bps: f64,
    /// Kernel (socket) cost per byte on each side, seconds/byte: caps what a node's NIC moves
    /// at 1 / cost.
    pub kernel_s_per_byte: f64,
    /// Compute rate per producer (output bytes/s); None = the null kernel (no compute).
    pub compute_bps: Option<f64>,
    /// Fixed time per chunk on the producer, seconds.
    pub chunk_overhead_s: f64,
    /// Control message one-way delay, seconds.
    pub ctrl_delay_s: f64,
    /// Input bytes each producer preloads.
    pub preload_bytes: f64,
    /// Buffer memory each producer announces, bytes.
    pub producer_memory: u64,
    /// Ring memory each consumer announces, bytes.
    pub consumer_memory: u64,
    /// The job spec (TOML) submitted; its streams name nodes `n0`, `n1`, ...
    pub spec: String,
    /// Compute times and link delays vary by up to this fraction, drawn from `seed`.
    pub jitter: f64,
    /// Seed of the jitter.
    pub seed: u64,
    /// Simulated seconds after which the run is given up.
    pub horizon_s: f64,
}

/// What one simulated job gave.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Job bytes.
    pub bytes: u64,
    /// Submit to end, simulated seconds.
    pub seconds: f64,
    /// Chunk latency (task created → task done at the scheduler), µs.
    pub chunk_latency_us: Histogram<u64>,
    /// Events the core handled.
    pub events: u64,
    /// Commands it gave.
    pub commands: u64,
    /// Wall seconds spent inside the core.
    pub sched_cpu_s: f64,
    /// Largest chunk-buffer memory any producer held at once, bytes.
    pub producer_memory_peak: u64,
    /// Flows (pieces) sent.
    pub flows: u64,
    /// How the job ended (None: the horizon passed first).
    pub end: Option<JobEnd>,
    /// The scheduler's refusal, if it refused the job.
    pub refused: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct At(f64);
impl Eq for At {}
impl PartialOrd for At {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for At {
    fn cmp(&self, o: &Self) -> Ordering {
        self.0.total_cmp(&o.0)
    }
}

#[derive(Debug)]
enum Ev {
    /// An event reaches the scheduler.
    Sched(Event),
    /// A task reaches its producer.
    Task(NodeId, TaskId, JobId, u64, Vec<(u32, u64, u64, usize)>),
    /// A producer finished computing its current chunk.
    Computed(NodeId),
    /// The earliest flow may have finished (stale when `gen` moved on).
    Flows(u64),
    /// A piece landed at its consumer.
    Landed(usize, JobId, u32, u64, u64),
    /// Every piece of a task was acked.
    Acked(NodeId, TaskId),
    /// The server's periodic tick.
    Tick,
}

struct Pending {
    job: JobId,
    /// (stream, offset, len, consumer node) per piece.
    pieces: Vec<(u32, u64, u64, usize)>,
    task: TaskId,
    bytes: u64,
}

/// A task being expelled: pieces left, compute µs, per piece done (stream, bytes, µs), chunk
/// bytes.
type Expelling = (usize, u64, Vec<(u32, u64, u64)>, u64);

#[derive(Default)]
struct Producer {
    queue: VecDeque<Pending>,
    busy: Option<(Pending, f64)>,
    /// Tasks being expelled.
    expelling: BTreeMap<TaskId, Expelling>,
    memory: u64,
    cancelled: BTreeSet<TaskId>,
}

struct Piece {
    producer: usize,
    task: TaskId,
    job: JobId,
    stream: u32,
    offset: u64,
    len: u64,
    consumer: usize,
    started: f64,
}

/// The simulation state.
struct Sim<'a> {
    s: &'a Setup,
    core: spate_scheduler::core::Scheduler,
    heap: BinaryHeap<std::cmp::Reverse<(At, u64)>>,
    evs: BTreeMap<u64, Ev>,
    seq: u64,
    now: f64,
    rng: ChaCha8Rng,
    caps: Vec<f64>,
    flows: Vec<Flow>,
    pieces: Vec<Piece>,
    flows_at: f64,
    epoch: u64,
    producers: BTreeMap<usize, Producer>,
    created: BTreeMap<TaskId, f64>,
    landed: BTreeMap<(JobId, u32), BTreeMap<u64, u64>>,
    frontier: BTreeMap<(JobId, u32), u64>,
    out: Outcome,
    submitted_at: f64,
    ticking: bool,
}

const CLIENT: ClientId = ClientId(1_000_000);

fn node_id(i: usize) -> NodeId {
    NodeId(i as u64 + 1)
}

fn node_index(n: NodeId) -> usize {
    n.0 as usize - 1
}

/// The name of node `i` in specs.
pub fn node_name(i: usize) -> String {
    format!("n{i}")
}

/// Runs one job on `setup` with the core's two policies (the spec names one, or tclo).
pub fn simulate(setup: &Setup) -> anyhow::Result<Outcome> {
    let core = crate::sched::drive::scheduler("tclo")?;
    let n = setup.nodes;
    let cpu_cap = if setup.kernel_s_per_byte > 0.0 {
        1.0 / setup.kernel_s_per_byte
    } else {
        f64::INFINITY
    };
    let nic = setup.nic_bps.min(cpu_cap);
    // Links: egress of node i = i, ingress = n + i, local = 2n + i.
    let mut caps = vec![nic; 2 * n];
    caps.extend(std::iter::repeat_n(setup.local_bps, n));
    let mut sim = Sim {
        s: setup,
        core,
        heap: BinaryHeap::new(),
        evs: BTreeMap::new(),
        seq: 0,
        now: 0.0,
        rng: ChaCha8Rng::seed_from_u64(setup.seed),
        caps,
        flows: Vec::new(),
        pieces: Vec::new(),
        flows_at: 0.0,
        epoch: 0,
        producers: BTreeMap::new(),
        created: BTreeMap::new(),
        landed: BTreeMap::new(),
        frontier: BTreeMap::new(),
        out: Outcome {
            bytes: 0,
            seconds: 0.0,
            chunk_latency_us: spate_netlib::hist::new_micros(),
            events: 0,
            commands: 0,
            sched_cpu_s: 0.0,
            producer_memory_peak: 0,
            flows: 0,
            end: None,
            refused: None,
        },
        submitted_at: 0.0,
        ticking: false,
    };
    let consumers: BTreeSet<usize> = setup.streams.iter().copied().collect();
    for i in 0..n {
        let producer = setup.producers.contains(&i);
        let consumer = consumers.contains(&i);
        if !producer && !consumer {
            continue;
        }
        if producer {
            sim.producers.insert(i, Producer::default());
        }
        let info = NodeInfo {
            name: node_name(i),
            host: format!("host{i}"),
            roles: Roles { producer, consumer },
            cores: 4,
            capacity: if consumer {
                setup.consumer_memory
            } else {
                setup.producer_memory
            },
            interfaces: (0..setup.interfaces.max(1))
                .map(|k| Interface {
                    name: format!("eth{k}"),
                    addr: format!("10.{k}.{}.{}:7000", i >> 8, i & 255),
                })
                .collect(),
            compute_bps: setup.compute_bps.map_or(0, |c| c as u64),
            nic_bps: nic as u64,
            ports: 0,
        };
        sim.handle(Event::NodeJoined {
            node: node_id(i),
            info,
        });
    }
    let plan = spate_scheduler::spec::JobPlan::parse(&setup.spec)
        .map_err(|e| anyhow::anyhow!("the simulated job's spec: {e}"))?;
    sim.out.bytes = plan.total_bytes();
    sim.submitted_at = sim.now;
    sim.handle(Event::Submit {
        client: CLIENT,
        spec: Submission::Plan(Box::new(plan)),
    });
    while let Some(std::cmp::Reverse((At(t), id))) = sim.heap.pop() {
        if sim.out.end.is_some() || sim.out.refused.is_some() || t > setup.horizon_s {
            break;
        }
        let Some(ev) = sim.evs.remove(&id) else {
            continue;
        };
        sim.now = t;
        sim.step(ev);
    }
    sim.out.seconds = sim.now - sim.submitted_at;
    Ok(sim.out)
}

impl Sim<'_> {
    fn at(&mut self, dt: f64, ev: Ev) {
        let id = self.seq;
        self.seq += 1;
        self.evs.insert(id, ev);
        self.heap
            .push(std::cmp::Reverse((At(self.now + dt.max(0.0)), id)));
    }

    fn jitter(&mut self, x: f64) -> f64 {
        if self.s.jitter > 0.0 {
            x * (1.0 + self.rng.random_range(-self.s.jitter..=self.s.jitter))
        } else {
            x
        }
    }

    fn millis(&self) -> u64 {
        (self.now * 1000.0).floor() as u64
    }

    fn handle(&mut self, ev: Event) {
        let t0 = Instant::now();
        let cmds = self.core.handle(self.millis(), ev);
        self.out.sched_cpu_s += t0.elapsed().as_secs_f64();
        self.out.events += 1;
        self.out.commands += cmds.len() as u64;
        let c = self.s.ctrl_delay_s;
        for cmd in cmds {
            match cmd {
                Command::AllocStream {
                    node, job, stream, ..
                } => self.at(
                    2.0 * c,
                    Ev::Sched(Event::StreamAllocated {
                        node,
                        job,
                        stream,
                        key: u64::from(stream) + 1,
                    }),
                ),
                Command::Reply { reply, .. } => match reply {
                    Reply::Accepted { job, .. } => self.at(
                        2.0 * c,
                        Ev::Sched(Event::Ready {
                            client: CLIENT,
                            job,
                        }),
                    ),
                    Reply::Refused(r) => self.out.refused = Some(r.to_string()),
                    _ => {}
                },
                Command::Preload { node, job } => {
                    // Inputs come over the producer's NIC (request and data: a round trip);
                    // a job with none has nothing to fetch.
                    let fetch = if self.s.preload_bytes > 0.0 {
                        self.s.preload_bytes / self.s.nic_bps + 2.0 * self.s.delay_s
                    } else {
                        0.0
                    };
                    self.at(2.0 * c + fetch, Ev::Sched(Event::PreloadDone { node, job }));
                    if !self.ticking {
                        self.ticking = true;
                        self.at(0.1, Ev::Tick);
                    }
                }
                Command::Compute {
                    node,
                    task,
                    job,
                    chunk,
                    targets,
                } => {
                    self.created.insert(task, self.now);
                    let pieces = targets
                        .iter()
                        .map(|t| {
                            (
                                t.piece.stream,
                                t.piece.offset,
                                t.piece.len,
                                node_index(t.node),
                            )
                        })
                        .collect();
                    let bytes = chunk.pieces.iter().map(|p| p.len).sum();
                    self.at(c, Ev::Task(node, task, job, bytes, pieces));
                }
                Command::CancelTask { node, task } => {
                    if let Some(p) = self.producers.get_mut(&node_index(node)) {
                        p.queue.retain(|q| q.task != task);
                        p.cancelled.insert(task);
                    }
                }
                Command::Unload { .. } => {}
                Command::Delivered { job, .. } => self.at(
                    2.0 * c,
                    Ev::Sched(Event::Done {
                        client: CLIENT,
                        job,
                    }),
                ),
                Command::JobEnded { end, .. } => self.out.end = Some(end),
                _ => {}
            }
        }
    }

    fn step(&mut self, ev: Ev) {
        match ev {
            Ev::Sched(e) => {
                if let Event::TaskDone { task, .. } = &e
                    && let Some(t) = self.created.remove(task)
                {
                    let us = ((self.now - t) * 1e6).round().max(1.0) as u64;
                    self.out.chunk_latency_us.saturating_record(us);
                }
                self.handle(e);
            }
            Ev::Task(node, task, job, bytes, pieces) => {
                let i = node_index(node);
                if let Some(p) = self.producers.get_mut(&i) {
                    p.queue.push_back(Pending {
                        job,
                        pieces,
                        task,
                        bytes,
                    });
                }
                self.start_compute(i);
            }
            Ev::Computed(node) => {
                let i = node_index(node);
                let Some(p) = self.producers.get_mut(&i) else {
                    return;
                };
                let Some((done, started)) = p.busy.take() else {
                    return;
                };
                let compute_us = ((self.now - started) * 1e6).round() as u64;
                if p.cancelled.remove(&done.task) {
                    p.memory -= done.bytes;
                } else {
                    p.expelling.insert(
                        done.task,
                        (done.pieces.len(), compute_us, Vec::new(), done.bytes),
                    );
                    self.advance_flows();
                    for &(stream, offset, len, q) in &done.pieces {
                        let links = if q == i {
                            vec![2 * self.s.nodes + i]
                        } else {
                            vec![i, self.s.nodes + q]
                        };
                        self.flows.push(Flow {
                            links,
                            left: len as f64,
                            rate: 0.0,
                        });
                        self.pieces.push(Piece {
                            producer: i,
                            task: done.task,
                            job: done.job,
                            stream,
                            offset,
                            len,
                            consumer: q,
                            started: self.now,
                        });
                        self.out.flows += 1;
                    }
                    if done.pieces.is_empty() {
                        self.at(0.0, Ev::Acked(node, done.task));
                    }
                    self.reflow();
                }
                self.start_compute(i);
            }
            Ev::Flows(g) if g == self.epoch => {
                self.advance_flows();
                let mut k = 0;
                while k < self.flows.len() {
                    let f = &self.flows[k];
                    if f.left <= 1e-6 * f.rate.max(1.0) || f.left < 1e-3 {
                        self.flows.swap_remove(k);
                        let p = self.pieces.swap_remove(k);
                        self.finished(p);
                    } else {
                        k += 1;
                    }
                }
                self.reflow();
            }
            Ev::Flows(_) => {}
            Ev::Landed(q, job, stream, offset, len) => {
                let _ = q;
                let m = self.landed.entry((job, stream)).or_default();
                m.insert(offset, len);
                let f = self.frontier.entry((job, stream)).or_insert(0);
                while let Some(l) = m.remove(f) {
                    *f += l;
                }
                let frontier = *f;
                let node = node_id(q);
                let c = self.s.ctrl_delay_s;
                self.at(
                    c,
                    Ev::Sched(Event::StreamProgress {
                        node,
                        job,
                        stream,
                        frontier,
                        read: frontier,
                    }),
                );
            }
            Ev::Acked(node, task) => {
                let i = node_index(node);
                let Some(p) = self.producers.get_mut(&i) else {
                    return;
                };
                let Some((_, compute_us, times, bytes)) = p.expelling.remove(&task) else {
                    return;
                };
                p.memory -= bytes;
                if p.cancelled.remove(&task) {
                    return;
                }
                let c = self.s.ctrl_delay_s;
                self.at(
                    c,
                    Ev::Sched(Event::TaskTimes {
                        node,
                        task,
                        report: TaskReport {
                            compute_us,
                            cpu_us: 0,
                            bytes,
                            pieces: times,
                        },
                    }),
                );
                self.at(c, Ev::Sched(Event::TaskDone { node, task }));
            }
            Ev::Tick => {
                self.handle(Event::Tick);
                if self.out.end.is_none() {
                    self.at(0.1, Ev::Tick);
                }
            }
        }
    }

    fn finished(&mut self, p: Piece) {
        let d = self.jitter(self.s.delay_s);
        self.at(d, Ev::Landed(p.consumer, p.job, p.stream, p.offset, p.len));
        let us = ((self.now - p.started) * 1e6).round().max(1.0) as u64;
        let node = node_id(p.producer);
        let mut acked = false;
        if let Some(pr) = self.producers.get_mut(&p.producer)
            && let Some(e) = pr.expelling.get_mut(&p.task)
        {
            e.2.push((p.stream, p.len, us));
            e.0 -= 1;
            acked = e.0 == 0;
        }
        if acked {
            self.at(2.0 * d, Ev::Acked(node, p.task));
        }
    }

    fn start_compute(&mut self, i: usize) {
        let Some(p) = self.producers.get_mut(&i) else {
            return;
        };
        if p.busy.is_some() {
            return;
        }
        let Some(next) = p.queue.pop_front() else {
            return;
        };
        p.memory += next.bytes;
        let mem = p.memory;
        let secs = self.s.chunk_overhead_s
            + self
                .s
                .compute_bps
                .map_or(0.0, |c| next.bytes as f64 / c.max(1.0));
        let secs = self.jitter(secs);
        if let Some(p) = self.producers.get_mut(&i) {
            p.busy = Some((next, self.now));
        }
        self.out.producer_memory_peak = self.out.producer_memory_peak.max(mem);
        self.at(secs, Ev::Computed(node_id(i)));
    }

    fn advance_flows(&mut self) {
        let dt = self.now - self.flows_at;
        if dt > 0.0 {
            for f in &mut self.flows {
                f.left -= f.rate * dt;
            }
        }
        self.flows_at = self.now;
    }

    fn reflow(&mut self) {
        self.epoch += 1;
        if self.flows.is_empty() {
            return;
        }
        max_min(&self.caps, &mut self.flows);
        let next = self
            .flows
            .iter()
            .map(|f| f.left.max(0.0) / f.rate)
            .fold(f64::INFINITY, f64::min);
        if next.is_finite() {
            let g = self.epoch;
            self.at(next, Ev::Flows(g));
        }
    }
}
