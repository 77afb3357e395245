//! The scheduler server end to end: the real event loop on a temp UNIX socket, fake daemons and
//! users speaking the proto through blocking `MsgConn`s.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use spate_netlib::auth::{AuthError, Role, Secret};
use spate_netlib::endpoint::Endpoint;
use spate_netlib::msg::{MsgConn, MsgError};
use spate_netlib::proto::{
    ComputeCapacity, DataEndpoint, ErrorKind, HostId, InputSource, InputSpec, JobId, JobOutcome,
    JobState, Message, NodeInfo, NodeRoles, RefuseReason, RingBacking, StreamIndex, StreamKey,
    TaskKind,
};
use spate_scheduler::server::{Server, ServerConfig, StopHandle};

type Conn = MsgConn<UnixStream>;

const WAIT: Duration = Duration::from_secs(20);

struct TestServer {
    dir: PathBuf,
    sock: PathBuf,
    secret: Secret,
    stop: StopHandle,
    thread: Option<JoinHandle<()>>,
}

fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("spate-srv-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn secret() -> Secret {
    Secret::from_bytes(b"0123456789abcdef-test-secret", "test").unwrap()
}

impl TestServer {
    fn start(tag: &str, heartbeat_ms: u64, files: Option<&Path>) -> TestServer {
        let dir = tmpdir(tag);
        let sock = dir.join("sched.sock");
        let mut cfg = ServerConfig::new(vec![Endpoint::Unix(sock.clone())], secret());
        cfg.heartbeat_ms = heartbeat_ms;
        cfg.tick = Duration::from_millis(20);
        cfg.files = files.map(Path::to_path_buf);
        let server = Server::bind(cfg).unwrap();
        let stop = server.stop_handle();
        let thread = std::thread::spawn(move || server.run().unwrap());
        TestServer {
            dir,
            sock,
            secret: secret(),
            stop,
            thread: Some(thread),
        }
    }

    fn connect(&self, role: Role) -> Conn {
        let s = UnixStream::connect(&self.sock).unwrap();
        MsgConn::client(s, &self.secret, role).unwrap()
    }

    fn user(&self) -> Conn {
        self.connect(Role::User)
    }

    /// A daemon that joined (Welcome received).
    fn daemon(&self, info: NodeInfo) -> Conn {
        let mut c = self.connect(Role::Daemon);
        c.send(&Message::Join(info)).unwrap();
        match next(&mut c) {
            Message::Welcome { .. } => c,
            m => panic!("expected Welcome, got {m:?}"),
        }
    }

    /// Stops the server and checks that it exits and removes its socket.
    fn finish(mut self) {
        self.stop.stop();
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        assert!(!self.sock.exists(), "socket file left behind");
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop.stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The next message that is not a heartbeat, within WAIT.
fn next(c: &mut Conn) -> Message {
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "no message within {WAIT:?}");
        match c.recv_timeout(left) {
            Ok(Some(Message::Heartbeat)) => continue,
            Ok(Some(m)) => return m,
            Ok(None) => continue,
            Err(e) => panic!("connection failed: {e}"),
        }
    }
}

/// Messages until `pred` matches one (returned); JobUpdates and Acks before it are skipped.
fn until(c: &mut Conn, what: &str, pred: impl Fn(&Message) -> bool) -> Message {
    let deadline = Instant::now() + WAIT;
    loop {
        assert!(Instant::now() < deadline, "no {what} within {WAIT:?}");
        let m = next(c);
        if pred(&m) {
            return m;
        }
        match m {
            Message::JobUpdate(_) | Message::Ack { .. } => {}
            other => panic!("waiting for {what}, got {other:?}"),
        }
    }
}

