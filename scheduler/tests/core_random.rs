//! Seeded random runs of the decision core against a model of the cluster, checking the
//! invariants after every step:
//! - every chunk lands exactly once at its place in its stream (a consumer model counts a
//!   re-sent piece once and refuses overlaps), and a job is reported delivered only when every
//!   stream is covered from 0 to its end;
//! - no task is ever assigned to a dead producer, and the scheduler's task sets match the
//!   commands it issued;
//! - every running job has a live producer (or has been aborted);
//! - jobs whose consumer died are aborted (or refused) in the same step, naming the node;
//! - load-balance: a producer ready for a job that has work left keeps at least 2 tasks;
//! - tclo: a straggler's copy and its original are never both reported done (the first to
//!   land wins, the other is cancelled), and every job still finishes.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::info;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use spate_scheduler::core::{
    AbortReason, ClientId, Command, Event, JobEnd, JobId, JobState, Leave, NodeId, Refusal, Reply,
    Scheduler, Submission, Target, TaskId,
};
use spate_scheduler::policy::{LoadBalance, Policy, Tclo};
use spate_scheduler::spec::{Chunk, JobPlan};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MState {
    Allocating,
    Accepted,
    Running,
    Delivered,
    Ended,
}

struct MJob {
    client: ClientId,
    state: MState,
    plan: Option<JobPlan>,
    /// Consumer of each stream.
    nodes: Vec<NodeId>,
    lens: Vec<u64>,
    /// Per stream: landed pieces, offset -> len.
    landed: Vec<BTreeMap<u64, u64>>,
}

struct MNode {
    name: String,
    producer: bool,
    consumer: bool,
}

struct Sim {
    s: Scheduler,
    /// The on-demand baseline (its depth invariant is checked).
    on_demand: bool,
    rng: ChaCha8Rng,
    now: u64,
    next_node: u64,
    next_client: u64,
    nodes: BTreeMap<NodeId, MNode>,
    dead_names: Vec<String>,
    jobs: BTreeMap<JobId, MJob>,
    by_client: BTreeMap<ClientId, JobId>,
    tasks: BTreeMap<TaskId, (NodeId, JobId, Chunk, Vec<Target>)>,
    preloads: BTreeSet<(NodeId, JobId)>,
    allocs: BTreeSet<(NodeId, JobId, u32)>,
    step: usize,
    stats: BTreeMap<&'static str, u64>,
}

impl Sim {
    fn new(seed: u64, policy: Box<dyn Policy>) -> Self {
        Sim {
            on_demand: policy.name() == "load-balance",
            s: Scheduler::new(policy),
            rng: ChaCha8Rng::seed_from_u64(seed),
            now: 0,
            next_node: 1,
            next_client: 1,
            nodes: BTreeMap::new(),
            dead_names: vec![],
            jobs: BTreeMap::new(),
            by_client: BTreeMap::new(),
            tasks: BTreeMap::new(),
            preloads: BTreeSet::new(),
            allocs: BTreeSet::new(),
            step: 0,
            stats: BTreeMap::new(),
        }
    }

    fn count(&mut self, what: &'static str) {
        *self.stats.entry(what).or_default() += 1;
    }

    fn pick<T: Clone>(&mut self, v: &[T]) -> Option<T> {
        if v.is_empty() {
            None
        } else {
            Some(v[self.rng.random_range(0..v.len())].clone())
        }
    }

    fn producers(&self) -> Vec<NodeId> {
        self.nodes
            .iter()
            .filter(|(_, n)| n.producer)
            .map(|(i, _)| *i)
            .collect()
    }

    fn consumers(&self) -> Vec<NodeId> {
        self.nodes
            .iter()
            .filter(|(_, n)| n.consumer)
            .map(|(i, _)| *i)
            .collect()
    }

    fn jobs_in(&self, st: MState) -> Vec<JobId> {
        self.jobs
            .iter()
            .filter(|(_, j)| j.state == st)
            .map(|(i, _)| *i)
            .collect()
    }

