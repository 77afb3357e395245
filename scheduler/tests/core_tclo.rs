//! The decision core under the TCLO policy, driven by a small deterministic simulation:
//! producers are FIFO servers that compute at set rates and report their times; the core
//! measures them, deals by weight, reserves for rate jobs, and redoes stragglers.

mod common;

use std::collections::{BTreeMap, VecDeque};

use common::info;
use spate_scheduler::core::{
    ClientId, Command, Event, JobId, NodeId, Refusal, Reply, Scheduler, Submission, TaskId,
    TaskReport,
};
use spate_scheduler::model::Reason;
use spate_scheduler::policy::{Tclo, TcloConfig};

const U: ClientId = ClientId(100);

/// A producer: computes its queue in order at `rate` bytes/s (None: stalled).
struct Server {
    rate: Option<f64>,
    queue: VecDeque<(TaskId, u64)>,
    /// The task being computed and when it finishes (µs).
    busy: Option<(TaskId, u64, u64)>,
}

struct Sim {
    s: Scheduler,
    now_us: u64,
    servers: BTreeMap<NodeId, Server>,
    out: Vec<Command>,
    /// When each job was delivered (µs).
    delivered: BTreeMap<JobId, u64>,
    cancels: u64,
    warnings: Vec<String>,
    /// Pieces of each task: (job, stream, offset, len); and what landed per stream.
    pieces: BTreeMap<TaskId, Vec<(JobId, u32, u64, u64)>>,
    landed: BTreeMap<(JobId, u32), BTreeMap<u64, u64>>,
    /// The consumer of every stream.
    consumer: NodeId,
    /// Tasks duplicated per job, as last seen while it was live (a job read to its end
    /// completes and leaves the core).
    duplicated: BTreeMap<JobId, u64>,
    /// Preloads asked while running (a re-plan bringing in a producer), answered next step.
    preloads: Vec<(NodeId, JobId)>,
}

impl Sim {
    fn new(cfg: TcloConfig) -> Sim {
        Sim {
            s: Scheduler::new(Box::new(Tclo::new(cfg))),
            now_us: 0,
            servers: BTreeMap::new(),
            out: Vec::new(),
            delivered: BTreeMap::new(),
            cancels: 0,
            warnings: Vec::new(),
            pieces: BTreeMap::new(),
            landed: BTreeMap::new(),
            consumer: NodeId(50),
            duplicated: BTreeMap::new(),
            preloads: Vec::new(),
        }
    }

    fn ev(&mut self, e: Event) -> Vec<Command> {
        let out = self.s.handle(self.now_us / 1000, e);
        self.s.check_invariants().unwrap();
        for j in self.s.jobs() {
            if let Some(st) = self.s.job(j) {
                self.duplicated.insert(j, st.duplicated);
            }
        }
        self.take(&out);
        out
    }

    /// Files the commands: tasks to their servers, cancellations, deliveries.
    fn take(&mut self, out: &[Command]) {
        for c in out {
            match c {
                Command::Compute {
                    node,
                    task,
                    chunk,
                    job,
                    ..
                } => {
                    let bytes: u64 = chunk.pieces.iter().map(|p| p.len).sum();
                    self.pieces.insert(
                        *task,
                        chunk
                            .pieces
                            .iter()
                            .map(|p| (*job, p.stream, p.offset, p.len))
                            .collect(),
                    );
                    if let Some(s) = self.servers.get_mut(node) {
                        s.queue.push_back((*task, bytes));
                    }
                }
                Command::CancelTask { node, task } => {
                    self.cancels += 1;
                    if let Some(s) = self.servers.get_mut(node) {
                        s.queue.retain(|(t, _)| t != task);
                    }
                }
                Command::Delivered { job, .. } => {
                    self.delivered.insert(*job, self.now_us);
                }
                Command::JobWarning { message, .. } => self.warnings.push(message.clone()),
                Command::Preload { node, job } => self.preloads.push((*node, *job)),
                _ => {}
            }
        }
        self.out.extend(out.iter().cloned());
    }

    fn join_producer(&mut self, n: u64, rate: Option<f64>) {
        self.servers.insert(
            NodeId(n),
            Server {
                rate,
                queue: VecDeque::new(),
                busy: None,
            },
        );
        self.ev(Event::NodeJoined {
            node: NodeId(n),
            info: info(&format!("p{n}"), &format!("h{n}"), true, false),
        });
    }