fn info(name: &str, host: u128, producer: bool, consumer: bool) -> NodeInfo {
    NodeInfo {
        name: name.to_string(),
        host: HostId(host),
        roles: NodeRoles { producer, consumer },
        cores: 2,
        interfaces: vec![],
        compute: ComputeCapacity {
            cores: 2,
            bytes_per_sec: 0,
        },
        ring_budget: if consumer { 1 << 30 } else { 0 },
        data_endpoints: if consumer {
            vec![
                DataEndpoint::Unix {
                    path: format!("/tmp/{name}.data").into(),
                },
                DataEndpoint::Tcp {
                    addr: "127.0.0.1:9000".parse().unwrap(),
                    interface: Some("lo".into()),
                },
            ]
        } else {
            vec![]
        },
        handoff_socket: consumer.then(|| format!("/tmp/{name}.handoff").into()),
        nic_bytes_per_sec: 0,
        ports: 0,
        hugepages: Default::default(),
    }
}

/// 64 lines of 1 KiB, 8 lines per chunk: 8 chunks, one stream on c1.
const SPEC: &str = "name = \"t\"\nkernel = \"pattern\"\nsize = \"64KiB\"\nline_bytes = \"1KiB\"\n\
                    chunk = { lines = 8 }\nnode = \"c1\"\n[params]\nseed = 7\n";

fn submit(u: &mut Conn, spec: &str, inputs: &[&str]) -> Message {
    u.send(&Message::Submit {
        spec_toml: spec.to_string(),
        inputs: inputs.iter().map(|s| s.to_string()).collect(),
    })
    .unwrap();
    next(u)
}

fn key_of(stream: u32) -> StreamKey {
    StreamKey(0xfeed_0000_0000_0000_0000_0000_0000_0000 + u128::from(stream))
}

/// A consumer that allocates every stream and records releases.
fn fake_consumer(mut c: Conn, released: mpsc::Sender<JobId>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        loop {
            let m = match c.recv() {
                Ok(m) => m,
                Err(_) => return,
            };
            match m {
                Message::AllocStream {
                    job,
                    stream,
                    capacity,
                    total_len,
                    ..
                } => {
                    assert!(capacity > 0 && capacity <= total_len);
                    let allocated = Message::Allocated {
                        job,
                        stream,
                        key: key_of(stream.0),
                        handoff: "/tmp/c1.handoff".into(),
                        backing: RingBacking::Plain,
                    };
                    if c.send(&allocated).is_err() {
                        return;
                    }
                }
                Message::Release { job, .. } => {
                    let _ = released.send(job);
                }
                Message::Shutdown { .. } => return,
                _ => {}
            }
        }
    })
}

/// One Compute+Expel pair a producer received.
#[derive(Debug, Clone)]
struct Pair {
    producer: &'static str,
    task: u64,
    chunk: u64,
    lines: (u64, u64),
    targets: Vec<spate_netlib::proto::ExpelTarget>,
}

/// A producer that preloads (after `go` fires, if given) and completes every pair.
fn fake_producer(
    name: &'static str,
    mut c: Conn,
    log: Arc<Mutex<Vec<Pair>>>,
    go: Option<mpsc::Receiver<()>>,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut computed: BTreeMap<u64, (u64, (u64, u64))> = BTreeMap::new();
        loop {
            let m = match c.recv() {
                Ok(m) => m,
                Err(_) => return,
            };
            match m {
                Message::Preload { job, .. } => {
                    if let Some(go) = &go {
                        let _ = go.recv_timeout(WAIT);
                    }
                    if c.send(&Message::Preloaded { job }).is_err() {
                        return; // the server stopped first
                    }
                }
                Message::Compute {
                    task, chunk, lines, ..
                } => {
                    computed.insert(task.0, (chunk.0, (lines.start, lines.end)));
                }
                Message::Expel {
                    task,
                    job,
                    chunk,
                    targets,
                } => {
                    let (cchunk, lines) = computed.remove(&task.0).expect("Expel without Compute");
                    assert_eq!(cchunk, chunk.0, "Compute and Expel name the same chunk");
                    log.lock().unwrap().push(Pair {
                        producer: name,
                        task: task.0,
                        chunk: chunk.0,
                        lines,
                        targets,
                    });
                    let done = Message::TaskDone {
                        task,
                        job,
                        kind: TaskKind::Expel,
                        bytes: 8192,
                        micros: 1,
                        compute_micros: 0,
                        cpu_micros: 0,
                        pieces: vec![],
                    };
                    if c.send(&done).is_err() {
                        return;
                    }
                }
                Message::Shutdown { .. } => return,
                _ => {}
            }
        }
    })
}