    fn random_spec(&mut self) -> String {
        let r = &mut self.rng;
        if r.random_ratio(1, 20) {
            return "kernel = \"nope\"\nsize = 10\nnode = \"c1\"\n".into();
        }
        let channels = r.random_range(1..=3);
        let lines = r.random_range(1..=40u64);
        let line_bytes = r.random_range(1..=64u64);
        let parts = r.random_range(1..=lines.min(3));
        let mut names: Vec<String> = self
            .nodes
            .values()
            .filter(|n| n.consumer)
            .map(|n| n.name.clone())
            .collect();
        names.extend(self.dead_names.iter().take(2).cloned());
        names.push("nowhere".into());
        let r = &mut self.rng;
        let mut t = format!(
            "kernel = \"pattern\"\nchannels = {channels}\nlines = {lines}\nline_bytes = {line_bytes}\nsplit = {{ lines = {parts} }}\n"
        );
        if r.random_ratio(2, 3) {
            t += &format!("chunk = {{ lines = {} }}\n", r.random_range(1..=5));
        }
        if r.random_ratio(1, 3) {
            t += "on_reader_death = \"keep\"\n";
        }
        for _ in 0..channels * parts as u32 {
            // Mostly live consumers.
            let i = if r.random_ratio(9, 10) && names.len() > 1 + self.dead_names.len().min(2) {
                r.random_range(0..names.len() - 1 - self.dead_names.len().min(2))
            } else {
                r.random_range(0..names.len())
            };
            t += &format!("[[stream]]\nnode = \"{}\"\n", names[i]);
        }
        t
    }

    /// One random event.
    fn random_event(&mut self) -> Option<Event> {
        let roll = self.rng.random_range(0..100);
        Some(match roll {
            0..=4 => {
                let n = NodeId(self.next_node);
                let producer = self.producers().len() < 6 && self.rng.random_ratio(2, 3);
                let consumer = !producer || self.rng.random_ratio(1, 4);
                let name = format!("n{}", self.next_node);
                let host = format!("h{}", self.rng.random_range(0..3));
                self.next_node += 1;
                Event::NodeJoined {
                    node: n,
                    info: info(&name, &host, producer, consumer),
                }
            }
            5..=7 => {
                let p = self.pick(&self.producers())?;
                let how = if self.rng.random_bool(0.5) {
                    Leave::Crash
                } else {
                    Leave::Quit
                };
                Event::NodeLeft { node: p, how }
            }
            8 => {
                let c = self.pick(&self.consumers())?;
                Event::NodeLeft {
                    node: c,
                    how: Leave::Crash,
                }
            }
            9..=14 => {
                let client = ClientId(self.next_client);
                self.next_client += 1;
                let spec = self.random_spec();
                Event::Submit {
                    client,
                    spec: Submission::Toml(spec),
                }
            }
            15..=24 => {
                let v: Vec<_> = self.allocs.iter().copied().collect();
                let (node, job, stream) = self.pick(&v)?;
                if self.rng.random_ratio(1, 15) {
                    Event::AllocFailed {
                        node,
                        job,
                        stream,
                        reason: "no memory".into(),
                    }
                } else {
                    Event::StreamAllocated {
                        node,
                        job,
                        stream,
                        key: 1000 + u64::from(stream),
                    }
                }
            }
            25..=29 => {
                let j = self.pick(&self.jobs_in(MState::Accepted))?;
                Event::Ready {
                    client: self.jobs[&j].client,
                    job: j,
                }
            }
            30..=37 => {
                let v: Vec<_> = self.preloads.iter().copied().collect();
                let (node, job) = self.pick(&v)?;
                if self.rng.random_ratio(1, 12) {
                    Event::PreloadFailed {
                        node,
                        job,
                        reason: "missing input".into(),
                    }
                } else {
                    Event::PreloadDone { node, job }
                }
            }
            38..=84 => {
                let v: Vec<_> = self.tasks.keys().copied().collect();
                let t = self.pick(&v)?;
                let node = self.tasks[&t].0;
                if self.rng.random_ratio(1, 25) {
                    Event::TaskFailed {
                        node,
                        task: t,
                        reason: "kernel error".into(),
                    }
                } else {
                    Event::TaskDone { node, task: t }
                }
            }
            85..=90 => {
                let j = self.pick(&self.jobs_in(MState::Delivered))?;
                Event::Done {
                    client: self.jobs[&j].client,
                    job: j,
                }
            }
            91 => {
                let live: Vec<JobId> = self
                    .jobs
                    .iter()
                    .filter(|(_, j)| j.state != MState::Ended)
                    .map(|(i, _)| *i)
                    .collect();
                let j = self.pick(&live)?;
                Event::Cancel {
                    client: ClientId(9999),
                    job: j,
                }
            }
            92 => {
                let j = self.pick(&self.jobs_in(MState::Running))?;
                let st = self.rng.random_range(0..self.jobs[&j].nodes.len());
                Event::ReaderGone {
                    node: self.jobs[&j].nodes[st],
                    job: j,
                    stream: st as u32,
                }
            }
            93..=95 => {
                // Stale or foreign reports must be ignored.
                let v: Vec<_> = self.tasks.keys().copied().collect();
                let t = self.pick(&v)?;
                let other = NodeId(self.tasks[&t].0.0 + 1000);
                Event::TaskDone {
                    node: other,
                    task: t,
                }
            }
            _ => {
                self.now += self.rng.random_range(0..15_000);
                Event::Tick
            }
        })
    }

