//! `spate node` as real processes against a minimal fake scheduler played by the test: one
//! consumer process and one producer process move a pattern stream that `spate read --verify`
//! reads byte-exact; a producer killed with SIGKILL shows up as connection EOF; a daemon whose
//! scheduler closes the connection joins again, and one whose scheduler stays away stops after
//! `--reconnect-for` and says so.

use std::io::Read;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use spate_netlib::auth::{Role, Secret};
use spate_netlib::msg::{MsgConn, MsgError};
use spate_netlib::proto::{
    ChunkIndex, DataEndpoint, ExpelTarget, JobGeometry, JobId, LineRange, Message, NodeInfo,
    StreamIndex, TaskId, TaskKind, Value,
};

const SECRET: &str = "node-test-secret-0123456789abcdef";
const DEADLINE: Duration = Duration::from_secs(60);

type Conn = MsgConn<UnixStream>;

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("spate-cli-node-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn spate() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_spate"));
    c.env("SPATE_SECRET", SECRET).env_remove("SPATE_LOG");
    c
}

fn node(dir: &Path, name: &str, role: &str) -> Child {
    node_with(dir, name, role, &[])
}

fn node_with(dir: &Path, name: &str, role: &str, extra: &[&str]) -> Child {
    spate()
        .args(["node", "--name", name, role, "--ring-budget", "64MiB"])
        .args(extra)
        .arg("--scheduler")
        .arg(format!("unix:{}", dir.join("sched.sock").display()))
        .arg("--run-dir")
        .arg(dir.join(name))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Accept one daemon: handshake, Join, Welcome.
fn accept(l: &UnixListener) -> (Conn, NodeInfo) {
    l.set_nonblocking(true).unwrap();
    let end = Instant::now() + DEADLINE;
    let s = loop {
        match l.accept() {
            Ok((s, _)) => break s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                assert!(Instant::now() < end, "no daemon connected");
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("{e}"),
        }
    };
    s.set_nonblocking(false).unwrap();
    let secret = Secret::from_bytes(SECRET.as_bytes(), "test").unwrap();
    let mut c = MsgConn::server(s, &secret, Role::Scheduler).unwrap();
    let info = match c.recv().unwrap() {
        Message::Join(i) => i,
        other => panic!("expected Join, got {other:?}"),
    };
    c.send(&Message::Welcome { heartbeat_ms: 100 }).unwrap();
    (c, info)
}

/// The next message that is not a heartbeat or a progress report.
fn next(c: &mut Conn) -> Message {
    let end = Instant::now() + DEADLINE;
    loop {
        let left = end.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "no message in time");
        match c.recv_timeout(left).unwrap() {
            Some(Message::Heartbeat | Message::StreamProgress { .. }) => {}
            Some(m) => return m,
            None => {}
        }
    }
}

