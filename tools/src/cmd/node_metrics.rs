//! The node daemon's Prometheus metrics (`spate node --metrics ADDR`), all prefixed `spate_` and
//! labelled with the node's name.
//!
//! - Streams (consumer role), from the engine's stream table, sampled every 20 ms by the
//!   reporting thread: bytes landed in order, bytes released by the reader, ring fill, ring
//!   capacity, and starvations (samples in which an attached reader had read everything landed
//!   so far before the end, after a sample in which it had not: an under-estimate when a
//!   starvation is shorter than the sampling period).
//! - Tasks (producer role), from the messages the producer sends the scheduler: tasks done and
//!   failed by kind, bytes computed, the rate of the last compute+expel task (its bytes over the
//!   time from the start of its compute to its last ack), the compute rate alone when the
//!   producer reports compute times separately (a `TaskDone` of kind `Compute`), bytes
//!   expelled per path (`unix` or `tcp`) and per link (consumer), with the link's rate over the
//!   last expel.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};
use spate_consumer::engine::StreamState;
use spate_netlib::proto::{DataEndpoint, Message, TaskKind};
use spate_ring::ReaderStatus;

#[derive(Debug, Default, Clone, Copy)]
struct Seen {
    frontier: u64,
    read_pos: u64,
    starving: bool,
}