#[test]
fn join_welcome_status_and_duplicate_names() {
    let srv = TestServer::start("join", 60_000, None);
    let mut c = srv.connect(Role::Daemon);
    c.send(&Message::Join(info("c1", 1, false, true))).unwrap();
    assert_eq!(
        next(&mut c),
        Message::Welcome {
            heartbeat_ms: 60_000
        }
    );
    let _p = srv.daemon(info("p1", 1, true, false));

    let mut u = srv.user();
    u.send(&Message::Status { job: None }).unwrap();
    match next(&mut u) {
        Message::StatusReply { jobs, nodes, .. } => {
            assert!(jobs.is_empty());
            let names: Vec<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
            assert_eq!(names, ["c1", "p1"]);
            assert!(nodes[0].roles.consumer && !nodes[0].roles.producer);
            assert_eq!(nodes[1].tasks_in_flight, 0);
        }
        m => panic!("{m:?}"),
    }

    // A second daemon with the same name is refused and closed.
    let mut dup = srv.connect(Role::Daemon);
    dup.send(&Message::Join(info("c1", 2, false, true)))
        .unwrap();
    match next(&mut dup) {
        Message::Error { kind, message } => {
            assert_eq!(kind, ErrorKind::BadRequest);
            assert!(message.contains("\"c1\" is already connected"), "{message}");
        }
        m => panic!("{m:?}"),
    }
    assert!(matches!(dup.recv_timeout(WAIT), Err(MsgError::Closed)));

    // Users may not send daemon messages, nor act on unknown jobs.
    u.send(&Message::Preloaded { job: JobId(1) }).unwrap();
    assert!(matches!(
        next(&mut u),
        Message::Error {
            kind: ErrorKind::NotPermitted,
            ..
        }
    ));
    u.send(&Message::Ready { job: JobId(42) }).unwrap();
    assert_eq!(
        next(&mut u),
        Message::Error {
            kind: ErrorKind::UnknownJob,
            message: "job 42 does not exist (or has ended)".into()
        }
    );
    srv.finish();
}

#[test]
fn daemons_hear_shutdown_when_the_scheduler_stops() {
    let srv = TestServer::start("shutdown", 60_000, None);
    let mut c = srv.daemon(info("c1", 1, false, true));
    let mut u = srv.user();
    srv.stop.stop();
    assert_eq!(
        next(&mut c),
        Message::Shutdown {
            reason: "the scheduler is stopping".into()
        }
    );
    assert!(matches!(next(&mut u), Message::Shutdown { .. }));
    assert!(matches!(c.recv_timeout(WAIT), Err(MsgError::Closed)));
    srv.finish();
}

#[test]
fn wrong_secret_is_refused() {
    let srv = TestServer::start("secret", 60_000, None);
    let other = Secret::from_bytes(b"another-secret-of-16+bytes", "test").unwrap();
    let s = UnixStream::connect(&srv.sock).unwrap();
    match MsgConn::client(s, &other, Role::Daemon) {
        Err(MsgError::Auth(AuthError::WrongSecret)) => {}
        other => panic!("expected WrongSecret, got {other:?}"),
    }
    // The server is still serving.
    let mut u = srv.user();
    u.send(&Message::Status { job: None }).unwrap();
    assert!(matches!(next(&mut u), Message::StatusReply { .. }));
    srv.finish();
}

