//! Submit → accepted through the real scheduler server: its io_uring loop on a UNIX socket in
//! a thread of this process, every peer authenticated with a fresh cluster secret; consumer
//! daemons (threads) allocate every stream at once; one user connection keeps `in_flight`
//! submissions outstanding.

use std::collections::BTreeMap;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use hdrhistogram::Histogram;
use spate_netlib::auth::{Role, Secret};
use spate_netlib::endpoint::Endpoint;
use spate_netlib::msg::MsgConn;
use spate_netlib::proto::{self, Message};
use spate_scheduler::server::{Server, ServerConfig, StopHandle};

use super::drive::{Synthetic, wire_node};

/// Longest the whole measurement may take.
const DEADLINE: Duration = Duration::from_secs(120);

/// What the submit run measured.
#[derive(Debug, Clone)]
pub struct SubmitFigures {
    /// Jobs submitted.
    pub submitted: u64,
    /// Jobs accepted.
    pub accepted: u64,
    /// Submit sent → Accepted received, microseconds.
    pub latency_us: Histogram<u64>,
    /// Seconds from the first submit to the last answer.
    pub secs: f64,
}

struct Running {
    dir: PathBuf,
    stop: StopHandle,
    thread: Option<JoinHandle<anyhow::Result<()>>>,
    daemons: Vec<JoinHandle<()>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        for d in self.daemons.drain(..) {
            let _ = d.join();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A consumer that allocates every stream it is asked for until the connection ends.
fn consumer(mut c: MsgConn<UnixStream>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        while let Ok(m) = c.recv() {
            match m {
                Message::AllocStream { job, stream, .. } => {
                    let reply = Message::Allocated {
                        job,
                        stream,
                        key: proto::StreamKey(u128::from(job.0) << 32 | u128::from(stream.0)),
                        handoff: "/tmp/handoff".into(),
                        backing: proto::RingBacking::Plain,
                    };
                    if c.send(&reply).is_err() {
                        return;
                    }
                }
                Message::Heartbeat if c.send(&Message::Heartbeat).is_err() => return,
                Message::Shutdown { .. } => return,
                _ => {}
            }
        }
    })
}

/// Runs the server with `cfg`'s nodes (producers only join; consumers allocate) and submits
/// `jobs` jobs from one user, at most `in_flight` unanswered at a time.
pub fn submit_latency(cfg: &Synthetic, jobs: u64, in_flight: u64) -> anyhow::Result<SubmitFigures> {
    let dir = std::env::temp_dir().join(format!("spate-bench-sched-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let sock = dir.join("sched.sock");
    let secret = Secret::generate().context("making a cluster secret")?;
    let mut sc = ServerConfig::new(vec![Endpoint::Unix(sock.clone())], secret.clone());
    sc.default_policy = cfg.policy.clone();
    // Daemons here answer heartbeats; a long interval keeps them out of the figures.
    sc.heartbeat_ms = 10_000;
    let server = Server::bind(sc).context("starting the scheduler server")?;
    let stop = server.stop_handle();
    let thread = std::thread::spawn(move || server.run().map_err(anyhow::Error::from));
    let mut run = Running {
        dir,
        stop,
        thread: Some(thread),
        daemons: Vec::new(),
    };
    let connect = |role: Role| -> anyhow::Result<MsgConn<UnixStream>> {
        let s = UnixStream::connect(&sock).context("connecting to the scheduler")?;
        MsgConn::client(s, &secret, role).context("authenticating to the scheduler")
    };
    let join = |c: &mut MsgConn<UnixStream>, info: proto::NodeInfo| -> anyhow::Result<()> {
        c.send(&Message::Join(info))?;
        match c.recv()? {
            Message::Welcome { .. } => Ok(()),
            m => bail!("expected Welcome, got {}", m.name()),
        }
    };
    let mut producers = Vec::new();
    for i in 0..cfg.producers {
        let mut c = connect(Role::Daemon)?;
        join(&mut c, wire_node(&format!("p{i}"), i, true, false))?;
        producers.push(c);
    }
    for i in 0..cfg.consumers {
        let mut c = connect(Role::Daemon)?;
        join(
            &mut c,
            wire_node(&format!("c{i}"), cfg.producers + i, false, true),
        )?;
        run.daemons.push(consumer(c));
    }
    let user = connect(Role::User)?;
    let (mut rx, mut tx) = user.split().context("splitting the user connection")?;
    let sent: Arc<Mutex<BTreeMap<u64, Instant>>> = Arc::default();
    // One credit per answer: the sender keeps at most `in_flight` submissions unanswered.
    let (credit_tx, credit_rx) = std::sync::mpsc::channel::<()>();
    let specs: Vec<String> = (0..jobs as usize).map(|k| cfg.spec(k)).collect();
    let start = Instant::now();
    let sender = {
        let sent = Arc::clone(&sent);
        std::thread::spawn(move || -> anyhow::Result<()> {
            for (k, spec) in specs.into_iter().enumerate() {
                if k as u64 >= in_flight && credit_rx.recv_timeout(DEADLINE).is_err() {
                    bail!("no answer within {DEADLINE:?}");
                }
                // Job ids are handed out in submission order from 1 on a fresh server.
                if let Ok(mut m) = sent.lock() {
                    m.insert(k as u64 + 1, Instant::now());
                }
                tx.send(&Message::Submit {
                    spec_toml: spec,
                    inputs: vec![],
                })?;
            }
            Ok(())
        })
    };
    let mut h = spate_netlib::hist::new_micros();
    let mut accepted = 0u64;
    while accepted < jobs {
        if start.elapsed() > DEADLINE {
            bail!("only {accepted} of {jobs} jobs accepted within {DEADLINE:?}");
        }
        let Some(m) = rx.recv_timeout(Duration::from_secs(5))? else {
            continue;
        };
        let at = Instant::now();
        match m {
            Message::Accepted { job, .. } => {
                let t = sent.lock().ok().and_then(|mut s| s.remove(&job.0));
                let Some(t) = t else {
                    bail!("Accepted for job {} that this run did not submit", job.0);
                };
                h.saturating_record(at.duration_since(t).as_micros() as u64);
                accepted += 1;
            }
            // A refused job takes no id, so the ids of the jobs after it would not match
            // their submissions: the run needs every job admitted.
            Message::Refused { message, .. } => {
                bail!("a job was refused ({message}); the latency run needs every job admitted")
            }
            _ => continue,
        }
        let _ = credit_tx.send(());
    }
    let secs = start.elapsed().as_secs_f64();
    match sender.join() {
        Ok(r) => r?,
        Err(_) => bail!("the submitting thread panicked"),
    }
    // The server stops first (it tells every peer), so no daemon is seen to vanish.
    drop(run);
    drop(producers);
    Ok(SubmitFigures {
        submitted: jobs,
        accepted,
        latency_us: h,
        secs,
    })
}
