//! Synthetic clusters that drive the scheduler's decision core and its hub in-process: every
//! command is answered at once by a model of the daemons and users (consumers allocate,
//! producers preload and finish their tasks in the order they got them, users say Ready and
//! Done), so what is timed is the scheduler's own work per event.

use std::collections::{BTreeMap, VecDeque};
use std::time::Instant;

use hdrhistogram::Histogram;
use spate_netlib::auth::Role;
use spate_netlib::proto::{self, Message};
use spate_scheduler::core::{
    ClientId, Command, Event, Interface, JobEnd, NodeId, NodeInfo, Reply, Roles, Scheduler,
    Submission, TaskReport,
};
use spate_scheduler::policy::{LoadBalance, LoadBalanceConfig, Policy, Tclo, TcloConfig};
use spate_scheduler::server::Hub;
use spate_scheduler::spec::JobPlan;

/// The synthetic cluster and workload.
#[derive(Debug, Clone)]
pub struct Synthetic {
    /// Producer nodes.
    pub producers: usize,
    /// Consumer nodes.
    pub consumers: usize,
    /// Jobs kept running at once (a job that ends is replaced by a new one).
    pub jobs: usize,
    /// Lines per channel of every job (4 channels of 4 KiB lines).
    pub lines: u64,
    /// Lines per chunk.
    pub chunk_lines: u64,
    /// Policy of every job: "load-balance" or "tclo".
    pub policy: String,
    /// Events to handle before stopping.
    pub events: u64,
}

/// Channels of every synthetic job (one stream each, on consumers in turn).
pub const CHANNELS: usize = 4;
/// Line length of every synthetic job.
pub const LINE_BYTES: u64 = 4096;
/// The synthetic clock moves 1 ms per this many events (and whenever nothing is left to do).
const EVENTS_PER_MS: u64 = 1000;

impl Synthetic {
    /// Job `k`'s spec: 4 channels of `lines` lines, streams on consumers `4k .. 4k+3` (mod C).
    pub fn spec(&self, k: usize) -> String {
        let mut s = format!(
            "name = \"b{k}\"\nkernel = \"null\"\nchannels = {CHANNELS}\nlines = {}\n\
             line_bytes = \"4KiB\"\nchunk = {{ lines = {} }}\npolicy = \"{}\"\n",
            self.lines, self.chunk_lines, self.policy
        );
        for ch in 0..CHANNELS {
            let c = (k * CHANNELS + ch) % self.consumers.max(1);
            s.push_str(&format!("[[stream]]\nnode = \"c{c}\"\n"));
        }
        s
    }

    /// Chunks of one job.
    pub fn chunks_per_job(&self) -> u64 {
        self.lines.div_ceil(self.chunk_lines.max(1))
    }
}

/// The policies a scheduler gets here (as the server offers them), with `name` the default.
pub fn scheduler(name: &str) -> anyhow::Result<Scheduler> {
    let all: Vec<Box<dyn Policy>> = vec![
        Box::new(Tclo::new(TcloConfig::default())),
        Box::new(LoadBalance::new(LoadBalanceConfig::default())),
    ];
    let Some(i) = all.iter().position(|p| p.name() == name) else {
        anyhow::bail!("unknown policy {name:?}: use \"load-balance\" or \"tclo\"");
    };
    Ok(Scheduler::with_policies(all, i))
}

/// A synthetic node as the core sees it: 4 cores at 1 GB/s, a 10 Gbit/s NIC, one interface.
pub fn core_node(name: &str, i: usize, producer: bool, consumer: bool) -> NodeInfo {
    NodeInfo {
        name: name.to_string(),
        host: format!("h-{name}"),
        roles: Roles { producer, consumer },
        cores: 4,
        capacity: 0,
        interfaces: vec![Interface {
            name: "eth0".into(),
            addr: format!("10.{}.{}.{}:9000", i >> 16 & 255, i >> 8 & 255, i & 255),
        }],
        compute_bps: 1_000_000_000,
        nic_bps: 1_250_000_000,
        ports: 0,
    }
}

/// What a driven run measured.
#[derive(Debug, Clone, Default)]
pub struct Figures {
    /// Events handled (core) or messages handed in (hub).
    pub events: u64,
    /// Commands (core) or messages sent (hub).
    pub out: u64,
    /// Seconds spent inside the scheduler (core.handle / hub calls), not in the model.
    pub busy_s: f64,
    /// Jobs that completed.
    pub jobs_completed: u64,
    /// Tasks finished (answered with TaskDone).
    pub tasks: u64,
    /// Jobs refused.
    pub refused: u64,
    /// Time of one event inside the scheduler, in nanoseconds.
    pub per_event_ns: Option<Histogram<u64>>,
}