    fn land(&mut self, task: TaskId) {
        let (_, job, chunk, targets) = self.tasks[&task].clone();
        let j = self.jobs.get_mut(&job).unwrap();
        for (piece, target) in chunk.pieces.iter().zip(&targets) {
            assert_eq!(target.piece, *piece);
            let st = piece.stream as usize;
            assert_eq!(target.node, j.nodes[st], "piece sent to the wrong consumer");
            let landed = &mut j.landed[st];
            if let Some(&len) = landed.get(&piece.offset) {
                assert_eq!(len, piece.len, "re-sent piece differs");
                continue;
            }
            // No overlap with neighbours.
            if let Some((&o, &l)) = landed.range(..piece.offset).next_back() {
                assert!(o + l <= piece.offset, "overlap");
            }
            if let Some((&o, _)) = landed.range(piece.offset..).next() {
                assert!(piece.offset + piece.len <= o, "overlap");
            }
            assert!(piece.offset + piece.len <= j.lens[st]);
            landed.insert(piece.offset, piece.len);
        }
    }

    /// Checks a Compute command against the plan, computed independently.
    fn check_compute(&self, node: NodeId, job: JobId, chunk: &Chunk, targets: &[Target]) {
        let n = self.nodes.get(&node).expect("task to a dead node");
        assert!(n.producer, "task to a non-producer");
        let j = &self.jobs[&job];
        assert_eq!(j.state, MState::Running);
        let plan = j.plan.as_ref().unwrap();
        let g = &plan.geometry;
        let parts = u64::from(plan.parts);
        // The part holding the chunk's lines.
        let p = (0..parts)
            .find(|&p| {
                let b0 = p * g.lines / parts;
                let b1 = (p + 1) * g.lines / parts;
                b0 <= chunk.lines.start && chunk.lines.end <= b1
            })
            .expect("chunk straddles a part");
        let b0 = p * g.lines / parts;
        assert!(chunk.lines.start < chunk.lines.end);
        assert_eq!(chunk.pieces.len(), g.channels as usize);
        assert_eq!(targets.len(), chunk.pieces.len());
        for (c, piece) in chunk.pieces.iter().enumerate() {
            assert_eq!(piece.channel as usize, c);
            assert_eq!(u64::from(piece.stream), c as u64 * parts + p);
            assert_eq!(piece.offset, (chunk.lines.start - b0) * g.line_bytes);
            assert_eq!(
                piece.len,
                (chunk.lines.end - chunk.lines.start) * g.line_bytes
            );
        }
    }