fn wait_exit(c: &mut Child) -> ExitStatus {
    let end = Instant::now() + DEADLINE;
    loop {
        if let Some(s) = c.try_wait().unwrap() {
            return s;
        }
        assert!(Instant::now() < end, "process did not exit");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn output(c: &mut Child) -> (String, String) {
    let (mut o, mut e) = (String::new(), String::new());
    if let Some(mut s) = c.stdout.take() {
        s.read_to_string(&mut o).unwrap();
    }
    if let Some(mut s) = c.stderr.take() {
        s.read_to_string(&mut e).unwrap();
    }
    (o, e)
}

struct Reap(Vec<Child>);
impl Drop for Reap {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[test]
fn a_producer_and_a_consumer_process_deliver_a_pattern_stream_byte_exact() {
    let dir = tmpdir("stream");
    let l = UnixListener::bind(dir.join("sched.sock")).unwrap();
    let mut reap = Reap(vec![
        node(&dir, "c1", "--consumer"),
        node(&dir, "p1", "--producer"),
    ]);
    let (x, y) = (accept(&l), accept(&l));
    let ((mut cc, ci), (mut pc, pi)) = if x.1.roles.consumer { (x, y) } else { (y, x) };
    assert!(ci.roles.consumer && !ci.roles.producer && ci.name == "c1");
    assert!(pi.roles.producer && !pi.roles.consumer && pi.name == "p1");
    assert_eq!(ci.ring_budget, 64 << 20);
    let handoff = ci.handoff_socket.clone().unwrap();
    let ep = ci
        .data_endpoints
        .iter()
        .find(|e| matches!(e, DataEndpoint::Unix { .. }))
        .unwrap()
        .clone();

    // A stream of 10 MiB and a bit through a 2 MiB ring, 1 channel of 1000 lines.
    let (line_bytes, lines) = (10_487u64, 1000u64);
    let total = line_bytes * lines;
    let job = JobId(1);
    cc.send(&Message::AllocStream {
        job,
        stream: StreamIndex(0),
        capacity: 2 << 20,
        total_len: total,
        rate_bps: None,
        prefill: 0,
    })
    .unwrap();
    let key = match next(&mut cc) {
        Message::Allocated {
            job: JobId(1),
            stream: StreamIndex(0),
            key,
            handoff: h,
            ..
        } => {
            assert_eq!(h, handoff);
            key
        }
        other => panic!("{other:?}"),
    };
    let read = spate()
        .arg("read")
        .arg("--socket")
        .arg(&handoff)
        .args(["--key", &key.to_string(), "--verify", "5:0", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    reap.0.push(read);
    assert!(matches!(
        next(&mut cc),
        Message::ReaderAttached { job: JobId(1), .. }
    ));

    // As the scheduler does with every Preload: tell the consumer who may send this job's
    // chunks (it refuses chunks from any other producer).
    cc.send(&Message::JobProducers {
        job,
        producers: vec![pi.name.clone()],
    })
    .unwrap();
    let mut params = std::collections::BTreeMap::new();
    params.insert("seed".to_string(), Value::Int(5));
    pc.send(&Message::Preload {
        job,
        kernel: "pattern".into(),
        params: Value::Table(params),
        geometry: JobGeometry {
            channels: 1,
            lines,
            line_bytes,
            pixels: None,
        },
        inputs: vec![],
    })
    .unwrap();
    assert_eq!(next(&mut pc), Message::Preloaded { job });
    // Chunks of 50 lines, pairwise out of order; every Compute is followed by its Expel.
    let step = 50u64;
    let starts: Vec<u64> = (0..lines).step_by(step as usize).collect();
    let order: Vec<u64> = starts
        .chunks(2)
        .flat_map(|p| p.iter().rev().copied())
        .collect();
    for (i, s) in order.iter().enumerate() {
        let lr = LineRange {
            start: *s,
            end: (*s + step).min(lines),
        };
        let (task, chunk) = (TaskId(100 + i as u64), ChunkIndex(s / step));
        pc.send(&Message::Compute {
            task,
            job,
            chunk,
            lines: lr,
        })
        .unwrap();
        pc.send(&Message::Expel {
            task,
            job,
            chunk,
            targets: vec![ExpelTarget {
                stream: StreamIndex(0),
                consumer: "c1".into(),
                endpoint: ep.clone(),
                source: None,
                chunk_offset: 0,
                stream_offset: lr.start * line_bytes,
                len: (lr.end - lr.start) * line_bytes,
            }],
        })
        .unwrap();
    }
    let mut done = std::collections::BTreeSet::new();
    let mut bytes = 0;
    while done.len() < order.len() {
        match next(&mut pc) {
            Message::TaskDone {
                task,
                kind: TaskKind::Expel,
                bytes: b,
                ..
            } => {
                assert!(done.insert(task));
                bytes += b;
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(bytes, total);
    // The reader reads every byte, then waits at the end until the scheduler confirms it
    // counted the stream read (as the scheduler does on the consumer's report).
    let end = Instant::now() + DEADLINE;
    loop {
        let left = end.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "the consumer never reported the stream read"
        );
        if let Some(Message::StreamProgress { read_pos, .. }) = cc.recv_timeout(left).unwrap()
            && read_pos == total
        {
            break;
        }
    }
    assert!(
        reap.0[2].try_wait().unwrap().is_none(),
        "the reader ended before its end was confirmed"
    );
    cc.send(&Message::StreamRead {
        job,
        stream: StreamIndex(0),
    })
    .unwrap();
    let st = wait_exit(&mut reap.0[2]);
    let (out, err) = output(&mut reap.0[2]);
    assert!(st.success(), "spate read failed: {out} {err}");
    assert!(out.contains(&format!("\"bytes\":{total}")), "{out}");
    assert!(out.contains("\"verified\":true"), "{out}");

    // Release, then shut both down: they exit 0 and say why.
    cc.send(&Message::Release {
        job,
        reason: String::new(),
    })
    .unwrap();
    pc.send(&Message::Unload { job }).unwrap();
    for c in [&mut cc, &mut pc] {
        c.send(&Message::Shutdown {
            reason: "test over".into(),
        })
        .unwrap();
    }
    for p in &mut reap.0[..2] {
        let st = wait_exit(p);
        let (out, err) = output(p);
        assert!(st.success(), "{out}\n{err}");
        assert!(out.contains("scheduler shut down: test over"), "{out}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_killed_producer_is_connection_eof_and_a_lost_scheduler_is_rejoined_then_given_up() {
    let dir = tmpdir("kill");
    let l = UnixListener::bind(dir.join("sched.sock")).unwrap();
    let prod = node(&dir, "p1", "--producer");
    let mut reap = Reap(vec![prod]);
    let (mut pc, pi) = accept(&l);
    assert!(pi.roles.producer);
    // It heartbeats while idle.
    assert!(matches!(
        pc.recv_timeout(DEADLINE).unwrap(),
        Some(Message::Heartbeat)
    ));
    reap.0[0].kill().unwrap();
    let end = Instant::now() + DEADLINE;
    loop {
        assert!(Instant::now() < end, "no EOF after the kill");
        match pc.recv_timeout(Duration::from_millis(100)) {
            Ok(_) => {}
            Err(MsgError::Closed) => break,
            Err(e) => panic!("expected a clean EOF, got {e}"),
        }
    }
    let st = wait_exit(&mut reap.0[0]);
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(st.signal(), Some(9));

    // A consumer whose scheduler closes the connection joins again; one whose scheduler is
    // gone for good stops after --reconnect-for.
    reap.0.push(node_with(
        &dir,
        "c1",
        "--consumer",
        &["--reconnect-for", "2s"],
    ));
    let (cc, ci) = accept(&l);
    assert!(ci.roles.consumer);
    drop(cc);
    let (cc, ci) = accept(&l);
    assert_eq!(ci.name, "c1");
    drop(cc);
    drop(l);
    std::fs::remove_file(dir.join("sched.sock")).unwrap();
    let st = wait_exit(&mut reap.0[1]);
    let (out, err) = output(&mut reap.0[1]);
    assert_eq!(st.code(), Some(1), "{out}\n{err}");
    assert!(
        err.contains("lost the scheduler (it closed the connection)"),
        "{err}"
    );
    assert!(
        err.contains("scheduler gone: not reachable for 2 s; stopping"),
        "{err}"
    );
    assert!(out.contains("rejoined the scheduler"), "{out}");
    assert!(out.contains("spate node c1: consumer"), "{out}");
    assert!(
        !dir.join("c1").join("handoff.sock").exists(),
        "sockets removed on exit"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_settings_are_refused_with_the_fix() {
    let out = spate()
        .args([
            "node",
            "--name",
            "x",
            "--scheduler",
            "unix:/nonexistent/s.sock",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--producer and/or --consumer"), "{err}");
    let out = spate()
        .args(["node", "--name", "x", "--consumer", "--interface", "eth9"])
        .args(["--scheduler", "unix:/nonexistent/s.sock"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--interface eth9=ADDRESS"), "{err}");
}