impl Figures {
    /// Jobs' worth of work done: tasks finished over chunks per job (a short run ends with
    /// jobs half done, so completed jobs alone would overstate the cost per job).
    pub fn job_equivalents(&self, chunks_per_job: u64) -> f64 {
        self.tasks as f64 / chunks_per_job.max(1) as f64
    }

    /// Events per second of scheduler time.
    pub fn events_per_s(&self) -> f64 {
        if self.busy_s > 0.0 {
            self.events as f64 / self.busy_s
        } else {
            0.0
        }
    }
}

fn ns_hist() -> Histogram<u64> {
    // 1 ns .. 10 s, 3 significant digits: bounds are constants, so this cannot fail.
    Histogram::new_with_bounds(1, 10_000_000_000, 3).expect("valid histogram bounds")
}

fn record(h: &mut Histogram<u64>, t0: Instant) -> f64 {
    let d = t0.elapsed();
    h.saturating_record(d.as_nanos().max(1) as u64);
    d.as_secs_f64()
}

/// Drives the pure core: `cfg.jobs` jobs at once, each replaced when it ends, until
/// `cfg.events` events were handled.
pub fn run_core(cfg: &Synthetic) -> anyhow::Result<Figures> {
    let mut s = scheduler(&cfg.policy)?;
    let mut f = Figures {
        per_event_ns: Some(ns_hist()),
        ..Figures::default()
    };
    let mut h = ns_hist();
    let mut now = 0u64;
    let mut q: VecDeque<Event> = VecDeque::new();
    for i in 0..cfg.producers {
        q.push_back(Event::NodeJoined {
            node: NodeId(i as u64 + 1),
            info: core_node(&format!("p{i}"), i, true, false),
        });
    }
    for i in 0..cfg.consumers {
        q.push_back(Event::NodeJoined {
            node: NodeId((cfg.producers + i) as u64 + 1),
            info: core_node(&format!("c{i}"), cfg.producers + i, false, true),
        });
    }
    let mut plans: BTreeMap<usize, JobPlan> = BTreeMap::new();
    let mut plan_for = |k: usize| -> anyhow::Result<JobPlan> {
        let rot = (k * CHANNELS) % cfg.consumers.max(1);
        if let std::collections::btree_map::Entry::Vacant(e) = plans.entry(rot) {
            e.insert(JobPlan::parse(&cfg.spec(k)).map_err(anyhow::Error::msg)?);
        }
        Ok(plans[&rot].clone())
    };
    let mut submitted = 0usize;
    for _ in 0..cfg.jobs {
        q.push_back(Event::Submit {
            client: ClientId(submitted as u64 + 1),
            spec: Submission::Plan(Box::new(plan_for(submitted)?)),
        });
        submitted += 1;
    }
    let mut live = 0usize;
    while f.events < cfg.events {
        let ev = match q.pop_front() {
            Some(e) => e,
            None if live == 0 && f.events > 0 => break,
            None => {
                now += 1;
                Event::Tick
            }
        };
        let t0 = Instant::now();
        let cmds = s.handle(now, ev);
        f.busy_s += record(&mut h, t0);
        f.events += 1;
        f.out += cmds.len() as u64;
        if f.events.is_multiple_of(EVENTS_PER_MS) {
            now += 1;
        }
        for c in cmds {
            match c {
                Command::AllocStream {
                    node, job, stream, ..
                } => q.push_back(Event::StreamAllocated {
                    node,
                    job,
                    stream,
                    key: job.0 << 8 | u64::from(stream),
                }),
                Command::Reply {
                    client,
                    reply: Reply::Accepted { job, .. },
                } => {
                    live += 1;
                    q.push_back(Event::Ready { client, job });
                }
                Command::Reply {
                    reply: Reply::Refused(_),
                    ..
                } => f.refused += 1,
                Command::Preload { node, job } => q.push_back(Event::PreloadDone { node, job }),
                Command::Compute {
                    node, task, chunk, ..
                } => {
                    let bytes: u64 = chunk.pieces.iter().map(|p| p.len).sum();
                    q.push_back(Event::TaskTimes {
                        node,
                        task,
                        report: TaskReport {
                            compute_us: bytes / 1000 + 1,
                            cpu_us: 0,
                            bytes,
                            pieces: chunk
                                .pieces
                                .iter()
                                .map(|p| (p.stream, p.len, p.len / 1250 + 1))
                                .collect(),
                        },
                    });
                    q.push_back(Event::TaskDone { node, task });
                    f.tasks += 1;
                }
                Command::Delivered { client, job } => q.push_back(Event::Done { client, job }),
                Command::JobEnded { end, .. } => {
                    live = live.saturating_sub(1);
                    if end == JobEnd::Completed {
                        f.jobs_completed += 1;
                    }
                    q.push_back(Event::Submit {
                        client: ClientId(submitted as u64 + 1),
                        spec: Submission::Plan(Box::new(plan_for(submitted)?)),
                    });
                    submitted += 1;
                }
                _ => {}
            }
        }
    }
    f.per_event_ns = Some(h);
    Ok(f)
}