#[test]
fn submissions_are_refused_with_reasons_naming_the_problem() {
    let srv = TestServer::start("refuse", 60_000, None);
    let mut u = srv.user();

    // Invalid spec: the field is named, in the reason and in the message.
    match submit(
        &mut u,
        "kernel = \"pattern\"\nsize = \"64KiB\"\nnode = \"c1\"\nsplt = 3\n",
        &[],
    ) {
        Message::Refused { reason, message } => {
            assert_eq!(
                reason,
                RefuseReason::InvalidSpec {
                    field: "splt".into()
                }
            );
            assert!(
                message.starts_with("invalid job spec: splt: no such field"),
                "{message}"
            );
        }
        m => panic!("{m:?}"),
    }
    match submit(
        &mut u,
        "kernel = \"blur\"\nsize = \"64KiB\"\nnode = \"c1\"\n",
        &[],
    ) {
        Message::Refused { reason, message } => {
            assert_eq!(
                reason,
                RefuseReason::UnknownKernel {
                    kernel: "blur".into()
                }
            );
            assert!(message.contains("kernel"), "{message}");
        }
        m => panic!("{m:?}"),
    }

    // Missing output node (a producer is there).
    let _p = srv.daemon(info("p1", 1, true, false));
    match submit(&mut u, SPEC, &[]) {
        Message::Refused { reason, message } => {
            assert_eq!(reason, RefuseReason::ConsumerMissing { node: "c1".into() });
            assert_eq!(
                message,
                "stream 0: output node \"c1\" is not connected; start its consumer daemon or fix the spec"
            );
        }
        m => panic!("{m:?}"),
    }
    drop(_p);

    // No producers (the consumer is there); wait until the server saw p1 leave.
    let _c = srv.daemon(info("c1", 1, false, true));
    let deadline = Instant::now() + WAIT;
    loop {
        u.send(&Message::Status { job: None }).unwrap();
        if let Message::StatusReply { nodes, .. } = next(&mut u)
            && nodes.iter().all(|n| n.name != "p1")
        {
            break;
        }
        assert!(Instant::now() < deadline, "p1 never left");
        std::thread::sleep(Duration::from_millis(10));
    }
    match submit(&mut u, SPEC, &[]) {
        Message::Refused { reason, message } => {
            assert_eq!(reason, RefuseReason::NoProducers);
            assert_eq!(message, "no producer is connected; start a producer daemon");
        }
        m => panic!("{m:?}"),
    }

    // An input the file service does not have (and there is none).
    match submit(&mut u, SPEC, &["poster.tiff"]) {
        Message::Refused { reason, message } => {
            assert_eq!(
                reason,
                RefuseReason::InputUnavailable {
                    name: "poster.tiff".into()
                }
            );
            assert!(message.contains("--files DIR"), "{message}");
        }
        m => panic!("{m:?}"),
    }
    srv.finish();
}

/// Submits SPEC, waits for Accepted, checks the placement; returns the job id.
fn accept(u: &mut Conn) -> JobId {
    match submit(u, SPEC, &[]) {
        Message::Accepted { job, streams, .. } => {
            assert_eq!(streams.len(), 1);
            let s = &streams[0];
            assert_eq!(s.stream, StreamIndex(0));
            assert_eq!(s.node, "c1");
            assert_eq!(s.handoff, PathBuf::from("/tmp/c1.handoff"));
            assert_eq!(s.key, key_of(0));
            assert_eq!(s.length, 64 * 1024);
            job
        }
        m => panic!("expected Accepted, got {m:?}"),
    }
}

/// Checks that every chunk of SPEC was expelled, each exactly once, with the right targets.
/// The submitter of a completed job gets its chunk latencies, one per chunk, before JobEnded:
/// a serialized histogram, no raw samples.
fn expect_stats(u: &mut Conn, job: JobId, chunks: usize) {
    match next(u) {
        Message::JobStats {
            job: j,
            chunk_latency_us,
            chunk_latency_hdr,
        } => {
            assert_eq!(j, job);
            assert!(chunk_latency_us.is_empty(), "{chunk_latency_us:?}");
            let h = spate_netlib::hist::decode(&chunk_latency_hdr).unwrap();
            assert_eq!(h.len(), chunks as u64);
        }
        m => panic!("expected JobStats, got {m:?}"),
    }
}