    fn join_consumer(&mut self, n: u64, name: &str) {
        let mut i = info(name, "hc", false, true);
        i.nic_bps = 100_000_000_000;
        self.ev(Event::NodeJoined {
            node: NodeId(n),
            info: i,
        });
    }

    /// Submits, allocates every stream, sends Ready and preloads every producer asked.
    fn start(&mut self, client: ClientId, spec: &str) -> Result<JobId, Refusal> {
        let out = self.ev(Event::Submit {
            client,
            spec: Submission::Toml(spec.into()),
        });
        let mut job = None;
        let mut reply = None;
        for c in &out {
            match c {
                Command::AllocStream {
                    node,
                    job: j,
                    stream,
                    ..
                } => {
                    job = Some(*j);
                    let o = self.ev(Event::StreamAllocated {
                        node: *node,
                        job: *j,
                        stream: *stream,
                        key: 1,
                    });
                    reply = o.into_iter().find_map(|c| match c {
                        Command::Reply { reply, .. } => Some(reply),
                        _ => None,
                    });
                }
                Command::Reply { reply: r, .. } => reply = Some(r.clone()),
                _ => {}
            }
        }
        match reply {
            Some(Reply::Accepted { job: j, .. }) => {
                self.ev(Event::Ready { client, job: j });
                for (node, job) in std::mem::take(&mut self.preloads) {
                    self.ev(Event::PreloadDone { node, job });
                }
                Ok(j)
            }
            Some(Reply::Refused(r)) => Err(r),
            other => panic!("no answer for {job:?}: {other:?}"),
        }
    }

    /// Runs until every job is delivered, or `until_us`: servers start their next task when
    /// free; the earliest completion is reported (times, then done); with none due within
    /// 10 ms, time moves on by a tick (straggler checks run on ticks too).
    fn run(&mut self, until_us: u64) {
        let give_up = self.now_us + 600_000_000;
        loop {
            if !self.s.jobs().is_empty()
                && self.s.jobs().iter().all(|j| self.delivered.contains_key(j))
            {
                return;
            }
            for (node, job) in std::mem::take(&mut self.preloads) {
                self.ev(Event::PreloadDone { node, job });
            }
            for s in self.servers.values_mut() {
                if s.busy.is_none()
                    && let Some(rate) = s.rate
                    && let Some((t, b)) = s.queue.pop_front()
                {
                    let dur = (b as f64 / rate * 1e6).ceil() as u64;
                    s.busy = Some((t, b, self.now_us + dur.max(1)));
                }
            }
            let next = self
                .servers
                .iter()
                .filter_map(|(n, s)| s.busy.map(|(t, b, at)| (at, *n, t, b)))
                .min();
            match next {
                Some((at, node, task, bytes)) if at <= self.now_us + 10_000 => {
                    if at > until_us {
                        return;
                    }
                    self.now_us = at;
                    if let Some(s) = self.servers.get_mut(&node) {
                        s.busy = None;
                    }
                    let rate = self.servers[&node].rate.unwrap_or(1.0);
                    self.ev(Event::TaskTimes {
                        node,
                        task,
                        report: TaskReport {
                            compute_us: (bytes as f64 / rate * 1e6) as u64,
                            cpu_us: 0,
                            bytes,
                            pieces: vec![],
                        },
                    });
                    self.ev(Event::TaskDone { node, task });
                    self.land(task);
                }
                _ => {
                    self.now_us += 10_000;
                    if self.now_us > until_us || self.now_us > give_up {
                        return;
                    }
                    self.ev(Event::Tick);
                }
            }
        }
    }
}

impl Sim {
    /// The consumer lands a finished task's pieces and reports each stream's in-order
    /// frontier; its reader reads at once (the reader's position is the frontier).
    fn land(&mut self, task: TaskId) {
        let Some(pieces) = self.pieces.remove(&task) else {
            return;
        };
        for (job, stream, offset, len) in pieces {
            let l = self.landed.entry((job, stream)).or_default();
            l.insert(offset, len);
            let mut at = 0;
            for (&o, &n) in l.iter() {
                if o > at {
                    break;
                }
                at = at.max(o + n);
            }
            let consumer = self.consumer;
            self.ev(Event::StreamProgress {
                node: consumer,
                job,
                stream,
                frontier: at,
                read: at,
            });
        }
    }
}