    fn apply(&mut self, ev: Event) {
        self.step += 1;
        // Jobs that must end in this step: those with a stream on a leaving consumer.
        let mut must_end: Vec<(JobId, String)> = vec![];
        match &ev {
            Event::NodeLeft { node, .. } => {
                let n = &self.nodes[node];
                if n.consumer {
                    for (id, j) in &self.jobs {
                        if j.state != MState::Ended && j.nodes.contains(node) {
                            must_end.push((*id, n.name.clone()));
                        }
                    }
                }
                // A crashed producer may have sent some pieces before dying.
                let mine: Vec<TaskId> = self
                    .tasks
                    .iter()
                    .filter(|(_, t)| t.0 == *node)
                    .map(|(k, _)| *k)
                    .collect();
                for t in mine {
                    if self.rng.random_bool(0.5) {
                        self.land(t);
                    }
                    self.tasks.remove(&t);
                }
                self.preloads.retain(|(n, _)| n != node);
                self.allocs.retain(|(n, _, _)| n != node);
                let n = self.nodes.remove(node).unwrap();
                self.dead_names.push(n.name);
                self.count("node left");
            }
            Event::NodeJoined { node, info }
                if !self.nodes.values().any(|n| n.name == info.name) =>
            {
                self.nodes.insert(
                    *node,
                    MNode {
                        name: info.name.clone(),
                        producer: info.roles.producer,
                        consumer: info.roles.consumer,
                    },
                );
            }
            Event::TaskDone { node, task }
                if self.tasks.get(task).is_some_and(|t| t.0 == *node) =>
            {
                self.land(*task);
                self.tasks.remove(task);
                self.count("task done");
            }
            Event::TaskFailed { task, .. } => {
                self.tasks.remove(task);
                self.count("task failed");
            }
            Event::StreamAllocated {
                node, job, stream, ..
            }
            | Event::AllocFailed {
                node, job, stream, ..
            } => {
                self.allocs.remove(&(*node, *job, *stream));
            }
            Event::PreloadDone { node, job } | Event::PreloadFailed { node, job, .. } => {
                self.preloads.remove(&(*node, *job));
            }
            _ => {}
        }
        let submit_client = match &ev {
            Event::Submit { client, .. } => Some(*client),
            _ => None,
        };
        let out = self.s.handle(self.now, ev.clone());
        let mut ended = BTreeSet::new();
        for c in &out {
            match c {
                Command::AllocStream {
                    node,
                    job,
                    stream,
                    len,
                    ..
                } => {
                    assert!(self.nodes[node].consumer);
                    let client = submit_client.expect("AllocStream outside Submit");
                    let j = self.jobs.entry(*job).or_insert_with(|| MJob {
                        client,
                        state: MState::Allocating,
                        plan: None,
                        nodes: vec![],
                        lens: vec![],
                        landed: vec![],
                    });
                    assert_eq!(*stream as usize, j.nodes.len());
                    j.nodes.push(*node);
                    j.lens.push(*len);
                    j.landed.push(BTreeMap::new());
                    self.by_client.insert(client, *job);
                    self.allocs.insert((*node, *job, *stream));
                }
                Command::Reply { client, reply } => match reply {
                    Reply::Accepted { job, streams, .. } => {
                        let j = self.jobs.get_mut(job).unwrap();
                        assert_eq!(j.state, MState::Allocating);
                        assert_eq!(j.client, *client);
                        assert_eq!(streams.len(), j.nodes.len());
                        j.state = MState::Accepted;
                        j.plan = self.s.plan(*job).cloned();
                        self.count("accepted");
                    }
                    Reply::Refused(r) => {
                        self.count("refused");
                        if let Some(job) = self.by_client.get(client) {
                            let j = self.jobs.get_mut(job).unwrap();
                            if j.state == MState::Allocating {
                                j.state = MState::Ended;
                                ended.insert(*job);
                                if let Refusal::ConsumerLost { node } = r {
                                    must_end.retain(|(id, n)| !(id == job && n == node));
                                }
                            }
                        }
                    }
                    Reply::Ok(job) => {
                        let j = self.jobs.get_mut(job).unwrap();
                        if j.state == MState::Accepted && matches!(ev, Event::Ready { .. }) {
                            j.state = MState::Running;
                        }
                    }
                    Reply::Error(_) => {}
                },
                Command::Compute {
                    node,
                    task,
                    job,
                    chunk,
                    targets,
                } => {
                    self.check_compute(*node, *job, chunk, targets);
                    assert!(
                        self.tasks
                            .insert(*task, (*node, *job, chunk.clone(), targets.clone()))
                            .is_none()
                    );
                }
                Command::Preload { node, job } => {
                    assert!(self.nodes[node].producer);
                    self.preloads.insert((*node, *job));
                }
                Command::Unload { node, job } => {
                    self.preloads.remove(&(*node, *job));
                    self.tasks.retain(|_, t| !(t.0 == *node && t.1 == *job));
                }
                Command::Release { node, job, .. } => {
                    assert!(self.nodes.contains_key(node), "release to a dead node");
                    self.allocs.retain(|(n, j, _)| !(n == node && j == job));
                }
                Command::Delivered { client, job } => {
                    let j = self.jobs.get_mut(job).unwrap();
                    assert_eq!(j.client, *client);
                    assert_eq!(j.state, MState::Running, "delivered twice or too early");
                    j.state = MState::Delivered;
                    // Every stream covered exactly, in order.
                    for (st, landed) in j.landed.iter().enumerate() {
                        let mut at = 0;
                        for (&o, &l) in landed {
                            assert_eq!(o, at, "gap in stream {st}");
                            at += l;
                        }
                        assert_eq!(at, j.lens[st], "stream {st} incomplete");
                    }
                    let st = self.s.job(*job).unwrap();
                    assert_eq!(st.delivered, st.chunks);
                    self.count("delivered");
                }
                Command::JobEnded { client, job, end } => {
                    let j = self.jobs.get_mut(job).unwrap();
                    assert_eq!(j.client, *client);
                    assert_ne!(j.state, MState::Ended);
                    if *end == JobEnd::Completed {
                        assert_eq!(j.state, MState::Delivered);
                    }
                    if let JobEnd::Aborted(AbortReason::ConsumerLost { node, .. }) = end {
                        must_end.retain(|(id, n)| !(id == job && n == node));
                    }
                    j.state = MState::Ended;
                    ended.insert(*job);
                    self.count(match end {
                        JobEnd::Completed => "completed",
                        JobEnd::Cancelled => "cancelled",
                        JobEnd::Aborted(_) => "aborted",
                    });
                }
                Command::RefuseNode { .. } => {}
                Command::CancelTask { node, task } => {
                    let t = self.tasks.remove(task).expect("cancel of an unknown task");
                    assert_eq!(t.0, *node);
                    self.count("cancelled copy");
                }
                Command::JobWarning { .. } => self.count("warning"),
                Command::StreamRead { .. } => self.count("stream read"),
            }
        }
        for job in ended {
            self.tasks.retain(|_, t| t.1 != job);
            self.preloads.retain(|(_, j)| *j != job);
            self.allocs.retain(|(_, j, _)| *j != job);
        }
        assert!(
            must_end.is_empty(),
            "jobs not aborted after their consumer left: {must_end:?}"
        );
        self.check();
    }