fn check_pairs(pairs: &[Pair]) {
    let mut chunks: Vec<u64> = pairs.iter().map(|p| p.chunk).collect();
    chunks.sort_unstable();
    assert_eq!(chunks, (0..8).collect::<Vec<u64>>(), "{pairs:?}");
    let tasks: BTreeSet<u64> = pairs.iter().map(|p| p.task).collect();
    assert_eq!(tasks.len(), pairs.len(), "task ids are unique");
    for p in pairs {
        assert_eq!(p.lines, (p.chunk * 8, p.chunk * 8 + 8));
        assert_eq!(p.targets.len(), 1);
        let t = &p.targets[0];
        assert_eq!(t.stream, StreamIndex(0));
        assert_eq!(t.consumer, "c1");
        // Same host: the consumer's UNIX data endpoint.
        assert_eq!(
            t.endpoint,
            DataEndpoint::Unix {
                path: "/tmp/c1.data".into()
            }
        );
        assert_eq!(t.source, None);
        assert_eq!(t.chunk_offset, 0);
        assert_eq!(t.stream_offset, p.chunk * 8 * 1024);
        assert_eq!(t.len, 8 * 1024);
    }
}

#[test]
fn a_job_runs_from_submit_to_completed() {
    let srv = TestServer::start("happy", 60_000, None);
    let (rel_tx, rel_rx) = mpsc::channel();
    let consumer = fake_consumer(srv.daemon(info("c1", 1, false, true)), rel_tx);
    let log = Arc::new(Mutex::new(Vec::new()));
    let p1 = fake_producer(
        "p1",
        srv.daemon(info("p1", 1, true, false)),
        log.clone(),
        None,
    );
    let p2 = fake_producer(
        "p2",
        srv.daemon(info("p2", 1, true, false)),
        log.clone(),
        None,
    );

    let mut u = srv.user();
    let job = accept(&mut u);

    // A second user watches it.
    let mut w = srv.user();
    w.send(&Message::Watch { job }).unwrap();
    assert_eq!(next(&mut w), Message::Ack { job });
    match next(&mut w) {
        Message::JobUpdate(s) => {
            assert_eq!(s.job, job);
            assert_eq!(s.name, "t");
            assert_eq!(s.state, JobState::WaitingReady);
            assert_eq!(s.progress.total, 64 * 1024);
        }
        m => panic!("{m:?}"),
    }

    u.send(&Message::Ready { job }).unwrap();
    assert_eq!(next(&mut u), Message::Ack { job });
    // The submitter hears of the delivery.
    match until(
        &mut u,
        "Delivered",
        |m| matches!(m, Message::JobUpdate(s) if s.state == JobState::Delivered),
    ) {
        Message::JobUpdate(s) => assert_eq!(s.progress.delivered, 64 * 1024),
        m => panic!("{m:?}"),
    }
    check_pairs(&log.lock().unwrap());
    // The watcher saw the job run and get delivered.
    until(
        &mut w,
        "Delivered",
        |m| matches!(m, Message::JobUpdate(s) if s.state == JobState::Delivered),
    );

    u.send(&Message::Done { job }).unwrap();
    assert_eq!(next(&mut u), Message::Ack { job });
    expect_stats(&mut u, job, 8);
    let ended = Message::JobEnded {
        job,
        outcome: JobOutcome::Completed,
    };
    assert_eq!(next(&mut u), ended);
    assert_eq!(
        until(&mut w, "JobEnded", |m| matches!(
            m,
            Message::JobEnded { .. }
        )),
        ended
    );
    assert_eq!(rel_rx.recv_timeout(WAIT).unwrap(), job);

    // The job is gone from the status.
    u.send(&Message::Status { job: None }).unwrap();
    match next(&mut u) {
        Message::StatusReply { jobs, nodes, .. } => {
            assert!(jobs.is_empty());
            assert!(
                nodes
                    .iter()
                    .all(|n| n.tasks_in_flight == 0 && n.streams == 0)
            );
        }
        m => panic!("{m:?}"),
    }
    srv.finish();
    for t in [consumer, p1, p2] {
        t.join().unwrap();
    }
}

