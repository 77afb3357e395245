//! The scheduler's Prometheus metrics (`spate scheduler --metrics ADDR`): jobs by state, nodes
//! by role, admission latency (Submit received → Accepted or Refused sent), events handled,
//! queue depths. The event loop updates them; an HTTP thread outside this crate encodes the
//! [`Registry`] they are registered in. Every metric is atomic: updating one takes no lock
//! the HTTP thread could hold for long.

use std::collections::{BTreeMap, VecDeque};
use std::time::Instant;

use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    exponential_buckets,
};
use spate_netlib::proto::{JobOutcome, JobState, Message};

use super::hub::ConnId;

/// The scheduler's metrics. Cheap to clone (the metrics are shared).
#[derive(Clone, Debug)]
pub struct SchedulerMetrics {
    jobs: IntGaugeVec,
    nodes: IntGaugeVec,
    admissions: IntCounterVec,
    ended: IntCounterVec,
    admission_latency: Histogram,
    messages: IntCounterVec,
    connections: IntGauge,
    send_queue: IntGauge,
    tasks_in_flight: IntGauge,
    delivered_bytes: IntCounter,
}

/// Metric names and help are constants: building them cannot fail.
fn ok<T>(r: prometheus::Result<T>) -> T {
    r.unwrap_or_else(|e| unreachable!("metric definition: {e}"))
}

impl Default for SchedulerMetrics {
    fn default() -> Self {
        let opts = |name: &str, help: &str| Opts::new(name, help).subsystem("scheduler");
        SchedulerMetrics {
            jobs: ok(IntGaugeVec::new(
                opts("jobs", "Live jobs by state"),
                &["state"],
            )),
            nodes: ok(IntGaugeVec::new(
                opts("nodes", "Joined daemons by role"),
                &["role"],
            )),
            admissions: ok(IntCounterVec::new(
                opts(
                    "admissions_total",
                    "Submissions answered, by outcome (accepted or refused)",
                ),
                &["outcome"],
            )),
            ended: ok(IntCounterVec::new(
                opts(
                    "jobs_ended_total",
                    "Jobs ended, by outcome (completed, aborted, cancelled)",
                ),
                &["outcome"],
            )),
            admission_latency: ok(Histogram::with_opts(
                HistogramOpts::new(
                    "admission_latency_seconds",
                    "Time from a Submit received to its Accepted or Refused sent",
                )
                .subsystem("scheduler")
                // 50 us .. ~6.6 s.
                .buckets(ok(exponential_buckets(0.000_05, 2.0, 18))),
            )),
            messages: ok(IntCounterVec::new(
                opts("events_total", "Messages handled by the scheduler, by kind"),
                &["kind"],
            )),
            connections: ok(IntGauge::with_opts(opts(
                "connections",
                "Open connections (daemons, users, not yet authenticated)",
            ))),
            send_queue: ok(IntGauge::with_opts(opts(
                "send_queue_bytes",
                "Bytes queued to peers and not yet sent",
            ))),
            tasks_in_flight: ok(IntGauge::with_opts(opts(
                "tasks_in_flight",
                "Compute+expel tasks handed to producers and not finished",
            ))),
            delivered_bytes: ok(IntCounter::with_opts(opts(
                "delivered_bytes_total",
                "Bytes of ended jobs delivered in order at the consumers",
            ))),
        }
    }
}

/// The state names `spate status` prints.
const STATES: [&str; 5] = [
    "allocating",
    "waiting-ready",
    "preloading",
    "running",
    "delivered",
];

fn state_label(s: &JobState) -> Option<&'static str> {
    Some(match s {
        JobState::Allocating => STATES[0],
        JobState::WaitingReady => STATES[1],
        JobState::Preloading => STATES[2],
        JobState::Running => STATES[3],
        JobState::Delivered => STATES[4],
        JobState::Ended(_) => return None,
    })
}

impl SchedulerMetrics {
    /// Registers every metric in `r` (whose namespace should be `spate`).
    pub fn register(&self, r: &Registry) -> prometheus::Result<()> {
        r.register(Box::new(self.jobs.clone()))?;
        r.register(Box::new(self.nodes.clone()))?;
        r.register(Box::new(self.admissions.clone()))?;
        r.register(Box::new(self.ended.clone()))?;
        r.register(Box::new(self.admission_latency.clone()))?;
        r.register(Box::new(self.messages.clone()))?;
        r.register(Box::new(self.connections.clone()))?;
        r.register(Box::new(self.send_queue.clone()))?;
        r.register(Box::new(self.tasks_in_flight.clone()))?;
        r.register(Box::new(self.delivered_bytes.clone()))?;
        // Zero series for the outcomes, so that rates exist before the first event.
        for o in ["accepted", "refused"] {
            self.admissions.with_label_values(&[o]);
        }
        for o in ["completed", "aborted", "cancelled"] {
            self.ended.with_label_values(&[o]);
        }
        Ok(())
    }

    /// A message of this kind was handled.
    pub fn message(&self, msg: &Message) {
        self.messages.with_label_values(&[msg.name()]).inc();
    }