fn cfg() -> TcloConfig {
    TcloConfig {
        // Measure dealing alone here: no copies of slow tasks.
        straggler_slack: 1e6,
        ..TcloConfig::default()
    }
}

/// One channel of 256 MiB in 256 KiB chunks.
const JOB: &str = "kernel = \"null\"\nsize = \"256MiB\"\nline_bytes = \"64KiB\"\nchunk = \"256KiB\"\nnode = \"c\"\n";
const MB: f64 = 1e6;

/// Job throughput (bytes/s) with producers at `rates`.
fn throughput(rates: &[f64], round_robin: bool) -> f64 {
    let mut sim = Sim::new(TcloConfig {
        round_robin,
        ..cfg()
    });
    sim.join_consumer(50, "c");
    for (i, r) in rates.iter().enumerate() {
        sim.join_producer(i as u64 + 1, Some(*r));
    }
    let job = sim.start(U, JOB).unwrap();
    let t0 = sim.now_us;
    sim.run(u64::MAX);
    let t1 = sim.delivered[&job];
    (256u64 << 20) as f64 / ((t1 - t0) as f64 / 1e6)
}

#[test]
fn weighted_dealing_reaches_the_sum_where_round_robin_gets_n_times_the_slowest() {
    let rates = [50.0 * MB, 100.0 * MB, 200.0 * MB];
    let sum: f64 = rates.iter().sum();
    let weighted = throughput(&rates, false);
    let rr = throughput(&rates, true);
    eprintln!(
        "weighted {:.1} MB/s, round-robin {:.1} MB/s",
        weighted / MB,
        rr / MB
    );
    // The first tasks are dealt on the seeds (equal); the measured rates then set the weights.
    assert!(weighted >= 0.95 * sum, "weighted {weighted} of {sum}");
    assert!(
        weighted <= sum * 1.0001,
        "weighted {weighted} above the sum {sum}"
    );
    let n_slowest = 3.0 * 50.0 * MB;
    assert!(
        rr <= 1.05 * n_slowest && rr >= 0.8 * n_slowest,
        "round-robin {rr}, n x slowest {n_slowest}"
    );
}

fn rate_job(name: &str, rate: &str) -> String {
    format!(
        "name = \"{name}\"\nkernel = \"null\"\nsize = \"64MiB\"\nline_bytes = \"64KiB\"\nchunk = \"256KiB\"\nnode = \"c\"\nrate = \"{rate}\"\n"
    )
}

/// Two producers of 100 MB/s each, warmed up by one job so their rates are measured.
fn warmed() -> Sim {
    warmed_with(cfg())
}

fn warmed_with(cfg: TcloConfig) -> Sim {
    let mut sim = Sim::new(cfg);
    sim.join_consumer(50, "c");
    sim.join_producer(1, Some(100.0 * MB));
    sim.join_producer(2, Some(100.0 * MB));
    let j = sim.start(U, JOB).unwrap();
    sim.run(u64::MAX);
    sim.ev(Event::Done { client: U, job: j });
    sim
}

#[test]
fn rate_jobs_reserve_and_a_later_job_gets_only_what_is_left() {
    let mut sim = warmed();
    // 200 MB/s of compute: 0.8 Gbit/s fits (with 5 % headroom), twice.
    let a = sim.start(ClientId(1), &rate_job("a", "0.6Gbit")).unwrap();
    let b = sim.start(ClientId(2), &rate_job("b", "0.6Gbit")).unwrap();
    assert_ne!(a, b);
    // Left: 1.6 Gbit/s - 2 x 0.63 = 0.34 Gbit/s; 0.5 Gbit/s is refused for compute, and the
    // refusal says what is left.
    match sim.start(ClientId(3), &rate_job("c", "0.5Gbit")) {
        Err(Refusal::Infeasible {
            reason,
            max_feasible,
            requested,
            ..
        }) => {
            assert_eq!(reason, Reason::Compute);
            assert_eq!(requested, Some(0.5e9 / 8.0));
            let left = (200.0 * MB - 2.0 * 0.6e9 / 8.0 * 1.05) / 1.05;
            assert!(
                (max_feasible - left).abs() < 0.05 * left,
                "max feasible {max_feasible}, left {left}"
            );
        }
        other => panic!("{other:?}"),
    }
    // What is left is admitted.
    assert!(sim.start(ClientId(4), &rate_job("d", "0.25Gbit")).is_ok());
    // A plan query reserves nothing: the same answer twice.
    let plan = spate_scheduler::spec::JobPlan::parse(&rate_job("e", "0.02Gbit")).unwrap();
    let p1 = sim.s.dry_run(&plan).unwrap();
    let p2 = sim.s.dry_run(&plan).unwrap();
    assert_eq!(p1, p2);
}