#[test]
fn a_dropped_producer_has_its_tasks_redone_by_another() {
    let srv = TestServer::start("reassign", 60_000, None);
    let (rel_tx, _rel_rx) = mpsc::channel();
    let consumer = fake_consumer(srv.daemon(info("c1", 1, false, true)), rel_tx);
    let log = Arc::new(Mutex::new(Vec::new()));
    let (go_tx, go_rx) = mpsc::channel();
    let p2 = fake_producer(
        "p2",
        srv.daemon(info("p2", 1, true, false)),
        log.clone(),
        Some(go_rx),
    );
    // p1 preloads, takes its first tasks, then its connection drops without answering.
    let mut p1 = srv.daemon(info("p1", 1, true, false));

    let mut u = srv.user();
    let job = accept(&mut u);
    u.send(&Message::Ready { job }).unwrap();
    assert_eq!(next(&mut u), Message::Ack { job });
    match next(&mut p1) {
        Message::Preload { job: j, kernel, .. } => {
            assert_eq!(j, job);
            assert_eq!(kernel, "pattern");
        }
        m => panic!("{m:?}"),
    }
    p1.send(&Message::Preloaded { job }).unwrap();
    let mut held = Vec::new();
    while held.len() < 2 {
        match next(&mut p1) {
            Message::Compute { chunk, .. } => held.push(chunk.0),
            Message::Expel { .. } => {}
            m => panic!("{m:?}"),
        }
    }
    drop(p1);
    go_tx.send(()).unwrap();

    until(
        &mut u,
        "Delivered",
        |m| matches!(m, Message::JobUpdate(s) if s.state == JobState::Delivered),
    );
    let pairs = log.lock().unwrap().clone();
    check_pairs(&pairs);
    assert!(pairs.iter().all(|p| p.producer == "p2"));
    for c in held {
        assert!(pairs.iter().any(|p| p.chunk == c), "chunk {c} was redone");
    }
    u.send(&Message::Done { job }).unwrap();
    assert_eq!(next(&mut u), Message::Ack { job });
    // The redone chunks count once each, from their first task.
    expect_stats(&mut u, job, 8);
    assert_eq!(
        next(&mut u),
        Message::JobEnded {
            job,
            outcome: JobOutcome::Completed
        }
    );
    srv.finish();
    consumer.join().unwrap();
    p2.join().unwrap();
}

/// A user whose job (SPEC, one stream on `c1`) is accepted and started.
fn running(srv: &TestServer, c1: &mut Conn) -> (Conn, JobId) {
    let mut u = srv.user();
    u.send(&Message::Submit {
        spec_toml: SPEC.into(),
        inputs: vec![],
    })
    .unwrap();
    let (job, stream) = match next(c1) {
        Message::AllocStream { job, stream, .. } => (job, stream),
        m => panic!("{m:?}"),
    };
    c1.send(&Message::Allocated {
        job,
        stream,
        key: key_of(0),
        handoff: "/tmp/c1.handoff".into(),
        backing: RingBacking::HugeTlb,
    })
    .unwrap();
    assert!(matches!(next(&mut u), Message::Accepted { .. }));
    u.send(&Message::Ready { job }).unwrap();
    assert_eq!(next(&mut u), Message::Ack { job });
    (u, job)
}

#[test]
fn a_dropped_consumer_aborts_its_jobs() {
    let srv = TestServer::start("consumer-lost", 60_000, None);
    let mut c1 = srv.daemon(info("c1", 1, false, true));
    let mut p1 = srv.daemon(info("p1", 1, true, false));
    let (mut u, job) = running(&srv, &mut c1);
    assert!(matches!(next(&mut p1), Message::Preload { .. }));
    drop(c1);
    assert_eq!(
        next(&mut u),
        Message::JobEnded {
            job,
            outcome: JobOutcome::Aborted {
                reason: "output node \"c1\" crashed".into()
            }
        }
    );
    assert_eq!(next(&mut p1), Message::Unload { job });
    srv.finish();
}

#[test]
fn a_consumer_silent_past_its_heartbeats_aborts_its_jobs_saying_so() {
    let srv = TestServer::start("consumer-silent", 100, None);
    let mut c1 = srv.daemon(info("c1", 1, false, true));
    let mut p1 = srv.daemon(info("p1", 1, true, false));
    let (mut u, job) = running(&srv, &mut c1);
    // c1 says nothing more (paused); p1 answers its heartbeats.
    let deadline = Instant::now() + WAIT;
    let ended = loop {
        assert!(Instant::now() < deadline, "the job never ended");
        while let Ok(Some(m)) = p1.recv_timeout(Duration::from_millis(20)) {
            if m == Message::Heartbeat {
                p1.send(&Message::Heartbeat).unwrap();
            }
        }
        if let Ok(Some(m @ Message::JobEnded { .. })) = u.recv_timeout(Duration::from_millis(20)) {
            break m;
        }
    };
    assert_eq!(
        ended,
        Message::JobEnded {
            job,
            outcome: JobOutcome::Aborted {
                reason: "output node \"c1\" went silent past its heartbeats and was declared dead"
                    .into()
            }
        }
    );
    srv.finish();
}