    fn check(&self) {
        self.s.check_invariants().unwrap();
        // The scheduler's tasks are exactly those its commands gave out and did not take back.
        for p in self.s.nodes() {
            let mine: Vec<TaskId> = self
                .tasks
                .iter()
                .filter(|(_, t)| t.0 == p)
                .map(|(k, _)| *k)
                .collect();
            assert_eq!(self.s.tasks_of(p), mine, "node {p:?}");
        }
        for t in self.tasks.values() {
            assert!(self.nodes.contains_key(&t.0), "task on dead node");
        }
        for (id, j) in &self.jobs {
            let st = self.s.job(*id);
            match j.state {
                MState::Ended => assert!(st.is_none(), "{id} should be gone"),
                MState::Running => {
                    let st = st.unwrap();
                    assert_eq!(st.state, JobState::Running);
                    assert!(!st.producers.is_empty(), "{id} running with no producer");
                    for (p, ready) in &st.producers {
                        assert!(self.nodes[p].producer);
                        // At least 2 tasks on every ready producer while work is assignable.
                        if self.on_demand && *ready && self.s.has_assignable(*id) {
                            assert!(self.s.tasks_of(*p).len() >= 2, "{p:?} starved on {id}");
                        }
                    }
                }
                _ => assert!(st.is_some()),
            }
        }
    }
}