/// Resident memory of this process in bytes (from `/proc/self/statm`), if readable.
pub fn rss_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = text.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// Memory the core holds per live job: resident memory grown while `n` jobs are admitted,
/// started and given their first tasks, over `n` (None when /proc is not readable), and the
/// scheduler that holds them. Memory freed earlier in the process is reused without growing
/// the resident set, so callers measure first and keep every scheduler until all are
/// measured.
pub fn core_memory_per_job(cfg: &Synthetic, n: usize) -> anyhow::Result<(Option<f64>, Scheduler)> {
    let mut s = scheduler(&cfg.policy)?;
    for i in 0..cfg.producers {
        s.handle(
            0,
            Event::NodeJoined {
                node: NodeId(i as u64 + 1),
                info: core_node(&format!("p{i}"), i, true, false),
            },
        );
    }
    for i in 0..cfg.consumers {
        s.handle(
            0,
            Event::NodeJoined {
                node: NodeId((cfg.producers + i) as u64 + 1),
                info: core_node(&format!("c{i}"), cfg.producers + i, false, true),
            },
        );
    }
    let plans: Vec<JobPlan> = (0..cfg.consumers.max(1))
        .map(|k| JobPlan::parse(&cfg.spec(k)).map_err(anyhow::Error::msg))
        .collect::<anyhow::Result<_>>()?;
    let Some(before) = rss_bytes() else {
        return Ok((None, s));
    };
    let mut q: VecDeque<Event> = (0..n)
        .map(|k| Event::Submit {
            client: ClientId(k as u64 + 1),
            spec: Submission::Plan(Box::new(plans[k % plans.len()].clone())),
        })
        .collect();
    // Jobs admitted and running, tasks handed out; none finishes.
    while let Some(ev) = q.pop_front() {
        for c in s.handle(0, ev) {
            match c {
                Command::AllocStream {
                    node, job, stream, ..
                } => q.push_back(Event::StreamAllocated {
                    node,
                    job,
                    stream,
                    key: 1,
                }),
                Command::Reply {
                    client,
                    reply: Reply::Accepted { job, .. },
                } => q.push_back(Event::Ready { client, job }),
                Command::Preload { node, job } => q.push_back(Event::PreloadDone { node, job }),
                _ => {}
            }
        }
    }
    let after = rss_bytes().unwrap_or(before);
    let live = s.jobs().len().max(1);
    Ok((Some(after.saturating_sub(before) as f64 / live as f64), s))
}

/// A synthetic node as a daemon announces it on the wire.
pub fn wire_node(name: &str, i: usize, producer: bool, consumer: bool) -> proto::NodeInfo {
    let ip = std::net::Ipv4Addr::new(10, (i >> 16 & 255) as u8, (i >> 8 & 255) as u8, i as u8);
    proto::NodeInfo {
        name: name.to_string(),
        host: proto::HostId(i as u128 + 1),
        roles: proto::NodeRoles { producer, consumer },
        cores: 4,
        interfaces: vec![proto::Interface {
            name: "eth0".into(),
            addr: ip.into(),
        }],
        compute: proto::ComputeCapacity {
            cores: 4,
            bytes_per_sec: 1_000_000_000,
        },
        ring_budget: 0,
        data_endpoints: if consumer {
            vec![proto::DataEndpoint::Tcp {
                addr: std::net::SocketAddr::new(ip.into(), 9000),
                interface: Some("eth0".into()),
            }]
        } else {
            vec![]
        },
        handoff_socket: consumer.then(|| format!("/tmp/{name}.handoff").into()),
        nic_bytes_per_sec: 1_250_000_000,
        ports: 0,
        hugepages: Default::default(),
    }
}