#[test]
fn a_silent_daemon_is_declared_dead() {
    let srv = TestServer::start("heartbeat", 100, None);
    let mut c = srv.connect(Role::Daemon);
    c.send(&Message::Join(info("c1", 1, false, true))).unwrap();
    assert_eq!(next(&mut c), Message::Welcome { heartbeat_ms: 100 });
    // Never answer: after 3 heartbeats the server gives up on us.
    let deadline = Instant::now() + WAIT;
    loop {
        match c.recv_timeout(WAIT) {
            Ok(Some(Message::Heartbeat)) => {}
            Ok(Some(Message::Error { message, .. })) => {
                assert!(message.contains("declared dead"), "{message}");
            }
            Err(MsgError::Closed) => break,
            other => panic!("{other:?}"),
        }
        assert!(Instant::now() < deadline);
    }
    let mut u = srv.user();
    u.send(&Message::Status { job: None }).unwrap();
    match next(&mut u) {
        Message::StatusReply { nodes, .. } => assert!(nodes.is_empty()),
        m => panic!("{m:?}"),
    }
    srv.finish();
}

#[test]
fn the_file_service_serves_inputs_byte_exact() {
    let files = tmpdir("files-root");
    let data: Vec<u8> = (0..600_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(files.join("img.bin"), &data).unwrap();
    let srv = TestServer::start("files", 60_000, Some(&files));
    let mut c1 = srv.daemon(info("c1", 1, false, true));
    let mut p1 = srv.daemon(info("p1", 1, true, false));
    let mut u = srv.user();

    // A missing input refuses the job, naming it.
    let spec_missing = SPEC.replace(
        "node = \"c1\"\n",
        "node = \"c1\"\ninputs = [\"nope.bin\"]\n",
    );
    match submit(&mut u, &spec_missing, &[]) {
        Message::Refused { reason, message } => {
            assert_eq!(
                reason,
                RefuseReason::InputUnavailable {
                    name: "nope.bin".into()
                }
            );
            assert!(message.contains("\"nope.bin\": no such file"), "{message}");
        }
        m => panic!("{m:?}"),
    }
    match submit(&mut u, SPEC, &["../x"]) {
        Message::Refused { reason, message } => {
            assert_eq!(
                reason,
                RefuseReason::InputUnavailable {
                    name: "../x".into()
                }
            );
            assert!(message.contains("`..` is not allowed"), "{message}");
        }
        m => panic!("{m:?}"),
    }

    let spec = SPEC.replace("node = \"c1\"\n", "node = \"c1\"\ninputs = [\"img.bin\"]\n");
    u.send(&Message::Submit {
        spec_toml: spec,
        inputs: vec!["img.bin".into()],
    })
    .unwrap();
    let (job, stream) = match next(&mut c1) {
        Message::AllocStream { job, stream, .. } => (job, stream),
        m => panic!("{m:?}"),
    };
    c1.send(&Message::Allocated {
        job,
        stream,
        key: key_of(0),
        handoff: "/tmp/c1.handoff".into(),
        backing: RingBacking::Plain,
    })
    .unwrap();
    assert!(matches!(next(&mut u), Message::Accepted { .. }));
    u.send(&Message::Ready { job }).unwrap();
    match next(&mut p1) {
        Message::Preload {
            inputs, geometry, ..
        } => {
            assert_eq!(
                inputs,
                vec![InputSpec {
                    name: "img.bin".into(),
                    source: InputSource::FileService { size: 600_000 }
                }]
            );
            assert_eq!(geometry.lines, 64);
            assert_eq!(geometry.line_bytes, 1024);
            assert_eq!(geometry.channels, 1);
        }
        m => panic!("{m:?}"),
    }
    p1.send(&Message::FetchInput {
        job,
        name: "img.bin".into(),
        offset: 1000,
        len: 1 << 40,
    })
    .unwrap();
    let mut got = Vec::new();
    loop {
        match next(&mut p1) {
            Message::InputChunk {
                job: j,
                name,
                offset,
                data: d,
                last,
            } => {
                assert_eq!((j, name.as_str()), (job, "img.bin"));
                assert_eq!(offset, 1000 + got.len() as u64);
                assert!(d.len() <= spate_netlib::proto::INPUT_CHUNK_MAX as usize);
                got.extend_from_slice(&d);
                if last {
                    break;
                }
            }
            m => panic!("{m:?}"),
        }
    }
    assert!(got == data[1000..], "served bytes differ from the file");

    p1.send(&Message::FetchInput {
        job,
        name: "../x".into(),
        offset: 0,
        len: 10,
    })
    .unwrap();
    match next(&mut p1) {
        Message::FetchFailed { name, reason, .. } => {
            assert_eq!(name, "../x");
            assert_eq!(reason, "input \"../x\": `..` is not allowed in input names");
        }
        m => panic!("{m:?}"),
    }
    srv.finish();
    let _ = std::fs::remove_dir_all(&files);
}

#[test]
fn users_and_daemons_connect_over_tcp_too() {
    let dir = tmpdir("tcp");
    let sock = dir.join("sched.sock");
    let cfg = ServerConfig::new(
        vec![
            Endpoint::Unix(sock.clone()),
            "tcp:127.0.0.1:0".parse().unwrap(),
        ],
        secret(),
    );
    let server = Server::bind(cfg).unwrap();
    let eps = server.endpoints();
    assert_eq!(eps[0], Endpoint::Unix(sock.clone()));
    let tcp = eps[1].clone();
    let stop = server.stop_handle();
    let t = std::thread::spawn(move || server.run().unwrap());

    let s = std::net::TcpStream::connect(match &tcp {
        Endpoint::Tcp { host, port } => format!("{host}:{port}"),
        e => panic!("{e}"),
    })
    .unwrap();
    let mut d = MsgConn::client(s.try_clone().unwrap(), &secret(), Role::Daemon).unwrap();
    d.send(&Message::Join(info("c9", 3, false, true))).unwrap();
    assert!(matches!(d.recv().unwrap(), Message::Welcome { .. }));

    let mut u = spate_scheduler::server::user::User::connect(&tcp, &secret(), WAIT).unwrap();
    let nodes = u
        .request(&Message::Status { job: None }, |m| match m {
            Message::StatusReply { nodes, .. } => Some(nodes),
            _ => None,
        })
        .unwrap();
    assert_eq!(nodes.len(), 1);
    assert_eq!(nodes[0].name, "c9");
    stop.stop();
    t.join().unwrap();
    assert!(!sock.exists());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn consumers_learn_the_producers_of_a_job_with_its_preload() {
    let srv = TestServer::start("job-producers", 60_000, None);
    let mut c1 = srv.daemon(info("c1", 1, false, true));
    let mut p1 = srv.daemon(info("p1", 1, true, false));
    let mut u = srv.user();
    u.send(&Message::Submit {
        spec_toml: SPEC.into(),
        inputs: vec![],
    })
    .unwrap();
    let (job, stream) = match next(&mut c1) {
        Message::AllocStream { job, stream, .. } => (job, stream),
        m => panic!("{m:?}"),
    };
    c1.send(&Message::Allocated {
        job,
        stream,
        key: key_of(0),
        handoff: "/tmp/c1.handoff".into(),
        backing: RingBacking::Plain,
    })
    .unwrap();
    assert!(matches!(next(&mut u), Message::Accepted { .. }));
    u.send(&Message::Ready { job }).unwrap();
    assert!(matches!(next(&mut p1), Message::Preload { .. }));
    // The consumer hears who may send the job's chunks (it refuses everyone else).
    assert_eq!(
        next(&mut c1),
        Message::JobProducers {
            job,
            producers: vec!["p1".into()]
        }
    );
    srv.finish();
}