    /// Refreshes the gauges from a status snapshot (a [`Message::StatusReply`]).
    pub fn refresh(&self, status: &Message, connections: usize, send_queue: usize) {
        self.connections.set(connections as i64);
        self.send_queue.set(send_queue as i64);
        let Message::StatusReply { jobs, nodes, .. } = status else {
            return;
        };
        let mut by_state: BTreeMap<&str, i64> = STATES.iter().map(|s| (*s, 0)).collect();
        for j in jobs {
            if let Some(s) = state_label(&j.state) {
                *by_state.entry(s).or_default() += 1;
            }
        }
        for (state, n) in by_state {
            self.jobs.with_label_values(&[state]).set(n);
        }
        let (mut p, mut c, mut tasks) = (0, 0, 0);
        for n in nodes {
            p += i64::from(n.roles.producer);
            c += i64::from(n.roles.consumer);
            tasks += i64::from(n.tasks_in_flight);
        }
        self.nodes.with_label_values(&["producer"]).set(p);
        self.nodes.with_label_values(&["consumer"]).set(c);
        self.tasks_in_flight.set(tasks);
    }

    /// A submission was answered after `seconds`.
    pub fn admitted(&self, accepted: bool, seconds: f64) {
        let outcome = if accepted { "accepted" } else { "refused" };
        self.admissions.with_label_values(&[outcome]).inc();
        self.admission_latency.observe(seconds);
    }

    /// A job ended with this outcome, having delivered `bytes`.
    pub fn ended(&self, outcome: &JobOutcome, bytes: u64) {
        let outcome = match outcome {
            JobOutcome::Completed => "completed",
            JobOutcome::Aborted { .. } => "aborted",
            JobOutcome::Cancelled => "cancelled",
        };
        self.ended.with_label_values(&[outcome]).inc();
        self.delivered_bytes.inc_by(bytes);
    }
}

/// Submissions waiting for their answer, per user connection (answers come in order).
#[derive(Debug, Default)]
pub struct Admissions {
    pending: BTreeMap<ConnId, VecDeque<Instant>>,
}

impl Admissions {
    /// A Submit arrived on `conn`.
    pub fn submitted(&mut self, conn: ConnId, at: Instant) {
        self.pending.entry(conn).or_default().push_back(at);
    }

    /// A message is being sent to `conn`: the time since the oldest Submit for an answer to
    /// one (Accepted or Refused), and whether it was accepted.
    pub fn answered(&mut self, conn: ConnId, msg: &Message, at: Instant) -> Option<(bool, f64)> {
        let accepted = match msg {
            Message::Accepted { .. } => true,
            Message::Refused { .. } => false,
            _ => return None,
        };
        let q = self.pending.get_mut(&conn)?;
        let t = q.pop_front()?;
        if q.is_empty() {
            self.pending.remove(&conn);
        }
        Some((accepted, at.saturating_duration_since(t).as_secs_f64()))
    }

    /// A connection closed.
    pub fn closed(&mut self, conn: ConnId) {
        self.pending.remove(&conn);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use spate_netlib::proto::{JobId, JobStatus, NodeRoles, NodeState, NodeStatus, Progress};
    use std::time::Duration;

    fn text(m: &SchedulerMetrics) -> String {
        let r = Registry::new_custom(Some("spate".into()), None).unwrap();
        m.register(&r).unwrap();
        prometheus::TextEncoder::new()
            .encode_to_string(&r.gather())
            .unwrap()
    }

    #[test]
    fn gauges_follow_the_status_and_admissions_are_timed_in_order() {
        let m = SchedulerMetrics::default();
        let job = |id, state| JobStatus {
            job: JobId(id),
            name: String::new(),
            state,
            progress: Progress::default(),
            ..JobStatus::default()
        };
        let node = |p, c, tasks| NodeStatus {
            name: "n".into(),
            roles: NodeRoles {
                producer: p,
                consumer: c,
            },
            state: NodeState::Alive,
            tasks_in_flight: tasks,
            streams: 0,
            ..NodeStatus::default()
        };
        let status = Message::StatusReply {
            jobs: vec![
                job(1, JobState::Running),
                job(2, JobState::Running),
                job(3, JobState::WaitingReady),
            ],
            nodes: vec![node(true, false, 3), node(true, true, 2)],
            ended: vec![],
        };
        m.refresh(&status, 4, 100);
        let t0 = Instant::now();
        let mut a = Admissions::default();
        a.submitted(7, t0);
        a.submitted(7, t0 + Duration::from_millis(1));
        let accepted = Message::Accepted {
            job: JobId(1),
            streams: vec![],
            plan: Default::default(),
        };
        assert_eq!(a.answered(7, &Message::Heartbeat, t0), None);
        let (ok, secs) = a
            .answered(7, &accepted, t0 + Duration::from_millis(3))
            .unwrap();
        assert!(ok);
        assert!((secs - 0.003).abs() < 1e-9, "{secs}");
        m.admitted(ok, secs);
        m.message(&Message::Heartbeat);
        m.ended(&JobOutcome::Completed, 4096);
        let s = text(&m);
        for line in [
            "spate_scheduler_jobs{state=\"running\"} 2",
            "spate_scheduler_jobs{state=\"waiting-ready\"} 1",
            "spate_scheduler_jobs{state=\"delivered\"} 0",
            "spate_scheduler_nodes{role=\"producer\"} 2",
            "spate_scheduler_nodes{role=\"consumer\"} 1",
            "spate_scheduler_tasks_in_flight 5",
            "spate_scheduler_connections 4",
            "spate_scheduler_send_queue_bytes 100",
            "spate_scheduler_admissions_total{outcome=\"accepted\"} 1",
            "spate_scheduler_admission_latency_seconds_count 1",
            "spate_scheduler_events_total{kind=\"Heartbeat\"} 1",
            "spate_scheduler_jobs_ended_total{outcome=\"completed\"} 1",
            "spate_scheduler_delivered_bytes_total 4096",
        ] {
            assert!(s.lines().any(|l| l == line), "missing {line:?} in\n{s}");
        }
    }
}