/// Drives the hub (the server's translation layer, with the core inside) with the messages
/// daemons and one user would send, until `cfg.events` messages were handed in.
pub fn run_hub(cfg: &Synthetic) -> anyhow::Result<Figures> {
    let mut hub = Hub::new(scheduler(&cfg.policy)?, None, 1000);
    let mut f = Figures::default();
    let mut h = ns_hist();
    let user = (cfg.producers + cfg.consumers + 1) as u64;
    let mut now = 0u64;
    let mut q: VecDeque<(u64, Message)> = VecDeque::new();
    for i in 0..cfg.producers + cfg.consumers {
        let conn = i as u64 + 1;
        hub.connected(0, conn, Role::Daemon);
        let info = if i < cfg.producers {
            wire_node(&format!("p{i}"), i, true, false)
        } else {
            wire_node(&format!("c{}", i - cfg.producers), i, false, true)
        };
        q.push_back((conn, Message::Join(info)));
    }
    hub.connected(0, user, Role::User);
    let mut submitted = 0usize;
    for _ in 0..cfg.jobs {
        q.push_back((
            user,
            Message::Submit {
                spec_toml: cfg.spec(submitted),
                inputs: vec![],
            },
        ));
        submitted += 1;
    }
    let mut live = 0usize;
    let mut last_tick = 0u64;
    while f.events < cfg.events {
        let t0 = Instant::now();
        match q.pop_front() {
            Some((conn, msg)) => {
                hub.at_micros(now * 1000);
                hub.message(now, conn, msg);
                f.events += 1;
            }
            None if live == 0 && f.events > 0 => break,
            None => {
                now += 1;
                hub.tick(now);
                last_tick = now;
            }
        }
        if now > last_tick {
            hub.tick(now);
            last_tick = now;
        }
        let actions = hub.take_actions();
        f.busy_s += record(&mut h, t0);
        if f.events.is_multiple_of(EVENTS_PER_MS) {
            now += 1;
        }
        for a in actions {
            let spate_scheduler::server::Action::Send(conn, msg) = a else {
                continue;
            };
            f.out += 1;
            match msg {
                Message::AllocStream { job, stream, .. } => q.push_back((
                    conn,
                    Message::Allocated {
                        job,
                        stream,
                        key: proto::StreamKey(u128::from(job.0) << 32 | u128::from(stream.0)),
                        handoff: "/tmp/handoff".into(),
                        backing: proto::RingBacking::Plain,
                    },
                )),
                Message::Accepted { job, .. } => {
                    live += 1;
                    q.push_back((conn, Message::Ready { job }));
                }
                Message::Refused { .. } => f.refused += 1,
                Message::Preload { job, .. } => q.push_back((conn, Message::Preloaded { job })),
                Message::Expel {
                    task, job, targets, ..
                } => {
                    f.tasks += 1;
                    let bytes: u64 = targets.iter().map(|t| t.len).sum();
                    q.push_back((
                        conn,
                        Message::TaskDone {
                            task,
                            job,
                            kind: proto::TaskKind::Expel,
                            bytes,
                            micros: bytes / 1000 + 1,
                            compute_micros: bytes / 1000 + 1,
                            cpu_micros: 0,
                            pieces: targets
                                .iter()
                                .map(|t| proto::PieceTime {
                                    stream: t.stream,
                                    bytes: t.len,
                                    micros: t.len / 1250 + 1,
                                })
                                .collect(),
                        },
                    ));
                }
                Message::JobUpdate(st) if st.state == proto::JobState::Delivered => {
                    q.push_back((conn, Message::Done { job: st.job }));
                }
                Message::JobEnded { outcome, .. } => {
                    live = live.saturating_sub(1);
                    if outcome == proto::JobOutcome::Completed {
                        f.jobs_completed += 1;
                    }
                    q.push_back((
                        user,
                        Message::Submit {
                            spec_toml: cfg.spec(submitted),
                            inputs: vec![],
                        },
                    ));
                    submitted += 1;
                }
                _ => {}
            }
        }
    }
    f.per_event_ns = Some(h);
    Ok(f)
}