#[test]
fn a_stalled_producers_tasks_are_duplicated_and_the_first_copy_wins() {
    let mut sim = Sim::new(TcloConfig::default());
    sim.join_consumer(50, "c");
    sim.join_producer(1, Some(100.0 * MB));
    sim.join_producer(2, Some(100.0 * MB));
    let j = sim.start(U, JOB).unwrap();
    // Warm up: a quarter of the job at full speed.
    sim.run(170_000);
    // Producer 2 stalls (SIGSTOP): what it holds is redone by producer 1.
    sim.servers.get_mut(&NodeId(2)).unwrap().rate = None;
    sim.run(u64::MAX);
    assert!(sim.delivered.contains_key(&j), "the job was not delivered");
    let duplicated = sim.duplicated[&j];
    eprintln!("duplicated {duplicated}, cancelled {}", sim.cancels);
    assert!(duplicated > 0, "no straggler was duplicated");
    // Every duplicate ended with its twin cancelled (the winner's report cancels the loser).
    assert_eq!(sim.cancels, duplicated);
    // The stalled producer holds no task of the finished job.
    assert!(sim.s.tasks_of(NodeId(2)).is_empty());
}

#[test]
fn a_producer_that_slows_down_is_replanned_and_the_submitter_warned_when_the_rate_fails() {
    let mut sim = warmed();
    let j = sim.start(ClientId(1), &rate_job("a", "1.2Gbit")).unwrap();
    sim.run(sim.now_us + 50_000);
    assert!(sim.warnings.is_empty(), "{:?}", sim.warnings);
    // Producer 2 drops to a tenth: 110 MB/s < 1.2 Gbit/s (150 MB/s) with headroom.
    sim.servers.get_mut(&NodeId(2)).unwrap().rate = Some(10.0 * MB);
    sim.run(u64::MAX);
    assert!(sim.delivered.contains_key(&j));
    assert_eq!(sim.warnings.len(), 1, "{:?}", sim.warnings);
    assert!(
        sim.warnings[0].contains("cannot promise") && sim.warnings[0].contains("compute"),
        "{}",
        sim.warnings[0]
    );
}

/// The producers dealt tasks in commands from `from` on.
fn dealt_to(sim: &Sim, from: usize) -> std::collections::BTreeSet<NodeId> {
    sim.out[from..]
        .iter()
        .filter_map(|c| match c {
            Command::Compute { node, .. } => Some(*node),
            _ => None,
        })
        .collect()
}

#[test]
fn a_late_task_with_no_producer_free_brings_in_one_the_plan_left_out() {
    let mut sim = warmed_with(TcloConfig::default());
    // 25 MB/s: one producer of 100 MB/s carries it, and the plan takes one.
    let mark = sim.out.len();
    let j = sim.start(ClientId(1), &rate_job("a", "0.2Gbit")).unwrap();
    sim.run(sim.now_us + 300_000);
    let used = dealt_to(&sim, mark);
    assert_eq!(used.len(), 1, "the plan took {used:?}");
    let slow = *used.first().unwrap();
    // It stalls holding the job's next chunks: the other producer, left out of the plan, is
    // brought in, and what the staller holds is redone there.
    sim.servers.get_mut(&slow).unwrap().rate = None;
    let mark = sim.out.len();
    sim.run(u64::MAX);
    assert!(sim.delivered.contains_key(&j), "the job was not delivered");
    let after = dealt_to(&sim, mark);
    assert!(
        after.iter().any(|n| *n != slow),
        "no other producer: {after:?}"
    );
    assert!(sim.duplicated[&j] > 0, "no straggler was duplicated");
    assert!(sim.s.tasks_of(slow).is_empty());
    // Every byte of the stream landed once in order (the first copy of each chunk won).
    let landed = &sim.landed[&(j, 0)];
    let mut at = 0;
    for (&o, &n) in landed {
        assert_eq!(o, at, "a gap or overlap at {o}");
        at = o + n;
    }
    assert_eq!(at, 64 << 20);
}