fn run(seed: u64, steps: usize, policy: Box<dyn Policy>) -> BTreeMap<&'static str, u64> {
    let mut sim = Sim::new(seed, policy);
    // Start with some nodes.
    for (i, (p, c)) in [(true, false), (true, false), (false, true), (false, true)]
        .into_iter()
        .enumerate()
    {
        let n = NodeId(sim.next_node);
        sim.next_node += 1;
        sim.apply(Event::NodeJoined {
            node: n,
            info: info(&format!("c{i}"), "h0", p, c),
        });
    }
    while sim.step < steps {
        sim.now += sim.rng.random_range(0..50);
        if let Some(ev) = sim.random_event() {
            sim.apply(ev);
        }
    }
    // Liveness: without further failures, every job finishes.
    loop {
        let ev = if let Some(&(node, job, stream)) = sim.allocs.iter().next() {
            Event::StreamAllocated {
                node,
                job,
                stream,
                key: 1,
            }
        } else if let Some(&job) = sim.jobs_in(MState::Accepted).first() {
            Event::Ready {
                client: sim.jobs[&job].client,
                job,
            }
        } else if let Some(&(node, job)) = sim.preloads.iter().next() {
            Event::PreloadDone { node, job }
        } else if let Some((&task, t)) = sim.tasks.iter().next() {
            Event::TaskDone { node: t.0, task }
        } else if let Some(&job) = sim.jobs_in(MState::Delivered).first() {
            Event::Done {
                client: sim.jobs[&job].client,
                job,
            }
        } else {
            break;
        };
        sim.apply(ev);
    }
    for (id, j) in &sim.jobs {
        assert_eq!(j.state, MState::Ended, "seed {seed}: {id} stalled");
    }
    sim.stats
}

#[test]
fn random_runs_keep_invariants() {
    let mut total: BTreeMap<&'static str, u64> = BTreeMap::new();
    for seed in 0..150 {
        for (k, v) in run(seed, 600, Box::new(LoadBalance::default())) {
            *total.entry(k).or_default() += v;
        }
    }
    // The runs exercised what they claim to.
    for what in [
        "accepted",
        "refused",
        "delivered",
        "completed",
        "aborted",
        "cancelled",
        "task failed",
        "node left",
    ] {
        assert!(
            total.get(what).copied().unwrap_or(0) > 10,
            "too few '{what}': {total:?}"
        );
    }
}

#[test]
fn random_runs_keep_invariants_under_tclo() {
    let mut total: BTreeMap<&'static str, u64> = BTreeMap::new();
    for seed in 0..150 {
        for (k, v) in run(seed, 600, Box::new(Tclo::default())) {
            *total.entry(k).or_default() += v;
        }
    }
    for what in [
        "accepted",
        "delivered",
        "completed",
        "aborted",
        "cancelled",
        "task failed",
        "node left",
        "cancelled copy",
    ] {
        assert!(
            total.get(what).copied().unwrap_or(0) > 10,
            "too few '{what}': {total:?}"
        );
    }
}