/// See the module docs.
#[derive(Debug)]
pub struct NodeMetrics {
    landed: IntCounterVec,
    released: IntCounterVec,
    fill: IntGaugeVec,
    capacity: IntGaugeVec,
    starvations: IntCounterVec,
    streams: IntGauge,
    tasks: IntCounterVec,
    computed: IntCounter,
    compute_rate: IntGauge,
    task_rate: IntGauge,
    expelled: IntCounterVec,
    link_bytes: IntCounterVec,
    link_rate: IntGaugeVec,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    seen: HashMap<(u64, u32), Seen>,
    capacities: HashMap<(u64, u32), u64>,
    /// Per expel task: (consumer, path, bytes, stream) of each target.
    expels: HashMap<u64, Vec<(String, &'static str, u64, u32)>>,
    /// Tasks whose compute was reported on its own (their bytes are counted then).
    computed: HashSet<u64>,
}

/// `bytes` per `micros` as bytes per second (0 when no time passed).
fn per_sec(bytes: u64, micros: u64) -> i64 {
    if micros == 0 {
        0
    } else {
        i64::try_from(u128::from(bytes) * 1_000_000 / u128::from(micros)).unwrap_or(i64::MAX)
    }
}

/// Metric names and help are constants: building them cannot fail.
fn ok<T>(r: prometheus::Result<T>) -> T {
    r.unwrap_or_else(|e| unreachable!("metric definition: {e}"))
}

fn opts(sub: &str, name: &str, help: &str) -> Opts {
    Opts::new(name, help).subsystem(sub)
}

const STREAM: &[&str] = &["job", "stream"];
const LINK: &[&str] = &["to", "path"];

impl Default for NodeMetrics {
    fn default() -> Self {
        let cv = |sub, name, help, labels| ok(IntCounterVec::new(opts(sub, name, help), labels));
        let gv = |sub, name, help, labels| ok(IntGaugeVec::new(opts(sub, name, help), labels));
        NodeMetrics {
            landed: cv(
                "stream",
                "landed_bytes_total",
                "Bytes landed in order in the stream's ring",
                STREAM,
            ),
            released: cv(
                "stream",
                "released_bytes_total",
                "Bytes the stream's reader read and released",
                STREAM,
            ),
            fill: gv(
                "stream",
                "ring_fill_bytes",
                "Bytes landed and not yet released (ring fill)",
                STREAM,
            ),
            capacity: gv(
                "stream",
                "ring_capacity_bytes",
                "Capacity of the stream's ring",
                STREAM,
            ),
            starvations: cv(
                "stream",
                "starvations_total",
                "Times the attached reader was seen waiting on an empty ring before the end \
                 (sampled every 20 ms)",
                STREAM,
            ),
            streams: ok(IntGauge::with_opts(opts(
                "consumer",
                "streams",
                "Streams held",
            ))),
            tasks: cv(
                "producer",
                "tasks_total",
                "Tasks finished, by kind (compute, expel) and outcome (done, failed)",
                &["kind", "outcome"],
            ),
            computed: ok(IntCounter::with_opts(opts(
                "producer",
                "computed_bytes_total",
                "Bytes computed by the kernel",
            ))),
            compute_rate: ok(IntGauge::with_opts(opts(
                "producer",
                "compute_rate_bytes_per_second",
                "Compute rate of the last task (its bytes over its compute time)",
            ))),
            task_rate: ok(IntGauge::with_opts(opts(
                "producer",
                "task_rate_bytes_per_second",
                "Rate of the last compute+expel task (bytes over the time from the start of \
                 its compute to its last ack)",
            ))),
            expelled: cv(
                "producer",
                "expelled_bytes_total",
                "Bytes expelled to consumers, by path (unix, tcp)",
                &["path"],
            ),
            link_bytes: cv(
                "link",
                "sent_bytes_total",
                "Bytes sent on the link to a consumer",
                LINK,
            ),
            link_rate: gv(
                "link",
                "rate_bytes_per_second",
                "Rate of the last piece sent on the link (its bytes over the link's busy time)",
                LINK,
            ),
            state: Mutex::default(),
        }
    }
}

impl NodeMetrics {
    /// Registers every metric in `r`.
    pub fn register(&self, r: &Registry) -> prometheus::Result<()> {
        for c in [
            &self.landed,
            &self.released,
            &self.starvations,
            &self.tasks,
            &self.expelled,
            &self.link_bytes,
        ] {
            r.register(Box::new(c.clone()))?;
        }
        for g in [&self.fill, &self.capacity, &self.link_rate] {
            r.register(Box::new(g.clone()))?;
        }
        r.register(Box::new(self.streams.clone()))?;
        r.register(Box::new(self.computed.clone()))?;
        r.register(Box::new(self.compute_rate.clone()))?;
        r.register(Box::new(self.task_rate.clone()))?;
        for kind in ["compute", "expel"] {
            for outcome in ["done", "failed"] {
                self.tasks.with_label_values(&[kind, outcome]);
            }
        }
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A message from the scheduler (before the roles handle it).
    pub fn incoming(&self, m: &Message) {
        match m {
            Message::AllocStream {
                job,
                stream,
                capacity,
                ..
            } => {
                self.lock().capacities.insert((job.0, stream.0), *capacity);
            }
            Message::Expel { task, targets, .. } => {
                let v = targets
                    .iter()
                    .map(|t| {
                        let path = match t.endpoint {
                            DataEndpoint::Unix { .. } => "unix",
                            DataEndpoint::Tcp { .. } => "tcp",
                        };
                        (t.consumer.clone(), path, t.len, t.stream.0)
                    })
                    .collect();
                self.lock().expels.insert(task.0, v);
            }
            _ => {}
        }
    }

    /// A message to the scheduler (task reports of the producer role).
    pub fn outgoing(&self, m: &Message) {
        match m {
            Message::TaskDone {
                task,
                kind,
                bytes,
                micros,
                compute_micros,
                pieces,
                ..
            } => {
                let rate = |b: u64| per_sec(b, *micros);
                let k = match kind {
                    TaskKind::Compute => {
                        self.lock().computed.insert(task.0);
                        self.computed.inc_by(*bytes);
                        self.compute_rate.set(rate(*bytes));
                        "compute"
                    }
                    TaskKind::Expel => {
                        let (targets, counted) = {
                            let mut st = self.lock();
                            let t = st.expels.remove(&task.0).unwrap_or_default();
                            (t, st.computed.remove(&task.0))
                        };
                        // The chunk was computed here (the producer reports compute and
                        // expel in one TaskDone): count its compute once.
                        if !counted {
                            self.computed.inc_by(*bytes);
                            self.tasks.with_label_values(&["compute", "done"]).inc();
                        }
                        self.task_rate.set(rate(*bytes));
                        if *compute_micros > 0 {
                            self.compute_rate.set(per_sec(*bytes, *compute_micros));
                        }
                        for (to, path, len, stream) in targets {
                            self.expelled.with_label_values(&[path]).inc_by(len);
                            self.link_bytes.with_label_values(&[&to, path]).inc_by(len);
                            // The link's own busy time for its piece when the producer reports
                            // it, else the whole task's time.
                            let r = match pieces.iter().find(|p| p.stream.0 == stream) {
                                Some(p) if p.micros > 0 => per_sec(p.bytes, p.micros),
                                _ => rate(len),
                            };
                            self.link_rate.with_label_values(&[&to, path]).set(r);
                        }
                        "expel"
                    }
                };
                self.tasks.with_label_values(&[k, "done"]).inc();
            }
            Message::TaskFailed { task, .. } => {
                let expel = {
                    let mut st = self.lock();
                    st.computed.remove(&task.0);
                    st.expels.remove(&task.0).is_some()
                };
                let k = if expel { "expel" } else { "compute" };
                self.tasks.with_label_values(&[k, "failed"]).inc();
            }
            _ => {}
        }
    }

    /// A sample of the consumer's stream table.
    pub fn streams(&self, now: &[StreamState]) {
        let mut st = self.lock();
        let live: HashSet<(u64, u32)> = now.iter().map(|s| (s.job, s.stream)).collect();
        let gone: Vec<(u64, u32)> = st
            .seen
            .keys()
            .filter(|k| !live.contains(k))
            .copied()
            .collect();
        for k in gone {
            st.seen.remove(&k);
            st.capacities.remove(&k);
            let (j, s) = (k.0.to_string(), k.1.to_string());
            let l = [j.as_str(), s.as_str()];
            for c in [&self.landed, &self.released, &self.starvations] {
                let _ = c.remove_label_values(&l);
            }
            for g in [&self.fill, &self.capacity] {
                let _ = g.remove_label_values(&l);
            }
        }
        self.streams.set(now.len() as i64);
        for s in now {
            let key = (s.job, s.stream);
            let (j, n) = (s.job.to_string(), s.stream.to_string());
            let l = [j.as_str(), n.as_str()];
            let prev = st.seen.get(&key).copied().unwrap_or_default();
            self.landed
                .with_label_values(&l)
                .inc_by(s.frontier.saturating_sub(prev.frontier));
            self.released
                .with_label_values(&l)
                .inc_by(s.read_pos.saturating_sub(prev.read_pos));
            self.fill
                .with_label_values(&l)
                .set(s.frontier.saturating_sub(s.read_pos) as i64);
            if let Some(c) = st.capacities.get(&key) {
                self.capacity.with_label_values(&l).set(*c as i64);
            }
            // Waiting for the first byte (the job starting) is not starvation.
            let starving = matches!(s.reader, ReaderStatus::Attached)
                && s.frontier > 0
                && s.read_pos == s.frontier
                && s.frontier < s.total
                && !s.closed;
            if starving && !prev.starving {
                self.starvations.with_label_values(&l).inc();
            } else {
                // The series exists from the stream's first sample on.
                self.starvations.with_label_values(&l);
            }
            st.seen.insert(
                key,
                Seen {
                    frontier: s.frontier.max(prev.frontier),
                    read_pos: s.read_pos.max(prev.read_pos),
                    starving,
                },
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use spate_netlib::proto::{ExpelTarget, JobId, PieceTime, StreamIndex, TaskId};

    fn encode(m: &NodeMetrics) -> String {
        let r = Registry::new_custom(
            Some("spate".into()),
            Some(
                [("node".to_string(), "n1".to_string())]
                    .into_iter()
                    .collect(),
            ),
        )
        .unwrap();
        m.register(&r).unwrap();
        prometheus::TextEncoder::new()
            .encode_to_string(&r.gather())
            .unwrap()
    }

    /// The sample line with its labels sorted (label order is not part of the format).
    fn norm(line: &str) -> String {
        match (line.find('{'), line.find('}')) {
            (Some(a), Some(b)) if a < b => {
                let mut labels: Vec<&str> = line[a + 1..b].split(',').collect();
                labels.sort_unstable();
                format!("{}{{{}}}{}", &line[..a], labels.join(","), &line[b + 1..])
            }
            _ => line.to_string(),
        }
    }

    fn has(s: &str, line: &str) {
        let want = norm(line);
        assert!(
            s.lines().any(|l| norm(l) == want),
            "missing {line:?} in\n{s}"
        );
    }

    #[test]
    fn streams_count_landed_released_fill_and_starvations() {
        let m = &NodeMetrics::default();
        m.incoming(&Message::AllocStream {
            job: JobId(3),
            stream: StreamIndex(0),
            capacity: 1 << 20,
            total_len: 1000,
            rate_bps: None,
            prefill: 0,
        });
        let st = |frontier, read_pos, reader| StreamState {
            job: 3,
            stream: 0,
            frontier,
            read_pos,
            total: 1000,
            reader,
            closed: false,
        };
        m.streams(&[st(0, 0, ReaderStatus::NotAttached)]);
        m.streams(&[st(0, 0, ReaderStatus::Attached)]); // waiting for the first byte
        m.streams(&[st(400, 100, ReaderStatus::Attached)]);
        m.streams(&[st(400, 400, ReaderStatus::Attached)]); // starving
        m.streams(&[st(400, 400, ReaderStatus::Attached)]); // still the same starvation
        m.streams(&[st(900, 500, ReaderStatus::Attached)]);
        m.streams(&[st(900, 900, ReaderStatus::Attached)]); // a second one
        let s = encode(m);
        has(
            &s,
            "spate_stream_landed_bytes_total{job=\"3\",node=\"n1\",stream=\"0\"} 900",
        );
        has(
            &s,
            "spate_stream_released_bytes_total{job=\"3\",node=\"n1\",stream=\"0\"} 900",
        );
        has(
            &s,
            "spate_stream_ring_fill_bytes{job=\"3\",node=\"n1\",stream=\"0\"} 0",
        );
        has(
            &s,
            "spate_stream_ring_capacity_bytes{job=\"3\",node=\"n1\",stream=\"0\"} 1048576",
        );
        has(
            &s,
            "spate_stream_starvations_total{job=\"3\",node=\"n1\",stream=\"0\"} 2",
        );
        has(&s, "spate_consumer_streams{node=\"n1\"} 1");
        m.streams(&[]);
        let s = encode(m);
        assert!(!s.contains("job=\"3\""), "{s}");
        has(&s, "spate_consumer_streams{node=\"n1\"} 0");
    }

    #[test]
    fn tasks_count_bytes_per_path_and_link() {
        let m = &NodeMetrics::default();
        let target = |consumer: &str, endpoint, len| ExpelTarget {
            stream: StreamIndex(if consumer == "c2" { 1 } else { 0 }),
            consumer: consumer.into(),
            endpoint,
            source: None,
            chunk_offset: 0,
            stream_offset: 0,
            len,
        };
        m.incoming(&Message::Expel {
            task: TaskId(7),
            job: JobId(1),
            chunk: spate_netlib::proto::ChunkIndex(0),
            targets: vec![
                target("c1", DataEndpoint::Unix { path: "/x".into() }, 300),
                target(
                    "c2",
                    DataEndpoint::Tcp {
                        addr: "10.0.0.2:7000".parse().unwrap(),
                        interface: None,
                    },
                    700,
                ),
            ],
        });
        m.outgoing(&Message::TaskDone {
            task: TaskId(6),
            job: JobId(1),
            kind: TaskKind::Compute,
            bytes: 1000,
            micros: 500,
            compute_micros: 500,
            cpu_micros: 0,
            pieces: vec![],
        });
        m.outgoing(&Message::TaskDone {
            task: TaskId(7),
            job: JobId(1),
            kind: TaskKind::Expel,
            bytes: 1000,
            micros: 1000,
            compute_micros: 250,
            cpu_micros: 0,
            // The tcp piece's link was busy 100 us; the unix one reports no time.
            pieces: vec![PieceTime {
                stream: StreamIndex(1),
                bytes: 700,
                micros: 100,
            }],
        });
        m.outgoing(&Message::TaskFailed {
            task: TaskId(8),
            job: JobId(1),
            reason: "x".into(),
            retryable: true,
        });
        let s = encode(m);
        // Task 6's compute was reported (1000), task 7's only with its expel (1000 more).
        has(&s, "spate_producer_computed_bytes_total{node=\"n1\"} 2000");
        has(
            &s,
            "spate_producer_task_rate_bytes_per_second{node=\"n1\"} 1000000",
        );
        has(
            &s,
            "spate_producer_compute_rate_bytes_per_second{node=\"n1\"} 4000000",
        );
        has(
            &s,
            "spate_producer_expelled_bytes_total{node=\"n1\",path=\"unix\"} 300",
        );
        has(
            &s,
            "spate_producer_expelled_bytes_total{node=\"n1\",path=\"tcp\"} 700",
        );
        has(
            &s,
            "spate_link_sent_bytes_total{node=\"n1\",path=\"tcp\",to=\"c2\"} 700",
        );
        has(
            &s,
            "spate_link_rate_bytes_per_second{node=\"n1\",path=\"unix\",to=\"c1\"} 300000",
        );
        has(
            &s,
            "spate_link_rate_bytes_per_second{node=\"n1\",path=\"tcp\",to=\"c2\"} 7000000",
        );
        has(
            &s,
            "spate_producer_tasks_total{kind=\"expel\",node=\"n1\",outcome=\"done\"} 1",
        );
        has(
            &s,
            "spate_producer_tasks_total{kind=\"compute\",node=\"n1\",outcome=\"failed\"} 1",
        );
        // Task 6 reported its compute alone, task 7 with its expel: two computes done.
        has(
            &s,
            "spate_producer_tasks_total{kind=\"compute\",node=\"n1\",outcome=\"done\"} 2",
        );
    }
}
